//! Where a run's start-up time goes: named marks on a monotonic clock, printed to stderr at
//! the end of the run when `CALYX_TIMELINE=1` is set.
//!
//! Off (the default), a mark is one relaxed atomic load. On, marks are kept in a fixed-size
//! table without allocating, so they may be taken on any thread, before and after the
//! clone (init's own steps are not marked: it is a different process).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// More marks than this are dropped; a run takes about twenty.
const CAPACITY: usize = 64;

struct Table {
    start: Option<Instant>,
    marks: [(&'static str, Option<Instant>); CAPACITY],
    len: usize,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    start: None,
    marks: [("", None); CAPACITY],
    len: 0,
});

/// Starts the timeline at `start` when `enabled` (from the environment, read by the caller).
pub fn start(enabled: bool, start: Instant) {
    if !enabled {
        return;
    }
    if let Ok(mut t) = TABLE.lock() {
        t.start = Some(start);
        t.len = 0;
    }
    ENABLED.store(true, Ordering::Relaxed);
}

/// Records that `what` has just finished.
pub fn mark(what: &'static str) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut t) = TABLE.lock() {
        // Read under the lock: marks from several threads (the ledger's) stay in time order.
        let now = Instant::now();
        let n = t.len;
        if n < CAPACITY {
            t.marks[n] = (what, Some(now));
            t.len = n + 1;
        }
    }
}

/// The marks as `(name, ms since start, ms since the previous mark)`, in the order taken.
pub fn marks() -> Vec<(&'static str, f64, f64)> {
    let Ok(t) = TABLE.lock() else {
        return Vec::new();
    };
    let Some(start) = t.start else {
        return Vec::new();
    };
    let mut prev = start;
    let mut out = Vec::with_capacity(t.len);
    for (name, at) in &t.marks[..t.len] {
        let Some(at) = *at else { continue };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        out.push((
            *name,
            ms(at - start),
            ms(at.saturating_duration_since(prev)),
        ));
        prev = prev.max(at);
    }
    out
}

/// Prints the marks to stderr, one per line, when the timeline is on.
pub fn print(prog: &str) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    for (name, total, step) in marks() {
        eprintln!("{prog}: timeline {total:8.3} ms  (+{step:.3})  {name}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_in_order_and_relative_to_the_start() {
        let t0 = Instant::now();
        mark("before start is ignored");
        start(true, t0);
        mark("one");
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark("two");
        let m = marks();
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), ["one", "two"]);
        assert!(m[1].1 >= m[0].1 + 2.0, "{m:?}");
        assert!(m[1].2 >= 2.0, "{m:?}");
    }
}
