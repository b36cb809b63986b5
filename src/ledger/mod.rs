//! The lease ledger: how many times each lease was used, whether it was revoked, and how its
//! runs ended (SPEC §5).
//!
//! [`Ledger`] is the one storage interface. calyx-run asks it to [`Ledger::consume`] one use
//! of a verified lease before the payload may start, and tells it the run's outcome
//! afterwards; `calyx lease revoke` and `calyx lease list` use the same trait. The decision
//! itself ([`decide`]) is a pure function of what the store holds, so every backend refuses
//! with the same words: `lease LEASE-… used 1 of 1 time(s)`,
//! `lease LEASE-… revoked at … by …: reason`.
//!
//! # The embedded store
//!
//! [`files::FileLedger`] keeps the ledger in `STATE_DIR/ledger/` (0700), one file per lease
//! (0600), named by the SHA-256 of the lease id:
//!
//! - **Exact under concurrency.** A use is a read-check-write under the file's exclusive
//!   `flock`, taken before the read. Two runners can therefore never both see "0 of 1 used":
//!   the second waits for the first to sync its write and then sees 1. This holds across
//!   processes and users sharing the state directory, with no daemon. Runs of different
//!   leases never wait for each other.
//! - **Crash-safe.** The record is kept in two slots, each with a sequence number and a
//!   SHA-256; a write goes to the slot not holding the current record and is synced
//!   (`fdatasync`) before the lock is released, and a new file's name is synced in the
//!   directory before its first use counts. A crash, a power loss or a runner killed mid-write
//!   can only leave the slot being written torn, and the other still holds the last durable
//!   record: a use is either counted or was never granted.
//! - **Cheap.** A use costs an `open`, a `flock`, one read, one write and one `fdatasync` (the
//!   SQLite store this replaced also rebuilt its shared-memory index from the write-ahead log
//!   and parsed its schema in every runner process: 0.7 ms more per run on this project's
//!   benchmark machine). A ledger written by that store is imported once ([`import`]).
//!
//! A run's end goes to a third region of the lease's file without a sync: it only feeds
//! `list`'s last outcome, and the audit log's synced closing record is its durable account.
//! Waiting for a lease's lock is bounded by [`files::BUSY_TIMEOUT`]; a runner that cannot get
//! it in time refuses the run (125) rather than run unrecorded.
//!
//! # A fleet
//!
//! A fleet that must count uses across hosts implements [`Ledger`] on a shared database
//! server (one row per lease, the same check-and-increment in a serializable transaction or a
//! conditional `UPDATE … WHERE used < max_uses AND revoked_at IS NULL`) and hands it to the
//! runner instead of the embedded store; [`decide`] and the refusal texts stay as they are.

pub mod files;
pub mod import;
pub mod run_use;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::lease::model::Lease;

pub use files::FileLedger;

/// What the ledger stores about a lease, besides its counters: for `calyx lease list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `LEASE-…`.
    pub lease_id: String,
    /// `INT-…`.
    pub intent_id: String,
    /// Who runs it.
    pub subject: String,
    /// RFC 3339.
    pub expires_at: String,
    /// How many runs it authorizes.
    pub max_uses: u32,
}

impl LeaseRecord {
    /// The record of a parsed lease.
    pub fn of(lease: &Lease) -> LeaseRecord {
        LeaseRecord {
            lease_id: lease.lease_id.clone(),
            intent_id: lease.intent_id.clone(),
            subject: lease.subject.clone(),
            expires_at: rfc3339(lease.expires_at),
            max_uses: lease.max_uses,
        }
    }
}

/// A revocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When (RFC 3339).
    pub at: String,
    /// Who (user name and uid).
    pub by: String,
    /// Why.
    pub reason: String,
}

/// What the store holds about one lease when a use is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UseState {
    /// Uses consumed so far.
    pub used: u32,
    /// The revocation, if any.
    pub revoked: Option<Revocation>,
}

/// Why a use was refused (exit 77).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Every use is spent.
    UsedUp {
        /// The lease.
        lease_id: String,
        /// Uses consumed.
        used: u32,
        /// The lease's `max_uses`.
        max: u32,
    },
    /// Revoked.
    Revoked {
        /// The lease.
        lease_id: String,
        /// The revocation.
        revocation: Revocation,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UsedUp {
                lease_id,
                used,
                max,
            } => write!(f, "lease {lease_id} used {used} of {max} time(s)"),
            Refusal::Revoked {
                lease_id,
                revocation: r,
            } => write!(
                f,
                "lease {lease_id} revoked at {} by {}: {}",
                r.at, r.by, r.reason
            ),
        }
    }
}

/// The answer to a request for one use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted: this is use number `used` of `max`.
    Granted {
        /// Uses consumed including this one.
        used: u32,
        /// The lease's `max_uses`.
        max: u32,
    },
    /// Refused; nothing may run.
    Refused(Refusal),
}

/// Decides one use of `lease_id` (allowing `max_uses`) given what the store holds. Pure: every
/// backend applies exactly this, then stores `used` when granted. A revocation wins over a
/// spent count, since it is the reason a person gave.
pub fn decide(lease_id: &str, max_uses: u32, state: &UseState) -> Decision {
    if let Some(r) = &state.revoked {
        return Decision::Refused(Refusal::Revoked {
            lease_id: lease_id.to_owned(),
            revocation: r.clone(),
        });
    }
    if state.used >= max_uses {
        return Decision::Refused(Refusal::UsedUp {
            lease_id: lease_id.to_owned(),
            used: state.used,
            max: max_uses,
        });
    }
    Decision::Granted {
        used: state.used + 1,
        max: max_uses,
    }
}

/// The end of one run, for `calyx lease list`'s "last outcome".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// The lease whose use the run took.
    pub lease_id: String,
    /// The run (`RUN-…`).
    pub run_id: String,
    /// `exited`, `signaled`, `timeout`, `halted`, `rejected`, `setup_failed`.
    pub outcome: String,
    /// calyx-run's exit code.
    pub exit_code: u8,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now(Revocation),
    /// It already was; the first revocation stands.
    Already(Revocation),
}

/// One line of `calyx lease list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// `LEASE-…`.
    pub lease_id: String,
    /// Known once the lease was used, or revoked through its file.
    pub intent_id: Option<String>,
    /// Likewise.
    pub subject: Option<String>,
    /// Likewise (RFC 3339).
    pub expires_at: Option<String>,
    /// Uses consumed.
    pub used: u32,
    /// The lease's `max_uses`, when known.
    pub max_uses: Option<u32>,
    /// Uses left (none when revoked; unknown when `max_uses` is).
    pub uses_left: Option<u32>,
    /// The latest run's outcome: `None` before any run; `"unknown"` when the latest run
    /// consumed a use but recorded no end (its runner was killed).
    pub last_outcome: Option<String>,
    /// That run's exit code.
    pub last_exit_code: Option<u8>,
    /// That run's id.
    pub last_run_id: Option<String>,
    /// The revocation.
    pub revoked: Option<Revocation>,
}

/// The storage interface: the embedded [`FileLedger`], or a shared server for a fleet.
/// `Send`: calyx-run takes the use on a thread of its own (see [`run_use`]).
pub trait Ledger: Send {
    /// Atomically decides and, when granted, records one use of `lease` by `run_id`: the
    /// check and the increment are one transaction, so `max_uses` holds exactly however many
    /// runners ask at once. Also stores the lease's record if the ledger has none yet.
    ///
    /// `granted` is called on a grant once the use is written inside the still-open
    /// transaction, just before the commit, so the caller can start a durable write of its
    /// own beside the commit's (a backend that cannot split them calls it after the commit).
    /// An Err returned after `granted` means the use was not recorded.
    fn consume_announced(
        &mut self,
        lease: &LeaseRecord,
        run_id: &str,
        now: OffsetDateTime,
        granted: &mut dyn FnMut(),
    ) -> Result<Decision, LedgerError>;

    /// [`consume_announced`](Self::consume_announced) with nothing to announce to.
    fn consume(
        &mut self,
        lease: &LeaseRecord,
        run_id: &str,
        now: OffsetDateTime,
    ) -> Result<Decision, LedgerError> {
        self.consume_announced(lease, run_id, now, &mut || {})
    }

    /// Records how a run that consumed a use ended. Need not be durable at once (the audit
    /// log's FINISHED record is); a crash may lose it, and `list` then says `unknown`.
    fn record_end(&mut self, run: &RunEnd, now: OffsetDateTime) -> Result<(), LedgerError>;

    /// Revokes `lease_id` (known or not yet used), storing `record` when given and none is
    /// stored yet. Durable before it returns.
    fn revoke(
        &mut self,
        lease_id: &str,
        record: Option<&LeaseRecord>,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Revoked, LedgerError>;

    /// Every lease the ledger knows, oldest first.
    fn list(&mut self) -> Result<Vec<LeaseStatus>, LedgerError>;
}

/// The ledger could not be opened, read or written.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// Creating or inspecting the state directory or the database file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Others could edit the ledger (reset uses, drop revocations).
    #[error(
        "{what} {path} is writable by group or others (mode {mode:o}), so they could reset lease uses; remedy: chmod {fix:o} {path}"
    )]
    Unsafe {
        /// "state directory" or "ledger".
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// The mode to set.
        fix: u32,
    },
    /// Other runners held the write lock past the busy timeout.
    #[error(
        "ledger {path} stayed locked by other runs for {secs} s while {op}; refusing rather than running unrecorded (retry, or look for a stuck process holding it)"
    )]
    Busy {
        /// What was being done.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// The busy timeout.
        secs: u64,
    },
    /// The earlier SQLite ledger could not be read for its import.
    #[error("{op} ledger {path}: {source}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A lease's file is not what this calyx wrote: refused rather than counted from zero.
    #[error(
        "ledger file {path} is damaged: {why}; refusing rather than losing its count (restore it from a backup, or revoke the lease)"
    )]
    Damaged {
        /// Path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Written by a newer calyx.
    #[error(
        "ledger {path} has format version {found}, newer than this calyx understands ({known})"
    )]
    Format {
        /// Path.
        path: PathBuf,
        /// Version found.
        found: u8,
        /// Version known.
        known: u8,
    },
    /// A value too long for the ledger's record.
    #[error("{what} is {len} bytes long, more than the ledger keeps ({max})")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The most the ledger keeps.
        max: usize,
    },
}

/// The [`LedgerError::Io`] for `op` on `path`, as a `map_err` argument.
pub(crate) fn io_error(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> LedgerError {
    let path = path.to_owned();
    move |source| LedgerError::Io { op, path, source }
}

/// RFC 3339 text of `t` (seconds precision is what people read in `list`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn revoked() -> Revocation {
        Revocation {
            at: "2026-11-22T04:00:00Z".into(),
            by: "root (uid 0)".into(),
            reason: "key leaked".into(),
        }
    }

    #[test]
    fn decide_table() {
        let granted = |used, max| Decision::Granted { used, max };
        let used_up = |used, max| {
            Decision::Refused(Refusal::UsedUp {
                lease_id: "L".into(),
                used,
                max,
            })
        };
        let state = |used, revoked: Option<Revocation>| UseState { used, revoked };
        let cases = [
            (1, state(0, None), granted(1, 1)),
            (1, state(1, None), used_up(1, 1)),
            (3, state(2, None), granted(3, 3)),
            (3, state(3, None), used_up(3, 3)),
            // A lease re-signed with a lower max after uses: still refused, count shown.
            (2, state(5, None), used_up(5, 2)),
            (0, state(0, None), used_up(0, 0)),
            (
                5,
                state(0, Some(revoked())),
                Decision::Refused(Refusal::Revoked {
                    lease_id: "L".into(),
                    revocation: revoked(),
                }),
            ),
            (
                1,
                state(1, Some(revoked())),
                Decision::Refused(Refusal::Revoked {
                    lease_id: "L".into(),
                    revocation: revoked(),
                }),
            ),
        ];
        for (max, st, want) in cases {
            assert_eq!(decide("L", max, &st), want, "max {max}, state {st:?}");
        }
    }

    #[test]
    fn refusal_texts() {
        let r = Refusal::UsedUp {
            lease_id: "LEASE-1".into(),
            used: 1,
            max: 1,
        };
        assert_eq!(r.to_string(), "lease LEASE-1 used 1 of 1 time(s)");
        let r = Refusal::Revoked {
            lease_id: "LEASE-1".into(),
            revocation: revoked(),
        };
        assert_eq!(
            r.to_string(),
            "lease LEASE-1 revoked at 2026-11-22T04:00:00Z by root (uid 0): key leaked"
        );
    }
}
