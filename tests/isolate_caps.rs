//! Capabilities and no_new_privs are per thread: each test drops them on a spawned thread and
//! reads that thread's own /proc/thread-self/status, so the test runner keeps its rights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use calyx::isolate::caps::{
    self, CapsError, THREAD_STATUS_PATH, drop_all_capabilities, drop_all_capabilities_with,
    parse_cap_status,
};
use calyx::sys::proc_ctl;

fn thread_caps() -> [(&'static str, u64); 5] {
    let text = std::fs::read_to_string(THREAD_STATUS_PATH).unwrap();
    parse_cap_status(&text, Path::new(THREAD_STATUS_PATH)).unwrap()
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
fn verification_reads_the_given_status_file() {
    // A status file that still shows capabilities is a failure even if every call succeeded.
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(
        &status,
        "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0000000000000400\nCapAmb:\t0\n",
    )
    .unwrap();
    let last_cap = dir.path().join("cap_last_cap");
    std::fs::write(&last_cap, "40\n").unwrap();
    let err = on_thread(move || drop_all_capabilities_with(&last_cap, &status).unwrap_err());
    assert!(
        matches!(
            err,
            CapsError::NotEmpty {
                field: "CapBnd",
                value: 0x400
            }
        ),
        "{err}"
    );
}

#[test]
fn a_missing_cap_last_cap_is_an_error_naming_it() {
    let err = on_thread(|| {
        drop_all_capabilities_with(Path::new("/nonexistent/cap_last_cap"), Path::new("/x"))
            .unwrap_err()
    });
    assert!(
        err.to_string().contains("/nonexistent/cap_last_cap"),
        "{err}"
    );
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
