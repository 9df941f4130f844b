-- Each per-patient token row carries the range of its resource's `date` parameter (the least `lo` and the
-- greatest `hi` of its values, NULL without one; see fhir::params::dated_per_patient), so that a
-- patient's section sorted by date (`Observation?patient=X&category=vital-signs&_sort=-date`) takes its
-- sort key from the rows that found the resources instead of descending `sp_date` once per result. Both
-- columns join the primary key's INCLUDE list, so the search still reads the index alone.
-- The key goes first and is built again after the update, so that the update does not maintain it.
-- The update leaves a dead version of every row behind: autovacuum clears them, or run
-- `VACUUM (ANALYZE) sp_token_patient` after migrating a large database (see docs/deploy.md).
ALTER TABLE sp_token_patient DROP CONSTRAINT sp_token_patient_pkey, ADD COLUMN date_lo BIGINT, ADD COLUMN date_hi BIGINT;
UPDATE sp_token_patient t SET date_lo = d.lo, date_hi = d.hi
  FROM (SELECT rid, p, MIN(lo) AS lo, MAX(hi) AS hi FROM sp_date WHERE p LIKE '%.date' GROUP BY rid, p) d
 WHERE d.rid = t.rid AND d.p = split_part(t.p, '.', 1) || '.date';
ALTER TABLE sp_token_patient ADD PRIMARY KEY (patient_id, p, code, rid, seq) INCLUDE (system, in_compartment, via, date_lo, date_hi);
