-- The projected tables drop their foreign keys (PostgreSQL only).
--
-- Only the persister's projection writes these tables, from committed journal
-- events, in journal order, and in dependency order inside each slice
-- (members and concerts before reservations, reservations before their seats
-- and payments). The engine emits an event naming a member, concert or
-- reservation only after the event creating it, and nothing deletes a
-- referenced row (pruning deletes idempotency records and queue tokens,
-- which nothing references). So the keys could never fire; they only cost:
-- each inserted child row ran a `SELECT ... FOR KEY SHARE` on its parent
-- through a trigger, about 42% of the server's CPU while projecting
-- (docs/PERFORMANCE.md, persistence). The columns and their indexes stay;
-- operators' joins are unchanged. SQLite keeps its keys: there the check is
-- a probe of the parent's primary key inside the same B-tree engine, not a
-- trigger, and dropping them would mean rebuilding each table.
ALTER TABLE balance_history   DROP CONSTRAINT IF EXISTS balance_history_member_id_fkey;
ALTER TABLE seats             DROP CONSTRAINT IF EXISTS seats_concert_id_fkey;
ALTER TABLE reservations      DROP CONSTRAINT IF EXISTS reservations_concert_id_fkey;
ALTER TABLE reservations      DROP CONSTRAINT IF EXISTS reservations_member_id_fkey;
ALTER TABLE reservation_seats DROP CONSTRAINT IF EXISTS reservation_seats_reservation_id_fkey;
ALTER TABLE payments          DROP CONSTRAINT IF EXISTS payments_reservation_id_fkey;
ALTER TABLE payments          DROP CONSTRAINT IF EXISTS payments_member_id_fkey;
