-- The category tokens of each resource again, keyed by the patient it belongs to (see
-- fhir::params::indexed_per_patient). `Observation?patient=X&category=vital-signs` used to start from all
-- of the patient's observations (about 144 in the Synthea sample) and check each one's category: one
-- index descent each, which costs PostgreSQL about three times what it costs SQLite (vital-signs
-- searches +27% on PostgreSQL; SQLite, where the HTTP and JSON work dominates, within the noise, and its
-- import no slower). From this index it starts from the ~44 vital signs. The rows are written for `IndexRows::referenced_patients` (the
-- patient compartment plus patients referenced by absolute URL), so that every resource a compartment or
-- patient-reference search can match is here; the search still checks the reference itself.
CREATE TABLE sp_token_patient (
    patient_id TEXT COLLATE "C" NOT NULL,
    p          TEXT COLLATE "C" NOT NULL,
    code       TEXT COLLATE "C" NOT NULL,
    rid        BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    system     TEXT COLLATE "C",
    PRIMARY KEY (patient_id, p, code, rid, seq) INCLUDE (system)
);
INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system)
SELECT pt.patient_id, t.p, t.code, t.rid, t.seq, t.system
  FROM (SELECT rid, patient_id FROM compartment
        UNION SELECT rid, target_id FROM sp_reference WHERE target_type = 'Patient' AND url IS NOT NULL AND target_id IS NOT NULL) pt
  JOIN sp_token t ON t.rid = pt.rid
 WHERE t.p LIKE '%.category' AND t.code IS NOT NULL;
