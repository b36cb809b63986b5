//! One probe of the host's isolation features, each with the exact remedy when missing.
//!
//! The parsers read kernel files under a `&Path` root (`/` on a real host, a fixture directory
//! in tests); [`probe`] adds the answers only a syscall can give (Landlock ABI, seccomp).

use std::path::Path;

use serde::Serialize;

use crate::sys;

/// Whether unprivileged processes may create user namespaces, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UserNs {
    /// Available.
    Available,
    /// Blocked; `reason` names the knob and `remedy` the command that lifts it.
    Blocked {
        /// Which kernel setting blocks it.
        reason: String,
        /// How to enable it.
        remedy: String,
    },
}

/// The Landlock ABI, or why it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LandlockSupport {
    /// Supported at this ABI version.
    Available {
        /// ABI version (1 = Linux 5.13).
        abi: u32,
    },
    /// Not usable.
    Missing {
        /// Why.
        reason: String,
        /// How to enable it.
        remedy: String,
    },
}

/// Everything the planner needs to know about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFeatures {
    /// User namespaces for the calling user.
    pub user_ns: UserNs,
    /// Landlock.
    pub landlock: LandlockSupport,
    /// Seccomp filter mode; None means missing.
    pub seccomp: bool,
}

/// Remedy text for a host without seccomp.
pub const SECCOMP_REMEDY: &str =
    "boot a kernel built with CONFIG_SECCOMP=y and CONFIG_SECCOMP_FILTER=y";

fn read_int(root: &Path, rel: &str) -> Option<i64> {
    crate::sys::fs::read_kernel_text(&root.join(rel))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Decides from the sysctl files under `root` whether a user with effective uid `euid` can
/// create a user namespace. Root is only stopped by `max_user_namespaces = 0`.
pub fn parse_user_ns(root: &Path, euid: u32) -> UserNs {
    let blocked = |reason: &str, remedy: &str| UserNs::Blocked {
        reason: reason.to_owned(),
        remedy: remedy.to_owned(),
    };
    if !root.join("proc/self/ns/user").exists() && !root.join("proc/sys/user").exists() {
        return blocked(
            "the kernel has no user namespace support (CONFIG_USER_NS)",
            "boot a kernel built with CONFIG_USER_NS=y",
        );
    }
    if read_int(root, "proc/sys/user/max_user_namespaces") == Some(0) {
        return blocked(
            "/proc/sys/user/max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000",
        );
    }
    if euid == 0 {
        return UserNs::Available;
    }
    if read_int(root, "proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        return blocked(
            "kernel.unprivileged_userns_clone is 0",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        );
    }
    if read_int(
        root,
        "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ) == Some(1)
    {
        return blocked(
            "kernel.apparmor_restrict_unprivileged_userns is 1 (AppArmor restricts unprivileged user namespaces)",
            "add an AppArmor profile granting `userns,` to calyx-run, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        );
    }
    UserNs::Available
}

/// Maps the answer of the Landlock version query to a support level.
pub fn landlock_from_query(answer: Result<u32, i32>) -> LandlockSupport {
    match answer {
        Ok(abi) => LandlockSupport::Available { abi },
        Err(libc::EOPNOTSUPP) => LandlockSupport::Missing {
            reason: "Landlock is built in but not enabled at boot".to_owned(),
            remedy: "add landlock to the lsm= kernel command line (e.g. lsm=landlock,lockdown,yama,integrity,apparmor,bpf) and reboot".to_owned(),
        },
        Err(_) => LandlockSupport::Missing {
            reason: "the kernel has no Landlock (needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)".to_owned(),
            remedy: "boot Linux 5.13 or newer built with CONFIG_SECURITY_LANDLOCK=y and landlock in lsm=".to_owned(),
        },
    }
}

/// Probes the running host for a caller with effective uid `euid`.
pub fn probe(euid: u32) -> HostFeatures {
    HostFeatures {
        user_ns: parse_user_ns(Path::new("/"), euid),
        landlock: landlock_from_query(
            sys::proc::landlock_abi().map_err(|e| e.raw_os_error().unwrap_or(libc::ENOSYS)),
        ),
        seccomp: sys::proc::seccomp_mode().is_ok(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn kernel_files_are_read_whole() {
        let std_text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let text = crate::sys::fs::read_kernel_text(std::path::Path::new("/proc/self/cgroup"));
        assert_eq!(text.unwrap(), std_text);
        // Past the first buffer: the read goes on to the end.
        let dir = tempfile::tempdir().unwrap();
        let big = "0123456789abcdef\n".repeat(1000);
        fs::write(dir.path().join("big"), &big).unwrap();
        let text = crate::sys::fs::read_kernel_text(&dir.path().join("big")).unwrap();
        assert_eq!(text, big);
        assert!(crate::sys::fs::read_kernel_text(&dir.path().join("absent")).is_err());
    }

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("proc/sys/user")).unwrap();
        fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        for (rel, content) in files {
            fs::write(dir.path().join(rel), content).unwrap();
        }
        dir
    }

    /// (fixture files, euid, expected knob named in the reason or None when available)
    type Case = (
        &'static [(&'static str, &'static str)],
        u32,
        Option<&'static str>,
    );

    #[test]
    fn user_ns_table() {
        let cases: &[Case] = &[
            (
                &[("proc/sys/user/max_user_namespaces", "15000\n")],
                1000,
                None,
            ),
            (
                &[("proc/sys/user/max_user_namespaces", "0\n")],
                0,
                Some("max_user_namespaces"),
            ),
            (
                &[("proc/sys/kernel/unprivileged_userns_clone", "0\n")],
                1000,
                Some("unprivileged_userns_clone"),
            ),
            (
                &[("proc/sys/kernel/unprivileged_userns_clone", "0\n")],
                0,
                None,
            ),
            (
                &[(
                    "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                    "1\n",
                )],
                65534,
                Some("apparmor"),
            ),
            (
                &[(
                    "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                    "0\n",
                )],
                65534,
                None,
            ),
        ];
        for (files, euid, want) in cases {
            let dir = fixture(files);
            let got = parse_user_ns(dir.path(), *euid);
            match (want, &got) {
                (None, UserNs::Available) => {}
                (Some(w), UserNs::Blocked { reason, remedy }) => {
                    assert!(reason.contains(w), "{reason} should name {w}");
                    assert!(remedy.contains("sysctl"), "{remedy}");
                }
                _ => panic!("files {files:?} euid {euid}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn user_ns_missing_kernel_support() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            parse_user_ns(dir.path(), 0),
            UserNs::Blocked { .. }
        ));
    }

    #[test]
    fn landlock_answers() {
        assert_eq!(
            landlock_from_query(Ok(7)),
            LandlockSupport::Available { abi: 7 }
        );
        match landlock_from_query(Err(libc::EOPNOTSUPP)) {
            LandlockSupport::Missing { remedy, .. } => assert!(remedy.contains("lsm=")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            landlock_from_query(Err(libc::ENOSYS)),
            LandlockSupport::Missing { .. }
        ));
    }
}
