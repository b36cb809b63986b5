//! Profiles: how a run is confined — its read-only system view, default limits, rlimits,
//! seccomp allowlist and Landlock floor, and the layers it cannot run without.
//!
//! The profiles under `profiles/` are embedded in the binary with `include_str!`, so an
//! installed `calyx-run` needs no source tree; a profile is looked up by name. Parsing is
//! strict (`deny_unknown_fields`) and validated once, here, so the rest of calyx never sees a
//! profile that lists an always-denied syscall, a relative path or an ABI floor below 1.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::isolate::rlimit::Resource;
use crate::isolate::seccomp::ALWAYS_DENIED;
use crate::lease::model::{Layer, Limits};

/// The built-in profiles' TOML sources: (name, text). The runner embeds their JSON form
/// (below); the tests check that both load to the same profile.
#[cfg(test)]
const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../profiles/default.toml")),
    ("strict", include_str!("../profiles/strict.toml")),
];

/// The built-in profiles as JSON, converted from their TOML at build time (`build.rs`): what
/// [`Profile::builtin`] parses at every run (about 12 us, against 45 us for the TOML).
const BUILTIN_PROFILES_JSON: &[(&str, &str)] = &[
    (
        "default",
        include_str!(concat!(env!("OUT_DIR"), "/profile-default.json")),
    ),
    (
        "strict",
        include_str!(concat!(env!("OUT_DIR"), "/profile-strict.json")),
    ),
];

/// The built-in syscall sets a profile's `seccomp.syscalls` may name: (name, text).
const BUILTIN_SYSCALL_SETS: &[(&str, &str)] = &[
    ("default", include_str!("../profiles/default.syscalls")),
    ("strict", include_str!("../profiles/strict.syscalls")),
];

/// The text of built-in profile `name` in `table`; an unknown name is refused with the list of
/// known ones.
fn builtin_text(table: &[(&str, &'static str)], name: &str) -> Result<&'static str, ProfileError> {
    find_text(table, name).ok_or_else(|| ProfileError::Unknown {
        name: name.to_owned(),
        known: builtin_names().join(", "),
    })
}

/// The text of `name` in a table of built-in texts.
fn find_text(table: &[(&str, &'static str)], name: &str) -> Option<&'static str> {
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Names of the built-in profiles, in a stable order.
pub fn builtin_names() -> &'static [&'static str] {
    &["default", "strict"]
}

/// Why a profile could not be loaded or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No built-in profile has this name.
    #[error("unknown profile {name:?}; known profiles: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The profile's text does not parse into a profile.
    #[error("profile {profile:?}: {source}")]
    Parse {
        /// Profile name.
        profile: String,
        /// The parser's error (line, column, field).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `seccomp.syscalls` names a set that does not exist.
    #[error("profile {profile:?}: unknown syscall set {set:?}")]
    UnknownSyscallSet {
        /// Profile name.
        profile: String,
        /// The set name.
        set: String,
    },
    /// A syscall-set line has an unknown architecture prefix.
    #[error("syscall set {set:?} line {line}: unknown architecture {arch:?} (x86_64, aarch64)")]
    UnknownArch {
        /// Set name.
        set: String,
        /// 1-based line number.
        line: usize,
        /// The prefix found.
        arch: String,
    },
    /// A syscall name is malformed (only `[a-z0-9_]` is allowed).
    #[error("syscall set {set:?} line {line}: malformed syscall name {name:?}")]
    BadSyscallName {
        /// Set name.
        set: String,
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
    },
    /// The allowlist names a call calyx always denies.
    #[error("syscall set {set:?} allows {name:?}, which calyx always denies; remove it")]
    AlwaysDenied {
        /// Set name.
        set: String,
        /// The syscall.
        name: String,
    },
    /// A view path is not absolute and normal (no `..`, no `.`).
    #[error("profile {profile:?}: view path {path:?} must be absolute, without . or ..")]
    BadViewPath {
        /// Profile name.
        profile: String,
        /// The path.
        path: PathBuf,
    },
    /// A view path is listed twice.
    #[error("profile {profile:?}: view path {path:?} is listed twice")]
    DuplicateViewPath {
        /// Profile name.
        profile: String,
        /// The path.
        path: PathBuf,
    },
    /// `landlock.min_abi` is below the hard floor of 1.
    #[error("profile {profile:?}: landlock.min_abi is {value}; the floor is 1")]
    LandlockFloor {
        /// Profile name.
        profile: String,
        /// The value found.
        value: u8,
    },
    /// A required view path is missing on the host.
    #[error("profile view path {path:?} (looked up at {host:?}): {source}")]
    ViewPathMissing {
        /// The path inside the view.
        path: PathBuf,
        /// Where it was looked up.
        host: PathBuf,
        /// The error from lstat/readlink.
        #[source]
        source: std::io::Error,
    },
    /// A view path is a symlink whose target is not inside any other view path.
    #[error("profile view path {path:?} is a symlink to {target:?}, which is outside the view")]
    SymlinkOutsideView {
        /// The symlink.
        path: PathBuf,
        /// Its target as read.
        target: PathBuf,
    },
}

impl ProfileError {
    /// The exit code of SPEC §4.5 for this error: a bad profile is bad configuration (78); a
    /// host that does not have what the profile needs is a setup failure (125).
    pub fn exit_code(&self) -> u8 {
        match self {
            ProfileError::ViewPathMissing { .. } | ProfileError::SymlinkOutsideView { .. } => {
                crate::exit::SETUP_FAILED
            }
            _ => crate::exit::BAD_CONFIG,
        }
    }
}

/// Architectures the syscall sets are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyscallArch {
    /// x86-64.
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

impl SyscallArch {
    /// Every architecture calyx compiles filters for.
    pub const ALL: [SyscallArch; 2] = [SyscallArch::X86_64, SyscallArch::Aarch64];

    /// The architecture this binary runs on, if calyx supports it.
    pub fn native() -> Option<SyscallArch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(SyscallArch::X86_64),
            "aarch64" => Some(SyscallArch::Aarch64),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<SyscallArch> {
        match s {
            "x86_64" => Some(SyscallArch::X86_64),
            "aarch64" => Some(SyscallArch::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for SyscallArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyscallArch::X86_64 => "x86_64",
            SyscallArch::Aarch64 => "aarch64",
        })
    }
}

/// One entry of a syscall set: (architecture, or None for all; syscall name).
pub type SyscallEntry = (Option<SyscallArch>, String);

/// A syscall allowlist: names for every architecture plus names for one architecture only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallSet {
    /// The set's name (file stem under `profiles/`).
    pub name: String,
    entries: Entries,
}

/// A built-in set is parsed only when its names are needed: a run under a built-in profile
/// gets its seccomp program precompiled (`isolate::seccomp`) and never needs them, and parsing
/// the set took 0.066 ms before the clone at every run. The tests parse every built-in set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entries {
    /// The text of the built-in set of this name, not parsed yet.
    Builtin(&'static str),
    /// In file order, without duplicates.
    Parsed(Vec<SyscallEntry>),
}

impl SyscallSet {
    /// The built-in set `name` (a file `profiles/NAME.syscalls`), if there is one. Not parsed
    /// here: see [`entries`](Self::entries).
    pub fn builtin(name: &str) -> Option<SyscallSet> {
        find_text(BUILTIN_SYSCALL_SETS, name).map(|text| SyscallSet {
            name: name.to_owned(),
            entries: Entries::Builtin(text),
        })
    }

    /// Parses the `.syscalls` format: whitespace-separated names, `#` comments, and lines
    /// starting with `x86_64:` or `aarch64:` for calls only that architecture has.
    pub fn parse(name: &str, text: &str) -> Result<SyscallSet, ProfileError> {
        Ok(SyscallSet {
            name: name.to_owned(),
            entries: Entries::Parsed(parse_entries(name, text)?),
        })
    }

    /// The name of the built-in set this is, unparsed and unchanged; None for a set parsed
    /// from other text.
    pub fn builtin_name(&self) -> Option<&str> {
        matches!(self.entries, Entries::Builtin(_)).then_some(self.name.as_str())
    }

    /// The entries in file order, without duplicates; a built-in set is parsed now.
    pub fn entries(&self) -> Result<std::borrow::Cow<'_, [SyscallEntry]>, ProfileError> {
        match &self.entries {
            Entries::Builtin(text) => parse_entries(&self.name, text).map(std::borrow::Cow::Owned),
            Entries::Parsed(entries) => Ok(std::borrow::Cow::Borrowed(entries)),
        }
    }

    /// The names to allow on `arch`: the common ones and those marked for `arch`, each once,
    /// in file order.
    pub fn names_for(&self, arch: SyscallArch) -> Result<Vec<String>, ProfileError> {
        let entries = self.entries()?;
        let mut seen = HashSet::with_capacity(entries.len());
        Ok(entries
            .iter()
            .filter(|(a, _)| a.is_none_or(|a| a == arch))
            .map(|(_, n)| n.as_str())
            .filter(|n| seen.insert(*n))
            .map(str::to_owned)
            .collect())
    }
}

/// The entries of the set `name` written as `text` (see [`SyscallSet::parse`]).
fn parse_entries(name: &str, text: &str) -> Result<Vec<SyscallEntry>, ProfileError> {
    // Hash sets borrowing the text keep it cheap (a linear scan of ALWAYS_DENIED and a
    // BTreeSet of owned strings per name cost as much as a signature check).
    let always_denied: HashSet<&str> = ALWAYS_DENIED.iter().copied().collect();
    let mut entries = Vec::new();
    let mut seen: HashSet<(Option<SyscallArch>, &str)> = HashSet::with_capacity(512);
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (arch, names) = match line.split_once(':') {
            Some((prefix, rest)) => {
                let arch =
                    SyscallArch::parse(prefix.trim()).ok_or_else(|| ProfileError::UnknownArch {
                        set: name.to_owned(),
                        line: idx + 1,
                        arch: prefix.trim().to_owned(),
                    })?;
                (Some(arch), rest)
            }
            None => (None, line),
        };
        for call in names.split_whitespace() {
            let well_formed = call
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                return Err(ProfileError::BadSyscallName {
                    set: name.to_owned(),
                    line: idx + 1,
                    name: call.to_owned(),
                });
            }
            if always_denied.contains(call) {
                return Err(ProfileError::AlwaysDenied {
                    set: name.to_owned(),
                    name: call.to_owned(),
                });
            }
            if seen.insert((arch, call)) {
                entries.push((arch, call.to_owned()));
            }
        }
    }
    Ok(entries)
}

/// What the seccomp filter does with a call it denies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyAction {
    /// The call fails with EPERM (ENOSYS for clone3), so programs can fall back and report.
    #[default]
    Errno,
    /// The whole process is killed (SIGSYS), so a probing payload learns nothing further.
    Kill,
}

/// One system path of the view.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewPath {
    /// Absolute path, bound at the same place inside the sandbox.
    pub path: PathBuf,
    /// Mounted without noexec and granted Landlock execute.
    #[serde(default)]
    pub exec: bool,
    /// May be absent on the host (skipped instead of refused).
    #[serde(default)]
    pub optional: bool,
}

/// A view path as found on the host: what the mount code must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewEntry {
    /// Bind the host path read-only at the same place.
    Bind {
        /// The path (same inside and outside).
        path: PathBuf,
        /// Whether it may be executed from (no noexec, Landlock execute).
        exec: bool,
        /// A directory (else a file).
        dir: bool,
    },
    /// Recreate a symlink (merged-usr `/bin -> usr/bin`), target exactly as read.
    Symlink {
        /// The link's path.
        path: PathBuf,
        /// The link's target, relative or absolute, as the host has it.
        target: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    layers: Vec<Layer>,
    view: ViewFile,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    rlimits: BTreeMap<Resource, u64>,
    seccomp: SeccompFile,
    landlock: LandlockFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewFile {
    paths: Vec<ViewPath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeccompFile {
    #[serde(default)]
    on_deny: DenyAction,
    syscalls: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LandlockFile {
    min_abi: u8,
}

/// A loaded, validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// One line for `--help`, `--dry-run` and reports.
    pub description: String,
    /// Layers that must be in force; a host lacking one refuses the run (125).
    pub layers: Vec<Layer>,
    /// Read-only system paths of the view, in mount order.
    pub view: Vec<ViewPath>,
    /// Limits used where the lease leaves a field out.
    pub limits: Limits,
    /// rlimits applied to the payload (soft = hard), core = 0 at least.
    pub rlimits: Vec<(Resource, u64)>,
    /// What a denied syscall does.
    pub on_deny: DenyAction,
    /// The syscall allowlist.
    pub syscalls: SyscallSet,
    /// Landlock ABI floor (at least 1); newer ABIs are best-effort.
    pub landlock_min_abi: u8,
}

impl Profile {
    /// Loads the built-in profile `name`.
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        let text = builtin_text(BUILTIN_PROFILES_JSON, name)?;
        let file: ProfileFile = serde_json::from_str(text).map_err(|e| ProfileError::Parse {
            profile: name.to_owned(),
            source: Box::new(e),
        })?;
        Profile::from_file(name, file)
    }

    /// The built-in profile `name` parsed from its TOML source, as a user-written profile
    /// would be: what [`builtin`](Self::builtin) must equal.
    #[cfg(test)]
    pub(crate) fn builtin_from_toml(name: &str) -> Result<Profile, ProfileError> {
        Profile::from_toml(name, builtin_text(BUILTIN_PROFILES, name)?)
    }

    /// Parses and validates a profile from TOML text; syscall sets are the built-in ones.
    pub fn from_toml(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            profile: name.to_owned(),
            source: Box::new(e),
        })?;
        Profile::from_file(name, file)
    }

    /// Validates a parsed profile file.
    fn from_file(name: &str, file: ProfileFile) -> Result<Profile, ProfileError> {
        let syscalls = SyscallSet::builtin(&file.seccomp.syscalls).ok_or_else(|| {
            ProfileError::UnknownSyscallSet {
                profile: name.to_owned(),
                set: file.seccomp.syscalls.clone(),
            }
        })?;

        let mut seen = BTreeSet::new();
        for vp in &file.view.paths {
            if !is_normal_absolute(&vp.path) {
                return Err(ProfileError::BadViewPath {
                    profile: name.to_owned(),
                    path: vp.path.clone(),
                });
            }
            if !seen.insert(vp.path.clone()) {
                return Err(ProfileError::DuplicateViewPath {
                    profile: name.to_owned(),
                    path: vp.path.clone(),
                });
            }
        }
        if file.landlock.min_abi < 1 {
            return Err(ProfileError::LandlockFloor {
                profile: name.to_owned(),
                value: file.landlock.min_abi,
            });
        }
        // core = 0 is not negotiable: a core dump writes the payload's memory to a file.
        let mut rlimits = file.rlimits;
        rlimits.insert(Resource::Core, 0);

        Ok(Profile {
            name: name.to_owned(),
            description: file.description,
            layers: file.layers,
            view: file.view.paths,
            limits: file.limits,
            rlimits: rlimits.into_iter().collect(),
            on_deny: file.seccomp.on_deny,
            syscalls,
            landlock_min_abi: file.landlock.min_abi,
        })
    }

    /// Looks up every view path under `host_root` (`/` in production, a fixture tree in
    /// tests) and says how to reproduce it: bind it, or recreate it as a symlink. Optional
    /// paths that are absent are left out; a required one that is absent is an error naming
    /// it. A symlink must point inside another view path, so the recreated link resolves.
    pub fn resolve_view(&self, host_root: &Path) -> Result<Vec<ViewEntry>, ProfileError> {
        let mut entries = Vec::with_capacity(self.view.len());
        for vp in &self.view {
            let host = host_root.join(vp.path.strip_prefix("/").unwrap_or(&vp.path));
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && vp.optional => continue,
                Err(source) => {
                    return Err(ProfileError::ViewPathMissing {
                        path: vp.path.clone(),
                        host,
                        source,
                    });
                }
            };
            if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&host).map_err(|source| ProfileError::ViewPathMissing {
                        path: vp.path.clone(),
                        host: host.clone(),
                        source,
                    })?;
                let resolved = resolve_link(&vp.path, &target);
                let inside = self
                    .view
                    .iter()
                    .any(|other| other.path != vp.path && resolved.starts_with(&other.path));
                if !inside {
                    return Err(ProfileError::SymlinkOutsideView {
                        path: vp.path.clone(),
                        target,
                    });
                }
                entries.push(ViewEntry::Symlink {
                    path: vp.path.clone(),
                    target,
                });
            } else {
                entries.push(ViewEntry::Bind {
                    path: vp.path.clone(),
                    exec: vp.exec,
                    dir: meta.is_dir(),
                });
            }
        }
        Ok(entries)
    }

    /// Whether the profile requires `layer`.
    pub fn requires(&self, layer: Layer) -> bool {
        self.layers.contains(&layer)
    }
}

/// Absolute, and made only of normal components (no `.`, `..`).
fn is_normal_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The absolute path a link at `link` with `target` names, lexically (`..` pops a level).
fn resolve_link(link: &Path, target: &Path) -> PathBuf {
    let mut out = if target.is_absolute() {
        PathBuf::from("/")
    } else {
        link.parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
    };
    for c in target.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
