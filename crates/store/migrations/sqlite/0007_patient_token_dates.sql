-- Each per-patient token row carries the range of its resource's `date` parameter, for sorting a
-- patient's section by date without a probe per result: see migrations/postgres/0006_patient_token_dates.sql.
ALTER TABLE sp_token_patient ADD COLUMN date_lo INTEGER;
ALTER TABLE sp_token_patient ADD COLUMN date_hi INTEGER;
UPDATE sp_token_patient SET (date_lo, date_hi) =
    (SELECT MIN(d.lo), MAX(d.hi) FROM sp_date d
      WHERE d.rid = sp_token_patient.rid AND d.p = substr(sp_token_patient.p, 1, instr(sp_token_patient.p, '.')) || 'date');
