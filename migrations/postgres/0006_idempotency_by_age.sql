-- Idempotency records are pruned by age (CONCERT_IDEMPOTENCY_TTL) on a
-- timer: without an index each pass would scan the whole table.
CREATE INDEX IF NOT EXISTS idempotency_records_by_age ON idempotency_records (created_at);
