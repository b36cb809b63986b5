//! Signal masks and signalfd: both stages handle signals synchronously, never in handlers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check_int;

/// The signals calyx consumes through a signalfd: the child-exit notice and the three it
/// forwards to the payload.
pub const HANDLED: [libc::c_int; 4] = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn set_of(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks [`HANDLED`] on the calling thread so they queue for a signalfd, and puts SIGCHLD
/// back to its default action: a caller that ignores SIGCHLD would otherwise make the kernel
/// reap our children itself, and their exit statuses would be lost.
pub fn block_handled() -> io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition for SIGCHLD; no handler code is involved.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    let set = set_of(&HANDLED);
    // SAFETY: `set` is initialised; the old mask is not needed.
    check_int(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) }).map(drop)
}

/// Empties the signal mask and resets every catchable signal to its default action, so the
/// payload starts with the state a fresh process expects.
pub fn reset_for_exec() -> io::Result<()> {
    let empty = set_of(&[]);
    // SAFETY: `empty` is initialised.
    check_int(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) })?;
    for sig in 1..libc::SIGRTMIN() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; errors (invalid signal numbers
        // reserved by libc) are irrelevant and ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    Ok(())
}

/// A signalfd for [`HANDLED`] (non-blocking, close-on-exec).
pub fn signalfd_handled() -> io::Result<OwnedFd> {
    let set = set_of(&HANDLED);
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd =
        check_int(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd; None when none is pending.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data; zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is writable for `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(info.ssi_signo as libc::c_int))
}

/// `poll(2)` over `fds` (fd, wanted events); returns the revents in the same order.
pub fn poll(
    fds: &[(BorrowedFd<'_>, libc::c_short)],
    timeout_ms: i32,
) -> io::Result<[libc::c_short; 4]> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    for (slot, (fd, ev)) in pfds.iter_mut().zip(fds) {
        slot.fd = fd.as_raw_fd();
        slot.events = *ev;
    }
    let n = fds.len().min(4);
    // SAFETY: `pfds` holds `n` initialised entries; negative fds in unused slots are ignored.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    match check_int(r) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok([0; 4]),
        Err(e) => Err(e),
        Ok(_) => Ok([
            pfds[0].revents,
            pfds[1].revents,
            pfds[2].revents,
            pfds[3].revents,
        ]),
    }
}
