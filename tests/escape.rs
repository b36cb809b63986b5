//! Escape suite (SPEC §8, issue #3): each test is one attack run inside `calyx-run` by the
//! real binaries, as root and as `nobody`. Each asserts that the attack failed inside with the
//! expected error, that the payload reached its end (exit [`PAYLOAD_DONE`]), and that the host
//! side is untouched afterwards.
//!
//! Payloads are Python (present on the host and in the default profile's view) using raw
//! x86_64 syscall numbers through ctypes where the standard library has no wrapper.
//!
//! Reviewing the suite itself: `CALYX_TEST_VERBOSE=1 cargo test --test escape -- --nocapture`
//! prints what every payload saw; `CALYX_TEST_UNSANDBOXED=1` runs the payloads as nobody
//! straight on the host, where every test should fail except those the host already denies
//! an unprivileged user (mount, packet sockets, kernel knobs, writing root's binaries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;
#[path = "escape/exec.rs"]
mod exec;
#[path = "escape/grants.rs"]
mod grants;
#[path = "escape/kernel.rs"]
mod kernel;
#[path = "escape/network.rs"]
mod network;
#[path = "escape/process.rs"]
mod process;

use exec::*;
use grants::*;
use kernel::*;
use network::*;
use process::*;

use std::path::Path;

/// Errors that mean "you cannot read that": not in the view, or Landlock said no.
const READ_DENIED: &[&str] = &["ENOENT", "EACCES", "EPERM"];
/// Errors that mean "you cannot write there".
const WRITE_DENIED: &[&str] = &["ENOENT", "EACCES", "EPERM", "EROFS"];

both_users!(
    // grants
    read_outside_grant,
    read_via_symlink_in_write_grant,
    read_via_dotdot_from_grant,
    write_outside_grant,
    tamper_lease_and_audit_from_inside,
    forge_audit_lines_through_argv,
    grant_swapped_for_symlink_during_setup,
    write_grant_swapped_for_symlink_during_setup,
    fill_tmp,
    mount_flags,
    mounts_private_where_the_host_shares,
    landlock_beneath_the_mounts,
    // exec
    exec_from_write_only_grant,
    exec_bypasses,
    setuid_binary,
    plant_setuid_in_write_grant,
    overwrite_runner_binary,
    // kernel
    mount_tmpfs,
    unshare_new_user_namespace,
    clone3_is_enosys,
    ptrace_init,
    always_denied_syscalls,
    seccomp_other_abis,
    write_kernel_knobs,
    capabilities_all_zero,
    // network
    connect_host_listener_network_none,
    connect_host_listener_network_loopback,
    netlink_socket,
    packet_socket,
    rare_socket_families,
    connect_host_abstract_unix_socket,
    host_sysv_shared_memory,
    // process
    kill_host_process,
    tiocsti_on_stdin,
    caller_env_secret,
    caller_open_fd,
    caller_closed_stdio,
    survive_runner_sigkill,
    outlive_timeout,
    daemon_outlives_payload,
    proc_shows_only_sandbox,
    cwd_inside_new_root,
    hostname_not_hosts,
);

/// A test path as `&str` (they are all UTF-8), for payload arguments.
fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
