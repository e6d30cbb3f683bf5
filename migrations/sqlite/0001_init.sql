-- Normalized tables (kept current by the persister, for operators' SQL),
-- the append-only event journal, snapshots and settings.

CREATE TABLE members (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    key_hash    BLOB    NOT NULL,
    balance     INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  INTEGER NOT NULL
);

CREATE TABLE balance_history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id     INTEGER NOT NULL REFERENCES members(id),
    kind          TEXT    NOT NULL CHECK (kind IN ('CHARGE', 'PAYMENT')),
    amount        INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    journal_pos   INTEGER NOT NULL UNIQUE
);
CREATE INDEX balance_history_member ON balance_history (member_id, id);

CREATE TABLE concerts (
    id          INTEGER PRIMARY KEY,
    title       TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    venue       TEXT    NOT NULL,
    starts_at   INTEGER NOT NULL,
    seat_count  INTEGER NOT NULL,
    price       INTEGER NOT NULL,
    price_tiers TEXT    NOT NULL
);
CREATE INDEX concerts_by_category ON concerts (category, starts_at);
CREATE INDEX concerts_by_title ON concerts (title, starts_at);
CREATE INDEX concerts_by_start ON concerts (starts_at);

-- One row per seat that is HELD or SOLD; a seat with no row is AVAILABLE.
CREATE TABLE seats (
    concert_id     INTEGER NOT NULL REFERENCES concerts(id),
    seat_no        INTEGER NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('HELD', 'SOLD')),
    reservation_id INTEGER NOT NULL,
    PRIMARY KEY (concert_id, seat_no)
);
CREATE INDEX seats_by_reservation ON seats (reservation_id);

CREATE TABLE reservations (
    id          INTEGER PRIMARY KEY,
    concert_id  INTEGER NOT NULL REFERENCES concerts(id),
    member_id   INTEGER NOT NULL REFERENCES members(id),
    amount      INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX reservations_by_member ON reservations (member_id, id);
CREATE INDEX reservations_by_concert ON reservations (concert_id, status);

CREATE TABLE reservation_seats (
    reservation_id INTEGER NOT NULL REFERENCES reservations(id),
    seat_no        INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, seat_no)
);

CREATE TABLE payments (
    id             INTEGER PRIMARY KEY,
    reservation_id INTEGER NOT NULL UNIQUE REFERENCES reservations(id),
    member_id      INTEGER NOT NULL REFERENCES members(id),
    amount         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE idempotency_records (
    member_id   INTEGER NOT NULL,
    endpoint    TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    status      INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (member_id, endpoint, key)
);

CREATE TABLE queue_tokens (
    token        BLOB    PRIMARY KEY,
    member_id    INTEGER NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    status       TEXT    NOT NULL,
    active_until INTEGER NOT NULL,
    issued_at    INTEGER NOT NULL
);
CREATE INDEX queue_tokens_by_status ON queue_tokens (status, seq);

CREATE TABLE journal (
    pos      INTEGER PRIMARY KEY,
    kind     TEXT    NOT NULL,
    payload  BLOB    NOT NULL
);

CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    journal_pos INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    bytes       BLOB    NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
