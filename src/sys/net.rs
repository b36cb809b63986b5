//! The sandbox's network namespace: creating it, and bringing its loopback interface up.

use std::io;

use super::check_int;

/// `unshare(CLONE_NEWNET)`: the calling process moves to a new, empty network namespace owned
/// by its user namespace (CAP_SYS_ADMIN there is required).
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes only an integer flag set and touches no caller memory.
    check_int(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// `struct ifreq` restricted to the name and the flags member of its union.
#[repr(C)]
struct IfreqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets IFF_UP on `lo` (SIOCGIFFLAGS, then SIOCSIFFLAGS) through an AF_INET datagram socket.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes integers only.
    let fd = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    let mut req = IfreqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` is a 40-byte ifreq-compatible struct, live for both ioctls.
    let res = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req as *mut IfreqFlags) < 0 {
            -1
        } else {
            req.flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req as *const IfreqFlags)
        }
    };
    let out = check_int(res).map(drop);
    // SAFETY: `fd` is ours and unused after this.
    unsafe { libc::close(fd) };
    out
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`.
pub fn seqpacket_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors the kernel writes.
    check_int(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Sends one packet (MSG_NOSIGNAL: a dead peer is an EPIPE error, not a SIGPIPE).
pub fn send_packet(fd: std::os::fd::BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `buf` is readable for its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one packet; 0 means EOF.
///
/// A peer that exits with unread data in its own queue leaves ECONNRESET pending on our socket;
/// the kernel reports it once, ahead of the packets the peer sent before exiting, so it is
/// consumed and the receive retried (a second ECONNRESET is returned).
pub fn recv_packet(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut resets = 0;
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECONNRESET) && resets == 0 {
            resets += 1;
            continue;
        }
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes ownership of a raw descriptor number the caller knows to be open and unowned.
pub fn adopt_fd(raw: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass only a descriptor they created (dup3 target) and own exclusively.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
}
