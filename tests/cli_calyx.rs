//! The real `calyx` binary: keygen → trust add ×2 → issue → sign ×2 → verify, and refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn calyx_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calyx"));
    cmd.current_dir(dir).args(args).env_remove("CALYX_TRUST");
    // A fixed HOME keeps the default policy location away from the real user's, and the
    // state directory (whose ledger `lease verify` reads) away from the host's.
    cmd.env("HOME", dir).env_remove("XDG_CONFIG_HOME");
    cmd.env("CALYX_STATE_DIR", dir.join("state"))
        .env_remove("CALYX_AUDIT_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// A temp dir with keys alice (human) and cp14 (agent) in trust.toml.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        for (id, role) in [("alice", "human"), ("cp14", "agent")] {
            let key = format!("{id}.key");
            let r = f.ok(&["key", "gen", "--out", &key, "--id", id]);
            assert_eq!(r.stdout.trim().len(), 64 + 1 + id.len(), "{}", r.stdout);
            f.ok(&[
                "trust",
                "add",
                "--policy",
                "trust.toml",
                "--pub",
                &format!("{key}.pub"),
                "--id",
                id,
                "--role",
                role,
            ]);
        }
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Run {
        calyx_in(self.dir.path(), args, &[])
    }
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "calyx {args:?} failed: {}", r.stderr);
        r
    }
    /// Runs, expects `code`, returns stderr.
    fn refused(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "calyx {args:?}: stdout {} stderr {}",
            r.stdout, r.stderr
        );
        r.stderr
    }
    fn issue(&self, out: &str, extra: &[&str]) {
        let mut args = vec![
            "lease",
            "issue",
            "--out",
            out,
            "--intent",
            "INT-42",
            "--subject",
            "cp14",
            "--command",
            "/usr/bin/make test",
            "--read",
            "/src",
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }
    fn sign_both(&self, lease: &str) {
        self.ok(&["lease", "sign", lease, "--key", "alice.key"]);
        self.ok(&["lease", "sign", lease, "--key", "cp14.key"]);
    }
    fn verify(&self, lease: &str) -> Run {
        self.run(&["lease", "verify", lease, "--trust", "trust.toml"])
    }
}

#[test]
fn keygen_trust_issue_cosign_verify() {
    let f = Fixture::new();
    assert_eq!(
        std::fs::metadata(f.path("alice.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    f.issue("l.json", &[]);
    let unsigned = f.verify("l.json");
    assert_eq!(
        (unsigned.code, unsigned.stderr.as_str()),
        (77, "calyx: lease is not signed\n")
    );
    f.ok(&["lease", "sign", "l.json", "--key", "alice.key"]);
    let half = f.verify("l.json");
    assert_eq!(
        (half.code, half.stderr.as_str()),
        (77, "calyx: needs 1 agent signature, has 0\n")
    );
    f.ok(&["lease", "sign", "l.json", "--key", "cp14.key"]);
    let r = f.verify("l.json");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("OK LEASE-"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("for intent INT-42: signed by alice (human), cp14 (agent); expires in "),
        "{}",
        r.stdout
    );
    let json: serde_json::Value = serde_json::from_str(
        &f.ok(&[
            "lease",
            "verify",
            "l.json",
            "--trust",
            "trust.toml",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["signers"][1]["role"], "agent");
    // No ledger in the state directory: no use taken, and verifying creates none.
    assert_eq!(json["uses"]["used"], 0);
    assert_eq!(json["uses"]["max"], 1);
    assert!(
        r.stdout.contains("; 0 of 1 use(s) taken (no ledger in "),
        "{}",
        r.stdout
    );
    assert_eq!(json["uses"]["ledger"], serde_json::Value::Null);
    assert!(!f.path("state").exists());
}

#[test]
fn signing_twice_with_one_key_is_a_no_op() {
    let f = Fixture::new();
    f.issue("l.json", &[]);
    f.ok(&["lease", "sign", "l.json", "--key", "alice.key"]);
    std::fs::set_permissions(f.path("l.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read(f.path("l.json")).unwrap();
    let r = f.ok(&["lease", "sign", "l.json", "--key", "alice.key"]);
    assert!(
        r.stdout.contains("is already signed by key"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read(f.path("l.json")).unwrap(), before);
    // Cosigning in place keeps the file's mode.
    f.ok(&["lease", "sign", "l.json", "--key", "cp14.key"]);
    let meta = std::fs::metadata(f.path("l.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn default_trust_policy_comes_from_calyx_trust() {
    let f = Fixture::new();
    f.issue("l.json", &[]);
    f.sign_both("l.json");
    let trust = f.path("trust.toml");
    let r = calyx_in(
        f.dir.path(),
        &["lease", "verify", "l.json"],
        &[("CALYX_TRUST", trust.to_str().unwrap())],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A default policy that does not exist is a configuration error naming the path.
    let r = calyx_in(
        f.dir.path(),
        &["lease", "verify", "l.json"],
        &[("CALYX_TRUST", "missing.toml")],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            78,
            "calyx: opening trust policy missing.toml: No such file or directory (os error 2)\n"
        )
    );
}

#[test]
fn tampered_lease_is_refused() {
    let f = Fixture::new();
    f.issue("l.json", &[]);
    f.sign_both("l.json");
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.path("l.json")).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.decode(env["payload"].as_str().unwrap()).unwrap();
    let body = String::from_utf8(body)
        .unwrap()
        .replace("\"test\"", "\"deploy\"");
    env["payload"] = b64.encode(body).into();
    std::fs::write(f.path("l.json"), env.to_string()).unwrap();
    let r = f.verify("l.json");
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (77, "calyx: bad signature by key alice\n")
    );
    let r = f.run(&[
        "lease",
        "verify",
        "l.json",
        "--trust",
        "trust.toml",
        "--json",
    ]);
    assert_eq!(r.code, 77);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["reason"], "bad signature by key alice");
}

#[test]
fn expired_and_future_leases_from_explicit_times() {
    let f = Fixture::new();
    std::fs::write(
        f.path("past.toml"),
        "not_before = \"2020-01-01T00:00:00Z\"\nexpires_at = \"2020-01-01T01:00:00Z\"\n",
    )
    .unwrap();
    f.ok(&[
        "lease",
        "issue",
        "--out",
        "past.json",
        "--from",
        "past.toml",
        "--command",
        "/bin/true",
    ]);
    f.sign_both("past.json");
    let err = f.refused(
        &["lease", "verify", "past.json", "--trust", "trust.toml"],
        77,
    );
    assert!(
        err.starts_with("calyx: expired ") && err.ends_with(" ago\n"),
        "{err}"
    );
    std::fs::write(
        f.path("future.json"),
        r#"{"not_before": "2999-01-01T00:00:00Z", "expires_at": "2999-01-01T01:00:00Z",
            "commands": [{"path": "/bin/true"}]}"#,
    )
    .unwrap();
    f.ok(&["lease", "issue", "--out", "f.json", "--from", "future.json"]);
    f.sign_both("f.json");
    let err = f.refused(&["lease", "verify", "f.json", "--trust", "trust.toml"], 77);
    assert!(err.starts_with("calyx: not valid for another "), "{err}");
}

#[test]
fn lifetime_over_policy_maximum_is_refused() {
    let f = Fixture::new();
    f.issue("l.json", &["--ttl", "48h"]);
    f.sign_both("l.json");
    let r = f.verify("l.json");
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (77, "calyx: lifetime 48h exceeds policy maximum 24h\n")
    );
}

#[test]
fn oversized_lease_file_is_refused() {
    let f = Fixture::new();
    let file = std::fs::File::create(f.path("big.json")).unwrap();
    file.set_len(100 * 1024 * 1024).unwrap();
    let r = f.verify("big.json");
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (77, "calyx: lease is 1048577+ bytes, limit 1048576\n")
    );
}

#[test]
fn garbage_lease_file_is_refused() {
    let f = Fixture::new();
    std::fs::write(f.path("g.json"), "{\"payloadType\": ").unwrap();
    let err = f.refused(&["lease", "verify", "g.json", "--trust", "trust.toml"], 77);
    assert!(
        err.starts_with("calyx: lease envelope is not valid DSSE JSON: EOF"),
        "{err}"
    );
}

#[test]
fn world_writable_trust_policy_is_refused() {
    let f = Fixture::new();
    f.issue("l.json", &[]);
    f.sign_both("l.json");
    std::fs::set_permissions(f.path("trust.toml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = f.refused(&["lease", "verify", "l.json", "--trust", "trust.toml"], 78);
    assert_eq!(
        err,
        "calyx: trust policy trust.toml is writable by group or others (mode 0666); run `chmod go-w trust.toml`\n"
    );
}

#[test]
fn world_readable_private_key_is_refused() {
    let f = Fixture::new();
    f.issue("l.json", &[]);
    std::fs::set_permissions(f.path("alice.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = f.refused(&["lease", "sign", "l.json", "--key", "alice.key"], 78);
    assert_eq!(
        err,
        "calyx: private key alice.key is accessible by group or others (mode 0644); run `chmod 600 alice.key`\n"
    );
}

#[test]
fn trust_add_refuses_a_duplicate_id_or_key() {
    let f = Fixture::new();
    let err = f.refused(
        &[
            "trust",
            "add",
            "--policy",
            "trust.toml",
            "--pub",
            "cp14.key.pub",
            "--id",
            "cp18",
            "--role",
            "agent",
        ],
        78,
    );
    assert_eq!(
        err,
        "calyx: trust policy trust.toml already has this public key, as \"cp14\"\n"
    );
    f.ok(&["key", "gen", "--out", "bob.key"]);
    let err = f.refused(
        &[
            "trust",
            "add",
            "--policy",
            "trust.toml",
            "--pub",
            "bob.key.pub",
            "--id",
            "alice",
            "--role",
            "human",
        ],
        78,
    );
    assert_eq!(
        err,
        "calyx: trust policy trust.toml already has a key with id \"alice\"\n"
    );
}

#[test]
fn usage_and_draft_errors_exit_2() {
    let f = Fixture::new();
    let err = f.refused(
        &[
            "lease",
            "issue",
            "--out",
            "x.json",
            "--command",
            "make test",
        ],
        2,
    );
    assert_eq!(
        err,
        "calyx: invalid lease: commands[0] path make is not absolute\n"
    );
    let err = f.refused(&["lease", "issue", "--out", "x.json"], 2);
    assert_eq!(
        err,
        "calyx: invalid lease: at least one --command is required\n"
    );
    f.refused(&["lease", "frobnicate"], 2);
    f.refused(
        &[
            "lease",
            "issue",
            "--out",
            "x.json",
            "--command",
            "/bin/true",
            "--network",
            "wide",
        ],
        2,
    );
    assert!(!f.path("x.json").exists());
    // Existing files are never overwritten.
    f.issue("l.json", &[]);
    let err = f.refused(
        &[
            "lease",
            "issue",
            "--out",
            "l.json",
            "--command",
            "/bin/true",
        ],
        1,
    );
    assert_eq!(err, "calyx: refusing to overwrite l.json\n");
    let err = f.refused(&["key", "gen", "--out", "alice.key"], 1);
    assert_eq!(
        err,
        "calyx: refusing to overwrite existing key file alice.key\n"
    );
}

#[test]
fn show_lists_grants_cosigners_and_risks() {
    let f = Fixture::new();
    f.ok(&["key", "gen", "--out", "stranger.key"]);
    f.issue(
        "l.json",
        &[
            "--command",
            "/bin/sh -c *",
            "--write",
            "/work",
            "--exec",
            "/work/bin",
            "--network",
            "loopback",
        ],
    );
    f.ok(&["lease", "sign", "l.json", "--key", "alice.key"]);
    f.ok(&["lease", "sign", "l.json", "--key", "stranger.key"]);
    let out = f
        .ok(&["lease", "show", "l.json", "--trust", "trust.toml"])
        .stdout;
    for want in [
        "  run   /bin/sh -c *\n",
        "  write /work\n",
        "  1. alice (human) ",
        "  2. unknown key ",
        "verification: REFUSED under trust.toml: needs 1 agent signature, has 0; signature 2 by untrusted key ",
        "  - /work/bin is executable and /work is writable",
        "  - commands[1] runs sh, an interpreter",
        "  - commands[1] (/bin/sh -c *) accepts any further arguments",
        "  - network loopback",
        "(expires in 59m",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &f.ok(&["lease", "show", "l.json", "--trust", "trust.toml", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(json["cosigners"][0]["role"], "human");
    assert_eq!(json["cosigners"][1]["id"], serde_json::Value::Null);
    assert_eq!(json["verification"]["ok"], false);
    assert_eq!(json["lease"]["intent_id"], "INT-42");
}

/// Runs calyx in the fixture with standard output sent to `stdout`.
fn calyx_to(f: &Fixture, args: &[&str], stdout: std::process::Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calyx"))
        .current_dir(f.path(""))
        .args(args)
        .env("HOME", f.path(""))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("CALYX_TRUST")
        .env("CALYX_STATE_DIR", f.path("state"))
        .stdout(stdout)
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_went_away_costs_the_output_not_the_command() {
    // `calyx … | head -1`: once the reader is gone, writing to standard output fails (EPIPE).
    // `println!` panicked there, after the command had done its work: abort (134), or 101.
    let f = Fixture::new();
    f.issue("l.json", &[]);
    f.sign_both("l.json");
    let gone = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        std::process::Stdio::from(writer)
    };
    // A command that changes something: it is done, and says nothing about the reader.
    let out = calyx_to(&f, &["key", "gen", "--out", "k3.key"], gone());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(f.path("k3.key").exists() && f.path("k3.key.pub").exists());
    // A command whose answer is its exit code keeps it.
    for (lease, code) in [("l.json", 0), ("nope.json", 77)] {
        let out = calyx_to(
            &f,
            &["lease", "verify", lease, "--trust", "trust.toml"],
            gone(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{lease}: {err}");
    }
    // Any other write error (a full disk) is reported, and fails a command that otherwise
    // succeeded; what it wrote to disk stays.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = calyx_to(&f, &["key", "gen", "--out", "k4.key"], full.into());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing to standard output: No space left on device"),
        "{err}"
    );
    assert!(f.path("k4.key").exists());
}
