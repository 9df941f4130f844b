-- State of the authorisation server: registered clients, users, sign-in sessions, pending authorisation
-- requests, launch contexts, codes, access and refresh tokens, consents, the jti replay cache and signing
-- keys. One shape for all of them, keyed by (kind, key); secrets and tokens are stored only as hashes in
-- `key`. `grant_id` ties together everything one authorisation produced, so it can be revoked at once.
CREATE TABLE auth_records (
    kind     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,           -- JSON
    grant_id TEXT,
    expires  INTEGER,                    -- Unix ms; NULL = does not expire
    used     INTEGER NOT NULL DEFAULT 0, -- single-use records (codes, launch handles, jti) once consumed
    revoked  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX auth_records_grant ON auth_records (grant_id);
CREATE INDEX auth_records_expires ON auth_records (expires);
