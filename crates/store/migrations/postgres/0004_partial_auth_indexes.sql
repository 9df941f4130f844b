-- Only records of a grant (codes, tokens) are looked up by grant, and only records that expire are purged
-- by expiry: the other records (assertion jtis, sessions, registrations, consents) need no entry in those
-- indexes. A jti's entry in the grant index sat at a random place among the NULLs (ordered by its random
-- key), one more page written for every backend-services token.
DROP INDEX auth_records_grant;
CREATE INDEX auth_records_grant ON auth_records (grant_id) WHERE grant_id IS NOT NULL;
DROP INDEX auth_records_expires;
CREATE INDEX auth_records_expires ON auth_records (expires) WHERE expires IS NOT NULL;
