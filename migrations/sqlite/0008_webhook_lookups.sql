-- A webhook finds its call by the batch and the recipient id, the conversation
-- id or the batch and our client id; the number called is the last resort and
-- reads the batch's rows (at most 10,000) through (batch_id, created_at, id).
-- Its own index cost every launch ~10 ms per 10,000 call records.
DROP INDEX IF EXISTS call_records_batch_phone_idx;
