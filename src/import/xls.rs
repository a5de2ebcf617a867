//! The second half of the CFB guard (`cfb.rs`): what calamine 0.38's `Xls`
//! reader will allocate for the workbook stream's sheets.
//!
//! `Xls::new` lays out every sheet as a dense grid spanning all its cells
//! (row × column × 32 bytes), and reserves room for as many cells as a
//! sheet's `DIMENSIONS` record claims. Two cells far apart, or one lying
//! `DIMENSIONS` record, in a 2 KB file are gigabytes. This walks the
//! records the way calamine does (each sheet from its `BoundSheet8` offset,
//! nested substreams skipped) and refuses a sheet bigger than [`MAX_CELLS`].

/// A legitimate `.xls` within the upload limit cannot hold more cells than
/// this (a cell record is at least 10 bytes, and 25 MB is 2.5 million of
/// them); sparse sheets get room to spare. At calamine's 32 to 40 bytes a
/// cell, the grid stays under 200 MB.
pub(crate) const MAX_CELLS: u64 = 5_000_000;

const BOF: u16 = 0x0809;
const EOF: u16 = 0x000A;
const BOUND_SHEET: u16 = 0x0085;
const DIMENSIONS: u16 = 0x0200;
const MUL_RK: u16 = 0x00BD;
const FORMULA: u16 = 0x0006;
/// Number, Label, RString, BoolErr, Rk, LabelSst: a cell at (row, col) first.
const CELLS: [u16; 6] = [0x0203, 0x0204, 0x00D6, 0x0205, 0x027E, 0x00FD];

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// BIFF records from `stream` until one does not fit: (type, data).
fn records(mut stream: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let typ = u16_at(stream, 0)?;
        let len = usize::from(u16_at(stream, 2)?);
        let data = stream.get(4..4 + len)?;
        stream = stream.get(4 + len..)?;
        Some((typ, data))
    })
}

/// `Err(detail)` when a sheet of the workbook stream spans more than [`MAX_CELLS`].
pub(crate) fn check(stream: &[u8]) -> Result<(), String> {
    let sheets: Vec<usize> = records(stream)
        .take_while(|&(typ, _)| typ != EOF)
        .filter(|&(typ, _)| typ == BOUND_SHEET)
        .filter_map(|(_, data)| Some(u32_at(data, 0)? as usize))
        .collect();
    for offset in sheets {
        let Some(sheet) = stream.get(offset..) else {
            continue;
        };
        let cells = sheet_cells(sheet);
        if cells > MAX_CELLS {
            return Err(format!(
                "archivo xls dañado: una hoja dice ocupar {cells} celdas (máximo {MAX_CELLS})"
            ));
        }
    }
    Ok(())
}

/// The most cells calamine would lay out or reserve for the sheet at the
/// start of `sheet`.
fn sheet_cells(sheet: &[u8]) -> u64 {
    let mut reserved = 0u64;
    // (first row, last row, first column, last column) of the cells seen.
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    let mut cell = |row: u32, col: u32| {
        let (r0, r1, c0, c1) = bounds.unwrap_or((row, row, col, col));
        bounds = Some((r0.min(row), r1.max(row), c0.min(col), c1.max(col)));
    };
    let mut seen_bof = false;
    let mut depth = 0usize;
    for (typ, data) in records(sheet) {
        if depth > 0 {
            match typ {
                BOF => depth += 1,
                EOF => depth -= 1,
                _ => {}
            }
            continue;
        }
        match typ {
            BOF if seen_bof => depth += 1,
            BOF => seen_bof = true,
            EOF => break,
            DIMENSIONS => reserved = reserved.max(dimensions_cells(data)),
            MUL_RK => {
                let (Some(row), Some(first)) = (u16_at(data, 0), u16_at(data, 2)) else {
                    continue;
                };
                // One 6-byte RK per column, between the first column and the last (u16).
                let count = (data.len().saturating_sub(6) / 6) as u32;
                cell(row.into(), first.into());
                cell(row.into(), u32::from(first) + count.saturating_sub(1));
            }
            FORMULA => {
                if let (Some(row), Some(col)) = (u16_at(data, 0), u16_at(data, 2)) {
                    cell(row.into(), col.into());
                }
            }
            t if CELLS.contains(&t) => {
                if let (Some(row), Some(col)) = (u16_at(data, 0), u16_at(data, 2)) {
                    cell(row.into(), col.into());
                }
            }
            _ => {}
        }
    }
    let laid_out = bounds.map_or(0, |(r0, r1, c0, c1)| {
        (u64::from(r1 - r0) + 1) * (u64::from(c1 - c0) + 1)
    });
    reserved.max(laid_out)
}

/// Cells a `DIMENSIONS` record makes calamine reserve (its own parse:
/// BIFF8 rows are u32, columns u16; a first column past 0xFF or after the
/// last is read as 0).
fn dimensions_cells(data: &[u8]) -> u64 {
    let read = || -> Option<(u32, u32, u32, u32)> {
        match data.len() {
            10 => Some((
                u16_at(data, 0)?.into(),
                u16_at(data, 2)?.into(),
                u16_at(data, 4)?.into(),
                u16_at(data, 6)?.into(),
            )),
            14 | 16 => Some((
                u32_at(data, 0)?,
                u32_at(data, 4)?,
                u16_at(data, 8)?.into(),
                u16_at(data, 10)?.into(),
            )),
            _ => None,
        }
    };
    let Some((first_row, last_row, mut first_col, last_col)) = read() else {
        return 0;
    };
    if first_col > 0xFF || last_col < first_col {
        first_col = 0;
    }
    if last_row == 0 || last_col == 0 {
        return 1;
    }
    // calamine: rows = last_row - 1 - first_row + 1 (u32, wrapping in release).
    let rows = (last_row - 1).wrapping_sub(first_row).wrapping_add(1);
    let cols = (last_col - 1).wrapping_sub(first_col).wrapping_add(1);
    u64::from(rows) * u64::from(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(typ: u16, data: &[u8]) -> Vec<u8> {
        let mut out = typ.to_le_bytes().to_vec();
        out.extend((data.len() as u16).to_le_bytes());
        out.extend(data);
        out
    }

    fn number(row: u16, col: u16) -> Vec<u8> {
        let mut data = row.to_le_bytes().to_vec();
        data.extend(col.to_le_bytes());
        data.extend([0u8; 10]);
        record(0x0203, &data)
    }

    /// A globals substream naming one sheet right after it, then the sheet.
    fn workbook(sheet_records: &[Vec<u8>]) -> Vec<u8> {
        let bof = record(BOF, &[0; 16]);
        let eof = record(EOF, &[]);
        let bound_len = 4 + 8;
        let sheet_at = (bof.len() + bound_len + eof.len()) as u32;
        let mut stream = bof.clone();
        let mut bound = sheet_at.to_le_bytes().to_vec();
        bound.extend([0, 0, 1, 0]);
        stream.extend(record(BOUND_SHEET, &bound));
        stream.extend(&eof);
        stream.extend(&bof);
        for r in sheet_records {
            stream.extend(r);
        }
        stream.extend(eof);
        stream
    }

    #[test]
    fn ordinary_sheets_pass() {
        let stream = workbook(&[number(0, 0), number(3000, 20)]);
        assert_eq!(check(&stream), Ok(()));
    }

    #[test]
    fn cells_far_apart_are_refused() {
        let stream = workbook(&[number(0, 0), number(65_535, 255)]);
        assert!(check(&stream).is_err_and(|e| e.contains("16777216")));
    }

    #[test]
    fn a_lying_dimensions_record_is_refused() {
        let mut dims = 0u32.to_le_bytes().to_vec();
        dims.extend(4_000_000u32.to_le_bytes());
        dims.extend([0, 0, 10, 0, 0, 0]);
        assert!(check(&workbook(&[record(DIMENSIONS, &dims)])).is_err());
        assert_eq!(dimensions_cells(&dims), 40_000_000);
        assert_eq!(dimensions_cells(&[0; 3]), 0);
    }

    #[test]
    fn nested_substreams_and_garbage_are_ignored() {
        let chart = [record(BOF, &[0; 16]), number(65_535, 255), record(EOF, &[])].concat();
        let stream = workbook(&[chart, number(1, 1)]);
        assert_eq!(check(&stream), Ok(()));
        assert_eq!(check(&[0xFF; 7]), Ok(()));
        assert_eq!(check(&[]), Ok(()));
    }
}
