-- The normalized tables become a projection of the journal: the durable
-- commit writes only journal rows, and the persister folds committed events
-- into the tables afterwards. `projected_pos` is the last journal position
-- the tables reflect; it is updated in the same transaction as the tables.
-- Until now the tables were written with the journal, so an existing
-- database is projected up to everything it ever committed.
CREATE TABLE projection (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    projected_pos INTEGER NOT NULL
);
INSERT INTO projection (id, projected_pos)
SELECT 1, MAX(COALESCE((SELECT MAX(pos) FROM journal), 0),
              COALESCE((SELECT MAX(journal_pos) FROM snapshots), 0));
