//! `calyx audit verify|tail`: check the hash chain of the audit log, and read it.
//!
//! Both default to the log calyx-run writes for this user (`CALYX_AUDIT_LOG`, the state
//! directory's `audit.jsonl`; see [`crate::paths`]) and read rotated files too.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::audit::rotate;
use crate::audit::verify::{self, Options, Report};

/// `calyx audit verify` exit code: the chain is broken.
pub const BROKEN: u8 = 1;
/// `calyx audit …` exit code: the log could not be read.
pub const UNREADABLE: u8 = 74;

/// How often `tail --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `calyx audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the log and its rotated files. Exit 0 when intact, 1 at the
    /// first broken link (file, line, kind), 74 when the log cannot be read.
    Verify {
        /// The log (default: CALYX_AUDIT_LOG, else the state directory's audit.jsonl).
        log: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Accept a chain that does not start at seq 1 (old rotated files were removed).
        #[arg(long)]
        allow_pruned: bool,
    },
    /// Print the last lines of the log, formatted (or raw with --json); --follow waits for more.
    Tail {
        /// The log (default as for verify).
        log: Option<PathBuf>,
        /// Keep printing lines as they are appended (across rotation).
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many lines to print first.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
        lines: usize,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `calyx audit` command; returns the exit code.
pub fn run(cmd: AuditCommand) -> u8 {
    match cmd {
        AuditCommand::Verify {
            log,
            json,
            allow_pruned,
        } => verify_cmd(&log_path(log), json, Options { allow_pruned }),
        AuditCommand::Tail {
            log,
            follow,
            lines,
            json,
        } => match tail_cmd(&log_path(log), follow, lines, json) {
            Ok(()) => 0,
            // A closed pipe (`| head`) is the reader leaving, not a failure.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("calyx: audit tail: {e}");
                UNREADABLE
            }
        },
    }
}

/// The audit log a command reads: `flag`, else the default location for this user.
pub fn log_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let euid = super::effective_uid_from(Path::new("/proc/self/status")).unwrap_or(0);
        crate::paths::default_locations(euid, &|k| std::env::var(k).ok()).audit_log
    })
}

fn verify_cmd(log: &Path, as_json: bool, opts: Options) -> u8 {
    let report = match verify::verify_log(log, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("calyx: audit verify: {e}");
            return UNREADABLE;
        }
    };
    if as_json {
        let mut v = json!(report);
        v["intact"] = json!(report.intact());
        crate::outln!("{v}");
    } else {
        crate::out!("{}", human_report(&report));
    }
    if report.intact() { 0 } else { BROKEN }
}

/// The verification report for people. Pure, for tests.
pub fn human_report(r: &Report) -> String {
    let mut out = String::new();
    for s in &r.sealed {
        out.push_str(&format!(
            "warning: {}:{}: torn fragment of {} bytes (a record lost to a crash or a full disk), sealed by seq {}\n",
            s.file.display(),
            s.line,
            s.bytes,
            s.sealed_by
        ));
    }
    if !r.unfinished.is_empty() {
        out.push_str(&format!(
            "warning: {} run(s) started but unfinished (runner killed, or still running):\n",
            r.unfinished.len()
        ));
        for u in &r.unfinished {
            out.push_str(&format!(
                "  {}  STARTED at {}:{}\n",
                u.run_id,
                u.file.display(),
                u.line
            ));
        }
    }
    match &r.broken {
        Some(b) => out.push_str(&format!(
            "BROKEN: {}:{}: {}: {}\n",
            b.file.display(),
            b.line,
            b.kind.name(),
            b.detail
        )),
        None => out.push_str(&format!(
            "intact: {} lines in {} file(s), seq {}..{}{}\n",
            r.lines,
            r.files.len(),
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0),
            r.last_hash
                .as_deref()
                .map(|h| format!(", last hash {h}"))
                .unwrap_or_default()
        )),
    }
    out
}

/// One line for people: time, seq, event, run id, lease id and the key fields. Pure.
pub fn human_line(raw: &[u8]) -> String {
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(raw) else {
        return format!("? {}", String::from_utf8_lossy(raw));
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut out = format!(
        "{}  #{}  {:<26} {}  {}",
        s("time"),
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("event"),
        s("run_id"),
        s("lease_id")
    );
    for key in ["outcome", "exit_code", "duration_ms", "reason", "error"] {
        match v.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => out.push_str(&format!("  {key}={text:?}")),
            Some(other) => out.push_str(&format!("  {key}={other}")),
        }
    }
    if let Some(Value::Array(argv)) = v.get("argv") {
        let words: Vec<String> = argv
            .iter()
            .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_owned))
            .collect();
        out.push_str(&format!("  argv={:?}", words.join(" ")));
    }
    if let Some(t) = v.get("torn_tail") {
        out.push_str(&format!("  (sealed a torn fragment: {t})"));
    }
    out
}

fn print_line(out: &mut impl Write, raw: &[u8], as_json: bool) -> io::Result<()> {
    if as_json {
        out.write_all(raw)?;
        out.write_all(b"\n")
    } else {
        writeln!(out, "{}", human_line(raw))
    }
}

/// The last `n` complete lines of `file` (read backwards, never the whole file) and the
/// offset where complete lines end (an unterminated fragment after it is left out).
fn last_lines(file: &File, n: usize) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let size = file.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    let mut start = size;
    let end_of_complete;
    loop {
        let step = (64u64 << 10).min(start);
        let mut chunk = vec![0u8; step as usize];
        file.read_exact_at(&mut chunk, start - step)?;
        start -= step;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines > n {
            let last_nl = buf.iter().rposition(|&b| b == b'\n');
            end_of_complete = last_nl.map_or(start, |i| start + i as u64 + 1);
            break;
        }
    }
    let complete = (end_of_complete - start) as usize;
    let mut lines: Vec<Vec<u8>> = buf[..complete]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.pop(); // the empty piece after the final newline
    // The first piece may be the end of a longer line when the read stopped mid-file.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok((lines.split_off(skip), end_of_complete))
}

fn tail_cmd(log: &Path, follow: bool, n: usize, as_json: bool) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut current = match File::open(log) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", log.display()))),
    };
    let (mut lines, mut offset) = match &current {
        Some(f) => last_lines(f, n)?,
        None => (Vec::new(), 0),
    };
    // Just after a rotation the log holds few lines: the rest come from the rotated files.
    if lines.len() < n {
        let rotated = rotate::rotated_files(log).map_err(io::Error::other)?;
        for (_, path) in rotated.iter().rev() {
            let (mut older, _) = last_lines(&File::open(path)?, n - lines.len())?;
            older.append(&mut lines);
            lines = older;
            if lines.len() >= n {
                break;
            }
        }
    }
    for l in &lines {
        print_line(&mut out, l, as_json)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut partial: Vec<u8> = Vec::new();
    loop {
        if let Some(f) = &current {
            offset = drain(f, offset, &mut partial, &mut out, as_json)?;
        }
        // A rotation replaced the file: the old one was drained above; start on the new one.
        let replaced = match (log.metadata(), &current) {
            (Ok(m), Some(f)) => {
                let held = f.metadata()?;
                m.ino() != held.ino() || m.dev() != held.dev()
            }
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if replaced {
            current = File::open(log).ok();
            offset = 0;
            partial.clear();
            continue;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Prints the complete lines appended to `f` since `offset`; returns the new offset.
fn drain(
    f: &File,
    mut offset: u64,
    partial: &mut Vec<u8>,
    out: &mut impl Write,
    as_json: bool,
) -> io::Result<u64> {
    let size = f.metadata()?.len();
    if size < offset {
        // Truncated under us: start over rather than wait for bytes that will not come.
        offset = 0;
        partial.clear();
    }
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = f.read_at(&mut chunk, offset)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        partial.extend_from_slice(&chunk[..n]);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            print_line(out, &line[..line.len() - 1], as_json)?;
        }
    }
    out.flush()?;
    Ok(offset)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_show_key_fields() {
        let raw = br#"{"seq":4,"prev":"00","time":"2026-01-01T00:00:00Z","event":"exec_event.FINISHED","run_id":"RUN-1","lease_id":"L-1","outcome":"exited","exit_code":0,"argv":["/bin/echo","hi there"],"error":null}"#;
        let line = human_line(raw);
        for want in [
            "2026-01-01T00:00:00Z",
            "#4",
            "exec_event.FINISHED",
            "RUN-1",
            "L-1",
            "outcome=\"exited\"",
            "exit_code=0",
            "argv=\"/bin/echo hi there\"",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        assert!(!line.contains("error="), "{line}");
        assert!(human_line(b"not json").starts_with("? not json"));
    }

    #[test]
    fn last_lines_reads_backwards_and_skips_a_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("line {i} {}\n", "x".repeat(i % 50)));
        }
        text.push_str("fragm");
        std::fs::write(&p, &text).unwrap();
        let f = File::open(&p).unwrap();
        let (lines, end) = last_lines(&f, 3).unwrap();
        let lines: Vec<String> = lines
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("line 4997 "), "{lines:?}");
        assert!(lines[2].starts_with("line 4999 "), "{lines:?}");
        assert_eq!(end, text.len() as u64 - 5);
        let (all, _) = last_lines(&f, 10_000).unwrap();
        assert_eq!(all.len(), 5000);
        assert!(all[0].starts_with(b"line 0"));
    }
}
