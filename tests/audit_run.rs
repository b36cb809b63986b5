//! calyx-run and its audit log (issue 6): a run whose audit log cannot be written (read-only,
//! no permission, disk full before VERIFIED or before STARTED) exits 125 and its payload never
//! runs; a SIGKILLed runner leaves a log that verifies and shows the run started but
//! unfinished; concurrent runners share one chain. Run as root and as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use calyx::audit::chain::GENESIS;
use calyx::audit::verify::{self, BreakKind, Options, Report};
use calyx::audit::{AuditLog, Durability, RunIds, names};
use common::{PYTHON, Running, Sandbox, User, chown, run_deadline, set_mode};
use serde_json::{Value, json};

both_users!(
    killed_runner_leaves_unfinished_run,
    read_only_audit_log_refuses_the_run,
    full_disk_refuses_the_run,
    started_record_lost_refuses_the_run,
);

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ids(run: &str) -> RunIds {
    RunIds {
        run_id: run.into(),
        lease_id: None,
        intent_id: None,
    }
}

fn assert_torn_at(r: &Report, file: &Path, line: u64) {
    let b = r
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("not broken: {r:?}"));
    assert_eq!(
        (b.file.as_path(), b.line, b.kind),
        (file, line, BreakKind::Torn),
        "{b:?}"
    );
}

fn check(path: &Path) -> Report {
    verify::verify_log(path, Options::default()).unwrap()
}

/// The argv that runs `sb`'s allowed touch command with its audit log at `audit`.
fn marked(user: User) -> (Sandbox, PathBuf, Vec<String>) {
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let marker = work.join("marker");
    let touch = format!("/usr/bin/touch {}", marker.display());
    let sb = sb.write(&work).commands(&[&touch]);
    let _ = user;
    (sb, marker, touch.split(' ').map(str::to_owned).collect())
}

fn run_with_audit(sb: &mut Sandbox, user: User, argv: &[String], audit: &Path) -> common::Outcome {
    let lease = sb.prepared_lease();
    let cmd: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut full = sb.run_argv(user, &lease, &cmd);
    let at = full.iter().position(|a| a == "--audit-log").unwrap();
    full[at + 1] = OsString::from(audit);
    Running::start(&full, &[], None).finish(run_deadline())
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("/bin/mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {dir:?}");
        Tmpfs(dir)
    }

    fn remount_ro(&self) {
        let ok = Command::new("/bin/mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {:?} read-only", self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("/bin/umount").arg("-l").arg(&self.0).status();
    }
}

fn read_only_audit_log_refuses_the_run(user: User) {
    let (mut sb, marker, argv) = marked(user);
    let fs_dir = Tmpfs::mount(sb.root().join("ro"), "1m");
    let audit = fs_dir.0.join("audit.jsonl");
    fs::write(&audit, "").unwrap();
    chown(&audit, user.uid());
    chown(&fs_dir.0, user.uid());
    fs_dir.remount_ro();
    let out = run_with_audit(&mut sb, user, &argv, &audit);
    out.assert_code(125).assert_stderr_has("audit log");
    assert!(
        !marker.exists(),
        "the payload ran without its audit record: {out}"
    );

    if user == User::Nobody {
        // Writable file system, but the log belongs to root: no permission.
        let audit = sb.root().join("root-owned.jsonl");
        fs::write(&audit, "").unwrap();
        set_mode(&audit, 0o644);
        let out = run_with_audit(&mut sb, user, &argv, &audit);
        out.assert_code(125).assert_stderr_has("Permission denied");
        assert!(
            !marker.exists(),
            "the payload ran without its audit record: {out}"
        );
    }
}

fn full_disk_refuses_the_run(user: User) {
    let (mut sb, marker, argv) = marked(user);
    let fs_dir = Tmpfs::mount(sb.root().join("full"), "64k");
    chown(&fs_dir.0, user.uid());
    let audit = fs_dir.0.join("audit.jsonl");
    fs::write(&audit, "").unwrap();
    chown(&audit, user.uid());
    // Fill every block: the next write to the log gets ENOSPC.
    let chunk = vec![0u8; 4096];
    let mut filler = fs::File::create(fs_dir.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let out = run_with_audit(&mut sb, user, &argv, &audit);
    out.assert_code(125)
        .assert_stderr_has("No space left on device");
    assert!(
        !marker.exists(),
        "the payload ran without its audit record: {out}"
    );
}

/// The disk fills up between `lease_event.VERIFIED` and `exec_event.STARTED`: the STARTED
/// write comes up short, so the payload must not start.
fn started_record_lost_refuses_the_run(user: User) {
    let (mut sb, marker, argv) = marked(user);
    // A normal run first, to learn the sizes of this scenario's VERIFIED and STARTED lines.
    let probe_dir = sb.mkdir("probe", 0o755);
    chown(&probe_dir, user.uid());
    let probe = probe_dir.join("audit.jsonl");
    let out = run_with_audit(&mut sb, user, &argv, &probe);
    out.assert_code(0);
    fs::remove_file(&marker).unwrap();
    let len_of = |event: &str| {
        lines_of(&probe)
            .iter()
            .find(|l| l.contains(event))
            .map(|l| l.len() + 1)
            .unwrap()
    };
    let (verified, started) = (len_of(names::LEASE_VERIFIED), len_of(names::EXEC_STARTED));
    assert!(started > verified + 200, "{verified} {started}");

    let fs_dir = Tmpfs::mount(sb.root().join("tight"), "64k");
    chown(&fs_dir.0, user.uid());
    let audit = fs_dir.0.join("audit.jsonl");
    // A first line padded so the log's last page has room for VERIFIED and not STARTED.
    let room = verified + 100;
    let head = format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",\"pad\":\"\"}}");
    let pad = 4096 - room - head.len() - 1;
    let first = format!(
        "{{\"seq\":1,\"prev\":\"{GENESIS}\",\"pad\":\"{}\"}}\n",
        "x".repeat(pad)
    );
    fs::write(&audit, &first).unwrap();
    chown(&audit, user.uid());
    let chunk = vec![0u8; 4096];
    let mut filler = fs::File::create(fs_dir.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);

    let out = run_with_audit(&mut sb, user, &argv, &audit);
    out.assert_code(125).assert_stderr_has("bytes written");
    assert!(
        !marker.exists(),
        "the payload ran without its STARTED record: {out}"
    );
    let text = fs::read_to_string(&audit).unwrap();
    assert!(text.contains(names::LEASE_VERIFIED), "{text}");
    // STARTED is there only as a fragment, which verify reports.
    let r = check(&audit);
    assert_torn_at(&r, &audit, 3);
}

fn killed_runner_leaves_unfinished_run(user: User) {
    let mut sb = Sandbox::new();
    let mut running = sb.spawn_as(user, &[PYTHON, "-c", "import time; time.sleep(60)"]);
    let log = sb.audit_log();
    let until = Instant::now() + run_deadline();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(names::EXEC_STARTED)
    {
        assert!(Instant::now() < until, "no STARTED record");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.child.kill().unwrap(); // SIGKILL
    let out = running.finish(run_deadline());
    assert!(out.status.is_some(), "{out}");
    let r = check(&log);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.unfinished.len(), 1, "{r:?}");
    let started: Value = serde_json::from_str(
        lines_of(&log)
            .iter()
            .find(|l| l.contains(names::EXEC_STARTED))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(started["run_id"], r.unfinished[0].run_id.as_str());
    let out = Command::new(common::calyx_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("started but unfinished") && text.contains(&r.unfinished[0].run_id),
        "{text}"
    );
    // The next append after the kill continues the chain.
    let mut a = AuditLog::open(&log, "h".into()).unwrap();
    let next = a
        .append(
            names::LEASE_REJECTED,
            &ids("RUN-n"),
            json!({}),
            Durability::Synced,
        )
        .unwrap();
    assert_eq!(next.seq, r.last_seq.unwrap() + 1);
    assert!(check(&log).intact());
}

/// Real processes: calyx-run instances started together append to one log (rotating small)
/// and the chain holds every record of every run.
#[test]
fn concurrent_runners_share_one_chain() {
    if !common::tier_ready(User::Root, "concurrent_runners_share_one_chain") {
        return;
    }
    const RUNS: usize = 12;
    let mut sb = Sandbox::new().commands(&["/usr/bin/true"]);
    let audit = sb.root().join("shared/audit.jsonl");
    let env = [("CALYX_AUDIT_ROTATE_BYTES".to_owned(), "6000".to_owned())];
    let running: Vec<Running> = (0..RUNS)
        .map(|_| {
            let lease = sb.prepared_lease();
            let mut argv = sb.run_argv(User::Root, &lease, &["/usr/bin/true"]);
            let at = argv.iter().position(|a| a == "--audit-log").unwrap();
            argv[at + 1] = OsString::from(&audit);
            Running::start(&argv, &env, None)
        })
        .collect();
    for r in running {
        r.finish(run_deadline()).assert_code(0);
    }
    let r = check(&audit);
    assert!(r.intact(), "{r:?}");
    assert!(r.files.len() > 1, "no rotation: {:?}", r.files);
    assert!(r.unfinished.is_empty(), "{:?}", r.unfinished);
    // VERIFIED, STARTED and FINISHED of every run.
    let mut events = Vec::new();
    for f in &r.files {
        events.extend(lines_of(f));
    }
    for name in [
        names::LEASE_VERIFIED,
        names::EXEC_STARTED,
        names::EXEC_FINISHED,
    ] {
        let n = events.iter().filter(|l| l.contains(name)).count();
        assert_eq!(n, RUNS, "{name}");
    }
    assert_eq!(r.lines as usize, events.len());
}

/// `CALYX_TIMELINE=1` prints where the run's time went, phase by phase and in order, after
/// the run; without it calyx-run prints nothing on a good run.
#[test]
fn timeline_is_printed_only_when_asked() {
    if !common::tier_ready(User::Root, "timeline_is_printed_only_when_asked") {
        return;
    }
    let mut sb = Sandbox::new().commands(&["/usr/bin/true"]);
    let quiet = sb.run_as(User::Root, &["/usr/bin/true"]);
    quiet.assert_code(0);
    assert_eq!(quiet.stderr, "", "{quiet}");

    let lease = sb.prepared_lease();
    let argv = sb.run_argv(User::Root, &lease, &["/usr/bin/true"]);
    let env = [("CALYX_TIMELINE".to_owned(), "1".to_owned())];
    let out = Running::start(&argv, &env, None).finish(run_deadline());
    out.assert_code(0);
    let phases: Vec<(f64, &str)> = out
        .stderr
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix("calyx-run: timeline ")
                .unwrap_or_else(|| panic!("not a timeline line: {l:?}"));
            let (ms, name) = rest.trim_start().split_once(" ms ").unwrap();
            let name = name.split_once(")  ").unwrap().1;
            (ms.parse().unwrap(), name)
        })
        .collect();
    let names: Vec<&str> = phases.iter().map(|p| p.1).collect();
    for must in [
        "lease read and verified",
        "cloned",
        "ledger opened",
        "lease use taken (ledger synced)",
        "STARTED synced",
        "payload exited",
        "closing record synced",
        "receipt signed",
        "receipt copy written",
    ] {
        assert!(names.contains(&must), "{must:?} missing: {names:?}");
    }
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("cloned") < pos("STARTED synced"), "{names:?}");
    assert!(pos("ledger opened") < pos("STARTED synced"), "{names:?}");
    assert!(pos("STARTED synced") < pos("payload exited"), "{names:?}");
    assert!(
        phases.windows(2).all(|w| w[0].0 <= w[1].0),
        "times go backwards: {phases:?}"
    );
}
