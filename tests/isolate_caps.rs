//! Capabilities and no_new_privs are per thread: each test drops them on a spawned thread and
//! reads that thread's own /proc/thread-self/status, so the test runner keeps its rights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use calyx::isolate::caps::{self, CapSets, drop_all_capabilities};
use calyx::sys::proc_ctl;

/// The calling thread's five sets as /proc prints them (capability sets are per thread, so
/// not /proc/self): the account the library's own read-back must agree with.
fn thread_caps() -> [(&'static str, u64); 5] {
    let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(|field| {
        let value = text
            .lines()
            .find_map(|line| {
                let (key, rest) = line.split_once(':')?;
                (key == field).then(|| u64::from_str_radix(rest.trim(), 16).unwrap())
            })
            .unwrap();
        (field, value)
    })
}

fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().unwrap()
}

#[test]
fn drop_all_capabilities_empties_every_set_of_the_thread() {
    on_thread(|| {
        let before = thread_caps();
        // This suite runs as root (notes/common.md): the drop must be observable.
        assert_ne!(
            before[2],
            ("CapEff", 0),
            "test expects to start with capabilities"
        );
        assert_ne!(before[3], ("CapBnd", 0));
        drop_all_capabilities().unwrap();
        for (field, value) in thread_caps() {
            assert_eq!(value, 0, "{field}");
        }
        // Dropped for good: no bounding capability left, and a second drop is still fine
        // (no CAP_SETPCAP needed for what is already gone).
        assert!(!proc_ctl::capbset_read(0).unwrap());
        drop_all_capabilities().unwrap();
    });
    // The runner's own threads are untouched.
    on_thread(|| assert_ne!(thread_caps()[2], ("CapEff", 0)));
}

#[test]
fn the_read_back_agrees_with_proc_before_and_after_the_drop() {
    on_thread(|| {
        assert_eq!(CapSets::of_this_thread().unwrap().fields(), thread_caps());
        drop_all_capabilities().unwrap();
        assert_eq!(CapSets::of_this_thread().unwrap().fields(), thread_caps());
    });
}

#[test]
fn no_new_privs_is_set_and_verified_on_the_thread_only() {
    on_thread(|| {
        assert!(!proc_ctl::no_new_privs().unwrap());
        caps::set_no_new_privs().unwrap();
        assert!(proc_ctl::no_new_privs().unwrap());
    });
    on_thread(|| assert!(!proc_ctl::no_new_privs().unwrap()));
}
