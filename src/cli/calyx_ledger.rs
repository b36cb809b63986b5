//! `calyx lease revoke` and `calyx lease list`: the operator's side of the ledger.
//!
//! Revoking needs no signature check: it can only take authority away, so anyone who may write
//! the ledger may revoke any lease, by id or through its file. The revocation is durable in
//! the ledger before `lease_event.REVOKED` is appended to the audit log; the next calyx-run
//! with that lease is refused (77) with the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{AuditError, AuditLog, Durability, RunIds, names};
use crate::exit;
use crate::lease::envelope::Envelope;
use crate::lease::model::LEASE_PAYLOAD_TYPE;
use crate::lease::verify::{self, VerifyError};
use crate::ledger::{
    FileLedger, LeaseRecord, LeaseStatus, Ledger, LedgerError, Refusal, Revoked, UseState,
};
use crate::paths::Locations;

/// `calyx lease revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// A lease id (LEASE-…) or a lease file; a file's id is taken from its payload without
    /// checking its signatures (revoking is always safe).
    #[arg(value_name = "LEASE_ID|FILE")]
    pub lease: String,
    /// Why; shown in every refusal of the lease from now on.
    #[arg(long, value_name = "TEXT", default_value = "no reason given")]
    pub reason: String,
    /// State directory holding the ledger (default: /var/lib/calyx or XDG state;
    /// CALYX_STATE_DIR).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Audit log (default: STATE_DIR/audit.jsonl; CALYX_AUDIT_LOG).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

/// `calyx lease list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// State directory holding the ledger (default as for revoke).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print a JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What stops `revoke` or `list`.
#[derive(Debug, Error)]
pub enum LedgerCliError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The audit log (the revocation itself is already recorded in the ledger).
    #[error("{source} (the revocation is recorded in the ledger)")]
    Audit {
        /// Cause.
        source: AuditError,
    },
    /// Reading a lease file.
    #[error(transparent)]
    Lease(#[from] VerifyError),
    /// A file whose payload names no lease id.
    #[error("{path}: the payload has no lease_id")]
    NoLeaseId {
        /// The file.
        path: PathBuf,
    },
    /// Neither an existing file nor a lease id.
    #[error("{arg:?} is neither a lease file nor a lease id (LEASE-…)")]
    NotALease {
        /// The argument.
        arg: String,
    },
    /// The effective uid could not be read.
    #[error("cannot determine the effective uid from /proc/self/status; is /proc mounted?")]
    NoUid,
}

impl LedgerCliError {
    /// Exit code: 78 for an unsafe ledger, 2 for a bad argument, 77 for an unreadable lease,
    /// 1 for I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            LedgerCliError::Ledger(LedgerError::Unsafe { .. }) | LedgerCliError::NoUid => {
                exit::BAD_CONFIG
            }
            LedgerCliError::NotALease { .. } => exit::USAGE,
            LedgerCliError::Lease(e) => e.exit_code(),
            LedgerCliError::NoLeaseId { .. } => exit::REFUSED,
            LedgerCliError::Ledger(_) | LedgerCliError::Audit { .. } => 1,
        }
    }
}

/// The lease a `revoke` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    lease_id: String,
    /// From a file whose payload parses: stored where the ledger has no record yet.
    record: Option<LeaseRecord>,
}

/// `calyx lease revoke`.
pub fn revoke(args: &RevokeArgs) -> Result<(), LedgerCliError> {
    let uid = euid()?;
    let loc = locations(uid, args.state_dir.as_deref(), args.audit_log.as_deref());
    let target = target_of(&args.lease)?;
    let by = who(
        uid,
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
    );
    let mut ledger = FileLedger::open_in(&loc.state_dir)?;
    let now = OffsetDateTime::now_utc();
    let revoked = ledger.revoke(
        &target.lease_id,
        target.record.as_ref(),
        &by,
        &args.reason,
        now,
    )?;
    let r = match revoked {
        Revoked::Already(r) => {
            crate::outln!(
                "lease {} was already revoked at {} by {}: {}",
                target.lease_id,
                r.at,
                r.by,
                r.reason
            );
            return Ok(());
        }
        Revoked::Now(r) => r,
    };
    // The ledger first: it is what refuses the next run; the audit record explains it.
    let host = crate::sys::proc::hostname();
    let ids = RunIds {
        run_id: String::new(),
        lease_id: Some(target.lease_id.clone()),
        intent_id: target.record.as_ref().map(|r| r.intent_id.clone()),
    };
    let fields =
        json!({"reason": r.reason, "by": r.by, "revoked_at": r.at, "ledger": ledger.path()});
    AuditLog::open(&loc.audit_log, host)
        .and_then(|mut log| {
            log.append(names::LEASE_REVOKED, &ids, fields, Durability::Synced)
                .map(|_| ())
        })
        .map_err(|source| LedgerCliError::Audit { source })?;
    crate::outln!(
        "revoked {} at {} by {}: {}",
        target.lease_id,
        r.at,
        r.by,
        r.reason
    );
    Ok(())
}

/// `calyx lease list`.
pub fn list(args: &ListArgs) -> Result<(), LedgerCliError> {
    let uid = euid()?;
    let loc = locations(uid, args.state_dir.as_deref(), None);
    // Listing never creates a ledger.
    let rows = match FileLedger::open_existing(&loc.state_dir)? {
        Some(mut ledger) => ledger.list()?,
        None => Vec::new(),
    };
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".to_owned())
        );
    } else if rows.is_empty() {
        crate::outln!("no leases in the ledger of {}", loc.state_dir.display());
    } else {
        crate::out!("{}", table(&rows));
    }
    Ok(())
}

/// What the ledger says of a lease's next use, without taking one: uses taken so far and,
/// when calyx-run would refuse the lease, why (revoked, or every use spent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Uses taken so far.
    pub used: u32,
    /// calyx-run's refusal of the next use, if it would refuse.
    pub refusal: Option<Refusal>,
    /// The ledger file asked; `Err` holds the state directory that has none.
    pub ledger: Result<PathBuf, PathBuf>,
}

/// The ledger of `state_dir` (default as for `list`) on `lease`, decided as calyx-run decides a
/// use ([`crate::ledger::decide`]). A state directory without a ledger has taken no use and
/// revoked nothing; none is created.
pub fn standing(state_dir: Option<&Path>, lease: &LeaseRecord) -> Result<Standing, LedgerCliError> {
    let uid = euid()?;
    let loc = locations(uid, state_dir, None);
    let (state, ledger) = match FileLedger::open_existing(&loc.state_dir)? {
        Some(ledger) => (
            ledger.state_of(&lease.lease_id)?,
            Ok(ledger.path().to_owned()),
        ),
        None => (UseState::default(), Err(loc.state_dir.clone())),
    };
    let refusal = match crate::ledger::decide(&lease.lease_id, lease.max_uses, &state) {
        crate::ledger::Decision::Granted { .. } => None,
        crate::ledger::Decision::Refused(r) => Some(r),
    };
    Ok(Standing {
        used: state.used,
        refusal,
        ledger,
    })
}

fn euid() -> Result<u32, LedgerCliError> {
    super::effective_uid_from(Path::new("/proc/self/status")).ok_or(LedgerCliError::NoUid)
}

/// The same choice as calyx-run's: flags over `CALYX_*` over the defaults, and the audit log
/// follows `--state-dir` unless named itself.
fn locations(uid: u32, state_dir: Option<&Path>, audit_log: Option<&Path>) -> Locations {
    let env = |k: &str| std::env::var(k).ok();
    let mut loc = crate::paths::default_locations(uid, &env);
    if let Some(d) = state_dir {
        loc.state_dir = d.to_owned();
        loc.audit_log = env("CALYX_AUDIT_LOG")
            .filter(|v| !v.is_empty())
            .map_or_else(|| d.join("audit.jsonl"), PathBuf::from);
    }
    if let Some(a) = audit_log {
        loc.audit_log = a.to_owned();
    }
    loc
}

/// An existing path is a lease file; otherwise the argument must look like a lease id.
fn target_of(arg: &str) -> Result<Target, LedgerCliError> {
    let path = Path::new(arg);
    if path.symlink_metadata().is_ok() {
        return target_of_file(path);
    }
    let id_like = arg.starts_with("LEASE-")
        && arg.len() <= 128
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !id_like {
        return Err(LedgerCliError::NotALease {
            arg: arg.to_owned(),
        });
    }
    Ok(Target {
        lease_id: arg.to_owned(),
        record: None,
    })
}

/// Reads (bounded) the envelope and takes the id from its payload, unauthenticated: the id
/// decides only what gets revoked. A payload this build cannot parse still yields its id.
fn target_of_file(path: &Path) -> Result<Target, LedgerCliError> {
    let raw = verify::read_lease_file(path)?;
    let env = Envelope::from_json(&raw).map_err(VerifyError::from)?;
    if env.payload_type != LEASE_PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType {
            found: env.payload_type,
        }
        .into());
    }
    let body = env.payload_bytes().map_err(VerifyError::from)?;
    if let Ok(lease) = verify::parse_payload(&body) {
        return Ok(Target {
            lease_id: lease.lease_id.clone(),
            record: Some(LeaseRecord::of(&lease)),
        });
    }
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match value.get("lease_id").and_then(|v| v.as_str()) {
        Some(id) if !id.is_empty() => Ok(Target {
            lease_id: id.to_owned(),
            record: None,
        }),
        _ => Err(LedgerCliError::NoLeaseId {
            path: path.to_owned(),
        }),
    }
}

/// `name (uid N)` from a passwd file's text, or `uid N`.
fn who(uid: u32, passwd: &str) -> String {
    let name = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    });
    match name {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The text table of `list`.
fn table(rows: &[LeaseStatus]) -> String {
    let head = [
        "LEASE",
        "INTENT",
        "SUBJECT",
        "USED",
        "LEFT",
        "EXPIRES",
        "LAST OUTCOME",
        "REVOKED",
    ];
    let dash = || "-".to_owned();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.lease_id.clone(),
                r.intent_id.clone().unwrap_or_else(dash),
                r.subject.clone().unwrap_or_else(dash),
                match r.max_uses {
                    Some(m) => format!("{}/{m}", r.used),
                    None => format!("{}/?", r.used),
                },
                r.uses_left.map_or_else(dash, |n| n.to_string()),
                r.expires_at.clone().unwrap_or_else(dash),
                match (&r.last_outcome, r.last_exit_code) {
                    (Some(o), Some(c)) => format!("{o} ({c})"),
                    (Some(o), None) => o.clone(),
                    (None, _) => dash(),
                },
                r.revoked.as_ref().map_or_else(
                    || "no".to_owned(),
                    |v| format!("{} by {}: {}", v.at, v.by, v.reason),
                ),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let last = cols.len() - 1;
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i == last {
                let _ = writeln!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
    };
    line(&head.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ledger::Revocation;

    #[test]
    fn who_names_the_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/sbin/nologin\n";
        assert_eq!(who(0, passwd), "root (uid 0)");
        assert_eq!(who(65534, passwd), "nobody (uid 65534)");
        assert_eq!(who(1000, passwd), "uid 1000");
        assert_eq!(who(5, "broken"), "uid 5");
    }

    #[test]
    fn arguments_that_are_not_files_must_be_lease_ids() {
        let t = target_of("LEASE-20261122-040000-ab12").unwrap();
        assert_eq!(t.lease_id, "LEASE-20261122-040000-ab12");
        assert!(t.record.is_none());
        for bad in ["INT-1", "/no/such/file.json", "LEASE-a b", ""] {
            let e = target_of(bad).unwrap_err();
            assert!(matches!(e, LedgerCliError::NotALease { .. }), "{bad}: {e}");
            assert_eq!(e.exit_code(), exit::USAGE);
        }
    }

    #[test]
    fn a_file_yields_its_id_even_unsigned_or_unparsable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.json");
        let payload = br#"{"lease_id": "LEASE-x", "from_the_future": true}"#;
        let env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, payload);
        std::fs::write(&f, env.to_json_pretty()).unwrap();
        let t = target_of(f.to_str().unwrap()).unwrap();
        assert_eq!(t.lease_id, "LEASE-x");
        assert!(t.record.is_none());
        let env = Envelope::unsigned("text/plain", payload);
        std::fs::write(&f, env.to_json_pretty()).unwrap();
        assert!(matches!(
            target_of(f.to_str().unwrap()),
            Err(LedgerCliError::Lease(_))
        ));
    }

    #[test]
    fn table_shows_uses_outcome_and_revocation() {
        let rows = [
            LeaseStatus {
                lease_id: "LEASE-a".into(),
                intent_id: Some("INT-a".into()),
                subject: Some("cp14".into()),
                expires_at: Some("2026-11-23T00:00:00Z".into()),
                used: 1,
                max_uses: Some(3),
                uses_left: Some(2),
                last_outcome: Some("exited".into()),
                last_exit_code: Some(0),
                last_run_id: Some("RUN-1".into()),
                revoked: None,
            },
            LeaseStatus {
                lease_id: "LEASE-b".into(),
                intent_id: None,
                subject: None,
                expires_at: None,
                used: 0,
                max_uses: None,
                uses_left: Some(0),
                last_outcome: None,
                last_exit_code: None,
                last_run_id: None,
                revoked: Some(Revocation {
                    at: "2026-11-22T04:00:00Z".into(),
                    by: "root (uid 0)".into(),
                    reason: "leaked".into(),
                }),
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("LEASE"));
        assert!(lines[1].contains("1/3") && lines[1].contains("exited (0)"));
        assert!(lines[1].ends_with("no"));
        assert!(lines[2].contains("0/?") && lines[2].contains("by root (uid 0): leaked"));
    }
}
