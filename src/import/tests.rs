//! The import as callers see it: fixtures from real operators, generated
//! spreadsheets, every error path, and properties.

use std::collections::HashSet;

use base64::Engine;
use proptest::prelude::*;
use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, Worksheet};
use serde_json::json;

use super::*;

fn options() -> ImportOptions {
    ImportOptions {
        region: "CO".into(),
        prefix: "+57".into(),
        max_rows: 200_000,
        max_upload_mb: 25,
        max_cells: 2_000_000,
    }
}

fn parse(bytes: &[u8], name: &str) -> Result<ImportReport, ImportError> {
    parse_clients(bytes, name, &options(), &HashSet::new())
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn numbers(report: &ImportReport) -> Vec<&str> {
    report
        .clients
        .iter()
        .map(|c| c.phone_e164.as_str())
        .collect()
}

fn rows(report: &ImportReport) -> Vec<usize> {
    report.clients.iter().map(|c| c.row).collect()
}

/// One workbook, its sheets written by `build`.
fn workbook(build: impl FnOnce(&mut Workbook)) -> Vec<u8> {
    let mut workbook = Workbook::new();
    build(&mut workbook);
    workbook.save_to_buffer().expect("xlsx")
}

fn xlsx(build: impl FnOnce(&mut Worksheet)) -> Vec<u8> {
    workbook(|book| build(book.add_worksheet()))
}

fn write_row(sheet: &mut Worksheet, row: u32, cells: &[&str]) {
    for (col, text) in cells.iter().enumerate() {
        sheet.write_string(row, col as u16, *text).expect("cell");
    }
}

/// fixtures/README.md, per format: Ana's amount and date, José's and Pedro's amounts.
const FIXTURES: [(&str, &str, &str, &str, &str); 5] = [
    ("clientes.xls", "150000", "2026-12-01", "2000.5", "99999.99"),
    ("clientes.ods", "150000", "2026-12-01", "2000.5", "99999.99"),
    (
        "clientes_unicode.txt",
        "150000",
        "01/12/2026",
        "2000.5",
        "99999.99",
    ),
    (
        "clientes_windows1252.csv",
        "150000",
        "01/12/2026",
        "2000,5",
        "99999,99",
    ),
    (
        "clientes_utf8_bom.csv",
        "150000",
        "01/12/2026",
        "2000.5",
        "99999.99",
    ),
];

#[test]
fn every_fixture_gives_the_documented_result() {
    for (file, ana_amount, ana_date, jose_amount, pedro_amount) in FIXTURES {
        let report = parse(&fixture(file), file).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        assert_eq!(
            numbers(&report),
            [
                "+573138539155",
                "+573138539156",
                "+573138539157",
                "+573138539158",
                "+576015550000"
            ],
            "{file}"
        );
        assert_eq!(rows(&report), [2, 3, 4, 8, 9], "{file}");
        assert_eq!(
            (report.duplicates, report.invalid_rows, report.total_rows),
            (1, 1, 7),
            "{file}"
        );
        assert_eq!(
            report.errors,
            [RowError {
                row: 6,
                column: "Teléfono".into(),
                value: "12345".into(),
                reason: "Número de teléfono inválido".into(),
            }],
            "{file}"
        );

        let ana = &report.clients[0];
        assert_eq!(ana.name.as_deref(), Some("Ana María Pérez"), "{file}");
        assert_eq!(ana.phone, "3138539155", "{file}");
        assert_eq!(ana.external_id.as_deref(), Some("00123456"), "{file}");
        assert_eq!(ana.email.as_deref(), Some("ana@example.com"), "{file}");
        assert_eq!(
            ana.variables,
            json!({"monto_deuda": ana_amount, "fecha_vencimiento": ana_date})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            "{file}"
        );
        let jose = &report.clients[1];
        assert_eq!(jose.name.as_deref(), Some("José Muñoz"), "{file}");
        assert_eq!(jose.phone, "+57 313 853 9156", "{file}");
        assert_eq!(jose.email, None, "{file}: empty cells are None");
        assert_eq!(jose.variables["monto_deuda"], json!(jose_amount), "{file}");
        assert_eq!(
            report.clients[2].name.as_deref(),
            Some("Ñandú Gómez"),
            "{file}"
        );
        let pedro = &report.clients[3];
        assert_eq!(pedro.phone, "(313) 853-9158", "{file}");
        assert_eq!(pedro.email.as_deref(), Some("pedro@example.com"), "{file}");
        assert_eq!(
            pedro.variables["monto_deuda"],
            json!(pedro_amount),
            "{file}"
        );
        assert_eq!(
            report.clients[4].name.as_deref(),
            Some("Fijo Bogotá"),
            "{file}"
        );
    }
}

/// A sheet as operators send them: accented headers with odd spacing, a
/// blank first row and column, numbers typed as numbers, every way of
/// writing a phone, blank rows, repeats and bad numbers.
#[test]
fn a_generated_xlsx_maps_and_normalises_every_row() {
    let bytes = xlsx(|sheet| {
        let headers = [
            " TELÉFONO ",
            "  Teléfono Celular ",
            "Nombre Completo",
            "Correo Electrónico",
            "Cédula",
            "Dirección",
            "Categoría",
            "Monto Deuda",
            "Fecha de vencimiento",
        ];
        for (col, header) in headers.iter().enumerate() {
            sheet
                .write_string(1, col as u16 + 1, *header)
                .expect("header");
        }
        let date = ExcelDateTime::from_ymd(2026, 12, 1).expect("date");
        let date_format = Format::new().set_num_format("dd/mm/yyyy");
        // (row, phone as number or text, name)
        let phones: [(u32, Result<f64, &str>, &str); 12] = [
            (2, Ok(3138539155.0), "Número"),
            (3, Err("+57 313 853 9156"), "Más"),
            (4, Err("573138539157"), "Cincuenta y siete"),
            (5, Err("03138539158"), "Cero"),
            (6, Err("313-853-9159"), "Guiones"),
            (8, Err("(313) 853 9160"), "Paréntesis"),
            (9, Err("0057 313 853 9161"), "Doble cero"),
            (10, Ok(573138539155.0), "Repetido con 57"),
            (11, Err("12345"), "Inválido"),
            (12, Err("313 853 9162 ext 4"), "Con extensión"),
            (13, Err("601 555 0000"), "Fijo"),
            (15, Err(""), "Sin teléfono"),
        ];
        for (row, phone, name) in phones {
            match phone {
                Ok(number) => sheet.write_number(row, 1, number).map(|_| ()),
                Err(text) => sheet.write_string(row, 1, text).map(|_| ()),
            }
            .expect("phone");
            sheet
                .write_number(row, 2, 3001234567.0)
                .expect("second phone");
            sheet.write_string(row, 3, name).expect("name");
            sheet.write_number(row, 8, 2000.5).expect("amount");
            sheet
                .write_datetime_with_format(row, 9, &date, &date_format)
                .expect("date");
        }
        sheet.write_string(2, 4, "ana@example.com").expect("email");
        sheet.write_string(2, 5, "00123456").expect("id");
        sheet.write_string(2, 6, "Calle 1 # 2-3").expect("address");
        sheet.write_string(2, 7, "VIP").expect("category");
        sheet.write_number(3, 8, 99999.99).expect("amount");
        // Row 7 blank; row 14 has only spaces.
        sheet.write_string(14, 3, "   ").expect("spaces");
    });
    let report = parse(&bytes, "Clientes.XLSX").expect("parsed");

    assert_eq!(
        numbers(&report),
        [
            "+573138539155",
            "+573138539156",
            "+573138539157",
            "+573138539158",
            "+573138539159",
            "+573138539160",
            "+573138539161",
            "+576015550000"
        ]
    );
    // Sheet rows are 1-based: the header is on row 2 of the sheet.
    assert_eq!(rows(&report), [3, 4, 5, 6, 7, 9, 10, 14]);
    assert_eq!(report.total_rows, 12);
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.invalid_rows, 3);
    let invalid: Vec<(usize, &str, &str)> = report
        .errors
        .iter()
        .map(|e| (e.row, e.column.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        invalid,
        [
            (12, "TELÉFONO", "12345"),
            (13, "TELÉFONO", "313 853 9162 ext 4"),
            (16, "TELÉFONO", "")
        ]
    );

    let first = &report.clients[0];
    assert_eq!(first.phone, "3138539155", "a number cell reads as written");
    assert_eq!(first.name.as_deref(), Some("Número"));
    assert_eq!(first.email.as_deref(), Some("ana@example.com"));
    assert_eq!(first.external_id.as_deref(), Some("00123456"));
    assert_eq!(first.address.as_deref(), Some("Calle 1 # 2-3"));
    assert_eq!(first.category.as_deref(), Some("VIP"));
    assert_eq!(
        serde_json::Value::Object(first.variables.clone()),
        json!({
            "telefono_celular": "3001234567",
            "monto_deuda": "2000.5",
            "fecha_de_vencimiento": "2026-12-01",
        })
    );
    assert_eq!(
        report.clients[1].variables["monto_deuda"],
        json!("99999.99")
    );
    assert_eq!(report.clients[1].email, None);
}

#[test]
fn xlsx_cells_read_as_a_person_sees_them() {
    let bytes = xlsx(|sheet| {
        write_row(
            sheet,
            0,
            &[
                "Teléfono",
                "Monto",
                "Vence",
                "Cita",
                "Hora",
                "Activo",
                "Código",
                "Grande",
            ],
        );
        sheet.write_number(1, 0, 3138539155.0).expect("phone");
        sheet.write_number(1, 1, 1234567.891).expect("amount");
        let date = ExcelDateTime::from_ymd(2026, 12, 1).expect("date");
        let with_time = date.clone().and_hms(14, 30, 0).expect("time");
        let time = ExcelDateTime::from_hms(9, 5, 0).expect("time");
        sheet
            .write_datetime_with_format(1, 2, date, &Format::new().set_num_format("dd/mm/yyyy"))
            .expect("date");
        sheet
            .write_datetime_with_format(
                1,
                3,
                with_time,
                &Format::new().set_num_format("dd/mm/yyyy hh:mm"),
            )
            .expect("datetime");
        sheet
            .write_datetime_with_format(1, 4, time, &Format::new().set_num_format("hh:mm"))
            .expect("time");
        sheet.write_boolean(1, 5, true).expect("bool");
        sheet.write_string(1, 6, "007").expect("text");
        sheet.write_number(1, 7, 1e20).expect("big");
    });
    let report = parse(&bytes, "c.xlsx").expect("parsed");
    let client = &report.clients[0];
    assert_eq!(client.phone, "3138539155");
    assert_eq!(
        serde_json::Value::Object(client.variables.clone()),
        json!({
            "monto": "1234567.891",
            "vence": "2026-12-01",
            "cita": "2026-12-01T14:30:00",
            "hora": "09:05:00",
            "activo": "true",
            "codigo": "007",
            "grande": "100000000000000000000",
        })
    );
}

#[test]
fn nul_characters_in_cells_are_dropped() {
    // rust_xlsxwriter writes U+0000 as Excel's `_x0000_`, which calamine reads back.
    let bytes = xlsx(|sheet| {
        write_row(sheet, 0, &["Nombre\u{0}", "Tel\u{0}éfono", "Monto"]);
        write_row(
            sheet,
            1,
            &["Ana\u{0} María", "313\u{0}8539155", "1\u{0}\u{0}2"],
        );
        write_row(sheet, 2, &["\u{0}", "\u{0}\u{0}", "\u{0}"]);
        write_row(sheet, 3, &["Luis", "3138539156\u{0}", "\u{0}"]);
    });
    let report = parse(&bytes, "c.xlsx").expect("parsed");
    assert_eq!(report.total_rows, 2, "a row of NULs only is blank");
    assert_eq!(numbers(&report), ["+573138539155", "+573138539156"]);
    let ana = &report.clients[0];
    assert_eq!(ana.name.as_deref(), Some("Ana María"));
    assert_eq!(ana.phone, "3138539155");
    assert_eq!(
        serde_json::Value::Object(ana.variables.clone()),
        json!({"monto": "12"})
    );
    assert!(
        report.clients[1].variables.is_empty(),
        "an empty cell once its NUL is gone"
    );
}

#[test]
fn the_first_non_empty_sheet_is_read() {
    let bytes = workbook(|book| {
        book.add_worksheet()
            .write_string(0, 0, "  ")
            .expect("blank");
        book.add_worksheet();
        let data = book.add_worksheet();
        write_row(data, 0, &["Celular", "Nombre"]);
        write_row(data, 1, &["3138539155", "Ana"]);
        write_row(book.add_worksheet(), 0, &["Nombre"]);
    });
    let report = parse(&bytes, "c.xlsx").expect("parsed");
    assert_eq!(numbers(&report), ["+573138539155"]);
    assert_eq!(report.clients[0].row, 2);
}

#[test]
fn a_sheet_without_a_phone_column_is_refused() {
    let bytes = xlsx(|sheet| {
        write_row(sheet, 0, &["  Teléfono Celular ", "Nombre", "Correo"]);
        write_row(sheet, 1, &["3138539155", "Ana", "a@x.co"]);
    });
    let err = parse(&bytes, "c.xlsx").unwrap_err();
    assert_eq!(err, ImportError::NoPhoneColumn);
    assert_eq!(
        err.message(),
        "No se encontró la columna requerida: teléfono"
    );
    assert_eq!(err.status(), 400);
    assert_eq!(
        parse(b"nombre,email\nAna,a@x.co\n", "c.csv").unwrap_err(),
        ImportError::NoPhoneColumn
    );
}

#[test]
fn a_header_without_data_rows_is_refused() {
    let bytes = xlsx(|sheet| {
        write_row(sheet, 0, &["Teléfono", "Nombre"]);
        sheet.write_string(3, 1, " ").expect("blank");
    });
    let err = parse(&bytes, "c.xlsx").unwrap_err();
    assert_eq!(err, ImportError::NoDataRows);
    assert_eq!(err.message(), "El archivo no tiene filas de datos");
    for text in [
        &b"nombre,telefono\n"[..],
        b"nombre,telefono\n,\n , \n",
        b"",
        b"\n\n",
    ] {
        assert_eq!(parse(text, "c.csv").unwrap_err(), ImportError::NoDataRows);
    }
    assert_eq!(
        parse(&xlsx(|_| {}), "empty.xlsx").unwrap_err(),
        ImportError::NoDataRows
    );
}

#[test]
fn unreadable_content_is_refused_with_a_detail() {
    let good = xlsx(|sheet| write_row(sheet, 0, &["Teléfono"]));
    let truncated = &good[..good.len() / 2];
    let cases: [(&[u8], &str); 6] = [
        (b"PK\x03\x04garbage", "c.xlsx"),
        (truncated, "c.xlsx"),
        (b"nombre,telefono\nAna,313\n", "c.xls"),
        (b"<html><table></table></html>", "c.ods"),
        (&good, "c.csv"),
        (b"telefono\n\0\0\0", "c.txt"),
    ];
    for (bytes, name) in cases {
        let err = parse(bytes, name).unwrap_err();
        assert!(matches!(err, ImportError::Unreadable(_)), "{name}: {err:?}");
        assert_eq!(err.message(), "No se pudo leer el archivo");
        assert!(err.detail().is_some_and(|d| !d.is_empty()), "{name}");
        assert_ne!(err.detail().as_deref(), Some(PANIC_DETAIL), "{name}");
    }
}

#[test]
fn a_spreadsheet_is_read_by_content_when_its_extension_is_another_spreadsheet() {
    let bytes = xlsx(|sheet| {
        write_row(sheet, 0, &["Teléfono"]);
        write_row(sheet, 1, &["3138539155"]);
    });
    for name in ["c.xls", "c.ods", "c.xlsm"] {
        let report = parse(&bytes, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(numbers(&report), ["+573138539155"], "{name}");
    }
}

#[test]
fn unknown_extensions_are_refused() {
    for name in ["c.pdf", "c.xlsb", "clientes", "", "c.csv.zip"] {
        let err = parse(b"telefono\n3138539155\n", name).unwrap_err();
        assert_eq!(err, ImportError::UnsupportedFormat, "{name:?}");
        assert_eq!(
            err.message(),
            "Formato de archivo no soportado. Usa .xlsx, .xls, .ods o .csv"
        );
    }
    let report = parse(b"telefono\n3138539155\n", "C.CSV").expect("upper case");
    assert_eq!(report.clients.len(), 1);
}

#[test]
fn duplicates_in_the_file_and_in_the_group_are_counted() {
    let csv = "telefono,nombre\n3138539155,A\n+573138539155,B\n3138539156,C\n3138539157,D\n573138539157,E\n";
    let existing: HashSet<String> = ["+573138539157".to_owned()].into();
    let report = parse_clients(csv.as_bytes(), "c.csv", &options(), &existing).expect("parsed");
    assert_eq!(numbers(&report), ["+573138539155", "+573138539156"]);
    assert_eq!(report.duplicates, 3);
    assert_eq!(report.total_rows, 5);
    assert_eq!(
        report.clients[0].name.as_deref(),
        Some("A"),
        "the first one is kept"
    );
}

#[test]
fn empty_phone_cells_are_invalid_rows_and_empty_rows_are_skipped() {
    let report = parse(
        b"nombre|telefono|monto\nAna||5\n\n||\nLuis|3138539155|\n",
        "c.txt",
    )
    .expect("parsed");
    assert_eq!(report.total_rows, 2);
    assert_eq!(report.invalid_rows, 1);
    assert_eq!(report.errors[0].row, 2);
    assert_eq!(report.errors[0].column, "telefono");
    assert_eq!(report.errors[0].value, "");
    assert_eq!(report.clients[0].row, 5);
    assert!(
        report.clients[0].variables.is_empty(),
        "empty cells are left out"
    );
}

#[test]
fn windows_1252_with_semicolons_keeps_accents_and_decimal_commas() {
    let bytes = b"Nombre;Tel\xe9fono;Direcci\xf3n;Monto\r\nJos\xe9 Mu\xf1oz;313 853 9156;Cra 7 \x96 12;2000,5\r\n";
    let report = parse(bytes, "c.csv").expect("parsed");
    let client = &report.clients[0];
    assert_eq!(client.name.as_deref(), Some("José Muñoz"));
    assert_eq!(client.address.as_deref(), Some("Cra 7 – 12"));
    assert_eq!(client.variables["monto"], json!("2000,5"));
}

#[test]
fn a_utf8_csv_with_bom_and_quoted_fields_reads() {
    let csv = "\u{feff}\"Teléfono\",Nombre,Nota\n\"313 853 9155\",\"Pérez, Ana\",\"dijo \"\"sí\"\"\nluego\"\n";
    let report = parse(csv.as_bytes(), "c.csv").expect("parsed");
    let client = &report.clients[0];
    assert_eq!(client.name.as_deref(), Some("Pérez, Ana"));
    assert_eq!(client.variables["nota"], json!("dijo \"sí\"\nluego"));
}

#[test]
fn tab_delimited_utf16_and_pipe_files_read() {
    let text = "Teléfono\tNombre\r\n3138539155\tÑandú\r\n";
    let le: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let be: Vec<u8> = [0xFE, 0xFF]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_be_bytes))
        .collect();
    for (bytes, name) in [
        (le, "u.txt"),
        (be, "u.txt"),
        (text.as_bytes().to_vec(), "t.csv"),
    ] {
        let report = parse(&bytes, name).expect("parsed");
        assert_eq!(report.clients[0].name.as_deref(), Some("Ñandú"));
        assert_eq!(numbers(&report), ["+573138539155"]);
    }
    let report = parse(b"telefono|nombre\n3138539155|Ana, B\n", "p.txt").expect("parsed");
    assert_eq!(report.clients[0].name.as_deref(), Some("Ana, B"));
}

#[test]
fn a_second_phone_column_and_repeated_headers_become_variables() {
    let report = parse(
        b"Telefono;Celular;Nota;Nota\n3138539155;3001234567;a;b\n",
        "c.csv",
    )
    .expect("parsed");
    let vars = &report.clients[0].variables;
    assert_eq!(vars["celular"], json!("3001234567"));
    assert_eq!(vars["nota"], json!("a"));
    assert_eq!(vars["nota_2"], json!("b"));
}

#[test]
fn too_many_rows_reports_the_real_count() {
    let mut small = options();
    small.max_rows = 2;
    let csv = b"telefono\n3138539155\n\n3138539156\n3138539157\nx\n";
    let err = parse_clients(csv, "c.csv", &small, &HashSet::new()).unwrap_err();
    assert_eq!(err, ImportError::TooManyRows { rows: 4, max: 2 });
    assert_eq!(
        err.message(),
        "El archivo tiene demasiadas filas (4). El máximo permitido es 2 filas."
    );
    assert_eq!(err.status(), 400);
    small.max_rows = 4;
    assert!(parse_clients(csv, "c.csv", &small, &HashSet::new()).is_ok());
}

#[test]
fn an_oversized_file_is_413_with_its_size() {
    let mut small = options();
    small.max_upload_mb = 1;
    let bytes = vec![b'1'; 1024 * 1024 + 5 * 1024 * 1024 / 100];
    let err = parse_clients(&bytes, "c.csv", &small, &HashSet::new()).unwrap_err();
    assert_eq!(err.status(), 413);
    assert_eq!(
        err.message(),
        "El archivo es demasiado grande (1.05 MB). El tamaño máximo permitido es 1 MB."
    );
    assert_eq!(check_size(1024 * 1024, &small), Ok(()));
    let too_large = ImportError::TooLarge {
        size_bytes: 30 * 1024 * 1024 + 512 * 1024,
        max_mb: 25,
    };
    assert_eq!(
        too_large.message(),
        "El archivo es demasiado grande (30.50 MB). El tamaño máximo permitido es 25 MB."
    );
}

#[test]
fn base64_in_every_dialect_decodes() {
    let bytes: Vec<u8> = (0u8..=255).collect();
    let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    let url_padded = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
    let wrapped: String = standard
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
        .collect();
    for text in [
        standard.clone(),
        url,
        url_padded,
        standard.trim_end_matches('=').to_owned(),
        wrapped,
        format!("  {standard}\n"),
        format!("data:application/vnd.ms-excel;base64,{standard}"),
        format!("DATA:text/csv;charset=utf-8;BASE64,{standard}"),
    ] {
        assert_eq!(decode_base64(&text).as_deref(), Ok(&bytes[..]), "{text:?}");
    }
}

#[test]
fn bad_base64_is_refused() {
    for bad in [
        "%%%",
        "",
        "   ",
        "a",
        "data:text/csv;base64",
        "data:text/csv,dGVsZWZvbm8=",
        "dGVs=ZWZvbm8",
        "dGVsZWZvbm8+_",
        "ñandú",
    ] {
        assert_eq!(
            decode_base64(bad),
            Err(ImportError::InvalidBase64),
            "{bad:?}"
        );
    }
    assert_eq!(
        ImportError::InvalidBase64.message(),
        "El archivo no es un base64 válido"
    );
}

#[test]
fn normalize_phone_is_the_import_rule() {
    assert_eq!(
        normalize_phone("(313) 853-9158", "CO", "+57").as_deref(),
        Some("+573138539158")
    );
    assert_eq!(
        normalize_phone("573138539157", "co", "+57").as_deref(),
        Some("+573138539157")
    );
    assert_eq!(normalize_phone("12345", "CO", "+57"), None);
}

/// Colombian mobile ranges in use (libphonenumber's metadata) and Bogotá landlines.
fn colombian_number() -> impl Strategy<Value = String> {
    // Mobile `3(?:0[0-5]|1\d|2[0-3]|5[01]|70)\d{7}`, landline `601[1-9]\d{6}`.
    let mobile_prefixes: Vec<u32> = (300..=305)
        .chain(310..=323)
        .chain([350, 351, 370])
        .collect();
    prop_oneof![
        (proptest::sample::select(mobile_prefixes), 0u32..=9_999_999)
            .prop_map(|(a, b)| format!("{a}{b:07}")),
        (1_000_000u32..=9_999_999).prop_map(|b| format!("601{b}")),
    ]
}

proptest! {
    #[test]
    fn any_accepted_form_normalises_back_to_the_same_e164(
        national in colombian_number(),
        form in 0usize..9,
    ) {
        let e164 = format!("+57{national}");
        let parsed = phonenumber::parse(None, &e164).expect("parses");
        prop_assert!(phonenumber::is_valid(&parsed), "generator gave an invalid number {}", e164);
        let (a, b, c) = (&national[..3], &national[3..6], &national[6..]);
        let written = match form {
            0 => national.clone(),
            1 => format!("+57 {a} {b} {c}"),
            2 => format!("57{national}"),
            3 => format!("({a}) {b}-{c}"),
            4 => format!("0057{national}"),
            5 => format!("{a}-{b}-{c}"),
            6 => format!("+57({a}){b}{c}"),
            7 => format!("00 57 {a} {b} {c}"),
            _ => format!("{a} {b} {c}"),
        };
        prop_assert_eq!(normalize_phone(&written, "CO", "+57"), Some(e164));
    }

    #[test]
    fn phone_normalisation_never_panics(raw in "[0-9 +()./\\-]{0,24}") {
        if let Some(e164) = normalize_phone(&raw, "CO", "+57") {
            prop_assert!(e164.starts_with('+'));
            prop_assert_eq!(normalize_phone(&e164, "CO", "+57"), Some(e164.clone()));
        }
    }

    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), ext in 0usize..5) {
        let name = ["x.csv", "x.txt", "x.xlsx", "x.xls", "x.ods"][ext];
        let result = parse(&bytes, name);
        let detail = result.err().and_then(|e| e.detail());
        prop_assert_ne!(detail.as_deref(), Some(PANIC_DETAIL));
    }

    #[test]
    fn text_rows_are_counted_whatever_their_content(
        cells in proptest::collection::vec("[a-z0-9 ,;\"|]{0,12}", 1..40),
    ) {
        let mut csv = String::from("telefono;nota\n");
        for cell in &cells {
            csv.push_str("3138539155;");
            csv.push_str(cell);
            csv.push('\n');
        }
        if let Ok(report) = parse(csv.as_bytes(), "c.csv") {
            prop_assert_eq!(report.clients.len() + report.duplicates + report.invalid_rows, report.total_rows);
            prop_assert!(report.clients.len() <= 1);
        }
    }
}

/// tests/fixtures/fuzz/README.md: a FAT cycle, a DIFAT listing one sector
/// over and over and cells far apart (all out of memory in calamine), and a
/// short FAT sector (a panic in calamine).
#[test]
fn hostile_cfb_files_are_unreadable_not_fatal() {
    for file in [
        "cfb_fat_cycle.xls",
        "cfb_difat_repeats.xls",
        "xls_far_cells.xls",
        "cfb_short_sector.xls",
    ] {
        let bytes = fixture(&format!("fuzz/{file}"));
        for name in ["c.xls", "c.xlsx", "c.ods"] {
            let err = parse(&bytes, name).unwrap_err();
            assert!(
                matches!(err, ImportError::Unreadable(_)),
                "{file} as {name}: {err:?}"
            );
            assert_eq!(err.status(), 400);
        }
    }
    let err = parse(&fixture("fuzz/cfb_fat_cycle.xls"), "c.xls").unwrap_err();
    assert!(err.detail().is_some_and(|d| d.contains("ciclo")), "{err:?}");
}

/// `rows` valid, distinct numbers, with one repeated number after the first chunk.
fn long_csv(rows: usize) -> String {
    let mut csv = String::from("nombre,telefono,monto\n");
    for i in 0..rows {
        csv.push_str(&format!("C{i},31{}{:07},{i}\n", i % 6, i));
    }
    csv.push_str("Otra vez,3100000000,1\n");
    csv
}

#[test]
fn streamed_clients_come_in_chunks_in_file_order_and_match_the_plain_parse() {
    let csv = long_csv(25_000);
    let mut chunks: Vec<Vec<ParsedClient>> = Vec::new();
    let report = parse_clients_streamed(
        csv.as_bytes(),
        "c.csv",
        &options(),
        &HashSet::new(),
        &mut |chunk| chunks.push(chunk),
    )
    .unwrap();
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, [STREAM_CHUNK, STREAM_CHUNK, 5_000]);
    assert_eq!(report.streamed, 25_000);
    assert!(report.clients.is_empty());
    assert_eq!(report.total_rows, 25_001);
    assert_eq!(report.duplicates, 1);
    let plain = parse(csv.as_bytes(), "c.csv").unwrap();
    let streamed: Vec<ParsedClient> = chunks.into_iter().flatten().collect();
    assert_eq!(streamed, plain.clients);
}

#[test]
fn a_file_refused_at_its_end_never_hands_over_its_last_chunk() {
    let csv = long_csv(12_000);
    let mut handed = 0;
    let refused = parse_clients_streamed(
        csv.as_bytes(),
        "c.csv",
        &ImportOptions {
            max_rows: 12_000,
            ..options()
        },
        &HashSet::new(),
        &mut |chunk| handed += chunk.len(),
    );
    assert_eq!(
        refused,
        Err(ImportError::TooManyRows {
            rows: 12_001,
            max: 12_000
        })
    );
    // The first full chunk went while the file was read; the rest never did,
    // and the caller (which sees the error) keeps none of it.
    assert_eq!(handed, STREAM_CHUNK);
}
