//! Tests of the seccomp policy: compilation for every architecture, the verdicts of the
//! program for both architectures, computed by a small classic-BPF interpreter, and its
//! equivalence with the reference stack of five filters compiled by seccompiler (combined by
//! the kernel's rules for stacked filters). The behaviour on the running kernel is tested on
//! spawned threads in `tests/isolate_seccomp.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use seccompiler::{TargetArch, sock_filter};
use serde_json::{Value, json};

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
/// The program of `profile` under `network` for `arch`, compiled now.
fn compiled(profile: &Profile, network: Network, arch: SyscallArch) -> SeccompProgram {
    SeccompPolicy::decide(profile, network, arch)
        .unwrap()
        .compile()
        .unwrap()
}

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

/// The program's answer to `call`.
fn verdict(program: &SeccompProgram, call: &Call) -> u32 {
    run(program.instructions(), call)
}

/// The kernel's combination of stacked filters (installed in slice order): run every filter,
/// newest first, keep the strictly most severe action (by signed comparison of the action
/// bits), so ties go to the newest filter.
fn stacked_verdict(stack: &[Vec<sock_filter>], call: &Call) -> u32 {
    let action = |r: u32| (r & 0xffff_0000) as i32;
    let mut ret = RET_ALLOW;
    for prog in stack.iter().rev() {
        let cur = run(prog, call);
        if action(cur) < action(ret) {
            ret = cur;
        }
    }
    ret
}

/// The reference: the five filters calyx used to install, in their install order (set-id
/// modes, openat2, denials, clone3, allowlist), compiled by seccompiler's JSON frontend, which
/// also resolves the names with its own syscall tables.
fn reference_stack(policy: &SeccompPolicy) -> Result<Vec<Vec<sock_filter>>, seccompiler::Error> {
    let deny = match policy.on_deny {
        DenyAction::Errno => json!({ "errno": libc::EPERM }),
        DenyAction::Kill => json!("kill_process"),
    };
    let filter = |mismatch: Value, matched: Value, rules: Vec<Value>| json!({ "mismatch_action": mismatch, "match_action": matched, "filter": rules });
    let dword = |index: u8, op: Value, val: u64| json!({ "index": index, "type": "dword", "op": op, "val": val });
    let exists = |name: &str| syscall_number(policy.arch, name).is_some();
    // Set-id modes: one rule per bit (rules are OR-ed); memfd_create without the seal.
    let mut setid_rules = Vec::new();
    for (name, arg) in setid::MODE_CALLS.iter().filter(|(n, _)| exists(n)) {
        for bit in [libc::S_ISUID as u64, libc::S_ISGID as u64] {
            setid_rules.push(
                json!({ "syscall": name, "args": [dword(*arg, json!({ "masked_eq": bit }), bit)] }),
            );
        }
    }
    let seal = u64::from(setid::MFD_NOEXEC_SEAL);
    setid_rules.push(
        json!({ "syscall": "memfd_create", "args": [dword(1, json!({ "masked_eq": seal }), 0)] }),
    );
    // Denials: always-denied names; clone with a namespace flag; terminal ioctls; sockets of a
    // family that differs from every allowed one (conditions are AND-ed).
    let mut denials: Vec<Value> = ALWAYS_DENIED
        .iter()
        .map(|n| json!({ "syscall": n }))
        .collect();
    for (_, flag) in CLONE_NAMESPACE_FLAGS {
        denials.push(
            json!({ "syscall": "clone", "args": [dword(0, json!({ "masked_eq": flag }), *flag)] }),
        );
    }
    for (_, cmd) in DENIED_IOCTLS {
        denials.push(json!({ "syscall": "ioctl", "args": [dword(1, json!("eq"), *cmd)] }));
    }
    let not_allowed: Vec<Value> = allowed_socket_families(policy.network)
        .iter()
        .map(|(_, af)| dword(0, json!("ne"), *af))
        .collect();
    for call in ["socket", "socketpair"] {
        denials.push(json!({ "syscall": call, "args": not_allowed }));
    }
    let allow: Vec<Value> = policy
        .allow
        .iter()
        .map(|n| json!({ "syscall": n }))
        .collect();
    let order = [
        (
            "setid",
            filter(json!("allow"), json!({ "errno": libc::EPERM }), setid_rules),
        ),
        (
            "openat2",
            filter(
                json!("allow"),
                json!({ "errno": libc::ENOSYS }),
                vec![json!({ "syscall": "openat2" })],
            ),
        ),
        ("denials", filter(json!("allow"), deny.clone(), denials)),
        (
            "clone3",
            filter(
                json!("allow"),
                json!({ "errno": libc::ENOSYS }),
                vec![json!({ "syscall": "clone3" })],
            ),
        ),
        ("allowlist", filter(deny, json!("allow"), allow)),
    ];
    let doc: serde_json::Map<String, Value> = order
        .iter()
        .map(|(n, f)| ((*n).to_owned(), f.clone()))
        .collect();
    let target = match policy.arch {
        SyscallArch::X86_64 => TargetArch::x86_64,
        SyscallArch::Aarch64 => TargetArch::aarch64,
    };
    let mut map =
        seccompiler::compile_from_json(Value::Object(doc).to_string().as_bytes(), target)?;
    Ok(order.iter().map(|(n, _)| map.remove(*n).unwrap()).collect())
}

/// Argument values that exercise every rule: zero, namespace flags, terminal ioctls, socket
/// families, set-id and ordinary modes, memfd flags, with and without high bits.
const ARG_VALUES: &[u64] = &[
    0,
    1,
    2,
    10,
    16,
    17,
    libc::SIGCHLD as u64,
    0x3d0f00,
    0x0002_0000,
    0x1000_0000 | 17,
    0x4000_0000 | (1 << 40),
    0x5401,
    0x5412,
    0x541C,
    0x5412 | (1 << 32),
    1 | (1 << 32),
    0o755,
    0o4755,
    0o2755,
    0o6000,
    0o4000 << 32,
    8,
    1 | 8,
    u64::MAX,
];

#[test]
fn the_program_gives_the_verdicts_of_the_five_filter_stack() {
    for name in builtin_names() {
        let mut profile = Profile::builtin(name).unwrap();
        for on_deny in [DenyAction::Errno, DenyAction::Kill] {
            profile.on_deny = on_deny;
            for arch in SyscallArch::ALL {
                for network in [Network::None, Network::Loopback] {
                    let policy = SeccompPolicy::decide(&profile, network, arch).unwrap();
                    let program = policy.compile().unwrap();
                    let stack = reference_stack(&policy).unwrap();
                    let audit = match arch {
                        SyscallArch::X86_64 => AUDIT_ARCH_X86_64,
                        SyscallArch::Aarch64 => AUDIT_ARCH_AARCH64,
                    };
                    let numbers = (0..600u32)
                        .chain((0..600).map(|n| n | 0x4000_0000))
                        .chain([u32::MAX, 0x8000_0000]);
                    for nr in numbers {
                        for (i, v) in ARG_VALUES.iter().enumerate() {
                            // Every argument the same value, and a rotation, so that each rule
                            // sees each value whatever argument it reads.
                            let mut args = [*v; 6];
                            args[i % 6] = ARG_VALUES[(i + 7) % ARG_VALUES.len()];
                            for arch_word in [audit, 0x4000_0003] {
                                let c = Call {
                                    nr,
                                    arch: arch_word,
                                    args,
                                };
                                assert_eq!(
                                    verdict(&program, &c),
                                    stacked_verdict(&stack, &c),
                                    "{name} {on_deny:?} {arch} {network:?} nr {nr:#x} args {args:x?} arch {arch_word:#x}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_program_is_small() {
    // The reason for one generated program: the five-filter stack was about 1,750
    // instructions, which the kernel converts, JIT-compiles and emulates for its action cache
    // at every run. The short form of the search is about 130 (the long one about 300).
    let profile = Profile::builtin("default").unwrap();
    for arch in SyscallArch::ALL {
        let program = compiled(&profile, Network::None, arch);
        let len = program.instructions().len();
        assert!(len < 160, "{arch}: {len} instructions");
    }
}

#[test]
fn the_long_form_gives_the_short_forms_verdicts() {
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        for arch in SyscallArch::ALL {
            for network in [Network::None, Network::Loopback] {
                let policy = SeccompPolicy::decide(&profile, network, arch).unwrap();
                // The compiled program is the short form: the builtin profiles fit it.
                let short = policy.compile().unwrap();
                let short = short.instructions();
                let (deny, families) = policy.encoding();
                let audit = audit_arch(arch);
                let long = Emitter::new(deny, &families, Form::Long)
                    .emit(audit, &ranges(&policy.verdicts().unwrap()))
                    .unwrap();
                assert!(long.len() > 2 * short.len(), "{name} {arch}");
                for nr in (0..600u32).chain([u32::MAX, 0x4000_0000]) {
                    for v in ARG_VALUES {
                        let c = Call {
                            nr,
                            arch: audit,
                            args: [*v; 6],
                        };
                        assert_eq!(run(short, &c), run(&long, &c), "{name} {arch} nr {nr}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_policy_too_large_for_the_short_form_takes_the_long_one() {
    // 400 ranges: the root's branch to the verdict blocks is far beyond 8 bits.
    let verdicts: Vec<(u32, Verdict)> = (0..200).map(|n| (2 * n, Verdict::Allow)).collect();
    let ranges = ranges(&verdicts);
    let emitter = || Emitter::new(RET_KILL_PROCESS, &[], Form::Short);
    assert!(emitter().emit(AUDIT_ARCH_X86_64, &ranges).is_none());
    let program = Emitter::program(RET_KILL_PROCESS, &[], AUDIT_ARCH_X86_64, &verdicts).unwrap();
    assert!(program.len() > 600, "{} instructions", program.len());
    for nr in (0..500).chain([u32::MAX]) {
        let c = Call {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args: [0; 6],
        };
        let want = if nr < 400 && nr % 2 == 0 {
            RET_ALLOW
        } else {
            RET_KILL_PROCESS
        };
        assert_eq!(run(&program, &c), want, "nr {nr}");
    }
}

#[test]
fn one_verdict_for_every_number_is_a_program_too() {
    for form in [Form::Short, Form::Long] {
        let program = Emitter::new(RET_KILL_PROCESS, &[], form)
            .emit(AUDIT_ARCH_X86_64, &ranges(&[]))
            .unwrap();
        for nr in [0, 1, 1000, u32::MAX] {
            let c = Call {
                nr,
                arch: AUDIT_ARCH_X86_64,
                args: [0; 6],
            };
            assert_eq!(run(&program, &c), RET_KILL_PROCESS, "{form:?} nr {nr}");
        }
    }
}

#[test]
fn calyx_tables_agree_with_seccompiler_on_every_profile_name() {
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        for arch in SyscallArch::ALL {
            let policy = SeccompPolicy::decide(&profile, Network::None, arch).unwrap();
            for call in policy
                .allow
                .iter()
                .map(String::as_str)
                .chain(ALWAYS_DENIED.iter().copied())
            {
                let one = SeccompPolicy {
                    allow: vec![call.to_owned()],
                    ..policy.clone()
                };
                // seccompiler's allowlist for that one name: the JEQ it emits carries the number.
                let stack = reference_stack(&one).unwrap();
                let nr = syscall_number(arch, call).unwrap();
                let numbers: Vec<u32> = stack[4]
                    .iter()
                    .filter(|i| i.code == 0x15 && i.k != audit_arch(arch))
                    .map(|i| i.k)
                    .collect();
                assert_eq!(numbers, [nr], "{arch} {call}");
            }
        }
    }
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
                let policy = SeccompPolicy::decide(&profile, network, arch).unwrap();
                let progs = policy
                    .compile()
                    .unwrap_or_else(|e| panic!("{name} {arch} {network:?}: {e}"));
                assert!(!progs.instructions().is_empty());
                // seccompiler's tables know every name too.
                reference_stack(&policy).unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
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
            .unwrap()
            .compile()
            .unwrap_err();
        assert!(err.to_string().contains("not_a_syscall"), "{err}");
    }
    // A name valid only on x86_64 must be marked so, or the aarch64 compile fails.
    profile.syscalls = SyscallSet::parse("unmarked", "open\n").unwrap();
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::X86_64)
            .unwrap()
            .compile()
            .is_ok()
    );
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::Aarch64)
            .unwrap()
            .compile()
            .is_err()
    );
    profile.syscalls = SyscallSet::parse("marked", "x86_64: open\n").unwrap();
    assert!(
        SeccompPolicy::decide(&profile, Network::None, SyscallArch::Aarch64)
            .unwrap()
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
            let progs = compiled(&profile, network, arch);
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
    let progs = compiled(&profile, Network::None, SyscallArch::X86_64);
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
        let progs = compiled(&profile, Network::None, arch);
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
fn clone3_left_out_of_the_allowlist_is_denied_like_in_the_stack() {
    // decide() always allows clone3 so that it gets ENOSYS; a policy without it denies it,
    // as the stack did (its allowlist was the newest filter, so its EPERM won the tie).
    let profile = Profile::builtin("default").unwrap();
    for arch in SyscallArch::ALL {
        let policy = SeccompPolicy::decide(&profile, Network::None, arch).unwrap();
        assert!(policy.allow.iter().any(|n| n == "clone3"));
        let mut without = policy.clone();
        without.allow.retain(|n| n != "clone3");
        let progs = without.compile().unwrap();
        assert_eq!(verdict(&progs, &call(arch, "clone3", [0; 6])), EPERM);
        let stack = reference_stack(&without).unwrap();
        assert_eq!(
            stacked_verdict(&stack, &call(arch, "clone3", [0; 6])),
            EPERM
        );
    }
}

#[test]
fn status_line_names_the_policy() {
    let profile = Profile::builtin("default").unwrap();
    let progs = compiled(&profile, Network::Loopback, SyscallArch::X86_64);
    let line = progs.status_line();
    assert!(line.starts_with("seccomp: "), "{line}");
    assert!(
        line.ends_with("deny=errno, sockets=AF_UNIX|AF_INET|AF_INET6, set-id modes refused"),
        "{line}"
    );
}

/// The text of `seccomp_builtin.rs` for the sources of this build: every built-in profile's
/// program for each architecture and network mode, compiled now.
fn builtin_table_text() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "//! The seccomp programs of the built-in profiles, compiled ahead (see\n\
         //! `seccomp::precompiled`). Data written by the test `builtin_programs_are_current`\n\
         //! (`CALYX_BLESS=1 cargo test --lib builtin_programs_are_current`), never by hand.\n\
         \n\
         use super::{BuiltinProgram, insn};\n\
         use crate::lease::model::Network;\n\
         use crate::profile::{DenyAction, SyscallArch};\n\
         \n\
         /// The fingerprint of the sources this table was made from (`build.rs`).\n",
    );
    let _ = writeln!(
        out,
        "pub(super) const INPUTS: &str = \"{}\";\n",
        env!("CALYX_SECCOMP_INPUTS")
    );
    out.push_str("pub(super) static PROGRAMS: &[BuiltinProgram] = &[\n");
    let mut done = Vec::new();
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        let set = profile.syscalls.builtin_name().unwrap().to_owned();
        if done.contains(&(set.clone(), profile.on_deny)) {
            continue;
        }
        done.push((set.clone(), profile.on_deny));
        for arch in SyscallArch::ALL {
            for network in [Network::None, Network::Loopback] {
                let program = compiled(&profile, network, arch);
                let _ = writeln!(
                    out,
                    "    BuiltinProgram {{\n        set: {set:?},\n        on_deny: DenyAction::{:?},\n        arch: SyscallArch::{arch:?},\n        network: Network::{network:?},\n        allowed: {},\n        filter: &[",
                    profile.on_deny, program.allowed
                );
                for chunk in program.instructions().chunks(4) {
                    let line: Vec<String> = chunk
                        .iter()
                        .map(|i| format!("insn({:#06x}, {}, {}, {:#x})", i.code, i.jt, i.jf, i.k))
                        .collect();
                    let _ = writeln!(out, "            {},", line.join(", "));
                }
                out.push_str("        ],\n    },\n");
            }
        }
    }
    out.push_str("];\n");
    out
}

/// The precompiled table is what the sources compile to now, and it records their fingerprint
/// (so the runner uses it); with `CALYX_BLESS=1` the test writes it instead.
#[test]
fn builtin_programs_are_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/isolate/seccomp_builtin.rs");
    let text = builtin_table_text();
    if std::env::var_os("CALYX_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == text,
        "{} is not what the syscall sets, tables and seccomp code compile to now: \
         regenerate it with `CALYX_BLESS=1 cargo test --lib builtin_programs_are_current`",
        path.display()
    );
}

/// A run under a built-in profile gets the table's program, the very one compiling the set
/// gives; a profile whose set or deny action was changed gets its own program compiled.
#[test]
fn built_in_profiles_take_the_precompiled_program() {
    let arch = SyscallArch::native().unwrap();
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        for network in [Network::None, Network::Loopback] {
            let ahead = precompiled(&profile, network, arch)
                .unwrap_or_else(|| panic!("{name} {network:?}: no precompiled program"));
            let now = compiled(&profile, network, arch);
            assert_eq!(
                ahead.instructions(),
                now.instructions(),
                "{name} {network:?}"
            );
            assert_eq!(ahead.status_line(), now.status_line(), "{name} {network:?}");
            assert_eq!(
                build_program(&profile, network).unwrap().instructions(),
                now.instructions()
            );
        }
        let mut reparsed = profile.clone();
        let text =
            reparsed
                .syscalls
                .entries()
                .unwrap()
                .iter()
                .fold(String::new(), |mut s, (a, n)| {
                    if let Some(a) = a {
                        s.push_str(&format!("{a}: "));
                    }
                    s.push_str(n);
                    s.push('\n');
                    s
                });
        reparsed.syscalls = SyscallSet::parse(name, &text).unwrap();
        assert!(
            precompiled(&reparsed, Network::None, arch).is_none(),
            "{name}: parsed set"
        );
        let mut other_deny = profile.clone();
        other_deny.on_deny = match profile.on_deny {
            DenyAction::Errno => DenyAction::Kill,
            DenyAction::Kill => DenyAction::Errno,
        };
        let built = build_program(&other_deny, Network::None).unwrap();
        let now = compiled(&other_deny, Network::None, arch);
        assert_eq!(
            built.instructions(),
            now.instructions(),
            "{name}: other deny action"
        );
    }
}

/// A table that records another fingerprint than the build's is not used, whatever it holds.
#[test]
fn a_table_made_from_other_sources_is_not_used() {
    let profile = Profile::builtin("default").unwrap();
    let arch = SyscallArch::native().unwrap();
    let built = env!("CALYX_SECCOMP_INPUTS");
    let found = |recorded: &str| {
        current_table(recorded, built, builtin::PROGRAMS)
            .and_then(|t| from_table(t, &profile, Network::None, arch))
    };
    assert!(found(built).is_some());
    let mut other: Vec<u8> = built.bytes().collect();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    assert!(found(std::str::from_utf8(&other).unwrap()).is_none());
    assert!(found("").is_none());
    assert!(found(&format!("{built}0")).is_none());
}
