//! Landlock: allow exactly the granted paths with exactly the granted rights, and (network
//! `none`) deny TCP bind and connect — defence in depth under the mount view.
//!
//! # Compatibility
//!
//! ABI 1 is a hard floor: the filesystem rights of ABI 1 are handled with
//! `CompatLevel::HardRequirement`, so a kernel without Landlock is an error, never a silent
//! pass. Everything newer (refer, truncate, ioctl on devices, TCP rules, signal and abstract
//! socket scoping) is requested best-effort up to [`TARGET_ABI`] through the crate's
//! compatibility machinery, which drops what the kernel lacks; the crate's answer
//! (`RulesetStatus`, detected ABI) is what gets reported. ABI numbers are never compared by
//! hand to decide what to request.
//!
//! # no_new_privs
//!
//! `landlock_restrict_self` requires no_new_privs or CAP_SYS_ADMIN. The sandbox init has
//! already dropped its capabilities, so the crate's default of setting no_new_privs right
//! before restricting is relied on: no_new_privs is in force from this step on, earlier than
//! SPEC §4.1's "no_new_privs; seccomp" line suggests. That is harmless — it only forbids
//! gaining privileges on exec, and nothing between here and exec needs to — and the explicit
//! no_new_privs step that follows is then a verified no-op.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::Serialize;

use crate::lease::model::{Network, PathGrants};
use crate::profile::ViewEntry;

/// The newest ABI whose rights calyx requests (and was tested with). Newer kernels are
/// reported as such but not asked for rights calyx has not vetted.
pub const TARGET_ABI: ABI = ABI::V7;

/// The rights granted on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessClass {
    /// Read files, list directories.
    Read,
    /// Read and execute.
    ReadExec,
    /// Read, write, create, remove, rename, truncate; no execute.
    ReadWrite,
    /// Everything of ReadWrite plus execute.
    ReadWriteExec,
}

impl AccessClass {
    fn parts(self) -> (bool, bool) {
        match self {
            AccessClass::Read => (false, false),
            AccessClass::ReadExec => (false, true),
            AccessClass::ReadWrite => (true, false),
            AccessClass::ReadWriteExec => (true, true),
        }
    }

    fn from_parts(write: bool, exec: bool) -> AccessClass {
        match (write, exec) {
            (false, false) => AccessClass::Read,
            (false, true) => AccessClass::ReadExec,
            (true, false) => AccessClass::ReadWrite,
            (true, true) => AccessClass::ReadWriteExec,
        }
    }

    /// The class granting the rights of both.
    pub fn union(self, other: AccessClass) -> AccessClass {
        let (w1, x1) = self.parts();
        let (w2, x2) = other.parts();
        AccessClass::from_parts(w1 || w2, x1 || x2)
    }

    /// The Landlock rights of this class at `abi`, for a directory (`dir`) or a file.
    /// Creating device nodes is never granted (mounts are nodev and the payload has no
    /// CAP_MKNOD; not granting it keeps the rule honest).
    pub fn access_fs(self, abi: ABI, dir: bool) -> BitFlags<AccessFs> {
        let (write, exec) = self.parts();
        let mut access = AccessFs::ReadFile | AccessFs::ReadDir;
        if write {
            access |= AccessFs::from_write(abi) & !(AccessFs::MakeChar | AccessFs::MakeBlock);
        }
        if exec {
            access |= AccessFs::Execute;
        }
        if dir {
            access
        } else {
            access & AccessFs::from_file(abi)
        }
    }
}

/// One path rule of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathRule {
    /// The path as seen by the caller when the plan is applied (inside the new root).
    pub path: PathBuf,
    /// The rights granted beneath it.
    pub class: AccessClass,
}

/// What Landlock will enforce: pure data, built in the parent and applied in the init.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LandlockPlan {
    /// Path rules, one per path, sorted by path.
    pub rules: Vec<PathRule>,
    /// Deny TCP bind and connect (handled with no port rule; effective from ABI 4).
    pub deny_tcp: bool,
    /// ABI floor: below it the run is refused (at least 1).
    pub min_abi: u8,
}

/// Device nodes of the sandbox's minimal /dev that the payload may read and write.
pub const DEV_NODES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

impl LandlockPlan {
    /// Adds `class` on `path`, merging with an existing rule for the same path.
    pub fn grant(&mut self, path: impl Into<PathBuf>, class: AccessClass) {
        let path = path.into();
        match self.rules.binary_search_by(|r| r.path.cmp(&path)) {
            Ok(i) => self.rules[i].class = self.rules[i].class.union(class),
            Err(i) => self.rules.insert(i, PathRule { path, class }),
        }
    }

    /// The plan of one run: the profile's view (exec paths ReadExec, others Read; symlinks
    /// need no rule, their targets are covered), `/proc` read, `/tmp` read-write, the minimal
    /// `/dev` nodes read-write, then the lease's read/write/exec grants; TCP denied when the
    /// network mode is `none`.
    pub fn for_run(
        view: &[ViewEntry],
        grants: &PathGrants,
        network: Network,
        min_abi: u8,
    ) -> LandlockPlan {
        let mut plan = LandlockPlan {
            rules: Vec::new(),
            deny_tcp: network == Network::None,
            min_abi: min_abi.max(1),
        };
        for entry in view {
            if let ViewEntry::Bind { path, exec, .. } = entry {
                let class = if *exec {
                    AccessClass::ReadExec
                } else {
                    AccessClass::Read
                };
                plan.grant(path.clone(), class);
            }
        }
        plan.grant("/proc", AccessClass::Read);
        plan.grant("/tmp", AccessClass::ReadWrite);
        plan.grant("/dev", AccessClass::Read);
        for node in DEV_NODES {
            plan.grant(node, AccessClass::ReadWrite);
        }
        for p in &grants.read {
            plan.grant(p.clone(), AccessClass::Read);
        }
        for p in &grants.write {
            plan.grant(p.clone(), AccessClass::ReadWrite);
        }
        for p in &grants.exec {
            plan.grant(p.clone(), AccessClass::ReadExec);
        }
        plan
    }
}

/// Why Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// Building or enforcing the ruleset failed (includes a kernel without Landlock: the ABI 1
    /// floor is a hard requirement).
    #[error("landlock: {operation}: {source}")]
    Ruleset {
        /// What was being done.
        operation: &'static str,
        /// The crate's error.
        #[source]
        source: landlock::RulesetError,
    },
    /// A granted path could not be opened (it must exist when the plan is applied).
    #[error("landlock: opening granted path {path:?}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Adding the rule for a path failed.
    #[error("landlock: adding the rule for {path:?}: {source}")]
    Rule {
        /// The path.
        path: PathBuf,
        /// The crate's error.
        #[source]
        source: landlock::RulesetError,
    },
    /// The kernel enforced nothing.
    #[error("landlock: the kernel enforced no rule (Landlock unavailable or disabled)")]
    NotEnforced,
    /// The kernel's ABI is below the plan's floor.
    #[error("landlock: kernel ABI {abi} is below the required floor {floor}")]
    BelowFloor {
        /// The kernel's ABI.
        abi: u8,
        /// The floor.
        floor: u8,
    },
}

/// How completely the ruleset is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Everything requested is enforced.
    Full,
    /// The kernel's ABI lacks some requested rights; the rest is enforced.
    Partial,
}

/// The kernel's answer, for the run result and the audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockStatus {
    /// Full or partial.
    pub enforcement: Enforcement,
    /// The best ABI the crate detected on this kernel.
    pub abi: u8,
    /// The ABI whose rights calyx requests ([`TARGET_ABI`]).
    pub target_abi: u8,
    /// Whether TCP bind/connect were requested to be denied.
    pub deny_tcp: bool,
    /// Number of path rules added.
    pub rules: usize,
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enforcement {
            Enforcement::Full => write!(f, "landlock: full (ABI {})", self.abi),
            Enforcement::Partial => write!(
                f,
                "landlock: partial (ABI {} of {})",
                self.abi, self.target_abi
            ),
        }
    }
}

/// The ABI as a number (its Display is the number, or "unsupported").
fn abi_number(abi: ABI) -> u8 {
    abi.to_string().parse().unwrap_or(0)
}

fn ruleset_err(operation: &'static str) -> impl FnOnce(landlock::RulesetError) -> LandlockError {
    move |source| LandlockError::Ruleset { operation, source }
}

/// Opens `path` with O_PATH (no read access needed, follows symlinks like the kernel's path
/// walk will) and says whether it is a directory.
fn open_path(path: &Path) -> Result<(File, bool), LandlockError> {
    let err = |source| LandlockError::Path {
        path: path.to_path_buf(),
        source,
    };
    let file = File::from(crate::sys::fs::open_o_path(path).map_err(err)?);
    let dir = file.metadata().map_err(err)?.is_dir();
    Ok((file, dir))
}

/// Restricts the calling thread (and everything it later forks or execs) to `plan`.
/// Sets no_new_privs first (see the module docs). Every path must exist: a missing one is an
/// error naming it, never silently skipped.
pub fn apply_landlock_on_current_thread(
    plan: &LandlockPlan,
) -> Result<LandlockStatus, LandlockError> {
    // The floor: ABI 1's filesystem rights must be enforceable, else error.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(ruleset_err("handling ABI 1 filesystem rights (hard floor)"))?
        // Above the floor, take what the kernel offers.
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(ruleset_err("handling filesystem rights"))?
        // No signals to, or abstract-socket connects into, processes outside the sandbox.
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(ruleset_err("scoping signals and abstract sockets"))?;
    if plan.deny_tcp {
        // Handled with no NetPort rule: every TCP bind and connect is denied.
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET_ABI))
            .map_err(ruleset_err("handling TCP bind/connect"))?;
    }
    let mut created = ruleset
        .create()
        .map_err(ruleset_err("creating the ruleset"))?;
    for rule in &plan.rules {
        let (fd, dir) = open_path(&rule.path)?;
        let access = rule.class.access_fs(TARGET_ABI, dir);
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|source| LandlockError::Rule {
                path: rule.path.clone(),
                source,
            })?;
    }
    let status = created
        .restrict_self()
        .map_err(ruleset_err("restricting the thread"))?;
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => return Err(LandlockError::NotEnforced),
    };
    let abi = match status.landlock {
        landlock::LandlockStatus::Available {
            kernel_abi: Some(newer),
            ..
        } => u8::try_from(newer).unwrap_or(u8::MAX),
        other => abi_number(ABI::from(other)),
    };
    if abi < plan.min_abi {
        return Err(LandlockError::BelowFloor {
            abi,
            floor: plan.min_abi,
        });
    }
    Ok(LandlockStatus {
        enforcement,
        abi,
        target_abi: abi_number(TARGET_ABI),
        deny_tcp: plan.deny_tcp,
        rules: plan.rules.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn access_classes_table() {
        let abi = TARGET_ABI;
        let read = AccessClass::Read.access_fs(abi, true);
        assert!(read.contains(AccessFs::ReadFile | AccessFs::ReadDir));
        assert!(!read.intersects(AccessFs::Execute | AccessFs::WriteFile | AccessFs::MakeReg));
        let rx = AccessClass::ReadExec.access_fs(abi, true);
        assert!(rx.contains(AccessFs::Execute));
        assert!(!rx.contains(AccessFs::WriteFile));
        let rw = AccessClass::ReadWrite.access_fs(abi, true);
        assert!(rw.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate));
        assert!(!rw.intersects(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock));
        let rwx = AccessClass::ReadWriteExec.access_fs(abi, true);
        assert_eq!(rwx, rw | AccessFs::Execute);
        // On a file, directory-only rights are dropped so the kernel does not refuse the rule.
        let rw_file = AccessClass::ReadWrite.access_fs(abi, false);
        assert!(!rw_file.intersects(AccessFs::ReadDir | AccessFs::MakeReg | AccessFs::RemoveDir));
        assert!(rw_file.contains(AccessFs::ReadFile | AccessFs::WriteFile));
        // ABI 1 has no truncate right.
        assert!(
            !AccessClass::ReadWrite
                .access_fs(ABI::V1, true)
                .contains(AccessFs::Truncate)
        );
    }

    #[test]
    fn union_table() {
        use AccessClass::*;
        let table = [
            (Read, Read, Read),
            (Read, ReadExec, ReadExec),
            (Read, ReadWrite, ReadWrite),
            (ReadExec, ReadWrite, ReadWriteExec),
            (ReadWriteExec, Read, ReadWriteExec),
        ];
        for (a, b, want) in table {
            assert_eq!(a.union(b), want, "{a:?} ∪ {b:?}");
            assert_eq!(b.union(a), want, "{b:?} ∪ {a:?}");
        }
    }

    #[test]
    fn plan_for_run_merges_and_sorts() {
        let view = vec![
            ViewEntry::Bind {
                path: "/usr".into(),
                exec: true,
                dir: true,
            },
            ViewEntry::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into(),
            },
            ViewEntry::Bind {
                path: "/etc/ld.so.cache".into(),
                exec: false,
                dir: false,
            },
        ];
        let grants = PathGrants {
            read: vec!["/data".into(), "/work".into()],
            write: vec!["/work".into()],
            exec: vec!["/work".into()],
        };
        let plan = LandlockPlan::for_run(&view, &grants, Network::None, 0);
        assert!(plan.deny_tcp);
        assert_eq!(plan.min_abi, 1, "the floor never goes below 1");
        let find = |p: &str| {
            plan.rules
                .iter()
                .find(|r| r.path == Path::new(p))
                .map(|r| r.class)
        };
        assert_eq!(find("/usr"), Some(AccessClass::ReadExec));
        assert_eq!(find("/bin"), None, "symlinks get no rule");
        assert_eq!(find("/etc/ld.so.cache"), Some(AccessClass::Read));
        assert_eq!(find("/data"), Some(AccessClass::Read));
        assert_eq!(find("/work"), Some(AccessClass::ReadWriteExec));
        assert_eq!(find("/tmp"), Some(AccessClass::ReadWrite));
        assert_eq!(find("/dev/null"), Some(AccessClass::ReadWrite));
        assert_eq!(find("/proc"), Some(AccessClass::Read));
        let paths: Vec<_> = plan.rules.iter().map(|r| r.path.clone()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);
        let loopback = LandlockPlan::for_run(&view, &grants, Network::Loopback, 3);
        assert!(!loopback.deny_tcp);
        assert_eq!(loopback.min_abi, 3);
    }

    #[test]
    fn status_display() {
        let mut s = LandlockStatus {
            enforcement: Enforcement::Full,
            abi: 7,
            target_abi: 7,
            deny_tcp: true,
            rules: 3,
        };
        assert_eq!(s.to_string(), "landlock: full (ABI 7)");
        s.enforcement = Enforcement::Partial;
        s.abi = 2;
        assert_eq!(s.to_string(), "landlock: partial (ABI 2 of 7)");
    }
}
