//! The archive format: framing, checksums, and the reader that refuses what does not verify.
//!
//! An archive is one gzip stream (RFC 1952). Uncompressed, it is:
//!
//! ```text
//! "CAASBKUP" (8 bytes) | format version (u16 LE) | record*
//! record = kind (u8) | length (u32 LE) | BSON document of `length` bytes
//! ```
//!
//! Records, in order:
//!
//! | kind | record | holds |
//! |---|---|---|
//! | 1 | header | `created_at`, `source` (server, host), `scope` (tenants or `all`), `point_in_time` |
//! | 2 | section | one collection: `kind` (`entity` or `ledger`), `entity`, `database`, `collection`, `id_field`, `tenant_field`, `indexes` (as `listIndexes` returns them), `declared_indexes` (from the entity's metadata) |
//! | 3 | document | one stored document, byte for byte as the server returned it |
//! | 4 | section end | `count`, `sha256` (of the section's document records' BSON bytes, in order), `tenants` (distinct tenant values seen) |
//! | 5 | manifest | `sections`: one entry per section (`database`, `collection`, `count`, `sha256`), `documents` (total) |
//! | 6 | trailer | `sha256`: of every uncompressed byte before the trailer record, magic included |
//!
//! Nothing may follow the trailer. Lengths are bounded ([`MAX_RECORD`]): a corrupted length
//! is refused before anything is allocated for it. gzip's own CRC-32 and length catch most
//! corruption of the compressed bytes; the SHA-256s catch the rest, and a truncated archive
//! has no trailer. The document bytes are raw BSON, so every BSON type (dates, decimals,
//! binary) round-trips exactly.

use std::io::{self, Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use mongodb::bson::{Document, RawDocumentBuf};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The first eight uncompressed bytes of every archive.
pub const MAGIC: &[u8; 8] = b"CAASBKUP";

/// The archive format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// The longest record accepted: a BSON document is at most 16 MiB; index lists and manifests
/// are far smaller. A length above it is corruption.
pub const MAX_RECORD: u32 = 16 * 1024 * 1024 + 64 * 1024;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Header = 1,
    Section = 2,
    Document = 3,
    SectionEnd = 4,
    Manifest = 5,
    Trailer = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::Section,
            3 => Kind::Document,
            4 => Kind::SectionEnd,
            5 => Kind::Manifest,
            6 => Kind::Trailer,
            _ => return None,
        })
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

/// Writes records into a gzip stream, hashing every uncompressed byte.
pub(crate) struct ArchiveWriter<W: Write> {
    out: GzEncoder<W>,
    whole: Sha256,
    bytes: u64,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive: gzip header, magic, version.
    pub(crate) fn new(out: W) -> io::Result<Self> {
        let mut w = ArchiveWriter {
            out: GzEncoder::new(out, Compression::fast()),
            whole: Sha256::new(),
            bytes: 0,
        };
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.whole.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b)
    }

    /// One record of raw BSON bytes.
    pub(crate) fn record(&mut self, kind: Kind, bson: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bson.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other(format!("record of {} bytes", bson.len())))?;
        self.put(&[kind as u8])?;
        self.put(&len.to_le_bytes())?;
        self.put(bson)
    }

    /// One record of a document.
    pub(crate) fn document(&mut self, kind: Kind, doc: &Document) -> io::Result<()> {
        let mut buf = Vec::new();
        doc.to_writer(&mut buf).map_err(io::Error::other)?;
        self.record(kind, &buf)
    }

    /// Writes the trailer and finishes the gzip stream. Returns the archive's checksum (the
    /// trailer's) and the uncompressed size.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64, W)> {
        let sum = hex(&self.whole.clone().finalize());
        let trailer = mongodb::bson::doc! { "sha256": &sum };
        self.document(Kind::Trailer, &trailer)?;
        let bytes = self.bytes;
        let mut out = self.out.finish()?;
        out.flush()?;
        Ok((sum, bytes, out))
    }
}

/// One record read back.
#[derive(Debug)]
pub(crate) enum Record {
    Header(Document),
    Section(Document),
    Document(RawDocumentBuf),
    SectionEnd(Document),
    Manifest(Document),
    /// The trailer, after its checksum was checked against the bytes before it.
    Trailer(String),
}

/// Reads records from a gzip stream, checking the framing and the whole-archive checksum.
/// Every problem is an [`Error::Archive`] naming the archive and what is wrong.
pub(crate) struct ArchiveReader<R: Read> {
    input: MultiGzDecoder<R>,
    name: String,
    whole: Sha256,
    records: u64,
    done: bool,
}

impl<R: Read> ArchiveReader<R> {
    /// Opens an archive: checks the magic and the format version.
    pub(crate) fn open(input: R, name: &str) -> Result<Self> {
        let mut r = ArchiveReader {
            input: MultiGzDecoder::new(input),
            name: name.to_owned(),
            whole: Sha256::new(),
            records: 0,
            done: false,
        };
        let mut head = [0_u8; 10];
        r.fill(&mut head, "the archive header")
            .map_err(|e| match e {
                Error::Archive { archive, reason } => Error::Archive {
                    archive,
                    reason: format!(
                        "not a caas-storage backup archive (expected a gzip stream starting \
                         with {:?}): {reason}",
                        String::from_utf8_lossy(MAGIC)
                    ),
                },
                e => e,
            })?;
        if &head[..8] != MAGIC {
            return Err(r.bad(format!(
                "not a caas-storage backup archive: it starts with {:?}, expected {:?}",
                String::from_utf8_lossy(&head[..8]),
                String::from_utf8_lossy(MAGIC)
            )));
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != FORMAT_VERSION {
            return Err(r.bad(format!(
                "format version {version}; this build reads version {FORMAT_VERSION} only"
            )));
        }
        Ok(r)
    }

    pub(crate) fn bad(&self, reason: String) -> Error {
        Error::Archive {
            archive: self.name.clone(),
            reason,
        }
    }

    /// Fills `buf` entirely; a short read is truncation.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(self.bad(format!(
                        "truncated: the stream ends inside {what} (after {} records)",
                        self.records
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.bad(format!(
                        "corrupted or truncated compressed stream while reading {what} (after \
                         {} records): {e}",
                        self.records
                    )))
                }
            }
        }
        self.whole.update(&buf[..]);
        Ok(())
    }

    /// The next record; `None` once the trailer was read and the stream ends there.
    pub(crate) fn next(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let before = self.whole.clone();
        let n = self.records + 1;
        let mut frame = [0_u8; 5];
        self.fill(&mut frame, &format!("the frame of record {n}"))?;
        let kind = Kind::from_u8(frame[0])
            .ok_or_else(|| self.bad(format!("record {n} has unknown kind {}", frame[0])))?;
        let len = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
        if !(5..=MAX_RECORD).contains(&len) {
            return Err(self.bad(format!(
                "record {n} claims {len} bytes (a BSON document is 5 to {MAX_RECORD})"
            )));
        }
        let mut body = vec![0_u8; len as usize];
        self.fill(&mut body, &format!("record {n}"))?;
        self.records = n;
        let raw = RawDocumentBuf::from_bytes(body)
            .map_err(|e| self.bad(format!("record {n} is not a BSON document: {e}")))?;
        if let Some(e) = raw.iter().find_map(|el| el.err()) {
            return Err(self.bad(format!("record {n} is not a valid BSON document: {e}")));
        }
        let as_doc = |raw: &RawDocumentBuf| -> Result<Document> {
            raw.to_document()
                .map_err(|e| self.bad(format!("record {n} is not a valid BSON document: {e}")))
        };
        Ok(Some(match kind {
            Kind::Document => Record::Document(raw),
            Kind::Header => Record::Header(as_doc(&raw)?),
            Kind::Section => Record::Section(as_doc(&raw)?),
            Kind::SectionEnd => Record::SectionEnd(as_doc(&raw)?),
            Kind::Manifest => Record::Manifest(as_doc(&raw)?),
            Kind::Trailer => {
                let expected = hex(&before.finalize());
                let found = as_doc(&raw)?
                    .get_str("sha256")
                    .map(str::to_owned)
                    .map_err(|_| self.bad("the trailer has no sha256".into()))?;
                if found != expected {
                    return Err(self.bad(format!(
                        "checksum mismatch: the trailer says sha256 {found}, the archive's \
                         bytes hash to {expected}"
                    )));
                }
                let mut extra = [0_u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => {
                        return Err(
                            self.bad("data follows the trailer (two archives joined?)".into())
                        )
                    }
                    Err(e) => {
                        return Err(self.bad(format!(
                            "corrupted compressed stream after the trailer: {e}"
                        )))
                    }
                }
                self.done = true;
                Record::Trailer(found)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn archive(docs: usize) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new()).unwrap();
        w.document(Kind::Header, &doc! { "h": 1 }).unwrap();
        for i in 0..docs {
            w.document(Kind::Document, &doc! { "_id": i as i64 })
                .unwrap();
        }
        w.document(Kind::Manifest, &doc! { "m": 1 }).unwrap();
        w.finish().unwrap().2
    }

    fn read_all(bytes: &[u8]) -> Result<usize> {
        let mut r = ArchiveReader::open(bytes, "t")?;
        let mut n = 0;
        while r.next()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn plain(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn reason(r: Result<usize>) -> String {
        match r {
            Err(Error::Archive { reason, .. }) => reason,
            other => panic!("expected an archive error, got {other:?}"),
        }
    }

    #[test]
    fn records_round_trip_and_the_trailer_checks_the_whole() {
        assert_eq!(
            read_all(&archive(3)).unwrap(),
            6,
            "header, 3 documents, manifest, trailer"
        );
        let p = plain(&archive(3));
        // A byte of a document changed: only the trailer's checksum sees it.
        let mut changed = p.clone();
        let at = changed.len() / 2;
        changed[at] ^= 1;
        let why = reason(read_all(&gz(&changed)));
        assert!(
            why.contains("checksum mismatch")
                || why.contains("not a valid BSON")
                || why.contains("record"),
            "{why}"
        );
        // Cut at a record boundary, cut inside a record, data after the trailer.
        assert!(reason(read_all(&gz(&p[..p.len() - 10]))).contains("truncated"));
        let mut joined = archive(1);
        joined.extend(archive(1));
        assert!(reason(read_all(&joined)).contains("follows the trailer"));
    }

    #[test]
    fn framing_is_checked_before_anything_is_allocated() {
        let mut p = plain(&archive(1));
        // The first record's length claims 4 GiB.
        p[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(read_all(&gz(&p))).contains("claims 4294967295 bytes"));
        let mut p = plain(&archive(1));
        p[10] = 42;
        assert!(reason(read_all(&gz(&p))).contains("unknown kind 42"));
        assert!(reason(read_all(&gz(b"CAASBKUP\x02\x00"))).contains("format version 2"));
        assert!(reason(read_all(b"")).contains("not a caas-storage backup archive"));
    }
}
