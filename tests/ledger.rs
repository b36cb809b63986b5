//! The lease ledger end to end (issue 6, SPEC §5): `max_uses` holds exactly under 50
//! concurrent calyx-run processes, revocation refuses with its reason, `calyx lease list`
//! shows uses left, and a ledger that cannot be written refuses the run (125) before anything
//! runs. Each payload appends one line to a marker file in a write grant, so "ran" is counted
//! on the host, not taken from calyx's word. Every case runs as root and as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Outcome, Running, Sandbox, User, calyx_bin, chown, run_deadline, set_mode};

both_users!(
    fifty_concurrent_runs_of_a_single_use_lease,
    fifty_concurrent_runs_of_a_three_use_lease,
    revoked_lease_is_refused_with_the_reason,
    list_shows_uses_left_and_last_outcome,
    unusable_ledger_refuses_before_anything_runs,
);

/// Only meaningful for an unprivileged caller: root may write a root-owned directory.
#[test]
fn state_dir_not_writable_as_nobody() {
    if common::tier_ready(User::Nobody, "state_dir_not_writable") {
        state_dir_not_writable(User::Nobody);
    }
}

/// Another process holds the ledger's write lock past the busy timeout (15 s): the run is
/// refused with 125 and the reason, and nothing runs unrecorded. Root only: the lock holder
/// is this test process, and the case is the same for every caller.
#[test]
fn ledger_locked_past_the_busy_timeout_refuses_as_root() {
    if !common::tier_ready(User::Root, "ledger_locked_past_the_busy_timeout") {
        return;
    }
    let user = User::Root;
    let mut s = Scene::new(5);
    let lease = s.sb.prepared_lease();
    s.run(user, &lease).assert_code(0);
    // The lease's file in the ledger, locked as a runner in the middle of its use holds it.
    let files: Vec<_> = fs::read_dir(s.sb.state_dir().join("ledger"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "lease"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let holder = fs::File::open(&files[0]).unwrap();
    calyx::sys::lock::lock_exclusive(holder.as_fd()).unwrap();
    let out = s.run(user, &lease);
    calyx::sys::lock::unlock(holder.as_fd()).unwrap();
    out.assert_code(125)
        .assert_stderr_has("stayed locked")
        .assert_stderr_has("refusing");
    assert!(out.elapsed.as_secs() >= 14, "gave up early: {out}");
    assert_eq!(s.ran(), 1, "ran without its use recorded: {out}");
    assert_eq!(s.audit_count("exec_event.STARTED"), 1);
    // Released, the lease has its uses left: the refused run consumed none.
    s.run(user, &lease).assert_code(0);
    let rows: serde_json::Value =
        serde_json::from_str(&s.calyx(user, &["lease", "list", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["used"], 2, "{rows}");
}

/// A lease allowing `/bin/sh -c *` with `max_uses`, whose payload appends to `work/marker`.
struct Scene {
    sb: Sandbox,
    marker: PathBuf,
    script: String,
}

impl Scene {
    fn new(max_uses: u32) -> Scene {
        let sb = Sandbox::new();
        let work = sb.mkdir("work", 0o755);
        let marker = work.join("marker");
        let script = format!("echo ran >> {}", marker.display());
        let sb = sb
            .write(&work)
            .commands(&["/bin/sh -c *"])
            .issue_arg("--max-uses")
            .issue_arg(&max_uses.to_string());
        Scene { sb, marker, script }
    }

    fn spawn(&mut self, user: User, lease: &Path) -> Running {
        let script = self.script.clone();
        self.sb
            .spawn_with_lease(user, lease, &["/bin/sh", "-c", &script])
    }

    fn run(&mut self, user: User, lease: &Path) -> Outcome {
        self.spawn(user, lease).finish(run_deadline())
    }

    /// Lines the payloads appended: how many runs really ran.
    fn ran(&self) -> usize {
        fs::read_to_string(&self.marker)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn audit_count(&self, event: &str) -> usize {
        self.sb
            .audit_text()
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    }

    /// `calyx lease verify LEASE --trust TRUST --state-dir STATE` as `user`.
    fn verify(&self, user: User, lease: &Path) -> Outcome {
        let trust = self.sb.trust().to_str().unwrap().to_owned();
        self.calyx(
            user,
            &[
                "lease",
                "verify",
                lease.to_str().unwrap(),
                "--trust",
                &trust,
            ],
        )
    }

    /// `calyx ARGS… --state-dir STATE` as `user`.
    fn calyx(&self, user: User, args: &[&str]) -> Outcome {
        let mut argv = user.prefix();
        argv.push(calyx_bin().into_os_string());
        argv.extend(args.iter().map(OsString::from));
        argv.push("--state-dir".into());
        argv.push(self.sb.state_dir().into_os_string());
        Running::start(&argv, &[], None).finish(run_deadline())
    }
}

/// Starts `n` calyx-run processes with one lease at once; checks that exactly `max` ran and
/// every other one was refused by the ledger with 77 and `lease_event.REJECTED`.
fn concurrent(user: User, max: u32, n: usize) {
    let mut s = Scene::new(max);
    let lease = s.sb.prepared_lease();
    let started = Instant::now();
    let running: Vec<Running> = (0..n).map(|_| s.spawn(user, &lease)).collect();
    let outs: Vec<Outcome> = running
        .into_iter()
        .map(|r| r.finish(run_deadline()))
        .collect();
    let wall = started.elapsed();
    eprintln!("{n} concurrent calyx-run as {user:?}, max_uses {max}: {wall:?} wall");
    let ok = outs.iter().filter(|o| o.code() == 0).count();
    let refused: Vec<&Outcome> = outs.iter().filter(|o| o.code() == 77).collect();
    let other: Vec<String> = outs
        .iter()
        .filter(|o| !matches!(o.code(), 0 | 77))
        .map(|o| o.to_string())
        .collect();
    assert!(
        other.is_empty(),
        "runs neither ran nor were refused: {other:#?}"
    );
    assert_eq!(ok, max as usize, "runs that exited 0");
    assert_eq!(refused.len(), n - max as usize);
    let want = format!("used {max} of {max} time(s)");
    for o in &refused {
        o.assert_stderr_has(&want);
    }
    assert_eq!(s.ran(), max as usize, "lines in the marker: runs that ran");
    assert_eq!(s.audit_count("exec_event.STARTED"), max as usize);
    assert_eq!(s.audit_count("lease_event.REJECTED"), n - max as usize);
    let listed = s.calyx(user, &["lease", "list", "--json"]);
    listed.assert_code(0);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows[0]["used"], max, "{rows}");
    assert_eq!(rows[0]["uses_left"], 0, "{rows}");
    // Not valid now: every use is spent.
    s.verify(user, &lease)
        .assert_code(77)
        .assert_stderr_has(&format!("used {max} of {max} time(s)"));
}

fn fifty_concurrent_runs_of_a_single_use_lease(user: User) {
    concurrent(user, 1, 50);
}

fn fifty_concurrent_runs_of_a_three_use_lease(user: User) {
    concurrent(user, 3, 50);
}

fn revoked_lease_is_refused_with_the_reason(user: User) {
    let mut s = Scene::new(5);
    let lease = s.sb.prepared_lease();
    s.run(user, &lease).assert_code(0);
    s.verify(user, &lease).assert_code(0);
    // Revoked through its file by the same user who runs it.
    let lease_s = lease.to_str().unwrap().to_owned();
    let out = s.calyx(
        user,
        &[
            "lease",
            "revoke",
            &lease_s,
            "--reason",
            "cosigner key leaked",
        ],
    );
    out.assert_code(0);
    assert!(out.stdout.contains("cosigner key leaked"), "{out}");
    let out = s.run(user, &lease);
    out.assert_code(77)
        .assert_stderr_has("revoked at")
        .assert_stderr_has("cosigner key leaked");
    assert_eq!(s.ran(), 1, "the revoked lease ran again: {out}");
    // `calyx lease verify` says so as well: the lease is not valid now.
    let out = s.verify(user, &lease);
    out.assert_code(77)
        .assert_stderr_has("refused by the ledger")
        .assert_stderr_has("cosigner key leaked");
    let audit = s.sb.audit_text();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("lease_event.REVOKED") && l.contains("cosigner key leaked")),
        "no REVOKED record:\n{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("lease_event.REJECTED") && l.contains("cosigner key leaked")),
        "no REJECTED record with the revocation's reason:\n{audit}"
    );
    assert_eq!(s.audit_count("exec_event.STARTED"), 1);

    // Revoked by id before its first use: refused at once.
    // (A new lease gets a new state dir from the harness: made here for the user first.)
    let fresh = s.sb.prepared_lease();
    let id = lease_id(&fresh);
    fs::create_dir_all(s.sb.state_dir()).unwrap();
    chown(&s.sb.state_dir(), user.uid());
    s.calyx(user, &["lease", "revoke", &id]).assert_code(0);
    s.run(user, &fresh)
        .assert_code(77)
        .assert_stderr_has("no reason given");
    assert_eq!(s.ran(), 1);
}

/// The lease id `calyx lease issue` wrote into a lease file's payload.
fn lease_id(lease: &Path) -> String {
    use base64::Engine;
    let env: serde_json::Value = serde_json::from_slice(&fs::read(lease).unwrap()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    p["lease_id"].as_str().unwrap().to_owned()
}

fn list_shows_uses_left_and_last_outcome(user: User) {
    let mut s = Scene::new(3);
    let lease = s.sb.prepared_lease();
    let id = lease_id(&lease);
    for _ in 0..2 {
        s.run(user, &lease).assert_code(0);
    }
    let out = s.calyx(user, &["lease", "list", "--json"]);
    out.assert_code(0);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["lease_id"], id.as_str());
    assert_eq!(row["intent_id"], "INT-test");
    assert_eq!(row["subject"], "test");
    assert_eq!(
        (row["used"].as_u64(), row["max_uses"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(row["uses_left"], 1);
    assert_eq!(row["last_outcome"], "exited");
    assert_eq!(row["last_exit_code"], 0);
    assert!(row["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(row["revoked"], serde_json::Value::Null);
    let verified = s.verify(user, &lease);
    verified.assert_code(0);
    assert!(
        verified.stdout.contains("; 2 of 3 use(s) taken (ledger "),
        "{verified}"
    );
    let text = s.calyx(user, &["lease", "list"]);
    text.assert_code(0);
    let line = text.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        line.contains("2/3") && line.contains("exited (0)"),
        "{text}"
    );
}

/// The ledger's directory is taken by a file, or the state dir is writable by others: 125,
/// nothing ran, no start record.
fn unusable_ledger_refuses_before_anything_runs(user: User) {
    let mut s = Scene::new(5);
    let lease = s.sb.prepared_lease();
    let state = s.sb.state_dir();
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join("ledger"), "").unwrap();
    let out = s.run(user, &lease);
    out.assert_code(125)
        .assert_stderr_has(&format!("{}/ledger", state.display()));
    assert_eq!(s.ran(), 0, "ran without a ledger: {out}");
    assert_eq!(s.audit_count("exec_event.STARTED"), 0);

    fs::remove_file(state.join("ledger")).unwrap();
    let argv =
        s.sb.run_argv(user, &lease, &["/bin/sh", "-c", &s.script.clone()]);
    set_mode(&state, 0o777);
    let out = Running::start(&argv, &[], None).finish(run_deadline());
    out.assert_code(125).assert_stderr_has("chmod 700");
    assert_eq!(s.ran(), 0, "ran with an unsafe ledger: {out}");
    set_mode(&state, 0o700);
    // The same lease runs once the ledger is usable: nothing was consumed.
    s.run(user, &lease).assert_code(0);
    assert_eq!(s.ran(), 1);
}

/// nobody may not create the ledger in a root-owned state dir (its audit log is writable, so
/// the ledger is what refuses).
fn state_dir_not_writable(user: User) {
    let mut s = Scene::new(5);
    let lease = s.sb.prepared_lease();
    let state = s.sb.state_dir();
    let argv =
        s.sb.run_argv(user, &lease, &["/bin/sh", "-c", &s.script.clone()]);
    let audit = state.join("audit.jsonl");
    fs::write(&audit, "").unwrap();
    chown(&audit, user.uid());
    set_mode(&audit, 0o600);
    chown(&state, 0);
    set_mode(&state, 0o755);
    let out = Running::start(&argv, &[], None).finish(run_deadline());
    out.assert_code(125)
        .assert_stderr_has(&format!("{}/ledger", state.display()));
    assert_eq!(s.ran(), 0, "ran without a ledger: {out}");
    assert_eq!(s.audit_count("exec_event.STARTED"), 0);
}
