-- The projected tables get cheaper to write (SQLite only): no foreign keys,
-- and WITHOUT ROWID where the primary key is composite or a blob.
--
-- Foreign keys: only the persister's projection writes these tables, from
-- committed journal events, in journal order and in dependency order inside
-- each slice (members and concerts before reservations, reservations before
-- their seats and payments). The engine emits an event naming a member,
-- concert or reservation only after the event creating it, and nothing
-- deletes a referenced row. So the keys could never fire; each inserted row
-- only paid a probe of every parent's B-tree (PostgreSQL dropped the same
-- keys in its migration 0003; the reasoning is in docs/ARCHITECTURE.md).
--
-- WITHOUT ROWID: a rowid table with a composite (or blob) primary key is two
-- B-trees, the table by rowid plus an automatic index on the key, so every
-- row was written twice. `seats`, `reservation_seats` and `queue_tokens` are
-- now clustered on their key (one B-tree); their rows are small (a few
-- integers, a 24-byte token), the case WITHOUT ROWID is made for.
-- `idempotency_records` stays a rowid table: its rows carry response bodies,
-- too large to cluster well.
--
-- Columns, keys, CHECKs, unique constraints and every index stay as they
-- were, so operators' queries and the projection's ON CONFLICT targets are
-- unchanged. SQLite cannot drop a constraint in place, so each table is
-- rebuilt: new table, copy, drop the old ones (children before parents,
-- which the old keys require), rename, recreate the indexes.

CREATE TABLE seats_new (
    concert_id     INTEGER NOT NULL,
    seat_no        INTEGER NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('HELD', 'SOLD')),
    reservation_id INTEGER NOT NULL,
    PRIMARY KEY (concert_id, seat_no)
) WITHOUT ROWID;
INSERT INTO seats_new (concert_id, seat_no, status, reservation_id)
SELECT concert_id, seat_no, status, reservation_id FROM seats;

CREATE TABLE reservations_new (
    id          INTEGER PRIMARY KEY,
    concert_id  INTEGER NOT NULL,
    member_id   INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
INSERT INTO reservations_new (id, concert_id, member_id, amount, status, created_at, expires_at)
SELECT id, concert_id, member_id, amount, status, created_at, expires_at FROM reservations;

CREATE TABLE reservation_seats_new (
    reservation_id INTEGER NOT NULL,
    seat_no        INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, seat_no)
) WITHOUT ROWID;
INSERT INTO reservation_seats_new (reservation_id, seat_no)
SELECT reservation_id, seat_no FROM reservation_seats;

CREATE TABLE payments_new (
    id             INTEGER PRIMARY KEY,
    reservation_id INTEGER NOT NULL UNIQUE,
    member_id      INTEGER NOT NULL,
    amount         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
INSERT INTO payments_new (id, reservation_id, member_id, amount, created_at)
SELECT id, reservation_id, member_id, amount, created_at FROM payments;

CREATE TABLE balance_history_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id     INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('CHARGE', 'PAYMENT')),
    amount        INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    journal_pos   INTEGER NOT NULL UNIQUE
);
INSERT INTO balance_history_new (id, member_id, kind, amount, balance_after, at, journal_pos)
SELECT id, member_id, kind, amount, balance_after, at, journal_pos FROM balance_history;

CREATE TABLE queue_tokens_new (
    token        BLOB    PRIMARY KEY,
    member_id    INTEGER NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    status       TEXT    NOT NULL,
    active_until INTEGER NOT NULL,
    issued_at    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO queue_tokens_new (token, member_id, seq, status, active_until, issued_at)
SELECT token, member_id, seq, status, active_until, issued_at FROM queue_tokens;

DROP TABLE payments;
DROP TABLE reservation_seats;
DROP TABLE seats;
DROP TABLE reservations;
DROP TABLE balance_history;
DROP TABLE queue_tokens;

ALTER TABLE seats_new RENAME TO seats;
ALTER TABLE reservations_new RENAME TO reservations;
ALTER TABLE reservation_seats_new RENAME TO reservation_seats;
ALTER TABLE payments_new RENAME TO payments;
ALTER TABLE balance_history_new RENAME TO balance_history;
ALTER TABLE queue_tokens_new RENAME TO queue_tokens;

CREATE INDEX seats_by_reservation ON seats (reservation_id);
CREATE INDEX reservations_by_member ON reservations (member_id, id);
CREATE INDEX reservations_by_concert ON reservations (concert_id, status);
CREATE INDEX balance_history_member ON balance_history (member_id, id);
CREATE INDEX queue_tokens_by_status ON queue_tokens (status, seq);
