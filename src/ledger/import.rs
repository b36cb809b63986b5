//! The one-time import of a ledger written by an earlier calyx, which kept it in SQLite
//! (`STATE_DIR/ledger.sqlite`). The first open of the ledger that finds that file copies every
//! lease's count, revocation and last run into `STATE_DIR/ledger/`, syncs them, and renames
//! the SQLite file to `ledger.sqlite.imported-UNIXTIME`: no use counted there is lost, and
//! nothing reads the old file again. Opens that find no such file pay one `statx`.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::files::{FileLedger, ImportedLease};
use super::{LedgerError, Revocation, io_error};

/// The earlier ledger's file name in the state directory.
pub const FILE_NAME: &str = "ledger.sqlite";

/// Imports `STATE_DIR/ledger.sqlite` into `ledger` if it is there. Several processes opening
/// the ledger at once import it once: they queue on a lock of the ledger's directory, and
/// those after the first find the file gone.
pub fn if_present(state_dir: &Path, ledger: &FileLedger) -> Result<(), LedgerError> {
    let old = state_dir.join(FILE_NAME);
    if !present(&old)? {
        return Ok(());
    }
    let dir = std::fs::File::open(ledger.path()).map_err(io_error("opening", ledger.path()))?;
    crate::sys::lock::lock_exclusive(dir.as_fd()).map_err(io_error("locking", ledger.path()))?;
    if !present(&old)? {
        return Ok(());
    }
    let leases = read(&old)?;
    for lease in &leases {
        ledger.merge(lease)?;
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut kept = PathBuf::new();
    for suffix in ["", "-wal", "-shm"] {
        let from = state_dir.join(format!("{FILE_NAME}{suffix}"));
        let to = state_dir.join(format!("{FILE_NAME}.imported-{stamp}{suffix}"));
        match std::fs::rename(&from, &to) {
            Ok(()) if suffix.is_empty() => kept = to,
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(LedgerError::Io {
                    op: "renaming the imported ledger",
                    path: from,
                    source,
                });
            }
        }
    }
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing the directory", state_dir))?;
    eprintln!(
        "calyx: imported {} lease(s) from {} into {}; the old file is kept as {}",
        leases.len(),
        old.display(),
        ledger.path().display(),
        kept.display()
    );
    Ok(())
}

/// Whether something (of any type, a symlink not followed) is at `path`.
pub(super) fn present(path: &Path) -> Result<bool, LedgerError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspecting", path)(e)),
    }
}

/// Every lease of the SQLite ledger, with its latest run.
fn read(path: &Path) -> Result<Vec<ImportedLease>, LedgerError> {
    let err = |e| LedgerError::Sqlite {
        op: "importing",
        path: path.to_owned(),
        source: e,
    };
    // Read-write: a WAL left by a killed runner is recovered into what is read.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(super::files::BUSY_TIMEOUT).map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 {
        // Created, never given its schema: nothing was ever counted in it.
        return Ok(Vec::new());
    }
    if version > 1 {
        return Err(LedgerError::Format {
            path: path.to_owned(),
            found: u8::try_from(version).unwrap_or(u8::MAX),
            known: 1,
        });
    }
    let mut stmt = conn
        .prepare(
            "SELECT l.lease_id, l.intent_id, l.subject, l.expires_at, l.max_uses, l.used,
                    l.first_seen, l.rowid, l.revoked_at, l.revoked_by, l.revoked_reason,
                    r.run_id, r.outcome, r.exit_code, r.ended_at
             FROM leases l
             LEFT JOIN runs r ON r.rowid =
                (SELECT max(rowid) FROM runs WHERE runs.lease_id = l.lease_id)
             ORDER BY l.rowid",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            let first_seen: String = r.get(6)?;
            let rowid: i64 = r.get(7)?;
            Ok(ImportedLease {
                lease_id: r.get(0)?,
                intent_id: r.get(1)?,
                subject: r.get(2)?,
                expires_at: r.get(3)?,
                max_uses: r.get::<_, Option<i64>>(4)?.map(to_u32),
                used: to_u32(r.get(5)?),
                first_seen_ns: seen_ns(&first_seen, rowid),
                revoked: r.get::<_, Option<String>>(8)?.map(|at| Revocation {
                    at,
                    by: r
                        .get::<_, Option<String>>(9)
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                    reason: r
                        .get::<_, Option<String>>(10)
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                }),
                last_run_id: r.get(11)?,
                last_outcome: r.get(12)?,
                last_exit_code: r
                    .get::<_, Option<i64>>(13)?
                    .map(|c| u8::try_from(c).unwrap_or(u8::MAX)),
                ended_at: r.get(14)?,
            })
        })
        .map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// The old ledger kept `first_seen` to the second and its order in row ids: the row id
/// becomes the nanoseconds, so `list` keeps that order.
fn seen_ns(first_seen: &str, rowid: i64) -> u64 {
    let secs =
        time::OffsetDateTime::parse(first_seen, &time::format_description::well_known::Rfc3339)
            .map_or(0, |t| t.unix_timestamp());
    let secs = u64::try_from(secs).unwrap_or(0);
    secs * 1_000_000_000 + u64::try_from(rowid.rem_euclid(1_000_000_000)).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}
