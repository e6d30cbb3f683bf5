-- The journal file of a SQLite database (`<name>.journal.<ext>` beside the
-- main file `<name>.<ext>`, see src/persistence/db.rs): the append-only event
-- journal, the durable commit of every write. It is a file of its own so that
-- journal commits and the projection into the main file's tables take two
-- different write locks and run at the same time.
CREATE TABLE journal (
    pos      INTEGER PRIMARY KEY,
    kind     TEXT    NOT NULL,
    payload  BLOB    NOT NULL
);

-- `committed_through`: every position up to it was committed to this journal
-- (its rows may have been pruned since). Start-up refuses a journal file
-- whose last position (MAX(pos), or this when larger) is below the main
-- file's `projected_pos` or newest snapshot: that journal file is missing or
-- older than the main file, and acknowledged events would be lost.
CREATE TABLE journal_meta (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    committed_through INTEGER NOT NULL
);
INSERT INTO journal_meta (id, committed_through) VALUES (1, 0);
