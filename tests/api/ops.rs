//! API.md §9 and §10: health, readiness, metrics, docs, request ids, CORS,
//! the generated JWT secret and graceful shutdown.

use std::time::Duration;

use crate::helpers::{
    Backend, TestDb, both_backends, spawn_app, spawn_app_with, start, test_config,
};

both_backends!(
    health_answers_ok_without_auth,
    ready_checks_the_database,
    ready_is_503_while_the_schema_is_not_migrated,
    api_health_reports_database_backend_and_simulator,
    metrics_count_requests_by_route,
    every_response_carries_a_request_id,
    openapi_document_lists_the_endpoints,
    swagger_ui_is_served_from_the_binary,
    cors_allows_only_configured_origins,
    generated_jwt_secret_survives_a_restart,
    graceful_shutdown_stops_the_server,
);

async fn health_answers_ok_without_auth(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/health", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "ok");
}

async fn ready_checks_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/ready", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["status"], "ready");
}

/// A database emptied under a running server (dropped and recreated, or a
/// restore in progress): not ready, and `/api/health` says why, instead of
/// "ready" while every request fails.
async fn ready_is_503_while_the_schema_is_not_migrated(backend: Backend) {
    let app = spawn_app(backend).await;
    let versions = crate::store::migration_versions(backend);
    let latest = *versions.last().expect("migrations");
    app.db
        .execute(&format!("DELETE FROM _migrations WHERE version = {latest}"))
        .await;
    let reply = app.get("/ready", None).await;
    reply.assert_error(503, "Esquema de base de datos no migrado");
    assert_eq!(
        reply.body["error"],
        format!(
            "Faltan las migraciones [{latest}]: ejecuta `marcador migrate` o reinicia el servicio"
        )
    );
    let health = app.get("/api/health", None).await;
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(health.body["success"], false);
    assert_eq!(
        health.body["message"],
        "Esquema de base de datos no migrado"
    );
    for report in [&health.body, &health.body["data"]] {
        assert_eq!(report["database"], "ok");
        assert_eq!(report["schema"], "not_migrated");
    }

    // Recreated empty: not even `_migrations` is there.
    app.db
        .execute(match backend {
            Backend::Sqlite => "DROP TABLE _migrations",
            Backend::Postgres => "DROP SCHEMA public CASCADE; CREATE SCHEMA public",
        })
        .await;
    let reply = app.get("/ready", None).await;
    reply.assert_error(503, "Esquema de base de datos no migrado");
    assert_eq!(
        reply.body["error"],
        format!(
            "Faltan las migraciones {versions:?}: ejecuta `marcador migrate` o reinicia el servicio"
        )
    );
}

async fn api_health_reports_database_backend_and_simulator(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/api/health", None).await;
    assert_eq!(reply.status, 200);
    let expected_backend = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    for report in [&reply.body, &reply.body["data"]] {
        assert_eq!(report["database"], "ok");
        assert_eq!(report["schema"], "ok");
        assert_eq!(report["databaseBackend"], expected_backend);
        assert_eq!(report["elevenlabs"], "simulator");
        assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    }
}

async fn metrics_count_requests_by_route(backend: Backend) {
    let app = spawn_app(backend).await;
    app.get("/api/users/7", None).await;
    let reply = app.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let line = reply
        .text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains("route=\"/api/users/{id}\"")
                && l.contains("status=\"401\"")
        })
        .unwrap_or_else(|| panic!("no counter for the users route in:\n{}", reply.text));
    assert!(
        !line.contains("/api/users/7"),
        "labels use the route template"
    );
    assert!(reply.text.contains("http_request_duration_seconds_bucket"));
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let generated = app.get("/nope", None).await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let given = app
        .send(
            app.client
                .get(app.url("/health"))
                .header("x-request-id", "trace-me-123"),
        )
        .await;
    assert_eq!(given.headers["x-request-id"], "trace-me-123");
}

async fn openapi_document_lists_the_endpoints(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/api/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = reply.body["paths"].as_object().unwrap();
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/profile",
        "/api/users/{id}",
        "/api/health",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    assert_eq!(
        reply.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

async fn swagger_ui_is_served_from_the_binary(backend: Backend) {
    let app = spawn_app(backend).await;
    let page = app.get("/docs/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    for cdn in ["unpkg.com", "cdn.jsdelivr", "cdnjs"] {
        assert!(!page.text.contains(cdn), "the UI must not load from {cdn}");
    }
    let script = app.get("/docs/swagger-ui-bundle.js", None).await;
    assert_eq!(script.status, 200);
    assert!(
        script.text.len() > 100_000,
        "the bundle is served from the binary"
    );
}

async fn cors_allows_only_configured_origins(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.cors_origins = "https://panel.example.com, https://ops.example.com".into()
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
    };
    let allowed = app.send(preflight("https://ops.example.com")).await;
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://ops.example.com"
    );
    assert_eq!(allowed.headers["access-control-allow-credentials"], "true");
    let denied = app.send(preflight("https://evil.example.com")).await;
    assert!(denied.headers.get("access-control-allow-origin").is_none());

    let without = spawn_app(backend).await;
    let reply = without
        .send(
            without
                .client
                .get(without.url("/health"))
                .header("origin", "https://panel.example.com"),
        )
        .await;
    assert!(reply.headers.get("access-control-allow-origin").is_none());
}

async fn generated_jwt_secret_survives_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.jwt_secret = None;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = start(db, config.clone(), async move {
        let _ = stopped.await;
    })
    .await;
    let (token, _) = first.admin().await;
    let secret_file = config.data_dir.join("jwt_secret");
    assert!(secret_file.exists());
    let _ = stop.send(());

    // A second instance on the same data directory accepts the first one's token.
    let db_again = TestDb::new(backend).await;
    let mut config_again = test_config(&db_again);
    config_again.jwt_secret = None;
    config_again.data_dir = config.data_dir.clone();
    config_again.database_url = first.db.url.clone();
    let second = start(db_again, config_again, std::future::pending()).await;
    second
        .get("/api/auth/profile", Some(&token))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn graceful_shutdown_stops_the_server(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = test_config(&db);
    let app = marcador::Application::build(config).await.unwrap();
    let address = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let reply = client
        .get(format!("{address}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    stop.send(()).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "the server stops within the grace period"
    );
    let after = client
        .get(format!("{address}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(after.is_err(), "nothing listens after shutdown");
}
