//! The dev chain's files: `blocks.dat` (append-only block records) and `devchain.json` (parameters).
//!
//! A record is `magic "cmbk" ‖ u32 LE length ‖ block (consensus bytes) ‖ first 4 bytes of dSHA256(block)`.
//! A block is acknowledged only after its record is written and `fsync`ed, so an acknowledged block
//! survives `kill -9`. On open:
//! * a record cut short at the end of the file (a crash during an append, before the acknowledgement)
//!   is moved aside to `blocks.dat.torn-<offset>`, reported with a warning, and the file is truncated
//!   to the last whole record: nothing acknowledged is ever dropped, and nothing is dropped silently;
//! * anything else (bad magic, a checksum mismatch, an oversized length, bytes that do not decode as a
//!   block) is an error naming the file, the offset and the record number. The chain does not start.

use bitcoin::Block;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Record magic.
pub const MAGIC: [u8; 4] = *b"cmbk";
/// Largest block record accepted (a 4 MWU block serializes to at most 4,000,000 bytes).
pub const RECORD_LEN_MAX: u32 = 4_000_000;
/// Block file name inside the data directory.
pub const BLOCKS_FILE: &str = "blocks.dat";
/// Parameters file name inside the data directory.
pub const PARAMS_FILE: &str = "devchain.json";

/// What went wrong with a data file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are damaged.
    #[error("{file}: corrupt at byte offset {offset} (record #{record}): {what}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// Record number (0-based; record 0 is height 1).
        record: usize,
        /// What is wrong.
        what: String,
    },
    /// The parameters file cannot be read.
    #[error("{file}: {what}")]
    BadParams {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Blocks read back from the file, and whether a torn tail was set aside.
#[derive(Debug)]
pub struct Loaded {
    /// Blocks in file order (height 1, 2, …).
    pub blocks: Vec<Block>,
    /// Where a torn final record was moved, if there was one.
    pub torn_tail: Option<PathBuf>,
}

/// The append-only block file.
#[derive(Debug)]
pub struct BlockFile {
    path: PathBuf,
    file: File,
    len: u64,
}

fn io(file: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        file: file.to_path_buf(),
        source,
    }
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let h = sha256d::sha256d(payload);
    [h[0], h[1], h[2], h[3]]
}

impl BlockFile {
    /// Opens (creating if needed) `dir/blocks.dat` and reads every record back.
    pub fn open(dir: &Path) -> Result<(BlockFile, Loaded), StoreError> {
        let path = dir.join(BLOCKS_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        let mut blocks = Vec::new();
        let mut off = 0usize;
        let mut torn_tail = None;
        while off < bytes.len() {
            let record = blocks.len();
            let corrupt = |what: String| StoreError::Corrupt {
                file: path.clone(),
                offset: off as u64,
                record,
                what,
            };
            let rest = bytes.get(off..).unwrap_or(&[]);
            if rest.iter().all(|b| *b == 0) {
                // A zero-filled tail: the file grew but the append never completed.
                torn_tail = Some(set_aside(&path, &bytes, off)?);
                break;
            }
            if rest.len() < 8 {
                if rest.iter().all(|b| *b == 0)
                    || MAGIC.starts_with(rest.get(..rest.len().min(4)).unwrap_or(&[]))
                {
                    torn_tail = Some(set_aside(&path, &bytes, off)?);
                    break;
                }
                return Err(corrupt(format!(
                    "{} stray bytes after the last record",
                    rest.len()
                )));
            }
            if rest.get(..4) != Some(&MAGIC[..]) {
                return Err(corrupt("bad record magic (expected \"cmbk\")".into()));
            }
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len > RECORD_LEN_MAX {
                return Err(corrupt(format!(
                    "record length {len} exceeds the limit {RECORD_LEN_MAX}"
                )));
            }
            let need = 8 + len as usize + 4;
            if rest.len() < need {
                // A record cut short at the very end: an append that crashed before it was acknowledged.
                torn_tail = Some(set_aside(&path, &bytes, off)?);
                break;
            }
            let payload = rest.get(8..8 + len as usize).unwrap_or(&[]);
            let sum = rest.get(8 + len as usize..need).unwrap_or(&[]);
            if sum != checksum(payload) {
                return Err(corrupt("checksum mismatch: the block bytes are damaged".into()));
            }
            let block: Block = bitcoin::consensus::deserialize(payload)
                .map_err(|e| corrupt(format!("record does not decode as a block: {e}")))?;
            blocks.push(block);
            off += need;
        }
        if torn_tail.is_some() {
            file.set_len(off as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        Ok((
            BlockFile {
                path,
                file,
                len: off as u64,
            },
            Loaded { blocks, torn_tail },
        ))
    }

    /// Appends a block and fsyncs. On any failure the file is cut back to its previous length.
    pub fn append(&mut self, block: &Block) -> Result<(), StoreError> {
        let payload = bitcoin::consensus::serialize(block);
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= RECORD_LEN_MAX)
            .ok_or_else(|| StoreError::Corrupt {
                file: self.path.clone(),
                offset: self.len,
                record: 0,
                what: format!(
                    "block of {} bytes exceeds the record limit {RECORD_LEN_MAX}",
                    payload.len()
                ),
            })?;
        let mut rec = Vec::with_capacity(payload.len() + 12);
        rec.extend_from_slice(&MAGIC);
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&payload);
        rec.extend_from_slice(&checksum(&payload));
        let res = self.file.write_all(&rec).and_then(|()| self.file.sync_data());
        match res {
            Ok(()) => {
                self.len += rec.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(StoreError::Io {
                    file: self.path.clone(),
                    source: e,
                })
            }
        }
    }

    /// Cuts the file back to the first `n` records (used when blocks are invalidated).
    pub fn truncate_to(&mut self, n: usize) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        let mut f = File::open(&self.path).map_err(io(&self.path))?;
        f.read_to_end(&mut bytes).map_err(io(&self.path))?;
        let mut off = 0usize;
        for _ in 0..n {
            let len = bytes
                .get(off + 4..off + 8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(0);
            off += 12 + len;
        }
        self.file.set_len(off as u64).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.len = off as u64;
        Ok(())
    }
}

fn set_aside(path: &Path, bytes: &[u8], off: usize) -> Result<PathBuf, StoreError> {
    let aside = path.with_file_name(format!("{BLOCKS_FILE}.torn-{off}"));
    std::fs::write(&aside, bytes.get(off..).unwrap_or(&[])).map_err(io(&aside))?;
    tracing::warn!(
        file = %path.display(),
        offset = off,
        saved_to = %aside.display(),
        "block file ends in a torn record (a crash during an append, before it was acknowledged); \
         its bytes were moved aside and the file cut back to the last whole record"
    );
    Ok(aside)
}

/// Reads `dir/devchain.json`, if it exists.
pub fn read_params(dir: &Path) -> Result<Option<crate::DevParams>, StoreError> {
    let path = dir.join(PARAMS_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            let p: crate::DevParams = serde_json::from_slice(&b).map_err(|e| StoreError::BadParams {
                file: path.clone(),
                what: format!("not valid JSON parameters: {e}"),
            })?;
            if p.format != 1 {
                return Err(StoreError::BadParams {
                    file: path,
                    what: format!("unknown format {}", p.format),
                });
            }
            let ascending = p
                .intervals
                .windows(2)
                .all(|w| w[0].from_height < w[1].from_height);
            let in_range = p.intervals.iter().all(|i| {
                (crate::params::BLOCK_INTERVAL_MIN_S..=crate::params::BLOCK_INTERVAL_MAX_S)
                    .contains(&i.seconds)
            });
            if p.intervals.is_empty() || !ascending || !in_range {
                return Err(StoreError::BadParams {
                    file: path,
                    what: "intervals must be non-empty, ascending by height, each 1..=86400 s".into(),
                });
            }
            Ok(Some(p))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            file: path,
            source: e,
        }),
    }
}

/// Writes `dir/devchain.json` atomically (temp file, fsync, rename).
pub fn write_params(dir: &Path, p: &crate::DevParams) -> Result<(), StoreError> {
    let path = dir.join(PARAMS_FILE);
    let tmp = dir.join(format!("{PARAMS_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(p).unwrap_or_default();
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
