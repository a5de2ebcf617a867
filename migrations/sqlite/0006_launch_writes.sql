-- A launch writes up to 100,000 call records in one request, and every index
-- on call_records is paid once per row.
-- Counts by batch and status now come from the rollup call_stats_hourly;
-- other per-batch reads use (batch_id, created_at) or (batch_id, phone_e164).
DROP INDEX IF EXISTS call_records_batch_status_idx;
-- A call has no conversation and no start time when it is launched: partial
-- indexes leave new rows out until the sync or a webhook fills them in.
DROP INDEX IF EXISTS call_records_conversation_idx;
CREATE INDEX call_records_conversation_idx ON call_records (conversation_id) WHERE conversation_id IS NOT NULL;
DROP INDEX IF EXISTS call_records_group_started_idx;
CREATE INDEX call_records_group_started_idx ON call_records (group_id, started_at) WHERE started_at IS NOT NULL;
