//! Building the sandbox's filesystem view from the plan's [`MountStep`]s.
//!
//! [`PreparedView::prepare`] runs in the parent and turns the plan into ready C strings;
//! [`PreparedView::apply`] runs in init (new user + mount namespace, full capabilities there)
//! and only makes syscalls. The view is assembled on a fresh tmpfs that is already the root
//! (one `pivot_root(".", ".")`), with the host's root stacked on top of it where no path
//! reaches it: bind sources are found beneath a descriptor of the host's root, opened before
//! the pivot. Then the host's root is detached and the descriptor closed.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::plan::{Access, MountStep};
use crate::sys::fs::{
    self as sfs, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

/// Where the root tmpfs is mounted before it becomes the root, in init's mount namespace only
/// (host /tmp stays untouched). The pivot moves it away again: the host's /tmp is a bind
/// source like any other path.
const ROOT_AT: &std::ffi::CStr = c"/tmp";

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

/// A host path as found beneath the host's root descriptor: relative (`usr/bin`).
fn host_relative(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_owned()
}

impl PreparedView {
    /// Converts the plan's steps; fails only on a path with an interior NUL.
    pub fn prepare(steps: &[MountStep], cwd: &Path) -> Result<PreparedView, MountError> {
        let mut ops = Vec::new();
        let mut made = std::collections::BTreeSet::new();
        let mut mkdirs =
            |ops: &mut Vec<Op>, p: &Path, include_self: bool| -> Result<(), MountError> {
                let mut cur = PathBuf::from("/");
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
                        ops.push(Op::File(cstr(path)?));
                    }
                    let mut attrs = nosuid_nodev;
                    if *access == Access::Ro {
                        attrs |= MOUNT_ATTR_RDONLY;
                    }
                    if !exec {
                        attrs |= MOUNT_ATTR_NOEXEC;
                    }
                    ops.push(Op::Bind {
                        src: cstr(&host_relative(path))?,
                        dst: cstr(path)?,
                        attrs,
                    });
                }
                MountStep::Symlink { path, target } => {
                    mkdirs(&mut ops, path, false)?;
                    ops.push(Op::Symlink {
                        target: cstr(target)?,
                        link: cstr(path)?,
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
                        dst: cstr(path)?,
                        data,
                        flags,
                    });
                }
                MountStep::Proc => {
                    mkdirs(&mut ops, Path::new("/proc"), true)?;
                    ops.push(Op::Proc {
                        dst: c"/proc".to_owned(),
                    });
                }
                MountStep::Dev { nodes } => {
                    mkdirs(&mut ops, Path::new("/dev"), true)?;
                    // A small nodev tmpfs holds the mount points; the nodes are binds of the
                    // host's, each its own mount (a tmpfs made in a user namespace cannot hold
                    // working device nodes anyway).
                    ops.push(Op::Tmpfs {
                        dst: c"/dev".to_owned(),
                        data: c"size=65536,mode=0755".to_owned(),
                        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    });
                    for n in nodes {
                        let rel = Path::new("/dev").join(n);
                        ops.push(Op::File(cstr(&rel)?));
                        // Device binds cannot be nodev (the node would stop working); they are
                        // nosuid and noexec like everything else.
                        ops.push(Op::Bind {
                            src: cstr(&host_relative(&rel))?,
                            dst: cstr(&rel)?,
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
                            link: cstr(&Path::new("/dev").join(link))?,
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
        //
        // The host's root, held open: once the tmpfs is the root, bind sources are found
        // beneath this descriptor, and no path of the view names the host.
        let host = sfs::open_path_no_symlinks(c"/").map_err(|e| merr("open host root", c"/", e))?;
        sfs::mount(
            Some(c"calyx"),
            ROOT_AT,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"size=1048576,mode=0755"),
        )
        .map_err(|e| merr("mount root tmpfs", ROOT_AT, e))?;
        sfs::chdir(ROOT_AT).map_err(|e| merr("chdir", ROOT_AT, e))?;
        // pivot_root(".", "."): the tmpfs becomes the root and the working directory, and the
        // host's root is stacked on top of it at `/`. Path resolution starts at the tmpfs (it
        // follows mounts stacked on a directory it steps into, never on the one it starts
        // from), so every target below lands in the view. One tmpfs and one pivot: a staging
        // tmpfs with the host at /oldroot, then a second pivot, cost 0.2 ms more per run
        // (paired comparison, 800 rounds).
        sfs::pivot_root(c".", c".").map_err(|e| merr("pivot_root", ROOT_AT, e))?;
        for op in &self.ops {
            self.apply_op(op, host.as_fd())?;
        }
        // umount(".") resolves "." up the stack of mounts at `/` (man 2 pivot_root): it
        // detaches the host's root, with every host mount below it, and leaves the view.
        sfs::umount_detach(c".").map_err(|e| merr("detach host root", c"/", e))?;
        drop(host);
        // The root tmpfs itself becomes read-only now that every mount point exists in it.
        sfs::mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(|e| merr("remount root read-only", c"/", e))?;
        // cwd inside the new root: an fd or cwd left on the host tree is an escape hatch
        // (CVE-2024-21626 class).
        sfs::chdir(c"/").map_err(|e| merr("chdir", c"/", e))?;
        sfs::chdir(&self.cwd).map_err(|e| merr("chdir", &self.cwd, e))?;
        Ok(())
    }

    fn apply_op(&self, op: &Op, host: std::os::fd::BorrowedFd<'_>) -> Result<(), MountError> {
        match op {
            Op::Mkdir(p) => sfs::mkdir_exist_ok(p, 0o755).map_err(|e| merr("mkdir", p, e)),
            Op::File(p) => sfs::create_empty_file(p).map_err(|e| merr("create mount point", p, e)),
            Op::Bind { src, dst, attrs } => {
                // No symlink anywhere in the source: the plan checked that, and this makes the
                // check hold at mount time too (a concurrent writer cannot swap a component).
                let fd = sfs::open_path_no_symlinks_at(host, src)
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
