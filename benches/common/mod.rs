//! What the benchmarks share: the release `marcador` binary as a child process
#![allow(dead_code)] // each benchmark uses a part of it
//! on a fresh SQLite or PostgreSQL database, a logged-in client, and the
//! server's peak RSS.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Server {
    child: Child,
    database_url: String,
    env: Vec<(String, String)>,
    base: String,
    token: String,
    client: reqwest::Client,
    cleanup: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn psql(admin: &str, sql: &str) {
    let status = Command::new("psql")
        .arg(admin)
        .arg("-qc")
        .arg(sql)
        .status()
        .expect("psql");
    assert!(status.success(), "{sql}");
}

async fn spawn(
    database_url: &str,
    dir: &std::path::Path,
    env: &[(String, String)],
) -> (Child, String) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_marcador"));
    command
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("DATA_DIR", dir)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("MAX_CLIENTS_PER_GROUP", "200000")
        .stdout(if std::env::var("BENCH_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("server starts");
    let base = format!("http://127.0.0.1:{port}");
    wait_until_answers(&format!("{base}/health")).await;
    (child, base)
}

/// Waits (up to 10 s) until `url` answers at all, whatever its status.
async fn wait_until_answers(url: &str) {
    let probe = reqwest::Client::new();
    for _ in 0..200 {
        if probe.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers (first start) or logs in (restart) the benchmark user; returns its token.
async fn auth(client: &reqwest::Client, base: &str, how: &str) -> String {
    let reply: Value = client
        .post(format!("{base}/api/auth/{how}"))
        .json(&json!({"username": "bench", "email": "bench@example.com", "password": "benchmark password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["data"]["token"].as_str().expect("token").to_owned()
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The ElevenLabs simulator as its own process (`marcador simulate-elevenlabs`),
/// as ElevenLabs is to a production server: its work and memory are not the server's.
pub struct SimulatorProcess {
    child: Child,
    pub base_url: String,
}

impl SimulatorProcess {
    pub async fn start(step_ms: u64) -> SimulatorProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_marcador"))
            .env_clear()
            .env("RUST_LOG", "warn")
            .args([
                "simulate-elevenlabs",
                "--port",
                &port.to_string(),
                "--step-ms",
            ])
            .arg(step_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("simulator starts");
        let base_url = format!("http://127.0.0.1:{port}");
        wait_until_answers(&format!("{base_url}/v1/convai/agents")).await;
        SimulatorProcess { child, base_url }
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on `backend` (`sqlite` or `postgres`) with extra environment, and registers.
    pub async fn start(backend: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, cleanup) = if backend == "sqlite" {
            (
                format!("sqlite://{}", dir.path().join("bench.db").display()),
                None,
            )
        } else {
            let admin = std::env::var("MARCADOR_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("marcador_bench_{}_{}", std::process::id(), free_port());
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or(admin.clone());
            psql(&admin, &format!("CREATE DATABASE {name}"));
            (format!("{base}/{name}"), Some((admin, name)))
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, base) = spawn(&database_url, dir.path(), &env).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let token = auth(&client, &base, "register").await;
        Server {
            child,
            database_url,
            env,
            base,
            token,
            client,
            cleanup,
            _dir: dir,
        }
    }

    /// A fresh process on the same database (so a figure measures one operation, not the whole history).
    pub async fn restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = spawn(&self.database_url, self._dir.path(), &self.env).await;
        self.child = child;
        self.base = base;
        self.token = auth(&self.client, &self.base, "login").await;
        self
    }

    /// Posts JSON; returns the status, the body and the seconds it took.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value, f64) {
        let text = body.to_string();
        let start = Instant::now();
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        (status, value, start.elapsed().as_secs_f64())
    }

    /// Creates a group from a CSV file (with an agent when given); its id.
    pub async fn create_group(&self, name: &str, agent_id: Option<&str>, csv: &[u8]) -> i64 {
        use base64::Engine;
        let body = json!({
            "name": name,
            "agentId": agent_id,
            "base64": base64::engine::general_purpose::STANDARD.encode(csv),
            "document_name": "clientes.csv",
        });
        let (status, reply, _) = self.post("/api/groups", &body).await;
        assert_eq!(status, 201, "{reply}");
        reply["data"]["id"].as_i64().unwrap()
    }

    /// Gets a path; returns the status, the body's length and the seconds it took.
    pub async fn get(&self, path: &str) -> (u16, usize, f64) {
        let start = Instant::now();
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.map(|b| b.len()).unwrap_or(0);
        (status, body, start.elapsed().as_secs_f64())
    }

    /// Where the server answers (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The server's database, for seeding it directly.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Lets the database settle after a bulk load, as it would between an
    /// import and a launch in real use: on PostgreSQL, `VACUUM ANALYZE` and a
    /// `CHECKPOINT`, so the timed operation does not share the disk with the
    /// import's writes. (SQLite checkpoints its WAL by itself.)
    pub fn settle(&self) {
        if self.database_url.starts_with("postgres") {
            psql(&self.database_url, "VACUUM ANALYZE");
            psql(&self.database_url, "CHECKPOINT");
        }
    }

    /// CPU seconds (user + system) the server process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// The server's `VmHWM` in MB, one decimal.
    pub fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        (kb / 1024.0 * 10.0).round() / 10.0
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((admin, name)) = self.cleanup.take() {
            psql(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}
