-- The category tokens of each resource again, keyed by the patient it belongs to: see
-- migrations/postgres/0005_patient_tokens.sql.
CREATE TABLE sp_token_patient (
    patient_id TEXT NOT NULL,
    p          TEXT NOT NULL,
    code       TEXT NOT NULL,
    rid        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    system     TEXT,
    PRIMARY KEY (patient_id, p, code, rid, seq)
) WITHOUT ROWID;
INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system)
SELECT pt.patient_id, t.p, t.code, t.rid, t.seq, t.system
  FROM (SELECT rid, patient_id FROM compartment
        UNION SELECT rid, target_id FROM sp_reference WHERE target_type = 'Patient' AND url IS NOT NULL AND target_id IS NOT NULL) pt
  JOIN sp_token t ON t.rid = pt.rid
 WHERE t.p LIKE '%.category' AND t.code IS NOT NULL;
