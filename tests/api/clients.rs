//! API.md §4: the clients of a group.

use serde_json::{Value, json};

use crate::groups::{b64, csv_upload, group_id};
use crate::helpers::{Backend, TestApp, both_backends, spawn_app, spawn_app_with};

both_backends!(
    client_is_added_with_its_e164_number,
    client_needs_a_name_and_a_valid_phone,
    client_fields_and_variables_have_the_import_bounds,
    the_same_number_twice_is_a_conflict,
    client_outside_the_group_is_not_found,
    client_update_takes_only_known_fields,
    client_delete_is_soft,
    clients_are_filtered_by_status_and_search,
    import_appends_and_counts_numbers_already_in_the_group,
    import_needs_a_file_and_respects_the_group_limit,
    uncalled_clients_are_those_in_no_batch,
    clients_count_stays_exact_through_every_change,
    overlapping_imports_into_one_group_at_once_both_finish_and_count_once,
);

async fn client_is_added_with_its_e164_number(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(&app, &token, json!({"name": "g"})).await;
    let reply = app
        .post(
            &format!("/api/groups/{id}/clients"),
            Some(&token),
            json!({"name": "Ana", "phone": "313 853 9155", "email": "Ana@Example.com", "category": "vip",
                   "externalId": "00123", "variables": {"monto": "100"}}),
        )
        .await;
    reply.assert_ok(201, "Cliente agregado al grupo exitosamente");
    let client = &reply.body["data"];
    assert_eq!(client["groupId"], id);
    assert_eq!(client["phone"], "313 853 9155");
    assert_eq!(client["phoneE164"], "+573138539155");
    assert_eq!(client["email"], "ana@example.com");
    assert_eq!(client["status"], "pending");
    assert_eq!(client["externalId"], "00123");
    assert_eq!(client["variables"], json!({"monto": "100"}));
    let group = app.get(&format!("/api/groups/{id}"), Some(&token)).await;
    assert_eq!(group.body["data"]["clientsCount"], 1);
}

async fn client_needs_a_name_and_a_valid_phone(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(&app, &token, json!({"name": "g"})).await;
    let path = format!("/api/groups/{id}/clients");
    app.post(&path, Some(&token), json!({"phone": "3138539155"}))
        .await
        .assert_error(400, "El nombre y el teléfono del cliente son requeridos");
    for phone in ["12345", "abc", "+57 313"] {
        app.post(&path, Some(&token), json!({"name": "Ana", "phone": phone}))
            .await
            .assert_error(400, "Número de teléfono inválido");
    }
    app.post(
        &path,
        Some(&token),
        json!({"name": "Ana", "phone": "3138539155", "variables": "x"}),
    )
    .await
    .assert_error(400, "Las variables deben ser un objeto JSON");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 0);
}

/// A client added or changed by hand holds no more than one from a file: a
/// 10 MB field would be sent back in every listing and to every call.
async fn client_fields_and_variables_have_the_import_bounds(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(&app, &token, json!({"name": "g"})).await;
    let path = format!("/api/groups/{id}/clients");
    let long_name = "n".repeat(201);
    app.post(
        &path,
        Some(&token),
        json!({"name": long_name, "phone": "3138539155"}),
    )
    .await
    .assert_error(
        400,
        "El campo name es demasiado largo (201 caracteres). El máximo permitido es 200 caracteres.",
    );
    let big = json!({"nota": "x".repeat(70_000)});
    app.post(
        &path,
        Some(&token),
        json!({"name": "Ana", "phone": "3138539155", "variables": big}),
    )
    .await
    .assert_error(
        400,
        "Las variables son demasiado grandes (70011 bytes). El máximo permitido es 65536 bytes.",
    );
    // 200 accented characters are 400 bytes and fit.
    let ana = app
        .post(
            &path,
            Some(&token),
            json!({"name": "é".repeat(200), "phone": "3138539155"}),
        )
        .await;
    ana.assert_ok(201, "Cliente agregado al grupo exitosamente");
    let client_id = ana.body["data"]["id"].as_i64().unwrap();
    app.put(
        &format!("{path}/{client_id}"),
        Some(&token),
        json!({"address": "d".repeat(501)}),
    )
    .await
    .assert_error(
        400,
        "El campo address es demasiado largo (501 caracteres). El máximo permitido es 500 caracteres.",
    );
    app.put(
        &format!("/api/groups/{id}"),
        Some(&token),
        json!({"variables": big}),
    )
    .await
    .assert_error(
        400,
        "Las variables son demasiado grandes (70011 bytes). El máximo permitido es 65536 bytes.",
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 1);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE address IS NOT NULL")
            .await,
        0
    );
}

async fn the_same_number_twice_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(&app, &token, json!({"name": "g"})).await;
    let path = format!("/api/groups/{id}/clients");
    app.post(
        &path,
        Some(&token),
        json!({"name": "Ana", "phone": "3138539155"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
    app.post(
        &path,
        Some(&token),
        json!({"name": "Otra", "phone": "+57 313 853 9155"}),
    )
    .await
    .assert_error(409, "Cliente ya está en el grupo");
    // Another group may hold the same person.
    let other = group_id(&app, &token, json!({"name": "h"})).await;
    app.post(
        &format!("/api/groups/{other}/clients"),
        Some(&token),
        json!({"name": "Ana", "phone": "3138539155"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
}

async fn client_outside_the_group_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let a = group_id(
        &app,
        &token,
        csv_upload("a", "nombre,telefono\nAna,3138539155\n"),
    )
    .await;
    let b = group_id(&app, &token, json!({"name": "b"})).await;
    let clients = app
        .get(&format!("/api/groups/{a}/clients"), Some(&token))
        .await;
    let client_id = clients.body["data"][0]["id"].as_i64().unwrap();
    let message = "Cliente no está en el grupo";
    let path = format!("/api/groups/{b}/clients/{client_id}");
    app.get(&path, Some(&token))
        .await
        .assert_error(404, message);
    app.put(&path, Some(&token), json!({"name": "x"}))
        .await
        .assert_error(404, message);
    app.delete(&path, Some(&token))
        .await
        .assert_error(404, message);
    app.get(
        &format!("/api/groups/{a}/clients/{client_id}"),
        Some(&token),
    )
    .await
    .assert_ok(200, "Cliente obtenido exitosamente");
    app.get(&format!("/api/groups/{a}/clients/abc"), Some(&token))
        .await
        .assert_error(400, "ID inválido");
}

async fn client_update_takes_only_known_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload(
            "g",
            "nombre,telefono,correo\nAna,3138539155,ana@x.co\nLuis,3138539156,\n",
        ),
    )
    .await;
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    let ana = clients.body["data"][0]["id"].as_i64().unwrap();
    let path = format!("/api/groups/{id}/clients/{ana}");
    let reply = app
        .put(
            &path,
            Some(&token),
            json!({"name": "Ana María", "phone": "(313) 853-9157", "email": null, "status": "contacted",
                   "group_id": 999, "groupId": 999, "id": 1, "phone_e164 = '+1'; --": "x", "variables": {"a": "b"}}),
        )
        .await;
    reply.assert_ok(200, "Cliente actualizado exitosamente");
    let client = &reply.body["data"];
    assert_eq!(client["name"], "Ana María");
    assert_eq!(client["phoneE164"], "+573138539157");
    assert_eq!(client["email"], Value::Null);
    assert_eq!(client["status"], "contacted");
    assert_eq!(client["groupId"], id);
    assert_eq!(client["id"], ana);
    assert_eq!(client["variables"], json!({"a": "b"}));
    app.put(&path, Some(&token), json!({"status": "done"}))
        .await
        .assert_error(
            400,
            "Estado de cliente inválido. Usa pending, contacted, completed o cancelled",
        );
    app.put(&path, Some(&token), json!({"phone": "12"}))
        .await
        .assert_error(400, "Número de teléfono inválido");
    app.put(&path, Some(&token), json!({"phone": "3138539156"}))
        .await
        .assert_error(409, "Cliente ya está en el grupo");
    let after = app.get(&path, Some(&token)).await;
    assert_eq!(after.body["data"]["phoneE164"], "+573138539157");
}

async fn client_delete_is_soft(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nAna,3138539155\n"),
    )
    .await;
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    let ana = clients.body["data"][0]["id"].as_i64().unwrap();
    let path = format!("/api/groups/{id}/clients/{ana}");
    app.delete(&path, Some(&token))
        .await
        .assert_ok(200, "Cliente eliminado exitosamente");
    app.get(&path, Some(&token))
        .await
        .assert_error(404, "Cliente no está en el grupo");
    app.delete(&path, Some(&token))
        .await
        .assert_error(404, "Cliente no está en el grupo");
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM clients WHERE deleted_at IS NOT NULL")
            .await,
        1
    );
    // The number is free again.
    app.post(
        &format!("/api/groups/{id}/clients"),
        Some(&token),
        json!({"name": "Ana", "phone": "3138539155"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
}

async fn clients_are_filtered_by_status_and_search(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let csv = "nombre,telefono,cedula\nAna Pérez,3138539151,111\nLuis,3138539152,222\nMaría,3138539153,333\n";
    let id = group_id(&app, &token, csv_upload("g", csv)).await;
    let list = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    list.assert_ok(200, "Clientes obtenidos exitosamente");
    assert_eq!(list.body["pagination"]["total"], 3);
    let luis = list.body["data"][1]["id"].as_i64().unwrap();
    app.put(
        &format!("/api/groups/{id}/clients/{luis}"),
        Some(&token),
        json!({"status": "completed"}),
    )
    .await
    .assert_ok(200, "Cliente actualizado exitosamente");
    let done = app
        .get(
            &format!("/api/groups/{id}/clients?status=completed"),
            Some(&token),
        )
        .await;
    assert_eq!(done.body["pagination"]["total"], 1);
    assert_eq!(done.body["data"][0]["name"], "Luis");
    let by_name = app
        .get(
            &format!("/api/groups/{id}/clients?search=P%C3%89REZ"),
            Some(&token),
        )
        .await;
    assert_eq!(by_name.body["pagination"]["total"], 1);
    let by_phone = app
        .get(
            &format!("/api/groups/{id}/clients?search=8539153"),
            Some(&token),
        )
        .await;
    assert_eq!(by_phone.body["data"][0]["name"], "María");
    let by_id = app
        .get(
            &format!("/api/groups/{id}/clients?search=222"),
            Some(&token),
        )
        .await;
    assert_eq!(by_id.body["data"][0]["name"], "Luis");
    app.get(
        &format!("/api/groups/{id}/clients?status=raro"),
        Some(&token),
    )
    .await
    .assert_error(
        400,
        "Estado de cliente inválido. Usa pending, contacted, completed o cancelled",
    );
}

async fn import_appends_and_counts_numbers_already_in_the_group(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nAna,3138539155\n"),
    )
    .await;
    let csv = "nombre;telefono\nAna otra vez;+57 313 853 9155\nLuis;3138539156\nLuis bis;313-853-9156\nMalo;999\n";
    let reply = app
        .post(
            &format!("/api/groups/{id}/clients/import"),
            Some(&token),
            json!({"base64": b64(csv.as_bytes()), "document_name": "mas.csv"}),
        )
        .await;
    reply.assert_ok(201, "Clientes importados exitosamente");
    let report = &reply.body["data"]["fileProcessing"];
    assert_eq!(report["clientsCreated"], 1, "{report}");
    assert_eq!(report["duplicates"], 2, "{report}");
    assert_eq!(report["invalidRows"], 1, "{report}");
    assert_eq!(report["totalRows"], 4, "{report}");
    assert_eq!(report["errors"][0]["row"], 5, "{report}");
    assert_eq!(reply.body["data"]["clientsCount"], 2);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 2);
}

async fn import_needs_a_file_and_respects_the_group_limit(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_clients_per_group = 2).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nAna,3138539155\n"),
    )
    .await;
    let path = format!("/api/groups/{id}/clients/import");
    app.post(&path, Some(&token), json!({"document_name": "x.csv"}))
        .await
        .assert_error(400, "El archivo (base64 y document_name) es requerido");
    let csv = "nombre,telefono\nB,3138539156\nC,3138539157\n";
    app.post(
        &path,
        Some(&token),
        json!({"base64": b64(csv.as_bytes()), "document_name": "x.csv"}),
    )
    .await
    .assert_error(
        400,
        "El archivo tiene demasiadas filas (3). El máximo permitido es 2 filas.",
    );
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM clients").await,
        1,
        "nothing of the refused import stays"
    );
    app.post(
        &format!("/api/groups/{id}/clients"),
        Some(&token),
        json!({"name": "B", "phone": "3138539156"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
    app.post(
        &format!("/api/groups/{id}/clients"),
        Some(&token),
        json!({"name": "C", "phone": "3138539157"}),
    )
    .await
    .assert_error(400, "El grupo ya tiene el máximo de clientes permitido (2)");
}

async fn uncalled_clients_are_those_in_no_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin_id) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nAna,3138539155\nLuis,3138539156\n"),
    )
    .await;
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    let ana = clients.body["data"][0]["id"].as_i64().unwrap();
    // A batch that called Ana (written directly: launching calls is another feature).
    let now = "2026-01-01T00:00:00Z";
    let timestamp = match backend {
        Backend::Sqlite => format!("'{now}'"),
        Backend::Postgres => format!("TIMESTAMPTZ '{now}'"),
    };
    app.db
        .execute(&format!(
            "INSERT INTO batches (elevenlabs_batch_id, group_id, created_by, agent_id, name, status, created_at, updated_at)
             VALUES ('btcal_1', {id}, {admin_id}, 'agent_1', 'Llamada', 'pending', {timestamp}, {timestamp});
             INSERT INTO call_records (batch_id, group_id, client_id, phone_e164, status, created_at, updated_at)
             SELECT id, {id}, {ana}, '+573138539155', 'pending', {timestamp}, {timestamp} FROM batches"
        ))
        .await;
    let reply = app
        .get(&format!("/api/groups/{id}/uncalled-clients"), Some(&token))
        .await;
    reply.assert_ok(200, "Clientes sin llamar obtenidos exitosamente");
    assert_eq!(reply.body["pagination"]["total"], 1);
    assert_eq!(reply.body["data"][0]["name"], "Luis");
    let group = app.get(&format!("/api/groups/{id}"), Some(&token)).await;
    let stats = &group.body["data"]["batchCallStats"];
    assert_eq!(stats["hasBeenCalled"], true);
    assert_eq!(stats["status"], "pending");
    assert_eq!(stats["totalRecipients"], 1);
}

/// The group's `clientsCount` as every read shows it (detail, list, the
/// clients' page total) and as the database keeps it (`group_counts`, which
/// those reads use, against a count of the live rows).
async fn assert_clients_count(app: &TestApp, token: &str, id: i64, expected: i64, step: &str) {
    let detail = app.get(&format!("/api/groups/{id}"), Some(token)).await;
    detail.assert_ok(200, "Grupo obtenido exitosamente");
    assert_eq!(
        detail.body["data"]["clientsCount"], expected,
        "{step}: detail"
    );
    let list = app.get("/api/groups?limit=200", Some(token)).await;
    list.assert_ok(200, "Grupos obtenidos exitosamente");
    let listed = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .unwrap_or_else(|| panic!("{step}: group {id} in {}", list.text));
    assert_eq!(listed["clientsCount"], expected, "{step}: list");
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(token))
        .await;
    clients.assert_ok(200, "Clientes obtenidos exitosamente");
    assert_eq!(
        clients.body["pagination"]["total"], expected,
        "{step}: clients page"
    );
    assert_stored_count(app, id, expected, step).await;
}

async fn assert_stored_count(app: &TestApp, id: i64, expected: i64, step: &str) {
    let stored = app
        .db
        .scalar(&format!(
            "SELECT CAST(clients AS BIGINT) FROM group_counts WHERE group_id = {id}"
        ))
        .await;
    let live = app
        .db
        .scalar(&format!(
            "SELECT COUNT(*) FROM clients WHERE group_id = {id} AND deleted_at IS NULL"
        ))
        .await;
    assert_eq!((stored, live), (expected, expected), "{step}: stored, live");
}

/// Issue 10 item 12: the count every group read shows is kept, not counted;
/// it must follow every way clients come and go, and stay put when a write is
/// refused.
async fn clients_count_stays_exact_through_every_change(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_clients_per_group = 6).await;
    let (token, _) = app.admin().await;
    let csv = "nombre,telefono\nAna,3138539155\nLuis,3138539156\nLuis bis,313-853-9156\nMalo,999\n";
    let reply = app
        .post("/api/groups", Some(&token), csv_upload("g", csv))
        .await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    assert_eq!(reply.body["data"]["clientsCount"], 2);
    let id = reply.body["data"]["id"].as_i64().unwrap();
    assert_clients_count(
        &app,
        &token,
        id,
        2,
        "created with a duplicate and an invalid row",
    )
    .await;
    let other = group_id(
        &app,
        &token,
        csv_upload("otro", "nombre,telefono\nZoe,3138539100\n"),
    )
    .await;

    let clients_path = format!("/api/groups/{id}/clients");
    app.post(
        &clients_path,
        Some(&token),
        json!({"name": "Eva", "phone": "3138539157"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
    assert_clients_count(&app, &token, id, 3, "one added by hand").await;
    app.post(
        &clients_path,
        Some(&token),
        json!({"name": "Eva bis", "phone": "313 853 9157"}),
    )
    .await
    .assert_error(409, "Cliente ya está en el grupo");
    assert_clients_count(&app, &token, id, 3, "the same number refused").await;

    // One new number; one already in the group, one twice in the file.
    let csv = "nombre,telefono\nAna otra vez,3138539155\nRosa,3138539158\nRosa bis,3138539158\n";
    let import = format!("/api/groups/{id}/clients/import");
    let reply = app
        .post(
            &import,
            Some(&token),
            json!({"base64": b64(csv.as_bytes()), "document_name": "mas.csv"}),
        )
        .await;
    reply.assert_ok(201, "Clientes importados exitosamente");
    assert_eq!(reply.body["data"]["fileProcessing"]["clientsCreated"], 1);
    assert_eq!(reply.body["data"]["clientsCount"], 4);
    assert_clients_count(&app, &token, id, 4, "import with duplicates").await;

    // Refused by the group's size after its rows were inserted (4 + 3 > 6): rolled back.
    let csv = "nombre,telefono\nA,3138539160\nB,3138539161\nC,3138539162\n";
    app.post(
        &import,
        Some(&token),
        json!({"base64": b64(csv.as_bytes()), "document_name": "c.csv"}),
    )
    .await
    .assert_error(
        400,
        "El archivo tiene demasiadas filas (7). El máximo permitido es 6 filas.",
    );
    // Refused while read.
    app.post(
        &import,
        Some(&token),
        json!({"base64": b64(b"PK\x03\x04 not a zip"), "document_name": "c.xlsx"}),
    )
    .await
    .assert_error(400, "No se pudo leer el archivo");
    assert_clients_count(&app, &token, id, 4, "failed imports").await;

    let list = app.get(&clients_path, Some(&token)).await;
    let ana = list.body["data"][0]["id"].as_i64().unwrap();
    let luis = list.body["data"][1]["id"].as_i64().unwrap();
    app.delete(&format!("{clients_path}/{ana}"), Some(&token))
        .await
        .assert_ok(200, "Cliente eliminado exitosamente");
    app.delete(&format!("{clients_path}/{ana}"), Some(&token))
        .await
        .assert_error(404, "Cliente no está en el grupo");
    assert_clients_count(&app, &token, id, 3, "one deleted (twice)").await;
    // A change that is not a deletion leaves the count alone.
    app.put(
        &format!("{clients_path}/{luis}"),
        Some(&token),
        json!({"status": "completed", "name": "Luis C"}),
    )
    .await
    .assert_ok(200, "Cliente actualizado exitosamente");
    app.post(
        &clients_path,
        Some(&token),
        json!({"name": "Ana de nuevo", "phone": "3138539155"}),
    )
    .await
    .assert_ok(201, "Cliente agregado al grupo exitosamente");
    assert_clients_count(
        &app,
        &token,
        id,
        4,
        "a status change; the deleted number added again",
    )
    .await;

    // Renumbering rewrites every number (two passes) and keeps the count.
    app.put(
        &format!("/api/groups/{id}"),
        Some(&token),
        json!({"prefix": "+1"}),
    )
    .await
    .assert_ok(200, "Grupo actualizado exitosamente");
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM clients WHERE group_id = {id} AND deleted_at IS NULL AND phone_e164 LIKE '+1%'"
            ))
            .await,
        4
    );
    assert_clients_count(&app, &token, id, 4, "renumbered").await;

    // A statement outside the application is counted too.
    app.db
        .execute(&format!("DELETE FROM clients WHERE id = {luis}"))
        .await;
    assert_clients_count(&app, &token, id, 3, "deleted by hand in SQL").await;

    app.delete(&format!("/api/groups/{id}"), Some(&token))
        .await
        .assert_ok(200, "Grupo eliminado exitosamente");
    app.get(&format!("/api/groups/{id}"), Some(&token))
        .await
        .assert_error(404, "Grupo no encontrado");
    // Its clients stay for the history, and so does their count.
    assert_stored_count(&app, id, 3, "group deleted").await;
    assert_clients_count(&app, &token, other, 1, "the other group").await;
}

/// Clients `from..to` as a CSV, with `long_csv`'s numbers.
fn numbered_csv(from: usize, to: usize) -> String {
    let mut csv = String::from("nombre,telefono\n");
    for i in from..to {
        csv.push_str(&format!("C{i},31{}{:07}\n", i % 6, i));
    }
    csv
}

/// Two long files with the same 20,000 numbers into one group at once, in
/// the opposite order. On PostgreSQL each file goes in by chunks of 10,000
/// while it is read, and each chunk's count update locks the group's count:
/// an import that took it only with its first chunk would hold it while its
/// second chunk waits for the other's uncommitted first chunk (the same
/// numbers), which waits for the count (a deadlock: one import a 500).
/// Writers take the count first, so the two take turns.
async fn overlapping_imports_into_one_group_at_once_both_finish_and_count_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nAna,3009999999\n"),
    )
    .await;
    let path = format!("/api/groups/{id}/clients/import");
    let forwards = numbered_csv(0, 20_000);
    let backwards =
        numbered_csv(10_000, 20_000) + &numbered_csv(0, 10_000)["nombre,telefono\n".len()..];
    let (a, b) = tokio::join!(
        app.post(
            &path,
            Some(&token),
            json!({"base64": b64(forwards.as_bytes()), "document_name": "a.csv"})
        ),
        app.post(
            &path,
            Some(&token),
            json!({"base64": b64(backwards.as_bytes()), "document_name": "b.csv"})
        )
    );
    a.assert_ok(201, "Clientes importados exitosamente");
    b.assert_ok(201, "Clientes importados exitosamente");
    let created = |r: &crate::helpers::Reply| {
        r.body["data"]["fileProcessing"]["clientsCreated"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(created(&a) + created(&b), 20_000, "{} / {}", a.text, b.text);
    assert_clients_count(&app, &token, id, 20_001, "two overlapping imports").await;
}
