//! Seccomp rules, part of the one program of [`crate::isolate::seccomp`], that stop the
//! payload from creating set-user-id or set-group-id files.
//!
//! Why: the payload runs with the caller's uid. Started by root, that uid is host root, so a
//! `chmod 4755` on a file in a write grant would leave a setuid-root program on the host for
//! anyone who can reach the directory, long after the run. Mounts are nosuid inside the sandbox
//! but not on the host, and the permission bits are the file's, not the mount's. So the calls
//! that set mode bits refuse set-id bits: chmod, fchmod, fchmodat, fchmodat2, and the creating
//! calls open, openat, creat, mknod, mknodat (their mode argument). openat2 carries its mode in
//! memory a filter cannot read, so it answers ENOSYS and libc falls back to openat.
//!
//! The same filter refuses `memfd_create` without `MFD_NOEXEC_SEAL` (EPERM): Landlock does not
//! govern memfds (they live on an internal mount), so an executable memfd would let the payload
//! run a binary it brought along, which the noexec write grants and Landlock's execute rights
//! are there to prevent. A memfd sealed non-executable is still allowed.
//!
//! These rules are compiled into the one seccomp program of [`crate::isolate::seccomp`]
//! (with the verdicts a separate stacked filter gave: EPERM, ENOSYS for openat2, even under a
//! `kill` profile; a call the profile does not allow at all gets the profile's deny action).

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
pub const MFD_NOEXEC_SEAL: u32 = 0x0008;

/// The set-id mode bits refused in a mode argument.
pub const SET_ID_BITS: u32 = 0o4000 | 0o2000; // S_ISUID | S_ISGID

/// (syscall name, index of its mode argument). Names an architecture lacks (the legacy
/// `chmod`, `open`, `creat`, `mknod` on aarch64) are skipped there: the call does not exist.
pub const MODE_CALLS: &[(&str, u8)] = &[
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("openat", 3),
    ("mknodat", 2),
    ("chmod", 1),
    ("open", 2),
    ("creat", 1),
    ("mknod", 1),
];

/// The call whose mode lives in memory a filter cannot read: answered ENOSYS when allowed.
pub const OPENAT2: &str = "openat2";

/// The memfd call refused without [`MFD_NOEXEC_SEAL`] (its flags are argument 1).
pub const MEMFD_CREATE: &str = "memfd_create";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::isolate::seccomp::{SeccompProgram, apply_seccomp_on_current_thread, build_program};
    use crate::lease::model::Network;
    use crate::profile::Profile;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    /// The program the payload gets under the default profile (which allows every call these
    /// tests make, so the answers come from the set-id rules).
    fn default_program() -> SeccompProgram {
        build_program(&Profile::builtin("default").unwrap(), Network::None).unwrap()
    }

    /// Applied on a spawned thread (never on the test runner): set-id chmod fails with EPERM,
    /// an ordinary chmod works, openat2 says ENOSYS.
    #[test]
    fn setid_modes_are_refused_on_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let path = file.clone();
        let program = default_program();
        let res = std::thread::spawn(move || {
            apply_seccomp_on_current_thread(&program).unwrap();
            let plain = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
            let suid = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755));
            let sgid = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2755));
            let create = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o4755)
                .open(path.with_extension("new"));
            (
                plain.is_ok(),
                suid.unwrap_err().raw_os_error(),
                sgid.unwrap_err().raw_os_error(),
                create.unwrap_err().raw_os_error(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(
            res,
            (
                true,
                Some(libc::EPERM),
                Some(libc::EPERM),
                Some(libc::EPERM)
            )
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }

    /// memfd_create: refused without MFD_NOEXEC_SEAL, allowed with it (on a spawned thread).
    #[test]
    fn executable_memfds_are_refused_on_a_thread() {
        let program = default_program();
        let res = std::thread::spawn(move || {
            apply_seccomp_on_current_thread(&program).unwrap();
            let plain = crate::sys::fs::memfd_create_probe(0);
            let sealed = crate::sys::fs::memfd_create_probe(MFD_NOEXEC_SEAL);
            (plain, sealed)
        })
        .join()
        .unwrap();
        assert_eq!(res.0, Err(libc::EPERM));
        if std::env::var("CALYX_VM_KERNEL").as_deref() == Ok("6.1") {
            // MFD_NOEXEC_SEAL arrived in Linux 6.3; older kernels reject the flag, so on them
            // no memfd can be made at all: closed, not open.
            assert_eq!(res.1, Err(libc::EINVAL), "{res:?}");
        } else {
            assert!(res.1.is_ok(), "{res:?}");
        }
    }
}
