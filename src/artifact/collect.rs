//! Copying the lease's artifact paths out of their write grants after the run.
//!
//! Threat model: the payload controlled everything inside its write grants and calyx-run may
//! be root. So every lookup is made relative to a descriptor of the grant with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: symbolic links are never followed
//! (recorded as skipped), nothing outside the grant's filesystem is entered, and FIFOs and
//! device nodes are not opened. Hard links need no rule of their own: `link(2)` and `rename(2)`
//! fail with EXDEV across mount points and every grant is its own bind mount, so the payload can
//! only link files that were already inside the grant. The payload is dead when this runs (the
//! pid namespace is gone), so nothing races the walk from inside.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ArtifactError;
use super::plan::ArtifactPlan;
use super::store::{Added, Batch, Store};
use crate::sys::beneath::{self, EntryKind, EntryStat, OpenKind};

/// Directory depth below an artifact path past which the walk stops (a deeper tree is almost
/// certainly hostile, and each level holds a descriptor).
const MAX_DEPTH: usize = 64;
/// Entries examined per run past which the walk stops: bounds the time a tree of millions of
/// empty files can cost the runner.
const MAX_ENTRIES: usize = 100_000;

/// One file kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Sandbox path (equal to the host path).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256: the blob's name in the store.
    pub sha256: String,
}

/// Why an entry was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The path did not exist after the run.
    Missing,
    /// A symbolic link: never followed.
    Symlink,
    /// A component of the path is a symbolic link.
    ThroughSymlink,
    /// Another filesystem is mounted there.
    CrossesMount,
    /// FIFO, socket or device node.
    NotRegular,
    /// Keeping it would exceed `artifacts.max_bytes`; nothing after it was kept either.
    OverCap,
    /// Deeper than the walk goes.
    TooDeep,
    /// More entries than one run may examine; nothing after it was kept either.
    TooMany,
    /// The entry changed between examining and opening it.
    Changed,
    /// Reading failed (the detail says how).
    Unreadable,
}

/// One entry not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Sandbox path.
    pub path: PathBuf,
    /// Why.
    pub reason: SkipReason,
    /// Sizes for `over_cap`, the OS error for `unreadable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the collection kept and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Collected {
    /// Files kept, in walk order (lease order, then names sorted).
    pub kept: Vec<Kept>,
    /// Entries not kept.
    pub skipped: Vec<Skipped>,
    /// Bytes kept.
    pub total_bytes: u64,
    /// The cap that applied.
    pub max_bytes: u64,
    /// Whether the walk stopped at the cap (or the entry limit).
    pub stopped: bool,
}

struct Walk<'a> {
    batch: &'a mut Batch,
    out: Collected,
    entries: usize,
}

/// Copies every artifact path of `plan` into `store`. Returns what was kept and skipped; an
/// error only when the store itself cannot be written (nothing is then reported as kept).
pub fn collect(plan: &ArtifactPlan, store: &Store) -> Result<Collected, ArtifactError> {
    let mut batch = store.begin()?;
    let mut walk = Walk {
        batch: &mut batch,
        out: Collected {
            max_bytes: plan.max_bytes,
            ..Collected::default()
        },
        entries: 0,
    };
    for item in &plan.items {
        if walk.out.stopped {
            break;
        }
        walk.item(&item.base, &item.path)?;
    }
    let out = walk.out;
    batch.commit()?;
    Ok(out)
}

fn cstring(bytes: &[u8]) -> CString {
    // Paths from the kernel and from a parsed lease hold no NUL; an empty name stands in for
    // an impossible one and simply fails the lookup.
    CString::new(bytes).unwrap_or_default()
}

impl Walk<'_> {
    fn skip(&mut self, path: &Path, reason: SkipReason, detail: Option<String>) {
        self.out.skipped.push(Skipped {
            path: path.to_owned(),
            reason,
            detail,
        });
    }

    /// Why an open or stat failed, as a skip reason.
    fn skip_err(&mut self, path: &Path, e: &io::Error) {
        let reason = match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => SkipReason::Missing,
            Some(libc::ELOOP) => SkipReason::ThroughSymlink,
            Some(libc::EXDEV) => SkipReason::CrossesMount,
            _ => SkipReason::Unreadable,
        };
        let detail = (reason == SkipReason::Unreadable).then(|| e.to_string());
        self.skip(path, reason, detail);
    }

    /// One artifact path: open its parent beneath the grant, then visit its last component.
    fn item(&mut self, base: &Path, path: &Path) -> Result<(), ArtifactError> {
        let base_c = cstring(base.as_os_str().as_bytes());
        let base_fd = match crate::sys::fs::open_path_no_symlinks(&base_c) {
            Ok(fd) => fd,
            Err(e) => {
                self.skip_err(path, &e);
                return Ok(());
            }
        };
        let rel = path.strip_prefix(base).unwrap_or(Path::new(""));
        let (parent_rel, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, cstring(n.as_bytes())),
            // The artifact is the grant directory itself.
            _ => (Path::new(""), c".".to_owned()),
        };
        let parent_c = if parent_rel.as_os_str().is_empty() {
            c".".to_owned()
        } else {
            cstring(parent_rel.as_os_str().as_bytes())
        };
        let parent = match beneath::open_beneath(base_fd.as_fd(), &parent_c, OpenKind::Dir) {
            Ok(fd) => fd,
            // O_DIRECTORY answers ENOTDIR for a symlink as the last component of the parent;
            // look at what is there so the reason says "through a symbolic link".
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                let link = beneath::open_beneath(base_fd.as_fd(), &parent_c, OpenKind::Path)
                    .and_then(|fd| beneath::stat_fd(fd.as_fd()))
                    .is_ok_and(|st| st.kind == EntryKind::Symlink);
                if link {
                    self.skip(path, SkipReason::ThroughSymlink, None);
                } else {
                    self.skip_err(path, &e);
                }
                return Ok(());
            }
            Err(e) => {
                self.skip_err(path, &e);
                return Ok(());
            }
        };
        self.visit(parent.as_fd(), &name, path, 0)
    }

    fn visit(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        depth: usize,
    ) -> Result<(), ArtifactError> {
        if self.out.stopped {
            return Ok(());
        }
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            self.out.stopped = true;
            self.skip(
                path,
                SkipReason::TooMany,
                Some(format!("limit {MAX_ENTRIES}")),
            );
            return Ok(());
        }
        let st = match beneath::stat_entry(dir, name) {
            Ok(st) => st,
            Err(e) => {
                self.skip_err(path, &e);
                return Ok(());
            }
        };
        match st.kind {
            EntryKind::Symlink => self.skip(path, SkipReason::Symlink, None),
            EntryKind::Special => self.skip(path, SkipReason::NotRegular, None),
            EntryKind::Dir if depth >= MAX_DEPTH => self.skip(path, SkipReason::TooDeep, None),
            EntryKind::Dir => {
                let Some(fd) = self.open_same(dir, name, path, &st, OpenKind::Dir) else {
                    return Ok(());
                };
                let mut names = match beneath::list_dir(fd.as_fd()) {
                    Ok(n) => n,
                    Err(e) => {
                        self.skip_err(path, &e);
                        return Ok(());
                    }
                };
                names.sort();
                for child in names {
                    let child_path = path.join(beneath::name_os(&child));
                    self.visit(fd.as_fd(), &child, &child_path, depth + 1)?;
                }
            }
            EntryKind::File => self.file(dir, name, path, &st)?,
        }
        Ok(())
    }

    /// Opens `name` beneath `dir` and checks it is still the entry `st` described.
    fn open_same(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        st: &EntryStat,
        kind: OpenKind,
    ) -> Option<OwnedFd> {
        let fd = match beneath::open_beneath(dir, name, kind) {
            Ok(fd) => fd,
            Err(e) => {
                self.skip_err(path, &e);
                return None;
            }
        };
        match beneath::stat_fd(fd.as_fd()) {
            Ok(now) if now.dev_ino == st.dev_ino && now.kind == st.kind => Some(fd),
            Ok(_) => {
                self.skip(path, SkipReason::Changed, None);
                None
            }
            Err(e) => {
                self.skip_err(path, &e);
                None
            }
        }
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        st: &EntryStat,
    ) -> Result<(), ArtifactError> {
        let remaining = self.out.max_bytes.saturating_sub(self.out.total_bytes);
        let (kept, max) = (self.out.total_bytes, self.out.max_bytes);
        let over_cap = |size: u64| format!("{size} bytes; {kept} kept of max_bytes {max}");
        if st.size > remaining {
            let detail = over_cap(st.size);
            self.out.stopped = true;
            self.skip(path, SkipReason::OverCap, Some(detail));
            return Ok(());
        }
        let Some(fd) = self.open_same(dir, name, path, st, OpenKind::ReadFile) else {
            return Ok(());
        };
        let mut file = File::from(fd);
        match self.batch.add(&mut file, remaining)? {
            Added::Stored { sha256, size } => {
                self.out.total_bytes += size;
                self.out.kept.push(Kept {
                    path: path.to_owned(),
                    size,
                    sha256,
                });
            }
            Added::TooLarge => {
                let detail = over_cap(st.size);
                self.out.stopped = true;
                self.skip(path, SkipReason::OverCap, Some(detail));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::artifact::plan::ArtifactItem;

    fn plan(base: &Path, paths: &[&str], max_bytes: u64) -> ArtifactPlan {
        ArtifactPlan {
            items: paths
                .iter()
                .map(|p| ArtifactItem {
                    path: base.join(p),
                    base: base.to_owned(),
                })
                .collect(),
            max_bytes,
        }
    }

    fn reasons(c: &Collected, base: &Path) -> Vec<(String, SkipReason)> {
        c.skipped
            .iter()
            .map(|s| {
                let rel = s.path.strip_prefix(base).unwrap();
                (rel.display().to_string(), s.reason)
            })
            .collect()
    }

    #[test]
    fn the_walk_keeps_regular_files_and_names_everything_else() {
        let grant = tempfile::tempdir().unwrap();
        let g = grant.path();
        std::fs::create_dir_all(g.join("d/e")).unwrap();
        std::fs::write(g.join("d/a.txt"), b"a").unwrap();
        std::fs::write(g.join("d/e/b.txt"), b"bb").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", g.join("d/link")).unwrap();
        std::os::unix::fs::symlink("/etc", g.join("etc")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(g.join("d/sock")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = Store::at(state.path());
        let c = collect(&plan(g, &["d", "etc/passwd", "gone"], 100), &store).unwrap();
        let kept: Vec<_> = c.kept.iter().map(|k| (k.path.clone(), k.size)).collect();
        assert_eq!(kept, vec![(g.join("d/a.txt"), 1), (g.join("d/e/b.txt"), 2)]);
        assert_eq!(
            reasons(&c, g),
            vec![
                ("d/link".to_owned(), SkipReason::Symlink),
                ("d/sock".to_owned(), SkipReason::NotRegular),
                ("etc/passwd".to_owned(), SkipReason::ThroughSymlink),
                ("gone".to_owned(), SkipReason::Missing),
            ]
        );
        assert_eq!((c.total_bytes, c.stopped), (3, false));
        assert!(store.blob_path(&c.kept[1].sha256).exists());
    }

    #[test]
    fn the_cap_stops_the_walk_at_the_first_file_that_does_not_fit() {
        let grant = tempfile::tempdir().unwrap();
        let g = grant.path();
        for (name, size) in [("1", 4), ("2", 4), ("3", 3), ("4", 1)] {
            std::fs::write(g.join(name), vec![b'x'; size]).unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let c = collect(&plan(g, &[""], 10), &Store::at(state.path())).unwrap();
        assert_eq!(c.kept.len(), 2);
        assert_eq!(reasons(&c, g), vec![("3".to_owned(), SkipReason::OverCap)]);
        assert!(c.stopped);
        // Exactly at the cap is kept.
        let c = collect(&plan(g, &["1", "2", "4"], 9), &Store::at(state.path())).unwrap();
        assert_eq!((c.kept.len(), c.total_bytes, c.stopped), (3, 9, false));
    }
}
