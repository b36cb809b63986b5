//! Advisory whole-file locks (`flock(2)`): audit appends and the ledger's lease files.

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

/// `flock(fd, LOCK_EX | LOCK_NB)` or, unless `exclusive`, `LOCK_SH | LOCK_NB`: true when this
/// open file description now holds the lock, false when another holds a conflicting one.
pub fn try_lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    loop {
        // SAFETY: plain syscall on a borrowed, open descriptor.
        match check_int(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}
