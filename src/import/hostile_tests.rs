//! Files built to cost more than they weigh: every bound of `bounds.rs`,
//! `ods.rs` and the row builder, each refused with its own message.

use std::collections::HashSet;
use std::io::Write;

use super::*;

/// Small bounds, so that each bomb stays small: parts up to 8 MiB inflated,
/// 4 MiB of client text, 1,000 cells.
fn small() -> ImportOptions {
    ImportOptions {
        region: "CO".into(),
        prefix: "+57".into(),
        max_rows: 200_000,
        max_upload_mb: 1,
        max_cells: 1_000,
    }
}

fn parse_small(bytes: &[u8], name: &str) -> Result<ImportReport, ImportError> {
    parse_clients(bytes, name, &small(), &HashSet::new())
}

/// A ZIP of these parts, deflated (the first stored, as ODF wants its `mimetype`).
pub(super) fn zip_of(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (name, data)) in parts.iter().enumerate() {
        let method = match i {
            0 => zip::CompressionMethod::Stored,
            _ => zip::CompressionMethod::Deflated,
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(data.len() > u32::MAX as usize / 2);
        out.start_file(*name, options).expect("zip part");
        out.write_all(data).expect("zip write");
    }
    out.finish().expect("zip").into_inner()
}

/// An `.ods` whose first table holds these rows (`table:table-row` elements).
pub(super) fn ods_of(rows: &str) -> Vec<u8> {
    let content = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0" office:version="1.3"><office:body><office:spreadsheet><table:table table:name="Hoja1">{rows}</table:table></office:spreadsheet></office:body></office:document-content>"#
    );
    zip_of(&[
        (
            "mimetype",
            b"application/vnd.oasis.opendocument.spreadsheet",
        ),
        ("content.xml", content.as_bytes()),
    ])
}

/// An `.xlsx` whose first sheet's `sheetData` is `sheet_data`, with these
/// shared strings (none when empty).
pub(super) fn xlsx_of(sheet_data: &[u8], shared: &[u8]) -> Vec<u8> {
    const MAIN: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
    let workbook = format!(
        r#"<workbook xmlns="{MAIN}" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Hoja1" sheetId="1" r:id="rId1"/></sheets></workbook>"#
    );
    let shared_rel = if shared.is_empty() {
        ""
    } else {
        r#"<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>"#
    };
    let rels = format!(
        r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>{shared_rel}</Relationships>"#
    );
    let mut sheet = format!(r#"<worksheet xmlns="{MAIN}"><sheetData>"#).into_bytes();
    sheet.extend_from_slice(sheet_data);
    sheet.extend_from_slice(b"</sheetData></worksheet>");
    let types = br#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>"#;
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("[Content_Types].xml", types),
        ("_rels/.rels", ROOT_RELS),
        ("xl/workbook.xml", workbook.as_bytes()),
        ("xl/_rels/workbook.xml.rels", rels.as_bytes()),
        ("xl/worksheets/sheet1.xml", &sheet),
    ];
    if !shared.is_empty() {
        parts.push(("xl/sharedStrings.xml", shared));
    }
    zip_of(&parts)
}

const ROOT_RELS: &[u8] = br#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;

fn inline_row(row: usize, cells: &[&str]) -> String {
    let mut out = format!(r#"<row r="{row}">"#);
    for (i, text) in cells.iter().enumerate() {
        let column = (b'A' + i as u8) as char;
        out.push_str(&format!(
            r#"<c r="{column}{row}" t="inlineStr"><is><t>{text}</t></is></c>"#
        ));
    }
    out.push_str("</row>");
    out
}

fn text_cell(text: &str) -> String {
    format!(
        r#"<table:table-cell office:value-type="string"><text:p>{text}</text:p></table:table-cell>"#
    )
}

#[test]
fn an_ods_repeating_one_cell_over_rows_and_columns_is_refused_by_its_cells() {
    // The issue's file: one cell × 1,000 columns × 50,000 rows, in under 1 KB.
    let bomb = ods_of(&format!(
        r#"<table:table-row>{}{}</table:table-row><table:table-row table:number-rows-repeated="50000"><table:table-cell table:number-columns-repeated="1000" office:value-type="float" office:value="3138539155"/></table:table-row>"#,
        text_cell("telefono"),
        text_cell("nombre"),
    ));
    assert!(bomb.len() < 1_000, "{} bytes", bomb.len());
    let refused = parse_small(&bomb, "bomba.ods").unwrap_err();
    assert_eq!(refused, ImportError::TooManyCells { max: 1_000 });
    assert_eq!(refused.status(), 400);
    assert!(
        refused.message().contains("demasiadas celdas"),
        "{}",
        refused.message()
    );
}

#[test]
fn ods_repeats_of_blank_rows_and_cells_cost_nothing_and_keep_row_numbers() {
    // As LibreOffice writes a sheet: blank columns and rows to the end of it.
    let rows = format!(
        r#"<table:table-row>{}{}<table:table-cell table:number-columns-repeated="16000"/></table:table-row><table:table-row table:number-rows-repeated="3"><table:table-cell table:number-columns-repeated="1024"/></table:table-row><table:table-row>{}{}<table:table-cell table:number-columns-repeated="16000"/></table:table-row><table:table-row table:number-rows-repeated="1048570"><table:table-cell table:number-columns-repeated="1024"/></table:table-row>"#,
        text_cell("telefono"),
        text_cell("nombre"),
        text_cell("3138539155"),
        text_cell("Ana"),
    );
    let report = parse_small(&ods_of(&rows), "c.ods").expect("reads");
    assert_eq!(report.total_rows, 1);
    assert_eq!(report.clients[0].row, 5);
    assert_eq!(report.clients[0].name.as_deref(), Some("Ana"));
}

#[test]
fn a_repeated_ods_row_with_data_is_that_many_rows() {
    let rows = format!(
        r#"<table:table-row>{}{}</table:table-row><table:table-row table:number-rows-repeated="3">{}<table:table-cell table:number-columns-repeated="2" office:value-type="string"><text:p>x</text:p></table:table-cell></table:table-row>"#,
        text_cell("telefono"),
        text_cell("nombre"),
        text_cell("3138539155"),
    );
    let report = parse_small(&ods_of(&rows), "c.ods").expect("reads");
    assert_eq!((report.total_rows, report.duplicates), (3, 2));
    let client = &report.clients[0];
    assert_eq!(client.name.as_deref(), Some("x"));
    // The repeated cell fills two columns: the second has no header.
    assert!(client.variables.is_empty());
}

#[test]
fn ods_cells_read_their_typed_values_and_their_paragraphs() {
    let rows = format!(
        r#"<table:table-row>{}{}{}{}{}{}</table:table-row><table:table-row><table:table-cell office:value-type="float" office:value="3138539155"><text:p>3.138.539.155</text:p></table:table-cell><table:table-cell office:value-type="string"><text:p>Ana<text:s text:c="2"/>María</text:p><text:p>P&amp;G<text:tab/>x</text:p><office:annotation><text:p>nota</text:p></office:annotation></table:table-cell><table:table-cell office:value-type="date" office:date-value="2026-12-01T00:00:00"><text:p>01/12/26</text:p></table:table-cell><table:table-cell office:value-type="time" office:time-value="PT14H30M00S"/><table:table-cell office:value-type="boolean" office:boolean-value="true"/><table:table-cell office:value-type="string" office:string-value="" calcext:value-type="error"><text:p>#N/A</text:p></table:table-cell></table:table-row>"#,
        text_cell("telefono"),
        text_cell("nombre"),
        text_cell("fecha"),
        text_cell("hora"),
        text_cell("activo"),
        text_cell("calculo"),
    );
    let report = parse_small(&ods_of(&rows), "c.ods").expect("reads");
    let client = &report.clients[0];
    assert_eq!(client.phone, "3138539155");
    assert_eq!(client.name.as_deref(), Some("Ana  María\nP&G\tx"));
    assert_eq!(client.variables["fecha"], "2026-12-01");
    assert_eq!(client.variables["hora"], "14:30:00");
    assert_eq!(client.variables["activo"], "true");
    assert!(!client.variables.contains_key("calculo"));
}

#[test]
fn an_xlsx_part_inflating_past_its_bound_is_refused_naming_it() {
    // 9 MiB of rows (over 8 × 1 MiB), each small: no single run is long.
    let mut data = inline_row(1, &["telefono"]).into_bytes();
    let row = inline_row(2, &["3138539155"]);
    while data.len() < 9 * 1024 * 1024 {
        data.extend_from_slice(row.as_bytes());
    }
    let bomb = xlsx_of(&data, b"");
    assert!(bomb.len() < 1024 * 1024, "{} bytes", bomb.len());
    let refused = parse_small(&bomb, "c.xlsx").unwrap_err();
    assert_eq!(
        refused,
        ImportError::PartTooLarge {
            part: "xl/worksheets/sheet1.xml".into(),
            max_mb: 8
        }
    );
    assert_eq!(
        refused.message(),
        "El archivo descomprimido es demasiado grande: su parte \"xl/worksheets/sheet1.xml\" supera 8 MB."
    );
}

#[test]
fn one_huge_cell_or_a_sea_of_whitespace_is_refused_before_it_is_held() {
    let huge = "9".repeat(5 * 1024 * 1024);
    let inline = format!(
        "{}{}",
        inline_row(1, &["telefono"]),
        inline_row(2, &[&huge])
    );
    let shared = format!(
        r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>telefono</t></si><si><t>{huge}</t></si></sst>"#
    );
    let by_reference =
        br#"<row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>1</v></c></row>"#;
    let whitespace = format!(
        "{}{}{}",
        inline_row(1, &["telefono"]),
        " ".repeat(5 * 1024 * 1024),
        inline_row(2, &["3138539155"])
    );
    for (what, bomb, part) in [
        (
            "inline cell",
            xlsx_of(inline.as_bytes(), b""),
            "xl/worksheets/sheet1.xml",
        ),
        (
            "shared string",
            xlsx_of(by_reference, shared.as_bytes()),
            "xl/sharedStrings.xml",
        ),
        (
            "whitespace",
            xlsx_of(whitespace.as_bytes(), b""),
            "xl/worksheets/sheet1.xml",
        ),
    ] {
        assert_eq!(
            parse_small(&bomb, "c.xlsx"),
            Err(ImportError::TextTooLong {
                part: part.into(),
                max_bytes: bounds::MAX_MARKUP_RUN
            }),
            "{what}"
        );
    }
}

#[test]
fn a_long_cell_is_refused_naming_its_row_and_column() {
    let long = "a".repeat(MAX_VARIABLE_CHARS + 1);
    let csv = format!("telefono,Nombre,Nota\n3138539155,Ana,ok\n3138539156,Luis,{long}\n");
    let refused = parse_small(csv.as_bytes(), "c.csv").unwrap_err();
    assert_eq!(
        refused,
        ImportError::CellTooLong {
            row: 3,
            column: "Nota".into(),
            chars: MAX_VARIABLE_CHARS + 1,
            max: MAX_VARIABLE_CHARS
        }
    );
    assert_eq!(
        refused.message(),
        "La celda de la fila 3, columna \"Nota\", es demasiado larga (1001 caracteres). El máximo permitido es 1000 caracteres."
    );
    // Characters, not bytes: 1,000 accented letters are allowed.
    let accented = "é".repeat(MAX_VARIABLE_CHARS);
    let csv = format!("telefono,Nota\n3138539155,{accented}\n");
    assert!(parse_small(csv.as_bytes(), "c.csv").is_ok());
    // A field has its own bound; a header cell is named by its column letter.
    let name = "n".repeat(MAX_NAME_CHARS + 1);
    let csv = format!("telefono,nombre\n3138539155,{name}\n");
    assert!(matches!(
        parse_small(csv.as_bytes(), "c.csv"),
        Err(ImportError::CellTooLong { row: 2, ref column, max: MAX_NAME_CHARS, .. }) if column == "nombre"
    ));
    let header = "h".repeat(MAX_HEADER_CHARS + 1);
    let csv = format!("telefono,{header}\n3138539155,x\n");
    assert!(matches!(
        parse_small(csv.as_bytes(), "c.csv"),
        Err(ImportError::CellTooLong { row: 1, ref column, .. }) if column == "B"
    ));
}

#[test]
fn one_shared_string_in_every_row_is_refused_by_the_text_budget() {
    let value = "v".repeat(MAX_VARIABLE_CHARS);
    let shared = format!(
        r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>telefono</t></si><si><t>nota</t></si><si><t>{value}</t></si></sst>"#
    );
    let mut rows = String::from(
        r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>"#,
    );
    // 4,500 rows × 1,000 characters: over 4 × 1 MiB kept, in a few KB.
    for row in 2..4_500 {
        rows.push_str(&format!(
            r#"<row r="{row}"><c r="A{row}"><v>31385{row:05}</v></c><c r="B{row}" t="s"><v>2</v></c></row>"#
        ));
    }
    let options = ImportOptions {
        max_cells: 100_000,
        ..small()
    };
    let bomb = xlsx_of(rows.as_bytes(), shared.as_bytes());
    let refused = parse_clients(&bomb, "c.xlsx", &options, &HashSet::new()).unwrap_err();
    assert_eq!(refused, ImportError::TooMuchText { max_mb: 4 });
}

#[test]
fn more_shared_strings_than_cells_are_refused() {
    let mut shared =
        String::from(r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">"#);
    for i in 0..1_001 {
        shared.push_str(&format!("<si><t>{i}</t></si>"));
    }
    shared.push_str("</sst>");
    let rows = br#"<row r="1"><c r="A1" t="s"><v>0</v></c></row>"#;
    assert_eq!(
        parse_small(&xlsx_of(rows, shared.as_bytes()), "c.xlsx"),
        Err(ImportError::TooManyCells { max: 1_000 })
    );
}

#[test]
fn a_row_with_one_value_far_to_the_right_costs_its_width() {
    // Column XFD in every row: each row is 16,384 cells of work.
    let mut rows = inline_row(1, &["telefono"]);
    for row in 2..10 {
        rows.push_str(&format!(
            r#"<row r="{row}"><c r="A{row}"><v>31385391{row:02}</v></c><c r="XFD{row}" t="inlineStr"><is><t>x</t></is></c></row>"#
        ));
    }
    assert_eq!(
        parse_small(&xlsx_of(rows.as_bytes(), b""), "c.xlsx"),
        Err(ImportError::TooManyCells { max: 1_000 })
    );
}

#[test]
fn a_header_repeating_one_name_across_every_column_reads_at_once() {
    let mut header = String::from("telefono");
    for _ in 1..16_384 {
        header.push_str(",x");
    }
    let csv = format!("{header}\n3138539155,a\n");
    let options = ImportOptions {
        max_cells: 100_000,
        ..small()
    };
    let report = parse_clients(csv.as_bytes(), "c.csv", &options, &HashSet::new()).expect("reads");
    assert_eq!(report.clients[0].variables["x"], "a");
}

// From a hostile review of the first version of these bounds.

#[test]
fn a_zip_with_data_in_front_is_refused_not_read_unchecked() {
    let huge = "9".repeat(MAX_VARIABLE_CHARS * 100);
    let inline = format!(
        "{}{}",
        inline_row(1, &["telefono"]),
        inline_row(2, &[&huge])
    );
    let mut prefixed = b"JUNK".to_vec();
    prefixed.extend(xlsx_of(inline.as_bytes(), b""));
    assert_eq!(
        parse_small(&prefixed, "c.xlsx"),
        Err(ImportError::Unreadable(
            "el archivo tiene datos antes de su contenido".into()
        ))
    );
}

#[test]
fn an_ods_with_excel_parts_beside_it_is_still_read_by_our_reader() {
    let rows = format!(
        r#"<table:table-row>{}</table:table-row><table:table-row table:number-rows-repeated="50000"><table:table-cell table:number-columns-repeated="1000" office:value-type="float" office:value="3138539155"/></table:table-row>"#,
        text_cell("telefono"),
    );
    let content = format!(
        r#"<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:spreadsheet><table:table table:name="H">{rows}</table:table></office:spreadsheet></office:body></office:document-content>"#
    );
    let decoy = zip_of(&[
        (
            "mimetype",
            b"application/vnd.oasis.opendocument.spreadsheet",
        ),
        ("content.xml", content.as_bytes()),
        ("xl/decoy", b"x"),
    ]);
    for name in ["c.ods", "c.xlsx", "c.xls"] {
        assert_eq!(
            parse_small(&decoy, name),
            Err(ImportError::TooManyCells { max: 1_000 }),
            "{name}"
        );
    }
}

#[test]
fn an_archive_calamine_would_read_as_binary_excel_is_unreadable() {
    let xlsb = zip_of(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("xl/workbook.bin", b"\x83\x01\x00"),
        ("xl/worksheets/sheet1.bin", b"\x81\x01\x00"),
    ]);
    assert!(matches!(
        parse_small(&xlsb, "c.xlsx"),
        Err(ImportError::Unreadable(_))
    ));
}

#[test]
fn a_shared_strings_table_announcing_billions_is_refused_before_calamine_reserves_them() {
    let shared = br#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="100000000000"><si><t>telefono</t></si></sst>"#;
    let rows = br#"<row r="1"><c r="A1" t="s"><v>0</v></c></row>"#;
    assert_eq!(
        parse_small(&xlsx_of(rows, shared), "c.xlsx"),
        Err(ImportError::TooManyCells { max: 1_000 })
    );
}

#[test]
fn a_long_ods_cell_repeated_over_every_column_is_refused_as_it_is_read() {
    // Three paragraphs of 40,000 characters, over all 16,384 columns.
    let paragraph = format!("<text:p>{}</text:p>", "x".repeat(40_000));
    let rows = format!(
        r#"<table:table-row><table:table-cell table:number-columns-repeated="16384" office:value-type="string">{p}{p}{p}</table:table-cell></table:table-row>"#,
        p = paragraph
    );
    assert!(matches!(
        parse_small(&ods_of(&rows), "c.ods"),
        Err(ImportError::CellTooLong { row: 1, ref column, max: MAX_VARIABLE_CHARS, .. }) if column == "A"
    ));
    // Spaces spelled out by text:s count as what they stand for.
    let spaces = r#"<text:s text:c="1001"/>"#.repeat(2_000);
    let rows = format!(
        r#"<table:table-row>{}</table:table-row><table:table-row>{}<table:table-cell office:value-type="string"><text:p>a{spaces}b</text:p></table:table-cell></table:table-row>"#,
        text_cell("telefono") + &text_cell("nota"),
        text_cell("3138539155"),
    );
    assert!(matches!(
        parse_small(&ods_of(&rows), "c.ods"),
        Err(ImportError::CellTooLong { row: 2, ref column, .. }) if column == "B"
    ));
}

#[test]
fn blanks_spelled_out_by_text_s_spend_the_text_budget() {
    // Each cell is within bounds (1,000 spaces, trimmed away), all of them
    // together are 5 million characters to write out: over 4 × 1 MiB.
    let cell = r#"<table:table-cell office:value-type="string"><text:p><text:s text:c="1000"/></text:p></table:table-cell>"#;
    let mut rows = format!(
        "<table:table-row>{}</table:table-row>",
        text_cell("telefono")
    );
    for _ in 0..5_000 {
        rows.push_str(&format!("<table:table-row>{cell}</table:table-row>"));
    }
    assert_eq!(
        parse_small(&ods_of(&rows), "c.ods"),
        Err(ImportError::TooMuchText { max_mb: 4 })
    );
}

#[test]
fn a_greater_than_sign_does_not_reset_the_run_of_one_text() {
    let text = "ab&gt;ab>".repeat(10_000);
    let inline = format!(
        "{}{}",
        inline_row(1, &["telefono"]),
        inline_row(2, &[&text])
    );
    assert!(matches!(
        parse_small(&xlsx_of(inline.as_bytes(), b""), "c.xlsx"),
        Err(ImportError::TextTooLong { .. })
    ));
}

#[test]
fn a_csv_row_wider_than_a_sheet_keeps_only_a_sheets_columns() {
    let mut csv = String::from("telefono");
    csv.push_str(&",".repeat(100_000));
    csv.push_str("\n3138539155\n");
    let options = ImportOptions {
        max_cells: 100_000,
        ..small()
    };
    let report = parse_clients(csv.as_bytes(), "c.csv", &options, &HashSet::new()).expect("reads");
    assert_eq!(report.clients.len(), 1);
}

#[test]
fn an_empty_ods_paragraph_is_a_blank_line() {
    let rows = format!(
        r#"<table:table-row>{}{}</table:table-row><table:table-row>{}<table:table-cell office:value-type="string"><text:p>Línea 1</text:p><text:p/><text:p>Línea 3</text:p></table:table-cell></table:table-row>"#,
        text_cell("telefono"),
        text_cell("nota"),
        text_cell("3138539155"),
    );
    let report = parse_small(&ods_of(&rows), "c.ods").expect("reads");
    assert_eq!(report.clients[0].variables["nota"], "Línea 1\n\nLínea 3");
}

#[test]
fn rows_past_the_last_a_sheet_can_have_are_not_read() {
    let rows = format!(
        r#"<table:table-row>{}</table:table-row><table:table-row table:number-rows-repeated="18446744073709551615"><table:table-cell/></table:table-row><table:table-row>{}</table:table-row>"#,
        text_cell("telefono"),
        text_cell("3138539155"),
    );
    assert_eq!(
        parse_small(&ods_of(&rows), "c.ods"),
        Err(ImportError::NoDataRows)
    );
}

#[test]
fn a_row_whose_variables_pass_what_a_request_may_hold_is_refused() {
    let mut csv = String::from("telefono");
    for i in 0..70 {
        csv.push_str(&format!(",v{i}"));
    }
    csv.push_str("\n3138539155");
    let value = "x".repeat(MAX_VARIABLE_CHARS);
    for _ in 0..70 {
        csv.push(',');
        csv.push_str(&value);
    }
    csv.push('\n');
    let options = ImportOptions {
        max_upload_mb: 25,
        ..small()
    };
    assert!(matches!(
        parse_clients(csv.as_bytes(), "c.csv", &options, &HashSet::new()),
        Err(ImportError::RowTooLarge {
            row: 2,
            max: MAX_VARIABLES_BYTES,
            ..
        })
    ));
}
