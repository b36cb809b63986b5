//! The run's stages (SPEC §4.1): the parent on the host, calyx's init as pid 1 of the sandbox,
//! and the channel between them.
//!
//! ```text
//! parent (calyx-run)                      init (pid 1, new user/mnt/pid/net/ipc/uts/cgroup ns)
//!  verify → plan → prepare (BPF, Landlock,
//!  C strings, view ops); block signals
//!  clone (fork-style, CLONE_PIDFD) ─────────► PDEATHSIG(SIGKILL); wait for Go (EOF = parent gone)
//!  setgroups deny, gid_map, uid_map; Go ───► not dumpable; view on tmpfs; pivot_root; detach host
//!                                            hostname, lo; close fds > 3; setsid; pin exe (sha256)
//!                                            drop caps; rlimits; no_new_privs; Landlock
//!  Ready(landlock) ◄──────────────────────── report
//!  check floor; STARTED + fdatasync; Start ► vfork ► payload (in init's memory until exec):
//!                                            own pgrp; signals reset; seccomp program; exec
//!  poll(pidfd, signalfd, channel):           reap all; forward INT/TERM/HUP to the payload group
//!  timeout → TERM, 2 s, SIGKILL init         Exited(status) ◄ payload ends; init exits (ns dies)
//!  wait4(init) → usage; classify; FINISHED
//! ```
//!
//! # Threat model
//!
//! The payload is hostile. It runs with the caller's uid but no capabilities, sees only the
//! planned view, cannot ptrace or signal init (non-dumpable, pid-1 signal rules), and dies with
//! the runner. init is calyx code: it is Landlocked, capability-less and no_new_privs, but not
//! seccomp-filtered, because it must keep reaping and forwarding after the payload starts and
//! never interprets anything the payload sends it beyond wait statuses.
//!
//! # Compatibility
//!
//! Needs Linux 5.13+ (Landlock ABI 1 floor; openat2, open_tree, move_mount, mount_setattr and
//! pidfds are all older). Works as root and as any unprivileged user with user namespaces.
//!
//! # Test strategy
//!
//! End to end through the real binary (tests/runner_smoke.rs), as root and as nobody; the channel
//! codec and the pure planner are unit- and table-tested.

pub mod channel;
pub mod confine;
pub mod init;
pub mod parent;
pub mod resources;

use std::ffi::CString;
use std::ptr;

use crate::isolate::mounts::PreparedView;
use crate::plan::Plan;
use confine::Confinement;
use init::InitContext;

/// Turns the plan into init's ready-to-use context (C strings, pointer arrays, the view), in
/// the parent, before the clone.
pub fn build_init_context(plan: &Plan, confine: Confinement) -> Result<InitContext, String> {
    let c = |s: &str, what: &str| {
        CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
    };
    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|a| c(a, "argument"))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = plan
        .env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}"), "environment entry"))
        .collect::<Result<_, _>>()?;
    let exe = argv
        .first()
        .cloned()
        .ok_or_else(|| "empty command".to_owned())?;
    let exe_sha256 = match &plan.exe_sha256 {
        None => None,
        Some(h) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out).map_err(|e| {
                format!(
                    "commands[{}].sha256 {h:?} is not 64 hex digits: {e}",
                    plan.rule_index
                )
            })?;
            Some(out)
        }
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(ptr::null());
    let view = PreparedView::prepare(&plan.mounts, &plan.cwd).map_err(|e| e.to_string())?;
    Ok(InitContext {
        view,
        network: plan.network,
        exe,
        exe_sha256,
        argv,
        argv_ptrs,
        env,
        env_ptrs,
        confine,
    })
}
