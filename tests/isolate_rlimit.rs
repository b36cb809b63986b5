//! rlimits are process-wide, so they are applied in a child process: this test binary
//! re-executes itself to run `child_applies_rlimits` alone, with an environment variable
//! telling that function it is the child. The parent checks the child's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use calyx::isolate::rlimit::{Resource, apply_rlimits, status_line};

const CHILD_ENV: &str = "CALYX_TEST_RLIMIT_CHILD";

/// The child's half: does nothing unless started by `rlimits_apply_in_a_child_process`.
#[test]
fn child_applies_rlimits() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // First lower nofile's hard limit, then ask for more than it: the request is lowered.
    apply_rlimits(&[(Resource::Nofile, 128)]).unwrap();
    let applied = apply_rlimits(&[(Resource::Core, 0), (Resource::Nofile, 4096)]).unwrap();
    println!("REPORT {}", status_line(&applied));
    // Inherited across fork and exec.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -n; ulimit -c")
        .output()
        .unwrap();
    println!(
        "SHELL {}",
        String::from_utf8_lossy(&out.stdout)
            .replace('\n', " ")
            .trim()
    );
}

#[test]
fn rlimits_apply_in_a_child_process() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "child_applies_rlimits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("REPORT rlimits: core=0 nofile=128 (asked 4096)"),
        "{stdout}"
    );
    assert!(stdout.contains("SHELL 128 0"), "{stdout}");
}
