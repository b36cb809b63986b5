//! Seccomp: the profile's syscall allowlist plus the calls calyx always denies, as one
//! classic-BPF program.
//!
//! # Verdicts
//!
//! For a call of the filter's architecture, by syscall number:
//!
//! - **always denied** ([`ALWAYS_DENIED`]) → the deny action, whatever the profile lists
//!   ([`crate::profile`] also refuses a profile that lists one);
//! - **not in the allowlist** → the profile's deny action (ERRNO(EPERM) or KILL_PROCESS);
//! - **clone3** → ERRNO(ENOSYS): its flags live in memory a filter cannot read, so glibc is
//!   told it does not exist and falls back to `clone`, whose flags are checked;
//! - `clone` with any `CLONE_NEW*` flag, `ioctl` with `TIOCSTI`/`TIOCLINUX`,
//!   `socket`/`socketpair` of a family the network mode does not allow → the deny action;
//! - the set-id rules of [`crate::isolate::setid`]: a set-id bit in a mode argument, or
//!   `memfd_create` without `MFD_NOEXEC_SEAL` → ERRNO(EPERM); `openat2` → ERRNO(ENOSYS)
//!   (EPERM even under a `kill` profile: these are ordinary calls with a bad argument);
//! - anything else in the allowlist → ALLOW.
//!
//! A call of another architecture (i386 through `int 0x80`, a foreign `AUDIT_ARCH`) kills the
//! process; x32 numbers (bit 30 set) are in no allowlist, so they get the deny action.
//!
//! These are exactly the verdicts the earlier stack of five filters gave (always-denied and
//! argument checks; clone3; allowlist; set-id modes; openat2) under the kernel's rule for
//! stacked filters (most severe action wins, the newest filter among equals). One program
//! says them directly: the kernel converts, JIT-compiles and caches one small program instead
//! of five, two of them long linear chains, and every call runs one filter instead of five.
//! The tests compare the program, number by number, with that five-filter stack compiled by
//! seccompiler, for both architectures, every profile, network mode and deny action.
//!
//! # Shape of the program
//!
//! The architecture check, then a binary search over ranges of syscall numbers that share a
//! verdict (about 7 comparisons for any call), each node one `JGE` whose branches go straight
//! to the next node or to the block of a verdict: a return, or one of a few argument checks.
//! The blocks come last, so every jump is forward; the default profile's program is about 130
//! instructions. A policy whose offsets would not fit the conditional jumps' 8 bits gets the
//! long form instead (each branch through a `JA`, whose offset is 32 bits; about 300
//! instructions for the default profile), so no size limit can bite. The kernel converts,
//! JIT-compiles and emulates the program (for its per-syscall action cache, which then lets
//! the calls allowed without an argument check skip it) at every run, in proportion to its
//! length: 35 against 62 us here for the two forms of the default profile.
//!
//! Names are resolved with calyx's tables for x86_64 and aarch64 (`syscalls_*.rs`), so an
//! unknown name, or one of another architecture only, is an error rather than a silently
//! missing rule.
//!
//! # Argument positions
//!
//! `clone`'s flags are argument 0 on x86_64 and aarch64 alike (the two differ only in the order
//! of `tls` and `child_tid`, args 3 and 4, which are not inspected). The kernel truncates legacy
//! clone flags, `ioctl` commands, socket domains and modes to 32 bits, so the rules compare the
//! low 32-bit word: setting high bits cannot slip past them.

use seccompiler::{BpfProgram, sock_filter};

use crate::isolate::setid;
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
    /// A name of the allowlist is not a system call of the target architecture.
    #[error("seccomp: syscall {name:?} does not exist on {arch}")]
    UnknownSyscall {
        /// The name.
        name: String,
        /// Target architecture.
        arch: SyscallArch,
    },
    /// The program was built for another architecture than the one running.
    #[error("seccomp: program is for {built}, this machine is {running}")]
    WrongArch {
        /// Architecture built for.
        built: SyscallArch,
        /// Architecture running.
        running: &'static str,
    },
    /// The policy does not fit one classic-BPF program (at most [`BPF_MAXINSNS`]
    /// instructions).
    #[error("seccomp: the policy needs more than {BPF_MAXINSNS} BPF instructions")]
    TooLong,
    /// Installing the filter failed.
    #[error("seccomp: installing the filter: {0}")]
    Install(#[source] seccompiler::Error),
    /// The profile's syscall set does not parse.
    #[error("seccomp: {0}")]
    SyscallSet(#[source] crate::profile::ProfileError),
}

/// The syscall number of `name` on `arch`, from calyx's tables.
pub fn syscall_number(arch: SyscallArch, name: &str) -> Option<u32> {
    let table = match arch {
        SyscallArch::X86_64 => super::syscalls_x86_64::TABLE,
        SyscallArch::Aarch64 => super::syscalls_aarch64::TABLE,
    };
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}

/// `AUDIT_ARCH_*` of the architecture (seccomp_data.arch).
fn audit_arch(arch: SyscallArch) -> u32 {
    match arch {
        SyscallArch::X86_64 => 0xc000_003e,
        SyscallArch::Aarch64 => 0xc000_00b7,
    }
}

/// Everything the filter is built from: pure data, decided from profile and network mode.
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

/// What the program does with one syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed whatever the arguments.
    Allow,
    /// The profile's deny action.
    Deny,
    /// ERRNO with this value, whatever the arguments and the deny action.
    Errno(u16),
    /// Decided by an argument check.
    Check(ArgCheck),
}

/// The argument checks of the program; each ends in ALLOW or a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgCheck {
    /// `clone`: any `CLONE_NEW*` flag in argument 0 → deny action.
    CloneFlags,
    /// `ioctl`: a [`DENIED_IOCTLS`] command in argument 1 → deny action.
    TerminalIoctl,
    /// `socket`/`socketpair`: a family in argument 0 the network mode does not allow → deny
    /// action.
    SocketFamily,
    /// A set-id bit in the mode argument (its index) → EPERM.
    SetIdMode(u8),
    /// `memfd_create` without `MFD_NOEXEC_SEAL` in argument 1 → EPERM.
    MemfdExec,
}

impl SeccompPolicy {
    /// Decides the policy for `profile` under `network` on `arch`.
    pub fn decide(
        profile: &Profile,
        network: Network,
        arch: SyscallArch,
    ) -> Result<SeccompPolicy, SeccompError> {
        let mut allow = profile
            .syscalls
            .names_for(arch)
            .map_err(SeccompError::SyscallSet)?;
        // clone3 is always answered, with ENOSYS: a denial (EPERM, or a kill) would stop glibc
        // from falling back to clone.
        if !allow.iter().any(|n| n == "clone3") {
            allow.push("clone3".to_owned());
        }
        Ok(SeccompPolicy {
            arch,
            allow,
            on_deny: profile.on_deny,
            network,
        })
    }

    /// The verdict for every number that is not [`Verdict::Deny`], sorted by number. Fails on
    /// a name the architecture does not have.
    pub fn verdicts(&self) -> Result<Vec<(u32, Verdict)>, SeccompError> {
        let arch = self.arch;
        let nr = |name: &str| {
            syscall_number(arch, name).ok_or_else(|| SeccompError::UnknownSyscall {
                name: name.to_owned(),
                arch,
            })
        };
        // Every allowed name first, then the few special names override their entries
        // (looked up by number in the sorted list): no scan of the special lists per name.
        let mut out: Vec<(u32, Verdict)> = self
            .allow
            .iter()
            .map(|name| Ok((nr(name)?, Verdict::Allow)))
            .collect::<Result<_, SeccompError>>()?;
        out.sort_unstable_by_key(|(n, _)| *n);
        out.dedup_by_key(|(n, _)| *n);
        let mut set = |name: &str, v: Option<Verdict>| {
            let Some(number) = syscall_number(arch, name) else {
                return;
            };
            if let Ok(i) = out.binary_search_by_key(&number, |(n, _)| *n) {
                match v {
                    Some(v) => out[i].1 = v,
                    None => {
                        out.remove(i);
                    }
                }
            }
        };
        let enosys = Verdict::Errno(libc::ENOSYS as u16);
        set("clone3", Some(enosys));
        set(setid::OPENAT2, Some(enosys));
        set("clone", Some(Verdict::Check(ArgCheck::CloneFlags)));
        set("ioctl", Some(Verdict::Check(ArgCheck::TerminalIoctl)));
        set("socket", Some(Verdict::Check(ArgCheck::SocketFamily)));
        set("socketpair", Some(Verdict::Check(ArgCheck::SocketFamily)));
        set(
            setid::MEMFD_CREATE,
            Some(Verdict::Check(ArgCheck::MemfdExec)),
        );
        for (name, arg) in setid::MODE_CALLS {
            set(name, Some(Verdict::Check(ArgCheck::SetIdMode(*arg))));
        }
        // Last: an always-denied name is denied even if the allowlist names it.
        for name in ALWAYS_DENIED {
            set(name, None);
        }
        Ok(out)
    }

    /// The deny action's return value and the allowed socket families' numbers, as the
    /// program encodes them.
    fn encoding(&self) -> (u32, Vec<u32>) {
        let deny = match self.on_deny {
            DenyAction::Errno => RET_ERRNO | libc::EPERM as u32,
            DenyAction::Kill => RET_KILL_PROCESS,
        };
        let families = allowed_socket_families(self.network)
            .iter()
            .map(|(_, af)| *af as u32)
            .collect();
        (deny, families)
    }

    /// Builds the program.
    pub fn compile(&self) -> Result<SeccompProgram, SeccompError> {
        let verdicts = self.verdicts()?;
        let (deny, families) = self.encoding();
        let filter = Emitter::program(deny, &families, audit_arch(self.arch), &verdicts)
            .ok_or(SeccompError::TooLong)?;
        Ok(SeccompProgram {
            arch: self.arch,
            filter,
            allowed: self.allow.len(),
            on_deny: self.on_deny,
            network: self.network,
        })
    }
}

/// The kernel's limit on a classic-BPF program's length.
pub const BPF_MAXINSNS: usize = 4096;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`: nr, arch, then the 64-bit args (low word first on these
/// little-endian machines).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn arg_low(index: u8) -> u32 {
    16 + 8 * u32::from(index)
}

/// A jump target: a position in the code, known once its block is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The block that answers a verdict: a return, or an argument check.
    Verdict(Verdict),
    /// A subtree of the binary search, by its first instruction's label.
    Label(usize),
}

/// Which field of an instruction a resolved target is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `k` of a `JA` (32 bits).
    Always,
    /// `jt` of a conditional jump (8 bits).
    True,
    /// `jf` of a conditional jump (8 bits).
    False,
}

/// How the binary search jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Each node one `JGE` whose two branches lead straight to a subtree or a verdict's
    /// block; the leaves are no code at all. Less than half the long form's length, but
    /// every offset must fit in 8 bits.
    Short,
    /// Each node a `JGE` over a `JA` to its right half, each leaf a `JA` to its block: any
    /// size. For policies whose short form does not fit.
    Long,
}

/// Builds the program: instructions with symbolic targets, resolved at the end.
struct Emitter<'a> {
    deny: u32,
    families: &'a [u32],
    form: Form,
    code: Vec<sock_filter>,
    /// (index of a jump instruction, the field that holds its offset, its target).
    fixups: Vec<(usize, Field, Target)>,
    /// Where each label starts, by label number, once placed.
    labels: Vec<Option<usize>>,
    /// Where each verdict's block starts (a handful).
    blocks: Vec<(Verdict, usize)>,
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

impl<'a> Emitter<'a> {
    fn new(deny: u32, families: &'a [u32], form: Form) -> Self {
        Emitter {
            deny,
            families,
            form,
            code: Vec::with_capacity(256),
            fixups: Vec::new(),
            labels: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// The program in the short form when its offsets fit, else in the long form; None when
    /// neither fits in a classic-BPF program.
    fn program(
        deny: u32,
        families: &[u32],
        arch: u32,
        verdicts: &[(u32, Verdict)],
    ) -> Option<BpfProgram> {
        let ranges = ranges(verdicts);
        Emitter::new(deny, families, Form::Short)
            .emit(arch, &ranges)
            .or_else(|| Emitter::new(deny, families, Form::Long).emit(arch, &ranges))
            .filter(|code| code.len() <= BPF_MAXINSNS)
    }

    /// The whole program in this emitter's form; None when an offset does not fit its field
    /// (only the short form's 8-bit ones can fail).
    fn emit(mut self, arch: u32, ranges: &[(u32, Verdict)]) -> Option<BpfProgram> {
        // The architecture first: numbers mean nothing under another ABI.
        self.code.push(stmt(LD_W_ABS, OFF_ARCH));
        self.code.push(jump(JMP_JEQ_K, arch, 1, 0));
        self.code.push(stmt(RET_K, RET_KILL_PROCESS));
        self.code.push(stmt(LD_W_ABS, OFF_NR));
        self.search(ranges);
        // One block per verdict the search reaches, after all of it: every jump is forward.
        for i in 0..self.fixups.len() {
            if let (_, _, Target::Verdict(v)) = self.fixups[i] {
                if !self.blocks.iter().any(|(b, _)| *b == v) {
                    self.blocks.push((v, self.code.len()));
                    self.block(v);
                }
            }
        }
        for (at, field, target) in std::mem::take(&mut self.fixups) {
            let to = match target {
                Target::Label(n) => (*self.labels.get(n)?)?,
                Target::Verdict(v) => self.blocks.iter().find(|(b, _)| *b == v)?.1,
            };
            let offset = to.checked_sub(at + 1)?;
            match field {
                Field::Always => self.code[at].k = u32::try_from(offset).ok()?,
                Field::True => self.code[at].jt = u8::try_from(offset).ok()?,
                Field::False => self.code[at].jf = u8::try_from(offset).ok()?,
            }
        }
        Some(self.code)
    }

    /// Binary search over `ranges` (start of each range, its verdict; at least one); the
    /// accumulator holds the syscall number.
    fn search(&mut self, ranges: &[(u32, Verdict)]) {
        if let [(_, v)] = ranges {
            // A leaf of the long form, or a policy with one verdict for every number.
            self.jump_to(stmt(JMP_JA, 0), Field::Always, Target::Verdict(*v));
            return;
        }
        let (left, right) = ranges.split_at(ranges.len() / 2);
        let pivot = right[0].0;
        match self.form {
            Form::Short => {
                let (to_left, to_right) = (self.subtree(left), self.subtree(right));
                // nr >= pivot: the right half; else the left one.
                let at = self.code.len();
                self.code.push(jump(JMP_JGE_K, pivot, 0, 0));
                self.fixups.push((at, Field::True, to_right));
                self.fixups.push((at, Field::False, to_left));
                for (half, target) in [(left, to_left), (right, to_right)] {
                    if let Target::Label(_) = target {
                        self.place(target);
                        self.search(half);
                    }
                }
            }
            Form::Long => {
                let to_right = self.label();
                // nr >= pivot: take the JA to the right half; else skip it into the left half.
                self.code.push(jump(JMP_JGE_K, pivot, 0, 1));
                self.jump_to(stmt(JMP_JA, 0), Field::Always, to_right);
                self.search(left);
                self.place(to_right);
                self.search(right);
            }
        }
    }

    /// Where a branch to `half` goes in the short form: straight to the verdict's block for a
    /// single range, else to a new subtree.
    fn subtree(&mut self, half: &[(u32, Verdict)]) -> Target {
        match half {
            [(_, v)] => Target::Verdict(*v),
            _ => self.label(),
        }
    }

    fn label(&mut self) -> Target {
        self.labels.push(None);
        Target::Label(self.labels.len() - 1)
    }

    /// The label `target` starts here.
    fn place(&mut self, target: Target) {
        let here = self.code.len();
        if let Target::Label(n) = target {
            if let Some(slot) = self.labels.get_mut(n) {
                *slot = Some(here);
            }
        }
    }

    fn jump_to(&mut self, ins: sock_filter, field: Field, target: Target) {
        self.fixups.push((self.code.len(), field, target));
        self.code.push(ins);
    }

    /// The code a verdict jumps to.
    fn block(&mut self, v: Verdict) {
        match v {
            Verdict::Allow => self.code.push(stmt(RET_K, RET_ALLOW)),
            Verdict::Deny => self.code.push(stmt(RET_K, self.deny)),
            Verdict::Errno(e) => self.code.push(stmt(RET_K, RET_ERRNO | u32::from(e))),
            Verdict::Check(c) => self.check(c),
        }
    }

    fn check(&mut self, c: ArgCheck) {
        let eperm = RET_ERRNO | libc::EPERM as u32;
        match c {
            ArgCheck::CloneFlags => {
                let mask = CLONE_NAMESPACE_FLAGS.iter().fold(0, |m, (_, f)| m | *f) as u32;
                self.code.push(stmt(LD_W_ABS, arg_low(0)));
                self.code.push(jump(JMP_JSET_K, mask, 0, 1));
                self.code.push(stmt(RET_K, self.deny));
                self.code.push(stmt(RET_K, RET_ALLOW));
            }
            ArgCheck::TerminalIoctl => {
                self.code.push(stmt(LD_W_ABS, arg_low(1)));
                for (_, cmd) in DENIED_IOCTLS {
                    self.code.push(jump(JMP_JEQ_K, *cmd as u32, 0, 1));
                    self.code.push(stmt(RET_K, self.deny));
                }
                self.code.push(stmt(RET_K, RET_ALLOW));
            }
            ArgCheck::SocketFamily => {
                self.code.push(stmt(LD_W_ABS, arg_low(0)));
                for af in self.families {
                    self.code.push(jump(JMP_JEQ_K, *af, 0, 1));
                    self.code.push(stmt(RET_K, RET_ALLOW));
                }
                self.code.push(stmt(RET_K, self.deny));
            }
            ArgCheck::SetIdMode(arg) => {
                self.code.push(stmt(LD_W_ABS, arg_low(arg)));
                self.code.push(jump(JMP_JSET_K, setid::SET_ID_BITS, 0, 1));
                self.code.push(stmt(RET_K, eperm));
                self.code.push(stmt(RET_K, RET_ALLOW));
            }
            ArgCheck::MemfdExec => {
                self.code.push(stmt(LD_W_ABS, arg_low(1)));
                self.code
                    .push(jump(JMP_JSET_K, setid::MFD_NOEXEC_SEAL, 0, 1));
                self.code.push(stmt(RET_K, RET_ALLOW));
                self.code.push(stmt(RET_K, eperm));
            }
        }
    }
}

/// Turns per-number verdicts (sorted, everything absent denied) into ranges covering every
/// 32-bit number: (first number of the range, verdict), neighbours with equal verdicts merged.
fn ranges(verdicts: &[(u32, Verdict)]) -> Vec<(u32, Verdict)> {
    let mut out: Vec<(u32, Verdict)> = vec![(0, Verdict::Deny)];
    let mut push = |start: u32, v: Verdict| match out.last_mut() {
        Some((s, last)) if *s == start => *last = v,
        Some((_, last)) if *last == v => {}
        _ => out.push((start, v)),
    };
    for (nr, v) in verdicts {
        push(*nr, *v);
        if let Some(next) = nr.checked_add(1) {
            push(next, Verdict::Deny);
        }
    }
    // Merging in `push` only looks back one range; a range reset to the verdict of the one
    // before it is merged here.
    out.dedup_by(|b, a| a.1 == b.1);
    out
}

/// The compiled program, ready to install; built in the parent before clone so that
/// installing it in the sandbox allocates nothing.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    arch: SyscallArch,
    filter: BpfProgram,
    allowed: usize,
    on_deny: DenyAction,
    network: Network,
}

impl SeccompProgram {
    /// The architecture the program was built for.
    pub fn arch(&self) -> SyscallArch {
        self.arch
    }

    /// The classic-BPF instructions.
    pub fn instructions(&self) -> &[sock_filter] {
        &self.filter
    }

    /// One line for the run report, e.g. `seccomp: 270 syscalls allowed, deny=errno,
    /// sockets=AF_UNIX, set-id modes refused`.
    pub fn status_line(&self) -> String {
        let families: Vec<&str> = allowed_socket_families(self.network)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!(
            "seccomp: {} syscalls allowed, deny={}, sockets={}, set-id modes refused",
            self.allowed,
            match self.on_deny {
                DenyAction::Errno => "errno",
                DenyAction::Kill => "kill",
            },
            families.join("|"),
        )
    }
}

/// Builds the program of `profile` under `network` for the running architecture.
/// Call it in the parent, before clone: it allocates.
pub fn build_program(profile: &Profile, network: Network) -> Result<SeccompProgram, SeccompError> {
    let arch =
        SyscallArch::native().ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    if let Some(program) = precompiled(profile, network, arch) {
        return Ok(program);
    }
    SeccompPolicy::decide(profile, network, arch)?.compile()
}

/// The program of a built-in profile, compiled ahead (`seccomp_builtin.rs`), when
/// `profile` still has its built-in syscall set and deny action and the table was made from
/// the sources this binary was built from. Parsing the set and compiling it took 0.14 ms
/// before the clone at every run; the copy of the table's program takes about 1 us.
///
/// The table is data written by the test `builtin_programs_are_current`, which compiles every
/// entry again and fails when one differs or the sources changed since, and rewrites the file
/// with `CALYX_BLESS=1`. `build.rs` fingerprints those sources (the syscall sets and tables,
/// this module, `setid` and `profile`); a table made from other sources is never used, only
/// slower to do without.
fn precompiled(profile: &Profile, network: Network, arch: SyscallArch) -> Option<SeccompProgram> {
    let table = current_table(
        builtin::INPUTS,
        env!("CALYX_SECCOMP_INPUTS"),
        builtin::PROGRAMS,
    )?;
    from_table(table, profile, network, arch)
}

/// `table` when the fingerprint it records is the build's, else None: a table made from
/// other sources is never used.
fn current_table<'t>(
    recorded: &str,
    built: &str,
    table: &'t [BuiltinProgram],
) -> Option<&'t [BuiltinProgram]> {
    (recorded == built).then_some(table)
}

/// The program of `table` for `profile`'s built-in set and deny action, `network` and `arch`.
fn from_table(
    table: &[BuiltinProgram],
    profile: &Profile,
    network: Network,
    arch: SyscallArch,
) -> Option<SeccompProgram> {
    let set = profile.syscalls.builtin_name()?;
    table
        .iter()
        .find(|b| {
            b.set == set && b.on_deny == profile.on_deny && b.arch == arch && b.network == network
        })
        .map(|b| SeccompProgram {
            arch,
            filter: b.filter.to_vec(),
            allowed: b.allowed,
            on_deny: b.on_deny,
            network,
        })
}

/// One program of the precompiled table.
pub(crate) struct BuiltinProgram {
    /// The built-in syscall set.
    pub set: &'static str,
    /// The profile's deny action.
    pub on_deny: DenyAction,
    /// Target architecture.
    pub arch: SyscallArch,
    /// Network mode.
    pub network: Network,
    /// How many names the policy allows ([`SeccompProgram::status_line`]).
    pub allowed: usize,
    /// The instructions.
    pub filter: &'static [sock_filter],
}

/// One instruction of the table.
pub(crate) const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Installs the program on the calling thread; children and exec'd programs inherit it. Sets
/// no_new_privs first (seccompiler does, idempotently), as the kernel requires without
/// CAP_SYS_ADMIN. Call it last, right before exec (or the fork that precedes it): every later
/// syscall of the caller is filtered too. Allocates nothing.
pub fn apply_seccomp_on_current_thread(program: &SeccompProgram) -> Result<(), SeccompError> {
    if SyscallArch::native() != Some(program.arch) {
        return Err(SeccompError::WrongArch {
            built: program.arch,
            running: std::env::consts::ARCH,
        });
    }
    seccompiler::apply_filter(&program.filter).map_err(SeccompError::Install)
}

#[rustfmt::skip]
#[path = "seccomp_builtin.rs"]
mod builtin;

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
