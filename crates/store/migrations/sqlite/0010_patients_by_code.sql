-- Observation `code` rows join the per-patient token index (fhir::params::PATIENTS_BY_CODE), with an
-- index by code, so that `Patient?_has:Observation:patient:code=…` finds the patients from index rows
-- alone instead of looking up the patient reference of every observation with the code (14–16 ms for
-- common codes on the Synthea set). Partial: the category rows never need it. The search names `p` as a
-- literal so that the planner can use it.
CREATE INDEX sp_token_patient_code ON sp_token_patient (code, system, patient_id, via) WHERE p = 'Observation.code';
INSERT INTO reindex_pending (res_type) VALUES ('Observation') ON CONFLICT DO NOTHING;
