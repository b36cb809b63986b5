//! The audit log: JSON Lines, one event per line, appended.
//!
//! Every event goes through [`AuditLog::append`], the single write path, so hash chaining and
//! locking (a later issue) are a local change there. Each line is written with one `write(2)` on
//! an `O_APPEND` descriptor, so concurrent runners never interleave inside a line; events that
//! gate or close a run are `fdatasync`ed before calyx goes on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Event names (SPEC §5, kept from the system calyx replaces).
pub mod names {
    /// Lease verified and argv allowed.
    pub const LEASE_VERIFIED: &str = "lease_event.VERIFIED";
    /// Lease or run refused.
    pub const LEASE_REJECTED: &str = "lease_event.REJECTED";
    /// Lease revoked in the ledger (`calyx lease revoke`).
    pub const LEASE_REVOKED: &str = "lease_event.REVOKED";
    /// Payload about to start.
    pub const EXEC_STARTED: &str = "exec_event.STARTED";
    /// Run ended (any outcome but timeout).
    pub const EXEC_FINISHED: &str = "exec_event.FINISHED";
    /// Run ended by the wall-clock timeout.
    pub const EXEC_TIMEOUT: &str = "exec_event.TIMEOUT";
    /// Run ended by a sentinel halt rule.
    pub const EXEC_HALTED: &str = "exec_event.HALTED";
    /// Periodic resource sample, or a `warn` rule firing.
    pub const RESOURCE_MONITORED: &str = "resource_event.MONITORED";
    /// A sentinel rule froze or killed the run.
    pub const RESOURCE_HALTED: &str = "resource_event.HALTED";
}

/// Writing the audit log failed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// Creating the log's directory or opening the log failed.
    #[error("{op} audit log {path}: {source}")]
    Open {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Writing or syncing a line failed.
    #[error("{op} audit log {path}: {source}")]
    Write {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Serialising the event failed.
    #[error("encoding audit event {event}: {source}")]
    Encode {
        /// Event name.
        event: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// The ids every event of one run carries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunIds {
    /// Run id (`RUN-…`).
    pub run_id: String,
    /// Lease id, once the payload has been authenticated and parsed.
    pub lease_id: Option<String>,
    /// Intent id, likewise.
    pub intent_id: Option<String>,
}

/// Whether to flush the line to disk before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Leave it to the page cache.
    Buffered,
    /// fdatasync before returning: the run depends on this record existing.
    Synced,
}

/// An open audit log.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    host: String,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0600, directory 0700) `path` for appending.
    pub fn open(path: &Path, host: String) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| AuditError::Open {
                    op: "creating the directory of",
                    path: path.to_owned(),
                    source,
                })?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| AuditError::Open {
                op: "opening",
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            file,
            path: path.to_owned(),
            host,
        })
    }

    /// Appends one event: the only write path of the log.
    pub fn append(
        &mut self,
        event: &str,
        ids: &RunIds,
        fields: Value,
        durability: Durability,
    ) -> Result<(), AuditError> {
        let line = encode_line(OffsetDateTime::now_utc(), &self.host, event, ids, fields)?;
        let werr = |op: &'static str, source| AuditError::Write {
            op,
            path: self.path.clone(),
            source,
        };
        // One write(2) for the whole line: O_APPEND makes it atomic with respect to other
        // appenders, and a short write is an error rather than a torn line we continue after.
        let n = crate::sys::fs::write_once(self.file.as_fd(), line.as_bytes())
            .map_err(|e| werr("writing", e))?;
        if n != line.len() {
            return Err(AuditError::Write {
                op: "writing (short write)",
                path: self.path.clone(),
                source: io::Error::from(io::ErrorKind::WriteZero),
            });
        }
        if durability == Durability::Synced {
            crate::sys::fs::fdatasync(self.file.as_fd()).map_err(|e| werr("syncing", e))?;
        }
        Ok(())
    }
}

/// Builds one JSON line (with its newline). Pure, for tests.
pub fn encode_line(
    now: OffsetDateTime,
    host: &str,
    event: &str,
    ids: &RunIds,
    fields: Value,
) -> Result<String, AuditError> {
    let enc = |source| AuditError::Encode {
        event: event.to_owned(),
        source,
    };
    let mut obj = Map::new();
    obj.insert(
        "time".into(),
        Value::String(now.format(&Rfc3339).unwrap_or_default()),
    );
    obj.insert("host".into(), Value::String(host.to_owned()));
    obj.insert("event".into(), Value::String(event.to_owned()));
    obj.insert("run_id".into(), Value::String(ids.run_id.clone()));
    obj.insert(
        "lease_id".into(),
        ids.lease_id.clone().map_or(Value::Null, Value::String),
    );
    obj.insert(
        "intent_id".into(),
        ids.intent_id.clone().map_or(Value::Null, Value::String),
    );
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            // The common keys above are authoritative; an event field cannot overwrite them.
            obj.entry(k).or_insert(v);
        }
    }
    let mut line = serde_json::to_string(&Value::Object(obj)).map_err(enc)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_single_json_objects_with_common_keys() {
        let ids = RunIds {
            run_id: "RUN-1".into(),
            lease_id: Some("LEASE-x".into()),
            intent_id: None,
        };
        let line = encode_line(
            OffsetDateTime::UNIX_EPOCH,
            "h",
            names::EXEC_STARTED,
            &ids,
            serde_json::json!({"argv": ["a\nb"], "event": "forged"}),
        )
        .unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(
            line.matches('\n').count(),
            1,
            "embedded newlines must be escaped"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], names::EXEC_STARTED);
        assert_eq!(v["lease_id"], "LEASE-x");
        assert_eq!(v["intent_id"], Value::Null);
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["argv"][0], "a\nb");
    }

    #[test]
    fn append_adds_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let mut log = AuditLog::open(&path, "h".into()).unwrap();
        let ids = RunIds::default();
        log.append(
            names::LEASE_REJECTED,
            &ids,
            serde_json::json!({"reason": "x"}),
            Durability::Synced,
        )
        .unwrap();
        log.append(
            names::EXEC_FINISHED,
            &ids,
            Value::Null,
            Durability::Buffered,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
