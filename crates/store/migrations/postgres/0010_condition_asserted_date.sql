-- Condition `asserted-date` (US Core: the condition-assertedDate extension) is a new search parameter.
INSERT INTO reindex_pending (res_type) VALUES ('Condition') ON CONFLICT DO NOTHING;
