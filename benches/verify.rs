//! Full verification of a typical lease: read the file, parse the envelope, check two Ed25519
//! signatures against a trust policy, parse the payload, check time, host and lifetime.
//! The target is more than 5,000 verifications per second on one core.
//!
//! A second function times one `verify_strict` alone: on a busy machine the total is
//! dominated by the two signature checks, and the pair of figures shows whether a slow result
//! is the host or the code around the cryptography.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use calyx::lease::envelope::Envelope;
use calyx::lease::keys;
use calyx::lease::model::LEASE_PAYLOAD_TYPE;
use calyx::lease::trust::TrustPolicy;
use calyx::lease::verify::{VerifyContext, read_lease_file, verify_envelope_bytes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use time::macros::datetime;

fn typical_lease() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "lease_id": "LEASE-20300101-110000-7f3a9c01",
        "intent_id": "INT-20300101-0042",
        "issuer": "deploy-pipeline",
        "subject": "cp14",
        "issued_at": "2030-01-01T11:00:00Z",
        "not_before": "2030-01-01T11:00:00Z",
        "expires_at": "2030-01-01T13:00:00Z",
        "risk": "medium",
        "profile": "default",
        "commands": [
            {"path": "/usr/bin/make", "args": ["test"]},
            {"path": "/usr/bin/cargo", "args": ["build", "--release", "*"]},
            {"path": "/bin/sh", "args": ["-c", "*"]}
        ],
        "paths": {
            "read": ["/src", "/usr/share/zoneinfo", "/etc/ssl/certs"],
            "write": ["/src/target", "/tmp/build"],
            "exec": ["/usr/bin", "/src/target/release"]
        },
        "env": {"allow": ["HOME", "LANG", "TERM"], "set": {"CI": "true", "RUSTFLAGS": "-D warnings"}},
        "network": "none",
        "limits": {"timeout_secs": 600, "memory_bytes": 2147483648u64, "pids": 256, "cpu": 1.5},
        "halt": [{"metric": "memory_percent", "above": 90.0, "for_ms": 500, "action": "kill"}],
        "artifacts": {"paths": ["/src/target/release/app"], "max_bytes": 104857600},
        "require": {"layers": ["user_ns", "seccomp", "landlock"]}
    })
}

fn bench_verify(c: &mut Criterion) {
    let alice = SigningKey::from_bytes(&[1; 32]);
    let cp14 = SigningKey::from_bytes(&[2; 32]);
    let entry = |id: &str, role: &str, k: &SigningKey| {
        let pem = keys::public_key_pem(&k.verifying_key()).unwrap();
        format!("[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{pem}\"\"\"\n")
    };
    let mut text = String::new();
    for (i, seed) in (10u8..20).enumerate() {
        // A policy of realistic size: a dozen keys, the signers among them.
        text += &entry(
            &format!("k{i}"),
            "human",
            &SigningKey::from_bytes(&[seed; 32]),
        );
    }
    text += &entry("alice", "human", &alice);
    text += &entry("cp14", "agent", &cp14);
    let policy = TrustPolicy::from_toml_str(&text, Path::new("bench.toml")).unwrap();

    let body = serde_json::to_vec_pretty(&typical_lease()).unwrap();
    let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, &body);
    env.sign(&alice).unwrap();
    env.sign(&cp14).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lease.json");
    std::fs::write(&path, env.to_json_pretty()).unwrap();
    let ctx = VerifyContext {
        now: datetime!(2030-01-01 12:00:00 UTC),
        host_ids: vec!["bench-host".to_owned()],
    };

    let mut group = c.benchmark_group("lease");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_file_two_signatures", |b| {
        b.iter(|| {
            let raw = read_lease_file(&path).unwrap();
            let v = verify_envelope_bytes(&raw, &policy, &ctx).unwrap();
            std::hint::black_box(v);
        })
    });
    // The share of the total spent in the two signature checks, for reading the figure above.
    let message = calyx::lease::envelope::pae(LEASE_PAYLOAD_TYPE, &body);
    let sig = calyx::lease::envelope::decode_signature(&env.signatures[0].sig, 1).unwrap();
    let public = alice.verifying_key();
    group.bench_function("one_verify_strict", |b| {
        b.iter(|| std::hint::black_box(public.verify_strict(&message, &sig)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
