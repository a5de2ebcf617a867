//! The test harness: a real server on a random port with a fresh database,
//! on SQLite (a temporary file) or PostgreSQL (a database created for the test
//! and dropped after it).

use std::future::Future;
use std::sync::Arc;

use marcador::config::Secret;
use marcador::store::DynStore;
use marcador::{AppState, Application, Config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123456789";
pub const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one test body on each backend: `both_backends!(name, …)` expects an
/// `async fn name(backend: Backend)` beside it.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}
pub(crate) use both_backends;

/// The server PostgreSQL tests create their databases on. `.ci/run` exports it;
/// the default is the local trust-auth server. Unreachable means failure, never a skip.
pub fn postgres_admin_url() -> String {
    std::env::var("MARCADOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let prefix = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("marcador.db").display()),
                backend,
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("marcador_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin}: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                TestDb {
                    url: with_database(&admin, &name),
                    backend,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Runs one SQL statement that returns one integer, straight on the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("sqlite");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("postgres");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql)
            }
        }
    }

    /// Runs a statement for its effect (to break things on purpose).
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("sqlite");
                sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("postgres");
                sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime; use a thread with its own.
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The configuration every test starts from.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::from_env().expect("default configuration");
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.database_url = db.url.clone();
    config.data_dir = db.dir().join("data");
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    config.allow_registration = false;
    config.elevenlabs_api_key = None;
    config.cors_origins = String::new();
    config.login_max_attempts = 5;
    config.login_window_secs = 900;
    config.shutdown_timeout_secs = 2;
    config.simulator_capture = true;
    // Tests drive the sync themselves (`SyncWorker::tick`); one test runs the loop.
    config.sync_interval_secs = 0;
    // Off unless a test turns it on: webhooks landing in the middle of other
    // tests would change the call records they look at.
    config.simulator_webhooks = false;
    config.elevenlabs_webhook_secret = None;
    config
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Shared by every instance started on it ([`spawn_beside`]); dropped
    /// (and, on PostgreSQL, the database with it) after the last one.
    pub db: Arc<TestDb>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    configure(&mut config);
    start(db, config, std::future::pending()).await
}

/// Starts the server on `db` with `config`, stopping when `shutdown` resolves.
pub async fn start(
    db: impl Into<Arc<TestDb>>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> TestApp {
    let app = Application::build(config)
        .await
        .expect("application starts");
    let address = format!("http://{}", app.local_addr().expect("bound"));
    let state = app.state().clone();
    tokio::spawn(app.run_until(shutdown));
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        db: db.into(),
    }
}

/// Another instance of the service on `first`'s database, as a second server
/// started beside it would be: its own pool, ElevenLabs client, caches and
/// login limits (everything an `AppState` holds; the service keeps no state in
/// statics), and the same `JWT_SECRET`, so a token works on both. Starts from
/// [`test_config`]; `configure` adjusts it.
pub async fn spawn_beside(first: &TestApp, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(&first.db);
    configure(&mut config);
    start(first.db.clone(), config, std::future::pending()).await
}

/// An instance on a Tokio runtime of its own, which [`KillSwitch::kill`] stops
/// the way a killed process stops: every task of it (the server, a launch in
/// progress, its writes ahead and confirmations) is dropped at its next await,
/// the connections they were using close (an open transaction is rolled
/// back), and nothing of it runs again (no graceful shutdown, no `unlock`, no
/// answer). A graceful shutdown would not do: a launch runs as a task of its
/// own, which outlives the server. Unlike a dead process's, the pool's idle
/// connections stay open until the `TestApp` is dropped (they hold nothing);
/// its `state` must not be used after the kill.
pub async fn spawn_killable(db: &Arc<TestDb>, config: Config) -> (TestApp, KillSwitch) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("killable-instance")
        .enable_all()
        .build()
        .expect("a runtime for the instance");
    // Built on a thread of its own: `block_on` cannot run inside the test's runtime.
    let (started, built) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let app = runtime.block_on(async move {
            let app = Application::build(config)
                .await
                .expect("application starts");
            let address = format!("http://{}", app.local_addr().expect("bound"));
            let state = app.state().clone();
            tokio::spawn(app.run_until(std::future::pending()));
            (address, state)
        });
        let _ = started.send((runtime, app));
    });
    let (runtime, (address, state)) = built.await.expect("the instance started");
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        db: db.clone(),
    };
    (app, KillSwitch(Some(runtime)))
}

/// Owns a killable instance's runtime; dropping it kills the instance too.
pub struct KillSwitch(Option<tokio::runtime::Runtime>);

impl KillSwitch {
    /// Kills the instance and returns once it no longer accepts connections.
    pub async fn kill(mut self, app: &TestApp) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reqwest::get(app.url("/health")).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed instance still answers"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        // A runtime cannot be dropped (waited for) inside another one.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The envelope's message.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.body["success"], json!(false), "body: {}", self.text);
        assert_eq!(self.message(), message, "body: {}", self.text);
    }

    #[track_caller]
    pub fn assert_ok(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.body["success"], json!(true), "body: {}", self.text);
        assert_eq!(self.message(), message, "body: {}", self.text);
    }
}

impl TestApp {
    pub fn store(&self) -> &DynStore {
        &self.state.store
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::DELETE, path, token, None).await
    }

    pub async fn register(&self, username: &str, email: &str) -> Reply {
        self.post(
            "/api/auth/register",
            None,
            json!({"username": username, "email": email, "password": PASSWORD}),
        )
        .await
    }

    /// Registers the first user (the admin) and returns its token and id.
    pub async fn admin(&self) -> (String, i64) {
        let reply = self.register("admin", "admin@example.com").await;
        reply.assert_ok(201, "Usuario registrado exitosamente");
        token_and_id(&reply)
    }

    /// Creates a `user` through the admin API and logs it in.
    pub async fn user(&self, admin_token: &str, username: &str) -> (String, i64) {
        let email = format!("{username}@example.com");
        let reply = self
            .post(
                "/api/users",
                Some(admin_token),
                json!({"username": username, "email": email, "password": PASSWORD, "role": "user"}),
            )
            .await;
        reply.assert_ok(201, "Usuario creado exitosamente");
        let login = self.login(&email, PASSWORD).await;
        login.assert_ok(200, "Login exitoso");
        token_and_id(&login)
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }
}

pub fn token_and_id(reply: &Reply) -> (String, i64) {
    let token = reply.body["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let id = reply.body["data"]["user"]["id"].as_i64().expect("user id");
    (token, id)
}

#[test]
fn database_names_are_swapped_in_urls() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h/test?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5432", "x"),
        "postgres://u@h:5432/x"
    );
}
