//! Fork-style `clone` into new namespaces, returning a pidfd to the parent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

/// `clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7): the child starts in the cgroup `cgroup_fd` names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(flags | CLONE_PIDFD | CLONE_INTO_CGROUP)` fork-style (no new stack): the child is
/// accounted in the v2 cgroup from its first instruction. ENOSYS (kernel < 5.7, or a filter
/// hiding clone3) is returned as is, so the caller falls back to [`clone_into_namespaces`] and
/// moves the child itself. Same single-thread rule as [`clone_into_namespaces`].
pub fn clone3_into_cgroup(ns_flags: libc::c_int, cgroup_fd: BorrowedFd<'_>) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (ns_flags as u32 as u64) | libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a live, correctly sized clone_args; stack 0 with stack_size 0 makes
    // clone3 duplicate the caller's stack like fork, so both sides return here with valid
    // frames; `pidfd` outlives the call and receives one c_int; `cgroup_fd` is borrowed for the
    // duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
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

/// Stack of a [`spawn_vfork`] child: it only runs a few calyx functions and libc wrappers
/// before exec, far below this; a guard page below it faults instead of overwriting memory.
const VFORK_STACK: usize = 256 * 1024;

/// Runs `child` in a new process that shares this address space, and returns its pid once the
/// child has exec'd or exited (`clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`, as posix_spawn
/// does): no page tables are copied, neither process takes copy-on-write faults, and exec has
/// no copy to tear down.
///
/// The child runs on a stack of its own (this thread's frames are needed when it resumes), with
/// its own file table, signal dispositions, signal mask and seccomp filters, but this
/// process's memory: `child` must only make system calls, must not allocate or free (the
/// allocator's state is this process's), and must end in exec or [`exit_now`]. The caller must
/// be single-threaded.
pub fn spawn_vfork(child: &mut dyn FnMut()) -> io::Result<libc::pid_t> {
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the `&mut dyn FnMut()` of the caller's frame, which
        // stays alive until the child has exec'd or exited (the caller is stopped until then).
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
        f();
        // `child` must not return (it would run on in a process that shares our memory).
        exit_now(125)
    }
    let page = 4096;
    let len = VFORK_STACK + page;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let unmap = || {
        // SAFETY: `base`/`len` is the mapping made above, used by no one once the child has
        // exec'd or exited.
        unsafe { libc::munmap(base, len) };
    };
    // The lowest page becomes the guard: the stack grows down towards it.
    // SAFETY: the first page of the mapping above.
    if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
        let e = io::Error::last_os_error();
        unmap();
        return Err(e);
    }
    let mut f: &mut dyn FnMut() = child;
    // SAFETY: the stack top is the 16-byte aligned end of the mapping, which only the child
    // uses; CLONE_VFORK stops this thread until the child has exec'd or exited, so `f` and the
    // mapping outlive every use the child makes of them, and the child exits if `child` returns.
    let pid = unsafe {
        let top = (base as *mut u8).add(len);
        libc::clone(
            trampoline,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut f as *mut &mut dyn FnMut()).cast(),
        )
    };
    let res = check(pid as libc::c_long).map(|p| p as libc::pid_t);
    unmap();
    res
}

/// `_exit` without running atexit handlers or flushing stdio shared with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}
