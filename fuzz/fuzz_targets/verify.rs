//! Fuzzes lease verification with a fixed trust policy and clock.
//!
//! Input whose first byte is 0 is taken as a payload body, wrapped in an envelope and signed
//! by both trusted test keys, so the fuzzer also reaches the payload parser and the checks
//! behind the signatures; any other input is fed as raw envelope bytes.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use calyx::lease::envelope::Envelope;
use calyx::lease::keys;
use calyx::lease::model::LEASE_PAYLOAD_TYPE;
use calyx::lease::trust::TrustPolicy;
use calyx::lease::verify::{VerifyContext, verify_envelope_bytes};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fn signers() -> [SigningKey; 2] {
    [SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32])]
}

fn policy() -> &'static TrustPolicy {
    static POLICY: OnceLock<TrustPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let [h, a] = signers();
        let entry = |id: &str, role: &str, k: &SigningKey| {
            let pem = keys::public_key_pem(&k.verifying_key()).expect("encode test key");
            format!("[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{pem}\"\"\"\n")
        };
        let text = format!(
            "[requirements]\nagent_ids = [\"cp14\"]\n[requirements.high]\nhumans = 1\nagents = 1\n{}{}",
            entry("alice", "human", &h),
            entry("cp14", "agent", &a)
        );
        TrustPolicy::from_toml_str(&text, Path::new("fuzz.toml")).expect("fixed test policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let ctx = VerifyContext {
        now: time::macros::datetime!(2030-01-01 12:00:00 UTC),
        host_ids: vec!["fuzz-host".to_owned()],
    };
    match data.split_first() {
        Some((0, body)) => {
            let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, body);
            for k in signers() {
                env.sign(&k).expect("signing a valid envelope");
            }
            let raw = env.to_json_pretty();
            if let Ok(v) = verify_envelope_bytes(raw.as_bytes(), policy(), &ctx) {
                // Whatever verified must be exactly what was signed.
                assert_eq!(v.signers.len(), 2);
            }
        }
        _ => {
            let _ = verify_envelope_bytes(data, policy(), &ctx);
        }
    }
});
