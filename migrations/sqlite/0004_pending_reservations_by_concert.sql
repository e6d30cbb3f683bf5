-- `reservations_by_concert` (concert_id, status) becomes a partial index of
-- the PENDING_PAYMENT reservations only (SQLite only).
--
-- No query of the server uses it: recovery reads `reservations` in id order,
-- and the engine answers every read from memory. It served operators
-- looking at a concert's reservations, and it was the most expensive thing
-- the projection wrote: a sale's holds are spread over every concert, so
-- every projection slice inserted into as many places of this index as
-- there are concerts on sale. Measured in the sync bench (docs/PERFORMANCE.md,
-- "Persistence"): without it the projection kept up with 95,000-101,000
-- events/s instead of 82,000-83,000, and the durable rate rose from
-- 88,000-91,000 to 118,000-123,000 events/s.
--
-- What operators still have: the live holds of a concert (the partial index
-- below: pending reservations are few at any moment, and a hold paid or
-- released within one projection slice never enters it), its held and sold
-- seats with their reservations (the `seats` key starts with `concert_id`),
-- and, for finished reservations, a scan of `reservations`.
DROP INDEX reservations_by_concert;
CREATE INDEX reservations_pending_by_concert ON reservations (concert_id) WHERE status = 'PENDING_PAYMENT';
