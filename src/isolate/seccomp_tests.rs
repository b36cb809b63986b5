//! Tests of the seccomp policy: compilation for every architecture, and the verdicts of the
//! compiled filter stack for both architectures, computed by a small classic-BPF interpreter
//! that follows the kernel's rules for combining filters. The behaviour on the running kernel
//! is tested on spawned threads in `tests/isolate_seccomp.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use seccompiler::sock_filter;

use super::*;
use crate::profile::{SyscallSet, builtin_names};

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// One system call as a filter sees it.
struct Call {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Call {
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr,
            4 => self.arch,
            o if (16..64).contains(&o) => {
                let arg = self.args[((o - 16) / 8) as usize];
                if (o - 16) % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            o => panic!("load at unexpected offset {o}"),
        }
    }
}

/// Runs one classic-BPF program (the subset seccompiler emits) on `call`.
fn run(prog: &[sock_filter], call: &Call) -> u32 {
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let ins = &prog[pc];
        pc += 1;
        match ins.code {
            0x20 => acc = call.word(ins.k), // LD | W | ABS
            0x54 => acc &= ins.k,           // ALU | AND | K
            0x06 => return ins.k,           // RET | K
            0x05 => pc += ins.k as usize,   // JMP | JA
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match ins.code {
                    0x15 => acc == ins.k,  // JEQ
                    0x25 => acc > ins.k,   // JGT
                    0x35 => acc >= ins.k,  // JGE
                    _ => acc & ins.k != 0, // JSET
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            code => panic!("unexpected BPF opcode {code:#x}"),
        }
    }
}

/// The kernel's combination: run every filter, newest first, keep the strictly most severe
/// action (by signed comparison of the action bits), so ties go to the newest filter.
fn verdict(programs: &SeccompPrograms, call: &Call) -> u32 {
    let action = |r: u32| (r & 0xffff_0000) as i32;
    let mut ret = RET_ALLOW;
    let all: Vec<_> = programs.filters().collect();
    for (_, prog) in all.iter().rev() {
        let cur = run(prog, call);
        if action(cur) < action(ret) {
            ret = cur;
        }
    }
    ret
}

/// Numbers of the calls the table uses: (name, x86_64, aarch64).
const NUMBERS: &[(&str, u32, u32)] = &[
    ("read", 0, 63),
    ("getpid", 39, 172),
    ("mount", 165, 40),
    ("unshare", 272, 97),
    ("clone", 56, 220),
    ("clone3", 435, 435),
    ("socket", 41, 198),
    ("socketpair", 53, 199),
    ("ioctl", 16, 29),
    ("ptrace", 101, 117),
    ("io_uring_setup", 425, 425),
    ("bpf", 321, 280),
    ("reboot", 169, 142),
];

fn call(arch: SyscallArch, name: &str, args: [u64; 6]) -> Call {
    let &(_, x86, arm) = NUMBERS.iter().find(|(n, _, _)| *n == name).unwrap();
    match arch {
        SyscallArch::X86_64 => Call {
            nr: x86,
            arch: AUDIT_ARCH_X86_64,
            args,
        },
        SyscallArch::Aarch64 => Call {
            nr: arm,
            arch: AUDIT_ARCH_AARCH64,
            args,
        },
    }
}

#[test]
fn number_table_matches_libc_on_this_machine() {
    let native = SyscallArch::native().unwrap();
    let libc_numbers: &[(&str, libc::c_long)] = &[
        ("read", libc::SYS_read),
        ("getpid", libc::SYS_getpid),
        ("mount", libc::SYS_mount),
        ("unshare", libc::SYS_unshare),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
        ("socket", libc::SYS_socket),
        ("socketpair", libc::SYS_socketpair),
        ("ioctl", libc::SYS_ioctl),
        ("ptrace", libc::SYS_ptrace),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("bpf", libc::SYS_bpf),
        ("reboot", libc::SYS_reboot),
    ];
    for (name, nr) in libc_numbers {
        assert_eq!(i64::from(call(native, name, [0; 6]).nr), *nr, "{name}");
    }
    // The ioctl request type differs between libcs (c_ulong, c_int).
    #[allow(clippy::unnecessary_cast)]
    let tiocsti = libc::TIOCSTI as u64;
    assert_eq!(DENIED_IOCTLS[0].1, tiocsti);
}

#[test]
fn every_profile_compiles_for_every_arch_and_network() {
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        for arch in SyscallArch::ALL {
            for network in [Network::None, Network::Loopback] {
                let progs = SeccompPolicy::decide(&profile, network, arch)
                    .compile()
                    .unwrap_or_else(|e| panic!("{name} {arch} {network:?}: {e}"));
                assert_eq!(progs.filters().count(), 3);
            }
        }
    }
}

#[test]
fn a_bogus_syscall_name_fails_to_compile() {
    let mut profile = Profile::builtin("default").unwrap();
    profile.syscalls = SyscallSet::parse("bogus", "read write\nnot_a_syscall\n").unwrap();
    for arch in SyscallArch::ALL {
        let err = SeccompPolicy::decide(&profile, Network::None, arch)
            .compile()
            .unwrap_err();
        assert!(err.to_string().contains("not_a_syscall"), "{err}");
    }
    // A name valid only on x86_64 must be marked so, or the aarch64 compile fails.
    profile.syscalls = SyscallSet::parse("unmarked", "open\n").unwrap();
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::X86_64)
            .compile()
            .is_ok()
    );
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::Aarch64)
            .compile()
            .is_err()
    );
    profile.syscalls = SyscallSet::parse("marked", "x86_64: open\n").unwrap();
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::Aarch64)
            .compile()
            .is_ok()
    );
}

const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

#[test]
fn verdict_table_for_both_architectures() {
    let profile = Profile::builtin("default").unwrap();
    let newuser = 0x1000_0000u64;
    let sigchld = libc::SIGCHLD as u64;
    // (network, call, args, expected)
    let table: &[(Network, &str, [u64; 6], u32)] = &[
        (Network::None, "read", [0; 6], RET_ALLOW),
        (Network::None, "getpid", [0; 6], RET_ALLOW),
        (Network::None, "reboot", [0; 6], EPERM),
        (Network::None, "mount", [0; 6], EPERM),
        (Network::None, "unshare", [newuser, 0, 0, 0, 0, 0], EPERM),
        (Network::None, "unshare", [0; 6], EPERM),
        (Network::None, "ptrace", [0; 6], EPERM),
        (Network::None, "bpf", [0; 6], EPERM),
        (Network::None, "io_uring_setup", [0; 6], EPERM),
        (Network::None, "clone3", [0; 6], ENOSYS),
        // fork-like clone passes; any namespace flag is refused, even with high bits set.
        (Network::None, "clone", [sigchld, 0, 0, 0, 0, 0], RET_ALLOW),
        (Network::None, "clone", [0x3d0f00, 0, 0, 0, 0, 0], RET_ALLOW),
        (
            Network::None,
            "clone",
            [sigchld | newuser, 0, 0, 0, 0, 0],
            EPERM,
        ),
        (Network::None, "clone", [0x0002_0000, 0, 0, 0, 0, 0], EPERM),
        (
            Network::None,
            "clone",
            [0x4000_0000 | (1 << 40), 0, 0, 0, 0, 0],
            EPERM,
        ),
        // ioctl: TIOCSTI and TIOCLINUX refused, also with garbage in the upper 32 bits
        // (the kernel truncates the command to 32 bits); TCGETS passes.
        (Network::None, "ioctl", [0, 0x5412, 0, 0, 0, 0], EPERM),
        (
            Network::None,
            "ioctl",
            [0, 0x5412 | (1 << 32), 0, 0, 0, 0],
            EPERM,
        ),
        (Network::None, "ioctl", [0, 0x541C, 0, 0, 0, 0], EPERM),
        (Network::None, "ioctl", [0, 0x5401, 0, 0, 0, 0], RET_ALLOW),
        // Sockets by family and network mode.
        (Network::None, "socket", [1, 1, 0, 0, 0, 0], RET_ALLOW),
        (Network::None, "socket", [2, 1, 0, 0, 0, 0], EPERM),
        (Network::None, "socket", [10, 1, 0, 0, 0, 0], EPERM),
        (Network::None, "socket", [16, 3, 0, 0, 0, 0], EPERM),
        (Network::None, "socketpair", [1, 1, 0, 0, 0, 0], RET_ALLOW),
        (Network::None, "socketpair", [2, 1, 0, 0, 0, 0], EPERM),
        (Network::Loopback, "socket", [2, 1, 0, 0, 0, 0], RET_ALLOW),
        (Network::Loopback, "socket", [10, 2, 0, 0, 0, 0], RET_ALLOW),
        (Network::Loopback, "socket", [16, 3, 0, 0, 0, 0], EPERM),
        (Network::Loopback, "socket", [17, 3, 0, 0, 0, 0], EPERM),
        // An AF_UNIX value smuggled in the upper half is still AF_UNIX to the kernel.
        (
            Network::None,
            "socket",
            [1 | (1 << 32), 1, 0, 0, 0, 0],
            RET_ALLOW,
        ),
    ];
    for arch in SyscallArch::ALL {
        for network in [Network::None, Network::Loopback] {
            let progs = SeccompPolicy::decide(&profile, network, arch)
                .compile()
                .unwrap();
            for (net, name, args, want) in table {
                if *net != network {
                    continue;
                }
                let got = verdict(&progs, &call(arch, name, *args));
                assert_eq!(
                    got, *want,
                    "{arch} {network:?} {name}({args:x?}): got {got:#x}"
                );
            }
        }
    }
}

#[test]
fn foreign_abis_are_refused() {
    let profile = Profile::builtin("default").unwrap();
    let progs = SeccompPolicy::decide(&profile, Network::None, SyscallArch::X86_64)
        .compile()
        .unwrap();
    // x32 numbers share AUDIT_ARCH_X86_64 but never match an allowlisted number.
    let x32_read = Call {
        nr: 0x4000_0000,
        arch: AUDIT_ARCH_X86_64,
        args: [0; 6],
    };
    assert_eq!(verdict(&progs, &x32_read), EPERM);
    // i386 (int 0x80) calls carry another AUDIT_ARCH: killed.
    let i386 = Call {
        nr: 3,
        arch: 0x4000_0003,
        args: [0; 6],
    };
    assert_eq!(verdict(&progs, &i386), RET_KILL_PROCESS);
}

#[test]
fn kill_profiles_kill_denied_calls_but_clone3_still_gets_enosys() {
    let mut profile = Profile::builtin("default").unwrap();
    profile.on_deny = DenyAction::Kill;
    for arch in SyscallArch::ALL {
        let progs = SeccompPolicy::decide(&profile, Network::None, arch)
            .compile()
            .unwrap();
        assert_eq!(
            verdict(&progs, &call(arch, "reboot", [0; 6])),
            RET_KILL_PROCESS
        );
        assert_eq!(
            verdict(&progs, &call(arch, "mount", [0; 6])),
            RET_KILL_PROCESS
        );
        assert_eq!(
            verdict(&progs, &call(arch, "socket", [16, 3, 0, 0, 0, 0])),
            RET_KILL_PROCESS
        );
        assert_eq!(verdict(&progs, &call(arch, "clone3", [0; 6])), ENOSYS);
        assert_eq!(verdict(&progs, &call(arch, "read", [0; 6])), RET_ALLOW);
    }
}

#[test]
fn the_allowlist_must_allow_clone3_for_enosys_to_win() {
    // The allowlist is installed last, so among ERRNO answers its EPERM wins (the kernel's
    // "newest filter wins among equals" rule): that is why decide() always allows clone3.
    let profile = Profile::builtin("default").unwrap();
    for arch in SyscallArch::ALL {
        let policy = SeccompPolicy::decide(&profile, Network::None, arch);
        assert!(policy.allow.iter().any(|n| n == "clone3"));
        let mut without = policy.clone();
        without.allow.retain(|n| n != "clone3");
        let progs = without.compile().unwrap();
        assert_eq!(verdict(&progs, &call(arch, "clone3", [0; 6])), EPERM);
        let roles: Vec<FilterRole> = progs.filters().map(|(r, _)| r).collect();
        assert_eq!(
            roles,
            [
                FilterRole::Denials,
                FilterRole::Clone3,
                FilterRole::Allowlist
            ]
        );
    }
}

#[test]
fn status_line_names_the_policy() {
    let profile = Profile::builtin("default").unwrap();
    let progs = SeccompPolicy::decide(&profile, Network::Loopback, SyscallArch::X86_64)
        .compile()
        .unwrap();
    let line = progs.status_line();
    assert!(line.starts_with("seccomp: 3 filters, "), "{line}");
    assert!(
        line.ends_with("deny=errno, sockets=AF_UNIX|AF_INET|AF_INET6"),
        "{line}"
    );
}
