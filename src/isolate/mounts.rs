//! Building the sandbox's filesystem view from the plan's [`MountStep`]s.
//!
//! [`PreparedView::prepare`] runs in the parent and turns the plan into ready C strings;
//! [`PreparedView::apply`] runs in init (new user + mount namespace, full capabilities there)
//! and only makes syscalls. The view is assembled on a fresh tmpfs with the host root reachable
//! at `/oldroot` (first pivot), then becomes `/` (second pivot) and the host root is detached.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::plan::{Access, MountStep};
use crate::sys::fs::{
    self as sfs, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

/// Where the staging tmpfs goes in init's private mount namespace. Host /tmp stays untouched:
/// the mount exists only in the sandbox's namespace and is detached with the old root.
const STAGING: &std::ffi::CStr = c"/tmp";

/// A step that failed while building the view: what, where, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct MountError {
    /// Operation name.
    pub op: &'static str,
    /// Path involved.
    pub path: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

enum Op {
    Mkdir(CString),
    File(CString),
    Bind {
        src: CString,
        dst: CString,
        attrs: u64,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Tmpfs {
        dst: CString,
        data: CString,
        flags: libc::c_ulong,
    },
    Proc {
        dst: CString,
    },
}

/// The view, ready to apply without further allocation decisions.
pub struct PreparedView {
    ops: Vec<Op>,
    cwd: CString,
}

fn merr(op: &'static str, path: &std::ffi::CStr, source: io::Error) -> MountError {
    MountError {
        op,
        path: path.to_string_lossy().into_owned(),
        source,
    }
}

fn cstr(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| MountError {
        op: "encode",
        path: p.display().to_string(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

fn under(base: &str, p: &Path) -> PathBuf {
    Path::new(base).join(p.strip_prefix("/").unwrap_or(p))
}

impl PreparedView {
    /// Converts the plan's steps; fails only on a path with an interior NUL.
    pub fn prepare(steps: &[MountStep], cwd: &Path) -> Result<PreparedView, MountError> {
        let mut ops = Vec::new();
        let mut made = std::collections::BTreeSet::new();
        let mut mkdirs =
            |ops: &mut Vec<Op>, p: &Path, include_self: bool| -> Result<(), MountError> {
                let mut cur = PathBuf::from("/newroot");
                let rel: Vec<_> = p.strip_prefix("/").unwrap_or(p).components().collect();
                let n = if include_self {
                    rel.len()
                } else {
                    rel.len().saturating_sub(1)
                };
                for c in &rel[..n] {
                    cur.push(c);
                    if made.insert(cur.clone()) {
                        ops.push(Op::Mkdir(cstr(&cur)?));
                    }
                }
                Ok(())
            };
        let nosuid_nodev = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        for step in steps {
            match step {
                MountStep::Bind {
                    path,
                    dir,
                    access,
                    exec,
                } => {
                    mkdirs(&mut ops, path, *dir)?;
                    if !dir {
                        ops.push(Op::File(cstr(&under("/newroot", path))?));
                    }
                    let mut attrs = nosuid_nodev;
                    if *access == Access::Ro {
                        attrs |= MOUNT_ATTR_RDONLY;
                    }
                    if !exec {
                        attrs |= MOUNT_ATTR_NOEXEC;
                    }
                    ops.push(Op::Bind {
                        src: cstr(&under("/oldroot", path))?,
                        dst: cstr(&under("/newroot", path))?,
                        attrs,
                    });
                }
                MountStep::Symlink { path, target } => {
                    mkdirs(&mut ops, path, false)?;
                    ops.push(Op::Symlink {
                        target: cstr(target)?,
                        link: cstr(&under("/newroot", path))?,
                    });
                }
                MountStep::Tmpfs { path, size_bytes } => {
                    mkdirs(&mut ops, path, true)?;
                    let data =
                        CString::new(format!("size={size_bytes},mode=1777")).map_err(|_| {
                            MountError {
                                op: "encode",
                                path: path.display().to_string(),
                                source: io::Error::from_raw_os_error(libc::EINVAL),
                            }
                        })?;
                    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                    ops.push(Op::Tmpfs {
                        dst: cstr(&under("/newroot", path))?,
                        data,
                        flags,
                    });
                }
                MountStep::Proc => {
                    mkdirs(&mut ops, Path::new("/proc"), true)?;
                    ops.push(Op::Proc {
                        dst: c"/newroot/proc".to_owned(),
                    });
                }
                MountStep::Dev { nodes } => {
                    mkdirs(&mut ops, Path::new("/dev"), true)?;
                    // A small nodev tmpfs holds the mount points; the nodes are binds of the
                    // host's, each its own mount (a tmpfs made in a user namespace cannot hold
                    // working device nodes anyway).
                    ops.push(Op::Tmpfs {
                        dst: c"/newroot/dev".to_owned(),
                        data: c"size=65536,mode=0755".to_owned(),
                        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    });
                    for n in nodes {
                        let rel = Path::new("/dev").join(n);
                        ops.push(Op::File(cstr(&under("/newroot", &rel))?));
                        // Device binds cannot be nodev (the node would stop working); they are
                        // nosuid and noexec like everything else.
                        ops.push(Op::Bind {
                            src: cstr(&under("/oldroot", &rel))?,
                            dst: cstr(&under("/newroot", &rel))?,
                            attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
                        });
                    }
                    for (link, target) in [
                        ("fd", "/proc/self/fd"),
                        ("stdin", "/proc/self/fd/0"),
                        ("stdout", "/proc/self/fd/1"),
                        ("stderr", "/proc/self/fd/2"),
                    ] {
                        ops.push(Op::Symlink {
                            target: cstr(Path::new(target))?,
                            link: cstr(&Path::new("/newroot/dev").join(link))?,
                        });
                    }
                }
            }
        }
        Ok(PreparedView {
            ops,
            cwd: cstr(cwd)?,
        })
    }

    /// Builds the view and makes it the root. Runs in init, before anything else is mounted.
    pub fn apply(&self) -> Result<(), MountError> {
        // Nothing mounted here propagates to the host: the kernel made every shared mount of
        // the copied tree a slave (mount_namespaces(7): a mount namespace owned by a new user
        // namespace is less privileged than the host's), so none of it sends mount events
        // back. Making the whole host tree private on top of that (MS_REC | MS_PRIVATE on /)
        // cost 0.1 ms per run for a tree that is detached below; the binds, which stay, are
        // made private one by one (mount_setattr_tree) so that the host's mount events do not
        // reach the view either, and every other mount of the view is new, hence private.
        // Staging tmpfs: holds the new root and the old root's mount point.
        sfs::mount(
            Some(c"calyx"),
            STAGING,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"size=65536,mode=0700"),
        )
        .map_err(|e| merr("mount staging tmpfs", STAGING, e))?;
        sfs::chdir(STAGING).map_err(|e| merr("chdir", STAGING, e))?;
        sfs::mkdir_exist_ok(c"newroot", 0o755).map_err(|e| merr("mkdir", c"newroot", e))?;
        sfs::mkdir_exist_ok(c"oldroot", 0o755).map_err(|e| merr("mkdir", c"oldroot", e))?;
        sfs::mount(
            Some(c"calyx"),
            c"newroot",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"size=1048576,mode=0755"),
        )
        .map_err(|e| merr("mount root tmpfs", c"newroot", e))?;
        // First pivot: the host root moves to /oldroot so binds can name host paths even where
        // the staging tmpfs covers them (host /tmp).
        sfs::pivot_root(c".", c"oldroot").map_err(|e| merr("pivot_root to staging", STAGING, e))?;
        for op in &self.ops {
            self.apply_op(op)?;
        }
        // The root tmpfs itself becomes read-only now that every mount point exists in it.
        crate::sys::fs::mount(
            None,
            c"/newroot",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(|e| merr("remount root read-only", c"/newroot", e))?;
        // Second pivot with new == old: the staging root (and /oldroot inside it) is stacked on
        // top of the new root, and one lazy detach removes every host mount from our view.
        sfs::chdir(c"/newroot").map_err(|e| merr("chdir", c"/newroot", e))?;
        sfs::pivot_root(c".", c".").map_err(|e| merr("pivot_root", c"/newroot", e))?;
        sfs::umount_detach(c".").map_err(|e| merr("detach old root", c"/", e))?;
        // cwd inside the new root: an fd or cwd left on the host tree is an escape hatch
        // (CVE-2024-21626 class).
        sfs::chdir(c"/").map_err(|e| merr("chdir", c"/", e))?;
        sfs::chdir(&self.cwd).map_err(|e| merr("chdir", &self.cwd, e))?;
        Ok(())
    }

    fn apply_op(&self, op: &Op) -> Result<(), MountError> {
        match op {
            Op::Mkdir(p) => sfs::mkdir_exist_ok(p, 0o755).map_err(|e| merr("mkdir", p, e)),
            Op::File(p) => sfs::create_empty_file(p).map_err(|e| merr("create mount point", p, e)),
            Op::Bind { src, dst, attrs } => {
                // No symlink anywhere in the source: the plan checked that, and this makes the
                // check hold at mount time too (a concurrent writer cannot swap a component).
                let fd = sfs::open_path_no_symlinks(src)
                    .map_err(|e| merr("open bind source", src, e))?;
                // Recursive clone: a user namespace may not copy a tree without its locked
                // submounts.
                let tree =
                    sfs::clone_tree(fd.as_fd()).map_err(|e| merr("clone mount tree", src, e))?;
                // Flags go on every mount of the detached tree before it becomes visible.
                sfs::mount_setattr_tree(tree.as_fd(), *attrs)
                    .map_err(|e| merr("set mount attributes", src, e))?;
                sfs::attach_tree(tree.as_fd(), dst).map_err(|e| merr("attach", dst, e))
            }
            Op::Symlink { target, link } => {
                sfs::symlink(target, link).map_err(|e| merr("symlink", link, e))
            }
            Op::Tmpfs { dst, data, flags } => {
                sfs::mount(Some(c"tmpfs"), dst, Some(c"tmpfs"), *flags, Some(data))
                    .map_err(|e| merr("mount tmpfs", dst, e))
            }
            Op::Proc { dst } => sfs::mount(
                Some(c"proc"),
                dst,
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            )
            .map_err(|e| merr("mount proc", dst, e)),
        }
    }
}
