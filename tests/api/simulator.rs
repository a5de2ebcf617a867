//! API.md §11: the simulator answers with ElevenLabs' own shapes (checked
//! against `openapi.json`), walks the real state machines, and signs webhooks.

use std::time::Duration;

use marcador::config::Secret;
use marcador::elevenlabs::simulator::{
    SIM_AGENT_COBRANZA, SIM_PHONE_ASSIGNED, Simulator, SimulatorConfig,
};
use marcador::elevenlabs::types::SubmitBatch;
use marcador::elevenlabs::{ElevenLabs, ElevenLabsError};
use serde_json::{Value, json};

fn validator(schema: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/elevenlabs_openapi.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // openapi.json predates the `dispatched` recipient status (added 2026-01, REFERENCE.md §1.3).
    if let Some(list) = doc
        .pointer_mut("/components/schemas/BatchCallRecipientStatus/enum")
        .and_then(Value::as_array_mut)
    {
        list.push(json!("dispatched"));
    }
    doc["$ref"] = json!(format!("#/components/schemas/{schema}"));
    jsonschema::validator_for(&doc).expect("schema compiles")
}

#[track_caller]
fn assert_schema(schema: &str, value: &Value) {
    let v = validator(schema);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{value}");
}

async fn start(step_ms: u64) -> (Simulator, String) {
    let sim = Simulator::new(SimulatorConfig {
        capture_requests: true,
        api_key: Some("test-key".into()),
        step: Duration::from_millis(step_ms),
        webhook: None,
    });
    let addr = sim
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (sim, format!("http://{addr}"))
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("xi-api-key", "test-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn batch(recipients: &[&str]) -> SubmitBatch {
    serde_json::from_value(json!({
        "call_name": "Prueba", "agent_id": SIM_AGENT_COBRANZA, "agent_phone_number_id": SIM_PHONE_ASSIGNED,
        "scheduled_time_unix": null,
        "recipients": recipients.iter().enumerate().map(|(i, p)| json!({"id": i.to_string(), "phone_number": p,
            "conversation_initiation_client_data": {"dynamic_variables": {"name": "Ana", "monto": 10}}})).collect::<Vec<_>>()
    }))
    .unwrap()
}

#[tokio::test]
async fn every_answer_fits_elevenlabs_schemas() {
    let (_sim, base) = start(30).await;
    assert_schema(
        "GetAgentsPageResponseModel",
        &get(&base, "/v1/convai/agents").await,
    );
    assert_schema(
        "GetAgentResponseModel",
        &get(&base, &format!("/v1/convai/agents/{SIM_AGENT_COBRANZA}")).await,
    );
    let numbers = get(&base, "/v1/convai/phone-numbers").await;
    for number in numbers.as_array().unwrap() {
        assert_schema("GetPhoneNumberTwilioResponseModel", number);
    }
    let client = ElevenLabs::new(&base, Secret::new("test-key"), Duration::from_secs(5)).unwrap();
    let created = client
        .submit_batch(&batch(&["+573138539150", "+573138539158", "+573138539159"]))
        .await
        .unwrap();
    assert_schema(
        "BatchCallResponse",
        &serde_json::to_value(&created).unwrap(),
    );
    // Walk the whole state machine, checking every answer on the way.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let detail = get(&base, &format!("/v1/convai/batch-calling/{}", created.id)).await;
        assert_schema("BatchCallDetailedResponse", &detail);
        seen.insert(detail["status"].as_str().unwrap().to_owned());
        for r in detail["recipients"].as_array().unwrap() {
            seen.insert(format!("r:{}", r["status"].as_str().unwrap()));
        }
        if detail["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for status in [
        "pending",
        "in_progress",
        "completed",
        "r:pending",
        "r:dispatched",
        "r:initiated",
        "r:in_progress",
        "r:completed",
        "r:voicemail",
        "r:failed",
    ] {
        assert!(seen.contains(status), "never saw {status}: {seen:?}");
    }
    assert_schema(
        "WorkspaceBatchCallsResponse",
        &get(&base, "/v1/convai/batch-calling/workspace").await,
    );
    let detail = client.get_batch(&created.id).await.unwrap();
    let recipients = detail.recipients.unwrap();
    let outcomes: Vec<&str> = recipients.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        outcomes,
        ["completed", "voicemail", "failed"],
        "by last digit"
    );
    for r in &recipients {
        let conversation = client
            .get_conversation(r.conversation_id.as_deref().unwrap())
            .await
            .unwrap();
        assert_schema("GetConversationResponseModel", &conversation);
        assert_eq!(
            conversation["metadata"]["batch_call"]["batch_call_id"],
            created.id.as_str()
        );
    }
    let done = client
        .get_conversation(recipients[0].conversation_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(done["status"], "done");
    assert_eq!(done["analysis"]["call_successful"], "success");
    let failed = client
        .get_conversation(recipients[2].conversation_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (failed["status"].as_str(), failed["analysis"].is_null()),
        (Some("failed"), true)
    );
}

#[tokio::test]
async fn cancel_and_retry_follow_the_state_machine() {
    let (_sim, base) = start(40).await;
    let client = ElevenLabs::new(&base, Secret::new("test-key"), Duration::from_secs(5)).unwrap();
    let slow = client
        .submit_batch(&batch(&["+573138539150", "+573138539151"]))
        .await
        .unwrap();
    let cancelled = client.cancel_batch(&slow.id).await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert_schema(
        "BatchCallResponse",
        &serde_json::to_value(&cancelled).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let detail = client.get_batch(&slow.id).await.unwrap();
    assert!(
        detail
            .recipients
            .unwrap()
            .iter()
            .all(|r| r.status == "cancelled")
    );

    let failing = client
        .submit_batch(&batch(&["+573138539159"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.get_batch(&failing.id).await.unwrap().status,
        "completed"
    );
    let retried = client.retry_batch(&failing.id).await.unwrap();
    assert_eq!(retried.extra["retry_count"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = client.get_batch(&failing.id).await.unwrap();
    assert_eq!(
        after.recipients.unwrap()[0].status,
        "completed",
        "a retried call completes"
    );
}

#[tokio::test]
async fn keys_and_bodies_are_checked_like_elevenlabs() {
    let (_sim, base) = start(1000).await;
    let http = reqwest::Client::new();
    let missing = http
        .get(format!("{base}/v1/convai/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["detail"]["status"], "needs_authorization");
    let wrong = ElevenLabs::new(&base, Secret::new("other"), Duration::from_secs(5)).unwrap();
    let err = wrong.list_agents(None, None, None).await.unwrap_err();
    assert!(
        matches!(&err, ElevenLabsError::Status { status: 401, code: Some(c), .. } if c == "unauthorized" || c == "invalid_api_key"),
        "{err:?}"
    );

    let invalid = http
        .post(format!("{base}/v1/convai/batch-calling/submit"))
        .header("xi-api-key", "test-key")
        .json(&json!({"call_name": "x", "agent_id": SIM_AGENT_COBRANZA, "recipients": [{"phone_number": "12"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    let body: Value = invalid.json().await.unwrap();
    assert_schema("HTTPValidationError", &body);
    let locs: Vec<Value> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"].clone())
        .collect();
    assert!(locs.contains(&json!(["body", "agent_phone_number_id"])));
    assert!(locs.contains(&json!(["body", "scheduled_time_unix"])));
    assert!(locs.contains(&json!(["body", "recipients", 0, "phone_number"])));
    let client = ElevenLabs::new(&base, Secret::new("test-key"), Duration::from_secs(5)).unwrap();
    let unknown = client.get_agent("agent_nope").await.unwrap_err();
    assert_eq!(unknown.status(), Some(404));
}

#[tokio::test]
async fn finished_calls_are_posted_as_signed_webhooks() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Bytes)>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let sig = headers
                    .get("elevenlabs-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((sig, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sim = Simulator::new(SimulatorConfig {
        capture_requests: true,
        api_key: None,
        step: Duration::from_millis(20),
        webhook: Some((hook, Secret::new("wsec_test"))),
    });
    let base = format!(
        "http://{}",
        sim.clone()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    );
    let client = ElevenLabs::new(&base, Secret::new("any"), Duration::from_secs(5)).unwrap();
    client
        .submit_batch(&batch(&["+573138539150", "+573138539159"]))
        .await
        .unwrap();
    for _ in 0..100 {
        if received.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    let now = chrono::Utc::now().timestamp();
    let mut types = Vec::new();
    for (signature, body) in &events {
        marcador::elevenlabs::webhook::verify("wsec_test", Some(signature), body, now)
            .expect("signed like ElevenLabs");
        let event: Value = serde_json::from_slice(body).unwrap();
        types.push(event["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(
        types,
        ["call_initiation_failure", "post_call_transcription"]
    );
}
