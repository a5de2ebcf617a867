//! API.md §5 and the seed: `POST /api/groups/:id/call`, and §8 (do-not-call).

use marcador::elevenlabs::simulator::{
    Fault, FaultAction, SIM_AGENT_COBRANZA, SIM_AGENT_RECORDATORIO, SIM_PHONE_ASSIGNED,
    SIM_PHONE_FREE, Simulator,
};
use marcador::store::IdempotencyClaim;
use serde_json::{Value, json};

use crate::groups::{b64, group_id};
use crate::helpers::{
    Backend, Reply, TestApp, TestDb, both_backends, spawn_app, spawn_app_with, start, test_config,
};

both_backends!(
    launch_answers_like_the_seed_and_stores_batch_and_calls,
    elevenlabs_receives_e164_numbers_variables_and_the_schema_it_expects,
    user_id_must_be_a_positive_integer,
    unknown_or_foreign_group_is_not_found,
    group_without_agent_or_clients_is_refused,
    user_must_exist_and_users_act_only_for_themselves,
    schedule_must_be_future_and_within_thirty_days,
    phone_number_comes_from_body_group_or_elevenlabs_and_is_saved,
    no_usable_phone_number_is_refused,
    agent_that_cannot_be_checked_is_refused,
    agent_variables_must_be_present_for_every_recipient,
    do_not_call_numbers_are_excluded_and_counted,
    nobody_left_to_call_is_refused,
    large_group_is_split_into_batches_of_ten_thousand,
    concurrent_launches_give_one_batch_and_one_conflict,
    launching_again_within_the_window_is_a_conflict,
    idempotency_key_replays_the_first_answer,
    concurrent_launches_with_any_keys_create_one_batch,
    elevenlabs_errors_leave_no_batch_and_a_clear_error,
    elevenlabs_timeout_is_recorded_for_reconciliation_not_retried,
    a_submit_that_may_have_reached_elevenlabs_blocks_relaunch_until_verified,
    a_key_retried_after_a_partial_launch_replays_the_answer,
    a_key_is_given_back_when_nothing_reached_elevenlabs,
    a_launch_stopped_half_way_is_resumed_with_only_uncalled,
    only_uncalled_calls_the_clients_added_since,
    concurrent_only_uncalled_launches_give_one_batch,
    an_only_uncalled_launch_whose_list_went_stale_is_a_conflict,
    a_part_accepted_but_not_confirmed_is_reconciled_by_the_sync,
    a_part_that_cannot_be_written_is_never_sent,
    a_later_part_that_cannot_be_written_is_never_sent,
    do_not_call_list_is_managed_by_admins,
    a_restarted_server_never_reuses_the_simulators_batch_ids,
    a_batch_id_already_stored_is_a_clear_error_that_leaves_nothing,
    a_later_part_with_a_taken_id_names_the_parts_that_started,
);

const CSV: &str = "nombre,telefono,monto,email\nAna,3138539151,150000,ana@example.com\nLuis,3138539152,2000,\nMaría,+57 313 853 9153,99,\n";

fn sim(app: &TestApp) -> Simulator {
    app.state.simulator.clone().expect("simulator mode")
}

/// A group with the debt-collection agent and three clients.
async fn ready_group(app: &TestApp, token: &str) -> i64 {
    ready_group_named(app, token, "Cobranza").await
}

/// [`ready_group`] under another name (several in one test).
async fn ready_group_named(app: &TestApp, token: &str, name: &str) -> i64 {
    group_id(
        app,
        token,
        json!({"name": name, "agentId": SIM_AGENT_COBRANZA, "variables": {"empresa": "ACME", "monto": "0"},
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await
}

async fn call(app: &TestApp, token: &str, group: i64, body: Value) -> Reply {
    app.post(&format!("/api/groups/{group}/call"), Some(token), body)
        .await
}

/// A group of `rows` clients with the debt-collection agent.
pub(crate) async fn long_group(app: &TestApp, token: &str, name: &str, rows: usize) -> i64 {
    let csv = crate::groups::long_csv(rows);
    group_id(
        app,
        token,
        json!({"name": name, "agentId": SIM_AGENT_COBRANZA, "base64": b64(csv.as_bytes()), "document_name": "c.csv"}),
    )
    .await
}

/// From now on the database refuses to `event` (INSERT or UPDATE) a batch row
/// for which `condition` holds, as a full disk would: the storage failures of
/// a launch, on demand. [`allow_batches`] ends it.
async fn refuse_batches(app: &TestApp, backend: Backend, event: &str, condition: &str) {
    app.db
        .execute(&match backend {
            Backend::Sqlite => format!(
                "CREATE TRIGGER refuse_batches BEFORE {event} ON batches WHEN {condition}
                 BEGIN SELECT RAISE(ABORT, 'disco lleno'); END"
            ),
            Backend::Postgres => format!(
                "CREATE FUNCTION refuse_batches() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF {condition} THEN RAISE EXCEPTION 'disco lleno'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER refuse_batches BEFORE {event} ON batches
                 FOR EACH ROW EXECUTE FUNCTION refuse_batches()"
            ),
        })
        .await;
}

async fn allow_batches(app: &TestApp, backend: Backend) {
    app.db
        .execute(match backend {
            Backend::Sqlite => "DROP TRIGGER refuse_batches",
            Backend::Postgres => "DROP TRIGGER refuse_batches ON batches",
        })
        .await;
}

pub(crate) fn submits(sim: &Simulator) -> Vec<Value> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/convai/batch-calling/submit")
        .filter_map(|r| r.body)
        .collect()
}

async fn launch_answers_like_the_seed_and_stores_batch_and_calls(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin_id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": admin_id, "agentPhoneNumberId": null, "scheduledTimeUnix": null}),
    )
    .await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let data = &reply.body["data"];
    let batch_id = data["batchId"].as_str().unwrap();
    assert!(
        batch_id.starts_with("btcal_") && batch_id.len() == 34,
        "{batch_id}"
    );
    assert_eq!(data["groupId"], group);
    assert_eq!(data["groupName"], "Cobranza");
    assert_eq!(data["agentId"], SIM_AGENT_COBRANZA);
    assert_eq!(data["recipientsCount"], 3);
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::America::Bogota)
        .format("%d/%m/%Y");
    assert_eq!(data["callName"], format!("Llamada Cobranza - {today}"));
    let batch = &data["batchData"];
    assert_eq!(batch["id"], batch_id);
    assert_eq!(batch["name"], data["callName"]);
    assert_eq!(batch["status"], "pending");
    assert_eq!(batch["agent_id"], SIM_AGENT_COBRANZA);
    assert_eq!(batch["recipients"][0]["phone_number"], "+573138539151");
    assert!(batch["recipients"][0]["recipient_id"].is_string());
    assert_eq!(data["batchIds"], json!([batch_id]));
    assert_eq!(data["batchStatus"], "pending");
    assert_eq!(data["phoneNumberId"], SIM_PHONE_ASSIGNED);
    assert_eq!(data["scheduledTimeUnix"], Value::Null);
    assert_eq!(data["totalClientsInGroup"], 3);
    assert_eq!(data["excludedClients"], 0);
    assert_eq!(
        data["excluded"],
        json!({"invalidPhone": 0, "doNotCall": 0, "duplicate": 0})
    );

    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted'")
            .await,
        1
    );
    assert_eq!(app.db.scalar(&format!("SELECT COUNT(*) FROM batches WHERE elevenlabs_batch_id = '{batch_id}' AND created_by = {admin_id}")).await, 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records WHERE status = 'pending' AND client_id IS NOT NULL").await, 3);
    let group_now = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(
        group_now.body["data"]["batchCallStats"]["hasBeenCalled"],
        true
    );
    assert_eq!(
        group_now.body["data"]["phoneNumberId"], SIM_PHONE_ASSIGNED,
        "the chosen number is saved"
    );
}

fn openapi_validator(schema: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/elevenlabs_openapi.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["$ref"] = json!(format!("#/components/schemas/{schema}"));
    jsonschema::validator_for(&doc).expect("schema compiles")
}

fn assert_matches_schema(schema: &str, instance: &Value) {
    let validator = openapi_validator(schema);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{instance}");
}

async fn elevenlabs_receives_e164_numbers_variables_and_the_schema_it_expects(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin_id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": admin_id})).await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let sent = submits(&sim);
    assert_eq!(sent.len(), 1);
    let body = &sent[0];
    assert_matches_schema(
        "Body_Submit_a_batch_call_request__v1_convai_batch_calling_submit_post",
        body,
    );
    assert_eq!(body["call_name"], reply.body["data"]["callName"]);
    assert_eq!(body["agent_id"], SIM_AGENT_COBRANZA);
    assert_eq!(body["agent_phone_number_id"], SIM_PHONE_ASSIGNED);
    assert!(
        body.as_object()
            .unwrap()
            .contains_key("scheduled_time_unix"),
        "sent explicitly"
    );
    assert_eq!(body["scheduled_time_unix"], Value::Null);
    let numbers: Vec<&str> = body["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phone_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["+573138539151", "+573138539152", "+573138539153"]);
    let ana = &body["recipients"][0];
    let vars = &ana["conversation_initiation_client_data"]["dynamic_variables"];
    assert_eq!(
        vars["monto"], "150000",
        "the client's column overrides the group default"
    );
    assert_eq!(vars["empresa"], "ACME", "group defaults are kept");
    assert_eq!(vars["name"], "Ana");
    assert_eq!(vars["phone_number"], "+573138539151");
    assert_eq!(vars["email"], "ana@example.com");
    assert_eq!(vars["group_name"], "Cobranza");
    assert_eq!(vars["client_id"], ana["id"]);
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.api_key.as_deref() == Some("simulator-local-key"))
    );
    // The simulator's answer fits ElevenLabs' own schema too.
    let answer = reply.body["data"]["batchData"].clone();
    let mut without_ours = answer.clone();
    without_ours.as_object_mut().unwrap().remove("recipients");
    assert_matches_schema("BatchCallResponse", &without_ours);
}

async fn user_id_must_be_a_positive_integer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let group = ready_group(&app, &token).await;
    for body in [
        json!({}),
        json!({"userId": null}),
        json!({"userId": 0}),
        json!({"userId": "abc"}),
        json!({"userId": -3}),
        // Not an object at all, or other fields of the wrong type: userId is still checked first.
        json!(null),
        json!([1]),
        json!("userId"),
        json!({"agentPhoneNumberId": 123}),
    ] {
        call(&app, &token, group, body)
            .await
            .assert_error(400, "ID de usuario es requerido en el body de la petición");
    }
    // Check 1 comes before check 2.
    call(&app, &token, 999, json!({}))
        .await
        .assert_error(400, "ID de usuario es requerido en el body de la petición");
}

async fn unknown_or_foreign_group_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (ana, ana_id) = app.user(&admin, "ana").await;
    let group = ready_group(&app, &admin).await;
    call(&app, &ana, group, json!({"userId": ana_id}))
        .await
        .assert_error(404, "Grupo no encontrado");
    call(&app, &admin, 999, json!({"userId": 1}))
        .await
        .assert_error(404, "Grupo no encontrado");
    app.delete(&format!("/api/groups/{group}"), Some(&admin))
        .await
        .assert_ok(200, "Grupo eliminado exitosamente");
    call(&app, &admin, group, json!({"userId": 1}))
        .await
        .assert_error(404, "Grupo no encontrado");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 0);
}

async fn group_without_agent_or_clients_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let no_agent = group_id(
        &app,
        &token,
        json!({"name": "a", "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    call(&app, &token, no_agent, json!({"userId": id}))
        .await
        .assert_error(
            400,
            "El grupo no tiene un agente asignado. Por favor, asigna un agente al crear el grupo.",
        );
    let no_clients = group_id(
        &app,
        &token,
        json!({"name": "b", "agentId": SIM_AGENT_COBRANZA}),
    )
    .await;
    call(&app, &token, no_clients, json!({"userId": id}))
        .await
        .assert_error(400, "El grupo no tiene clientes asignados para llamar");
    assert!(submits(&sim(&app)).is_empty());
}

async fn user_must_exist_and_users_act_only_for_themselves(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, admin_id) = app.admin().await;
    let (ana, ana_id) = app.user(&admin, "ana").await;
    let group = ready_group(&app, &ana).await;
    call(&app, &ana, group, json!({"userId": 999}))
        .await
        .assert_error(404, "Usuario no encontrado");
    call(&app, &ana, group, json!({"userId": admin_id}))
        .await
        .assert_error(403, "No puedes iniciar llamadas en nombre de otro usuario");
    // An admin may launch on a user's behalf.
    call(&app, &admin, group, json!({"userId": ana_id}))
        .await
        .assert_ok(
            200,
            "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
        );
    let (_, luis_id) = app.user(&admin, "luis").await;
    app.delete(&format!("/api/users/{luis_id}"), Some(&admin))
        .await
        .assert_ok(200, "Usuario desactivado exitosamente");
    let other = group_id(&app, &admin, json!({"name": "otro", "agentId": SIM_AGENT_COBRANZA, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"})).await;
    call(&app, &admin, other, json!({"userId": luis_id}))
        .await
        .assert_error(404, "Usuario no encontrado");
}

async fn schedule_must_be_future_and_within_thirty_days(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let now = chrono::Utc::now().timestamp();
    call(
        &app,
        &token,
        group,
        json!({"userId": id, "scheduledTimeUnix": now - 3600}),
    )
    .await
    .assert_error(400, "scheduledTimeUnix debe ser una fecha futura");
    call(
        &app,
        &token,
        group,
        json!({"userId": id, "scheduledTimeUnix": now + 31 * 86400}),
    )
    .await
    .assert_error(400, "scheduledTimeUnix no puede superar 30 días");
    let sim = sim(&app);
    sim.clear_requests();
    let at = now + 3600;
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": id, "scheduledTimeUnix": at}),
    )
    .await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(reply.body["data"]["scheduledTimeUnix"], at);
    assert_eq!(submits(&sim)[0]["scheduled_time_unix"], at);
}

async fn phone_number_comes_from_body_group_or_elevenlabs_and_is_saved(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.duplicate_window_secs = 0).await;
    let (token, id) = app.admin().await;
    let sim = sim(&app);
    // The agent's own number is preferred when neither body nor group names one.
    let group = ready_group(&app, &token).await;
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    assert_eq!(reply.body["data"]["phoneNumberId"], SIM_PHONE_ASSIGNED);
    // The body wins over the group, and is saved.
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": id, "agentPhoneNumberId": SIM_PHONE_FREE}),
    )
    .await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(reply.body["data"]["phoneNumberId"], SIM_PHONE_FREE);
    let saved = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(saved.body["data"]["phoneNumberId"], SIM_PHONE_FREE);
    // Then the group's number is used.
    sim.clear_requests();
    call(&app, &token, group, json!({"userId": id})).await;
    assert_eq!(submits(&sim)[0]["agent_phone_number_id"], SIM_PHONE_FREE);
    // An agent with no number of its own gets the first outbound one.
    let other = group_id(&app, &token, json!({"name": "r", "agentId": SIM_AGENT_RECORDATORIO, "base64": b64(CSV.as_bytes()), "document_name": "c.csv"})).await;
    let reply = call(&app, &token, other, json!({"userId": id})).await;
    assert_eq!(reply.body["data"]["phoneNumberId"], SIM_PHONE_ASSIGNED);
}

async fn no_usable_phone_number_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.elevenlabs_cache_secs = 0).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let message = "No hay números de teléfono disponibles. Por favor, configura un phoneNumberId.";
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": id, "agentPhoneNumberId": "phnum_unknown"}),
    )
    .await;
    reply.assert_error(400, message);
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("phnum_unknown")
    );
    let sim = sim(&app);
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/phone-numbers",
        500,
        json!({"detail": "down"}),
    ));
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_error(400, message);
    assert!(reply.body["error"].is_string());
    sim.clear_faults();
    sim.set_phone_numbers(vec![]);
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_error(400, message);
    assert!(submits(&sim).is_empty());
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 0);
}

async fn agent_that_cannot_be_checked_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.elevenlabs_cache_secs = 0).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    sim.inject(Fault::status(
        "GET",
        &format!("/v1/convai/agents/{SIM_AGENT_COBRANZA}"),
        404,
        json!({"detail": {"code": "agent_not_found", "message": "Agent not found"}}),
    ));
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_error(400, "No se pudo verificar la configuración del agente");
    assert!(submits(&sim).is_empty());
}

async fn agent_variables_must_be_present_for_every_recipient(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    // The debt agent needs {{name}} and {{monto}}: Luis has no amount and the group no default.
    let csv = "nombre,telefono,monto\nAna,3138539151,10\nLuis,3138539152,\n";
    let group = group_id(&app, &token, json!({"name": "g", "agentId": SIM_AGENT_COBRANZA, "base64": b64(csv.as_bytes()), "document_name": "c.csv"})).await;
    // A number chosen for this launch is not kept when the launch fails.
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": id, "agentPhoneNumberId": SIM_PHONE_FREE}),
    )
    .await;
    reply.assert_error(400, "Faltan variables requeridas en el mensaje del agente");
    assert_eq!(reply.body["errorCode"], "MISSING_VARIABLES");
    let unchanged = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(unchanged.body["data"]["phoneNumberId"], Value::Null);
    let detail = reply.body["error"].as_str().unwrap();
    assert!(
        detail.contains("monto") && !detail.contains("name"),
        "{detail}"
    );
    assert!(submits(&sim(&app)).is_empty());
    // A group default fills the gap.
    app.put(
        &format!("/api/groups/{group}"),
        Some(&token),
        json!({"variables": {"monto": "consultar"}}),
    )
    .await
    .assert_ok(200, "Grupo actualizado exitosamente");
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_ok(200, "Llamadas iniciadas exitosamente para el grupo \"g\"");
}

async fn do_not_call_numbers_are_excluded_and_counted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    app.post(
        "/api/do-not-call",
        Some(&token),
        json!({"phone": "313 853 9152", "reason": "pidió no ser llamado"}),
    )
    .await
    .assert_ok(201, "Número agregado a la lista de no llamar");
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(reply.body["data"]["recipientsCount"], 2);
    assert_eq!(reply.body["data"]["excludedClients"], 1);
    assert_eq!(reply.body["data"]["excluded"]["doNotCall"], 1);
    assert_eq!(reply.body["data"]["totalClientsInGroup"], 3);
    let sent = submits(&sim);
    assert!(
        sent[0]["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["phone_number"] != "+573138539152")
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 2);
}

async fn nobody_left_to_call_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    for phone in ["+573138539151", "+573138539152", "+573138539153"] {
        app.post("/api/do-not-call", Some(&token), json!({"phone": phone}))
            .await;
    }
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_error(
            400,
            "No se encontraron clientes con números telefónicos válidos en el grupo",
        );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 0);
}

async fn large_group_is_split_into_batches_of_ten_thousand(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = long_group(&app, &token, "Grande", 25_000).await;
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Grande\"",
    );
    let data = &reply.body["data"];
    assert_eq!(data["recipientsCount"], 25_000);
    assert_eq!(data["batchIds"].as_array().unwrap().len(), 3);
    assert_eq!(data["batchId"], data["batchIds"][0]);
    let sent = submits(&sim);
    let sizes: Vec<usize> = sent
        .iter()
        .map(|b| b["recipients"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [10_000, 10_000, 5_000]);
    let name = data["callName"].as_str().unwrap();
    assert_eq!(sent[0]["call_name"], format!("{name} (1/3)"));
    assert_eq!(sent[2]["call_name"], format!("{name} (3/3)"));
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE part_count = 3")
            .await,
        3
    );
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        25_000
    );
}

async fn concurrent_launches_give_one_batch_and_one_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    sim(&app).inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 300));
    let body = json!({"userId": id});
    let (a, b) = tokio::join!(
        call(&app, &token, group, body.clone()),
        call(&app, &token, group, body.clone())
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let conflict = if a.status == 409 { &a } else { &b };
    conflict.assert_error(
        409,
        "Ya se iniciaron llamadas para este grupo hace un momento",
    );
    assert_eq!(submits(&sim(&app)).len(), 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
}

async fn launching_again_within_the_window_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let first = call(&app, &token, group, json!({"userId": id})).await;
    first.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let again = call(&app, &token, group, json!({"userId": id})).await;
    again.assert_error(
        409,
        "Ya se iniciaron llamadas para este grupo hace un momento",
    );
    assert_eq!(again.body["data"]["batchId"], first.body["data"]["batchId"]);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
}

async fn idempotency_key_replays_the_first_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let send = |key: &'static str, body: Value| {
        app.send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .header("idempotency-key", key)
                .json(&body),
        )
    };
    let first = send("launch-1", json!({"userId": id})).await;
    first.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let second = send("launch-1", json!({"userId": id})).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "the same answer, not a new batch");
    assert_eq!(submits(&sim(&app)).len(), 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    send(
        "launch-1",
        json!({"userId": id, "scheduledTimeUnix": chrono::Utc::now().timestamp() + 600}),
    )
    .await
    .assert_error(422, "La clave de idempotencia ya se usó con otra petición");
    // A new key is a new request, not a pass through the double-launch guard.
    send("launch-2", json!({"userId": id})).await.assert_error(
        409,
        "Ya se iniciaron llamadas para este grupo hace un momento",
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
}

/// Twenty launches of one group at once, with no key, one shared key, or a
/// key each: one batch every time, everyone called once. The others get the
/// 409 (or, with the shared key, the first answer replayed).
async fn concurrent_launches_with_any_keys_create_one_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    sim(&app).inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 100));
    for keys in ["none", "shared", "distinct"] {
        let group = ready_group_named(&app, &token, keys).await;
        let launches = (0..20).map(|i| {
            let mut request = app
                .client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .json(&json!({"userId": id}));
            match keys {
                "shared" => request = request.header("idempotency-key", format!("{keys}-1")),
                "distinct" => request = request.header("idempotency-key", format!("{keys}-{i}")),
                _ => {}
            }
            app.send(request)
        });
        let replies = futures::future::join_all(launches).await;
        let launched: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
        let batch = &launched.first().expect("one launch went through").body["data"]["batchId"];
        for reply in &replies {
            match reply.status.as_u16() {
                200 => assert_eq!(&reply.body["data"]["batchId"], batch, "{keys}: a replay"),
                409 => reply.assert_error(
                    409,
                    "Ya se iniciaron llamadas para este grupo hace un momento",
                ),
                other => panic!("{keys}: {other} {}", reply.text),
            }
        }
        if keys != "shared" {
            assert_eq!(launched.len(), 1, "{keys}");
        }
        assert_eq!(
            app.db
                .scalar(&format!(
                    "SELECT COUNT(*) FROM batches WHERE group_id = {group}"
                ))
                .await,
            1,
            "{keys}"
        );
        assert_eq!(
            app.db
                .scalar(&format!(
                    "SELECT COUNT(*) FROM call_records r JOIN batches b ON b.id = r.batch_id WHERE b.group_id = {group}"
                ))
                .await,
            3,
            "{keys}: each client called once"
        );
    }
}

async fn elevenlabs_errors_leave_no_batch_and_a_clear_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    let submit = "/v1/convai/batch-calling/submit";
    let cases: [(u16, Value, Option<u64>, u16, &str); 4] = [
        (
            422,
            json!({"detail": [{"loc": ["body", "recipients", 0, "phone_number"], "msg": "invalid phone", "type": "value_error"}]}),
            None,
            400,
            "INVALID_PHONE",
        ),
        (
            401,
            json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
            None,
            502,
            "ELEVENLABS_UNAUTHORIZED",
        ),
        (
            429,
            json!({"detail": {"code": "concurrent_limit_exceeded", "message": "busy"}}),
            Some(12),
            503,
            "ELEVENLABS_BUSY",
        ),
        (
            500,
            json!({"detail": "internal"}),
            None,
            502,
            "ELEVENLABS_UNAVAILABLE",
        ),
    ];
    for (status, body, retry_after, expected, code) in cases {
        sim.clear_faults();
        sim.clear_requests();
        sim.inject(Fault {
            method: Some("POST".into()),
            path_prefix: submit.into(),
            action: FaultAction::Status {
                status,
                body,
                retry_after,
            },
            times: None,
            skip: None,
        });
        let reply = call(&app, &token, group, json!({"userId": id})).await;
        reply.assert_error(expected, "Error iniciando las llamadas");
        assert_eq!(reply.body["errorCode"], code, "{}", reply.text);
        assert!(reply.body["error"].is_string());
        assert!(!reply.text.contains("simulator-local-key"));
        if status == 429 {
            assert_eq!(reply.headers["retry-after"], "12");
        }
        assert_eq!(
            submits(&sim).len(),
            1,
            "a submit is never retried ({status})"
        );
        assert_eq!(
            app.db.scalar("SELECT COUNT(*) FROM batches").await,
            0,
            "{status}"
        );
        assert_eq!(
            app.db.scalar("SELECT COUNT(*) FROM call_records").await,
            0,
            "{status}"
        );
        // The part was written ahead, then discarded: no trace in the statistics.
        assert_eq!(
            app.db
                .scalar("SELECT COUNT(*) FROM call_stats_hourly")
                .await,
            0,
            "{status}"
        );
        assert_eq!(
            app.db
                .scalar("SELECT COUNT(*) FROM clients WHERE status = 'pending'")
                .await,
            3,
            "{status}"
        );
    }
    // The launch lock is released after a failure: the next attempt goes through.
    sim.clear_faults();
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_ok(
            200,
            "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
        );
}

async fn elevenlabs_timeout_is_recorded_for_reconciliation_not_retried(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.elevenlabs_timeout_secs = 1).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    sim.clear_requests();
    sim.inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 2500).times(1));
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_error(502, "Error iniciando las llamadas");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_UNAVAILABLE");
    assert_eq!(submits(&sim).len(), 1, "never retried blindly");
    // No visible batch, but the attempt is kept for the sync to reconcile.
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted'")
            .await,
        0
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND elevenlabs_batch_id IS NULL").await, 1);
    let group_now = app.get(&format!("/api/groups/{group}"), Some(&token)).await;
    assert_eq!(
        group_now.body["data"]["batchCallStats"]["hasBeenCalled"],
        false
    );
    // Trying again at once would risk dialling twice: refused within the window.
    call(&app, &token, group, json!({"userId": id}))
        .await
        .assert_error(
            409,
            "Ya se iniciaron llamadas para este grupo hace un momento",
        );
}

/// Answers that do not say whether ElevenLabs took the batch (a gateway's 502
/// or 504, a 2xx we cannot read) are kept as unknown for the sync to verify,
/// and nobody can launch the group again until then, whatever the window or
/// the idempotency key.
async fn a_submit_that_may_have_reached_elevenlabs_blocks_relaunch_until_verified(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |c| c.duplicate_window_secs = 0).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    let submit = "/v1/convai/batch-calling/submit";
    let cases = [
        (504, json!({"detail": "gateway timeout"})),
        (502, json!({"detail": "bad gateway"})),
        (200, json!({"unexpected": true})),
    ];
    for (status, body) in cases {
        sim.clear_faults();
        sim.clear_requests();
        sim.inject(Fault::status("POST", submit, status, body).times(1));
        let reply = call(&app, &token, group, json!({"userId": id})).await;
        reply.assert_error(502, "Error iniciando las llamadas");
        assert!(
            reply.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("No lo reintentes todavía")),
            "{status}: {}",
            reply.text
        );
        assert_eq!(
            app.db
                .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND is_final = FALSE")
                .await,
            1,
            "{status}"
        );
        // The window is zero, and a new key does not help: still refused.
        let again = call(&app, &token, group, json!({"userId": id})).await;
        again.assert_error(
            409,
            "Ya se iniciaron llamadas para este grupo hace un momento",
        );
        assert!(
            again.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("verificando")),
            "{}",
            again.text
        );
        let keyed = app
            .send(
                app.client
                    .post(app.url(&format!("/api/groups/{group}/call")))
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("new-{status}"))
                    .json(&json!({"userId": id})),
            )
            .await;
        assert_eq!(keyed.status, 409, "{}", keyed.text);
        assert_eq!(submits(&sim).len(), 1, "{status}: nothing sent again");
        // Once the sync has settled it (here: found not to exist), launching works.
        app.db
            .execute("UPDATE batches SET submit_state = 'not_submitted', status = 'failed', is_final = TRUE WHERE submit_state = 'unknown'")
            .await;
    }
    sim.clear_faults();
    // Attempts given up called nobody: their clients are still uncalled.
    let reply = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(reply.body["data"]["recipientsCount"], 3);
    assert_eq!(reply.body["data"]["excluded"]["alreadyCalled"], 0);
}

/// Part 2 of 2 is refused after part 1 was accepted: the same key must not
/// launch part 1 again; it gets the first answer back.
async fn a_key_retried_after_a_partial_launch_replays_the_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = long_group(&app, &token, "Dos partes", 10_005).await;
    let sim = sim(&app);
    sim.clear_requests();
    let mut busy = Fault::status(
        "POST",
        "/v1/convai/batch-calling/submit",
        429,
        json!({"detail": {"code": "concurrent_limit_exceeded", "message": "busy"}}),
    )
    .after(1)
    .times(1);
    if let FaultAction::Status { retry_after, .. } = &mut busy.action {
        *retry_after = Some(5);
    }
    sim.inject(busy);
    let send = || {
        app.send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .header("idempotency-key", "partial-1")
                .json(&json!({"userId": id})),
        )
    };
    let first = send().await;
    first.assert_error(503, "Error iniciando las llamadas");
    let sent = first.body["data"]["batchIds"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 1, "{}", first.text);
    assert_eq!(submits(&sim).len(), 2);
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        10_000
    );
    // ElevenLabs is free again, and the client retries as told, with its key.
    let retry = send().await;
    assert_eq!(retry.status, 503);
    assert_eq!(
        retry.body, first.body,
        "the first answer, not a second launch"
    );
    assert_eq!(submits(&sim).len(), 2, "part 1 is never sent twice");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        10_000
    );
}

/// Part 2 of 3 is refused: `onlyUncalled` calls the rest, nobody twice, and
/// needs no wait (repeating it finds nobody left).
async fn a_launch_stopped_half_way_is_resumed_with_only_uncalled(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = long_group(&app, &token, "Tres partes", 20_005).await;
    let sim = sim(&app);
    sim.clear_requests();
    sim.inject(
        Fault::status(
            "POST",
            "/v1/convai/batch-calling/submit",
            500,
            json!({"detail": "internal error"}),
        )
        .after(1)
        .times(1),
    );
    let first = call(&app, &token, group, json!({"userId": id})).await;
    first.assert_error(502, "Error iniciando las llamadas");
    let data = &first.body["data"];
    assert_eq!(data["batchIds"].as_array().map(Vec::len), Some(1));
    assert_eq!(data["partsSent"], 1);
    assert_eq!(data["partsTotal"], 3);
    assert!(
        data["resume"]
            .as_str()
            .is_some_and(|r| r.contains("\"onlyUncalled\": true")),
        "{}",
        first.text
    );
    let part_one: std::collections::HashSet<String> = submits(&sim)[0]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phone_number"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(part_one.len(), 10_000);
    // Part 2 (refused) and part 3 (written ahead, never sent) left nothing behind.
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        10_000
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    // The group's status says so too (a crash between parts leaves the same
    // rows: part 1 sent, nothing of the others).
    let status = app
        .get(&format!("/api/groups/{group}/batch-status"), Some(&token))
        .await;
    let launch = &status.body["data"]["launch"];
    assert_eq!(launch["status"], "stopped", "{}", status.text);
    assert_eq!(launch["partsSent"], 1);
    assert_eq!(launch["partsTotal"], 3);
    assert_eq!(launch["uncalledClients"], 10_005);
    assert_eq!(
        launch["message"],
        "El lanzamiento se detuvo tras enviar 1 de 3 partes: quedan 10005 clientes sin llamar. Para llamarlos, inicia las llamadas con \"onlyUncalled\": true (nadie recibe dos llamadas)."
    );

    // At once, without a key: not a double launch, only the 10,005 left.
    sim.clear_requests();
    let rest = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    rest.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Tres partes\"",
    );
    let data = &rest.body["data"];
    assert_eq!(data["recipientsCount"], 10_005);
    assert_eq!(data["totalClientsInGroup"], 20_005);
    assert_eq!(data["excludedClients"], 10_000);
    assert_eq!(
        data["excluded"],
        json!({"invalidPhone": 0, "doNotCall": 0, "duplicate": 0, "alreadyCalled": 10_000})
    );
    let sent = submits(&sim);
    assert_eq!(sent.len(), 2);
    let numbers: Vec<&str> = sent
        .iter()
        .flat_map(|b| b["recipients"].as_array().unwrap())
        .map(|r| r["phone_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers.len(), 10_005);
    assert!(
        numbers.iter().all(|n| !part_one.contains(*n)),
        "{numbers:?}"
    );
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        20_005
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(DISTINCT client_id) FROM call_records")
            .await,
        20_005,
        "every client in exactly one batch"
    );
    let status = app
        .get(&format!("/api/groups/{group}/batch-status"), Some(&token))
        .await;
    assert_eq!(
        status.body["data"]["launch"],
        json!({"status": "complete", "partsSent": 2, "partsTotal": 2}),
        "the resuming launch is the latest, and it is whole"
    );

    // Once more: nobody is left, nothing is sent.
    sim.clear_requests();
    let again = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    again.assert_error(
        400,
        "No se encontraron clientes con números telefónicos válidos en el grupo",
    );
    assert!(
        again.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("20005 clientes ya fueron incluidos")),
        "{}",
        again.text
    );
    assert!(submits(&sim).is_empty());
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 3);
}

/// Clients added after a launch: `onlyUncalled` calls just them; the flag
/// must be a boolean.
async fn only_uncalled_calls_the_clients_added_since(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let first = call(&app, &token, group, json!({"userId": id})).await;
    first.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(
        first.body["data"]["excluded"],
        json!({"invalidPhone": 0, "doNotCall": 0, "duplicate": 0}),
        "the contract's shape when the flag is not used"
    );
    let added = app
        .post(
            &format!("/api/groups/{group}/clients"),
            Some(&token),
            json!({"name": "Nueva", "phone": "3138539160", "monto": "500"}),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
    let sim = sim(&app);
    sim.clear_requests();
    let before = app.db.scalar("SELECT COUNT(*) FROM call_records").await;
    let wrong = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": "sí"}),
    )
    .await;
    wrong.assert_error(400, "JSON inválido en el cuerpo de la petición");
    assert!(submits(&sim).is_empty());
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        before
    );

    let rest = app
        .send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .header("idempotency-key", "nuevos-1")
                .json(&json!({"userId": id, "onlyUncalled": true})),
        )
        .await;
    rest.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(rest.body["data"]["recipientsCount"], 1);
    assert_eq!(rest.body["data"]["excluded"]["alreadyCalled"], 3);
    let sent = submits(&sim);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["recipients"].as_array().map(Vec::len), Some(1));
    assert_eq!(sent[0]["recipients"][0]["phone_number"], "+573138539160");
    let uncalled = app
        .get(
            &format!("/api/groups/{group}/uncalled-clients"),
            Some(&token),
        )
        .await;
    assert_eq!(uncalled.status, 200, "{}", uncalled.text);
    assert_eq!(uncalled.body["pagination"]["total"], 0, "{}", uncalled.text);
}

/// Two `onlyUncalled` launches at once (no window protects them): one batch,
/// one conflict, nobody called twice.
async fn concurrent_only_uncalled_launches_give_one_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    sim(&app).inject(Fault::delay("POST", "/v1/convai/batch-calling/submit", 300));
    let body = json!({"userId": id, "onlyUncalled": true});
    let (a, b) = tokio::join!(
        call(&app, &token, group, body.clone()),
        call(&app, &token, group, body.clone())
    );
    let (launched, other) = if a.status == 200 { (&a, &b) } else { (&b, &a) };
    launched.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    // The other one either met the first under way (409) or, on a slow
    // machine, started after it had finished and found nobody left (400).
    match other.status.as_u16() {
        409 => other.assert_error(
            409,
            "Ya se iniciaron llamadas para este grupo hace un momento",
        ),
        _ => other.assert_error(
            400,
            "No se encontraron clientes con números telefónicos válidos en el grupo",
        ),
    }
    assert_eq!(submits(&sim(&app)).len(), 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 3);
}

/// An `onlyUncalled` launch reads who is uncalled, then waits on ElevenLabs
/// (its phone-number check is slow); meanwhile a plain launch calls everyone. Its list
/// is stale by the time it takes the lock: 409, nobody called twice.
async fn an_only_uncalled_launch_whose_list_went_stale_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    sim(&app).inject(Fault::delay("GET", "/v1/convai/phone-numbers", 1500).times(1));
    let slow = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    );
    let plain = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        call(&app, &token, group, json!({"userId": id})).await
    };
    let (slow, plain) = tokio::join!(slow, plain);
    plain.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    slow.assert_error(
        409,
        "Ya se iniciaron llamadas para este grupo hace un momento",
    );
    assert_eq!(slow.body["data"]["batchId"], plain.body["data"]["batchId"]);
    assert_eq!(submits(&sim(&app)).len(), 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 3);
}

/// ElevenLabs accepts both parts but part 1's confirmation cannot be stored
/// (a trigger refuses it): 500 naming both batches. Part 1 was written before
/// it was sent, so it stays an unverified attempt with its call records: the
/// sync reconciles it, and nobody looks uncalled meanwhile.
async fn a_part_accepted_but_not_confirmed_is_reconciled_by_the_sync(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = long_group(&app, &token, "Dos partes", 10_005).await;
    refuse_batches(
        &app,
        backend,
        "UPDATE",
        "NEW.part_index = 1 AND NEW.submit_state = 'submitted'",
    )
    .await;
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    assert_eq!(reply.body["success"], false);
    assert!(
        !reply.text.contains("disco lleno"),
        "no internals: {}",
        reply.text
    );
    let sent = reply.body["data"]["batchIds"].as_array().cloned();
    assert_eq!(sent.as_ref().map(Vec::len), Some(2), "{}", reply.text);
    assert_eq!(reply.body["data"]["partsSent"], 2);
    assert!(
        reply.body["data"]["resume"]
            .as_str()
            .is_some_and(|r| r.contains("se haya verificado")),
        "wait for the sync first: {}",
        reply.text
    );
    assert_eq!(submits(&sim).len(), 2);
    let pending = "SELECT COUNT(*) FROM clients WHERE status = 'pending'";
    assert_eq!(app.db.scalar(pending).await, 10_000, "part 1's people");
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        10_005
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE part_index = 1 AND submit_state = 'unknown' AND elevenlabs_batch_id IS NULL")
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar(
                "SELECT COUNT(*) FROM batches WHERE part_index = 2 AND submit_state = 'submitted'"
            )
            .await,
        1
    );
    // Its people are not offered as uncalled meanwhile.
    let rest = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    rest.assert_error(
        400,
        "No se encontraron clientes con números telefónicos válidos en el grupo",
    );
    assert_eq!(submits(&sim).len(), 2);

    // The storage is well again. Until the attempt's hold is over the sync
    // leaves it alone; then it finds part 1 at ElevenLabs (same name, same
    // people) and takes its id.
    allow_batches(&app, backend).await;
    let worker = marcador::sync::SyncWorker::with_owner(&app.state, "w");
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 0, "held: {report:?}");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown'")
            .await,
        1
    );
    app.db
        .execute("UPDATE batches SET next_sync_at = NULL WHERE submit_state = 'unknown'")
        .await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(app.db.scalar(pending).await, 0, "in a batch: contacted");
    let first = sent
        .as_ref()
        .and_then(|s| s[0].as_str())
        .unwrap_or_default();
    assert_eq!(
        app.db
            .scalar(&format!("SELECT COUNT(*) FROM batches WHERE part_index = 1 AND submit_state = 'submitted' AND elevenlabs_batch_id = '{first}'"))
            .await,
        1
    );
    let again = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    again.assert_error(
        400,
        "No se encontraron clientes con números telefónicos válidos en el grupo",
    );
    assert_eq!(submits(&sim).len(), 2, "nobody called twice");
}

/// A part that cannot be written ahead is never sent: 500, nothing at
/// ElevenLabs, nothing stored.
async fn a_part_that_cannot_be_written_is_never_sent(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    refuse_batches(&app, backend, "INSERT", "TRUE").await;
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    assert_eq!(reply.body["data"], Value::Null, "{}", reply.text);
    assert!(submits(&sim).is_empty());
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 0);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE status = 'pending'")
            .await,
        3
    );
}

/// Part 2 of 2 cannot be written ahead: it is never sent; part 1 is confirmed,
/// and `onlyUncalled` calls part 2's people later.
async fn a_later_part_that_cannot_be_written_is_never_sent(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = long_group(&app, &token, "Dos partes", 10_005).await;
    refuse_batches(&app, backend, "INSERT", "NEW.part_index = 2").await;
    let sim = sim(&app);
    sim.clear_requests();
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    assert_eq!(submits(&sim).len(), 1, "part 2 never sent");
    let data = &reply.body["data"];
    assert_eq!(
        data["batchIds"].as_array().map(Vec::len),
        Some(1),
        "{}",
        reply.text
    );
    assert_eq!(data["partsSent"], 1);
    assert_eq!(data["partsTotal"], 2);
    assert!(
        data["resume"]
            .as_str()
            .is_some_and(|r| r.contains("\"onlyUncalled\": true (")),
        "{}",
        reply.text
    );
    assert_eq!(
        app.db
            .scalar(
                "SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted' AND part_index = 1"
            )
            .await,
        1
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM call_records").await,
        10_000
    );

    allow_batches(&app, backend).await;
    sim.clear_requests();
    let rest = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    rest.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Dos partes\"",
    );
    assert_eq!(rest.body["data"]["recipientsCount"], 5);
    assert_eq!(submits(&sim).len(), 1);
}

/// A refusal of the first part means nothing exists at ElevenLabs: the key is
/// free for another try.
async fn a_key_is_given_back_when_nothing_reached_elevenlabs(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    let sim = sim(&app);
    sim.inject(
        Fault::status(
            "POST",
            "/v1/convai/batch-calling/submit",
            429,
            json!({"detail": {"code": "concurrent_limit_exceeded", "message": "busy"}}),
        )
        .times(1),
    );
    let send = || {
        app.send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .header("idempotency-key", "again-1")
                .json(&json!({"userId": id})),
        )
    };
    send()
        .await
        .assert_error(503, "Error iniciando las llamadas");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 0);
    send().await.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
}

/// A request that found its key taken reads the key's row next; on
/// PostgreSQL the request holding the key may give it back in between (it was
/// refused before reaching ElevenLabs: another launch of the group got
/// there first), since finding it took no lock. The key is then free and is
/// claimed again, instead of a 500 (`no rows returned`). PostgreSQL only:
/// SQLite's write transaction keeps every claim whole. The pause between the
/// two is a trigger of the test's own; seen once in about ten runs of
/// `instances::concurrent_launches_across_two_instances_create_one_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_back_while_another_request_claims_it_is_claimed_again() {
    let app = spawn_app(Backend::Postgres).await;
    let (token, id) = app.admin().await;
    let group = ready_group(&app, &token).await;
    // An earlier request with the key is in flight.
    let expires = chrono::Utc::now() + chrono::Duration::hours(24);
    let held = app
        .store()
        .claim_idempotency_key(id, "k-1", "an earlier request", expires)
        .await
        .expect("claim");
    assert!(matches!(held, IdempotencyClaim::Claimed));
    // From now on every claim pauses right after its INSERT.
    app.db
        .execute(
            "CREATE FUNCTION pause_claims() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
             CREATE TRIGGER pause_claims AFTER INSERT ON idempotency_keys
             FOR EACH STATEMENT EXECUTE FUNCTION pause_claims()",
        )
        .await;
    let retry = app
        .client
        .post(app.url(&format!("/api/groups/{group}/call")))
        .bearer_auth(&token)
        .header("idempotency-key", "k-1")
        .json(&json!({"userId": id}));
    let (reply, ()) = tokio::join!(app.send(retry), async {
        // The retry found the key taken and is paused...
        let paused = "SELECT COUNT(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event = 'PgSleep'";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app.db.scalar(paused).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim never paused"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // ...when the earlier request gives the key back.
        app.store()
            .release_idempotency_key(id, "k-1")
            .await
            .expect("release");
    });
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    app.db
        .execute("DROP TRIGGER pause_claims ON idempotency_keys")
        .await;
    // The key is the retry's now: the same answer again, one batch.
    let again = app
        .send(
            app.client
                .post(app.url(&format!("/api/groups/{group}/call")))
                .bearer_auth(&token)
                .header("idempotency-key", "k-1")
                .json(&json!({"userId": id})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body, reply.body);
    assert_eq!(submits(&sim(&app)).len(), 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
}

async fn do_not_call_list_is_managed_by_admins(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (user, _) = app.user(&admin, "ana").await;
    app.post(
        "/api/do-not-call",
        Some(&user),
        json!({"phone": "3138539155"}),
    )
    .await
    .assert_error(403, "No tienes permiso para realizar esta acción");
    let added = app
        .post(
            "/api/do-not-call",
            Some(&admin),
            json!({"phone": "(313) 853-9155", "reason": "queja"}),
        )
        .await;
    added.assert_ok(201, "Número agregado a la lista de no llamar");
    assert_eq!(added.body["data"]["phone"], "+573138539155");
    app.post(
        "/api/do-not-call",
        Some(&admin),
        json!({"phone": "+57 313 853 9155"}),
    )
    .await
    .assert_error(409, "El número ya está en la lista de no llamar");
    app.post("/api/do-not-call", Some(&admin), json!({"phone": "123"}))
        .await
        .assert_error(400, "Número de teléfono inválido");
    let list = app.get("/api/do-not-call", Some(&user)).await;
    list.assert_ok(200, "Lista de no llamar obtenida exitosamente");
    assert_eq!(list.body["pagination"]["total"], 1);
    assert_eq!(list.body["data"][0]["reason"], "queja");
    app.delete("/api/do-not-call/%2B573138539155", Some(&user))
        .await
        .assert_error(403, "No tienes permiso para realizar esta acción");
    app.delete("/api/do-not-call/%2B573138539155", Some(&admin))
        .await
        .assert_ok(200, "Número eliminado de la lista de no llamar");
    app.delete("/api/do-not-call/3138539155", Some(&admin))
        .await
        .assert_error(404, "El número no está en la lista de no llamar");
}

/// Another group like [`ready_group`], under another name.
async fn group_named(app: &TestApp, token: &str, name: &str) -> i64 {
    group_id(
        app,
        token,
        json!({"name": name, "agentId": SIM_AGENT_COBRANZA, "variables": {"empresa": "ACME", "monto": "0"},
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await
}

async fn a_restarted_server_never_reuses_the_simulators_batch_ids(backend: Backend) {
    // `cargo run`, launch, stop, start again, launch: each start has a new
    // in-process simulator, the database is the same.
    let db = TestDb::new(backend).await;
    let config = test_config(&db);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = start(db, config.clone(), async {
        let _ = stopped.await;
    })
    .await;
    let (token, id) = first.admin().await;
    let group = ready_group(&first, &token).await;
    let reply = call(&first, &token, group, json!({"userId": id})).await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let first_batch = reply.body["data"]["batchId"].as_str().unwrap().to_owned();
    let _ = stop.send(());
    let TestApp { db, address, .. } = first;
    // The first server is gone before the second starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reqwest::get(format!("{address}/health")).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first server went on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let second = start(db, config, std::future::pending()).await;
    let other = group_named(&second, &token, "Cobranza dos").await;
    let reply = call(&second, &token, other, json!({"userId": id})).await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza dos\"",
    );
    let second_batch = reply.body["data"]["batchId"].as_str().unwrap().to_owned();
    assert_ne!(first_batch, second_batch);
    for batch in [&first_batch, &second_batch] {
        assert!(
            batch.len() == 34
                && batch.starts_with("btcal_")
                && batch[6..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{batch}"
        );
    }
    assert_eq!(
        second
            .db
            .scalar("SELECT COUNT(DISTINCT elevenlabs_batch_id) FROM batches WHERE submit_state = 'submitted'")
            .await,
        2
    );
    assert_eq!(
        second.db.scalar("SELECT COUNT(*) FROM call_records").await,
        6
    );
}

async fn a_batch_id_already_stored_is_a_clear_error_that_leaves_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let first = ready_group(&app, &token).await;
    let taken = call(&app, &token, first, json!({"userId": id})).await;
    taken.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    let taken = taken.body["data"]["batchId"].as_str().unwrap().to_owned();
    let group = group_named(&app, &token, "Cobranza dos").await;
    let before = app
        .db
        .scalar("SELECT COUNT(*) FROM call_stats_hourly")
        .await;

    // ElevenLabs accepts the next batch under an id we already hold.
    let sim = sim(&app);
    sim.force_next_batch_id(&taken);
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_error(502, "Error iniciando las llamadas");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_DUPLICATE_BATCH_ID");
    let error = reply.body["error"].as_str().unwrap();
    assert!(
        error.starts_with("ElevenLabs devolvió un identificador de batch ya registrado")
            && error.contains(&taken),
        "{error}"
    );
    assert!(reply.body.get("data").is_none(), "{}", reply.text);

    // Nothing of the part is kept; the earlier batch is untouched.
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE group_id = {first} AND elevenlabs_batch_id = '{taken}' AND submit_state = 'submitted'"
            ))
            .await,
        1
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 3);
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM call_records WHERE group_id = {group}"
            ))
            .await,
        0
    );
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_stats_hourly")
            .await,
        before
    );
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM clients WHERE group_id = {group} AND status = 'pending'"
            ))
            .await,
        3
    );

    // The group is not held back: launched again, it gets a batch of its own.
    let again = call(&app, &token, group, json!({"userId": id})).await;
    again.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza dos\"",
    );
    assert_ne!(again.body["data"]["batchId"], json!(taken));
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM batches").await, 2);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM call_records").await, 6);
}

async fn a_later_part_with_a_taken_id_names_the_parts_that_started(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let first = ready_group(&app, &token).await;
    let taken = call(&app, &token, first, json!({"userId": id})).await;
    let taken = taken.body["data"]["batchId"].as_str().unwrap().to_owned();
    let group = long_group(&app, &token, "Grande", 10_003).await;
    let sim = sim(&app);
    // Part 1 gets a fresh id, part 2 the one already stored.
    let fresh = format!("btcal_sim{:0>25}", "fresh");
    sim.force_next_batch_id(&fresh);
    sim.force_next_batch_id(&taken);
    let reply = call(&app, &token, group, json!({"userId": id})).await;
    reply.assert_error(502, "Error iniciando las llamadas");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_DUPLICATE_BATCH_ID");
    let data = &reply.body["data"];
    assert_eq!(data["batchIds"], json!([fresh]), "{}", reply.text);
    assert_eq!(data["partsSent"], 1);
    assert_eq!(data["partsTotal"], 2);
    assert!(data["resume"].as_str().unwrap().contains("onlyUncalled"));
    // Part 1 is a batch like any other; part 2 left nothing.
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE group_id = {group} AND elevenlabs_batch_id = '{fresh}' AND submit_state = 'submitted'"
            ))
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE group_id = {group}"
            ))
            .await,
        1
    );
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM call_records WHERE group_id = {group}"
            ))
            .await,
        10_000
    );
    // The rest is called with onlyUncalled (a new key-less launch needs no window).
    let rest = call(
        &app,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    rest.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Grande\"",
    );
    assert_eq!(rest.body["data"]["recipientsCount"], 3);
}
