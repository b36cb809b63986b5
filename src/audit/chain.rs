//! The hash chain: how a line is linked to the one before it, and reading a log's tail.
//!
//! Every line carries `seq` (1-based, continuing across rotated files) and `prev`, the
//! lowercase hex SHA-256 of the previous line's bytes without its newline; the first line ever
//! has `prev` = [`GENESIS`]. A line's own hash is [`line_hash`] of its bytes as written.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditError;

/// `prev` of the first line of a chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The first read of the tail; lines are a few KiB, so one read usually finds the last one.
const TAIL_WINDOW: u64 = 16 << 10;
/// The tail is never read further back than this: a longer last line is not one calyx wrote.
const TAIL_MAX: u64 = 16 << 20;

/// Lowercase hex SHA-256 of one line's bytes, without its newline.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The chain fields of one line: `seq` and `prev`, or `None` when the line is not a JSON
/// object carrying both (a non-negative integer and 64 lowercase hex digits).
pub fn link_of(value: &Value) -> Option<(u64, &str)> {
    let seq = value.get("seq")?.as_u64()?;
    let prev = value.get("prev")?.as_str()?;
    is_line_hash(prev).then_some((seq, prev))
}

/// 64 lowercase hex digits: what [`line_hash`] makes.
fn is_line_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An unterminated fragment at the end of a file: what a write cut short leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn {
    /// Byte offset of the fragment in its file.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The last complete line of a file: its `seq` and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    /// The line's `seq`.
    pub seq: u64,
    /// [`line_hash`] of the line.
    pub hash: String,
}

/// What the end of a log file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// File size.
    pub size: u64,
    /// Bytes of storage the file holds (blocks reserved beyond its end included).
    pub allocated: u64,
    /// The last complete line, `None` when the file has none.
    pub last: Option<Last>,
    /// A fragment after the last newline, if any.
    pub torn: Option<Torn>,
}

/// Result of scanning one window of the tail.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The window reaches back far enough.
    Found {
        /// Range of the last complete line within the window (without its newline).
        line: Option<(usize, usize)>,
        /// The fragment after it, in file offsets.
        torn: Option<Torn>,
    },
    /// The window starts inside the last line: read further back.
    NeedMore,
}

/// Finds the last complete line and any torn fragment in `window`, the last bytes of a file
/// of `size` bytes starting at file offset `start`. Pure, for tests.
pub fn scan_tail(window: &[u8], start: u64, size: u64) -> Scan {
    let at_file_start = start == 0;
    let (line_end, torn) = if window.last() == Some(&b'\n') {
        (window.len() - 1, None)
    } else {
        match window.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                let offset = start + i as u64 + 1;
                (
                    i,
                    Some(Torn {
                        offset,
                        bytes: size - offset,
                    }),
                )
            }
            None if at_file_start => {
                let torn = (size > 0).then_some(Torn {
                    offset: 0,
                    bytes: size,
                });
                return Scan::Found { line: None, torn };
            }
            None => return Scan::NeedMore,
        }
    };
    match window[..line_end].iter().rposition(|&b| b == b'\n') {
        Some(i) => Scan::Found {
            line: Some((i + 1, line_end)),
            torn,
        },
        None if at_file_start => Scan::Found {
            line: Some((0, line_end)),
            torn,
        },
        None => Scan::NeedMore,
    }
}

/// Reads the end of `file` with `pread` (never the whole file): the last complete line's seq
/// and hash, and any torn fragment after it. A last line that is not a chained record is an
/// error: there is no position to continue the chain from.
pub fn read_tail(file: &File, path: &Path) -> Result<Tail, AuditError> {
    let rerr = |source| AuditError::Write {
        op: "reading the tail of",
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(rerr)?;
    let (size, allocated) = (meta.len(), meta.blocks().saturating_mul(512));
    let mut want = TAIL_WINDOW.min(size);
    loop {
        let start = size - want;
        let mut window = vec![0u8; want as usize];
        file.read_exact_at(&mut window, start).map_err(rerr)?;
        match scan_tail(&window, start, size) {
            Scan::NeedMore if want < size.min(TAIL_MAX) => want = (want * 4).min(size),
            Scan::NeedMore => {
                return Err(AuditError::Tail {
                    path: path.to_owned(),
                    why: format!("its last line is longer than {TAIL_MAX} bytes"),
                });
            }
            Scan::Found { line, torn } => {
                let last = match line {
                    None => None,
                    Some((a, b)) => Some(last_of(&window[a..b], path)?),
                };
                return Ok(Tail {
                    size,
                    allocated,
                    last,
                    torn,
                });
            }
        }
    }
}

fn last_of(line: &[u8], path: &Path) -> Result<Last, AuditError> {
    let bad = |why: &str| AuditError::Tail {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let seq = match chain_fields(line) {
        Some(seq) => seq,
        None => {
            let value: Value =
                serde_json::from_slice(line).map_err(|_| bad("its last line is not JSON"))?;
            link_of(&value)
                .ok_or_else(|| bad("its last line has no seq/prev chain fields"))?
                .0
        }
    };
    Ok(Last {
        seq,
        hash: line_hash(line),
    })
}

/// The chain fields of one line as [`link_of`] reads them, without building the line's
/// value: every run reads the log's last line (a closing record with its receipt, 3–4 KiB)
/// before it writes its first, and a tree of every field of it took most of that read.
/// None whenever this shorter reading could differ from `link_of`'s — a line that is not an
/// object, a repeated field, an escaped `prev` — and the caller then reads it in full.
fn chain_fields(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Chain<'a> {
        seq: u64,
        prev: &'a str,
    }
    // A struct would also accept an array ([seq, prev]); link_of takes objects only.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let c: Chain<'_> = serde_json::from_slice(line).ok()?;
    is_line_hash(c.prev).then_some(c.seq)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn found(line: Option<(usize, usize)>, torn: Option<(u64, u64)>) -> Scan {
        Scan::Found {
            line,
            torn: torn.map(|(offset, bytes)| Torn { offset, bytes }),
        }
    }

    /// The short reading of the chain fields agrees with link_of wherever it answers, and
    /// leaves the rest to it.
    #[test]
    fn the_chain_fields_read_short_are_link_of() {
        let prev = "ab".repeat(32);
        let lines = [
            format!(
                r#"{{"seq":7,"prev":"{prev}","event":"x","fields":{{"a":[1,2,{{"b":null}}]}}}}"#
            ),
            format!(r#"  {{"event":"x","prev":"{prev}","seq":0}}"#),
            format!(r#"{{"seq":7,"seq":8,"prev":"{prev}"}}"#),
            format!(r#"[7,"{prev}"]"#),
            format!(r#"{{"seq":7,"prev":"{}"}}"#, "AB".repeat(32)),
            format!(r#"{{"seq":-1,"prev":"{prev}"}}"#),
            format!(r#"{{"seq":1.5,"prev":"{prev}"}}"#),
            format!(r#"{{"seq":7,"prev":"\u0061{}"}}"#, "b".repeat(63)),
            r#"{"seq":7}"#.to_owned(),
            r#"{"seq":7,"prev":"#.to_owned(),
            "not json".to_owned(),
        ];
        let mut short = 0;
        for line in &lines {
            let full = serde_json::from_slice::<Value>(line.as_bytes())
                .ok()
                .as_ref()
                .and_then(link_of)
                .map(|l| l.0);
            if let Some(seq) = chain_fields(line.as_bytes()) {
                short += 1;
                assert_eq!(Some(seq), full, "{line}");
            }
        }
        assert_eq!(short, 2, "the two plain lines are read short");
        // And a repeated seq, which link_of reads as its last value, goes the long way.
        let dup = format!(r#"{{"seq":7,"seq":8,"prev":"{prev}"}}"#);
        let tail = last_of(dup.as_bytes(), Path::new("log")).unwrap();
        assert_eq!(tail.seq, 8);
    }

    #[test]
    fn tail_scan_table() {
        // (window, start, size, expected)
        let cases: &[(&[u8], u64, u64, Scan)] = &[
            (b"", 0, 0, found(None, None)),
            (b"a\n", 0, 2, found(Some((0, 1)), None)),
            (b"a\nbb\n", 0, 5, found(Some((2, 4)), None)),
            (b"a\nbb\nc", 0, 6, found(Some((2, 4)), Some((5, 1)))),
            (b"abc", 0, 3, found(None, Some((0, 3)))),
            (b"a\nbc", 0, 4, found(Some((0, 1)), Some((2, 2)))),
            // A window starting mid-file: offsets are file offsets.
            (b"x\nyy\n", 10, 15, found(Some((2, 4)), None)),
            (b"x\nyy", 10, 14, Scan::NeedMore),
            (b"yy\n", 10, 13, Scan::NeedMore),
            (b"yyy", 10, 13, Scan::NeedMore),
        ];
        for (window, start, size, want) in cases {
            assert_eq!(
                &scan_tail(window, *start, *size),
                want,
                "window {:?}",
                String::from_utf8_lossy(window)
            );
        }
    }

    #[test]
    fn link_fields_are_strict() {
        let ok = serde_json::json!({"seq": 3, "prev": GENESIS});
        assert_eq!(link_of(&ok), Some((3, GENESIS)));
        for bad in [
            serde_json::json!({"seq": 3}),
            serde_json::json!({"seq": -1, "prev": GENESIS}),
            serde_json::json!({"seq": "3", "prev": GENESIS}),
            serde_json::json!({"seq": 3, "prev": GENESIS.to_uppercase().replace('0', "A")}),
            serde_json::json!({"seq": 3, "prev": "00"}),
        ] {
            assert_eq!(link_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tail_reads_long_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let long = format!(
            "{{\"seq\":7,\"prev\":\"{GENESIS}\",\"pad\":\"{}\"}}",
            "x".repeat(100_000)
        );
        std::fs::write(&path, format!("{{\"seq\":6}}\n{long}\n")).unwrap();
        let file = File::open(&path).unwrap();
        let tail = read_tail(&file, &path).unwrap();
        assert_eq!(tail.last.unwrap().hash, line_hash(long.as_bytes()));
        assert_eq!(tail.torn, None);
    }
}
