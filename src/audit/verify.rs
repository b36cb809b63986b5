//! `calyx audit verify`: walks the rotated files oldest first, then the log, checking every
//! line's JSON, `seq` continuity and `prev` link, and stops at the first broken link.
//!
//! The classification of a break comes from what the two sides of the link still agree on:
//! a right `seq` with a wrong `prev` means the previous line changed (edited); a right `prev`
//! with a wrong `seq` means this line's `seq` changed; both wrong means lines are missing
//! (dropped) or out of order (reordered), told apart by whether the missing `seq` turns up
//! further on. A hash chain alone cannot show that the very last lines were removed, nor an
//! edit of the last line: receipts bind run records to a line's hash for that.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::chain::{self, GENESIS};
use super::{names, rotate};

/// How far past a gap verify looks for the missing `seq` to call it reordered, not dropped.
const LOOKAHEAD_LINES: usize = 10_000;

/// Reading the log failed (a broken chain is a [`Report`], not an error).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// Listing, opening or reading a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Listing the rotated files failed.
    #[error(transparent)]
    List(#[from] super::AuditError),
}

/// What is wrong at the first broken link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A line's content changed after it was written.
    Edited,
    /// Lines are missing.
    Dropped,
    /// Lines are out of order (or a line was repeated).
    Reordered,
    /// The file ends in an incomplete line: a write cut short, or truncation.
    Torn,
    /// A line is not a JSON object.
    NotJson,
}

impl BreakKind {
    /// The name used in the output.
    pub fn name(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Dropped => "dropped",
            BreakKind::Reordered => "reordered",
            BreakKind::Torn => "torn",
            BreakKind::NotJson => "not_json",
        }
    }
}

/// The first broken link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// File holding the bad line.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// What is wrong.
    pub kind: BreakKind,
    /// Details for people.
    pub detail: String,
}

/// A torn fragment that a later append sealed (a record lost to a crash or a full disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sealed {
    /// File.
    pub file: PathBuf,
    /// Line number of the fragment.
    pub line: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// `seq` of the line that sealed it.
    pub sealed_by: u64,
}

/// A run with `exec_event.STARTED` and no closing event (killed runner, or still running).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unfinished {
    /// Run id.
    pub run_id: String,
    /// File of its STARTED line.
    pub file: PathBuf,
    /// Line number of its STARTED line.
    pub line: u64,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Files walked, in order.
    pub files: Vec<PathBuf>,
    /// Chained lines checked.
    pub lines: u64,
    /// `seq` of the first line.
    pub first_seq: Option<u64>,
    /// `seq` of the last good line.
    pub last_seq: Option<u64>,
    /// Hash of the last good line.
    pub last_hash: Option<String>,
    /// The first broken link, `None` when the chain is intact.
    pub broken: Option<Break>,
    /// Sealed torn fragments.
    pub sealed: Vec<Sealed>,
    /// Runs started but not finished.
    pub unfinished: Vec<Unfinished>,
}

impl Report {
    /// Whether the chain is intact.
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Options of a verification.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Accept a chain whose first line is not the genesis (old rotated files were deleted).
    pub allow_pruned: bool,
}

/// The files of `log` in chain order: rotated files oldest first, then `log` if it exists.
pub fn chain_files(log: &Path) -> Result<Vec<PathBuf>, VerifyError> {
    let mut files: Vec<PathBuf> = rotate::rotated_files(log)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    match log.symlink_metadata() {
        Ok(_) => files.push(log.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !files.is_empty() => {}
        Err(source) => {
            return Err(VerifyError::Io {
                op: "opening",
                path: log.to_owned(),
                source,
            });
        }
    }
    Ok(files)
}

/// Verifies `log` and its rotated files.
pub fn verify_log(log: &Path, opts: Options) -> Result<Report, VerifyError> {
    verify_files(&chain_files(log)?, opts)
}

/// One physical line.
struct Line {
    no: u64,
    offset: u64,
    bytes: Vec<u8>,
    terminated: bool,
    value: Option<Value>,
}

/// Lines of one file with a look-ahead buffer.
struct Lines {
    reader: BufReader<File>,
    path: PathBuf,
    ahead: VecDeque<Line>,
    next_no: u64,
    offset: u64,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines, VerifyError> {
        let file = File::open(path).map_err(|source| VerifyError::Io {
            op: "opening",
            path: path.to_owned(),
            source,
        })?;
        Ok(Lines {
            reader: BufReader::with_capacity(1 << 16, file),
            path: path.to_owned(),
            ahead: VecDeque::new(),
            next_no: 1,
            offset: 0,
        })
    }

    fn read_one(&mut self) -> Result<Option<Line>, VerifyError> {
        let mut bytes = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut bytes)
            .map_err(|source| VerifyError::Io {
                op: "reading",
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let terminated = bytes.last() == Some(&b'\n');
        if terminated {
            bytes.pop();
        }
        let value = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object);
        let line = Line {
            no: self.next_no,
            offset: self.offset,
            bytes,
            terminated,
            value,
        };
        self.next_no += 1;
        self.offset += n as u64;
        Ok(Some(line))
    }

    /// The `i`-th line ahead of the current one (0: the next).
    fn peek(&mut self, i: usize) -> Result<Option<&Line>, VerifyError> {
        while self.ahead.len() <= i {
            match self.read_one()? {
                Some(l) => self.ahead.push_back(l),
                None => return Ok(None),
            }
        }
        Ok(self.ahead.get(i))
    }

    fn next(&mut self) -> Result<Option<Line>, VerifyError> {
        match self.ahead.pop_front() {
            Some(l) => Ok(Some(l)),
            None => self.read_one(),
        }
    }
}

/// The `torn_tail` a line claims to seal, as (offset, bytes).
fn torn_claim(value: &Value) -> Option<(u64, u64)> {
    let t = value.get("torn_tail")?;
    Some((t.get("offset")?.as_u64()?, t.get("bytes")?.as_u64()?))
}

/// The last good line: where it is, its seq and hash.
struct Prev {
    file: PathBuf,
    line: u64,
    seq: u64,
    hash: String,
}

/// Verifies `files` as one chain, in the given order.
pub fn verify_files(files: &[PathBuf], opts: Options) -> Result<Report, VerifyError> {
    let mut report = Report {
        files: files.to_vec(),
        ..Report::default()
    };
    let mut prev: Option<Prev> = None;
    let mut started: HashMap<String, (usize, PathBuf, u64)> = HashMap::new();
    let mut order = 0usize;
    'files: for path in files {
        let mut lines = Lines::open(path)?;
        let mut sealed_before: Option<(u64, u64)> = None;
        while let Some(line) = lines.next()? {
            let at = |kind, detail: String| Break {
                file: path.clone(),
                line: line.no,
                kind,
                detail,
            };
            // A fragment sealed by the next line is a lost record, not a break.
            let sealed_by = match lines.peek(0)? {
                Some(next) if line.terminated => next.value.as_ref().and_then(|v| {
                    let (o, b) = torn_claim(v)?;
                    let seq = v.get("seq")?.as_u64()?;
                    (o == line.offset && b == line.bytes.len() as u64).then_some(seq)
                }),
                _ => None,
            };
            if let Some(seq) = sealed_by {
                report.sealed.push(Sealed {
                    file: path.clone(),
                    line: line.no,
                    bytes: line.bytes.len() as u64,
                    sealed_by: seq,
                });
                sealed_before = Some((line.offset, line.bytes.len() as u64));
                continue;
            }
            if !line.terminated {
                report.broken = Some(at(
                    BreakKind::Torn,
                    format!(
                        "the last line is incomplete ({} bytes, no newline): a write was cut short or the file was truncated; the next append seals it",
                        line.bytes.len()
                    ),
                ));
                break 'files;
            }
            let Some(value) = &line.value else {
                report.broken = Some(at(BreakKind::NotJson, "not a JSON object".to_owned()));
                break 'files;
            };
            let Some((seq, link)) = chain::link_of(value) else {
                report.broken = Some(at(
                    BreakKind::Edited,
                    "no valid seq/prev chain fields".to_owned(),
                ));
                break 'files;
            };
            if torn_claim(value).is_some() && sealed_before.take().is_none() {
                report.broken = Some(at(
                    BreakKind::Edited,
                    "its torn_tail names no sealed fragment right before it".to_owned(),
                ));
                break 'files;
            }
            sealed_before = None;
            let hash = chain::line_hash(&line.bytes);
            let verdict = match &prev {
                None if opts.allow_pruned => None,
                None if seq != 1 => Some(at(
                    BreakKind::Dropped,
                    format!(
                        "the chain starts at seq {seq}, not 1: earlier lines or rotated files are missing (--allow-pruned accepts a pruned log)"
                    ),
                )),
                None if link != GENESIS => Some(at(
                    BreakKind::Edited,
                    "seq 1 does not link to the genesis (64 zeros)".to_owned(),
                )),
                None => None,
                Some(p) => classify(p, seq, link, &line, path, &mut lines)?,
            };
            if let Some(b) = verdict {
                report.broken = Some(b);
                break 'files;
            }
            track_run(value, path, line.no, &mut order, &mut started);
            report.lines += 1;
            report.first_seq.get_or_insert(seq);
            prev = Some(Prev {
                file: path.clone(),
                line: line.no,
                seq,
                hash,
            });
        }
    }
    if let Some(p) = prev {
        report.last_seq = Some(p.seq);
        report.last_hash = Some(p.hash);
    }
    let mut open: Vec<(usize, Unfinished)> = started
        .into_iter()
        .map(|(run_id, (n, file, line))| (n, Unfinished { run_id, file, line }))
        .collect();
    open.sort_by_key(|(n, _)| *n);
    report.unfinished = open.into_iter().map(|(_, u)| u).collect();
    Ok(report)
}

/// Checks one link against the previous good line; `Some` names the break.
fn classify(
    p: &Prev,
    seq: u64,
    link: &str,
    line: &Line,
    path: &Path,
    lines: &mut Lines,
) -> Result<Option<Break>, VerifyError> {
    let expected = p.seq + 1;
    let linked = link == p.hash;
    let here = |kind, detail: String| Break {
        file: path.to_owned(),
        line: line.no,
        kind,
        detail,
    };
    Ok(match (linked, seq == expected) {
        (true, true) => None,
        (true, false) => Some(here(
            BreakKind::Edited,
            format!(
                "seq {seq} where {expected} was expected, though its prev link is intact: its seq was changed"
            ),
        )),
        (false, true) => Some(Break {
            file: p.file.clone(),
            line: p.line,
            kind: BreakKind::Edited,
            detail: format!(
                "its hash does not match the prev of the next line (seq {seq}, {}:{}): this line, or that prev, was changed",
                path.display(),
                line.no
            ),
        }),
        (false, false) if seq < expected => Some(here(
            BreakKind::Reordered,
            format!(
                "seq {seq} after seq {}: a line out of order or repeated",
                p.seq
            ),
        )),
        (false, false) => {
            let mut turns_up = false;
            for i in 0..LOOKAHEAD_LINES {
                let Some(ahead) = lines.peek(i)? else { break };
                let s = ahead.value.as_ref().and_then(chain::link_of).map(|l| l.0);
                if s.is_some_and(|s| (expected..seq).contains(&s)) {
                    turns_up = true;
                    break;
                }
            }
            Some(if turns_up {
                here(
                    BreakKind::Reordered,
                    format!(
                        "seq {seq} where {expected} was expected; seq {expected}.. appears later"
                    ),
                )
            } else {
                here(
                    BreakKind::Dropped,
                    format!(
                        "seq {seq} where {expected} was expected: seq {expected}..{} missing",
                        seq - 1
                    ),
                )
            })
        }
    })
}

/// Records STARTED lines and forgets them at their run's closing event.
fn track_run(
    value: &Value,
    path: &Path,
    no: u64,
    order: &mut usize,
    started: &mut HashMap<String, (usize, PathBuf, u64)>,
) {
    let (Some(event), Some(run_id)) = (
        value.get("event").and_then(Value::as_str),
        value.get("run_id").and_then(Value::as_str),
    ) else {
        return;
    };
    match event {
        names::EXEC_STARTED => {
            *order += 1;
            started.insert(run_id.to_owned(), (*order, path.to_owned(), no));
        }
        names::EXEC_FINISHED | names::EXEC_TIMEOUT | names::EXEC_HALTED | names::LEASE_REJECTED => {
            started.remove(run_id);
        }
        _ => {}
    }
}
