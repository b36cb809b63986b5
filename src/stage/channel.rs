//! The channel between the parent and init: a SOCK_SEQPACKET socketpair carrying fixed
//! 16-byte messages, so neither side parses anything variable-length from the other and init
//! never allocates to talk. EOF on it means the other side is gone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys;

/// A setup step in init, named in failure reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Waiting for the parent's go-ahead.
    WaitForParent = 1,
    /// Building the filesystem view.
    Mounts = 2,
    /// Hostname and loopback.
    Network = 3,
    /// Closing inherited descriptors / new session.
    Descriptors = 4,
    /// Opening and hashing the pinned executable.
    PinExecutable = 5,
    /// Dropping capabilities.
    Capabilities = 6,
    /// rlimits.
    Rlimits = 7,
    /// no_new_privs.
    NoNewPrivs = 8,
    /// Landlock.
    Landlock = 9,
    /// Forking the payload.
    Fork = 10,
    /// Signal handling in init.
    Signals = 11,
    /// Seccomp in the payload.
    Seccomp = 12,
    /// Joining the run's v1 cgroups.
    JoinCgroup = 13,
    /// Creating the network namespace.
    NetNamespace = 14,
}

impl Step {
    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            Step::WaitForParent => "wait for the parent",
            Step::Mounts => "build the filesystem view",
            Step::Network => "set up hostname and network",
            Step::Descriptors => "close descriptors and start a session",
            Step::PinExecutable => "open the pinned executable",
            Step::Capabilities => "drop capabilities",
            Step::Rlimits => "set rlimits",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Landlock => "apply Landlock",
            Step::Fork => "fork the payload",
            Step::Signals => "set up signals",
            Step::Seccomp => "apply seccomp",
            Step::JoinCgroup => "join the run's cgroups",
            Step::NetNamespace => "create the network namespace",
        }
    }

    fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            WaitForParent,
            Mounts,
            Network,
            Descriptors,
            PinExecutable,
            Capabilities,
            Rlimits,
            NoNewPrivs,
            Landlock,
            Fork,
            Signals,
            Seccomp,
            JoinCgroup,
            NetNamespace,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// Landlock's achieved level as reported by init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockLevel {
    /// Every requested right is enforced.
    Full,
    /// Some rights are not enforced (older ABI).
    Partial,
    /// Nothing enforced.
    None,
}

/// One message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// parent → init: maps written, build the sandbox.
    Go,
    /// init → parent: confined and ready to start the payload.
    Ready {
        /// Landlock level.
        landlock: LandlockLevel,
        /// Landlock ABI in use.
        abi: u32,
    },
    /// parent → init: STARTED is on disk; start the payload.
    Start,
    /// parent → init: the run's v1 cgroups exist; move yourself in.
    Join,
    /// init → parent: a setup step failed.
    SetupFailed {
        /// Which.
        step: Step,
        /// errno.
        errno: i32,
    },
    /// init → parent: the pinned executable's digest differs.
    HashMismatch,
    /// init → parent: its network namespace, attached as a descriptor ([`Channel::send_with_fd`]),
    /// for the parent to hold until the run's account is written.
    Network,
    /// payload → parent: execve failed.
    ExecFailed {
        /// errno.
        errno: i32,
    },
    /// init → parent: the payload ended with this wait status; the usage of every process
    /// init has reaped so far (the payload, and orphans it adopted) comes with it, so the
    /// parent can close the run without waiting for init's own exit.
    Exited {
        /// Raw wait status.
        status: i32,
        /// What init has reaped so far.
        usage: Reaped,
    },
}

/// CPU time and peak RSS of the processes init has reaped (its `RUSAGE_CHILDREN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    /// User CPU, µs.
    pub user_us: u64,
    /// System CPU, µs.
    pub sys_us: u64,
    /// Largest resident set of any one of those processes, KiB.
    pub max_rss_kib: u64,
}

impl Reaped {
    /// The usage wait4 reported with one reaped child (and what it had reaped).
    pub fn of(w: &sys::proc::Waited) -> Reaped {
        Reaped {
            user_us: w.user_us,
            sys_us: w.sys_us,
            max_rss_kib: w.max_rss_kib,
        }
    }
}

const LEN: usize = 40;

impl Msg {
    fn encode(self) -> [u8; LEN] {
        let (tag, a, b, extra): (u32, u32, i64, [u64; 3]) = match self {
            Msg::Go => (1, 0, 0, [0; 3]),
            Msg::Ready { landlock, abi } => (2, landlock as u32, i64::from(abi), [0; 3]),
            Msg::Start => (3, 0, 0, [0; 3]),
            Msg::SetupFailed { step, errno } => (4, step as u32, i64::from(errno), [0; 3]),
            Msg::HashMismatch => (5, 0, 0, [0; 3]),
            Msg::ExecFailed { errno } => (6, 0, i64::from(errno), [0; 3]),
            Msg::Join => (8, 0, 0, [0; 3]),
            Msg::Network => (9, 0, 0, [0; 3]),
            Msg::Exited { status, usage: u } => (
                7,
                0,
                i64::from(status),
                [u.user_us, u.sys_us, u.max_rss_kib],
            ),
        };
        let mut buf = [0u8; LEN];
        buf[..4].copy_from_slice(&tag.to_le_bytes());
        buf[4..8].copy_from_slice(&a.to_le_bytes());
        buf[8..16].copy_from_slice(&b.to_le_bytes());
        for (i, v) in extra.iter().enumerate() {
            buf[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        buf
    }

    fn decode(buf: &[u8; LEN]) -> Option<Msg> {
        let word = |r: std::ops::Range<usize>| {
            buf.get(r)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_le_bytes)
        };
        let long = |at: usize| {
            buf.get(at..at + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_le_bytes)
        };
        let tag = word(0..4)?;
        let a = word(4..8)?;
        let b = long(8)? as i64;
        let b32 = i32::try_from(b).ok()?;
        Some(match tag {
            1 => Msg::Go,
            2 => Msg::Ready {
                landlock: match a {
                    0 => LandlockLevel::Full,
                    1 => LandlockLevel::Partial,
                    2 => LandlockLevel::None,
                    _ => return None,
                },
                abi: u32::try_from(b).ok()?,
            },
            3 => Msg::Start,
            4 => Msg::SetupFailed {
                step: Step::from_u32(a)?,
                errno: b32,
            },
            5 => Msg::HashMismatch,
            6 => Msg::ExecFailed { errno: b32 },
            8 => Msg::Join,
            9 => Msg::Network,
            7 => Msg::Exited {
                status: b32,
                usage: Reaped {
                    user_us: long(16)?,
                    sys_us: long(24)?,
                    max_rss_kib: long(32)?,
                },
            },
            _ => return None,
        })
    }
}

/// One end of the channel.
pub struct Channel {
    fd: OwnedFd,
}

/// Creates the pair (parent end, init end), both close-on-exec so neither reaches the payload.
pub fn pair() -> io::Result<(Channel, Channel)> {
    let (a, b) = sys::net::seqpacket_pair()?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Wraps a raw fd (init after moving its end to a fixed number).
    pub fn from_owned(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Sends one message.
    pub fn send(&self, m: Msg) -> io::Result<()> {
        sys::net::send_packet(self.fd.as_fd(), &m.encode(), None)
    }

    /// Sends one message with a descriptor attached.
    pub fn send_with_fd(&self, m: Msg, fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::net::send_packet(self.fd.as_fd(), &m.encode(), Some(fd))
    }

    /// Receives one message; Ok(None) on EOF (the other side exited). A descriptor attached
    /// to it is closed.
    pub fn recv(&self) -> io::Result<Option<Msg>> {
        self.recv_with_fd().map(|(m, _)| m)
    }

    /// Receives one message and the descriptor attached to it, if any.
    pub fn recv_with_fd(&self) -> io::Result<(Option<Msg>, Option<OwnedFd>)> {
        let mut buf = [0u8; LEN];
        let (n, fd) = sys::net::recv_packet_with_fd(self.fd.as_fd(), &mut buf)?;
        if n == 0 {
            return Ok((None, None));
        }
        if n != LEN {
            return Err(io::Error::from_raw_os_error(libc::EPROTO));
        }
        Msg::decode(&buf)
            .map(|m| (Some(m), fd))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTO))
    }

    /// The descriptor, for poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Raw fd number.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Consumes the end, returning the fd (for renumbering).
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }
}

/// Rebuilds an OwnedFd at a fixed number; the caller must own that descriptor.
pub fn adopt(raw: i32) -> OwnedFd {
    sys::net::adopt_fd(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_message() {
        let msgs = [
            Msg::Go,
            Msg::Join,
            Msg::Ready {
                landlock: LandlockLevel::Partial,
                abi: 3,
            },
            Msg::Start,
            Msg::SetupFailed {
                step: Step::Landlock,
                errno: libc::EPERM,
            },
            Msg::HashMismatch,
            Msg::Network,
            Msg::ExecFailed {
                errno: libc::ENOENT,
            },
            Msg::Exited {
                status: 0x0900,
                usage: Reaped {
                    user_us: 1_234_567,
                    sys_us: u64::MAX,
                    max_rss_kib: 2048,
                },
            },
        ];
        let (a, b) = pair().unwrap();
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
            a.send(m).unwrap();
            assert_eq!(b.recv().unwrap(), Some(m));
        }
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }

    /// init's network namespace reaches the parent as a descriptor of the same namespace, a
    /// message without one brings none, and `recv` reads a message that carries one.
    #[test]
    fn a_descriptor_travels_with_its_message() {
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: &OwnedFd| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        };
        let (parent, init) = pair().unwrap();
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let sent = OwnedFd::from(ns);
        init.send_with_fd(Msg::Network, sent.as_fd()).unwrap();
        init.send(Msg::HashMismatch).unwrap();
        init.send_with_fd(Msg::Network, sent.as_fd()).unwrap();
        let (m, got) = parent.recv_with_fd().unwrap();
        assert_eq!(m, Some(Msg::Network));
        let got = got.expect("a descriptor with the message");
        assert_ne!(got.as_raw_fd(), sent.as_raw_fd());
        assert_eq!(ino(&got), ino(&sent));
        assert!(matches!(
            parent.recv_with_fd().unwrap(),
            (Some(Msg::HashMismatch), None)
        ));
        assert_eq!(parent.recv().unwrap(), Some(Msg::Network));
    }

    /// Regression: init sent HashMismatch and exited without reading the parent's Start; the
    /// kernel then reported ECONNRESET ahead of the queued message and the refusal was lost.
    #[test]
    fn message_survives_a_peer_that_exits_with_unread_data() {
        let (parent, init) = pair().unwrap();
        init.send(Msg::HashMismatch).unwrap();
        parent.send(Msg::Start).unwrap();
        drop(init);
        assert_eq!(parent.recv().unwrap(), Some(Msg::HashMismatch));
        assert_eq!(parent.recv().unwrap(), None);
    }

    /// Every step init can report survives the channel, the newest included: a step missing
    /// from the decoder would turn init's failure into "init ended before the payload started".
    #[test]
    fn every_step_decodes_to_itself() {
        let mut names = std::collections::BTreeSet::new();
        for v in 1..=14u32 {
            let step = Step::from_u32(v).unwrap_or_else(|| panic!("step {v} does not decode"));
            assert_eq!(step as u32, v);
            assert!(
                names.insert(step.name()),
                "two steps named {:?}",
                step.name()
            );
            let m = Msg::SetupFailed {
                step,
                errno: libc::EPERM,
            };
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Step::from_u32(15), None);
        assert_eq!(Step::from_u32(0), None);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Msg::decode(&[0xff; LEN]), None);
        assert_eq!(Msg::decode(&[0; LEN]), None);
    }
}
