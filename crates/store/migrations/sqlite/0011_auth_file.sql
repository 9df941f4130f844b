-- The authorisation server's records live in a file of their own beside this one (`kindling.auth.db`):
-- small pages for small records, and a token is not held up behind a FHIR write. The store copies the
-- rows there in this migration's transaction, before this drop; a release older than this one refuses
-- the data file rather than finding no records.
DROP TABLE auth_records;
