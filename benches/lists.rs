//! List benchmark (issue 10 item 12): what `GET /api/groups`, a group's detail
//! and its first page of clients cost beside small groups and beside a group of
//! 100,000 clients, at 50 concurrent keep-alive connections (as `ab -k -c 50`),
//! on a release server (the real binary, a child process), SQLite and
//! PostgreSQL. Prints one JSON object per measurement: requests per second and
//! p50/p99 in ms (client side: request sent → whole body read).
//!
//! `cargo bench --bench lists` (`BENCH_ROWS`: the large group, default 100000;
//! `BENCH_REQUESTS` per measurement, default 3000; `BENCH_CONCURRENCY`, default
//! 50; `BENCH_BACKENDS`, default `sqlite,postgres`).

mod common;

use std::cell::RefCell;
use std::time::Instant;

use common::Server;
use serde_json::json;

/// Groups the list shows before the large one arrives, and their clients.
const SMALL_GROUPS: usize = 10;
const SMALL_CLIENTS: usize = 100;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn csv(from: usize, n: usize) -> String {
    let mut out = String::from("Nombre,Teléfono,Monto Deuda,Ciudad\n");
    for i in from..from + n {
        out.push_str(&format!(
            "Cliente {i},31{}{:07},{},Bogotá\n",
            i % 6,
            i,
            i % 1000
        ));
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[index.min(sorted.len() - 1)] * 10_000.0).round() / 10.0
}

/// `requests` GETs of `path` from `concurrency` loops sharing one counter, each
/// loop keeping its own connection alive.
#[allow(clippy::too_many_arguments)]
async fn measure(
    server: &Server,
    backend: &str,
    groups: &str,
    request: &str,
    path: &str,
    requests: usize,
    concurrency: usize,
) {
    // Warm-up: one request per connection (connections, prepared statements, cache).
    let warm = (0..concurrency).map(|_| server.get(path));
    for (status, _, _) in futures::future::join_all(warm).await {
        assert_eq!(status, 200, "{path}");
    }
    let left = RefCell::new(requests);
    let times = RefCell::new(Vec::with_capacity(requests));
    let bytes = RefCell::new(0);
    let start = Instant::now();
    let workers = (0..concurrency).map(|_| async {
        loop {
            {
                let mut left = left.borrow_mut();
                if *left == 0 {
                    return;
                }
                *left -= 1;
            }
            let (status, body, seconds) = server.get(path).await;
            assert_eq!(status, 200, "{path}");
            *bytes.borrow_mut() = body;
            times.borrow_mut().push(seconds);
        }
    });
    futures::future::join_all(workers).await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut times = times.into_inner();
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "benchmark": "lists",
            "backend": backend,
            "groups": groups,
            "request": request,
            "path": path,
            "requests": requests,
            "concurrency": concurrency,
            "requests_per_second": (requests as f64 / elapsed).round(),
            "p50_ms": percentile(&times, 0.5),
            "p99_ms": percentile(&times, 0.99),
            "body_bytes": bytes.into_inner(),
        })
    );
}

/// The list, then `group`'s detail and first page of clients, with the
/// server's groups as `label` says.
async fn measure_beside(
    server: &Server,
    backend: &str,
    label: &str,
    group: i64,
    requests: usize,
    concurrency: usize,
) {
    let cases = [
        ("groups list", "/api/groups".to_owned()),
        ("group detail", format!("/api/groups/{group}")),
        ("clients page 1", format!("/api/groups/{group}/clients")),
    ];
    for (request, path) in &cases {
        measure(server, backend, label, request, path, requests, concurrency).await;
    }
}

async fn run(backend: &str, large: usize, requests: usize, concurrency: usize) {
    let server = Server::start(backend, &[]).await;
    let mut small = 0;
    for g in 0..SMALL_GROUPS {
        let clients = csv(g * SMALL_CLIENTS, SMALL_CLIENTS);
        small = server
            .create_group(&format!("small {g}"), None, clients.as_bytes())
            .await;
    }
    server.settle();
    let label = format!("{SMALL_GROUPS} × {SMALL_CLIENTS}");
    measure_beside(&server, backend, &label, small, requests, concurrency).await;
    let big = server
        .create_group("large", None, csv(1_000_000, large).as_bytes())
        .await;
    server.settle();
    let label = format!("{label} + 1 × {large}");
    measure_beside(&server, backend, &label, big, requests, concurrency).await;
    server.stop();
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (such as `cargo test --benches`) skips the work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let large = env_or("BENCH_ROWS", 100_000);
    let requests = env_or("BENCH_REQUESTS", 3000);
    let concurrency = env_or("BENCH_CONCURRENCY", 50);
    let backends: Vec<String> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    // One thread for the load, as `ab` has: the server keeps the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for backend in &backends {
        runtime.block_on(run(backend, large, requests, concurrency));
    }
}
