//! Spreadsheet import (API.md §4, "Spreadsheet import"): an uploaded file
//! (base64 + document name) → clients, row errors and counts.
//!
//! Pure: no I/O, no async, no database, so it is easy to test and to fuzz.
//! It is CPU-bound (a 25 MB sheet takes a while): callers run it on a
//! blocking thread.
//!
//! # API
//!
//! - [`decode_base64`]`(text) -> Result<Vec<u8>, ImportError>`: standard or
//!   URL-safe alphabet, padding optional, an optional `data:…;base64,`
//!   prefix, whitespace (line breaks) anywhere.
//! - [`check_size`]`(bytes.len(), &options)`: the `MAX_UPLOAD_MB` limit on the
//!   decoded size, on its own so that it can run before anything else.
//! - [`parse_clients`]`(bytes, document_name, &options, &existing) ->
//!   Result<ImportReport, ImportError>`: `existing` holds the E.164 numbers
//!   already in the group (empty for a new group); rows with those numbers
//!   count as duplicates, like repeats within the file.
//! - [`normalize_phone`]`(raw, region, prefix) -> Option<String>`: one number
//!   to E.164 with the same rules, for single clients and re-numbering.
//! - [`ImportError::message`] (the contract's Spanish text), [`ImportError::status`]
//!   (400 or 413) and [`ImportError::detail`] (the envelope's `error`).
//!
//! # Reading
//!
//! - The extension (case-insensitive) picks the family: `.xlsx .xlsm .xls
//!   .ods` or `.csv .txt`; anything else is [`ImportError::UnsupportedFormat`].
//!   The content must agree: a spreadsheet is opened with the reader its
//!   extension names and, failing that, whatever spreadsheet format the
//!   content is (an `.xlsx` saved as `.xls` is read); a text name over a
//!   spreadsheet container, NUL bytes, or a spreadsheet nothing can open is
//!   [`ImportError::Unreadable`] with a detail.
//! - Spreadsheets: the first sheet with a non-blank cell; cells read as the
//!   sheet shows them (whole numbers without `.0`, 15 significant digits,
//!   never an exponent; dates `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS` with a
//!   time, times and durations `HH:MM:SS`; booleans `true`/`false`; error
//!   cells such as `#N/A` empty).
//! - Text: UTF-8 (BOM optional), UTF-16 LE/BE with BOM, else Windows-1252;
//!   the delimiter among `, ; \t |` that splits the first 30 lines most
//!   consistently into more than one column (outside quotes); RFC 4180 quotes.
//!   Values are kept as written, except that every cell is trimmed and
//!   Excel's `="0123"` is read as `0123`.
//! - Row numbers are the sheet's own (header = 1 when it is on the first
//!   line): blank rows, and blank lines in text, are skipped but counted.
//!
//! # Mapping
//!
//! - Header = the first non-blank row. A header names a field when its whole
//!   normalised form (lower case, no accents, punctuation as spaces) is one of
//!   API.md's aliases: `" TELÉFONO "` is the phone, `"Teléfono Celular"` is not.
//! - The first column naming a field feeds it; a later one naming the same
//!   field (a second phone column), and every other non-empty header, becomes
//!   a variable keyed by the header in snake_case ASCII (`"Fecha de
//!   vencimiento"` → `fecha_de_vencimiento`; repeats get `_2`, `_3`…; a header
//!   with no ASCII letter or digit is `columna_<n>`). Columns without a header
//!   are ignored.
//! - Empty cells are left out: `None` fields, no key in `variables`.
//! - Each row's phone is normalised once ([`normalize_phone`]). Not valid, or
//!   empty in a row with other data → [`RowError`] with `column` = the phone
//!   header as written (trimmed), `value` = the cell, reason
//!   [`REASON_INVALID_PHONE`], counted in `invalid_rows`. A number seen
//!   before (in the file or in `existing`) counts in `duplicates`; the first
//!   one is kept.
//!
//! # Limits and errors, in the order they are checked
//!
//! 1. Decoded size > `max_bytes()` → [`ImportError::TooLarge`] (413); the
//!    message shows the size in MiB with two decimals (`30.50 MB`) and
//!    `max_upload_mb`.
//! 2. Unknown extension → `UnsupportedFormat`; content → `Unreadable`.
//! 3. While the file is read (each a 400 naming what was too large):
//!    an archive part inflating past 8 × `MAX_UPLOAD_MB` → `PartTooLarge`; a
//!    text or tag of over [`bounds::MAX_MARKUP_RUN`] bytes in an XML part →
//!    `TextTooLong`; more cells than `max_cells` (each row counted from column
//!    A to its last cell; an xlsx's shared strings count too) → `TooManyCells`;
//!    a cell over its field's characters ([`MAX_NAME_CHARS`],
//!    [`MAX_VARIABLE_CHARS`]…) → `CellTooLong` with its row and column; the
//!    kept text over 4 × `MAX_UPLOAD_MB` → `TooMuchText`.
//! 4. No non-blank row at all, or a header and no data rows → `NoDataRows`;
//!    a header without a phone column → `NoPhoneColumn`.
//! 5. More non-blank data rows than `max_rows` → `TooManyRows` with the
//!    file's real count.
//!
//! # Hostile files
//!
//! Our own code does not panic on any input (property tests here, and the
//! fuzzer below). The readers are another matter, and the fuzzer found both
//! kinds of trouble in calamine 0.38 within seconds:
//!
//! - Panics (a damaged `.xls` header): `parse_clients` catches them, and the
//!   file is `Unreadable` with the detail [`PANIC_DETAIL`] instead of a 500.
//! - Allocations of gigabytes from a few KB of damaged `.xls` (calamine
//!   also probes `.xlsx` bytes that start like one): a looping sector chain,
//!   a sector index naming one sector over and over, cells or a
//!   `DIMENSIONS` record far apart (calamine lays each sheet out as a dense
//!   grid). An allocation failure aborts the whole server, so `cfb.rs` and
//!   `xls.rs` read the same structures first and refuse such a file
//!   (`Unreadable`). `tests/fixtures/fuzz/` keeps the inputs.
//! - ZIP and XML bombs (`tests/fixtures/hostile/`): an xlsx's parts are read
//!   through the bounds before calamine opens it (`bounds.rs`), and `.ods` is
//!   read by our own streaming reader (`ods.rs`), which expands repeated rows
//!   and columns only where they hold data. The HTTP layer reads at most
//!   `MAX_CONCURRENT_IMPORTS` files at once, so N uploads at once cost at
//!   most that many imports.
//!
//! # Fuzzing
//!
//! Part of CI: `scripts/fuzz.sh` builds `fuzz/` (libFuzzer, stable toolchain)
//! and runs it from every fixture with a fixed seed for 100,000 runs, with a
//! 1 GiB memory limit; `FUZZ_SECONDS=600 scripts/fuzz.sh` searches longer.
//! `fuzz/` is its own workspace (`[workspace]` in its `Cargo.toml`), so the
//! main build never compiles it; `fuzz/README.md` has the details.

mod bounds;
mod cfb;
mod headers;
mod ods;
mod phone;
mod reader;
mod xls;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

use headers::{Columns, Field, Slot};
use phone::PhoneRules;
use reader::RowSink;

/// `errors[].reason` of a row whose phone is missing or not a valid number.
pub const REASON_INVALID_PHONE: &str = "Número de teléfono inválido";

/// [`ImportError::Unreadable`]'s detail when a reader panicked.
pub const PANIC_DETAIL: &str = "error interno al leer el archivo";

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// ISO 3166 region of the group (`CO`): national numbers are read in it.
    pub region: String,
    /// The group's prefix (`+57`): used when a national number's region is
    /// unknown and to recognise the calling code written without `+`.
    pub prefix: String,
    /// `MAX_CLIENTS_PER_GROUP`: non-blank data rows allowed in one file.
    pub max_rows: usize,
    /// `MAX_UPLOAD_MB`: the decoded file's size; the other byte bounds are
    /// multiples of it.
    pub max_upload_mb: u64,
    /// `MAX_IMPORT_CELLS`: cells the sheet's rows may hold, each row counted
    /// from column A to its last cell (header included).
    pub max_cells: usize,
}

impl ImportOptions {
    /// The decoded file: `MAX_UPLOAD_MB` MiB.
    pub fn max_bytes(&self) -> usize {
        (self.max_upload_mb as usize).saturating_mul(1024 * 1024)
    }

    /// One part of an xlsx/ods archive, inflated: 8 × `MAX_UPLOAD_MB`. A
    /// spreadsheet's XML compresses about 5-10 times; a part that inflates
    /// further is a bomb, not a client list.
    pub fn max_part_bytes(&self) -> u64 {
        (self.max_bytes() as u64).saturating_mul(8)
    }

    /// The text kept for one file's clients (their values and the column
    /// names each carries): 4 × `MAX_UPLOAD_MB`. A text file can never reach
    /// it; a spreadsheet repeating one long shared string in every row can.
    pub fn max_text_bytes(&self) -> usize {
        self.max_bytes().saturating_mul(4)
    }
}

/// Characters a client's name may have, in a file or a request.
pub const MAX_NAME_CHARS: usize = 200;
/// Characters of an email (RFC 5321's longest path).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Characters of an address.
pub const MAX_ADDRESS_CHARS: usize = 500;
/// Characters of a category or an external id.
pub const MAX_CODE_CHARS: usize = 100;
/// Characters of a phone cell as written.
pub const MAX_PHONE_CHARS: usize = 64;
/// Characters of a variable's value (any other column).
pub const MAX_VARIABLE_CHARS: usize = 1_000;
/// Characters of a header cell.
pub const MAX_HEADER_CHARS: usize = 200;
/// Bytes a client's variables may take as JSON, from a file or a request:
/// every call carries them to ElevenLabs.
pub const MAX_VARIABLES_BYTES: usize = 64 * 1024;

/// A valid row with a number not seen before.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedClient {
    /// The sheet's row number.
    pub row: usize,
    pub name: Option<String>,
    /// As written (trimmed).
    pub phone: String,
    pub phone_e164: String,
    pub email: Option<String>,
    pub address: Option<String>,
    pub category: Option<String>,
    pub external_id: Option<String>,
    /// Every other column with a header: string values, empty cells left out.
    pub variables: Map<String, Value>,
}

/// An invalid row, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowError {
    pub row: usize,
    pub column: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Valid first occurrences, in file order (those not handed to a sink, see
    /// [`parse_clients_streamed`]).
    pub clients: Vec<ParsedClient>,
    /// Valid first occurrences handed to the sink as the file was read.
    pub streamed: usize,
    /// Non-blank data rows (valid, duplicate or invalid).
    pub total_rows: usize,
    /// Valid numbers seen before (earlier in the file or already in the group).
    pub duplicates: usize,
    pub invalid_rows: usize,
    /// Every invalid row, in file order (callers show the first 200).
    pub errors: Vec<RowError>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImportError {
    InvalidBase64,
    UnsupportedFormat,
    /// The detail goes to the envelope's `error`.
    Unreadable(String),
    NoPhoneColumn,
    NoDataRows,
    /// The decoded size in bytes (exact; the message rounds it to MiB).
    TooLarge {
        size_bytes: usize,
        max_mb: u64,
    },
    TooManyRows {
        rows: usize,
        max: usize,
    },
    /// The sheet's rows hold more cells than `MAX_IMPORT_CELLS`.
    TooManyCells {
        max: usize,
    },
    /// One cell is longer than its field allows.
    CellTooLong {
        row: usize,
        /// The column's header as written, or its letter for a header cell.
        column: String,
        chars: usize,
        max: usize,
    },
    /// An archive part (xlsx/ods) inflates past 8 × `MAX_UPLOAD_MB`.
    PartTooLarge {
        part: String,
        max_mb: u64,
    },
    /// An XML part holds more than [`bounds::MAX_MARKUP_RUN`] bytes of one
    /// text or tag.
    TextTooLong {
        part: String,
        max_bytes: usize,
    },
    /// The clients' text passes 4 × `MAX_UPLOAD_MB`.
    TooMuchText {
        max_mb: u64,
    },
    /// One row's variables pass [`MAX_VARIABLES_BYTES`] as JSON.
    RowTooLarge {
        row: usize,
        bytes: usize,
        max: usize,
    },
}

impl ImportError {
    /// The exact Spanish message of API.md §4.
    pub fn message(&self) -> String {
        match self {
            ImportError::InvalidBase64 => "El archivo no es un base64 válido".into(),
            ImportError::UnsupportedFormat => {
                "Formato de archivo no soportado. Usa .xlsx, .xls, .ods o .csv".into()
            }
            ImportError::Unreadable(_) => "No se pudo leer el archivo".into(),
            ImportError::NoPhoneColumn => "No se encontró la columna requerida: teléfono".into(),
            ImportError::NoDataRows => "El archivo no tiene filas de datos".into(),
            ImportError::TooLarge { size_bytes, max_mb } => format!(
                "El archivo es demasiado grande ({:.2} MB). El tamaño máximo permitido es {max_mb} MB.",
                *size_bytes as f64 / (1024.0 * 1024.0)
            ),
            ImportError::TooManyRows { rows, max } => format!(
                "El archivo tiene demasiadas filas ({rows}). El máximo permitido es {max} filas."
            ),
            ImportError::TooManyCells { max } => format!(
                "El archivo tiene demasiadas celdas. El máximo permitido es {max} celdas (filas por columnas, contando cada fila hasta su última celda)."
            ),
            ImportError::CellTooLong {
                row,
                column,
                chars,
                max,
            } => format!(
                "La celda de la fila {row}, columna \"{column}\", es demasiado larga ({chars} caracteres). El máximo permitido es {max} caracteres."
            ),
            ImportError::PartTooLarge { part, max_mb } => format!(
                "El archivo descomprimido es demasiado grande: su parte \"{part}\" supera {max_mb} MB."
            ),
            ImportError::TextTooLong { part, max_bytes } => format!(
                "El archivo contiene un texto demasiado largo: su parte \"{part}\" tiene más de {max_bytes} bytes seguidos sin etiquetas."
            ),
            ImportError::TooMuchText { max_mb } => format!(
                "El archivo tiene demasiado texto: los datos de sus clientes superan {max_mb} MB."
            ),
            ImportError::RowTooLarge { row, bytes, max } => format!(
                "Las variables de la fila {row} son demasiado grandes ({bytes} bytes). El máximo permitido es {max} bytes."
            ),
        }
    }

    /// 413 for [`ImportError::TooLarge`], 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            ImportError::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    /// What the envelope's `error` says, if anything.
    pub fn detail(&self) -> Option<String> {
        match self {
            ImportError::Unreadable(detail) => Some(detail.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())?;
        match self.detail() {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ImportError {}

/// Decodes the upload, whatever base64 dialect the browser produced.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ImportError> {
    let trimmed = text.trim_start();
    let body = match trimmed.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("data:") => {
            let (meta, body) = trimmed.split_once(',').ok_or(ImportError::InvalidBase64)?;
            let is_base64 = meta
                .len()
                .checked_sub(7)
                .and_then(|at| meta.get(at..))
                .is_some_and(|end| end.eq_ignore_ascii_case(";base64"));
            if !is_base64 {
                return Err(ImportError::InvalidBase64);
            }
            body
        }
        _ => text,
    };
    let mut compact: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    while compact.last() == Some(&b'=') {
        compact.pop();
    }
    if compact.is_empty() {
        return Err(ImportError::InvalidBase64);
    }
    let engine = if compact.iter().any(|b| matches!(b, b'-' | b'_')) {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine
        .decode(&compact)
        .map_err(|_| ImportError::InvalidBase64)
}

/// The `MAX_UPLOAD_MB` limit on a decoded file.
pub fn check_size(size_bytes: usize, options: &ImportOptions) -> Result<(), ImportError> {
    if size_bytes > options.max_bytes() {
        Err(ImportError::TooLarge {
            size_bytes,
            max_mb: options.max_upload_mb,
        })
    } else {
        Ok(())
    }
}

/// Reads the file and turns its rows into clients (see the module docs for
/// every rule). `existing`: the E.164 numbers already in the group.
pub fn parse_clients(
    bytes: &[u8],
    document_name: &str,
    options: &ImportOptions,
    existing: &HashSet<String>,
) -> Result<ImportReport, ImportError> {
    parse_guarded(bytes, document_name, options, existing, None)
}

/// Clients handed to a sink at a time by [`parse_clients_streamed`].
pub const STREAM_CHUNK: usize = 10_000;

/// [`parse_clients`], handing the valid clients to `sink` in chunks of
/// [`STREAM_CHUNK`] as the file is read, so that they can be stored while the
/// rest is parsed. The verdict still comes at the end: a file refused then
/// (too many rows, say) has had chunks handed over already, which the caller
/// must throw away. The last chunk is handed over only when the file is good.
pub fn parse_clients_streamed(
    bytes: &[u8],
    document_name: &str,
    options: &ImportOptions,
    existing: &HashSet<String>,
    sink: &mut dyn FnMut(Vec<ParsedClient>),
) -> Result<ImportReport, ImportError> {
    parse_guarded(bytes, document_name, options, existing, Some(sink))
}

/// A reader that panics on a hostile file gives an "unreadable file" answer.
fn parse_guarded<'a>(
    bytes: &[u8],
    document_name: &str,
    options: &'a ImportOptions,
    existing: &'a HashSet<String>,
    sink: Option<&'a mut dyn FnMut(Vec<ParsedClient>)>,
) -> Result<ImportReport, ImportError> {
    let parse =
        std::panic::AssertUnwindSafe(|| parse_with(bytes, document_name, options, existing, sink));
    std::panic::catch_unwind(parse)
        .unwrap_or_else(|_| Err(ImportError::Unreadable(PANIC_DETAIL.into())))
}

fn parse_with<'a>(
    bytes: &[u8],
    document_name: &str,
    options: &'a ImportOptions,
    existing: &'a HashSet<String>,
    sink: Option<&'a mut dyn FnMut(Vec<ParsedClient>)>,
) -> Result<ImportReport, ImportError> {
    check_size(bytes.len(), options)?;
    let format = reader::format_of(document_name).ok_or(ImportError::UnsupportedFormat)?;
    let mut builder = Builder {
        options,
        existing,
        phone: PhoneRules::new(&options.region, &options.prefix),
        columns: None,
        seen: HashSet::new(),
        data_rows: 0,
        text_bytes: 0,
        report: ImportReport::default(),
        sink,
    };
    reader::read_rows(bytes, format, options, &mut builder)?;
    builder.finish()
}

/// A number as written → E.164, with libphonenumber's rules:
///
/// - `+` (or `(+`) first, or `00` first: international (`0057 313…`).
/// - Otherwise national for `region`; if that is not valid, a single trunk
///   `0` dropped (`0313…`, which libphonenumber reads as a carrier code in
///   CO); then, if the digits start with the calling code of `prefix`, the
///   digits as international (`573138539157`). With an unknown `region`, the
///   prefix's calling code is put in front.
/// - Separators allowed: spaces (also no-break), `-` and Unicode dashes,
///   `.`, `/`, parentheses. Letters (`ext`), a second `+` or one after a
///   digit, fewer than 4 or more than 17 digits: `None`.
///
/// `None` unless the result is a valid number (`phonenumber::is_valid`).
pub fn normalize_phone(raw: &str, region: &str, prefix: &str) -> Option<String> {
    PhoneRules::new(region, prefix).normalize(raw)
}

/// Refuses a cell longer than `max` characters, naming its row and column
/// (the column's name is only built for the refusal).
fn check_length(
    row: usize,
    column: impl FnOnce() -> String,
    value: &str,
    max: usize,
) -> Result<(), ImportError> {
    // Bytes bound characters from above: most cells need no count.
    if value.len() <= max {
        return Ok(());
    }
    let chars = value.chars().count();
    if chars <= max {
        return Ok(());
    }
    Err(ImportError::CellTooLong {
        row,
        column: column(),
        chars,
        max,
    })
}

/// A 0-based column index as a spreadsheet names it (`A`, `Z`, `AA`, `XFD`).
pub(crate) fn column_letter(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    letters.iter().rev().map(|&b| b as char).collect()
}

/// An E.164 number's digits as one integer: at most 15 digits and never a
/// leading zero (calling codes do not start with 0), so distinct numbers
/// have distinct keys.
fn e164_key(e164: &str) -> u64 {
    e164.bytes()
        .filter(u8::is_ascii_digit)
        .fold(0u64, |key, digit| {
            key.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'))
        })
}

/// Turns the reader's rows into the report as they come.
struct Builder<'a> {
    options: &'a ImportOptions,
    existing: &'a HashSet<String>,
    phone: PhoneRules,
    /// `None` until the header row has been read.
    columns: Option<Columns>,
    /// The file's numbers so far, as [`e164_key`]s (no string per row).
    seen: HashSet<u64>,
    /// Non-blank rows after the header.
    data_rows: usize,
    /// Bytes of text kept so far (values and variable keys), for
    /// [`ImportOptions::max_text_bytes`].
    text_bytes: usize,
    report: ImportReport,
    /// Where full chunks of clients go as they are read, if anywhere.
    sink: Option<&'a mut dyn FnMut(Vec<ParsedClient>)>,
}

impl RowSink for Builder<'_> {
    fn expect_rows(&mut self, rows: usize) {
        self.reserve(rows);
    }

    /// A cell holding U+0000 (an `.xlsx` escape `_x0000_`, an `.xls` string
    /// padded with NULs) is read without it: no spreadsheet shows the
    /// character, so its author cannot see it to remove it, and PostgreSQL
    /// cannot store it (SQLite would keep it). API.md §4 says so.
    fn row(&mut self, number: usize, cells: &[Cow<'_, str>]) -> Result<(), ImportError> {
        if cells.iter().any(|c| c.contains('\0')) {
            let cleaned: Vec<Cow<'_, str>> = cells
                .iter()
                .map(|c| Cow::Owned(c.replace('\0', "")))
                .collect();
            return self.read_row(number, &cleaned);
        }
        self.read_row(number, cells)
    }
}

impl Builder<'_> {
    fn read_row(&mut self, number: usize, cells: &[Cow<'_, str>]) -> Result<(), ImportError> {
        if cells.iter().all(|c| c.trim().is_empty()) {
            return Ok(());
        }
        let Some(columns) = &self.columns else {
            for (i, header) in cells.iter().enumerate() {
                check_length(number, || column_letter(i), header.trim(), MAX_HEADER_CHARS)?;
            }
            self.columns = Some(Columns::from_header(cells)?);
            return Ok(());
        };
        self.data_rows += 1;
        // Over the limit: only count the rest, for the message.
        if self.data_rows > self.options.max_rows {
            return Ok(());
        }
        let raw = cells.get(columns.phone).map_or("", |c| c.trim());
        check_length(
            number,
            || columns.phone_header.clone(),
            raw,
            MAX_PHONE_CHARS,
        )?;
        let Some(e164) = self.phone.normalize(raw) else {
            self.report.invalid_rows += 1;
            self.report.errors.push(RowError {
                row: number,
                column: columns.phone_header.clone(),
                value: raw.to_owned(),
                reason: REASON_INVALID_PHONE.to_owned(),
            });
            return Ok(());
        };
        if self.existing.contains(&e164) || !self.seen.insert(e164_key(&e164)) {
            self.report.duplicates += 1;
            return Ok(());
        }
        let mut client = ParsedClient {
            row: number,
            name: None,
            phone: raw.to_owned(),
            phone_e164: e164,
            email: None,
            address: None,
            category: None,
            external_id: None,
            variables: Map::new(),
        };
        let mut kept = raw.len();
        for (i, (slot, cell)) in columns.slots.iter().zip(cells).enumerate() {
            let value = cell.trim();
            if value.is_empty() {
                continue;
            }
            let header = || columns.headers.get(i).cloned().unwrap_or_default();
            let (target, max) = match slot {
                Slot::Skip | Slot::Field(Field::Phone) => continue,
                Slot::Field(Field::Name) => (&mut client.name, MAX_NAME_CHARS),
                Slot::Field(Field::Email) => (&mut client.email, MAX_EMAIL_CHARS),
                Slot::Field(Field::Address) => (&mut client.address, MAX_ADDRESS_CHARS),
                Slot::Field(Field::Category) => (&mut client.category, MAX_CODE_CHARS),
                Slot::Field(Field::ExternalId) => (&mut client.external_id, MAX_CODE_CHARS),
                Slot::Variable(k) => {
                    check_length(number, header, value, MAX_VARIABLE_CHARS)?;
                    if let Some(key) = columns.keys.get(*k) {
                        kept += key.len() + value.len();
                        client
                            .variables
                            .insert(key.clone(), Value::String(value.to_owned()));
                    }
                    continue;
                }
            };
            check_length(number, header, value, max)?;
            kept += value.len();
            *target = Some(value.to_owned());
        }
        // Each variable costs its key, its value and about six bytes of JSON
        // around them; only a row near the bound is measured exactly.
        let approximate = kept + 6 * client.variables.len();
        if approximate > MAX_VARIABLES_BYTES / 2 {
            let size = serde_json::to_vec(&client.variables).map_or(usize::MAX, |j| j.len());
            if size > MAX_VARIABLES_BYTES {
                return Err(ImportError::RowTooLarge {
                    row: number,
                    bytes: size,
                    max: MAX_VARIABLES_BYTES,
                });
            }
        }
        self.text_bytes = self.text_bytes.saturating_add(kept);
        if self.text_bytes > self.options.max_text_bytes() {
            return Err(ImportError::TooMuchText {
                max_mb: (self.options.max_text_bytes() / (1024 * 1024)) as u64,
            });
        }
        self.report.clients.push(client);
        if self.report.clients.len() >= STREAM_CHUNK {
            self.hand_over(STREAM_CHUNK);
        }
        Ok(())
    }

    /// Room for the rows the reader expects, so that 100,000 clients are not
    /// moved through a dozen reallocations (never past `max_rows`).
    fn reserve(&mut self, rows: usize) {
        let rows = rows.min(self.options.max_rows);
        let held = if self.sink.is_some() {
            rows.min(STREAM_CHUNK)
        } else {
            rows
        };
        self.report.clients.reserve(held);
        self.seen.reserve(rows);
    }

    /// The clients read so far go to the sink (when there is one), leaving
    /// room for `next` more.
    fn hand_over(&mut self, next: usize) {
        if let Some(sink) = self.sink.as_mut() {
            let chunk = std::mem::replace(&mut self.report.clients, Vec::with_capacity(next));
            self.report.streamed += chunk.len();
            sink(chunk);
        }
    }

    fn finish(mut self) -> Result<ImportReport, ImportError> {
        if self.columns.is_none() || self.data_rows == 0 {
            return Err(ImportError::NoDataRows);
        }
        if self.data_rows > self.options.max_rows {
            return Err(ImportError::TooManyRows {
                rows: self.data_rows,
                max: self.options.max_rows,
            });
        }
        if !self.report.clients.is_empty() {
            self.hand_over(0);
        }
        self.report.total_rows = self.data_rows;
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile_tests;
