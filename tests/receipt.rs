//! Run receipts end to end: the real calyx-run signs one after every run with the host key,
//! `calyx receipt verify` accepts it with the host's public key and refuses (77) one flipped
//! byte in the payload or the signature and a wrong key; the receipt binds the lease file,
//! the executable and the run's opening audit line, and the closing audit line carries it, so
//! `calyx receipt get` restores a lost copy. Cases run as root and as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Outcome, PAYLOAD_DONE, Running, Sandbox, User, calyx_bin, run_deadline};
use serde_json::Value;
use sha2::{Digest, Sha256};

both_users!(
    receipt_verifies_and_binds_lease_executable_and_audit_line,
    tampered_receipts_and_wrong_keys_are_refused,
    configured_host_key_is_used_and_a_missing_one_refuses_the_run,
    unwritable_receipt_keeps_the_run_exit_code,
);

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs `sys.exit(42)` with `--json` and `flags`; returns the outcome, result and lease path.
fn run(
    sb: &mut Sandbox,
    user: User,
    flags: &[&str],
    env: &[(String, String)],
) -> (Outcome, Value, PathBuf) {
    let lease = sb.prepared_lease();
    let mut argv = sb.run_argv(
        user,
        &lease,
        &[common::PYTHON, "-c", "import sys; sys.exit(42)"],
    );
    let mut all = vec!["--json"];
    all.extend_from_slice(flags);
    common::insert_run_flags(&mut argv, &all);
    let out = Running::start(&argv, env, None).finish(run_deadline());
    let last = out.stdout.lines().last().unwrap_or_default().to_owned();
    let result: Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("no JSON result ({e}): {out}"));
    (out, result, lease)
}

fn verify(receipt: &Path, public: &Path, json: bool) -> Outcome {
    let mut argv: Vec<OsString> = vec![
        calyx_bin().into(),
        "receipt".into(),
        "verify".into(),
        receipt.into(),
        "--host-key".into(),
        public.into(),
    ];
    if json {
        argv.push("--json".into());
    }
    Running::start(&argv, &[], None).finish(run_deadline())
}

fn receipt_path(result: &Value) -> PathBuf {
    PathBuf::from(
        result["receipt"]
            .as_str()
            .unwrap_or_else(|| panic!("no receipt in {result}")),
    )
}

fn receipt_verifies_and_binds_lease_executable_and_audit_line(user: User) {
    let mut sb = Sandbox::new();
    let (out, result, lease) = run(&mut sb, user, &[], &[]);
    out.assert_code(PAYLOAD_DONE)
        .assert_absent("calyx-run: receipt ");
    let path = receipt_path(&result);
    assert_eq!(
        path,
        sb.state_dir()
            .join("receipts")
            .join(format!("{}.json", result["run_id"].as_str().unwrap()))
    );
    let public = sb.state_dir().join("host-key.pem.pub");
    verify(&path, &public, false)
        .assert_code(0)
        .assert_line(&format!(
            "host       {}",
            fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
        ));
    let v = verify(&path, &public, true);
    v.assert_code(0);
    let checked: Value = serde_json::from_str(v.stdout.trim()).unwrap();
    assert_eq!(checked["valid"], true);
    let r = &checked["receipt"];
    assert_eq!(r["run_id"], result["run_id"]);
    assert_eq!(r["lease_id"], result["lease_id"]);
    assert_eq!(r["intent_id"], "INT-test");
    assert_eq!(r["lease_sha256"], sha(&fs::read(&lease).unwrap()).as_str());
    assert_eq!(r["argv"][0], common::PYTHON);
    assert_eq!(r["outcome"], "exited");
    assert_eq!(r["exit_code"], 42);
    assert_eq!(r["enforcement"], result["enforcement"]);
    assert_eq!(
        r["executable"]["sha256"],
        sha(&fs::read(common::PYTHON).unwrap()).as_str()
    );
    assert_eq!(r["executable"]["source"], "host_file");
    // The opening audit line (STARTED): its hash is the SHA-256 of the line without its
    // newline.
    assert_eq!(r["version"], 2);
    let audit = sb.audit_text();
    let line_of = |event: &str| -> Value {
        let line = audit
            .lines()
            .rfind(|l| l.contains(&format!("\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} in {audit}"));
        serde_json::from_str(line).unwrap()
    };
    let started = audit
        .lines()
        .rfind(|l| l.contains("\"exec_event.STARTED\""))
        .unwrap();
    assert_eq!(r["audit"]["hash"], sha(started.as_bytes()).as_str());
    assert_eq!(r["audit"]["seq"], line_of("exec_event.STARTED")["seq"]);
    // The closing line carries the very envelope of the file.
    let file: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(line_of("exec_event.FINISHED")["receipt"], file);
    // And `calyx receipt get` gives the file back, byte for byte.
    let run_id = result["run_id"].as_str().unwrap();
    let got = get(&sb, run_id, &[]);
    got.assert_code(0);
    assert_eq!(got.stdout.as_bytes(), fs::read(&path).unwrap());
    get(&sb, "RUN-00000000-000000-0000000000000000", &[])
        .assert_code(1)
        .assert_stderr_has("no closing audit line of this run carries a receipt");
}

/// `calyx receipt get RUN_ID --audit-log <the latest run's log> EXTRA…`.
fn get(sb: &Sandbox, run_id: &str, extra: &[&OsStr]) -> Outcome {
    let mut argv: Vec<OsString> = vec![
        calyx_bin().into(),
        "receipt".into(),
        "get".into(),
        run_id.into(),
        "--audit-log".into(),
        sb.audit_log().into(),
    ];
    argv.extend(extra.iter().map(|a| a.to_os_string()));
    Running::start(&argv, &[], None).finish(run_deadline())
}

/// Rewrites the receipt with one byte of the decoded payload or signature flipped.
fn flipped(path: &Path, field: &str, dir: &Path) -> PathBuf {
    let mut env: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let slot = if field == "payload" {
        &mut env["payload"]
    } else {
        &mut env["signatures"][0]["sig"]
    };
    let mut bytes = STANDARD.decode(slot.as_str().unwrap()).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    *slot = Value::String(STANDARD.encode(&bytes));
    let out = dir.join(format!("flipped-{field}.json"));
    fs::write(&out, serde_json::to_vec_pretty(&env).unwrap()).unwrap();
    out
}

fn tampered_receipts_and_wrong_keys_are_refused(user: User) {
    let mut sb = Sandbox::new();
    let (out, result, _) = run(&mut sb, user, &[], &[]);
    out.assert_code(PAYLOAD_DONE);
    let path = receipt_path(&result);
    let public = sb.state_dir().join("host-key.pem.pub");
    verify(&path, &public, false).assert_code(0);
    for field in ["payload", "sig"] {
        let bad = flipped(&path, field, sb.root());
        verify(&bad, &public, false)
            .assert_code(77)
            .assert_stderr_has("bad signature by host key");
        let j = verify(&bad, &public, true);
        j.assert_code(77);
        let v: Value = serde_json::from_str(j.stdout.trim()).unwrap();
        assert_eq!(v["valid"], false);
    }
    // Another key, even a perfectly good one, is not the host key.
    let stranger = sb.stranger_key("mallory");
    let mut stranger_pub = stranger.into_os_string();
    stranger_pub.push(".pub");
    verify(&path, Path::new(&stranger_pub), false)
        .assert_code(77)
        .assert_stderr_has("no signature by host key");
    // A lease envelope is not a receipt.
    let lease = sb.prepared_lease();
    verify(&lease, &public, false)
        .assert_code(77)
        .assert_stderr_has("payloadType");
}

fn configured_host_key_is_used_and_a_missing_one_refuses_the_run(user: User) {
    let mut sb = Sandbox::new();
    let keys = sb.mkdir(&format!("hostkeys-{user:?}"), 0o755);
    let key = keys.join("host.key");
    common::calyx_ok(&[
        OsString::from("key"),
        "gen".into(),
        "--out".into(),
        key.clone().into(),
    ]);
    common::chown(&key, user.uid());
    let mut public = key.clone().into_os_string();
    public.push(".pub");
    // Through the environment.
    let env = vec![("CALYX_HOST_KEY".to_owned(), key.display().to_string())];
    let (out, result, _) = run(&mut sb, user, &[], &env);
    out.assert_code(PAYLOAD_DONE);
    verify(&receipt_path(&result), Path::new(&public), false).assert_code(0);
    assert!(
        !sb.state_dir().join("host-key.pem").exists(),
        "no key generated when one is configured"
    );
    // Through the flag.
    let (out, result, _) = run(&mut sb, user, &["--host-key", key.to_str().unwrap()], &[]);
    out.assert_code(PAYLOAD_DONE);
    verify(&receipt_path(&result), Path::new(&public), false).assert_code(0);
    // A configured key that does not exist: refused before anything runs, never replaced.
    let missing = keys.join("missing.key");
    let (out, result, _) = run(
        &mut sb,
        user,
        &["--host-key", missing.to_str().unwrap()],
        &[],
    );
    out.assert_code(78).assert_stderr_has("host key");
    assert_eq!(result["outcome"], "rejected");
    assert!(!missing.exists());
    assert!(
        !sb.audit_text().contains("exec_event.STARTED"),
        "nothing may run"
    );
}

fn unwritable_receipt_keeps_the_run_exit_code(user: User) {
    // Decision under test: the payload ran and its exit code stands; the missing receipt
    // file is reported on stderr and as receipt_error in the result, and the receipt is not
    // lost: the closing audit line holds it, and `calyx receipt get --out` writes the file.
    let mut sb = Sandbox::new();
    let lease = sb.prepared_lease();
    let mut argv = sb.run_argv(
        user,
        &lease,
        &[common::PYTHON, "-c", "import sys; sys.exit(42)"],
    );
    common::insert_run_flags(&mut argv, &["--json"]);
    // A file where the receipts directory should be.
    fs::write(sb.state_dir().join("receipts"), b"in the way").unwrap();
    let out = Running::start(&argv, &[], None).finish(run_deadline());
    out.assert_code(PAYLOAD_DONE)
        .assert_stderr_has("receipt file not written")
        .assert_stderr_has("calyx receipt get RUN-");
    let result: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["exit_code"], 42);
    assert!(result["receipt"].is_null());
    assert!(
        result["receipt_error"]
            .as_str()
            .unwrap()
            .contains("the closing audit record holds the receipt")
    );
    let restored = sb.root().join(format!("restored-{user:?}.json"));
    let run_id = result["run_id"].as_str().unwrap();
    get(&sb, run_id, &[OsStr::new("--out"), restored.as_os_str()]).assert_code(0);
    let public = sb.state_dir().join("host-key.pem.pub");
    let checked = verify(&restored, &public, false);
    checked.assert_code(0);
    assert!(
        checked
            .stdout
            .starts_with(&format!("OK receipt of {run_id} signed by host key")),
        "{checked}"
    );
    assert!(
        checked.stdout.contains("outcome    exited, exit code 42,"),
        "{checked}"
    );
    // --out never replaces a file.
    get(&sb, run_id, &[OsStr::new("--out"), restored.as_os_str()])
        .assert_code(1)
        .assert_stderr_has("exists");
}
