//! Input that every endpoint shares (API.md §1): text holding U+0000, which
//! PostgreSQL cannot store, and pages whose offset would overflow. Each is
//! answered the same way on both backends, and leaves the database as it was.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA;
use reqwest::Method;
use serde_json::{Value, json};

use crate::groups::{b64, group_id};
use crate::helpers::{Backend, PASSWORD, TestApp, TestDb, both_backends, spawn_app};

both_backends!(
    nul_in_login_or_register_is_a_400_and_logs_no_error,
    nul_in_any_json_body_is_a_400_and_writes_nothing,
    nul_in_any_query_parameter_is_a_400,
    nul_in_a_path_or_a_header_is_refused_without_a_500,
    nul_in_spreadsheet_cells_is_dropped_on_import,
    a_page_past_the_offset_bound_is_a_400_on_every_list,
);

const MSG_NUL: &str = "Los textos no pueden contener el carácter nulo (U+0000)";
const MSG_BAD_PAGE: &str = "Parámetro page inválido";

const CSV: &str = "nombre,telefono,monto\nAna,3138539151,100\nLuis,3138539152,200\n";

/// A group with the simulator's agent and two clients; returns (token, admin id, group id).
async fn admin_and_group(app: &TestApp) -> (String, i64, i64) {
    let (token, id) = app.admin().await;
    let group = group_id(
        app,
        &token,
        json!({"name": "Base", "agentId": SIM_AGENT_COBRANZA,
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    (token, id, group)
}

/// Rows of every table a request could write.
async fn row_counts(db: &TestDb) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "users",
        "groups",
        "clients",
        "batches",
        "call_records",
        "do_not_call",
        "idempotency_keys",
        "audit_events",
    ] {
        counts.push((
            table,
            db.scalar(&format!("SELECT COUNT(*) FROM {table}")).await,
        ));
    }
    counts
}

/// `marcador serve` as a child process (JSON logs on stdout), killed when dropped.
struct Server {
    child: Child,
    address: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Server {
    fn start(db: &TestDb) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marcador"))
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("DATA_DIR", db.dir().join("data"))
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("SYNC_INTERVAL_SECS", "0")
            .env("SIMULATOR_WEBHOOKS", "false")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .current_dir(db.dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("marcador starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            address: String::new(),
            lines,
        };
        loop {
            let line = server
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the server says where it listens");
            if line.contains("marcador listening") {
                let log: Value = serde_json::from_str(&line).expect("a JSON log line");
                server.address = format!("http://{}", log["fields"]["addr"].as_str().unwrap());
                return server;
            }
        }
    }

    /// Stops the server and returns every line it logged.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unauthenticated entry points, against the real binary, so that its
/// log can be read: a NUL is a plain 400, never a 500 nor an ERROR line.
async fn nul_in_login_or_register_is_a_400_and_logs_no_error(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db);
    let client = reqwest::Client::new();
    for (path, body) in [
        (
            "/api/auth/login",
            json!({"email": "ana\u{0}@example.com", "password": PASSWORD}),
        ),
        (
            "/api/auth/login",
            json!({"email": "ana@example.com", "password": "clave\u{0}"}),
        ),
        (
            "/api/auth/register",
            json!({"username": "ana\u{0}", "email": "ana@example.com", "password": PASSWORD}),
        ),
    ] {
        let response = client
            .post(format!("{}{path}", server.address))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let reply: Value = response.json().await.expect("a JSON body");
        assert_eq!(
            (status, reply["message"].as_str()),
            (400, Some(MSG_NUL)),
            "{path}: {reply}"
        );
        assert_eq!(reply["error"], "en el cuerpo JSON");
    }
    let log = server.stop();
    assert!(
        log.iter().any(|l| l.contains("\"level\":\"INFO\"")),
        "the log is read as JSON lines: {log:#?}"
    );
    let errors: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM users").await, 0);
}

async fn nul_in_any_json_body_is_a_400_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin, group) = admin_and_group(&app).await;
    let client = app.db.scalar("SELECT MIN(id) FROM clients").await;
    let before = row_counts(&app.db).await;
    let nul = "a\u{0}b";
    let cases: Vec<(Method, String, Value)> = vec![
        (
            Method::PUT,
            "/api/auth/profile".into(),
            json!({"firstName": nul}),
        ),
        (
            Method::PUT,
            "/api/auth/change-password".into(),
            json!({"currentPassword": PASSWORD, "newPassword": "otra clave\u{0} larga"}),
        ),
        (
            Method::POST,
            "/api/users".into(),
            json!({"username": "luis", "email": "luis@example.com", "password": PASSWORD, "lastName": nul}),
        ),
        (
            Method::PUT,
            format!("/api/users/{admin}"),
            json!({"lastName": nul}),
        ),
        (Method::POST, "/api/groups".into(), json!({"name": nul})),
        (
            Method::POST,
            "/api/groups".into(),
            json!({"name": "Otro", "variables": {"empresa": nul}}),
        ),
        (
            Method::POST,
            "/api/groups".into(),
            json!({"name": "Otro", "variables": {"emp\u{0}resa": "ACME"}}),
        ),
        (
            Method::PUT,
            format!("/api/groups/{group}"),
            json!({"description": nul}),
        ),
        (
            Method::POST,
            format!("/api/groups/{group}/clients"),
            json!({"name": nul, "phone": "3138539157"}),
        ),
        (
            Method::PUT,
            format!("/api/groups/{group}/clients/{client}"),
            json!({"variables": {"monto": nul}}),
        ),
        (
            Method::POST,
            format!("/api/groups/{group}/clients/import"),
            json!({"base64": b64(b"telefono\n3138539157\n"), "document_name": "c\u{0}.csv"}),
        ),
        (
            Method::POST,
            "/api/do-not-call".into(),
            json!({"phone": "+573138539199", "reason": nul}),
        ),
        (
            Method::POST,
            format!("/api/groups/{group}/call"),
            json!({"userId": admin, "agentPhoneNumberId": nul}),
        ),
    ];
    for (method, path, body) in cases {
        let reply = app
            .call(method.clone(), &path, Some(&token), Some(body))
            .await;
        reply.assert_error(400, MSG_NUL);
        assert_eq!(reply.body["error"], "en el cuerpo JSON", "{method} {path}");
    }
    assert_eq!(row_counts(&app.db).await, before);
    let profile = app.get("/api/auth/profile", Some(&token)).await;
    assert_eq!(profile.body["data"]["firstName"], Value::Null);
    assert_eq!(profile.body["data"]["lastName"], Value::Null);
    let stored = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(stored.body["data"]["description"], Value::Null);
    let ana = app
        .get(
            &format!("/api/groups/{group}/clients/{client}"),
            Some(&token),
        )
        .await;
    assert_eq!(ana.body["data"]["variables"], json!({"monto": "100"}));
    app.login("admin@example.com", PASSWORD)
        .await
        .assert_ok(200, "Login exitoso");
}

async fn nul_in_any_query_parameter_is_a_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _, group) = admin_and_group(&app).await;
    for path in [
        "/api/groups?search=a%00b".to_owned(),
        "/api/groups?se%00arch=x".to_owned(),
        format!("/api/groups/{group}?include_clients=true&x=%00"),
        format!("/api/groups/{group}/clients?search=%00"),
        "/api/users?search=ana%00".to_owned(),
        "/api/do-not-call?search=313%00".to_owned(),
        format!("/api/groups/{group}/call-history?search=ana%00"),
        format!("/api/groups/{group}/call-history?batchId=btcal_%00"),
        format!("/api/groups/{group}/call-history?search=%00&format=csv"),
        format!("/api/groups/{group}/call-stats?from=2025-01-01%00"),
        "/api/agents?search=%00".to_owned(),
    ] {
        let reply = app.get(&path, Some(&token)).await;
        reply.assert_error(400, MSG_NUL);
        assert!(
            reply.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("en el parámetro '")),
            "{path}: {}",
            reply.text
        );
    }
    let named = app.get("/api/groups?page=1&search=%00", Some(&token)).await;
    assert_eq!(named.body["error"], "en el parámetro 'search'");
    // `%2500` is the text `%00`, not a NUL: searched for, found nowhere.
    let literal = app.get("/api/groups?search=%2500", Some(&token)).await;
    literal.assert_ok(200, "Grupos obtenidos exitosamente");
    assert_eq!(literal.body["data"], json!([]));
}

/// Path segments and headers never reached the database holding a NUL; kept
/// so that it stays so.
async fn nul_in_a_path_or_a_header_is_refused_without_a_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _, group) = admin_and_group(&app).await;
    let before = row_counts(&app.db).await;
    for (method, path, status, message) in [
        (
            Method::DELETE,
            "/api/do-not-call/%2B573138539151%00".to_owned(),
            400,
            "Número de teléfono inválido",
        ),
        (
            Method::GET,
            "/api/conversations/conv_1%00".to_owned(),
            404,
            "Conversación no encontrada",
        ),
        (
            Method::GET,
            format!("/api/groups/{group}/batch-status/btcal_1%00"),
            400,
            "ID inválido",
        ),
        (
            Method::GET,
            format!("/api/groups/{group}%00/clients"),
            400,
            "ID inválido",
        ),
        (
            Method::GET,
            "/api/agents/agent_1%00".to_owned(),
            404,
            "Agente no encontrado",
        ),
    ] {
        app.call(method, &path, Some(&token), None)
            .await
            .assert_error(status, message);
    }
    // A header cannot carry a NUL: the HTTP parser refuses the request
    // before any handler runs (a bare 400 from hyper, not our envelope).
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = json!({"userId": 1}).to_string();
    let request = format!(
        "POST /api/groups/{group}/call HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: a\0b\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(row_counts(&app.db).await, before);
}

/// API.md §4: a spreadsheet cell is read without its NULs, the same on both
/// backends (PostgreSQL cannot store them; SQLite kept them).
async fn nul_in_spreadsheet_cells_is_dropped_on_import(backend: Backend) {
    use rust_xlsxwriter::Workbook;
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    // Written as Excel's escape `_x0000_`, which the reader turns back into U+0000.
    for (row, cells) in [
        ["Nombre", "Teléfono", "Monto\u{0}"],
        ["Ana\u{0} María", "313\u{0}8539155", "1\u{0}2"],
        ["Luis", "3138539156", "\u{0}"],
    ]
    .iter()
    .enumerate()
    {
        for (col, text) in cells.iter().enumerate() {
            sheet.write_string(row as u32, col as u16, *text).unwrap();
        }
    }
    let bytes = workbook.save_to_buffer().unwrap();
    let reply = app
        .post(
            "/api/groups",
            Some(&token),
            json!({"name": "Nulos", "base64": b64(&bytes), "document_name": "c.xlsx"}),
        )
        .await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    assert_eq!(reply.body["data"]["fileProcessing"]["clientsCreated"], 2);
    let id = reply.body["data"]["id"].as_i64().unwrap();
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    let ana = &clients.body["data"][0];
    assert_eq!(ana["name"], "Ana María");
    assert_eq!(ana["phone"], "3138539155");
    assert_eq!(ana["phoneE164"], "+573138539155");
    assert_eq!(ana["variables"], json!({"monto": "12"}));
    assert_eq!(clients.body["data"][1]["variables"], json!({}));
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE name = 'Ana María'")
            .await,
        1
    );
}

async fn a_page_past_the_offset_bound_is_a_400_on_every_list(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin, group) = admin_and_group(&app).await;
    let launch = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": admin}),
        )
        .await;
    assert_eq!(launch.status, 200, "{}", launch.text);
    let batch = launch.body["data"]["batchId"].as_str().unwrap().to_owned();
    let lists = |page: &str| {
        vec![
            format!("/api/groups?page={page}&limit=200"),
            format!("/api/groups/{group}?include_clients=true&client_page={page}&client_limit=200"),
            format!("/api/groups/{group}/clients?page={page}&limit=200"),
            format!("/api/groups/{group}/uncalled-clients?page={page}&limit=200"),
            format!("/api/groups/{group}/call-history?page={page}&limit=200"),
            format!("/api/groups/{group}/batch-status?page={page}&limit=200"),
            format!("/api/groups/{group}/batch-status/{batch}?page={page}&limit=200"),
            format!("/api/batch-calls/{batch}/status?page={page}&limit=200"),
            format!("/api/do-not-call?page={page}&limit=200"),
            format!("/api/users?page={page}&limit=200"),
        ]
    };
    for path in lists("9223372036854775807")
        .into_iter()
        .chain(lists("50002"))
    {
        let reply = app.get(&path, Some(&token)).await;
        reply.assert_error(400, MSG_BAD_PAGE);
        assert_eq!(
            reply.body["error"], "(page - 1) × limit no puede superar 10000000",
            "{path}"
        );
    }
    // The last page allowed skips exactly 10,000,000 rows: an empty page.
    for path in lists("50001") {
        let reply = app.get(&path, Some(&token)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    }
    let users = app
        .get("/api/users?page=50001&limit=200", Some(&token))
        .await;
    assert_eq!(users.body["data"], json!([]));
    assert_eq!(users.body["pagination"]["page"], 50001);
}
