#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use super::*;
use crate::ledger::Refusal;

fn record(id: &str, max_uses: u32) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.into(),
        intent_id: "INT-1".into(),
        subject: "cp14".into(),
        expires_at: "2026-11-23T00:00:00Z".into(),
        max_uses,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn sqlite_leaves_directory_syncs_to_calyx() {
    // .cargo/config.toml builds SQLite without its per-process directory fsync; open_with
    // then syncs the directory itself when it creates the files. A build without the flag
    // would still be safe (only slower), but the two must not drift apart unnoticed.
    let tmp = tempfile::tempdir().unwrap();
    let l = SqliteLedger::open_in(tmp.path()).unwrap();
    let mut stmt = l.conn.prepare("PRAGMA compile_options").unwrap();
    let opts: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(opts.iter().any(|o| o == "DISABLE_DIRSYNC"), "{opts:?}");
    // A connection lives for one run: no lookaside buffer to lay out at each open, and no
    // allocation statistics behind a global mutex (-0.11 and -0.16 ms per run).
    assert!(opts.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{opts:?}");
    assert!(
        opts.iter().any(|o| o == "DEFAULT_LOOKASIDE=0,0"),
        "{opts:?}"
    );
    // The WAL exists once a ledger is open, so later opens have nothing to make durable.
    assert!(wal_path(l.path()).exists());
}

#[test]
fn creates_private_dir_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/nested");
    let mut l = SqliteLedger::open_in(&dir).unwrap();
    l.consume(&record("L", 1), "RUN-1", now()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
    // SQLite's side files take the database's mode.
    let wal = dir.join(format!("{FILE_NAME}-wal"));
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
}

#[test]
fn refuses_a_group_writable_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = SqliteLedger::open_in(tmp.path()).unwrap_err();
    assert!(matches!(err, LedgerError::Unsafe { .. }), "{err}");
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn refuses_a_world_writable_ledger_file() {
    let tmp = tempfile::tempdir().unwrap();
    drop(SqliteLedger::open_in(tmp.path()).unwrap());
    let f = tmp.path().join(FILE_NAME);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = SqliteLedger::open_in(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn refuses_a_symlinked_ledger_file() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&elsewhere, state.join(FILE_NAME)).unwrap();
    let err = SqliteLedger::open_in(&state).unwrap_err();
    assert!(matches!(err, LedgerError::Io { .. }), "{err}");
}

#[test]
fn counts_uses_exactly_and_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    let r = record("L3", 3);
    for n in 1..=3 {
        assert_eq!(
            l.consume(&r, &format!("RUN-{n}"), now()).unwrap(),
            Decision::Granted { used: n, max: 3 }
        );
    }
    drop(l);
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    let refused = l.consume(&r, "RUN-4", now()).unwrap();
    assert_eq!(
        refused,
        Decision::Refused(Refusal::UsedUp {
            lease_id: "L3".into(),
            used: 3,
            max: 3
        })
    );
    let list = l.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].used, list[0].uses_left), (3, Some(0)));
}

#[test]
fn revocation_refuses_and_keeps_the_first_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    // Revoked before its first use, by id only.
    let first = l
        .revoke("LR", None, "root (uid 0)", "key leaked", now())
        .unwrap();
    let Revoked::Now(rev) = first else {
        panic!("{first:?}")
    };
    let again = l
        .revoke("LR", Some(&record("LR", 5)), "bob", "other", now())
        .unwrap();
    assert_eq!(again, Revoked::Already(rev.clone()));
    let d = l.consume(&record("LR", 5), "RUN-1", now()).unwrap();
    assert_eq!(
        d,
        Decision::Refused(Refusal::Revoked {
            lease_id: "LR".into(),
            revocation: rev
        })
    );
    let text = match d {
        Decision::Refused(r) => r.to_string(),
        Decision::Granted { .. } => unreachable!(),
    };
    assert!(text.contains("revoked at") && text.contains("by root (uid 0): key leaked"));
    let row = &l.list().unwrap()[0];
    assert_eq!(row.used, 0);
    assert_eq!(row.uses_left, Some(0));
    assert!(row.revoked.is_some());
}

#[test]
fn state_of_one_lease_reads_uses_and_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    assert_eq!(l.state_of("NEVER-SEEN").unwrap(), UseState::default());
    l.consume(&record("LA", 3), "RUN-1", now()).unwrap();
    l.consume(&record("LA", 3), "RUN-2", now()).unwrap();
    l.consume(&record("LB", 3), "RUN-3", now()).unwrap();
    let a = l.state_of("LA").unwrap();
    assert_eq!((a.used, a.revoked), (2, None));
    let Revoked::Now(rev) = l.revoke("LB", None, "bob", "done", now()).unwrap() else {
        panic!("LB was not revoked before")
    };
    let b = l.state_of("LB").unwrap();
    assert_eq!((b.used, b.revoked), (1, Some(rev)));
    // The other lease is untouched.
    assert_eq!(l.state_of("LA").unwrap().used, 2);
}

#[test]
fn revoke_from_a_file_fills_gaps_but_a_verified_use_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    let mut verified = record("LF", 2);
    l.consume(&verified, "RUN-1", now()).unwrap();
    let mut claimed = verified.clone();
    claimed.subject = "forged".into();
    claimed.max_uses = 99;
    l.revoke("LF", Some(&claimed), "u", "r", now()).unwrap();
    let row = &l.list().unwrap()[0];
    assert_eq!(row.subject.as_deref(), Some("cp14"));
    assert_eq!(row.max_uses, Some(2));
    // And a lease revoked through its file before any use shows the file's fields.
    verified.lease_id = "LG".into();
    l.revoke("LG", Some(&verified), "u", "r", now()).unwrap();
    let rows = l.list().unwrap();
    assert_eq!(rows[1].intent_id.as_deref(), Some("INT-1"));
    assert_eq!(rows[1].max_uses, Some(2));
}

#[test]
fn list_shows_the_last_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
    let r = record("LO", 3);
    assert_eq!(l.list().unwrap().len(), 0);
    l.consume(&r, "RUN-a", now()).unwrap();
    l.record_end(
        &RunEnd {
            run_id: "RUN-a".into(),
            outcome: "exited".into(),
            exit_code: 0,
        },
        now(),
    )
    .unwrap();
    let row = &l.list().unwrap()[0];
    assert_eq!(row.last_outcome.as_deref(), Some("exited"));
    assert_eq!(row.last_exit_code, Some(0));
    // A run whose runner died after its use: the latest outcome is unknown.
    l.consume(&r, "RUN-b", now()).unwrap();
    let row = &l.list().unwrap()[0];
    assert_eq!(row.last_outcome.as_deref(), Some("unknown"));
    assert_eq!(row.last_run_id.as_deref(), Some("RUN-b"));
    assert_eq!((row.used, row.uses_left), (2, Some(1)));
}

#[test]
fn a_lock_held_past_the_timeout_is_busy_not_a_use() {
    let tmp = tempfile::tempdir().unwrap();
    drop(SqliteLedger::open_in(tmp.path()).unwrap());
    let holder = Connection::open(tmp.path().join(FILE_NAME)).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut l = SqliteLedger::open_with(tmp.path(), Duration::from_millis(200)).unwrap();
    let err = l.consume(&record("LB", 1), "RUN-1", now()).unwrap_err();
    assert!(matches!(err, LedgerError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        l.consume(&record("LB", 1), "RUN-1", now()).unwrap(),
        Decision::Granted { used: 1, max: 1 }
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(SqliteLedger::open_in(tmp.path()).unwrap());
    let c = Connection::open(tmp.path().join(FILE_NAME)).unwrap();
    c.execute_batch("PRAGMA user_version = 7").unwrap();
    drop(c);
    let err = SqliteLedger::open_in(tmp.path()).unwrap_err();
    assert!(matches!(err, LedgerError::Schema { found: 7, .. }), "{err}");
}

/// 50 connections on a fresh file, released at once: the schema is created once and exactly
/// `max` uses are granted. (tests/ledger.rs does the same with 50 calyx-run processes.)
#[test]
fn fifty_concurrent_connections_grant_exactly_max_uses() {
    for max in [1u32, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(tmp.path().to_owned());
        let gate = Arc::new(Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let (dir, gate) = (Arc::clone(&dir), Arc::clone(&gate));
                std::thread::spawn(move || {
                    gate.wait();
                    let mut l = SqliteLedger::open_in(&dir).unwrap();
                    l.consume(&record("LC", max), &format!("RUN-{i}"), now())
                        .unwrap()
                })
            })
            .collect();
        let granted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|d| matches!(d, Decision::Granted { .. }))
            .count();
        assert_eq!(granted, max as usize, "max_uses {max}");
    }
}

/// Runners are separate processes that never checkpoint on close: the WAL must still stay
/// small (each new process reads it since its last restart), be started over rather than
/// truncated (so commits overwrite it instead of growing it), and nothing may be lost by
/// folding it back.
#[test]
fn the_wal_is_kept_small_by_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join(format!("{FILE_NAME}-wal"));
    let (mut largest, mut smallest_later) = (0, u64::MAX);
    for n in 0..60u32 {
        let mut l = SqliteLedger::open_in(tmp.path()).unwrap();
        let run = format!("RUN-{n}");
        let r = record(&format!("LW-{n}"), 1);
        assert!(matches!(
            l.consume(&r, &run, now()).unwrap(),
            Decision::Granted { .. }
        ));
        l.record_end(
            &RunEnd {
                run_id: run,
                outcome: "exited".into(),
                exit_code: 0,
            },
            now(),
        )
        .unwrap();
        drop(l);
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        largest = largest.max(size);
        if n >= 2 * CHECKPOINT_EVERY as u32 {
            smallest_later = smallest_later.min(size);
        }
    }
    // Started over every CHECKPOINT_EVERY runs (60 runs without that: about 300 pages),
    // never truncated: runs overwrite it once it has its size.
    let page = 4096 + 24;
    assert!(
        largest <= 2 * CHECKPOINT_EVERY as u64 * 6 * page + 32,
        "WAL grew to {largest} bytes"
    );
    assert!(
        smallest_later >= CHECKPOINT_EVERY as u64 * 2 * page,
        "WAL shrank to {smallest_later} bytes"
    );
    let rows = SqliteLedger::open_in(tmp.path()).unwrap().list().unwrap();
    assert_eq!(rows.len(), 60);
    assert!(
        rows.iter()
            .all(|r| r.used == 1 && r.last_outcome.as_deref() == Some("exited"))
    );
}
