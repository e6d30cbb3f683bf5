-- Two indexes the projection paid for on every event and no query of the
-- server uses (PostgreSQL only; SQLite's `0004` made the second change).
--
-- 1. `balance_history` is keyed by `journal_pos`, which was already unique
--    and orders a member's history as the surrogate `id` did: the identity
--    column (a sequence call per row) and its primary key index go, and the
--    member index becomes (member_id, journal_pos). Recovery from the
--    tables already reads the history in `journal_pos` order.
-- 2. `reservations_by_concert` (concert_id, status) becomes a partial index
--    of the PENDING_PAYMENT reservations, as on SQLite: a sale's holds are
--    spread over every concert, so each projection slice inserted into this
--    index at as many places as there are concerts on sale, while a hold
--    paid or released within one slice never enters the partial one.
--    Operators keep a concert's live holds (this index), its held and sold
--    seats with their reservations (the `seats` key starts with
--    `concert_id`), and a scan of `reservations` for finished ones.
--
-- Measured with examples/projection_cost.rs (server CPU per projected
-- event) and the sync bench: docs/PERFORMANCE.md, "Persistence".
DROP INDEX IF EXISTS balance_history_member;
ALTER TABLE balance_history DROP COLUMN id;
ALTER TABLE balance_history DROP CONSTRAINT balance_history_journal_pos_key;
ALTER TABLE balance_history ADD PRIMARY KEY (journal_pos);
CREATE INDEX balance_history_member ON balance_history (member_id, journal_pos);

DROP INDEX reservations_by_concert;
CREATE INDEX reservations_pending_by_concert ON reservations (concert_id) WHERE status = 'PENDING_PAYMENT';
