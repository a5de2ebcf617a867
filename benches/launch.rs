//! Launch benchmark (issue 4): `POST /api/groups/:id/call` for a group of
//! 100,000 clients against the in-process simulator (no added latency), on a
//! release build, on SQLite and PostgreSQL. Prints one JSON object per backend.
//!
//! `cargo bench --bench launch` (`BENCH_ROWS` changes the group size).

mod common;

use base64::Engine;
use common::Server;
use serde_json::json;

fn rows() -> usize {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

async fn run(backend: &str, csv: &[u8]) {
    // Slow simulated calls: the benchmark measures the launch, not the dialling.
    let server = Server::start(
        backend,
        &[("SIMULATOR_STEP_MS", "600000"), ("SYNC_INTERVAL_SECS", "0")],
    )
    .await;
    let group = json!({
        "name": "bench launch",
        "agentId": marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA,
        "base64": base64::engine::general_purpose::STANDARD.encode(csv),
        "document_name": "clientes.csv",
    });
    let (status, reply, _) = server.post("/api/groups", &group).await;
    assert_eq!(status, 201, "{reply}");
    let id = reply["data"]["id"].as_i64().unwrap();
    server.settle();
    // A fresh process: the peak RSS below is the launch's, not the import's.
    let server = server.restart().await;
    let (status, reply, seconds) = server
        .post(&format!("/api/groups/{id}/call"), &json!({"userId": 1}))
        .await;
    println!(
        "{}",
        json!({
            "benchmark": "launch",
            "backend": backend,
            "status": status,
            "clients": rows(),
            "recipients": reply["data"]["recipientsCount"],
            "batches": reply["data"]["batchIds"].as_array().map(|b| b.len()),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "server_peak_rss_mb": server.peak_rss_mb(),
        })
    );
    server.stop();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut csv = String::from("nombre,telefono,monto,ciudad\n");
    for i in 0..rows() {
        csv.push_str(&format!(
            "Cliente {i},31{}{:07},{},Bogotá\n",
            i % 6,
            i,
            i % 1000
        ));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in ["sqlite", "postgres"] {
        runtime.block_on(run(backend, csv.as_bytes()));
    }
}
