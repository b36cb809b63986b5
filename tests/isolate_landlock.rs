//! Landlock behaviour: rulesets applied on a spawned thread (Landlock restricts the calling
//! thread and what it later creates, never the test runner), against a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use calyx::isolate::landlock::{
    AccessClass, Enforcement, LandlockError, LandlockPlan, LandlockStatus,
    apply_landlock_on_current_thread,
};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// ro/ (file), rw/ (file, copy of true), exe/ (copy of true), other/secret.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for sub in ["ro", "rw", "exe", "other"] {
        std::fs::create_dir(root.join(sub)).unwrap();
    }
    std::fs::write(root.join("ro/file"), "read me").unwrap();
    std::fs::write(root.join("other/secret"), "host secret").unwrap();
    std::fs::copy("/usr/bin/true", root.join("exe/true")).unwrap();
    std::fs::copy("/usr/bin/true", root.join("rw/true")).unwrap();
    Fixture { _dir: dir, root }
}

fn plan(root: &Path, deny_tcp: bool) -> LandlockPlan {
    let mut plan = LandlockPlan {
        deny_tcp,
        min_abi: 1,
        ..LandlockPlan::default()
    };
    // The loader and libraries of /usr/bin/true (merged-usr: /lib* resolve into /usr).
    plan.grant("/usr", AccessClass::ReadExec);
    plan.grant(root.join("ro"), AccessClass::Read);
    plan.grant(root.join("rw"), AccessClass::ReadWrite);
    plan.grant(root.join("exe"), AccessClass::ReadExec);
    plan
}

fn restricted<R: Send + 'static>(
    plan: LandlockPlan,
    f: impl FnOnce(LandlockStatus) -> R + Send + 'static,
) -> R {
    std::thread::spawn(move || {
        let status = apply_landlock_on_current_thread(&plan).unwrap();
        f(status)
    })
    .join()
    .unwrap()
}

fn kind<T: std::fmt::Debug>(r: std::io::Result<T>) -> ErrorKind {
    r.expect_err("should be denied").kind()
}

#[test]
fn reads_writes_and_execs_follow_the_grants() {
    let fx = fixture();
    let root = fx.root.clone();
    restricted(plan(&fx.root, true), move |status| {
        // Read grant: readable, not writable, nothing can be created.
        assert_eq!(
            std::fs::read_to_string(root.join("ro/file")).unwrap(),
            "read me"
        );
        assert_eq!(
            kind(std::fs::write(root.join("ro/file"), "x")),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(std::fs::write(root.join("ro/new"), "x")),
            ErrorKind::PermissionDenied
        );
        // Outside every grant: not even readable.
        assert_eq!(
            kind(std::fs::read_to_string(root.join("other/secret"))),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind(std::fs::read_dir(&root)), ErrorKind::PermissionDenied);
        // Write grant: create, write, remove.
        std::fs::write(root.join("rw/new"), "written").unwrap();
        std::fs::remove_file(root.join("rw/new")).unwrap();
        // Exec grant runs; a binary in a write-only (non-exec) grant does not.
        assert!(
            Command::new(root.join("exe/true"))
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            kind(Command::new(root.join("rw/true")).status()),
            ErrorKind::PermissionDenied
        );
        assert_eq!(status.rules, 4);
    });
}

#[test]
fn tcp_connect_is_denied_under_deny_tcp_only() {
    let fx = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let denied = restricted(plan(&fx.root, true), move |_| {
        TcpStream::connect(addr).map(drop)
    });
    if expected_abi() < 4 {
        // No network rules before ABI 4: the connect goes through, and the status must say
        // the ruleset is only partial (the runner's seccomp socket filter still holds).
        assert!(denied.is_ok(), "{denied:?}");
        let status = restricted(plan(&fx.root, true), |s| s);
        assert_eq!(status.enforcement, Enforcement::Partial, "{status}");
        return;
    }
    assert_eq!(kind(denied), ErrorKind::PermissionDenied);
    let allowed = restricted(plan(&fx.root, false), move |_| {
        TcpStream::connect(addr).map(drop)
    });
    assert!(allowed.is_ok(), "{allowed:?}");
    let denied_bind = restricted(plan(&fx.root, true), |_| {
        TcpListener::bind("127.0.0.1:0").map(drop)
    });
    assert_eq!(kind(denied_bind), ErrorKind::PermissionDenied);
}

#[test]
fn a_missing_granted_path_is_an_error_naming_it() {
    let fx = fixture();
    let mut p = plan(&fx.root, false);
    let missing = fx.root.join("does-not-exist");
    p.grant(missing.clone(), AccessClass::Read);
    let err = std::thread::spawn(move || apply_landlock_on_current_thread(&p).unwrap_err())
        .join()
        .unwrap();
    assert!(
        matches!(&err, LandlockError::Path { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn status_reports_the_kernel_abi() {
    let fx = fixture();
    let status = restricted(plan(&fx.root, true), |s| s);
    // The kernel's ABI is known for every host the suite runs on; a different kernel must
    // show up here rather than pass unnoticed.
    let abi = expected_abi();
    assert_eq!(status.abi, abi, "unexpected kernel Landlock ABI: {status}");
    if abi >= 4 {
        assert_eq!(status.enforcement, Enforcement::Full);
        assert_eq!(status.to_string(), format!("landlock: full (ABI {abi})"));
    } else {
        // ABI 2 lacks truncate and network rules: degraded, and reported as such.
        assert_eq!(status.enforcement, Enforcement::Partial);
        assert!(
            status
                .to_string()
                .starts_with(&format!("landlock: partial (ABI {abi}"))
        );
    }
    // Requiring more than the kernel has is refused.
    let mut p = plan(&fx.root, true);
    p.min_abi = 8;
    let err = std::thread::spawn(move || apply_landlock_on_current_thread(&p).unwrap_err())
        .join()
        .unwrap();
    assert!(
        matches!(err, LandlockError::BelowFloor { abi: a, floor: 8 } if a == abi),
        "{err}"
    );
}

/// The Landlock ABI of the kernel this test runs on: the VM tier names its kernel series in
/// `CALYX_VM_KERNEL`; the development and CI host runs Linux 6.18 with ABI 7.
fn expected_abi() -> u8 {
    match std::env::var("CALYX_VM_KERNEL").as_deref() {
        Ok("6.12") => 6,
        Ok("6.1") => 2,
        _ => 7,
    }
}
