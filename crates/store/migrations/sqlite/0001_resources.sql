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

-- Search index rows of the current version; p is 'Type.param'. Each table is clustered by (rid, p, seq)
-- — seq numbers the rows of one resource — which serves the correlated EXISTS checks of secondary filters,
-- sorting and clearing rows on update; a second index (p first) serves the filter that drives a query.
CREATE TABLE sp_string (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_string_search ON sp_string (p, norm, rid);

CREATE TABLE sp_token (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, system TEXT, code TEXT, text TEXT,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_token_search ON sp_token (p, code, system, rid);

CREATE TABLE sp_reference (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, target_type TEXT, target_id TEXT, url TEXT,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_reference_search ON sp_reference (p, target_id, target_type, rid);

CREATE TABLE sp_date (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_date_search ON sp_date (p, lo, hi, rid);

CREATE TABLE sp_quantity (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, value REAL NOT NULL, system TEXT, code TEXT, unit TEXT,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_quantity_search ON sp_quantity (p, value, rid);

CREATE TABLE sp_number (rid INTEGER NOT NULL, p TEXT NOT NULL, seq INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (rid, p, seq)) WITHOUT ROWID;
CREATE INDEX sp_number_search ON sp_number (p, value, rid);

-- Patient compartment membership of the current version.
CREATE TABLE compartment (rid INTEGER NOT NULL, patient_id TEXT NOT NULL, PRIMARY KEY (rid, patient_id)) WITHOUT ROWID;
CREATE INDEX compartment_patient ON compartment (patient_id, rid);
