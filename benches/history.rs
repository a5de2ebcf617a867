//! Call history and statistics benchmark (issue 5): one group of 10,000 clients
//! with 1,000,000 call records in 100 batches over ~58 days, seeded with direct
//! SQL into the release server's database; then `GET call-stats` and
//! `GET call-history` (several pages and filters), ~50 requests each, on SQLite
//! and PostgreSQL. Prints one JSON object per measurement (p50/p95 in ms,
//! client side: request sent → whole body read).
//!
//! `cargo bench --bench history` (`BENCH_BATCHES`: batches of 10,000 calls,
//! default 100; `BENCH_REQUESTS`: requests per measurement, default 50).

mod common;

use std::time::Instant;

use base64::Engine;
use common::Server;
use serde_json::json;
use sqlx::Connection;

const CLIENTS: i64 = 10_000;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch `b` (1-based) starts 14 h after the previous one from 2026-01-01T00:00Z;
/// its calls share its creation instant, as a launch writes them. The outcome
/// of each call is a fixed hash of (batch, client): ~60% completed (60% of them
/// successful), 15% failed, 15% voicemail, 5% cancelled, 5% pending.
fn seed_sql(backend: &str, group: i64, batches: i64) -> Vec<String> {
    let (created, started, text) = if backend == "postgres" {
        (
            "TIMESTAMPTZ '2026-01-01 00:00:00+00' + b.n * INTERVAL '14 hours'",
            "b.created_at + (c.id % 3600) * INTERVAL '1 second'",
            "::text",
        )
    } else {
        (
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', '2026-01-01 00:00:00', '+' || (b.n * 14) || ' hours')",
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', b.created_at, '+' || (c.id % 3600) || ' seconds')",
            "",
        )
    };
    let series = if backend == "postgres" {
        format!("(SELECT generate_series(1, {batches}) AS n) b")
    } else {
        format!(
            "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {batches}) SELECT n FROM s) b"
        )
    };
    let bucket = "((b.id * 7919 + c.id * 104729) % 100)";
    vec![
        format!(
            "INSERT INTO batches (elevenlabs_batch_id, group_id, created_by, agent_id, name, status, submit_state,
                 part_index, part_count, total_calls_scheduled, raw, is_final, created_at, updated_at)
             SELECT 'btcal_bench' || b.n{text}, {group}, 1, 'agent_bench', 'Bench ' || b.n{text}, 'completed', 'submitted',
                 1, 1, {CLIENTS}, '{{}}', TRUE, {created}, {created}
             FROM {series}"
        ),
        format!(
            "INSERT INTO call_records (batch_id, group_id, client_id, recipient_id, phone_e164, status, conversation_id,
                 duration_secs, call_successful, transcript_summary, started_at, created_at, updated_at)
             SELECT b.id, b.group_id, c.id, 'rcp_' || b.id{text} || '_' || c.id{text}, c.phone_e164,
                 CASE WHEN {bucket} < 60 THEN 'completed' WHEN {bucket} < 75 THEN 'failed'
                      WHEN {bucket} < 90 THEN 'voicemail' WHEN {bucket} < 95 THEN 'cancelled' ELSE 'pending' END,
                 CASE WHEN {bucket} < 90 THEN 'conv_' || b.id{text} || '_' || c.id{text} END,
                 CASE WHEN {bucket} < 60 THEN 20 + (c.id * 31 + b.id) % 280
                      WHEN {bucket} >= 75 AND {bucket} < 90 THEN 8 + (c.id + b.id) % 20 END,
                 CASE WHEN {bucket} < 60 AND (b.id + c.id) % 10 < 6 THEN 'success'
                      WHEN {bucket} < 60 THEN 'failure' WHEN {bucket} >= 75 AND {bucket} < 90 THEN 'failure' END,
                 CASE WHEN {bucket} < 60 THEN 'Resumen de la llamada ' || c.id{text} END,
                 CASE WHEN {bucket} < 90 THEN {started} END,
                 b.created_at, b.created_at
             FROM batches b CROSS JOIN clients c
             WHERE b.group_id = {group} AND c.group_id = {group}"
        ),
    ]
}

async fn seed(server: &Server, backend: &str, group: i64, batches: i64) -> f64 {
    let start = Instant::now();
    let statements = seed_sql(backend, group, batches);
    if backend == "postgres" {
        let mut conn = sqlx::PgConnection::connect(server.database_url())
            .await
            .unwrap();
        for sql in &statements {
            sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
        }
        // One statement each: VACUUM cannot run inside the implicit transaction of a multi-statement query.
        for table in [
            "call_records",
            "call_stats_hourly",
            "batches",
            "call_reached_clients",
        ] {
            sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(server.database_url())
            .await
            .unwrap();
        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
            .execute(&mut conn)
            .await
            .unwrap();
        let mut tx = conn.begin().await.unwrap();
        for sql in &statements {
            sqlx::raw_sql(sql).execute(&mut *tx).await.expect(sql);
        }
        tx.commit().await.unwrap();
        sqlx::raw_sql("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[index.min(sorted.len() - 1)] * 10_000.0).round() / 10.0
}

async fn measure(server: &Server, backend: &str, name: &str, path: &str, requests: i64) {
    // One warm-up request (prepared statements, page cache).
    let (status, _, _) = server.get(path).await;
    assert_eq!(status, 200, "{path}");
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..requests {
        let (status, body, seconds) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        bytes = body;
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "benchmark": "history",
            "backend": backend,
            "request": name,
            "path": path,
            "requests": requests,
            "p50_ms": percentile(&times, 0.5),
            "p95_ms": percentile(&times, 0.95),
            "body_bytes": bytes,
        })
    );
}

async fn run(backend: &str, batches: i64, requests: i64) {
    let server = Server::start(backend, &[]).await;
    let mut csv = String::from("nombre,telefono,monto,ciudad\n");
    for i in 0..CLIENTS {
        csv.push_str(&format!(
            "Cliente {i},31{}{:07},{},Bogotá\n",
            i % 6,
            i,
            i % 1000
        ));
    }
    let (status, reply, _) = server
        .post(
            "/api/groups",
            &json!({"name": "bench history", "timezone": "America/Bogota",
                    "base64": base64::engine::general_purpose::STANDARD.encode(csv.as_bytes()),
                    "document_name": "clientes.csv"}),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    let group = reply["data"]["id"].as_i64().unwrap();
    let seconds = seed(&server, backend, group, batches).await;
    println!(
        "{}",
        json!({"benchmark": "history", "backend": backend, "seeded_calls": batches * CLIENTS,
               "batches": batches, "seed_seconds": (seconds * 10.0).round() / 10.0})
    );
    // A fresh process: nothing cached from before the seed.
    let server = server.restart().await;
    let base = format!("/api/groups/{group}");
    let total = batches * CLIENTS;
    let deep = (total / 2) / 20;
    let mid_batch = format!("btcal_bench{}", batches / 2 + 1);
    let cases = [
        ("call-stats", format!("{base}/call-stats")),
        (
            "call-stats, 30 days (dates)",
            format!("{base}/call-stats?from=2026-01-10&to=2026-02-08"),
        ),
        (
            "call-stats, odd instants (raw path)",
            format!("{base}/call-stats?from=2026-01-10T00:00:01Z&to=2026-02-08T12:30:00Z"),
        ),
        (
            "call-history page 1",
            format!("{base}/call-history?page=1&limit=20"),
        ),
        (
            "call-history page 100",
            format!("{base}/call-history?page=100&limit=20"),
        ),
        (
            "call-history deep page (offset 500,000)",
            format!("{base}/call-history?page={deep}&limit=20"),
        ),
        (
            "call-history status=failed page 10",
            format!("{base}/call-history?status=failed&page=10&limit=20"),
        ),
        (
            "call-history batchId page 5",
            format!("{base}/call-history?batchId={mid_batch}&page=5&limit=20"),
        ),
        (
            "call-history callSuccessful=success, 7 days",
            format!("{base}/call-history?callSuccessful=success&from=2026-02-01&to=2026-02-07"),
        ),
        (
            "call-history search name",
            format!("{base}/call-history?search=Cliente%201234&limit=20"),
        ),
    ];
    for (name, path) in &cases {
        let n = if name.contains("raw path") || name.contains("search") {
            (requests / 5).max(5)
        } else {
            requests
        };
        measure(&server, backend, name, path, n).await;
    }
    server.stop();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let batches = env_or("BENCH_BATCHES", 100);
    let requests = env_or("BENCH_REQUESTS", 50);
    let backends: Vec<String> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in &backends {
        runtime.block_on(run(backend, batches, requests));
    }
}
