//! Following a launch (API.md §6): batch status (the group's latest batch and
//! one by id), the live stream, cancel and retry, and the aliases the
//! original dashboard calls (`/api/batch-calls/:batchId/…`).
//!
//! Reads come from the database, which the sync keeps current; a running
//! batch is also read live from ElevenLabs (a read, never a write), and when
//! ElevenLabs does not answer the stored data is served with a warning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::agents::upstream_error;
use super::groups::visible_group;
use super::{PageParams, PageQuery, Pagination};
use crate::app::AppState;
use crate::elevenlabs::types::BatchCall;
use crate::error::{ApiError, ApiResult, ErrorBody, MSG_BAD_ID};
use crate::extract::{ApiQuery, AuthUser, PathIds, parse_id};
use crate::store::sync::{BatchRow, RecipientRow};
use crate::store::{Group, User};

pub const MSG_STATUS: &str = "Estado del batch call obtenido exitosamente";
pub const MSG_STATUS_DB: &str = "Estado del batch call (datos de DB)";
pub const MSG_NEVER_CALLED: &str = "Este grupo no ha sido llamado aún";
pub const MSG_BATCH_NOT_FOUND: &str = "Batch no encontrado en este grupo";
pub const WARNING_NO_ELEVENLABS: &str = "Datos de ElevenLabs no disponibles";
pub const WARNING_UNCONFIRMED: &str = "El envío de este batch a ElevenLabs aún se está verificando";
pub const MSG_CANCELLED: &str = "Batch cancelado exitosamente";
pub const MSG_ALREADY_CANCELLED: &str = "El batch ya estaba cancelado";
pub const MSG_CANNOT_CANCEL: &str = "El batch ya terminó y no se puede cancelar";
pub const MSG_CANCEL_ERROR: &str = "Error cancelando el batch";
pub const MSG_RETRIED: &str = "Reintento del batch iniciado exitosamente";
pub const MSG_CANNOT_RETRY: &str =
    "El batch aún está en curso; espera a que termine para reintentar";
pub const MSG_RETRY_ERROR: &str = "Error reintentando el batch";

/// How long a status read waits for ElevenLabs before answering from the database.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the stream looks at the database, and sends a heartbeat.
const STREAM_POLL: Duration = Duration::from_secs(1);
const STREAM_HEARTBEAT: Duration = Duration::from_secs(15);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/groups/{id}/batch-status", get(group_batch_status))
        .route(
            "/api/groups/{id}/batch-status/{batchId}",
            get(one_batch_status),
        )
        .route(
            "/api/groups/{id}/batch-status/{batchId}/stream",
            get(batch_stream),
        )
        .route(
            "/api/groups/{id}/batch-status/{batchId}/cancel",
            post(cancel_batch),
        )
        .route(
            "/api/groups/{id}/batch-status/{batchId}/retry",
            post(retry_batch),
        )
        .route("/api/batch-calls/{batchId}/status", get(alias_status))
        .route("/api/batch-calls/{batchId}/cancel", post(alias_cancel))
        .route("/api/batch-calls/{batchId}/retry", post(alias_retry))
}

/// `:id` (a positive integer) and `:batchId` (ElevenLabs' `btcal_…`, or ours).
pub struct BatchPath {
    pub group_id: Option<i64>,
    pub batch_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for BatchPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request(MSG_BAD_ID))?;
        let mut group_id = None;
        let mut batch_id = None;
        for (name, value) in &params {
            match name {
                "id" => {
                    group_id =
                        Some(parse_id(value).ok_or_else(|| ApiError::bad_request(MSG_BAD_ID))?)
                }
                "batchId" => {
                    let ok = !value.is_empty()
                        && value.len() <= 100
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if !ok {
                        return Err(ApiError::bad_request(MSG_BAD_ID));
                    }
                    batch_id = Some(value.to_owned());
                }
                _ => {}
            }
        }
        Ok(BatchPath {
            group_id,
            batch_id: batch_id.ok_or_else(|| ApiError::bad_request(MSG_BAD_ID))?,
        })
    }
}

/// The batch, if it belongs to a group the caller can see (else 404).
async fn visible_batch(
    state: &AppState,
    caller: &User,
    path: &BatchPath,
) -> ApiResult<(Group, BatchRow)> {
    let not_found = || ApiError::not_found(MSG_BATCH_NOT_FOUND);
    let batch = match path.group_id {
        Some(group_id) => {
            // The group first: another user's group is "Grupo no encontrado".
            let group = visible_group(state, caller, group_id).await?;
            let batch = state
                .store
                .find_batch(&path.batch_id)
                .await?
                .filter(|b| b.group_id == group.id)
                .ok_or_else(not_found)?;
            return Ok((group, batch));
        }
        None => state
            .store
            .find_batch(&path.batch_id)
            .await?
            .ok_or_else(not_found)?,
    };
    let group = visible_group(state, caller, batch.group_id)
        .await
        .map_err(|e| {
            if e.status == axum::http::StatusCode::NOT_FOUND {
                not_found()
            } else {
                e
            }
        })?;
    Ok((group, batch))
}

fn unix_of(at: DateTime<Utc>) -> i64 {
    at.timestamp()
}

/// A batch under ElevenLabs' own field names, plus a few of ours.
fn batch_json(batch: &BatchRow, counts: Option<&[(String, i64)]>) -> Map<String, Value> {
    let mut out = match &batch.raw {
        Value::Object(raw) => raw.clone(),
        _ => Map::new(),
    };
    out.remove("recipients");
    let fields = [
        ("id", json!(batch.elevenlabs_batch_id)),
        ("name", json!(batch.name)),
        ("status", json!(batch.status)),
        ("agent_id", json!(batch.agent_id)),
        ("phone_number_id", json!(batch.phone_number_id)),
        (
            "created_at_unix",
            json!(
                batch
                    .created_at_unix
                    .unwrap_or_else(|| unix_of(batch.created_at))
            ),
        ),
        ("scheduled_time_unix", json!(batch.scheduled_time_unix)),
        ("total_calls_scheduled", json!(batch.total_calls_scheduled)),
        (
            "total_calls_dispatched",
            json!(batch.total_calls_dispatched),
        ),
        ("total_calls_finished", json!(batch.total_calls_finished)),
        (
            "last_updated_at_unix",
            json!(
                batch
                    .last_updated_at_unix
                    .unwrap_or_else(|| unix_of(batch.updated_at))
            ),
        ),
        ("part_index", json!(batch.part_index)),
        ("part_count", json!(batch.part_count)),
        ("submit_state", json!(batch.submit_state)),
        ("is_final", json!(batch.is_final)),
        ("last_synced_at", json!(batch.last_synced_at)),
    ];
    for (key, value) in fields {
        out.insert(key.into(), value);
    }
    if let Some(counts) = counts {
        let map: Map<String, Value> = counts.iter().map(|(s, n)| (s.clone(), json!(n))).collect();
        out.insert("status_counts".into(), Value::Object(map));
    }
    out
}

/// Overlays what ElevenLabs says right now on the stored batch.
fn overlay_live(batch: &mut Map<String, Value>, live: &BatchCall) {
    batch.insert("status".into(), json!(live.status));
    batch.insert(
        "total_calls_scheduled".into(),
        json!(live.total_calls_scheduled),
    );
    batch.insert(
        "total_calls_dispatched".into(),
        json!(live.total_calls_dispatched),
    );
    batch.insert(
        "total_calls_finished".into(),
        json!(live.total_calls_finished),
    );
    if let Some(at) = live.last_updated_at_unix {
        batch.insert("last_updated_at_unix".into(), json!(at));
    }
    for (key, value) in &live.extra {
        batch.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

fn recipient_json(row: &RecipientRow) -> Value {
    json!({
        "id": row.recipient_id,
        "phone_number": row.phone_e164,
        "status": row.status,
        "created_at_unix": unix_of(row.created_at),
        "updated_at_unix": unix_of(row.updated_at),
        "conversation_id": row.conversation_id,
        "client_id": row.client_id,
        "client_name": row.client_name,
        "duration_secs": row.duration_secs,
        "call_successful": row.call_successful,
        "summary": row.transcript_summary,
        "failure_reason": row.failure_reason,
    })
}

/// Live status of the page's recipients, by recipient id, else phone.
fn overlay_recipients(recipients: &mut [Value], live: &BatchCall) {
    let Some(list) = &live.recipients else {
        return;
    };
    let mut by_id: HashMap<&str, &crate::elevenlabs::types::BatchRecipient> = HashMap::new();
    let mut by_phone = HashMap::new();
    for r in list {
        by_id.insert(r.id.as_str(), r);
        if let Some(phone) = &r.phone_number {
            by_phone.insert(phone.as_str(), r);
        }
    }
    for recipient in recipients {
        let found = recipient["id"]
            .as_str()
            .and_then(|id| by_id.get(id))
            .or_else(|| {
                recipient["phone_number"]
                    .as_str()
                    .and_then(|p| by_phone.get(p))
            })
            .copied();
        if let Some(live) = found {
            let stored_final = recipient["status"]
                .as_str()
                .is_some_and(crate::store::sync::is_final_call_status);
            // A webhook may already know more than the batch view.
            if !stored_final || crate::store::sync::is_final_call_status(&live.status) {
                recipient["status"] = json!(live.status);
            }
            if live.conversation_id.is_some() {
                recipient["conversation_id"] = json!(live.conversation_id);
            }
            if let Some(at) = live.updated_at_unix {
                recipient["updated_at_unix"] = json!(at);
            }
        }
    }
}

/// ElevenLabs' current view of a running batch; `Err(())` when it cannot be had.
async fn live_batch(state: &AppState, batch: &BatchRow) -> Result<Option<BatchCall>, ()> {
    if batch.is_final {
        return Ok(None);
    }
    let Some(id) = &batch.elevenlabs_batch_id else {
        return Err(());
    };
    match tokio::time::timeout(LIVE_TIMEOUT, state.elevenlabs.get_batch(id)).await {
        Ok(Ok(live)) => Ok(Some(live)),
        Ok(Err(err)) => {
            tracing::warn!(batch = batch.id, error = %err, "batch status: ElevenLabs unavailable, answering from the database");
            Err(())
        }
        Err(_) => {
            tracing::warn!(
                batch = batch.id,
                "batch status: ElevenLabs too slow, answering from the database"
            );
            Err(())
        }
    }
}

/// The detailed view of one batch: its fields and a page of its recipients.
/// Returns the batch object, the pagination, and the warning if the data is the database's only.
async fn batch_view(
    state: &AppState,
    batch: &BatchRow,
    page: PageParams,
) -> ApiResult<(Map<String, Value>, Pagination, Option<&'static str>)> {
    let counts = state.store.batch_status_counts(batch.id).await?;
    let mut view = batch_json(batch, Some(&counts));
    let (rows, total) = state
        .store
        .batch_recipients(batch.id, page.page, page.limit)
        .await?;
    let mut recipients: Vec<Value> = rows.iter().map(recipient_json).collect();
    let warning = match live_batch(state, batch).await {
        Ok(Some(live)) => {
            overlay_live(&mut view, &live);
            overlay_recipients(&mut recipients, &live);
            None
        }
        Ok(None) => None,
        Err(()) if batch.elevenlabs_batch_id.is_none() => Some(WARNING_UNCONFIRMED),
        Err(()) => Some(WARNING_NO_ELEVENLABS),
    };
    view.insert("recipients".into(), Value::Array(recipients));
    Ok((view, Pagination::new(page, total), warning))
}

fn envelope(
    message: &str,
    data: Value,
    pagination: Option<Pagination>,
    warning: Option<&str>,
) -> Response {
    let mut body = json!({"success": true, "message": message, "data": data});
    if let Some(p) = pagination {
        body["pagination"] = json!(p);
    }
    if let Some(w) = warning {
        body["warning"] = json!(w);
        body["data"]["warning"] = json!(w);
    }
    Json(body).into_response()
}

#[utoipa::path(get, path = "/api/groups/{id}/batch-status", tag = "batches", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), PageQuery),
    responses(
        (status = 200, description = "Estado del batch call obtenido exitosamente / (datos de DB) / Este grupo no ha sido llamado aún"),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn group_batch_status(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let page = PageParams::try_from(q)?;
    let batches = state.store.group_batches(group.id).await?;
    let Some(latest) = batches.first() else {
        return Ok(envelope(
            MSG_NEVER_CALLED,
            json!({"group": group, "batchCall": null, "hasBeenCalled": false, "lastSync": null, "batches": [], "launch": null}),
            Some(Pagination::new(page, 0)),
            None,
        ));
    };
    let (view, pagination, warning) = batch_view(&state, latest, page).await?;
    let summaries: Vec<Value> = batches
        .iter()
        .map(|b| Value::Object(batch_json(b, None)))
        .collect();
    let last_sync = batches.iter().filter_map(|b| b.last_synced_at).max();
    let launch = launch_view(&state, group.id, &batches).await?;
    let message = if warning.is_some() {
        MSG_STATUS_DB
    } else {
        MSG_STATUS
    };
    Ok(envelope(
        message,
        json!({"group": group, "batchCall": view, "hasBeenCalled": true, "lastSync": last_sync, "batches": summaries, "launch": launch}),
        Some(pagination),
        warning,
    ))
}

/// How far the group's latest launch got: its parts are the newest part 1
/// and the parts written after it (launches of a group never overlap).
/// `(parts that reached ElevenLabs or may have, parts planned, whether one
/// is still being verified)`.
fn latest_launch(batches_newest_first: &[BatchRow]) -> Option<(usize, usize, bool)> {
    let first = batches_newest_first
        .iter()
        .position(|b| b.part_index == 1)?;
    let parts = batches_newest_first.get(..=first)?;
    let total = parts.last().map_or(1, |b| b.part_count.max(1) as usize);
    let sent = parts
        .iter()
        .filter(|b| b.submit_state != "not_submitted")
        .count();
    let unverified = parts.iter().any(|b| b.submit_state == "unknown");
    Some((sent, total, unverified))
}

/// `data.launch` of the group's status: whether its latest launch sent every
/// part, and, when it stopped half-way (a crash, or a part ElevenLabs
/// refused), how many clients are still uncalled and how to call them.
async fn launch_view(state: &AppState, group_id: i64, batches: &[BatchRow]) -> ApiResult<Value> {
    let Some((sent, total, unverified)) = latest_launch(batches) else {
        return Ok(Value::Null);
    };
    let state_name = if state.store.launch_in_progress(group_id, Utc::now()).await? {
        "in_progress"
    } else if sent >= total {
        "complete"
    } else if unverified {
        "verifying"
    } else {
        "stopped"
    };
    let mut view = json!({"status": state_name, "partsSent": sent, "partsTotal": total});
    if matches!(state_name, "stopped" | "verifying") {
        let query = crate::store::ClientQuery {
            page: 1,
            limit: 1,
            uncalled: true,
            ..Default::default()
        };
        let (_, uncalled) = state.store.list_clients(group_id, &query).await?;
        view["uncalledClients"] = json!(uncalled);
        view["message"] = json!(match state_name {
            "stopped" => format!(
                "El lanzamiento se detuvo tras enviar {sent} de {total} partes: quedan {uncalled} clientes sin llamar. Para llamarlos, inicia las llamadas con \"onlyUncalled\": true (nadie recibe dos llamadas)."
            ),
            _ => format!(
                "El lanzamiento se detuvo tras enviar {sent} de {total} partes y un envío aún se está verificando con ElevenLabs: quedan {uncalled} clientes sin llamar. Cuando se haya verificado (unos minutos), inicia las llamadas con \"onlyUncalled\": true."
            ),
        });
    }
    Ok(view)
}

async fn status_of(
    state: &AppState,
    caller: &User,
    path: &BatchPath,
    q: PageQuery,
) -> ApiResult<Response> {
    let (group, batch) = visible_batch(state, caller, path).await?;
    let (view, pagination, warning) = batch_view(state, &batch, PageParams::try_from(q)?).await?;
    let message = if warning.is_some() {
        MSG_STATUS_DB
    } else {
        MSG_STATUS
    };
    Ok(envelope(
        message,
        json!({"group": group, "batchCall": view, "hasBeenCalled": true, "lastSync": batch.last_synced_at}),
        Some(pagination),
        warning,
    ))
}

#[utoipa::path(get, path = "/api/groups/{id}/batch-status/{batchId}", tag = "batches", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("batchId" = String, Path, description = "ElevenLabs batch id"), PageQuery),
    responses(
        (status = 200, description = "Estado del batch call obtenido exitosamente"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
    ))]
pub async fn one_batch_status(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    status_of(&state, &caller, &path, q).await
}

#[utoipa::path(get, path = "/api/batch-calls/{batchId}/status", tag = "batches", security(("bearer" = [])),
    params(("batchId" = String, Path, description = "ElevenLabs batch id"), PageQuery),
    responses(
        (status = 200, description = "Estado del batch call obtenido exitosamente"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
    ))]
pub async fn alias_status(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    status_of(&state, &caller, &path, q).await
}

/// The counts the stream reports.
async fn progress(state: &AppState, batch_id: i64) -> ApiResult<(Value, bool)> {
    let batch = state
        .store
        .find_batch(&batch_id.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found(MSG_BATCH_NOT_FOUND))?;
    let counts = state.store.batch_status_counts(batch.id).await?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let finished: i64 = counts
        .iter()
        .filter(|(s, _)| crate::store::sync::is_final_call_status(s))
        .map(|(_, n)| n)
        .sum();
    let by_status: Map<String, Value> = counts.iter().map(|(s, n)| (s.clone(), json!(n))).collect();
    Ok((
        json!({
            "batchId": batch.elevenlabs_batch_id,
            "status": batch.status,
            "total": total,
            "finished": finished,
            "counts": by_status,
            "lastSync": batch.last_synced_at,
        }),
        batch.is_final,
    ))
}

/// Whether the user may still watch the group: active, its token not revoked
/// since the stream opened (`token_version`), and the group still visible to
/// them (two small reads). A database error is not taken for a refusal.
async fn still_allowed(state: &AppState, watcher: &User, group_id: i64) -> bool {
    match state.store.get_user(watcher.id).await {
        Ok(Some(user)) if user.is_active && user.token_version == watcher.token_version => state
            .store
            .group_is_visible(group_id, crate::store::Scope::of(&user))
            .await
            .unwrap_or(true),
        Ok(_) => false,
        Err(_) => true,
    }
}

#[utoipa::path(get, path = "/api/groups/{id}/batch-status/{batchId}/stream", tag = "batches", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("batchId" = String, Path, description = "ElevenLabs batch id")),
    responses(
        (status = 200, description = "text/event-stream: `status-update`, `batch-completed`, `heartbeat`"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
    ))]
pub async fn batch_stream(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
) -> ApiResult<Response> {
    let (_, batch) = visible_batch(&state, &caller, &path).await?;
    struct Cursor {
        state: AppState,
        watcher: User,
        group_id: i64,
        batch_id: i64,
        last: Option<Value>,
        done: bool,
        since_event: Duration,
    }
    let cursor = Cursor {
        state,
        watcher: caller,
        group_id: batch.group_id,
        batch_id: batch.id,
        last: None,
        done: false,
        since_event: Duration::ZERO,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            if c.last.is_some() {
                tokio::time::sleep(STREAM_POLL).await;
                c.since_event += STREAM_POLL;
                if !still_allowed(&c.state, &c.watcher, c.group_id).await {
                    // The watcher was deactivated, its token revoked or the
                    // group deleted since the stream opened: it ends, and a
                    // reconnection is refused.
                    return None;
                }
            }
            let event = match progress(&c.state, c.batch_id).await {
                Ok((now, is_final)) => {
                    if is_final {
                        c.done = true;
                        Some(Event::default().event("batch-completed").json_data(&now))
                    } else if c.last.as_ref() != Some(&now) {
                        c.last = Some(now.clone());
                        Some(Event::default().event("status-update").json_data(&now))
                    } else {
                        None
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err.message, "batch stream: reading progress failed");
                    c.last.get_or_insert(Value::Null);
                    None
                }
            };
            match event {
                Some(Ok(event)) => {
                    c.since_event = Duration::ZERO;
                    return Some((Ok::<Event, Infallible>(event), c));
                }
                Some(Err(_)) => {}
                None if c.since_event >= STREAM_HEARTBEAT => {
                    c.since_event = Duration::ZERO;
                    let beat = Event::default()
                        .event("heartbeat")
                        .data(Utc::now().to_rfc3339());
                    return Some((Ok(beat), c));
                }
                None => {}
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(STREAM_HEARTBEAT * 2))
        .into_response())
}

async fn cancel(state: &AppState, caller: &User, path: &BatchPath) -> ApiResult<Response> {
    let (_, batch) = visible_batch(state, caller, path).await?;
    if batch.status == "cancelled" {
        let data = Value::Object(batch_json(&batch, None));
        return Ok(envelope(MSG_ALREADY_CANCELLED, data, None, None));
    }
    if batch.is_final {
        return Err(ApiError::conflict(MSG_CANNOT_CANCEL));
    }
    let Some(id) = &batch.elevenlabs_batch_id else {
        return Err(ApiError::conflict(WARNING_UNCONFIRMED));
    };
    let remote = state
        .elevenlabs
        .cancel_batch(id)
        .await
        .map_err(|e| match e.status() {
            Some(400 | 404 | 409 | 422) => {
                ApiError::conflict(MSG_CANNOT_CANCEL).with_error(e.to_string())
            }
            _ => upstream_error(MSG_CANCEL_ERROR, &e),
        })?;
    let raw = crate::sync::snapshot_of(&remote).raw;
    state.store.mark_batch_cancelled(batch.id, &raw).await?;
    metrics::counter!("batches_cancelled_total").increment(1);
    let batch = state
        .store
        .find_batch(&batch.id.to_string())
        .await?
        .unwrap_or(batch);
    let counts = state.store.batch_status_counts(batch.id).await?;
    Ok(envelope(
        MSG_CANCELLED,
        Value::Object(batch_json(&batch, Some(&counts))),
        None,
        None,
    ))
}

async fn retry(state: &AppState, caller: &User, path: &BatchPath) -> ApiResult<Response> {
    let (_, batch) = visible_batch(state, caller, path).await?;
    if !batch.is_final {
        return Err(ApiError::conflict(MSG_CANNOT_RETRY));
    }
    let Some(id) = &batch.elevenlabs_batch_id else {
        return Err(ApiError::conflict(MSG_CANNOT_RETRY).with_error(WARNING_UNCONFIRMED));
    };
    let remote = state
        .elevenlabs
        .retry_batch(id)
        .await
        .map_err(|e| match e.status() {
            Some(400 | 404 | 409 | 422) => {
                ApiError::conflict(MSG_RETRY_ERROR).with_error(e.to_string())
            }
            _ => upstream_error(MSG_RETRY_ERROR, &e),
        })?;
    let snapshot = crate::sync::snapshot_of(&remote);
    state
        .store
        .mark_batch_retried(batch.id, &snapshot.status, &snapshot.raw)
        .await?;
    metrics::counter!("batches_retried_total").increment(1);
    let batch = state
        .store
        .find_batch(&batch.id.to_string())
        .await?
        .unwrap_or(batch);
    Ok(envelope(
        MSG_RETRIED,
        Value::Object(batch_json(&batch, None)),
        None,
        None,
    ))
}

#[utoipa::path(post, path = "/api/groups/{id}/batch-status/{batchId}/cancel", tag = "batches", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("batchId" = String, Path, description = "ElevenLabs batch id")),
    responses(
        (status = 200, description = "Batch cancelado exitosamente / El batch ya estaba cancelado"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
        (status = 409, description = "El batch ya terminó y no se puede cancelar", body = ErrorBody),
        (status = 502, description = "Error cancelando el batch (ElevenLabs)", body = ErrorBody),
    ))]
pub async fn cancel_batch(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
) -> ApiResult<Response> {
    cancel(&state, &caller, &path).await
}

#[utoipa::path(post, path = "/api/batch-calls/{batchId}/cancel", tag = "batches", security(("bearer" = [])),
    params(("batchId" = String, Path, description = "ElevenLabs batch id")),
    responses(
        (status = 200, description = "Batch cancelado exitosamente"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
        (status = 409, description = "El batch ya terminó y no se puede cancelar", body = ErrorBody),
    ))]
pub async fn alias_cancel(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
) -> ApiResult<Response> {
    cancel(&state, &caller, &path).await
}

#[utoipa::path(post, path = "/api/groups/{id}/batch-status/{batchId}/retry", tag = "batches", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("batchId" = String, Path, description = "ElevenLabs batch id")),
    responses(
        (status = 200, description = "Reintento del batch iniciado exitosamente"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
        (status = 409, description = "El batch aún está en curso", body = ErrorBody),
        (status = 502, description = "Error reintentando el batch (ElevenLabs)", body = ErrorBody),
    ))]
pub async fn retry_batch(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
) -> ApiResult<Response> {
    retry(&state, &caller, &path).await
}

#[utoipa::path(post, path = "/api/batch-calls/{batchId}/retry", tag = "batches", security(("bearer" = [])),
    params(("batchId" = String, Path, description = "ElevenLabs batch id")),
    responses(
        (status = 200, description = "Reintento del batch iniciado exitosamente"),
        (status = 404, description = "Batch no encontrado en este grupo", body = ErrorBody),
        (status = 409, description = "El batch aún está en curso", body = ErrorBody),
    ))]
pub async fn alias_retry(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: BatchPath,
) -> ApiResult<Response> {
    retry(&state, &caller, &path).await
}
