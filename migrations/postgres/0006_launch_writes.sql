-- A launch writes up to 100,000 call records in one request, and every
-- constraint and index on call_records is paid once per row.
--
-- Foreign keys: each inserted row ran three referential checks (a lookup and a
-- row lock on the batch, the group and the client), about as much as the insert
-- itself. Call records are written only by the launch, for the batch it has
-- just stored and the clients it has just read in that group, and groups,
-- clients and batches are never deleted (groups and clients are soft-deleted),
-- so the references cannot dangle; the checks only cost.
ALTER TABLE call_records
    DROP CONSTRAINT IF EXISTS call_records_batch_id_fkey,
    DROP CONSTRAINT IF EXISTS call_records_group_id_fkey,
    DROP CONSTRAINT IF EXISTS call_records_client_id_fkey;
-- Counts by batch and status now come from the rollup call_stats_hourly;
-- other per-batch reads use (batch_id, created_at) or (batch_id, phone_e164).
DROP INDEX IF EXISTS call_records_batch_status_idx;
-- A call has no conversation and no start time when it is launched: partial
-- indexes leave new rows out until the sync or a webhook fills them in.
DROP INDEX IF EXISTS call_records_conversation_idx;
CREATE INDEX call_records_conversation_idx ON call_records (conversation_id) WHERE conversation_id IS NOT NULL;
DROP INDEX IF EXISTS call_records_group_started_idx;
CREATE INDEX call_records_group_started_idx ON call_records (group_id, started_at) WHERE started_at IS NOT NULL;
