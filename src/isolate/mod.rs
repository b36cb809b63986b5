//! One module per per-process confinement mechanism. Each splits into a pure part (decide)
//! and a short `apply_*` function (the syscalls), so rules are table-tested without
//! sandboxing the test runner.
//!
//! The sandbox init calls them in this order (SPEC §4.1 steps 9–11), for these reasons:
//!
//! 1. [`caps::drop_all_capabilities`]: first, because every later step only needs rights the
//!    empty sets still grant, and nothing after it may re-gain a capability.
//! 2. [`rlimit::apply_rlimits`]: after the caps drop, so limits can only be lowered
//!    (raising a hard limit needs CAP_SYS_RESOURCE, which is gone).
//! 3. [`landlock::apply_landlock_on_current_thread`]: needs `no_new_privs` (the caller no
//!    longer has CAP_SYS_ADMIN), which the landlock crate sets just before restricting; so
//!    NNP is in force from this step on.
//! 4. [`caps::set_no_new_privs`] (set and read back): idempotent after step 3, kept
//!    as its own verified step so the report does not rely on a side effect.
//! 5. [`seccomp::apply_seccomp_on_current_thread`]: last, so as few syscalls as possible run
//!    between it and exec, and none of the steps above has to be allowed by the filter.
//!
//! # Test strategy
//!
//! Pure parts (seccomp policy and its compiled verdicts for x86_64 and aarch64 through a small
//! BPF interpreter, Landlock plans and rights, /proc parsers, rlimit decisions) are unit
//! tests. Per-thread effects (seccomp, Landlock, capabilities, no_new_privs) are applied on a
//! spawned thread in `tests/isolate_*.rs`; process-wide ones (rlimits, a seccomp kill) in a
//! re-executed copy of the test binary. `tests/isolate_stack.rs` applies the whole stack in
//! init order and runs /bin/sh, coreutils and python3 under each profile.

pub mod caps;
pub mod landlock;
pub mod mounts;
pub mod rlimit;
pub mod seccomp;
pub mod setid;
mod syscalls_aarch64;
mod syscalls_x86_64;
