//! The typed ElevenLabs client: base URL and key from config, `xi-api-key`,
//! timeouts, and retries with backoff for GETs only (408/429/5xx, timeouts and
//! refused connections, honouring `Retry-After`). POSTs are never retried: a
//! submit is not idempotent at ElevenLabs, and dialling twice costs money.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::types::{Agent, AgentPage, BatchCall, BatchPage, PhoneNumber, SubmitBatch};
use crate::config::Secret;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ElevenLabsError {
    /// ElevenLabs answered with an error status.
    #[error("ElevenLabs answered {status}: {message}")]
    Status {
        status: u16,
        /// A readable message from the `detail` body, whatever its shape.
        message: String,
        /// `detail.code` (or the legacy `detail.status`), when given.
        code: Option<String>,
        /// `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    #[error("ElevenLabs did not answer in time")]
    Timeout,
    #[error("ElevenLabs could not be reached: {0}")]
    Unreachable(String),
    /// The connection failed after the request may have been sent: ElevenLabs
    /// may have acted on it.
    #[error("the connection to ElevenLabs broke: {0}")]
    Interrupted(String),
    #[error("ElevenLabs answered something unreadable: {0}")]
    Decode(String),
}

impl ElevenLabsError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ElevenLabsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The outcome label used in metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ElevenLabsError::Status { status, .. } if *status == 429 => "rate_limited",
            ElevenLabsError::Status { status, .. } if *status >= 500 => "server_error",
            ElevenLabsError::Status { .. } => "client_error",
            ElevenLabsError::Timeout => "timeout",
            ElevenLabsError::Unreachable(_) | ElevenLabsError::Interrupted(_) => "unreachable",
            ElevenLabsError::Decode(_) => "decode_error",
        }
    }
}

/// Reads `{"detail": …}` in its three shapes (object, validation array, string).
pub fn parse_error_body(body: &str) -> (String, Option<String>) {
    let Ok(json) = serde_json::from_str::<Value>(body) else {
        let text = body.trim();
        return (
            if text.is_empty() {
                "sin detalle".into()
            } else {
                text.chars().take(300).collect()
            },
            None,
        );
    };
    match json.get("detail").unwrap_or(&json) {
        Value::String(s) => (s.clone(), None),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| {
                    let loc = item
                        .get("loc")
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .map(|p| p.to_string().trim_matches('"').to_owned())
                                .collect::<Vec<_>>()
                                .join(".")
                        })
                        .unwrap_or_default();
                    let msg = item.get("msg").and_then(Value::as_str).unwrap_or("invalid");
                    if loc.is_empty() {
                        msg.to_owned()
                    } else {
                        format!("{loc}: {msg}")
                    }
                })
                .collect();
            (parts.join("; "), Some("validation_error".into()))
        }
        Value::Object(map) => {
            let message = map
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| Value::Object(map.clone()).to_string());
            let code = map
                .get("code")
                .or_else(|| map.get("status"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            (message, code)
        }
        other => (other.to_string(), None),
    }
}

#[derive(Clone)]
pub struct ElevenLabs {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    get_retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for ElevenLabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabs")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ElevenLabs {
    pub fn new(base_url: &str, api_key: Secret, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("marcador/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ElevenLabs {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            get_retries: 2,
            backoff: Duration::from_millis(250),
        })
    }

    /// Fewer retries and shorter waits (tests).
    pub fn with_retry_policy(mut self, retries: u32, backoff: Duration) -> Self {
        self.get_retries = retries;
        self.backoff = backoff;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ElevenLabsError> {
        let retries = if method == Method::GET {
            self.get_retries
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let outcome = self.send_once(method.clone(), path, query, body).await;
            let retry_after = match &outcome {
                Err(ElevenLabsError::Status {
                    status,
                    retry_after,
                    ..
                }) if *status == 408 || *status == 429 || *status >= 500 => Some(*retry_after),
                Err(
                    ElevenLabsError::Timeout
                    | ElevenLabsError::Unreachable(_)
                    | ElevenLabsError::Interrupted(_),
                ) => Some(None),
                _ => None,
            };
            let label = match &outcome {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            metrics::counter!("elevenlabs_requests_total", "method" => method.to_string(), "outcome" => label)
                .increment(1);
            match retry_after {
                Some(wait) if attempt < retries => {
                    let backoff = self.backoff * 2u32.pow(attempt);
                    let wait = wait
                        .map(Duration::from_secs)
                        .unwrap_or(backoff)
                        .min(Duration::from_secs(10));
                    tracing::warn!(
                        path,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "retrying ElevenLabs GET"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return outcome,
            }
        }
    }

    async fn send_once<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ElevenLabsError> {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .header("xi-api-key", self.api_key.expose())
            .header("accept", "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = response.text().await.map_err(transport_error)?;
        if !status.is_success() {
            let (message, code) = parse_error_body(&text);
            return Err(ElevenLabsError::Status {
                status: status.as_u16(),
                message,
                code,
                retry_after,
            });
        }
        serde_json::from_str(&text).map_err(|e| ElevenLabsError::Decode(e.to_string()))
    }

    pub async fn list_agents(
        &self,
        search: Option<&str>,
        cursor: Option<&str>,
        page_size: Option<u32>,
    ) -> Result<AgentPage, ElevenLabsError> {
        let mut query = Vec::new();
        if let Some(s) = search {
            query.push(("search", s.to_owned()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        if let Some(p) = page_size {
            query.push(("page_size", p.to_string()));
        }
        self.send::<(), _>(Method::GET, "/v1/convai/agents", &query, None)
            .await
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<Agent, ElevenLabsError> {
        let path = format!("/v1/convai/agents/{}", encode_segment(agent_id));
        self.send::<(), _>(Method::GET, &path, &[], None).await
    }

    pub async fn list_phone_numbers(&self) -> Result<Vec<PhoneNumber>, ElevenLabsError> {
        self.send::<(), _>(Method::GET, "/v1/convai/phone-numbers", &[], None)
            .await
    }

    /// Never retried (see the module doc).
    pub async fn submit_batch<R: Serialize + Sync>(
        &self,
        batch: &SubmitBatch<R>,
    ) -> Result<BatchCall, ElevenLabsError> {
        self.send(
            Method::POST,
            "/v1/convai/batch-calling/submit",
            &[],
            Some(batch),
        )
        .await
    }

    pub async fn get_batch(&self, batch_id: &str) -> Result<BatchCall, ElevenLabsError> {
        let path = format!("/v1/convai/batch-calling/{}", encode_segment(batch_id));
        self.send::<(), _>(Method::GET, &path, &[], None).await
    }

    pub async fn list_batches(
        &self,
        limit: u32,
        last_doc: Option<&str>,
    ) -> Result<BatchPage, ElevenLabsError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(doc) = last_doc {
            query.push(("last_doc", doc.to_owned()));
        }
        self.send::<(), _>(
            Method::GET,
            "/v1/convai/batch-calling/workspace",
            &query,
            None,
        )
        .await
    }

    pub async fn cancel_batch(&self, batch_id: &str) -> Result<BatchCall, ElevenLabsError> {
        let path = format!(
            "/v1/convai/batch-calling/{}/cancel",
            encode_segment(batch_id)
        );
        self.send::<(), _>(Method::POST, &path, &[], None).await
    }

    pub async fn retry_batch(&self, batch_id: &str) -> Result<BatchCall, ElevenLabsError> {
        let path = format!(
            "/v1/convai/batch-calling/{}/retry",
            encode_segment(batch_id)
        );
        self.send::<(), _>(Method::POST, &path, &[], None).await
    }

    pub async fn get_conversation(&self, conversation_id: &str) -> Result<Value, ElevenLabsError> {
        let path = format!(
            "/v1/convai/conversations/{}",
            encode_segment(conversation_id)
        );
        self.send::<(), _>(Method::GET, &path, &[], None).await
    }
}

fn transport_error(err: reqwest::Error) -> ElevenLabsError {
    if err.is_timeout() {
        ElevenLabsError::Timeout
    } else if err.is_connect() {
        ElevenLabsError::Unreachable(err.without_url().to_string())
    } else if err.is_request() {
        ElevenLabsError::Interrupted(err.without_url().to_string())
    } else {
        ElevenLabsError::Decode(err.without_url().to_string())
    }
}

/// Ids are opaque: keep them inside one path segment.
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_all_three_shapes() {
        let current = r#"{"detail":{"type":"authentication_error","code":"unauthorized","message":"Invalid API key","status":"invalid_api_key"}}"#;
        assert_eq!(
            parse_error_body(current),
            ("Invalid API key".into(), Some("unauthorized".into()))
        );
        let legacy = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
        assert_eq!(
            parse_error_body(legacy),
            ("Invalid API key".into(), Some("invalid_api_key".into()))
        );
        let validation = r#"{"detail":[{"loc":["body","recipients",0,"phone_number"],"msg":"Field required","type":"missing"}]}"#;
        assert_eq!(
            parse_error_body(validation),
            (
                "body.recipients.0.phone_number: Field required".into(),
                Some("validation_error".into())
            )
        );
        assert_eq!(
            parse_error_body(r#"{"detail":"Not enough credits"}"#).0,
            "Not enough credits"
        );
        assert_eq!(
            parse_error_body("<html>bad gateway</html>").0,
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn ids_stay_in_one_segment() {
        assert_eq!(encode_segment("agent_abc"), "agent_abc");
        assert_eq!(encode_segment("../x?y"), "..%2Fx%3Fy");
    }
}
