//! Bytes → rows of text cells, as a person sees them in the sheet.
//!
//! Rows are streamed to a callback (`sink`) with their own 1-based row
//! number; blank rows are not passed on. Cells are trimmed and borrowed from
//! the reader wherever they already are text, so a 100,000-row sheet does not
//! allocate a string per cell.

use std::borrow::Cow;
use std::io::Cursor;

use calamine::{Data, DataRef, Reader, Sheets, Xls, Xlsx, open_workbook_from_rs};

use super::{ImportError, ImportOptions};

/// What the document name announces (case-insensitive extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.xlsx`, `.xlsm`
    Xlsx,
    /// `.xls` (Excel 97-2003)
    Xls,
    /// `.ods`
    Ods,
    /// `.csv`, `.txt`
    Text,
}

pub fn format_of(document_name: &str) -> Option<Format> {
    let (_, ext) = document_name.trim().rsplit_once('.')?;
    match ext.to_ascii_lowercase().as_str() {
        "xlsx" | "xlsm" => Some(Format::Xlsx),
        "xls" => Some(Format::Xls),
        "ods" => Some(Format::Ods),
        "csv" | "txt" => Some(Format::Text),
        _ => None,
    }
}

/// Receives each non-blank row: its number in the sheet and its cells.
pub trait RowSink {
    fn row(&mut self, number: usize, cells: &[Cow<'_, str>]) -> Result<(), ImportError>;

    /// About how many rows are coming (a hint, maybe wrong on a hostile file).
    fn expect_rows(&mut self, _rows: usize) {}
}

/// Feeds the file's rows to `sink`, refusing the file once its rows' cells
/// pass `options.max_cells` (header included; see [`Counted`]).
pub fn read_rows(
    bytes: &[u8],
    format: Format,
    options: &ImportOptions,
    sink: &mut impl RowSink,
) -> Result<(), ImportError> {
    let mut sink = Counted {
        sink,
        rows: 0,
        cells: 0,
        max_cells: options.max_cells,
    };
    match format {
        Format::Text => read_text(bytes, &mut sink),
        spreadsheet => read_spreadsheet(bytes, spreadsheet, options, &mut sink),
    }
}

type Workbook<'a> = Sheets<Cursor<&'a [u8]>>;

/// Calamine's reader for what the content is, whatever the name says (an
/// `.xlsx` saved as `.xls` is common): an OLE2 file is Excel 97-2003, anything
/// else must be an xlsx (ZIP content has been through the bounds already, and
/// OpenDocument through our own reader). Calamine's other readers (its `.ods`
/// and `.xlsb`) lay a sheet out as a dense grid from a few bytes, so they are
/// never reached.
fn open_workbook(bytes: &[u8]) -> Result<Workbook<'_>, ImportError> {
    let cursor = Cursor::new(bytes);
    if super::cfb::is_cfb(bytes) {
        super::cfb::check(bytes).map_err(ImportError::Unreadable)?;
        return open_workbook_from_rs::<Xls<_>, _>(cursor)
            .map(Sheets::Xls)
            .map_err(|e| ImportError::Unreadable(e.to_string()));
    }
    open_workbook_from_rs::<Xlsx<_>, _>(cursor)
        .map(Sheets::Xlsx)
        .map_err(|e| ImportError::Unreadable(e.to_string()))
}

/// Columns a sheet can have (Excel's limit, `XFD`): a cell claiming a column
/// beyond it is ignored rather than padded to.
pub const MAX_COLUMNS: usize = 16_384;

/// The first sheet with any non-blank cell. OpenDocument content is read by
/// our own streaming reader (`ods.rs`), whatever the extension; the rest by
/// calamine, an xlsx once its parts have been read through the bounds
/// ([`super::bounds::check_archive`]). A sheet calamine cannot read is passed
/// over; if none can be read the first error is the answer.
fn read_spreadsheet<S: RowSink>(
    bytes: &[u8],
    format: Format,
    options: &ImportOptions,
    sink: &mut Counted<'_, S>,
) -> Result<(), ImportError> {
    if !super::cfb::is_cfb(bytes) {
        // Whatever opens as a ZIP is checked as one, data in front of it or
        // not (the ZIP reader finds an archive anywhere in the bytes).
        match zip::ZipArchive::new(Cursor::new(bytes)) {
            Ok(archive) if archive.offset() != 0 => {
                return Err(ImportError::Unreadable(
                    "el archivo tiene datos antes de su contenido".into(),
                ));
            }
            Ok(archive) if super::ods::is_ods(&archive) => {
                return super::ods::read_ods(archive, options, sink);
            }
            Ok(archive) => super::bounds::check_archive(archive, options)?,
            Err(e) => {
                let detail = match format {
                    Format::Xls => "no es un libro de Excel (.xls ni .xlsx)".to_owned(),
                    _ => e.to_string(),
                };
                return Err(ImportError::Unreadable(detail));
            }
        }
    }
    let mut workbook = open_workbook(bytes)?;
    let mut first_error = None;
    for name in workbook.sheet_names() {
        let read = match &mut workbook {
            // Streamed: no whole-sheet grid and no copy of each shared string.
            Sheets::Xlsx(xlsx) => stream_xlsx_sheet(xlsx, &name, sink),
            other => match other.worksheet_range(&name) {
                Ok(range) => range_rows(&range, sink),
                Err(e) => Err(ImportError::Unreadable(e.to_string())),
            },
        };
        match read {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // A sheet that fails before giving any row is passed over; one
            // that fails half-way, and the sink's own refusals, are final.
            Err(ImportError::Unreadable(detail)) if sink.rows == 0 => {
                first_error.get_or_insert(detail);
            }
            Err(refused) => return Err(refused),
        }
    }
    match first_error {
        Some(detail) => Err(ImportError::Unreadable(detail)),
        None => Ok(()),
    }
}

/// A sink that knows whether it has been given any row, and refuses the
/// file once its rows' cells (each row from column A to its last cell) pass
/// the budget.
pub struct Counted<'s, S> {
    sink: &'s mut S,
    rows: usize,
    cells: usize,
    max_cells: usize,
}

impl<S: RowSink> RowSink for Counted<'_, S> {
    fn row(&mut self, number: usize, cells: &[Cow<'_, str>]) -> Result<(), ImportError> {
        self.rows += 1;
        // Every position up to the row's last cell is work for the sink,
        // blank or not: a row holding one value far to the right costs as
        // much as a full one.
        self.cells = self.cells.saturating_add(cells.len());
        if self.cells > self.max_cells {
            return Err(ImportError::TooManyCells {
                max: self.max_cells,
            });
        }
        self.sink.row(number, cells)
    }

    fn expect_rows(&mut self, rows: usize) {
        self.sink.expect_rows(rows);
    }
}

/// Feeds a sheet's non-blank rows to `sink`; `Ok(false)` when it has none.
fn range_rows(range: &calamine::Range<Data>, sink: &mut impl RowSink) -> Result<bool, ImportError> {
    let Some((first_row, first_col)) = range.start() else {
        return Ok(false);
    };
    let (first_row, first_col) = (first_row as usize, (first_col as usize).min(MAX_COLUMNS));
    sink.expect_rows(range.height().saturating_sub(1));
    let mut found = false;
    let mut row: Vec<Cow<'_, str>> = Vec::new();
    for (i, cells) in range.rows().enumerate() {
        if cells.iter().all(is_blank) {
            continue;
        }
        found = true;
        // Column positions as in the sheet, for a range not starting at A.
        row.clear();
        row.resize(first_col, Cow::Borrowed(""));
        row.extend(cells.iter().take(MAX_COLUMNS).map(cell_text));
        sink.row(first_row + i + 1, &row)?;
    }
    Ok(found)
}

/// [`range_rows`] for xlsx, from calamine's cell stream: cells come row by
/// row, and text cells borrow the workbook's shared strings.
fn stream_xlsx_sheet<RS: std::io::Read + std::io::Seek>(
    xlsx: &mut Xlsx<RS>,
    name: &str,
    sink: &mut impl RowSink,
) -> Result<bool, ImportError> {
    let unreadable = |e: calamine::XlsxError| ImportError::Unreadable(e.to_string());
    let mut cells = xlsx.worksheet_cells_reader(name).map_err(unreadable)?;
    let dimensions = cells.dimensions();
    sink.expect_rows(dimensions.end.0.saturating_sub(dimensions.start.0) as usize);
    let mut found = false;
    let mut row: Vec<Cow<'_, str>> = Vec::new();
    let mut row_index = None;
    let mut flush = |index: Option<u32>, row: &mut Vec<Cow<'_, str>>| {
        let mut result = Ok(());
        if let Some(index) = index
            && !row.is_empty()
        {
            found = true;
            result = sink.row(index as usize + 1, row);
        }
        row.clear();
        result
    };
    while let Some(cell) = cells.next_cell().map_err(unreadable)? {
        let (r, c) = cell.get_position();
        if row_index != Some(r) {
            flush(row_index, &mut row)?;
            row_index = Some(r);
        }
        let text = data_ref_text(cell.get_value());
        let c = c as usize;
        if text.is_empty() || c >= MAX_COLUMNS {
            continue;
        }
        if row.len() <= c {
            row.resize(c + 1, Cow::Borrowed(""));
        }
        if let Some(slot) = row.get_mut(c) {
            *slot = text;
        }
    }
    flush(row_index, &mut row)?;
    Ok(found)
}

fn is_blank(cell: &Data) -> bool {
    match cell {
        Data::Empty | Data::Error(_) => true,
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.trim().is_empty(),
        Data::Int(_) | Data::Float(_) | Data::Bool(_) | Data::DateTime(_) => false,
    }
}

/// A cell as the sheet shows it: numbers without `.0` and never in
/// scientific notation, dates as ISO 8601, booleans `true`/`false`, error
/// cells (`#N/A`) empty.
pub fn cell_text(cell: &Data) -> Cow<'_, str> {
    match cell {
        Data::Empty | Data::Error(_) => Cow::Borrowed(""),
        Data::String(s) => Cow::Borrowed(s.trim()),
        Data::Int(i) => Cow::Owned(i.to_string()),
        Data::Float(f) => Cow::Owned(number_text(*f)),
        Data::Bool(b) => Cow::Borrowed(bool_text(*b)),
        Data::DateTime(dt) => Cow::Owned(datetime_text(dt)),
        Data::DateTimeIso(s) => Cow::Borrowed(iso_datetime_text(s.trim())),
        Data::DurationIso(s) => iso_duration_text(s.trim())
            .map(Cow::Owned)
            .unwrap_or(Cow::Borrowed(s.trim())),
    }
}

/// [`cell_text`] for calamine's borrowed cells (the xlsx stream).
fn data_ref_text<'a>(cell: &DataRef<'a>) -> Cow<'a, str> {
    match cell {
        DataRef::Empty | DataRef::Error(_) => Cow::Borrowed(""),
        DataRef::SharedString(s) => Cow::Borrowed(s.trim()),
        DataRef::String(s) => Cow::Owned(s.trim().to_owned()),
        DataRef::Int(i) => Cow::Owned(i.to_string()),
        DataRef::Float(f) => Cow::Owned(number_text(*f)),
        DataRef::Bool(b) => Cow::Borrowed(bool_text(*b)),
        DataRef::DateTime(dt) => Cow::Owned(datetime_text(dt)),
        DataRef::DateTimeIso(s) => Cow::Owned(iso_datetime_text(s.trim()).to_owned()),
        DataRef::DurationIso(s) => {
            Cow::Owned(iso_duration_text(s.trim()).unwrap_or_else(|| s.trim().to_owned()))
        }
    }
}

fn bool_text(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// A float as a spreadsheet's formula bar shows it: 15 significant digits,
/// no trailing zeros, no exponent (`3138539155`, `2000.5`, `0.3` for
/// `0.1 + 0.2`).
pub fn number_text(value: f64) -> String {
    if !value.is_finite() {
        return String::new();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return (value as i64).to_string();
    }
    // Rust prints the shortest text that reads back as the same float, and
    // never with an exponent; it is the answer unless it needs more than 15
    // significant digits (`0.30000000000000004`).
    let shortest = value.to_string();
    let significant = shortest
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|&b| b == b'0')
        .count();
    if significant <= 15 {
        return shortest;
    }
    // `d.dddddddddddddde±x`: the 15 significant digits, correctly rounded.
    let scientific = format!("{value:.14e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return value.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return value.to_string();
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Digits before the decimal point.
    let point = exponent + 1;
    let mut out = String::with_capacity(digits.len() + point.unsigned_abs() as usize + 3);
    if value < 0.0 {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else if point as usize >= digits.len() {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        let (int, frac) = digits.split_at(point as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    if out.contains('.') {
        let kept = out.trim_end_matches('0').trim_end_matches('.').len();
        out.truncate(kept);
    }
    out
}

/// Excel serial dates: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS` when there is a
/// time, `HH:MM:SS` for a time alone or a duration (`[h]:mm` may pass 24).
fn datetime_text(dt: &calamine::ExcelDateTime) -> String {
    let serial = dt.as_f64();
    if dt.is_duration() || (0.0..1.0).contains(&serial) {
        return clock_text((serial * 86_400.0).round());
    }
    let (y, mo, d, h, mi, s, milli) = dt.to_ymd_hms_milli();
    // calamine truncates to the second; a sheet rounds.
    let rounded = (milli >= 500)
        .then(|| {
            let date = chrono::NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())?;
            let time = date.and_hms_opt(h.into(), mi.into(), s.into())?;
            time.checked_add_signed(chrono::TimeDelta::seconds(1))
        })
        .flatten();
    let (y, mo, d, h, mi, s) = match rounded {
        Some(t) => {
            use chrono::{Datelike, Timelike};
            (
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
            )
        }
        None => (y.into(), mo.into(), d.into(), h.into(), mi.into(), s.into()),
    };
    if (h, mi, s) == (0, 0, 0) {
        format!("{y:04}-{mo:02}-{d:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
    }
}

/// Whole seconds → `HH:MM:SS` (hours may pass 24; a sign when negative).
fn clock_text(seconds: f64) -> String {
    let total = seconds as i64;
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    format!(
        "{sign}{:02}:{:02}:{:02}",
        total / 3600,
        total / 60 % 60,
        total % 60
    )
}

/// An OpenDocument date or time attribute as the sheet shows it.
pub fn iso_text(duration: bool, raw: &str) -> String {
    let raw = raw.trim();
    match duration {
        true => iso_duration_text(raw).unwrap_or_else(|| raw.to_owned()),
        false => iso_datetime_text(raw).to_owned(),
    }
}

/// OpenDocument dates (`2026-12-01` or `2026-12-01T14:30:00`): midnight is a
/// date alone.
fn iso_datetime_text(s: &str) -> &str {
    match s.split_once('T') {
        Some((date, time)) if time.chars().all(|c| matches!(c, '0' | ':' | '.')) => date,
        _ => s,
    }
}

/// OpenDocument times (`PT14H30M00S`, `PT36H`, `P1DT2H`) → `HH:MM:SS`.
fn iso_duration_text(s: &str) -> Option<String> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let s = s.strip_prefix('P')?;
    let (days, time) = match s.split_once('T') {
        Some((days, time)) => (days, time),
        None => (s, ""),
    };
    let mut seconds = 0.0;
    if !days.is_empty() {
        seconds += days.strip_suffix('D')?.parse::<f64>().ok()? * 86_400.0;
    }
    let mut number = String::new();
    for ch in time.chars() {
        let unit = match ch {
            'H' => 3600.0,
            'M' => 60.0,
            'S' => 1.0,
            _ => {
                number.push(ch);
                continue;
            }
        };
        seconds += number.parse::<f64>().ok()? * unit;
        number.clear();
    }
    if !number.is_empty() || !seconds.is_finite() {
        return None;
    }
    let seconds = seconds.round();
    Some(clock_text(if negative { -seconds } else { seconds }))
}

/// Decodes a text file: a BOM first (UTF-8, UTF-16 LE/BE), then UTF-8, else
/// Windows-1252 (which maps every byte, so this never fails).
pub fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let body = bytes.get(bom_len..).unwrap_or_default();
        return encoding.decode_without_bom_handling(body).0;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Lines the delimiter is sniffed from.
const SNIFF_LINES: usize = 30;

/// Counts `delimiter` outside double quotes in one line.
fn count_outside_quotes(line: &str, delimiter: u8) -> usize {
    let mut quoted = false;
    line.bytes()
        .filter(|&b| {
            if b == b'"' {
                quoted = !quoted;
            }
            !quoted && b == delimiter
        })
        .count()
}

/// The delimiter that splits the first lines most consistently into more
/// than one column (as many lines as possible with the header's count; ties
/// go to more columns, then to the order `, ; \t |`); `,` when none does.
pub fn sniff_delimiter(text: &str) -> u8 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(SNIFF_LINES)
        .collect();
    let mut best = (b',', 0usize, 0usize);
    for delimiter in DELIMITERS {
        let mut counts = lines.iter().map(|l| count_outside_quotes(l, delimiter));
        let Some(header_count) = counts.next() else {
            continue;
        };
        if header_count == 0 {
            continue;
        }
        let consistent = 1 + counts.filter(|&c| c == header_count).count();
        if (consistent, header_count) > (best.1, best.2) {
            best = (delimiter, consistent, header_count);
        }
    }
    best.0
}

/// The signatures of the binary spreadsheet containers (ZIP: xlsx/ods; OLE2: xls).
fn is_spreadsheet_container(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || super::cfb::is_cfb(bytes)
}

/// Line breaks as a spreadsheet counts them: `\n`, `\r\n` and a lone `\r`.
fn line_breaks(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count()
}

/// A field as written, trimmed; Excel's `="0123"` (text kept from being
/// read as a number) is the text inside.
fn field_text(field: &str) -> &str {
    let field = field.trim();
    field
        .strip_prefix("=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|inner| !inner.contains('"'))
        .unwrap_or(field)
}

fn read_text(bytes: &[u8], sink: &mut impl RowSink) -> Result<(), ImportError> {
    if is_spreadsheet_container(bytes) {
        return Err(ImportError::Unreadable(
            "el contenido es una hoja de cálculo, no texto: revisa la extensión del archivo".into(),
        ));
    }
    let text = decode_text(bytes);
    if text.contains('\0') {
        return Err(ImportError::Unreadable(
            "el archivo no es texto (contiene bytes nulos)".into(),
        ));
    }
    let delimiter = sniff_delimiter(&text);
    sink.expect_rows(text.bytes().filter(|&b| b == b'\n').count());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    // The csv crate skips blank lines without counting them, so lines are
    // counted here from each record's byte offset, as a spreadsheet numbers them.
    let bytes = text.as_bytes();
    let (mut counted_to, mut line) = (0usize, 1usize);
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(ImportError::Unreadable(e.to_string())),
        }
        let mut start = record
            .position()
            .map_or(counted_to, |p| p.byte() as usize)
            .max(counted_to)
            .min(bytes.len());
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        line += line_breaks(bytes.get(counted_to..start).unwrap_or_default());
        counted_to = start;
        if record.iter().all(|f| field_text(f).is_empty()) {
            continue;
        }
        // Columns past a spreadsheet's last (`XFD`) are left out, as in the
        // other formats: a row of 24 million commas is not 24 million cells.
        let cells: Vec<Cow<'_, str>> = record
            .iter()
            .take(MAX_COLUMNS)
            .map(|f| Cow::Borrowed(field_text(f)))
            .collect();
        sink.row(line, &cells)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(usize, Vec<String>)>);

    impl RowSink for Collect {
        fn row(&mut self, number: usize, cells: &[Cow<'_, str>]) -> Result<(), ImportError> {
            self.0
                .push((number, cells.iter().map(|c| c.to_string()).collect()));
            Ok(())
        }
    }

    fn text_rows(bytes: &[u8]) -> Vec<(usize, Vec<String>)> {
        let mut rows = Collect(Vec::new());
        read_text(bytes, &mut rows).expect("text reads");
        rows.0
    }

    #[test]
    fn floats_read_as_displayed() {
        assert_eq!(number_text(3138539155.0), "3138539155");
        assert_eq!(number_text(150000.0), "150000");
        assert_eq!(number_text(2000.5), "2000.5");
        assert_eq!(number_text(99999.99), "99999.99");
        assert_eq!(number_text(1234567.891), "1234567.891");
        assert_eq!(number_text(0.1 + 0.2), "0.3");
        assert_eq!(number_text(-12.0), "-12");
        assert_eq!(number_text(-0.5), "-0.5");
        assert_eq!(number_text(-0.0), "0");
        assert_eq!(number_text(1e20), "100000000000000000000");
        assert_eq!(number_text(12345678901234567890.0), "12345678901234600000");
        assert_eq!(number_text(1.5e-7), "0.00000015");
        assert_eq!(number_text(f64::NAN), "");
        assert_eq!(number_text(f64::MAX).len(), 309);
        assert!(!number_text(f64::MIN_POSITIVE).contains('e'));
    }

    #[test]
    fn dates_times_and_durations_read_as_iso() {
        use calamine::{ExcelDateTime, ExcelDateTimeType};
        let date =
            |v: f64| datetime_text(&ExcelDateTime::new(v, ExcelDateTimeType::DateTime, false));
        // 2026-12-01 is serial 46357.
        assert_eq!(date(46357.0), "2026-12-01");
        assert_eq!(date(46357.0 + 14.5 / 24.0), "2026-12-01T14:30:00");
        // Half a second short of 14:30 shows as 14:30.
        assert_eq!(
            date(46357.0 + (52200.0 - 0.4) / 86400.0),
            "2026-12-01T14:30:00"
        );
        assert_eq!(date(0.75), "18:00:00");
        let duration = ExcelDateTime::new(1.5, ExcelDateTimeType::TimeDelta, false);
        assert_eq!(datetime_text(&duration), "36:00:00");
        assert_eq!(iso_datetime_text("2026-12-01T00:00:00"), "2026-12-01");
        assert_eq!(
            iso_datetime_text("2026-12-01T14:30:00"),
            "2026-12-01T14:30:00"
        );
        assert_eq!(
            iso_duration_text("PT14H30M00S").as_deref(),
            Some("14:30:00")
        );
        assert_eq!(iso_duration_text("P1DT2H").as_deref(), Some("26:00:00"));
        assert_eq!(iso_duration_text("PT0.6S").as_deref(), Some("00:00:01"));
        assert_eq!(iso_duration_text("14:30"), None);
        assert_eq!(iso_duration_text("PT5X"), None);
    }

    #[test]
    fn delimiters_are_sniffed_outside_quotes() {
        assert_eq!(sniff_delimiter("a;b;c\n1;2;3\n"), b';');
        assert_eq!(sniff_delimiter("a\tb\n1\t2\n"), b'\t');
        assert_eq!(sniff_delimiter("a|b\n1|2\n"), b'|');
        assert_eq!(
            sniff_delimiter("nombre,telefono\n\"Pérez, Ana\",313\n"),
            b','
        );
        assert_eq!(sniff_delimiter("nombre;monto\nAna;2000,5\nLuis;10\n"), b';');
        assert_eq!(
            sniff_delimiter("nombre|nota\nAna|a, b; c\nLuis|x, y; z\n"),
            b'|'
        );
        assert_eq!(sniff_delimiter("telefono\n313\n"), b',');
        assert_eq!(sniff_delimiter(""), b',');
    }

    #[test]
    fn text_is_decoded_from_boms_utf8_or_windows_1252() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFTel\xC3\xA9fono"), "Teléfono");
        assert_eq!(decode_text(b"\xFF\xFET\x00\xE9\x00l\x00"), "Tél");
        assert_eq!(decode_text(b"\xFE\xFF\x00T\x00\xE9\x00l"), "Tél");
        assert_eq!(decode_text(b"Tel\xE9fono \x80"), "Teléfono €");
        assert!(matches!(decode_text(b"plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn csv_rows_keep_their_line_numbers_across_blank_lines() {
        let rows = text_rows(b"a,b\n1,2\n\n3,\"x\ny\"\n4,5\n,\n\n6,7");
        let numbers: Vec<usize> = rows.iter().map(|r| r.0).collect();
        assert_eq!(numbers, [1, 2, 4, 6, 9]);
        assert_eq!(rows[2].1, ["3", "x\ny"]);
    }

    #[test]
    fn old_mac_and_windows_line_ends_are_numbered_too() {
        let numbers =
            |bytes: &[u8]| -> Vec<usize> { text_rows(bytes).iter().map(|r| r.0).collect() };
        assert_eq!(numbers(b"a,b\r1,2\r\r3,4\r"), [1, 2, 4]);
        assert_eq!(numbers(b"a,b\r\n1,2\r\n\r\n3,4\r\n"), [1, 2, 4]);
    }

    #[test]
    fn fields_are_trimmed_and_excel_text_formulas_unwrapped() {
        let rows = text_rows(b"tel;id;f\n =\"3138539155\" ;=\"00123\";=\"a\"b\"\n");
        assert_eq!(rows[1].1, ["3138539155", "00123", "=\"a\"b\""]);
    }

    #[test]
    fn spreadsheets_behind_a_text_name_are_refused() {
        let mut sink = Collect(Vec::new());
        for bytes in [
            &b"PK\x03\x04rest"[..],
            &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0][..],
            b"a,b\n\0\0",
        ] {
            assert!(matches!(
                read_text(bytes, &mut sink),
                Err(ImportError::Unreadable(_))
            ));
        }
    }

    #[test]
    fn extensions_pick_the_reader() {
        assert_eq!(format_of("Clientes.XLSX"), Some(Format::Xlsx));
        assert_eq!(format_of("macro.xlsm"), Some(Format::Xlsx));
        assert_eq!(format_of("viejo.Xls"), Some(Format::Xls));
        assert_eq!(format_of("a.ods "), Some(Format::Ods));
        assert_eq!(format_of("a.b.csv"), Some(Format::Text));
        assert_eq!(format_of("unicode.TXT"), Some(Format::Text));
        assert_eq!(format_of("a.pdf"), None);
        assert_eq!(format_of("a.xlsb"), None);
        assert_eq!(format_of("csv"), None);
        assert_eq!(format_of(""), None);
    }
}
