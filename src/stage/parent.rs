//! The parent (host side): clone init into the new namespaces, write its id maps, release it,
//! then wait — enforcing the wall-clock timeout and forwarding the caller's signals — and turn
//! what happened into an outcome and an exit code (SPEC §4.5).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::exit;
use crate::plan::IdMap;
use crate::stage::channel::{self, LandlockLevel, Msg};
use crate::stage::init::{self, InitContext};
use crate::sys::clone::{Cloned, clone_into_namespaces};
use crate::sys::{proc as sproc, signal as ssig};

/// Grace between the timeout's SIGTERM and the SIGKILL of the whole pid namespace.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The payload exited (or could not be executed: 126/127).
    Exited,
    /// A signal calyx did not send killed the payload.
    Signaled,
    /// The wall-clock timeout ended it.
    Timeout,
    /// Refused before the payload ran.
    Rejected,
    /// The sandbox could not be set up; nothing ran.
    SetupFailed,
}

/// Resource usage measured with wait4 on init (covers every process init reaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// User CPU, milliseconds.
    pub cpu_user_ms: u64,
    /// System CPU, milliseconds.
    pub cpu_sys_ms: u64,
    /// Largest resident set of any single process, KiB.
    pub max_rss_kib: u64,
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Outcome.
    pub outcome: Outcome,
    /// calyx-run's exit code.
    pub exit_code: u8,
    /// Signal that killed the payload, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Landlock level and ABI reported by init.
    #[serde(skip)]
    pub landlock: Option<(LandlockLevel, u32)>,
    /// Why setup or exec failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the payload was started (STARTED written).
    pub started: bool,
    /// Measured usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Namespaces of every run: user first in the kernel's order, so the others are owned by it.
const NS_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// Runs the sandbox. `on_released` is called right after init is released to build the
/// sandbox: it writes exec_event.STARTED (synced) while init works on the other core, and
/// returns Err(reason) to abort the run. init forks the payload only after the parent's Start,
/// which is sent only once `on_released` succeeded: no run without its record.
pub fn run(
    ctx: &InitContext,
    uid_map: IdMap,
    gid_map: IdMap,
    timeout: Duration,
    on_released: &mut dyn FnMut() -> Result<(), String>,
) -> RunReport {
    let mut report = RunReport {
        outcome: Outcome::SetupFailed,
        exit_code: exit::SETUP_FAILED,
        signal: None,
        landlock: None,
        error: None,
        started: false,
        usage: None,
    };
    let fail = |mut r: RunReport, what: String| {
        r.error = Some(what);
        r
    };
    // Block before the clone: no SIGCHLD or caller signal can slip between clone and the
    // signalfd, and init inherits the blocked mask its own signalfd needs.
    if let Err(e) = ssig::block_handled() {
        return fail(report, format!("blocking signals: {e}"));
    }
    let sigfd = match ssig::signalfd_handled() {
        Ok(fd) => fd,
        Err(e) => return fail(report, format!("creating a signalfd: {e}")),
    };
    let (parent_end, init_end) = match channel::pair() {
        Ok(p) => p,
        Err(e) => return fail(report, format!("creating the channel: {e}")),
    };
    // The only clone of the run; the parent is single-threaded here (no thread was started).
    let (pid, pidfd) = match clone_into_namespaces(NS_FLAGS) {
        Err(e) => return fail(report, format!("clone into new namespaces: {e}")),
        Ok(Cloned::Child) => {
            // Close the parent's end at once so init sees EOF if the parent dies.
            drop(parent_end);
            drop(sigfd);
            init::run_init(ctx, init_end)
        }
        Ok(Cloned::Parent { pid, pidfd }) => (pid, pidfd),
    };
    drop(init_end);
    let kill_init = || {
        let _ = sproc::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
    };
    // setgroups must be denied before an unprivileged writer may write gid_map; the maps give
    // the payload exactly one id: the caller's.
    if let Err(e) = write_maps(pid, uid_map, gid_map) {
        kill_init();
        let _ = sproc::wait4(pid, false);
        return fail(report, e);
    }
    if let Err(e) = parent_end.send(Msg::Go) {
        kill_init();
        let _ = sproc::wait4(pid, false);
        return fail(report, format!("releasing init: {e}"));
    }
    match on_released() {
        Ok(()) => match parent_end.send(Msg::Start) {
            Ok(()) => report.started = true,
            Err(e) => report.error = Some(format!("starting the payload: {e}")),
        },
        Err(why) => {
            report.error = Some(why);
            kill_init();
        }
    }

    let mut exec_errno = None;
    let mut payload_status = None;
    let mut hash_mismatch = false;
    let mut timed_out = false;
    // The clock starts at the release of init, so a setup that hangs (a stuck mount source)
    // is bounded by the same limit as the payload.
    let mut deadline: Option<Instant> =
        (timeout > Duration::ZERO).then(|| Instant::now() + timeout);
    let mut setup_failed = false;
    let mut kill_at: Option<Instant> = None;
    let mut channel_open = true;
    let mut caller_signal = None;
    loop {
        let now = Instant::now();
        if let Some(d) = deadline.filter(|d| now >= *d) {
            // Timeout: SIGTERM reaches the payload through init, then the grace period.
            let _ = d;
            timed_out = true;
            deadline = None;
            let _ = sproc::pidfd_signal(pidfd.as_fd(), libc::SIGTERM);
            kill_at = Some(now + KILL_GRACE);
        }
        if kill_at.is_some_and(|k| now >= k) {
            // Killing pid 1 of the namespace kills every process in it, whatever it forked.
            kill_init();
            kill_at = None;
        }
        let wait_ms = [deadline, kill_at]
            .into_iter()
            .flatten()
            .map(|t| {
                t.saturating_duration_since(now)
                    .as_millis()
                    .min(i32::MAX as u128) as i32
            })
            .min()
            .unwrap_or(-1);
        let mut fds = vec![(pidfd.as_fd(), libc::POLLIN), (sigfd.as_fd(), libc::POLLIN)];
        if channel_open {
            fds.push((parent_end.fd(), libc::POLLIN));
        }
        let rev = match ssig::poll(&fds, wait_ms) {
            Ok(r) => r,
            Err(e) => {
                kill_init();
                report.error = Some(format!("poll: {e}"));
                break;
            }
        };
        if channel_open && rev[2] != 0 {
            match parent_end.recv() {
                Ok(Some(Msg::Ready { landlock, abi })) => report.landlock = Some((landlock, abi)),
                Ok(Some(Msg::SetupFailed { step, errno })) => {
                    setup_failed = true;
                    report.error = Some(format!(
                        "init could not {}: {}",
                        step.name(),
                        std::io::Error::from_raw_os_error(errno)
                    ));
                }
                Ok(Some(Msg::HashMismatch)) => hash_mismatch = true,
                Ok(Some(Msg::ExecFailed { errno })) => exec_errno = Some(errno),
                Ok(Some(Msg::Exited { status })) => payload_status = Some(status),
                Ok(Some(Msg::Go | Msg::Start)) | Err(_) | Ok(None) => channel_open = false,
            }
            continue;
        }
        if rev[1] != 0 {
            while let Ok(Some(sig)) = ssig::read_signal(sigfd.as_fd()) {
                if sig == libc::SIGCHLD {
                    continue;
                }
                // Caller's SIGINT/SIGTERM/SIGHUP: init forwards it to the payload; before the
                // payload exists there is nothing to forward to, so the setup is abandoned.
                caller_signal = Some(sig);
                if report.started {
                    let _ = sproc::pidfd_signal(pidfd.as_fd(), sig);
                } else {
                    kill_init();
                }
            }
        }
        if rev[0] != 0 {
            break;
        }
    }
    // init is gone (or going): reap it and collect what it reported last.
    let waited = sproc::wait4(pid, false);
    while channel_open {
        match parent_end.recv() {
            Ok(Some(Msg::ExecFailed { errno })) => exec_errno = Some(errno),
            Ok(Some(Msg::Exited { status })) => payload_status = Some(status),
            Ok(Some(Msg::HashMismatch)) => hash_mismatch = true,
            Ok(Some(Msg::SetupFailed { step, errno })) => {
                setup_failed = true;
                report.error = Some(format!(
                    "init could not {}: {}",
                    step.name(),
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            _ => channel_open = false,
        }
    }
    if let Ok(w) = waited {
        report.usage = Some(Usage {
            cpu_user_ms: w.user_us / 1000,
            cpu_sys_ms: w.sys_us / 1000,
            max_rss_kib: w.max_rss_kib,
        });
    }
    classify(
        &mut report,
        Classify {
            setup_failed,
            hash_mismatch,
            exec_errno,
            payload_status,
            timed_out,
            caller_signal,
            init_status: waited.ok().map(|w| w.status),
        },
    );
    report
}

struct Classify {
    setup_failed: bool,
    hash_mismatch: bool,
    exec_errno: Option<i32>,
    payload_status: Option<i32>,
    timed_out: bool,
    caller_signal: Option<i32>,
    init_status: Option<i32>,
}

fn classify(r: &mut RunReport, c: Classify) {
    let set = |r: &mut RunReport, o, code| {
        r.outcome = o;
        r.exit_code = code;
    };
    if c.hash_mismatch {
        r.error =
            Some("the executable's sha256 does not match the lease's commands entry".to_owned());
        return set(r, Outcome::Rejected, exit::REFUSED);
    }
    if c.timed_out {
        return set(r, Outcome::Timeout, exit::TIMEOUT);
    }
    // A step of init or of the payload child (seccomp) failed: nothing of the payload ran.
    if c.setup_failed {
        return set(r, Outcome::SetupFailed, exit::SETUP_FAILED);
    }
    if let Some(errno) = c.exec_errno {
        r.error = Some(format!("exec {}", std::io::Error::from_raw_os_error(errno)));
        let code = if errno == libc::ENOENT {
            exit::NOT_FOUND
        } else {
            exit::NOT_EXECUTABLE
        };
        return set(r, Outcome::Exited, code);
    }
    if !r.started {
        if let Some(sig) = c.caller_signal {
            r.signal = Some(sig);
            return set(r, Outcome::Signaled, 128u8.saturating_add(sig as u8));
        }
        if r.error.is_none() {
            r.error = Some(format!(
                "init ended before the payload started (wait status {:?})",
                c.init_status
            ));
        }
        return set(r, Outcome::SetupFailed, exit::SETUP_FAILED);
    }
    match c.payload_status.or(c.init_status) {
        Some(st) if libc::WIFEXITED(st) => set(r, Outcome::Exited, libc::WEXITSTATUS(st) as u8),
        Some(st) if libc::WIFSIGNALED(st) => {
            r.signal = Some(libc::WTERMSIG(st));
            set(
                r,
                Outcome::Signaled,
                128u8.saturating_add(libc::WTERMSIG(st) as u8),
            );
        }
        _ => {
            r.error = Some("lost track of the payload".to_owned());
            set(r, Outcome::SetupFailed, exit::SETUP_FAILED);
        }
    }
}

fn write_maps(pid: libc::pid_t, uid: IdMap, gid: IdMap) -> Result<(), String> {
    let base = format!("/proc/{pid}");
    let write = |file: &str, text: String| {
        std::fs::write(format!("{base}/{file}"), text.as_bytes())
            .map_err(|e| format!("writing {base}/{file}: {e}"))
    };
    write("setgroups", "deny".to_owned())?;
    write("gid_map", format!("{} {} 1\n", gid.inside, gid.outside))?;
    write("uid_map", format!("{} {} 1\n", uid.inside, uid.outside))
}
