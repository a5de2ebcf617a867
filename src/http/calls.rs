//! `POST /api/groups/:id/call`: the seed endpoint (API.md §5). The ten checks
//! run in the contract's order and nothing is submitted before all pass.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::agents::{fetch_agent, fetch_phone_numbers, upstream_error};
use super::groups::visible_group;
use crate::app::AppState;
use crate::elevenlabs::ElevenLabsError;
use crate::elevenlabs::types::SubmitBatch;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthUser, PathIds};
use crate::store::{
    AcceptedBatch, Group, IdempotencyClaim, LaunchClient, NewBatch, NewCallRecord, StoreError, User,
};

/// ElevenLabs' limit of recipients per batch.
pub const MAX_RECIPIENTS_PER_BATCH: usize = 10_000;

const MSG_USER_ID: &str = "ID de usuario es requerido en el body de la petición";
const MSG_NO_AGENT: &str =
    "El grupo no tiene un agente asignado. Por favor, asigna un agente al crear el grupo.";
const MSG_NO_CLIENTS: &str = "El grupo no tiene clientes asignados para llamar";
const MSG_USER_NOT_FOUND: &str = "Usuario no encontrado";
const MSG_OTHER_USER: &str = "No puedes iniciar llamadas en nombre de otro usuario";
const MSG_NOT_FUTURE: &str = "scheduledTimeUnix debe ser una fecha futura";
const MSG_TOO_FAR: &str = "scheduledTimeUnix no puede superar 30 días";
const MSG_NO_PHONE: &str =
    "No hay números de teléfono disponibles. Por favor, configura un phoneNumberId.";
const MSG_AGENT_CHECK: &str = "No se pudo verificar la configuración del agente";
const MSG_MISSING_VARS: &str = "Faltan variables requeridas en el mensaje del agente";
const MSG_NO_RECIPIENTS: &str =
    "No se encontraron clientes con números telefónicos válidos en el grupo";
const MSG_DOUBLE: &str = "Ya se iniciaron llamadas para este grupo hace un momento";
const MSG_UNVERIFIED: &str = "Un envío anterior de este grupo aún se está verificando con ElevenLabs (pudo haberse creado); se resolverá automáticamente en unos minutos.";
const MSG_SUBMIT: &str = "Error iniciando las llamadas";
const MSG_ID_TAKEN: &str = "ElevenLabs devolvió un identificador de batch ya registrado";
const MSG_RESUME_LATER: &str = "Las partes enviadas ya están en curso. Cuando el envío dudoso se haya verificado (unos minutos), vuelve a iniciar las llamadas con \"onlyUncalled\": true para llamar solo a los clientes que falten.";
const MSG_RESUME: &str = "Las partes enviadas ya están en curso. Para llamar solo a los clientes que faltan, vuelve a iniciar las llamadas con \"onlyUncalled\": true (con una Idempotency-Key nueva si usaste una).";
const MSG_KEY_REUSED: &str = "La clave de idempotencia ya se usó con otra petición";
const MSG_BAD_KEY: &str = "La clave de idempotencia debe tener entre 1 y 200 caracteres";

/// How long a launch may hold the group's lock before it is considered dead.
const LAUNCH_LOCK_SECS: i64 = 600;

/// How long past two submit timeouts a part written ahead is left alone by the
/// sync: the launch confirms or discards it well before; after a crash the
/// sync reconciles it then.
const WRITE_AHEAD_HOLD_SECS: i64 = 60;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/groups/{id}/call", post(start_calls))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRequest {
    /// The user starting the calls (a positive integer).
    #[schema(value_type = i64)]
    pub user_id: Option<Value>,
    /// ElevenLabs phone number id; default: the group's, else one from ElevenLabs.
    pub agent_phone_number_id: Option<String>,
    /// Unix seconds; `null` starts now.
    #[schema(value_type = Option<i64>)]
    pub scheduled_time_unix: Option<Value>,
    /// `true`: only the clients no batch has included yet (the rest of a launch
    /// that stopped half-way, or clients added since). Default `false`: everyone.
    pub only_uncalled: Option<bool>,
}

fn positive_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().filter(|v| *v > 0),
        Value::String(s) => crate::extract::parse_id(s.trim()),
        _ => None,
    }
}

#[utoipa::path(post, path = "/api/groups/{id}/call", tag = "calls", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    request_body = CallRequest,
    responses(
        (status = 200, description = "Llamadas iniciadas exitosamente para el grupo \"…\""),
        (status = 400, description = "Una de las validaciones del contrato", body = ErrorBody),
        (status = 403, description = "No puedes iniciar llamadas en nombre de otro usuario", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado / Usuario no encontrado", body = ErrorBody),
        (status = 409, description = "Ya se iniciaron llamadas para este grupo hace un momento", body = ErrorBody),
        (status = 422, description = "La clave de idempotencia ya se usó con otra petición", body = ErrorBody),
        (status = 502, description = "ElevenLabs no disponible o rechazó la clave", body = ErrorBody),
        (status = 503, description = "ElevenLabs ocupado (Retry-After)", body = ErrorBody),
    ))]
pub async fn start_calls(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    // 1. userId, before anything else is read from the body (a body that is
    // not an object has no userId either).
    let user_id = body
        .get("userId")
        .and_then(positive_int)
        .ok_or_else(|| ApiError::bad_request(MSG_USER_ID))?;
    let request: CallRequest = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::bad_request(crate::error::MSG_BAD_JSON).with_error(e.to_string()))?;
    let group_id = ids.first();

    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map(str::trim).unwrap_or("");
            if key.is_empty() || key.chars().count() > 200 {
                return Err(ApiError::bad_request(MSG_BAD_KEY));
            }
            Some(key.to_owned())
        }
    };
    if let Some(key) = &key {
        let fingerprint = hex::encode(Sha256::digest(format!(
            "POST /api/groups/{group_id}/call {body}"
        )));
        let expires = Utc::now() + chrono::Duration::hours(24);
        match state
            .store
            .claim_idempotency_key(caller.id, key, &fingerprint, expires)
            .await?
        {
            IdempotencyClaim::Claimed => {}
            IdempotencyClaim::Replay { status, body } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                return Ok((status, axum::Json(value)).into_response());
            }
            IdempotencyClaim::Mismatch => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    MSG_KEY_REUSED,
                ));
            }
            IdempotencyClaim::InFlight => {
                return Err(ApiError::conflict(MSG_DOUBLE).with_data(json!({"batchId": null})));
            }
        }
    }

    // The launch runs as a task of its own: a client that hangs up half-way
    // through must not cut it between a submit and its record.
    let task = tokio::spawn(async move {
        let reached = AtomicBool::new(false);
        let outcome = launch(
            &state,
            &caller,
            group_id,
            user_id,
            &request,
            key.as_deref(),
            &reached,
        )
        .await;
        if let Some(key) = &key {
            settle_key(
                &state,
                caller.id,
                key,
                &outcome,
                reached.load(Ordering::SeqCst),
            )
            .await;
        }
        outcome
    });
    let outcome = task.await.map_err(ApiError::internal)?;
    outcome.map(|body| (StatusCode::OK, axum::Json(body)).into_response())
}

/// Keeps the launch's answer under its idempotency key, so that a retry gets
/// the same answer and never launches again. Only a launch that certainly
/// created nothing at ElevenLabs gives its key back for another try.
async fn settle_key(
    state: &AppState,
    user_id: i64,
    key: &str,
    outcome: &ApiResult<Value>,
    reached_elevenlabs: bool,
) {
    let stored = match outcome {
        Ok(body) => {
            state
                .store
                .complete_idempotency_key(user_id, key, 200, &body.to_string())
                .await
        }
        Err(err) if reached_elevenlabs => {
            state
                .store
                .complete_idempotency_key(user_id, key, err.status.as_u16(), &err.body_json())
                .await
        }
        Err(_) => state.store.release_idempotency_key(user_id, key).await,
    };
    if let Err(err) = stored {
        // The key stays claimed: a retry is refused (409), never launched twice.
        tracing::error!(error = %err, "launch: the idempotency key could not be settled");
    }
}

/// Checks 2–10, then the submits. Returns the 200 body.
async fn launch(
    state: &AppState,
    caller: &User,
    group_id: i64,
    user_id: i64,
    request: &CallRequest,
    idempotency_key: Option<&str>,
    reached: &AtomicBool,
) -> ApiResult<Value> {
    // 2–4: the group, its agent, its clients.
    let group = visible_group(state, caller, group_id).await?;
    let agent_id = group
        .agent_id
        .clone()
        .ok_or_else(|| ApiError::bad_request(MSG_NO_AGENT))?;
    if group.clients_count == 0 {
        return Err(ApiError::bad_request(MSG_NO_CLIENTS));
    }
    // 5: the user, and who may act for whom.
    match state.store.get_user(user_id).await? {
        Some(user) if user.is_active => {}
        _ => return Err(ApiError::not_found(MSG_USER_NOT_FOUND)),
    }
    if !caller.is_admin() && caller.id != user_id {
        return Err(ApiError::forbidden(MSG_OTHER_USER));
    }
    // 6: the schedule.
    let scheduled = check_schedule(request.scheduled_time_unix.as_ref())?;
    // Who some batch already includes (`onlyUncalled`); checked again under the
    // launch lock, where every earlier launch of the group is fully stored.
    let only_uncalled = request.only_uncalled.unwrap_or(false);
    let called = match only_uncalled {
        true => Some(state.store.called_client_ids(group.id).await?),
        false => None,
    };
    // 7: the phone number.
    let phone_number_id = resolve_phone_number(
        state,
        &group,
        &agent_id,
        request.agent_phone_number_id.as_deref(),
    )
    .await?;
    // 8: the agent and its variables; 9: the recipients.
    let agent = fetch_agent(state, &agent_id)
        .await
        .map_err(|e| match e.status() {
            Some(400 | 404 | 422) => {
                ApiError::bad_request(MSG_AGENT_CHECK).with_error(e.to_string())
            }
            _ => upstream_error(MSG_AGENT_CHECK, &e),
        })?;
    let started = std::time::Instant::now();
    let clients = state.store.launch_clients(group.id).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        clients = clients.len(),
        "launch: clients loaded"
    );
    let numbers: Vec<String> = clients.iter().map(|c| c.phone_e164.clone()).collect();
    let blocked = state.store.do_not_call_among(&numbers).await?;
    let plan = plan_recipients(&group, clients, &blocked, called.as_ref());
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "launch: recipients planned"
    );
    let required = agent.dynamic_variables();
    let missing = missing_variables(&required, &plan);
    if !missing.is_empty() {
        let detail = missing
            .iter()
            .map(|(name, count)| format!("{name} (falta en {count} clientes)"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::bad_request(MSG_MISSING_VARS)
            .with_code("MISSING_VARIABLES")
            .with_error(format!("Variables faltantes: {detail}")));
    }
    if plan.recipients.is_empty() {
        let mut refusal = ApiError::bad_request(MSG_NO_RECIPIENTS);
        if plan.already_called > 0 {
            refusal = refusal.with_error(format!(
                "{} clientes ya fueron incluidos en una llamada (onlyUncalled)",
                plan.already_called
            ));
        }
        return Err(refusal);
    }
    // 10: one launch at a time, and none twice within the window.
    let now = Utc::now();
    if !state
        .store
        .lock_launch(group.id, now + chrono::Duration::seconds(LAUNCH_LOCK_SECS))
        .await?
    {
        return Err(double_launch(state, group.id, now).await?);
    }
    let result = async {
        // No launch within the window, with or without an idempotency key (a
        // key only makes the same request replayable: twenty requests with
        // twenty keys are still one launch), and none while an earlier submit
        // of the group is still being verified (it may have been created at
        // ElevenLabs). Only the uncalled needs no window: repeated, it finds
        // nobody left to call.
        let since = match only_uncalled {
            false => now - chrono::Duration::seconds(state.config.duplicate_window_secs as i64),
            true => now,
        };
        if let Some(earlier) = state.store.recent_batch(group.id, since).await? {
            let mut conflict =
                ApiError::conflict(MSG_DOUBLE).with_data(json!({"batchId": earlier}));
            if earlier.is_none() {
                conflict = conflict.with_error(MSG_UNVERIFIED);
            }
            return Err(conflict);
        }
        // A launch stored since the list of the uncalled was read has called
        // some of them: that list is stale.
        if only_uncalled {
            let called_now = state.store.called_client_ids(group.id).await?;
            if plan
                .recipients
                .iter()
                .any(|r| called_now.contains(&r.client_id))
            {
                return Err(double_launch(state, group.id, now).await?);
            }
        }
        submit(
            state,
            &group,
            &agent_id,
            user_id,
            &phone_number_id,
            scheduled,
            plan,
            idempotency_key,
            reached,
        )
        .await
    }
    .await;
    // The number is kept on the group once a batch used it.
    let used = reached.load(Ordering::SeqCst);
    if used && group.phone_number_id.as_deref() != Some(phone_number_id.as_str()) {
        let saved = state
            .store
            .set_group_phone_number(group.id, &phone_number_id)
            .await;
        if let Err(err) = saved {
            tracing::error!(error = %err, "launch: the group's phone number could not be saved");
        }
    }
    if let Err(err) = state.store.unlock_launch(group.id).await {
        // The lock expires by itself; the launch's answer stands.
        tracing::error!(error = %err, "launch: the group's launch lock could not be released");
    }
    result
}

/// The 409 of a launch that another one got ahead of, naming the group's
/// latest batch of the last day (`null` while its id is not known yet).
async fn double_launch(
    state: &AppState,
    group_id: i64,
    now: chrono::DateTime<Utc>,
) -> ApiResult<ApiError> {
    let earlier = state
        .store
        .recent_batch(group_id, now - chrono::Duration::hours(24))
        .await?
        .flatten();
    Ok(ApiError::conflict(MSG_DOUBLE).with_data(json!({"batchId": earlier})))
}

/// ElevenLabs may have created the batch although the submit failed: the
/// request may have reached it. Only a refused connection or an answer that
/// says it was not taken (4xx, 429, 500, 503) is certain.
fn may_have_been_created(err: &ElevenLabsError) -> bool {
    match err {
        ElevenLabsError::Timeout | ElevenLabsError::Interrupted(_) | ElevenLabsError::Decode(_) => {
            true
        }
        // Gateways: the request may have gone through behind them.
        ElevenLabsError::Status { status, .. } => matches!(status, 502 | 504),
        ElevenLabsError::Unreachable(_) => false,
    }
}

fn check_schedule(value: Option<&Value>) -> ApiResult<Option<i64>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let when = value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))
        .ok_or_else(|| ApiError::bad_request(MSG_NOT_FUTURE))?;
    let now = Utc::now().timestamp();
    if when < now - 60 {
        return Err(ApiError::bad_request(MSG_NOT_FUTURE));
    }
    if when > now + 30 * 24 * 3600 {
        return Err(ApiError::bad_request(MSG_TOO_FAR));
    }
    Ok(Some(when))
}

/// Body → group → ElevenLabs (the agent's number, else the first outbound one).
/// A chosen number ElevenLabs does not list is refused. The choice is saved on
/// the group only once a batch used it (a failed launch changes nothing).
async fn resolve_phone_number(
    state: &AppState,
    group: &Group,
    agent_id: &str,
    requested: Option<&str>,
) -> ApiResult<String> {
    let no_phone = |detail: String| ApiError::bad_request(MSG_NO_PHONE).with_error(detail);
    let listed = fetch_phone_numbers(state)
        .await
        .map_err(|e| no_phone(format!("No se pudo consultar ElevenLabs: {e}")))?;
    let requested = requested.map(str::trim).filter(|s| !s.is_empty());
    let chosen = match requested.or(group.phone_number_id.as_deref()) {
        Some(id) => {
            if !listed.iter().any(|p| p.phone_number_id == id) {
                return Err(no_phone(format!("ElevenLabs no tiene el número {id}")));
            }
            id.to_owned()
        }
        None => listed
            .iter()
            .find(|p| {
                p.assigned_agent
                    .as_ref()
                    .is_some_and(|a| a.agent_id == agent_id)
            })
            .or_else(|| listed.iter().find(|p| p.supports_outbound != Some(false)))
            .map(|p| p.phone_number_id.clone())
            .ok_or_else(|| no_phone("ElevenLabs no tiene números que puedan llamar".into()))?,
    };
    Ok(chosen)
}

/// One person to call. Their `{{variables}}` are not merged into a map of
/// their own: the client's columns, the group's defaults and the built-ins are
/// looked up in that order when checked ([`Recipient::lacks`]) and written
/// straight into the request when submitted ([`LaunchRecipient`]), which spares
/// a launch of 100,000 people as many maps.
pub struct Recipient {
    pub client_id: i64,
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// The client's own scalar variables (objects and arrays are left out).
    pub own: Map<String, Value>,
}

/// What every recipient of a launch shares.
pub struct Shared {
    /// The group's scalar default variables.
    pub defaults: Map<String, Value>,
    pub group_name: String,
}

/// The variables every call gets from its client row and group, in the order
/// they are written; each wins over a client column or group default of its name.
const BUILTINS: [&str; 5] = ["name", "phone_number", "email", "client_id", "group_name"];

impl Recipient {
    /// The built-in `key`'s value for this recipient, if it is a built-in and
    /// set (`name` and `email` only when the client has them).
    fn builtin<'a>(&'a self, key: &str, shared: &'a Shared) -> Option<Cow<'a, str>> {
        match key {
            "name" => self.name.as_deref().map(Cow::Borrowed),
            "phone_number" => Some(Cow::Borrowed(&self.phone)),
            "email" => self.email.as_deref().map(Cow::Borrowed),
            "client_id" => Some(Cow::Owned(self.client_id.to_string())),
            "group_name" => Some(Cow::Borrowed(&shared.group_name)),
            _ => None,
        }
    }

    /// Whether `{{key}}` would reach the agent absent, null or blank.
    pub fn lacks(&self, key: &str, shared: &Shared) -> bool {
        match self.builtin(key, shared) {
            Some(text) => text.trim().is_empty(),
            None => match self.own.get(key).or_else(|| shared.defaults.get(key)) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                Some(_) => false,
            },
        }
    }
}

/// A recipient as ElevenLabs' `OutboundCallRecipient`, written from the client's row.
#[derive(Serialize)]
pub struct LaunchRecipient<'a> {
    id: String,
    phone_number: &'a str,
    conversation_initiation_client_data: LaunchClientData<'a>,
}

#[derive(Serialize)]
struct LaunchClientData<'a> {
    dynamic_variables: DynamicVariables<'a>,
}

impl<'a> LaunchRecipient<'a> {
    pub fn new(recipient: &'a Recipient, shared: &'a Shared) -> Self {
        LaunchRecipient {
            id: recipient.client_id.to_string(),
            phone_number: &recipient.phone,
            conversation_initiation_client_data: LaunchClientData {
                dynamic_variables: DynamicVariables { recipient, shared },
            },
        }
    }
}

/// The group's defaults, overridden by the client's own columns, overridden by
/// the built-ins; each key written once.
struct DynamicVariables<'a> {
    recipient: &'a Recipient,
    shared: &'a Shared,
}

impl Serialize for DynamicVariables<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (r, shared) = (self.recipient, self.shared);
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in &shared.defaults {
            if !r.own.contains_key(k) && r.builtin(k, shared).is_none() {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in &r.own {
            if r.builtin(k, shared).is_none() {
                map.serialize_entry(k, v)?;
            }
        }
        for key in BUILTINS {
            if let Some(value) = r.builtin(key, shared) {
                map.serialize_entry(key, &value)?;
            }
        }
        map.end()
    }
}

pub struct Plan {
    pub recipients: Vec<Recipient>,
    pub shared: Shared,
    pub total: usize,
    pub invalid_phone: usize,
    pub do_not_call: usize,
    pub duplicate: usize,
    /// Left out by `onlyUncalled` (always 0 when it was not asked for).
    pub already_called: usize,
    pub only_uncalled: bool,
}

fn looks_e164(phone: &str) -> bool {
    phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Who is called, with which variables: the group's defaults (scalars),
/// overridden by the client's own columns, plus the built-ins.
pub fn plan_recipients(
    group: &Group,
    clients: Vec<LaunchClient>,
    blocked: &HashSet<String>,
    called: Option<&HashSet<i64>>,
) -> Plan {
    let defaults: Map<String, Value> = group
        .variables
        .iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut plan = Plan {
        recipients: Vec::with_capacity(clients.len()),
        shared: Shared {
            defaults,
            group_name: group.name.clone(),
        },
        total: clients.len(),
        invalid_phone: 0,
        do_not_call: 0,
        duplicate: 0,
        already_called: 0,
        only_uncalled: called.is_some(),
    };
    let mut seen: HashSet<&str> = HashSet::with_capacity(clients.len());
    let mut kept = Vec::with_capacity(clients.len());
    for (index, client) in clients.iter().enumerate() {
        if called.is_some_and(|c| c.contains(&client.id)) {
            plan.already_called += 1;
        } else if !looks_e164(&client.phone_e164) {
            plan.invalid_phone += 1;
        } else if blocked.contains(&client.phone_e164) {
            plan.do_not_call += 1;
        } else if !seen.insert(client.phone_e164.as_str()) {
            plan.duplicate += 1;
        } else {
            kept.push(index);
        }
    }
    drop(seen);
    let mut kept = kept.into_iter().peekable();
    for (index, client) in clients.into_iter().enumerate() {
        if kept.next_if_eq(&index).is_none() {
            continue;
        }
        let mut own = client.variables;
        own.retain(|_, v| !v.is_object() && !v.is_array());
        plan.recipients.push(Recipient {
            client_id: client.id,
            phone: client.phone_e164,
            name: client.name,
            email: client.email,
            own,
        });
    }
    plan
}

/// The required variables some recipient lacks (absent, null or empty), with how many lack each.
pub fn missing_variables(required: &[String], plan: &Plan) -> Vec<(String, usize)> {
    required
        .iter()
        .filter_map(|name| {
            let count = plan
                .recipients
                .iter()
                .filter(|r| r.lacks(name, &plan.shared))
                .count();
            (count > 0).then(|| (name.clone(), count))
        })
        .collect()
}

/// `Llamada <group> - DD/MM/YYYY`, the date in the group's time zone.
pub fn call_name(group: &Group, default_tz: &str, now: chrono::DateTime<Utc>) -> String {
    let tz: chrono_tz::Tz = group
        .timezone
        .parse()
        .or_else(|_| default_tz.parse())
        .unwrap_or(chrono_tz::America::Bogota);
    format!(
        "Llamada {} - {}",
        group.name,
        now.with_timezone(&tz).format("%d/%m/%Y")
    )
}

/// The `errorCode` for ElevenLabs refusing our data.
fn classify(err: &ElevenLabsError) -> &'static str {
    let ElevenLabsError::Status { message, code, .. } = err else {
        return "VALIDATION";
    };
    let text = format!("{} {}", code.as_deref().unwrap_or(""), message).to_lowercase();
    if text.contains("agent") {
        "INVALID_AGENT"
    } else if text.contains("phone") {
        "INVALID_PHONE"
    } else if text.contains("variable") {
        "MISSING_VARIABLES"
    } else {
        "VALIDATION"
    }
}

fn submit_error(err: &ElevenLabsError) -> ApiError {
    match err.status() {
        Some(400 | 404 | 422) => {
            let message = match err {
                ElevenLabsError::Status { message, .. } => message.clone(),
                other => other.to_string(),
            };
            ApiError::bad_request(MSG_SUBMIT)
                .with_error(message)
                .with_code(classify(err))
        }
        _ => upstream_error(MSG_SUBMIT, err),
    }
}

type StoreTask<T> = tokio::task::JoinHandle<(std::time::Instant, crate::store::StoreResult<T>)>;

/// What the confirmation of an accepted part came to.
enum Confirmation {
    Stored,
    /// ElevenLabs answered with an id another batch row already has: the part
    /// was discarded (its row, call records and statistics; nothing else was
    /// written) and the launch answers 502.
    IdTaken(String),
}

/// Confirms an accepted part in the background. A confirmation is
/// idempotent, so a storage error is tried again twice (after 0.2 s, then
/// 1 s) before the part is left to the sync, which must then find it by name.
/// An id that is already taken stays taken: that part is discarded at once
/// (the sync could not store that id either, and would hold the group back
/// until it gave the part up).
fn spawn_confirm(
    state: &AppState,
    row_id: i64,
    accepted: AcceptedBatch,
    calls: Arc<Vec<NewCallRecord>>,
) -> StoreTask<Confirmation> {
    let store = state.store.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut outcome = store.confirm_batch(row_id, &accepted, &calls).await;
        for pause in [200, 1_000] {
            // Done, or an id that is taken: trying again cannot change that.
            if matches!(outcome, Ok(()) | Err(StoreError::UniqueViolation)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            outcome = store.confirm_batch(row_id, &accepted, &calls).await;
        }
        let outcome = match outcome {
            Ok(()) => Ok(Confirmation::Stored),
            Err(StoreError::UniqueViolation) => {
                let id = accepted.elevenlabs_batch_id;
                // If even this fails the part stays an `unknown` attempt,
                // which the sync gives up after its hold.
                let not_discarded = store.discard_batch(row_id).await.err();
                // Logged once, here; ids only.
                tracing::error!(
                    elevenlabs_batch_id = %id,
                    batch = row_id,
                    discard_error = not_discarded.map(|e| e.to_string()).as_deref().unwrap_or("-"),
                    "launch: ElevenLabs answered a batch id another batch already has; the part is not kept"
                );
                Ok(Confirmation::IdTaken(id))
            }
            Err(err) => Err(err),
        };
        (started, outcome)
    })
}

/// Waits for a confirmation: a part whose id was taken is a 502 naming the
/// parts that did start (not that one).
async fn finish_confirm(
    task: StoreTask<Confirmation>,
    batch_ids: &[String],
    parts: usize,
) -> ApiResult<()> {
    match finish_store(task, Step::Confirmed, batch_ids, parts).await? {
        Confirmation::Stored => Ok(()),
        Confirmation::IdTaken(id) => {
            let mut started = batch_ids.to_vec();
            if let Some(at) = started.iter().rposition(|b| *b == id) {
                started.remove(at);
            }
            let api = ApiError::new(StatusCode::BAD_GATEWAY, MSG_SUBMIT)
                .with_code("ELEVENLABS_DUPLICATE_BATCH_ID")
                .with_error(format!(
                    "{MSG_ID_TAKEN} ({id}); este envío no se guardó. Comprueba en ElevenLabs si ese batch está llamando antes de volver a iniciar las llamadas."
                ));
            Err(match partial_data(&started, parts, false) {
                Some(data) => api.with_data(data),
                None => api,
            })
        }
    }
}

/// What an error answer says of a launch that sent some parts: their batch
/// ids, and how to call the rest without calling anyone twice.
fn partial_data(batch_ids: &[String], parts: usize, uncertain: bool) -> Option<Value> {
    (!batch_ids.is_empty()).then(|| {
        json!({
            "batchIds": batch_ids,
            "partsSent": batch_ids.len(),
            "partsTotal": parts,
            "resume": if uncertain { MSG_RESUME_LATER } else { MSG_RESUME },
        })
    })
}

/// A storage failure after parts were sent: a 500 that names them, so nobody
/// relaunches blindly. (Every part sent was written ahead, so `onlyUncalled`
/// still leaves its people out.) `unverified`: a part is left for the sync to
/// verify, so the advice is to wait.
fn storage_failure(
    failure: String,
    batch_ids: &[String],
    parts: usize,
    unverified: bool,
) -> ApiError {
    tracing::error!(error = %failure, batches = ?batch_ids, "launch: a part could not be stored");
    let api = ApiError::internal(failure);
    match partial_data(batch_ids, parts, unverified) {
        Some(data) => api.with_data(data),
        None => api,
    }
}

/// Waits for a part's store task (a failed confirmation leaves that part
/// unverified; a failed write ahead leaves nothing).
async fn finish_store<T>(
    task: StoreTask<T>,
    step: Step,
    batch_ids: &[String],
    parts: usize,
) -> ApiResult<T> {
    let failure = match task.await {
        Ok((started, Ok(value))) => {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match step {
                Step::WrittenAhead => tracing::debug!(elapsed_ms, "launch: part written ahead"),
                Step::Confirmed => tracing::debug!(elapsed_ms, "launch: batch confirmed"),
            }
            return Ok(value);
        }
        Ok((_, Err(err))) => err.to_string(),
        Err(err) => err.to_string(),
    };
    Err(storage_failure(
        failure,
        batch_ids,
        parts,
        matches!(step, Step::Confirmed),
    ))
}

/// The two stores of a part, for [`finish_store`].
#[derive(Clone, Copy)]
enum Step {
    WrittenAhead,
    Confirmed,
}

/// Waits for every confirmation still running, even after one failed (the
/// launch must not end, and free the group, while a part is being written);
/// the first failure is the answer.
async fn finish_all(
    confirming: &mut std::collections::VecDeque<StoreTask<Confirmation>>,
    batch_ids: &[String],
    parts: usize,
) -> ApiResult<()> {
    let mut first = Ok(());
    while let Some(task) = confirming.pop_front() {
        let done = finish_confirm(task, batch_ids, parts).await;
        if first.is_ok() {
            first = done;
        }
    }
    first
}

/// Removes a part written ahead that will not be submitted. If that fails the
/// attempt stays `unknown`: the sync finds nothing at ElevenLabs and gives it
/// up, which is safe, only slower.
async fn discard_written(state: &AppState, write: StoreTask<i64>) {
    if let Ok((_, Ok(id))) = write.await
        && let Err(err) = state.store.discard_batch(id).await
    {
        tracing::error!(error = %err, "launch: a part written ahead could not be discarded");
    }
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    state: &AppState,
    group: &Group,
    agent_id: &str,
    user_id: i64,
    phone_number_id: &str,
    scheduled: Option<i64>,
    plan: Plan,
    idempotency_key: Option<&str>,
    reached: &AtomicBool,
) -> ApiResult<Value> {
    let base_name = call_name(group, &state.config.default_timezone, Utc::now());
    let parts = plan.recipients.len().div_ceil(MAX_RECIPIENTS_PER_BATCH);
    let mut batch_ids: Vec<String> = Vec::with_capacity(parts);
    let mut first_batch: Option<Value> = None;
    let recipients_count = plan.recipients.len();
    let mut excluded = json!({
        "invalidPhone": plan.invalid_phone,
        "doNotCall": plan.do_not_call,
        "duplicate": plan.duplicate,
    });
    if plan.only_uncalled {
        excluded["alreadyCalled"] = json!(plan.already_called);
    }
    let excluded_count =
        plan.invalid_phone + plan.do_not_call + plan.duplicate + plan.already_called;
    let total = plan.total;
    let shared = plan.shared;
    let mut remaining = plan.recipients.into_iter();
    // Write-ahead: each part is written (an `unknown` attempt and its call
    // records) before it is submitted, so a crash or a storage failure after
    // ElevenLabs accepted it leaves an attempt the sync reconciles, never a
    // batch we know nothing of. The next part is written while this one is
    // submitted; accepted parts are confirmed in the background, two at a time
    // (more only made each slower on PostgreSQL), all before the answer.
    let in_flight = 2;
    let hold = chrono::Duration::seconds(
        2 * state.config.elevenlabs_timeout_secs as i64 + WRITE_AHEAD_HOLD_SECS,
    );
    let mut confirming: std::collections::VecDeque<StoreTask<Confirmation>> =
        std::collections::VecDeque::new();
    let start_part = |index: usize, remaining: &mut std::vec::IntoIter<Recipient>| {
        // Moved, not copied: a launch may carry 200,000 sets of variables.
        let chunk: Vec<Recipient> = remaining.by_ref().take(MAX_RECIPIENTS_PER_BATCH).collect();
        let name = if parts > 1 {
            format!("{base_name} ({}/{parts})", index + 1)
        } else {
            base_name.clone()
        };
        let calls: Arc<Vec<NewCallRecord>> = Arc::new(
            chunk
                .iter()
                .map(|r| NewCallRecord {
                    client_id: Some(r.client_id),
                    recipient_id: Some(r.client_id.to_string()),
                    phone_e164: r.phone.clone(),
                })
                .collect(),
        );
        let record = NewBatch {
            group_id: group.id,
            created_by: user_id,
            agent_id: agent_id.to_owned(),
            phone_number_id: Some(phone_number_id.to_owned()),
            name: name.clone(),
            part_index: index as i64 + 1,
            part_count: parts as i64,
            launch_key: idempotency_key.map(str::to_owned),
            scheduled_time_unix: scheduled,
            total_calls_scheduled: calls.len() as i64,
        };
        let store = state.store.clone();
        let written = calls.clone();
        let hold_until = Utc::now() + hold;
        let write: StoreTask<i64> = tokio::spawn(async move {
            let started = std::time::Instant::now();
            (
                started,
                store.prewrite_batch(&record, &written, hold_until).await,
            )
        });
        (chunk, calls, name, write)
    };
    let mut ahead = Some(start_part(0, &mut remaining));
    for index in 0..parts {
        let Some((chunk, calls, name, write)) = ahead.take() else {
            break;
        };
        let row_id = match finish_store(write, Step::WrittenAhead, &batch_ids, parts).await {
            Ok(id) => id,
            Err(err) => {
                let _ = finish_all(&mut confirming, &batch_ids, parts).await;
                return Err(err);
            }
        };
        if index + 1 < parts {
            ahead = Some(start_part(index + 1, &mut remaining));
        }
        let summary: Option<Value> = first_batch.is_none().then(|| {
            chunk
                .iter()
                .map(|r| json!({"phone_number": r.phone, "recipient_id": r.client_id.to_string()}))
                .collect()
        });
        let request = SubmitBatch {
            call_name: name,
            agent_id: agent_id.to_owned(),
            agent_phone_number_id: phone_number_id.to_owned(),
            scheduled_time_unix: scheduled,
            recipients: chunk
                .iter()
                .map(|r| LaunchRecipient::new(r, &shared))
                .collect::<Vec<_>>(),
        };
        let submitted_at = std::time::Instant::now();
        let outcome = state.elevenlabs.submit_batch(&request).await;
        drop(request);
        drop(chunk);
        tracing::debug!(
            part = index + 1,
            elapsed_ms = submitted_at.elapsed().as_millis() as u64,
            "launch: batch submitted"
        );
        match outcome {
            Ok(batch) => {
                reached.store(true, Ordering::SeqCst);
                let raw = serde_json::to_value(&batch).unwrap_or(Value::Null);
                metrics::counter!("batches_launched_total").increment(1);
                metrics::counter!("calls_launched_total").increment(calls.len() as u64);
                batch_ids.push(batch.id.clone());
                if let Some(summary) = summary {
                    let mut data = raw.clone();
                    data["recipients"] = summary;
                    first_batch = Some(data);
                }
                let accepted = AcceptedBatch {
                    elevenlabs_batch_id: batch.id.clone(),
                    status: batch.status.clone(),
                    created_at_unix: batch.created_at_unix,
                    raw,
                };
                confirming.push_back(spawn_confirm(state, row_id, accepted, calls));
                while confirming.len() >= in_flight {
                    let Some(oldest) = confirming.pop_front() else {
                        break;
                    };
                    if let Err(err) = finish_confirm(oldest, &batch_ids, parts).await {
                        // The others end before the group's lock is let go.
                        let _ = finish_all(&mut confirming, &batch_ids, parts).await;
                        if let Some((_, _, _, write)) = ahead.take() {
                            discard_written(state, write).await;
                        }
                        return Err(err);
                    }
                }
            }
            Err(err) => {
                let uncertain = may_have_been_created(&err);
                // This part is kept for the sync if ElevenLabs may have it, else it goes;
                // the part written ahead was never submitted.
                let settled = if uncertain {
                    reached.store(true, Ordering::SeqCst);
                    state.store.release_unverified_batch(row_id, &calls).await
                } else {
                    state.store.discard_batch(row_id).await
                };
                if let Err(failure) = settled {
                    // The attempt stays `unknown` and held: the sync verifies it
                    // when the hold ends (and gives up a refused one). The answer
                    // is still ElevenLabs' own.
                    tracing::error!(error = %failure, uncertain, "launch: a failed part could not be settled; left to the sync");
                }
                if let Some((_, _, _, write)) = ahead.take() {
                    discard_written(state, write).await;
                }
                finish_all(&mut confirming, &batch_ids, parts).await?;
                let mut api = submit_error(&err);
                if uncertain {
                    // ElevenLabs may have created the batch: the attempt stays for
                    // the sync to find by name, and these people are never dialled twice.
                    api = api.with_error(if matches!(err, ElevenLabsError::Timeout) {
                        "ElevenLabs no respondió a tiempo; el envío se verificará automáticamente. No lo reintentes todavía."
                    } else {
                        "No se pudo confirmar si ElevenLabs recibió el envío; se verificará automáticamente. No lo reintentes todavía."
                    });
                }
                if let Some(data) = partial_data(&batch_ids, parts, uncertain) {
                    api = api.with_data(data);
                }
                return Err(api);
            }
        }
    }
    finish_all(&mut confirming, &batch_ids, parts).await?;
    let batch_data = first_batch.unwrap_or(Value::Null);
    Ok(json!({
        "success": true,
        "message": format!("Llamadas iniciadas exitosamente para el grupo \"{}\"", group.name),
        "data": {
            "batchId": batch_ids.first(),
            "groupId": group.id,
            "groupName": group.name,
            "agentId": agent_id,
            "recipientsCount": recipients_count,
            "callName": base_name,
            "batchData": batch_data,
            "batchIds": batch_ids,
            "batchStatus": batch_data.get("status").cloned().unwrap_or(Value::Null),
            "phoneNumberId": phone_number_id,
            "scheduledTimeUnix": scheduled,
            "totalClientsInGroup": total,
            "excludedClients": excluded_count,
            "excluded": excluded,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_must_be_future_and_within_thirty_days() {
        let now = Utc::now().timestamp();
        assert_eq!(check_schedule(None).ok(), Some(None));
        assert_eq!(check_schedule(Some(&Value::Null)).ok(), Some(None));
        assert_eq!(
            check_schedule(Some(&json!(now + 3600))).ok(),
            Some(Some(now + 3600))
        );
        assert_eq!(
            check_schedule(Some(&json!(now - 30))).ok(),
            Some(Some(now - 30)),
            "60 s of skew"
        );
        assert_eq!(
            check_schedule(Some(&json!(now - 120))).unwrap_err().message,
            MSG_NOT_FUTURE
        );
        assert_eq!(
            check_schedule(Some(&json!(now + 31 * 86400)))
                .unwrap_err()
                .message,
            MSG_TOO_FAR
        );
        assert_eq!(
            check_schedule(Some(&json!("mañana"))).unwrap_err().message,
            MSG_NOT_FUTURE
        );
    }

    #[test]
    fn only_uncalled_leaves_out_the_called_before_any_other_reason() {
        let group = Group {
            id: 1,
            name: "G".into(),
            description: None,
            prompt: None,
            color: "#3B82F6".into(),
            favorite: false,
            idioma: "es".into(),
            variables: Map::new(),
            prefix: "+57".into(),
            selected_country_code: "CO".into(),
            first_message: None,
            phone_number_id: None,
            agent_id: None,
            timezone: "America/Bogota".into(),
            created_by: 1,
            clients_count: 3,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            batch_call_stats: Default::default(),
        };
        let client = |id: i64, phone: &str| LaunchClient {
            id,
            name: Some(format!("C{id}")),
            phone_e164: phone.into(),
            email: None,
            variables: Map::new(),
        };
        let clients = vec![
            client(1, "+573001112233"),
            client(2, "no-es-un-numero"),
            client(3, "+573001112234"),
        ];
        let called: HashSet<i64> = [1, 2].into_iter().collect();
        let plan = plan_recipients(&group, clients, &HashSet::new(), Some(&called));
        assert_eq!(plan.already_called, 2);
        assert_eq!(plan.invalid_phone, 0);
        assert_eq!(plan.total, 3);
        assert!(plan.only_uncalled);
        let ids: Vec<i64> = plan.recipients.iter().map(|r| r.client_id).collect();
        assert_eq!(ids, [3]);
    }

    #[test]
    fn user_ids_are_positive_integers() {
        assert_eq!(positive_int(&json!(5)), Some(5));
        assert_eq!(positive_int(&json!("5")), Some(5));
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(null),
            json!([1]),
        ] {
            assert_eq!(positive_int(&bad), None, "{bad}");
        }
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn shared() -> Shared {
        Shared {
            defaults: map(
                json!({"monto": "0", "ciudad": "Bogotá", "name": "Cliente", "plazo": "30"}),
            ),
            group_name: "Cobranza".into(),
        }
    }

    #[test]
    fn variables_are_defaults_then_columns_then_builtins_each_written_once() {
        let shared = shared();
        let ana = Recipient {
            client_id: 7,
            phone: "+573001234567".into(),
            name: Some("Ana".into()),
            email: None,
            own: map(json!({"monto": "150000", "email": "ana@example.com", "client_id": "x"})),
        };
        let text = serde_json::to_string(&LaunchRecipient::new(&ana, &shared)).unwrap();
        let sent: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            sent,
            json!({
                "id": "7",
                "phone_number": "+573001234567",
                "conversation_initiation_client_data": {"dynamic_variables": {
                    "monto": "150000",
                    "ciudad": "Bogotá",
                    "plazo": "30",
                    "name": "Ana",
                    "email": "ana@example.com",
                    "phone_number": "+573001234567",
                    "client_id": "7",
                    "group_name": "Cobranza",
                }}
            })
        );
        // Each key once in the text itself (a JSON parser would hide a repeat).
        for key in ["\"monto\"", "\"name\"", "\"client_id\"", "\"email\""] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
    }

    #[test]
    fn a_variable_is_lacking_when_absent_null_or_blank_wherever_it_comes_from() {
        let shared = shared();
        let nameless = Recipient {
            client_id: 8,
            phone: "+573001234568".into(),
            name: None,
            email: Some("  ".into()),
            own: map(json!({"plazo": null, "saldo": " ", "cuota": 12})),
        };
        // The group's default stands in for a missing name column.
        assert!(!nameless.lacks("name", &shared));
        assert!(!nameless.lacks("monto", &shared));
        // A client's null or blank value is not replaced by the default.
        assert!(nameless.lacks("plazo", &shared));
        assert!(nameless.lacks("saldo", &shared));
        assert!(nameless.lacks("email", &shared));
        assert!(nameless.lacks("desconocida", &shared));
        assert!(!nameless.lacks("cuota", &shared));
        for builtin in ["phone_number", "client_id", "group_name"] {
            assert!(!nameless.lacks(builtin, &shared), "{builtin}");
        }
        let blank_name = Recipient {
            name: Some(" ".into()),
            ..nameless
        };
        assert!(
            blank_name.lacks("name", &shared),
            "a blank name wins over the default"
        );
    }
}
