//! Bad input to `calyx-run` (issue #3, SPEC §3.4 and §4.5): each case asserts the documented
//! exit code, the key part of the message, and that nothing ran — the allowed command would
//! have created a marker file in a write grant, and it must not exist afterwards. Every case
//! runs as root and as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Outcome, Sandbox, Signing, User, Wiring, set_mode};

both_users!(
    unknown_profile,
    read_path_missing,
    empty_command,
    argv_not_allowed,
    lease_for_another_host,
    command_missing_in_view,
    command_not_executable,
    tampered_lease,
    unsigned_lease,
    expired_lease,
    one_signature_only,
    trust_policy_world_writable,
    trust_policy_owned_by_another_user,
    grant_path_through_symlink,
    user_namespaces_unavailable,
    signed_payload_with_unknown_field,
    signed_payload_with_future_version,
    signed_payload_with_duplicate_key,
    oversized_lease,
    signed_by_strangers,
    same_key_signs_twice,
    lease_not_yet_valid,
    lease_lifetime_beyond_policy,
    trust_policy_missing,
    lease_file_missing,
);

/// Replay of a `max_uses = 1` lease: the ledger refuses the second use (issue 6).
#[test]
fn lease_replayed_root() {
    if common::tier_ready(User::Root, "lease_replayed") {
        lease_replayed(User::Root);
    }
}

/// See [`lease_replayed_root`].
#[test]
fn lease_replayed_nobody() {
    if common::tier_ready(User::Nobody, "lease_replayed") {
        lease_replayed(User::Nobody);
    }
}

/// Only meaningful for an unprivileged caller: for root, real and effective uid are equal.
#[test]
fn started_setuid_as_nobody() {
    if common::tier_ready(User::Nobody, "started_setuid_as_nobody") {
        started_setuid(User::Nobody);
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A scenario whose allowed command is `/usr/bin/touch <work>/marker`.
struct Marked {
    sb: Sandbox,
    marker: PathBuf,
    touch: String,
}

impl Marked {
    fn new() -> Marked {
        let sb = Sandbox::new();
        let work = sb.mkdir("work", 0o755);
        let marker = work.join("marker");
        let touch = format!("/usr/bin/touch {}", marker.display());
        let sb = sb.write(&work).commands(&[&touch]);
        Marked { sb, marker, touch }
    }

    /// The allowed argv, owned, so it can be passed while `sb` is borrowed mutably.
    fn argv(&self) -> Vec<String> {
        self.touch.split(' ').map(str::to_owned).collect()
    }

    fn run(&mut self, user: User) -> Outcome {
        let argv = self.argv();
        self.sb.run_as(user, &strs(&argv))
    }

    /// Runs the allowed argv with a given lease.
    fn run_with(&mut self, user: User, lease: &Path) -> Outcome {
        let argv = self.argv();
        self.sb.run_with_lease(user, lease, &strs(&argv))
    }

    /// Nothing ran: no marker, and no STARTED record in the audit log.
    fn assert_nothing_ran(&self, out: &Outcome) {
        assert!(!self.marker.exists(), "the command ran anyway: {out}");
        let audit = self.sb.audit_text();
        assert!(
            !audit.contains("exec_event.STARTED"),
            "the audit log records a start for a refused run:\n{audit}\n{out}"
        );
    }

    /// The command did not run (no marker); the audit log is not consulted, because the
    /// sandbox was set up before exec failed and may legitimately record a start.
    fn assert_marker_absent(&self, out: &Outcome) {
        assert!(!self.marker.exists(), "the command ran anyway: {out}");
    }

    /// A lease refusal writes `lease_event.REJECTED` (SPEC §3.4).
    fn assert_rejected_audited(&self, out: &Outcome) {
        let audit = self.sb.audit_text();
        assert!(
            audit.contains("lease_event.REJECTED"),
            "no lease_event.REJECTED in the audit log:\n{audit}\n{out}"
        );
    }
}

fn unknown_profile(user: User) {
    let mut m = Marked::new();
    m.sb = m.sb.issue_arg("--profile").issue_arg("no-such-profile-zq");
    let out = m.run(user);
    out.assert_code(78).assert_stderr_has("no-such-profile-zq");
    m.assert_nothing_ran(&out);
}

fn read_path_missing(user: User) {
    let mut m = Marked::new();
    let missing = m.sb.root().join("does-not-exist");
    m.sb = m.sb.read(&missing);
    let out = m.run(user);
    assert!(matches!(out.code(), 77 | 78), "missing read path: {out}");
    out.assert_stderr_has(missing.to_str().unwrap());
    m.assert_nothing_ran(&out);
}

fn empty_command(user: User) {
    let mut m = Marked::new();
    let out = m.sb.run_as(user, &[]);
    out.assert_code(2);
    assert!(
        out.stderr.to_lowercase().contains("usage") || out.stderr.contains("command"),
        "the usage error does not say what is missing: {out}"
    );
    m.assert_nothing_ran(&out);
    // An empty string as the command is not a command either.
    let out = m.sb.run_as(user, &[""]);
    assert!(matches!(out.code(), 2 | 77), "empty argv[0]: {out}");
    m.assert_nothing_ran(&out);
}

fn argv_not_allowed(user: User) {
    let mut m = Marked::new();
    let other = m.sb.root().join("work/other");
    let other_s = other.to_str().unwrap().to_owned();
    let out = m.sb.run_as(user, &["/usr/bin/touch", &other_s]);
    out.assert_code(77).assert_stderr_has("commands[0]");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
    assert!(!other.exists(), "the disallowed argv ran: {out}");
    // A different executable with the allowed arguments is refused too.
    let marker = m.marker.to_str().unwrap().to_owned();
    let out =
        m.sb.run_as(user, &["/bin/sh", "-c", &format!("touch {marker}")]);
    out.assert_code(77)
        .assert_stderr_has("\"/bin/sh\" not allowed")
        .assert_stderr_has("/usr/bin/touch");
    m.assert_nothing_ran(&out);
}

fn lease_for_another_host(user: User) {
    let mut m = Marked::new();
    m.sb = m.sb.issue_arg("--host").issue_arg("other-host-zq");
    let out = m.run(user);
    out.assert_code(77).assert_stderr_has("host");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn command_missing_in_view(user: User) {
    let mut m = Marked::new();
    m.sb = m.sb.command("/opt/calyx-missing-zq/tool");
    let out = m.sb.run_as(user, &["/opt/calyx-missing-zq/tool"]);
    out.assert_code(127)
        .assert_stderr_has("/opt/calyx-missing-zq/tool");
    m.assert_marker_absent(&out);
}

fn command_not_executable(user: User) {
    let mut m = Marked::new();
    let data = m.sb.mkdir("data", 0o755);
    let script = data.join("script.sh");
    fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\n", m.marker.display()),
    )
    .unwrap();
    set_mode(&script, 0o644);
    let script_s = script.to_str().unwrap().to_owned();
    m.sb = m.sb.read(&data).command(&script_s);
    let out = m.sb.run_as(user, &[&script_s]);
    out.assert_code(126).assert_stderr_has(&script_s);
    m.assert_marker_absent(&out);
}

/// Flips one byte of the signed payload (`INT-test` → `INT-tesu`) and keeps the signatures.
fn tamper(lease: &Path) {
    let text = fs::read_to_string(lease).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(&text).unwrap();
    let payload = env["payload"].as_str().expect("envelope has a payload");
    let mut bytes = STANDARD.decode(payload).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"INT-test")
        .expect("payload names the intent");
    bytes[at + 7] = b'u';
    env["payload"] = STANDARD.encode(&bytes).into();
    fs::write(lease, serde_json::to_vec(&env).unwrap()).unwrap();
}

fn tampered_lease(user: User) {
    let mut m = Marked::new();
    let lease = m.sb.prepared_lease();
    tamper(&lease);
    let argv = m.argv();
    let out = m.sb.run_with_lease(user, &lease, &strs(&argv));
    out.assert_code(77).assert_stderr_has("signature");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn unsigned_lease(user: User) {
    let mut m = Marked::new();
    m.sb = m.sb.signing(Signing::Unsigned);
    let out = m.run(user);
    // "not signed" or "no signature": either names what is missing.
    out.assert_code(77).assert_stderr_has("sign");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn expired_lease(user: User) {
    let mut m = Marked::new();
    // Explicit past times through `--from`: valid for one hour on 2020-01-01.
    let spec = m.sb.file(
        "expired.json",
        r#"{"issued_at": "2020-01-01T00:00:00Z", "not_before": "2020-01-01T00:00:00Z",
            "expires_at": "2020-01-01T01:00:00Z"}"#,
        0o644,
    );
    m.sb = m.sb.issue_arg("--from").issue_arg(spec.to_str().unwrap());
    let out = m.run(user);
    out.assert_code(77).assert_stderr_has("expired");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn one_signature_only(user: User) {
    let mut m = Marked::new();
    m.sb = m.sb.signing(Signing::Unsigned);
    let lease = m.sb.prepared_lease();
    m.sb.sign_human_only(&lease);
    let argv = m.argv();
    let out = m.sb.run_with_lease(user, &lease, &strs(&argv));
    // SPEC §3.4: "needs 1 agent signature from …, has 0".
    out.assert_code(77).assert_stderr_has("agent");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn trust_policy_world_writable(user: User) {
    let mut m = Marked::new();
    set_mode(m.sb.trust(), 0o666);
    let out = m.run(user);
    let trust = m.sb.trust().to_str().unwrap().to_owned();
    out.assert_code(78).assert_stderr_has(&trust);
    m.assert_nothing_ran(&out);
}

fn lease_replayed(user: User) {
    let mut m = Marked::new();
    let lease = m.sb.prepared_lease();
    let argv = m.argv();
    let first = m.sb.run_with_lease(user, &lease, &strs(&argv));
    first.assert_code(0);
    assert!(
        m.marker.exists(),
        "the first, valid run did not run: {first}"
    );
    fs::remove_file(&m.marker).unwrap();
    // Same lease (max_uses 1), same state dir: the ledger must refuse the second use.
    let second = m.sb.run_with_lease(user, &lease, &strs(&argv));
    second
        .assert_code(77)
        .assert_stderr_has("used 1 of 1 time(s)");
    assert!(!m.marker.exists(), "the replayed lease ran again: {second}");
    // One start (the first run) and a refusal naming the spent uses.
    let audit = m.sb.audit_text();
    assert_eq!(audit.matches("exec_event.STARTED").count(), 1, "{audit}");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("lease_event.REJECTED") && l.contains("used 1 of 1")),
        "no REJECTED record with the reason:\n{audit}"
    );
}

fn started_setuid(user: User) {
    let mut m = Marked::new();
    // A setuid-root copy of calyx-run: SPEC §4.2 says it refuses to run at all.
    let bin = m.sb.mkdir("bin", 0o755).join("calyx-run");
    fs::copy(common::run_bin(), &bin).unwrap();
    common::chown(&bin, 0);
    set_mode(&bin, 0o4755);
    let lease = m.sb.prepared_lease();
    let cmd = m.argv();
    let mut argv = m.sb.run_argv(user, &lease, &strs(&cmd));
    let at = argv
        .iter()
        .position(|a| Path::new(a) == common::run_bin())
        .unwrap();
    argv[at] = bin.clone().into_os_string();
    let out = common::Running::start(&argv, &[], None).finish(common::run_deadline());
    assert!(
        matches!(out.code(), 77 | 78 | 125),
        "a setuid calyx-run did not refuse: {out}"
    );
    out.assert_stderr_has("setuid");
    m.assert_nothing_ran(&out);
}

fn grant_path_through_symlink(user: User) {
    // A grant whose path was swapped for a symlink (e.g. by whoever owns a shared work dir)
    // must not expose the link's target: calyx refuses it and names the path.
    let mut m = Marked::new();
    let hidden = m.sb.mkdir("root-only", 0o700);
    fs::write(hidden.join("secret"), "top secret").unwrap();
    let link = m.sb.root().join("work/data");
    std::os::unix::fs::symlink(&hidden, &link).unwrap();
    m.sb = m.sb.read(&link);
    let out = m.run(user);
    assert!(matches!(out.code(), 77 | 78), "symlinked grant: {out}");
    out.assert_stderr_has(link.to_str().unwrap())
        .assert_stderr_has("symbolic link");
    m.assert_nothing_ran(&out);
}

fn user_namespaces_unavailable(user: User) {
    // Issue #3: a host lacking a required layer → 125 with the remedy. calyx-run is started
    // as root of a user namespace that may not create further ones.
    let mut m = Marked::new();
    // Inside that namespace only the caller's uid is mapped: the trust policy must belong to
    // it to be accepted (owned by root or the invoking user).
    common::chown(m.sb.trust(), user.uid());
    m.sb = m.sb.wiring(Wiring::NoUserNamespaces);
    let out = m.run(user);
    out.assert_code(125)
        .assert_stderr_has("max_user_namespaces")
        .assert_stderr_has("remedy");
    m.assert_nothing_ran(&out);
}

/// Rewrites the payload with `edit`, drops the signatures, and cosigns it again, so the
/// signatures are valid and only the payload's content is wrong (SPEC §3.4 step 4).
fn resign_with(m: &mut Marked, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    m.sb.set_signing(Signing::Unsigned);
    let lease = m.sb.prepared_lease();
    let text = fs::read_to_string(&lease).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bytes = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    let mut payload: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    edit(&mut payload);
    env["payload"] = STANDARD
        .encode(serde_json::to_vec(&payload).unwrap())
        .into();
    env["signatures"] = serde_json::json!([]);
    fs::write(&lease, serde_json::to_vec(&env).unwrap()).unwrap();
    m.sb.sign(&lease);
    lease
}

fn signed_payload_with_duplicate_key(user: User) {
    // Two `commands` keys: parsers disagree on which one wins (first, last, error), so a
    // signer shown one and a runner obeying the other is the attack; calyx must refuse.
    let mut m = Marked::new();
    m.sb.set_signing(Signing::Unsigned);
    let lease = m.sb.prepared_lease();
    let text = fs::read_to_string(&lease).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bytes = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    let payload = String::from_utf8(bytes).unwrap();
    let evil = payload.replacen('{', r#"{"commands":[{"path":"/bin/sh","args":["*"]}],"#, 1);
    env["payload"] = STANDARD.encode(evil.as_bytes()).into();
    env["signatures"] = serde_json::json!([]);
    fs::write(&lease, serde_json::to_vec(&env).unwrap()).unwrap();
    m.sb.sign(&lease);
    let marker = m.marker.to_str().unwrap().to_owned();
    // Whichever `commands` a lenient parser kept, this argv matches one of them.
    let out =
        m.sb.run_with_lease(user, &lease, &["/bin/sh", "-c", &format!("touch {marker}")]);
    out.assert_code(77).assert_stderr_has("duplicate");
    m.assert_nothing_ran(&out);
    let out = m.run_with(user, &lease);
    out.assert_code(77).assert_stderr_has("duplicate");
    m.assert_nothing_ran(&out);
}

fn signed_payload_with_unknown_field(user: User) {
    let mut m = Marked::new();
    let lease = resign_with(&mut m, |p| p["escalate"] = serde_json::json!(true));
    let argv = m.argv();
    let out = m.sb.run_with_lease(user, &lease, &strs(&argv));
    out.assert_code(77).assert_stderr_has("escalate");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn signed_payload_with_future_version(user: User) {
    let mut m = Marked::new();
    let lease = resign_with(&mut m, |p| p["version"] = serde_json::json!(2));
    let argv = m.argv();
    let out = m.sb.run_with_lease(user, &lease, &strs(&argv));
    out.assert_code(77).assert_stderr_has("version");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn oversized_lease(user: User) {
    // SPEC §3.4 step 1: read at most a fixed number of bytes. A 1 GiB (sparse) lease file
    // must be refused at once, not read.
    let mut m = Marked::new();
    let lease = m.sb.root().join("huge-lease.json");
    let file = fs::File::create(&lease).unwrap();
    file.set_len(1 << 30).unwrap();
    set_mode(&lease, 0o644);
    let argv = m.argv();
    let out = m.sb.run_with_lease(user, &lease, &strs(&argv));
    assert!(matches!(out.code(), 77 | 78), "oversized lease: {out}");
    assert!(
        out.elapsed < std::time::Duration::from_secs(3),
        "took {:?}: was the whole file read?\n{out}",
        out.elapsed
    );
    // There is one lease on the command line, so the bound is the key part, not the path.
    out.assert_stderr_has("bytes").assert_stderr_has("limit");
    m.assert_nothing_ran(&out);
}

fn trust_policy_owned_by_another_user(user: User) {
    // SPEC §3.3: a policy neither root's nor the caller's could have been planted for the
    // caller to trust. uid 1 (daemon) is neither, for both tiers.
    let mut m = Marked::new();
    common::chown(m.sb.trust(), 1);
    let out = m.run(user);
    let trust = m.sb.trust().to_str().unwrap().to_owned();
    out.assert_code(78).assert_stderr_has(&trust);
    m.assert_nothing_ran(&out);
}

fn signed_by_strangers(user: User) {
    // Two valid signatures by keys the trust policy does not name count for nothing.
    let mut m = Marked::new();
    m.sb.set_signing(Signing::Unsigned);
    let lease = m.sb.prepared_lease();
    for name in ["mallory", "trudy"] {
        let key = m.sb.stranger_key(name);
        m.sb.sign_with(&lease, &key);
    }
    let out = m.run_with(user, &lease);
    out.assert_code(77).assert_stderr_has("needs");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn same_key_signs_twice(user: User) {
    // SPEC §3.3: a key signing twice adds nothing; alice twice is still no agent.
    let mut m = Marked::new();
    m.sb.set_signing(Signing::Unsigned);
    let lease = m.sb.prepared_lease();
    let alice = m.sb.human_key().to_owned();
    m.sb.sign_with(&lease, &alice);
    // `calyx lease sign` may refuse a second signature by the same key; then add it by hand.
    let text = fs::read_to_string(&lease).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sigs = env["signatures"].as_array().cloned().unwrap_or_default();
    if sigs.len() == 1 {
        env["signatures"] = serde_json::json!([sigs[0].clone(), sigs[0].clone()]);
        fs::write(&lease, serde_json::to_vec(&env).unwrap()).unwrap();
    }
    let out = m.run_with(user, &lease);
    out.assert_code(77);
    // Either counted once ("needs 1 agent signature") or refused outright ("signed twice").
    assert!(
        out.stderr.contains("agent") || out.stderr.contains("twice"),
        "the refusal does not say why: {out}"
    );
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn lease_not_yet_valid(user: User) {
    let mut m = Marked::new();
    let spec = m.sb.file(
        "future.json",
        r#"{"not_before": "2099-01-01T00:00:00Z", "expires_at": "2099-01-01T01:00:00Z"}"#,
        0o644,
    );
    m.sb = m.sb.issue_arg("--from").issue_arg(spec.to_str().unwrap());
    let out = m.run(user);
    out.assert_code(77).assert_stderr_has("not valid");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn lease_lifetime_beyond_policy(user: User) {
    // The generated trust policy allows 24 h; a 48 h lease is refused even while current.
    let mut m = Marked::new();
    m.sb = m.sb.issue_arg("--ttl").issue_arg("48h");
    let out = m.run(user);
    out.assert_code(77).assert_stderr_has("lifetime");
    m.assert_rejected_audited(&out);
    m.assert_nothing_ran(&out);
}

fn trust_policy_missing(user: User) {
    let mut m = Marked::new();
    let trust = m.sb.trust().to_owned();
    fs::remove_file(&trust).unwrap();
    let out = m.run(user);
    out.assert_code(78)
        .assert_stderr_has(trust.to_str().unwrap());
    m.assert_nothing_ran(&out);
}

fn lease_file_missing(user: User) {
    let mut m = Marked::new();
    let lease = m.sb.root().join("no-such-lease.json");
    let out = m.run_with(user, &lease);
    assert!(matches!(out.code(), 77 | 78), "missing lease: {out}");
    out.assert_stderr_has(lease.to_str().unwrap());
    m.assert_nothing_ran(&out);
}
