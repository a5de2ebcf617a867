//! Hostile-upload benchmark (issue 10, item 1): the server's peak RSS while it
//! refuses files built to cost more than they weigh, each alone and four at
//! once, next to a 100,000-row import. The files are the issue's, full size:
//! an `.ods` repeating one cell over 1,000 columns × 50,000 rows (under 1 KB),
//! and `.xlsx` files of about 1 MB holding one 1.2 GB inline cell, one 1.2 GB
//! shared string, or 1.2 GB of whitespace. Each case runs on a fresh release
//! server (the real binary, a child process), so its `VmHWM` is that case's.
//! Prints one JSON object per case.
//!
//! `cargo bench --bench hostile` (backends: `BENCH_BACKENDS`, default
//! `sqlite,postgres`; PostgreSQL: `MARCADOR_TEST_POSTGRES_URL`).

mod common;

use std::io::Write;

use base64::Engine;
use common::Server;
use serde_json::{Value, json};

const MAIN: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const REL: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const PKG: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
/// What each bomb inflates to.
const HUGE: usize = 1200 * 1024 * 1024;

/// Writes `len` bytes of `byte` into an archive part without holding them.
fn write_run(out: &mut impl Write, byte: u8, len: usize) {
    let chunk = vec![byte; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        out.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// An xlsx whose sheet is `before` + `run` × `run_byte` + `after`, with
/// optional shared strings made the same way.
fn xlsx(sheet: (&str, u8, usize, &str), shared: Option<(&str, u8, usize, &str)>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut rels = format!(
        r#"<Relationship Id="rId1" Type="{REL}/worksheet" Target="worksheets/sheet1.xml"/>"#
    );
    if shared.is_some() {
        rels.push_str(&format!(
            r#"<Relationship Id="rId2" Type="{REL}/sharedStrings" Target="sharedStrings.xml"/>"#
        ));
    }
    let parts = [
        (
            "[Content_Types].xml",
            r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>"#.to_owned(),
        ),
        (
            "_rels/.rels",
            format!(
                r#"<Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
            ),
        ),
        (
            "xl/workbook.xml",
            format!(
                r#"<workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets><sheet name="Hoja1" sheetId="1" r:id="rId1"/></sheets></workbook>"#
            ),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            format!(r#"<Relationships xmlns="{PKG}">{rels}</Relationships>"#),
        ),
    ];
    for (name, text) in parts {
        zip.start_file(name, deflated).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    let mut part = |name: &str, (before, byte, len, after): (&str, u8, usize, &str)| {
        zip.start_file(name, deflated).unwrap();
        zip.write_all(before.as_bytes()).unwrap();
        write_run(&mut zip, byte, len);
        zip.write_all(after.as_bytes()).unwrap();
    };
    let open = format!(r#"<worksheet xmlns="{MAIN}"><sheetData>"#);
    let header = r#"<row r="1"><c r="A1" t="inlineStr"><is><t>telefono</t></is></c><c r="B1" t="inlineStr"><is><t>nombre</t></is></c></row>"#;
    part(
        "xl/worksheets/sheet1.xml",
        (
            &format!("{open}{header}{}", sheet.0),
            sheet.1,
            sheet.2,
            sheet.3,
        ),
    );
    if let Some((before, byte, len, after)) = shared {
        part(
            "xl/sharedStrings.xml",
            (
                &format!(r#"<sst xmlns="{MAIN}">{before}"#),
                byte,
                len,
                after,
            ),
        );
    }
    zip.finish().unwrap().into_inner()
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    let ods = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hostile/repeticiones.ods"),
    )
    .unwrap();
    let cell = r#"<row r="2"><c r="A2" t="inlineStr"><is><t>3138539155</t></is></c><c r="B2" t="inlineStr"><is><t>"#;
    let close = "</t></is></c></row></sheetData></worksheet>";
    let by_reference = r#"<row r="2"><c r="A2" t="inlineStr"><is><t>3138539155</t></is></c><c r="B2" t="s"><v>0</v></c></row></sheetData></worksheet>"#;
    vec![
        ("repeticiones.ods", ods),
        ("celda_inline.xlsx", xlsx((cell, b'x', HUGE, close), None)),
        (
            "texto_compartido.xlsx",
            xlsx(
                (by_reference, b' ', 0, ""),
                Some(("<si><t>", b'x', HUGE, "</t></si></sst>")),
            ),
        ),
        (
            "espacios.xlsx",
            xlsx(("", b' ', HUGE, "</sheetData></worksheet>"), None),
        ),
    ]
}

fn baseline_csv() -> Vec<u8> {
    let mut out = String::from("Nombre,Teléfono,Monto Deuda,Ciudad,Fecha Vencimiento\n");
    for i in 0..100_000 {
        out.push_str(&format!(
            "Cliente {i},31{}{:07},{},Bogotá,2026-12-01\n",
            i % 6,
            i,
            (i % 1000) as f64 * 10.5
        ));
    }
    out.into_bytes()
}

/// Posts `copies` uploads of one file at once to a fresh server.
async fn case(backend: &str, name: &str, bytes: &[u8], copies: usize) -> Value {
    let server = Server::start(backend, &[]).await;
    let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let started = std::time::Instant::now();
    let uploads = (0..copies).map(|i| {
        let body = json!({"name": format!("{name} {i}"), "base64": base64, "document_name": name});
        let server = &server;
        async move { server.post("/api/groups", &body).await }
    });
    let replies = futures::future::join_all(uploads).await;
    let seconds = started.elapsed().as_secs_f64();
    let statuses: Vec<u16> = replies.iter().map(|(s, _, _)| *s).collect();
    let message = replies
        .first()
        .and_then(|(_, body, _)| body["message"].as_str().map(str::to_owned));
    let peak = server.peak_rss_mb();
    server.stop();
    json!({
        "benchmark": "hostile",
        "backend": backend,
        "file": name,
        "file_kb": (bytes.len() as f64 / 1024.0).round(),
        "at_once": copies,
        "statuses": statuses,
        "message": message,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "server_peak_rss_mb": peak,
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let files = files();
    let baseline = baseline_csv();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in backends.split(',').map(str::trim) {
        runtime.block_on(async {
            println!(
                "{}",
                case(backend, "clientes_100000.csv", &baseline, 1).await
            );
            for (name, bytes) in &files {
                for copies in [1, 4] {
                    println!("{}", case(backend, name, bytes, copies).await);
                }
            }
        });
    }
}
