-- Resources: the current version of each resource, with its superseded versions in resource_history.
CREATE TABLE resources (
    rid          INTEGER PRIMARY KEY,
    res_type     TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,           -- Unix milliseconds
    deleted      INTEGER NOT NULL DEFAULT 0, -- 1: the current version is a deletion
    content      TEXT    NOT NULL,           -- canonical JSON ('' when deleted)
    UNIQUE (res_type, id)
);
CREATE INDEX resources_type_updated ON resources (res_type, last_updated);

CREATE TABLE resource_history (
    rid          INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    content      TEXT    NOT NULL,
    PRIMARY KEY (rid, version)
) WITHOUT ROWID;
CREATE INDEX resource_history_updated ON resource_history (last_updated);

-- Search index rows of the current version; p is 'Type.param'.
CREATE TABLE sp_string (rid INTEGER NOT NULL, p TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX sp_string_search ON sp_string (p, norm, rid);
CREATE INDEX sp_string_rid ON sp_string (rid);

CREATE TABLE sp_token (rid INTEGER NOT NULL, p TEXT NOT NULL, system TEXT, code TEXT, text TEXT);
CREATE INDEX sp_token_search ON sp_token (p, code, system, rid);
CREATE INDEX sp_token_rid ON sp_token (rid);

CREATE TABLE sp_reference (rid INTEGER NOT NULL, p TEXT NOT NULL, target_type TEXT, target_id TEXT, url TEXT);
CREATE INDEX sp_reference_search ON sp_reference (p, target_id, target_type, rid);
CREATE INDEX sp_reference_rid ON sp_reference (rid);

CREATE TABLE sp_date (rid INTEGER NOT NULL, p TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL);
CREATE INDEX sp_date_search ON sp_date (p, lo, hi, rid);
CREATE INDEX sp_date_rid ON sp_date (rid, p);

CREATE TABLE sp_quantity (rid INTEGER NOT NULL, p TEXT NOT NULL, value REAL NOT NULL, system TEXT, code TEXT, unit TEXT);
CREATE INDEX sp_quantity_search ON sp_quantity (p, value, rid);
CREATE INDEX sp_quantity_rid ON sp_quantity (rid);

CREATE TABLE sp_number (rid INTEGER NOT NULL, p TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX sp_number_search ON sp_number (p, value, rid);
CREATE INDEX sp_number_rid ON sp_number (rid);

-- Patient compartment membership of the current version.
CREATE TABLE compartment (rid INTEGER NOT NULL, patient_id TEXT NOT NULL);
CREATE INDEX compartment_patient ON compartment (patient_id, rid);
CREATE INDEX compartment_rid ON compartment (rid);
