//! What a finished (or running) call tells us, read from ElevenLabs' JSON.
//!
//! Two sources share one shape: a GET-conversation object (REFERENCE.md §4),
//! which is also the `data` of a `post_call_transcription` webhook (§5.2) and
//! what the background sync fetches, and the `data` of a
//! `call_initiation_failure` webhook. The parser is pure and tolerant: a
//! missing, null or oddly typed field becomes `None`, never an error or a
//! panic, because ElevenLabs adds fields over time and documents few as
//! required.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Recipient statuses after which nothing more happens to a call (API.md §6).
pub const FINAL_STATUSES: [&str; 4] = ["completed", "failed", "cancelled", "voicemail"];

/// Whether `status` is one of [`FINAL_STATUSES`].
pub fn is_final_status(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// The facts about one call that we keep on its call record. `None` means
/// "not said": storing an outcome never replaces a known value with `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallOutcome {
    pub conversation_id: Option<String>,
    /// ElevenLabs' batch id (`btcal_…`), from `metadata.batch_call`.
    pub batch_call_id: Option<String>,
    /// ElevenLabs' recipient id from `metadata.batch_call`: ours (the client id
    /// we sent as the recipient `id`) when ElevenLabs kept it, else its own.
    pub recipient_id: Option<String>,
    /// Our client id, as we sent it in the dynamic variable `client_id`.
    pub client_id: Option<String>,
    /// The number that was called (`metadata.phone_call.external_number`, or
    /// the failure's `to_number` / `To`). Personal data: never log it.
    pub phone_number: Option<String>,
    /// The recipient status to record (`completed`, `failed`, `voicemail`,
    /// `in_progress`, `initiated`), derived from the conversation.
    pub status: Option<String>,
    pub duration_secs: Option<i64>,
    /// `success`, `failure` or `unknown`: whether the agent reached its goal.
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub termination_reason: Option<String>,
    /// Data-collection id → collected value.
    pub data_collection: Option<Value>,
    /// Evaluation criterion id → `{result, rationale}`.
    pub evaluation: Option<Value>,
    /// The transcript turns as ElevenLabs sent them (only when not empty).
    pub transcript: Option<Value>,
    pub failure_reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl CallOutcome {
    /// Reads a GET-conversation object (or a `post_call_transcription`'s `data`).
    ///
    /// Status: conversation `failed` → `failed`; `done` → `voicemail` when the
    /// termination reason says so, else `completed`; `in-progress` and
    /// `processing` → `in_progress`; `initiated` → `initiated`; anything else →
    /// `None`. Duration and end time are only read once the call is over
    /// (a running call reports a duration of 0).
    pub fn from_conversation(conversation: &Value) -> CallOutcome {
        let metadata = conversation.get("metadata");
        let analysis = conversation.get("analysis");
        let meta = |key: &str| metadata.and_then(|m| m.get(key));
        let termination_reason = text(meta("termination_reason"));
        let error = meta("error");
        let conversation_status = text(conversation.get("status"));
        let status = match conversation_status.as_deref() {
            Some("failed") => Some("failed"),
            Some("done") if is_voicemail(termination_reason.as_deref()) => Some("voicemail"),
            Some("done") => Some("completed"),
            Some("in-progress" | "in_progress" | "processing") => Some("in_progress"),
            Some("initiated") => Some("initiated"),
            _ => None,
        };
        let over = matches!(status, Some("failed" | "completed" | "voicemail"));
        let duration_secs = if over {
            integer(meta("call_duration_secs")).filter(|d| *d >= 0)
        } else {
            None
        };
        let started_at = integer(meta("start_time_unix_secs")).and_then(unix_time);
        let ended_at = match (over, integer(meta("start_time_unix_secs")), duration_secs) {
            (true, Some(start), Some(duration)) => start.checked_add(duration).and_then(unix_time),
            _ => None,
        };
        let failure_reason = error_reason(error).or_else(|| {
            (status == Some("failed"))
                .then(|| termination_reason.clone())
                .flatten()
        });
        let batch_call = meta("batch_call");
        CallOutcome {
            conversation_id: text(conversation.get("conversation_id")),
            batch_call_id: text(batch_call.and_then(|b| b.get("batch_call_id"))),
            recipient_id: text(batch_call.and_then(|b| b.get("batch_call_recipient_id"))),
            client_id: client_id(conversation),
            phone_number: text(meta("phone_call").and_then(|p| p.get("external_number"))),
            status: status.map(str::to_owned),
            duration_secs,
            call_successful: text(analysis.and_then(|a| a.get("call_successful"))),
            transcript_summary: text(analysis.and_then(|a| a.get("transcript_summary"))),
            termination_reason,
            data_collection: analysis.and_then(|a| {
                by_id(
                    a.get("data_collection_results"),
                    a.get("data_collection_results_list"),
                    "data_collection_id",
                    |item| item.get("value").cloned().unwrap_or(Value::Null),
                )
            }),
            evaluation: analysis.and_then(|a| {
                by_id(
                    a.get("evaluation_criteria_results"),
                    a.get("evaluation_criteria_results_list"),
                    "criteria_id",
                    |item| {
                        let mut entry = Map::new();
                        entry.insert(
                            "result".into(),
                            item.get("result").cloned().unwrap_or(Value::Null),
                        );
                        entry.insert(
                            "rationale".into(),
                            item.get("rationale").cloned().unwrap_or(Value::Null),
                        );
                        Value::Object(entry)
                    },
                )
            }),
            transcript: conversation
                .get("transcript")
                .filter(|t| t.as_array().is_some_and(|turns| !turns.is_empty()))
                .cloned(),
            failure_reason,
            started_at,
            ended_at,
        }
    }

    /// Reads a `call_initiation_failure`'s `data`: the call is `failed`, and the
    /// reason is ElevenLabs' `failure_reason` (`busy`, `no-answer`, `unknown`)
    /// followed by the SIP error text or Twilio's call status and SIP code,
    /// when present: `"busy: INVITE failed: sip status: 486: Busy here (SIP 486)"`.
    pub fn from_initiation_failure(data: &Value) -> CallOutcome {
        let metadata = data.get("metadata");
        let body = metadata.and_then(|m| m.get("body"));
        let field = |key: &str| body.and_then(|b| b.get(key));
        let detail = text(field("error_reason"))
            .or_else(|| {
                let status = text(field("CallStatus"));
                let sip = text(field("SipResponseCode"))
                    .or_else(|| integer(field("SipResponseCode")).map(|c| c.to_string()));
                let error = text(field("ErrorMessage"));
                let parts: Vec<String> = [
                    status.map(|s| format!("Twilio {s}")),
                    sip.map(|c| format!("SIP {c}")),
                    error,
                ]
                .into_iter()
                .flatten()
                .collect();
                (!parts.is_empty()).then(|| parts.join(", "))
            })
            .or_else(|| {
                integer(field("sip_status_code")).map(|code| match text(field("sip_status")) {
                    Some(status) => format!("SIP {code}: {status}"),
                    None => format!("SIP {code}"),
                })
            });
        let reason = text(data.get("failure_reason"));
        let failure_reason = match (reason, detail) {
            (Some(reason), Some(detail)) => Some(format!("{reason}: {detail}")),
            (reason, detail) => reason.or(detail),
        };
        CallOutcome {
            conversation_id: text(data.get("conversation_id")),
            client_id: client_id(data),
            phone_number: text(field("to_number")).or_else(|| text(field("To"))),
            status: Some("failed".into()),
            failure_reason: failure_reason.or_else(|| Some("unknown".into())),
            ..CallOutcome::default()
        }
    }

    /// A non-final status must not replace a final one; see the store.
    pub fn is_final(&self) -> bool {
        self.status.as_deref().is_some_and(is_final_status)
    }
}

/// ElevenLabs ends voicemail calls with a reason such as `voicemail_detected`.
fn is_voicemail(termination_reason: Option<&str>) -> bool {
    termination_reason.is_some_and(|r| r.to_ascii_lowercase().contains("voicemail"))
}

/// `metadata.error` as text: its `reason`, else its code.
fn error_reason(error: Option<&Value>) -> Option<String> {
    let error = error?;
    text(error.get("reason"))
        .or_else(|| text(Some(error)))
        .or_else(|| integer(error.get("code")).map(|code| format!("error {code}")))
}

/// The `client_id` dynamic variable we send with every recipient.
fn client_id(object: &Value) -> Option<String> {
    let value = object.pointer("/conversation_initiation_client_data/dynamic_variables/client_id");
    text(value).or_else(|| integer(value).map(|id| id.to_string()))
}

/// A non-empty string (trimmed), else `None`.
fn text(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An integer given as a JSON integer, a whole float, or a numeric string.
fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f.round() as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Unix seconds → a time, for plausible positive values only.
fn unix_time(secs: i64) -> Option<DateTime<Utc>> {
    (secs > 0)
        .then(|| DateTime::from_timestamp(secs, 0))
        .flatten()
}

/// A map `id → f(item)` from ElevenLabs' map form (`{id: item}`) or, failing
/// that, its 2026 list form (`[item]`, each naming its id in `id_key`).
fn by_id(
    map: Option<&Value>,
    list: Option<&Value>,
    id_key: &str,
    f: impl Fn(&Value) -> Value,
) -> Option<Value> {
    if let Some(map) = map.and_then(Value::as_object) {
        let out: Map<String, Value> = map.iter().map(|(id, item)| (id.clone(), f(item))).collect();
        return Some(Value::Object(out));
    }
    let list = list.and_then(Value::as_array)?;
    let out: Map<String, Value> = list
        .iter()
        .filter_map(|item| text(item.get(id_key)).map(|id| (id, f(item))))
        .collect();
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A completed call as the simulator (and ElevenLabs' GET) shapes it.
    fn completed() -> Value {
        json!({
            "agent_id": "agent_sim0000000000000000000000001",
            "conversation_id": "conv_abc",
            "status": "done",
            "transcript": [
                {"role": "agent", "message": "Hola Ana", "time_in_call_secs": 0},
                {"role": "user", "message": "Sí, pago el viernes.", "time_in_call_secs": 6}
            ],
            "metadata": {
                "start_time_unix_secs": 1_760_000_000,
                "call_duration_secs": 44,
                "termination_reason": "Client disconnected: 1000",
                "batch_call": {"batch_call_id": "btcal_1", "batch_call_recipient_id": "17"},
                "phone_call": {"type": "twilio", "direction": "outbound", "external_number": "+573138539150"}
            },
            "analysis": {
                "call_successful": "success",
                "transcript_summary": "Ana se compromete a pagar el viernes.",
                "evaluation_criteria_results": {"compromiso_pago": {"criteria_id": "compromiso_pago",
                    "result": "success", "rationale": "Lo dijo.", "score": 1}},
                "data_collection_results": {"fecha_pago": {"data_collection_id": "fecha_pago",
                    "value": "viernes", "rationale": "Mencionada."}}
            },
            "conversation_initiation_client_data": {"dynamic_variables": {"client_id": "17", "name": "Ana"}},
            "has_audio": true
        })
    }

    #[test]
    fn a_completed_conversation_gives_every_field() {
        let o = CallOutcome::from_conversation(&completed());
        assert_eq!(o.conversation_id.as_deref(), Some("conv_abc"));
        assert_eq!(o.batch_call_id.as_deref(), Some("btcal_1"));
        assert_eq!(o.recipient_id.as_deref(), Some("17"));
        assert_eq!(o.client_id.as_deref(), Some("17"));
        assert_eq!(o.phone_number.as_deref(), Some("+573138539150"));
        assert_eq!(o.status.as_deref(), Some("completed"));
        assert_eq!(o.duration_secs, Some(44));
        assert_eq!(o.call_successful.as_deref(), Some("success"));
        assert_eq!(
            o.transcript_summary.as_deref(),
            Some("Ana se compromete a pagar el viernes.")
        );
        assert_eq!(
            o.termination_reason.as_deref(),
            Some("Client disconnected: 1000")
        );
        assert_eq!(o.data_collection, Some(json!({"fecha_pago": "viernes"})));
        assert_eq!(
            o.evaluation,
            Some(json!({"compromiso_pago": {"result": "success", "rationale": "Lo dijo."}}))
        );
        assert_eq!(
            o.transcript
                .as_ref()
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(o.failure_reason, None);
        assert_eq!(o.started_at.map(|t| t.timestamp()), Some(1_760_000_000));
        assert_eq!(o.ended_at.map(|t| t.timestamp()), Some(1_760_000_044));
        assert!(o.is_final());
    }

    #[test]
    fn the_recorded_failed_call_with_null_analysis() {
        // REFERENCE.md §4, as recorded from the live API.
        let o = CallOutcome::from_conversation(&json!({
            "agent_id": "a", "conversation_id": "conv_f", "status": "failed", "transcript": [],
            "metadata": {"start_time_unix_secs": 1_760_000_000, "call_duration_secs": 0,
                         "error": {"code": 404, "reason": "INVITE failed: sip status: 404: Not Found"}},
            "analysis": null
        }));
        assert_eq!(o.status.as_deref(), Some("failed"));
        assert_eq!(o.duration_secs, Some(0));
        assert_eq!(
            o.failure_reason.as_deref(),
            Some("INVITE failed: sip status: 404: Not Found")
        );
        assert_eq!(o.call_successful, None);
        assert_eq!(o.transcript_summary, None);
        assert_eq!(o.data_collection, None);
        assert_eq!(o.evaluation, None);
        assert_eq!(o.transcript, None);
    }

    #[test]
    fn voicemail_is_read_from_the_termination_reason() {
        let mut conversation = completed();
        conversation["metadata"]["termination_reason"] = json!("voicemail_detected");
        conversation["analysis"] = json!({"call_successful": "failure", "transcript_summary": "Buzón de voz.",
            "evaluation_criteria_results": {}, "data_collection_results": {}});
        let o = CallOutcome::from_conversation(&conversation);
        assert_eq!(o.status.as_deref(), Some("voicemail"));
        assert_eq!(o.data_collection, Some(json!({})));
        assert_eq!(o.evaluation, Some(json!({})));
    }

    #[test]
    fn a_running_call_has_no_duration_yet() {
        let o = CallOutcome::from_conversation(&json!({
            "conversation_id": "conv_r", "status": "in-progress", "transcript": [],
            "metadata": {"start_time_unix_secs": 1_760_000_000, "call_duration_secs": 0}, "analysis": null
        }));
        assert_eq!(o.status.as_deref(), Some("in_progress"));
        assert_eq!(o.duration_secs, None);
        assert_eq!(o.ended_at, None);
        assert!(o.started_at.is_some());
        assert!(!o.is_final());
    }

    #[test]
    fn list_forms_of_analysis_results_are_read_too() {
        let o = CallOutcome::from_conversation(&json!({
            "status": "done",
            "analysis": {
                "call_successful": "unknown", "transcript_summary": "",
                "data_collection_results_list": [{"data_collection_id": "monto", "value": 1500, "rationale": "r"}],
                "evaluation_criteria_results_list": [{"criteria_id": "cortesia", "result": "success", "rationale": "r"}]
            }
        }));
        assert_eq!(o.data_collection, Some(json!({"monto": 1500})));
        assert_eq!(
            o.evaluation,
            Some(json!({"cortesia": {"result": "success", "rationale": "r"}}))
        );
        assert_eq!(o.transcript_summary, None, "empty text is not a summary");
    }

    #[test]
    fn odd_or_missing_fields_give_none_and_never_panic() {
        for odd in [
            json!(null),
            json!([]),
            json!("x"),
            json!(42),
            json!({}),
            json!({"status": 5, "metadata": "x", "analysis": [1], "transcript": {}}),
            json!({"metadata": {"call_duration_secs": "abc", "start_time_unix_secs": -5,
                                "batch_call": 7, "phone_call": null, "error": 3},
                   "analysis": {"call_successful": 1, "data_collection_results": "x",
                                "evaluation_criteria_results": null},
                   "conversation_initiation_client_data": {"dynamic_variables": []}}),
            json!({"metadata": {"start_time_unix_secs": 1.0e300, "call_duration_secs": 1.0e300}, "status": "done"}),
        ] {
            let o = CallOutcome::from_conversation(&odd);
            assert_eq!(o.conversation_id, None, "{odd}");
            assert_eq!(o.call_successful, None, "{odd}");
            assert_eq!(o.started_at, None, "{odd}");
            let f = CallOutcome::from_initiation_failure(&odd);
            assert_eq!(f.status.as_deref(), Some("failed"));
            assert!(f.failure_reason.is_some());
        }
        let numeric = CallOutcome::from_conversation(&json!({"status": "done",
            "metadata": {"call_duration_secs": "61", "start_time_unix_secs": 1_760_000_000.0},
            "conversation_initiation_client_data": {"dynamic_variables": {"client_id": 9}}}));
        assert_eq!(numeric.duration_secs, Some(61));
        assert_eq!(numeric.client_id.as_deref(), Some("9"));
        assert!(numeric.started_at.is_some());
    }

    #[test]
    fn a_sip_initiation_failure_keeps_the_sip_error() {
        // REFERENCE.md §5.2, the documented SIP sample.
        let o = CallOutcome::from_initiation_failure(&json!({
            "agent_id": "xyz", "conversation_id": "abc", "failure_reason": "busy",
            "metadata": {"type": "sip", "body": {"from_number": "+441111111111", "to_number": "+11111111111",
                "sip_status_code": 486, "error_reason": "INVITE failed: sip status: 486: Busy here (SIP 486)",
                "call_sid": "d8e7f6a5", "sip_status": "Busy here", "twirp_code": "unavailable"}}
        }));
        assert_eq!(o.conversation_id.as_deref(), Some("abc"));
        assert_eq!(o.status.as_deref(), Some("failed"));
        assert_eq!(o.phone_number.as_deref(), Some("+11111111111"));
        assert_eq!(
            o.failure_reason.as_deref(),
            Some("busy: INVITE failed: sip status: 486: Busy here (SIP 486)")
        );
        assert_eq!(o.duration_secs, None);
        assert_eq!(o.call_successful, None);
    }

    #[test]
    fn a_twilio_initiation_failure_names_the_call_status_and_sip_code() {
        let o = CallOutcome::from_initiation_failure(&json!({
            "conversation_id": "c", "failure_reason": "no-answer",
            "metadata": {"type": "twilio", "body": {"CallSid": "CA1", "CallStatus": "no-answer",
                "To": "+573001112233", "From": "+576015550100", "SipResponseCode": "487"}},
            "conversation_initiation_client_data": {"dynamic_variables": {"client_id": "5"}}
        }));
        assert_eq!(
            o.failure_reason.as_deref(),
            Some("no-answer: Twilio no-answer, SIP 487")
        );
        assert_eq!(o.phone_number.as_deref(), Some("+573001112233"));
        assert_eq!(o.client_id.as_deref(), Some("5"));
    }

    #[test]
    fn a_failure_without_details_keeps_what_it_has() {
        let only_sip = CallOutcome::from_initiation_failure(
            &json!({"metadata": {"type": "sip", "body": {"sip_status_code": 480}}}),
        );
        assert_eq!(only_sip.failure_reason.as_deref(), Some("SIP 480"));
        let only_reason = CallOutcome::from_initiation_failure(&json!({"failure_reason": "busy"}));
        assert_eq!(only_reason.failure_reason.as_deref(), Some("busy"));
    }
}
