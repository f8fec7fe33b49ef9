//! Newline-delimited framing with a hard limit on line length.
//!
//! `\n` ends a line, a trailing `\r` is dropped, empty lines are skipped. A line longer than the limit
//! is an error: the caller closes the connection (stratum-v1.md §1). The buffer never holds more than
//! the limit plus one read's worth of bytes.

/// Longest line a miner may send to a pool (real requests are under 1 KiB).
pub const MINER_LINE_BYTES_MAX: usize = 16 * 1024;
/// Longest line a pool may send to a client (coinb2 grows with payout outputs).
pub const POOL_LINE_BYTES_MAX: usize = 256 * 1024;

/// A line exceeded the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {limit} bytes")]
pub struct LineTooLong {
    /// The limit.
    pub limit: usize,
}

/// Accumulates bytes and yields whole lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    limit: usize,
}

impl LineBuffer {
    /// A buffer that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            limit,
        }
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete, non-empty line (without `\r\n`), or `None` if more bytes are needed.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        loop {
            let from = self.scanned.max(self.start);
            let Some(rel) = self
                .buf
                .get(from..)
                .and_then(|t| t.iter().position(|&b| b == b'\n'))
            else {
                self.scanned = self.buf.len();
                if self.pending() > self.limit {
                    return Err(LineTooLong { limit: self.limit });
                }
                self.compact();
                return Ok(None);
            };
            let end = from + rel;
            let line_start = self.start;
            self.start = end + 1;
            self.scanned = self.start;
            let mut line_end = end;
            if line_end > line_start && self.buf.get(line_end - 1) == Some(&b'\r') {
                line_end -= 1;
            }
            if line_end - line_start > self.limit {
                return Err(LineTooLong { limit: self.limit });
            }
            if line_end == line_start {
                continue;
            }
            return Ok(self.buf.get(line_start..line_end));
        }
    }

    /// Drops consumed bytes; frees the allocation when nothing is pending (idle connections hold no buffer).
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(b: &mut LineBuffer) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(Some(l)) = b.next_line() {
            v.push(String::from_utf8_lossy(l).into_owned());
        }
        v
    }

    #[test]
    fn splits_crlf_skips_empty_and_limits() {
        let mut b = LineBuffer::new(16);
        b.extend(b"a\r\n\n\r\nbc\npartial");
        assert_eq!(lines(&mut b), vec!["a", "bc"]);
        b.extend(b"-done\n");
        assert_eq!(lines(&mut b), vec!["partial-done"]);
        assert_eq!(b.pending(), 0);
        let mut b = LineBuffer::new(16);
        b.extend(&[b'x'; 16]);
        assert_eq!(b.next_line(), Ok(None));
        b.extend(b"y");
        assert_eq!(b.next_line(), Err(LineTooLong { limit: 16 }));
        // exactly at the limit with its newline is fine
        let mut b = LineBuffer::new(16);
        b.extend(&[b'x'; 16]);
        b.extend(b"\n");
        assert_eq!(b.next_line().unwrap().map(<[u8]>::len), Some(16));
        // a long line arriving whole is refused too
        let mut b = LineBuffer::new(16);
        b.extend(&[b'x'; 40]);
        b.extend(b"\n");
        assert!(b.next_line().is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_lines(text in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'\r'), Just(b'z')], 0..200),
                                             cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let mut whole = LineBuffer::new(1000);
            whole.extend(&text);
            let want = lines(&mut whole);
            let mut pieces = LineBuffer::new(1000);
            let mut got = Vec::new();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut last = 0;
            for c in cuts.into_iter().chain(std::iter::once(text.len())) {
                let c = c.min(text.len());
                if c < last { continue; }
                pieces.extend(&text[last..c]);
                got.extend(lines(&mut pieces));
                last = c;
            }
            prop_assert_eq!(got, want);
        }
    }
}
