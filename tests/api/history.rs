//! API.md §6: call history (JSON, CSV, XLSX), call statistics and conversations.
//!
//! Calls are launched through the API (simulator) and their outcomes are then
//! written straight into the database, as the sync or the webhook would.

use std::io::Cursor;

use calamine::Reader;
use marcador::elevenlabs::simulator::{Fault, SIM_AGENT_COBRANZA, Simulator};
use serde_json::{Value, json};

use crate::groups::{b64, group_id};
use crate::helpers::{Backend, Reply, TestApp, both_backends, spawn_app, spawn_app_with};

both_backends!(
    history_pages_newest_first_with_the_true_total,
    history_filters_by_status_outcome_batch_period_and_search,
    history_rejects_bad_parameters_with_clear_messages,
    history_and_stats_of_another_users_group_are_not_found,
    history_downloads_as_csv_with_bom_variables_and_data_collection,
    history_downloads_as_xlsx,
    csv_export_reads_every_chunk_of_a_large_history,
    deep_history_pages_are_slices_of_the_whole_history,
    stats_give_exact_figures_computed_in_sql,
    stats_for_a_period_agree_between_rollup_and_raw_paths,
    stats_of_a_group_never_called_are_zero,
    conversation_is_fetched_once_then_served_from_the_database,
    conversation_of_another_user_or_unknown_is_not_found,
    conversation_upstream_errors_are_mapped,
);

/// Ten clients whose phone numbers end in 0..9 (`+57313853915d`).
const CSV: &str = "nombre,telefono,monto\n\
Ana,3138539150,100\nLuis,3138539151,200\nMaría,3138539152,300\nJosé,3138539153,400\n\
Lucía,3138539154,500\nPedro,3138539155,600\nSofía,3138539156,700\nAndrés,3138539157,800\n\
Valentina,3138539158,900\nTomás,3138539159,1000\n";

fn phone(digit: u32) -> String {
    format!("+57313853915{digit}")
}

fn sim(app: &TestApp) -> Simulator {
    app.state.simulator.clone().expect("simulator mode")
}

/// A group of ten clients, launched: returns (group id, ElevenLabs batch id).
async fn launched_group(app: &TestApp, token: &str, user_id: i64) -> (i64, String) {
    let group = group_id(
        app,
        token,
        json!({"name": "Historial", "agentId": SIM_AGENT_COBRANZA, "timezone": "America/Bogota",
               "base64": b64(CSV.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(token),
            json!({"userId": user_id}),
        )
        .await;
    reply.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Historial\"",
    );
    let batch = reply.body["data"]["batchId"].as_str().unwrap().to_owned();
    (group, batch)
}

/// Sets the outcome of the call to the number ending in `digit`.
async fn set_call(app: &TestApp, digit: u32, set: &str) {
    app.db
        .execute(&format!(
            "UPDATE call_records SET {set} WHERE phone_e164 = '{}'",
            phone(digit)
        ))
        .await;
}

/// The outcomes every figure below is computed from:
/// 0–3 completed (30, 60, 90, 120 s; success, success, failure, success),
/// 4–5 failed, 6 voicemail (12 s, failure), 7 cancelled, 8–9 pending.
/// Created 2025-11-02T15:00Z (0–4), 2025-11-03T03:30Z (5–7; still 2 November
/// in Bogotá), 2025-11-04T12:00Z (8–9).
async fn seed_outcomes(app: &TestApp) {
    let day1 = "created_at = '2025-11-02T15:00:00+00:00'";
    let day2 = "created_at = '2025-11-03T03:30:00+00:00'";
    let day3 = "created_at = '2025-11-04T12:00:00+00:00'";
    for (digit, duration, outcome) in [
        (0, 30, "success"),
        (1, 60, "success"),
        (2, 90, "failure"),
        (3, 120, "success"),
    ] {
        set_call(app, digit, &format!(
            "status = 'completed', duration_secs = {duration}, call_successful = '{outcome}', \
             started_at = '2025-11-02T15:0{}:00+00:00', conversation_id = 'conv_seed_{digit}', {day1}",
            digit + 1
        ))
        .await;
    }
    set_call(app, 4, &format!("status = 'failed', {day1}")).await;
    set_call(app, 5, &format!("status = 'failed', {day2}")).await;
    set_call(
        app,
        6,
        &format!(
            "status = 'voicemail', duration_secs = 12, call_successful = 'failure', \
             started_at = '2025-11-03T03:31:00+00:00', {day2}"
        ),
    )
    .await;
    set_call(app, 7, &format!("status = 'cancelled', {day2}")).await;
    set_call(app, 8, day3).await;
    set_call(app, 9, day3).await;
    // An unrelated write must not disturb the rollups.
    app.db
        .execute("UPDATE call_records SET recipient_id = recipient_id")
        .await;
}

fn phones(reply: &Reply) -> Vec<String> {
    reply.body["data"]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["phoneNumber"].as_str().unwrap().to_owned())
        .collect()
}

async fn history(app: &TestApp, token: &str, group: i64, query: &str) -> Reply {
    app.get(
        &format!("/api/groups/{group}/call-history?{query}"),
        Some(token),
    )
    .await
}

async fn history_pages_newest_first_with_the_true_total(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, batch) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;

    let reply = history(&app, &token, group, "page=2&limit=3").await;
    reply.assert_ok(200, "Historial de llamadas obtenido exitosamente");
    assert_eq!(phones(&reply), [phone(6), phone(5), phone(4)]);
    let pagination = json!({"page": 2, "limit": 3, "total": 10, "totalPages": 4,
                            "hasNextPage": true, "hasPrevPage": true});
    assert_eq!(reply.body["pagination"], pagination);
    assert_eq!(reply.body["data"]["pagination"], pagination);
    let data = &reply.body["data"];
    assert_eq!(data["group"]["id"], group);
    let call = &data["calls"][0];
    assert_eq!(call["batchId"], batch.as_str());
    assert_eq!(call["clientName"], "Sofía");
    assert_eq!(call["status"], "voicemail");
    assert_eq!(call["durationSecs"], 12);
    assert_eq!(call["callSuccessful"], "failure");
    assert_eq!(call["startedAt"], "2025-11-03T03:31:00Z");
    assert!(call["clientId"].is_i64() && call["id"].is_i64() && call["updatedAt"].is_string());
    for key in ["conversationId", "transcriptSummary"] {
        assert!(call.get(key).is_some(), "{key}");
    }
    let batches = data["batchCalls"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["batchId"], batch.as_str());
    assert_eq!(batches[0]["totalRecipients"], 10);
    assert_eq!(batches[0]["completedCalls"], 4);
    assert_eq!(batches[0]["failedCalls"], 2);
    assert_eq!(batches[0]["voicemailCalls"], 1);
    assert_eq!(batches[0]["successfulCalls"], 3);
    assert_eq!(batches[0]["successRate"], 75.0);

    let first = history(&app, &token, group, "").await;
    assert_eq!(first.body["pagination"]["limit"], 20);
    assert_eq!(phones(&first), (0..10).rev().map(phone).collect::<Vec<_>>());
    let beyond = history(&app, &token, group, "page=9&limit=3").await;
    beyond.assert_ok(200, "Historial de llamadas obtenido exitosamente");
    assert_eq!(beyond.body["data"]["calls"], json!([]));
    assert_eq!(beyond.body["pagination"]["total"], 10);
}

async fn history_filters_by_status_outcome_batch_period_and_search(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, batch) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;

    let cases: Vec<(String, Vec<u32>)> = vec![
        ("status=completed".into(), vec![3, 2, 1, 0]),
        ("status=FAILED".into(), vec![5, 4]),
        ("callSuccessful=success".into(), vec![3, 1, 0]),
        ("callSuccessful=failure".into(), vec![6, 2]),
        ("callSuccessful=unknown".into(), vec![9, 8, 7, 5, 4]),
        ("status=completed&callSuccessful=failure".into(), vec![2]),
        (format!("batchId={batch}"), (0..10).rev().collect()),
        ("batchId=btcal_desconocido".into(), vec![]),
        // Dates are days in the group's time zone (Bogotá, UTC−5), `to` inclusive.
        (
            "from=2025-11-02&to=2025-11-02".into(),
            (0..8).rev().collect(),
        ),
        ("from=2025-11-03".into(), vec![9, 8]),
        ("to=2025-11-01".into(), vec![]),
        // RFC 3339 instants, both inclusive.
        (
            "from=2025-11-03T03:30:00Z&to=2025-11-04T12:00:00Z".into(),
            vec![9, 8, 7, 6, 5],
        ),
        (
            "from=2025-11-02T10:00:00-05:00&to=2025-11-02T15:00:00%2B00:00".into(),
            vec![4, 3, 2, 1, 0],
        ),
        ("search=MAR".into(), vec![2]),
        ("search=luc".into(), vec![4]),
        ("search=853%209156".into(), vec![6]),
        ("search=%25".into(), vec![]),
        ("search=Andrés&status=cancelled".into(), vec![7]),
    ];
    for (query, expected) in cases {
        let reply = history(&app, &token, group, &query).await;
        reply.assert_ok(200, "Historial de llamadas obtenido exitosamente");
        let want: Vec<String> = expected.iter().map(|d| phone(*d)).collect();
        assert_eq!(phones(&reply), want, "{query}");
        assert_eq!(reply.body["pagination"]["total"], expected.len(), "{query}");
    }
    // The total is the true total, also when filtered and paged.
    let reply = history(&app, &token, group, "callSuccessful=unknown&limit=2&page=3").await;
    assert_eq!(phones(&reply), [phone(4)]);
    assert_eq!(reply.body["pagination"]["total"], 5);
    assert_eq!(reply.body["pagination"]["totalPages"], 3);
}

async fn history_rejects_bad_parameters_with_clear_messages(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, _) = launched_group(&app, &token, admin).await;
    let from =
        "Fecha 'from' inválida. Usa YYYY-MM-DD o RFC 3339 (por ejemplo 2025-11-02T10:00:00Z)";
    let to = "Fecha 'to' inválida. Usa YYYY-MM-DD o RFC 3339 (por ejemplo 2025-11-02T10:00:00Z)";
    let cases = [
        ("from=2025-13-01", from),
        ("from=ayer", from),
        ("from=2025-11-02T25:00:00Z", from),
        ("to=02/11/2025", to),
        (
            "from=2025-11-03&to=2025-11-02",
            "La fecha 'from' debe ser anterior a 'to'",
        ),
        (
            "status=colgada",
            "Estado inválido. Usa uno de: pending, dispatched, initiated, in_progress, completed, failed, cancelled, voicemail",
        ),
        (
            "callSuccessful=quizas",
            "callSuccessful inválido. Usa success, failure o unknown",
        ),
        ("format=pdf", "Formato inválido. Usa csv o xlsx"),
        ("page=abc", "Parámetros de consulta inválidos"),
        ("limit=1.5", "Parámetros de consulta inválidos"),
    ];
    for (query, message) in cases {
        let reply = history(&app, &token, group, query).await;
        reply.assert_error(400, message);
        assert_eq!(reply.headers["content-type"], "application/json", "{query}");
    }
    let long = "x".repeat(201);
    history(&app, &token, group, &format!("search={long}"))
        .await
        .assert_error(400, "La búsqueda no puede superar 200 caracteres");
    for query in [
        "from=ayer",
        "to=2025-02-30",
        "from=2025-11-03&to=2025-11-02",
    ] {
        let reply = app
            .get(
                &format!("/api/groups/{group}/call-stats?{query}"),
                Some(&token),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{query}: {}", reply.text);
        assert_eq!(reply.body["success"], false);
    }
    app.get("/api/groups/abc/call-history", Some(&token))
        .await
        .assert_error(400, "ID inválido");
    app.get(&format!("/api/groups/{group}/call-stats"), None)
        .await
        .assert_error(401, "Token de autenticación requerido");
}

async fn history_and_stats_of_another_users_group_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_token, admin) = app.admin().await;
    let (group, _) = launched_group(&app, &admin_token, admin).await;
    let (user_token, _) = app.user(&admin_token, "otra").await;
    for path in [
        format!("/api/groups/{group}/call-history"),
        format!("/api/groups/{group}/call-history?format=csv"),
        format!("/api/groups/{group}/call-stats"),
        "/api/groups/999999/call-stats".to_owned(),
    ] {
        app.get(&path, Some(&user_token))
            .await
            .assert_error(404, "Grupo no encontrado");
    }
    // A deleted group has no history either.
    app.delete(&format!("/api/groups/{group}"), Some(&admin_token))
        .await
        .assert_ok(200, "Grupo eliminado exitosamente");
    app.get(
        &format!("/api/groups/{group}/call-stats"),
        Some(&admin_token),
    )
    .await
    .assert_error(404, "Grupo no encontrado");
}

async fn download(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("download")
}

fn parse_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .expect("a UTF-8 BOM first");
    csv::Reader::from_reader(text)
        .records()
        .map(|r| r.expect("csv row").iter().map(str::to_owned).collect())
        .collect()
}

fn csv_header(bytes: &[u8]) -> Vec<String> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap();
    csv::Reader::from_reader(text)
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect()
}

const HEADER: [&str; 15] = [
    "id",
    "batchId",
    "clientId",
    "clientName",
    "phoneNumber",
    "status",
    "conversationId",
    "durationSecs",
    "callSuccessful",
    "transcriptSummary",
    "startedAt",
    "createdAt",
    "updatedAt",
    "monto",
    "dataCollection.fecha_pago",
];

async fn history_downloads_as_csv_with_bom_variables_and_data_collection(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, batch) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;
    set_call(
        &app,
        0,
        r#"data_collection = '{"fecha_pago": {"data_collection_id": "fecha_pago", "value": "viernes", "rationale": "dijo"}}'"#,
    )
    .await;

    let response = download(
        &app,
        &token,
        &format!("/api/groups/{group}/call-history?format=csv&status=completed&limit=1"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with(&format!(
            "attachment; filename=\"historial-llamadas-grupo-{group}-"
        )) && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(csv_header(&bytes), HEADER);
    // All pages (limit does not apply), the same filter, newest first.
    let rows = parse_csv(&bytes);
    assert_eq!(rows.len(), 4);
    let by_phone = |digit: u32| {
        rows.iter()
            .find(|r| r[4] == phone(digit))
            .unwrap_or_else(|| panic!("row {digit}"))
    };
    let ana = by_phone(0);
    assert_eq!(ana[1], batch);
    assert_eq!(ana[3], "Ana");
    assert_eq!(ana[5], "completed");
    assert_eq!(ana[6], "conv_seed_0");
    assert_eq!(ana[7], "30");
    assert_eq!(ana[8], "success");
    assert_eq!(ana[10], "2025-11-02T15:01:00Z");
    assert_eq!(ana[11], "2025-11-02T15:00:00Z");
    assert_eq!(ana[13], "100");
    assert_eq!(ana[14], "viernes");
    let maria = by_phone(2);
    assert_eq!(maria[3], "María");
    assert_eq!(maria[14], "");
    let order: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    assert_eq!(order, [phone(3), phone(2), phone(1), phone(0)]);

    // Without a filter: every call.
    let all = download(
        &app,
        &token,
        &format!("/api/groups/{group}/call-history?format=CSV"),
    )
    .await;
    assert_eq!(parse_csv(&all.bytes().await.unwrap()).len(), 10);
}

async fn history_downloads_as_xlsx(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, _) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;
    set_call(
        &app,
        1,
        r#"data_collection = '{"fecha_pago": {"value": "lunes"}}'"#,
    )
    .await;
    let response = download(
        &app,
        &token,
        &format!("/api/groups/{group}/call-history?format=xlsx&from=2025-11-02&to=2025-11-02"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.ends_with(".xlsx\""), "{disposition}");
    let bytes = response.bytes().await.unwrap().to_vec();
    let mut workbook = calamine::Xlsx::new(Cursor::new(bytes)).expect("a valid xlsx");
    let sheet = workbook
        .worksheet_range("Llamadas")
        .expect("sheet Llamadas");
    let rows: Vec<Vec<String>> = sheet
        .rows()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect();
    assert_eq!(rows[0], HEADER);
    assert_eq!(rows.len(), 1 + 8);
    let luis = rows.iter().find(|r| r[4] == phone(1)).expect("Luis");
    assert_eq!(luis[3], "Luis");
    assert_eq!(luis[7], "60");
    assert_eq!(luis[13], "200");
    assert_eq!(luis[14], "lunes");
    let sofia = rows.iter().find(|r| r[4] == phone(6)).expect("Sofía");
    assert_eq!(sofia[3], "Sofía");
}

/// A group of `size` clients, all called in one launch.
async fn large_launched_group(app: &TestApp, token: &str, admin: i64, size: usize) -> i64 {
    let mut csv = String::from("nombre,telefono,monto\n");
    for i in 0..size {
        csv.push_str(&format!("Cliente {i},31{}{:07},{i}\n", i % 6, i));
    }
    let group = group_id(
        app,
        token,
        json!({"name": "Grande", "agentId": SIM_AGENT_COBRANZA,
               "base64": b64(csv.as_bytes()), "document_name": "c.csv"}),
    )
    .await;
    let reply = app
        .post(
            &format!("/api/groups/{group}/call"),
            Some(token),
            json!({"userId": admin}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    group
}

async fn csv_export_reads_every_chunk_of_a_large_history(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let group = large_launched_group(&app, &token, admin, 4_500).await;
    // Several creation instants, so that chunks end inside runs of equal created_at.
    app.db
        .execute(
            "UPDATE call_records SET created_at = '2025-11-02T15:00:00+00:00' WHERE id % 3 = 0",
        )
        .await;
    let response = download(
        &app,
        &token,
        &format!("/api/groups/{group}/call-history?format=csv"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let rows = parse_csv(&response.bytes().await.unwrap());
    assert_eq!(rows.len(), 4_500);
    let ids: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4_500, "every call exactly once");
    let keys: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r[11].clone(), r[0].parse().unwrap()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "newest first");
    let stats = app
        .get(&format!("/api/groups/{group}/call-stats"), Some(&token))
        .await;
    assert_eq!(stats.body["data"]["summary"]["totalRecipients"], 4_500);
    let page = history(&app, &token, group, "page=45&limit=100").await;
    assert_eq!(page.body["pagination"]["total"], 4_500);
    assert_eq!(page.body["data"]["calls"].as_array().unwrap().len(), 100);
}

/// Deep pages start from the hour the rollup says they fall in: every page,
/// plain and filtered, must still be exactly its slice of the full history.
async fn deep_history_pages_are_slices_of_the_whole_history(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let group = large_launched_group(&app, &token, admin, 4_500).await;
    // Calls spread over four hours (two instants in one of them), some failed.
    app.db
        .execute(
            "UPDATE call_records SET created_at = CASE id % 5
                WHEN 0 THEN '2025-11-02T15:00:00+00:00'
                WHEN 1 THEN '2025-11-02T15:40:00+00:00'
                WHEN 2 THEN '2025-11-01T08:00:00+00:00'
                WHEN 3 THEN '2025-10-30T23:59:59+00:00'
                ELSE created_at END",
        )
        .await;
    app.db
        .execute("UPDATE call_records SET status = 'failed' WHERE id % 7 = 0")
        .await;
    for filter in ["", "status=failed&", "from=2025-10-01&to=2025-11-02&"] {
        let whole = download(
            &app,
            &token,
            &format!("/api/groups/{group}/call-history?{filter}format=csv"),
        )
        .await;
        assert_eq!(whole.status(), 200);
        let expected: Vec<i64> = parse_csv(&whole.bytes().await.unwrap())
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect();
        assert!(expected.len() > 500, "{filter}: {}", expected.len());
        let mut paged = Vec::new();
        for page in 1..=expected.len().div_ceil(200) {
            let reply = history(
                &app,
                &token,
                group,
                &format!("{filter}page={page}&limit=200"),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(reply.body["pagination"]["total"], expected.len());
            paged.extend(
                reply.body["data"]["calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_i64().unwrap()),
            );
        }
        assert_eq!(paged, expected, "{filter}");
    }
}

async fn stats(app: &TestApp, token: &str, group: i64, query: &str) -> Reply {
    let reply = app
        .get(
            &format!("/api/groups/{group}/call-stats?{query}"),
            Some(token),
        )
        .await;
    reply.assert_ok(200, "Estadísticas obtenidas exitosamente");
    reply
}

async fn stats_give_exact_figures_computed_in_sql(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, batch) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;
    let reply = stats(&app, &token, group, "").await;
    let data = &reply.body["data"];
    assert_eq!(data["group"]["id"], group);
    assert_eq!(
        data["summary"],
        json!({
            "totalBatchCalls": 1, "totalRecipients": 10, "totalCompletedCalls": 4,
            "totalFailedCalls": 2, "totalVoicemailCalls": 1, "totalFinishedCalls": 7,
            "successRate": 75.0, "answerRate": 57.1, "voicemailRate": 14.3,
            "avgDurationSecs": 62.4, "totalDurationSecs": 312, "uniqueClientsReached": 4,
            "lastCallAt": "2025-11-03T03:31:00Z"
        })
    );
    assert_eq!(
        data["statusBreakdown"],
        json!([
            {"status": "completed", "count": 4, "avgDurationSecs": 75.0},
            {"status": "failed", "count": 2, "avgDurationSecs": null},
            {"status": "pending", "count": 2, "avgDurationSecs": null},
            {"status": "cancelled", "count": 1, "avgDurationSecs": null},
            {"status": "voicemail", "count": 1, "avgDurationSecs": 12.0},
        ])
    );
    assert_eq!(
        data["outcomeBreakdown"],
        json!([{"callSuccessful": "success", "count": 3}, {"callSuccessful": "failure", "count": 2}])
    );
    // Days in Bogotá: 03:30Z on 3 November is still 2 November there.
    assert_eq!(
        data["daily"],
        json!([
            {"date": "2025-11-02", "calls": 8, "completed": 4, "successful": 3},
            {"date": "2025-11-04", "calls": 2, "completed": 0, "successful": 0},
        ])
    );
    let recent = data["recentBatchCalls"].as_array().unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["batchId"], batch.as_str());
    assert_eq!(data["period"]["timezone"], "America/Bogota");

    // Figures follow later writes (the rollups are kept by triggers).
    set_call(
        &app,
        8,
        "status = 'completed', duration_secs = 100, call_successful = 'success'",
    )
    .await;
    app.db
        .execute(&format!(
            "DELETE FROM call_records WHERE phone_e164 = '{}'",
            phone(9)
        ))
        .await;
    let after = stats(&app, &token, group, "").await;
    let summary = &after.body["data"]["summary"];
    assert_eq!(summary["totalRecipients"], 9);
    assert_eq!(summary["totalCompletedCalls"], 5);
    assert_eq!(summary["successRate"], 80.0);
    assert_eq!(summary["answerRate"], 62.5);
    assert_eq!(summary["avgDurationSecs"], 68.7);
    assert_eq!(summary["uniqueClientsReached"], 5);
}

async fn stats_for_a_period_agree_between_rollup_and_raw_paths(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, _) = launched_group(&app, &token, admin).await;
    seed_outcomes(&app).await;
    // Whole hours (the rollup answers) and odd seconds (grouped from the calls).
    let by_day = stats(&app, &token, group, "from=2025-11-02&to=2025-11-02").await;
    let by_instant = stats(
        &app,
        &token,
        group,
        "from=2025-11-02T14:59:59Z&to=2025-11-03T03:30:00Z",
    )
    .await;
    let expected = json!({
        "totalBatchCalls": 0, "totalRecipients": 8, "totalCompletedCalls": 4,
        "totalFailedCalls": 2, "totalVoicemailCalls": 1, "totalFinishedCalls": 7,
        "successRate": 75.0, "answerRate": 57.1, "voicemailRate": 14.3,
        "avgDurationSecs": 62.4, "totalDurationSecs": 312, "uniqueClientsReached": 4,
        "lastCallAt": "2025-11-03T03:31:00Z"
    });
    for reply in [&by_day, &by_instant] {
        let data = &reply.body["data"];
        assert_eq!(data["summary"], expected, "{}", reply.text);
        assert_eq!(
            data["daily"],
            json!([{"date": "2025-11-02", "calls": 8, "completed": 4, "successful": 3}])
        );
    }
    for key in ["statusBreakdown", "outcomeBreakdown"] {
        assert_eq!(
            by_day.body["data"][key], by_instant.body["data"][key],
            "{key}"
        );
    }
    assert_eq!(
        by_day.body["data"]["period"]["from"],
        "2025-11-02T05:00:00Z"
    );
    assert_eq!(
        by_day.body["data"]["period"]["until"],
        "2025-11-03T05:00:00Z"
    );
    let later = stats(&app, &token, group, "from=2025-11-04T12:00:00.000001Z").await;
    assert_eq!(later.body["data"]["summary"]["totalRecipients"], 0);
    assert_eq!(later.body["data"]["summary"]["lastCallAt"], Value::Null);
}

async fn stats_of_a_group_never_called_are_zero(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let group = group_id(&app, &token, json!({"name": "Sin llamadas"})).await;
    let reply = stats(&app, &token, group, "").await;
    let data = &reply.body["data"];
    assert_eq!(
        data["summary"],
        json!({
            "totalBatchCalls": 0, "totalRecipients": 0, "totalCompletedCalls": 0,
            "totalFailedCalls": 0, "totalVoicemailCalls": 0, "totalFinishedCalls": 0,
            "successRate": 0.0, "answerRate": 0.0, "voicemailRate": 0.0,
            "avgDurationSecs": 0.0, "totalDurationSecs": 0, "uniqueClientsReached": 0,
            "lastCallAt": null
        })
    );
    for key in [
        "statusBreakdown",
        "outcomeBreakdown",
        "recentBatchCalls",
        "daily",
    ] {
        assert_eq!(data[key], json!([]), "{key}");
    }
    let reply = history(&app, &token, group, "").await;
    reply.assert_ok(200, "Historial de llamadas obtenido exitosamente");
    assert_eq!(reply.body["data"]["calls"], json!([]));
    assert_eq!(reply.body["data"]["batchCalls"], json!([]));
    assert_eq!(reply.body["pagination"]["total"], 0);
}

/// Waits for the simulator to finish the call to `digit` and stores its
/// conversation id on the call record, as the sync would. Returns the id.
async fn finished_conversation(app: &TestApp, batch: &str, digit: u32) -> String {
    for _ in 0..200 {
        let remote = app.state.elevenlabs.get_batch(batch).await.expect("batch");
        let recipient = remote
            .recipients
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.phone_number.as_deref() == Some(phone(digit).as_str()))
            .expect("recipient");
        if recipient.status == "completed" {
            let id = recipient.conversation_id.expect("conversation id");
            set_call(
                app,
                digit,
                &format!("status = 'completed', conversation_id = '{id}'"),
            )
            .await;
            return id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the simulated call did not finish");
}

fn conversation_fetches(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v1/convai/conversations/"))
        .count()
}

async fn fast_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |c| c.simulator_step_ms = 1).await
}

async fn conversation_is_fetched_once_then_served_from_the_database(backend: Backend) {
    let app = fast_app(backend).await;
    let (token, admin) = app.admin().await;
    let (group, batch) = launched_group(&app, &token, admin).await;
    let id = finished_conversation(&app, &batch, 2).await;

    let first = app
        .get(&format!("/api/conversations/{id}"), Some(&token))
        .await;
    first.assert_ok(200, "Conversación obtenida exitosamente");
    let data = &first.body["data"];
    assert_eq!(data["conversationId"], id.as_str());
    assert_eq!(data["groupId"], group);
    assert_eq!(data["batchId"], batch.as_str());
    assert_eq!(data["clientName"], "María");
    assert_eq!(data["phoneNumber"], phone(2));
    let transcript = data["transcript"].as_array().expect("transcript");
    assert_eq!(transcript.len(), 2);
    assert_eq!(transcript[0]["role"], "agent");
    assert_eq!(transcript[1]["message"], "Sí, pago el viernes.");
    // Fields still empty are filled from the conversation.
    assert_eq!(data["callSuccessful"], "success");
    assert_eq!(data["durationSecs"], 44);
    assert_eq!(
        data["transcriptSummary"],
        "María se compromete a pagar el viernes."
    );
    assert_eq!(data["dataCollection"]["fecha_pago"]["value"], "viernes");
    assert!(data["fetchedAt"].is_string());
    assert_eq!(conversation_fetches(&sim(&app)), 1);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM call_records WHERE transcript IS NOT NULL AND conversation_fetched_at IS NOT NULL")
            .await,
        1
    );

    // Later requests are served from the database, even with ElevenLabs down.
    sim(&app).inject(Fault::status(
        "GET",
        "/v1/convai/conversations",
        500,
        json!({"detail": "down"}),
    ));
    let second = app
        .get(&format!("/api/conversations/{id}"), Some(&token))
        .await;
    second.assert_ok(200, "Conversación obtenida exitosamente");
    assert_eq!(second.body["data"]["transcript"], data["transcript"]);
    assert_eq!(conversation_fetches(&sim(&app)), 1);
    // The filled outcome reaches the statistics.
    let stats = stats(&app, &token, group, "").await;
    assert_eq!(stats.body["data"]["summary"]["totalCompletedCalls"], 1);
    assert_eq!(stats.body["data"]["summary"]["successRate"], 100.0);
}

async fn conversation_of_another_user_or_unknown_is_not_found(backend: Backend) {
    let app = fast_app(backend).await;
    let (token, admin) = app.admin().await;
    let (_, batch) = launched_group(&app, &token, admin).await;
    let id = finished_conversation(&app, &batch, 1).await;
    let (other, _) = app.user(&token, "otro").await;
    for (path, who) in [
        (format!("/api/conversations/{id}"), &other),
        ("/api/conversations/conv_no_existe".to_owned(), &token),
        ("/api/conversations/..%2Fetc".to_owned(), &token),
    ] {
        app.get(&path, Some(who))
            .await
            .assert_error(404, "Conversación no encontrada");
    }
    assert_eq!(conversation_fetches(&sim(&app)), 0);
    app.get(&format!("/api/conversations/{id}"), None)
        .await
        .assert_error(401, "Token de autenticación requerido");
}

async fn conversation_upstream_errors_are_mapped(backend: Backend) {
    let app = fast_app(backend).await;
    let (token, admin) = app.admin().await;
    let (_, batch) = launched_group(&app, &token, admin).await;
    let id = finished_conversation(&app, &batch, 0).await;
    let sim = sim(&app);
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/conversations",
        503,
        json!({"detail": "down"}),
    ));
    let reply = app
        .get(&format!("/api/conversations/{id}"), Some(&token))
        .await;
    reply.assert_error(502, "No se pudo obtener la conversación de ElevenLabs");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_UNAVAILABLE");
    sim.clear_faults();
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/conversations",
        429,
        json!({"detail": "busy"}),
    ));
    let reply = app
        .get(&format!("/api/conversations/{id}"), Some(&token))
        .await;
    reply.assert_error(503, "No se pudo obtener la conversación de ElevenLabs");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_BUSY");
    assert!(reply.headers.contains_key("retry-after"));
    sim.clear_faults();
    // A conversation ElevenLabs does not know.
    set_call(&app, 3, "conversation_id = 'conv_perdida'").await;
    app.get("/api/conversations/conv_perdida", Some(&token))
        .await
        .assert_error(404, "Conversación no encontrada");
    // Nothing was kept from the failures; now it works.
    app.get(&format!("/api/conversations/{id}"), Some(&token))
        .await
        .assert_ok(200, "Conversación obtenida exitosamente");
}
