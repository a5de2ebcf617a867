-- Call history and statistics (issue 5), SQLite flavour.
--
-- Statistics over a million call records cannot be computed row by row in a
-- request's time, so two small rollups are kept current by triggers on
-- call_records: whatever writes call records (launch, sync, webhook, a manual
-- UPDATE) keeps them right without knowing they exist.
--
-- call_stats_hourly: one row per group, UTC hour of created_at ('YYYY-MM-DDTHH',
-- the first 13 characters of the RFC 3339 text the application writes), batch,
-- status and outcome (call_successful, '' while unknown).
CREATE TABLE call_stats_hourly (
    group_id       INTEGER NOT NULL,
    batch_id       INTEGER NOT NULL,
    hour           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    calls          INTEGER NOT NULL DEFAULT 0,
    duration_sum   INTEGER NOT NULL DEFAULT 0,
    duration_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, hour, batch_id, status, outcome)
) WITHOUT ROWID;
CREATE INDEX call_stats_hourly_batch_idx ON call_stats_hourly (batch_id);

-- How many completed calls each client of a group had: uniqueClientsReached is
-- the number of rows with calls > 0.
CREATE TABLE call_reached_clients (
    group_id  INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    calls     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, client_id)
) WITHOUT ROWID;

INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
SELECT group_id, batch_id, substr(created_at, 1, 13), status, COALESCE(call_successful, ''),
       COUNT(*), COALESCE(SUM(duration_secs), 0), COUNT(duration_secs)
FROM call_records GROUP BY 1, 2, 3, 4, 5;

INSERT INTO call_reached_clients (group_id, client_id, calls)
SELECT group_id, client_id, COUNT(*) FROM call_records
WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2;

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

-- History pages filtered by status or batch, newest first (the rowid, i.e. id,
-- is every index's implicit last column, so ORDER BY created_at DESC, id DESC
-- reads straight from (…, created_at)); covering indexes for a period's
-- uniqueClientsReached and lastCallAt; the latest started call of the whole
-- history for lastCallAt.
CREATE INDEX IF NOT EXISTS call_records_group_status_created_idx ON call_records (group_id, status, created_at, client_id);
CREATE INDEX IF NOT EXISTS call_records_batch_created_idx ON call_records (batch_id, created_at);
CREATE INDEX IF NOT EXISTS call_records_group_created_started_idx ON call_records (group_id, created_at, started_at);
CREATE INDEX IF NOT EXISTS call_records_group_started_idx ON call_records (group_id, started_at);
