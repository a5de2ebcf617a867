-- Indexes made redundant by migration 3: each is a prefix of a wider index
-- that now serves the same queries. Every index on call_records is paid for
-- on each of a launch's rows (100,000 rows for a large campaign).
DROP INDEX IF EXISTS call_records_group_created_idx;
DROP INDEX IF EXISTS call_records_group_status_idx;
