-- The pairing id this data file shares with its auth file (`kindling.auth.db`): a data file restored
-- beside the auth file of another deployment is refused at start (see `sqlite/pairing.rs`).
CREATE TABLE IF NOT EXISTS kindling_pair (id TEXT NOT NULL);
