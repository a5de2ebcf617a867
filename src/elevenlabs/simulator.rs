//! An ElevenLabs look-alike (API.md §11) for development and tests: the same
//! paths, the `xi-api-key` check, pydantic-style 422s, the real batch and
//! recipient state machines advancing one step every `step`, conversations
//! with analysis for finished calls, signed post-call webhooks, and fault
//! injection (status codes, latency, timeouts).
//!
//! Outcomes are deterministic per phone number, by its last digit on the first
//! attempt: `9` → `failed` (busy), `8` → `voicemail`, anything else →
//! `completed`; a retried call completes. `call_successful` is `success` for an
//! even last digit, `failure` for an odd one. Recipient `i` starts `i % 3`
//! steps late, so progress is gradual.
//!
//! Batch ids are random (`btcal_sim` + 25 lowercase alphanumerics), as are the
//! conversation and recipient ids made from them: a restarted simulator never
//! hands out an id an earlier one gave, which a database that outlived it holds.
//!
//! Control endpoints (no key needed), for tests in other processes:
//! `POST /_simulator/faults` (a [`Fault`]), `DELETE /_simulator/faults`,
//! `GET /_simulator/requests`, `DELETE /_simulator/requests`,
//! `POST /_simulator/next-batch-id` (`{"id": "btcal_…"}`: the next accepted
//! batch gets it, as if ElevenLabs repeated an id).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Secret;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `None`: any non-empty `xi-api-key` is accepted.
    pub api_key: Option<String>,
    pub step: Duration,
    /// Where to post signed webhooks, and with which secret.
    pub webhook: Option<(String, Secret)>,
    /// Keep the requests received (the last 500, batch submits kept before
    /// reads), bodies included, for tests to inspect. Off in a long-running
    /// server: bodies of 10,000 recipients add up.
    pub capture_requests: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            api_key: None,
            step: Duration::from_millis(1000),
            webhook: None,
            capture_requests: true,
        }
    }
}

/// An injected failure: requests whose method and path match get `action`
/// instead of an answer, `times` times (or always).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    /// Matches paths that start with it (`/v1/convai/batch-calling/submit`).
    pub path_prefix: String,
    pub action: FaultAction,
    #[serde(default)]
    pub times: Option<u32>,
    /// Let this many matching requests through first (fail part 2 of a launch).
    #[serde(default)]
    pub skip: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and body (and `Retry-After`, if given).
    Status {
        status: u16,
        #[serde(default)]
        body: Value,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Wait this long, then answer normally (a wait longer than the client's
    /// timeout is a timeout).
    Delay { ms: u64 },
}

impl Fault {
    pub fn status(method: &str, path_prefix: &str, status: u16, body: Value) -> Fault {
        Fault {
            method: Some(method.into()),
            path_prefix: path_prefix.into(),
            action: FaultAction::Status {
                status,
                body,
                retry_after: None,
            },
            times: None,
            skip: None,
        }
    }

    pub fn delay(method: &str, path_prefix: &str, ms: u64) -> Fault {
        Fault {
            method: Some(method.into()),
            path_prefix: path_prefix.into(),
            action: FaultAction::Delay { ms },
            times: None,
            skip: None,
        }
    }

    pub fn times(mut self, times: u32) -> Fault {
        self.times = Some(times);
        self
    }

    pub fn after(mut self, skip: u32) -> Fault {
        self.skip = Some(skip);
        self
    }
}

/// A request the simulator received (for tests to inspect).
#[derive(Debug, Clone, Serialize)]
pub struct CapturedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub api_key: Option<String>,
    pub body: Option<Value>,
}

struct Recipient {
    id: String,
    phone: String,
    /// Kept as its JSON text: a simulated launch of 100,000 recipients held
    /// their variables as trees of values, about a kilobyte each.
    client_data: Box<serde_json::value::RawValue>,
    created_at_unix: i64,
    /// When this recipient's clock starts (ms); reset on retry.
    start_ms: i64,
    attempt: u32,
    webhook_sent: bool,
}

struct Batch {
    id: String,
    name: String,
    agent_id: String,
    agent_name: String,
    phone_number_id: String,
    created_at_unix: i64,
    scheduled_time_unix: i64,
    retry_count: i64,
    cancelled_at_ms: Option<i64>,
    recipients: Vec<Recipient>,
}

struct Data {
    agents: Vec<Value>,
    phone_numbers: Vec<Value>,
    batches: Vec<Batch>,
    /// Ids the next accepted batches get instead of random ones (a test's control).
    forced_batch_ids: std::collections::VecDeque<String>,
}

struct Shared {
    config: SimulatorConfig,
    /// Where webhooks go now: the config's target, or one set later with
    /// [`Simulator::set_webhook`].
    webhook: Mutex<Option<(String, Secret)>>,
    /// The webhook sender runs at most once per simulator.
    sender_started: std::sync::atomic::AtomicBool,
    data: Mutex<Data>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<CapturedRequest>>,
}

/// A handle on a running (or embeddable) simulator.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A new ElevenLabs-shaped id: a prefix and 28 lowercase alphanumerics, `sim`
/// and 25 random ones (about 129 bits: never repeated, across restarts too).
pub fn random_sim_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..25)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}_sim{tail}")
}

pub const SIM_AGENT_COBRANZA: &str = "agent_sim0000000000000000000000001";
pub const SIM_AGENT_RECORDATORIO: &str = "agent_sim0000000000000000000000002";
pub const SIM_PHONE_ASSIGNED: &str = "phnum_sim0000000000000000000000001";
pub const SIM_PHONE_FREE: &str = "phnum_sim0000000000000000000000002";

fn agent_json(id: &str, name: &str, first_message: &str, prompt: &str) -> Value {
    json!({
        "agent_id": id,
        "name": name,
        "tags": ["simulador"],
        "conversation_config": {
            "agent": {"first_message": first_message, "language": "es", "prompt": {"prompt": prompt, "llm": "gpt-4o-mini"}},
            "tts": {"voice_id": "sim_voice_es_1", "model_id": "eleven_flash_v2_5"}
        },
        "metadata": {"created_at_unix_secs": 1_760_000_000, "updated_at_unix_secs": 1_760_000_000},
        "access_info": {"is_creator": true, "creator_name": "Simulador", "creator_email": "sim@example.com", "role": "admin"}
    })
}

fn phone_json(id: &str, number: &str, label: &str, agent: Option<(&str, &str)>) -> Value {
    json!({
        "provider": "twilio",
        "phone_number": number,
        "label": label,
        "phone_number_id": id,
        "supports_inbound": true,
        "supports_outbound": true,
        "assigned_agent": agent.map(|(id, name)| json!({"agent_id": id, "agent_name": name})),
    })
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Simulator {
        let cobranza = "Cobranza (simulador)";
        let data = Data {
            agents: vec![
                agent_json(
                    SIM_AGENT_COBRANZA,
                    cobranza,
                    "Hola {{name}}, le llamamos por su saldo pendiente de {{monto}}.",
                    "Eres un agente de cobranza amable. El cliente {{name}} debe {{monto}}. Hoy es {{system__time_utc}}.",
                ),
                agent_json(
                    SIM_AGENT_RECORDATORIO,
                    "Recordatorio de citas (simulador)",
                    "Hola, le llamamos para recordarle su cita.",
                    "Recuerda la cita al cliente con amabilidad.",
                ),
            ],
            phone_numbers: vec![
                phone_json(
                    SIM_PHONE_ASSIGNED,
                    "+576015550100",
                    "Bogotá saliente",
                    Some((SIM_AGENT_COBRANZA, cobranza)),
                ),
                phone_json(SIM_PHONE_FREE, "+576015550101", "Bogotá libre", None),
            ],
            batches: Vec::new(),
            forced_batch_ids: Default::default(),
        };
        Simulator {
            shared: Arc::new(Shared {
                webhook: Mutex::new(config.webhook.clone()),
                sender_started: std::sync::atomic::AtomicBool::new(false),
                config,
                data: Mutex::new(data),
                faults: Mutex::new(Vec::new()),
                requests: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn router(&self) -> Router {
        // Ten thousand recipients with their variables are a few megabytes.
        Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0: any free port) in the background; starts the
    /// webhook sender when configured.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        if self.shared.config.webhook.is_some() {
            self.start_sender();
        }
        Ok(local)
    }

    /// Posts webhooks to `url`, signed with `secret`, from now on (and starts
    /// the sender if it is not running). The in-process simulator learns the
    /// service's own address only after the service has bound its port.
    /// Must be called inside a Tokio runtime.
    pub fn set_webhook(&self, url: impl Into<String>, secret: Secret) {
        *lock(&self.shared.webhook) = Some((url.into(), secret));
        self.start_sender();
    }

    fn start_sender(&self) {
        use std::sync::atomic::Ordering;
        if !self.shared.sender_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().send_webhooks());
        }
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    pub fn requests(&self) -> Vec<CapturedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Adds an agent (full `GetAgentResponseModel` JSON).
    pub fn add_agent(&self, agent: Value) {
        lock(&self.shared.data).agents.push(agent);
    }

    /// Replaces the phone-number list.
    pub fn set_phone_numbers(&self, numbers: Vec<Value>) {
        lock(&self.shared.data).phone_numbers = numbers;
    }

    /// The next accepted batch gets `id` (even one already given): what a
    /// repeated id from ElevenLabs looks like to the service.
    pub fn force_next_batch_id(&self, id: impl Into<String>) {
        lock(&self.shared.data)
            .forced_batch_ids
            .push_back(id.into());
    }

    pub fn batch_count(&self) -> usize {
        lock(&self.shared.data).batches.len()
    }

    fn step_ms(&self) -> i64 {
        (self.shared.config.step.as_millis() as i64).max(1)
    }

    /// Posts each finished call once, signed like ElevenLabs.
    async fn send_webhooks(self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let tick = (self.shared.config.step / 2).max(Duration::from_millis(20));
        let mut full = false;
        loop {
            // A full round means more are due: no pause before the next.
            if !full {
                tokio::time::sleep(tick).await;
            }
            let Some((url, secret)) = lock(&self.shared.webhook).clone() else {
                full = false;
                continue;
            };
            let events = self.pending_webhooks(WEBHOOKS_PER_ROUND);
            full = events.len() == WEBHOOKS_PER_ROUND;
            let deliveries = events.into_iter().map(|body| {
                let (http, url, secret) = (&http, &url, &secret);
                async move {
                    let text = body.to_string();
                    let timestamp = now_ms() / 1000;
                    let signature =
                        super::webhook::sign(secret.expose(), timestamp, text.as_bytes());
                    let sent = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("elevenlabs-signature", signature)
                        .body(text)
                        .send()
                        .await;
                    if let Err(err) = sent {
                        tracing::debug!(error = %err, "simulator webhook not delivered");
                    }
                }
            });
            futures_util::stream::iter(deliveries)
                .for_each_concurrent(WEBHOOKS_IN_FLIGHT, |delivery| delivery)
                .await;
        }
    }

    /// Up to `limit` events of calls that finished since they were last
    /// looked at (the rest wait for the next round).
    fn pending_webhooks(&self, limit: usize) -> Vec<Value> {
        let step = self.step_ms();
        let now = now_ms();
        let mut data = lock(&self.shared.data);
        let mut events = Vec::new();
        for batch in &mut data.batches {
            let batch_id = batch.id.clone();
            let agent_id = batch.agent_id.clone();
            let phone_number_id = batch.phone_number_id.clone();
            let cancelled = batch.cancelled_at_ms;
            for recipient in &mut batch.recipients {
                if events.len() == limit {
                    return events;
                }
                if recipient.webhook_sent {
                    continue;
                }
                let status = recipient_status(recipient, now, step, cancelled);
                if !matches!(status, "completed" | "voicemail" | "failed") {
                    continue;
                }
                recipient.webhook_sent = true;
                let conversation =
                    conversation_json(&batch_id, &agent_id, &phone_number_id, recipient, status);
                let event = if status == "failed" {
                    json!({"type": "call_initiation_failure", "event_timestamp": now / 1000, "data": {
                        "agent_id": agent_id, "conversation_id": conversation["conversation_id"], "failure_reason": "busy",
                        "metadata": {"type": "sip", "body": {"to_number": recipient.phone, "sip_status_code": 486,
                            "error_reason": "INVITE failed: sip status: 486: Busy here (SIP 486)"}},
                        "conversation_initiation_client_data": recipient.client_data}})
                } else {
                    json!({"type": "post_call_transcription", "event_timestamp": now / 1000, "data": conversation})
                };
                events.push(event);
            }
        }
        events
    }
}

/// A recipient's status at `now`: `pending → dispatched → initiated →
/// in_progress → outcome`, one step each; frozen and `cancelled` by a cancel.
fn recipient_status(r: &Recipient, now: i64, step: i64, cancelled_at: Option<i64>) -> &'static str {
    let at = cancelled_at.map_or(now, |c| c.min(now));
    let stage = if at < r.start_ms {
        -1
    } else {
        (at - r.start_ms) / step
    };
    let status = match stage {
        i64::MIN..=0 => "pending",
        1 => "dispatched",
        2 => "initiated",
        3 => "in_progress",
        _ => outcome(&r.phone, r.attempt),
    };
    if cancelled_at.is_some() && !matches!(status, "completed" | "failed" | "voicemail") {
        "cancelled"
    } else {
        status
    }
}

fn last_digit(phone: &str) -> u32 {
    phone
        .chars()
        .rev()
        .find_map(|c| c.to_digit(10))
        .unwrap_or(0)
}

fn outcome(phone: &str, attempt: u32) -> &'static str {
    match (attempt, last_digit(phone)) {
        (0, 9) => "failed",
        (0, 8) => "voicemail",
        _ => "completed",
    }
}

fn conversation_id(batch_id: &str, index: usize, attempt: u32) -> String {
    let tail: String = batch_id
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("conv_{tail}{attempt:04}{index:012}")
}

fn conversation_json(
    batch_id: &str,
    agent_id: &str,
    phone_number_id: &str,
    r: &Recipient,
    status: &str,
) -> Value {
    let digit = last_digit(&r.phone);
    let success = digit.is_multiple_of(2);
    let start = r.start_ms / 1000 + 2;
    let client_data: Value = serde_json::from_str(r.client_data.get()).unwrap_or_default();
    let name = client_data
        .pointer("/dynamic_variables/name")
        .and_then(Value::as_str)
        .unwrap_or("cliente")
        .to_owned();
    let (conv_status, duration, transcript, analysis, termination) = match status {
        "completed" => (
            "done",
            30 + i64::from(digit) * 7,
            json!([
                {"role": "agent", "message": format!("Hola {name}, le llamamos por su saldo pendiente."), "time_in_call_secs": 0},
                {"role": "user", "message": if success { "Sí, pago el viernes." } else { "Ahora no puedo." }, "time_in_call_secs": 6},
            ]),
            json!({
                "call_successful": if success { "success" } else { "failure" },
                "transcript_summary": if success { format!("{name} se compromete a pagar el viernes.") } else { format!("{name} no puede atender la llamada.") },
                "call_summary_title": "Llamada de cobranza",
                "evaluation_criteria_results": {"compromiso_pago": {"criteria_id": "compromiso_pago",
                    "result": if success { "success" } else { "failure" }, "rationale": "Según la respuesta del cliente."}},
                "data_collection_results": {"fecha_pago": {"data_collection_id": "fecha_pago",
                    "value": if success { Value::from("viernes") } else { Value::Null }, "rationale": "Fecha mencionada por el cliente."}},
            }),
            "Client disconnected: 1000",
        ),
        "voicemail" => (
            "done",
            12,
            json!([{"role": "agent", "message": "Hola, le dejamos un mensaje.", "time_in_call_secs": 0}]),
            json!({"call_successful": "failure", "transcript_summary": "Buzón de voz.", "evaluation_criteria_results": {}, "data_collection_results": {}}),
            "voicemail_detected",
        ),
        "failed" => (
            "failed",
            0,
            json!([]),
            Value::Null,
            "Call initiation failed",
        ),
        _ => ("in-progress", 0, json!([]), Value::Null, ""),
    };
    let mut metadata = json!({
        "start_time_unix_secs": start,
        "call_duration_secs": duration,
        "termination_reason": termination,
        "batch_call": {"batch_call_id": batch_id, "batch_call_recipient_id": r.id},
        "phone_call": {"type": "twilio", "direction": "outbound", "phone_number_id": phone_number_id,
                       "external_number": r.phone, "agent_number": "+576015550100",
                       "stream_sid": format!("MZsim{}", r.id), "call_sid": format!("CAsim{}", r.id)},
    });
    if status == "failed" {
        metadata["error"] =
            json!({"code": 486, "reason": "INVITE failed: sip status: 486: Busy here (SIP 486)"});
    }
    json!({
        "agent_id": agent_id,
        "conversation_id": r.conversation_id_for(batch_id),
        "status": conv_status,
        "transcript": transcript,
        "metadata": metadata,
        "analysis": analysis,
        "conversation_initiation_client_data": r.client_data,
        "has_audio": status == "completed",
        "has_user_audio": status == "completed",
        "has_response_audio": status == "completed",
        "has_auxiliary_audio": false,
    })
}

impl Recipient {
    fn index(&self) -> usize {
        self.id
            .rsplit('_')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default()
    }

    fn conversation_id_for(&self, batch_id: &str) -> String {
        conversation_id(batch_id, self.index(), self.attempt)
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found",
        429 => "rate_limit_error",
        _ => "validation_error",
    };
    let body = json!({"detail": {"type": kind, "code": code, "message": message, "status": code,
                                  "request_id": format!("sim-{}", now_ms())}});
    (status, Json(body)).into_response()
}

fn unprocessable(problems: Vec<Value>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": problems})),
    )
        .into_response()
}

fn missing(loc: &[Value]) -> Value {
    let mut full = vec![Value::from("body")];
    full.extend_from_slice(loc);
    json!({"type": "missing", "loc": full, "msg": "Field required", "input": null})
}

fn wrong(loc: &[Value], kind: &str, msg: &str, input: &Value) -> Value {
    let mut full = vec![Value::from("body")];
    full.extend_from_slice(loc);
    json!({"type": kind, "loc": full, "msg": msg, "input": input})
}

/// Webhook events built at a time: a campaign of 100,000 calls finishing
/// together was 100,000 conversations in memory at once (about a gigabyte).
const WEBHOOKS_PER_ROUND: usize = 256;
/// Deliveries in flight at once, as a webhook sender with a connection pool.
const WEBHOOKS_IN_FLIGHT: usize = 16;

/// ElevenLabs' batch submit, the request tests count.
const SUBMIT_PATH: &str = "/v1/convai/batch-calling/submit";

/// Checks a submit body the way pydantic would (required keys, types, limits).
fn validate_submit(body: &Value) -> Vec<Value> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return vec![wrong(
            &[],
            "model_attributes_type",
            "Input should be a valid dictionary",
            body,
        )];
    };
    for key in ["call_name", "agent_id", "agent_phone_number_id"] {
        match obj.get(key) {
            None | Some(Value::Null) => problems.push(missing(&[key.into()])),
            Some(Value::String(_)) => {}
            Some(other) => problems.push(wrong(
                &[key.into()],
                "string_type",
                "Input should be a valid string",
                other,
            )),
        }
    }
    match obj.get("scheduled_time_unix") {
        None => problems.push(missing(&["scheduled_time_unix".into()])),
        Some(Value::Null) => {}
        Some(v) if v.is_i64() => {}
        Some(other) => problems.push(wrong(
            &["scheduled_time_unix".into()],
            "int_type",
            "Input should be a valid integer",
            other,
        )),
    }
    match obj.get("recipients") {
        None => problems.push(missing(&["recipients".into()])),
        Some(Value::Array(list)) => {
            if list.len() > 10_000 {
                problems.push(wrong(
                    &["recipients".into()],
                    "too_long",
                    "List should have at most 10000 items after validation",
                    &Value::Null,
                ));
            }
            for (i, recipient) in list.iter().enumerate() {
                let at = |k: &str| vec![Value::from("recipients"), Value::from(i), Value::from(k)];
                match recipient.get("phone_number") {
                    Some(Value::String(p)) if is_e164(p) => {}
                    Some(Value::String(p)) => problems.push(wrong(
                        &at("phone_number"),
                        "value_error",
                        "Value error, invalid phone number",
                        &Value::from(p.clone()),
                    )),
                    _ => problems.push(missing(&at("phone_number"))),
                }
                if let Some(vars) =
                    recipient.pointer("/conversation_initiation_client_data/dynamic_variables")
                {
                    match vars.as_object() {
                        Some(map) => {
                            for (k, v) in map {
                                if v.is_object() || v.is_array() {
                                    let mut loc = vec![Value::from("recipients"), Value::from(i)];
                                    loc.extend([
                                        "conversation_initiation_client_data".into(),
                                        "dynamic_variables".into(),
                                        Value::from(k.clone()),
                                    ]);
                                    problems.push(wrong(
                                        &loc,
                                        "string_type",
                                        "Input should be a valid string",
                                        v,
                                    ));
                                }
                            }
                        }
                        None => problems.push(wrong(
                            &at("conversation_initiation_client_data"),
                            "dict_type",
                            "Input should be a valid dictionary",
                            vars,
                        )),
                    }
                }
            }
        }
        Some(other) => problems.push(wrong(
            &["recipients".into()],
            "list_type",
            "Input should be a valid list",
            other,
        )),
    }
    problems
}

fn empty_client_data() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".into()).unwrap_or_default()
}

fn is_e164(phone: &str) -> bool {
    phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.replace('+', " ").replace("%20", " "))
    })
}

async fn handle(
    State(sim): State<Simulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    if let Some(control) = path.strip_prefix("/_simulator/") {
        return sim.control(&method, control, &body);
    }
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    let api_key = headers
        .get("xi-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if sim.shared.config.capture_requests {
        let mut requests = lock(&sim.shared.requests);
        if requests.len() >= 500 {
            // The oldest read goes first: the batch submits are what tests
            // count, and a sync reading thousands of conversations must not
            // push them out.
            let oldest_read = requests
                .iter()
                .position(|r| !(r.method == "POST" && r.path == SUBMIT_PATH));
            requests.remove(oldest_read.unwrap_or(0));
        }
        requests.push(CapturedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            api_key: api_key.clone(),
            body: json_body.clone(),
        });
    }
    let fault = {
        let mut faults = lock(&sim.shared.faults);
        let found = faults.iter().position(|f| {
            path.starts_with(&f.path_prefix)
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
        });
        found.and_then(|i| {
            if let Some(skip) = faults[i].skip.as_mut().filter(|n| **n > 0) {
                *skip -= 1;
                return None;
            }
            let fault = faults[i].clone();
            match faults[i].times.as_mut() {
                Some(1) => {
                    faults.remove(i);
                }
                Some(n) => *n -= 1,
                None => {}
            }
            Some(fault.action)
        })
    };
    match fault {
        Some(FaultAction::Status {
            status,
            body,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, Json(body)).into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert("retry-after", secs.into());
            }
            return response;
        }
        Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => {}
    }
    match api_key.as_deref().map(str::trim) {
        None | Some("") => {
            return error(
                StatusCode::UNAUTHORIZED,
                "needs_authorization",
                "Neither authorization header nor xi-api-key received, please provide one.",
            );
        }
        Some(key)
            if sim
                .shared
                .config
                .api_key
                .as_deref()
                .is_some_and(|k| k != key) =>
        {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Invalid API key",
            );
        }
        _ => {}
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "convai", "agents"]) => sim.list_agents(&query),
        ("GET", ["v1", "convai", "agents", id]) => sim.get_agent(id),
        ("GET", ["v1", "convai", "phone-numbers"]) => {
            Json(Value::Array(lock(&sim.shared.data).phone_numbers.clone())).into_response()
        }
        ("POST", ["v1", "convai", "batch-calling", "submit"]) => {
            sim.submit(json_body.unwrap_or(Value::Null))
        }
        ("GET", ["v1", "convai", "batch-calling", "workspace"]) => sim.list_batches(&query),
        ("GET", ["v1", "convai", "batch-calling", id]) => {
            sim.with_batch(id, |b, sim| sim.batch_json(b, true))
        }
        ("POST", ["v1", "convai", "batch-calling", id, "cancel"]) => sim.cancel(id),
        ("POST", ["v1", "convai", "batch-calling", id, "retry"]) => sim.retry(id),
        ("GET", ["v1", "convai", "conversations", id]) => sim.conversation(id),
        _ => error(StatusCode::NOT_FOUND, "not_found", "Not Found"),
    }
}

impl Simulator {
    fn control(&self, method: &Method, what: &str, body: &[u8]) -> Response {
        match (method.as_str(), what) {
            ("POST", "faults") => match serde_json::from_slice::<Fault>(body) {
                Ok(fault) => {
                    self.inject(fault);
                    Json(json!({"ok": true})).into_response()
                }
                Err(e) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"detail": e.to_string()})),
                )
                    .into_response(),
            },
            ("DELETE", "faults") => {
                self.clear_faults();
                Json(json!({"ok": true})).into_response()
            }
            ("POST", "next-batch-id") => {
                match serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                {
                    Some(id) => {
                        self.force_next_batch_id(id);
                        Json(json!({"ok": true})).into_response()
                    }
                    None => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Json(json!({"detail": "expected {\"id\": \"btcal_…\"}"})),
                    )
                        .into_response(),
                }
            }
            ("GET", "requests") => Json(json!(self.requests())).into_response(),
            ("DELETE", "requests") => {
                self.clear_requests();
                Json(json!({"ok": true})).into_response()
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "Not Found"),
        }
    }

    fn list_agents(&self, query: &str) -> Response {
        let page_size = match query_param(query, "page_size").map(|p| p.parse::<usize>()) {
            None => 30,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => {
                return unprocessable(vec![
                    json!({"type": "less_than_equal", "loc": ["query", "page_size"],
                    "msg": "Input should be less than or equal to 100", "input": query_param(query, "page_size")}),
                ]);
            }
        };
        let search = query_param(query, "search").map(|s| s.to_lowercase());
        let start: usize = query_param(query, "cursor")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let data = lock(&self.shared.data);
        let matching: Vec<&Value> = data
            .agents
            .iter()
            .filter(|a| {
                search
                    .as_deref()
                    .is_none_or(|s| a["name"].as_str().unwrap_or("").to_lowercase().contains(s))
            })
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(page_size)
            .map(|a| {
                json!({"agent_id": a["agent_id"], "name": a["name"], "tags": a["tags"],
                       "created_at_unix_secs": a["metadata"]["created_at_unix_secs"],
                       "access_info": a["access_info"], "last_call_time_unix_secs": null, "archived": false})
            })
            .collect();
        let has_more = start + page.len() < matching.len();
        let next_cursor = has_more.then(|| (start + page.len()).to_string());
        Json(json!({"agents": page, "next_cursor": next_cursor, "has_more": has_more}))
            .into_response()
    }

    fn get_agent(&self, id: &str) -> Response {
        let data = lock(&self.shared.data);
        match data.agents.iter().find(|a| a["agent_id"] == id) {
            Some(agent) => Json(agent.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "agent_not_found", "Agent not found"),
        }
    }

    fn submit(&self, body: Value) -> Response {
        let problems = validate_submit(&body);
        if !problems.is_empty() {
            return unprocessable(problems);
        }
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
        let agent_id = text("agent_id");
        let phone_number_id = text("agent_phone_number_id");
        let call_name = text("call_name");
        let now = now_ms();
        let mut data = lock(&self.shared.data);
        let Some(agent_name) = data
            .agents
            .iter()
            .find(|a| a["agent_id"] == agent_id.as_str())
            .map(|a| a["name"].as_str().unwrap_or_default().to_owned())
        else {
            return error(StatusCode::NOT_FOUND, "agent_not_found", "Agent not found");
        };
        if !data
            .phone_numbers
            .iter()
            .any(|p| p["phone_number_id"] == phone_number_id.as_str())
        {
            return error(
                StatusCode::NOT_FOUND,
                "phone_number_not_found",
                "Phone number not found",
            );
        }
        let id = data
            .forced_batch_ids
            .pop_front()
            .unwrap_or_else(|| random_sim_id("btcal"));
        let scheduled = body["scheduled_time_unix"].as_i64();
        let start_ms = scheduled.map_or(now, |s| (s * 1000).max(now));
        let step = self.step_ms();
        let recipients = body["recipients"]
            .as_array()
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, r)| Recipient {
                        id: format!("{id}_r_{i}"),
                        phone: r["phone_number"].as_str().unwrap_or_default().to_owned(),
                        client_data: r
                            .get("conversation_initiation_client_data")
                            .and_then(|data| serde_json::value::to_raw_value(data).ok())
                            .unwrap_or_else(empty_client_data),
                        created_at_unix: now / 1000,
                        start_ms: start_ms + (i as i64 % 3) * step,
                        attempt: 0,
                        webhook_sent: false,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let batch = Batch {
            id,
            name: call_name,
            agent_id,
            agent_name,
            phone_number_id,
            created_at_unix: now / 1000,
            scheduled_time_unix: scheduled.unwrap_or(now / 1000),
            retry_count: 0,
            cancelled_at_ms: None,
            recipients,
        };
        let json = self.batch_json(&batch, false);
        data.batches.push(batch);
        Json(json).into_response()
    }

    fn batch_json(&self, b: &Batch, detailed: bool) -> Value {
        let now = now_ms();
        let step = self.step_ms();
        let statuses: Vec<&str> = b
            .recipients
            .iter()
            .map(|r| recipient_status(r, now, step, b.cancelled_at_ms))
            .collect();
        let finished = statuses
            .iter()
            .filter(|s| matches!(**s, "completed" | "failed" | "voicemail"))
            .count();
        let dispatched = statuses
            .iter()
            .filter(|s| !matches!(**s, "pending" | "cancelled"))
            .count();
        let status = if b.cancelled_at_ms.is_some() {
            "cancelled"
        } else if statuses
            .iter()
            .all(|s| matches!(*s, "completed" | "failed" | "voicemail"))
        {
            "completed"
        } else if statuses.iter().all(|s| *s == "pending") {
            "pending"
        } else {
            "in_progress"
        };
        let mut json = json!({
            "id": b.id, "name": b.name, "agent_id": b.agent_id, "agent_name": b.agent_name,
            "phone_number_id": b.phone_number_id, "phone_provider": "twilio",
            "created_at_unix": b.created_at_unix, "scheduled_time_unix": b.scheduled_time_unix,
            "total_calls_dispatched": dispatched, "total_calls_scheduled": b.recipients.len(),
            "total_calls_finished": finished, "last_updated_at_unix": now / 1000,
            "status": status, "retry_count": b.retry_count, "telephony_call_config": {},
            "whatsapp_params": null, "timezone": null, "target_concurrency_limit": null,
        });
        if detailed {
            json["recipients"] = b
                .recipients
                .iter()
                .zip(&statuses)
                .map(|(r, status)| {
                    let placed = !matches!(*status, "pending" | "dispatched" | "cancelled");
                    json!({"id": r.id, "phone_number": r.phone, "status": status,
                           "created_at_unix": r.created_at_unix, "updated_at_unix": now / 1000,
                           "conversation_id": if placed { Value::from(r.conversation_id_for(&b.id)) } else { Value::Null },
                           "conversation_initiation_client_data": r.client_data})
                })
                .collect();
        }
        json
    }

    fn with_batch(&self, id: &str, f: impl FnOnce(&Batch, &Simulator) -> Value) -> Response {
        let data = lock(&self.shared.data);
        match data.batches.iter().find(|b| b.id == id) {
            Some(batch) => Json(f(batch, self)).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "batch_call_not_found",
                "Batch call not found",
            ),
        }
    }

    fn list_batches(&self, query: &str) -> Response {
        let limit: usize = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100)
            .max(1);
        let start: usize = query_param(query, "last_doc")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let data = lock(&self.shared.data);
        let page: Vec<Value> = data
            .batches
            .iter()
            .rev()
            .skip(start)
            .take(limit)
            .map(|b| self.batch_json(b, false))
            .collect();
        let has_more = start + page.len() < data.batches.len();
        let next_doc = has_more.then(|| (start + page.len()).to_string());
        Json(json!({"batch_calls": page, "next_doc": next_doc, "has_more": has_more}))
            .into_response()
    }

    fn cancel(&self, id: &str) -> Response {
        let mut data = lock(&self.shared.data);
        let Some(batch) = data.batches.iter_mut().find(|b| b.id == id) else {
            return error(
                StatusCode::NOT_FOUND,
                "batch_call_not_found",
                "Batch call not found",
            );
        };
        if batch.cancelled_at_ms.is_none() {
            batch.cancelled_at_ms = Some(now_ms());
        }
        Json(self.batch_json(batch, false)).into_response()
    }

    fn retry(&self, id: &str) -> Response {
        let now = now_ms();
        let step = self.step_ms();
        let mut data = lock(&self.shared.data);
        let Some(batch) = data.batches.iter_mut().find(|b| b.id == id) else {
            return error(
                StatusCode::NOT_FOUND,
                "batch_call_not_found",
                "Batch call not found",
            );
        };
        let cancelled = batch.cancelled_at_ms;
        let mut retried = false;
        for r in &mut batch.recipients {
            if matches!(
                recipient_status(r, now, step, cancelled),
                "failed" | "voicemail"
            ) {
                r.attempt += 1;
                r.start_ms = now;
                r.webhook_sent = false;
                retried = true;
            }
        }
        if retried {
            batch.retry_count += 1;
            batch.cancelled_at_ms = None;
        }
        Json(self.batch_json(batch, false)).into_response()
    }

    fn conversation(&self, id: &str) -> Response {
        let now = now_ms();
        let step = self.step_ms();
        let data = lock(&self.shared.data);
        // `conv_<batch tail 12><attempt 4><index 12>` names its recipient: no scan.
        let parsed = id
            .strip_prefix("conv_")
            .filter(|rest| rest.len() == 28 && rest.is_ascii())
            .and_then(|rest| {
                let index: usize = rest[16..].parse().ok()?;
                Some((&rest[..12], index))
            });
        for batch in &data.batches {
            let Some((tail, index)) = parsed else {
                break;
            };
            if !batch.id.ends_with(tail) {
                continue;
            }
            if let Some(r) = batch.recipients.get(index) {
                let status = recipient_status(r, now, step, batch.cancelled_at_ms);
                let placed = !matches!(status, "pending" | "dispatched" | "cancelled");
                if placed && r.conversation_id_for(&batch.id) == id {
                    return Json(conversation_json(
                        &batch.id,
                        &batch.agent_id,
                        &batch.phone_number_id,
                        r,
                        status,
                    ))
                    .into_response();
                }
            }
        }
        error(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            "Conversation not found",
        )
    }
}

/// Extra fields a test may merge into a seeded agent.
pub fn agent_with(id: &str, name: &str, first_message: &str, prompt: &str) -> Value {
    agent_json(id, name, first_message, prompt)
}

/// A phone number entry for [`Simulator::set_phone_numbers`].
pub fn phone_number(id: &str, number: &str, assigned_agent: Option<&str>) -> Value {
    phone_json(id, number, "prueba", assigned_agent.map(|a| (a, "agente")))
}
