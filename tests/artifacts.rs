//! Artifacts end to end: the real calyx-run keeps files from a write grant in the
//! content-addressed store, `calyx artifact get` returns them verified, the size cap stops
//! keeping without changing the run's result, and a symlink planted by the payload is never
//! followed, even when calyx-run is root. Each case runs as root and as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Outcome, PAYLOAD_DONE, Running, Sandbox, User, calyx_bin, run_deadline};
use serde_json::Value;
use sha2::{Digest, Sha256};

both_users!(
    file_and_directory_artifacts_are_kept_and_retrievable,
    over_the_cap_is_not_kept_and_the_run_is_unchanged,
    symlinks_in_the_artifact_dir_are_not_followed,
    artifact_outside_every_write_grant_refuses_the_lease,
    artifacts_are_kept_after_a_timeout,
);

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs a Python payload with `--json` added to calyx-run's flags; returns the outcome and
/// the machine result (the last stdout line).
fn run_json(sb: &mut Sandbox, user: User, code: &str) -> (Outcome, Value) {
    let lease = sb.prepared_lease();
    let mut argv = sb.run_argv(user, &lease, &[common::PYTHON, "-c", code]);
    common::insert_run_flags(&mut argv, &["--json"]);
    let out = Running::start(&argv, &[], None).finish(run_deadline());
    let last = out.stdout.lines().last().unwrap_or_default().to_owned();
    let result: Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("no JSON result ({e}) in: {out}"));
    (out, result)
}

fn get(state: &Path, digest: &str, out: &Path) -> Outcome {
    let argv: Vec<OsString> = vec![
        calyx_bin().into(),
        "artifact".into(),
        "get".into(),
        digest.into(),
        "--out".into(),
        out.into(),
        "--state-dir".into(),
        state.into(),
    ];
    Running::start(&argv, &[], None).finish(run_deadline())
}

fn kept(result: &Value) -> Vec<(String, u64, String)> {
    result["artifacts"]["kept"]
        .as_array()
        .unwrap_or_else(|| panic!("no artifacts in {result}"))
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().to_owned(),
                k["size"].as_u64().unwrap(),
                k["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn skipped(result: &Value) -> Vec<(String, String)> {
    result["artifacts"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().to_owned(),
                k["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn artifact_sandbox(extra: &[&str]) -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    let out = sb.mkdir("out", 0o755);
    let mut sb = sb.write(&out);
    for a in extra {
        sb = sb.issue_arg(a);
    }
    (sb, out)
}

fn file_and_directory_artifacts_are_kept_and_retrievable(user: User) {
    let report = common::unique("report");
    let (sb, out) = artifact_sandbox(&[]);
    let single = out.join("report.txt");
    let tree = out.join("tree");
    let mut sb = sb
        .issue_arg("--artifact")
        .issue_arg(single.to_str().unwrap())
        .issue_arg("--artifact")
        .issue_arg(tree.to_str().unwrap());
    let code = format!(
        "import os, sys\nd = {out:?}\nopen(d + '/report.txt', 'w').write({report:?})\n\
         os.makedirs(d + '/tree/sub')\nopen(d + '/tree/a.bin', 'wb').write(bytes(range(256)) * 40)\n\
         open(d + '/tree/sub/b.txt', 'w').write('bee')\nopen(d + '/tree/sub/same.txt', 'w').write('bee')\n\
         open(d + '/not-listed.txt', 'w').write('x')\nsys.exit(42)"
    );
    let (run, result) = run_json(&mut sb, user, &code);
    run.assert_code(PAYLOAD_DONE);
    let a_bin: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    let want = vec![
        (
            single.display().to_string(),
            report.len() as u64,
            sha(report.as_bytes()),
        ),
        (tree.join("a.bin").display().to_string(), 10240, sha(&a_bin)),
        (tree.join("sub/b.txt").display().to_string(), 3, sha(b"bee")),
        (
            tree.join("sub/same.txt").display().to_string(),
            3,
            sha(b"bee"),
        ),
    ];
    assert_eq!(kept(&result), want, "{run}");
    assert_eq!(
        result["artifacts"]["total_bytes"],
        10240 + 3 + 3 + report.len()
    );
    run.assert_stderr_has("kept 4 artifact file(s)");
    // Stored once per content (the two "bee" files share a blob), 0600.
    let store = sb.state_dir().join("artifacts/sha256");
    let mut blobs: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    let mut digests: Vec<String> = want.iter().map(|w| w.2.clone()).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(blobs, digests);
    let mode = fs::metadata(store.join(&want[0].2))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The audit log lists them.
    let audit = sb.audit_text();
    let persisted: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "artifact_event.PERSISTED")
        .unwrap_or_else(|| panic!("no PERSISTED event in {audit}"));
    assert_eq!(persisted["kept"][0]["sha256"], want[0].2.as_str());
    // Retrieval verifies and refuses to overwrite.
    let dest = sb.root().join(format!("got-{user:?}"));
    get(&sb.state_dir(), &format!("sha256:{}", want[0].2), &dest).assert_code(0);
    assert_eq!(fs::read_to_string(&dest).unwrap(), report);
    get(&sb.state_dir(), &want[1].2, &dest)
        .assert_code(1)
        .assert_stderr_has("refusing to overwrite");
    assert_eq!(fs::read_to_string(&dest).unwrap(), report);
    // A blob altered in the store is refused (77) and nothing is written.
    let blob = store.join(&want[1].2);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&blob, b"tampered").unwrap();
    let dest2 = sb.root().join(format!("got2-{user:?}"));
    get(&sb.state_dir(), &want[1].2, &dest2)
        .assert_code(77)
        .assert_stderr_has("corrupt");
    assert!(!dest2.exists());
}

fn over_the_cap_is_not_kept_and_the_run_is_unchanged(user: User) {
    let (sb, out) = artifact_sandbox(&["--artifact-max", "1000"]);
    let mut sb = sb.issue_arg("--artifact").issue_arg(out.to_str().unwrap());
    let code = format!(
        "import sys\nd = {out:?}\nopen(d + '/a.bin', 'wb').write(b'a' * 600)\n\
         open(d + '/b.bin', 'wb').write(b'b' * 600)\nopen(d + '/c.bin', 'wb').write(b'c' * 10)\n\
         sys.exit(42)"
    );
    let (run, result) = run_json(&mut sb, user, &code);
    run.assert_code(PAYLOAD_DONE)
        .assert_stderr_has("stopped at the cap of 1000 bytes");
    assert_eq!(result["outcome"], "exited");
    assert_eq!(result["exit_code"], 42);
    let k = kept(&result);
    assert_eq!(k.len(), 1, "{result}");
    assert_eq!(k[0].2, sha(&[b'a'; 600]));
    // b.bin would pass the cap: it is named as such, and the walk stops there (c.bin, small
    // enough, is not kept either: the cap stops keeping, it does not pick and choose).
    assert_eq!(
        skipped(&result),
        vec![(out.join("b.bin").display().to_string(), "over_cap".into())]
    );
    assert_eq!(result["artifacts"]["stopped"], true);
    let store = sb.state_dir().join("artifacts/sha256");
    assert_eq!(
        fs::read_dir(&store).unwrap().count(),
        1,
        "only a.bin stored"
    );
}

fn symlinks_in_the_artifact_dir_are_not_followed(user: User) {
    let secret = common::unique("host-secret");
    let (sb, out) = artifact_sandbox(&[]);
    // A root-only host file the payload cannot read: only a runner that follows the link as
    // root would copy it.
    let host_secret = sb.root().join("secret.txt");
    fs::write(&host_secret, &secret).unwrap();
    fs::set_permissions(&host_secret, fs::Permissions::from_mode(0o600)).unwrap();
    let via = out.join("via");
    let mut sb = sb
        .issue_arg("--artifact")
        .issue_arg(out.to_str().unwrap())
        .issue_arg("--artifact")
        .issue_arg(via.join("shadow").to_str().unwrap());
    let code = format!(
        "import os, sys\nd = {out:?}\nos.symlink('/etc/shadow', d + '/shadow')\n\
         os.symlink({host_secret:?}, d + '/secret')\nos.symlink('/etc', d + '/via')\n\
         os.mkdir(d + '/real')\nopen(d + '/real/ok.txt', 'w').write('ok')\n\
         os.symlink('ok.txt', d + '/real/inside-link')\nsys.exit(42)",
        host_secret = host_secret.display().to_string(),
    );
    let (run, result) = run_json(&mut sb, user, &code);
    run.assert_code(PAYLOAD_DONE).assert_absent(&secret);
    let k = kept(&result);
    assert_eq!(
        k,
        vec![(out.join("real/ok.txt").display().to_string(), 2, sha(b"ok"))],
        "{run}"
    );
    let mut s = skipped(&result);
    s.sort();
    let p = |rel: &str| out.join(rel).display().to_string();
    assert_eq!(
        s,
        vec![
            (p("real/inside-link"), "symlink".into()),
            (p("secret"), "symlink".into()),
            (p("shadow"), "symlink".into()),
            (p("via"), "symlink".into()),
            (p("via/shadow"), "through_symlink".into()),
        ]
    );
    // Nothing in the store holds the secret or /etc/shadow.
    let shadow = fs::read("/etc/shadow").unwrap();
    let store = sb.state_dir().join("artifacts/sha256");
    for e in fs::read_dir(&store).unwrap() {
        let content = fs::read(e.unwrap().path()).unwrap();
        assert_ne!(content, shadow);
        assert_ne!(content, secret.as_bytes());
    }
}

fn artifact_outside_every_write_grant_refuses_the_lease(user: User) {
    let marker = common::unique("ran");
    let (sb, out) = artifact_sandbox(&["--artifact", "/tmp/result"]);
    let mut sb = sb;
    let code = format!(
        "open({:?} + '/m', 'w').write({marker:?})",
        out.display().to_string()
    );
    let lease = sb.prepared_lease();
    let argv = sb.run_argv(user, &lease, &[common::PYTHON, "-c", &code]);
    let run = Running::start(&argv, &[], None).finish(run_deadline());
    run.assert_code(78)
        .assert_stderr_has("artifacts.paths entry /tmp/result is not inside any paths.write grant");
    assert!(!out.join("m").exists(), "nothing may run: {run}");
}

fn artifacts_are_kept_after_a_timeout(user: User) {
    // The payload is killed by the wall-clock timeout; what it wrote before is still kept,
    // and the result stays a timeout (124).
    let (sb, out) = artifact_sandbox(&[]);
    let mut sb = sb
        .timeout_secs(1)
        .issue_arg("--artifact")
        .issue_arg(out.to_str().unwrap());
    let code = format!(
        "import time\nopen({:?} + '/partial.log', 'w').write('step 1')\ntime.sleep(30)",
        out.display().to_string()
    );
    let (run, result) = run_json(&mut sb, user, &code);
    run.assert_code(124);
    assert_eq!(result["outcome"], "timeout");
    assert_eq!(
        kept(&result),
        vec![(
            out.join("partial.log").display().to_string(),
            6,
            sha(b"step 1")
        )]
    );
}
