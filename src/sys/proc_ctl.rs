//! Raw per-process controls: `prctl` (no_new_privs, bounding and ambient capability sets),
//! `capset`, `setrlimit`/`getrlimit`, plus a few harmless probe calls that show whether a
//! seccomp filter is in force.
//!
//! Each function makes exactly one system call and maps failure to `io::Error` with the
//! kernel's errno; the meaning of the failure is given by the callers in `crate::isolate`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The resource argument type of `setrlimit`/`getrlimit` on this libc.
#[cfg(target_env = "gnu")]
pub type RawResource = libc::__rlimit_resource_t;
/// The resource argument type of `setrlimit`/`getrlimit` on this libc.
#[cfg(not(target_env = "gnu"))]
pub type RawResource = libc::c_int;

/// `prctl` with integer arguments only; returns the call's non-negative result.
fn prctl_int(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: every option passed here (NO_NEW_PRIVS, CAPBSET_*, CAP_AMBIENT) takes plain
    // integer arguments, never pointers, so no memory is read or written by the kernel.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling thread (inherited by children, never unset).
pub fn set_no_new_privs() -> io::Result<()> {
    prctl_int(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map(|_| ())
}

/// Reads `PR_GET_NO_NEW_PRIVS` for the calling thread.
pub fn no_new_privs() -> io::Result<bool> {
    prctl_int(libc::PR_GET_NO_NEW_PRIVS, 0, 0).map(|v| v == 1)
}

/// Removes capability `cap` from the calling thread's bounding set (needs CAP_SETPCAP).
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    prctl_int(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0).map(|_| ())
}

/// Whether capability `cap` is in the calling thread's bounding set.
pub fn capbset_read(cap: u32) -> io::Result<bool> {
    prctl_int(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0).map(|v| v == 1)
}

/// Empties the calling thread's ambient capability set.
pub fn cap_ambient_clear_all() -> io::Result<()> {
    // PR_CAP_AMBIENT_CLEAR_ALL is a sub-command of PR_CAP_AMBIENT; the constant is a c_int.
    let sub = libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_CLEAR_ALL)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    prctl_int(libc::PR_CAP_AMBIENT, sub, 0).map(|_| ())
}

/// Whether capability `cap` is in the calling thread's ambient set.
pub fn cap_ambient_is_set(cap: u32) -> io::Result<bool> {
    let sub = libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_IS_SET)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    prctl_int(libc::PR_CAP_AMBIENT, sub, libc::c_ulong::from(cap)).map(|v| v == 1)
}

/// `struct __user_cap_header_struct` of <linux/capability.h>.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of <linux/capability.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets passed as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The header of a version-3 call about the calling thread, and its two (low, high) halves
/// of the three sets, all empty.
fn v3_self() -> (CapHeader, [CapData; 2]) {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let empty = CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    (header, [empty; 2])
}

/// Sets the calling thread's effective, permitted and inheritable sets to empty (capset v3).
pub fn capset_clear_all() -> io::Result<()> {
    let (mut header, data) = v3_self();
    // SAFETY: version 3 tells the kernel to read exactly two `CapData` structs, which `data`
    // holds; `header` is a valid, writable header (the kernel may write back the version).
    // Both live on this stack frame until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The calling thread's (effective, permitted, inheritable) sets (capget v3).
pub fn capget_self() -> io::Result<(u64, u64, u64)> {
    let (mut header, mut data) = v3_self();
    // SAFETY: version 3 tells the kernel to write exactly two `CapData` structs, which `data`
    // holds; `header` is a valid, writable header. Both live on this stack frame until the
    // call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::addr_of_mut!(header),
            data.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Sets one resource limit of the calling process (soft, hard).
pub fn setrlimit(resource: RawResource, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a fully initialised `rlimit` the kernel only reads, alive for the
    // duration of the call.
    let rc = unsafe { libc::setrlimit(resource, &limit) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads one resource limit of the calling process as (soft, hard).
pub fn getrlimit(resource: RawResource) -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` that outlives the call; the kernel writes
    // exactly one such struct.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((limit.rlim_cur, limit.rlim_max))
    }
}

// --- Probes -------------------------------------------------------------------------------
//
// Each probe makes a call that a seccomp filter must refuse, with arguments chosen so that on
// an unfiltered kernel the call still fails harmlessly with a *different* errno (or creates
// nothing that outlives the returned fd). Tests and `calyx doctor` use them to observe a filter
// without risking the host.

/// `mount(NULL, target, "tmpfs", 0, NULL)`: point `target` at a path that does not exist, so
/// an unfiltered kernel answers ENOENT (or EPERM without CAP_SYS_ADMIN).
pub fn probe_mount(target: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: the source and data pointers are NULL, which mount(2) accepts; `target` and the
    // literal "tmpfs" are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `unshare(flags)`. Called from a multi-threaded test process, `CLONE_NEWUSER` fails with
/// EINVAL on an unfiltered kernel, so the probe never creates a namespace there.
pub fn probe_unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only an integer flag set and touches no caller memory.
    let rc = unsafe { libc::unshare(flags) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `clone3(NULL, 0)`: a size below the first `clone_args` version makes an unfiltered kernel
/// answer EINVAL before reading anything, so no process is ever created.
pub fn probe_clone3() -> io::Result<()> {
    // SAFETY: with size 0 the kernel rejects the call without dereferencing the NULL pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `clone(flags, NULL stack, …)` with `flags` holding a namespace bit and an invalid
/// combination (CLONE_SIGHAND without CLONE_VM), so an unfiltered kernel answers EINVAL before
/// creating anything.
pub fn probe_clone_with_flags(ns_flags: libc::c_ulong) -> io::Result<()> {
    let flags = ns_flags | libc::CLONE_SIGHAND as libc::c_ulong;
    // SAFETY: CLONE_SIGHAND without CLONE_VM is rejected by the kernel's flag validation
    // before any process is created, so the NULL stack and pointer arguments are never used.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null::<libc::c_void>(),
            std::ptr::null::<libc::c_void>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, request, &byte)` for TIOCSTI/TIOCLINUX probes. Pass a fd that is not a
/// terminal (a pipe): an unfiltered kernel answers ENOTTY and injects nothing.
pub fn probe_tty_ioctl(fd: &impl std::os::fd::AsRawFd, request: u32) -> io::Result<()> {
    let byte: u8 = 0;
    // SAFETY: both requests read at most one byte through the pointer, which points at a live
    // local; on a non-terminal fd the kernel rejects the request before reading it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, std::ptr::addr_of!(byte)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ptrace(PTRACE_CONT, pid, 0, 0)` on a process the caller does not trace: an unfiltered
/// kernel answers ESRCH.
pub fn probe_ptrace(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: PTRACE_CONT with NULL addr/data reads no caller memory; the target is not our
    // tracee, so the kernel refuses it without side effects.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_CONT,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `socket(domain, ty | SOCK_CLOEXEC, 0)`; the returned fd closes on drop.
pub fn probe_socket(domain: libc::c_int, ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes only integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `getpid()` through the raw syscall (no libc caching), for "normal calls still work" checks.
pub fn raw_getpid() -> io::Result<libc::c_long> {
    // SAFETY: getpid takes no arguments and cannot fail.
    let rc = unsafe { libc::syscall(libc::SYS_getpid) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
