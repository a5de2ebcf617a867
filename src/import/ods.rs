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
use std::io::{BufReader, Cursor};

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::ImportError;
use super::ImportOptions;
use super::bounds::{Bounded, overrun_of};
use super::reader::{MAX_COLUMNS, RowSink, iso_text, number_text};

/// Rows an OpenDocument sheet can have; repeats past it are not read.
const MAX_ROWS: usize = 1_048_576;

/// Whether these bytes are an OpenDocument package (a ZIP whose
/// `content.xml` holds the sheets, and no Excel workbook).
pub fn is_ods(bytes: &[u8]) -> bool {
    let Ok(archive) = zip::ZipArchive::new(Cursor::new(bytes)) else {
        return false;
    };
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|name| name.ok().map(|n| n.into_owned()))
        .collect();
    names.iter().any(|n| n == "content.xml") && !names.iter().any(|n| n.starts_with("xl/"))
}

/// Feeds the first table with a non-blank cell to `sink`.
pub fn read_ods(
    bytes: &[u8],
    options: &ImportOptions,
    sink: &mut impl RowSink,
) -> Result<(), ImportError> {
    let unreadable = |detail: String| ImportError::Unreadable(detail);
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| unreadable(e.to_string()))?;
    let content = archive
        .by_name("content.xml")
        .map_err(|e| unreadable(e.to_string()))?;
    let max_bytes = options.max_part_bytes();
    if content.size() > max_bytes {
        return Err(ImportError::PartTooLarge {
            part: "content.xml".into(),
            max_mb: max_bytes / (1024 * 1024),
        });
    }
    let bounded = Bounded::new(content, "content.xml", max_bytes, true);
    let mut reader = Reader::from_reader(BufReader::new(bounded));
    let mut sheets = Sheets {
        reader: &mut reader,
        buf: Vec::with_capacity(1024),
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
}

/// One cell: its text and how many columns it fills.
struct Cell {
    text: String,
    repeat: usize,
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
        let mut cells: Vec<Cow<'static, str>> = Vec::new();
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf)? {
                Event::Start(e) if e.name().as_ref() == "table:table-row" => {
                    let repeat = repeat_of(&e, "table:number-rows-repeated")?;
                    self.row(&mut cells)?;
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

    /// Reads one row's cells into `cells` (column positions as in the sheet,
    /// trailing blanks left out).
    fn row(&mut self, cells: &mut Vec<Cow<'static, str>>) -> Result<(), Failure> {
        cells.clear();
        // Columns so far, blank ones included.
        let mut column = 0usize;
        loop {
            self.buf.clear();
            let cell = match self.reader.read_event_into(&mut self.buf)? {
                Event::Start(e) if is_cell(&e) => {
                    let e = e.into_owned();
                    self.cell(&e, false)?
                }
                Event::Empty(e) if is_cell(&e) => {
                    let e = e.into_owned();
                    self.cell(&e, true)?
                }
                Event::End(e) if e.name().as_ref() == "table:table-row" => return Ok(()),
                Event::Eof => return Ok(()),
                _ => continue,
            };
            let text = cell.text.trim();
            if !text.is_empty() && column < MAX_COLUMNS {
                cells.resize(column, Cow::Borrowed(""));
                let filled = cell.repeat.min(MAX_COLUMNS - column);
                cells.extend(std::iter::repeat_n(Cow::Owned(text.to_owned()), filled));
            }
            column = column.saturating_add(cell.repeat);
        }
    }

    /// One cell: its typed value, else its paragraphs' text.
    fn cell(&mut self, start: &BytesStart<'_>, empty: bool) -> Result<Cell, Failure> {
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
            self.paragraphs(start.name().as_ref())?
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

    /// The text of a cell's paragraphs, up to the cell's end tag.
    fn paragraphs(&mut self, end: &str) -> Result<String, Failure> {
        let end = end.to_owned();
        let mut text = String::new();
        let mut paragraphs = 0usize;
        // Inside an annotation (a comment), whose text is not the cell's.
        let mut annotation = 0usize;
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf)? {
                Event::End(e) if e.name().as_ref() == end.as_str() => return Ok(text),
                Event::Eof => return Ok(text),
                Event::Start(e) if e.name().as_ref() == "office:annotation" => annotation += 1,
                Event::End(e) if e.name().as_ref() == "office:annotation" => {
                    annotation = annotation.saturating_sub(1)
                }
                _ if annotation > 0 => {}
                Event::Start(e) if e.name().as_ref() == "text:p" => {
                    if paragraphs > 0 {
                        text.push('\n');
                    }
                    paragraphs += 1;
                }
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    "text:s" => {
                        let spaces = match e.try_get_attribute("text:c")? {
                            Some(c) => parse_repeat(&c.normalized_value(XmlVersion::Implicit1_0)?),
                            None => 1,
                        };
                        // A cell's text is capped later; this only keeps
                        // a hostile count from allocating before that.
                        let room = super::MAX_VARIABLE_CHARS.saturating_add(1);
                        text.extend(std::iter::repeat_n(' ', spaces.min(room)));
                    }
                    "text:tab" => text.push('\t'),
                    "text:line-break" => text.push('\n'),
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
                        text.push(ch);
                    }
                }
                _ => {}
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
    cells: &[Cow<'static, str>],
    before: usize,
    repeat: usize,
) -> Result<bool, Failure> {
    if cells.iter().all(|c| c.is_empty()) {
        return Ok(false);
    }
    let last = before.saturating_add(repeat).min(MAX_ROWS);
    for number in before + 1..=last {
        sink.row(number, cells).map_err(Failure::Refused)?;
    }
    Ok(last > before)
}
