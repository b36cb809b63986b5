//! The VM tier's environment check: a VM tier that silently ran on the wrong kernel, or on a
//! hybrid cgroup host, would prove nothing, so this runs first in every boot and fails on any
//! difference from what `cargo xtask vm-test` promised.
//!
//! Inside the VM (`CALYX_VM_KERNEL` set by the guest init) it asserts the kernel series, root,
//! a pure cgroup2 hierarchy at /sys/fs/cgroup with memory, pids, cpu and io enabled for
//! children, a cgroup delegated to `nobody` that `nobody` can really use, and the Landlock ABI
//! of that kernel. On a host it
//! says loudly that it is the host variant and checks that the probes give definite answers
//! (and, with `CI=true`, that the host has Landlock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// What each VM kernel series must report: (series, Landlock ABI).
/// 6.12 → ABI 6 (scoped signals and abstract sockets); 6.1 → ABI 2 (no truncate, no network).
const VM_KERNELS: &[(&str, i64)] = &[("6.12", 6), ("6.1", 2)];

const CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "io"];

#[derive(Debug, PartialEq, Eq)]
enum CgroupMode {
    /// Only cgroup2 is mounted.
    Unified,
    /// cgroup2 and v1 hierarchies side by side (controllers usually on v1).
    Hybrid,
    /// v1 hierarchies only.
    Legacy,
    /// No cgroup filesystem at all.
    None,
}

/// The cgroup mode from the text of /proc/mounts.
fn cgroup_mode(mounts: &str) -> CgroupMode {
    let fstypes: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let v2 = fstypes.contains(&"cgroup2");
    let v1 = fstypes.contains(&"cgroup");
    match (v2, v1) {
        (true, false) => CgroupMode::Unified,
        (true, true) => CgroupMode::Hybrid,
        (false, true) => CgroupMode::Legacy,
        (false, false) => CgroupMode::None,
    }
}

/// The filesystem type mounted at a mount point, from the text of /proc/mounts (last wins,
/// as the last mount hides the earlier ones).
fn fstype_at<'a>(mounts: &'a str, mount_point: &str) -> Option<&'a str> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&mount_point)).then(|| f.get(2).copied())?
        })
        .next_back()
}

/// "6.12.117+deb12-cloud-amd64" → "6.12"; "6.1.0-56-cloud-amd64" → "6.1".
fn series_of(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-', '+']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("{major}.{minor}"))
}

/// The running kernel's Landlock ABI, or the negative errno of the version query
/// (ENOSYS: not built in; EOPNOTSUPP: built in but disabled). Asked with
/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)` from a python3 child,
/// because unsafe code is allowed only in src/sys and the landlock crate keeps its probe
/// private.
fn landlock_abi() -> i64 {
    let script = "import ctypes\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  libc.syscall.restype = ctypes.c_long\n\
                  r = libc.syscall(ctypes.c_long(444), ctypes.c_void_p(None), \
                  ctypes.c_size_t(0), ctypes.c_uint32(1))\n\
                  print(r if r >= 0 else -ctypes.get_errno())\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .expect("running /usr/bin/python3 for the Landlock probe");
    assert!(out.status.success(), "Landlock probe failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("Landlock probe printed {text:?}"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid()
}

/// Every way the VM differs from what the tier promised, as readable lines.
fn vm_differences(series: &str) -> Vec<String> {
    let mut diffs = Vec::new();
    let Some(&(_, want_abi)) = VM_KERNELS.iter().find(|(s, _)| *s == series) else {
        return vec![format!(
            "CALYX_VM_KERNEL={series} is not a known VM kernel series {VM_KERNELS:?}"
        )];
    };
    let release = read("/proc/sys/kernel/osrelease");
    let release = release.trim();
    if series_of(release).as_deref() != Some(series) {
        diffs.push(format!("kernel is {release}, expected series {series}"));
    }
    if effective_uid() != 0 {
        diffs.push(format!(
            "tests run as uid {}, expected root",
            effective_uid()
        ));
    }
    let mounts = read("/proc/mounts");
    if cgroup_mode(&mounts) != CgroupMode::Unified {
        diffs.push(format!(
            "cgroup mode is {:?}, expected Unified",
            cgroup_mode(&mounts)
        ));
    }
    if fstype_at(&mounts, "/sys/fs/cgroup") != Some("cgroup2") {
        diffs.push(format!(
            "/sys/fs/cgroup is {:?}, expected cgroup2",
            fstype_at(&mounts, "/sys/fs/cgroup")
        ));
    }
    for file in ["cgroup.controllers", "cgroup.subtree_control"] {
        let path = format!("/sys/fs/cgroup/{file}");
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        let have: Vec<&str> = have.split_whitespace().collect();
        for c in CONTROLLERS {
            if !have.contains(c) {
                diffs.push(format!("{path} lacks {c} (has {have:?})"));
            }
        }
    }
    match std::env::var("CALYX_VM_DELEGATED_CGROUP") {
        Ok(dir) => {
            let owner = std::fs::metadata(Path::new(&dir).join("cgroup.procs")).map(|m| m.uid());
            if owner.as_ref().ok() != Some(&65534) {
                diffs.push(format!(
                    "{dir}/cgroup.procs owner is {owner:?}, expected 65534"
                ));
            }
            if let Err(why) = nobody_can_use_delegation(&dir) {
                diffs.push(why);
            }
        }
        Err(_) => diffs.push("CALYX_VM_DELEGATED_CGROUP is not set".into()),
    }
    let abi = landlock_abi();
    if abi != want_abi {
        diffs.push(format!(
            "Landlock ABI is {abi}, expected {want_abi} on {series}"
        ));
    }
    diffs
}

/// Proves the delegated cgroup works as on a systemd host: root places a shell in it (as
/// systemd places a user's manager), and `nobody` then moves itself into a leaf, enables
/// memory and pids for children and sets limits on a child, all without privileges.
fn nobody_can_use_delegation(dir: &str) -> Result<(), String> {
    let tag = std::process::id();
    let leaf = format!("{dir}/vm-env-leaf-{tag}");
    let run = format!("{dir}/vm-env-run-{tag}");
    let as_nobody = format!(
        "mkdir {leaf}; echo $$ > {leaf}/cgroup.procs; \
         echo '+memory +pids' > {dir}/cgroup.subtree_control; mkdir {run}; \
         echo 1048576 > {run}/memory.max; echo 16 > {run}/pids.max; \
         cat {run}/memory.max {run}/pids.max"
    );
    let script = format!(
        "echo $$ > {dir}/cgroup.procs && exec /usr/bin/setpriv --reuid=65534 --regid=65534 \
         --clear-groups -- /bin/sh -ec \"{as_nobody}\""
    );
    let out = Command::new("/bin/sh").args(["-c", &script]).output();
    // Leave the delegated cgroup as the init made it, for the tests that follow.
    let _ = std::fs::remove_dir(&run);
    let _ = std::fs::remove_dir(&leaf);
    let _ = std::fs::write(format!("{dir}/cgroup.subtree_control"), "-memory -pids");
    let out = out.map_err(|e| format!("running the delegation check: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout == "1048576\n16\n" {
        Ok(())
    } else {
        Err(format!(
            "nobody cannot use the delegated cgroup {dir}: {}, stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn environment_is_what_the_tier_promised() {
    match std::env::var("CALYX_VM_KERNEL") {
        Ok(series) => {
            let diffs = vm_differences(&series);
            assert!(
                diffs.is_empty(),
                "VM environment differs from the VM tier's promise:\n  {}",
                diffs.join("\n  ")
            );
            eprintln!("vm_env: VM kernel {series}: every expectation holds");
        }
        Err(_) => {
            eprintln!(
                "vm_env: HOST VARIANT (CALYX_VM_KERNEL unset): checking the probes, not a VM; \
                 `cargo xtask vm-test` runs the VM variant"
            );
            let release = read("/proc/sys/kernel/osrelease");
            assert!(
                series_of(release.trim()).is_some(),
                "cannot read a version from {release:?}"
            );
            let mounts = read("/proc/mounts");
            let mode = cgroup_mode(&mounts);
            assert_ne!(mode, CgroupMode::None, "no cgroup filesystem is mounted");
            let abi = landlock_abi();
            // A negative answer must be one the kernel documents, else the probe is broken.
            assert!(
                abi >= 1 || abi == -38 || abi == -95,
                "Landlock probe gave {abi}"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                assert!(abi >= 1, "CI host without Landlock (probe gave {abi})");
            }
            eprintln!(
                "vm_env: host kernel {}, cgroups {mode:?}, Landlock ABI {abi}",
                release.trim()
            );
        }
    }
}

#[test]
fn classifies_cgroup_modes() {
    let unified = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
    let hybrid = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
    let legacy =
        "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
    let table = [
        (unified, CgroupMode::Unified, Some("cgroup2")),
        (hybrid, CgroupMode::Hybrid, None),
        (legacy, CgroupMode::Legacy, Some("tmpfs")),
        ("proc /proc proc rw 0 0\n", CgroupMode::None, None),
    ];
    for (mounts, mode, at) in table {
        assert_eq!(cgroup_mode(mounts), mode, "{mounts}");
        assert_eq!(fstype_at(mounts, "/sys/fs/cgroup"), at, "{mounts}");
    }
    // The last mount on a path is the visible one.
    let over = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
    assert_eq!(fstype_at(over, "/sys/fs/cgroup"), Some("cgroup2"));
}

#[test]
fn reads_kernel_series() {
    let table = [
        ("6.12.117+deb12-cloud-amd64", Some("6.12")),
        ("6.1.0-56-cloud-amd64", Some("6.1")),
        ("6.18.44-fc-v669", Some("6.18")),
        ("6.10.3", Some("6.10")),
        ("garbage", None),
    ];
    for (release, want) in table {
        assert_eq!(series_of(release).as_deref(), want, "{release}");
    }
    // 6.12 must never pass for 6.1 (a string prefix test would).
    assert_ne!(
        series_of("6.12.117+deb12-cloud-amd64").as_deref(),
        Some("6.1")
    );
}
