//! v1 memory thresholds: the kernel signals an eventfd the moment a cgroup's memory usage
//! crosses a registered value (`cgroup.event_control`), so a memory rule is looked at within a
//! scheduling delay of the crossing rather than at the sentinel's next tick.
//!
//! Usage (`memory.usage_in_bytes`) includes page cache, so it crosses a value no later than
//! the working set a rule measures does; the full sample taken on the signal decides. Each
//! rule registers two values: its threshold, and [`CALM_FRACTION`] of it, where the watcher
//! leaves its slow calm tick. v2 has no such interface; there inotify on `memory.events` and
//! the rule tick do the work.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::rules::CALM_FRACTION;
use crate::lease::model::{HaltMetric, HaltRule};
use crate::sys::cgroup_sys::EventFd;

/// Byte values to register for `rules` under a memory limit of `limit` bytes: each memory
/// rule's threshold and its calm boundary, ascending, without duplicates. Pure.
pub fn threshold_bytes(rules: &[HaltRule], limit: u64) -> Vec<u64> {
    let mut out: Vec<u64> = rules
        .iter()
        .filter(|r| r.metric == HaltMetric::MemoryPercent && r.above > 0.0)
        .flat_map(|r| [r.above, r.above * CALM_FRACTION])
        .map(|pct| (limit as f64 * pct / 100.0) as u64)
        .filter(|b| *b > 0 && *b < limit)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Registered thresholds; dropping it closes the eventfd, which unregisters them.
#[derive(Debug)]
pub struct MemThresholds {
    /// Readable when usage crossed a value (either way).
    pub efd: EventFd,
}

/// Register `values` on the v1 memory cgroup `dir`. `Ok(None)` when there is nothing to watch.
pub fn register(dir: &Path, values: &[u64]) -> std::io::Result<Option<MemThresholds>> {
    if values.is_empty() {
        return Ok(None);
    }
    let efd = EventFd::new()?;
    let usage = File::open(dir.join("memory.usage_in_bytes"))?;
    let mut control = File::options()
        .write(true)
        .open(dir.join("cgroup.event_control"))?;
    for v in values {
        // "<eventfd> <fd of the watched file> <threshold>", one registration per write.
        let line = format!("{} {} {v}", efd_raw(&efd), usage.as_raw_fd());
        control.write_all(line.as_bytes())?;
    }
    Ok(Some(MemThresholds { efd }))
}

fn efd_raw(efd: &EventFd) -> i32 {
    use std::os::fd::AsFd;
    efd.as_fd().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::model::HaltAction;

    fn rule(metric: HaltMetric, above: f64) -> HaltRule {
        HaltRule {
            metric,
            above,
            for_ms: 0,
            action: HaltAction::Kill,
        }
    }

    #[test]
    fn thresholds_are_each_memory_rule_and_its_calm_boundary() {
        let mib = 1 << 20;
        let rules = [
            rule(HaltMetric::MemoryPercent, 50.0),
            rule(HaltMetric::PidsPercent, 90.0),
            rule(HaltMetric::MemoryPercent, 100.0),
        ];
        // 100 % is the limit itself (the OOM killer's business), so only its calm value stays.
        assert_eq!(threshold_bytes(&rules, 64 * mib), vec![16 * mib, 32 * mib]);
        assert!(threshold_bytes(&[rule(HaltMetric::CpuSeconds, 5.0)], 64 * mib).is_empty());
        assert!(threshold_bytes(&rules, 0).is_empty());
    }
}
