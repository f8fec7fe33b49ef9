//! The share log's write-ahead journal: append-only segment files of checksummed frames.
//!
//! A share is acknowledged once the frame holding it is written and `fdatasync`ed here; SQLite is
//! filled from the journal afterwards, off the acknowledgement's path (`share_log`). Each frame is
//! one group commit: `[len u32][sum u32][first_seq u64][count u32]` then `count` entries, each
//! `[len u32][bytes]`, where `sum` is the first four bytes of SHA-256 over everything after it and
//! sequence numbers run on without gaps across frames and segments. Segment files are named by
//! their first sequence number, start with [`MAGIC`], and are closed at [`SEGMENT_BYTES`]; a closed
//! segment is deleted once everything in it is durable in SQLite.
//!
//! Recovery reads every segment in order. A frame that is cut short or fails its checksum at the
//! end of the newest segment is the tail of a write that was never acknowledged (no `fdatasync`
//! returned for it) and is cut off; anywhere else, or a gap in the sequence, is corruption and
//! opening fails with the file and offset.

use bitcoin::hashes::{sha256, Hash};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"CMJRNL01";
/// A segment is closed (and a new one started) once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// A frame longer than this is corruption (a frame is one group commit: at most `BATCH_MAX`
/// records, blocks included).
pub const FRAME_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Bytes of a frame's header (`len`, `sum`, `first_seq`, `count`).
pub const FRAME_HEADER: usize = 20;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A read, write, sync or directory operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A frame in the middle of the journal is damaged, or sequence numbers skip.
    #[error(
        "journal {path} is corrupt at byte {offset}: {what}; the share log cannot be opened \
         (move the journal directory aside to open it without the records after that point)"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl JournalError {
    /// Whether this is the disk (or a quota) being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || source.kind() == std::io::ErrorKind::QuotaExceeded)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A frame being built: entries are appended to `buf` after the reserved header.
#[derive(Debug)]
pub struct Frame {
    buf: Vec<u8>,
    count: u32,
}

impl Default for Frame {
    fn default() -> Self {
        Frame::new()
    }
}

impl Frame {
    /// An empty frame.
    pub fn new() -> Frame {
        Frame {
            buf: vec![0; FRAME_HEADER],
            count: 0,
        }
    }

    /// Appends one entry written by `f` into the buffer it is given.
    pub fn entry(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut self.buf);
        let len = u32::try_from(self.buf.len() - at - 4).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
    }

    /// Entries in the frame.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Empties the frame for reuse (keeps its buffer).
    pub fn clear(&mut self) {
        self.buf.truncate(FRAME_HEADER);
        self.buf[..FRAME_HEADER].fill(0);
        self.count = 0;
    }

    fn seal(&mut self, first_seq: u64) {
        let len = u32::try_from(self.buf.len() - 8).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&first_seq.to_le_bytes());
        self.buf[16..20].copy_from_slice(&self.count.to_le_bytes());
        let sum = checksum(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&sum);
    }
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let h = sha256::Hash::hash(body).to_byte_array();
    [h[0], h[1], h[2], h[3]]
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segment files in `dir`, oldest first: (first sequence number, path).
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Reads every entry above `applied` in sequence order, calling `f(seq, entry)`; cuts off a torn
/// tail of the newest segment. Returns the sequence number the next entry gets (above `applied`
/// and every entry found).
pub fn recover(
    dir: &Path,
    applied: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), JournalError>,
) -> Result<u64, JournalError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let segs = segments(dir)?;
    let mut next: Option<u64> = None;
    for (i, (first, path)) in segs.iter().enumerate() {
        let last_segment = i + 1 == segs.len();
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(io(path))?;
        let corrupt = |offset: usize, what: String| JournalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            what,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if last_segment && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                // Created but its header never reached the disk: nothing in it was acknowledged.
                cut(path, 0)?;
                continue;
            }
            return Err(corrupt(0, "not a journal segment (bad magic)".into()));
        }
        let mut seq = *first;
        match next {
            Some(n) if n != *first => {
                return Err(corrupt(0, format!("segment starts at {first}, expected {n}")));
            }
            None if *first > applied.saturating_add(1) => {
                return Err(corrupt(
                    0,
                    format!(
                        "records {} to {} are missing (the share log has up to {applied})",
                        applied + 1,
                        first - 1
                    ),
                ));
            }
            _ => {}
        }
        let mut at = MAGIC.len();
        while at < bytes.len() {
            match frame_at(&bytes, at) {
                Some((frame_seq, count, body_end)) if frame_seq == seq => {
                    let mut p = at + FRAME_HEADER;
                    for _ in 0..count {
                        let entry = read_entry(&bytes, &mut p, body_end)
                            .ok_or_else(|| corrupt(p, "an entry overruns its frame".into()))?;
                        if seq > applied {
                            f(seq, entry)?;
                        }
                        seq += 1;
                    }
                    at = body_end;
                }
                Some((frame_seq, ..)) => {
                    return Err(corrupt(
                        at,
                        format!("frame starts at {frame_seq}, expected {seq}"),
                    ));
                }
                None if last_segment => {
                    // The torn tail of a write no fdatasync completed for: never acknowledged.
                    tracing::warn!(path = %path.display(), offset = at, bytes = bytes.len() - at,
                        "share log journal: an unacknowledged torn write at the end was cut off");
                    cut(path, at as u64)?;
                    break;
                }
                None => return Err(corrupt(at, "a damaged frame before the newest segment".into())),
            }
        }
        next = Some(seq);
    }
    Ok(next.unwrap_or(0).max(applied.saturating_add(1)))
}

fn cut(path: &Path, len: u64) -> Result<(), JournalError> {
    let f = OpenOptions::new().write(true).open(path).map_err(io(path))?;
    f.set_len(len).and_then(|()| f.sync_all()).map_err(io(path))
}

/// The frame at `at`: (first seq, entry count, end offset), or `None` if it is cut short or fails
/// its checksum.
fn frame_at(bytes: &[u8], at: usize) -> Option<(u64, u32, usize)> {
    let head = bytes.get(at..at.checked_add(FRAME_HEADER)?)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    if !(12..=FRAME_BYTES_MAX).contains(&len) {
        return None;
    }
    let end = at.checked_add(8)?.checked_add(len)?;
    let body = bytes.get(at + 8..end)?;
    if checksum(body) != head[4..8] {
        return None;
    }
    let seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(head[16..20].try_into().ok()?);
    Some((seq, count, end))
}

fn read_entry<'a>(bytes: &'a [u8], p: &mut usize, end: usize) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(bytes.get(*p..*p + 4)?.try_into().ok()?) as usize;
    let start = *p + 4;
    let stop = start.checked_add(len)?;
    if stop > end {
        return None;
    }
    *p = stop;
    bytes.get(start..stop)
}

/// The writing end: one open segment, appended to and `fdatasync`ed frame by frame.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    /// Closed segments: (last sequence number in it, path), oldest first.
    closed: VecDeque<(u64, PathBuf)>,
}

impl Journal {
    /// Starts writing at `next_seq` in a new segment of `dir`, after [`recover`] and after
    /// everything recovered is durable elsewhere: the segments found are deleted.
    pub fn start(dir: &Path, next_seq: u64) -> Result<Journal, JournalError> {
        for (_, path) in segments(dir)? {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let (file, path) = Journal::create(dir, next_seq)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            file,
            path,
            len: MAGIC.len() as u64,
            next_seq,
            closed: VecDeque::new(),
        })
    }

    fn create(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), JournalError> {
        let path = dir.join(segment_name(first_seq));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(io(&path))?;
        sync_dir(dir)?;
        Ok((file, path))
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last sequence number of the newest closed segment (0 if none is waiting for deletion).
    pub fn closed_upto(&self) -> u64 {
        self.closed.back().map_or(0, |c| c.0)
    }

    /// Writes `frame` and waits for `fdatasync`: its entries get sequence numbers from the returned
    /// one on. On an error nothing of the frame counts (the segment is cut back to before it; if
    /// even that fails, later appends fail too until a restart recovers).
    pub fn append(&mut self, frame: &mut Frame) -> Result<u64, JournalError> {
        if self.len >= SEGMENT_BYTES {
            let (file, path) = Journal::create(&self.dir, self.next_seq)?;
            let old = std::mem::replace(&mut self.path, path);
            self.file = file;
            self.len = MAGIC.len() as u64;
            self.closed.push_back((self.next_seq - 1, old));
        }
        let first = self.next_seq;
        frame.seal(first);
        let res = self
            .file
            .write_all(&frame.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = res {
            // Cut the partial frame off so the next one follows the last good frame.
            let cut = self.file.set_len(self.len).and_then(|()| {
                use std::io::Seek;
                self.file.seek(std::io::SeekFrom::Start(self.len)).map(|_| ())
            });
            if let Err(e) = cut {
                tracing::error!(error = %e, "share log journal: a failed write could not be cut off");
                self.len = u64::MAX; // the next append starts a new segment
            }
            return Err(JournalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += frame.buf.len() as u64;
        self.next_seq += u64::from(frame.count);
        Ok(first)
    }

    /// Deletes closed segments whose every entry is at or below `durable` (durable in SQLite).
    pub fn retire(&mut self, durable: u64) -> Result<usize, JournalError> {
        let mut n = 0;
        while let Some((last, path)) = self.closed.front() {
            if *last > durable {
                break;
            }
            std::fs::remove_file(path).map_err(io(path))?;
            self.closed.pop_front();
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(entries: &[&[u8]]) -> Frame {
        let mut f = Frame::new();
        for e in entries {
            f.entry(|b| b.extend_from_slice(e));
        }
        f
    }

    type Entries = Vec<(u64, Vec<u8>)>;

    fn read_all(dir: &Path, applied: u64) -> Result<(Entries, u64), JournalError> {
        let mut out = Vec::new();
        let next = recover(dir, applied, |s, e| {
            out.push((s, e.to_vec()));
            Ok(())
        })?;
        Ok((out, next))
    }

    #[test]
    fn entries_come_back_in_order_above_the_applied_mark_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        assert_eq!(read_all(&dir, 0).unwrap(), (vec![], 1));
        let mut j = Journal::start(&dir, 1).unwrap();
        assert_eq!(j.append(&mut frame(&[b"a", b"bb"])).unwrap(), 1);
        assert_eq!(j.append(&mut frame(&[b"ccc"])).unwrap(), 3);
        drop(j);
        let (all, next) = read_all(&dir, 0).unwrap();
        assert_eq!(next, 4);
        assert_eq!(
            all,
            vec![(1, b"a".to_vec()), (2, b"bb".to_vec()), (3, b"ccc".to_vec())]
        );
        assert_eq!(read_all(&dir, 2).unwrap().0, vec![(3, b"ccc".to_vec())]);
        // A torn frame at the end (a write no fdatasync returned for) is cut off, not an error.
        let seg = segments(&dir).unwrap()[0].1.clone();
        let good = std::fs::metadata(&seg).unwrap().len();
        let mut torn = frame(&[b"dddd"]);
        torn.seal(4);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn.buf[..torn.buf.len() - 2]).unwrap();
        drop(f);
        let (all, next) = read_all(&dir, 0).unwrap();
        assert_eq!((all.len(), next), (3, 4));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
    }

    #[test]
    fn damage_before_the_newest_segment_or_a_gap_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        std::fs::create_dir_all(&dir).unwrap();
        let mut j = Journal::start(&dir, 10).unwrap();
        j.append(&mut frame(&[b"x"])).unwrap();
        j.len = SEGMENT_BYTES; // force the next append into a new segment
        j.append(&mut frame(&[b"y"])).unwrap();
        assert_eq!(j.closed_upto(), 10);
        drop(j);
        assert_eq!(read_all(&dir, 9).unwrap().0.len(), 2);
        // Records below the first segment that SQLite does not have: missing, not skipped.
        let e = read_all(&dir, 5).unwrap_err();
        assert!(e.to_string().contains("records 6 to 9 are missing"), "{e}");
        // A flipped byte in the older segment.
        let first = segments(&dir).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&first, &bytes).unwrap();
        let e = read_all(&dir, 9).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn closed_segments_are_deleted_once_durable_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        std::fs::create_dir_all(&dir).unwrap();
        let mut j = Journal::start(&dir, 1).unwrap();
        for i in 0..3u8 {
            j.append(&mut frame(&[&[i]])).unwrap();
            j.len = SEGMENT_BYTES;
        }
        j.append(&mut frame(&[b"last"])).unwrap();
        assert_eq!(segments(&dir).unwrap().len(), 4);
        assert_eq!(j.retire(1).unwrap(), 1);
        assert_eq!(j.retire(3).unwrap(), 2);
        assert_eq!(segments(&dir).unwrap().len(), 1);
        drop(j);
        let (all, next) = read_all(&dir, 3).unwrap();
        assert_eq!((all, next), (vec![(4, b"last".to_vec())], 5));
    }
}
