//! `cargo xtask demo`: the main job end to end, in a throw-away directory.
//!
//! A human and an agent make keys and a trust policy; the issuer drafts a lease; both cosign
//! it; it verifies; a forged copy and a lease missing its human signature are refused; then the
//! lease runs a command inside the sandbox, where reading a host secret, writing outside the
//! grant and opening a network connection are each refused; a replay beyond the lease's uses
//! is refused by the ledger; the audit log verifies and a tampered copy does not; each run's
//! receipt verifies with the host key and a copy with one flipped byte does not.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::util::{self, Result, cargo, fail, header, repo_root, run, show};

pub fn demo() -> Result<()> {
    header("build");
    run(cargo().args(["build", "--quiet", "--bins"]))?;
    let bin = util::bin_dir(&util::target_dir(), "debug")?;
    let dir = scratch_dir()?;
    let result = walkthrough(&bin, &dir);
    // The directory holds throw-away keys only; leave nothing behind either way.
    let _ = fs::remove_dir_all(&dir);
    result
}

fn walkthrough(bin: &Path, dir: &Path) -> Result<()> {
    let calyx = |args: &[&str]| {
        let mut c = Command::new(bin.join("calyx"));
        c.args(args);
        c
    };
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();

    header("keys: a human (alice) and an agent (cp14)");
    step(&mut calyx(&[
        "key",
        "gen",
        "--out",
        &p("alice.key"),
        "--id",
        "alice",
    ]))?;
    step(&mut calyx(&[
        "key",
        "gen",
        "--out",
        &p("cp14.key"),
        "--id",
        "cp14",
    ]))?;
    step(&mut calyx(&[
        "key",
        "gen",
        "--out",
        &p("mallory.key"),
        "--id",
        "mallory",
    ]))?;

    header("trust policy: one human and one agent must cosign");
    let trust = p("trust.toml");
    let pubkey = |n: &str| p(&format!("{n}.key.pub"));
    step(&mut calyx(&[
        "trust",
        "add",
        "--policy",
        &trust,
        "--pub",
        &pubkey("alice"),
        "--id",
        "alice",
        "--role",
        "human",
    ]))?;
    step(&mut calyx(&[
        "trust",
        "add",
        "--policy",
        &trust,
        "--pub",
        &pubkey("cp14"),
        "--id",
        "cp14",
        "--role",
        "agent",
    ]))?;

    header("the issuer drafts a lease");
    fs::create_dir_all(dir.join("project")).map_err(|e| fail(format!("mkdir project: {e}")))?;
    fs::create_dir_all(dir.join("out")).map_err(|e| fail(format!("mkdir out: {e}")))?;
    write(&dir.join("project/input.txt"), "build input\n")?;
    write(&dir.join("host-secret.txt"), "the host's secret\n")?;
    let lease = p("lease.json");
    step(&mut calyx(&[
        "lease",
        "issue",
        "--out",
        &lease,
        "--intent",
        "INT-demo-1",
        // Two runs below; the ledger refuses a third.
        "--max-uses",
        "2",
        "--subject",
        "cp14",
        "--command",
        "/bin/echo *",
        "--command",
        "/usr/bin/python3 -c *",
        "--read",
        &p("project"),
        "--write",
        &p("out"),
        "--ttl",
        "1h",
        "--timeout",
        "30s",
    ]))?;

    header("alice (human) and cp14 (agent) cosign it");
    step(&mut calyx(&[
        "lease",
        "sign",
        &lease,
        "--key",
        &p("alice.key"),
    ]))?;
    step(&mut calyx(&[
        "lease",
        "sign",
        &lease,
        "--key",
        &p("cp14.key"),
    ]))?;
    step(&mut calyx(&["lease", "show", &lease, "--trust", &trust]))?;

    header("anyone verifies it offline (and the ledger: no use taken yet)");
    let state = p("state");
    step(&mut calyx(&[
        "lease",
        "verify",
        &lease,
        "--trust",
        &trust,
        "--state-dir",
        &state,
    ]))?;

    header("a forged copy (subject changed after signing) is refused");
    let forged = p("forged.json");
    forge(Path::new(&lease), Path::new(&forged))?;
    refused(
        &mut calyx(&["lease", "verify", &forged, "--trust", &trust]),
        77,
    )?;

    header("a lease cosigned by an untrusted key instead of the human is refused");
    let half = p("half.json");
    step(&mut calyx(&[
        "lease",
        "issue",
        "--out",
        &half,
        "--intent",
        "INT-demo-2",
        "--subject",
        "cp14",
        "--command",
        "/bin/echo *",
        "--ttl",
        "1h",
    ]))?;
    step(&mut calyx(&[
        "lease",
        "sign",
        &half,
        "--key",
        &p("mallory.key"),
    ]))?;
    step(&mut calyx(&[
        "lease",
        "sign",
        &half,
        "--key",
        &p("cp14.key"),
    ]))?;
    refused(
        &mut calyx(&["lease", "verify", &half, "--trust", &trust]),
        77,
    )?;

    header("the lease runs a command inside the sandbox");
    let audit = p("audit.jsonl");
    let calyx_run = |argv: &[&str]| {
        let mut c = Command::new(bin.join("calyx-run"));
        c.args([
            "--lease",
            &lease,
            "--trust",
            &trust,
            "--state-dir",
            &state,
            "--audit-log",
            &audit,
        ])
        .arg("--")
        .args(argv);
        c
    };
    step(&mut calyx_run(&[
        "/bin/echo",
        "hello from inside the sandbox",
    ]))?;

    header("inside the sandbox: read a host secret, write outside the grant, connect out");
    // A listener on the host's loopback: the sandbox has its own network namespace and no
    // interface, so nothing may reach it.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail(format!("listen: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| fail(format!("{e}")))?
        .port();
    let attack = format!(
        r#"
import socket
def attempt(what, f):
    try:
        f()
        print(f"  {{what}}: ALLOWED (this is a bug)")
    except OSError as e:
        print(f"  {{what}}: denied ({{e.strerror}})")
attempt("read {secret}", lambda: open("{secret}").read())
attempt("write {outside}", lambda: open("{outside}", "w").write("x"))
attempt("connect 127.0.0.1:{port}", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
print("  read the granted {input}:", open("{input}").read().strip())
"#,
        secret = p("host-secret.txt"),
        outside = p("outside.txt"),
        input = p("project/input.txt"),
    );
    step(&mut calyx_run(&["/usr/bin/python3", "-c", &attack]))?;
    if dir.join("outside.txt").exists() {
        return Err(fail("the sandbox wrote outside its grant"));
    }

    header("a third run: the lease allows two uses, and the ledger refuses a replay");
    refused(&mut calyx_run(&["/bin/echo", "once more"]), 77)?;
    step(&mut calyx(&["lease", "list", "--state-dir", &state]))?;

    header("the audit trail of these runs");
    let log = fs::read_to_string(&audit).map_err(|e| fail(format!("reading {audit}: {e}")))?;
    for line in log.lines() {
        println!("  {}", summarize(line));
    }

    header("the audit log's hash chain verifies; a copy with one edited line does not");
    step(&mut calyx(&["audit", "verify", &audit]))?;
    let tampered = p("audit-tampered.jsonl");
    tamper_first_exit_code(&log, Path::new(&tampered))?;
    println!("  (copied the log and changed the exit code of its first closing record to 0)");
    refused(&mut calyx(&["audit", "verify", &tampered]), 1)?;

    header("every run ends with a receipt signed by this host's key");
    let receipts = receipts_of(&dir.join("state/receipts"))?;
    let host_pub = p("state/host-key.pem.pub");
    for r in &receipts {
        step(&mut calyx(&[
            "receipt",
            "verify",
            &r.to_string_lossy(),
            "--host-key",
            &host_pub,
        ]))?;
    }
    let first = receipts
        .first()
        .ok_or_else(|| fail("no receipt was written"))?;
    let flipped = p("receipt-flipped.json");
    flip_signature_byte(first, Path::new(&flipped))?;
    println!("  (copied the first receipt and flipped one byte of its signature)");
    refused(
        &mut calyx(&["receipt", "verify", &flipped, "--host-key", &host_pub]),
        77,
    )?;
    println!("\ndemo finished: every refusal above happened, and the host is untouched");
    Ok(())
}

/// Writes `log` to `dst` with the first closing record's exit code changed: the line still
/// parses, only its hash no longer matches the next line's `prev`.
fn tamper_first_exit_code(log: &str, dst: &Path) -> Result<()> {
    let mut done = false;
    let mut out = String::new();
    for line in log.lines() {
        let mut l = line.to_owned();
        if !done && l.contains("\"event\":\"exec_event.FINISHED\"") {
            for (from, to) in [
                ("\"exit_code\":1", "\"exit_code\":0"),
                ("\"exit_code\":0", "\"exit_code\":1"),
            ] {
                if l.contains(from) {
                    l = l.replacen(from, to, 1);
                    done = true;
                    break;
                }
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    if !done {
        return Err(fail("no closing record with an exit code to tamper with"));
    }
    write(dst, &out)
}

/// The receipts in `dir`, sorted by name.
fn receipts_of(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| fail(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    Ok(out)
}

/// Copies the receipt envelope at `src` to `dst` with one bit of its first signature changed.
fn flip_signature_byte(src: &Path, dst: &Path) -> Result<()> {
    let text =
        fs::read_to_string(src).map_err(|e| fail(format!("reading {}: {e}", src.display())))?;
    let mut env: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", src.display())))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = env["signatures"][0]["sig"]
        .as_str()
        .ok_or_else(|| fail("receipt without a signature"))?;
    let mut raw = b64
        .decode(sig)
        .map_err(|e| fail(format!("receipt signature: {e}")))?;
    if let Some(b) = raw.get_mut(10) {
        *b ^= 0x01;
    }
    env["signatures"][0]["sig"] = serde_json::Value::String(b64.encode(raw));
    write(dst, &env.to_string())
}

/// One audit line in brief: event, run, command and outcome (the full line is JSON).
fn summarize(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return format!("(not JSON) {line}");
    };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let cmd = v["argv"][0].as_str().unwrap_or("-");
    let mut out = format!("{:<22} {} {cmd}", s("event"), s("run_id"));
    if let Some(o) = v["outcome"].as_str() {
        out.push_str(&format!(" -> {o} (exit {})", v["exit_code"]));
    }
    // The achieved enforcement is in the closing record; STARTED carries the plan.
    let e = &v["enforcement"];
    if v["event"] == "exec_event.FINISHED" {
        let ns = e["namespaces"].as_array().map_or(0, Vec::len);
        let field = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!(
            "\n{:>24}{ns} namespaces; landlock {}; seccomp {}; cgroup {}",
            "",
            field("landlock"),
            field("seccomp"),
            field("cgroup")
        ));
    }
    out
}

/// Runs a step that must succeed, echoing the command.
fn step(cmd: &mut Command) -> Result<()> {
    println!("$ {}", brief(cmd));
    run(cmd)
}

/// Runs a step that must be refused with `code`.
fn refused(cmd: &mut Command, code: i32) -> Result<()> {
    println!("$ {}", brief(cmd));
    let status = cmd
        .status()
        .map_err(|e| fail(format!("{}: {e}", show(cmd))))?;
    match status.code() {
        Some(c) if c == code => {
            println!("  (refused, exit {c}, as it should be)");
            Ok(())
        }
        other => Err(fail(format!(
            "expected exit {code}, got {other:?}: {}",
            show(cmd)
        ))),
    }
}

/// The command line with the scratch directory shortened, for readable output.
fn brief(cmd: &Command) -> String {
    let s = show(cmd);
    match util::bin_dir(&util::target_dir(), "debug") {
        Ok(bin) => s.replace(&format!("{}/", bin.display()), ""),
        Err(_) => s,
    }
}

/// Rewrites the payload's subject without re-signing: what an attacker holding a signed lease
/// would try.
fn forge(src: &Path, dst: &Path) -> Result<()> {
    let text = fs::read_to_string(src).map_err(|e| fail(format!("{}: {e}", src.display())))?;
    let mut env: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("envelope: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = env["payload"]
        .as_str()
        .ok_or_else(|| fail("envelope has no payload"))?;
    let raw = b64
        .decode(payload)
        .map_err(|e| fail(format!("payload: {e}")))?;
    let forged = String::from_utf8_lossy(&raw).replace("\"cp14\"", "\"cp18\"");
    env["payload"] = serde_json::Value::String(b64.encode(forged));
    write(dst, &env.to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| fail(format!("writing {}: {e}", path.display())))
}

/// A fresh directory under `target/`. Not under `/tmp`: the sandbox has a private `/tmp` of its
/// own, so a path there would name the sandbox's scratch space, not the host's file.
fn scratch_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = repo_root().join(format!("target/demo-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
    Ok(dir)
}
