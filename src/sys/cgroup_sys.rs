//! Syscalls the cgroup module and the sentinel need that std does not offer: credentials,
//! the page size, SIGKILL by pid, inotify and poll.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub fn effective_gid() -> u32 {
    // SAFETY: getegid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::getegid() }
}

/// The size of a memory page; the kernel rounds memory limits down to it.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no pointers are involved.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // sysconf returns -1 only for unknown names; _SC_PAGESIZE is always known on Linux.
    u64::try_from(size).unwrap_or(4096)
}

/// Send SIGKILL to one process. The caller must own `pid` (its own unreaped child), so the
/// number cannot have been recycled for an unrelated process.
pub fn sigkill_pid(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 0 {
        // 0 and negative numbers address process groups; never send those from here.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill takes plain integers; pid > 0 names exactly one process, never a group.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An inotify instance (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    /// Create the instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: inotify_init1 takes only flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel, is valid and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Watch `path` for modification (cgroup `*.events` files signal changes this way).
    pub fn watch_modify(&self, path: &Path) -> io::Result<()> {
        let c_path = super::c_path(path)?;
        // SAFETY: the fd is a live inotify fd and c_path is a NUL-terminated string that
        // outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY)
        };
        if wd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Discard pending events; the sentinel re-reads the files rather than decode events.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is a writable buffer of buf.len() bytes that lives across the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An eventfd (non-blocking, close-on-exec): the kernel's v1 memory-threshold notifications
/// arrive on one.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Create one with a zero counter.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Reset the counter (a no-op when nothing was signalled).
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: buf is a writable 8-byte buffer, the size an eventfd read requires.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What to wait for on one fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable data (inotify, sockets).
    Readable,
    /// An exceptional condition: how PSI triggers fire.
    Priority,
}

/// The state of one fd after [`poll_fds`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// The awaited event happened.
    pub event: bool,
    /// Error or hang-up: the fd will stay ready, so the caller must stop waiting on it.
    pub failed: bool,
}

/// Wait until one of `fds` is ready or `timeout` passes; returns each fd's state.
/// EINTR counts as "nothing ready" so callers simply loop.
pub fn poll_fds(fds: &[(BorrowedFd<'_>, Interest)], timeout: Duration) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, interest)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: match interest {
                Interest::Readable => libc::POLLIN,
                Interest::Priority => libc::POLLPRI,
            },
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    let nfds = libc::nfds_t::try_from(pfds.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pfds is a live, writable array of nfds pollfd structs; every fd in it is
    // borrowed from the caller for the duration of the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), nfds, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![Ready::default(); pfds.len()]);
        }
        return Err(err);
    }
    Ok(pfds
        .iter()
        .map(|p| Ready {
            event: p.revents & p.events != 0,
            failed: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        })
        .collect())
}
