//! Webhook storm benchmark (issue 10, item 13): a campaign of 100,000 calls
//! launched against the simulator (its own process, calls held still), then
//! every call's `post_call_transcription` webhook, signed, as ElevenLabs sends
//! it (a transcript of ten turns, analysis, data collection), posted to the
//! release server at `BENCH_CONCURRENCY` (default 64) at once. Prints one JSON
//! object per backend: webhooks per second, how many were not answered 200
//! (a deadlock was a 500), and the server's peak RSS during the storm (a
//! fresh process after the launch, so the figure is the storm's).
//!
//! `cargo bench --bench webhooks` (`BENCH_ROWS`, default 100000;
//! `BENCH_BACKENDS`, default `sqlite,postgres`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{Server, SimulatorProcess};
use serde_json::{Value, json};
use sqlx::{Connection, Row};

const SECRET: &str = "wsec_bench_secret_0123456789abcdef";
const STEP_MS: u64 = 600_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `(client id, number)` of every call record, in id order.
async fn calls(database_url: &str) -> Vec<(i64, String)> {
    let sql = "SELECT client_id, phone_e164 FROM call_records ORDER BY id";
    if database_url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
        rows.iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
            .collect()
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
        rows.iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
            .collect()
    }
}

/// A transcription event as ElevenLabs posts it for one finished call.
fn event(batch: &str, client: i64, phone: &str, n: usize) -> String {
    let transcript: Vec<Value> = (0..10u32)
        .map(|turn| {
            json!({
                "role": if turn.is_multiple_of(2) { "agent" } else { "user" },
                "message": format!("Mensaje {turn} de la conversación sobre el saldo pendiente del cliente."),
                "time_in_call_secs": turn * 5,
            })
        })
        .collect();
    json!({
        "type": "post_call_transcription",
        "event_timestamp": chrono::Utc::now().timestamp(),
        "data": {
            "agent_id": marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA,
            "conversation_id": format!("conv_bench_{n}"),
            "status": "done",
            "transcript": transcript,
            "metadata": {
                "start_time_unix_secs": 1_764_000_000, "call_duration_secs": 42 + n % 60,
                "termination_reason": "Client disconnected: 1000",
                "batch_call": {"batch_call_id": batch, "batch_call_recipient_id": client.to_string()},
                "phone_call": {"type": "twilio", "direction": "outbound", "external_number": phone}
            },
            "analysis": {
                "call_successful": if n.is_multiple_of(3) { "failure" } else { "success" },
                "transcript_summary": "El cliente se compromete a pagar el viernes.",
                "evaluation_criteria_results": {"compromiso_pago": {"criteria_id": "compromiso_pago", "result": "success", "rationale": "Lo dijo."}},
                "data_collection_results": {"fecha_pago": {"data_collection_id": "fecha_pago", "value": "viernes", "rationale": "Mencionada."}}
            }
        }
    })
    .to_string()
}

async fn run(backend: &str, csv: &[u8]) {
    let simulator = SimulatorProcess::start(STEP_MS).await;
    let step = STEP_MS.to_string();
    let env = [
        ("SIMULATOR_STEP_MS", step.as_str()),
        ("SYNC_INTERVAL_SECS", "0"),
        ("ELEVENLABS_API_KEY", "bench-key"),
        ("ELEVENLABS_BASE_URL", simulator.base_url.as_str()),
        ("ELEVENLABS_WEBHOOK_SECRET", SECRET),
    ];
    let server = Server::start(backend, &env).await;
    let agent = marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA;
    let id = server
        .create_group("bench webhooks", Some(agent), csv)
        .await;
    let (status, reply, _) = server
        .post(&format!("/api/groups/{id}/call"), &json!({"userId": 1}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let batch_ids: Vec<String> = reply["data"]["batchIds"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    server.settle();
    let server = server.restart().await;
    let calls = calls(server.database_url()).await;
    // Calls are in batches of 10,000, in launch order.
    let events: Vec<String> = calls
        .iter()
        .enumerate()
        .map(|(n, (client, phone))| {
            let batch = batch_ids
                .get(n / 10_000)
                .map(String::as_str)
                .unwrap_or_default();
            event(batch, *client, phone, n)
        })
        .collect();
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let url = format!("{}/api/webhooks/elevenlabs", server.base_url());
    let started = Instant::now();
    let cpu_before = server.cpu_seconds();
    let workers = (0..env_or("BENCH_CONCURRENCY", 64)).map(|_| {
        let (events, next, failures, client, url) = (
            events.clone(),
            next.clone(),
            failures.clone(),
            client.clone(),
            url.clone(),
        );
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = events.get(n) else { break };
                let signature = marcador::elevenlabs::webhook::sign(
                    SECRET,
                    chrono::Utc::now().timestamp(),
                    body.as_bytes(),
                );
                let answered = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("ElevenLabs-Signature", signature)
                    .body(body.clone())
                    .send()
                    .await;
                if !answered.is_ok_and(|r| r.status().is_success()) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let seconds = started.elapsed().as_secs_f64();
    let applied = {
        let sql = "SELECT COUNT(*) FROM call_records WHERE status = 'completed'";
        let url = server.database_url().to_owned();
        if url.starts_with("sqlite") {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    };
    println!(
        "{}",
        json!({
            "benchmark": "webhooks",
            "backend": backend,
            "webhooks": events.len(),
            "concurrency": env_or("BENCH_CONCURRENCY", 64),
            "event_bytes": events.first().map(String::len),
            "not_200": failures.load(Ordering::Relaxed),
            "calls_completed": applied,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "webhooks_per_second": (events.len() as f64 / seconds).round(),
            "server_cpu_seconds": ((server.cpu_seconds() - cpu_before) * 100.0).round() / 100.0,
            "server_peak_rss_mb": server.peak_rss_mb(),
        })
    );
    server.stop();
    simulator.stop();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut csv = String::from("nombre,telefono,monto\n");
    for i in 0..env_or("BENCH_ROWS", 100_000) {
        csv.push_str(&format!("Cliente {i},31{}{:07},{}\n", i % 6, i, i % 1000));
    }
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in backends.split(',').map(str::trim) {
        runtime.block_on(run(backend, csv.as_bytes()));
    }
}
