//! A small seccomp filter, stacked on the profile's, that stops the payload from creating
//! set-user-id or set-group-id files.
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

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Building the filter failed (a bug in the rule table, reported rather than panicking).
#[derive(Debug, thiserror::Error)]
#[error("building the set-id seccomp filter: {0}")]
pub struct SetidError(#[from] seccompiler::BackendError);

const SET_ID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
const MFD_NOEXEC_SEAL: u64 = 0x0008;

/// fchmodat2 has the same number on every architecture (asm-generic numbering, Linux 6.6).
const SYS_FCHMODAT2: i64 = 452;

/// (syscall number, index of its mode argument).
fn mode_calls() -> Vec<(i64, u8)> {
    let mut calls = vec![
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (SYS_FCHMODAT2, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_mknodat, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (libc::SYS_chmod, 1),
        (libc::SYS_open, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_mknod, 1),
    ]);
    calls
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

/// The two filters: set-id modes → EPERM; openat2 → ENOSYS. Built in the parent.
pub fn build_setid_filters() -> Result<[BpfProgram; 2], SetidError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, arg) in mode_calls() {
        // One rule per bit: rules of a syscall are OR-ed, conditions within a rule AND-ed.
        let per_bit = SET_ID_BITS
            .iter()
            .map(|bit| {
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(*bit),
                    *bit,
                )?])
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, per_bit);
    }
    // memfd_create(name, flags): refuse unless flags carry MFD_NOEXEC_SEAL.
    rules.insert(
        libc::SYS_memfd_create,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(MFD_NOEXEC_SEAL),
            0,
        )?])?],
    );
    let modes = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )?;
    let openat2 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_openat2, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )?;
    Ok([modes.try_into()?, openat2.try_into()?])
}

/// Installs both on the calling thread (the payload child, right before exec).
pub fn apply_setid_filters_on_current_thread(
    filters: &[BpfProgram; 2],
) -> Result<(), seccompiler::Error> {
    for f in filters {
        seccompiler::apply_filter(f)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    #[test]
    fn filters_build() {
        let [a, b] = build_setid_filters().unwrap();
        assert!(!a.is_empty() && !b.is_empty());
    }

    /// Applied on a spawned thread (never on the test runner): set-id chmod fails with EPERM,
    /// an ordinary chmod works, openat2 says ENOSYS.
    #[test]
    fn setid_modes_are_refused_on_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let path = file.clone();
        let res = std::thread::spawn(move || {
            let filters = build_setid_filters().unwrap();
            apply_setid_filters_on_current_thread(&filters).unwrap();
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
        let res = std::thread::spawn(|| {
            let filters = build_setid_filters().unwrap();
            apply_setid_filters_on_current_thread(&filters).unwrap();
            let plain = crate::sys::fs::memfd_create_probe(0);
            let sealed = crate::sys::fs::memfd_create_probe(MFD_NOEXEC_SEAL as u32);
            (plain, sealed)
        })
        .join()
        .unwrap();
        assert_eq!(res.0, Err(libc::EPERM));
        assert!(res.1.is_ok(), "{res:?}");
    }
}
