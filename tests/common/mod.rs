//! Black-box harness for the real `calyx` and `calyx-run` binaries.
//!
//! Every run gets its own keys, trust policy, freshly issued and cosigned lease, state
//! directory and audit log under a per-test temp dir, so tests never share a ledger. Runs are
//! bounded on the test side ([`run_deadline`]): a hung sandbox fails the test instead of
//! hanging CI. Runs as `nobody` drop privileges with `setpriv`, the way an unprivileged CI job
//! would start calyx-run.
//!
//! Tier checks ([`tier_ready`]) decide whether a user tier can run on this host; a tier that
//! cannot run is printed loudly and, with `CI=true`, fails the test (SPEC §8).
#![allow(dead_code)]

mod sandbox;
pub use sandbox::*;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one calyx-run may take before the test gives up on it and kills it: 20 s on a
/// host; 120 s inside the VM tier, whose software emulation runs a sandbox about 13 times
/// slower (a 20 s bound there failed a healthy run on a loaded machine).
pub fn run_deadline() -> Duration {
    if in_vm_tier() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(20)
    }
}

/// Whether the tests run inside the VM tier's emulated guest (its init sets the variable).
pub fn in_vm_tier() -> bool {
    std::env::var_os("CALYX_VM_KERNEL").is_some()
}

/// The exit code every attack payload ends with when it got to its end: proves the payload ran
/// and calyx passed its exit code through.
pub const PAYLOAD_DONE: i32 = 42;

/// The interpreter payloads are written for; present on the host and in the default view.
pub const PYTHON: &str = "/usr/bin/python3";

const SETPRIV: &str = "/usr/bin/setpriv";
const NOBODY_UID: u32 = 65534;

/// Who starts calyx-run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// uid 0 on the host.
    Root,
    /// uid/gid 65534, no supplementary groups, via setpriv.
    Nobody,
}

impl User {
    /// Host uid of this user.
    pub fn uid(self) -> u32 {
        match self {
            User::Root => 0,
            User::Nobody => NOBODY_UID,
        }
    }

    /// The argv prefix that starts a command as this user (empty for root: the test runs as
    /// root).
    pub fn prefix(self) -> Vec<OsString> {
        match self {
            User::Root => Vec::new(),
            User::Nobody => [
                SETPRIV,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
        }
    }
}

/// Path of the `calyx` binary cargo built for this test.
pub fn calyx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calyx"))
}

/// Path of the `calyx-run` binary cargo built for this test.
pub fn run_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calyx-run"))
}

/// Whether `CI=true`: a tier that cannot run is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Why a user tier cannot run on this host, or `Ok` when it can. Probed once per process.
pub fn tier_status(user: User) -> Result<(), String> {
    static ROOT: OnceLock<Result<(), String>> = OnceLock::new();
    static NOBODY: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match user {
        User::Root => &ROOT,
        User::Nobody => &NOBODY,
    };
    cell.get_or_init(|| probe_tier(user)).clone()
}

fn probe_tier(user: User) -> Result<(), String> {
    // Both tiers need root on the test side: the root tier by definition, the nobody tier to
    // drop to uid 65534 and to prepare files owned by root that nobody must not be able to use.
    let euid = fs::metadata("/proc/self")
        .map_err(|e| format!("stat /proc/self: {e}"))?
        .uid();
    if euid != 0 {
        return Err(format!("the test runs as uid {euid}, not root"));
    }
    let max_userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map_err(|e| format!("read /proc/sys/user/max_user_namespaces: {e}"))?;
    if max_userns.trim() == "0" {
        return Err("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    if user == User::Nobody && !Path::new(SETPRIV).exists() {
        return Err(format!("{SETPRIV} is missing (util-linux)"));
    }
    // A real probe: the user must be able to create a user namespace, since that is what
    // calyx-run needs; this catches AppArmor or sysctl restrictions the files above miss.
    let mut probe = user.prefix();
    probe.extend(["/usr/bin/unshare", "--user", "--", "/usr/bin/true"].map(OsString::from));
    let status = Command::new(&probe[0])
        .args(&probe[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("spawn {:?}: {e}", probe[0]))?;
    if !status.success() {
        return Err(format!(
            "{user:?} cannot create a user namespace ({status})"
        ));
    }
    Ok(())
}

/// `CALYX_TEST_UNSANDBOXED=1`: a negative control for the suite itself. Commands run directly
/// on the host (as nobody only: root payloads would mount and rename the real host), so every
/// escape test is expected to FAIL; one that passes is not measuring calyx.
pub fn unsandboxed() -> bool {
    std::env::var_os("CALYX_TEST_UNSANDBOXED").is_some()
}

/// True when the tier can run. When it cannot: prints a loud SKIPPED line and returns false,
/// or panics when `CI=true`, so a CI run never passes by skipping.
pub fn tier_ready(user: User, test: &str) -> bool {
    if unsandboxed() && user == User::Root {
        eprintln!("*** SKIPPED {test} as root: CALYX_TEST_UNSANDBOXED runs nobody only ***");
        return false;
    }
    match tier_status(user) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !in_ci(),
                "tier {user:?} cannot run on this host and CI=true: {why}"
            );
            eprintln!("*** SKIPPED {test} as {user:?}: {why} ***");
            false
        }
    }
}

/// Generates `mod $name { fn root(); fn nobody(); }` calling `$name(User)` for both tiers.
macro_rules! both_users {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use super::common::{tier_ready, User};

            #[test]
            fn root() {
                if tier_ready(User::Root, stringify!($name)) {
                    super::$name(User::Root);
                }
            }

            #[test]
            fn nobody() {
                if tier_ready(User::Nobody, stringify!($name)) {
                    super::$name(User::Nobody);
                }
            }
        }
    )+};
}

/// What one finished process did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status, `None` when the test killed it at the deadline.
    pub status: Option<ExitStatus>,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code, or a panic naming what happened instead (deadline, signal).
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("process did not exit normally: {self}"),
        }
    }

    /// Panics with the whole outcome unless the exit code is `want`.
    pub fn assert_code(&self, want: i32) -> &Self {
        assert!(
            self.status.and_then(|s| s.code()) == Some(want),
            "expected exit code {want}, got: {self}"
        );
        self
    }

    /// Panics with the whole outcome unless stdout has a line equal to `line`.
    pub fn assert_line(&self, line: &str) -> &Self {
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == line),
            "expected a stdout line {line:?}, got: {self}"
        );
        self
    }

    /// The value after `key: ` on the first stdout line that starts with it.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}: ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::trim_end)
    }

    /// Panics unless stdout has `key: ` followed by one of `allowed`.
    pub fn assert_value_in(&self, key: &str, allowed: &[&str]) -> &Self {
        let got = self.value(key);
        assert!(
            got.is_some_and(|v| allowed.contains(&v)),
            "expected {key}: one of {allowed:?}, got {got:?} in: {self}"
        );
        self
    }

    /// Panics if `needle` appears anywhere in stdout or stderr.
    pub fn assert_absent(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "{needle:?} leaked into the output: {self}"
        );
        self
    }

    /// Panics unless stderr contains `needle` (case-insensitive).
    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected stderr to mention {needle:?}, got: {self}"
        );
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("KILLED by the test after {:?} (hung)", run_deadline()),
        };
        write!(
            f,
            "{status} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A process started in the background, with its output being collected.
pub struct Running {
    pub child: Child,
    argv_summary: Vec<String>,
    started: Instant,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Running {
    /// Starts `argv` with piped stdout/stderr, null stdin, extra env and an optional cwd.
    pub fn start(argv: &[OsString], env: &[(String, String)], cwd: Option<&Path>) -> Running {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let out = child.stdout.take().map(|mut s| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        });
        let err = child.stderr.take().map(|mut s| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        });
        // The last arguments say what ran; the payload source itself is left out.
        let argv_summary = argv
            .iter()
            .map(|a| a.to_string_lossy().chars().take(60).collect())
            .collect();
        Running {
            child,
            argv_summary,
            started: Instant::now(),
            out,
            err,
        }
    }

    /// Host pid of the started process (calyx-run itself: setpriv execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `deadline`; kills the process if it is still running then.
    pub fn finish(mut self, deadline: Duration) -> Outcome {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if self.started.elapsed() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let elapsed = self.started.elapsed();
        // The readers end when every holder of the pipes is gone; a sandbox that survived
        // its runner keeps them open, so do not wait for them forever.
        let stdout = join_reader(self.out.take(), Duration::from_secs(2));
        let stderr = join_reader(self.err.take(), Duration::from_secs(2));
        let out = Outcome {
            status,
            stdout,
            stderr,
            elapsed,
        };
        // CALYX_TEST_VERBOSE=1 shows every run, to review what the payloads really saw.
        let is_run = self.argv_summary.iter().any(|a| a.ends_with("calyx-run"));
        if is_run && std::env::var_os("CALYX_TEST_VERBOSE").is_some() {
            let tail = self.argv_summary.iter().rev().take(3).rev();
            eprintln!("=== … {:?}\n{out}", tail.collect::<Vec<_>>());
        }
        out
    }
}

fn join_reader(handle: Option<JoinHandle<String>>, grace: Duration) -> String {
    let Some(h) = handle else {
        return String::new();
    };
    let until = Instant::now() + grace;
    while !h.is_finished() && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        "<output pipe still held open by a surviving process>".to_owned()
    }
}

/// Runs a host command to completion (bounded), as root.
pub fn host(argv: &[&OsStr]) -> Outcome {
    let argv: Vec<OsString> = argv.iter().map(|a| a.to_os_string()).collect();
    Running::start(&argv, &[], None).finish(run_deadline())
}

/// Runs `calyx ARGS…` on the host as root and insists on success.
pub fn calyx_ok<S: AsRef<OsStr>>(args: &[S]) -> Outcome {
    let mut argv = vec![calyx_bin().into_os_string()];
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let out = Running::start(&argv, &[], None).finish(run_deadline());
    assert!(
        out.status.is_some_and(|s| s.success()),
        "calyx {argv:?} failed: {out}"
    );
    out
}

/// Runs a `calyx` command in this process, through the same parser and entry point as the
/// binary, and asserts it succeeded. For the lease every scenario issues and cosigns: three
/// process starts per run cost more than the sandboxed run itself under the VM tier's
/// emulation. The binary's own behaviour is tested by `cli_calyx` and the key fixture.
pub fn calyx_in_process<S: AsRef<OsStr>>(args: &[S]) {
    use clap::Parser as _;
    let argv: Vec<OsString> = std::iter::once(OsString::from("calyx"))
        .chain(args.iter().map(|a| a.as_ref().to_os_string()))
        .collect();
    let cli = calyx::cli::calyx::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("calyx {argv:?} does not parse: {e}"));
    let code = calyx::cli::calyx::run(cli);
    assert!(
        code == std::process::ExitCode::SUCCESS,
        "calyx {argv:?} failed: {code:?}"
    );
}

/// Sets the permission bits of `p`.
pub fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {p:?}: {e}"));
}

/// Changes the owner (uid and gid) of `p`.
pub fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {uid} {p:?}: {e}"));
}

/// Host pids whose command line contains `marker` (the test's own process excluded).
pub fn pids_with_marker(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs the given host pids (best effort; used to clean up after a failed test).
pub fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("/bin/kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A value unique to this test process and call, for secrets and markers.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Inserts `flags` into a calyx-run argv from `Sandbox::run_argv`, just before the `--` that
/// ends calyx-run's own flags (not setpriv's, which comes earlier).
pub fn insert_run_flags(argv: &mut Vec<OsString>, flags: &[&str]) {
    let lease = argv
        .iter()
        .position(|a| a == "--lease")
        .unwrap_or_else(|| panic!("no --lease in {argv:?}"));
    let end = lease
        + argv[lease..]
            .iter()
            .position(|a| a == "--")
            .unwrap_or_else(|| panic!("no -- in {argv:?}"));
    for (i, f) in flags.iter().enumerate() {
        argv.insert(end + i, OsString::from(f));
    }
}
