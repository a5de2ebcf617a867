//! Launch benchmark (issue 4): `POST /api/groups/:id/call` for a group of
//! 100,000 clients against the simulator (no added latency), on a release
//! build, on SQLite and PostgreSQL. Prints one JSON object per backend and
//! simulator placement: `process` (the simulator is its own process, as
//! ElevenLabs is to a production server) and `in-process` (the simulator of
//! `cargo run` with no API key, whose work and memory count as the server's).
//!
//! `cargo bench --bench launch` (`BENCH_ROWS` changes the group size,
//! `BENCH_SIMULATOR=process` or `in-process` runs only that placement,
//! `BENCH_BACKENDS=postgres` only that backend).

mod common;

use common::{Server, SimulatorProcess};
use serde_json::json;

fn rows() -> usize {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Slow simulated calls: the benchmark measures the launch, not the dialling.
const STEP_MS: u64 = 600_000;

async fn run(backend: &str, placement: &str, csv: &[u8]) {
    let simulator = match placement {
        "process" => Some(SimulatorProcess::start(STEP_MS).await),
        _ => None,
    };
    let step = STEP_MS.to_string();
    let mut env = vec![
        ("SIMULATOR_STEP_MS", step.as_str()),
        ("SYNC_INTERVAL_SECS", "0"),
    ];
    if let Some(simulator) = &simulator {
        env.push(("ELEVENLABS_API_KEY", "bench-key"));
        env.push(("ELEVENLABS_BASE_URL", simulator.base_url.as_str()));
    }
    let server = Server::start(backend, &env).await;
    let agent = marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA;
    let id = server.create_group("bench launch", Some(agent), csv).await;
    server.settle();
    // A fresh process: the peak RSS below is the launch's, not the import's.
    let server = server.restart().await;
    let cpu_before = server.cpu_seconds();
    let sim_before = simulator.as_ref().map(SimulatorProcess::cpu_seconds);
    let (status, reply, seconds) = server
        .post(&format!("/api/groups/{id}/call"), &json!({"userId": 1}))
        .await;
    let server_cpu = server.cpu_seconds() - cpu_before;
    let simulator_cpu = simulator
        .as_ref()
        .zip(sim_before)
        .map(|(s, before)| ((s.cpu_seconds() - before) * 100.0).round() / 100.0);
    println!(
        "{}",
        json!({
            "benchmark": "launch",
            "backend": backend,
            "simulator": placement,
            "status": status,
            "clients": rows(),
            "recipients": reply["data"]["recipientsCount"],
            "batches": reply["data"]["batchIds"].as_array().map(|b| b.len()),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "server_cpu_seconds": (server_cpu * 100.0).round() / 100.0,
            "simulator_cpu_seconds": simulator_cpu,
            "server_peak_rss_mb": server.peak_rss_mb(),
        })
    );
    server.stop();
    if let Some(simulator) = simulator {
        simulator.stop();
    }
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
    let only = std::env::var("BENCH_SIMULATOR").ok();
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    for placement in ["process", "in-process"] {
        if only.as_deref().is_some_and(|o| o != placement) {
            continue;
        }
        for backend in backends.split(',') {
            runtime.block_on(run(backend, placement, csv.as_bytes()));
        }
    }
}
