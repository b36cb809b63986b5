//! The watcher thread: wakes on cgroup events (inotify on `*.events`), on PSI triggers
//! (POLLPRI on `memory.pressure`) and on a timer, samples the run's cgroup, applies the halt
//! rules through the cgroup module and reports over a channel. It never busy-loops: between
//! wake-ups it sleeps in poll(2).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::SentinelError;
use super::rules::{Decision, Evaluator};
use super::stats::{Sample, StatSource, UsageFiles};
use super::thresholds::{self, MemThresholds};
use crate::cgroup::{CgroupError, FreezeMethod, KillMethod, RunCgroup};
use crate::lease::model::{HaltAction, HaltMetric, HaltRule};
use crate::sys::cgroup_sys::{self, Inotify, Interest};

/// A PSI trigger: wake when tasks stall `stall_us` within `window_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiTrigger {
    /// Stall time that fires the trigger.
    pub stall_us: u64,
    /// Window; unprivileged callers need a multiple of 2 s.
    pub window_us: u64,
}

impl Default for PsiTrigger {
    fn default() -> Self {
        Self {
            stall_us: 150_000,
            window_us: 2_000_000,
        }
    }
}

/// How the watcher runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Effective halt rules (see [`super::policy::merge`]).
    pub rules: Vec<HaltRule>,
    /// Sampling interval while rules are active. The default, 25 ms, keeps a halt within
    /// tens of ms of the breach (tick phase plus kill) while a tick reads one or two files.
    pub rule_interval: Duration,
    /// Sampling interval while every rule is calm (see [`Evaluator::is_calm`]).
    pub calm_interval: Duration,
    /// Interval of `resource_event.MONITORED` samples; `None` for none.
    pub monitor_interval: Option<Duration>,
    /// PSI trigger on memory.pressure, where the cgroup has one.
    pub psi_trigger: Option<PsiTrigger>,
    /// pid 1 of the sandbox, for killing where neither cgroup.kill nor a freezer exists.
    pub kill_pid: Option<u32>,
    /// Output bytes counted by the runner, for `output_bytes` rules.
    pub output_bytes: Option<Arc<AtomicU64>>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            rule_interval: Duration::from_millis(25),
            calm_interval: Duration::from_millis(100),
            monitor_interval: Some(Duration::from_secs(5)),
            psi_trigger: Some(PsiTrigger::default()),
            kill_pid: None,
            output_bytes: None,
        }
    }
}

/// What a halt did.
#[derive(Debug)]
pub enum Applied {
    /// Frozen; the run waits for a human.
    Frozen(FreezeMethod),
    /// Killed.
    Killed(KillMethod),
    /// The action failed.
    Failed(CgroupError),
}

/// What the watcher reports.
#[derive(Debug)]
pub enum SentinelEvent {
    /// A periodic sample, or a `warn` rule firing (with `warning` set).
    Monitored {
        /// ms since the watch started.
        at_ms: u64,
        /// The sample.
        sample: Sample,
        /// The warn rule that fired, if that is why this event was sent.
        warning: Option<Decision>,
    },
    /// A freeze or kill rule fired and was acted on.
    Halted {
        /// The rule, value and threshold.
        decision: Decision,
        /// What happened.
        applied: Applied,
    },
    /// Reading the statistics failed (the watcher keeps going).
    ReadFailed(SentinelError),
    /// A wake-up source could not be set up; the watcher samples instead.
    Degraded {
        /// Which source.
        what: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SentinelEvent {
    /// The audit event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::Halted { .. } => "resource_event.HALTED",
            _ => "resource_event.MONITORED",
        }
    }

    /// The event's own fields for the audit record (time, host and ids are the caller's).
    pub fn audit_fields(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Monitored {
                at_ms,
                sample,
                warning,
            } => {
                json!({ "at_ms": at_ms, "sample": sample, "warning": warning })
            }
            Self::Halted { decision, applied } => {
                let (action, method, error) = match applied {
                    Applied::Frozen(m) => ("freeze", format!("{m:?}"), None),
                    Applied::Killed(m) => ("kill", format!("{m:?}"), None),
                    Applied::Failed(e) => ("failed", String::new(), Some(e.to_string())),
                };
                json!({
                    "rule": decision.rule,
                    "value": decision.value,
                    "threshold": decision.threshold,
                    "breach_since_ms": decision.breach_since_ms,
                    "at_ms": decision.at_ms,
                    "applied": action,
                    "method": method,
                    "error": error,
                })
            }
            Self::ReadFailed(e) => json!({ "error": e.to_string() }),
            Self::Degraded { what, path, source } => {
                json!({ "degraded": what, "path": path, "error": source.to_string() })
            }
        }
    }
}

/// Usage of the run, for the result and the receipt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// CPU time in µs.
    pub cpu_usec: Option<u64>,
    /// Peak memory in bytes.
    pub memory_peak: Option<u64>,
    /// Peak processes.
    pub pids_peak: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: Option<u64>,
}

impl Usage {
    /// Fold in a sample: kernel peaks where offered, else the highest value seen.
    pub fn update(&mut self, s: &Sample) {
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        self.cpu_usec = s.cpu_usec.or(self.cpu_usec);
        self.memory_peak = max(max(self.memory_peak, s.memory_peak), s.memory_bytes);
        self.pids_peak = max(max(self.pids_peak, s.pids_peak), s.pids);
        self.io_read_bytes = s.io_read_bytes.or(self.io_read_bytes);
        self.io_write_bytes = s.io_write_bytes.or(self.io_write_bytes);
        self.oom_kills = max(self.oom_kills, s.oom_kills);
    }
}

/// A running watcher. Stop it with [`Sentinel::stop`] or [`Sentinel::finish`] before removing
/// the cgroup.
#[derive(Debug)]
pub struct Sentinel {
    stop: UnixStream,
    /// Where [`Ending::hand_over`] sends the work the thread runs after its watch; dropped
    /// without sending, the thread just ends.
    after: Sender<AfterWork>,
    thread: JoinHandle<Usage>,
    /// Where the run's statistics are, for a last reading taken by [`Sentinel::finish`].
    source: StatSource,
    /// Closed by [`Sentinel::finish`], which then takes the usage the watcher saw and the
    /// last reading itself, without waiting for the watcher's end.
    gate: Arc<Mutex<Gate>>,
    /// The last reading's files, opened ahead by [`Sentinel::open_usage_files`].
    usage_files: Option<UsageFiles>,
}

/// What the watcher shares with [`Sentinel::finish`]. The watcher holds the lock for each
/// round of work (a reading, the rules, their actions, the events they send) and ends at the
/// first round that finds it closed; so once `finish` has closed it, every event the watcher
/// will ever send is in the channel, and it acts on the cgroup no more.
#[derive(Debug, Default)]
struct Gate {
    closed: bool,
    /// Everything seen so far (the watcher's own account, updated each round).
    usage: Usage,
}

/// Work for the watcher's thread to run once its watch is over ([`Ending::hand_over`]).
pub type AfterWork = Box<dyn FnOnce() + Send>;

/// The watcher thread of a finished sentinel, to be stopped and joined once the run no longer
/// waits on it ([`Sentinel::finish`]), or handed the run's teardown ([`Ending::hand_over`]).
/// Dropping it stops and joins it.
#[derive(Debug)]
pub struct Ending {
    stop: Option<UnixStream>,
    after: Option<Sender<AfterWork>>,
    thread: Option<JoinHandle<Usage>>,
}

impl Ending {
    /// Tells the watcher to end and waits for it.
    pub fn join(mut self) {
        self.end();
    }

    /// Tells the watcher to end and then run `work` on its thread, which exists already:
    /// starting a thread for the run's teardown at the payload's exit cost the way to the
    /// closing record 0.08 ms. The returned handle waits for both. `Err(work)` when the
    /// thread is gone (it panicked): the caller runs the work elsewhere.
    pub fn hand_over(mut self, work: AfterWork) -> Result<JoinHandle<Usage>, AfterWork> {
        let (Some(after), Some(thread)) = (self.after.take(), self.thread.take()) else {
            return Err(work);
        };
        if let Err(refused) = after.send(work) {
            self.thread = Some(thread);
            return Err(refused.0);
        }
        drop(after);
        if let Some(stop) = self.stop.take() {
            let _ = (&stop).write_all(b"x");
        }
        Ok(thread)
    }

    fn end(&mut self) {
        // No work to come: the watcher's thread ends after its loop.
        self.after = None;
        // Only now: woken at the payload's exit, the watcher competed with the closing record
        // for the core (about 30 us), for a round that the closed gate makes do nothing.
        if let Some(stop) = self.stop.take() {
            let _ = (&stop).write_all(b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.end();
    }
}

fn lock(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    gate.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sentinel {
    /// Ask the watcher to take its last reading and end, without waiting for it: called when
    /// the payload has exited, so that reading overlaps the namespace teardown of init.
    pub fn request_stop(&self) {
        let _ = (&self.stop).write_all(b"x");
    }

    /// Stop the watcher and return the run's usage, the last reading taken on the calling
    /// thread while the watcher ends. On the way from the payload's exit to the closing
    /// record this saves the hand-off through the watcher's thread (waking it, then being
    /// woken by its end), each wake-up from one of this machine's vCPUs to the other costing
    /// about 30 µs.
    ///
    /// The watcher is not woken nor waited for either: closing its gate ends its work (see
    /// [`Gate`]), and the caller joins the returned [`Ending`], which stops the watcher, off
    /// the way to the closing record. Waiting for the watcher to wake up and end cost as much
    /// as the reading (0.1 ms); waking it here, about 30 µs more of the closing's path.
    pub fn finish(self) -> (Usage, Ending) {
        let mut usage = {
            let mut gate = lock(&self.gate);
            gate.closed = true;
            gate.usage
        };
        let last = match &self.usage_files {
            Some(kept) => self.source.read_usage_from(kept),
            None => self.source.read_usage(),
        };
        if let Ok(s) = last {
            usage.update(&s);
        }
        let ending = Ending {
            stop: Some(self.stop),
            after: Some(self.after),
            thread: Some(self.thread),
        };
        (usage, ending)
    }

    /// Opens the files of the last reading that [`Sentinel::finish`] takes, so that it only
    /// reads them: called while the payload runs, when the caller has nothing else to do.
    pub fn open_usage_files(&mut self) {
        self.usage_files = Some(self.source.open_usage_files());
    }

    /// Stop the watcher promptly and return the run's usage (its last reading included).
    pub fn stop(self) -> Usage {
        // The thread may already have ended; a closed peer is fine.
        let _ = (&self.stop).write_all(b"x");
        // No work after the watch: the thread ends once its loop has.
        drop(self.after);
        self.thread.join().unwrap_or_default()
    }
}

/// Open memory.pressure and register the trigger; POLLPRI then signals a stall.
fn psi_trigger(path: &PathBuf, t: PsiTrigger) -> std::io::Result<File> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(format!("some {} {}", t.stall_us, t.window_us).as_bytes())?;
    Ok(f)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Registers the v1 memory thresholds of `rules` (see [`super::thresholds`]); a failure is
/// reported as `Degraded` and the rules run on the tick alone.
fn memory_thresholds(
    source: &StatSource,
    rules: &[HaltRule],
    first: &Sample,
    tx: &Sender<SentinelEvent>,
) -> Option<MemThresholds> {
    let (Some(dir), Some(limit)) = (source.memory_v1(), first.memory_limit) else {
        return None;
    };
    match thresholds::register(dir, &thresholds::threshold_bytes(rules, limit)) {
        Ok(t) => t,
        Err(source) => {
            let _ = tx.send(SentinelEvent::Degraded {
                what: "memory thresholds",
                path: dir.join("cgroup.event_control"),
                source,
            });
            None
        }
    }
}

/// Start the watcher on `cgroup`, reporting to `tx`.
pub fn start(
    cgroup: Arc<RunCgroup>,
    config: WatchConfig,
    tx: Sender<SentinelEvent>,
) -> Result<Sentinel, SentinelError> {
    let source = StatSource::of(&cgroup);
    let gate = Arc::new(Mutex::new(Gate::default()));
    let (stop, stop_peer) = UnixStream::pair().map_err(|source| SentinelError::Setup {
        op: "socketpair",
        path: PathBuf::new(),
        source,
    })?;
    let (watched, shared) = (source.clone(), Arc::clone(&gate));
    let (after, after_rx) = std::sync::mpsc::channel::<AfterWork>();
    let thread = std::thread::Builder::new()
        .name("calyx:sentinel".into())
        .spawn(move || {
            let mut usage = watch_loop(&cgroup, &watched, &config, &tx, &stop_peer, &shared);
            // A last reading so usage includes the final moments of the run, unless the
            // caller takes it (usage figures only: it is on the way to the closing record).
            if !lock(&shared).closed {
                if let Ok(s) = watched.read_usage() {
                    usage.update(&s);
                }
            }
            // The watch is over and acts on the cgroup no more; what the runner hands over
            // (its teardown, which removes that cgroup) runs here. Err: nothing will come.
            if let Ok(work) = after_rx.recv() {
                work();
            }
            usage
        })
        .map_err(|source| SentinelError::Setup {
            op: "spawn",
            path: PathBuf::new(),
            source,
        })?;
    Ok(Sentinel {
        stop,
        after,
        thread,
        source,
        gate,
        usage_files: None,
    })
}

/// How long a run lives before the sentinel sets up inotify and the PSI trigger.
const EVENT_SOURCES_AFTER: Duration = Duration::from_millis(250);

/// inotify on the `*.events` files and the PSI trigger: wake-ups between rule ticks.
struct EventSources {
    inotify: Option<Inotify>,
    psi: Option<File>,
}

impl EventSources {
    /// Opens both; a source that cannot be set up is reported as `Degraded` and the rules
    /// run on samples alone.
    fn open(source: &StatSource, config: &WatchConfig, tx: &Sender<SentinelEvent>) -> Self {
        let degraded = |what: &'static str, path: PathBuf, source: std::io::Error| {
            let _ = tx.send(SentinelEvent::Degraded { what, path, source });
        };
        // inotify on *.events: the kernel modifies them on OOM kills, pids.max hits,
        // populated and frozen changes.
        let inotify = match Inotify::new() {
            Ok(inotify) => {
                for f in source.event_files() {
                    if let Err(e) = inotify.watch_modify(&f) {
                        degraded("inotify watch", f, e);
                    }
                }
                Some(inotify)
            }
            Err(e) => {
                degraded("inotify", PathBuf::new(), e);
                None
            }
        };
        Self {
            inotify,
            psi: open_psi(source, config, tx),
        }
    }
}

fn open_psi(source: &StatSource, config: &WatchConfig, tx: &Sender<SentinelEvent>) -> Option<File> {
    let (Some(t), Some(path)) = (config.psi_trigger, source.pressure_file()) else {
        return None;
    };
    match psi_trigger(&path, t) {
        Ok(f) => Some(f),
        Err(source) => {
            // PSI disabled or the window refused: rules still run on samples.
            let _ = tx.send(SentinelEvent::Degraded {
                what: "PSI trigger",
                path,
                source,
            });
            None
        }
    }
}

fn watch_loop(
    cgroup: &RunCgroup,
    source: &StatSource,
    config: &WatchConfig,
    tx: &Sender<SentinelEvent>,
    stop: &UnixStream,
    gate: &Mutex<Gate>,
) -> Usage {
    let start = Instant::now();
    // The event sources are made only once the run has lived a while: closing an inotify
    // instance or a PSI trigger waits for an RCU grace period (8–20 ms here), which would
    // double the cost of every short run, and until then the rule tick samples anyway.
    let mut events: Option<EventSources> = None;
    let mut evaluator = Evaluator::new(config.rules.clone());
    let mut killed = false;
    let rules_active = !config.rules.is_empty();
    let mut next_monitor = config.monitor_interval.map(|i| start + i);
    let metrics: Vec<HaltMetric> = config.rules.iter().map(|r| r.metric).collect();
    let mut last_full = Sample::default();
    let mut first = true;
    let mut calm = false;
    let mut read_failing = false;
    // v1 memory thresholds, registered after the first sample (it carries the limit).
    let mut thresholds: Option<MemThresholds> = None;
    loop {
        let now = Instant::now();
        // Sleep until the next rule tick, MONITORED sample or pending rule deadline.
        let tick = if calm {
            config.calm_interval
        } else {
            config.rule_interval
        };
        let mut wake = if rules_active && !killed {
            now + tick
        } else {
            now + Duration::from_secs(3600)
        };
        if let Some(m) = next_monitor {
            wake = wake.min(m);
        }
        if let Some(d) = evaluator.next_deadline().filter(|_| !killed) {
            wake = wake.min(start + Duration::from_millis(d));
        }
        if events.is_none() && now.duration_since(start) >= EVENT_SOURCES_AFTER {
            // Under the gate: opening them may report a degraded source.
            let shared = lock(gate);
            if shared.closed {
                break;
            }
            events = Some(EventSources::open(source, config, tx));
            drop(shared);
        }
        let mut fds = vec![(stop.as_fd(), Interest::Readable)];
        let (mut inotify_at, mut psi_at, mut threshold_at) = (None, None, None);
        if let Some(t) = &thresholds {
            threshold_at = Some(fds.len());
            fds.push((t.efd.as_fd(), Interest::Readable));
        }
        if let Some(ev) = &events {
            if let Some(i) = &ev.inotify {
                inotify_at = Some(fds.len());
                fds.push((i.as_fd(), Interest::Readable));
            }
            if let Some(p) = &ev.psi {
                psi_at = Some(fds.len());
                fds.push((p.as_fd(), Interest::Priority));
            }
        }
        let ready = match cgroup_sys::poll_fds(&fds, wake.saturating_duration_since(now)) {
            Ok(r) => r,
            Err(source) => {
                let shared = lock(gate);
                if shared.closed {
                    break;
                }
                let _ = tx.send(SentinelEvent::Degraded {
                    what: "poll",
                    path: PathBuf::new(),
                    source,
                });
                drop(shared);
                std::thread::sleep(config.rule_interval);
                vec![cgroup_sys::Ready::default(); fds.len()]
            }
        };
        // The rest of the round under the gate (see `Gate`).
        let mut shared = lock(gate);
        if shared.closed {
            break;
        }
        let state = |i: usize| ready.get(i).copied().unwrap_or_default();
        // Data or EOF on the stop socket: the runner is done (or dropped the handle).
        if state(0).event || state(0).failed {
            break;
        }
        let threshold_woke = threshold_at.is_some_and(|i| state(i).event);
        if let (true, Some(t)) = (threshold_woke, &thresholds) {
            t.efd.drain();
        }
        let inotify_woke = inotify_at.is_some_and(|i| state(i).event) || threshold_woke;
        if let Some(ev) = &mut events {
            if let (true, Some(i)) = (inotify_woke, &ev.inotify) {
                i.drain();
            }
            // A PSI fd in error (its cgroup went away) would make every poll return at once.
            if psi_at.is_some_and(|i| state(i).failed) {
                ev.psi = None;
            }
        }
        // A full reading on events and MONITORED ticks; otherwise only the rules' files.
        let full_due = first || inotify_woke || next_monitor.is_some_and(|m| Instant::now() >= m);
        let read = if full_due {
            source.read()
        } else {
            source.read_metrics(&metrics, &last_full)
        };
        let mut sample = match read {
            Ok(s) => {
                read_failing = false;
                s
            }
            Err(e) => {
                // Report the first failure of a streak only: a cgroup removed under a running
                // sentinel must not flood the channel every tick.
                if !read_failing {
                    let _ = tx.send(SentinelEvent::ReadFailed(e));
                }
                read_failing = true;
                calm = true;
                continue;
            }
        };
        if full_due {
            if first {
                thresholds = memory_thresholds(source, &config.rules, &sample, tx);
            }
            last_full = sample.clone();
            first = false;
        }
        sample.output_bytes = config
            .output_bytes
            .as_ref()
            .map(|c| c.load(Ordering::Relaxed));
        shared.usage.update(&sample);
        let at_ms = ms(start.elapsed());
        if !killed {
            let decisions = evaluator.observe(at_ms, &sample);
            calm = evaluator.is_calm(&sample);
            for d in decisions {
                let applied = match d.action() {
                    HaltAction::Warn => {
                        let _ = tx.send(SentinelEvent::Monitored {
                            at_ms,
                            sample: sample.clone(),
                            warning: Some(d),
                        });
                        continue;
                    }
                    HaltAction::Freeze => cgroup.freeze().map(Applied::Frozen),
                    HaltAction::Kill => {
                        killed = true;
                        cgroup.kill(config.kill_pid).map(Applied::Killed)
                    }
                };
                let applied = applied.unwrap_or_else(Applied::Failed);
                let _ = tx.send(SentinelEvent::Halted {
                    decision: d,
                    applied,
                });
                if killed {
                    break;
                }
            }
        }
        if let Some(m) = next_monitor.filter(|m| Instant::now() >= *m) {
            let _ = tx.send(SentinelEvent::Monitored {
                at_ms,
                sample,
                warning: None,
            });
            next_monitor = config.monitor_interval.map(|i| m + i);
        }
    }
    lock(gate).usage
}

/// Read the run's usage once (when no sentinel ran).
pub fn collect_usage(cgroup: &RunCgroup) -> Result<Usage, SentinelError> {
    let mut u = Usage::default();
    u.update(&StatSource::of(cgroup).read()?);
    Ok(u)
}
