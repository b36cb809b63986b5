//! The parent (host side): clone init into the new namespaces, write its id maps, release it,
//! then wait — enforcing the wall-clock timeout and forwarding the caller's signals — and turn
//! what happened into an outcome and an exit code (SPEC §4.5).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::RunCgroup;
use crate::exit;
use crate::lease::model::HaltAction;
use crate::plan::IdMap;
use crate::sentinel::watch::{self, Applied, Ending, SentinelEvent, WatchConfig};
use crate::stage::channel::{self, LandlockLevel, Msg};
use crate::stage::init::{self, InitContext};
use crate::stage::resources::HaltInfo;
use crate::sys::clone::{Cloned, clone_into_namespaces, clone3_into_cgroup};
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
    /// A sentinel halt rule killed it.
    Halted,
    /// Refused before the payload ran.
    Rejected,
    /// The sandbox could not be set up; nothing ran.
    SetupFailed,
}

/// Resource usage: the processes init reaped up to the payload's exit (init's
/// `RUSAGE_CHILDREN`, sent with the exit; init's own wait4 when the payload never ended under
/// it) always; the cgroup's
/// counters (whole run, including what init never reaped) when the run had a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// User CPU, milliseconds (rusage).
    pub cpu_user_ms: u64,
    /// System CPU, milliseconds (rusage).
    pub cpu_sys_ms: u64,
    /// Largest resident set of any single process, KiB (rusage).
    pub max_rss_kib: u64,
    /// CPU time of the whole cgroup, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usec: Option<u64>,
    /// Peak memory of the cgroup, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// Peak number of processes of the cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_peak: Option<u64>,
    /// Bytes read from block devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_write_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the cgroup (0 when a halt rule came first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// The run's side of the caller: its audit records.
pub trait RunHooks {
    /// Called in the parent once init has its id maps and is released (the parent may start
    /// threads from the clone on): work that must be done before the payload starts can
    /// begin here and overlap the rest of the setup.
    fn cloned(&mut self) {}
    /// Called right after init is released: writes exec_event.STARTED (synced) while init
    /// works on the other core; Err(reason) aborts the run.
    fn released(&mut self) -> Result<(), String>;
    /// Called once the payload is released (Start sent): work only the end of the run needs
    /// starts here, beside the payload rather than beside the setup it would slow down.
    fn started(&mut self) {}
    /// A sentinel event (samples, warnings, halts), in order, from the parent's thread.
    fn sentinel_event(&mut self, event: &SentinelEvent);
}

/// The run's cgroup and how the sentinel watches it.
#[derive(Debug)]
pub struct Watched {
    /// The cgroup the sandbox is cloned into.
    pub cgroup: Arc<RunCgroup>,
    /// Parents to sweep for stale cgroups once the run is over.
    pub sweep: Option<crate::cgroup::Layout>,
    /// Sentinel configuration; `kill_pid` is filled in after the clone.
    pub config: WatchConfig,
}

/// How often the parent drains the sentinel's channel while nothing else wakes it: events
/// reach the audit log within this, and an idle run costs a few wake-ups a second.
const DRAIN_EVERY: Duration = Duration::from_millis(250);

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// The halt rule that ended (or froze) the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt: Option<HaltInfo>,
    /// The run was frozen by a rule at some point.
    #[serde(skip)]
    pub frozen: bool,
}

/// Namespaces of every run made by the clone: user first in the kernel's order, so the others
/// are owned by it. The network namespace is the seventh, made by init itself right after the
/// clone (see `init::run_init`), where it overlaps the parent's work.
const NS_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// When [`run`] returns, relative to init's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Once init has exited: every process of the run is gone (what copying artifacts out of
    /// the write grants needs).
    AfterInit,
    /// As soon as init reports the payload's exit: the closing record can be written while
    /// init tears the namespaces down (a few hundred microseconds), and [`Teardown`] reaps
    /// init before removing the cgroup, so nothing of the run outlives the caller's wait
    /// for it.
    AtPayloadExit,
}

/// Runs the sandbox. `hooks.released` is called right after init is released; init forks the
/// payload only after the parent's Start, which is sent only once it succeeded: no run
/// without its record. With `watched`, init is cloned into the run's cgroup and the sentinel
/// watches it from stage 7 to stage 15.
#[allow(clippy::too_many_arguments)]
pub fn run(
    ctx: &InitContext,
    uid_map: IdMap,
    gid_map: IdMap,
    timeout: Duration,
    hooks: &mut dyn RunHooks,
    watched: Option<Watched>,
    close: Close,
    teardown: &mut Teardown,
) -> RunReport {
    let mut report = RunReport {
        outcome: Outcome::SetupFailed,
        exit_code: exit::SETUP_FAILED,
        signal: None,
        landlock: None,
        error: None,
        started: false,
        usage: None,
        halt: None,
        frozen: false,
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
    let cgroup = watched.as_ref().map(|w| Arc::clone(&w.cgroup));
    let sweep = watched.as_ref().and_then(|w| w.sweep.clone());
    // Stage 15's removal happens however this function returns from here on.
    let mut cleanup = CgroupGuard(cgroup.clone());
    // Opened before the clone: the child must be born inside the cgroup (stage 4).
    let cgroup_fd = match cgroup.as_deref().map(RunCgroup::cgroup_fd_for_clone_into) {
        None => None,
        Some(Ok(fd)) => fd,
        Some(Err(e)) => return fail(report, e.to_string()),
    };
    // v1 hierarchies (hybrid/legacy): made right after the clone; init moves itself in
    // through these parent directories once told they exist (Msg::Join).
    let cgroup_join = match cgroup.as_deref().map(RunCgroup::v1_join).transpose() {
        Ok(join) => join.flatten(),
        Err(e) => return fail(report, e.to_string()),
    };
    // The only clone of the run; the parent is single-threaded here (the sentinel thread
    // starts after it). CLONE_INTO_CGROUP accounts init from its first instruction; only
    // ENOSYS (no clone3) falls back to a plain clone plus add_pid_v2 below.
    let mut place_v2 = false;
    let cloned = match &cgroup_fd {
        Some(fd) => match clone3_into_cgroup(NS_FLAGS, fd.as_fd()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                place_v2 = true;
                clone_into_namespaces(NS_FLAGS)
            }
            other => other,
        },
        None => clone_into_namespaces(NS_FLAGS),
    };
    let (pid, pidfd) = match cloned {
        Err(e) => return fail(report, format!("clone into new namespaces: {e}")),
        Ok(Cloned::Child) => {
            // The cgroup is the parent's to remove, never init's.
            std::mem::forget(cleanup);
            // Close the parent's end at once so init sees EOF if the parent dies.
            drop(parent_end);
            drop(sigfd);
            init::run_init(ctx, init_end, cgroup_join)
        }
        Ok(Cloned::Parent { pid, pidfd }) => (pid, pidfd),
    };
    crate::timeline::mark("cloned");
    drop(init_end);
    drop(cgroup_fd);
    let init_joins = cgroup_join.is_some();
    drop(cgroup_join);
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
    crate::timeline::mark("maps written, init released");
    // The v1 directories and their limits, made while init creates its network namespace
    // instead of before the clone, and before any thread of the runner starts: beside the
    // ledger's thread they took 0.79 ms instead of 0.24 ms, and start-up gained nothing;
    // here it gains 0.26-0.55 ms. Init's own setup is thus accounted to the runner's cgroup;
    // everything from the payload on is the run's. Every check that could refuse the run or
    // make it fall back was made before the clone (RunCgroup::prepare).
    if init_joins {
        let made = cgroup
            .as_deref()
            .map_or(Ok(()), RunCgroup::make_v1)
            .map_err(|e| format!("making the run's v1 cgroups: {e}"))
            .and_then(|()| {
                parent_end
                    .send(Msg::Join)
                    .map_err(|e| format!("letting init join its cgroups: {e}"))
            });
        if let Err(e) = made {
            kill_init();
            let _ = sproc::wait4(pid, false);
            return fail(report, e);
        }
        crate::timeline::mark("v1 cgroups made, init may join");
    }
    // Only now: a thread started before the maps are written competes with writing them,
    // and init can do nothing until it has them.
    hooks.cloned();
    // The ENOSYS fallback: init joins the v2 cgroup while STARTED is synced, and before
    // Start lets it fork the payload, so nothing the payload runs escapes accounting. Moving
    // another process waits for an RCU grace period (milliseconds); overlapping it with the
    // audit sync takes it off the start-up path. Only init's own setup pages stay charged to
    // the runner's cgroup.
    let (released, placed) = std::thread::scope(|scope| {
        let placing = cgroup
            .as_deref()
            .filter(|_| place_v2)
            .map(|cg| scope.spawn(move || cg.add_pid_v2(pid as u32).map_err(|e| e.to_string())));
        let released = hooks.released();
        let placed = placing.map_or(Ok(()), |h| {
            h.join()
                .unwrap_or_else(|_| Err("the placing thread panicked".to_owned()))
        });
        (released, placed)
    });
    let ready = released
        .and_then(|()| placed.map_err(|e| format!("placing init in the run's cgroup: {e}")));
    // Stage 7: the sentinel thread, once the use is granted and STARTED is on disk, while init
    // finishes its setup, and before Start: the payload never runs unwatched. Started right
    // after the maps, as before, it competed with init and the ledger's open for this
    // machine's two cores, in the stretch where init's setup is the whole start-up. (Threads
    // only after the clone: before a fork-style clone they would leave the child with locks
    // held by threads it does not have.)
    let (tx, rx) = mpsc::channel();
    let mut sentinel = match watched.filter(|_| ready.is_ok()) {
        None => None,
        Some(w) => {
            let config = WatchConfig {
                kill_pid: Some(pid as u32),
                ..w.config
            };
            match watch::start(w.cgroup, config, tx) {
                Ok(s) => Some(s),
                Err(e) => {
                    kill_init();
                    let _ = sproc::wait4(pid, false);
                    return fail(report, format!("starting the sentinel: {e}"));
                }
            }
        }
    };
    crate::timeline::mark("sentinel started");
    match ready {
        Ok(()) => match parent_end.send(Msg::Start) {
            Ok(()) => {
                crate::timeline::mark("payload released (Start sent)");
                report.started = true;
                hooks.started();
                // While the payload runs: its exit then costs only reading these.
                if let Some(s) = sentinel.as_mut() {
                    s.open_usage_files();
                }
            }
            Err(e) => report.error = Some(format!("starting the payload: {e}")),
        },
        Err(why) => {
            report.error = Some(why);
            kill_init();
        }
    }
    // Housekeeping beside the payload, not beside init's setup, where every runnable thread
    // delays the start on a small machine: cgroups left by SIGKILLed runners are swept on a
    // thread of their own, joined at the end; only where a parent has another subdirectory
    // than this run's (a stat of each), since the thread competes with the payload for the
    // machine's two cores (0.05-0.29 ms per run when started on every run).
    let own = cgroup.as_deref().map(|cg| cg.name().to_owned());
    let sweep = sweep.filter(|layout| crate::cgroup::may_hold_stale(layout, own.as_deref()));
    let sweeper = sweep.and_then(|layout| {
        std::thread::Builder::new()
            .name("calyx:sweep".into())
            .spawn(move || super::resources::sweep_stale(&layout, own.as_deref()))
            .ok()
    });

    let mut exec_errno = None;
    let mut payload_status = None;
    let mut payload_usage = None;
    let mut network = None;
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
    let mut halted = false;
    loop {
        // Sentinel events first: a halt explains the death of init that may follow.
        while let Ok(ev) = rx.try_recv() {
            if note_event(&mut report, &ev) {
                halted = true;
                // A kill rule whose kill failed: pid 1 still takes the namespace down.
                if matches!(
                    ev,
                    SentinelEvent::Halted {
                        applied: Applied::Failed(_),
                        ..
                    }
                ) {
                    kill_init();
                }
            }
            hooks.sentinel_event(&ev);
        }
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
            // The whole cgroup first (cgroup.kill or a freezer sweep, which also ends a frozen
            // run); killing pid 1 then ends the pid namespace, whatever it forked.
            if let Some(cg) = &cgroup {
                let _ = cg.kill(None);
                let _ = cg.thaw();
            }
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
            .chain(sentinel.is_some().then_some(DRAIN_EVERY.as_millis() as i32))
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
            let (msg, passed) = match parent_end.recv_with_fd() {
                Ok((m, fd)) => (Ok(m), fd),
                Err(e) => (Err(e), None),
            };
            match msg {
                Ok(Some(Msg::Network)) => {
                    if network.is_none() && passed.is_some() {
                        crate::timeline::mark("network namespace held (passed by init)");
                    }
                    network = network.or(passed);
                }
                Ok(Some(Msg::Ready { landlock, abi })) => {
                    crate::timeline::mark("init ready (view built, confined)");
                    report.landlock = Some((landlock, abi))
                }
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
                Ok(Some(Msg::Exited { status, usage })) => {
                    crate::timeline::mark("payload exited");
                    payload_status = Some(status);
                    payload_usage = Some(usage);
                    // The payload is reaped: its usage is final. Closing now, this thread
                    // takes the last reading below; otherwise the sentinel takes it while
                    // init's namespaces are torn down.
                    if close == Close::AtPayloadExit {
                        break;
                    }
                    if let Some(s) = &sentinel {
                        s.request_stop();
                    }
                }
                Ok(Some(Msg::Go | Msg::Start | Msg::Join)) | Err(_) | Ok(None) => {
                    channel_open = false
                }
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
    // Closing at the payload's exit: init (still tearing down) is reaped by the teardown.
    // Otherwise init is gone (or going): reap it and collect what it reported last.
    let early = close == Close::AtPayloadExit && payload_status.is_some();
    let waited = (!early).then(|| {
        let w = sproc::wait4(pid, false);
        crate::timeline::mark("init reaped");
        w
    });
    while channel_open && !early {
        match parent_end.recv() {
            Ok(Some(Msg::ExecFailed { errno })) => exec_errno = Some(errno),
            Ok(Some(Msg::Exited { status, usage })) => {
                payload_status = Some(status);
                payload_usage = Some(usage);
            }
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
    // Stage 15: stop the sentinel (its last reading completes the usage) and record what it
    // saw last; `cleanup` then kills whatever is left and removes the cgroup.
    let (cg_usage, watcher) = match sentinel {
        Some(s) if early => {
            let (usage, ending) = s.finish();
            (Some(usage), Some(ending))
        }
        Some(s) => (Some(s.stop()), None),
        None => (None, None),
    };
    crate::timeline::mark("sentinel stopped (last reading)");
    while let Ok(ev) = rx.try_recv() {
        halted |= note_event(&mut report, &ev);
        hooks.sentinel_event(&ev);
    }
    // What init reaped up to the payload's exit; init's own wait4 when the payload never
    // ended under it (setup failures, a killed init).
    let init_waited = waited.as_ref().and_then(|w| w.as_ref().ok());
    let reaped = payload_usage.or(init_waited.map(channel::Reaped::of));
    if let Some(r) = reaped {
        let u = cg_usage.unwrap_or_default();
        report.usage = Some(Usage {
            cpu_user_ms: r.user_us / 1000,
            cpu_sys_ms: r.sys_us / 1000,
            max_rss_kib: r.max_rss_kib,
            cpu_usec: u.cpu_usec,
            memory_peak_bytes: u.memory_peak,
            pids_peak: u.pids_peak,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            oom_kills: u.oom_kills,
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
            halted,
            caller_signal,
            init_status: init_waited.map(|w| w.status),
        },
    );
    // Said plainly: a SIGKILL from the OOM killer at the memory limit is not a mystery signal.
    let oom = report.usage.and_then(|u| u.oom_kills).unwrap_or(0);
    if oom > 0 && report.outcome == Outcome::Signaled && report.error.is_none() {
        report.error = Some(format!(
            "the kernel's OOM killer killed {oom} process(es) at the run's memory limit"
        ));
    }
    // The report is final; reaping init (when not yet done) and removing the cgroup overlap
    // the sync of the closing audit record. The caller waits for both (and the sweep) before
    // exiting.
    let unreaped = early.then_some((pid, pidfd));
    *teardown = Teardown::start(cleanup.0.take(), sweeper, unreaped, watcher);
    teardown.network = network;
    report
}

/// Stage 15 beside the closing record: reaping init when the run closed at the payload's
/// exit, then removing the cgroup; it also collects the sweep for cgroups of SIGKILLed
/// runners. It runs on the sentinel's thread once its watch is over, or on a thread of its
/// own where there is no sentinel. [`Teardown::wait`] (or dropping it) waits for all of it.
#[derive(Debug, Default)]
pub struct Teardown {
    joiner: Option<Joiner>,
    /// The sandbox's network namespace, which init passes over the channel (`Msg::Network`)
    /// as soon as it has made it, held until the teardown is waited for. The kernel takes a
    /// network namespace apart (`cleanup_net`, on a kernel worker) once its last reference is
    /// gone: with init's, that was at init's exit, and its 0.6 ms of work competed with the
    /// run's closing steps (receipt, closing record, teardown) for this machine's two cores.
    /// Held here, it goes once the run's account is written. Nothing depends on it: a run
    /// without it (init could not pass it) only closes a little slower.
    network: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug)]
enum Joiner {
    Own(std::thread::JoinHandle<()>),
    Sentinel(std::thread::JoinHandle<crate::sentinel::watch::Usage>),
}

type TeardownWork = Box<dyn FnOnce() + Send>;

impl Teardown {
    fn start(
        cgroup: Option<Arc<RunCgroup>>,
        sweeper: Option<std::thread::JoinHandle<()>>,
        unreaped: Option<(libc::pid_t, std::os::fd::OwnedFd)>,
        watcher: Option<Ending>,
    ) -> Self {
        if cgroup.is_none() && sweeper.is_none() && unreaped.is_none() && watcher.is_none() {
            return Self::default();
        }
        let work: TeardownWork = Box::new(move || {
            if let Some((pid, pidfd)) = unreaped {
                // init ends on its own once the payload is gone (and the kernel empties its
                // pid namespace before init's exit completes). One still there after the
                // grace (frozen by a rule in the moment the payload ended, say) is killed
                // with its cgroup, thawed, so that this wait has an end.
                let gone = ssig::poll(&[(pidfd.as_fd(), libc::POLLIN)], grace_ms())
                    .is_ok_and(|rev| rev[0] != 0);
                if !gone {
                    if let Some(cg) = cgroup.as_deref() {
                        let _ = cg.kill(None);
                        let _ = cg.thaw();
                    }
                    let _ = sproc::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
                }
                let _ = sproc::wait4(pid, false);
                crate::timeline::mark("init reaped");
            }
            finish_cgroup(cgroup.as_deref());
            if let Some(h) = sweeper {
                let _ = h.join();
            }
        });
        // The sentinel's watcher, finished at the payload's exit, acts no more: its thread
        // takes the work (and so is done watching before the cgroup goes).
        let work = match watcher {
            Some(w) => match w.hand_over(work) {
                Ok(handle) => return Self::joining(Joiner::Sentinel(handle)),
                Err(work) => work,
            },
            None => work,
        };
        // Shared so that a failed spawn leaves the work here to be done on this thread.
        let slot = Arc::new(std::sync::Mutex::new(Some(work)));
        let theirs = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("calyx:teardown".into())
            .spawn(move || take_work(&theirs).map_or((), |w| w()));
        match spawned {
            Ok(h) => Self::joining(Joiner::Own(h)),
            Err(e) => {
                eprintln!("calyx-run: starting the teardown thread: {e} (tearing down here)");
                if let Some(w) = take_work(&slot) {
                    w();
                }
                Self::default()
            }
        }
    }

    fn joining(joiner: Joiner) -> Self {
        Self {
            joiner: Some(joiner),
            network: None,
        }
    }

    /// Waits for the removal to finish.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        match self.joiner.take() {
            Some(Joiner::Own(h)) => drop(h.join()),
            Some(Joiner::Sentinel(h)) => drop(h.join()),
            None => {}
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.join();
    }
}

/// [`KILL_GRACE`] in milliseconds, for poll.
fn grace_ms() -> i32 {
    i32::try_from(KILL_GRACE.as_millis()).unwrap_or(i32::MAX)
}

fn take_work(slot: &std::sync::Mutex<Option<TeardownWork>>) -> Option<TeardownWork> {
    match slot.lock() {
        Ok(mut w) => w.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

struct Classify {
    setup_failed: bool,
    hash_mismatch: bool,
    exec_errno: Option<i32>,
    payload_status: Option<i32>,
    timed_out: bool,
    halted: bool,
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
    // The sentinel killed the run: whatever the payload's status says, the rule ended it.
    if c.halted {
        return set(r, Outcome::Halted, exit::HALTED);
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

/// Records a halt in the report; true when the run was killed by a rule.
fn note_event(report: &mut RunReport, ev: &SentinelEvent) -> bool {
    let SentinelEvent::Halted { decision, applied } = ev else {
        return false;
    };
    let (name, killed) = match applied {
        Applied::Killed(_) => ("kill", true),
        Applied::Frozen(_) => ("freeze", false),
        Applied::Failed(_) => ("failed", decision.action() == HaltAction::Kill),
    };
    report.frozen |= matches!(applied, Applied::Frozen(_));
    // A kill outranks an earlier freeze in the result.
    if killed || report.halt.is_none() {
        report.halt = Some(HaltInfo {
            rule: decision.rule.clone(),
            value: decision.value,
            threshold: decision.threshold,
            applied: name,
        });
    }
    killed
}

/// Runs [`finish_cgroup`] when dropped.
struct CgroupGuard(Option<Arc<RunCgroup>>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        finish_cgroup(self.0.as_deref());
    }
}

/// Kills what is left in the run's cgroup and removes it. A failure is reported on stderr;
/// the next run's stale sweep removes what stays behind.
fn finish_cgroup(cgroup: Option<&RunCgroup>) {
    let Some(cg) = cgroup else { return };
    if cg.populated().unwrap_or(true) {
        let _ = cg.kill(None);
        let _ = cg.thaw();
    }
    if let Err(e) = cg.remove() {
        eprintln!("calyx-run: {e} (the next run removes it)");
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Closing at the payload's exit leaves init to the teardown. An init that does not end
    /// on its own (frozen by a rule, say) is killed after the grace: the teardown, which
    /// calyx-run waits for before it exits, always ends, and reaps it.
    // The child is reaped by the teardown's wait4, which is what this checks.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn teardown_kills_and_reaps_an_init_that_does_not_end() {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let pidfd = sproc::pidfd_open(pid).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            Teardown::start(None, None, Some((pid, pidfd)), None).wait();
            let _ = tx.send(());
        });
        rx.recv_timeout(KILL_GRACE + Duration::from_secs(30))
            .expect("the teardown never ended");
        // Reaped by the teardown: no such child any more.
        assert!(sproc::wait4(pid, true).is_err());
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
