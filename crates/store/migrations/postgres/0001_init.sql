-- The PostgreSQL schema: the same tables as the SQLite backend (see migrations/sqlite), so that the search
-- SQL of store::sql runs on both. Text compares byte-wise (COLLATE "C"), as in SQLite, so sort orders and
-- prefix ranges agree. Integers are BIGINT throughout; 0/1 flags stay integers.
CREATE TABLE resources (
    rid          BIGSERIAL PRIMARY KEY,
    res_type     TEXT COLLATE "C" NOT NULL,
    id           TEXT COLLATE "C" NOT NULL,
    version      BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted      BIGINT NOT NULL DEFAULT 0,
    content      TEXT   NOT NULL,
    UNIQUE (res_type, id)
);
CREATE INDEX resources_type_updated ON resources (res_type, last_updated);

CREATE TABLE resource_history (
    rid          BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted      BIGINT NOT NULL,
    content      TEXT   NOT NULL,
    PRIMARY KEY (rid, version)
);
CREATE INDEX resource_history_updated ON resource_history (last_updated);

CREATE TABLE sp_string (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, norm TEXT COLLATE "C" NOT NULL, exact TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_string_search ON sp_string (p, norm, rid);

CREATE TABLE sp_token (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, system TEXT COLLATE "C", code TEXT COLLATE "C", text TEXT COLLATE "C",
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_token_search ON sp_token (p, code, system, rid);

CREATE TABLE sp_reference (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, target_type TEXT COLLATE "C", target_id TEXT COLLATE "C", url TEXT COLLATE "C",
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_reference_search ON sp_reference (p, target_id, target_type, rid);

CREATE TABLE sp_date (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL,
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_date_search ON sp_date (p, lo, hi, rid);

CREATE TABLE sp_quantity (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL, system TEXT COLLATE "C", code TEXT COLLATE "C", unit TEXT COLLATE "C",
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_quantity_search ON sp_quantity (p, value, rid);

CREATE TABLE sp_number (rid BIGINT NOT NULL, p TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rid, p, seq));
CREATE INDEX sp_number_search ON sp_number (p, value, rid);

CREATE TABLE compartment (rid BIGINT NOT NULL, patient_id TEXT COLLATE "C" NOT NULL, PRIMARY KEY (rid, patient_id));
CREATE INDEX compartment_patient ON compartment (patient_id, rid);

-- Authorisation-server state shared by every node (see migrations/sqlite/0002_auth.sql).
CREATE TABLE auth_records (
    kind     TEXT COLLATE "C" NOT NULL,
    key      TEXT COLLATE "C" NOT NULL,
    value    TEXT NOT NULL,
    grant_id TEXT COLLATE "C",
    expires  BIGINT,
    used     BIGINT NOT NULL DEFAULT 0,
    revoked  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_records_grant ON auth_records (grant_id);
CREATE INDEX auth_records_expires ON auth_records (expires);

-- The audit trail (see migrations/sqlite/0003_audit.sql and 0004).
CREATE TABLE audit_events (
    id        BIGSERIAL PRIMARY KEY,
    recorded  BIGINT NOT NULL,
    category  TEXT NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    client_id TEXT,
    username  TEXT,
    patient   TEXT,
    entity    TEXT,
    detail    TEXT,
    launch_id TEXT
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_patient ON audit_events (patient, recorded);
CREATE INDEX audit_events_launch ON audit_events (launch_id, id) WHERE launch_id IS NOT NULL;

-- Paging snapshots live in the database so that any node can serve the next page.
CREATE TABLE search_snapshots (
    id            TEXT PRIMARY KEY,
    resource_type TEXT,
    query         TEXT NOT NULL,
    keys          BIGINT[] NOT NULL,
    expires       BIGINT NOT NULL
);
CREATE INDEX search_snapshots_expires ON search_snapshots (expires);
