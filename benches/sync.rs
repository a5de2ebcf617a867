//! Sync benchmark (issue 5): the sync of one 10,000-recipient batch whose
//! calls have all finished, on a release build, on SQLite and PostgreSQL.
//! The server runs in this process (so the sync's own time can be measured
//! around `SyncWorker::tick`), against its in-process simulator with webhooks
//! off, so that the sync has every status change and every conversation to do.
//!
//! `cargo bench --bench sync` (`BENCH_ROWS` changes the batch size). Prints one
//! JSON object per backend:
//! - `first_tick_seconds`: the first sync: the snapshot of every recipient
//!   applied (all moved from `pending` to their outcome) and the first 500
//!   conversations read;
//! - `all_conversations_seconds`: the time spent in the ticks until the batch
//!   is final (every finished call's conversation read once), waits between
//!   ticks excluded.

use std::time::{Duration, Instant};

use base64::Engine;
use marcador::app::Application;
use marcador::config::Config;
use marcador::sync::SyncWorker;
use serde_json::{Value, json};

fn rows() -> usize {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

async fn run(backend: &str, csv: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (database_url, cleanup) = if backend == "sqlite" {
        (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        )
    } else {
        let admin = std::env::var("MARCADOR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("marcador_sync_bench_{}", std::process::id());
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin.clone());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        (format!("{base}/{name}"), Some((admin, name)))
    };
    let mut config = Config::from_env().expect("config");
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.database_url = database_url;
    config.data_dir = dir.path().join("data");
    config.elevenlabs_api_key = None;
    config.simulator_step_ms = 1;
    config.simulator_webhooks = false;
    config.simulator_capture = false;
    config.sync_interval_secs = 0;
    config.max_clients_per_group = 200_000;
    let app = Application::build(config).await.expect("server");
    let base = format!("http://{}", app.local_addr().expect("bound"));
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = http.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let reply = request.send().await.expect("request");
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.expect("json"))
        }
    };
    let (_, registered) = post(
        "/api/auth/register",
        None,
        json!({"username": "bench", "email": "bench@example.com", "password": "benchmark password"}),
    )
    .await;
    let token = registered["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, group) = post(
        "/api/groups",
        Some(&token),
        json!({"name": "bench sync", "agentId": marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA,
               "base64": base64::engine::general_purpose::STANDARD.encode(csv), "document_name": "c.csv"}),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let id = group["data"]["id"].as_i64().expect("group id");
    let (status, launched) = post(
        &format!("/api/groups/{id}/call"),
        Some(&token),
        json!({"userId": 1}),
    )
    .await;
    assert_eq!(status, 200, "{launched}");
    // Every call reaches its outcome at the simulator (a few 1 ms steps).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let worker = SyncWorker::with_owner(&state, "bench");
    let started = Instant::now();
    let first = worker.tick().await;
    let first_tick = started.elapsed().as_secs_f64();
    assert_eq!(first.failed, 0, "{first:?}");
    let mut conversations = first.conversations;
    let mut ticks = 1;
    let mut all = first_tick;
    let mut finalized = first.finalized > 0;
    while !finalized && ticks < 200 {
        // The next sync is due one interval later; only the ticks themselves are timed.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let started = Instant::now();
        let report = worker.tick().await;
        all += started.elapsed().as_secs_f64();
        ticks += 1;
        conversations += report.conversations;
        finalized = report.finalized > 0;
    }
    println!(
        "{}",
        json!({
            "benchmark": "sync",
            "backend": backend,
            "recipients": rows(),
            "first_tick_seconds": (first_tick * 1000.0).round() / 1000.0,
            "first_tick_changed_calls": first.changed_calls,
            "first_tick_conversations": first.conversations,
            "all_conversations_seconds": (all * 1000.0).round() / 1000.0,
            "conversations_read": conversations,
            "ticks": ticks,
        })
    );
    drop(state);
    if let Some((admin, name)) = cleanup {
        psql(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    }
}

fn psql(admin: &str, sql: &str) {
    let status = std::process::Command::new("psql")
        .arg(admin)
        .arg("-qc")
        .arg(sql)
        .status()
        .expect("psql");
    assert!(status.success(), "{sql}");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut csv = String::from("nombre,telefono,monto\n");
    for i in 0..rows() {
        csv.push_str(&format!("Cliente {i},31{}{:07},{}\n", i % 6, i, i % 1000));
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for backend in ["sqlite", "postgres"] {
        runtime.block_on(run(backend, csv.as_bytes()));
    }
}
