//! Mount, pivot_root and file-level calls used to build the sandbox's view.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use super::{check, check_int};

/// The whole text of a file the kernel generates (procfs, sysfs, cgroupfs). These report a
/// size of 0, so `std::fs::read_to_string` asks for the size (`statx`, `lseek`) and then reads
/// through a buffer that starts at 32 bytes and doubles: eight reads for this host's
/// mountinfo. [`read_from_start`] fits such a file in one read, plus the read that sees its
/// end.
pub fn read_kernel_text(path: &std::path::Path) -> io::Result<String> {
    read_from_start(&std::fs::File::open(path)?)
}

/// The whole file from offset 0, through a 4 KiB buffer that doubles as needed. A cgroup
/// file generates its text afresh at each read from the start, so a descriptor kept open
/// reads current values.
pub fn read_from_start(f: &std::fs::File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mount attribute bits for [`mount_setattr_recursive`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// No set-user-id / file capabilities.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// No device nodes.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// No execution.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

/// `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is either null or a NUL-terminated string borrowed for the call.
    let ret = unsafe {
        libc::mount(
            opt_ptr(source),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    };
    check_int(ret).map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both arguments are NUL-terminated strings borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(ret).map(drop)
}

/// `umount2(target, MNT_DETACH)`.
pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated.
    check_int(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check_int(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `mkdir(2)`; an existing entry is not an error (the view is built on a fresh tmpfs, so an
/// existing entry can only come from an earlier step of the same plan).
pub fn mkdir_exist_ok(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    match check_int(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// Creates an empty regular file to serve as a bind mount point.
pub fn create_empty_file(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; the returned fd is closed right away.
    let fd = check_int(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just opened by us and is not used afterwards.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `symlink(target, linkpath)`.
pub fn symlink(target: &CStr, linkpath: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated.
    check_int(unsafe { libc::symlink(target.as_ptr(), linkpath.as_ptr()) }).map(drop)
}

/// `open(path, O_RDONLY | O_CLOEXEC)`; the fd is returned raw because init keeps it across
/// `fork` and hands it to `execveat`.
pub fn open_read_cloexec(path: &CStr) -> io::Result<libc::c_int> {
    // SAFETY: `path` is NUL-terminated.
    check_int(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    Ok(check(n as libc::c_long)? as usize)
}

/// `close_range(first, ~0, 0)`: closes every descriptor from `first` up.
pub fn close_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: closing descriptors is memory-safe; the caller owns every fd >= first.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    check(ret).map(drop)
}

/// `dup3(old, new, O_CLOEXEC)`.
pub fn dup_to(old: libc::c_int, new: libc::c_int) -> io::Result<()> {
    if old == new {
        return Ok(());
    }
    // SAFETY: dup3 only manipulates the descriptor table.
    check_int(unsafe { libc::dup3(old, new, libc::O_CLOEXEC) }).map(drop)
}

/// `fdatasync(2)`.
pub fn fdatasync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open descriptor.
    check_int(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(drop)
}

/// `fallocate(FALLOC_FL_KEEP_SIZE)`: reserves blocks for `len` bytes from `offset` without
/// changing the file's size, so that appends landing there allocate nothing.
pub fn reserve_blocks(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: plain syscall on a borrowed, open descriptor.
    check_int(unsafe { libc::fallocate(fd.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) })
        .map(drop)
}

/// One `write(2)`; returns how many bytes the kernel took (retrying only on EINTR).
pub fn write_once(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is readable for its whole length.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        match check(n as libc::c_long) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;

/// `openat2(path, O_PATH | O_CLOEXEC, RESOLVE_NO_SYMLINKS)`: fails with ELOOP if any component
/// of `path` is a symbolic link, so what is opened is exactly the path as written.
pub fn open_path_no_symlinks(path: &CStr) -> io::Result<std::os::fd::OwnedFd> {
    openat2_path(libc::AT_FDCWD, path, RESOLVE_NO_SYMLINKS)
}

/// [`open_path_no_symlinks`] for a `path` relative to the directory `dir`, which it may not
/// leave (`RESOLVE_BENEATH`: no absolute path, no `..` above `dir`).
pub fn open_path_no_symlinks_at(
    dir: BorrowedFd<'_>,
    path: &CStr,
) -> io::Result<std::os::fd::OwnedFd> {
    openat2_path(dir.as_raw_fd(), path, RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)
}

fn openat2_path(dir: libc::c_int, path: &CStr, resolve: u64) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is NUL-terminated and `how` is a live open_how of the size passed.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH)`: a detached copy of the
/// mount tree at `fd` (what a recursive bind mount would attach).
pub fn clone_tree(fd: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: the empty path is a static NUL-terminated string; `fd` is open.
    let tree =
        check(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })?;
    // SAFETY: new descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(tree as libc::c_int) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE)`: adds `set` to every mount of a
/// (detached) tree and makes each one private (it neither receives nor sends mount events).
pub fn mount_setattr_tree(fd: BorrowedFd<'_>, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: `attr` is live and sized as passed; the empty path is NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached tree.
pub fn attach_tree(fd: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated; `fd` is an open mount tree.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// Opens /dev/null on any of fds 0, 1, 2 that is closed, so no file calyx opens later (the
/// audit log, the channel) can land on a standard descriptor and be handed to the payload.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: the path is a static NUL-terminated string; the lowest free descriptor is
        // `fd` itself because every lower one is open (checked in order).
        let got = check_int(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) })?;
        if got != fd {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
    }
    Ok(())
}

/// `memfd_create("calyx-probe", flags)`, closing the fd at once; Err(errno) on failure. Used by
/// tests of the seccomp rules.
pub fn memfd_create_probe(flags: u32) -> Result<(), i32> {
    // SAFETY: the name is a static NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"calyx-probe".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: `fd` is ours and unused afterwards.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `openat(dir, path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)`.
pub fn open_write_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: `path` is NUL-terminated and `dir` is a live descriptor.
    let fd = check_int(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `linkat(AT_FDCWD, "/proc/self/fd/FD", dir, name, AT_SYMLINK_FOLLOW)`: gives the unnamed
/// file open at `fd` (an `O_TMPFILE`) the name `name` in `dir`; EEXIST if the name is taken.
/// Through /proc rather than `AT_EMPTY_PATH`, which needs CAP_DAC_READ_SEARCH.
pub fn link_open_file(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both paths are NUL-terminated and `dir` is a live descriptor.
    check_int(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `open(path, O_PATH | O_CLOEXEC)`, following symbolic links: a handle that names a file
/// without opening it (no read access needed, no device opened, no FIFO waited on). Not
/// through `OpenOptions::custom_flags`: the standard library masks `O_ACCMODE` out of those
/// flags, and musl's `O_ACCMODE` includes `O_SEARCH`, which is `O_PATH`, so there the file
/// would be opened for reading instead.
pub fn open_o_path(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c_path = super::c_path(path)?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call.
    let fd = check_int(unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsRawFd;

    #[test]
    fn open_o_path_names_a_fifo_without_opening_it() {
        // Opened for reading, a FIFO without a writer would block here; O_PATH returns at
        // once, and the descriptor says O_PATH (it is no file description one can read).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("fifo");
        let fifo = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `fifo` is NUL-terminated.
        check_int(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }).unwrap();
        let fd = open_o_path(&path).unwrap();
        // SAFETY: F_GETFL on a live descriptor.
        let flags = check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }).unwrap();
        assert_eq!(flags & libc::O_PATH, libc::O_PATH, "flags {flags:o}");
    }
}
