//! Seccomp behaviour: filters applied on a spawned thread (filters are per thread without
//! TSYNC, so the test runner itself is never filtered), then probed with harmless calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use calyx::isolate::seccomp::{apply_seccomp_on_current_thread, build_program};
use calyx::lease::model::Network;
use calyx::profile::Profile;
use calyx::sys::proc_ctl;

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("call should have failed")
        .raw_os_error()
        .unwrap()
}

/// Runs `f` on a fresh thread after installing the filters of `profile` under `network`.
fn filtered<R: Send + 'static>(
    profile: &str,
    network: Network,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let programs = build_program(&Profile::builtin(profile).unwrap(), network).unwrap();
    std::thread::spawn(move || {
        apply_seccomp_on_current_thread(&programs).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn probes_are_not_already_denied_without_a_filter() {
    // The same probes on an unfiltered thread fail differently: the assertions below are
    // about the filter, not about the probes failing anyway.
    std::thread::spawn(|| {
        assert_ne!(errno(proc_ctl::probe_clone3()), libc::ENOSYS);
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(
            errno(proc_ctl::probe_tty_ioctl(&r, libc::TIOCSTI as u32)),
            libc::ENOTTY
        );
        assert_eq!(
            errno(proc_ctl::probe_ptrace(std::process::id() as i32)),
            libc::ESRCH
        );
        assert_eq!(
            errno(proc_ctl::probe_unshare(libc::CLONE_NEWUSER)),
            libc::EINVAL
        );
        assert!(proc_ctl::probe_socket(libc::AF_INET, libc::SOCK_STREAM).is_ok());
        assert!(proc_ctl::probe_socket(libc::AF_NETLINK, libc::SOCK_DGRAM).is_ok());
    })
    .join()
    .unwrap();
}

#[test]
fn default_profile_denies_the_always_denied_calls() {
    filtered("default", Network::None, || {
        assert_eq!(
            errno(proc_ctl::probe_mount(c"/nonexistent-calyx-probe")),
            libc::EPERM
        );
        assert_eq!(
            errno(proc_ctl::probe_unshare(libc::CLONE_NEWUSER)),
            libc::EPERM
        );
        assert_eq!(errno(proc_ctl::probe_clone3()), libc::ENOSYS);
        assert_eq!(
            errno(proc_ctl::probe_clone_with_flags(
                libc::CLONE_NEWUSER as libc::c_ulong
            )),
            libc::EPERM
        );
        assert_eq!(
            errno(proc_ctl::probe_socket(libc::AF_NETLINK, libc::SOCK_DGRAM)),
            libc::EPERM
        );
        assert_eq!(
            errno(proc_ctl::probe_socket(libc::AF_INET, libc::SOCK_STREAM)),
            libc::EPERM
        );
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(
            errno(proc_ctl::probe_tty_ioctl(&r, libc::TIOCSTI as u32)),
            libc::EPERM
        );
        assert_eq!(
            errno(proc_ctl::probe_ptrace(std::process::id() as i32)),
            libc::EPERM
        );
        // Normal calls still work.
        assert!(proc_ctl::raw_getpid().unwrap() > 0);
        let (mut r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"ok").unwrap();
        drop(w);
        let mut buf = String::new();
        r.read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "ok");
        assert!(proc_ctl::probe_socket(libc::AF_UNIX, libc::SOCK_STREAM).is_ok());
        assert!(r.as_raw_fd() >= 0);
    });
}

#[test]
fn loopback_allows_inet_sockets_but_not_netlink() {
    filtered("default", Network::Loopback, || {
        assert!(proc_ctl::probe_socket(libc::AF_INET, libc::SOCK_STREAM).is_ok());
        assert!(proc_ctl::probe_socket(libc::AF_INET6, libc::SOCK_DGRAM).is_ok());
        assert_eq!(
            errno(proc_ctl::probe_socket(libc::AF_NETLINK, libc::SOCK_DGRAM)),
            libc::EPERM
        );
        assert_eq!(
            errno(proc_ctl::probe_socket(libc::AF_PACKET, libc::SOCK_DGRAM)),
            libc::EPERM
        );
    });
}

/// A filter answering `getcwd` with `errno` (everything else allowed), for the stacking test.
fn getcwd_errno(errno: i32) -> seccompiler::BpfProgram {
    let doc = serde_json::json!({ "f": {
        "mismatch_action": "allow",
        "match_action": { "errno": errno },
        "filter": [{ "syscall": "getcwd" }],
    }})
    .to_string();
    let arch = std::env::consts::ARCH.try_into().unwrap();
    seccompiler::compile_from_json(doc.as_bytes(), arch)
        .unwrap()
        .remove("f")
        .unwrap()
}

#[test]
fn kernel_rule_newest_errno_wins_and_errno_beats_allow() {
    // The filter stack relies on these two rules of the running kernel; pin them.
    for (first, second) in [(libc::EPERM, libc::ENOSYS), (libc::ENOSYS, libc::EPERM)] {
        let (a, b) = (getcwd_errno(first), getcwd_errno(second));
        let got = std::thread::spawn(move || {
            seccompiler::apply_filter(&a).unwrap();
            seccompiler::apply_filter(&b).unwrap();
            std::env::current_dir().unwrap_err().raw_os_error()
        })
        .join()
        .unwrap();
        assert_eq!(got, Some(second), "installed {first} then {second}");
    }
    // An allowlist that allows clone3 cannot override the clone3 filter's ENOSYS.
    let programs = build_program(&Profile::builtin("default").unwrap(), Network::None).unwrap();
    let got = std::thread::spawn(move || {
        apply_seccomp_on_current_thread(&programs).unwrap();
        proc_ctl::probe_clone3().unwrap_err().raw_os_error()
    })
    .join()
    .unwrap();
    assert_eq!(got, Some(libc::ENOSYS));
}

#[test]
// Regression: with the allowlist installed first, strict (which does not allow seccomp(2))
// made the next filter's installation fail with EPERM.
fn strict_profile_installs_although_its_allowlist_denies_seccomp() {
    filtered("strict", Network::None, || {
        assert_eq!(
            errno(proc_ctl::probe_mount(c"/nonexistent-calyx-probe")),
            libc::EPERM
        );
        assert_eq!(errno(proc_ctl::probe_clone3()), libc::ENOSYS);
        assert_eq!(
            errno(proc_ctl::probe_socket(libc::AF_INET, libc::SOCK_STREAM)),
            libc::EPERM
        );
        assert!(proc_ctl::raw_getpid().unwrap() > 0);
    });
}

#[test]
fn a_spawned_process_inherits_the_filter_and_glibc_falls_back_from_clone3() {
    // std::process::Command uses posix_spawn, which tries clone3 first: it must fall back to
    // clone on ENOSYS and run the child, which is filtered too.
    let out = filtered("default", Network::None, || {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("echo spawned; exec python3 -c 'import socket; socket.socket(socket.AF_INET)' 2>&1 || true")
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("spawned\n"), "{text}");
    if std::path::Path::new("/usr/bin/python3").exists() {
        assert!(text.contains("PermissionError"), "{text}");
    }
}
