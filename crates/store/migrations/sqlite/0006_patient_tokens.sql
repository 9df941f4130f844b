-- The category tokens of each resource again, keyed by the patient it belongs to, with how the resource
-- refers to that patient: see migrations/postgres/0005_patient_tokens.sql.
CREATE TABLE sp_token_patient (
    patient_id     TEXT NOT NULL,
    p              TEXT NOT NULL,
    code           TEXT NOT NULL,
    rid            INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    system         TEXT,
    in_compartment INTEGER NOT NULL,
    via            TEXT NOT NULL,
    PRIMARY KEY (patient_id, p, code, rid, seq)
) WITHOUT ROWID;
WITH links AS (
    SELECT rid, patient_id FROM compartment
    UNION SELECT rid, target_id FROM sp_reference WHERE target_type = 'Patient' AND target_id IS NOT NULL
), described AS (
    SELECT l.rid, l.patient_id,
           EXISTS (SELECT 1 FROM compartment c WHERE c.rid = l.rid AND c.patient_id = l.patient_id) AS in_compartment,
           COALESCE((SELECT ',' || group_concat(k, ',') || ',' FROM (SELECT DISTINCT r.p AS k FROM sp_reference r
                      WHERE r.rid = l.rid AND r.target_type = 'Patient' AND r.target_id = l.patient_id ORDER BY r.p)), '') AS via
      FROM links l
)
INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system, in_compartment, via)
SELECT d.patient_id, t.p, t.code, t.rid, t.seq, t.system, d.in_compartment, d.via
  FROM described d JOIN sp_token t ON t.rid = d.rid
 WHERE t.p LIKE '%.category' AND t.code IS NOT NULL;
