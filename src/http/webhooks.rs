//! `POST /api/webhooks/elevenlabs`: ElevenLabs' post-call webhooks (API.md §7).
//!
//! No JWT: the caller proves itself with the `ElevenLabs-Signature` HMAC over
//! the raw body (REFERENCE.md §5.3), so the body is read as bytes and checked
//! before it is parsed. Anyone may call this route, so it reads as little as it
//! can: a request whose header cannot be genuine (missing, malformed, too old)
//! is refused before a byte of its body is read, and a body is read only up to
//! `WEBHOOK_MAX_BODY_MB` (not the upload limit the other routes have). Answers
//! are quick: one short transaction, then 200.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{Envelope, ok};
use crate::app::AppState;
use crate::config::Secret;
use crate::elevenlabs::outcome::CallOutcome;
use crate::elevenlabs::webhook::{self, SignatureError, SignatureHeader};
use crate::error::{ApiError, ApiResult, ErrorBody, MSG_BAD_JSON, MSG_TOO_LARGE};
use crate::store::WebhookApplied;

/// Where ElevenLabs (and the in-process simulator) post.
pub const PATH: &str = "/api/webhooks/elevenlabs";
/// The original service's path, still accepted.
pub const ALIAS: &str = "/api/webhook/elevenlabs/conversation-complete";

pub const MSG_RECEIVED: &str = "Webhook recibido";
pub const MSG_NOT_CONFIGURED: &str = "El webhook de ElevenLabs no está configurado";
pub const MSG_MISSING_SIGNATURE: &str =
    "Falta la firma del webhook (cabecera ElevenLabs-Signature)";
pub const MSG_BAD_SIGNATURE: &str = "Firma del webhook inválida";
pub const MSG_EXPIRED_SIGNATURE: &str = "La firma del webhook está vencida";
pub const MSG_BAD_EVENT: &str = "Evento de webhook inválido";

const SIGNATURE_HEADER: &str = "elevenlabs-signature";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(PATH, post(receive))
        .route(ALIAS, post(receive_alias))
}

/// What the webhook did with an event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReceipt {
    /// The event's `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `applied` (a call record was updated), `duplicate` (seen before,
    /// nothing changed), `unknown_call` (no call record matches; nothing
    /// written) or `ignored` (a type we do not use, e.g. `post_call_audio`).
    pub result: &'static str,
    /// Our call record, when one was updated.
    pub call_id: Option<i64>,
}

/// What the header alone says at `now` (unix seconds): a signature that is
/// missing, malformed or too old is refused without the body.
pub fn check_header(header: Option<&str>, now: i64) -> ApiResult<SignatureHeader> {
    webhook::parse_header(header, now).map_err(signature_refusal)
}

/// Checks the signature header against the raw body at `now` (unix seconds).
pub fn check_signature(
    secret: Option<&Secret>,
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> ApiResult<()> {
    let secret = secret.ok_or_else(not_configured)?;
    check_header(header, now)?
        .verify(secret.expose(), body)
        .map(|_| ())
        .map_err(signature_refusal)
}

fn signature_refusal(err: SignatureError) -> ApiError {
    match err {
        SignatureError::Missing => {
            ApiError::unauthorized(MSG_MISSING_SIGNATURE).with_code("MISSING_SIGNATURE")
        }
        SignatureError::TooOld => {
            ApiError::unauthorized(MSG_EXPIRED_SIGNATURE).with_code("EXPIRED_SIGNATURE")
        }
        SignatureError::Malformed | SignatureError::Mismatch => {
            ApiError::unauthorized(MSG_BAD_SIGNATURE).with_code("INVALID_SIGNATURE")
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, MSG_TOO_LARGE).with_error(format!(
        "El webhook admite hasta {} MiB",
        limit / (1024 * 1024)
    ))
}

/// Reads the body, at most `limit` bytes: a `Content-Length` over it is
/// refused before anything is read, and a body without one (chunked) as soon
/// as it goes past it.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Vec<u8>> {
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Grown as bytes arrive: an announced length is not reserved up front.
    let mut bytes = Vec::with_capacity(announced.map_or(0, |n| n.min(64 * 1024) as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request(MSG_BAD_JSON)
                .with_error("No se pudo leer el cuerpo de la petición")
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn refused(err: ApiError) -> ApiError {
    tracing::warn!(reason = %err.message, "webhook refused");
    metrics::counter!("webhooks_received_total", "type" => "unverified", "result" => "refused")
        .increment(1);
    err
}

fn not_configured() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, MSG_NOT_CONFIGURED)
        .with_code("WEBHOOK_NOT_CONFIGURED")
}

/// The idempotency key of an event: its type and conversation, which
/// ElevenLabs sends once each; the body's hash when there is no conversation.
pub fn event_key(event_type: &str, conversation_id: Option<&str>, body: &[u8]) -> String {
    match conversation_id {
        Some(conversation) => format!("{event_type}:{conversation}"),
        None => format!("{event_type}:sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// Receives an ElevenLabs post-call webhook.
///
/// `post_call_transcription` fills the call record (status, conversation,
/// duration, success, summary, data collection, evaluation, transcript) and
/// `call_initiation_failure` marks it failed with the reason; other types are
/// answered 200 and ignored. The same event twice changes nothing.
#[utoipa::path(post, path = "/api/webhooks/elevenlabs", tag = "webhooks",
    params(("ElevenLabs-Signature" = String, Header, description = "`t=<unix>,v0=<hex HMAC-SHA256 of \"{t}.{body}\">`")),
    request_body(content = Object, description = "`{type, event_timestamp, data}` as ElevenLabs sends it"),
    responses(
        (status = 200, description = "Webhook recibido", body = Envelope<WebhookReceipt>),
        (status = 400, description = "JSON inválido en el cuerpo de la petición / Evento de webhook inválido", body = ErrorBody),
        (status = 401, description = "Firma ausente, inválida o vencida (más de 30 minutos)", body = ErrorBody),
        (status = 413, description = "Cuerpo de más de WEBHOOK_MAX_BODY_MB", body = ErrorBody),
        (status = 503, description = "El webhook de ElevenLabs no está configurado", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Envelope<WebhookReceipt>>> {
    let Some(secret) = state.webhook_secret.as_ref() else {
        return Err(not_configured());
    };
    // A header that is not text cannot be a valid signature.
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    let now = chrono::Utc::now().timestamp();
    let signed = check_header(header, now).map_err(refused)?;
    let limit = state.config.webhook_body_limit_bytes();
    let body = read_body(&headers, body, limit).await.map_err(refused)?;
    signed
        .verify(secret.expose(), &body)
        .map_err(|err| refused(signature_refusal(err)))?;
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(MSG_BAD_JSON).with_error(e.to_string()))?;
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(MSG_BAD_EVENT).with_error("Falta el campo type"))?
        .to_owned();
    let outcome = match event_type.as_str() {
        "post_call_transcription" => Some(CallOutcome::from_conversation(data(&event)?)),
        "call_initiation_failure" => Some(CallOutcome::from_initiation_failure(data(&event)?)),
        _ => None,
    };
    let Some(outcome) = outcome else {
        tracing::info!(event_type = %event_type, "webhook ignored: type not used");
        metrics::counter!("webhooks_received_total", "type" => "other", "result" => "ignored")
            .increment(1);
        return Ok(ok(
            MSG_RECEIVED,
            WebhookReceipt {
                event_type,
                result: "ignored",
                call_id: None,
            },
        ));
    };
    let key = event_key(&event_type, outcome.conversation_id.as_deref(), &body);
    let applied = state
        .store
        .apply_webhook_outcome(&key, &event_type, &outcome)
        .await?;
    let (result, call_id) = match applied {
        WebhookApplied::Applied(id) => ("applied", Some(id)),
        WebhookApplied::Duplicate => ("duplicate", None),
        WebhookApplied::UnknownCall => ("unknown_call", None),
    };
    // Conversation and batch ids only: never the number or the body.
    tracing::info!(
        event_type = %event_type,
        conversation_id = outcome.conversation_id.as_deref().unwrap_or("-"),
        batch_id = outcome.batch_call_id.as_deref().unwrap_or("-"),
        call_id,
        status = outcome.status.as_deref().unwrap_or("-"),
        result,
        "webhook processed"
    );
    let type_label = if event_type == "post_call_transcription" {
        "post_call_transcription"
    } else {
        "call_initiation_failure"
    };
    metrics::counter!("webhooks_received_total", "type" => type_label, "result" => result)
        .increment(1);
    Ok(ok(
        MSG_RECEIVED,
        WebhookReceipt {
            event_type,
            result,
            call_id,
        },
    ))
}

/// The original service's path for the same webhook.
#[utoipa::path(post, path = "/api/webhook/elevenlabs/conversation-complete", tag = "webhooks",
    params(("ElevenLabs-Signature" = String, Header, description = "Como en /api/webhooks/elevenlabs")),
    request_body(content = Object, description = "Como en /api/webhooks/elevenlabs"),
    responses(
        (status = 200, description = "Webhook recibido", body = Envelope<WebhookReceipt>),
        (status = 400, description = "JSON inválido / evento inválido", body = ErrorBody),
        (status = 401, description = "Firma ausente, inválida o vencida", body = ErrorBody),
        (status = 413, description = "Cuerpo de más de WEBHOOK_MAX_BODY_MB", body = ErrorBody),
        (status = 503, description = "El webhook de ElevenLabs no está configurado", body = ErrorBody),
    ))]
pub async fn receive_alias(
    state: State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Envelope<WebhookReceipt>>> {
    receive(state, headers, body).await
}

fn data(event: &Value) -> ApiResult<&Value> {
    event
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| ApiError::bad_request(MSG_BAD_EVENT).with_error("Falta el objeto data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// REFERENCE.md §5.3's test vector.
    const BODY: &str = r#"{"type":"post_call_audio","event_timestamp":1739537297,"data":{"agent_id":"agent_x","conversation_id":"conv_y","full_audio":""}}"#;
    const HEADER: &str =
        "t=1739537297,v0=4426747159ddd4f8a2494d75ef4ca5df7fd18fb3dbc3617b08799766647b2ec8";

    fn status(result: ApiResult<()>) -> Option<u16> {
        result.err().map(|e| e.status.as_u16())
    }

    #[test]
    fn the_reference_vector_passes_at_a_fixed_clock() {
        let secret = Secret::new("wsec_test_secret");
        let at = 1739537297;
        for now in [at - 3600, at, at + 29 * 60, at + 30 * 60] {
            assert_eq!(
                status(check_signature(
                    Some(&secret),
                    Some(HEADER),
                    BODY.as_bytes(),
                    now
                )),
                None,
                "now = {now}"
            );
        }
        let late = check_signature(
            Some(&secret),
            Some(HEADER),
            BODY.as_bytes(),
            at + 30 * 60 + 1,
        );
        assert_eq!(
            late.as_ref().err().map(|e| &*e.message),
            Some(MSG_EXPIRED_SIGNATURE)
        );
    }

    #[test]
    fn refusals_have_their_status_and_message() {
        let secret = Secret::new("wsec_test_secret");
        let now = 1739537297;
        let refused = |secret: Option<&Secret>, header: Option<&str>, body: &str| {
            check_signature(secret, header, body.as_bytes(), now)
                .err()
                .map(|e| (e.status.as_u16(), e.message.to_string()))
        };
        assert_eq!(
            refused(None, Some(HEADER), BODY),
            Some((503, MSG_NOT_CONFIGURED.into()))
        );
        assert_eq!(
            refused(Some(&secret), None, BODY),
            Some((401, MSG_MISSING_SIGNATURE.into()))
        );
        assert_eq!(
            refused(Some(&secret), Some("garbage"), BODY),
            Some((401, MSG_BAD_SIGNATURE.into()))
        );
        assert_eq!(
            refused(Some(&secret), Some(HEADER), "{}"),
            Some((401, MSG_BAD_SIGNATURE.into()))
        );
        assert_eq!(
            refused(Some(&Secret::new("other")), Some(HEADER), BODY),
            Some((401, MSG_BAD_SIGNATURE.into()))
        );
    }

    #[test]
    fn event_keys_name_type_and_conversation_else_the_body() {
        assert_eq!(
            event_key("post_call_transcription", Some("conv_1"), b"{}"),
            "post_call_transcription:conv_1"
        );
        let a = event_key("x", None, b"{\"a\":1}");
        assert!(a.starts_with("x:sha256:") && a.len() == "x:sha256:".len() + 64);
        assert_ne!(a, event_key("x", None, b"{\"a\":2}"));
    }
}
