use super::*;
use crate::lease::model::{HaltAction, HaltMetric};

fn lease(extra: serde_json::Value) -> Lease {
    let mut v = serde_json::json!({
        "version": 1, "lease_id": "LEASE-x", "intent_id": "INT-x", "issuer": "t",
        "subject": "s", "issued_at": "2025-01-01T00:00:00Z",
        "not_before": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
        "commands": [{"path": "/bin/true", "args": []}],
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn need_table() {
    let none = BTreeSet::new();
    let with_cg: BTreeSet<Layer> = [Layer::Cgroup].into();
    let cases = [
        ("default lease", lease(serde_json::json!({})), &none, None),
        (
            "layer required",
            lease(serde_json::json!({})),
            &with_cg,
            Some(false),
        ),
        (
            "layer required, fallback asked",
            lease(serde_json::json!({"require": {"allow_rlimit_fallback": true}})),
            &with_cg,
            Some(false),
        ),
        (
            "memory limit",
            lease(serde_json::json!({"limits": {"memory_bytes": 1}})),
            &none,
            Some(false),
        ),
        (
            "memory limit, fallback",
            lease(
                serde_json::json!({"limits": {"memory_bytes": 1}, "require": {"allow_rlimit_fallback": true}}),
            ),
            &none,
            Some(true),
        ),
        (
            "halt rule",
            lease(serde_json::json!({"halt": [{"metric": "pids_percent", "above": 50.0}]})),
            &none,
            Some(false),
        ),
        (
            "timeout only",
            lease(serde_json::json!({"limits": {"timeout_secs": 5}})),
            &none,
            None,
        ),
    ];
    for (name, l, req, want) in cases {
        let got = match cgroup_need(&l, req) {
            Need::BestEffort => None,
            Need::Required {
                fallback_allowed, ..
            } => Some(fallback_allowed),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn fallback_table() {
    let l =
        lease(serde_json::json!({"limits": {"memory_bytes": 100, "swap_bytes": 20, "cpu": 0.5}}));
    assert_eq!(
        rlimit_fallback(&l, 3).unwrap(),
        vec![(Resource::As, 120), (Resource::Cpu, 2)]
    );
    let pids = lease(serde_json::json!({"limits": {"pids": 10}}));
    assert!(
        rlimit_fallback(&pids, 3)
            .unwrap_err()
            .contains("RLIMIT_NPROC")
    );
    let io = lease(serde_json::json!({"limits": {"io_bps": 10}}));
    assert!(rlimit_fallback(&io, 3).is_err());
    let swap = lease(serde_json::json!({"limits": {"swap_bytes": 10}}));
    assert!(rlimit_fallback(&swap, 3).is_err());
    let tiny_cpu = lease(serde_json::json!({"limits": {"cpu": 0.01}}));
    assert_eq!(
        rlimit_fallback(&tiny_cpu, 1).unwrap(),
        vec![(Resource::Cpu, 1)]
    );
}

#[test]
fn lease_limits_override_profile_defaults() {
    let profile = Limits {
        memory_bytes: Some(1 << 30),
        pids: Some(256),
        cpu: Some(1.0),
        ..Limits::default()
    };
    let l = Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    };
    let e = effective_limits(&l, &profile);
    assert_eq!(e.memory_bytes, Some(64 << 20));
    assert_eq!(e.pids, Some(256));
    assert_eq!(e.cpu, Some(1.0));
    assert_eq!(lease_cgroup_limits(&l), vec!["memory"]);
    let _ = (HaltAction::Kill, HaltMetric::PidsPercent);
}
