//! End-to-end smoke tests of the real `calyx-run` binary, as the caller and as nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runner_common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use runner_common::{As, Fixture, text, users};
use serde_json::{Value, json};

#[test]
fn echo_hello_exits_zero_and_prints() {
    let f = Fixture::new();
    let lease = f.lease(
        "echo",
        json!([{"path": "/bin/echo", "args": ["*"]}]),
        json!({}),
    );
    for who in users() {
        let out = f.run(who, &lease, &[], &["/bin/echo", "hello"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{who:?}: stderr {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "hello\n", "{who:?}");
        // The audit log has VERIFIED, STARTED, FINISHED for this run, in that order.
        let log = std::fs::read_to_string(f.audit_of(who)).unwrap();
        let events: Vec<String> = log
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            events,
            [
                "lease_event.VERIFIED",
                "exec_event.STARTED",
                "exec_event.FINISHED"
            ],
            "{who:?}"
        );
    }
}

/// Init passes its network namespace to the runner, which holds it until the run's account is
/// written (its teardown by the kernel then does not compete with closing the run); as root
/// and as nobody alike.
#[test]
fn init_passes_its_network_namespace_to_the_runner() {
    let f = Fixture::new();
    let lease = f.lease("true", json!([{"path": "/usr/bin/true"}]), json!({}));
    for who in users() {
        let out = f
            .command(who, &lease, &[], &["/usr/bin/true"])
            .env("CALYX_TIMELINE", "1")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{who:?}: {err}");
        let at = |mark: &str| {
            err.lines()
                .position(|l| l.ends_with(mark))
                .unwrap_or_else(|| panic!("{who:?}: no {mark:?} in {err}"))
        };
        assert!(
            at("network namespace held (passed by init)") < at("closing record synced"),
            "{who:?}: {err}"
        );
    }
}

#[test]
fn exit_codes_pass_through_and_signals_map_to_128_plus_n() {
    let f = Fixture::new();
    let lease = f.sh_lease("sh", json!({}));
    for who in users() {
        for (script, code) in [
            ("exit 0", 0),
            ("exit 3", 3),
            ("exit 123", 123),
            ("kill -SEGV $$", 128 + 11),
        ] {
            let out = f.run(who, &lease, &[], &["/bin/sh", "-c", script]);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{who:?} {script}: {}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn timeout_kills_the_whole_tree_and_exits_124() {
    let f = Fixture::new();
    let lease = f.sh_lease("sleep", json!({"limits": {"timeout_secs": 1}}));
    for who in users() {
        let t = Instant::now();
        // The payload ignores SIGTERM and leaves a background child: only the SIGKILL of the
        // pid namespace's init after the grace period ends it.
        let out = f.run(
            who,
            &lease,
            &["--json"],
            &["/bin/sh", "-c", "trap '' TERM; sleep 30 & sleep 30"],
        );
        let took = t.elapsed();
        assert_eq!(
            out.status.code(),
            Some(124),
            "{who:?}: {}",
            text(&out.stderr)
        );
        assert!(took < Duration::from_secs(10), "{who:?}: took {took:?}");
        let result: Value =
            serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(result["outcome"], "timeout");
        let log = std::fs::read_to_string(f.audit_of(who)).unwrap();
        assert!(
            log.lines().last().unwrap().contains("exec_event.TIMEOUT"),
            "{who:?}: {log}"
        );
    }
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let f = Fixture::new();
    let grant = f.path("grant");
    std::fs::create_dir(&grant).unwrap();
    std::fs::set_permissions(&grant, std::fs::Permissions::from_mode(0o777)).unwrap();
    let lease = f.sh_lease("dry", json!({"paths": {"write": [grant]}}));
    let marker = grant.join("ran");
    for who in users() {
        let out = f.run(
            who,
            &lease,
            &["--dry-run"],
            &["/bin/sh", "-c", &format!("touch {}", marker.display())],
        );
        assert_eq!(out.status.code(), Some(0), "{who:?}: {}", text(&out.stderr));
        let human = text(&out.stdout);
        assert!(
            human.contains("namespaces user mount pid net ipc uts cgroup"),
            "{human}"
        );
        assert!(
            human.contains(&format!("bind   {} rw,noexec", grant.display())),
            "{human}"
        );
        let out = f.run(
            who,
            &lease,
            &["--dry-run", "--json"],
            &["/bin/sh", "-c", "true"],
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["plan"]["profile"], "default");
        assert_eq!(plan["lease_id"], "LEASE-TEST-dry");
        assert!(!marker.exists(), "{who:?}: dry run executed the command");
        assert!(
            !f.audit_of(who).exists(),
            "{who:?}: dry run wrote the audit log"
        );
    }
}

#[test]
fn env_is_reduced_to_the_grants_and_a_fixed_path() {
    let f = Fixture::new();
    let lease = f.lease(
        "env",
        json!([{"path": "/usr/bin/env"}]),
        json!({"env": {"allow": ["HOME"], "set": {"MODE": "ci"}}}),
    );
    for who in users() {
        let out = f.run(who, &lease, &[], &["/usr/bin/env"]);
        assert_eq!(out.status.code(), Some(0), "{who:?}: {}", text(&out.stderr));
        let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "HOME=/nonexistent",
                "MODE=ci",
                "PATH=/usr/local/bin:/usr/bin:/bin"
            ],
            "{who:?}"
        );
    }
}

#[test]
fn missing_command_is_127_and_noexec_grant_is_126() {
    let f = Fixture::new();
    let dir = f.path("ro");
    std::fs::create_dir(&dir).unwrap();
    let tool = dir.join("tool");
    std::fs::copy("/usr/bin/true", &tool).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lease = f.lease(
        "exec",
        json!([{"path": "/usr/bin/calyx-does-not-exist"}, {"path": tool}]),
        json!({"paths": {"read": [dir]}}),
    );
    for who in users() {
        let out = f.run(who, &lease, &["--json"], &["/usr/bin/calyx-does-not-exist"]);
        assert_eq!(
            out.status.code(),
            Some(127),
            "{who:?}: {}",
            text(&out.stderr)
        );
        // A read grant is mounted noexec (and Landlock grants no execute there).
        let out = f.run(who, &lease, &[], &[tool.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{who:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn refusals_run_nothing_and_are_audited() {
    let f = Fixture::new();
    let lease = f.lease(
        "refuse",
        json!([{"path": "/bin/echo", "args": ["ok"]}]),
        json!({}),
    );
    let missing = f.lease(
        "missing",
        json!([{"path": "/bin/echo", "args": ["*"]}]),
        json!({"paths": {"read": ["/calyx/does/not/exist"]}}),
    );
    let profile = f.lease(
        "profile",
        json!([{"path": "/bin/echo", "args": ["*"]}]),
        json!({"profile": "no-such-profile"}),
    );
    for who in users() {
        let out = f.run(who, &lease, &[], &["/bin/echo", "deploy"]);
        assert_eq!(out.status.code(), Some(77), "{who:?}");
        assert!(
            text(&out.stderr).contains("argv[1] \"deploy\" not allowed by commands[0]"),
            "{}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        let out = f.run(who, &missing, &[], &["/bin/echo", "x"]);
        assert_eq!(out.status.code(), Some(78), "{who:?}");
        assert!(
            text(&out.stderr).contains("/calyx/does/not/exist"),
            "{}",
            text(&out.stderr)
        );
        let out = f.run(who, &profile, &[], &["/bin/echo", "x"]);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{who:?}: {}",
            text(&out.stderr)
        );
        let log = std::fs::read_to_string(f.audit_of(who)).unwrap();
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("lease_event.REJECTED"))
                .count(),
            3,
            "{log}"
        );
        assert!(!log.contains("exec_event.STARTED"));
    }
}

#[test]
fn pinned_sha256_runs_only_the_matching_file() {
    let f = Fixture::new();
    let good = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read("/usr/bin/true").unwrap(),
    ));
    let lease = f.lease("pin", json!([{"path": "/usr/bin/true", "sha256": good}, {"path": "/usr/bin/false", "sha256": good}]), json!({}));
    for who in users() {
        let out = f.run(who, &lease, &[], &["/usr/bin/true"]);
        assert_eq!(out.status.code(), Some(0), "{who:?}: {}", text(&out.stderr));
        let out = f.run(who, &lease, &[], &["/usr/bin/false"]);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{who:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("sha256"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn loopback_is_up_only_when_granted() {
    let f = Fixture::new();
    let script = "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nc = socket.create_connection(s.getsockname())\nprint('connected')";
    let cmd = json!([{"path": "/usr/bin/python3", "args": ["-c", "*"]}]);
    let lo = f.lease("lo", cmd.clone(), json!({"network": "loopback"}));
    let none = f.lease("none", cmd, json!({}));
    for who in users() {
        let out = f.run(who, &lo, &[], &["/usr/bin/python3", "-c", script]);
        assert_eq!(out.status.code(), Some(0), "{who:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "connected\n");
        let out = f.run(who, &none, &[], &["/usr/bin/python3", "-c", script]);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{who:?}: network none let an IP socket connect"
        );
        assert!(
            text(&out.stderr).contains("PermissionError")
                || text(&out.stderr).contains("Operation not permitted"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn interrupt_reaches_the_payload_group() {
    let f = Fixture::new();
    let grant = f.path("int");
    std::fs::create_dir(&grant).unwrap();
    std::fs::set_permissions(&grant, std::fs::Permissions::from_mode(0o777)).unwrap();
    let lease = f.sh_lease("int", json!({"paths": {"write": [grant]}}));
    for who in users() {
        let marker = grant.join(format!("{who:?}"));
        // sh waits for sleep: a SIGINT aimed at sh alone would be held until sleep ends.
        let script = format!("touch {} && sleep 30", marker.display());
        let mut child = f
            .command(who, &lease, &[], &["/bin/sh", "-c", &script])
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !marker.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{who:?}: the payload never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SIGINT to calyx-run (setpriv execs it, so the pid is the same).
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{who:?}");
    }
}

#[test]
fn setuid_calyx_run_refuses() {
    let f = Fixture::new();
    let copy = f.path("calyx-run-setuid");
    std::fs::copy(env!("CARGO_BIN_EXE_calyx-run"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&copy)
        .args(["--lease", "/nonexistent", "--", "/bin/true"])
        .output()
        .unwrap();
    // A nosuid /tmp would make this test meaningless: insist the kernel honoured the bit.
    let mounted_nosuid = text(&std::fs::read("/proc/self/mountinfo").unwrap())
        .lines()
        .any(|l| l.contains(" /tmp ") && l.contains("nosuid"));
    assert!(
        !mounted_nosuid,
        "/tmp is nosuid on this host; the setuid test cannot run here"
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("setuid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn caller_ignoring_sigchld_still_gets_the_exit_status() {
    // Regression: with SIGCHLD ignored by the caller (inherited), the kernel auto-reaped the
    // payload, init never saw its status, and the run ended as a timeout.
    let f = Fixture::new();
    let lease = f.sh_lease("sigign", json!({"limits": {"timeout_secs": 20}}));
    let result = f.path("result.json");
    let bin = env!("CARGO_BIN_EXE_calyx-run");
    let wrapper = "import os, signal, sys\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nos.execv(sys.argv[1], sys.argv[1:])";
    let t = Instant::now();
    let out = std::process::Command::new("python3")
        .args(["-c", wrapper, bin, "--lease"])
        .arg(&lease)
        .arg("--trust")
        .arg(&f.trust)
        .arg("--state-dir")
        .arg(f.fresh_state(As::Caller))
        .arg("--audit-log")
        .arg(&f.audit)
        .arg("--result")
        .arg(&result)
        .args(["--", "/bin/sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(10));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(r["outcome"], "exited");
    assert_eq!(r["exit_code"], 7);
    assert_eq!(r["lease_id"], "LEASE-TEST-sigign");
    assert!(
        r["enforcement"]["landlock"]
            .as_str()
            .unwrap()
            .starts_with("full")
            || r["enforcement"]["landlock"]
                .as_str()
                .unwrap()
                .starts_with("partial")
    );
    assert!(r["usage"]["cpu_user_ms"].is_u64());
}

#[test]
fn closed_stdout_does_not_become_the_audit_log() {
    // With stdout closed, the audit log would be opened as fd 1 and handed to the payload as its
    // stdout; calyx-run puts /dev/null there first.
    let f = Fixture::new();
    let lease = f.lease(
        "closed",
        json!([{"path": "/usr/bin/python3", "args": ["-c", "*"]}]),
        json!({}),
    );
    let bin = env!("CARGO_BIN_EXE_calyx-run");
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "exec \"$@\" >&-", "sh", bin, "--lease"])
        .arg(&lease)
        .arg("--trust")
        .arg(&f.trust)
        .arg("--state-dir")
        .arg(f.fresh_state(As::Caller))
        .arg("--audit-log")
        .arg(&f.audit)
        .args([
            "--",
            "/usr/bin/python3",
            "-c",
            "import os, sys\nsys.stderr.write(os.readlink('/proc/self/fd/1'))\nprint('forged')",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("/dev/null"),
        "{}",
        text(&out.stderr)
    );
    let log = std::fs::read_to_string(&f.audit).unwrap();
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "payload output in the audit log: {line}"
        );
    }
}

#[test]
fn a_json_reader_that_went_away_costs_the_output_not_the_exit_code() {
    // `calyx-run --json … | head -c 100`: the result cannot be written to standard output any
    // more. The run is over and audited; its exit code must stay the payload's, with the
    // write error on stderr (it used to be a panic: abort, or 101).
    let f = Fixture::new();
    let lease = f.sh_lease("gone", json!({}));
    for who in users() {
        let run = |args: &[&str]| {
            // A pipe whose reader is gone before calyx-run starts.
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            f.command(who, &lease, args, &["/bin/sh", "-c", "exit 5"])
                .stdout(writer)
                .output()
                .unwrap()
        };
        let out = run(&["--json"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{who:?}: {err}");
        assert!(
            err.contains("writing the result to standard output"),
            "{who:?}: {err}"
        );
        // The run has its closing record all the same.
        let log = std::fs::read_to_string(f.audit_of(who)).unwrap();
        let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["event"], "exec_event.FINISHED", "{who:?}");
        assert_eq!(last["exit_code"], 5, "{who:?}");
        // A dry run's only output is its plan: not written, the dry run fails (125).
        let out = run(&["--json", "--dry-run"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{who:?}: {err}");
        assert!(
            err.contains("writing the plan to standard output"),
            "{who:?}: {err}"
        );
    }
}
