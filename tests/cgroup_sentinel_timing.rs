//! Sentinel timing: an idle sentinel must not cost measurable CPU (it sleeps in poll between
//! samples), and a halt lands within tens of ms of the breach. Its own test binary, with the
//! tests serialized, so the only `calyx:sentinel` thread measured is the test's own and no
//! other test's load skews the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cgroup_support;

use std::sync::{Mutex, mpsc};
use std::time::Duration;

use calyx::cgroup::{CgroupMode, LimitSpec};
use calyx::lease::model::{HaltAction, HaltMetric, HaltRule};
use calyx::sentinel::policy::HaltPolicy;
use calyx::sentinel::stats::StatSource;
use calyx::sentinel::watch::{self, SentinelEvent, WatchConfig};
use cgroup_support::{Run, Scratch};

/// One timing test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// CPU time in ns (schedstat's first field) of this process's threads named `calyx:sentinel`.
fn sentinel_cpu_ns() -> u64 {
    let mut ns = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "calyx:sentinel" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
        ns += stat
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    ns
}

#[test]
fn idle_sentinel_is_cheap_and_reports_samples() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("idle");
    let mut run = Run::create(
        &scratch.layout,
        "idle",
        &LimitSpec {
            memory_max: Some(64 << 20),
            pids_max: Some(32),
            ..LimitSpec::default()
        },
    );
    let pid = run.spawn_placed(&["sh", "-c", "read x; exec sleep 30"]);
    run.release();
    let (tx, rx) = mpsc::channel();
    let config = WatchConfig {
        rules: HaltPolicy::builtin().unwrap().rules,
        monitor_interval: Some(Duration::from_millis(200)),
        kill_pid: Some(pid),
        ..WatchConfig::default()
    };
    let sentinel = watch::start(run.cg.clone(), config, tx).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let cpu_ns = sentinel_cpu_ns();
    let usage = sentinel.stop();
    let events: Vec<SentinelEvent> = rx.try_iter().collect();
    let monitored = events
        .iter()
        .filter(|e| e.event_name() == "resource_event.MONITORED")
        .count();
    eprintln!(
        "idle sentinel: {} µs CPU in 2 s, {monitored} MONITORED, usage {usage:?}",
        cpu_ns / 1000
    );
    assert!(
        events
            .iter()
            .all(|e| matches!(e, SentinelEvent::Monitored { warning: None, .. })),
        "{events:?}"
    );
    assert!(
        (8..=11).contains(&monitored),
        "{monitored} samples at 200 ms over 2 s"
    );
    // 80 rule ticks and 10 full samples in 2 s at the defaults; a busy loop would burn
    // ~2 s. The bound is 1 % of a core (the SPEC's target, 0.5 %, is for release builds).
    assert!(cpu_ns < 20_000_000, "idle sentinel used {cpu_ns} ns in 2 s");
    assert!(usage.memory_peak.is_some() && usage.cpu_usec.is_some());
}

/// Halt latency as SPEC §4.4 defines it: from the breach being visible in the cgroup's files
/// (watched here at 1 ms) to the payload being dead. Not a benchmark: one run, a loose bound
/// for a shared host, and the figure printed.
#[test]
fn halt_lands_within_tens_of_ms_of_the_breach() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("latency");
    let limits = LimitSpec {
        memory_max: Some(64 << 20),
        swap_max: (scratch.layout.mode != CgroupMode::Unified).then_some(0),
        ..LimitSpec::default()
    };
    let mut run = Run::create(&scratch.layout, "latency", &limits);
    let hog = "import sys, time\nsys.stdin.readline()\na = []\n\
               while True:\n    a.append(b'\\x01' * (256 << 10))\n    time.sleep(0.005)\n";
    let pid = run.spawn_placed(&["python3", "-c", hog]);
    let rule = HaltRule {
        metric: HaltMetric::MemoryPercent,
        above: 50.0,
        for_ms: 0,
        action: HaltAction::Kill,
    };
    let (tx, rx) = mpsc::channel();
    let config = WatchConfig {
        rules: vec![rule],
        kill_pid: Some(pid),
        monitor_interval: None,
        ..WatchConfig::default()
    };
    let source = StatSource::of(&run.cg);
    // The sentinel's clock starts inside start(): this instant is at most that early.
    let sentinel_epoch = std::time::Instant::now();
    let sentinel = watch::start(run.cg.clone(), config, tx).unwrap();
    run.release();
    let start = std::time::Instant::now();
    let mut visible = None;
    let dead = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "hog never halted"
        );
        if visible.is_none() {
            let s = source
                .read_metrics(&[HaltMetric::MemoryPercent], &source.read().unwrap())
                .unwrap();
            if s.metric(HaltMetric::MemoryPercent)
                .is_some_and(|p| p > 50.0)
            {
                visible = Some(std::time::Instant::now());
            }
        }
        if run.children[0].try_wait().unwrap().is_some() {
            break std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    sentinel.stop();
    let breach_ms = rx.try_iter().find_map(|e| match e {
        SentinelEvent::Halted { decision, .. } => Some(decision.breach_since_ms),
        _ => None,
    });
    let breach_ms = breach_ms.expect("a HALTED event");
    // The breach became visible when the first observer saw it: this thread polling at 1 ms,
    // or the sentinel itself if this thread was descheduled at that moment (shared host).
    let by_sentinel = sentinel_epoch + Duration::from_millis(breach_ms);
    let visible = visible.map_or(by_sentinel, |v: std::time::Instant| v.min(by_sentinel));
    let latency = dead.duration_since(visible);
    eprintln!(
        "halt latency: {} ms (default rule tick)",
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_millis(250),
        "halt took {latency:?}"
    );
}

/// A cgroup removed under a running sentinel (its PSI fd then reports an error on every
/// poll) must not turn the watcher into a busy loop or a flood of events.
#[test]
fn sentinel_stays_quiet_when_its_cgroup_vanishes() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("vanish");
    let run = Run::create(
        &scratch.layout,
        "vanish",
        &LimitSpec {
            pids_max: Some(8),
            ..LimitSpec::default()
        },
    );
    let (tx, rx) = mpsc::channel();
    let config = WatchConfig {
        rules: HaltPolicy::builtin().unwrap().rules,
        ..WatchConfig::default()
    };
    let sentinel = watch::start(run.cg.clone(), config, tx).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    run.cg.remove().unwrap();
    let before = sentinel_cpu_ns();
    std::thread::sleep(Duration::from_millis(500));
    let spent = sentinel_cpu_ns() - before;
    sentinel.stop();
    let events: Vec<SentinelEvent> = rx.try_iter().collect();
    eprintln!(
        "after removal: {} µs CPU in 500 ms, events {events:?}",
        spent / 1000
    );
    assert!(spent < 10_000_000, "busy after removal: {spent} ns");
    assert!(events.len() <= 2, "{events:?}");
}
