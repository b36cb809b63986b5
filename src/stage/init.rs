//! calyx's init: pid 1 of the sandbox. It builds the view, confines itself, starts the payload
//! when the parent says so, reaps every process, forwards signals, and reports the payload's
//! status. It runs in the child of a fork-style clone of a single-threaded parent, so it may
//! use the allocator, but everything it needs was prepared by the parent beforehand.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, IntoRawFd};

use sha2::{Digest, Sha256};

use crate::isolate::mounts::PreparedView;
use crate::lease::model::Network;
use crate::stage::channel::{self, Channel, Msg, Step};
use crate::stage::confine::Confinement;
use crate::sys::{self, fs as sfs, proc as sproc, signal as ssig};

/// The descriptor number the channel is moved to before every other fd is closed.
const CHANNEL_FD: i32 = 3;

/// Everything init needs, prepared by the parent before the clone.
pub struct InitContext {
    /// The filesystem view.
    pub view: PreparedView,
    /// Network mode.
    pub network: Network,
    /// Executable path inside the view.
    pub exe: CString,
    /// Pinned digest (raw bytes), if any.
    pub exe_sha256: Option<[u8; 32]>,
    /// argv strings (kept alive for `argv_ptrs`).
    pub argv: Vec<CString>,
    /// Null-terminated pointer array into `argv`.
    pub argv_ptrs: Vec<*const libc::c_char>,
    /// env strings `K=V`.
    pub env: Vec<CString>,
    /// Null-terminated pointer array into `env`.
    pub env_ptrs: Vec<*const libc::c_char>,
    /// Capabilities, rlimits, Landlock and seccomp, precomputed.
    pub confine: Confinement,
}

type StepResult<T> = Result<T, (Step, i32)>;

fn at(step: Step) -> impl FnOnce(io::Error) -> (Step, i32) {
    move |e: io::Error| (step, e.raw_os_error().unwrap_or(libc::EIO))
}

/// Runs init; never returns. With `cgroup_join`, init moves itself into the run's v1 cgroups
/// when the parent says they exist (`Msg::Join`), before it forks anything.
pub fn run_init(
    ctx: &InitContext,
    channel: Channel,
    cgroup_join: Option<crate::cgroup::run::V1Join>,
) -> ! {
    // Name it so `ps` on the host shows what this process is.
    let _ = sproc::set_name(c"calyx:[init]");
    // The runner dies → init dies → the kernel kills the whole pid namespace.
    if sproc::set_parent_death_signal(libc::SIGKILL).is_err() {
        sys::clone::exit_now(125);
    }
    let channel = match renumber_channel(channel) {
        Ok(c) => c,
        Err(_) => sys::clone::exit_now(125),
    };
    // The network namespace is made here rather than by the clone. Of all the namespaces it
    // is the one that costs: 0.6-0.8 ms of CPU here (sysctl tables registered for every
    // protocol). Made by init it overlaps the parent's writing of the id maps and making of
    // the v1 cgroups instead of delaying the clone. Init holds every capability of its user
    // namespace from birth and needs no id map for this; it has run nothing but this
    // function so far, and the payload only ever runs inside the new namespace.
    if let Err(e) = sys::net::unshare_network() {
        fail_early(&channel, Step::NetNamespace, &e);
    }
    // The parent holds the namespace from here to the end of the run, so that taking it apart
    // does not compete with closing the run (see parent::Teardown). Best effort.
    if let Ok(ns) = sys::net::current_network() {
        let _ = channel.send_with_fd(Msg::Network, ns.as_fd());
    }
    let code = match init_main(ctx, &channel, cgroup_join) {
        Ok(code) => code,
        Err((step, errno)) => {
            let _ = channel.send(Msg::SetupFailed { step, errno });
            125
        }
    };
    sys::clone::exit_now(code)
}

/// Reports a failed step of init's first moments and exits: nothing has been built yet.
fn fail_early(channel: &Channel, step: Step, e: &io::Error) -> ! {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let _ = channel.send(Msg::SetupFailed { step, errno });
    sys::clone::exit_now(125)
}

/// Moves the channel to fd 3 so "close everything from 4" keeps exactly it.
fn renumber_channel(channel: Channel) -> io::Result<Channel> {
    let raw = channel.into_owned().into_raw_fd();
    sfs::dup_to(raw, CHANNEL_FD)?;
    if raw != CHANNEL_FD {
        // Close the old number: init must hold exactly one end of the channel.
        drop(channel::adopt(raw));
    }
    Ok(Channel::from_owned(channel::adopt(CHANNEL_FD)))
}

fn init_main(
    ctx: &InitContext,
    channel: &Channel,
    cgroup_join: Option<crate::cgroup::run::V1Join>,
) -> StepResult<i32> {
    // PDEATHSIG is set, but the parent may have died before that: its end of the channel is
    // then closed and this read sees EOF (getppid() is 0 here: the parent is outside our pid
    // namespace, so it cannot tell us).
    match channel.recv().map_err(at(Step::WaitForParent))? {
        Some(Msg::Go) => {}
        _ => return Ok(125),
    }
    // Only now (maps written): a non-dumpable init has root-owned /proc files, which would have
    // stopped an unprivileged parent from writing uid_map. From here the payload (same uid)
    // cannot ptrace init or read its memory.
    sproc::set_not_dumpable().map_err(at(Step::Signals))?;
    // Mounts first: they need CAP_SYS_ADMIN in our namespace, dropped further down.
    ctx.view
        .apply()
        .map_err(|e| (Step::Mounts, e.source.raw_os_error().unwrap_or(libc::EIO)))?;
    sproc::sethostname(b"calyx").map_err(at(Step::Network))?;
    if ctx.network == Network::Loopback {
        sys::net::loopback_up().map_err(at(Step::Network))?;
    }
    // The v1 cgroups, which the parent made meanwhile: init moves itself in while it is
    // single-threaded and has forked nothing, so the payload and all it forks are accounted
    // and limited. (On v2, CLONE_INTO_CGROUP placed init at its birth.)
    if let Some(join) = cgroup_join {
        match channel.recv().map_err(at(Step::WaitForParent))? {
            Some(Msg::Join) => {}
            _ => return Ok(125),
        }
        crate::cgroup::run::join_v1_self(&join).map_err(at(Step::JoinCgroup))?;
    }
    // Nothing but 0-2 and the channel may reach the payload (fd leak class of escapes).
    sfs::close_from(CHANNEL_FD as u32 + 1).map_err(at(Step::Descriptors))?;
    // New session: the payload has no controlling terminal to inject keystrokes into (TIOCSTI).
    sproc::setsid().map_err(at(Step::Descriptors))?;
    // Pin the executable before dropping privileges: this fd is hashed and later executed, so
    // nothing can be swapped between the check and the exec.
    let pinned = match ctx.exe_sha256 {
        None => None,
        Some(want) => match pin_executable(ctx, want).map_err(at(Step::PinExecutable))? {
            Some(fd) => Some(fd),
            None => {
                channel
                    .send(Msg::HashMismatch)
                    .map_err(at(Step::PinExecutable))?;
                return Ok(125);
            }
        },
    };
    let sigfd = ssig::signalfd_handled().map_err(at(Step::Signals))?;
    // Confinement of init itself (and so of everything it forks): capabilities, rlimits,
    // no_new_privs, Landlock. Seccomp waits for the payload child (see spawn_payload).
    let (landlock, abi) = ctx.confine.apply_in_init()?;
    channel
        .send(Msg::Ready { landlock, abi })
        .map_err(at(Step::WaitForParent))?;
    // The parent writes exec_event.STARTED and syncs it before answering: no run without its
    // record.
    match channel.recv().map_err(at(Step::WaitForParent))? {
        Some(Msg::Start) => {}
        _ => return Ok(125),
    }
    // The payload shares init's memory until its exec and init waits meanwhile (vfork-style):
    // no copy of init's address space to make, fault in and tear down on the way to exec.
    // spawn_payload only makes system calls with what the parent prepared.
    let payload = sys::clone::spawn_vfork(&mut || spawn_payload(ctx, channel, pinned))
        .map_err(at(Step::Fork))?;
    Ok(reap(channel, sigfd.as_fd(), payload))
}

/// Opens the executable and hashes that descriptor; Some(fd) when the digest matches.
fn pin_executable(ctx: &InitContext, want: [u8; 32]) -> io::Result<Option<i32>> {
    let fd = sfs::open_read_cloexec(&ctx.exe)?;
    let owned = channel::adopt(fd);
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = sfs::read(owned.as_fd(), &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize().as_slice() != want {
        return Ok(None);
    }
    Ok(Some(owned.into_raw_fd()))
}

/// The payload child: restore signals, seccomp, exec. Never returns. It runs in init's memory
/// (see `spawn_vfork`): system calls only, no allocation.
fn spawn_payload(ctx: &InitContext, channel: &Channel, pinned: Option<i32>) -> ! {
    // Signals were blocked for init's signalfd; a fresh program expects an empty mask.
    if let Err(e) = ssig::reset_for_exec() {
        let _ = channel.send(Msg::SetupFailed {
            step: Step::Signals,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        });
        sys::clone::exit_now(125);
    }
    // Its own process group, so a forwarded SIGINT reaches the whole job as a terminal's ^C
    // would (a shell waiting for its child ignores a SIGINT aimed at the shell alone).
    if let Err(e) = sproc::new_process_group() {
        let _ = channel.send(Msg::SetupFailed {
            step: Step::Signals,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        });
        sys::clone::exit_now(125);
    }
    // Seccomp last, so only the exec itself runs between the filter and the payload.
    if let Err((step, errno)) = ctx.confine.apply_in_payload() {
        let _ = channel.send(Msg::SetupFailed { step, errno });
        sys::clone::exit_now(125);
    }
    let err = match pinned {
        Some(fd) => sproc::execve_fd(fd, &ctx.argv_ptrs, &ctx.env_ptrs),
        None => sproc::execve(&ctx.exe, &ctx.argv_ptrs, &ctx.env_ptrs),
    };
    // The channel is close-on-exec: reaching this line means exec failed, and the parent
    // learns why from this message rather than from a guessable exit code.
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let _ = channel.send(Msg::ExecFailed { errno });
    sys::clone::exit_now(if errno == libc::ENOENT { 127 } else { 126 })
}

/// Reaps every child, forwards SIGINT/SIGTERM/SIGHUP to the payload, and returns init's exit
/// code once the payload is gone (init exiting then kills whatever the payload left behind).
fn reap(channel: &Channel, sigfd: std::os::fd::BorrowedFd<'_>, payload: libc::pid_t) -> i32 {
    loop {
        let _ = ssig::poll(&[(sigfd, libc::POLLIN)], -1);
        while let Ok(Some(sig)) = ssig::read_signal(sigfd) {
            if sig != libc::SIGCHLD {
                // The payload's group first; if it left that group, the payload alone.
                if sproc::kill(-payload, sig).is_err() {
                    let _ = sproc::kill(payload, sig);
                }
                continue;
            }
            while let Ok(w) = sproc::wait4(-1, true) {
                if w.pid <= 0 {
                    break;
                }
                if w.pid == payload {
                    let usage = sproc::children_usage()
                        .map(|(user_us, sys_us, max_rss_kib)| channel::Reaped {
                            user_us,
                            sys_us,
                            max_rss_kib,
                        })
                        .unwrap_or_else(|_| channel::Reaped::of(&w));
                    let _ = channel.send(Msg::Exited {
                        status: w.status,
                        usage,
                    });
                    return if libc::WIFEXITED(w.status) {
                        libc::WEXITSTATUS(w.status)
                    } else {
                        128 + libc::WTERMSIG(w.status)
                    };
                }
            }
        }
    }
}
