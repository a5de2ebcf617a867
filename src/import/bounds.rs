//! What reading one upload may cost, whatever the file says about itself.
//!
//! A spreadsheet is a ZIP of XML parts (xlsx, ods): a few hundred bytes can
//! claim gigabytes, by compression (one part inflating to a gigabyte of one
//! cell, or of whitespace) or by repetition (ods' `number-rows-repeated` ×
//! `number-columns-repeated`). Every part is therefore read through
//! [`Bounded`], which stops at [`ImportOptions::max_part_bytes`] inflated bytes
//! and at [`MAX_MARKUP_RUN`] bytes without markup (the XML parsers buffer one
//! text or tag whole, so that run is what one event can cost). Calamine opens
//! an xlsx by itself, so [`check_archive`] reads its parts through the same
//! bounds first and counts its shared strings (calamine keeps them all);
//! ods is read by our own streaming reader (`ods.rs`) through them directly.
//!
//! [`ImportOptions::max_part_bytes`]: super::ImportOptions::max_part_bytes

use std::io::{self, Read, Seek};

use super::{ImportError, ImportOptions};

/// Bytes an XML part may hold from one `<` to the next: one tag and the text
/// after it, the longest a parser is made to buffer. A cell's text is far
/// shorter (see [`super::MAX_VARIABLE_CHARS`], each character at most 10
/// bytes when written as `&#x…;`).
pub const MAX_MARKUP_RUN: usize = 64 * 1024;

/// The error a [`Bounded`] read carries inside its `io::Error`, so that it
/// survives the XML parser and becomes the import's answer.
#[derive(Debug)]
pub struct Overrun(pub ImportError);

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Overrun {}

/// The import error inside an I/O error from a [`Bounded`] read, if that is
/// what it is.
pub fn overrun_of(err: &io::Error) -> Option<ImportError> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<Overrun>())
        .map(|overrun| overrun.0.clone())
}

/// A part of an archive read with a cap on its inflated size and, for XML,
/// on the bytes between markup characters.
pub struct Bounded<R> {
    inner: R,
    part: String,
    read: u64,
    max_bytes: u64,
    /// Bytes since the last `<`.
    run: usize,
    /// Counts elements of this local name (`si`: xlsx shared strings).
    counted: Option<ElementCounter>,
}

/// The refusal of a part (or of all parts together) over `max_bytes` inflated.
fn part_too_large(part: &str, max_bytes: u64) -> ImportError {
    ImportError::PartTooLarge {
        part: part.to_owned(),
        max_mb: max_bytes / (1024 * 1024),
    }
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, part: &str, max_bytes: u64) -> Self {
        Bounded {
            inner,
            part: part.to_owned(),
            read: 0,
            max_bytes,
            run: 0,
            counted: None,
        }
    }

    /// An archive part whose header announces `declared` inflated bytes:
    /// refused at once when that is over the bound, else read through it (a
    /// header may lie; the bytes read are what count).
    pub fn part(inner: R, part: &str, declared: u64, max_bytes: u64) -> Result<Self, ImportError> {
        if declared > max_bytes {
            return Err(part_too_large(part, max_bytes));
        }
        Ok(Bounded::new(inner, part, max_bytes))
    }

    /// Counts the part's elements named `local` (any namespace prefix).
    pub fn counting(mut self, local: &'static [u8]) -> Self {
        self.counted = Some(ElementCounter::new(local));
        self
    }

    /// Elements counted so far (0 when not counting).
    pub fn count(&self) -> usize {
        self.counted.as_ref().map_or(0, |c| c.count)
    }

    fn refuse(&self, error: ImportError) -> io::Error {
        io::Error::other(Overrun(error))
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let Some(got) = buf.get(..n) else {
            return Ok(n);
        };
        self.read += n as u64;
        if self.read > self.max_bytes {
            return Err(self.refuse(part_too_large(&self.part, self.max_bytes)));
        }
        // Only `<` starts something new: `>` is legal inside text and
        // attribute values, so it must not reset the count.
        for &b in got {
            if b == b'<' {
                self.run = 0;
            } else {
                self.run += 1;
            }
            if self.run > MAX_MARKUP_RUN {
                return Err(self.refuse(ImportError::TextTooLong {
                    part: self.part.clone(),
                    max_bytes: MAX_MARKUP_RUN,
                }));
            }
        }
        if let Some(counter) = self.counted.as_mut() {
            counter.feed(got);
        }
        Ok(n)
    }
}

/// Counts start tags with one local name as bytes stream past (a tag may be
/// cut between two reads).
struct ElementCounter {
    local: &'static [u8],
    /// The tag name read so far after a `<`; `None` outside a tag name.
    name: Option<Vec<u8>>,
    count: usize,
}

impl ElementCounter {
    fn new(local: &'static [u8]) -> Self {
        ElementCounter {
            local,
            name: None,
            count: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'<' {
                self.name = Some(Vec::with_capacity(8));
                continue;
            }
            let Some(name) = self.name.as_mut() else {
                continue;
            };
            if b.is_ascii_whitespace() || b == b'>' || b == b'/' {
                let local = name.rsplit(|&c| c == b':').next().unwrap_or_default();
                if !name.is_empty() && local == self.local {
                    self.count += 1;
                }
                self.name = None;
            } else if name.len() <= 64 {
                name.push(b);
            }
        }
    }
}

/// Reads every part of a ZIP spreadsheet (xlsx) through the bounds before
/// calamine opens it: no part over [`ImportOptions::max_part_bytes`] inflated
/// and the whole archive not over twice that (entries may share one
/// compressed stream), no run over [`MAX_MARKUP_RUN`] in any part (calamine
/// reads a sheet as XML whatever its name, and the compressed data of an image
/// has no long runs), and no more shared strings than cells a sheet may have,
/// counted or announced (calamine reserves room for `uniqueCount` of them). A
/// damaged archive is left to calamine to describe.
pub fn check_archive<R: Read + Seek>(
    mut archive: zip::ZipArchive<R>,
    options: &ImportOptions,
) -> Result<(), ImportError> {
    let max_bytes = options.max_part_bytes();
    let mut left = max_bytes.saturating_mul(2);
    let mut chunk = vec![0u8; 64 * 1024];
    for index in 0..archive.len() {
        let Ok(part) = archive.by_index(index) else {
            continue;
        };
        let name = part.name().map(|n| n.into_owned()).unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        let declared = part.size();
        let mut reader = Bounded::part(part, &name, declared, max_bytes)?;
        let shared_strings = lower.ends_with("sharedstrings.xml");
        if shared_strings {
            reader = reader.counting(b"si");
        }
        let mut head = Vec::new();
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) => match overrun_of(&err) {
                    Some(refused) => return Err(refused),
                    // Damage (a bad CRC, a cut stream) is calamine's to report.
                    None => break,
                },
            };
            left = left
                .checked_sub(n as u64)
                .ok_or_else(|| part_too_large("(todas las partes)", max_bytes.saturating_mul(2)))?;
            if !shared_strings {
                continue;
            }
            if head.len() < 4096 {
                head.extend_from_slice(chunk.get(..n.min(4096)).unwrap_or_default());
                if announced_strings(&head) > options.max_cells {
                    return Err(ImportError::TooManyCells {
                        max: options.max_cells,
                    });
                }
            }
            if reader.count() > options.max_cells {
                return Err(ImportError::TooManyCells {
                    max: options.max_cells,
                });
            }
        }
    }
    Ok(())
}

/// The larger of `count` and `uniqueCount` on a shared-strings table's
/// opening tag (`<sst count="…" uniqueCount="…">`), 0 when neither is there.
fn announced_strings(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    let Some(start) = text.find("<sst").or_else(|| text.find(":sst")) else {
        return 0;
    };
    let tag = text.get(start..).unwrap_or_default();
    let tag = tag
        .get(..tag.find('>').unwrap_or(tag.len()))
        .unwrap_or_default();
    ["count", "uniqueCount"]
        .iter()
        .filter_map(|attribute| {
            let at = tag.find(&format!(" {attribute}="))? + attribute.len() + 2;
            let value = tag.get(at..)?.trim_start_matches(['"', '\'']);
            let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                return None;
            }
            // More digits than any count we could accept: as good as infinite.
            Some(digits.parse::<usize>().unwrap_or(usize::MAX))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut reader: impl Read) -> Result<Vec<u8>, ImportError> {
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| overrun_of(&e).expect("an overrun"))?;
        Ok(out)
    }

    #[test]
    fn a_part_is_read_up_to_its_cap_and_no_further() {
        let data = vec![b'a'; 1000];
        assert!(read_all(Bounded::new(&data[..], "p", 1000)).is_ok());
        assert_eq!(
            read_all(Bounded::new(&data[..], "p", 999)),
            Err(ImportError::PartTooLarge {
                part: "p".into(),
                max_mb: 0
            })
        );
    }

    #[test]
    fn xml_runs_are_capped_and_only_a_tag_opening_resets_them() {
        let mut ok = Vec::new();
        for _ in 0..4 {
            ok.push(b'<');
            ok.extend(std::iter::repeat_n(b' ', MAX_MARKUP_RUN));
        }
        assert!(read_all(Bounded::new(&ok[..], "x.xml", u64::MAX)).is_ok());
        // `>` is legal in text: it does not start a new run.
        let mut long = b"<a>".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_MARKUP_RUN));
        assert!(matches!(
            read_all(Bounded::new(&long[..], "x.xml", u64::MAX)),
            Err(ImportError::TextTooLong { .. })
        ));
    }

    #[test]
    fn elements_are_counted_by_local_name_across_reads() {
        let xml = b"<sst><si><t>a</t></si><x:si/><si attr=\"1\"><t>b</t></si><sis/></sst>";
        // One byte at a time: every tag is cut between reads.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match (self.0.split_first(), buf.first_mut()) {
                    (Some((b, rest)), Some(slot)) => {
                        *slot = *b;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let mut reader = Bounded::new(Trickle(xml), "s.xml", u64::MAX).counting(b"si");
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read");
        assert_eq!(reader.count(), 3);
    }
}
