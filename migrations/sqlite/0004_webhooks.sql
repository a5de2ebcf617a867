-- Webhooks and the sync find a call record by its batch and the number called
-- when ElevenLabs does not echo our recipient id; without this index that is a
-- scan of up to 10,000 records per event.
CREATE INDEX call_records_batch_phone_idx ON call_records (batch_id, phone_e164);
