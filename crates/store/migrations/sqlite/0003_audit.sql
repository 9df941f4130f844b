-- The audit trail: every authorisation decision and every FHIR access made with a token. Never holds
-- token material. Served read-only as FHIR AuditEvent resources.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY,
    recorded  INTEGER NOT NULL,  -- Unix ms
    category  TEXT    NOT NULL,  -- 'rest' (a FHIR interaction) or 'auth' (an authorisation decision)
    action    TEXT    NOT NULL,  -- what happened: read, search-type, create, login, consent, token, ...
    outcome   TEXT    NOT NULL,  -- AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure
    client_id TEXT,
    username  TEXT,
    patient   TEXT,
    entity    TEXT,              -- Type/id or the request path (no query string)
    detail    TEXT
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_patient ON audit_events (patient, recorded);
