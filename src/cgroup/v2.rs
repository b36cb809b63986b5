//! cgroup v2 specifics: is the parent delegated to us, and enabling controllers for the run's
//! child without breaking the no-internal-process rule.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::CgroupError;

/// Ownership and mode of one file, as the delegation check needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl FileFacts {
    /// Facts of `path`, `None` if it does not exist.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
        })
    }

    /// True if `uid`/`gid` may write it (root always may).
    pub fn writable_by(&self, uid: u32, gid: u32) -> bool {
        // Root passes DAC checks; a read-only mount still fails later, at mkdir.
        uid == 0
            || (self.uid == uid && self.mode & 0o200 != 0)
            || (self.gid == gid && self.mode & 0o020 != 0)
            || self.mode & 0o002 != 0
    }
}

/// What makes a v2 cgroup unusable as a parent for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationProblem {
    /// A file of the delegation contract is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// The caller cannot write the file.
    #[error("{0} is not writable")]
    NotWritable(&'static str),
    /// An unprivileged caller does not own the file, so it was not delegated to it.
    #[error("{file} is owned by uid {owner}")]
    NotOwner {
        /// File.
        file: &'static str,
        /// Its owner.
        owner: u32,
    },
}

/// Facts about the parent: the directory, cgroup.procs and cgroup.subtree_control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelegationFacts {
    /// The cgroup directory (new children are created in it).
    pub dir: Option<FileFacts>,
    /// cgroup.procs (the run's processes are moved through it).
    pub procs: Option<FileFacts>,
    /// cgroup.subtree_control (controllers are enabled through it).
    pub subtree_control: Option<FileFacts>,
}

impl DelegationFacts {
    /// Gather the facts of `dir`.
    pub fn of(dir: &Path) -> Self {
        Self {
            dir: FileFacts::of(dir),
            procs: FileFacts::of(&dir.join("cgroup.procs")),
            subtree_control: FileFacts::of(&dir.join("cgroup.subtree_control")),
        }
    }
}

/// Decide whether the caller (`uid`, `gid`) may create and manage children of the parent.
pub fn delegation_verdict(
    f: &DelegationFacts,
    uid: u32,
    gid: u32,
) -> Result<(), DelegationProblem> {
    let files = [
        ("the cgroup directory", f.dir),
        ("cgroup.procs", f.procs),
        ("cgroup.subtree_control", f.subtree_control),
    ];
    for (name, facts) in files {
        let facts = facts.ok_or(DelegationProblem::Missing(name))?;
        if !facts.writable_by(uid, gid) {
            return Err(DelegationProblem::NotWritable(name));
        }
        // systemd delegates by chown: an unprivileged caller that merely can write a file
        // (e.g. mode 0666 set by someone) has not been given the subtree.
        if uid != 0 && facts.uid != uid {
            return Err(DelegationProblem::NotOwner {
                file: name,
                owner: facts.uid,
            });
        }
    }
    Ok(())
}

/// Check the parent `dir` for the caller, as a typed refusal with the remedy.
pub fn check_delegation(dir: &Path, uid: u32, gid: u32) -> Result<(), CgroupError> {
    delegation_verdict(&DelegationFacts::of(dir), uid, gid).map_err(|problem| {
        CgroupError::NotDelegated {
            path: dir.to_owned(),
            uid,
            problem,
        }
    })
}

/// What the parent looks like when controllers must be enabled for its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentState {
    /// cgroup.controllers.
    pub available: Vec<String>,
    /// cgroup.subtree_control.
    pub enabled: Vec<String>,
    /// The hierarchy root is exempt from the no-internal-process rule.
    pub is_root: bool,
    /// cgroup.procs.
    pub pids: Vec<u32>,
}

/// Whether this process may move itself into a leaf to free its parent of processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InternalProcessPolicy {
    /// Refuse with the remedy (the default: the caller's cgroup is the caller's business).
    #[default]
    Refuse,
    /// If the only process in the parent is this one, move it into `calyx-runner-<pid>`.
    MoveSelfToLeaf,
}

/// What to do to the parent before creating the child.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnablePlan {
    /// Move this process into a leaf first.
    pub move_self: bool,
    /// Controllers to write to cgroup.subtree_control, in order.
    pub enable: Vec<String>,
}

/// Decide how to get `needed` controllers enabled for the parent's children.
pub fn plan_enable(
    needed: &[&str],
    parent_dir: &Path,
    state: &ParentState,
    self_pid: u32,
    policy: InternalProcessPolicy,
) -> Result<EnablePlan, CgroupError> {
    let enable: Vec<String> = needed
        .iter()
        .filter(|c| !state.enabled.iter().any(|e| e == *c))
        .map(|c| (*c).to_owned())
        .collect();
    if enable.is_empty() {
        return Ok(EnablePlan::default());
    }
    if let Some(c) = enable.iter().find(|c| !state.available.contains(c)) {
        return Err(CgroupError::ControllerUnavailable {
            controller: c.clone(),
            parent: parent_dir.to_owned(),
            remedy: "enable it in the grandparent's cgroup.subtree_control, or delegate it \
                     (systemd: Delegate=cpu io memory pids)",
        });
    }
    // Controllers can be enabled for children only if the parent has no processes of its own
    // (the root cgroup is exempt).
    let move_self = match (state.is_root, state.pids.as_slice()) {
        (true, _) | (false, []) => false,
        (false, [only]) if *only == self_pid && policy == InternalProcessPolicy::MoveSelfToLeaf => {
            true
        }
        (false, pids) => {
            return Err(CgroupError::InternalProcess {
                parent: parent_dir.to_owned(),
                pids: pids.to_vec(),
            });
        }
    };
    Ok(EnablePlan { move_self, enable })
}

/// Read the parent's state.
pub fn parent_state(dir: &Path) -> Result<ParentState, CgroupError> {
    let words = |f: &str| -> Result<Vec<String>, CgroupError> {
        Ok(super::read_file(&dir.join(f))?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    };
    Ok(ParentState {
        available: words("cgroup.controllers")?,
        enabled: words("cgroup.subtree_control")?,
        // Only non-root cgroups have cgroup.type.
        is_root: !dir.join("cgroup.type").exists(),
        pids: super::parse_pids(&super::read_file(&dir.join("cgroup.procs"))?),
    })
}

/// Apply an [`EnablePlan`] to the parent, checking each controller took.
pub fn apply_enable(dir: &Path, plan: &EnablePlan) -> Result<(), CgroupError> {
    if plan.move_self {
        let leaf = dir.join(format!("calyx-runner-{}", std::process::id()));
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: leaf, source }),
        }
        super::write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
    }
    let file = dir.join("cgroup.subtree_control");
    for c in &plan.enable {
        super::write_file(&file, &format!("+{c}"))?;
    }
    let now = super::read_file(&file)?;
    if let Some(c) = plan
        .enable
        .iter()
        .find(|c| !now.split_whitespace().any(|w| w == *c))
    {
        return Err(CgroupError::LimitNotApplied {
            file,
            written: format!("+{c}"),
            read: now,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const fn ff(uid: u32, mode: u32) -> Option<FileFacts> {
        Some(FileFacts {
            uid,
            gid: uid,
            mode,
        })
    }

    #[test]
    fn delegation_table() {
        let all = |f| DelegationFacts {
            dir: f,
            procs: f,
            subtree_control: f,
        };
        let cases = [
            (all(ff(0, 0o755)), 0, Ok(())),
            (all(ff(1000, 0o755)), 1000, Ok(())),
            (
                all(ff(0, 0o755)),
                1000,
                Err(DelegationProblem::NotWritable("the cgroup directory")),
            ),
            (
                all(ff(0, 0o777)),
                1000,
                Err(DelegationProblem::NotOwner {
                    file: "the cgroup directory",
                    owner: 0,
                }),
            ),
            (
                DelegationFacts {
                    dir: ff(1000, 0o755),
                    procs: ff(0, 0o644),
                    subtree_control: ff(1000, 0o644),
                },
                1000,
                Err(DelegationProblem::NotWritable("cgroup.procs")),
            ),
            (
                DelegationFacts {
                    dir: ff(1000, 0o755),
                    procs: ff(1000, 0o644),
                    subtree_control: None,
                },
                1000,
                Err(DelegationProblem::Missing("cgroup.subtree_control")),
            ),
        ];
        for (facts, uid, want) in cases {
            assert_eq!(
                delegation_verdict(&facts, uid, uid),
                want,
                "{facts:?} uid {uid}"
            );
        }
    }

    #[test]
    fn refusal_carries_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_delegation(dir.path(), 4242, 4242)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Delegate=yes"), "{err}");
        assert!(
            err.contains("cgroup.procs") || err.contains("directory"),
            "{err}"
        );
    }

    #[test]
    fn enable_plan_table() {
        let p = Path::new("/cg/parent");
        let st = |enabled: &[&str], is_root, pids: &[u32]| ParentState {
            available: ["cpu", "io", "memory", "pids"].map(String::from).to_vec(),
            enabled: enabled.iter().map(|s| (*s).to_owned()).collect(),
            is_root,
            pids: pids.to_vec(),
        };
        use InternalProcessPolicy::*;
        // Already enabled: nothing to do even with processes in the parent.
        let plan = plan_enable(&["memory"], p, &st(&["memory"], false, &[1]), 7, Refuse).unwrap();
        assert_eq!(plan, EnablePlan::default());
        // Empty parent: enable the missing ones only.
        let plan = plan_enable(
            &["memory", "pids"],
            p,
            &st(&["memory"], false, &[]),
            7,
            Refuse,
        )
        .unwrap();
        assert_eq!(plan.enable, ["pids"]);
        // The root is exempt from the no-internal-process rule.
        assert!(plan_enable(&["pids"], p, &st(&[], true, &[1, 2]), 7, Refuse).is_ok());
        // Other processes in the parent: refuse, even when moving ourselves is allowed.
        let err =
            plan_enable(&["pids"], p, &st(&[], false, &[7, 8]), 7, MoveSelfToLeaf).unwrap_err();
        assert!(matches!(err, CgroupError::InternalProcess { ref pids, .. } if pids == &[7, 8]));
        // Only ourselves: refuse by default, move into a leaf when allowed.
        assert!(plan_enable(&["pids"], p, &st(&[], false, &[7]), 7, Refuse).is_err());
        assert!(
            plan_enable(&["pids"], p, &st(&[], false, &[7]), 7, MoveSelfToLeaf)
                .unwrap()
                .move_self
        );
        // A controller the parent does not have.
        let err = plan_enable(&["hugetlb"], p, &st(&[], false, &[]), 7, Refuse).unwrap_err();
        assert!(matches!(err, CgroupError::ControllerUnavailable { .. }));
    }
}
