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

const KILL_CHILD_ENV: &str = "CALYX_TEST_SECCOMP_KILL_CHILD";

/// The child's half of `kill_profiles_kill_the_process`: does nothing unless started by it.
/// A KILL_PROCESS verdict kills the whole process, so it runs in a re-executed test binary.
#[test]
fn child_calls_a_denied_syscall_under_kill() {
    let Some(call) = std::env::var_os(KILL_CHILD_ENV) else {
        return;
    };
    // SIGSYS dumps core by default: this child's death must leave nothing behind.
    calyx::isolate::rlimit::apply_rlimits(&[(calyx::isolate::rlimit::Resource::Core, 0)]).unwrap();
    let mut profile = Profile::builtin("default").unwrap();
    profile.on_deny = calyx::profile::DenyAction::Kill;
    let programs = build_program(&profile, Network::None).unwrap();
    let result = std::thread::spawn(move || {
        apply_seccomp_on_current_thread(&programs).unwrap();
        match call.to_str().unwrap() {
            "mount" => proc_ctl::probe_mount(c"/nonexistent-calyx-probe").map(drop),
            "clone3" => proc_ctl::probe_clone3(),
            _ => proc_ctl::raw_getpid().map(drop),
        }
    })
    .join()
    .unwrap();
    println!("SURVIVED {:?}", result.map_err(|e| e.raw_os_error()));
}

#[test]
fn kill_profiles_kill_the_process_but_answer_clone3_with_enosys() {
    use std::os::unix::process::ExitStatusExt;
    let run = |call: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_calls_a_denied_syscall_under_kill",
                "--nocapture",
            ])
            .env(KILL_CHILD_ENV, call)
            .output()
            .unwrap()
    };
    let killed = run("mount");
    assert_eq!(killed.status.signal(), Some(libc::SIGSYS), "{killed:?}");
    let clone3 = run("clone3");
    let out = String::from_utf8_lossy(&clone3.stdout);
    assert!(
        out.contains(&format!("SURVIVED Err(Some({}))", libc::ENOSYS)),
        "{out}"
    );
    let allowed = run("getpid");
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("SURVIVED Ok(())"),
        "{allowed:?}"
    );
}
