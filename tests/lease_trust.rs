//! Trust policy files and key files: ownership and permission rules, validation, editing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;

use calyx::lease::keys::{self, KeyError};
use calyx::lease::trust::{Role, TrustError, TrustPolicy};
use ed25519_dalek::SigningKey;

fn pem(seed: u8) -> String {
    keys::public_key_pem(&SigningKey::from_bytes(&[seed; 32]).verifying_key()).unwrap()
}

fn entry(id: &str, role: &str, seed: u8) -> String {
    format!(
        "[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{}\"\"\"\n\n",
        pem(seed)
    )
}

fn parse(text: &str) -> Result<TrustPolicy, TrustError> {
    TrustPolicy::from_toml_str(text, Path::new("p.toml"))
}

fn write_policy(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("trust.toml");
    std::fs::write(
        &path,
        entry("alice", "human", 1) + &entry("cp14", "agent", 2),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn caller_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn a_private_policy_owned_by_the_caller_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), 0o644);
    let pol = TrustPolicy::load(&path, caller_uid()).unwrap();
    assert_eq!(pol.keys.len(), 2);
    assert_eq!(pol.keys[1].role, Role::Agent);
    assert_eq!(pol.requirements.low.humans, 1);
    assert_eq!(pol.requirements.max_lifetime_secs, 86_400);
    assert_eq!(pol.requirements.clock_skew_secs, 60);
}

#[test]
fn world_writable_trust_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), 0o666);
    let err = TrustPolicy::load(&path, caller_uid()).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "trust policy {p} is writable by group or others (mode 0666); run `chmod go-w {p}`"
        )
    );
    let path = write_policy(dir.path(), 0o664);
    assert!(matches!(
        TrustPolicy::load(&path, caller_uid()),
        Err(TrustError::Writable { mode: 0o664, .. })
    ));
}

#[test]
fn trust_policy_owned_by_someone_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), 0o644);
    if chown(&path, Some(4242), None).is_err() {
        panic!("this test needs to chown a file (run as root, as the test host does)");
    }
    let err = TrustPolicy::load(&path, 1000).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "trust policy {} is owned by uid 4242, not by root or you (uid 1000)",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(err.exit_code(), 78);
    // The same file is fine for its owner.
    assert!(TrustPolicy::load(&path, 4242).is_ok());
}

#[test]
fn unknown_policy_fields_are_refused() {
    let err = parse("[requirements]\nhumanz = 1\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `humanz`"), "{err}");
}

#[test]
fn a_stated_keyid_must_match_the_key() {
    let text = entry("alice", "human", 1) + "keyid = \"00ff\"\n";
    // The keyid line lands in the alice table because it follows it.
    let err = parse(&text).unwrap_err();
    assert!(matches!(err, TrustError::KeyidMismatch { .. }), "{err}");
    let good = keys::keyid(&SigningKey::from_bytes(&[1; 32]).verifying_key());
    assert!(parse(&(entry("alice", "human", 1) + &format!("keyid = \"{good}\"\n"))).is_ok());
}

#[test]
fn one_key_under_two_ids_is_refused() {
    let err = parse(&(entry("alice", "human", 1) + &entry("bot", "agent", 1))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "trust policy p.toml: key \"bot\" is the same public key as \"alice\""
    );
    let err = parse(&(entry("alice", "human", 1) + &entry("alice", "agent", 2))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "trust policy p.toml: key id \"alice\" appears twice"
    );
}

#[test]
fn requirements_are_validated() {
    let keys = entry("alice", "human", 1) + &entry("cp14", "agent", 2);
    let cases = [
        (
            "humans = 0\nagents = 0",
            "requirements for low risk need no signature at all",
        ),
        (
            "agent_ids = [\"cp18\"]",
            "agent_ids names \"cp18\", which is not an agent key in this policy",
        ),
        (
            "agent_ids = [\"alice\"]",
            "agent_ids names \"alice\", which is not an agent key in this policy",
        ),
        (
            "max_lifetime = \"0s\"",
            "requirements.max_lifetime must be more than 0s",
        ),
        (
            "clock_skew = \"2h\"",
            "requirements.clock_skew 2h is more than the 1h maximum; fix the clocks (NTP) instead",
        ),
        (
            "[requirements.high]\nhumans = 0\nagents = 1",
            "requirements.high asks for fewer human signatures than the tier below it",
        ),
    ];
    for (req, want) in cases {
        let err = parse(&format!("[requirements]\n{req}\n\n{keys}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("trust policy p.toml: {want}"),
            "{req}"
        );
    }
    let err = parse(&format!(
        "[requirements]\nmax_lifetime = \"1 day\"\n\n{keys}"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("trust policy p.toml, requirements.max_lifetime: invalid duration")
    );
}

#[test]
fn trust_add_refuses_duplicate_ids_and_keys_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let k1 = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let k2 = SigningKey::from_bytes(&[2; 32]).verifying_key();
    let pol = TrustPolicy::empty_default()
        .with_key("alice", Role::Human, &k1, &path)
        .unwrap();
    let err = pol.with_key("alice", Role::Agent, &k2, &path).unwrap_err();
    assert!(matches!(err, TrustError::IdTaken { .. }), "{err}");
    let err = pol.with_key("bob", Role::Agent, &k1, &path).unwrap_err();
    assert!(
        matches!(err, TrustError::KeyTaken { ref id, .. } if id == "alice"),
        "{err}"
    );
    let pol = pol.with_key("cp14", Role::Agent, &k2, &path).unwrap();
    pol.write(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    let back = TrustPolicy::load(&path, caller_uid()).unwrap();
    assert_eq!(back.keys, pol.keys);
    assert_eq!(back.requirements, pol.requirements);
}

#[test]
fn world_readable_private_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    keys::generate(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keys::load_signing_key(&path).unwrap_err();
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "private key {p} is accessible by group or others (mode 0644); run `chmod 600 {p}`"
        )
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        keys::load_signing_key(&path),
        Err(KeyError::TooOpen { mode: 0o640, .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(keys::load_signing_key(&path).is_ok());
}

#[test]
fn keys_interoperate_with_openssl_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let generated = keys::generate(&path).unwrap();
    let private = std::fs::read_to_string(&path).unwrap();
    assert!(
        private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{private}"
    );
    let public = std::fs::read_to_string(&generated.public_path).unwrap();
    assert!(
        public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public}"
    );
    // When openssl is installed, it must derive the same public key from the private one.
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&path)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), public);
    } else {
        eprintln!("SKIPPED openssl cross-check: openssl is not installed");
    }
}

#[test]
fn the_example_policy_parses_and_means_what_it_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/trust.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let pol = TrustPolicy::from_toml_str(&text, Path::new(path)).unwrap();
    let ids: Vec<_> = pol.keys.iter().map(|k| (k.id.as_str(), k.role)).collect();
    assert_eq!(
        ids,
        [
            ("alice", Role::Human),
            ("bob", Role::Human),
            ("cp14", Role::Agent),
            ("cp18", Role::Agent)
        ]
    );
    let r = &pol.requirements;
    assert_eq!((r.low.humans, r.low.agents), (1, 1));
    assert_eq!((r.high.humans, r.high.agents), (2, 1));
    assert_eq!(r.medium, r.low);
    assert_eq!(
        r.agent_ids.as_deref(),
        Some(&["cp14".to_owned(), "cp18".to_owned()][..])
    );
    assert_eq!((r.max_lifetime_secs, r.clock_skew_secs), (86_400, 60));
}
