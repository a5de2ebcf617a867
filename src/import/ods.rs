//! OpenDocument spreadsheets (`.ods`), read as a stream of rows.
//!
//! Our own reader rather than calamine's: calamine lays a sheet out as a
//! dense grid and expands `table:number-rows-repeated` and
//! `table:number-columns-repeated` into it, so an 825-byte file repeating one
//! cell 1,000 columns × 50,000 rows took 6 GB. Here a repeated row or cell is
//! expanded only where it holds data, one row at a time: a blank repeat only
//! moves the row or column number, a non-blank one is handed over as many
//! times as it says (each time counting against the sheet's cell budget, which
//! the caller enforces), and columns stop at [`super::reader::MAX_COLUMNS`].
//! `content.xml` is read through [`Bounded`], so its inflated size and its
//! longest text are capped too.
//!
//! Cells read as calamine reads them (ODF 1.2 §19.385-19.389): the typed value
//! attribute when there is one (`office:value` for numbers, percentages and
//! currencies, `office:date-value`, `office:time-value`,
//! `office:boolean-value`, `office:string-value`), otherwise the text of the
//! cell's paragraphs (joined by line breaks; `text:s` spaces, `text:tab`,
//! `text:line-break` expanded; annotations left out). Error cells
//! (`calcext:value-type="error"`, `#N/A`) are empty, as in the other formats.

use std::borrow::Cow;
use std::io::BufReader;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::ImportError;
use super::ImportOptions;
use super::bounds::{Bounded, overrun_of};
use super::reader::{MAX_COLUMNS, RowSink, iso_text, number_text};

/// Rows an OpenDocument sheet can have; repeats past it are not read.
const MAX_ROWS: usize = 1_048_576;

/// Whether this archive is an OpenDocument package: it has `content.xml`
/// (whatever else it holds: calamine's own reader, which builds a dense grid,
/// is never given an archive with one).
pub fn is_ods<R: std::io::Read + std::io::Seek>(archive: &zip::ZipArchive<R>) -> bool {
    archive.index_for_name("content.xml").is_some()
}

/// Feeds the first table with a non-blank cell to `sink`.
pub fn read_ods<R: std::io::Read + std::io::Seek>(
    mut archive: zip::ZipArchive<R>,
    options: &ImportOptions,
    sink: &mut impl RowSink,
) -> Result<(), ImportError> {
    let unreadable = |detail: String| ImportError::Unreadable(detail);
    let content = archive
        .by_name("content.xml")
        .map_err(|e| unreadable(e.to_string()))?;
    let declared = content.size();
    let bounded = Bounded::part(content, "content.xml", declared, options.max_part_bytes())?;
    let mut reader = Reader::from_reader(BufReader::new(bounded));
    // Nesting is not checked: the names of every open element would be kept.
    reader.config_mut().check_end_names = false;
    let mut sheets = Sheets {
        reader: &mut reader,
        buf: Vec::with_capacity(1024),
        text_left: options.max_text_bytes(),
        max_text_mb: (options.max_text_bytes() / (1024 * 1024)) as u64,
    };
    sheets.read(sink).map_err(|e| match e {
        Failure::Refused(refused) => refused,
        Failure::Xml(xml) => {
            let overrun = match &xml {
                quick_xml::Error::Io(io) => overrun_of(io),
                _ => None,
            };
            overrun.unwrap_or_else(|| unreadable(xml.to_string()))
        }
    })
}

/// Why reading stopped: the sink refused a row, or the XML is broken.
enum Failure {
    Refused(ImportError),
    Xml(quick_xml::Error),
}

impl From<quick_xml::Error> for Failure {
    fn from(e: quick_xml::Error) -> Self {
        Failure::Xml(e)
    }
}

impl From<quick_xml::events::attributes::AttrError> for Failure {
    fn from(e: quick_xml::events::attributes::AttrError) -> Self {
        Failure::Xml(e.into())
    }
}

struct Sheets<'r, R: std::io::BufRead> {
    reader: &'r mut Reader<R>,
    buf: Vec<u8>,
    /// Characters the cells' text may still take, written out (`text:s`
    /// counts as the spaces it stands for): `ImportOptions::max_text_bytes`.
    text_left: usize,
    max_text_mb: u64,
}

/// Characters of one cell's text kept as it is read: more than any field
/// allows, so the row builder still names the cell; past it the cell is
/// refused here, counted but never written out.
const KEPT_CHARS: usize = super::MAX_VARIABLE_CHARS + 100;

/// One cell: its text and how many columns it fills.
struct Cell {
    text: String,
    repeat: usize,
}

/// A row's cells with data: `(column, columns filled, text)`, each text held
/// once however many columns it repeats over.
type RowCells = Vec<(usize, usize, String)>;

/// A cell's text as it is read: at most [`KEPT_CHARS`] characters kept, all
/// of them counted.
#[derive(Default)]
struct CellText {
    text: String,
    chars: usize,
}

impl CellText {
    fn push_repeated(&mut self, ch: char, times: usize) {
        let room = KEPT_CHARS.saturating_sub(self.chars);
        self.text.extend(std::iter::repeat_n(ch, times.min(room)));
        self.chars = self.chars.saturating_add(times);
    }

    fn push_str(&mut self, text: &str) {
        let room = KEPT_CHARS.saturating_sub(self.chars);
        let mut taken = 0usize;
        for ch in text.chars() {
            if taken < room {
                self.text.push(ch);
            }
            taken += 1;
        }
        self.chars = self.chars.saturating_add(taken);
    }
}

impl<R: std::io::BufRead> Sheets<'_, R> {
    fn read(&mut self, sink: &mut impl RowSink) -> Result<(), Failure> {
        loop {
            self.buf.clear();
            let table = match self.reader.read_event_into(&mut self.buf)? {
                Event::Start(e) => e.name().as_ref() == "table:table",
                Event::Eof => return Ok(()),
                _ => false,
            };
            if table && self.table(sink)? {
                return Ok(());
            }
        }
    }

    /// One table's rows; `true` when it had a non-blank one.
    fn table(&mut self, sink: &mut impl RowSink) -> Result<bool, Failure> {
        let mut found = false;
        // Rows so far (the next row's number is this + 1).
        let mut rows = 0usize;
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf)? {
                Event::Start(e) if e.name().as_ref() == "table:table-row" => {
                    let repeat = repeat_of(&e, "table:number-rows-repeated")?;
                    let row = self.row(rows.saturating_add(1))?;
                    let mut cells: Vec<Cow<'_, str>> = Vec::new();
                    for (column, filled, text) in &row {
                        cells.resize(*column, Cow::Borrowed(""));
                        cells.extend(std::iter::repeat_n(Cow::Borrowed(text.as_str()), *filled));
                    }
                    found |= emit(sink, &cells, rows, repeat)?;
                    rows = rows.saturating_add(repeat);
                }
                Event::Empty(e) if e.name().as_ref() == "table:table-row" => {
                    rows = rows.saturating_add(repeat_of(&e, "table:number-rows-repeated")?);
                }
                Event::End(e) if e.name().as_ref() == "table:table" => return Ok(found),
                Event::Eof => return Ok(found),
                _ => {}
            }
        }
    }

    /// Reads one row's cells with data (row `number` of the sheet, for a
    /// refusal), at their columns; blank cells only move the column on.
    fn row(&mut self, number: usize) -> Result<RowCells, Failure> {
        let mut cells = RowCells::new();
        // Columns so far, blank ones included.
        let mut column = 0usize;
        loop {
            self.buf.clear();
            let (start, empty) = match self.reader.read_event_into(&mut self.buf)? {
                Event::Start(e) if is_cell(&e) => (e.into_owned(), false),
                Event::Empty(e) if is_cell(&e) => (e.into_owned(), true),
                Event::End(e) if e.name().as_ref() == "table:table-row" => return Ok(cells),
                Event::Eof => return Ok(cells),
                _ => continue,
            };
            let cell = self.cell(&start, empty, number, column)?;
            let text = cell.text.trim();
            if !text.is_empty() && column < MAX_COLUMNS {
                let filled = cell.repeat.min(MAX_COLUMNS - column);
                cells.push((column, filled, text.to_owned()));
            }
            column = column.saturating_add(cell.repeat);
        }
    }

    /// One cell: its typed value, else its paragraphs' text (`row` and
    /// `column` name it if it is too long).
    fn cell(
        &mut self,
        start: &BytesStart<'_>,
        empty: bool,
        row: usize,
        column: usize,
    ) -> Result<Cell, Failure> {
        let mut repeat = 1usize;
        let mut value: Option<String> = None;
        let mut error = false;
        for attr in start.attributes().with_checks(false) {
            let attr = attr?;
            let key = attr.key.as_ref();
            if key == "table:number-columns-repeated" {
                repeat = parse_repeat(&attr.normalized_value(XmlVersion::Implicit1_0)?);
                continue;
            }
            if key == "calcext:value-type" {
                error = attr.value.as_ref() == "error";
                continue;
            }
            if value.is_some() {
                continue;
            }
            let raw = attr.normalized_value(XmlVersion::Implicit1_0)?;
            value = match key {
                "office:value" => Some(match raw.trim().parse::<f64>() {
                    Ok(number) => number_text(number),
                    Err(_) => raw.trim().to_owned(),
                }),
                "office:date-value" | "office:time-value" => {
                    Some(iso_text(key == "office:time-value", &raw))
                }
                "office:boolean-value" => Some(
                    match raw.trim() {
                        "true" | "TRUE" => "true",
                        _ => "false",
                    }
                    .to_owned(),
                ),
                "office:string-value" => Some(raw.into_owned()),
                _ => None,
            };
        }
        let text = if empty {
            String::new()
        } else {
            let read = self.paragraphs(start.name().as_ref())?;
            if read.chars > KEPT_CHARS {
                return Err(Failure::Refused(ImportError::CellTooLong {
                    row,
                    column: super::column_letter(column),
                    chars: read.chars,
                    max: super::MAX_VARIABLE_CHARS,
                }));
            }
            read.text
        };
        let text = match value {
            Some(value) if !value.is_empty() => value,
            _ => text,
        };
        Ok(Cell {
            text: if error { String::new() } else { text },
            repeat,
        })
    }

    /// Takes `chars` written-out characters from the file's text budget.
    fn spend(&mut self, chars: usize) -> Result<(), Failure> {
        self.text_left = self.text_left.checked_sub(chars).ok_or(Failure::Refused(
            ImportError::TooMuchText {
                max_mb: self.max_text_mb,
            },
        ))?;
        Ok(())
    }

    /// The text of a cell's paragraphs, up to the cell's end tag.
    fn paragraphs(&mut self, end: &str) -> Result<CellText, Failure> {
        let end = end.to_owned();
        let mut text = CellText::default();
        let mut paragraphs = 0usize;
        // Inside an annotation (a comment), whose text is not the cell's.
        let mut annotation = 0usize;
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf)? {
                Event::End(e) if e.name().as_ref() == end.as_str() => {
                    self.spend(text.chars)?;
                    return Ok(text);
                }
                Event::Eof => return Ok(text),
                Event::Start(e) if e.name().as_ref() == "office:annotation" => annotation += 1,
                Event::End(e) if e.name().as_ref() == "office:annotation" => {
                    annotation = annotation.saturating_sub(1)
                }
                _ if annotation > 0 => {}
                // A paragraph, empty or not (`<text:p/>` is a blank line).
                Event::Start(e) | Event::Empty(e) if e.name().as_ref() == "text:p" => {
                    if paragraphs > 0 {
                        text.push_repeated('\n', 1);
                    }
                    paragraphs += 1;
                }
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    "text:s" => {
                        let spaces = match e.try_get_attribute("text:c")? {
                            Some(c) => parse_repeat(&c.normalized_value(XmlVersion::Implicit1_0)?),
                            None => 1,
                        };
                        text.push_repeated(' ', spaces);
                    }
                    "text:tab" => text.push_repeated('\t', 1),
                    "text:line-break" => text.push_repeated('\n', 1),
                    _ => {}
                },
                Event::Text(t) => text.push_str(&t.xml10_content()),
                Event::CData(t) => text.push_str(&t.xml10_content()),
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref()? {
                        Some(ch) => Some(ch),
                        None => predefined_entity(&r.xml10_content()),
                    };
                    if let Some(ch) = resolved {
                        text.push_repeated(ch, 1);
                    }
                }
                _ => {}
            }
            // A cell spelled out of many small pieces is refused as it grows.
            if text.chars > KEPT_CHARS.saturating_mul(64) {
                self.spend(text.chars)?;
                return Ok(text);
            }
        }
    }
}

fn is_cell(e: &BytesStart<'_>) -> bool {
    matches!(
        e.name().as_ref(),
        "table:table-cell" | "table:covered-table-cell"
    )
}

/// The five entities XML defines; any other is left out.
fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

/// A repeat count: at least 1; a count that is not a number is 1.
fn parse_repeat(text: &str) -> usize {
    text.trim().parse::<usize>().map_or(1, |n| n.max(1))
}

fn repeat_of(e: &BytesStart<'_>, attribute: &str) -> Result<usize, Failure> {
    Ok(match e.try_get_attribute(attribute)? {
        Some(value) => parse_repeat(&value.normalized_value(XmlVersion::Implicit1_0)?),
        None => 1,
    })
}

/// Hands a row over `repeat` times (numbered after the `before` rows read so
/// far); a blank row is not handed over at all. `true` when it was.
fn emit(
    sink: &mut impl RowSink,
    cells: &[Cow<'_, str>],
    before: usize,
    repeat: usize,
) -> Result<bool, Failure> {
    if cells.iter().all(|c| c.is_empty()) || before >= MAX_ROWS {
        return Ok(false);
    }
    let last = before.saturating_add(repeat).min(MAX_ROWS);
    for number in before.saturating_add(1)..=last {
        sink.row(number, cells).map_err(Failure::Refused)?;
    }
    Ok(true)
}
