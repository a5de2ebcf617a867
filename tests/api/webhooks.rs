//! API.md §7: the ElevenLabs webhook, signed with HMAC, idempotent, filling
//! the call records that a real launch created.

use std::time::Duration;

use marcador::config::Secret;
use marcador::elevenlabs::outcome::CallOutcome;
use marcador::elevenlabs::simulator::SIM_AGENT_COBRANZA;
use marcador::elevenlabs::webhook::sign;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::groups::{b64, group_id};
use crate::helpers::{Backend, Reply, TestApp, TestDb, both_backends, spawn_app, spawn_app_with};

both_backends!(
    a_signed_transcription_fills_the_call_record_and_completes_the_client,
    a_foreign_recipient_id_is_matched_by_batch_and_number,
    the_alias_path_needs_no_token_either,
    a_bad_signature_is_refused_and_nothing_is_written,
    a_missing_signature_is_refused,
    a_signature_older_than_thirty_minutes_is_refused,
    a_future_timestamp_is_accepted,
    the_same_event_twice_changes_nothing,
    unknown_types_and_audio_are_accepted_and_ignored,
    an_initiation_failure_marks_the_call_failed_with_its_reason,
    a_late_failure_of_an_earlier_attempt_never_rewinds_a_finished_call,
    an_initiation_failure_never_lands_on_a_batch_scheduled_for_later,
    a_transcription_before_the_sync_is_found_by_our_client_id,
    an_initiation_failure_after_the_sync_renamed_the_recipients_still_finds_its_call,
    an_event_for_an_unknown_call_is_accepted_and_writes_nothing,
    without_a_secret_the_webhook_is_unavailable,
    malformed_json_with_a_valid_signature_is_a_bad_request,
    stored_outcomes_never_move_a_final_status_back_or_erase_known_values,
    the_in_process_simulator_fills_the_records_by_itself,
    webhooks_racing_the_sync_over_one_batch_never_deadlock,
    a_request_that_cannot_be_genuine_is_refused_before_its_body_is_read,
    a_body_over_the_webhook_limit_is_refused_and_nothing_is_written,
    a_signed_transcription_of_a_megabyte_is_accepted,
);

const SECRET: &str = "wsec_integration_test_secret_0123456789";
const PATH: &str = "/api/webhooks/elevenlabs";

/// Last digits 0, 1, 8, 9: the simulator completes the first two (success,
/// failure), leaves a voicemail on the third and gets a busy line on the last.
const CSV: &str = "nombre,telefono,monto\nAna,3138539150,150000\nLuis,3138539151,2000\nMaría,3138539158,99\nPedro,3138539159,10\n";
const ANA: &str = "+573138539150";
const LUIS: &str = "+573138539151";

async fn app_with_secret(backend: Backend) -> TestApp {
    spawn_app_with(backend, |c| {
        c.elevenlabs_webhook_secret = Some(Secret::new(SECRET));
    })
    .await
}

/// Launches a real batch for a four-client group; returns ElevenLabs' batch id.
async fn launch(app: &TestApp) -> String {
    let (token, admin_id) = app.admin().await;
    let group = group_id(
        app,
        &token,
        json!({"name": "Cobranza", "agentId": SIM_AGENT_COBRANZA, "variables": {"monto": "0"},
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": admin_id}),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    reply.body["data"]["batchId"]
        .as_str()
        .expect("batch id")
        .to_owned()
}

async fn client_id(app: &TestApp, phone: &str) -> i64 {
    app.db
        .scalar(&format!(
            "SELECT id FROM clients WHERE phone_e164 = '{phone}'"
        ))
        .await
}

/// A GET-conversation object for a completed call, as ElevenLabs sends it.
fn conversation(batch: &str, recipient_id: &str, phone: &str, conversation_id: &str) -> Value {
    json!({
        "agent_id": SIM_AGENT_COBRANZA,
        "conversation_id": conversation_id,
        "status": "done",
        "transcript": [
            {"role": "agent", "message": "Hola Ana, le llamamos por su saldo.", "time_in_call_secs": 0},
            {"role": "user", "message": "Sí, pago el viernes.", "time_in_call_secs": 6}
        ],
        "metadata": {
            "start_time_unix_secs": 1_760_000_000, "call_duration_secs": 44,
            "termination_reason": "Client disconnected: 1000",
            "batch_call": {"batch_call_id": batch, "batch_call_recipient_id": recipient_id},
            "phone_call": {"type": "twilio", "direction": "outbound", "external_number": phone}
        },
        "analysis": {
            "call_successful": "success",
            "transcript_summary": "Ana se compromete a pagar el viernes.",
            "evaluation_criteria_results": {"compromiso_pago": {"criteria_id": "compromiso_pago",
                "result": "success", "rationale": "Lo dijo."}},
            "data_collection_results": {"fecha_pago": {"data_collection_id": "fecha_pago",
                "value": "viernes", "rationale": "Mencionada."}}
        },
        "has_audio": true, "has_user_audio": true, "has_response_audio": true
    })
}

fn event(event_type: &str, data: Value) -> String {
    json!({"type": event_type, "event_timestamp": chrono::Utc::now().timestamp(), "data": data})
        .to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post_hook(app: &TestApp, path: &str, body: &str, signature: Option<String>) -> Reply {
    let mut request = app
        .client
        .request(Method::POST, app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("ElevenLabs-Signature", signature);
    }
    app.send(request).await
}

async fn post_signed(app: &TestApp, body: &str) -> Reply {
    post_hook(app, PATH, body, Some(sign(SECRET, now(), body.as_bytes()))).await
}

/// One call record (and its client's status), every column as text.
#[derive(Debug, Clone, PartialEq)]
struct CallRow {
    status: Option<String>,
    conversation_id: Option<String>,
    duration_secs: Option<String>,
    call_successful: Option<String>,
    transcript_summary: Option<String>,
    termination_reason: Option<String>,
    data_collection: Option<Value>,
    evaluation: Option<Value>,
    transcript: Option<Value>,
    failure_reason: Option<String>,
    started_at: Option<String>,
    updated_at: Option<String>,
    client_status: Option<String>,
}

const ROW_SQL: &str = "SELECT r.status, r.conversation_id, CAST(r.duration_secs AS TEXT), r.call_successful,
    r.transcript_summary, r.termination_reason, CAST(r.data_collection AS TEXT), CAST(r.evaluation AS TEXT),
    CAST(r.transcript AS TEXT), r.failure_reason, CAST(r.started_at AS TEXT), CAST(r.updated_at AS TEXT), c.status
    FROM call_records r LEFT JOIN clients c ON c.id = r.client_id";

fn texts<R: Row>(row: &R) -> Vec<Option<String>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    (0..row.len())
        .map(|i| row.try_get::<Option<String>, _>(i).expect("text column"))
        .collect()
}

async fn rows(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    if db.url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(&db.url)
            .await
            .expect("sqlite");
        let found = sqlx::query(sql).fetch_all(&mut conn).await.expect(sql);
        found.iter().map(texts).collect()
    } else {
        let mut conn = sqlx::PgConnection::connect(&db.url)
            .await
            .expect("postgres");
        let found = sqlx::query(sql).fetch_all(&mut conn).await.expect(sql);
        found.iter().map(texts).collect()
    }
}

fn json_text(text: &Option<String>) -> Option<Value> {
    text.as_deref()
        .map(|t| serde_json::from_str(t).expect("stored JSON"))
}

async fn call_row(app: &TestApp, phone: &str) -> CallRow {
    let found = rows(
        &app.db,
        &format!("{ROW_SQL} WHERE r.phone_e164 = '{phone}' ORDER BY r.id"),
    )
    .await;
    assert_eq!(found.len(), 1, "one call record for the number");
    let r = &found[0];
    CallRow {
        status: r[0].clone(),
        conversation_id: r[1].clone(),
        duration_secs: r[2].clone(),
        call_successful: r[3].clone(),
        transcript_summary: r[4].clone(),
        termination_reason: r[5].clone(),
        data_collection: json_text(&r[6]),
        evaluation: json_text(&r[7]),
        transcript: json_text(&r[8]),
        failure_reason: r[9].clone(),
        started_at: r[10].clone(),
        updated_at: r[11].clone(),
        client_status: r[12].clone(),
    }
}

/// Everything a webhook could touch, for "nothing changed" checks.
async fn snapshot(app: &TestApp) -> Vec<Vec<Option<String>>> {
    let mut all = rows(&app.db, &format!("{ROW_SQL} ORDER BY r.id")).await;
    all.extend(
        rows(
            &app.db,
            "SELECT CAST(id AS TEXT), status, CAST(updated_at AS TEXT) FROM clients ORDER BY id",
        )
        .await,
    );
    all.extend(
        rows(
            &app.db,
            "SELECT event_key, event_type FROM webhook_events ORDER BY id",
        )
        .await,
    );
    all
}

async fn webhook_events(app: &TestApp) -> i64 {
    app.db.scalar("SELECT COUNT(*) FROM webhook_events").await
}

/// A launched call nothing has happened to yet (its client was contacted by the launch).
fn assert_pending(row: &CallRow) {
    assert_eq!(row.status.as_deref(), Some("pending"));
    assert_eq!(row.conversation_id, None);
    assert_eq!(row.client_status.as_deref(), Some("contacted"));
}

async fn a_signed_transcription_fills_the_call_record_and_completes_the_client(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_ana_1"),
    );
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["type"], "post_call_transcription");
    assert_eq!(reply.body["data"]["result"], "applied");
    assert!(reply.body["data"]["callId"].as_i64().is_some());

    let row = call_row(&app, ANA).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv_ana_1"));
    assert_eq!(row.duration_secs.as_deref(), Some("44"));
    assert_eq!(row.call_successful.as_deref(), Some("success"));
    assert_eq!(
        row.transcript_summary.as_deref(),
        Some("Ana se compromete a pagar el viernes.")
    );
    assert_eq!(
        row.termination_reason.as_deref(),
        Some("Client disconnected: 1000")
    );
    assert_eq!(row.data_collection, Some(json!({"fecha_pago": "viernes"})));
    assert_eq!(
        row.evaluation,
        Some(json!({"compromiso_pago": {"result": "success", "rationale": "Lo dijo."}}))
    );
    assert_eq!(
        row.transcript
            .as_ref()
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2)
    );
    assert!(row.started_at.is_some());
    assert_eq!(row.client_status.as_deref(), Some("completed"));
    // The other recipients are untouched.
    assert_pending(&call_row(&app, LUIS).await);
    assert_eq!(webhook_events(&app).await, 1);
}

async fn a_foreign_recipient_id_is_matched_by_batch_and_number(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, "rcp_elevenlabs_own_id", LUIS, "conv_luis_1"),
    );
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "applied");
    let row = call_row(&app, LUIS).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv_luis_1"));
    assert_pending(&call_row(&app, ANA).await);
}

async fn the_alias_path_needs_no_token_either(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_alias"),
    );
    let reply = post_hook(
        &app,
        "/api/webhook/elevenlabs/conversation-complete",
        &body,
        Some(sign(SECRET, now(), body.as_bytes())),
    )
    .await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(
        call_row(&app, ANA).await.conversation_id.as_deref(),
        Some("conv_alias")
    );
}

async fn a_bad_signature_is_refused_and_nothing_is_written(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let before = snapshot(&app).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_x"),
    );
    for signature in [
        sign("wsec_some_other_secret", now(), body.as_bytes()),
        sign(SECRET, now(), b"{\"type\":\"post_call_transcription\"}"),
        format!("t={},v0=zz", now()),
        "nonsense".to_owned(),
    ] {
        let reply = post_hook(&app, PATH, &body, Some(signature)).await;
        reply.assert_error(401, "Firma del webhook inválida");
        assert_eq!(reply.body["errorCode"], "INVALID_SIGNATURE");
    }
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(webhook_events(&app).await, 0);
}

async fn a_missing_signature_is_refused(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let before = snapshot(&app).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, "1", ANA, "conv_x"),
    );
    let reply = post_hook(&app, PATH, &body, None).await;
    reply.assert_error(
        401,
        "Falta la firma del webhook (cabecera ElevenLabs-Signature)",
    );
    assert_eq!(reply.body["errorCode"], "MISSING_SIGNATURE");
    assert_eq!(snapshot(&app).await, before);
}

async fn a_signature_older_than_thirty_minutes_is_refused(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let before = snapshot(&app).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_old"),
    );
    let old = now() - 31 * 60;
    let reply = post_hook(&app, PATH, &body, Some(sign(SECRET, old, body.as_bytes()))).await;
    reply.assert_error(401, "La firma del webhook está vencida");
    assert_eq!(reply.body["errorCode"], "EXPIRED_SIGNATURE");
    assert_eq!(snapshot(&app).await, before);
    // Within the tolerance it is fine.
    let recent = now() - 29 * 60;
    let reply = post_hook(
        &app,
        PATH,
        &body,
        Some(sign(SECRET, recent, body.as_bytes())),
    )
    .await;
    reply.assert_ok(200, "Webhook recibido");
}

async fn a_future_timestamp_is_accepted(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_future"),
    );
    let future = now() + 3600;
    let reply = post_hook(
        &app,
        PATH,
        &body,
        Some(sign(SECRET, future, body.as_bytes())),
    )
    .await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(
        call_row(&app, ANA).await.status.as_deref(),
        Some("completed")
    );
}

async fn the_same_event_twice_changes_nothing(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let body = event(
        "post_call_transcription",
        conversation(&batch, &ana.to_string(), ANA, "conv_twice"),
    );
    post_signed(&app, &body)
        .await
        .assert_ok(200, "Webhook recibido");
    let after_first = snapshot(&app).await;
    // Redelivered, re-signed later, even with different content for the same conversation.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "duplicate");
    let mut changed = conversation(&batch, &ana.to_string(), ANA, "conv_twice");
    changed["analysis"]["transcript_summary"] = json!("Otro resumen");
    let reply = post_signed(&app, &event("post_call_transcription", changed)).await;
    assert_eq!(reply.body["data"]["result"], "duplicate");
    assert_eq!(snapshot(&app).await, after_first);
    assert_eq!(webhook_events(&app).await, 1);
}

async fn unknown_types_and_audio_are_accepted_and_ignored(backend: Backend) {
    let app = app_with_secret(backend).await;
    launch(&app).await;
    let before = snapshot(&app).await;
    for body in [
        event(
            "post_call_audio",
            json!({"agent_id": "a", "conversation_id": "conv_audio", "full_audio": "SUQz"}),
        ),
        event("something_new_from_elevenlabs", json!({"anything": [1, 2]})),
        json!({"type": "no_data_at_all"}).to_string(),
    ] {
        let reply = post_signed(&app, &body).await;
        reply.assert_ok(200, "Webhook recibido");
        assert_eq!(reply.body["data"]["result"], "ignored");
    }
    assert_eq!(snapshot(&app).await, before);
}

async fn an_initiation_failure_marks_the_call_failed_with_its_reason(backend: Backend) {
    let app = app_with_secret(backend).await;
    launch(&app).await;
    let luis = client_id(&app, LUIS).await;
    // As ElevenLabs sends it: no batch id, only the conversation, the number
    // dialled and the variables we sent (our client id among them).
    let body = event(
        "call_initiation_failure",
        json!({"agent_id": SIM_AGENT_COBRANZA, "conversation_id": "conv_busy", "failure_reason": "busy",
               "metadata": {"type": "sip", "body": {"from_number": "+576015550100", "to_number": LUIS,
                   "sip_status_code": 486, "error_reason": "INVITE failed: sip status: 486: Busy here (SIP 486)",
                   "call_sid": "d8e7f6a5", "sip_status": "Busy here"}},
               "conversation_initiation_client_data": {"dynamic_variables": {"client_id": luis.to_string(), "name": "Luis"}}}),
    );
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "applied");
    let row = call_row(&app, LUIS).await;
    assert_eq!(row.status.as_deref(), Some("failed"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv_busy"));
    assert_eq!(
        row.failure_reason.as_deref(),
        Some("busy: INVITE failed: sip status: 486: Busy here (SIP 486)")
    );
    assert_eq!(row.client_status.as_deref(), Some("contacted"));
    assert_pending(&call_row(&app, ANA).await);
}

/// A retried call: attempt 1 failed, attempt 2 completed, and the failure's
/// webhook arrives last. The record keeps attempt 2's end.
async fn a_late_failure_of_an_earlier_attempt_never_rewinds_a_finished_call(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let luis = client_id(&app, LUIS).await;
    let done = event(
        "post_call_transcription",
        conversation(&batch, &luis.to_string(), LUIS, "conv_second"),
    );
    post_signed(&app, &done)
        .await
        .assert_ok(200, "Webhook recibido");
    let before = call_row(&app, LUIS).await;
    assert_eq!(before.status.as_deref(), Some("completed"));
    let late = event(
        "call_initiation_failure",
        json!({"agent_id": SIM_AGENT_COBRANZA, "conversation_id": "conv_first", "failure_reason": "no-answer",
               "metadata": {"type": "twilio", "body": {"To": LUIS, "CallStatus": "no-answer"}},
               "conversation_initiation_client_data": {"dynamic_variables": {"client_id": luis.to_string()}}}),
    );
    let reply = post_signed(&app, &late).await;
    reply.assert_ok(200, "Webhook recibido");
    let after = call_row(&app, LUIS).await;
    assert_eq!(after.status.as_deref(), Some("completed"));
    assert_eq!(after.conversation_id.as_deref(), Some("conv_second"));
    assert_eq!(after.failure_reason, None);
    assert_eq!(after.client_status.as_deref(), Some("completed"));
    // An older attempt's transcript, by the sync or a webhook, is ignored too.
    let mut older = conversation(&batch, &luis.to_string(), LUIS, "conv_zero");
    older["status"] = json!("failed");
    older["metadata"]["start_time_unix_secs"] = json!(1_759_000_000);
    let id = app
        .store()
        .apply_call_outcome(&CallOutcome::from_conversation(&older))
        .await
        .unwrap();
    assert!(id.is_some());
    let last = call_row(&app, LUIS).await;
    assert_eq!(last.status.as_deref(), Some("completed"));
    assert_eq!(last.conversation_id.as_deref(), Some("conv_second"));
}

/// The same client in a batch running now and in one scheduled for tomorrow:
/// an initiation failure (which names no batch) is today's call's.
async fn an_initiation_failure_never_lands_on_a_batch_scheduled_for_later(backend: Backend) {
    // Tomorrow's launch follows today's at once: no double-launch window.
    let app = spawn_app_with(backend, |c| {
        c.elevenlabs_webhook_secret = Some(Secret::new(SECRET));
        c.duplicate_window_secs = 0;
    })
    .await;
    launch(&app).await;
    let (token, admin_id) = crate::helpers::token_and_id(
        &app.login("admin@example.com", crate::helpers::PASSWORD)
            .await,
    );
    let group: i64 = app.db.scalar("SELECT MIN(id) FROM groups").await;
    let later = app
        .send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .json(&json!({"userId": admin_id, "scheduledTimeUnix": now() + 86_400})),
        )
        .await;
    assert_eq!(later.status, 200, "{}", later.text);
    let luis = client_id(&app, LUIS).await;
    let body = event(
        "call_initiation_failure",
        json!({"agent_id": SIM_AGENT_COBRANZA, "conversation_id": "conv_today", "failure_reason": "busy",
               "metadata": {"type": "twilio", "body": {"To": LUIS, "CallStatus": "busy"}},
               "conversation_initiation_client_data": {"dynamic_variables": {"client_id": luis.to_string()}}}),
    );
    post_signed(&app, &body)
        .await
        .assert_ok(200, "Webhook recibido");
    let statuses = rows(
        &app.db,
        &format!(
            "SELECT r.status, r.conversation_id FROM call_records r WHERE r.phone_e164 = '{LUIS}' ORDER BY r.id"
        ),
    )
    .await;
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0][0].as_deref(), Some("failed"), "today's call");
    assert_eq!(statuses[0][1].as_deref(), Some("conv_today"));
    assert_ne!(
        statuses[1][0].as_deref(),
        Some("failed"),
        "tomorrow's call untouched"
    );
    assert_eq!(statuses[1][1], None);
}

/// Before the sync has seen the batch, ElevenLabs' recipient id is unknown to
/// us; the `client_id` variable we sent names the call (no number given here,
/// so the last resort cannot find it instead).
async fn a_transcription_before_the_sync_is_found_by_our_client_id(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let luis = client_id(&app, LUIS).await;
    let mut data = conversation(&batch, "rcp_elevenlabs_own_id", LUIS, "conv_luis_2");
    data["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("phone_call");
    data["conversation_initiation_client_data"] =
        json!({"dynamic_variables": {"client_id": luis.to_string(), "name": "Luis"}});
    let reply = post_signed(&app, &event("post_call_transcription", data.clone())).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "applied");
    let row = call_row(&app, LUIS).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv_luis_2"));
    assert_pending(&call_row(&app, ANA).await);

    // A `client_id` that is not one of ours names nothing: accepted, nothing written.
    let before = snapshot(&app).await;
    data["conversation_id"] = json!("conv_other");
    data["conversation_initiation_client_data"] =
        json!({"dynamic_variables": {"client_id": "cli_ajeno"}});
    let reply = post_signed(&app, &event("post_call_transcription", data)).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "unknown_call");
    assert_eq!(snapshot(&app).await, before);
}

/// The sync stores ElevenLabs' own recipient ids in place of ours; an
/// initiation failure (no batch id, a conversation the sync has not seen)
/// still finds its call by our client id and the number.
async fn an_initiation_failure_after_the_sync_renamed_the_recipients_still_finds_its_call(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |c| {
        c.elevenlabs_webhook_secret = Some(Secret::new(SECRET));
        // Nobody is dialled while the test runs.
        c.simulator_step_ms = 600_000;
    })
    .await;
    launch(&app).await;
    let luis = client_id(&app, LUIS).await;
    let report = marcador::sync::SyncWorker::with_owner(&app.state, "w")
        .tick()
        .await;
    assert_eq!(report.failed, 0, "{report:?}");
    let recipient = rows(
        &app.db,
        &format!("SELECT recipient_id FROM call_records WHERE client_id = {luis}"),
    )
    .await;
    assert_eq!(recipient.len(), 1);
    assert!(
        recipient[0][0]
            .as_deref()
            .is_some_and(|r| r != luis.to_string()),
        "the sync stored ElevenLabs' id: {recipient:?}"
    );
    let body = event(
        "call_initiation_failure",
        json!({"agent_id": SIM_AGENT_COBRANZA, "conversation_id": "conv_unseen", "failure_reason": "no-answer",
               "metadata": {"type": "twilio", "body": {"To": LUIS, "CallStatus": "no-answer"}},
               "conversation_initiation_client_data": {"dynamic_variables": {"client_id": luis.to_string()}}}),
    );
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "applied");
    let row = call_row(&app, LUIS).await;
    assert_eq!(row.status.as_deref(), Some("failed"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv_unseen"));
    assert_pending(&call_row(&app, ANA).await);
}

async fn an_event_for_an_unknown_call_is_accepted_and_writes_nothing(backend: Backend) {
    let app = app_with_secret(backend).await;
    launch(&app).await;
    let before = snapshot(&app).await;
    let body = event(
        "post_call_transcription",
        conversation("btcal_not_ours", "999", "+15550001111", "conv_unknown"),
    );
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "unknown_call");
    assert_eq!(reply.body["data"]["callId"], Value::Null);
    assert_eq!(snapshot(&app).await, before);
}

async fn without_a_secret_the_webhook_is_unavailable(backend: Backend) {
    // The test configuration has no secret and the simulator's webhooks off.
    let app = spawn_app(backend).await;
    let body = event("post_call_audio", json!({"conversation_id": "c"}));
    for path in [PATH, "/api/webhook/elevenlabs/conversation-complete"] {
        let reply = post_hook(
            &app,
            path,
            &body,
            Some(sign(SECRET, now(), body.as_bytes())),
        )
        .await;
        reply.assert_error(503, "El webhook de ElevenLabs no está configurado");
        assert_eq!(reply.body["errorCode"], "WEBHOOK_NOT_CONFIGURED");
    }
}

async fn malformed_json_with_a_valid_signature_is_a_bad_request(backend: Backend) {
    let app = app_with_secret(backend).await;
    launch(&app).await;
    let before = snapshot(&app).await;
    let reply = post_signed(&app, "{\"type\": \"post_call_transcription\", ").await;
    reply.assert_error(400, "JSON inválido en el cuerpo de la petición");
    for body in [
        json!({"data": {}}).to_string(),
        json!([1, 2]).to_string(),
        json!({"type": "post_call_transcription", "data": "x"}).to_string(),
        json!({"type": "call_initiation_failure"}).to_string(),
    ] {
        post_signed(&app, &body)
            .await
            .assert_error(400, "Evento de webhook inválido");
    }
    assert_eq!(snapshot(&app).await, before);
}

async fn stored_outcomes_never_move_a_final_status_back_or_erase_known_values(backend: Backend) {
    // The store API the background sync shares with the webhook.
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let done =
        CallOutcome::from_conversation(&conversation(&batch, &ana.to_string(), ANA, "conv_s"));
    let id = app.store().apply_call_outcome(&done).await.unwrap();
    assert!(id.is_some());
    let running = CallOutcome::from_conversation(&json!({
        "conversation_id": "conv_s", "status": "in-progress", "transcript": [],
        "metadata": {"start_time_unix_secs": 1_760_000_000, "call_duration_secs": 0}, "analysis": null
    }));
    assert_eq!(
        app.store().apply_call_outcome(&running).await.unwrap(),
        id,
        "found by conversation id"
    );
    let row = call_row(&app, ANA).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(row.duration_secs.as_deref(), Some("44"));
    assert_eq!(
        row.transcript_summary.as_deref(),
        Some("Ana se compromete a pagar el viernes.")
    );
    assert_eq!(row.data_collection, Some(json!({"fecha_pago": "viernes"})));
    assert_eq!(
        app.store()
            .apply_call_outcome(&CallOutcome::default())
            .await
            .unwrap(),
        None
    );
    // The event log is separate: a key is recorded once.
    assert!(app.store().record_webhook_event("k1", "t").await.unwrap());
    assert!(!app.store().record_webhook_event("k1", "t").await.unwrap());
}

async fn the_in_process_simulator_fills_the_records_by_itself(backend: Backend) {
    // No secret configured: the service makes one up and shares it with the
    // simulator, which posts to this very server.
    let app = spawn_app_with(backend, |c| {
        c.simulator_webhooks = true;
        c.simulator_step_ms = 25;
    })
    .await;
    assert!(app.state.webhook_secret.is_some());
    launch(&app).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let finished = app
            .db
            .scalar(
                "SELECT COUNT(*) FROM call_records WHERE status IN ('completed', 'failed', 'voicemail')",
            )
            .await;
        if finished == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {finished} of 4 calls finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ana = call_row(&app, ANA).await;
    assert_eq!(ana.status.as_deref(), Some("completed"));
    assert_eq!(ana.call_successful.as_deref(), Some("success"));
    assert!(ana.conversation_id.is_some());
    assert!(ana.duration_secs.is_some());
    assert!(ana.transcript_summary.is_some());
    assert_eq!(ana.client_status.as_deref(), Some("completed"));
    let luis = call_row(&app, LUIS).await;
    assert_eq!(luis.status.as_deref(), Some("completed"));
    assert_eq!(luis.call_successful.as_deref(), Some("failure"));
    let voicemail = call_row(&app, "+573138539158").await;
    assert_eq!(voicemail.status.as_deref(), Some("voicemail"));
    assert_eq!(voicemail.client_status.as_deref(), Some("contacted"));
    let busy = call_row(&app, "+573138539159").await;
    assert_eq!(busy.status.as_deref(), Some("failed"));
    assert!(
        busy.failure_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("busy")),
        "{:?}",
        busy.failure_reason
    );
    // Everyone in a launched batch has been contacted, whatever the outcome.
    assert_eq!(busy.client_status.as_deref(), Some("contacted"));
    assert_eq!(webhook_events(&app).await, 4);
}

/// A storm: webhooks for a batch's calls arrive while the sync applies the
/// same calls' conversations in one transaction. Every delivery is answered
/// 200 (a deadlock was a 500 that ElevenLabs had to retry), and the rollups
/// count each call once.
async fn webhooks_racing_the_sync_over_one_batch_never_deadlock(backend: Backend) {
    let app = app_with_secret(backend).await;
    let (token, admin_id) = app.admin().await;
    let csv = crate::groups::long_csv(300);
    let group = group_id(
        &app,
        &token,
        json!({"name": "Tormenta", "agentId": SIM_AGENT_COBRANZA, "base64": b64(csv.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let launched = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": admin_id}),
        )
        .await;
    assert_eq!(launched.status.as_u16(), 200, "{}", launched.text);
    let batch = launched.body["data"]["batchId"]
        .as_str()
        .unwrap()
        .to_owned();
    // As the calls run: all in progress.
    app.db
        .execute("UPDATE call_records SET status = 'in_progress'")
        .await;
    let calls = rows(
        &app.db,
        "SELECT CAST(id AS TEXT), CAST(client_id AS TEXT), phone_e164 FROM call_records ORDER BY id",
    )
    .await;
    let text = |cell: &Option<String>| cell.clone().unwrap_or_default();
    let conversations: Vec<(i64, Value)> = calls
        .iter()
        .map(|row| {
            let id: i64 = text(&row[0]).parse().unwrap();
            let conversation = conversation(
                &batch,
                &text(&row[1]),
                &text(&row[2]),
                &format!("conv_{id}"),
            );
            (id, conversation)
        })
        .collect();
    let outcomes: Vec<(i64, CallOutcome)> = conversations
        .iter()
        .map(|(id, c)| (*id, CallOutcome::from_conversation(c)))
        .collect();
    let hooks = conversations.iter().rev().map(|(_, c)| {
        let body = event("post_call_transcription", c.clone());
        let app = &app;
        async move { post_signed(app, &body).await }
    });
    let syncs = (0..3).map(|_| app.store().apply_conversation_outcomes(&outcomes));
    let (hooks, syncs) = tokio::join!(
        futures::future::join_all(hooks),
        futures::future::join_all(syncs)
    );
    for reply in &hooks {
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    }
    for applied in syncs {
        applied.expect("the sync's transaction commits");
    }
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status = 'completed'")
            .await,
        300
    );
    assert_eq!(
        app.db
            .scalar("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM call_stats_hourly WHERE status = 'completed'")
            .await,
        300,
        "each call counted once"
    );
    assert_eq!(
        app.db
            .scalar("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM call_stats_hourly")
            .await,
        300
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_reached_clients WHERE calls = 1")
            .await,
        300
    );
}

/// What a bare request sends after its head.
enum RawBody {
    /// Nothing: the head alone (with the Content-Length it announces).
    Nothing,
    /// Chunked: this many bytes in 64 KiB chunks, and never the last chunk.
    Chunks(usize),
}

/// Posts to the webhook over a bare connection whose body never ends, and
/// reads the answer: a server that waited for the whole body would never
/// give one. Returns the status and the JSON body.
async fn unfinished_post(app: &TestApp, headers: &[(&str, String)], body: RawBody) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut head =
        format!("POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if matches!(body, RawBody::Chunks(_)) {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        if let RawBody::Chunks(total) = body {
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                writer.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                writer.write_all(&chunk[..n]).await?;
                writer.write_all(b"\r\n").await?;
                sent += n;
            }
        }
        writer.flush().await?;
        // The connection stays open and the body unfinished.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(())
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut bytes = Vec::new();
        let mut piece = [0u8; 8192];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + length {
                    let status: u16 = head[9..12].parse().expect("status code");
                    let body = serde_json::from_slice(&bytes[end + 4..end + 4 + length])
                        .unwrap_or(Value::Null);
                    return (status, body);
                }
            }
            let n = reader.read(&mut piece).await.expect("readable");
            assert!(n > 0, "closed without an answer");
            bytes.extend_from_slice(&piece[..n]);
        }
    })
    .await
    .expect("an answer while the body is still unfinished");
    sender.abort();
    answer
}

async fn a_request_that_cannot_be_genuine_is_refused_before_its_body_is_read(backend: Backend) {
    let app = app_with_secret(backend).await;
    launch(&app).await;
    let before = snapshot(&app).await;
    let valid_looking = sign(SECRET, now(), b"{}");
    let cases = [
        (None, "MISSING_SIGNATURE"),
        (Some(format!("t={},v0=zz", now())), "INVALID_SIGNATURE"),
        (Some("nonsense".to_owned()), "INVALID_SIGNATURE"),
        (
            Some(sign(SECRET, now() - 31 * 60, b"{}")),
            "EXPIRED_SIGNATURE",
        ),
    ];
    for (signature, code) in cases {
        let signed: Vec<(&str, String)> = signature
            .clone()
            .map(|s| ("ElevenLabs-Signature", s))
            .into_iter()
            .collect();
        // A body that never ends, and one announced far over any limit.
        let (status, body) = unfinished_post(&app, &signed, RawBody::Chunks(1024)).await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (401, Some(code)),
            "{body}"
        );
        let mut huge = signed.clone();
        huge.push(("Content-Length", (1u64 << 30).to_string()));
        let (status, body) = unfinished_post(&app, &huge, RawBody::Nothing).await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (401, Some(code)),
            "{body}"
        );
        assert_eq!(body["success"], false);
    }
    // A header that passes these checks is not enough: its body is then read and checked.
    let reply = post_hook(&app, PATH, "{\"type\":\"x\"}", Some(valid_looking)).await;
    reply.assert_error(401, "Firma del webhook inválida");
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(webhook_events(&app).await, 0);
}

async fn a_body_over_the_webhook_limit_is_refused_and_nothing_is_written(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    let before = snapshot(&app).await;
    let limit = app.state.config.webhook_body_limit_bytes();
    assert_eq!(limit, 4 * 1024 * 1024, "the documented default");
    assert!(limit < app.state.config.body_limit_bytes());
    // A genuine event, signed, but padded past the limit.
    let mut data = conversation(&batch, &ana.to_string(), ANA, "conv_big");
    data["analysis"]["transcript_summary"] = json!("x".repeat(limit));
    let body = event("post_call_transcription", data);
    let signature = sign(SECRET, now(), body.as_bytes());
    let announced = [
        ("ElevenLabs-Signature", signature.clone()),
        ("Content-Length", body.len().to_string()),
    ];
    // Announced: refused at once, before any of it is sent.
    let (status, reply) = unfinished_post(&app, &announced, RawBody::Nothing).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(
        reply["message"],
        "El cuerpo de la petición es demasiado grande"
    );
    assert_eq!(reply["success"], false);
    // Chunked: read up to the limit, then refused (the rest is never sent).
    let chunked = [("ElevenLabs-Signature", signature)];
    let (status, reply) =
        unfinished_post(&app, &chunked, RawBody::Chunks(limit + 256 * 1024)).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(
        reply["message"],
        "El cuerpo de la petición es demasiado grande"
    );
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(webhook_events(&app).await, 0);
}

async fn a_signed_transcription_of_a_megabyte_is_accepted(backend: Backend) {
    let app = app_with_secret(backend).await;
    let batch = launch(&app).await;
    let ana = client_id(&app, ANA).await;
    // A long call: 2,000 turns of about 500 characters, about a megabyte.
    let turns: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"role": if i % 2 == 0 { "agent" } else { "user" },
                   "message": format!("Turno {i}: {}", "palabra ".repeat(62)),
                   "time_in_call_secs": i})
        })
        .collect();
    let mut data = conversation(&batch, &ana.to_string(), ANA, "conv_long");
    data["transcript"] = Value::Array(turns);
    let body = event("post_call_transcription", data);
    assert!(body.len() > 1024 * 1024, "{} bytes", body.len());
    let reply = post_signed(&app, &body).await;
    reply.assert_ok(200, "Webhook recibido");
    assert_eq!(reply.body["data"]["result"], "applied");
    let row = call_row(&app, ANA).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(
        row.transcript
            .as_ref()
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2000)
    );
    assert_eq!(webhook_events(&app).await, 1);
}
