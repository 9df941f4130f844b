-- Types whose search-index rows must be rebuilt from their stored content (a search parameter or a
-- compartment rule was added or changed for them). The first node to open the database after the
-- migration drains this table (under the migration lock); a migration that changes the index rules of a
-- type adds the type here.
CREATE TABLE reindex_pending (res_type TEXT PRIMARY KEY);
-- CareTeam `role`, Encounter `discharge-disposition`, PractitionerRole `endpoint` (new parameters), and
-- Binary (now in the compartment of the patient its securityContext names).
INSERT INTO reindex_pending (res_type) VALUES ('Binary'), ('CareTeam'), ('Encounter'), ('PractitionerRole');
