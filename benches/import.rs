//! Import benchmark (issue 3): a 100,000-row xlsx and the same rows as CSV,
//! each posted to `POST /api/groups` of a release server (the real binary, a
//! child process) on SQLite and on PostgreSQL. Prints one JSON object per run.
//!
//! `cargo bench --bench import` (rows: `BENCH_ROWS`, default 100000;
//! PostgreSQL: `MARCADOR_TEST_POSTGRES_URL`, default the local server).

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

fn phone(i: usize) -> String {
    format!("31{}{:07}", i % 6, i)
}

fn xlsx(n: usize) -> Vec<u8> {
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    for (col, h) in [
        "Nombre",
        "Teléfono",
        "Monto Deuda",
        "Ciudad",
        "Fecha Vencimiento",
    ]
    .iter()
    .enumerate()
    {
        sheet.write_string(0, col as u16, *h).unwrap();
    }
    for i in 0..n {
        let r = i as u32 + 1;
        sheet.write_string(r, 0, format!("Cliente {i}")).unwrap();
        sheet
            .write_number(r, 1, phone(i).parse::<f64>().unwrap())
            .unwrap();
        sheet.write_number(r, 2, (i % 1000) as f64 * 10.5).unwrap();
        sheet.write_string(r, 3, "Bogotá").unwrap();
        sheet.write_string(r, 4, "2026-12-01").unwrap();
    }
    workbook.save_to_buffer().unwrap()
}

fn csv(n: usize) -> Vec<u8> {
    let mut out = String::from("Nombre,Teléfono,Monto Deuda,Ciudad,Fecha Vencimiento\n");
    for i in 0..n {
        out.push_str(&format!(
            "Cliente {i},{},{},Bogotá,2026-12-01\n",
            phone(i),
            (i % 1000) as f64 * 10.5
        ));
    }
    out.into_bytes()
}

async fn run(backend: &str, files: &[(&str, &[u8])]) {
    let server = Server::start(backend, &[]).await;
    for (name, bytes) in files {
        let body = json!({
            "name": format!("bench {name}"),
            "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "document_name": name,
        });
        let (status, reply, seconds) = server.post("/api/groups", &body).await;
        let created = reply["data"]["fileProcessing"]["clientsCreated"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "{}",
            json!({
                "benchmark": "import",
                "backend": backend,
                "file": name,
                "file_mb": (bytes.len() as f64 / 1048576.0 * 100.0).round() / 100.0,
                "status": status,
                "rows": rows(),
                "clients_created": created,
                "seconds": (seconds * 1000.0).round() / 1000.0,
                "rows_per_second": (created as f64 / seconds).round(),
                "server_peak_rss_mb": server.peak_rss_mb(),
            })
        );
    }
    server.stop();
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (such as `cargo test --benches`) skips the work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = rows();
    let xlsx = xlsx(n);
    let csv = csv(n);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in ["sqlite", "postgres"] {
        runtime.block_on(run(
            backend,
            &[("clientes.xlsx", &xlsx), ("clientes.csv", &csv)],
        ));
    }
}
