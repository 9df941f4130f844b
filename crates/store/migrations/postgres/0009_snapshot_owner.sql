-- Paging snapshots know whose search they froze (client, user and patient of the token): only the owner
-- pages through one, and one owner keeps at most 100 live snapshots (the oldest go first).
ALTER TABLE search_snapshots ADD COLUMN owner TEXT;
CREATE INDEX search_snapshots_owner ON search_snapshots (owner, expires) WHERE owner IS NOT NULL;
