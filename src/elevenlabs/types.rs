//! ElevenLabs' wire types (`shared/elevenlabs/REFERENCE.md`). Decoding is
//! tolerant: unknown fields are kept in `extra` (and so survive a round trip),
//! enums are plain strings so unknown values pass through.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/convai/batch-calling/submit`. The recipients' type is open so
/// that a launch can write each recipient's variables straight from its
/// client row (see `http::calls::LaunchRecipient`) instead of first building
/// a map per recipient; it serialises exactly as [`OutboundRecipient`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitBatch<R = OutboundRecipient> {
    pub call_name: String,
    pub agent_id: String,
    pub agent_phone_number_id: String,
    /// Sent as an explicit `null` for "now" (older API versions require the key).
    pub scheduled_time_unix: Option<i64>,
    pub recipients: Vec<R>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundRecipient {
    #[serde(default)]
    pub id: Option<String>,
    pub phone_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_initiation_client_data: Option<ClientData>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClientData {
    #[serde(default)]
    pub dynamic_variables: Map<String, Value>,
}

/// `BatchCallResponse` / `BatchCallDetailedResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCall {
    pub id: String,
    pub name: String,
    pub agent_id: String,
    /// `pending | in_progress | completed | failed | cancelled` (others kept as given).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_unix: Option<i64>,
    #[serde(default)]
    pub scheduled_time_unix: Option<i64>,
    #[serde(default)]
    pub total_calls_dispatched: i64,
    #[serde(default)]
    pub total_calls_scheduled: i64,
    #[serde(default)]
    pub total_calls_finished: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_at_unix: Option<i64>,
    /// Only in the detailed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<BatchRecipient>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BatchCall {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// `OutboundCallRecipientResponseModel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecipient {
    pub id: String,
    #[serde(default)]
    pub phone_number: Option<String>,
    /// `pending | dispatched | initiated | in_progress | completed | failed | cancelled | voicemail`.
    pub status: String,
    #[serde(default)]
    pub created_at_unix: Option<i64>,
    #[serde(default)]
    pub updated_at_unix: Option<i64>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `WorkspaceBatchCallsResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchPage {
    pub batch_calls: Vec<BatchCall>,
    #[serde(default)]
    pub next_doc: Option<String>,
    #[serde(default)]
    pub has_more: bool,
}

/// `AgentSummaryResponseModel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSummary {
    pub agent_id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at_unix_secs: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GetAgentsPageResponseModel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentPage {
    pub agents: Vec<AgentSummary>,
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub has_more: bool,
}

/// `GetAgentResponseModel`: the configuration is kept as JSON with a few accessors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: String,
    pub name: String,
    #[serde(default)]
    pub conversation_config: Value,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Agent {
    fn text(&self, pointer: &str) -> Option<&str> {
        self.conversation_config
            .pointer(pointer)
            .and_then(Value::as_str)
    }

    pub fn first_message(&self) -> Option<&str> {
        self.text("/agent/first_message")
    }

    pub fn prompt(&self) -> Option<&str> {
        self.text("/agent/prompt/prompt")
    }

    pub fn language(&self) -> Option<&str> {
        self.text("/agent/language")
    }

    pub fn voice_id(&self) -> Option<&str> {
        self.text("/tts/voice_id")
    }

    pub fn created_at_unix(&self) -> Option<i64> {
        self.metadata
            .get("created_at_unix_secs")
            .and_then(Value::as_i64)
    }

    pub fn updated_at_unix(&self) -> Option<i64> {
        self.metadata
            .get("updated_at_unix_secs")
            .and_then(Value::as_i64)
    }

    /// The `{{names}}` its first message and prompt use, without `system__*`, sorted.
    pub fn dynamic_variables(&self) -> Vec<String> {
        let mut names: Vec<String> = [self.first_message(), self.prompt()]
            .into_iter()
            .flatten()
            .flat_map(template_variables)
            .filter(|n| !n.starts_with("system__"))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The names inside `{{ … }}` in a template (spaces around the name allowed).
pub fn template_variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            names.push(name.to_owned());
        }
        rest = &after[end + 2..];
    }
    names
}

/// A phone number as `GET /v1/convai/phone-numbers` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhoneNumber {
    pub phone_number_id: String,
    pub phone_number: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub assigned_agent: Option<AssignedAgent>,
    #[serde(default)]
    pub supports_outbound: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignedAgent {
    pub agent_id: String,
    #[serde(default)]
    pub agent_name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_variables_are_found_and_system_ones_dropped() {
        assert_eq!(
            template_variables(
                "Hola {{name}}, debe {{ monto }} ({{system__time}}) {{name}} {{ }} {{bad name}}"
            ),
            ["name", "monto", "system__time", "name"]
        );
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "agent_id": "a", "name": "n",
            "conversation_config": {"agent": {"first_message": "Hola {{name}}", "prompt": {"prompt": "Cobra {{monto}} {{system__time}} a {{name}}"}}}
        }))
        .unwrap();
        assert_eq!(agent.dynamic_variables(), ["monto", "name"]);
    }

    #[test]
    fn unknown_fields_and_statuses_survive_a_round_trip() {
        let raw = serde_json::json!({"id": "btcal_1", "name": "n", "agent_id": "a", "status": "paused_by_magic",
                                     "retry_count": 2, "telephony_call_config": {"x": 1}});
        let batch: BatchCall = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(batch.status, "paused_by_magic");
        let back = serde_json::to_value(&batch).unwrap();
        assert_eq!(back["retry_count"], 2);
        assert_eq!(back["telephony_call_config"], raw["telephony_call_config"]);
    }
}
