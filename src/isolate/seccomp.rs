//! Seccomp: the profile's syscall allowlist plus the calls calyx always denies.
//!
//! # The filter stack
//!
//! Three classic-BPF programs are installed, in this order:
//!
//! 1. **denials** — always-denied calls ([`ALWAYS_DENIED`]) and argument checks → the deny
//!    action; everything else → ALLOW: `clone` with any `CLONE_NEW*` flag, `ioctl` with
//!    `TIOCSTI`/`TIOCLINUX`, `socket`/`socketpair` of a family the network mode does not allow.
//!    Keeping these in their own filter means no profile can switch them off, even by listing
//!    a name in its allowlist (which [`crate::profile`] also refuses).
//! 2. **clone3** → ERRNO(ENOSYS); everything else → ALLOW. clone3 passes its flags in memory
//!    a filter cannot read, so it is refused as "not implemented" and glibc falls back to
//!    `clone`, whose flags filter 1 inspects.
//! 3. **allowlist** — the profile's names (plus `clone3`) → ALLOW; anything else → the
//!    profile's deny action (ERRNO(EPERM) or KILL_PROCESS). Calls of another ABI (i386 via
//!    `int 0x80`, x32 numbers) never match a listed number; a foreign `AUDIT_ARCH` kills.
//!    It goes last because it may deny `seccomp(2)` itself (strict does), after which no
//!    further filter could be installed.
//!
//! The kernel runs every filter and keeps the most severe action (KILL, then TRAP, then ERRNO,
//! …, ALLOW last); between actions of equal severity, the one of the most recently installed
//! filter wins. As the allowlist is the newest filter, its EPERM would win a tie with the
//! clone3 filter's ENOSYS, and in a `kill` profile its KILL would beat ENOSYS outright; so the
//! allowlist always ALLOWS clone3 and leaves the answer to filter 2 (ERRNO beats ALLOW). The
//! tests pin both kernel rules and this consequence.
//!
//! Names are resolved to numbers by seccompiler's JSON frontend, per target architecture, from
//! a JSON document built in memory: one path for the native filter and for the cross-arch
//! compile test, and an unknown name is a compile error rather than a silently missing rule.
//!
//! # Argument positions
//!
//! `clone`'s flags are argument 0 on x86_64 and aarch64 alike (the two differ only in the order
//! of `tls` and `child_tid`, args 3 and 4, which are not inspected). The kernel truncates legacy
//! clone flags, `ioctl` commands and socket domains to 32 bits, so those rules compare 32-bit
//! words: setting high bits cannot slip past them.

use std::fmt;

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{Value, json};

use crate::lease::model::Network;
use crate::profile::{DenyAction, Profile, SyscallArch};

/// Calls denied under every profile (SPEC §4.2); a profile listing one is refused.
pub const ALWAYS_DENIED: &[&str] = &[
    // Mounting and changing the root: the view is fixed by calyx.
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "chroot",
    // Namespaces: no new ones, no joining others.
    "unshare",
    "setns",
    // Kernel attack surface and introspection of other processes.
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// `CLONE_NEW*` flags refused on `clone` (CLONE_NEWTIME, 0x80, cannot be passed to legacy
/// clone: that byte is the exit signal).
pub const CLONE_NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];

/// Terminal ioctls refused: TIOCSTI injects input into a terminal, TIOCLINUX can do the same
/// on a virtual console. Values from asm-generic/ioctls.h, shared by x86_64 and aarch64.
pub const DENIED_IOCTLS: &[(&str, u64)] = &[("TIOCSTI", 0x5412), ("TIOCLINUX", 0x541C)];

/// Socket families (AF_*) the network mode allows.
pub fn allowed_socket_families(network: Network) -> &'static [(&'static str, u64)] {
    const UNIX: (&str, u64) = ("AF_UNIX", 1);
    const INET: (&str, u64) = ("AF_INET", 2);
    const INET6: (&str, u64) = ("AF_INET6", 10);
    match network {
        Network::None => &[UNIX],
        Network::Loopback => &[UNIX, INET, INET6],
    }
}

/// Why a seccomp program could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// calyx has no syscall tables for this machine.
    #[error("seccomp: unsupported architecture {0} (calyx supports x86_64 and aarch64)")]
    UnsupportedArch(&'static str),
    /// seccompiler refused the filters (e.g. a syscall name unknown on that architecture).
    #[error("seccomp: compiling the filters for {arch}: {source}")]
    Compile {
        /// Target architecture.
        arch: SyscallArch,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The compiled map lacks the filter it was asked for (a seccompiler contract breach).
    #[error("seccomp: the {role} filter for {arch} is missing from the compiler output")]
    MissingFilter {
        /// Which filter.
        role: FilterRole,
        /// Target architecture.
        arch: SyscallArch,
    },
    /// The programs were compiled for another architecture than the one running.
    #[error("seccomp: programs are for {built}, this machine is {running}")]
    WrongArch {
        /// Architecture compiled for.
        built: SyscallArch,
        /// Architecture running.
        running: &'static str,
    },
    /// Installing a filter failed.
    #[error("seccomp: installing the {role} filter: {source}")]
    Install {
        /// Which filter.
        role: FilterRole,
        /// seccompiler's error (carries the errno of prctl/seccomp).
        #[source]
        source: seccompiler::Error,
    },
}

/// The three filters of the stack, in install order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterRole {
    /// Always-denied calls and argument checks (installed first).
    Denials,
    /// clone3 → ENOSYS (second).
    Clone3,
    /// The profile's allowlist (last: it may deny seccomp(2) itself).
    Allowlist,
}

impl FilterRole {
    /// The order the filters are installed in (see the module docs for why).
    pub const INSTALL_ORDER: [FilterRole; 3] = [
        FilterRole::Denials,
        FilterRole::Clone3,
        FilterRole::Allowlist,
    ];
}

impl fmt::Display for FilterRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterRole::Allowlist => "allowlist",
            FilterRole::Denials => "denials",
            FilterRole::Clone3 => "clone3",
        })
    }
}

/// Everything the filters are built from: pure data, decided from profile and network mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPolicy {
    /// Target architecture.
    pub arch: SyscallArch,
    /// Allowed names (the profile's set for `arch`, plus clone3).
    pub allow: Vec<String>,
    /// What a denied call does.
    pub on_deny: DenyAction,
    /// Network mode (decides socket families).
    pub network: Network,
}

impl SeccompPolicy {
    /// Decides the policy for `profile` under `network` on `arch`.
    pub fn decide(profile: &Profile, network: Network, arch: SyscallArch) -> SeccompPolicy {
        let mut allow: Vec<String> = profile
            .syscalls
            .names_for(arch)
            .into_iter()
            .map(str::to_owned)
            .collect();
        // The clone3 filter answers clone3; the allowlist must let it through (module docs).
        if !allow.iter().any(|n| n == "clone3") {
            allow.push("clone3".to_owned());
        }
        SeccompPolicy {
            arch,
            allow,
            on_deny: profile.on_deny,
            network,
        }
    }

    fn deny_action(&self) -> Value {
        match self.on_deny {
            DenyAction::Errno => json!({ "errno": libc::EPERM }),
            DenyAction::Kill => json!("kill_process"),
        }
    }

    /// One filter in seccompiler's JSON format (the value under the filter's name).
    pub fn filter_json(&self, role: FilterRole) -> Value {
        let (mismatch, matched, rules) = match role {
            FilterRole::Allowlist => {
                let rules: Vec<Value> =
                    self.allow.iter().map(|n| json!({ "syscall": n })).collect();
                (self.deny_action(), json!("allow"), rules)
            }
            FilterRole::Denials => (json!("allow"), self.deny_action(), self.denial_rules()),
            FilterRole::Clone3 => (
                json!("allow"),
                json!({ "errno": libc::ENOSYS }),
                vec![json!({ "syscall": "clone3" })],
            ),
        };
        json!({
            "mismatch_action": mismatch,
            "match_action": matched,
            "filter": rules,
        })
    }

    /// Rules of the denials filter: each rule that matches is a denied call.
    fn denial_rules(&self) -> Vec<Value> {
        let mut rules: Vec<Value> = ALWAYS_DENIED
            .iter()
            .map(|n| json!({ "syscall": n }))
            .collect();
        // clone with any namespace flag: one rule per flag, rules are OR-ed.
        for (name, flag) in CLONE_NAMESPACE_FLAGS {
            rules.push(json!({ "syscall": "clone", "args": [
                { "index": 0, "type": "dword", "op": { "masked_eq": flag }, "val": flag,
                  "comment": name }
            ]}));
        }
        for (name, cmd) in DENIED_IOCTLS {
            rules.push(json!({ "syscall": "ioctl", "args": [
                { "index": 1, "type": "dword", "op": "eq", "val": cmd, "comment": name }
            ]}));
        }
        // A family is denied when it differs from every allowed one (conditions are AND-ed).
        let not_allowed: Vec<Value> = allowed_socket_families(self.network)
            .iter()
            .map(|(name, af)| {
                json!({ "index": 0, "type": "dword", "op": "ne", "val": af, "comment": name })
            })
            .collect();
        for call in ["socket", "socketpair"] {
            rules.push(json!({ "syscall": call, "args": not_allowed }));
        }
        rules
    }

    /// Compiles the three filters, in install order.
    pub fn compile(&self) -> Result<SeccompPrograms, SeccompError> {
        let arch = self.arch;
        let target = match arch {
            SyscallArch::X86_64 => TargetArch::x86_64,
            SyscallArch::Aarch64 => TargetArch::aarch64,
        };
        // One document holding the three filters: seccompiler builds its name table once.
        let mut doc = serde_json::Map::new();
        for role in FilterRole::INSTALL_ORDER {
            doc.insert(role.to_string(), self.filter_json(role));
        }
        let text = Value::Object(doc).to_string();
        let mut map = seccompiler::compile_from_json(text.as_bytes(), target)
            .map_err(|source| SeccompError::Compile { arch, source })?;
        let mut filters = Vec::with_capacity(FilterRole::INSTALL_ORDER.len());
        for role in FilterRole::INSTALL_ORDER {
            let prog = map
                .remove(&role.to_string())
                .ok_or(SeccompError::MissingFilter { role, arch })?;
            filters.push((role, prog));
        }
        Ok(SeccompPrograms {
            arch,
            filters,
            allowed: self.allow.len(),
            on_deny: self.on_deny,
            network: self.network,
        })
    }
}

/// Compiled filters, ready to install; built in the parent before clone so that installing
/// them in the sandbox allocates nothing.
#[derive(Debug, Clone)]
pub struct SeccompPrograms {
    arch: SyscallArch,
    filters: Vec<(FilterRole, BpfProgram)>,
    allowed: usize,
    on_deny: DenyAction,
    network: Network,
}

impl SeccompPrograms {
    /// The architecture the programs were compiled for.
    pub fn arch(&self) -> SyscallArch {
        self.arch
    }

    /// The programs in install order.
    pub fn filters(&self) -> impl Iterator<Item = (FilterRole, &BpfProgram)> {
        self.filters.iter().map(|(r, p)| (*r, p))
    }

    /// One line for the run report, e.g.
    /// `seccomp: 3 filters, 190 syscalls allowed, deny=errno, sockets=AF_UNIX`.
    pub fn status_line(&self) -> String {
        let families: Vec<&str> = allowed_socket_families(self.network)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!(
            "seccomp: {} filters, {} syscalls allowed, deny={}, sockets={}",
            self.filters.len(),
            self.allowed,
            match self.on_deny {
                DenyAction::Errno => "errno",
                DenyAction::Kill => "kill",
            },
            families.join("|"),
        )
    }
}

/// Builds the filter stack of `profile` under `network` for the running architecture.
/// Call it in the parent, before clone: it allocates and parses JSON.
pub fn build_program(profile: &Profile, network: Network) -> Result<SeccompPrograms, SeccompError> {
    let arch =
        SyscallArch::native().ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    SeccompPolicy::decide(profile, network, arch).compile()
}

/// Installs the filters on the calling thread, in order; children and exec'd programs inherit
/// them. Sets no_new_privs first (seccompiler does, idempotently), as the kernel requires
/// without CAP_SYS_ADMIN. Call it last, right before exec (or the fork that precedes it): every
/// later syscall of the caller is filtered too. Allocates nothing.
pub fn apply_seccomp_on_current_thread(programs: &SeccompPrograms) -> Result<(), SeccompError> {
    if SyscallArch::native() != Some(programs.arch) {
        return Err(SeccompError::WrongArch {
            built: programs.arch,
            running: std::env::consts::ARCH,
        });
    }
    for (role, prog) in &programs.filters {
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install {
            role: *role,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
