-- The category tokens of each resource again, keyed by the patient it belongs to (see
-- fhir::params::indexed_per_patient and fhir::extract::PatientTokenRow). `Observation?patient=X&
-- category=vital-signs` used to start from all of the patient's observations (about 144 in the Synthea
-- sample) and check each one's category: an index descent each, which costs PostgreSQL about three
-- times what it costs SQLite. From this index it starts from the ~44 vital signs, and each row says how
-- the resource refers to the patient (`in_compartment`; `via`, the keys of its reference rows to
-- `Patient/X`, each between commas), so the patient filter needs no per-row check either.
-- Rows are written for the patient compartment plus every other patient a reference row points to (by
-- absolute URL, or through elements outside the compartment definition: a `patient=X` search matches
-- those too), so every resource a compartment or patient-reference search finds is here.
CREATE TABLE sp_token_patient (
    patient_id     TEXT COLLATE "C" NOT NULL,
    p              TEXT COLLATE "C" NOT NULL,
    code           TEXT COLLATE "C" NOT NULL,
    rid            BIGINT NOT NULL,
    seq            BIGINT NOT NULL,
    system         TEXT COLLATE "C",
    in_compartment BIGINT NOT NULL,
    via            TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (patient_id, p, code, rid, seq) INCLUDE (system, in_compartment, via)
);
WITH links AS (
    SELECT rid, patient_id FROM compartment
    UNION SELECT rid, target_id FROM sp_reference WHERE target_type = 'Patient' AND target_id IS NOT NULL
), described AS (
    SELECT l.rid, l.patient_id,
           CASE WHEN EXISTS (SELECT 1 FROM compartment c WHERE c.rid = l.rid AND c.patient_id = l.patient_id) THEN 1 ELSE 0 END AS in_compartment,
           COALESCE((SELECT ',' || string_agg(DISTINCT r.p, ',' ORDER BY r.p) || ',' FROM sp_reference r
                      WHERE r.rid = l.rid AND r.target_type = 'Patient' AND r.target_id = l.patient_id), '') AS via
      FROM links l
)
INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system, in_compartment, via)
SELECT d.patient_id, t.p, t.code, t.rid, t.seq, t.system, d.in_compartment, d.via
  FROM described d JOIN sp_token t ON t.rid = d.rid
 WHERE t.p LIKE '%.category' AND t.code IS NOT NULL;
