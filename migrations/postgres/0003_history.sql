-- Call history and statistics (issue 5), PostgreSQL flavour.
--
-- Statistics over a million call records cannot be computed row by row in a
-- request's time, so two small rollups are kept current by triggers on
-- call_records: whatever writes call records (launch, sync, webhook, a manual
-- UPDATE) keeps them right without knowing they exist. The triggers are
-- statement-level with transition tables: a 10,000-row launch is one grouped
-- upsert, not 10,000.
--
-- call_stats_hourly: one row per group, UTC hour of created_at ('YYYY-MM-DDTHH',
-- the same text key as on SQLite), batch, status and outcome (call_successful,
-- '' while unknown).
CREATE TABLE call_stats_hourly (
    group_id       BIGINT NOT NULL,
    batch_id       BIGINT NOT NULL,
    hour           TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    outcome        TEXT   NOT NULL,
    calls          BIGINT NOT NULL DEFAULT 0,
    duration_sum   BIGINT NOT NULL DEFAULT 0,
    duration_calls BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, hour, batch_id, status, outcome)
);
CREATE INDEX call_stats_hourly_batch_idx ON call_stats_hourly (batch_id);

-- How many completed calls each client of a group had: uniqueClientsReached is
-- the number of rows with calls > 0.
CREATE TABLE call_reached_clients (
    group_id  BIGINT NOT NULL,
    client_id BIGINT NOT NULL,
    calls     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, client_id)
);

-- Rows are upserted in key order so that concurrent statements lock them in the
-- same order.
CREATE FUNCTION call_records_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO call_stats_hourly AS s (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
               COALESCE(call_successful, ''), -COUNT(*), -COALESCE(SUM(duration_secs), 0), -COUNT(duration_secs)
        FROM old_rows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
            calls = s.calls + EXCLUDED.calls,
            duration_sum = s.duration_sum + EXCLUDED.duration_sum,
            duration_calls = s.duration_calls + EXCLUDED.duration_calls;
        INSERT INTO call_reached_clients AS c (group_id, client_id, calls)
        SELECT group_id, client_id, -COUNT(*) FROM old_rows
        WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (group_id, client_id) DO UPDATE SET calls = c.calls + EXCLUDED.calls;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO call_stats_hourly AS s (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
               COALESCE(call_successful, ''), COUNT(*), COALESCE(SUM(duration_secs), 0), COUNT(duration_secs)
        FROM new_rows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (group_id, hour, batch_id, status, outcome) DO UPDATE SET
            calls = s.calls + EXCLUDED.calls,
            duration_sum = s.duration_sum + EXCLUDED.duration_sum,
            duration_calls = s.duration_calls + EXCLUDED.duration_calls;
        INSERT INTO call_reached_clients AS c (group_id, client_id, calls)
        SELECT group_id, client_id, COUNT(*) FROM new_rows
        WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (group_id, client_id) DO UPDATE SET calls = c.calls + EXCLUDED.calls;
    END IF;
    RETURN NULL;
END;
$$;

INSERT INTO call_stats_hourly (group_id, batch_id, hour, status, outcome, calls, duration_sum, duration_calls)
SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
       COALESCE(call_successful, ''), COUNT(*), COALESCE(SUM(duration_secs), 0), COUNT(duration_secs)
FROM call_records GROUP BY 1, 2, 3, 4, 5;

INSERT INTO call_reached_clients (group_id, client_id, calls)
SELECT group_id, client_id, COUNT(*) FROM call_records
WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2;

CREATE TRIGGER call_records_rollup_insert AFTER INSERT ON call_records
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION call_records_rollup();
CREATE TRIGGER call_records_rollup_update AFTER UPDATE ON call_records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION call_records_rollup();
CREATE TRIGGER call_records_rollup_delete AFTER DELETE ON call_records
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION call_records_rollup();

-- History pages newest first, read from an index in order (plain, by status, by
-- batch); the id is in the key so that deep pages are index-only scans. The
-- INCLUDEd columns let a period's lastCallAt and uniqueClientsReached be
-- index-only scans too; (group_id, started_at) answers lastCallAt of the whole
-- history at once.
CREATE INDEX IF NOT EXISTS call_records_group_created_id_idx ON call_records (group_id, created_at DESC, id DESC) INCLUDE (started_at);
CREATE INDEX IF NOT EXISTS call_records_group_status_created_idx ON call_records (group_id, status, created_at DESC, id DESC) INCLUDE (client_id);
CREATE INDEX IF NOT EXISTS call_records_batch_created_idx ON call_records (batch_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS call_records_group_started_idx ON call_records (group_id, started_at);
