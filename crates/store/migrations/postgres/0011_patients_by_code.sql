-- Observation `code` rows join the per-patient token index (fhir::params::PATIENTS_BY_CODE), with an
-- index by code, so that `Patient?_has:Observation:patient:code=…` finds the patients from index rows
-- alone instead of looking up the patient reference of every observation with the code. Partial: the
-- category rows never need it. The search names `p` as a literal so that a generic plan can use it.
-- The reindex of Observation runs in one transaction at start; on a large database run
-- `VACUUM (ANALYZE) sp_token_patient` afterwards (see docs/deploy.md).
CREATE INDEX sp_token_patient_code ON sp_token_patient (code, system, patient_id) INCLUDE (via) WHERE p = 'Observation.code';
INSERT INTO reindex_pending (res_type) VALUES ('Observation') ON CONFLICT DO NOTHING;
