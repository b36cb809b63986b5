//! The run plan: (verified lease, profile, host features, argv, caller env) → exactly what the
//! sandbox will be, or why the run is refused. Pure: the host's filesystem is consulted only
//! through the [`HostFs`] the caller passes in, so the whole decision is table-tested
//! (tests/runner_plan.rs).
//!
//! Refusal codes: argv not allowed → 77 (authorization); unknown profile, a granted path that
//! does not exist or is reached through a symlink, a malformed env grant → 78 (the lease is
//! authentic but does not fit this host: re-signing the same lease cannot help, fixing the
//! host or the lease's content can); a layer the floor requires and the host lacks → 125.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::exit;
use crate::features::{HostFeatures, LandlockSupport, SECCOMP_REMEDY, UserNs};
use crate::lease::argv::{ArgvError, match_argv};
use crate::lease::model::{Layer, Lease, Network};

/// The PATH every payload gets unless the lease's `env.set` names one.
pub const FIXED_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What a profile contributes to a plan (adapted from `crate::profile::Profile`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileSpec {
    /// Profile name.
    pub name: String,
    /// Host system paths as found on this host (resolved by the profile loader).
    pub system: Vec<SystemEntry>,
    /// Default /tmp size in bytes.
    pub tmp_bytes: u64,
    /// Default wall-clock timeout in seconds.
    pub timeout_secs: u64,
    /// rlimits as (name, value), name as in `RLIMIT_<NAME>` lower-cased (e.g. "core").
    pub rlimits: Vec<(String, u64)>,
    /// Layers the profile requires.
    pub require: Vec<Layer>,
    /// Minimum Landlock ABI (the floor is 1).
    pub landlock_min_abi: u32,
}

/// One system path of a profile as found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SystemEntry {
    /// Bind read-only at the same place.
    Bind {
        /// Absolute path.
        path: PathBuf,
        /// Whether files under it may be executed.
        exec: bool,
        /// Directory (else file).
        dir: bool,
    },
    /// Recreate a symlink (merged-usr `/bin -> usr/bin`).
    Symlink {
        /// Link path.
        path: PathBuf,
        /// Target as on the host.
        target: PathBuf,
    },
}

/// What a path is on the host, as far as planning cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Does not exist.
    Missing,
    /// A directory.
    Dir,
    /// A regular file (or other non-directory that can be a bind source).
    File,
    /// A symbolic link with this target text.
    Symlink(PathBuf),
}

/// Read-only view of the host filesystem used by the planner (`lstat` semantics).
pub trait HostFs {
    /// The kind of `path`, without following a final symlink.
    fn kind(&self, path: &Path) -> PathKind;
}

/// Read or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
}

/// One step of building the view, in order, relative to the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountStep {
    /// Bind `path` from the host to the same place in the view.
    Bind {
        /// Host path and view path.
        path: PathBuf,
        /// Whether the bind source is a directory (else a file mount point is created).
        dir: bool,
        /// ro or rw.
        access: Access,
        /// exec allowed (otherwise noexec).
        exec: bool,
    },
    /// A symbolic link in the view (merged-usr links such as /bin -> usr/bin).
    Symlink {
        /// Link path.
        path: PathBuf,
        /// Link target as on the host.
        target: PathBuf,
    },
    /// A size-capped tmpfs.
    Tmpfs {
        /// Mount point.
        path: PathBuf,
        /// Size in bytes.
        size_bytes: u64,
    },
    /// A new procfs for the new pid namespace.
    Proc,
    /// /dev as a small tmpfs with these host device nodes bound in.
    Dev {
        /// Node names under /dev.
        nodes: Vec<String>,
    },
}

/// Landlock rights for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockRights {
    /// Read files / list directories.
    pub read: bool,
    /// Write, create, remove, truncate.
    pub write: bool,
    /// Execute files.
    pub exec: bool,
}

/// The Landlock part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockPlan {
    /// Paths (view paths, which equal host paths) and their rights.
    pub rules: Vec<(PathBuf, LandlockRights)>,
    /// Deny TCP bind/connect (network `none`, ABI 4+).
    pub deny_tcp: bool,
    /// Refuse below this ABI.
    pub min_abi: u32,
}

/// uid/gid mapping: one id inside mapped to the caller's id outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IdMap {
    /// Id inside the user namespace.
    pub inside: u32,
    /// Id outside (the caller's).
    pub outside: u32,
}

/// Everything the run will get.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Profile name.
    pub profile: String,
    /// argv exactly as given.
    pub argv: Vec<String>,
    /// The `commands` entry that allowed it.
    pub rule_index: usize,
    /// Pinned executable digest, if the rule has one.
    pub exe_sha256: Option<String>,
    /// Namespaces created (always all seven: user, mount, pid, net, ipc, uts, cgroup).
    pub namespaces: Vec<&'static str>,
    /// uid map.
    pub uid_map: IdMap,
    /// gid map.
    pub gid_map: IdMap,
    /// View construction, in order.
    pub mounts: Vec<MountStep>,
    /// Working directory inside the view.
    pub cwd: PathBuf,
    /// Landlock rules.
    pub landlock: LandlockPlan,
    /// Network mode (selects the seccomp socket rules too).
    pub network: Network,
    /// Seccomp syscall set: the profile's name.
    pub seccomp_profile: String,
    /// Environment of the payload, sorted by name.
    pub env: Vec<(String, String)>,
    /// rlimits (name, value).
    pub rlimits: Vec<(String, u64)>,
    /// Wall-clock timeout in milliseconds.
    pub timeout_ms: u64,
    /// Layers that must be in force.
    pub required_layers: BTreeSet<Layer>,
    /// What to copy into the artifact store after the run.
    pub artifacts: crate::artifact::plan::ArtifactPlan,
}

/// Why there is no plan.
#[derive(Debug, Error)]
pub enum PlanError {
    /// argv not allowed by the lease.
    #[error("refused: {0}")]
    Argv(#[from] ArgvError),
    /// The profile name is unknown.
    #[error("unknown profile {name:?} (available: {available})")]
    UnknownProfile {
        /// Requested name.
        name: String,
        /// Known names.
        available: String,
    },
    /// A granted path does not exist on this host.
    #[error("paths.{list} entry {path} does not exist on this host")]
    PathMissing {
        /// read, write or exec.
        list: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A granted path is not absolute and normal, or goes through a symlink.
    #[error("paths.{list} entry {path} is not usable: {why}")]
    PathUnusable {
        /// read, write or exec.
        list: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// An artifact path that no write grant holds: after the run it would name a file the
    /// run could not have written (or one in the sandbox's /tmp, which is gone).
    #[error("artifacts.paths entry {path} is not inside any paths.write grant; {why}")]
    ArtifactOutsideGrants {
        /// The artifact path.
        path: PathBuf,
        /// What to change.
        why: &'static str,
    },
    /// A bad env grant.
    #[error("env grant {name:?} is invalid: {why}")]
    BadEnv {
        /// Variable name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A required layer is missing on this host.
    #[error("required layer {layer} is not available: {reason}; remedy: {remedy}")]
    LayerMissing {
        /// Layer name.
        layer: &'static str,
        /// Why.
        reason: String,
        /// How to fix the host.
        remedy: String,
    },
}

impl PlanError {
    /// The SPEC §4.5 exit code for this refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            PlanError::Argv(_) => exit::REFUSED,
            PlanError::UnknownProfile { .. }
            | PlanError::PathMissing { .. }
            | PlanError::PathUnusable { .. }
            | PlanError::BadEnv { .. }
            | PlanError::ArtifactOutsideGrants { .. } => exit::BAD_CONFIG,
            PlanError::LayerMissing { .. } => exit::SETUP_FAILED,
        }
    }
}

/// The inputs of [`plan`].
pub struct PlanInput<'a> {
    /// The verified lease payload.
    pub lease: &'a Lease,
    /// The lease's profile, already looked up.
    pub profile: &'a ProfileSpec,
    /// Host features.
    pub features: &'a HostFeatures,
    /// Requested argv.
    pub argv: &'a [String],
    /// Caller's environment.
    pub caller_env: &'a [(String, String)],
    /// Caller's (uid, gid).
    pub caller_ids: (u32, u32),
    /// Host filesystem view.
    pub host: &'a dyn HostFs,
}

/// /dev nodes bound from the host.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Builds the plan or says why not.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let lease = input.lease;
    let rule_index = match_argv(&lease.commands, input.argv)?;
    let rule = &lease.commands[rule_index];
    let required = required_layers(lease, input.profile);
    check_floor(&required, lease, input.profile, input.features)?;

    let mut binds: BTreeMap<PathBuf, (bool, Access, bool)> = BTreeMap::new();
    let mut write_grants: Vec<(PathBuf, bool)> = Vec::new();
    let grants = [
        ("read", &lease.paths.read, Access::Ro, false),
        ("write", &lease.paths.write, Access::Rw, false),
        ("exec", &lease.paths.exec, Access::Ro, true),
    ];
    for (list, paths, access, exec) in grants {
        for p in paths {
            let dir = check_grant(list, p, input.host)?;
            if access == Access::Rw {
                write_grants.push((p.clone(), dir));
            }
            let e = binds.entry(p.clone()).or_insert((dir, access, exec));
            e.1 = e.1.max(access);
            e.2 |= exec;
        }
    }

    let mut mounts = Vec::new();
    let mut landlock = Vec::new();
    let rights = |read, write, exec| LandlockRights { read, write, exec };
    for entry in &input.profile.system {
        match entry {
            SystemEntry::Symlink { path, target } => mounts.push(MountStep::Symlink {
                path: path.clone(),
                target: target.clone(),
            }),
            SystemEntry::Bind { path, exec, dir } => {
                mounts.push(MountStep::Bind {
                    path: path.clone(),
                    dir: *dir,
                    access: Access::Ro,
                    exec: *exec,
                });
                landlock.push((path.clone(), rights(true, false, *exec)));
            }
        }
    }
    let tmp_bytes = lease.limits.tmp_bytes.unwrap_or(input.profile.tmp_bytes);
    mounts.push(MountStep::Tmpfs {
        path: "/tmp".into(),
        size_bytes: tmp_bytes,
    });
    landlock.push(("/tmp".into(), rights(true, true, false)));
    mounts.push(MountStep::Proc);
    landlock.push(("/proc".into(), rights(true, false, false)));
    mounts.push(MountStep::Dev {
        nodes: DEV_NODES.iter().map(|s| (*s).to_owned()).collect(),
    });
    for node in DEV_NODES {
        let writable = !matches!(node, "random" | "urandom");
        landlock.push((Path::new("/dev").join(node), rights(true, writable, false)));
    }
    // Lease binds after the system ones and the tmpfs, shortest path first, so a grant below
    // /usr or /tmp lands on top of its parent rather than under it.
    let mut ordered: Vec<_> = binds.into_iter().collect();
    ordered.sort_by_key(|(p, _)| p.components().count());
    for (path, (dir, access, exec)) in ordered {
        landlock.push((path.clone(), rights(true, access == Access::Rw, exec)));
        mounts.push(MountStep::Bind {
            path,
            dir,
            access,
            exec,
        });
    }

    let artifacts = crate::artifact::plan::plan_artifacts(lease, &write_grants)?;
    let timeout_secs = lease
        .limits
        .timeout_secs
        .unwrap_or(input.profile.timeout_secs);
    let (uid, gid) = input.caller_ids;
    Ok(Plan {
        profile: input.profile.name.clone(),
        argv: input.argv.to_vec(),
        rule_index,
        exe_sha256: rule.sha256.clone(),
        namespaces: vec!["user", "mount", "pid", "net", "ipc", "uts", "cgroup"],
        // The payload keeps the caller's own ids: files it creates in write grants belong to the
        // caller, and being "root inside" would buy it nothing since every capability is dropped.
        uid_map: IdMap {
            inside: uid,
            outside: uid,
        },
        gid_map: IdMap {
            inside: gid,
            outside: gid,
        },
        mounts,
        cwd: "/".into(),
        landlock: LandlockPlan {
            rules: landlock,
            deny_tcp: lease.network == Network::None,
            min_abi: input
                .profile
                .landlock_min_abi
                .max(u32::from(lease.require.landlock_abi.unwrap_or(1)))
                .max(1),
        },
        network: lease.network,
        seccomp_profile: input.profile.name.clone(),
        env: build_env(lease, input.caller_env)?,
        rlimits: input.profile.rlimits.clone(),
        timeout_ms: timeout_secs.saturating_mul(1000),
        required_layers: required,
        artifacts,
    })
}

fn required_layers(lease: &Lease, profile: &ProfileSpec) -> BTreeSet<Layer> {
    let mut set: BTreeSet<Layer> = profile
        .require
        .iter()
        .chain(&lease.require.layers)
        .copied()
        .collect();
    // Without a user namespace there is no unprivileged sandbox at all.
    set.insert(Layer::UserNs);
    if lease.require.landlock_abi.is_some() {
        set.insert(Layer::Landlock);
    }
    set
}

fn check_floor(
    required: &BTreeSet<Layer>,
    lease: &Lease,
    profile: &ProfileSpec,
    f: &HostFeatures,
) -> Result<(), PlanError> {
    let missing = |layer, reason: &str, remedy: &str| PlanError::LayerMissing {
        layer,
        reason: reason.to_owned(),
        remedy: remedy.to_owned(),
    };
    if let UserNs::Blocked { reason, remedy } = &f.user_ns {
        return Err(missing("user_ns", reason, remedy));
    }
    if required.contains(&Layer::Seccomp) && !f.seccomp {
        return Err(missing(
            "seccomp",
            "the kernel has no seccomp filter mode",
            SECCOMP_REMEDY,
        ));
    }
    // The cgroup layer is decided at stage 3 against the real hierarchy (stage::resources).
    if required.contains(&Layer::Landlock) {
        let want = profile
            .landlock_min_abi
            .max(u32::from(lease.require.landlock_abi.unwrap_or(1)))
            .max(1);
        match &f.landlock {
            LandlockSupport::Missing { reason, remedy } => {
                return Err(missing("landlock", reason, remedy));
            }
            LandlockSupport::Available { abi } if *abi < want => {
                return Err(missing(
                    "landlock",
                    &format!("the kernel offers Landlock ABI {abi}, the floor is {want}"),
                    "boot a newer kernel",
                ));
            }
            LandlockSupport::Available { .. } => {}
        }
    }
    Ok(())
}

/// Checks one granted path; returns whether it is a directory.
fn check_grant(list: &'static str, path: &Path, host: &dyn HostFs) -> Result<bool, PlanError> {
    let unusable = |why| PlanError::PathUnusable {
        list,
        path: path.to_owned(),
        why,
    };
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(unusable("it must be absolute, without . or .."));
    }
    if path == Path::new("/") {
        return Err(unusable(
            "granting the whole host filesystem is not supported",
        ));
    }
    if path.starts_with("/proc") || path.starts_with("/dev") {
        return Err(unusable(
            "/proc and /dev are provided by the sandbox and cannot be granted",
        ));
    }
    // Every ancestor must be a real directory: a symlink anywhere would make the mount land on
    // whatever the link points to when the sandbox starts, not on what the signers named.
    let mut prefix = PathBuf::from("/");
    let comps: Vec<_> = path.components().skip(1).collect();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        match host.kind(&prefix) {
            PathKind::Missing => {
                return Err(PlanError::PathMissing {
                    list,
                    path: path.to_owned(),
                });
            }
            PathKind::Symlink(_) => {
                return Err(unusable(
                    "it goes through a symbolic link; name the real path",
                ));
            }
            PathKind::File if i + 1 < comps.len() => {
                return Err(PlanError::PathMissing {
                    list,
                    path: path.to_owned(),
                });
            }
            PathKind::File => return Ok(false),
            PathKind::Dir => {}
        }
    }
    Ok(true)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

fn build_env(
    lease: &Lease,
    caller: &[(String, String)],
) -> Result<Vec<(String, String)>, PlanError> {
    let bad = |name: &str, why| PlanError::BadEnv {
        name: name.to_owned(),
        why,
    };
    let mut env = BTreeMap::new();
    for name in &lease.env.allow {
        if !valid_env_name(name) {
            return Err(bad(name, "names cannot be empty or contain '=' or NUL"));
        }
        if name == "PATH" {
            continue; // the caller's PATH is never trusted; see FIXED_PATH
        }
        if let Some((_, v)) = caller.iter().find(|(k, _)| k == name) {
            env.insert(name.clone(), v.clone());
        }
    }
    env.insert("PATH".to_owned(), FIXED_PATH.to_owned());
    for (name, value) in &lease.env.set {
        if !valid_env_name(name) {
            return Err(bad(name, "names cannot be empty or contain '=' or NUL"));
        }
        if value.contains('\0') {
            return Err(bad(name, "values cannot contain NUL"));
        }
        env.insert(name.clone(), value.clone());
    }
    Ok(env.into_iter().collect())
}

/// The real host filesystem, via `symlink_metadata`.
pub struct RealFs;

impl HostFs for RealFs {
    fn kind(&self, path: &Path) -> PathKind {
        match std::fs::symlink_metadata(path) {
            Err(_) => PathKind::Missing,
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::read_link(path).map_or(PathKind::Missing, PathKind::Symlink)
            }
            Ok(m) if m.is_dir() => PathKind::Dir,
            Ok(_) => PathKind::File,
        }
    }
}
