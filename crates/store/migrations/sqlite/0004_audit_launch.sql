-- Audit records name the launch they belong to (the launch's public id, never its handle), so that the
-- EHR's launch inspector can show one launch's handshake and FHIR calls in order.
ALTER TABLE audit_events ADD COLUMN launch_id TEXT;
CREATE INDEX audit_events_launch ON audit_events (launch_id, id) WHERE launch_id IS NOT NULL;
