//! Advisory whole-file locks (`flock(2)`), used to serialize audit appends across processes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check_int;

/// `flock(fd, LOCK_EX)`: blocks until this open file description holds the exclusive lock
/// (retrying on EINTR). The lock goes with the description, so closing the fd releases it.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a borrowed, open descriptor.
        match check_int(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// `flock(fd, LOCK_UN)`.
pub fn unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open descriptor.
    check_int(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(drop)
}
