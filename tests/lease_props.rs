//! Property tests: payload and envelope round trips, PAE injectivity, tamper detection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use calyx::lease::envelope::{self, Envelope, pae};
use calyx::lease::keys;
use calyx::lease::model::*;
use calyx::lease::trust::TrustPolicy;
use calyx::lease::verify::{VerifyContext, parse_payload, verify_envelope_bytes};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2030-06-01 12:00:00 UTC);

fn abs_path() -> impl Strategy<Value = PathBuf> {
    proptest::collection::vec("[a-zA-Z0-9._-]{1,12}", 1..4)
        .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
}

fn command() -> impl Strategy<Value = CommandRule> {
    (
        abs_path(),
        proptest::collection::vec(".{0,10}", 0..4),
        proptest::option::of("[0-9a-f]{64}"),
    )
        .prop_map(|(path, args, sha256)| CommandRule { path, args, sha256 })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        proptest::option::of(1u64..100_000),
        proptest::option::of(any::<u64>()),
        proptest::option::of(1u64..10_000),
        // Hundredths of a core: exactly representable in decimal, so JSON round trips exactly.
        proptest::option::of((1u32..800).prop_map(|c| f64::from(c) / 100.0)),
    )
        .prop_map(|(timeout_secs, memory_bytes, pids, cpu)| Limits {
            timeout_secs,
            memory_bytes,
            pids,
            cpu,
            ..Default::default()
        })
}

/// Leases valid around NOW for at most 12 h.
fn lease() -> impl Strategy<Value = Lease> {
    (
        ("[A-Za-z0-9-]{1,30}", ".{0,20}", ".{0,20}", ".{0,20}"),
        (0i64..3_600, 60i64..43_200, 1u32..10),
        prop_oneof![Just(Risk::Low), Just(Risk::Medium)],
        proptest::collection::vec(command(), 1..4),
        (
            proptest::collection::vec(abs_path(), 0..3),
            proptest::collection::vec(abs_path(), 0..3),
            proptest::collection::vec(abs_path(), 0..3),
        ),
        proptest::collection::btree_map("[A-Z_]{1,8}", ".{0,10}", 0..3),
        prop_oneof![Just(Network::None), Just(Network::Loopback)],
        limits(),
    )
        .prop_map(
            |(
                (id, intent, issuer, subject),
                (before, life, uses),
                risk,
                commands,
                (r, w, x),
                set,
                network,
                limits,
            )| {
                let not_before = NOW - time::Duration::seconds(before);
                Lease {
                    version: 1,
                    lease_id: format!("LEASE-{id}"),
                    intent_id: intent,
                    issuer,
                    subject,
                    issued_at: not_before,
                    not_before,
                    expires_at: not_before + time::Duration::seconds(before + life),
                    max_uses: uses,
                    risk,
                    hosts: vec![],
                    profile: "default".to_owned(),
                    commands,
                    paths: PathGrants {
                        read: r,
                        write: w,
                        exec: x,
                    },
                    env: EnvGrants { allow: vec![], set },
                    network,
                    limits,
                    halt: vec![],
                    artifacts: Artifacts::default(),
                    require: Require::default(),
                }
            },
        )
}

fn policy() -> TrustPolicy {
    let entry = |id: &str, role: &str, seed: u8| {
        let pem =
            keys::public_key_pem(&SigningKey::from_bytes(&[seed; 32]).verifying_key()).unwrap();
        format!("[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{pem}\"\"\"\n")
    };
    let text = entry("alice", "human", 1) + &entry("cp14", "agent", 2);
    TrustPolicy::from_toml_str(&text, Path::new("p.toml")).unwrap()
}

/// Splits a PAE back into (type, body); succeeds only on well-formed encodings.
fn unpae(mut b: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    b = b.strip_prefix(b"DSSEv1 ")?;
    let field = |b: &mut &[u8], last: bool| -> Option<Vec<u8>> {
        let sp = b.iter().position(|&c| c == b' ')?;
        let len: usize = std::str::from_utf8(&b[..sp]).ok()?.parse().ok()?;
        let rest = &b[sp + 1..];
        if rest.len() < len || (!last && rest.get(len) != Some(&b' ')) {
            return None;
        }
        let out = rest[..len].to_vec();
        *b = if last { &rest[len..] } else { &rest[len + 1..] };
        Some(out)
    };
    let t = field(&mut b, false)?;
    let body = field(&mut b, true)?;
    b.is_empty().then_some((t, body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn payload_round_trips(l in lease()) {
        let json = serde_json::to_vec(&l).unwrap();
        prop_assert_eq!(parse_payload(&json).unwrap(), l.clone());
        let pretty = serde_json::to_vec_pretty(&l).unwrap();
        prop_assert_eq!(parse_payload(&pretty).unwrap(), l);
    }

    #[test]
    fn envelope_round_trips(t in ".{0,40}", body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let env = Envelope::unsigned(&t, &body);
        let back = Envelope::from_json(env.to_json_pretty().as_bytes()).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.payload_bytes().unwrap(), body);
    }

    #[test]
    fn pae_decodes_back_uniquely(t in ".{0,40}", body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let encoded = pae(&t, &body);
        prop_assert_eq!(unpae(&encoded), Some((t.as_bytes().to_vec(), body)));
    }

    #[test]
    fn pae_differs_when_inputs_differ(
        t1 in "[a-z ]{0,6}", b1 in "[a-z0-9 ]{0,6}", t2 in "[a-z ]{0,6}", b2 in "[a-z0-9 ]{0,6}"
    ) {
        // Short alphabets with spaces and digits maximise the chance of a boundary collision.
        prop_assume!((&t1, &b1) != (&t2, &b2));
        prop_assert_ne!(pae(&t1, b1.as_bytes()), pae(&t2, b2.as_bytes()));
    }

    #[test]
    fn signed_leases_verify_and_return_the_payload(l in lease()) {
        let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, &serde_json::to_vec(&l).unwrap());
        env.sign(&SigningKey::from_bytes(&[1; 32])).unwrap();
        env.sign(&SigningKey::from_bytes(&[2; 32])).unwrap();
        let ctx = VerifyContext { now: NOW, host_ids: vec![] };
        let v = verify_envelope_bytes(env.to_json_pretty().as_bytes(), &policy(), &ctx).unwrap();
        prop_assert_eq!(v.lease, l);
        prop_assert_eq!(v.signers.len(), 2);
    }

    #[test]
    fn any_flipped_payload_bit_breaks_the_signature(
        body in proptest::collection::vec(any::<u8>(), 1..256), idx in any::<prop::sample::Index>(), bit in 0u8..8
    ) {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, &body);
        env.sign(&key).unwrap();
        let sig = envelope::decode_signature(&env.signatures[0].sig, 1).unwrap();
        let mut tampered = body.clone();
        tampered[idx.index(body.len())] ^= 1 << bit;
        prop_assert!(envelope::verify_signature(&key.verifying_key(), LEASE_PAYLOAD_TYPE, &body, &sig));
        prop_assert!(!envelope::verify_signature(&key.verifying_key(), LEASE_PAYLOAD_TYPE, &tampered, &sig));
    }
}
