//! An idle sentinel must not cost measurable CPU: it sleeps in poll between samples. Its own
//! test binary, so the only `calyx:sentinel` thread in the process is the one measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cgroup_support;

use std::sync::mpsc;
use std::time::Duration;

use calyx::cgroup::LimitSpec;
use calyx::sentinel::policy::HaltPolicy;
use calyx::sentinel::watch::{self, SentinelEvent, WatchConfig};
use cgroup_support::{Run, Scratch};

/// utime + stime, in clock ticks, of this process's threads named `calyx:sentinel`.
fn sentinel_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "calyx:sentinel" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the ")" of comm: state is field 3; utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks
}

#[test]
fn idle_sentinel_is_cheap_and_reports_samples() {
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
        rule_interval: Duration::from_millis(50),
        monitor_interval: Some(Duration::from_millis(200)),
        kill_pid: Some(pid),
        ..WatchConfig::default()
    };
    let sentinel = watch::start(run.cg.clone(), config, tx).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = sentinel_ticks();
    let usage = sentinel.stop();
    let events: Vec<SentinelEvent> = rx.try_iter().collect();
    let monitored = events
        .iter()
        .filter(|e| e.event_name() == "resource_event.MONITORED")
        .count();
    eprintln!("idle sentinel: {ticks} ticks in 2 s, {monitored} MONITORED, usage {usage:?}");
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
    // 40 samples in 2 s; a busy loop would burn ~200 ticks. 2 ticks = 1 % of a core.
    assert!(ticks <= 2, "idle sentinel used {ticks} ticks in 2 s");
    assert!(usage.memory_peak.is_some() && usage.cpu_usec.is_some());
}
