//! Process-level calls: identity, prctl, sessions, exec and wait.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use super::{check, check_int};

/// Real and effective user and group ids of the calling process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective gid.
    pub egid: u32,
}

/// Reads the caller's ids (these calls cannot fail).
pub fn ids() -> Ids {
    // SAFETY: the get*id calls take no arguments and always succeed.
    unsafe {
        Ids {
            uid: libc::getuid(),
            euid: libc::geteuid(),
            gid: libc::getgid(),
            egid: libc::getegid(),
        }
    }
}

/// `getauxval(AT_SECURE)`: true when the kernel started us setuid/setgid or with file caps.
pub fn at_secure() -> bool {
    // SAFETY: getauxval reads the process's auxiliary vector; no pointers involved.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `prctl(PR_SET_NAME)`: the comm shown by ps (at most 15 bytes are kept).
pub fn set_name(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the kernel copies at most 16 bytes.
    check_int(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) }).map(drop)
}

/// `prctl(PR_SET_PDEATHSIG, sig)`.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no ptrace or /proc/PID/mem access without CAP_SYS_PTRACE.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check_int(unsafe { libc::setsid() }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads exactly `name.len()` bytes from the slice.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// The host name of the caller's UTS namespace (`uname(2)`'s nodename): what
/// `/proc/sys/kernel/hostname` holds, for one system call instead of an open, a read and a
/// close of a sysctl file (4 to 19 us here).
pub fn hostname() -> String {
    // SAFETY: `utsname` is plain old data, so all zeroes is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the duration of the call; on failure it
    // stays zeroed.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // The kernel NUL-terminates each field within its 65 bytes.
    let bytes: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `execve(path, argv, envp)`; returns only on failure. `argv` and `envp` must be
/// null-terminated arrays of pointers to NUL-terminated strings.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last() != Some(&ptr::null()) || envp.last() != Some(&ptr::null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: both arrays end with a null pointer (checked above) and their strings are owned
    // by the caller for the duration of the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: executes the very file `fd` refers to.
pub fn execve_fd(
    fd: libc::c_int,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last() != Some(&ptr::null()) || envp.last() != Some(&ptr::null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: as for execve; the empty path is a static NUL-terminated string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// What `wait4` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited {
    /// Pid reaped (0 with WNOHANG when nothing was ready).
    pub pid: libc::pid_t,
    /// Raw wait status.
    pub status: libc::c_int,
    /// User CPU time of the child and its reaped descendants, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub sys_us: u64,
    /// Peak resident set size, KiB.
    pub max_rss_kib: u64,
}

/// `wait4(pid, WNOHANG?)`, retrying on EINTR.
pub fn wait4(pid: libc::pid_t, nohang: bool) -> io::Result<Waited> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 } | libc::__WALL;
    loop {
        // SAFETY: `status` and `ru` are live, writable locals.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        match check_int(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(p) => {
                let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
                return Ok(Waited {
                    pid: p,
                    status,
                    user_us: us(ru.ru_utime),
                    sys_us: us(ru.ru_stime),
                    max_rss_kib: ru.ru_maxrss as u64,
                });
            }
        }
    }
}

/// CPU time and peak RSS of every child the caller has reaped so far
/// (`getrusage(RUSAGE_CHILDREN)`), as (user µs, system µs, max RSS KiB).
pub fn children_usage() -> io::Result<(u64, u64, u64)> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable local.
    check_int(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) })?;
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    Ok((us(ru.ru_utime), us(ru.ru_stime), ru.ru_maxrss as u64))
}

/// `kill(pid, sig)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `pidfd_open(pid, 0)`: a descriptor of a process, pollable for its exit.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer-only syscall; the returned descriptor is new and owned by nobody else.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: see above; the value fits an fd number.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(pidfd, sig)`.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: null siginfo means "as kill() would send it"; the fd is borrowed and open.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the Landlock ABI the
/// kernel offers, or the errno (ENOSYS: not built in; EOPNOTSUPP: disabled at boot).
pub fn landlock_abi() -> io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a null attr with size 0 and the VERSION flag only queries; nothing is written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    Ok(check(ret)? as u32)
}

/// `prctl(PR_GET_SECCOMP)`: Ok(mode) when the kernel has seccomp, Err(EINVAL) when not.
pub fn seccomp_mode() -> io::Result<i32> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) })
}

/// `setrlimit(resource, value, value)`.
pub fn set_rlimit(resource: crate::sys::proc_ctl::RawResource, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a live rlimit struct.
    check_int(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// `setpgid(0, 0)`: the caller leads a new process group.
pub fn new_process_group() -> io::Result<()> {
    // SAFETY: integer-only syscall.
    check_int(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// Tells glibc's malloc to serve every thread from the main arena. By default each new thread
/// that allocates gets an arena of its own: a 64 MiB reservation and first-touch page faults,
/// paid again on every run by each of the runner's short-lived threads (ledger, hash,
/// sentinel, teardown), which allocate little. Call before any thread starts.
pub fn single_malloc_arena() {
    // SAFETY: mallopt only changes malloc's tuning; an option it does not know returns 0.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
