//! Reading a directory tree without ever leaving it: `openat2` with `RESOLVE_BENEATH`,
//! `fstatat` without following links, and listing a directory through its descriptor.
//!
//! Used to copy artifacts out of a write grant after the run, possibly as root: every lookup is
//! relative to a descriptor of the grant, so a symlink, a `..` or a mount point planted by the
//! payload cannot make calyx read a file outside it.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use super::{check, check_int};

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// What to open beneath a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// A directory, for listing and further lookups.
    Dir,
    /// A file for reading; non-blocking so a FIFO cannot stall the caller.
    ReadFile,
    /// An `O_PATH` handle of whatever is there, a symbolic link included, to ask what it is.
    Path,
}

/// `openat2(dir, rel, …, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
/// RESOLVE_NO_XDEV)`: `rel` must resolve inside `dir`, through no symbolic link (ELOOP) and
/// without crossing a mount point (EXDEV); the final component is never followed either.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &CStr, kind: OpenKind) -> io::Result<OwnedFd> {
    let base = libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY;
    let flags = match kind {
        OpenKind::Dir => base | libc::O_RDONLY | libc::O_DIRECTORY,
        OpenKind::ReadFile => base | libc::O_RDONLY | libc::O_NONBLOCK,
        OpenKind::Path => libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_PATH,
    };
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    loop {
        // SAFETY: `rel` is NUL-terminated, `how` is a live open_how whose size is passed, and
        // `dir` is an open descriptor borrowed for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match check(ret) {
            // openat2 may ask to retry when a rename raced the lookup (RESOLVE_BENEATH).
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }),
        }
    }
}

/// The type of a directory entry as `fstatat(AT_SYMLINK_NOFOLLOW)` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// FIFO, socket or device node.
    Special,
}

/// What `fstatat` says about one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStat {
    /// Its type.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode, to check that the file opened is the file examined.
    pub dev_ino: (u64, u64),
}

/// Converts a `struct stat` into [`EntryStat`].
fn entry_stat(st: &libc::stat) -> EntryStat {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Special,
    };
    EntryStat {
        kind,
        size: st.st_size as u64,
        dev_ino: (st.st_dev, st.st_ino),
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `name` is one component.
pub fn stat_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<EntryStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is writable storage of the right type.
    check_int(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled in the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(entry_stat(&st))
}

/// `fstat(fd)`.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<EntryStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable storage of the right type; `fd` is open.
    check_int(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled in the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(entry_stat(&st))
}

/// The names in the directory `dir` (without `.` and `..`), in the order the kernel gives.
/// `dir` must be open for reading; it is duplicated, so the caller keeps its descriptor.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let dup = dir.try_clone_to_owned()?;
    // The directory stream starts where the descriptor's offset is; rewind the shared offset.
    // SAFETY: lseek on an open descriptor touches no memory.
    check(unsafe { libc::lseek(dup.as_raw_fd(), 0, libc::SEEK_SET) } as libc::c_long)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
    // SAFETY: `raw` is an open directory descriptor we own; on success fdopendir takes it over.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // readdir reports errors only through errno, so clear it first.
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a live DIR* owned by this function.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: a non-null dirent from readdir holds a NUL-terminated d_name that stays
        // valid until the next readdir call on this stream; it is copied at once.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `stream` is live and closed exactly once (this also closes its descriptor).
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// A component name as an `OsString`, for paths and messages.
pub fn name_os(name: &CStr) -> OsString {
    OsString::from_vec(name.to_bytes().to_vec())
}

/// `syncfs(fd)`: flushes every dirty page of the filesystem holding `fd` in one call.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open descriptor.
    check_int(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}
