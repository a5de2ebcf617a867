//! API.md §6, following calls: the sync worker (leases, back-off,
//! reconciliation of timed-out submits), batch status, the live stream,
//! cancel, retry and the dashboard's aliases.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use marcador::elevenlabs::simulator::{Fault, SIM_AGENT_COBRANZA, Simulator};
use marcador::elevenlabs::types::{OutboundRecipient, SubmitBatch};
use marcador::sync::SyncWorker;
use serde_json::{Value, json};

use crate::groups::{b64, group_id};
use crate::helpers::{Backend, TestApp, both_backends, spawn_app_with};

both_backends!(
    the_sync_follows_a_batch_from_submit_to_outcome,
    batch_status_before_any_call_and_for_strangers,
    elevenlabs_down_answers_from_the_database_and_backs_off,
    cancel_is_idempotent_and_retry_waits_for_the_end,
    retry_calls_the_failed_recipients_again,
    two_workers_never_sync_one_batch_at_once,
    a_timed_out_submit_is_found_by_name_or_given_up,
    a_same_named_batch_of_other_people_is_not_taken_for_an_unverified_submit,
    the_stream_reports_progress_and_the_end,
    the_stream_ends_when_its_group_is_deleted,
    the_stream_ends_when_its_token_is_revoked,
    a_webhook_merged_during_a_sync_is_not_overwritten_by_it,
    the_worker_runs_in_the_background,
    calls_told_by_webhook_are_not_read_again,
);

/// Last digits: 1 and 2 complete, 8 goes to voicemail, 9 fails (simulator rules).
const CSV: &str = "nombre,telefono,monto\nAna,3138539151,100\nLuis,3138539152,200\nEva,3138539158,300\nJuan,3138539159,400\n";

fn sim(app: &TestApp) -> Simulator {
    app.state.simulator.clone().expect("simulator mode")
}

async fn app_with_step(backend: Backend, step_ms: u64) -> TestApp {
    spawn_app_with(backend, |c| c.simulator_step_ms = step_ms).await
}

/// A group of four, launched; returns (token, user id, group id, batch id).
async fn launched(app: &TestApp) -> (String, i64, i64, String) {
    let (token, id) = app.admin().await;
    let group = group_id(
        app,
        &token,
        json!({"name": "Seguimiento", "agentId": SIM_AGENT_COBRANZA,
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": id}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let batch = reply.body["data"]["batchId"]
        .as_str()
        .expect("batch id")
        .to_owned();
    (token, id, group, batch)
}

/// Ticks until the batch is final in the database (or fails the test).
async fn sync_until_final(app: &TestApp, worker: &SyncWorker, batch: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        worker.tick().await;
        let done = app
            .db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE elevenlabs_batch_id = '{batch}' AND is_final = TRUE"
            ))
            .await;
        if done == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "batch {batch} never finished");
        // Due again at once: the test does not wait for the interval.
        app.db
            .execute("UPDATE batches SET next_sync_at = NULL")
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

async fn status_of(app: &TestApp, phone: &str) -> String {
    let rows = app
        .db
        .scalar(&format!(
            "SELECT COUNT(*) FROM call_records WHERE phone_e164 = '{phone}'"
        ))
        .await;
    assert_eq!(rows, 1, "{phone}");
    for status in [
        "pending",
        "dispatched",
        "initiated",
        "in_progress",
        "completed",
        "failed",
        "voicemail",
        "cancelled",
    ] {
        let n = app
            .db
            .scalar(&format!(
                "SELECT COUNT(*) FROM call_records WHERE phone_e164 = '{phone}' AND status = '{status}'"
            ))
            .await;
        if n == 1 {
            return status.to_owned();
        }
    }
    panic!("unknown status for {phone}");
}

async fn the_sync_follows_a_batch_from_submit_to_outcome(backend: Backend) {
    let app = app_with_step(backend, 150).await;
    let (token, _, group, batch) = launched(&app).await;
    // Launched people are contacted.
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE status = 'contacted'")
            .await,
        4
    );
    let path = format!("/api/groups/{group}/batch-status");
    let first = app.get(&path, Some(&token)).await;
    first.assert_ok(200, "Estado del batch call obtenido exitosamente");
    let data = &first.body["data"];
    assert_eq!(data["hasBeenCalled"], true);
    assert_eq!(data["group"]["id"], group);
    assert_eq!(data["batchCall"]["id"], batch.as_str());
    assert_eq!(data["batchCall"]["agent_id"], SIM_AGENT_COBRANZA);
    assert_eq!(data["batchCall"]["total_calls_scheduled"], 4);
    for field in [
        "name",
        "status",
        "phone_number_id",
        "created_at_unix",
        "scheduled_time_unix",
        "total_calls_dispatched",
        "total_calls_finished",
        "last_updated_at_unix",
    ] {
        assert!(
            data["batchCall"].get(field).is_some(),
            "batchCall.{field} missing"
        );
    }
    let recipients = data["batchCall"]["recipients"]
        .as_array()
        .expect("recipients");
    assert_eq!(recipients.len(), 4);
    assert_eq!(recipients[0]["client_name"], "Ana");
    assert_eq!(recipients[0]["phone_number"], "+573138539151");
    for field in [
        "id",
        "status",
        "created_at_unix",
        "updated_at_unix",
        "conversation_id",
        "client_id",
        "duration_secs",
        "call_successful",
        "summary",
    ] {
        assert!(recipients[0].get(field).is_some(), "recipient.{field}");
    }
    assert_eq!(data["batches"].as_array().map(Vec::len), Some(1));
    assert_eq!(first.body["pagination"]["total"], 4);

    // Follow it, watching the batch and the calls move.
    let worker = SyncWorker::with_owner(&app.state, "test-worker");
    let mut batch_statuses = BTreeSet::new();
    let mut call_statuses = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = worker.tick().await;
        assert_eq!(report.failed, 0, "{report:?}");
        let reply = app.get(&path, Some(&token)).await;
        assert_eq!(reply.status, 200);
        let view = &reply.body["data"]["batchCall"];
        batch_statuses.insert(view["status"].as_str().unwrap_or("?").to_owned());
        for r in view["recipients"].as_array().into_iter().flatten() {
            call_statuses.insert(r["status"].as_str().unwrap_or("?").to_owned());
        }
        if app
            .db
            .scalar("SELECT COUNT(*) FROM batches WHERE is_final = TRUE")
            .await
            == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "never finished");
        app.db
            .execute("UPDATE batches SET next_sync_at = NULL")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(batch_statuses.contains("in_progress"), "{batch_statuses:?}");
    assert!(call_statuses.contains("in_progress"), "{call_statuses:?}");
    assert_eq!(status_of(&app, "+573138539151").await, "completed");
    assert_eq!(status_of(&app, "+573138539152").await, "completed");
    assert_eq!(status_of(&app, "+573138539158").await, "voicemail");
    assert_eq!(status_of(&app, "+573138539159").await, "failed");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE status = 'completed' AND last_synced_at IS NOT NULL AND lease_owner IS NULL AND total_calls_finished = 4")
            .await,
        1
    );
    // Every placed call has its conversation and times.
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status IN ('completed', 'voicemail') AND conversation_id IS NOT NULL AND started_at IS NOT NULL AND ended_at IS NOT NULL")
            .await,
        3
    );
    // Each finished call's conversation was read once: outcome, summary, analysis.
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status = 'completed' AND duration_secs > 0 AND call_successful IN ('success', 'failure') AND transcript_summary IS NOT NULL AND data_collection IS NOT NULL AND evaluation IS NOT NULL AND transcript IS NOT NULL AND conversation_fetched_at IS NOT NULL")
            .await,
        2
    );
    // Even digit: success; odd: failure (simulator rules).
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE phone_e164 = '+573138539152' AND call_successful = 'success'")
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE phone_e164 = '+573138539158' AND status = 'voicemail'")
            .await,
        1,
        "the batch's own status is kept"
    );
    let conversation_reads = sim(&app)
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v1/convai/conversations/"))
        .count();
    let placed = app
        .db
        .scalar("SELECT COUNT(*) FROM call_records WHERE conversation_id IS NOT NULL AND status IN ('completed', 'failed', 'voicemail')")
        .await;
    assert_eq!(
        conversation_reads as i64, placed,
        "one read per finished call"
    );
    // Clients follow their calls; the group's summary follows its batch.
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE status = 'completed'")
            .await,
        2
    );
    let group_now = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    let stats = &group_now.body["data"]["batchCallStats"];
    assert_eq!(stats["hasBeenCalled"], true);
    assert_eq!(stats["status"], "completed");
    assert_eq!(stats["completedCalls"], 2);
    assert_eq!(stats["failedCalls"], 1);

    // A final batch is read from the database, never from ElevenLabs.
    let sim = sim(&app);
    sim.clear_requests();
    let done = app
        .get(
            &format!("/api/groups/{group}/batch-status/{batch}?limit=2&page=2"),
            Some(&token),
        )
        .await;
    done.assert_ok(200, "Estado del batch call obtenido exitosamente");
    assert_eq!(done.body["data"]["batchCall"]["status"], "completed");
    assert_eq!(done.body["pagination"]["page"], 2);
    assert_eq!(
        done.body["data"]["batchCall"]["recipients"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        done.body["data"]["batchCall"]["recipients"][0]["client_name"],
        "Eva"
    );
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    // Nothing is due any more.
    assert_eq!(worker.tick().await.claimed, 0);
}

async fn batch_status_before_any_call_and_for_strangers(backend: Backend) {
    let app = app_with_step(backend, 60_000).await;
    let (admin, _) = app.admin().await;
    let empty = group_id(
        &app,
        &admin,
        json!({"name": "Vacío", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let never = app
        .get(&format!("/api/groups/{empty}/batch-status"), Some(&admin))
        .await;
    never.assert_ok(200, "Este grupo no ha sido llamado aún");
    assert_eq!(never.body["data"]["hasBeenCalled"], false);
    assert_eq!(never.body["data"]["batchCall"], Value::Null);

    let (user, user_id) = app.user(&admin, "ana").await;
    let mine = group_id(
        &app,
        &user,
        json!({"name": "Mío", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let launched = app
        .post(
            &format!("/api/groups/{mine}/call"),
            Some(&user),
            json!({"userId": user_id}),
        )
        .await;
    assert_eq!(launched.status, 200, "{}", launched.body);
    let batch = launched.body["data"]["batchId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another user: the group is not found, the batch is not found.
    let (other, _) = app.user(&admin, "otro").await;
    app.get(&format!("/api/groups/{mine}/batch-status"), Some(&other))
        .await
        .assert_error(404, "Grupo no encontrado");
    app.get(&format!("/api/batch-calls/{batch}/status"), Some(&other))
        .await
        .assert_error(404, "Batch no encontrado en este grupo");
    app.post(
        &format!("/api/batch-calls/{batch}/cancel"),
        Some(&other),
        json!({}),
    )
    .await
    .assert_error(404, "Batch no encontrado en este grupo");
    // A batch through another group's path.
    app.get(
        &format!("/api/groups/{empty}/batch-status/{batch}"),
        Some(&admin),
    )
    .await
    .assert_error(404, "Batch no encontrado en este grupo");
    app.get(
        &format!("/api/groups/{empty}/batch-status/btcal_nope"),
        Some(&admin),
    )
    .await
    .assert_error(404, "Batch no encontrado en este grupo");
    app.get(
        &format!("/api/groups/{empty}/batch-status/a%20b"),
        Some(&admin),
    )
    .await
    .assert_error(400, "ID inválido");
    app.get(&format!("/api/groups/x/batch-status/{batch}"), Some(&admin))
        .await
        .assert_error(400, "ID inválido");
    // No token.
    app.get(&format!("/api/batch-calls/{batch}/status"), None)
        .await
        .assert_error(401, "Token de autenticación requerido");
    // The owner and an admin see it, through the alias too.
    for token in [&user, &admin] {
        let reply = app
            .get(&format!("/api/batch-calls/{batch}/status"), Some(token))
            .await;
        reply.assert_ok(200, "Estado del batch call obtenido exitosamente");
        assert_eq!(reply.body["data"]["batchCall"]["id"], batch.as_str());
        assert_eq!(reply.body["data"]["group"]["id"], mine);
    }
}

async fn elevenlabs_down_answers_from_the_database_and_backs_off(backend: Backend) {
    let app = app_with_step(backend, 60_000).await;
    let (token, _, group, batch) = launched(&app).await;
    let sim = sim(&app);
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/batch-calling/",
        500,
        json!({"detail": {"status": "internal_error", "message": "boom"}}),
    ));
    let reply = app
        .get(&format!("/api/groups/{group}/batch-status"), Some(&token))
        .await;
    reply.assert_ok(200, "Estado del batch call (datos de DB)");
    assert_eq!(reply.body["warning"], "Datos de ElevenLabs no disponibles");
    assert_eq!(reply.body["data"]["batchCall"]["id"], batch.as_str());
    assert_eq!(
        reply.body["data"]["batchCall"]["recipients"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    let one = app
        .get(
            &format!("/api/groups/{group}/batch-status/{batch}"),
            Some(&token),
        )
        .await;
    one.assert_ok(200, "Estado del batch call (datos de DB)");

    let worker = SyncWorker::with_owner(&app.state, "w1");
    let report = worker.tick().await;
    assert_eq!((report.claimed, report.failed), (1, 1), "{report:?}");
    // Kept, not final, lease released, retried later.
    let row = app
        .db
        .scalar("SELECT COUNT(*) FROM batches WHERE is_final = FALSE AND sync_failures = 1 AND lease_owner IS NULL AND next_sync_at IS NOT NULL")
        .await;
    assert_eq!(row, 1);
    assert_eq!(worker.tick().await.claimed, 0, "backing off");
    // A second failure doubles the wait.
    app.db
        .execute("UPDATE batches SET next_sync_at = NULL")
        .await;
    assert_eq!(worker.tick().await.failed, 1);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE sync_failures = 2")
            .await,
        1
    );
    // ElevenLabs back: the next sync succeeds and resets the count.
    sim.clear_faults();
    app.db
        .execute("UPDATE batches SET next_sync_at = NULL")
        .await;
    let report = worker.tick().await;
    assert_eq!((report.synced, report.failed), (1, 0), "{report:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE sync_failures = 0 AND last_synced_at IS NOT NULL")
            .await,
        1
    );
}

async fn cancel_is_idempotent_and_retry_waits_for_the_end(backend: Backend) {
    let app = app_with_step(backend, 60_000).await;
    let (token, _, group, batch) = launched(&app).await;
    let sim = sim(&app);
    let base = format!("/api/groups/{group}/batch-status/{batch}");
    app.post(&format!("{base}/retry"), Some(&token), json!({}))
        .await
        .assert_error(
            409,
            "El batch aún está en curso; espera a que termine para reintentar",
        );
    sim.clear_requests();
    let cancelled = app
        .post(&format!("{base}/cancel"), Some(&token), json!({}))
        .await;
    cancelled.assert_ok(200, "Batch cancelado exitosamente");
    assert_eq!(cancelled.body["data"]["status"], "cancelled");
    assert_eq!(cancelled.body["data"]["status_counts"]["cancelled"], 4);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE status = 'cancelled' AND is_final = TRUE")
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status = 'cancelled'")
            .await,
        4
    );
    // Again, and through the alias: nothing more is sent to ElevenLabs.
    app.post(&format!("{base}/cancel"), Some(&token), json!({}))
        .await
        .assert_ok(200, "El batch ya estaba cancelado");
    app.post(
        &format!("/api/batch-calls/{batch}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_ok(200, "El batch ya estaba cancelado");
    let cancels = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/cancel"))
        .count();
    assert_eq!(cancels, 1);
    // The sync leaves a cancelled batch alone.
    let worker = SyncWorker::with_owner(&app.state, "w");
    assert_eq!(worker.tick().await.claimed, 0);
}

async fn retry_calls_the_failed_recipients_again(backend: Backend) {
    let app = app_with_step(backend, 40).await;
    let (token, _, _, batch) = launched(&app).await;
    let worker = SyncWorker::with_owner(&app.state, "w");
    sync_until_final(&app, &worker, &batch).await;
    assert_eq!(status_of(&app, "+573138539159").await, "failed");
    let completed_before = app
        .db
        .scalar("SELECT COUNT(*) FROM call_records WHERE status = 'completed'")
        .await;
    assert_eq!(completed_before, 2);
    // A finished batch cannot be cancelled.
    app.post(
        &format!("/api/batch-calls/{batch}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_error(409, "El batch ya terminó y no se puede cancelar");

    let sim = sim(&app);
    sim.clear_requests();
    let retried = app
        .post(
            &format!("/api/batch-calls/{batch}/retry"),
            Some(&token),
            json!({}),
        )
        .await;
    retried.assert_ok(200, "Reintento del batch iniciado exitosamente");
    assert_eq!(retried.body["data"]["is_final"], false);
    let retries = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/retry"))
        .count();
    assert_eq!(retries, 1);
    sync_until_final(&app, &worker, &batch).await;
    // The simulator completes a retried call; the completed ones stay as they were.
    assert_eq!(status_of(&app, "+573138539159").await, "completed");
    assert_eq!(status_of(&app, "+573138539151").await, "completed");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE failure_reason IS NOT NULL")
            .await,
        0
    );
}

async fn two_workers_never_sync_one_batch_at_once(backend: Backend) {
    let app = app_with_step(backend, 60_000).await;
    let (token, id, _, _) = launched(&app).await;
    // More batches: three more groups launched.
    for n in 0..3 {
        let group = group_id(
            &app,
            &token,
            json!({"name": format!("Otro {n}"), "agentId": SIM_AGENT_COBRANZA,
                   "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
        )
        .await;
        let reply = app
            .post(
                &format!("/api/groups/{group}/call"),
                Some(&token),
                json!({"userId": id}),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let store = app.store().clone();
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    // Eight claimers at the same instant: every batch goes to exactly one.
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim_batches(&format!("owner-{n}"), until, 2)
                .await
                .expect("claim")
                .into_iter()
                .map(|b| b.id)
                .collect::<Vec<_>>()
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("task"));
    }
    claimed.sort_unstable();
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    claimed.dedup();
    assert_eq!(claimed.len(), 4, "a batch claimed twice");
    // A worker of another instance finds nothing to do while the leases live.
    let other = SyncWorker::with_owner(&app.state, "instance-b");
    assert_eq!(other.tick().await.claimed, 0);
    // An instance that crashed: its leases expire and another takes over.
    app.db
        .execute("UPDATE batches SET lease_expires_at = '2000-01-01T00:00:00Z' WHERE lease_owner = 'owner-0'")
        .await;
    let expired = app
        .db
        .scalar("SELECT COUNT(*) FROM batches WHERE lease_owner = 'owner-0'")
        .await;
    let report = other.tick().await;
    assert_eq!(report.claimed as i64, expired, "{report:?}");
    assert_eq!(report.synced as i64, expired);
    // The crashed owner, waking up, can no longer write.
    let first = app.db.scalar("SELECT MIN(id) FROM batches").await;
    let snapshot = marcador::store::sync::BatchSnapshot {
        status: "failed".into(),
        total_calls_scheduled: 0,
        total_calls_dispatched: 0,
        total_calls_finished: 0,
        last_updated_at_unix: None,
        scheduled_time_unix: None,
        raw: json!({}),
        recipients: Vec::new(),
    };
    assert_eq!(
        store
            .apply_batch_snapshot("owner-0", first, &snapshot)
            .await
            .expect("apply"),
        None
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE status = 'failed'")
            .await,
        0
    );
}

async fn a_timed_out_submit_is_found_by_name_or_given_up(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.elevenlabs_timeout_secs = 1;
        c.simulator_step_ms = 60_000;
    })
    .await;
    let (token, id) = app.admin().await;
    let group = group_id(
        &app,
        &token,
        json!({"name": "Lento", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let sim = sim(&app);
    sim.inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 2500).times(1));
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": id}),
        )
        .await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown'")
            .await,
        1
    );
    // Whether or not the slow request got through, ElevenLabs holds a batch of that name.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    if sim.batch_count() == 0 {
        submit_elsewhere(
            &app,
            &call_name_today("Lento"),
            &[
                "+573138539151",
                "+573138539152",
                "+573138539158",
                "+573138539159",
            ],
        )
        .await;
    }
    let worker = SyncWorker::with_owner(&app.state, "w");
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted' AND elevenlabs_batch_id LIKE 'btcal_%' AND last_synced_at IS NOT NULL")
            .await,
        1
    );
    let group_now = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(
        group_now.body["data"]["batchCallStats"]["hasBeenCalled"],
        true
    );

    // A submit that never reached ElevenLabs: given up after a while, its calls failed.
    let other = group_id(
        &app,
        &token,
        json!({"name": "Perdido", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    sim.inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 2500).times(1));
    let reply = app
        .post(
            &format!("/api/groups/{other}/call"),
            Some(&token),
            json!({"userId": id}),
        )
        .await;
    assert_eq!(reply.status, 502);
    // Its name never appears at ElevenLabs, and it is old now.
    app.db
        .execute("UPDATE batches SET name = 'nunca enviado', created_at = '2000-01-01T00:00:00Z' WHERE submit_state = 'unknown'")
        .await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'not_submitted' AND status = 'failed' AND is_final = TRUE")
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar(&format!("SELECT COUNT(*) FROM call_records WHERE group_id = {other} AND status = 'failed' AND failure_reason IS NOT NULL"))
            .await,
        4
    );
    // Nobody was called: the clients are pending and uncalled again.
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM clients WHERE group_id = {other} AND status = 'pending'"
            ))
            .await,
        4
    );
    let uncalled = app
        .get(
            &format!("/api/groups/{other}/uncalled-clients"),
            Some(&token),
        )
        .await;
    assert_eq!(uncalled.body["pagination"]["total"], 4, "{}", uncalled.text);
}

/// The name a launch of `group` gets today (the groups here are in Bogotá's time zone).
fn call_name_today(group: &str) -> String {
    format!(
        "Llamada {group} - {}",
        chrono::Utc::now()
            .with_timezone(&chrono_tz::America::Bogota)
            .format("%d/%m/%Y")
    )
}

/// Submits a batch straight to the simulator, as another group's launch would.
async fn submit_elsewhere(app: &TestApp, name: &str, phones: &[&str]) -> String {
    app.state
        .elevenlabs
        .submit_batch(&SubmitBatch {
            call_name: name.into(),
            agent_id: SIM_AGENT_COBRANZA.into(),
            agent_phone_number_id: marcador::elevenlabs::simulator::SIM_PHONE_ASSIGNED.into(),
            scheduled_time_unix: None,
            recipients: phones
                .iter()
                .map(|p| OutboundRecipient {
                    id: None,
                    phone_number: (*p).into(),
                    conversation_initiation_client_data: None,
                })
                .collect(),
        })
        .await
        .expect("submitted")
        .id
}

async fn a_same_named_batch_of_other_people_is_not_taken_for_an_unverified_submit(
    backend: Backend,
) {
    let app = app_with_step(backend, 60_000).await;
    let (token, id) = app.admin().await;
    let group = group_id(
        &app,
        &token,
        json!({"name": "Cartera", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let sim = sim(&app);
    // A gateway error: the submit may or may not have been created (here it was not).
    sim.inject(
        Fault::status(
            "POST",
            "/v1/convai/batch-calling/submit",
            504,
            json!({"detail": "gateway"}),
        )
        .times(1),
    );
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(&token),
            json!({"userId": id}),
        )
        .await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(sim.batch_count(), 0);
    let name = call_name_today("Cartera");
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND name = '{name}'"
            ))
            .await,
        1
    );
    // Another owner's group of the same name launched the same day, same agent:
    // same name at ElevenLabs, other people (and one with as many people).
    submit_elsewhere(&app, &name, &["+573009990001", "+573009990002"]).await;
    submit_elsewhere(
        &app,
        &name,
        &[
            "+573138539151",
            "+573138539152",
            "+573138539158",
            "+573009990003",
        ],
    )
    .await;
    let worker = SyncWorker::with_owner(&app.state, "w");
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 0, "{report:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND elevenlabs_batch_id IS NULL")
            .await,
        1,
        "still unverified: neither batch is ours"
    );
    // Even long past the give-up time: a lookalike may be ours, so it is never
    // given up on (that would allow a relaunch while it may be dialling).
    app.db
        .execute("UPDATE batches SET created_at = '2000-01-01T00:00:00Z', next_sync_at = NULL")
        .await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 0, "{report:?}");
    assert_eq!(
        app.db
            .scalar(
                "SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND is_final = FALSE"
            )
            .await,
        1
    );
    // Ours, when it does show up, is found.
    let ours = submit_elsewhere(
        &app,
        &name,
        &[
            "+573138539159",
            "+573138539158",
            "+573138539152",
            "+573138539151",
        ],
    )
    .await;
    app.db
        .execute("UPDATE batches SET next_sync_at = NULL")
        .await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(
        app.db
            .scalar(&format!("SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted' AND elevenlabs_batch_id = '{ours}'"))
            .await,
        1
    );
}

/// A write transaction held open on the test's own connection, as a webhook
/// being merged holds one.
enum HeldWrite {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl HeldWrite {
    async fn begin(app: &TestApp, backend: Backend) -> HeldWrite {
        use sqlx::Connection;
        match backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                HeldWrite::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
                sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
                HeldWrite::Postgres(conn)
            }
        }
    }

    async fn execute(&mut self, sql: &str) {
        match self {
            HeldWrite::Sqlite(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
            HeldWrite::Postgres(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
        }
        .expect(sql);
    }
}

async fn a_webhook_merged_during_a_sync_is_not_overwritten_by_it(backend: Backend) {
    let app = app_with_step(backend, 3_000).await;
    let (_, _, _, batch) = launched(&app).await;
    const PHONE: &str = "+573138539151";
    // Wait until ElevenLabs has Ana's call in progress, and what it is called.
    let deadline = Instant::now() + Duration::from_secs(20);
    let conversation = loop {
        assert!(Instant::now() < deadline, "the call never started");
        let remote = app.state.elevenlabs.get_batch(&batch).await.unwrap();
        let ana = remote
            .recipients
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.phone_number.as_deref() == Some(PHONE))
            .expect("Ana is in the batch");
        if ana.status == "in_progress" {
            break ana
                .conversation_id
                .expect("a call in progress has a conversation");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The webhook says it completed, and is still being written when the sync runs.
    let mut webhook = HeldWrite::begin(&app, backend).await;
    webhook
        .execute(&format!(
            "UPDATE call_records SET status = 'completed', conversation_id = '{conversation}'
             WHERE phone_e164 = '{PHONE}'"
        ))
        .await;
    let worker = SyncWorker::with_owner(&app.state, "w");
    let tick = tokio::spawn(async move { worker.tick().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    webhook.execute("COMMIT").await;
    let report = tick.await.unwrap();
    assert_eq!(report.synced, 1, "{report:?}");
    // The batch's view (still in progress) lags behind the webhook: it stays completed.
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM call_records WHERE phone_e164 = '{PHONE}' AND status = 'completed' AND conversation_id = '{conversation}'"
            ))
            .await,
        1
    );
}

/// Opens the batch's event stream; it must answer 200.
async fn open_stream(app: &TestApp, token: &str, group: i64, batch: &str) -> reqwest::Response {
    let response = app
        .client
        .get(app.url(&format!("/api/groups/{group}/batch-status/{batch}/stream")))
        .bearer_auth(token)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    response
}

/// Reads the stream's first event, a `status-update`.
async fn first_event(response: &mut reqwest::Response) {
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("a first event")
        .expect("readable")
        .expect("not ended yet");
    assert!(String::from_utf8_lossy(&first).contains("event: status-update"));
}

/// The stream ends within a few polls (one a second), with no further progress sent.
async fn assert_stream_ends(response: &mut reqwest::Response) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the stream went on");
        match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Ok(Ok(Some(chunk))) => {
                let text = String::from_utf8_lossy(&chunk).into_owned();
                assert!(!text.contains("status-update"), "{text}");
            }
            Err(_) => {}
        }
    }
}

async fn the_stream_ends_when_its_group_is_deleted(backend: Backend) {
    let app = app_with_step(backend, 600_000).await;
    let (token, _, group, batch) = launched(&app).await;
    let mut response = open_stream(&app, &token, group, &batch).await;
    first_event(&mut response).await;
    let deleted = app
        .delete(&format!("/api/groups/{group}"), Some(&token))
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_stream_ends(&mut response).await;
    // And it cannot be opened again.
    let again = app
        .get(
            &format!("/api/groups/{group}/batch-status/{batch}/stream"),
            Some(&token),
        )
        .await;
    assert_eq!(again.status, 404);
}

async fn the_stream_ends_when_its_token_is_revoked(backend: Backend) {
    let app = app_with_step(backend, 600_000).await;
    let (token, _, group, batch) = launched(&app).await;
    let mut response = open_stream(&app, &token, group, &batch).await;
    first_event(&mut response).await;
    // Another session changes the password: the stream's token is revoked.
    let (other, _) = crate::helpers::token_and_id(
        &app.login("admin@example.com", crate::helpers::PASSWORD)
            .await,
    );
    app.put(
        "/api/auth/change-password",
        Some(&other),
        json!({"currentPassword": crate::helpers::PASSWORD, "newPassword": "new password 1"}),
    )
    .await
    .assert_ok(200, "Contraseña actualizada exitosamente");
    assert_stream_ends(&mut response).await;
    let again = app
        .get(
            &format!("/api/groups/{group}/batch-status/{batch}/stream"),
            Some(&token),
        )
        .await;
    again.assert_error(401, "Token revocado. Inicia sesión de nuevo");
}

async fn the_stream_reports_progress_and_the_end(backend: Backend) {
    let app = app_with_step(backend, 100).await;
    let (token, _, group, batch) = launched(&app).await;
    let mut response = open_stream(&app, &token, group, &batch).await;
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let syncing = {
        let state = app.state.clone();
        tokio::spawn(async move {
            let worker = SyncWorker::with_owner(&state, "w");
            for _ in 0..300 {
                worker.tick().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !text.contains("event: batch-completed") {
        assert!(Instant::now() < deadline, "no end event: {text}");
        // The worker only syncs due batches: keep them due.
        app.db
            .execute("UPDATE batches SET next_sync_at = NULL")
            .await;
        match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => break,
            Ok(Err(err)) => panic!("stream broke: {err}"),
            Err(_) => {}
        }
    }
    syncing.abort();
    assert!(text.contains("event: status-update"), "{text}");
    assert!(text.contains("event: batch-completed"), "{text}");
    let updates: Vec<Value> = text
        .split("\n\n")
        .filter(|e| e.contains("event: status-update"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(updates.len() >= 2, "{text}");
    assert_eq!(updates[0]["batchId"], batch.as_str());
    assert_eq!(updates[0]["total"], 4);
    let end = text
        .split("\n\n")
        .find(|e| e.contains("event: batch-completed"))
        .and_then(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .expect("end data");
    assert_eq!(end["finished"], 4);
    assert_eq!(end["status"], "completed");
    // The stream is closed after the end.
    let rest = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await;
    assert!(matches!(rest, Ok(Ok(None))), "{rest:?}");
}

async fn the_worker_runs_in_the_background(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.simulator_step_ms = 40;
        c.sync_interval_secs = 1;
    })
    .await;
    let (_, _, _, batch) = launched(&app).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = app
            .db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE elevenlabs_batch_id = '{batch}' AND is_final = TRUE"
            ))
            .await;
        if done == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background sync never finished the batch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status IN ('completed', 'failed', 'voicemail')")
            .await,
        4
    );
}

async fn calls_told_by_webhook_are_not_read_again(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.simulator_step_ms = 40;
        c.simulator_webhooks = true;
    })
    .await;
    let (_, _, _, batch) = launched(&app).await;
    // The simulator's webhooks fill the calls first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .db
        .scalar("SELECT COUNT(*) FROM call_records WHERE transcript IS NOT NULL OR failure_reason IS NOT NULL")
        .await
        < 4
    {
        assert!(Instant::now() < deadline, "webhooks never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sim = sim(&app);
    sim.clear_requests();
    let worker = SyncWorker::with_owner(&app.state, "w");
    sync_until_final(&app, &worker, &batch).await;
    let reads: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/convai/conversations/"))
        .map(|r| r.path)
        .collect();
    // Only the failed call (no transcript in its webhook) may be read.
    assert!(reads.len() <= 1, "{reads:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE status = 'completed' AND call_successful IS NOT NULL")
            .await,
        2
    );
}
