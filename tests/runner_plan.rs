//! Table tests of the pure planner: the same inputs always give the same plan or refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calyx::exit;
use calyx::features::{HostFeatures, LandlockSupport, UserNs};
use calyx::lease::model::{Layer, Lease};
use calyx::plan::{
    Access, FIXED_PATH, HostFs, MountStep, PathKind, PlanError, PlanInput, ProfileSpec,
    SystemEntry, plan,
};
use serde_json::json;

/// A fake host: every listed path with its kind; ancestors of listed paths are directories.
struct FakeFs(BTreeMap<PathBuf, PathKind>);

impl HostFs for FakeFs {
    fn kind(&self, path: &Path) -> PathKind {
        if let Some(k) = self.0.get(path) {
            return k.clone();
        }
        if self.0.keys().any(|p| p.starts_with(path)) {
            PathKind::Dir
        } else {
            PathKind::Missing
        }
    }
}

fn host() -> FakeFs {
    let mut m = BTreeMap::new();
    m.insert("/srv/data".into(), PathKind::Dir);
    m.insert("/srv/out".into(), PathKind::Dir);
    m.insert("/srv/tool".into(), PathKind::Dir);
    m.insert("/srv/config.toml".into(), PathKind::File);
    m.insert("/srv/link".into(), PathKind::Symlink("/etc".into()));
    m.insert("/tmp/work".into(), PathKind::Dir);
    FakeFs(m)
}

fn profile() -> ProfileSpec {
    ProfileSpec {
        name: "default".into(),
        system: vec![
            SystemEntry::Bind {
                path: "/usr".into(),
                exec: true,
                dir: true,
            },
            SystemEntry::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into(),
            },
            SystemEntry::Bind {
                path: "/etc/passwd".into(),
                exec: false,
                dir: false,
            },
        ],
        tmp_bytes: 1 << 20,
        timeout_secs: 60,
        rlimits: vec![("core".into(), 0)],
        require: vec![Layer::Landlock, Layer::Seccomp],
        landlock_min_abi: 1,
    }
}

fn features() -> HostFeatures {
    HostFeatures {
        user_ns: UserNs::Available,
        landlock: LandlockSupport::Available { abi: 7 },
        seccomp: true,
    }
}

fn lease(extra: serde_json::Value) -> Lease {
    let mut v = json!({
        "version": 1, "lease_id": "LEASE-1", "intent_id": "INT-1", "issuer": "i", "subject": "s",
        "issued_at": "2030-01-01T00:00:00Z", "not_before": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T01:00:00Z",
        "commands": [{"path": "/bin/sh", "args": ["-c", "*"]}, {"path": "/usr/bin/git", "args": ["status"]}],
    });
    if let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    serde_json::from_value(v).unwrap()
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn run(
    l: &Lease,
    f: &HostFeatures,
    a: &[&str],
    env: &[(&str, &str)],
) -> Result<calyx::plan::Plan, PlanError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = profile();
    let h = host();
    let a = argv(a);
    plan(&PlanInput {
        lease: l,
        profile: &p,
        features: f,
        argv: &a,
        caller_env: &env,
        caller_ids: (1000, 1000),
        host: &h,
    })
}

/// (name, lease, host features, argv, expected exit code, text the message must contain)
type Case = (
    &'static str,
    Lease,
    HostFeatures,
    &'static [&'static str],
    u8,
    &'static str,
);

#[test]
fn refusals_table() {
    let blocked = HostFeatures {
        user_ns: UserNs::Blocked {
            reason: "kernel.unprivileged_userns_clone is 0".into(),
            remedy: "sysctl -w kernel.unprivileged_userns_clone=1".into(),
        },
        ..features()
    };
    let no_landlock = HostFeatures {
        landlock: LandlockSupport::Missing {
            reason: "no Landlock".into(),
            remedy: "boot 5.13+".into(),
        },
        ..features()
    };
    let old_landlock = HostFeatures {
        landlock: LandlockSupport::Available { abi: 2 },
        ..features()
    };
    let ok_argv: &'static [&'static str] = &["/bin/sh", "-c", "true"];
    let cases: Vec<Case> = vec![
        (
            "argv not allowed",
            lease(json!({})),
            features(),
            &["/usr/bin/git", "push"],
            exit::REFUSED,
            "argv[1] \"push\" not allowed by commands[1]",
        ),
        (
            "bare name",
            lease(json!({})),
            features(),
            &["sh", "-c", "x"],
            exit::REFUSED,
            "not an absolute path",
        ),
        (
            "missing read path",
            lease(json!({"paths": {"read": ["/srv/nope"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "paths.read entry /srv/nope does not exist",
        ),
        (
            "missing write path",
            lease(json!({"paths": {"write": ["/srv/data/x/y"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "paths.write entry /srv/data/x/y does not exist",
        ),
        (
            "path below a file",
            lease(json!({"paths": {"exec": ["/srv/config.toml/x"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "does not exist",
        ),
        (
            "symlinked path",
            lease(json!({"paths": {"read": ["/srv/link/shadow"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "symbolic link",
        ),
        (
            "dotdot path",
            lease(json!({"paths": {"read": ["/srv/data/../out"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "without . or ..",
        ),
        (
            "whole fs",
            lease(json!({"paths": {"read": ["/"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "whole host filesystem",
        ),
        (
            "proc grant",
            lease(json!({"paths": {"write": ["/proc/sys"]}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "/proc and /dev",
        ),
        (
            "bad env name",
            lease(json!({"env": {"set": {"A=B": "x"}}})),
            features(),
            ok_argv,
            exit::BAD_CONFIG,
            "env grant \"A=B\"",
        ),
        (
            "userns blocked",
            lease(json!({})),
            blocked,
            ok_argv,
            exit::SETUP_FAILED,
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        (
            "landlock missing",
            lease(json!({})),
            no_landlock,
            ok_argv,
            exit::SETUP_FAILED,
            "required layer landlock",
        ),
        (
            "landlock abi floor",
            lease(json!({"require": {"landlock_abi": 4}})),
            old_landlock,
            ok_argv,
            exit::SETUP_FAILED,
            "ABI 2, the floor is 4",
        ),
        (
            "cgroup required",
            lease(json!({"require": {"layers": ["cgroup"]}})),
            features(),
            ok_argv,
            exit::SETUP_FAILED,
            "cgroup",
        ),
    ];
    for (name, l, f, a, code, msg) in cases {
        let err = run(&l, &f, a, &[]).expect_err(name);
        assert_eq!(err.exit_code(), code, "{name}: {err}");
        assert!(err.to_string().contains(msg), "{name}: {err}");
    }
}

#[test]
fn mounts_and_landlock_follow_the_grants() {
    let l = lease(
        json!({"paths": {"read": ["/srv/data", "/srv/config.toml"], "write": ["/srv/out", "/tmp/work"], "exec": ["/srv/tool", "/srv/out"]}, "limits": {"tmp_bytes": 4096}}),
    );
    let p = run(&l, &features(), &["/bin/sh", "-c", "x"], &[]).unwrap();
    let binds: Vec<(String, Access, bool, bool)> = p
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountStep::Bind {
                path,
                access,
                exec,
                dir,
            } => Some((path.display().to_string(), *access, *exec, *dir)),
            _ => None,
        })
        .collect();
    assert_eq!(
        binds,
        vec![
            ("/usr".into(), Access::Ro, true, true),
            ("/etc/passwd".into(), Access::Ro, false, false),
            ("/srv/config.toml".into(), Access::Ro, false, false),
            ("/srv/data".into(), Access::Ro, false, true),
            ("/srv/out".into(), Access::Rw, true, true),
            ("/srv/tool".into(), Access::Ro, true, true),
            ("/tmp/work".into(), Access::Rw, false, true),
        ]
    );
    // /tmp's tmpfs comes before the bind below it, or the bind would be hidden.
    let tmpfs = p
        .mounts
        .iter()
        .position(|m| {
            matches!(
                m,
                MountStep::Tmpfs {
                    size_bytes: 4096,
                    ..
                }
            )
        })
        .unwrap();
    let work = p
        .mounts
        .iter()
        .position(|m| matches!(m, MountStep::Bind { path, .. } if path == Path::new("/tmp/work")))
        .unwrap();
    assert!(tmpfs < work);
    assert!(p.mounts.contains(&MountStep::Symlink {
        path: "/bin".into(),
        target: "usr/bin".into()
    }));
    let rule = |path: &str| {
        p.landlock
            .rules
            .iter()
            .find(|(q, _)| q == Path::new(path))
            .map(|(_, r)| *r)
            .unwrap()
    };
    assert!(rule("/srv/out").write && rule("/srv/out").exec);
    assert!(!rule("/srv/data").write && !rule("/srv/data").exec);
    assert!(rule("/usr").exec && !rule("/usr").write);
    assert!(p.landlock.deny_tcp);
    assert_eq!((p.uid_map.inside, p.uid_map.outside), (1000, 1000));
    assert_eq!(p.timeout_ms, 60_000);
}

#[test]
fn env_is_only_allow_set_and_fixed_path() {
    let l = lease(json!({"env": {"allow": ["LANG", "PATH", "MISSING"], "set": {"MODE": "ci"}}}));
    let p = run(
        &l,
        &features(),
        &["/bin/sh", "-c", "x"],
        &[("LANG", "C.UTF-8"), ("SECRET", "x"), ("PATH", "/evil")],
    )
    .unwrap();
    let env: Vec<(&str, &str)> = p
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        vec![("LANG", "C.UTF-8"), ("MODE", "ci"), ("PATH", FIXED_PATH)]
    );
    let l = lease(json!({"env": {"set": {"PATH": "/opt/bin"}}}));
    let p = run(&l, &features(), &["/bin/sh", "-c", "x"], &[]).unwrap();
    assert_eq!(p.env, vec![("PATH".to_owned(), "/opt/bin".to_owned())]);
}

#[test]
fn loopback_keeps_tcp_and_required_layers_merge() {
    let l = lease(
        json!({"network": "loopback", "require": {"layers": ["no_new_privs"]}, "limits": {"timeout_secs": 5}}),
    );
    let p = run(&l, &features(), &["/usr/bin/git", "status"], &[]).unwrap();
    assert!(!p.landlock.deny_tcp);
    assert_eq!(p.rule_index, 1);
    assert_eq!(p.timeout_ms, 5000);
    for layer in [
        Layer::UserNs,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::NoNewPrivs,
    ] {
        assert!(p.required_layers.contains(&layer), "{layer:?}");
    }
}
