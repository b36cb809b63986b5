//! Fork-style `clone` into new namespaces, returning a pidfd to the parent.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::check;

/// Which side of the clone we are on.
#[derive(Debug)]
pub enum Cloned {
    /// In the new child (pid 1 of its pid namespace when `CLONE_NEWPID` was given).
    Child,
    /// In the parent: the child's pid (in our pid namespace) and a pidfd for it.
    Parent {
        /// Child pid as seen by the parent.
        pid: libc::pid_t,
        /// pidfd: signals sent through it cannot hit a recycled pid.
        pidfd: OwnedFd,
    },
}

/// `clone(flags | CLONE_PIDFD | SIGCHLD)` with no new stack: the child continues from here with
/// a copy of the address space, exactly like `fork`.
///
/// The caller must be single-threaded: the child gets only the calling thread, so a lock held by
/// another thread (the allocator's, stdio's) would stay locked forever in the child.
pub fn clone_into_namespaces(ns_flags: libc::c_int) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with a null stack pointer the kernel duplicates the caller's stack like fork, so
    // both sides return here with valid frames; `pidfd` outlives the call and CLONE_PIDFD writes
    // one c_int into it (the parent_tid slot, the third argument on every architecture).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    let pid = check(ret)? as libc::pid_t;
    if pid == 0 {
        return Ok(Cloned::Child);
    }
    // SAFETY: CLONE_PIDFD succeeded, so the kernel stored a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Cloned::Parent { pid, pidfd })
}

/// `fork()` for init starting the payload (no namespace change).
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: init is single-threaded, so the child's copy of every lock is consistent.
    let pid = unsafe { libc::fork() };
    Ok(check(pid as libc::c_long)? as libc::pid_t)
}

/// `_exit` without running atexit handlers or flushing stdio shared with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}
