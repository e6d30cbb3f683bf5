-- Every journal row carries a CRC-32 of its position, kind and payload
-- (`journal_checksum` in src/persistence/codec.rs), checked when recovery
-- reads the row back: a row changed on disk stops start-up with its
-- position named instead of being replayed. Rows written before this
-- migration keep a NULL checksum and are read without the check.
ALTER TABLE journal ADD COLUMN checksum BIGINT;
