//! API.md §4: groups, ownership and the spreadsheet import through HTTP.

use base64::Engine;
use marcador::elevenlabs::simulator::{Fault, SIM_AGENT_COBRANZA, SIM_AGENT_RECORDATORIO};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, both_backends, spawn_app, spawn_app_with};

both_backends!(
    group_is_created_with_the_contract_defaults,
    a_long_file_refused_at_its_end_leaves_nothing,
    a_long_file_and_a_taken_name_answer_in_the_contract_order,
    more_long_imports_at_once_than_may_hold_a_connection_all_finish,
    agent_id_is_verified_with_elevenlabs_before_anything_is_written,
    group_name_is_required_and_bounded,
    group_names_are_unique_per_owner_among_live_groups,
    prefix_must_be_valid_and_agree_with_the_country,
    other_fields_are_validated,
    every_fixture_imports_to_the_documented_result,
    generated_xlsx_reads_cells_as_a_person_sees_them,
    a_failed_import_writes_nothing,
    upload_errors_have_their_exact_messages,
    oversize_file_is_refused_with_413,
    too_many_rows_are_refused,
    hostile_files_are_refused_by_their_bound_and_leave_nothing,
    uploads_past_the_in_flight_bound_are_refused_with_503,
    users_see_only_their_own_groups,
    admin_sees_every_group_and_filters_by_owner,
    client_id_names_the_owner,
    groups_are_listed_with_true_totals_search_and_favorite,
    group_can_include_a_page_of_its_clients,
    update_changes_allowed_fields_and_clears_nullable_ones,
    prefix_change_renormalises_the_numbers,
    prefix_change_that_breaks_numbers_changes_nothing,
    delete_is_soft_and_final,
);

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub async fn create_group(app: &TestApp, token: &str, body: Value) -> crate::helpers::Reply {
    app.post("/api/groups", Some(token), body).await
}

/// Creates a group and returns its id, asserting success.
pub async fn group_id(app: &TestApp, token: &str, body: Value) -> i64 {
    let reply = create_group(app, token, body).await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    reply.body["data"]["id"].as_i64().expect("group id")
}

pub fn csv_upload(name: &str, csv: &str) -> Value {
    json!({"name": name, "base64": b64(csv.as_bytes()), "document_name": "clientes.csv"})
}

async fn group_is_created_with_the_contract_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, admin_id) = app.admin().await;
    let reply = create_group(&app, &token, json!({"name": "  Cobranza Noviembre "})).await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    let group = &reply.body["data"];
    assert_eq!(group["name"], "Cobranza Noviembre");
    assert_eq!(group["color"], "#3B82F6");
    assert_eq!(group["favorite"], false);
    assert_eq!(group["idioma"], "es");
    assert_eq!(group["variables"], json!({}));
    assert_eq!(group["prefix"], "+57");
    assert_eq!(group["selectedCountryCode"], "CO");
    assert_eq!(group["timezone"], "America/Bogota");
    assert_eq!(group["createdBy"], admin_id);
    assert_eq!(group["clientsCount"], 0);
    assert_eq!(group["agentId"], Value::Null);
    assert_eq!(group["fileProcessing"], Value::Null);
    assert_eq!(group["batchCallStats"]["hasBeenCalled"], false);
    assert!(group["createdAt"].as_str().unwrap().ends_with('Z'));
}

async fn agent_id_is_verified_with_elevenlabs_before_anything_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let csv = "nombre,telefono\nAna,3138539155\n";
    let mut body = csv_upload("g", csv);
    body["agentId"] = json!("agent_does_not_exist");
    let reply = create_group(&app, &token, body.clone()).await;
    reply.assert_error(400, "El agente especificado no existe o no es accesible");
    assert!(reply.body["error"].is_string());
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 0);

    // ElevenLabs down: not the caller's fault, and still nothing written.
    let simulator = app.state.simulator.as_ref().expect("simulator mode");
    simulator.inject(Fault::status(
        "GET",
        "/v1/convai/agents/",
        503,
        json!({"detail": "maintenance"}),
    ));
    body["agentId"] = json!(SIM_AGENT_RECORDATORIO);
    let down = create_group(&app, &token, body.clone()).await;
    down.assert_error(502, "Error obteniendo agentes de ElevenLabs");
    assert_eq!(down.body["errorCode"], "ELEVENLABS_UNAVAILABLE");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
    simulator.clear_faults();

    let reply = create_group(&app, &token, body).await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    assert_eq!(reply.body["data"]["agentId"], SIM_AGENT_RECORDATORIO);
    let id = reply.body["data"]["id"].as_i64().unwrap();
    app.put(
        &format!("/api/groups/{id}"),
        Some(&token),
        json!({"agentId": "agent_nope"}),
    )
    .await
    .assert_error(400, "El agente especificado no existe o no es accesible");
}

async fn group_name_is_required_and_bounded(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    for body in [
        json!({}),
        json!({"name": "   "}),
        json!({"name": null, "description": "x"}),
    ] {
        create_group(&app, &token, body)
            .await
            .assert_error(400, "El nombre del grupo es requerido");
    }
    create_group(&app, &token, json!({"name": "x".repeat(121)}))
        .await
        .assert_error(400, "El nombre del grupo no puede superar 120 caracteres");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
}

async fn group_names_are_unique_per_owner_among_live_groups(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (user, _) = app.user(&admin, "maria").await;
    let id = group_id(&app, &admin, json!({"name": "Cartera"})).await;
    create_group(&app, &admin, json!({"name": "CARTERA"}))
        .await
        .assert_error(409, "Ya existe un grupo con este nombre");
    // Another owner may use the name.
    group_id(&app, &user, json!({"name": "Cartera"})).await;
    // A deleted group frees its name.
    app.delete(&format!("/api/groups/{id}"), Some(&admin))
        .await
        .assert_ok(200, "Grupo eliminado exitosamente");
    group_id(&app, &admin, json!({"name": "Cartera"})).await;
}

async fn prefix_must_be_valid_and_agree_with_the_country(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    for body in [
        json!({"name": "g", "prefix": "57"}),
        json!({"name": "g", "prefix": "+12345"}),
        json!({"name": "g", "prefix": "+57", "selectedCountryCode": "MX"}),
        json!({"name": "g", "selectedCountryCode": "ZZ"}),
    ] {
        create_group(&app, &token, body)
            .await
            .assert_error(400, "Prefijo telefónico inválido");
    }
    let reply = create_group(&app, &token, json!({"name": "México", "prefix": "+52"})).await;
    assert_eq!(reply.body["data"]["selectedCountryCode"], "MX");
    let reply = create_group(
        &app,
        &token,
        json!({"name": "España", "selectedCountryCode": "es"}),
    )
    .await;
    assert_eq!(reply.body["data"]["prefix"], "+34");
    assert_eq!(reply.body["data"]["selectedCountryCode"], "ES");
}

async fn other_fields_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let cases = [
        (
            json!({"name": "g", "color": "blue"}),
            "Color inválido. Usa el formato #RRGGBB",
        ),
        (
            json!({"name": "g", "variables": [1, 2]}),
            "Las variables deben ser un objeto JSON",
        ),
        (
            json!({"name": "g", "timezone": "Mars/Olympus"}),
            "Zona horaria inválida",
        ),
        (
            json!({"name": "g", "idioma": "español de Colombia"}),
            "Idioma inválido",
        ),
    ];
    for (body, message) in cases {
        create_group(&app, &token, body)
            .await
            .assert_error(400, message);
    }
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
}

/// fixtures/README.md: every form of the same list gives the same result.
async fn every_fixture_imports_to_the_documented_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let files = [
        ("clientes.xls", "150000", "2026-12-01"),
        ("clientes.ods", "150000", "2026-12-01"),
        ("clientes_unicode.txt", "150000", "01/12/2026"),
        ("clientes_windows1252.csv", "150000", "01/12/2026"),
        ("clientes_utf8_bom.csv", "150000", "01/12/2026"),
    ];
    for (file, ana_amount, ana_date) in files {
        let reply = create_group(
            &app,
            &token,
            json!({"name": file, "prefix": "+57", "selectedCountryCode": "CO",
                   "base64": b64(&fixture(file)), "document_name": file}),
        )
        .await;
        reply.assert_ok(201, "Grupo creado exitosamente");
        let report = &reply.body["data"]["fileProcessing"];
        assert_eq!(report["clientsCreated"], 5, "{file}: {report}");
        assert_eq!(report["duplicates"], 1, "{file}: {report}");
        assert_eq!(report["invalidRows"], 1, "{file}: {report}");
        assert_eq!(report["errors"][0]["row"], 6, "{file}: {report}");
        assert_eq!(
            report["errors"][0]["reason"], "Número de teléfono inválido",
            "{file}"
        );
        assert_eq!(reply.body["data"]["clientsCount"], 5, "{file}");

        let id = reply.body["data"]["id"].as_i64().unwrap();
        let clients = app
            .get(&format!("/api/groups/{id}/clients?limit=50"), Some(&token))
            .await;
        let list = clients.body["data"].as_array().unwrap();
        let numbers: Vec<&str> = list
            .iter()
            .map(|c| c["phoneE164"].as_str().unwrap())
            .collect();
        assert_eq!(
            numbers,
            [
                "+573138539155",
                "+573138539156",
                "+573138539157",
                "+573138539158",
                "+576015550000"
            ],
            "{file}"
        );
        let ana = &list[0];
        assert_eq!(ana["name"], "Ana María Pérez", "{file}");
        assert_eq!(ana["externalId"], "00123456", "{file}");
        assert_eq!(ana["email"], "ana@example.com", "{file}");
        assert_eq!(ana["variables"]["monto_deuda"], ana_amount, "{file}: {ana}");
        assert_eq!(
            ana["variables"]["fecha_vencimiento"], ana_date,
            "{file}: {ana}"
        );
        assert_eq!(list[2]["name"], "Ñandú Gómez", "{file}");
        assert_eq!(list[3]["email"], "pedro@example.com", "{file}");
    }
}

async fn generated_xlsx_reads_cells_as_a_person_sees_them(backend: Backend) {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    let headers = [
        " Nombre Completo ",
        "CELULAR",
        "Monto Deuda",
        "Fecha de Pago",
        "Cédula",
    ];
    for (col, header) in headers.iter().enumerate() {
        sheet.write_string(0, col as u16, *header).unwrap();
    }
    sheet.write_string(1, 0, "Ana").unwrap();
    sheet.write_number(1, 1, 3138539155.0).unwrap();
    sheet.write_number(1, 2, 2000.5).unwrap();
    let date = ExcelDateTime::from_ymd(2026, 12, 1).unwrap();
    sheet
        .write_datetime_with_format(1, 3, &date, &Format::new().set_num_format("dd/mm/yyyy"))
        .unwrap();
    sheet.write_string(1, 4, "00123456").unwrap();
    sheet.write_string(2, 0, "Luis").unwrap();
    sheet.write_string(2, 1, "+57 (313) 853-9159").unwrap();
    sheet.write_number(2, 2, 150000.0).unwrap();
    let bytes = workbook.save_to_buffer().unwrap();

    let reply = create_group(
        &app,
        &token,
        json!({"name": "xlsx", "base64": b64(&bytes), "document_name": "Clientes.XLSX"}),
    )
    .await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    assert_eq!(
        reply.body["data"]["fileProcessing"]["clientsCreated"], 2,
        "{}",
        reply.text
    );
    let id = reply.body["data"]["id"].as_i64().unwrap();
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    let ana = &clients.body["data"][0];
    assert_eq!(ana["phone"], "3138539155");
    assert_eq!(ana["phoneE164"], "+573138539155");
    assert_eq!(ana["name"], "Ana");
    assert_eq!(ana["externalId"], "00123456");
    assert_eq!(ana["variables"]["monto_deuda"], "2000.5");
    assert_eq!(ana["variables"]["fecha_de_pago"], "2026-12-01");
    assert_eq!(clients.body["data"][1]["phoneE164"], "+573138539159");
    assert_eq!(
        clients.body["data"][1]["variables"]["monto_deuda"],
        "150000"
    );
}

async fn a_failed_import_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let corrupt = json!({"name": "roto", "base64": b64(b"PK\x03\x04 definitely not a zip"), "document_name": "roto.xlsx"});
    let reply = create_group(&app, &token, corrupt).await;
    reply.assert_error(400, "No se pudo leer el archivo");
    assert!(reply.body["error"].is_string());
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 0);
}

async fn upload_errors_have_their_exact_messages(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let cases = [
        (
            json!({"name": "a", "base64": "%%%not base64%%%", "document_name": "c.csv"}),
            "El archivo no es un base64 válido",
        ),
        (
            json!({"name": "a", "base64": b64(b"x"), "document_name": "c.pdf"}),
            "Formato de archivo no soportado. Usa .xlsx, .xls, .ods o .csv",
        ),
        (
            json!({"name": "a", "base64": b64(b"nombre,email\nAna,a@x.co\n"), "document_name": "c.csv"}),
            "No se encontró la columna requerida: teléfono",
        ),
        (
            json!({"name": "a", "base64": b64(b"nombre,telefono\n"), "document_name": "c.csv"}),
            "El archivo no tiene filas de datos",
        ),
    ];
    for (body, message) in cases {
        create_group(&app, &token, body)
            .await
            .assert_error(400, message);
    }
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
}

async fn oversize_file_is_refused_with_413(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_upload_mb = 1).await;
    let (token, _) = app.admin().await;
    let mut csv = String::from("nombre,telefono\n");
    while csv.len() <= 1024 * 1024 {
        csv.push_str("Ana,3138539155\n");
    }
    let reply = create_group(&app, &token, csv_upload("grande", &csv)).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    let message = reply.message();
    assert!(
        message.starts_with("El archivo es demasiado grande (1.")
            && message.ends_with("MB). El tamaño máximo permitido es 1 MB."),
        "{message}"
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
}

async fn too_many_rows_are_refused(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_clients_per_group = 3).await;
    let (token, _) = app.admin().await;
    let csv = "nombre,telefono\nA,3138539151\nB,3138539152\nC,3138539153\nD,3138539154\n";
    create_group(&app, &token, csv_upload("muchos", csv))
        .await
        .assert_error(
            400,
            "El archivo tiene demasiadas filas (4). El máximo permitido es 3 filas.",
        );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
}

/// Files that claim far more than they weigh (`tests/fixtures/hostile/`,
/// written by `scripts/hostile_fixtures.py`): each is a 400 naming what was
/// too large, for a new group and for an import into one, and nothing is kept.
async fn hostile_files_are_refused_by_their_bound_and_leave_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let existing = group_id(
        &app,
        &token,
        csv_upload("Existente", "telefono\n3138539100\n"),
    )
    .await;
    let run = "tiene más de 65536 bytes seguidos sin etiquetas.";
    let cases = [
        (
            "repeticiones.ods",
            "El archivo tiene demasiadas celdas. El máximo permitido es 4000000 celdas (filas por columnas, contando cada fila hasta su última celda).".to_owned(),
        ),
        (
            "celda_enorme.xlsx",
            format!("El archivo contiene un texto demasiado largo: su parte \"xl/worksheets/sheet1.xml\" {run}"),
        ),
        (
            "texto_compartido_enorme.xlsx",
            format!("El archivo contiene un texto demasiado largo: su parte \"xl/sharedStrings.xml\" {run}"),
        ),
        (
            "espacios.xlsx",
            format!("El archivo contiene un texto demasiado largo: su parte \"xl/worksheets/sheet1.xml\" {run}"),
        ),
    ];
    for (file, message) in cases {
        let base64 = b64(&fixture(&format!("hostile/{file}")));
        create_group(
            &app,
            &token,
            json!({"name": file, "base64": base64, "document_name": file}),
        )
        .await
        .assert_error(400, &message);
        app.post(
            &format!("/api/groups/{existing}/clients/import"),
            Some(&token),
            json!({"base64": base64, "document_name": file}),
        )
        .await
        .assert_error(400, &message);
    }
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 1);
}

/// One import slot lets four uploads in at once: twelve at the same time get
/// some 503s (with `Retry-After`) rather than twelve bodies held in memory
/// while they wait; each refused one keeps nothing, each accepted one is whole.
async fn uploads_past_the_in_flight_bound_are_refused_with_503(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_concurrent_imports = 1).await;
    let (token, _) = app.admin().await;
    let csv = long_csv(30_000);
    let uploads =
        (0..12).map(|i| create_group(&app, &token, csv_upload(&format!("Carga {i}"), &csv)));
    let replies = futures::future::join_all(uploads).await;
    let mut created = 0;
    let mut refused = 0;
    for reply in &replies {
        match reply.status.as_u16() {
            201 => created += 1,
            503 => {
                reply.assert_error(
                    503,
                    "Hay demasiadas cargas de archivos en curso. Inténtalo de nuevo en unos segundos.",
                );
                refused += 1;
            }
            other => panic!("{other}: {}", reply.text),
        }
    }
    assert!((1..=4).contains(&created), "{created} created");
    assert_eq!(created + refused, 12);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, created);
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM clients").await,
        created * 30_000
    );
    // The slots are free again.
    create_group(
        &app,
        &token,
        csv_upload("Después", "telefono\n3138539100\n"),
    )
    .await
    .assert_ok(201, "Grupo creado exitosamente");
}

/// `rows` clients, numbers all distinct and valid.
pub fn long_csv(rows: usize) -> String {
    let mut csv = String::from("nombre,telefono,monto\n");
    for i in 0..rows {
        csv.push_str(&format!("C{i},31{}{:07},{i}\n", i % 6, i));
    }
    csv
}

/// Over 10,000 clients go to the database while the file is still being read
/// (on PostgreSQL); a file refused only at its end (one row too many) must
/// still leave nothing, for a new group and for an import into a group.
async fn a_long_file_refused_at_its_end_leaves_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_clients_per_group = 25_000).await;
    let (token, _) = app.admin().await;
    let too_many = "El archivo tiene demasiadas filas (25001). El máximo permitido es 25000 filas.";
    create_group(&app, &token, csv_upload("Larga", &long_csv(25_001)))
        .await
        .assert_error(400, too_many);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 0);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 0);

    let id = group_id(
        &app,
        &token,
        csv_upload("Corta", "nombre,telefono\nA,3009999999\n"),
    )
    .await;
    app.post(
        &format!("/api/groups/{id}/clients/import"),
        Some(&token),
        json!({"base64": b64(long_csv(25_001).as_bytes()), "document_name": "c.csv"}),
    )
    .await
    .assert_error(400, too_many);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 1);

    // The same file one row shorter goes in whole.
    let reply = app
        .post(
            &format!("/api/groups/{id}/clients/import"),
            Some(&token),
            json!({"base64": b64(long_csv(24_999).as_bytes()), "document_name": "c.csv"}),
        )
        .await;
    reply.assert_ok(201, "Clientes importados exitosamente");
    assert_eq!(reply.body["data"]["clientsCount"], 25_000);
    assert_eq!(
        reply.body["data"]["fileProcessing"]["clientsCreated"],
        24_999
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 25_000);
}

/// A bad file answers before a taken name (400, not 409), however long the
/// file and whatever was stored while it was read; a good long file with a
/// taken name is a 409 and leaves nothing.
async fn a_long_file_and_a_taken_name_answer_in_the_contract_order(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_clients_per_group = 25_000).await;
    let (token, _) = app.admin().await;
    group_id(&app, &token, json!({"name": "Cartera"})).await;
    create_group(&app, &token, csv_upload("Cartera", &long_csv(25_001)))
        .await
        .assert_error(
            400,
            "El archivo tiene demasiadas filas (25001). El máximo permitido es 25000 filas.",
        );
    create_group(&app, &token, csv_upload("Cartera", &long_csv(20_000)))
        .await
        .assert_error(409, "Ya existe un grupo con este nombre");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM groups").await, 1);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 0);
    let reply = create_group(&app, &token, csv_upload("Otra", &long_csv(20_000))).await;
    reply.assert_ok(201, "Grupo creado exitosamente");
    assert_eq!(
        reply.body["data"]["fileProcessing"]["clientsCreated"],
        20_000
    );
    assert_eq!(
        reply.body["data"]["fileProcessing"]["totalClientsFound"],
        20_000
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 20_000);
}

/// Six long imports at once, more than may hold a connection together on
/// PostgreSQL (four): the others wait their turn, and all finish whole.
async fn more_long_imports_at_once_than_may_hold_a_connection_all_finish(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let csv = long_csv(12_000);
    let uploads =
        (0..6).map(|i| create_group(&app, &token, csv_upload(&format!("Lote {i}"), &csv)));
    for reply in futures::future::join_all(uploads).await {
        reply.assert_ok(201, "Grupo creado exitosamente");
        assert_eq!(
            reply.body["data"]["fileProcessing"]["clientsCreated"],
            12_000
        );
    }
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM clients").await, 72_000);
}

async fn users_see_only_their_own_groups(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (ana, _) = app.user(&admin, "ana").await;
    let (luis, _) = app.user(&admin, "luis").await;
    let id = group_id(
        &app,
        &ana,
        csv_upload("De Ana", "nombre,telefono\nA,3138539151\n"),
    )
    .await;
    let not_found = "Grupo no encontrado";
    app.get(&format!("/api/groups/{id}"), Some(&luis))
        .await
        .assert_error(404, not_found);
    app.put(
        &format!("/api/groups/{id}"),
        Some(&luis),
        json!({"name": "Mío"}),
    )
    .await
    .assert_error(404, not_found);
    app.delete(&format!("/api/groups/{id}"), Some(&luis))
        .await
        .assert_error(404, not_found);
    app.get(&format!("/api/groups/{id}/clients"), Some(&luis))
        .await
        .assert_error(404, not_found);
    app.post(
        &format!("/api/groups/{id}/clients"),
        Some(&luis),
        json!({"name": "x", "phone": "3138539152"}),
    )
    .await
    .assert_error(404, not_found);
    app.get(&format!("/api/groups/{id}/clients/1"), Some(&luis))
        .await
        .assert_error(404, not_found);
    let list = app.get("/api/groups", Some(&luis)).await;
    assert_eq!(list.body["pagination"]["total"], 0);
    // Nothing of Ana's changed.
    let mine = app.get(&format!("/api/groups/{id}"), Some(&ana)).await;
    mine.assert_ok(200, "Grupo obtenido exitosamente");
    assert_eq!(mine.body["data"]["name"], "De Ana");
    assert_eq!(mine.body["data"]["clientsCount"], 1);
}

async fn admin_sees_every_group_and_filters_by_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (ana, ana_id) = app.user(&admin, "ana").await;
    group_id(&app, &ana, json!({"name": "De Ana"})).await;
    group_id(&app, &admin, json!({"name": "Del admin"})).await;
    let all = app.get("/api/groups", Some(&admin)).await;
    assert_eq!(all.body["pagination"]["total"], 2);
    let filtered = app
        .get(&format!("/api/groups?createdBy={ana_id}"), Some(&admin))
        .await;
    assert_eq!(filtered.body["pagination"]["total"], 1);
    assert_eq!(filtered.body["data"][0]["name"], "De Ana");
}

async fn client_id_names_the_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, admin_id) = app.admin().await;
    let (ana, ana_id) = app.user(&admin, "ana").await;
    create_group(&app, &ana, json!({"name": "g", "clientId": admin_id}))
        .await
        .assert_error(403, "No tienes permiso para realizar esta acción");
    let own = create_group(&app, &ana, json!({"name": "g", "clientId": ana_id})).await;
    assert_eq!(own.body["data"]["createdBy"], ana_id);
    let for_ana = create_group(
        &app,
        &admin,
        json!({"name": "h", "clientId": ana_id.to_string()}),
    )
    .await;
    assert_eq!(for_ana.body["data"]["createdBy"], ana_id);
    create_group(&app, &admin, json!({"name": "i", "clientId": 999}))
        .await
        .assert_error(404, "Usuario no encontrado");
    create_group(&app, &admin, json!({"name": "j", "clientId": "abc"}))
        .await
        .assert_error(400, "clientId inválido");
}

async fn groups_are_listed_with_true_totals_search_and_favorite(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    for i in 0..5 {
        group_id(
            &app,
            &token,
            json!({"name": format!("Campaña {i}"), "favorite": i % 2 == 0}),
        )
        .await;
    }
    group_id(
        &app,
        &token,
        json!({"name": "Otra", "description": "cobranza 100%"}),
    )
    .await;
    let page = app.get("/api/groups?page=2&limit=4", Some(&token)).await;
    page.assert_ok(200, "Grupos obtenidos exitosamente");
    assert_eq!(page.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(page.body["pagination"]["total"], 6);
    assert_eq!(page.body["pagination"]["totalPages"], 2);
    let search = app
        .get("/api/groups?search=campa%C3%B1a", Some(&token))
        .await;
    assert_eq!(search.body["pagination"]["total"], 5);
    let percent = app.get("/api/groups?search=100%25", Some(&token)).await;
    assert_eq!(percent.body["pagination"]["total"], 1);
    let favorites = app.get("/api/groups?favorite=true", Some(&token)).await;
    assert_eq!(favorites.body["pagination"]["total"], 3);
    // Newest first.
    let first = app.get("/api/groups?limit=1", Some(&token)).await;
    assert_eq!(first.body["data"][0]["name"], "Otra");
}

async fn group_can_include_a_page_of_its_clients(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let csv = "nombre,telefono\nA,3138539151\nB,3138539152\nC,3138539153\n";
    let id = group_id(&app, &token, csv_upload("g", csv)).await;
    let reply = app
        .get(
            &format!("/api/groups/{id}?include_clients=true&client_page=2&client_limit=2"),
            Some(&token),
        )
        .await;
    reply.assert_ok(200, "Grupo obtenido exitosamente");
    assert_eq!(reply.body["data"]["clients"].as_array().unwrap().len(), 1);
    assert_eq!(reply.body["data"]["clients"][0]["name"], "C");
    assert_eq!(reply.body["data"]["clientsPagination"]["total"], 3);
    let plain = app.get(&format!("/api/groups/{id}"), Some(&token)).await;
    assert!(plain.body["data"].get("clients").is_none());
}

async fn update_changes_allowed_fields_and_clears_nullable_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        json!({"name": "g", "description": "d", "agentId": SIM_AGENT_COBRANZA}),
    )
    .await;
    let reply = app
        .put(
            &format!("/api/groups/{id}"),
            Some(&token),
            json!({"name": "Nuevo", "description": null, "favorite": true, "agentId": SIM_AGENT_RECORDATORIO,
                   "phoneNumberId": "phnum_1", "variables": {"monto": "10"}, "timezone": "America/Mexico_City",
                   "createdBy": 999, "id": 555}),
        )
        .await;
    reply.assert_ok(200, "Grupo actualizado exitosamente");
    let group = &reply.body["data"];
    assert_eq!(group["id"], id);
    assert_eq!(group["name"], "Nuevo");
    assert_eq!(group["description"], Value::Null);
    assert_eq!(group["favorite"], true);
    assert_eq!(group["agentId"], SIM_AGENT_RECORDATORIO);
    assert_eq!(group["phoneNumberId"], "phnum_1");
    assert_eq!(group["variables"], json!({"monto": "10"}));
    assert_eq!(group["timezone"], "America/Mexico_City");
    assert_ne!(group["createdBy"], 999);
    app.put(
        &format!("/api/groups/{id}"),
        Some(&token),
        json!({"base64": "eA=="}),
    )
    .await
    .assert_error(
        400,
        "Para cargar un archivo usa POST /api/groups/:id/clients/import",
    );
    app.put(
        &format!("/api/groups/{id}"),
        Some(&token),
        json!({"color": "nope", "name": "Otro"}),
    )
    .await
    .assert_error(400, "Color inválido. Usa el formato #RRGGBB");
    let after = app.get(&format!("/api/groups/{id}"), Some(&token)).await;
    assert_eq!(
        after.body["data"]["name"], "Nuevo",
        "a refused update changes nothing"
    );
}

async fn prefix_change_renormalises_the_numbers(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    // A number written nationally moves with the prefix; one written internationally stays.
    let csv = "nombre,telefono\nA,313 853 9155\nB,+57 601 5550000\n";
    let id = group_id(&app, &token, csv_upload("g", csv)).await;
    let reply = app
        .put(
            &format!("/api/groups/{id}"),
            Some(&token),
            json!({"prefix": "+1"}),
        )
        .await;
    reply.assert_ok(200, "Grupo actualizado exitosamente");
    assert_eq!(reply.body["data"]["prefix"], "+1");
    assert_eq!(reply.body["data"]["selectedCountryCode"], "US");
    let clients = app
        .get(&format!("/api/groups/{id}/clients"), Some(&token))
        .await;
    assert_eq!(clients.body["data"][0]["phoneE164"], "+13138539155");
    assert_eq!(clients.body["data"][0]["phone"], "313 853 9155");
    assert_eq!(clients.body["data"][1]["phoneE164"], "+576015550000");
}

async fn prefix_change_that_breaks_numbers_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let message = "El cambio de prefijo dejaría números inválidos o duplicados en el grupo";
    // 55 1234 5678 is a Mexico City mobile, not a valid Colombian number.
    let csv = "nombre,telefono\nA,55 1234 5678\n";
    let mx = group_id(&app, &token, json!({"name": "mx", "prefix": "+52", "base64": b64(csv.as_bytes()), "document_name": "c.csv"})).await;
    let reply = app
        .put(
            &format!("/api/groups/{mx}"),
            Some(&token),
            json!({"selectedCountryCode": "CO", "name": "renamed"}),
        )
        .await;
    reply.assert_error(400, message);
    let group = app.get(&format!("/api/groups/{mx}"), Some(&token)).await;
    assert_eq!(group.body["data"]["prefix"], "+52");
    assert_eq!(
        group.body["data"]["name"], "mx",
        "nothing of the refused update stays"
    );
    let clients = app
        .get(&format!("/api/groups/{mx}/clients"), Some(&token))
        .await;
    assert_eq!(clients.body["data"][0]["phoneE164"], "+525512345678");

    // Two clients that would become the same number.
    let csv = "nombre,telefono\nA,+1 313 853 9155\nB,313 853 9155\n";
    let co = group_id(&app, &token, csv_upload("co", csv)).await;
    app.put(
        &format!("/api/groups/{co}"),
        Some(&token),
        json!({"prefix": "+1"}),
    )
    .await
    .assert_error(400, message);
    let clients = app
        .get(&format!("/api/groups/{co}/clients"), Some(&token))
        .await;
    assert_eq!(clients.body["data"][1]["phoneE164"], "+573138539155");
}

async fn delete_is_soft_and_final(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let id = group_id(
        &app,
        &token,
        csv_upload("g", "nombre,telefono\nA,3138539151\n"),
    )
    .await;
    let reply = app.delete(&format!("/api/groups/{id}"), Some(&token)).await;
    reply.assert_ok(200, "Grupo eliminado exitosamente");
    app.delete(&format!("/api/groups/{id}"), Some(&token))
        .await
        .assert_error(404, "Grupo no encontrado");
    app.get(&format!("/api/groups/{id}"), Some(&token))
        .await
        .assert_error(404, "Grupo no encontrado");
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM groups WHERE id = {id} AND deleted_at IS NOT NULL"
            ))
            .await,
        1
    );
    assert_eq!(
        app.db.scalar("SELECT COUNT(*) FROM clients").await,
        1,
        "clients are kept for history"
    );
}
