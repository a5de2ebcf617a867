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

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Listo para recibir tráfico"),
        (status = 503, description = "Base de datos no disponible", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.store.ping().await {
        Ok(()) => Ok(Json(json!({"success": true, "status": "ready"}))),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Base de datos no disponible",
            ))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// `ok` or `error`.
    pub database: &'static str,
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
    let database_ok = state.store.ping().await.is_ok();
    let report = HealthReport {
        database: if database_ok { "ok" } else { "error" },
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
        map.insert("success".into(), Value::Bool(database_ok));
        map.insert(
            "message".into(),
            Value::String(
                if database_ok {
                    "Servicio operativo"
                } else {
                    "Base de datos no disponible"
                }
                .into(),
            ),
        );
        map.insert(
            "data".into(),
            serde_json::to_value(&report).unwrap_or_default(),
        );
    }
    let status = if database_ok {
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
