//! The sandbox's network namespace: creating it, and bringing its loopback interface up.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check_int;

/// `unshare(CLONE_NEWNET)`: the calling process moves to a new, empty network namespace owned
/// by its user namespace (CAP_SYS_ADMIN there is required).
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes only an integer flag set and touches no caller memory.
    check_int(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// `SIOCGSKNS` (linux/sockios.h): an nsfs descriptor for the network namespace of a socket.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The network namespace the caller is in, as an nsfs descriptor (`SIOCGSKNS` on a socket made
/// for the purpose; CAP_NET_ADMIN over the namespace). No path is resolved.
pub fn current_network() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes integers only.
    let sock = check_int(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: SIOCGSKNS reads no argument memory; `sock` is ours.
    let ns = check_int(unsafe { libc::ioctl(sock, SIOCGSKNS as _, 0) });
    // SAFETY: `sock` is ours and unused after this.
    unsafe { libc::close(sock) };
    // SAFETY: on success the kernel returned a new descriptor (close-on-exec) nobody else owns.
    ns.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
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
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Control buffer for SCM_RIGHTS: room for a few descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct FdSpace([u8; 64]);

/// Sends one packet, with `fd` attached (SCM_RIGHTS) when given; MSG_NOSIGNAL: a dead peer is
/// an EPIPE error, not a SIGPIPE.
pub fn send_packet(sock: BorrowedFd<'_>, buf: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = FdSpace([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let int = std::mem::size_of::<libc::c_int>() as u32;
    // SAFETY: an all-zero msghdr is a valid empty one; the pointers set below stay live (they
    // point at this frame) for every use. CMSG_SPACE(4) fits the 64-byte, 8-aligned buffer, so
    // CMSG_FIRSTHDR is non-null and its header and data lie inside it.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = space.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(int) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(int) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
        loop {
            if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) >= 0 {
                break Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(e);
            }
        }
    }
}

/// Receives one packet, and the first descriptor attached to it, if any (close-on-exec; any
/// further ones are closed). 0 means EOF.
///
/// A peer that exits with unread data in its own queue leaves ECONNRESET pending on our socket;
/// the kernel reports it once, ahead of the packets the peer sent before exiting, so it is
/// consumed and the receive retried (a second ECONNRESET is returned).
pub fn recv_packet_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut resets = 0;
    loop {
        let mut space = FdSpace([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty one; iov and control point at live
        // buffers of this frame with their true lengths.
        let (n, msg) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.0.as_mut_ptr().cast();
            msg.msg_controllen = space.0.len() as _;
            let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            (n, msg)
        };
        if n >= 0 {
            let mut first = None;
            // SAFETY: the kernel filled `msg_controllen` bytes of `space` with well-formed
            // cmsghdrs; CMSG_FIRSTHDR/NXTHDR stay inside them, and every SCM_RIGHTS entry
            // carries (cmsg_len - CMSG_LEN(0)) / 4 descriptors just installed for us.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                        let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                            / std::mem::size_of::<libc::c_int>();
                        for i in 0..count {
                            let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                            if first.is_none() {
                                first = Some(fd);
                            }
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            return Ok((n as usize, first));
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
pub fn adopt_fd(raw: i32) -> OwnedFd {
    // SAFETY: callers pass only a descriptor they created (dup3 target) and own exclusively.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
