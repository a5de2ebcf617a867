//! A guard in front of calamine for OLE2/CFB containers (`.xls`; calamine
//! also probes any `.xlsx` that starts like one).
//!
//! calamine 0.38 trusts the container: it follows sector chains without
//! looking for cycles, builds its sector table from whatever the index lists,
//! and sizes a sheet's grid from the positions its records claim. A damaged
//! or hostile `.xls` of a few KB (the fuzzer found several in seconds) makes
//! it allocate gigabytes, and an allocation failure aborts the whole server;
//! a panic we could catch, an abort we cannot. So before calamine sees a CFB
//! file, this module reads the same structures calamine will, the same way,
//! and refuses the file when calamine would:
//!
//! - follow a FAT chain that loops, or build a FAT from more sectors than
//!   the file has;
//! - read the workbook stream through the mini stream from sectors the mini
//!   stream does not have (calamine then reads from wherever the file cursor
//!   happens to be, which this guard cannot mirror; no valid file does it);
//! - lay out a sheet whose cells or `DIMENSIONS` span more than
//!   [`super::xls::MAX_CELLS`] cells (see `xls.rs`).
//!
//! Anything calamine refuses by itself (short or odd headers, sectors past
//! the end) is left to it.

const SIGNATURE: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
const HEADER_LEN: usize = 512;
/// FAT values from here up are markers (DIFSECT, FATSECT, ENDOFCHAIN, FREESECT),
/// not sector ids; calamine stops a DIFAT walk at the same bound.
const RESERVED: u32 = 0xFFFF_FFFA;
const DIFSECT: u32 = 0xFFFF_FFFC;

pub(crate) fn is_cfb(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGNATURE)
}

/// `Err(detail)` when calamine would loop on the file, or allocate far
/// more than the file could hold (module docs).
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    let fat = match read_fat(bytes) {
        Fat::NotOurs => return Ok(()),
        Fat::TooLarge => return Err(damaged("lista más sectores de tabla de los que tiene")),
        Fat::Read(fat) if has_cycle(&fat) => {
            return Err(damaged("una cadena de sectores forma un ciclo"));
        }
        Fat::Read(fat) => fat,
    };
    let Some(sector_size) = sector_size(bytes) else {
        return Ok(());
    };
    let container = Container {
        bytes,
        sector_size,
        fat,
    };
    match container.workbook_stream() {
        Stream::Missing => Ok(()),
        Stream::Unmirrorable => Err(damaged("el flujo del libro apunta fuera de sus sectores")),
        Stream::Read(stream) => super::xls::check(&stream),
    }
}

fn damaged(what: &str) -> String {
    format!("archivo OLE2 (xls) dañado: {what}")
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

enum Fat {
    /// Not a header calamine accepts, or a DIFAT it gives up on: its error.
    NotOurs,
    /// More FAT sectors listed than the file has sectors (calamine would
    /// read the same sectors again and again into one huge table).
    TooLarge,
    Read(Vec<u32>),
}

/// The FAT as calamine builds it: the header's DIFAT, then the DIFAT
/// chain, then each FAT sector it lists.
fn read_fat(bytes: &[u8]) -> Fat {
    let Some(sector_size) = sector_size(bytes) else {
        return Fat::NotOurs;
    };
    // Sector `id` starts after the header, which fills one whole sector.
    let sector = |id: u32| -> Option<&[u8]> {
        let start = (id as usize).checked_add(1)?.checked_mul(sector_size)?;
        let end = start.checked_add(sector_size)?.min(bytes.len());
        bytes.get(start..end)
    };
    let max_id = bytes.len() / sector_size;

    let (Some(header), Some(mut next)) = (bytes.get(76..HEADER_LEN), u32_at(bytes, 68)) else {
        return Fat::NotOurs;
    };
    let mut difat: Vec<u32> = u32s(header).collect();
    let mut steps = 0usize;
    while next < RESERVED {
        steps += 1;
        let Some(more) = sector(next).filter(|_| steps <= max_id + 1) else {
            return Fat::NotOurs;
        };
        difat.extend(u32s(more));
        let Some(last) = difat.pop() else {
            return Fat::NotOurs;
        };
        next = last;
    }

    let fat_sectors: Vec<u32> = difat.into_iter().filter(|&id| id < DIFSECT).collect();
    if fat_sectors.len() > max_id + 1 {
        return Fat::TooLarge;
    }
    let mut fat = Vec::with_capacity(fat_sectors.len() * sector_size / 4);
    for id in fat_sectors {
        match sector(id) {
            Some(entries) => fat.extend(u32s(entries)),
            None => return Fat::NotOurs,
        }
    }
    Fat::Read(fat)
}

fn sector_size(bytes: &[u8]) -> Option<usize> {
    if !is_cfb(bytes) || bytes.len() < HEADER_LEN {
        return None;
    }
    match u16_at(bytes, 30)? {
        0x0009 => Some(512),
        0x000C => Some(4096),
        _ => None,
    }
}

/// Whether following `fat[i]` from some sector ever comes back to a sector
/// already on the same path (values past the end, markers included, end a chain).
fn has_cycle(fat: &[u32]) -> bool {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; fat.len()];
    let mut path = Vec::new();
    for start in 0..fat.len() {
        let mut at = start;
        while state.get(at) == Some(&NEW) {
            state[at] = ON_PATH;
            path.push(at);
            at = fat[at] as usize;
        }
        if state.get(at) == Some(&ON_PATH) {
            return true;
        }
        for done in path.drain(..) {
            state[done] = DONE;
        }
    }
    false
}

const ENDOFCHAIN: u32 = 0xFFFF_FFFE;
/// Streams shorter than this live in the mini stream (64-byte sectors).
const MINI_STREAM_CUTOFF: usize = 4096;
const MINI_SECTOR: usize = 64;
const DIRECTORY_ENTRY: usize = 128;

enum Stream {
    /// No `Workbook` or `Book` stream: calamine refuses the file itself.
    Missing,
    Unmirrorable,
    Read(Vec<u8>),
}

/// A CFB file whose FAT has no cycle.
struct Container<'a> {
    bytes: &'a [u8],
    sector_size: usize,
    fat: Vec<u32>,
}

impl<'a> Container<'a> {
    /// Sector `id` (short at the end of the file); `None` past the end.
    fn sector(&self, id: u32) -> Option<&'a [u8]> {
        let start = (id as usize)
            .checked_add(1)?
            .checked_mul(self.sector_size)?;
        let end = start.checked_add(self.sector_size)?.min(self.bytes.len());
        self.bytes.get(start..end)
    }

    /// A FAT chain's bytes, at most `limit`, as calamine reads it (it fails
    /// on a sector past the end of the file; so do we, by stopping). The
    /// FAT has no cycle, so this ends within the file's sector count.
    fn chain(&self, start: u32, limit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut id = start;
        while id != ENDOFCHAIN && out.len() < limit {
            let Some(data) = self.sector(id) else {
                break;
            };
            let take = data.len().min(limit - out.len());
            out.extend_from_slice(data.get(..take).unwrap_or_default());
            match self.fat.get(id as usize) {
                Some(&next) => id = next,
                None => break,
            }
        }
        out
    }

    /// The workbook stream calamine's `Xls` reads: `Workbook`, else `Book`.
    fn workbook_stream(&self) -> Stream {
        let large = self.sector_size == 4096;
        let Some(dir_start) = u32_at(self.bytes, 48) else {
            return Stream::Missing;
        };
        // (name, start, len) of each directory entry.
        let entries: Vec<(String, u32, usize)> = self
            .chain(dir_start, usize::MAX)
            .chunks_exact(DIRECTORY_ENTRY)
            .filter_map(|entry| {
                let units: Vec<u16> = entry
                    .get(..64)?
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                let start = u32_at(entry, 116)?;
                let len = if large {
                    usize::try_from(u64::from_le_bytes(entry.get(120..128)?.try_into().ok()?))
                        .ok()?
                } else {
                    u32_at(entry, 120)? as usize
                };
                Some((String::from_utf16_lossy(&units), start, len))
            })
            .collect();
        let find = |name: &str| {
            entries
                .iter()
                .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        };
        let Some(&(_, start, len)) = find("Workbook").or_else(|| find("Book")) else {
            return Stream::Missing;
        };
        if len >= MINI_STREAM_CUTOFF {
            return Stream::Read(self.chain(start, len));
        }

        // The mini stream: 64-byte sectors inside the root entry's stream,
        // chained by the mini FAT.
        let (Some(mini_fat_start), Some(mini_fat_sectors)) =
            (u32_at(self.bytes, 60), u32_at(self.bytes, 64))
        else {
            return Stream::Missing;
        };
        let Some(&(_, root_start, root_len)) = entries.first() else {
            return Stream::Missing;
        };
        if mini_fat_sectors == 0 {
            return Stream::Unmirrorable;
        }
        let ministream = self.chain(root_start, root_len);
        let mini_fat_bytes = (mini_fat_sectors as usize).saturating_mul(self.sector_size);
        let mini_fat: Vec<u32> = u32s(&self.chain(mini_fat_start, mini_fat_bytes)).collect();
        let mut out = Vec::new();
        let mut id = start;
        while id != ENDOFCHAIN && out.len() < len {
            let at = (id as usize).saturating_mul(MINI_SECTOR);
            let Some(data) = ministream.get(at..at.saturating_add(MINI_SECTOR)) else {
                return Stream::Unmirrorable;
            };
            let take = data.len().min(len - out.len());
            out.extend_from_slice(data.get(..take).unwrap_or_default());
            match mini_fat.get(id as usize) {
                Some(&next) => id = next,
                None => break,
            }
        }
        Stream::Read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 512-byte-sector CFB with one FAT sector (sector 0) holding `fat`.
    fn cfb(fat: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_LEN * 3];
        bytes[..8].copy_from_slice(&SIGNATURE);
        bytes[26..28].copy_from_slice(&3u16.to_le_bytes());
        bytes[30..32].copy_from_slice(&9u16.to_le_bytes());
        bytes[32..34].copy_from_slice(&6u16.to_le_bytes());
        bytes[68..72].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        // DIFAT: FAT sector 0, the rest unused.
        for (i, chunk) in bytes[76..HEADER_LEN].chunks_exact_mut(4).enumerate() {
            let id: u32 = if i == 0 { 0 } else { 0xFFFF_FFFF };
            chunk.copy_from_slice(&id.to_le_bytes());
        }
        let sector = &mut bytes[HEADER_LEN..2 * HEADER_LEN];
        for (chunk, value) in sector
            .chunks_exact_mut(4)
            .zip(fat.iter().chain(std::iter::repeat(&0xFFFF_FFFF)))
        {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn chains_that_end_pass() {
        // Sector 0 is the FAT itself, 1 → 2 → end.
        assert_eq!(check(&cfb(&[0xFFFF_FFFD, 2, 0xFFFF_FFFE])), Ok(()));
    }

    #[test]
    fn a_chain_that_loops_is_refused() {
        assert!(check(&cfb(&[0xFFFF_FFFD, 2, 3, 1])).is_err());
        assert!(check(&cfb(&[0xFFFF_FFFD, 1])).is_err());
    }

    #[test]
    fn the_real_fixture_passes() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clientes.xls");
        let bytes = std::fs::read(path).expect("fixture");
        assert!(is_cfb(&bytes));
        let Fat::Read(fat) = read_fat(&bytes) else {
            panic!("the fixture's FAT reads");
        };
        let container = Container {
            bytes: &bytes,
            sector_size: 512,
            fat,
        };
        // The workbook stream starts with a BIFF BOF record (0x0809).
        assert!(matches!(
            container.workbook_stream(),
            Stream::Read(stream) if stream.starts_with(&[0x09, 0x08])
        ));
        assert_eq!(check(&bytes), Ok(()));
    }

    #[test]
    fn a_difat_listing_more_fat_sectors_than_the_file_has_is_refused() {
        // Every DIFAT entry names sector 0.
        let mut bytes = cfb(&[0xFFFF_FFFD, 0xFFFF_FFFE]);
        bytes[76..HEADER_LEN].fill(0);
        assert!(check(&bytes).is_err_and(|e| e.contains("sectores de tabla")));
    }

    #[test]
    fn anything_else_is_left_to_calamine() {
        assert_eq!(check(b""), Ok(()));
        assert_eq!(check(&SIGNATURE), Ok(()));
        let mut odd = cfb(&[1]);
        odd[30] = 7;
        assert_eq!(check(&odd), Ok(()));
    }
}
