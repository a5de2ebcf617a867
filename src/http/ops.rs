//! Operations: liveness, readiness, health and Prometheus metrics (API.md §9).

use axum::extract::State;
use axum::http::{StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/health", get(api_health))
        .route("/metrics", get(metrics))
}

/// Liveness: answers without touching anything.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "El proceso está vivo")))]
pub async fn health() -> Json<Value> {
    Json(json!({"success": true, "status": "ok"}))
}

const MSG_DATABASE_DOWN: &str = "Base de datos no disponible";
const MSG_NOT_MIGRATED: &str = "Esquema de base de datos no migrado";

/// What readiness and health found in the database.
enum Schema {
    /// It answers and has every migration this binary embeds.
    Current,
    /// It answers without them (recreated empty while we ran): every request
    /// that touches a table would fail. The versions missing.
    NotMigrated(Vec<i64>),
    /// It does not answer.
    Down,
}

/// Looks at the database once. Migrations are not applied from here: a
/// database recreated empty may be about to receive a restored dump, which a
/// schema of ours would collide with; the operator migrates (`marcador
/// migrate`, or a restart) when that is what they want.
async fn check_schema(state: &AppState) -> Schema {
    match state.store.missing_migrations().await {
        Ok(missing) if missing.is_empty() => Schema::Current,
        Ok(missing) => {
            tracing::warn!(?missing, "the database schema is not migrated");
            Schema::NotMigrated(missing)
        }
        Err(err) => {
            tracing::warn!(error = %err, "the database does not answer");
            Schema::Down
        }
    }
}

/// Readiness: the database answers and its schema is this binary's.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Listo para recibir tráfico"),
        (status = 503, description = "Base de datos no disponible / Esquema de base de datos no migrado", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match check_schema(&state).await {
        Schema::Current => Ok(Json(json!({"success": true, "status": "ready"}))),
        Schema::NotMigrated(missing) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            MSG_NOT_MIGRATED,
        )
        .with_error(format!(
            "Faltan las migraciones {missing:?}: ejecuta `marcador migrate` o reinicia el servicio"
        ))),
        Schema::Down => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            MSG_DATABASE_DOWN,
        )),
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// `ok` or `error`.
    pub database: &'static str,
    /// `ok`, `not_migrated` (the database answers without this binary's
    /// migrations) or `unknown` (it does not answer).
    pub schema: &'static str,
    /// `sqlite` or `postgres`.
    pub database_backend: &'static str,
    /// `live` (a real ElevenLabs key) or `simulator`.
    pub elevenlabs: &'static str,
    pub version: &'static str,
    pub uptime_secs: u64,
}

/// The service's own view of its parts. The fields are given both at the top
/// level and inside `data`.
#[utoipa::path(get, path = "/api/health", tag = "operations",
    responses((status = 200, description = "Estado del servicio", body = HealthReport)))]
pub async fn api_health(State(state): State<AppState>) -> Response {
    let (database, schema, message) = match check_schema(&state).await {
        Schema::Current => ("ok", "ok", "Servicio operativo"),
        Schema::NotMigrated(_) => ("ok", "not_migrated", MSG_NOT_MIGRATED),
        Schema::Down => ("error", "unknown", MSG_DATABASE_DOWN),
    };
    let healthy = schema == "ok";
    let report = HealthReport {
        database,
        schema,
        database_backend: state.store.backend(),
        elevenlabs: if state.config.simulator_mode() {
            "simulator"
        } else {
            "live"
        },
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started_at.elapsed().as_secs(),
    };
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if let Value::Object(map) = &mut body {
        map.insert("success".into(), Value::Bool(healthy));
        map.insert("message".into(), Value::String(message.into()));
        map.insert(
            "data".into(),
            serde_json::to_value(&report).unwrap_or_default(),
        );
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Métricas en formato Prometheus", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}
