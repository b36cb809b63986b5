//! Leftover run cgroups: a runner SIGKILLed mid-run never removes its cgroup; the next run
//! removes those whose processes are gone, and only those.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::run::{NAME_PREFIX, V1_USED, events_field, rmdir_retry};
use super::{CgroupError, Layout, read_file};

/// What to do with one leftover `calyx-*` cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleVerdict {
    /// Empty and old enough: remove.
    Remove,
    /// Still holds processes: leave it (calyx never kills processes it cannot attribute).
    Busy,
    /// Too recent: perhaps a concurrent run between mkdir and placing its sandbox.
    Young,
}

/// Decide about one leftover cgroup.
pub fn stale_verdict(populated: bool, age: Duration, min_age: Duration) -> StaleVerdict {
    match (populated, age >= min_age) {
        (true, _) => StaleVerdict::Busy,
        (false, false) => StaleVerdict::Young,
        (false, true) => StaleVerdict::Remove,
    }
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleReport {
    /// Removed directories.
    pub removed: Vec<PathBuf>,
    /// Left because processes are still in them.
    pub busy: Vec<PathBuf>,
    /// Left because they are younger than the minimum age.
    pub young: Vec<PathBuf>,
}

/// True if `dir` or a descendant holds a process.
fn dir_populated(dir: &Path) -> Result<bool, CgroupError> {
    let events = dir.join("cgroup.events");
    if events.exists() {
        return Ok(events_field(&read_file(&events)?, "populated") == Some(1));
    }
    if !super::parse_pids(&read_file(&dir.join("cgroup.procs"))?).is_empty() {
        return Ok(true);
    }
    for sub in subdirs(dir)? {
        if dir_populated(&sub)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let read = std::fs::read_dir(dir).map_err(|source| CgroupError::Read {
        path: dir.to_owned(),
        source,
    })?;
    // The entry's own type (d_type) rather than a stat of each path: a cgroup directory holds
    // dozens of files, and this runs before every sandbox starts.
    Ok(read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    rmdir_retry(dir)
}

/// The parents [`cleanup_stale`] lists: the v2 one and the v1 hierarchies calyx creates in.
fn swept_parents(layout: &Layout) -> impl Iterator<Item = &PathBuf> {
    let used_v1 = layout
        .v1
        .iter()
        .filter(|h| V1_USED.iter().any(|c| h.has(c)))
        .map(|h| &h.dir);
    layout.v2.iter().chain(used_v1)
}

/// False when no parent of `layout` can hold a leftover: each has no subdirectory but
/// `own`'s. A directory's link count is 2 plus its subdirectories on cgroupfs (as on ext4
/// and tmpfs), so one `stat` per parent answers what listing it would. A count under 2 (a
/// file system that does not keep it) or a failing `stat` answers true: then list.
pub fn may_hold_stale(layout: &Layout, own: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    swept_parents(layout).any(|parent| {
        let Ok(meta) = std::fs::metadata(parent) else {
            return true;
        };
        if meta.nlink() < 2 {
            return true;
        }
        let own_here = own.is_some_and(|o| parent.join(o).is_dir());
        meta.nlink() - 2 > u64::from(own_here)
    })
}

/// Remove leftover `calyx-*` cgroups in every parent of `layout` whose processes are gone
/// (a runner SIGKILLed mid-run leaves one; the next run cleans it). Cgroups younger than
/// `min_age` are left alone, so a concurrent run's fresh cgroup is never taken, and so is
/// `own`, the caller's own run cgroup, which is never stale. Only the v1 hierarchies calyx
/// creates in are listed.
pub fn cleanup_stale(
    layout: &Layout,
    now: SystemTime,
    min_age: Duration,
    own: Option<&str>,
) -> Result<StaleReport, CgroupError> {
    let mut report = StaleReport::default();
    for parent in swept_parents(layout) {
        for dir in subdirs(parent)? {
            let name = dir.file_name().and_then(|n| n.to_str());
            let ours = name.is_some_and(|n| n.starts_with(NAME_PREFIX));
            if !ours || name == own {
                continue;
            }
            let modified =
                std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .map_err(|source| CgroupError::Read {
                        path: dir.clone(),
                        source,
                    })?;
            let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
            match stale_verdict(dir_populated(&dir)?, age, min_age) {
                StaleVerdict::Remove => {
                    remove_tree(&dir)?;
                    report.removed.push(dir);
                }
                StaleVerdict::Busy => report.busy.push(dir),
                StaleVerdict::Young => report.young.push(dir),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_parent_with_another_subdirectory_may_hold_a_leftover() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |p: &str| {
            let d = tmp.path().join(p);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let layout = Layout {
            root: tmp.path().to_owned(),
            mode: super::super::CgroupMode::Hybrid,
            v2: Some(dir("unified")),
            v1: vec![
                super::super::Hierarchy {
                    controllers: vec!["memory".into()],
                    dir: dir("memory"),
                },
                // Never created in: not listed, so not looked at either.
                super::super::Hierarchy {
                    controllers: vec!["devices".into()],
                    dir: dir("devices"),
                },
            ],
        };
        let own = "calyx-RUN-own";
        assert!(!may_hold_stale(&layout, Some(own)));
        // The run's own cgroup alone (in one parent or both) is nothing to sweep.
        dir("unified/calyx-RUN-own");
        assert!(!may_hold_stale(&layout, Some(own)));
        dir("memory/calyx-RUN-own");
        assert!(!may_hold_stale(&layout, Some(own)));
        // Unless the caller has no cgroup of its own to discount.
        assert!(may_hold_stale(&layout, None));
        // Any other subdirectory, of calyx or not, is listed.
        dir("devices/calyx-RUN-other");
        assert!(!may_hold_stale(&layout, Some(own)));
        dir("memory/calyx-RUN-other");
        assert!(may_hold_stale(&layout, Some(own)));
        std::fs::remove_dir(tmp.path().join("memory/calyx-RUN-other")).unwrap();
        dir("unified/system.slice");
        assert!(may_hold_stale(&layout, Some(own)));
        // A parent that cannot be read is listed (and the listing says why it fails).
        std::fs::remove_dir(tmp.path().join("unified/system.slice")).unwrap();
        std::fs::remove_dir(tmp.path().join("unified/calyx-RUN-own")).unwrap();
        std::fs::remove_dir(tmp.path().join("unified")).unwrap();
        assert!(may_hold_stale(&layout, Some(own)));
    }

    #[test]
    fn stale_verdict_table() {
        let s = Duration::from_secs;
        assert_eq!(stale_verdict(true, s(100), s(5)), StaleVerdict::Busy);
        assert_eq!(stale_verdict(false, s(1), s(5)), StaleVerdict::Young);
        assert_eq!(stale_verdict(false, s(5), s(5)), StaleVerdict::Remove);
    }
}
