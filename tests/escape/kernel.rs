//! Kernel interfaces the payload must not reach: mounts, namespaces, ptrace, the always-denied
//! syscalls (also through other syscall ABIs), kernel knobs, capabilities.

use crate::common::{PAYLOAD_DONE, Sandbox, User};

pub(crate) fn mount_tmpfs(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
c = ctypes.c_char_p
attempt("mount", lambda: sysc(165, c(b"tmpfs"), c(b"/tmp"), c(b"tmpfs"), ctypes.c_ulong(0), None))
attempt("fsopen", lambda: sysc(430, c(b"tmpfs"), 0))
attempt("pivot_root", lambda: sysc(155, c(b"/tmp"), c(b"/tmp")))
attempt("umount", lambda: sysc(166, c(b"/proc"), 2))
# The rest of the mount API, the classic chroot escape, and rewriting our own id maps.
attempt("open_tree", lambda: sysc(428, -100, c(b"/"), 1))
attempt("move_mount", lambda: sysc(429, -100, c(b"/tmp"), -100, c(b"/"), 0))
attempt("fsmount", lambda: sysc(432, 0, 0, 0))
attempt("mount_setattr", lambda: sysc(442, -100, c(b"/usr"), 0, None, 0))
attempt("chroot", lambda: sysc(161, c(b"/tmp")))
attempt("uid_map", lambda: open("/proc/self/uid_map", "w").write("0 0 4294967295\n"))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("mount", &["EPERM"])
        .assert_value_in("fsopen", &["EPERM"])
        .assert_value_in("pivot_root", &["EPERM"])
        .assert_value_in("umount", &["EPERM"])
        .assert_value_in("open_tree", &["EPERM"])
        .assert_value_in("move_mount", &["EPERM"])
        .assert_value_in("fsmount", &["EPERM"])
        .assert_value_in("mount_setattr", &["EPERM"])
        .assert_value_in("chroot", &["EPERM"])
        .assert_value_in("uid_map", &["EPERM", "EACCES"]);
}

pub(crate) fn unshare_new_user_namespace(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17
attempt("unshare_user", lambda: sysc(272, CLONE_NEWUSER))
attempt("unshare_mnt", lambda: sysc(272, CLONE_NEWNS))
def clone_user():
    r = sysc(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    os.waitpid(r, 0)
    return "cloned"
attempt("clone_user", clone_user)
attempt("setns", lambda: sysc(308, os.open("/proc/self/ns/user", os.O_RDONLY), CLONE_NEWUSER))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("unshare_user", &["EPERM"])
        .assert_value_in("unshare_mnt", &["EPERM"])
        .assert_value_in("clone_user", &["EPERM"])
        .assert_value_in("setns", &["EPERM"]);
}

pub(crate) fn clone3_is_enosys(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
# A zero-sized clone_args: the kernel itself would say EINVAL; the filter says ENOSYS first.
attempt("clone3", lambda: sysc(435, None, 0))
def fork_works():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
attempt("fork", fork_works)
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("clone3", &["ENOSYS"])
        .assert_line("fork: OK 7");
}

pub(crate) fn ptrace_init(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
attempt("attach_init", lambda: sysc(101, PTRACE_ATTACH, 1, 0, 0))
attempt("seize_init", lambda: sysc(101, PTRACE_SEIZE, 1, 0, 0))
attempt("attach_parent", lambda: sysc(101, PTRACE_ATTACH, os.getppid(), 0, 0))
attempt("vm_readv_init", lambda: sysc(310, 1, 0, 0, 0, 0, 0))
attempt("attach_host_pid", lambda: sysc(101, PTRACE_ATTACH, int(sys.argv[1]), 0, 0))
sys.exit(42)
"#,
        &[&std::process::id().to_string()],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("attach_init", &["EPERM"])
        .assert_value_in("seize_init", &["EPERM"])
        .assert_value_in("attach_parent", &["EPERM"])
        .assert_value_in("vm_readv_init", &["EPERM"])
        .assert_value_in("attach_host_pid", &["EPERM", "ESRCH"]);
}

pub(crate) fn always_denied_syscalls(user: User) {
    // SPEC §4.2's always-denied calls, each with arguments that would succeed or fail with
    // something other than EPERM without the filter (so EPERM shows the filter answered).
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
c = ctypes.c_char_p
KEY_SPEC_PROCESS_KEYRING = ctypes.c_long(-2)
attempt("keyctl", lambda: sysc(250, 0, ctypes.c_long(-3), 0))
attempt("add_key", lambda: sysc(248, c(b"user"), c(b"calyx-escape"), c(b"x"), 1, KEY_SPEC_PROCESS_KEYRING))
attempt("request_key", lambda: sysc(249, c(b"user"), c(b"calyx-none"), None, 0))
attempt("bpf", lambda: sysc(321, 0, None, 0))
attempt("perf_event_open", lambda: sysc(298, None, 0, -1, -1, 0))
attempt("userfaultfd", lambda: sysc(323, 1))
attempt("io_uring_setup", lambda: sysc(425, 1, None))
attempt("open_by_handle_at", lambda: sysc(304, -100, None, 0))
attempt("kexec_load", lambda: sysc(246, 0, 0, None, 0))
attempt("init_module", lambda: sysc(175, None, 0, c(b"")))
attempt("finit_module", lambda: sysc(313, -1, c(b""), 0))
attempt("process_vm_writev", lambda: sysc(311, 1, None, 0, None, 0, 0))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE);
    for call in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "open_by_handle_at",
        "kexec_load",
        "init_module",
        "finit_module",
        "process_vm_writev",
    ] {
        out.assert_value_in(call, &["EPERM"]);
    }
}

pub(crate) fn seccomp_other_abis(user: User) {
    // A filter that only knows x86_64 numbers is bypassed through the i386 ABI (int 0x80)
    // or the x32 ABI (nr | 0x40000000). unshare(CLONE_NEWUSER) is tried through both, each
    // in a child so that a SIGSYS kill is an answer, not the end of the payload.
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
import mmap, struct
def in_child(tag, fn):
    pid = os.fork()
    if pid == 0:
        try:
            r = fn()
            print(f"{tag}: returned {r}", flush=True)
        except OSError as e:
            print(f"{tag}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        print(f"{tag}: signal {os.WTERMSIG(st)}", flush=True)
def i386_unshare():
    # push rbx; mov eax, 310 (i386 unshare); mov ebx, CLONE_NEWUSER; int 0x80; pop rbx; ret
    code = (b"\x53\xb8" + struct.pack("<I", 310) + b"\xbb" + struct.pack("<I", 0x10000000)
            + b"\xcd\x80\x5b\xc3")
    buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
in_child("i386", i386_unshare)
in_child("x32", lambda: sysc(0x40000000 | 272, 0x10000000))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE);
    // Denied (-EPERM = -1, -ENOSYS = -38), killed (SIGSYS 31; SIGSEGV 11 without ia32
    // emulation), or the executable mapping itself refused: never a new user namespace.
    out.assert_value_in(
        "i386",
        &[
            "returned -1",
            "returned -38",
            "signal 31",
            "signal 11",
            "EPERM",
            "EACCES",
        ],
    );
    out.assert_value_in("x32", &["EPERM", "ENOSYS", "signal 31"]);
}

pub(crate) fn write_kernel_knobs(user: User) {
    // Opened for writing only, never written: if an open succeeds the test fails without
    // having touched the knob.
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
for tag, p in [("sysrq", "/proc/sysrq-trigger"),
               ("core_pattern", "/proc/sys/kernel/core_pattern"),
               ("drop_caches", "/proc/sys/vm/drop_caches"),
               ("uevent_helper", "/sys/kernel/uevent_helper"),
               ("kmsg", "/dev/kmsg"),
               ("mem", "/dev/mem")]:
    attempt(tag, lambda: os.close(os.open(p, os.O_WRONLY)) or "opened")
print(f"uid_map: {open('/proc/self/uid_map').read().split()}")
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE);
    for knob in [
        "sysrq",
        "core_pattern",
        "drop_caches",
        "uevent_helper",
        "kmsg",
        "mem",
    ] {
        out.assert_value_in(knob, &["EACCES", "EPERM", "EROFS", "ENOENT"]);
    }
}

pub(crate) fn capabilities_all_zero(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
        print(f"{k}: {v.strip()}")
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        out.assert_value_in(cap, &["0000000000000000"]);
    }
    out.assert_value_in("NoNewPrivs", &["1"])
        .assert_value_in("Seccomp", &["2"]);
}
