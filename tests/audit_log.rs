//! The audit log's hash chain (issue 6), through the library and `calyx audit`: tampering of
//! every kind is found at the right line, rotation keeps the chain, concurrent appenders lose
//! nothing, a torn write is sealed. calyx-run's side is in `audit_run.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use calyx::audit::chain::{GENESIS, line_hash};
use calyx::audit::verify::{self, BreakKind, Options, Report};
use calyx::audit::{AuditLog, Durability, RunIds, names};
use serde_json::{Value, json};

fn calyx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calyx"))
}

fn ids(run: &str) -> RunIds {
    RunIds {
        run_id: run.into(),
        lease_id: Some("LEASE-t".into()),
        intent_id: None,
    }
}

/// A log of `n` lines in a fresh temp dir.
fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    for i in 0..n {
        log.append(
            names::RESOURCE_MONITORED,
            &ids("RUN-x"),
            json!({"i": i}),
            Durability::Buffered,
        )
        .unwrap();
    }
    (dir, path)
}

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn check(path: &Path) -> Report {
    verify::verify_log(path, Options::default()).unwrap()
}

fn assert_broken(r: &Report, file: &Path, line: u64, kind: BreakKind) {
    let b = r
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("not broken: {r:?}"));
    assert_eq!(
        (b.file.as_path(), b.line, b.kind),
        (file, line, kind),
        "{b:?}"
    );
}

#[test]
fn appends_form_a_chain_and_return_the_line_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            log.append(
                names::EXEC_STARTED,
                &ids(&format!("RUN-{i}")),
                json!({}),
                Durability::Synced,
            )
            .unwrap(),
        );
    }
    let lines = lines_of(&path);
    let mut prev = GENESIS.to_owned();
    for (i, (line, appended)) in lines.iter().zip(&got).enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["prev"], prev.as_str());
        assert_eq!(appended.seq, i as u64 + 1);
        assert_eq!(appended.hash, line_hash(line.as_bytes()));
        prev = appended.hash.clone();
    }
    let r = check(&path);
    assert!(r.intact(), "{r:?}");
    assert_eq!((r.lines, r.last_seq), (5, Some(5)));
    assert_eq!(r.last_hash.as_deref(), Some(prev.as_str()));
    // Five runs started and none finished.
    assert_eq!(r.unfinished.len(), 5);
}

#[test]
fn tampering_is_found_at_the_first_bad_line() {
    type Tamper = fn(&mut Vec<String>);
    let cases: &[(&str, Tamper, u64, BreakKind)] = &[
        (
            "edit line 5",
            |l| l[4] = l[4].replace("\"i\":4", "\"i\":44"),
            5,
            BreakKind::Edited,
        ),
        (
            "delete line 5",
            |l| drop(l.remove(4)),
            5,
            BreakKind::Dropped,
        ),
        (
            "swap lines 5 and 6",
            |l| l.swap(4, 5),
            5,
            BreakKind::Reordered,
        ),
        (
            "move line 3 after line 7",
            |l| {
                let x = l.remove(2);
                l.insert(6, x);
            },
            3,
            BreakKind::Reordered,
        ),
        (
            "repeat line 4",
            |l| {
                let x = l[3].clone();
                l.insert(4, x);
            },
            5,
            BreakKind::Reordered,
        ),
        (
            "garbage line",
            |l| l.insert(6, "hello".into()),
            7,
            BreakKind::NotJson,
        ),
        (
            "seq edited",
            |l| l[5] = l[5].replace("\"seq\":6", "\"seq\":60"),
            6,
            BreakKind::Edited,
        ),
        (
            "delete line 1",
            |l| drop(l.remove(0)),
            1,
            BreakKind::Dropped,
        ),
        (
            "chain fields stripped",
            |l| {
                let mut v: Value = serde_json::from_str(&l[2]).unwrap();
                v.as_object_mut().unwrap().remove("prev");
                l[2] = v.to_string();
            },
            3,
            BreakKind::Edited,
        ),
    ];
    for (what, tamper, line, kind) in cases {
        let (_dir, path) = log_with(10);
        let mut lines = lines_of(&path);
        tamper(&mut lines);
        write_lines(&path, &lines);
        let r = check(&path);
        let b = r
            .broken
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: not detected"));
        assert_eq!((b.line, b.kind), (*line, *kind), "{what}: {b:?}");
    }
}

#[test]
fn truncation_mid_line_is_torn() {
    let (_dir, path) = log_with(10);
    let text = fs::read(&path).unwrap();
    // Cut in the middle of line 7.
    let start7: usize = lines_of(&path)[..6].iter().map(|l| l.len() + 1).sum();
    fs::write(&path, &text[..start7 + 20]).unwrap();
    assert_broken(&check(&path), &path, 7, BreakKind::Torn);
    // An untouched prefix ending on a line boundary is intact (the chain cannot see lines
    // removed from its end; receipts anchor those).
    fs::write(&path, &text[..start7]).unwrap();
    assert!(check(&path).intact());
}

#[test]
fn a_torn_write_is_sealed_by_the_next_append() {
    let (_dir, path) = log_with(3);
    let before = lines_of(&path);
    let size = fs::metadata(&path).unwrap().len();
    // A runner killed mid-write left part of a line.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    let fragment = b"{\"seq\":4,\"prev\":\"ab";
    std::io::Write::write_all(&mut f, fragment).unwrap();
    assert_broken(&check(&path), &path, 4, BreakKind::Torn);
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    let a = log
        .append(
            names::EXEC_FINISHED,
            &ids("RUN-x"),
            json!({}),
            Durability::Synced,
        )
        .unwrap();
    assert_eq!(
        a.seq, 4,
        "the lost record's seq is reused: it was never acknowledged"
    );
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 5);
    let sealing: Value = serde_json::from_str(&lines[4]).unwrap();
    assert_eq!(sealing["prev"], line_hash(before[2].as_bytes()).as_str());
    assert_eq!(
        sealing["torn_tail"],
        json!({"offset": size, "bytes": fragment.len()})
    );
    let r = check(&path);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.sealed.len(), 1);
    assert_eq!((r.sealed[0].line, r.sealed[0].sealed_by), (4, 4));
    // A sealing claim is bound to its fragment: changing the fragment's length breaks it.
    let mut lines = lines;
    lines[3].push('x');
    write_lines(&path, &lines);
    assert_broken(&check(&path), &path, 4, BreakKind::NotJson);
}

#[test]
fn an_unchained_last_line_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    fs::write(&path, "{\"event\":\"exec_event.STARTED\"}\n").unwrap();
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    let e = log
        .append(
            names::EXEC_STARTED,
            &ids("RUN-x"),
            json!({}),
            Durability::Synced,
        )
        .unwrap_err();
    assert!(e.to_string().contains("seq/prev"), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
}

#[test]
fn appends_reserve_storage_ahead_and_the_size_stays_what_was_written() {
    let (_dir, path) = log_with(3);
    let meta = fs::metadata(&path).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(meta.len(), text.len() as u64);
    assert_eq!(text.lines().count(), 3);
    assert!(text.ends_with("}\n"), "{text}");
    // Blocks beyond the end are reserved for the next appends (fallocate, KEEP_SIZE).
    let held = meta.blocks() * 512;
    assert!(
        held >= meta.len() + (64 << 10),
        "{} bytes hold {held}",
        meta.len()
    );
    assert!(check(&path).intact());
}

fn rotated_log(lines: u64) -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    log.set_rotate_bytes(2000);
    for i in 0..lines {
        log.append(
            names::RESOURCE_MONITORED,
            &ids("RUN-r"),
            json!({"i": i}),
            Durability::Buffered,
        )
        .unwrap();
    }
    let files = verify::chain_files(&path).unwrap();
    (dir, path, files)
}

#[test]
fn rotation_keeps_the_chain() {
    let (_dir, path, files) = rotated_log(60);
    assert!(
        files.len() >= 4,
        "expected several rotated files: {files:?}"
    );
    for f in &files[..files.len() - 1] {
        let size = fs::metadata(f).unwrap().len();
        assert!(size >= 2000, "{f:?} rotated at {size} bytes");
        // Rotated, it gave back the storage reserved beyond its end.
        let held = fs::metadata(f).unwrap().blocks() * 512;
        assert!(held < 64 << 10, "{f:?} of {size} bytes holds {held}");
        // The suffix is the seq of the file's last line.
        let last: Value = serde_json::from_str(lines_of(f).last().unwrap()).unwrap();
        let suffix = f.extension().unwrap().to_str().unwrap();
        assert_eq!(last["seq"].to_string(), suffix);
    }
    let r = check(&path);
    assert!(r.intact(), "{r:?}");
    assert_eq!((r.lines, r.first_seq, r.last_seq), (60, Some(1), Some(60)));
    // The first line of a new file links to the last line of the one before.
    let first: Value = serde_json::from_str(&lines_of(&files[1])[0]).unwrap();
    assert_eq!(
        first["prev"],
        line_hash(lines_of(&files[0]).last().unwrap().as_bytes()).as_str()
    );
}

#[test]
fn tampering_across_the_file_boundary_is_found() {
    // The first line of the second file removed.
    let (_dir, path, files) = rotated_log(60);
    let mut l = lines_of(&files[1]);
    l.remove(0);
    write_lines(&files[1], &l);
    assert_broken(&check(&path), &files[1], 1, BreakKind::Dropped);

    // The last line of the first file edited: found at that line, through the next file.
    let (_dir, path, files) = rotated_log(60);
    let mut l = lines_of(&files[0]);
    let n = l.len();
    l[n - 1] = l[n - 1].replace("RUN-r", "RUN-q");
    write_lines(&files[0], &l);
    assert_broken(&check(&path), &files[0], n as u64, BreakKind::Edited);

    // A whole rotated file removed.
    let (_dir, path, files) = rotated_log(60);
    fs::remove_file(&files[1]).unwrap();
    assert_broken(&check(&path), &files[2], 1, BreakKind::Dropped);

    // Pruning the oldest files is a break unless accepted explicitly.
    let (_dir, path, files) = rotated_log(60);
    fs::remove_file(&files[0]).unwrap();
    assert_broken(&check(&path), &files[1], 1, BreakKind::Dropped);
    let r = verify::verify_log(&path, Options { allow_pruned: true }).unwrap();
    assert!(r.intact(), "{r:?}");
}

#[test]
fn concurrent_appenders_lose_nothing() {
    const THREADS: u64 = 32;
    const EACH: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                // A handle per thread: its own open file description, so the flock really
                // serializes them as it does separate processes. Small files: rotation races.
                let mut log = AuditLog::open(&path, "h".into()).unwrap();
                log.set_rotate_bytes(8 << 10);
                (0..EACH)
                    .map(|i| {
                        let d = if i % 5 == 0 {
                            Durability::Synced
                        } else {
                            Durability::Buffered
                        };
                        log.append(
                            names::RESOURCE_MONITORED,
                            &ids(&format!("RUN-{t}")),
                            json!({"i": i}),
                            d,
                        )
                        .unwrap()
                        .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(
        n - seqs.len(),
        0,
        "{} seq numbers handed out twice",
        n - seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=THREADS * EACH).collect::<Vec<_>>(),
        "seq numbers missing"
    );
    let r = check(&path);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.lines, THREADS * EACH);
    assert!(r.files.len() > 2, "rotation did not happen: {:?}", r.files);
}

/// `calyx audit verify|tail` on the command line.
#[test]
fn cli_verify_and_tail() {
    let (_dir, path) = log_with(10);
    let calyx = |args: &[&str]| {
        Command::new(calyx_bin())
            .args(args)
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = calyx(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 10 lines"));
    let out = calyx(&["audit", "tail", "-n", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("#8  resource_event.MONITORED"),
        "{text}"
    );
    let out = calyx(&["audit", "tail", "-n", "2", "--json"]);
    let raw: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        raw.iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [9, 10]
    );

    let mut lines = lines_of(&path);
    lines.swap(3, 4);
    write_lines(&path, &lines);
    let out = calyx(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("BROKEN: {}:4: reordered", path.display())),
        "{text}"
    );
    let out = calyx(&["audit", "verify", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["broken"]["line"], 4);
    assert_eq!(v["broken"]["kind"], "reordered");

    let out = Command::new(calyx_bin())
        .args(["audit", "verify", "/nonexistent/calyx/audit.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74), "{out:?}");
}

/// `tail -f` prints lines appended later, across a rotation.
#[test]
fn cli_tail_follows_across_rotation() {
    let (_dir, path) = log_with(2);
    let mut child = Command::new(calyx_bin())
        .args(["audit", "tail", "-f", "-n", "1", "--json"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    log.set_rotate_bytes(1);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        log.append(
            names::EXEC_STARTED,
            &ids("RUN-f"),
            json!({}),
            Durability::Buffered,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
}

/// The cost of one append on /var/tmp (a disk, unlike /tmp on many hosts): lock, tail read,
/// write and, for Synced, fdatasync. Prints the figures the README quotes; the bound only
/// catches a pathological regression (a full-file read per append, a lost lock).
#[test]
fn append_cost() {
    let dir = tempfile::Builder::new()
        .prefix("calyx-audit-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, "h".into()).unwrap();
    // A STARTED-sized record (argv, profile, enforcement: about 1 KiB).
    let fields = json!({"argv": ["/usr/bin/make", "test"], "enforcement": "x".repeat(1000)});
    let mut time = |d: Durability| {
        let mut t: Vec<Duration> = (0..200)
            .map(|_| {
                let s = Instant::now();
                log.append(names::EXEC_STARTED, &ids("RUN-b"), fields.clone(), d)
                    .unwrap();
                s.elapsed()
            })
            .collect();
        t.sort();
        (t[t.len() / 2], t[t.len() * 9 / 10])
    };
    let (synced, synced_p90) = time(Durability::Synced);
    let (buffered, buffered_p90) = time(Durability::Buffered);
    eprintln!(
        "append on /var/tmp, 200 each: Synced median {synced:?} (p90 {synced_p90:?}); Buffered median {buffered:?} (p90 {buffered_p90:?})"
    );
    assert!(check(&path).intact());
    assert!(
        buffered < Duration::from_millis(5),
        "buffered append {buffered:?}"
    );
    assert!(
        synced < Duration::from_millis(250),
        "synced append {synced:?}"
    );
}
