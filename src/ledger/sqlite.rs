//! The embedded ledger: one SQLite file in the state directory (see the module doc of
//! [`crate::ledger`] for why SQLite and what it costs).
//!
//! Every write that gates a run (a use, a revocation) is one `BEGIN IMMEDIATE` transaction
//! committed with `synchronous = FULL` in WAL mode; a run's end is written with
//! `synchronous = NORMAL` (no fsync: off the run's critical path, and the audit log holds the
//! durable record).

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{
    Decision, LeaseRecord, LeaseStatus, Ledger, LedgerError, Revocation, Revoked, RunEnd, UseState,
    decide, rfc3339,
};

/// The ledger's file name in the state directory.
pub const FILE_NAME: &str = "ledger.sqlite";

/// How long a runner waits for the write lock before refusing (125). A use holds the lock for
/// one small transaction and one fsync, a few milliseconds; 50 runners arriving at once
/// queue for well under a second on a healthy disk. 15 s leaves room for a slow or loaded
/// disk while still failing a run that waits on a stuck lock holder long before anyone
/// mistakes it for a hang.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// Every this many runs (by the rowid of the run in `runs`), a finished run folds the WAL back
/// into the database before recording its end, and that last commit starts the WAL over from
/// its beginning: SQLite restarts the WAL for a writer that finds it wholly checkpointed,
/// which only the connection that checkpointed can know (a new process rebuilds its index of
/// the WAL and counts nothing in it as checkpointed). The WAL is not truncated: later runs
/// overwrite its blocks rather than append to it, and an fdatasync that leaves a file's size
/// as it was need not write its inode (on this VM's disk 0.20 against 0.30 ms for 12 KiB;
/// the use's commit 0.11 ms sooner, median of 200 runs). A run adds 4-6 pages, so the WAL
/// stays near 50 pages (200 KiB), and a new process reads only the pages since the restart.
const CHECKPOINT_EVERY: i64 = 8;

/// The schema this build writes; a newer one is refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    lease_id       TEXT PRIMARY KEY NOT NULL,
    intent_id      TEXT,
    subject        TEXT,
    expires_at     TEXT,
    max_uses       INTEGER,
    used           INTEGER NOT NULL DEFAULT 0,
    first_seen     TEXT NOT NULL,
    revoked_at     TEXT,
    revoked_by     TEXT,
    revoked_reason TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run_id    TEXT PRIMARY KEY NOT NULL,
    lease_id  TEXT NOT NULL,
    used_at   TEXT NOT NULL,
    outcome   TEXT,
    exit_code INTEGER,
    ended_at  TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_lease ON runs (lease_id);
";

/// The ledger in `STATE_DIR/ledger.sqlite`.
pub struct SqliteLedger {
    conn: Connection,
    path: PathBuf,
    busy: Duration,
    /// The rowid of the run this connection recorded a use for, if any.
    run_rowid: Option<i64>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteLedger {
    /// Opens the ledger in `state_dir`, creating the directory (0700) and the file (0600).
    pub fn open_in(state_dir: &Path) -> Result<SqliteLedger, LedgerError> {
        Self::open_with(state_dir, BUSY_TIMEOUT)
    }

    /// Opens the ledger if it exists (for read-mostly commands that should not create one).
    pub fn open_existing(state_dir: &Path) -> Result<Option<SqliteLedger>, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LedgerError::Io {
                op: "inspecting",
                path,
                source,
            }),
            Ok(_) => Self::open_in(state_dir).map(Some),
        }
    }

    /// [`open_in`](Self::open_in) with another busy timeout (tests).
    pub fn open_with(state_dir: &Path, busy: Duration) -> Result<SqliteLedger, LedgerError> {
        prepare_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        // No WAL yet: this open creates it (and the database, when new).
        let fresh = std::fs::symlink_metadata(wal_path(&path)).is_err();
        create_file(&path)?;
        // NOFOLLOW: the file was just checked to be a regular file; a symlink swapped in since
        // would point the ledger somewhere the caller did not choose.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| sql_err("opening", &path, busy, e))?;
        let mut ledger = SqliteLedger {
            conn,
            path,
            busy,
            run_rowid: None,
        };
        ledger.configure()?;
        if fresh {
            sync_dir(state_dir)?;
        }
        Ok(ledger)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the ledger holds of `lease_id` (no use taken and no revocation when it is unknown),
    /// read without a transaction of its own: `calyx lease verify` asks this of one lease
    /// rather than listing them all.
    pub fn state_of(&self, lease_id: &str) -> Result<UseState, LedgerError> {
        read_state(&self.conn, lease_id).map_err(self.err("reading"))
    }

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |e| sql_err(op, &self.path, self.busy, e)
    }

    /// Busy timeout, WAL, full sync, schema. Creating the schema takes the write lock, so 50
    /// runners opening a new ledger at once create it exactly once.
    fn configure(&mut self) -> Result<(), LedgerError> {
        self.conn
            .busy_timeout(self.busy)
            .map_err(self.err("setting the busy timeout of"))?;
        self.ensure_wal()?;
        // Each runner is a short-lived process. By default the last connection to close
        // checkpoints the WAL into the database and deletes it (two fsyncs), and the next
        // run re-creates it (a directory fsync): three of the five fsyncs a run cost. The WAL
        // is kept instead, and `record_end` folds it back every CHECKPOINT_EVERY runs.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(self.err("configuring"))?;
        self.set_sync("FULL")?;
        let version = self.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(self.schema_error(version));
        }
        if version < SCHEMA_VERSION {
            let path = self.path.clone();
            let busy = self.busy;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("locking (schema)", &path, busy, e))?;
            let now: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| sql_err("reading the schema version of", &path, busy, e))?;
            if now < SCHEMA_VERSION {
                tx.execute_batch(SCHEMA)
                    .map_err(|e| sql_err("creating the schema of", &path, busy, e))?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                    .map_err(|e| sql_err("setting the schema version of", &path, busy, e))?;
            }
            tx.commit()
                .map_err(|e| sql_err("committing the schema of", &path, busy, e))?;
        }
        Ok(())
    }

    /// WAL: one fsync per commit, and readers (`list`) never block a runner. The mode is
    /// stored in the file, so this switches once per ledger. SQLite answers a switch that
    /// races other connections with SQLITE_BUSY at once, without its busy handler (runners
    /// opening a new ledger together hit this), so the switch is retried here, within the
    /// same timeout, re-reading the mode each time since another runner may have switched it.
    fn ensure_wal(&self) -> Result<(), LedgerError> {
        let deadline = std::time::Instant::now() + self.busy;
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = self
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .and_then(|mode| {
                    if mode.eq_ignore_ascii_case("wal") {
                        return Ok(mode);
                    }
                    self.conn
                        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                });
            match attempt {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    // A file system without shared memory support keeps its mode: say so
                    // rather than run with other durability than documented.
                    return Err(LedgerError::NoWal {
                        path: self.path.clone(),
                        mode,
                    });
                }
                Err(e) if is_busy(&e) && std::time::Instant::now() + pause < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(sql_err("switching to WAL", &self.path, self.busy, e)),
            }
        }
    }

    fn user_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version of"))
    }

    fn schema_error(&self, found: i64) -> LedgerError {
        LedgerError::Schema {
            path: self.path.clone(),
            found,
            known: SCHEMA_VERSION,
        }
    }

    fn set_sync(&self, level: &str) -> Result<(), LedgerError> {
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {level}"))
            .map_err(self.err("setting synchronous on"))
    }
}

impl Ledger for SqliteLedger {
    fn consume_announced(
        &mut self,
        lease: &LeaseRecord,
        run_id: &str,
        now: OffsetDateTime,
        granted: &mut dyn FnMut(),
    ) -> Result<Decision, LedgerError> {
        let (path, busy) = (self.path.clone(), self.busy);
        let path = path.as_path();
        let e = |op| move |err| sql_err(op, path, busy, err);
        // IMMEDIATE: the write lock is taken before the read, so the count read below is the
        // count the increment applies to, whatever other runners do.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("locking"))?;
        let state = read_state(&tx, &lease.lease_id).map_err(e("reading"))?;
        let decision = decide(&lease.lease_id, lease.max_uses, &state);
        let Decision::Granted { used, .. } = decision else {
            // Refused: nothing to write; dropping the transaction rolls it back.
            return Ok(decision);
        };
        let at = rfc3339(now);
        // The verified lease's fields replace any stored from an unauthenticated file.
        tx.execute(
            "INSERT INTO leases (lease_id, intent_id, subject, expires_at, max_uses, used, first_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (lease_id) DO UPDATE SET
                intent_id = excluded.intent_id, subject = excluded.subject,
                expires_at = excluded.expires_at, max_uses = excluded.max_uses,
                used = excluded.used",
            params![
                lease.lease_id,
                lease.intent_id,
                lease.subject,
                lease.expires_at,
                i64::from(lease.max_uses),
                i64::from(used),
                at
            ],
        )
        .map_err(e("recording a use in"))?;
        tx.execute(
            "INSERT INTO runs (run_id, lease_id, used_at) VALUES (?1, ?2, ?3)",
            params![run_id, lease.lease_id, at],
        )
        .map_err(e("recording the run in"))?;
        let rowid = tx.last_insert_rowid();
        // The write lock is held until the commit, so no other runner can take this use
        // meanwhile; the caller's own sync may run beside the commit's fsync.
        granted();
        tx.commit().map_err(e("committing a use to"))?;
        self.run_rowid = Some(rowid);
        Ok(decision)
    }

    fn record_end(&mut self, run: &RunEnd, now: OffsetDateTime) -> Result<(), LedgerError> {
        // Off the critical path, every CHECKPOINT_EVERY-th run: the WAL folded back first, so
        // that this run's last commit starts it over. PASSIVE never waits: pages that other
        // runners still read stay in the WAL, and a later run's checkpoint takes them.
        if self.run_rowid.is_some_and(|r| r % CHECKPOINT_EVERY == 0) {
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                Err(e) if !is_busy(&e) => return Err(self.err("checkpointing")(e)),
                _ => {}
            }
        }
        // No fsync for this one: the run is over, its exit code already decided, and the
        // audit log's synced FINISHED record is the durable account of it.
        self.set_sync("NORMAL")?;
        let res = self
            .conn
            .execute(
                "UPDATE runs SET outcome = ?1, exit_code = ?2, ended_at = ?3 WHERE run_id = ?4",
                params![
                    run.outcome,
                    i64::from(run.exit_code),
                    rfc3339(now),
                    run.run_id
                ],
            )
            .map_err(self.err("recording the end of a run in"));
        self.set_sync("FULL")?;
        res?;
        Ok(())
    }

    fn revoke(
        &mut self,
        lease_id: &str,
        record: Option<&LeaseRecord>,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Revoked, LedgerError> {
        let (path, busy) = (self.path.clone(), self.busy);
        let path = path.as_path();
        let e = |op| move |err| sql_err(op, path, busy, err);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("locking"))?;
        if let Some(first) = read_state(&tx, lease_id).map_err(e("reading"))?.revoked {
            return Ok(Revoked::Already(first));
        }
        let revocation = Revocation {
            at: rfc3339(now),
            by: by.to_owned(),
            reason: reason.to_owned(),
        };
        // Fields from a lease file are unauthenticated: they fill gaps, never replace.
        tx.execute(
            "INSERT INTO leases (lease_id, intent_id, subject, expires_at, max_uses, used,
                                 first_seen, revoked_at, revoked_by, revoked_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6, ?7, ?8)
             ON CONFLICT (lease_id) DO UPDATE SET
                revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by,
                revoked_reason = excluded.revoked_reason,
                intent_id = coalesce(leases.intent_id, excluded.intent_id),
                subject = coalesce(leases.subject, excluded.subject),
                expires_at = coalesce(leases.expires_at, excluded.expires_at),
                max_uses = coalesce(leases.max_uses, excluded.max_uses)",
            params![
                lease_id,
                record.map(|r| r.intent_id.clone()),
                record.map(|r| r.subject.clone()),
                record.map(|r| r.expires_at.clone()),
                record.map(|r| i64::from(r.max_uses)),
                revocation.at,
                revocation.by,
                revocation.reason
            ],
        )
        .map_err(e("recording a revocation in"))?;
        tx.commit().map_err(e("committing a revocation to"))?;
        Ok(Revoked::Now(revocation))
    }

    fn list(&mut self) -> Result<Vec<LeaseStatus>, LedgerError> {
        let (path, busy) = (self.path.clone(), self.busy);
        let e = |err| sql_err("listing", &path, busy, err);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT l.lease_id, l.intent_id, l.subject, l.expires_at, l.max_uses, l.used,
                        l.revoked_at, l.revoked_by, l.revoked_reason,
                        r.run_id, r.outcome, r.exit_code
                 FROM leases l
                 LEFT JOIN runs r ON r.rowid =
                    (SELECT max(rowid) FROM runs WHERE runs.lease_id = l.lease_id)
                 ORDER BY l.rowid",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                let used = to_u32(r.get::<_, i64>(5)?);
                let max_uses = r.get::<_, Option<i64>>(4)?.map(to_u32);
                let revoked = revocation_of(r.get(6)?, r.get(7)?, r.get(8)?);
                let last_run_id: Option<String> = r.get(9)?;
                let outcome: Option<String> = r.get(10)?;
                Ok(LeaseStatus {
                    lease_id: r.get(0)?,
                    intent_id: r.get(1)?,
                    subject: r.get(2)?,
                    expires_at: r.get(3)?,
                    used,
                    max_uses,
                    uses_left: match (&revoked, max_uses) {
                        (Some(_), _) => Some(0),
                        (None, Some(m)) => Some(m.saturating_sub(used)),
                        (None, None) => None,
                    },
                    last_outcome: last_run_id
                        .as_ref()
                        .map(|_| outcome.unwrap_or_else(|| "unknown".to_owned())),
                    last_exit_code: r
                        .get::<_, Option<i64>>(11)?
                        .map(|c| u8::try_from(c).unwrap_or(u8::MAX)),
                    last_run_id,
                    revoked,
                })
            })
            .map_err(e)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(e)
    }
}

/// The stored count and revocation of `lease_id` (zero and none when unknown).
fn read_state(conn: &Connection, lease_id: &str) -> rusqlite::Result<UseState> {
    let row = conn
        .query_row(
            "SELECT used, revoked_at, revoked_by, revoked_reason FROM leases WHERE lease_id = ?1",
            [lease_id],
            |r| {
                Ok(UseState {
                    used: to_u32(r.get::<_, i64>(0)?),
                    revoked: revocation_of(r.get(1)?, r.get(2)?, r.get(3)?),
                })
            },
        )
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn revocation_of(
    at: Option<String>,
    by: Option<String>,
    reason: Option<String>,
) -> Option<Revocation> {
    at.map(|at| Revocation {
        at,
        by: by.unwrap_or_default(),
        reason: reason.unwrap_or_default(),
    })
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A lock wait past the timeout is its own error: the message says what to do about it.
fn sql_err(op: &'static str, path: &Path, busy: Duration, e: rusqlite::Error) -> LedgerError {
    if is_busy(&e) {
        return LedgerError::Busy {
            op,
            path: path.to_owned(),
            secs: busy.as_secs(),
        };
    }
    LedgerError::Sqlite {
        op,
        path: path.to_owned(),
        source: e,
    }
}

/// The write-ahead log beside the database file.
fn wal_path(db: &Path) -> PathBuf {
    db.with_file_name(format!("{FILE_NAME}-wal"))
}

/// Makes the names of a new database and WAL durable. SQLite is built without its own
/// directory sync (`SQLITE_DISABLE_DIRSYNC` in `.cargo/config.toml`), which otherwise costs
/// every runner process one more fsync at its first commit although the WAL already existed:
/// calyx syncs the directory once, when the files are created, and never deletes the WAL.
fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LedgerError::Io {
            op: "syncing the new ledger's directory",
            path: dir.to_owned(),
            source,
        })
}

/// Creates the state directory (0700) if missing and refuses one that others may write: they
/// could delete the ledger and with it every count and revocation.
fn prepare_dir(dir: &Path) -> Result<(), LedgerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LedgerError::Io {
            op: "creating the state directory",
            path: dir.to_owned(),
            source,
        })?;
    let meta = std::fs::metadata(dir).map_err(|source| LedgerError::Io {
        op: "inspecting the state directory",
        path: dir.to_owned(),
        source,
    })?;
    check_mode("state directory", dir, meta.mode(), 0o700)
}

/// Creates the database file 0600 (SQLite would use 0644), or checks the existing one. SQLite
/// gives its `-wal` and `-shm` files the database file's mode.
fn create_file(path: &Path) -> Result<(), LedgerError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LedgerError::Io {
            op: "opening the ledger",
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| LedgerError::Io {
        op: "inspecting the ledger",
        path: path.to_owned(),
        source,
    })?;
    check_mode("ledger", path, meta.mode(), 0o600)
}

fn check_mode(what: &'static str, path: &Path, mode: u32, fix: u32) -> Result<(), LedgerError> {
    if mode & 0o022 != 0 {
        return Err(LedgerError::Unsafe {
            what,
            path: path.to_owned(),
            mode: mode & 0o7777,
            fix,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
