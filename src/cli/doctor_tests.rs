use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// A hybrid fixture: v1 memory, pids, cpu, freezer at /, cgroup2 at unified with kill/freeze.
fn hybrid(dir: &Path, v1_mode: u32) {
    let mi = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    let pc = "8:pids:/\n6:freezer:/\n4:memory:/\n1:cpu:/\n0::/\n";
    fs::create_dir_all(dir.join("proc/self")).unwrap();
    fs::write(dir.join("proc/self/mountinfo"), mi).unwrap();
    fs::write(dir.join("proc/self/cgroup"), pc).unwrap();
    for c in ["cpu", "memory", "freezer", "pids"] {
        let d = dir.join("sys/fs/cgroup").join(c);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(v1_mode)).unwrap();
    }
    let u = dir.join("sys/fs/cgroup/unified");
    fs::create_dir_all(&u).unwrap();
    for f in [
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.kill",
        "cgroup.freeze",
    ] {
        fs::write(u.join(f), "").unwrap();
    }
    fs::create_dir_all(dir.join("proc/pressure")).unwrap();
    fs::write(dir.join("proc/pressure/memory"), "some avg10=0.00\n").unwrap();
}

fn get<'a>(c: &'a [Check], name: &str) -> &'a Check {
    c.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn hybrid_table_by_caller() {
    let dir = tempfile::tempdir().unwrap();
    hybrid(dir.path(), 0o755);
    let owner = fs::metadata(dir.path()).unwrap().uid();
    // (uid, delegation available, kill available)
    let cases = [(owner, true, true), (owner + 4242, false, false)];
    for (uid, deleg, kill) in cases {
        let c = cgroup_checks(dir.path(), uid, uid);
        assert_eq!(get(&c, "cgroup").detail.split(' ').next(), Some("hybrid"));
        let d = get(&c, "cgroup_delegation");
        assert_eq!(d.available, deleg, "uid {uid}: {d:?}");
        if !deleg {
            assert!(d.detail.contains("none"), "{d:?}");
            assert!(
                d.remedy.as_deref().unwrap().contains("--cgroup-parent"),
                "{d:?}"
            );
        } else {
            assert!(d.detail.contains("memory") && d.remedy.is_none(), "{d:?}");
        }
        let k = get(&c, "cgroup_kill");
        assert_eq!(k.available, kill, "uid {uid}: {k:?}");
        if !kill {
            assert!(
                k.remedy.as_deref().unwrap().contains("Delegate=yes"),
                "{k:?}"
            );
        }
        // The v1 freezer is there for everyone to freeze with once a cgroup exists.
        assert!(get(&c, "cgroup_freeze").available);
        assert!(get(&c, "psi").available);
    }
}

#[test]
fn unified_not_delegated_names_the_systemd_remedy() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("proc/self")).unwrap();
    fs::write(
        dir.path().join("proc/self/mountinfo"),
        "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    .unwrap();
    fs::write(dir.path().join("proc/self/cgroup"), "0::/user.slice\n").unwrap();
    let d = dir.path().join("sys/fs/cgroup/user.slice");
    fs::create_dir_all(&d).unwrap();
    for f in ["cgroup.procs", "cgroup.subtree_control"] {
        fs::write(d.join(f), "").unwrap();
    }
    fs::write(d.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let owner = fs::metadata(&d).unwrap().uid();
    let c = cgroup_checks(dir.path(), owner + 1, owner + 1);
    assert!(get(&c, "cgroup").detail.starts_with("v2"));
    let del = get(&c, "cgroup_delegation");
    assert!(!del.available);
    assert!(
        del.remedy.as_deref().unwrap().contains("Delegate=yes"),
        "{del:?}"
    );
    let c = cgroup_checks(dir.path(), owner, owner);
    let del = get(&c, "cgroup_delegation");
    assert!(del.available, "{del:?}");
    assert!(del.detail.ends_with("cpu,memory,pids"), "{del:?}");
    // No cgroup.kill file in the fixture, and no PSI.
    assert!(!get(&c, "cgroup_kill").available);
    assert!(!get(&c, "psi").available);
}

#[test]
fn no_cgroup_fs_is_one_missing_check() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("proc/self")).unwrap();
    fs::write(dir.path().join("proc/self/mountinfo"), "").unwrap();
    fs::write(dir.path().join("proc/self/cgroup"), "").unwrap();
    let c = cgroup_checks(dir.path(), 0, 0);
    assert_eq!(c.len(), 1);
    assert!(!c[0].available && c[0].remedy.is_some());
}

#[test]
fn required_layers_decide_ok() {
    let f = HostFeatures {
        user_ns: UserNs::Blocked {
            reason: "kernel.apparmor_restrict_unprivileged_userns is 1".to_owned(),
            remedy: "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0".to_owned(),
        },
        landlock: LandlockSupport::Available { abi: 3 },
        seccomp: true,
    };
    let checks = kernel_checks(&f, 4);
    // (required layers, ok)
    let cases: [(&[Layer], bool); 4] = [
        (&[], true),
        (&[Layer::Seccomp, Layer::Rlimits], true),
        (&[Layer::PidNs], false),
        (&[Layer::Landlock], false),
    ];
    for (req, ok) in cases {
        let r = assemble(65534, "t", req, checks.clone());
        assert_eq!(r.ok, ok, "{req:?}");
    }
    let r = assemble(65534, "t", &[Layer::UserNs], checks);
    let text = render(&r);
    assert!(text.contains("MISSING user_namespaces"), "{text}");
    assert!(text.contains("remedy: sysctl -w kernel.apparmor"), "{text}");
    assert!(text.contains("ABI 3, the profile's floor is 4"), "{text}");
}

#[test]
fn kernel_release_parses() {
    assert_eq!(parse_release("6.18.0-1-amd64\n"), Some((6, 18)));
    assert_eq!(parse_release("5.4.0"), Some((5, 4)));
    assert_eq!(parse_release("x"), None);
}
