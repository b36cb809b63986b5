//! `calyx receipt verify FILE --host-key PUB [--json]`: check a run receipt offline.
//! `calyx receipt get RUN-ID [--audit-log LOG] [--out FILE]`: a run's receipt, from the
//! closing audit line that carries it.

use std::fmt::Write as _;
use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use crate::lease::keys;
use crate::receipt::{self, Receipt};

/// `calyx receipt …`
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Verify a run receipt with the host's public key and print a summary. Exit 0 when the
    /// signature (verify_strict over the DSSE PAE), payloadType and payload are valid; 77 with
    /// the reason when not; 78 when the key file is unusable; 1 when FILE cannot be read.
    Verify {
        /// The receipt (STATE_DIR/receipts/RUN-….json).
        file: PathBuf,
        /// The host's public key (SPKI PEM, e.g. STATE_DIR/host-key.pem.pub).
        #[arg(long, value_name = "PUB")]
        host_key: PathBuf,
        /// Print a JSON result on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's receipt as STATE_DIR/receipts/RUN-ID.json holds it, taken from the
    /// run's closing audit line, which carries the signed receipt and is synced (the file is
    /// a copy that a power loss may take). Searches the log, then its rotated files, newest
    /// first. Exit 0; 1 when no closing line of RUN-ID carries a receipt or a file cannot be
    /// read or written. Check the result with `calyx receipt verify`.
    Get {
        /// The run id (RUN-…).
        run_id: String,
        /// The audit log (default: CALYX_AUDIT_LOG, else the state directory's audit.jsonl).
        #[arg(long, value_name = "LOG")]
        audit_log: Option<PathBuf>,
        /// Write the receipt to FILE (which must not exist) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs one `calyx receipt` command; returns the exit code.
pub fn run(cmd: &ReceiptCommand) -> u8 {
    let (file, host_key, json) = match cmd {
        ReceiptCommand::Verify {
            file,
            host_key,
            json,
        } => (file, host_key, json),
        ReceiptCommand::Get {
            run_id,
            audit_log,
            out,
        } => {
            let log = super::calyx_audit::log_path(audit_log.clone());
            return match get(run_id, &log, out.as_deref()) {
                Ok(()) => 0,
                Err(msg) => {
                    eprintln!("calyx: receipt get {run_id}: {msg}");
                    1
                }
            };
        }
    };
    let checked = keys::load_verifying_key(host_key)
        .map_err(receipt::ReceiptError::from)
        .and_then(|key| Ok((receipt::verify_file(file, &key)?, keys::keyid(&key))));
    match (checked, *json) {
        (Ok((r, keyid)), false) => {
            crate::out!("{}", summary(&r, &keyid));
            0
        }
        (Ok((r, keyid)), true) => {
            crate::outln!("{}", json!({"valid": true, "keyid": keyid, "receipt": r}));
            0
        }
        (Err(e), json) => {
            if json {
                crate::outln!("{}", json!({"valid": false, "reason": e.to_string()}));
            }
            eprintln!("calyx: {}: {e}", file.display());
            e.exit_code()
        }
    }
}

fn summary(r: &Receipt, keyid: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "OK receipt of {} signed by host key {keyid}", r.run_id);
    let _ = writeln!(s, "host       {}", r.host);
    let _ = writeln!(
        s,
        "lease      {} (intent {}), envelope sha256 {}",
        r.lease_id, r.intent_id, r.lease_sha256
    );
    let _ = writeln!(s, "argv       {:?} (profile {})", r.argv, r.profile);
    let source = serde_json::to_value(r.executable.source).unwrap_or_default();
    let _ = writeln!(
        s,
        "executable {} sha256 {} ({})",
        r.executable.path,
        r.executable.sha256.as_deref().unwrap_or("unknown"),
        source.as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "outcome    {}, exit code {}, {} ms, finished {}",
        r.outcome, r.exit_code, r.duration_ms, r.finished_at
    );
    let _ = writeln!(s, "artifacts  {}", r.artifacts.len());
    for a in &r.artifacts {
        let _ = writeln!(
            s,
            "           sha256:{} {} bytes {}",
            a.sha256,
            a.size,
            a.path.display()
        );
    }
    let _ = writeln!(
        s,
        "audit      {} line seq {} sha256 {}",
        if r.version == 1 { "closing" } else { "opening" },
        r.audit.seq,
        r.audit.hash
    );
    s
}

/// Audit lines longer than this are skipped unread: a receipt is at most 16 MiB, and the
/// closing line holds it with a few hundred bytes more.
const MAX_LINE: usize = 17 << 20;

/// Finds the receipt of `run_id` in `log` and its rotated files and writes it out.
fn get(run_id: &str, log: &Path, out: Option<&Path>) -> Result<(), String> {
    let mut files = vec![log.to_owned()];
    let rotated = crate::audit::rotate::rotated_files(log).map_err(|e| e.to_string())?;
    files.extend(rotated.into_iter().rev().map(|(_, p)| p));
    let mut text = None;
    for f in &files {
        match std::fs::File::open(f) {
            Ok(file) => {
                text = last_receipt_of(run_id, io::BufReader::new(file))
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            }
            // A log not created yet, or rotated away meanwhile: nothing to find there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", f.display())),
        }
        if text.is_some() {
            break;
        }
    }
    let Some(text) = text else {
        return Err(format!(
            "no closing audit line of this run carries a receipt in {} or its rotated files",
            log.display()
        ));
    };
    match out {
        None => {
            crate::out!("{text}");
            Ok(())
        }
        Some(path) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// The receipt carried by the last line of `run_id` in `reader` that carries one.
fn last_receipt_of(run_id: &str, mut reader: impl io::BufRead) -> io::Result<Option<String>> {
    let needle = format!("\"run_id\":{}", serde_json::Value::from(run_id));
    let mut found = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = io::Read::take(&mut reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(found);
        }
        if n > MAX_LINE {
            // Skip the rest of an overlong line.
            while !line.ends_with(b"\n") {
                line.clear();
                if io::Read::take(&mut reader, 1 << 20).read_until(b'\n', &mut line)? == 0 {
                    return Ok(found);
                }
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if !text.contains(&needle) {
            continue;
        }
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if value.get("run_id").and_then(|v| v.as_str()) == Some(run_id) {
            if let Some(r) = receipt::from_audit_line(&value) {
                found = Some(r);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn line(run_id: &str, env: &crate::lease::envelope::Envelope) -> String {
        serde_json::json!({"event": "exec_event.FINISHED", "run_id": run_id, "receipt": env})
            .to_string()
    }

    #[test]
    fn the_last_receipt_of_the_run_is_found_and_others_are_not_taken() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let sample = |n: &str, duration_ms: u64| {
            let mut r: Receipt = serde_json::from_value(serde_json::json!({
                "version": 2, "run_id": n, "host": "h", "lease_id": "L", "intent_id": "I",
                "lease_sha256": "00", "argv": ["/x"],
                "executable": {"path": "/x", "sha256": null, "source": "unavailable"},
                "profile": "default", "enforcement": {}, "usage": null, "outcome": "exited",
                "exit_code": 0, "signal": null, "finished_at": "t", "duration_ms": 1,
                "artifacts": [], "audit": {"seq": 1, "hash": "00"}
            }))
            .unwrap();
            r.duration_ms = duration_ms;
            receipt::sign_envelope(&r, &key).unwrap()
        };
        let (a1, b, a2) = (sample("RUN-a", 1), sample("RUN-b", 2), sample("RUN-a", 3));
        assert_ne!(a1, a2);
        let overlong = format!(
            "{{\"run_id\":\"RUN-a\",\"x\":\"{}\"}}",
            "y".repeat(MAX_LINE)
        );
        let log = [
            line("RUN-a", &a1),
            "not json, \"run_id\":\"RUN-a\"".to_owned(),
            line("RUN-a", &a2),
            line("RUN-b", &b),
            overlong,
            r#"{"run_id":"RUN-a","event":"exec_event.STARTED"}"#.to_owned(),
        ]
        .join("\n");
        let found = last_receipt_of("RUN-a", io::Cursor::new(log.as_bytes())).unwrap();
        assert_eq!(found, Some(a2.to_json_pretty()));
        let found = last_receipt_of("RUN-b", io::Cursor::new(log.as_bytes())).unwrap();
        assert_eq!(found, Some(b.to_json_pretty()));
        // A run id that only prefixes another is another run.
        let found = last_receipt_of("RUN-", io::Cursor::new(log.as_bytes())).unwrap();
        assert_eq!(found, None);
    }
}
