//! `calyx doctor --json` through the real binary, as root and as nobody, on this hybrid host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn doctor(as_nobody: bool) -> (Option<i32>, Value) {
    let bin = env!("CARGO_BIN_EXE_calyx");
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin,
        ]);
        c
    } else {
        Command::new(bin)
    };
    let out = c.args(["doctor", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), v)
}

fn check<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {r}"))
}

#[test]
fn doctor_json_as_root_and_nobody() {
    let (code, root) = doctor(false);
    assert_eq!(root["uid"], 0, "the host tier runs as root: {root}");
    let names: Vec<&str> = root["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "user_namespaces",
        "landlock",
        "seccomp",
        "cgroup",
        "cgroup_delegation",
        "cgroup_kill",
        "cgroup_freeze",
        "psi",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    // The default profile requires user namespaces, Landlock and seccomp, all present here.
    assert_eq!(code, Some(0), "{root}");
    assert_eq!(root["ok"], true);
    assert_eq!(check(&root, "seccomp")["required"], true);
    assert_eq!(check(&root, "cgroup_delegation")["required"], false);
    if std::env::var_os("CALYX_VM_KERNEL").is_none() {
        assert!(
            check(&root, "cgroup")["detail"]
                .as_str()
                .unwrap()
                .starts_with("hybrid"),
            "{root}"
        );
    }
    assert_eq!(
        check(&root, "cgroup_delegation")["available"],
        true,
        "{root}"
    );

    let (code, nobody) = doctor(true);
    assert_eq!(nobody["uid"], 65534);
    assert_eq!(code, Some(0), "{nobody}");
    let d = check(&nobody, "cgroup_delegation");
    if std::env::var_os("CALYX_VM_KERNEL").is_none() {
        assert_eq!(d["available"], false, "{nobody}");
        assert!(!d["remedy"].as_str().unwrap().is_empty(), "{d}");
    }
}
