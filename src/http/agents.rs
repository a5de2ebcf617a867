//! `/api/agents` and `/api/phone-numbers`: ElevenLabs' agents and numbers,
//! behind a token and a short cache (API.md §3).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Envelope, clean, ok};
use crate::app::AppState;
use crate::elevenlabs::ElevenLabsError;
use crate::elevenlabs::types::{Agent, AgentSummary, PhoneNumber};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiQuery, AuthUser};

const MSG_AGENTS_FAILED: &str = "Error obteniendo agentes de ElevenLabs";
const MSG_PHONES_FAILED: &str = "Error obteniendo números de teléfono de ElevenLabs";
const MSG_AGENT_NOT_FOUND: &str = "Agente no encontrado";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/agents", get(list_agents))
        .route("/api/agents/list", get(list_agents))
        .route("/api/agents/phone-numbers", get(list_phone_numbers))
        .route("/api/phone-numbers", get(list_phone_numbers))
        .route("/api/agents/{agentId}", get(get_agent))
}

/// Maps an ElevenLabs failure to our answer: 401/403 (our key) → 502
/// `ELEVENLABS_UNAUTHORIZED`; 429 → 503 `ELEVENLABS_BUSY` with `Retry-After`;
/// 5xx, timeouts, refused connections → 502 `ELEVENLABS_UNAVAILABLE`;
/// anything else → 502 with `message`. The key never appears.
pub fn upstream_error(message: &'static str, err: &ElevenLabsError) -> ApiError {
    // Never ElevenLabs' own text: it may echo what we sent (numbers, names).
    let code = match err {
        ElevenLabsError::Status { code, .. } => code.as_deref(),
        _ => None,
    };
    tracing::warn!(status = ?err.status(), code = ?code, outcome = err.outcome(), "ElevenLabs request failed");
    match err {
        ElevenLabsError::Status {
            status: 401 | 403, ..
        } => ApiError::new(StatusCode::BAD_GATEWAY, message)
            .with_error("ElevenLabs rechazó la clave de API configurada")
            .with_code("ELEVENLABS_UNAUTHORIZED"),
        ElevenLabsError::Status {
            status: 429,
            retry_after,
            ..
        } => {
            let wait = retry_after.unwrap_or(30);
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .with_error("ElevenLabs está ocupado; intenta de nuevo en unos segundos")
                .with_code("ELEVENLABS_BUSY")
                .with_header(RETRY_AFTER, HeaderValue::from(wait))
        }
        ElevenLabsError::Status { status, .. } if *status >= 500 => {
            ApiError::new(StatusCode::BAD_GATEWAY, message)
                .with_error(format!("ElevenLabs respondió {status}"))
                .with_code("ELEVENLABS_UNAVAILABLE")
        }
        ElevenLabsError::Timeout
        | ElevenLabsError::Unreachable(_)
        | ElevenLabsError::Interrupted(_) => ApiError::new(StatusCode::BAD_GATEWAY, message)
            .with_error(err.to_string())
            .with_code("ELEVENLABS_UNAVAILABLE"),
        other => ApiError::new(StatusCode::BAD_GATEWAY, message).with_error(other.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AgentListQuery {
    pub search: Option<String>,
    pub cursor: Option<String>,
    /// 1..=100 (ElevenLabs' limit), default 30.
    pub page_size: Option<u32>,
}

/// An agent as the dashboard lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    pub agent_id: String,
    pub name: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// `active` or `archived`.
    pub status: String,
    pub language: Option<String>,
    pub voice_id: Option<String>,
    pub tags: Vec<String>,
}

fn rfc3339(unix: Option<i64>) -> Option<String> {
    unix.and_then(|s| Utc.timestamp_opt(s, 0).single())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn agent_view(summary: Option<&AgentSummary>, agent: Option<&Agent>) -> AgentView {
    let archived = summary
        .and_then(|s| s.extra.get("archived"))
        .and_then(Value::as_bool)
        == Some(true);
    AgentView {
        agent_id: agent
            .map(|a| a.agent_id.clone())
            .or_else(|| summary.map(|s| s.agent_id.clone()))
            .unwrap_or_default(),
        name: agent
            .map(|a| a.name.clone())
            .or_else(|| summary.map(|s| s.name.clone()))
            .unwrap_or_default(),
        created_at: rfc3339(
            agent
                .and_then(Agent::created_at_unix)
                .or_else(|| summary.and_then(|s| s.created_at_unix_secs)),
        ),
        updated_at: rfc3339(agent.and_then(Agent::updated_at_unix)),
        status: if archived { "archived" } else { "active" }.into(),
        language: agent.and_then(Agent::language).map(str::to_owned),
        voice_id: agent.and_then(Agent::voice_id).map(str::to_owned),
        tags: agent
            .map(|a| a.tags.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| summary.map(|s| s.tags.clone()))
            .unwrap_or_default(),
    }
}

/// One agent, from the cache or ElevenLabs.
pub async fn fetch_agent(state: &AppState, agent_id: &str) -> Result<Agent, ElevenLabsError> {
    let key = format!("agent:{agent_id}");
    if let Some(agent) = state
        .cache
        .get(&key)
        .and_then(|v| serde_json::from_value(v).ok())
    {
        return Ok(agent);
    }
    let agent = state.elevenlabs.get_agent(agent_id).await?;
    if let Ok(value) = serde_json::to_value(&agent) {
        state.cache.put(&key, value);
    }
    Ok(agent)
}

/// The workspace's phone numbers, from the cache or ElevenLabs.
pub async fn fetch_phone_numbers(state: &AppState) -> Result<Vec<PhoneNumber>, ElevenLabsError> {
    if let Some(list) = state
        .cache
        .get("phone-numbers")
        .and_then(|v| serde_json::from_value(v).ok())
    {
        return Ok(list);
    }
    let list = state.elevenlabs.list_phone_numbers().await?;
    if let Ok(value) = serde_json::to_value(&list) {
        state.cache.put("phone-numbers", value);
    }
    Ok(list)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    pub count: usize,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[utoipa::path(get, path = "/api/agents", tag = "agents", security(("bearer" = [])), params(AgentListQuery),
    responses(
        (status = 200, description = "Agentes obtenidos exitosamente", body = Envelope<AgentList>),
        (status = 502, description = "Error obteniendo agentes de ElevenLabs", body = ErrorBody),
    ))]
pub async fn list_agents(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
    ApiQuery(q): ApiQuery<AgentListQuery>,
) -> ApiResult<Json<Envelope<AgentList>>> {
    let search = clean(q.search);
    let cursor = clean(q.cursor);
    let page_size = q.page_size.map(|p| p.clamp(1, 100));
    let key = format!("agents:{search:?}:{cursor:?}:{page_size:?}");
    let page = match state
        .cache
        .get(&key)
        .and_then(|v| serde_json::from_value(v).ok())
    {
        Some(page) => page,
        None => {
            let page = state
                .elevenlabs
                .list_agents(search.as_deref(), cursor.as_deref(), page_size)
                .await
                .map_err(|e| upstream_error(MSG_AGENTS_FAILED, &e))?;
            if let Ok(value) = serde_json::to_value(&page) {
                state.cache.put(&key, value);
            }
            page
        }
    };
    // Language and voice live in each agent's configuration: fetched together (and cached).
    let details = futures_util::future::join_all(
        page.agents.iter().map(|s| fetch_agent(&state, &s.agent_id)),
    )
    .await;
    let agents: Vec<AgentView> = page
        .agents
        .iter()
        .zip(details)
        .map(|(summary, detail)| agent_view(Some(summary), detail.ok().as_ref()))
        .collect();
    Ok(ok(
        "Agentes obtenidos exitosamente",
        AgentList {
            count: agents.len(),
            agents,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
        },
    ))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDetail {
    #[serde(flatten)]
    pub summary: AgentView,
    pub first_message: Option<String>,
    pub prompt: Option<String>,
    /// The `{{names}}` its first message and prompt use (without `system__*`).
    pub dynamic_variables: Vec<String>,
}

#[utoipa::path(get, path = "/api/agents/{agentId}", tag = "agents", security(("bearer" = [])),
    params(("agentId" = String, Path, description = "ElevenLabs agent id")),
    responses(
        (status = 200, description = "Agente obtenido exitosamente", body = Envelope<AgentDetail>),
        (status = 404, description = "Agente no encontrado", body = ErrorBody),
        (status = 502, description = "Error obteniendo agentes de ElevenLabs", body = ErrorBody),
    ))]
pub async fn get_agent(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Envelope<AgentDetail>>> {
    let Ok(Path(agent_id)) = path else {
        return Err(ApiError::not_found(MSG_AGENT_NOT_FOUND));
    };
    let agent = fetch_agent(&state, &agent_id)
        .await
        .map_err(|e| match e.status() {
            Some(404 | 422 | 400) => ApiError::not_found(MSG_AGENT_NOT_FOUND),
            _ => upstream_error(MSG_AGENTS_FAILED, &e),
        })?;
    Ok(ok(
        "Agente obtenido exitosamente",
        AgentDetail {
            summary: agent_view(None, Some(&agent)),
            first_message: agent.first_message().map(str::to_owned),
            prompt: agent.prompt().map(str::to_owned),
            dynamic_variables: agent.dynamic_variables(),
        },
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumberView {
    pub phone_number_id: String,
    pub phone_number: String,
    pub label: Option<String>,
    pub provider: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub assigned_agent: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumberList {
    pub phone_numbers: Vec<PhoneNumberView>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/phone-numbers", tag = "agents", security(("bearer" = [])),
    responses(
        (status = 200, description = "Números de teléfono obtenidos exitosamente", body = Envelope<PhoneNumberList>),
        (status = 502, description = "Error obteniendo números de teléfono de ElevenLabs", body = ErrorBody),
    ))]
pub async fn list_phone_numbers(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
) -> ApiResult<Json<Envelope<PhoneNumberList>>> {
    let list = fetch_phone_numbers(&state)
        .await
        .map_err(|e| upstream_error(MSG_PHONES_FAILED, &e))?;
    let phone_numbers: Vec<PhoneNumberView> = list
        .into_iter()
        .map(|p| PhoneNumberView {
            phone_number_id: p.phone_number_id,
            phone_number: p.phone_number,
            label: p.label,
            provider: p.provider,
            assigned_agent: p
                .assigned_agent
                .map(|a| json!({"agent_id": a.agent_id, "agent_name": a.agent_name})),
        })
        .collect();
    Ok(ok(
        "Números de teléfono obtenidos exitosamente",
        PhoneNumberList {
            count: phone_numbers.len(),
            phone_numbers,
        },
    ))
}
