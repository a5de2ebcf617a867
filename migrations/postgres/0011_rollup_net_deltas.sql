-- Webhook storms deadlocked (issue 10, item 13: 2-8 "deadlock detected" per
-- 100,000-call campaign). The rollup trigger of migration 3 took its locks in
-- two statements, first the rows it decrements (the old statuses) and then the
-- rows it increments (the new ones), each in key order but not together: a
-- webhook moving a call in_progress -> completed locked "in_progress" then
-- "completed", while a sync statement touching a completed call and another
-- in progress locked "completed" then "in_progress". Now an UPDATE's change is
-- one net delta per key, upserted in one statement in key order, and keys
-- whose delta is zero (a completed call gaining its transcript) are not
-- touched at all, which also spares the most contended rows most of the work.
--
-- Webhook throughput: every webhook of a batch landed on the same few rollup
-- rows (its batch, hour, status and outcome), so the deliveries of one batch
-- queued on one row lock and went one commit at a time (905 webhooks/s with 64
-- at once on the project's machine, 1,655 after this). The rows are split into
-- 8 shards by call record id; every reader already sums them. (SQLite has one
-- writer at a time anyway: its rollup is unchanged.)
ALTER TABLE call_stats_hourly ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE call_stats_hourly DROP CONSTRAINT call_stats_hourly_pkey;
ALTER TABLE call_stats_hourly ADD PRIMARY KEY (group_id, hour, batch_id, status, outcome, shard);

CREATE OR REPLACE FUNCTION call_records_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO call_stats_hourly AS s (group_id, batch_id, hour, status, outcome, shard, calls, duration_sum, duration_calls)
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
               COALESCE(call_successful, ''), CAST(id % 8 AS SMALLINT), COUNT(*), COALESCE(SUM(duration_secs), 0), COUNT(duration_secs)
        FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 3, 2, 4, 5, 6
        ON CONFLICT (group_id, hour, batch_id, status, outcome, shard) DO UPDATE SET
            calls = s.calls + EXCLUDED.calls,
            duration_sum = s.duration_sum + EXCLUDED.duration_sum,
            duration_calls = s.duration_calls + EXCLUDED.duration_calls;
        INSERT INTO call_reached_clients AS c (group_id, client_id, calls)
        SELECT group_id, client_id, COUNT(*) FROM new_rows
        WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (group_id, client_id) DO UPDATE SET calls = c.calls + EXCLUDED.calls;
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        INSERT INTO call_stats_hourly AS s (group_id, batch_id, hour, status, outcome, shard, calls, duration_sum, duration_calls)
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
               COALESCE(call_successful, ''), CAST(id % 8 AS SMALLINT), -COUNT(*), -COALESCE(SUM(duration_secs), 0), -COUNT(duration_secs)
        FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 3, 2, 4, 5, 6
        ON CONFLICT (group_id, hour, batch_id, status, outcome, shard) DO UPDATE SET
            calls = s.calls + EXCLUDED.calls,
            duration_sum = s.duration_sum + EXCLUDED.duration_sum,
            duration_calls = s.duration_calls + EXCLUDED.duration_calls;
        INSERT INTO call_reached_clients AS c (group_id, client_id, calls)
        SELECT group_id, client_id, -COUNT(*) FROM old_rows
        WHERE status = 'completed' AND client_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (group_id, client_id) DO UPDATE SET calls = c.calls + EXCLUDED.calls;
        RETURN NULL;
    END IF;

    -- UPDATE: the net change, one statement per rollup.
    INSERT INTO call_stats_hourly AS s (group_id, batch_id, hour, status, outcome, shard, calls, duration_sum, duration_calls)
    SELECT group_id, batch_id, hour, status, outcome, shard, SUM(calls), SUM(duration_sum), SUM(duration_calls)
    FROM (
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24') AS hour, status,
               COALESCE(call_successful, '') AS outcome, CAST(id % 8 AS SMALLINT) AS shard, -1 AS calls, -COALESCE(duration_secs, 0) AS duration_sum,
               -CAST(duration_secs IS NOT NULL AS INTEGER) AS duration_calls
        FROM old_rows
        UNION ALL
        SELECT group_id, batch_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), status,
               COALESCE(call_successful, ''), CAST(id % 8 AS SMALLINT), 1, COALESCE(duration_secs, 0),
               CAST(duration_secs IS NOT NULL AS INTEGER)
        FROM new_rows
    ) AS change
    GROUP BY 1, 2, 3, 4, 5, 6
    HAVING SUM(calls) <> 0 OR SUM(duration_sum) <> 0 OR SUM(duration_calls) <> 0
    ORDER BY 1, 3, 2, 4, 5, 6
    ON CONFLICT (group_id, hour, batch_id, status, outcome, shard) DO UPDATE SET
        calls = s.calls + EXCLUDED.calls,
        duration_sum = s.duration_sum + EXCLUDED.duration_sum,
        duration_calls = s.duration_calls + EXCLUDED.duration_calls;

    INSERT INTO call_reached_clients AS c (group_id, client_id, calls)
    SELECT group_id, client_id, SUM(calls)
    FROM (
        SELECT group_id, client_id, -1 AS calls FROM old_rows
        WHERE status = 'completed' AND client_id IS NOT NULL
        UNION ALL
        SELECT group_id, client_id, 1 FROM new_rows
        WHERE status = 'completed' AND client_id IS NOT NULL
    ) AS change
    GROUP BY 1, 2
    HAVING SUM(calls) <> 0
    ORDER BY 1, 2
    ON CONFLICT (group_id, client_id) DO UPDATE SET calls = c.calls + EXCLUDED.calls;
    RETURN NULL;
END;
$$;
