#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
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

fn end(lease: &str, run: &str, outcome: &str, code: u8) -> RunEnd {
    RunEnd {
        lease_id: lease.into(),
        run_id: run.into(),
        outcome: outcome.into(),
        exit_code: code,
    }
}

fn granted(d: &Decision) -> bool {
    matches!(d, Decision::Granted { .. })
}

#[test]
fn creates_private_dirs_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/nested");
    let mut l = FileLedger::open_in(&dir).unwrap();
    l.consume(&record("L", 1), "RUN-1", now()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DIR_NAME)), 0o700);
    let file = l.file_of("L");
    assert_eq!(mode(&file), 0o600);
    assert!(file.starts_with(dir.join(DIR_NAME)));
    // Any id is a safe name: the hex of its digest.
    let odd = l.file_of("../../etc/passwd\n");
    assert_eq!(odd.parent(), Some(dir.join(DIR_NAME).as_path()));
}

#[test]
fn refuses_group_writable_directories() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = FileLedger::open_in(tmp.path()).unwrap_err();
    assert!(matches!(err, LedgerError::Unsafe { .. }), "{err}");
    assert!(err.to_string().contains("chmod 700"), "{err}");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ledger_dir = tmp.path().join(DIR_NAME);
    std::fs::create_dir(&ledger_dir).unwrap();
    std::fs::set_permissions(&ledger_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = FileLedger::open_in(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("ledger directory"), "{err}");
}

#[test]
fn refuses_a_world_writable_or_symlinked_lease_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    l.consume(&record("LW", 2), "RUN-1", now()).unwrap();
    let f = l.file_of("LW");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = l.consume(&record("LW", 2), "RUN-2", now()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    std::os::unix::fs::symlink(&elsewhere, l.file_of("LS")).unwrap();
    let err = l.consume(&record("LS", 1), "RUN-3", now()).unwrap_err();
    assert!(matches!(err, LedgerError::Io { .. }), "{err}");
}

#[test]
fn refuses_a_state_path_that_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(DIR_NAME), "").unwrap();
    let err = FileLedger::open_in(tmp.path()).unwrap_err();
    assert!(err.to_string().contains(DIR_NAME), "{err}");
}

#[test]
fn counts_uses_exactly_and_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    let r = record("L3", 3);
    for n in 1..=3 {
        assert_eq!(
            l.consume(&r, &format!("RUN-{n}"), now()).unwrap(),
            Decision::Granted { used: n, max: 3 }
        );
    }
    drop(l);
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
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
fn records_alternate_between_the_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    let r = record("LA", 9);
    let slot =
        |i: usize| std::fs::read(l_file(tmp.path(), "LA")).unwrap()[i * SLOT..][..7].to_vec();
    l.consume(&r, "RUN-1", now()).unwrap();
    // The first record goes to slot 1; slot 0 stays empty.
    assert_eq!(slot(0), vec![0; 7]);
    assert_eq!(slot(1), SLOT_MAGIC.to_vec());
    l.consume(&r, "RUN-2", now()).unwrap();
    assert_eq!(slot(0), SLOT_MAGIC.to_vec());
    let file = std::fs::File::open(l_file(tmp.path(), "LA")).unwrap();
    let (stored, seq) = read_record(&file, Path::new("x")).unwrap();
    assert_eq!((stored.unwrap().used, seq), (2, 2));
}

fn l_file(state: &Path, id: &str) -> PathBuf {
    FileLedger::open_in(state).unwrap().file_of(id)
}

/// Overwrites `len` bytes of `file` at `at` with a pattern.
fn scribble(file: &Path, at: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&vec![0xa5; len], at).unwrap();
}

#[test]
fn a_torn_write_leaves_the_last_durable_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    let r = record("LT", 5);
    for n in 1..=3 {
        l.consume(&r, &format!("RUN-{n}"), now()).unwrap();
    }
    // Record 3 is in slot 1; a crash while writing record 4 can only have torn slot 0.
    let file = l.file_of("LT");
    scribble(&file, 100, 300);
    assert_eq!(l.state_of("LT").unwrap().used, 3);
    // Torn in its header too (a write cut off after its first sector).
    scribble(&file, 0, 512);
    assert_eq!(l.state_of("LT").unwrap().used, 3);
    // The next use writes slot 0 again and counts on from 3.
    assert_eq!(
        l.consume(&r, "RUN-4", now()).unwrap(),
        Decision::Granted { used: 4, max: 5 }
    );
    assert_eq!(l.state_of("LT").unwrap().used, 4);
}

#[test]
fn a_torn_first_record_is_a_new_lease_but_two_damaged_slots_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    // A new file whose first write (slot 1) was cut off: that use was never synced, so
    // never granted.
    let file = l.file_of("LN");
    std::fs::write(&file, vec![0; SLOT]).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    scribble(&file, SLOT as u64, 200);
    assert_eq!(l.state_of("LN").unwrap(), UseState::default());
    assert!(granted(
        &l.consume(&record("LN", 1), "RUN-1", now()).unwrap()
    ));
    // Two records, then both slots damaged: the count is unknown, so nothing is granted.
    let r = record("LD", 5);
    l.consume(&r, "RUN-2", now()).unwrap();
    l.consume(&r, "RUN-3", now()).unwrap();
    let file = l.file_of("LD");
    scribble(&file, 60, 10);
    scribble(&file, SLOT as u64 + 60, 10);
    let err = l.consume(&r, "RUN-4", now()).unwrap_err();
    assert!(matches!(err, LedgerError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("neither record slot"), "{err}");
    assert!(l.list().is_err());
}

#[test]
fn a_file_of_another_lease_or_a_newer_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    l.consume(&record("LX", 5), "RUN-1", now()).unwrap();
    std::fs::copy(l.file_of("LX"), l.file_of("LY")).unwrap();
    let err = l.consume(&record("LY", 5), "RUN-2", now()).unwrap_err();
    assert!(err.to_string().contains("holds lease LX, not LY"), "{err}");
    let err = l.state_of("LY").unwrap_err();
    assert!(matches!(err, LedgerError::Damaged { .. }), "{err}");
    // Slot 1 holds record 1: its version byte raised (and its digest with it, which covers
    // the header) reads as a newer calyx's file.
    let file = l.file_of("LX");
    let bytes = std::fs::read(&file).unwrap();
    let slot = &bytes[SLOT..];
    let len = u32::from_le_bytes(slot[16..20].try_into().unwrap()) as usize;
    let mut head = slot[..20].to_vec();
    head[7] = FORMAT + 1;
    let digest = Sha256::new()
        .chain_update(&head)
        .chain_update(&slot[HEADER..HEADER + len])
        .finalize();
    head.extend_from_slice(&digest);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_all_at(&head, SLOT as u64)
        .unwrap();
    let err = l.state_of("LX").unwrap_err();
    assert!(matches!(err, LedgerError::Format { found: 2, .. }), "{err}");
}

#[test]
fn revocation_refuses_and_keeps_the_first_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
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
    // A reason longer than the record keeps is refused, not cut.
    let err = l
        .revoke("LR2", None, "u", &"x".repeat(MAX_REASON + 1), now())
        .unwrap_err();
    assert!(matches!(err, LedgerError::TooLong { .. }), "{err}");
}

#[test]
fn state_of_one_lease_reads_uses_and_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
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
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
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
fn list_shows_the_last_outcome_oldest_lease_first() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    let r = record("LO", 3);
    assert_eq!(l.list().unwrap().len(), 0);
    l.consume(&r, "RUN-a", now()).unwrap();
    l.record_end(&end("LO", "RUN-a", "exited", 0), now())
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
    // An earlier run ending late does not pass for the latest one.
    let mut other = FileLedger::open_in(tmp.path()).unwrap();
    other
        .record_end(&end("LO", "RUN-a", "halted", 137), now())
        .unwrap();
    assert_eq!(
        l.list().unwrap()[0].last_outcome.as_deref(),
        Some("unknown")
    );
    l.record_end(&end("LO", "RUN-b", "timeout", 124), now())
        .unwrap();
    // A torn end (it is written without a sync) reads as unknown.
    scribble(&l.file_of("LO"), END_AT as u64 + 50, 4);
    assert_eq!(
        l.list().unwrap()[0].last_outcome.as_deref(),
        Some("unknown")
    );
    l.consume(&record("LP", 1), "RUN-c", now()).unwrap();
    l.consume(&record("LA", 1), "RUN-d", now()).unwrap();
    let ids: Vec<_> = l.list().unwrap().into_iter().map(|r| r.lease_id).collect();
    assert_eq!(ids, ["LO", "LP", "LA"]);
}

#[test]
fn labels_are_cut_but_ids_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_in(tmp.path()).unwrap();
    let mut r = record("LL", 1);
    r.subject = "é".repeat(400);
    l.consume(&r, "RUN-1", now()).unwrap();
    let subject = l.list().unwrap()[0].subject.clone().unwrap();
    assert!(
        subject.len() <= MAX_LABEL && subject.ends_with('…'),
        "{subject}"
    );
    let err = l
        .consume(&record(&"L".repeat(MAX_ID + 1), 1), "RUN-2", now())
        .unwrap_err();
    assert!(matches!(err, LedgerError::TooLong { .. }), "{err}");
}

#[test]
fn a_lock_held_past_the_timeout_is_busy_not_a_use() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = FileLedger::open_with(tmp.path(), Duration::from_millis(200)).unwrap();
    l.consume(&record("LB", 2), "RUN-0", now()).unwrap();
    let holder = std::fs::File::open(l.file_of("LB")).unwrap();
    crate::sys::lock::lock_exclusive(holder.as_fd()).unwrap();
    let err = l.consume(&record("LB", 2), "RUN-1", now()).unwrap_err();
    assert!(matches!(err, LedgerError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
    // Another lease does not wait for it.
    assert!(granted(
        &l.consume(&record("LC", 1), "RUN-2", now()).unwrap()
    ));
    crate::sys::lock::unlock(holder.as_fd()).unwrap();
    assert_eq!(
        l.consume(&record("LB", 2), "RUN-1", now()).unwrap(),
        Decision::Granted { used: 2, max: 2 }
    );
}

/// 50 ledgers on a fresh state directory, released at once: the directories are made once
/// and exactly `max` uses are granted. (tests/ledger.rs does the same with 50 calyx-run
/// processes.)
#[test]
fn fifty_concurrent_ledgers_grant_exactly_max_uses() {
    for max in [1u32, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(tmp.path().join("state"));
        let gate = Arc::new(Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let (dir, gate) = (Arc::clone(&dir), Arc::clone(&gate));
                std::thread::spawn(move || {
                    gate.wait();
                    let mut l = FileLedger::open_in(&dir).unwrap();
                    l.consume(&record("LC", max), &format!("RUN-{i}"), now())
                        .unwrap()
                })
            })
            .collect();
        let granted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(granted)
            .count();
        assert_eq!(granted, max as usize, "max_uses {max}");
        let rows = FileLedger::open_in(&dir).unwrap().list().unwrap();
        assert_eq!(rows[0].used, max);
    }
}

/// The schema of the SQLite ledger of earlier builds, as they wrote it.
const OLD_SCHEMA: &str = "
CREATE TABLE leases (
    lease_id TEXT PRIMARY KEY NOT NULL, intent_id TEXT, subject TEXT, expires_at TEXT,
    max_uses INTEGER, used INTEGER NOT NULL DEFAULT 0, first_seen TEXT NOT NULL,
    revoked_at TEXT, revoked_by TEXT, revoked_reason TEXT
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY NOT NULL, lease_id TEXT NOT NULL, used_at TEXT NOT NULL,
    outcome TEXT, exit_code INTEGER, ended_at TEXT
);
CREATE INDEX runs_by_lease ON runs (lease_id);
PRAGMA user_version = 1;
";

fn old_ledger(state: &Path) -> rusqlite::Connection {
    std::fs::create_dir_all(state).unwrap();
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = rusqlite::Connection::open(state.join(super::super::import::FILE_NAME)).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    c.execute_batch(OLD_SCHEMA).unwrap();
    c
}

#[test]
fn an_earlier_sqlite_ledger_is_imported_once_with_nothing_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let c = old_ledger(&state);
    c.execute_batch(
        "INSERT INTO leases VALUES ('LEASE-spent', 'INT-1', 'cp14', '2027-01-01T00:00:00Z', 1, 1,
                                    '2026-12-01T10:00:00Z', NULL, NULL, NULL);
         INSERT INTO leases VALUES ('LEASE-two', 'INT-2', 'cp14', '2027-01-01T00:00:00Z', 3, 2,
                                    '2026-12-01T10:00:00Z', NULL, NULL, NULL);
         INSERT INTO leases VALUES ('LEASE-gone', NULL, NULL, NULL, NULL, 0,
                                    '2026-12-01T09:00:00Z', '2026-12-01T11:00:00Z', 'bob',
                                    'leaked' || printf('%.5000c', '!'));
         INSERT INTO runs VALUES ('RUN-1', 'LEASE-spent', 't', 'exited', 0, 't');
         INSERT INTO runs VALUES ('RUN-2', 'LEASE-two', 't', 'halted', 137, 't');
         INSERT INTO runs VALUES ('RUN-3', 'LEASE-two', 't', NULL, NULL, NULL);",
    )
    .unwrap();
    // Left open with its WAL, as a killed runner would: the import reads what was committed.
    let mut l = FileLedger::open_in(&state).unwrap();
    drop(c);
    let rows = l.list().unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r.lease_id.as_str()).collect();
    assert_eq!(ids, ["LEASE-gone", "LEASE-spent", "LEASE-two"]);
    // A reason longer than the new store keeps is cut; the revocation itself stands.
    let reason = &rows[0].revoked.as_ref().unwrap().reason;
    assert!(
        reason.starts_with("leaked!!!") && reason.ends_with('…'),
        "{reason}"
    );
    assert!(reason.len() <= MAX_REASON, "{}", reason.len());
    assert_eq!(
        (
            rows[1].used,
            rows[1].last_outcome.as_deref(),
            rows[1].last_exit_code
        ),
        (1, Some("exited"), Some(0))
    );
    assert_eq!(
        (
            rows[2].used,
            rows[2].last_run_id.as_deref(),
            rows[2].last_outcome.as_deref()
        ),
        (2, Some("RUN-3"), Some("unknown"))
    );
    // The counts hold: the spent lease stays spent, the revoked one revoked.
    let spent = l
        .consume(&record("LEASE-spent", 1), "RUN-4", now())
        .unwrap();
    assert!(!granted(&spent), "{spent:?}");
    assert!(!granted(
        &l.consume(&record("LEASE-gone", 9), "RUN-5", now()).unwrap()
    ));
    assert!(granted(
        &l.consume(&record("LEASE-two", 3), "RUN-6", now()).unwrap()
    ));
    // The old file is kept aside under a new name, and not imported again.
    assert!(!state.join("ledger.sqlite").exists());
    let kept: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("ledger.sqlite.imported-"))
        .collect();
    // With its WAL, renamed alongside (the test's connection was still open).
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().any(|n| n.ends_with("-wal")), "{kept:?}");
    let mut again = FileLedger::open_in(&state).unwrap();
    assert_eq!(again.state_of("LEASE-two").unwrap().used, 3);
    assert_eq!(again.list().unwrap().len(), 3);
}

#[test]
fn an_sqlite_ledger_of_a_newer_schema_is_not_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let c = old_ledger(&state);
    c.execute_batch("PRAGMA user_version = 7").unwrap();
    drop(c);
    let err = FileLedger::open_in(&state).unwrap_err();
    assert!(matches!(err, LedgerError::Format { found: 7, .. }), "{err}");
    assert!(state.join("ledger.sqlite").exists());
    // Listing never creates a ledger, but one waiting to be imported is opened.
    let empty = tmp.path().join("empty");
    assert!(FileLedger::open_existing(&empty).unwrap().is_none());
    assert!(FileLedger::open_existing(&state).is_err());
}
