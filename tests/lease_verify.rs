//! Library-level verification: every bad input refused with its exact reason, clock injected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use calyx::lease::envelope::Envelope;
use calyx::lease::keys;
use calyx::lease::model::LEASE_PAYLOAD_TYPE;
use calyx::lease::trust::{Role, TrustPolicy};
use calyx::lease::verify::{
    MAX_LEASE_BYTES, VerifyContext, VerifyError, read_lease_file, verify_envelope_bytes,
};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2030-01-01 12:00:00 UTC);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}
fn alice() -> SigningKey {
    key(1)
}
fn dave() -> SigningKey {
    key(2)
}
fn cp14() -> SigningKey {
    key(3)
}
fn cp99() -> SigningKey {
    key(4)
}
fn mallory() -> SigningKey {
    key(9)
}

fn key_entry(id: &str, role: &str, k: &SigningKey) -> String {
    let pem = keys::public_key_pem(&k.verifying_key()).unwrap();
    format!("[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{pem}\"\"\"\n\n")
}

/// alice and dave are humans, cp14 and cp99 agents; `requirements` is the TOML body of the
/// `[requirements]` table.
fn policy_text(requirements: &str) -> String {
    format!(
        "[requirements]\n{requirements}\n\n{}{}{}{}",
        key_entry("alice", "human", &alice()),
        key_entry("dave", "human", &dave()),
        key_entry("cp14", "agent", &cp14()),
        key_entry("cp99", "agent", &cp99()),
    )
}

fn policy(requirements: &str) -> TrustPolicy {
    TrustPolicy::from_toml_str(&policy_text(requirements), Path::new("test.toml")).unwrap()
}

fn default_policy() -> TrustPolicy {
    policy("")
}

fn ctx(now: OffsetDateTime) -> VerifyContext {
    VerifyContext {
        now,
        host_ids: vec!["host-a".to_owned()],
    }
}

/// A valid payload from NOW-1h to NOW+1h.
fn payload() -> Value {
    json!({
        "version": 1,
        "lease_id": "LEASE-20300101-110000-0badcafe",
        "intent_id": "INT-1",
        "issuer": "pipeline",
        "subject": "cp14",
        "issued_at": "2030-01-01T11:00:00Z",
        "not_before": "2030-01-01T11:00:00Z",
        "expires_at": "2030-01-01T13:00:00Z",
        "commands": [{"path": "/usr/bin/make", "args": ["test"]}],
        "paths": {"read": ["/src"], "write": ["/src/target"]},
        "limits": {"memory_bytes": 268435456, "pids": 64}
    })
}

fn envelope(body: &[u8], signers: &[SigningKey]) -> Envelope {
    let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, body);
    for k in signers {
        env.sign(k).unwrap();
    }
    env
}

fn signed(payload: &Value, signers: &[SigningKey]) -> Vec<u8> {
    let body = serde_json::to_vec(payload).unwrap();
    envelope(&body, signers).to_json_pretty().into_bytes()
}

/// Verifies and returns the refusal text, asserting the exit code is 77.
fn refusal(raw: &[u8], policy: &TrustPolicy, now: OffsetDateTime) -> String {
    let err = verify_envelope_bytes(raw, policy, &ctx(now)).expect_err("lease must be refused");
    assert_eq!(err.exit_code(), 77, "{err}");
    err.to_string()
}

#[test]
fn a_lease_signed_by_one_human_and_one_agent_verifies() {
    let raw = signed(&payload(), &[alice(), cp14()]);
    let v = verify_envelope_bytes(&raw, &default_policy(), &ctx(NOW)).unwrap();
    assert_eq!(v.lease.lease_id, "LEASE-20300101-110000-0badcafe");
    let roles: Vec<_> = v.signers.iter().map(|s| (s.id.as_str(), s.role)).collect();
    assert_eq!(roles, [("alice", Role::Human), ("cp14", Role::Agent)]);
    let env = Envelope::from_json(&raw).unwrap();
    let body = env.payload_bytes().unwrap();
    assert_eq!(v.payload_sha256, hex::encode(sha2::Sha256::digest(&body)));
}

use sha2::Digest as _;

#[test]
fn truncated_envelope_is_refused() {
    let raw = signed(&payload(), &[alice(), cp14()]);
    let msg = refusal(&raw[..raw.len() / 2], &default_policy(), NOW);
    assert!(
        msg.starts_with("lease envelope is not valid DSSE JSON: EOF while parsing"),
        "{msg}"
    );
}

#[test]
fn non_json_envelope_is_refused() {
    let msg = refusal(b"payloadType: yaml?\n", &default_policy(), NOW);
    assert!(
        msg.starts_with("lease envelope is not valid DSSE JSON: expected value at line 1"),
        "{msg}"
    );
}

#[test]
fn payload_that_is_not_base64_is_refused() {
    let raw =
        json!({"payloadType": LEASE_PAYLOAD_TYPE, "payload": "not*base64!", "signatures": []});
    let msg = refusal(raw.to_string().as_bytes(), &default_policy(), NOW);
    assert!(msg.starts_with("payload is not valid base64: "), "{msg}");
}

#[test]
fn signature_that_is_not_base64_is_refused() {
    let mut env = envelope(&serde_json::to_vec(&payload()).unwrap(), &[alice(), cp14()]);
    env.signatures[1].sig = "%%%".to_owned();
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(msg, "signature 2 is not a base64 Ed25519 signature");
}

#[test]
fn wrong_payload_type_is_refused() {
    let body = serde_json::to_vec(&payload()).unwrap();
    let mut env = Envelope::unsigned("application/x", &body);
    env.sign(&alice()).unwrap();
    env.sign(&cp14()).unwrap();
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(
        msg,
        "payloadType \"application/x\" is not application/vnd.calyx.lease.v1+json"
    );
}

#[test]
fn unsigned_lease_is_refused() {
    let msg = refusal(&signed(&payload(), &[]), &default_policy(), NOW);
    assert_eq!(msg, "lease is not signed");
}

#[test]
fn unknown_payload_field_signed_by_valid_keys_is_refused() {
    let mut p = payload();
    p["foo"] = json!(1);
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(msg, "unknown field \"foo\" in payload");
}

#[test]
fn unknown_nested_payload_field_is_refused() {
    let mut p = payload();
    p["limits"]["gpu"] = json!(1);
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(msg, "unknown field \"gpu\" in payload");
}

#[test]
fn payload_is_not_parsed_before_it_is_authorized() {
    // Only a human signed: the refusal is about signatures, not the malformed payload.
    let msg = refusal(b"x", &default_policy(), NOW);
    assert!(msg.starts_with("lease envelope"), "{msg}");
    let mut p = payload();
    p["foo"] = json!(1);
    let msg = refusal(&signed(&p, &[alice()]), &default_policy(), NOW);
    assert_eq!(msg, "needs 1 agent signature, has 0");
}

#[test]
fn unsupported_version_is_refused() {
    let mut p = payload();
    p["version"] = json!(2);
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(
        msg,
        "payload version 2 is not supported (this build understands 1)"
    );
}

#[test]
fn signature_by_a_key_not_in_the_policy_adds_nothing() {
    let raw = signed(&payload(), &[alice(), mallory()]);
    let msg = refusal(&raw, &default_policy(), NOW);
    let short = &keys::keyid(&mallory().verifying_key())[..8];
    assert_eq!(
        msg,
        format!("needs 1 agent signature, has 0; signature 2 by untrusted key {short}…")
    );
}

#[test]
fn the_same_key_twice_cannot_fake_two_roles() {
    let body = serde_json::to_vec(&payload()).unwrap();
    let mut env = envelope(&body, &[alice()]);
    let dup = env.signatures[0].clone();
    env.signatures.push(dup);
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(msg, "key alice signed twice");
}

#[test]
fn roles_come_only_from_the_policy() {
    // Two human keys: however the lease or its signers describe themselves, no agent signed.
    let mut p = payload();
    p["subject"] = json!("alice-as-agent");
    let msg = refusal(&signed(&p, &[alice(), dave()]), &default_policy(), NOW);
    assert_eq!(msg, "needs 1 agent signature, has 0");
    // A human's signature filed under an agent's keyid does not make it the agent's.
    let body = serde_json::to_vec(&payload()).unwrap();
    let mut env = envelope(&body, &[dave(), alice()]);
    env.signatures[1].keyid = keys::keyid(&cp14().verifying_key());
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(msg, "bad signature by key cp14");
}

#[test]
fn a_flipped_signature_byte_is_a_bad_signature() {
    let body = serde_json::to_vec(&payload()).unwrap();
    let mut env = envelope(&body, &[alice(), cp14()]);
    let mut sig = STANDARD.decode(&env.signatures[0].sig).unwrap();
    sig[10] ^= 0x01;
    env.signatures[0].sig = STANDARD.encode(sig);
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(msg, "bad signature by key alice");
}

#[test]
fn a_tampered_payload_is_a_bad_signature() {
    let mut env = envelope(&serde_json::to_vec(&payload()).unwrap(), &[alice(), cp14()]);
    let mut p = payload();
    p["commands"][0]["args"] = json!(["*"]);
    env.payload = STANDARD.encode(serde_json::to_vec(&p).unwrap());
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert_eq!(msg, "bad signature by key alice");
}

#[test]
fn agent_outside_the_allowlist_does_not_count() {
    let pol = policy("agent_ids = [\"cp14\"]");
    let msg = refusal(&signed(&payload(), &[alice(), cp99()]), &pol, NOW);
    assert_eq!(msg, "needs 1 agent signature from cp14, has 0");
    assert!(
        verify_envelope_bytes(&signed(&payload(), &[alice(), cp14()]), &pol, &ctx(NOW)).is_ok()
    );
}

#[test]
fn high_risk_needs_two_humans() {
    let pol = policy("[requirements.high]\nhumans = 2\nagents = 1");
    let mut p = payload();
    p["risk"] = json!("high");
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &pol, NOW);
    assert_eq!(msg, "risk high: needs 2 human signatures, has 1");
    assert!(
        verify_envelope_bytes(&signed(&p, &[alice(), cp14(), dave()]), &pol, &ctx(NOW)).is_ok()
    );
    // The same two signatures suffice at low risk.
    assert!(
        verify_envelope_bytes(&signed(&payload(), &[alice(), cp14()]), &pol, &ctx(NOW)).is_ok()
    );
}

#[test]
fn expired_lease_says_how_long_ago() {
    let raw = signed(&payload(), &[alice(), cp14()]);
    let msg = refusal(&raw, &default_policy(), datetime!(2030-01-01 13:03:00 UTC));
    assert_eq!(msg, "expired 3m ago");
    // Inside the default 60 s skew it is still accepted.
    let late = datetime!(2030-01-01 13:00:59 UTC);
    assert!(verify_envelope_bytes(&raw, &default_policy(), &ctx(late)).is_ok());
    let msg = refusal(&raw, &default_policy(), datetime!(2030-01-01 13:01:00 UTC));
    assert_eq!(msg, "expired 1m ago");
}

#[test]
fn not_yet_valid_lease_says_for_how_long() {
    let raw = signed(&payload(), &[alice(), cp14()]);
    let msg = refusal(&raw, &default_policy(), datetime!(2030-01-01 09:00:00 UTC));
    assert_eq!(msg, "not valid for another 2h");
    let early = datetime!(2030-01-01 10:59:01 UTC);
    assert!(verify_envelope_bytes(&raw, &default_policy(), &ctx(early)).is_ok());
}

#[test]
fn lifetime_over_the_policy_maximum_is_refused() {
    let mut p = payload();
    p["expires_at"] = json!("2030-01-03T11:00:00Z");
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(msg, "lifetime 48h exceeds policy maximum 24h");
    let pol = policy("max_lifetime = \"3d\"");
    assert!(verify_envelope_bytes(&signed(&p, &[alice(), cp14()]), &pol, &ctx(NOW)).is_ok());
}

#[test]
fn empty_window_is_refused() {
    let mut p = payload();
    p["expires_at"] = json!("2030-01-01T11:00:00Z");
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(
        msg,
        "lease window is empty: expires_at 2030-01-01T11:00:00Z is not after not_before 2030-01-01T11:00:00Z"
    );
}

#[test]
fn lease_bound_to_another_host_is_refused() {
    let mut p = payload();
    p["hosts"] = json!(["host-b", "host-c"]);
    let msg = refusal(&signed(&p, &[alice(), cp14()]), &default_policy(), NOW);
    assert_eq!(
        msg,
        "lease is bound to hosts host-b|host-c, and this host is host-a"
    );
    p["hosts"] = json!(["host-b", "host-a"]);
    let raw = signed(&p, &[alice(), cp14()]);
    assert!(verify_envelope_bytes(&raw, &default_policy(), &ctx(NOW)).is_ok());
}

#[test]
fn a_100_mb_file_is_refused_after_reading_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.lease");
    let file = std::fs::File::create(&path).unwrap();
    // Sparse: 100 MB of apparent size, no disk blocks.
    file.set_len(100 * 1024 * 1024).unwrap();
    let err = read_lease_file(&path).unwrap_err();
    assert!(matches!(err, VerifyError::TooLarge { at_least } if at_least == MAX_LEASE_BYTES + 1));
    assert_eq!(err.to_string(), "lease is 1048577+ bytes, limit 1048576");
    assert_eq!(err.exit_code(), 77);
    // Bytes handed over directly get the same bound.
    let msg = refusal(&vec![b' '; MAX_LEASE_BYTES + 1], &default_policy(), NOW);
    assert_eq!(msg, "lease is 1048577+ bytes, limit 1048576");
}

#[test]
fn a_lease_at_the_bound_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.lease");
    std::fs::write(&path, vec![b' '; MAX_LEASE_BYTES]).unwrap();
    assert_eq!(read_lease_file(&path).unwrap().len(), MAX_LEASE_BYTES);
}

#[test]
fn missing_lease_file_names_the_path() {
    let err = read_lease_file(Path::new("/nonexistent/x.lease")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "reading lease /nonexistent/x.lease: No such file or directory (os error 2)"
    );
    assert_eq!(err.exit_code(), 77);
}

#[test]
fn duplicate_payload_keys_are_refused() {
    // Two parsers could pick different copies of a repeated key; refusing it leaves no choice.
    let body = serde_json::to_string(&payload()).unwrap();
    let body = body.replacen("{", "{\"subject\":\"root\",", 1);
    let env = envelope(body.as_bytes(), &[alice(), cp14()]);
    let msg = refusal(env.to_json_pretty().as_bytes(), &default_policy(), NOW);
    assert!(
        msg.starts_with("payload is not a valid lease: duplicate field `subject`"),
        "{msg}"
    );
}

#[test]
fn duplicate_envelope_keys_are_refused() {
    let raw = signed(&payload(), &[alice(), cp14()]);
    let text = String::from_utf8(raw).unwrap();
    let text = text.replacen("{", "{\"payload\": \"e30=\",", 1);
    let msg = refusal(text.as_bytes(), &default_policy(), NOW);
    assert!(
        msg.starts_with("lease envelope is not valid DSSE JSON: duplicate field `payload`"),
        "{msg}"
    );
}

#[test]
fn this_host_is_known_by_its_hostname() {
    // What uname(2) reports is what procfs holds, and a lease bound to it matches here.
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(calyx::sys::proc::hostname(), name.trim());
    assert!(
        calyx::lease::verify::local_host_ids()
            .iter()
            .any(|id| id == name.trim())
    );
}
