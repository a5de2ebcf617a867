-- A launch writes up to 100,000 call records in one request; what each row
-- costs is paid 100,000 times.
--
-- Foreign keys of call_records, as on PostgreSQL in migration 6: each inserted
-- row ran three lookups (batch, group, client), about a sixth of a launch's
-- database time. Call records are written only by the launch, for the batch it
-- has just stored and the clients it has just read, and groups, clients and
-- batches are never deleted (groups and clients are soft-deleted), so the
-- references cannot dangle. SQLite cannot drop a constraint, so the table is
-- rebuilt (https://sqlite.org/lang_altertable.html, "other kinds of table
-- schema changes"): new table, copy, drop, rename, then its indexes and
-- triggers again, unchanged. The triggers go first so that the copy and the
-- drop leave the rollups as they are.
DROP TRIGGER IF EXISTS call_records_rollup_insert;
DROP TRIGGER IF EXISTS call_records_rollup_update;
DROP TRIGGER IF EXISTS call_records_rollup_delete;
CREATE TABLE call_records_new (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id                INTEGER NOT NULL,
    group_id                INTEGER NOT NULL,
    client_id               INTEGER,
    recipient_id            TEXT,
    phone_e164              TEXT    NOT NULL,
    status                  TEXT    NOT NULL DEFAULT 'pending',
    conversation_id         TEXT,
    duration_secs           INTEGER,
    call_successful         TEXT,
    transcript_summary      TEXT,
    termination_reason      TEXT,
    data_collection         TEXT,
    evaluation              TEXT,
    transcript              TEXT,
    failure_reason          TEXT,
    started_at              TEXT,
    ended_at                TEXT,
    conversation_fetched_at TEXT,
    created_at              TEXT    NOT NULL,
    updated_at              TEXT    NOT NULL
);
INSERT INTO call_records_new (id, batch_id, group_id, client_id, recipient_id, phone_e164, status, conversation_id, duration_secs, call_successful, transcript_summary, termination_reason, data_collection, evaluation, transcript, failure_reason, started_at, ended_at, conversation_fetched_at, created_at, updated_at)
SELECT id, batch_id, group_id, client_id, recipient_id, phone_e164, status, conversation_id, duration_secs, call_successful, transcript_summary, termination_reason, data_collection, evaluation, transcript, failure_reason, started_at, ended_at, conversation_fetched_at, created_at, updated_at FROM call_records ORDER BY id;
-- Ids go on from the old table's counter, also when its newest rows were deleted.
DELETE FROM sqlite_sequence WHERE name = 'call_records_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'call_records_new', MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'call_records'), 0),
                               COALESCE((SELECT MAX(id) FROM call_records_new), 0));
DROP TABLE call_records;
ALTER TABLE call_records_new RENAME TO call_records;
CREATE INDEX call_records_batch_created_idx ON call_records (batch_id, created_at);
CREATE INDEX call_records_batch_phone_idx ON call_records (batch_id, phone_e164);
CREATE INDEX call_records_client_idx ON call_records (client_id);
CREATE INDEX call_records_conversation_idx ON call_records (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX call_records_group_created_started_idx ON call_records (group_id, created_at, started_at);
CREATE INDEX call_records_group_started_idx ON call_records (group_id, started_at) WHERE started_at IS NOT NULL;
CREATE INDEX call_records_group_status_created_idx ON call_records (group_id, status, created_at, client_id);
CREATE INDEX call_records_recipient_idx ON call_records (recipient_id);
CREATE TRIGGER call_records_rollup_delete AFTER DELETE ON call_records BEGIN
    INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
    VALUES (OLD.group_id, OLD.batch_id, substr(OLD.created_at, 1, 13), OLD.status, COALESCE(OLD.call_successful, ''),
            -1, -COALESCE(OLD.duration_secs, 0), -(OLD.duration_secs IS NOT NULL))
    ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
        calls = calls + excluded.calls,
        duration_sum = duration_sum + excluded.duration_sum,
        duration_calls = duration_calls + excluded.duration_calls;
    INSERT INTO call_reached_clients (group_id, client_id, calls)
    SELECT OLD.group_id, OLD.client_id, -1 WHERE OLD.status = 'completed' AND OLD.client_id IS NOT NULL
    ON CONFLICT (group_id, client_id) DO UPDATE SET calls = calls - 1;
END;

CREATE TRIGGER call_records_rollup_insert AFTER INSERT ON call_records BEGIN
    INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
    VALUES (NEW.group_id, NEW.batch_id, substr(NEW.created_at, 1, 13), NEW.status, COALESCE(NEW.call_successful, ''),
            1, COALESCE(NEW.duration_secs, 0), NEW.duration_secs IS NOT NULL)
    ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
        calls = calls + excluded.calls,
        duration_sum = duration_sum + excluded.duration_sum,
        duration_calls = duration_calls + excluded.duration_calls;
    INSERT INTO call_reached_clients (group_id, client_id, calls)
    SELECT NEW.group_id, NEW.client_id, 1 WHERE NEW.status = 'completed' AND NEW.client_id IS NOT NULL
    ON CONFLICT (group_id, client_id) DO UPDATE SET calls = calls + 1;
END;

CREATE TRIGGER call_records_rollup_update
AFTER UPDATE OF group_id, batch_id, client_id, created_at, status, call_successful, duration_secs ON call_records
BEGIN
    INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
    VALUES (OLD.group_id, OLD.batch_id, substr(OLD.created_at, 1, 13), OLD.status, COALESCE(OLD.call_successful, ''),
            -1, -COALESCE(OLD.duration_secs, 0), -(OLD.duration_secs IS NOT NULL))
    ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
        calls = calls + excluded.calls,
        duration_sum = duration_sum + excluded.duration_sum,
        duration_calls = duration_calls + excluded.duration_calls;
    INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
    VALUES (NEW.group_id, NEW.batch_id, substr(NEW.created_at, 1, 13), NEW.status, COALESCE(NEW.call_successful, ''),
            1, COALESCE(NEW.duration_secs, 0), NEW.duration_secs IS NOT NULL)
    ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
        calls = calls + excluded.calls,
        duration_sum = duration_sum + excluded.duration_sum,
        duration_calls = duration_calls + excluded.duration_calls;
    INSERT INTO call_reached_clients (group_id, client_id, calls)
    SELECT OLD.group_id, OLD.client_id, -1 WHERE OLD.status = 'completed' AND OLD.client_id IS NOT NULL
    ON CONFLICT (group_id, client_id) DO UPDATE SET calls = calls - 1;
    INSERT INTO call_reached_clients (group_id, client_id, calls)
    SELECT NEW.group_id, NEW.client_id, 1 WHERE NEW.status = 'completed' AND NEW.client_id IS NOT NULL
    ON CONFLICT (group_id, client_id) DO UPDATE SET calls = calls + 1;
END;

-- Clients: the launch marks 100,000 clients contacted, and an index on their
-- status is rewritten for each of them. Listing a group's clients by status
-- reads the group's clients through (group_id, id) instead, which is also the
-- order in which a launch reads them in pages.
DROP INDEX IF EXISTS clients_group_status_idx;
CREATE INDEX clients_group_id_idx ON clients (group_id, id);
