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

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Net, PAYLOAD_DONE, Running, Sandbox, User, Wiring, kill_pids, pids_with_marker, set_mode,
    unique,
};

/// Errors that mean "you cannot read that": not in the view, or Landlock said no.
const READ_DENIED: &[&str] = &["ENOENT", "EACCES", "EPERM"];
/// Errors that mean "you cannot write there".
const WRITE_DENIED: &[&str] = &["ENOENT", "EACCES", "EPERM", "EROFS"];

both_users!(
    read_outside_grant,
    read_via_symlink_in_write_grant,
    read_via_dotdot_from_grant,
    write_outside_grant,
    exec_from_write_only_grant,
    connect_host_listener_network_none,
    connect_host_listener_network_loopback,
    netlink_socket,
    packet_socket,
    mount_tmpfs,
    unshare_new_user_namespace,
    clone3_is_enosys,
    ptrace_init,
    kill_host_process,
    tiocsti_on_stdin,
    caller_env_secret,
    caller_open_fd,
    survive_runner_sigkill,
    setuid_binary,
    proc_shows_only_sandbox,
    cwd_inside_new_root,
    capabilities_all_zero,
    hostname_not_hosts,
    connect_host_abstract_unix_socket,
    always_denied_syscalls,
    overwrite_runner_binary,
    write_kernel_knobs,
    tamper_lease_and_audit_from_inside,
    outlive_timeout,
    fill_tmp,
    mount_flags,
    host_sysv_shared_memory,
    plant_setuid_in_write_grant,
    grant_swapped_for_symlink_during_setup,
    seccomp_other_abis,
    exec_bypasses,
);

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn read_outside_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    // World-readable: for nobody too, the sandbox must be the only thing in the way.
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    let granted = sb.mkdir("granted", 0o755);
    sb.file("granted/ok.txt", "fine", 0o644);
    let mut sb = sb.read(&granted);
    let out = sb.run_py(
        user,
        r#"
attempt("control", lambda: open(sys.argv[1] + "/ok.txt").read())
attempt("secret", lambda: open(sys.argv[2]).read())
attempt("listdir", lambda: os.listdir(os.path.dirname(sys.argv[2])))
attempt("passwd_shadow", lambda: open("/etc/shadow").read())
sys.exit(42)
"#,
        &[s(&granted), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("control: OK 'fine'")
        .assert_value_in("secret", READ_DENIED)
        .assert_value_in("listdir", READ_DENIED)
        .assert_value_in("passwd_shadow", READ_DENIED)
        .assert_absent(&secret_value);
}

fn read_via_symlink_in_write_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    let work = sb.mkdir("work", 0o755);
    // Planted from the host side before the run: an absolute link out of the grant.
    std::os::unix::fs::symlink(&secret, work.join("planted")).unwrap();
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
w, secret = sys.argv[1], sys.argv[2]
attempt("planted", lambda: open(w + "/planted").read())
attempt("make_link", lambda: os.symlink(secret, w + "/mine"))
attempt("own_link", lambda: open(w + "/mine").read())
attempt("relative_link", lambda: os.symlink("../hidden/secret.txt", w + "/rel"))
attempt("own_relative", lambda: open(w + "/rel").read())
attempt("proc_root", lambda: open("/proc/self/root" + secret).read())
sys.exit(42)
"#,
        &[s(&work), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("planted", READ_DENIED)
        .assert_value_in("own_link", READ_DENIED)
        .assert_value_in("own_relative", READ_DENIED)
        .assert_value_in("proc_root", READ_DENIED)
        .assert_absent(&secret_value);
    // Making a link inside a write grant is allowed by default (strict denies symlink(2));
    // following it out is what must fail.
    out.assert_value_in("make_link", &["OK None", "EPERM"]);
    assert_eq!(fs::read_to_string(&secret).unwrap(), secret_value);
}

fn read_via_dotdot_from_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    sb.file("sibling.txt", &secret_value, 0o644);
    let granted = sb.mkdir("granted", 0o755);
    let mut sb = sb.read(&granted);
    let out = sb.run_py(
        user,
        r#"
g = sys.argv[1]
attempt("dotdot_abs", lambda: open(g + "/../hidden/secret.txt").read())
attempt("dotdot_sibling", lambda: open(g + "/../sibling.txt").read())
os.chdir(g)
attempt("dotdot_rel", lambda: open("../hidden/secret.txt").read())
attempt("dotdot_deep", lambda: open("../../../../../../" + sys.argv[2]).read())
sys.exit(42)
"#,
        &[s(&granted), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("dotdot_abs", READ_DENIED)
        .assert_value_in("dotdot_sibling", READ_DENIED)
        .assert_value_in("dotdot_rel", READ_DENIED)
        .assert_value_in("dotdot_deep", READ_DENIED)
        .assert_absent(&secret_value);
}

fn write_outside_grant(user: User) {
    let sb = Sandbox::new();
    // World-writable host targets, so only the sandbox stands in the way for nobody too.
    let outside = sb.mkdir("outside", 0o777);
    let victim = sb.file("outside/victim.txt", "original", 0o666);
    let ro = sb.mkdir("ro", 0o777);
    let ro_file = sb.file("ro/file.txt", "read-only", 0o666);
    let work = sb.mkdir("work", 0o755);
    let mut sb = sb.read(&ro).write(&work);
    let out = sb.run_py(
        user,
        r#"
outside, ro, w = sys.argv[1], sys.argv[2], sys.argv[3]
attempt("control", lambda: open(w + "/ok.txt", "w").write("ok"))
attempt("victim", lambda: open(outside + "/victim.txt", "w").write("pwned"))
attempt("create", lambda: open(outside + "/new.txt", "w").write("pwned"))
attempt("ro_write", lambda: open(ro + "/file.txt", "w").write("pwned"))
attempt("ro_create", lambda: open(ro + "/new.txt", "w").write("pwned"))
attempt("ro_unlink", lambda: os.unlink(ro + "/file.txt"))
attempt("ro_chmod", lambda: os.chmod(ro + "/file.txt", 0o777))
sys.exit(42)
"#,
        &[s(&outside), s(&ro), s(&work)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("control: OK 2")
        .assert_value_in("victim", WRITE_DENIED)
        .assert_value_in("create", WRITE_DENIED)
        .assert_value_in("ro_write", WRITE_DENIED)
        .assert_value_in("ro_create", WRITE_DENIED)
        .assert_value_in("ro_unlink", WRITE_DENIED)
        .assert_value_in("ro_chmod", WRITE_DENIED);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "original");
    assert!(
        !outside.join("new.txt").exists(),
        "a file appeared outside the grant"
    );
    assert_eq!(fs::read_to_string(&ro_file).unwrap(), "read-only");
    assert!(
        !ro.join("new.txt").exists(),
        "a file appeared in a read-only grant"
    );
    assert_eq!(fs::read_to_string(work.join("ok.txt")).unwrap(), "ok");
}

fn exec_from_write_only_grant(user: User) {
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let t = work.join("true");
    fs::copy("/usr/bin/true", &t).unwrap();
    set_mode(&t, 0o755);
    let mut sb = sb.write(&work).command(s(&t));
    let out = sb.run_py(
        user,
        r#"
t = sys.argv[1]
attempt("stat", lambda: os.stat(t).st_mode & 0o777)
attempt("exec", lambda: os.execv(t, [t]))
sys.exit(42)
"#,
        &[s(&t)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("stat: OK 493")
        .assert_value_in("exec", &["EACCES", "EPERM"]);
    // Named as the command itself, it must not run either (true would exit 0).
    let direct = sb.run_as(user, &[s(&t)]);
    assert!(
        matches!(direct.code(), 126 | 77),
        "running {t:?} from a write-only grant: {direct}"
    );
}

fn connect_host_listener(user: User, net: Net, allowed: &[&str]) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut sb = Sandbox::new().network(net);
    let out = sb.run_py(
        user,
        r#"
port = int(sys.argv[1])
def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(addr)
    return "connected"
attempt("connect4", lambda: connect(socket.AF_INET, ("127.0.0.1", port)))
attempt("connect6", lambda: connect(socket.AF_INET6, ("::ffff:127.0.0.1", port, 0, 0)))
sys.exit(42)
"#,
        &[&port],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("connect4", allowed)
        .assert_value_in("connect6", allowed);
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener got a connection: {other:?}\n{out}"),
    }
}

fn connect_host_listener_network_none(user: User) {
    // Only AF_UNIX sockets (seccomp EPERM) and Landlock denies TCP connect (EACCES).
    connect_host_listener(user, Net::None, &["EPERM", "EACCES"]);
}

fn connect_host_listener_network_loopback(user: User) {
    // The sandbox's own `lo` is up but nothing listens there: refused, never the host's.
    connect_host_listener(user, Net::Loopback, &["ECONNREFUSED"]);
}

fn raw_socket(user: User, family: u32, proto: u32) {
    for net in [Net::None, Net::Loopback] {
        let mut sb = Sandbox::new().network(net);
        let out = sb.run_py(
            user,
            r#"
family, proto = int(sys.argv[1]), int(sys.argv[2])
attempt("raw", lambda: socket.socket(family, socket.SOCK_RAW, proto).fileno())
attempt("dgram", lambda: socket.socket(family, socket.SOCK_DGRAM, proto).fileno())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).fileno() >= 0)
sys.exit(42)
"#,
            &[&family.to_string(), &proto.to_string()],
        );
        out.assert_code(PAYLOAD_DONE)
            .assert_line("unix: OK True")
            .assert_value_in("raw", &["EPERM", "EACCES"])
            .assert_value_in("dgram", &["EPERM", "EACCES"]);
    }
}

fn netlink_socket(user: User) {
    // AF_NETLINK = 16, NETLINK_ROUTE = 0: normally open to any user, so only calyx stops it.
    raw_socket(user, 16, 0);
}

fn packet_socket(user: User) {
    // AF_PACKET = 17, protocol htons(ETH_P_ALL = 3) = 0x0300.
    raw_socket(user, 17, 0x0300);
}

fn mount_tmpfs(user: User) {
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
c = ctypes.c_char_p
attempt("mount", lambda: sysc(165, c(b"tmpfs"), c(b"/tmp"), c(b"tmpfs"), ctypes.c_ulong(0), None))
attempt("fsopen", lambda: sysc(430, c(b"tmpfs"), 0))
attempt("pivot_root", lambda: sysc(155, c(b"/tmp"), c(b"/tmp")))
attempt("umount", lambda: sysc(166, c(b"/proc"), 2))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("mount", &["EPERM"])
        .assert_value_in("fsopen", &["EPERM"])
        .assert_value_in("pivot_root", &["EPERM"])
        .assert_value_in("umount", &["EPERM"]);
}

fn unshare_new_user_namespace(user: User) {
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

fn clone3_is_enosys(user: User) {
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

fn ptrace_init(user: User) {
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

fn kill_host_process(user: User) {
    // The victim runs as the same user as calyx-run, so only the sandbox protects it.
    let mut argv = user.prefix();
    argv.extend(["/usr/bin/sleep", "60"].map(Into::into));
    let mut victim = Running::start(&argv, &[], None);
    let pid = victim.pid().to_string();
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
import signal
pid = int(sys.argv[1])
attempt("kill_host_pid", lambda: os.kill(pid, signal.SIGKILL))
attempt("pidfd_open", lambda: sysc(434, pid, 0))
# kill(-1) reaches every process the caller may signal; only try it when the host pid is
# invisible, so a broken pid namespace cannot take the host down with the test.
if os.path.exists(f"/proc/{pid}") or os.getpid() > 10:
    print("kill_all: NOT TRIED (host pids visible)")
else:
    attempt("kill_all", lambda: os.kill(-1, signal.SIGKILL))
sys.exit(42)
"#,
        &[&pid],
    );
    let alive = victim.child.try_wait().unwrap().is_none();
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("kill_host_pid", &["ESRCH", "EPERM"])
        .assert_value_in("pidfd_open", &["ESRCH", "EPERM"]);
    // kill(-1) skips init and the caller; with nothing else in the namespace that is ESRCH.
    assert!(
        out.value("kill_all")
            .is_some_and(|v| v.starts_with("OK") || v == "ESRCH"),
        "kill(-1) inside the sandbox should only reach the sandbox: {out}"
    );
    assert!(
        alive,
        "the host process {pid} was killed from the sandbox: {out}"
    );
}

fn tiocsti_on_stdin(user: User) {
    let mut sb = Sandbox::new().wiring(Wiring::Pty);
    let out = sb.run_py(
        user,
        r#"
import fcntl, termios
print(f"isatty: {os.isatty(0)}", flush=True)
attempt("tiocsti", lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x"))
attempt("tioclinux", lambda: fcntl.ioctl(0, 0x541C, b"\x06\x00"))
print(f"sid_is_self: {os.getsid(0) == os.getpid()}", flush=True)
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("tiocsti", &["EPERM"])
        .assert_value_in("tioclinux", &["EPERM"]);
    eprintln!("tiocsti: payload saw isatty = {:?}", out.value("isatty"));
}

fn caller_env_secret(user: User) {
    let secret = unique("envsecret");
    let mut sb = Sandbox::new().caller_env("CALYX_TEST_SECRET", &secret);
    let out = sb.run_py(
        user,
        r#"
for k, v in sorted(os.environ.items()):
    print(f"env {k}={v}")
attempt("init_environ", lambda: open("/proc/1/environ", "rb").read())
attempt("parent_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
attempt("self_environ", lambda: open("/proc/self/environ", "rb").read())
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_absent(&secret)
        .assert_absent("CALYX_TEST_SECRET");
}

fn caller_open_fd(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("fdsecret");
    let secret = sb.file("fd-secret.txt", &secret_value, 0o600);
    let mut sb = sb.wiring(Wiring::LeakFd7(secret));
    let out = sb.run_py(
        user,
        r#"
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
print(f"fds: {fds}")
attempt("fd7", lambda: os.read(7, 200))
for fd in range(3, 64):
    try:
        data = os.pread(fd, 200, 0)
        print(f"fd{fd} readable: {data!r}")
    except OSError:
        pass
def init_fds():
    out = []
    for f in os.listdir("/proc/1/fd"):
        try:
            out.append(open(f"/proc/1/fd/{f}", "rb").read(200))
        except OSError as e:
            out.append(errno.errorcode.get(e.errno))
    return out
attempt("init_fds", init_fds)
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("fd7", &["EBADF"])
        .assert_absent(&secret_value);
    let fds = out.value("fds").unwrap_or_default();
    // 0-2 and the directory listing /proc/self/fd itself (3): nothing else may exist.
    assert!(
        fds == "[0, 1, 2]" || fds == "[0, 1, 2, 3]",
        "unexpected fds in the payload: {fds}\n{out}"
    );
}

fn survive_runner_sigkill(user: User) {
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let marker = unique("calyx-escape-marker");
    let hb = work.join("hb");
    let mut sb = sb.write(&work).timeout_secs(60);
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
import time
hb = sys.argv[1] + "/hb"
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open(hb, "a") as f:
                f.write("x")
            time.sleep(0.05)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(60)
"#
    );
    let mut run = sb.spawn_as(user, &[common::PYTHON, "-c", &code, s(&work), &marker]);
    let until = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&hb).map(|m| m.len()).unwrap_or(0) < 3 {
        if Instant::now() > until || run.child.try_wait().unwrap().is_some() {
            let out = run.finish(Duration::ZERO);
            kill_pids(&pids_with_marker(&marker));
            panic!("the heartbeat never started: {out}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let before_kill = pids_with_marker(&marker);
    assert!(
        !before_kill.is_empty(),
        "marker search found nothing while running"
    );
    run.child.kill().unwrap();
    let out = run.finish(Duration::from_secs(2));
    // Give pid-namespace teardown a moment, then the heartbeat must stand still.
    let mut survivors = pids_with_marker(&marker);
    let until = Instant::now() + Duration::from_secs(3);
    while !survivors.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
        survivors = pids_with_marker(&marker);
    }
    let len1 = fs::metadata(&hb).unwrap().len();
    thread::sleep(Duration::from_millis(500));
    let len2 = fs::metadata(&hb).unwrap().len();
    kill_pids(&survivors);
    assert!(
        survivors.is_empty(),
        "sandbox processes outlived the SIGKILLed runner: {survivors:?} (were {before_kill:?})\n{out}"
    );
    assert_eq!(
        len1, len2,
        "the heartbeat kept growing after the runner died\n{out}"
    );
}

fn status_field<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

fn setuid_binary(user: User) {
    let sb = Sandbox::new();
    let dir = sb.mkdir("suid", 0o755);
    let cat = dir.join("cat");
    fs::copy("/usr/bin/cat", &cat).unwrap();
    common::chown(&cat, 0);
    // setuid and setgid root; chmod after chown, which clears the bits.
    set_mode(&cat, 0o6755);
    if user == User::Nobody {
        // Control on the host: the copy really is setuid root there, so what follows
        // measures the sandbox and not a filesystem that ignores the bit.
        let mut argv = user.prefix();
        argv.extend([cat.clone().into_os_string(), "/proc/self/status".into()]);
        let host = Running::start(&argv, &[], None).finish(common::RUN_DEADLINE);
        assert_eq!(
            status_field(&host.stdout, "Uid:").get(1),
            Some(&"0"),
            "{host}"
        );
    }
    let mut sb = sb
        .read(&dir)
        .exec(&dir)
        .commands(&[&format!("{} /proc/self/status", s(&cat))]);
    let out = sb.run_as(user, &[s(&cat), "/proc/self/status"]);
    out.assert_code(0);
    let uid = status_field(&out.stdout, "Uid:");
    let gid = status_field(&out.stdout, "Gid:");
    assert!(
        uid.len() == 4 && uid.iter().all(|u| *u == uid[0]),
        "uid changed: {uid:?}\n{out}"
    );
    assert!(
        gid.len() == 4 && gid.iter().all(|g| *g == gid[0]),
        "gid changed: {gid:?}\n{out}"
    );
    if user == User::Nobody {
        assert_ne!(uid[1], "0", "nobody became root: {out}");
    }
    for cap in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&out.stdout, cap),
            ["0000000000000000"],
            "{cap} after exec of a setuid binary\n{out}"
        );
    }
}

fn proc_shows_only_sandbox(user: User) {
    let host_init = fs::read("/proc/1/cmdline").unwrap();
    let host_init = String::from_utf8_lossy(&host_init).replace('\0', " ");
    let me = std::process::id().to_string();
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(f"pids: {pids}")
print(f"count: {len(pids)}")
print(f"self: {os.getpid()}")
attempt("init", lambda: open("/proc/1/cmdline", "rb").read().replace(b"\0", b" ").decode())
attempt("init_comm", lambda: open("/proc/1/comm").read().strip())
attempt("host_test_pid", lambda: open(f"/proc/{sys.argv[1]}/cmdline", "rb").read())
sys.exit(42)
"#,
        &[&me],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("host_test_pid", &["ENOENT"]);
    let count: usize = out.value("count").unwrap_or("999").parse().unwrap();
    assert!(count <= 5, "the payload sees {count} processes: {out}");
    let pid: u32 = out.value("self").unwrap_or("999").parse().unwrap();
    assert!(
        pid <= 5,
        "the payload's pid is {pid}, not in a fresh pid namespace: {out}"
    );
    let init = out.value("init").unwrap_or_default();
    let comm = out.value("init_comm").unwrap_or_default();
    assert!(
        !init.contains(host_init.trim()),
        "pid 1 inside is the host's init: {out}"
    );
    assert!(
        init.contains("calyx") || comm.contains("calyx"),
        "pid 1 inside is not calyx's init: {out}"
    );
}

fn cwd_inside_new_root(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("cwdsecret");
    let cwd = sb.mkdir("caller-cwd", 0o755);
    sb.file("caller-cwd/cwd-secret.txt", &secret_value, 0o644);
    let mut sb = sb.caller_cwd(&cwd);
    let out = sb.run_py(
        user,
        r#"
attempt("getcwd", os.getcwd)
attempt("same_as_path", lambda: os.path.samestat(os.stat("."), os.stat(os.getcwd())))
attempt("open_secret", lambda: open("cwd-secret.txt").read())
attempt("listdir", lambda: os.listdir("."))
attempt("up", lambda: os.listdir("../../../.."))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("same_as_path: OK True")
        .assert_value_in("open_secret", READ_DENIED)
        .assert_absent(&secret_value);
    let got = out.value("getcwd").unwrap_or_default();
    assert!(
        got.starts_with("OK '/") && !got.contains("unreachable"),
        "cwd is not inside the new root: {out}"
    );
}

fn capabilities_all_zero(user: User) {
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

fn hostname_not_hosts(user: User) {
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host_name = host_name.trim().to_owned();
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
print(f"hostname: {socket.gethostname()}")
attempt("sethostname", lambda: sysc(170, ctypes.c_char_p(b"pwned"), 5))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("sethostname", &["EPERM"]);
    assert_ne!(out.value("hostname"), Some(host_name.as_str()), "{out}");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        host_name
    );
}

fn connect_host_abstract_unix_socket(user: User) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    // Abstract sockets are per network namespace and bypass the filesystem: a host daemon
    // listening on one (X11, dbus, container runtimes) must stay out of reach.
    let name = unique("calyx-abstract");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    for net in [Net::None, Net::Loopback] {
        let mut sb = Sandbox::new().network(net);
        let out = sb.run_py(
            user,
            r#"
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect("\0" + sys.argv[1])
    return "connected"
attempt("abstract", connect)
sys.exit(42)
"#,
            &[&name],
        );
        out.assert_code(PAYLOAD_DONE)
            .assert_value_in("abstract", &["ECONNREFUSED", "EPERM", "EACCES"]);
    }
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host abstract socket got a connection: {other:?}"),
    }
}

fn always_denied_syscalls(user: User) {
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

fn file_fingerprint(p: &Path) -> (u64, std::time::SystemTime, Vec<u8>) {
    let meta = fs::metadata(p).unwrap();
    let head = fs::read(p).unwrap().into_iter().take(4096).collect();
    (meta.len(), meta.modified().unwrap(), head)
}

fn overwrite_runner_binary(user: User) {
    // CVE-2019-5736 class: reach the runner's binary through /proc/<init>/exe and write it.
    let runner = common::run_bin();
    let python = fs::canonicalize(common::PYTHON).unwrap();
    let before = (file_fingerprint(&runner), file_fingerprint(&python));
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
attempt("init_exe_link", lambda: os.readlink("/proc/1/exe"))
attempt("init_exe_write", lambda: os.close(os.open("/proc/1/exe", os.O_WRONLY)) or "opened")
attempt("init_exe_read", lambda: len(open("/proc/1/exe", "rb").read(64)))
attempt("self_exe_write", lambda: os.close(os.open("/proc/self/exe", os.O_WRONLY)) or "opened")
attempt("python_write", lambda: os.close(os.open(os.path.realpath(sys.executable), os.O_WRONLY)) or "opened")
sys.exit(42)
"#,
        &[],
    );
    let denied = &["EACCES", "EPERM", "ETXTBSY", "EROFS", "ENOENT"];
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("init_exe_write", denied)
        .assert_value_in("init_exe_read", denied)
        .assert_value_in("self_exe_write", denied)
        .assert_value_in("python_write", denied);
    let after = (file_fingerprint(&runner), file_fingerprint(&python));
    assert!(
        before == after,
        "a host binary changed during the run: {out}"
    );
}

fn write_kernel_knobs(user: User) {
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

fn tamper_lease_and_audit_from_inside(user: User) {
    let mut sb = Sandbox::new();
    let lease = sb.prepared_lease();
    let audit = sb.audit_log();
    let trust = sb.trust().to_owned();
    let lease_before = fs::read(&lease).unwrap();
    let trust_before = fs::read(&trust).unwrap();
    let mark = unique("pwned");
    let cmd_code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
# Reversed, so the audit log's own copy of argv cannot be mistaken for a successful write.
mark = sys.argv[4][::-1]
for tag, p in [("lease", sys.argv[1]), ("audit", sys.argv[2]), ("trust", sys.argv[3])]:
    attempt(tag, lambda: open(p, "a").write(mark))
sys.exit(42)
"#
    );
    let out = sb.run_with_lease(
        user,
        &lease,
        &[
            common::PYTHON,
            "-c",
            &cmd_code,
            s(&lease),
            s(&audit),
            s(&trust),
            &mark,
        ],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("lease", WRITE_DENIED)
        .assert_value_in("audit", WRITE_DENIED)
        .assert_value_in("trust", WRITE_DENIED);
    assert_eq!(fs::read(&lease).unwrap(), lease_before, "the lease changed");
    assert_eq!(
        fs::read(&trust).unwrap(),
        trust_before,
        "the trust policy changed"
    );
    let log = fs::read_to_string(&audit).unwrap_or_default();
    let written: String = mark.chars().rev().collect();
    assert!(
        !log.contains(&written),
        "the payload wrote into the audit log:\n{log}"
    );
}

fn outlive_timeout(user: User) {
    // The payload ignores SIGTERM and leaves a double-forked, SIGTERM-ignoring heartbeat
    // behind: the wall-clock limit must still end everything (SPEC §4.2: exit 124).
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let marker = unique("calyx-timeout-marker");
    let hb = work.join("hb");
    let mut sb = sb.write(&work).timeout_secs(2);
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
hb = sys.argv[1] + "/hb"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open(hb, "a") as f:
                f.write("x")
            time.sleep(0.05)
    os._exit(0)
while True:
    time.sleep(1)
"#
    );
    let out = sb.run_as(user, &[common::PYTHON, "-c", &code, s(&work), &marker]);
    let mut survivors = pids_with_marker(&marker);
    let until = Instant::now() + Duration::from_secs(3);
    while !survivors.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
        survivors = pids_with_marker(&marker);
    }
    kill_pids(&survivors);
    assert!(
        survivors.is_empty(),
        "processes outlived the timeout: {survivors:?}\n{out}"
    );
    out.assert_code(124);
    assert!(
        out.elapsed < Duration::from_secs(12),
        "the 2 s timeout took {:?}\n{out}",
        out.elapsed
    );
    let len1 = fs::metadata(&hb).map(|m| m.len()).unwrap_or(0);
    assert!(
        len1 > 0,
        "the heartbeat never ran, the test measured nothing\n{out}"
    );
    thread::sleep(Duration::from_millis(300));
    let len2 = fs::metadata(&hb).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        len1, len2,
        "the heartbeat kept going after the timeout\n{out}"
    );
}

fn fill_tmp(user: User) {
    // The sandbox's /tmp is a size-capped tmpfs: filling it stops at the cap (ENOSPC) and
    // costs the host nothing.
    let sb = Sandbox::new();
    let spec = sb.file(
        "limits.json",
        r#"{"limits": {"tmp_bytes": 8388608}}"#,
        0o644,
    );
    let mut sb = sb.issue_arg("--from").issue_arg(s(&spec));
    let out = sb.run_py(
        user,
        r#"
chunk = b"\0" * (1 << 20)
total = 0
def fill():
    global total
    with open("/tmp/fill", "wb") as f:
        for _ in range(64):
            f.write(chunk)
            f.flush()
            total += len(chunk)
    return total
attempt("fill", fill)
print(f"total: {total}")
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("fill", &["ENOSPC"]);
    let total: u64 = out.value("total").unwrap_or("0").parse().unwrap();
    assert!(
        total <= 8 << 20,
        "wrote {total} bytes into an 8 MiB /tmp\n{out}"
    );
}

fn mount_flags(user: User) {
    // SPEC §4.2: every mount nosuid and nodev (device binds under /dev excepted, they would
    // not work otherwise), what is not granted exec is noexec, read grants read-only, and
    // nothing of the host is mounted beyond the profile's paths and the grants.
    let sb = Sandbox::new();
    let r = sb.mkdir("r", 0o755);
    let w = sb.mkdir("w", 0o755);
    let x = sb.mkdir("x", 0o755);
    let mut sb = sb.read(&r).write(&w).exec(&x);
    let out = sb.run_py(
        user,
        r#"
for line in open("/proc/self/mountinfo"):
    f = line.split()
    print(f"mount {f[4]} {f[5]}")
attempt("dev_create", lambda: open("/dev/planted", "w").write("x"))
attempt("root_create", lambda: open("/planted", "w").write("x"))
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("dev_create", WRITE_DENIED)
        .assert_value_in("root_create", WRITE_DENIED);
    let mounts: Vec<(&str, Vec<&str>)> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .filter_map(|l| l.split_once(' '))
        .map(|(point, opts)| (point, opts.split(',').collect()))
        .collect();
    assert!(mounts.len() >= 5, "too few mounts parsed: {out}");
    let find = |want: &Path| {
        mounts
            .iter()
            .find(|(p, _)| Path::new(p) == want)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{want:?} is not mounted: {out}"))
    };
    for (point, opts) in &mounts {
        assert!(opts.contains(&"nosuid"), "{point} lacks nosuid: {out}");
        if !point.starts_with("/dev/") {
            assert!(opts.contains(&"nodev"), "{point} lacks nodev: {out}");
        }
        let known = [
            "/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/tmp", "/proc", "/dev",
        ]
        .iter()
        .any(|k| point == k || point.starts_with(&format!("{k}/")));
        assert!(known, "unexpected host mount {point} in the sandbox: {out}");
    }
    for noexec in [Path::new("/tmp"), &r, &w] {
        assert!(
            find(noexec).contains(&"noexec"),
            "{noexec:?} is not noexec: {out}"
        );
    }
    assert!(
        find(&r).contains(&"ro"),
        "the read grant is writable: {out}"
    );
    assert!(
        find(&w).contains(&"rw"),
        "the write grant is read-only: {out}"
    );
    assert!(
        !find(&x).contains(&"noexec"),
        "the exec grant is noexec: {out}"
    );
}

/// Creates (`key`, mode 0666) or removes (`-id`) a SysV shared memory segment on the host.
const HOST_SHM: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
arg = int(sys.argv[1])
if arg > 0:
    print(libc.shmget(arg, 4096, 0o1666))
else:
    print(libc.shmctl(-arg, 0, None))
"#;

fn host_sysv_shared_memory(user: User) {
    // The IPC namespace: a world-accessible segment on the host must not be reachable.
    let key = 0x4341_0000 + (std::process::id() % 0xffff);
    let made = common::host(&[
        common::PYTHON.as_ref(),
        "-c".as_ref(),
        HOST_SHM.as_ref(),
        key.to_string().as_ref(),
    ]);
    let id: i64 = made.stdout.trim().parse().unwrap_or(-1);
    assert!(id >= 0, "could not create the host segment: {made}");
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
key = int(sys.argv[1])
attempt("shmget", lambda: sysc(29, key, 0, 0))
attempt("listed", lambda: str(key) in open("/proc/sysvipc/shm").read())
sys.exit(42)
"#,
        &[&key.to_string()],
    );
    common::host(&[
        common::PYTHON.as_ref(),
        "-c".as_ref(),
        HOST_SHM.as_ref(),
        format!("-{id}").as_ref(),
    ]);
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("shmget", &["ENOENT", "EPERM"])
        .assert_value_in("listed", &["OK False", "ENOENT", "EACCES"]);
}

fn plant_setuid_in_write_grant(user: User) {
    // The write grant is a host directory: a set-id file the payload leaves there is a
    // set-id file on the host, owned by the payload's host uid (root, when root ran calyx).
    // Any host user who can reach the directory would then run it with that uid.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
import shutil
w = sys.argv[1]
attempt("copy", lambda: shutil.copyfile("/usr/bin/id", w + "/id"))
attempt("chmod_setid", lambda: os.chmod(w + "/id", 0o6755))
attempt("mode", lambda: oct(os.stat(w + "/id").st_mode & 0o7777))
attempt("mkdir_setgid", lambda: os.mkdir(w + "/d", 0o2777))
# Created with the bits directly (no chmod call), and through fchmod on an open fd.
os.umask(0)
def create_setid():
    fd = os.open(w + "/id2", os.O_CREAT | os.O_WRONLY, 0o6755)
    os.write(fd, open("/usr/bin/id", "rb").read())
    os.close(fd)
    return oct(os.stat(w + "/id2").st_mode & 0o7777)
attempt("create_setid", create_setid)
def fchmod_setid():
    fd = os.open(w + "/id3", os.O_CREAT | os.O_WRONLY, 0o755)
    os.write(fd, open("/usr/bin/id", "rb").read())
    os.fchmod(fd, 0o4755)
    os.close(fd)
    return oct(os.stat(w + "/id3").st_mode & 0o7777)
attempt("fchmod_setid", fchmod_setid)
sys.exit(42)
"#,
        &[s(&work)],
    );
    out.assert_code(PAYLOAD_DONE);
    assert!(
        out.value("copy").is_some_and(|v| v.starts_with("OK")),
        "the control copy into the write grant failed: {out}"
    );
    for name in ["id", "id2", "id3", "d"] {
        let Ok(meta) = fs::metadata(work.join(name)) else {
            continue;
        };
        assert!(
            meta.mode() & 0o6000 == 0,
            "the payload left a set-id {name} on the host: mode {:o}, owner uid {}\n{out}",
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
}

fn grant_swapped_for_symlink_during_setup(user: User) {
    // A race against the runner: while it checks and mounts a read grant, the grant flips
    // between a real directory and a symlink to a secret one. No run may ever see the secret;
    // each either runs on the real directory or is refused.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = Sandbox::new();
    let secret_value = unique("racesecret");
    let hidden = sb.mkdir("hidden", 0o755);
    fs::write(hidden.join("secret"), &secret_value).unwrap();
    set_mode(&hidden.join("secret"), 0o644);
    sb.mkdir("shared", 0o755);
    let real = sb.mkdir("shared/real", 0o755);
    fs::write(real.join("secret"), "decoy").unwrap();
    set_mode(&real.join("secret"), 0o644);
    let data = sb.root().join("shared/data");
    fs::rename(&real, &data).unwrap();
    let mut sb = sb.read(&data).issue_arg("--max-uses").issue_arg("1000");
    let lease = sb.prepared_lease();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, data, real, hidden) = (stop.clone(), data.clone(), real.clone(), hidden);
        thread::spawn(move || {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // data is the real dir: park it, plant the link; then undo.
                let _ = fs::rename(&data, &real);
                let _ = std::os::unix::fs::symlink(&hidden, &data);
                thread::sleep(Duration::from_micros(300));
                let _ = fs::remove_file(&data);
                let _ = fs::rename(&real, &data);
                thread::sleep(Duration::from_micros(300));
                flips += 1;
            }
            flips
        })
    };
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
attempt("read", lambda: open(sys.argv[1] + "/secret").read())
sys.exit(42)
"#
    );
    let (mut ran, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut leaked = None;
    while Instant::now() < deadline && ran + refused < 40 {
        let out = sb.run_with_lease(user, &lease, &[common::PYTHON, "-c", &code, s(&data)]);
        if out.stdout.contains(&secret_value) || out.stderr.contains(&secret_value) {
            leaked = Some(out);
            break;
        }
        match out.code() {
            PAYLOAD_DONE => ran += 1,
            // Caught at check time (78) or at mount time (125, setup failed): nothing ran.
            77 | 78 | 125 => refused += 1,
            _ => panic!("unexpected outcome during the race: {out}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    if let Some(out) = leaked {
        panic!("a run read the secret through the swapped grant: {out}");
    }
    eprintln!("race: {ran} runs, {refused} refusals, {flips} flips, no leak");
    assert!(
        ran + refused >= 5,
        "too few runs to mean anything: {ran} + {refused}"
    );
}

fn seccomp_other_abis(user: User) {
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

fn exec_bypasses(user: User) {
    // Other doors to the same attack as exec_from_write_only_grant: run a binary the payload
    // brought along, from /tmp, through the dynamic loader (mmap instead of execve), or
    // fileless from a memfd.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let t = work.join("true");
    fs::copy("/usr/bin/true", &t).unwrap();
    set_mode(&t, 0o755);
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
import shutil, subprocess
def run(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return "ran" if r.returncode == 0 else f"exit {r.returncode}"
attempt("tmp_copy", lambda: shutil.copy("/usr/bin/true", "/tmp/true"))
attempt("tmp_chmod", lambda: os.chmod("/tmp/true", 0o755))
print(f"tmp_exec: {run(['/tmp/true'])}", flush=True)
ldso = "/lib64/ld-linux-x86-64.so.2"
print(f"ldso_write_grant: {run([ldso, sys.argv[1]])}", flush=True)
print(f"ldso_tmp: {run([ldso, '/tmp/true'])}", flush=True)
def memfd_exec():
    fd = os.memfd_create("payload", 0)
    os.write(fd, open("/usr/bin/true", "rb").read())
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(fd, ["true"], {})
        except OSError as e:
            os._exit(100 + e.errno)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    return "ran" if code == 0 else (errno.errorcode.get(code - 100, code) if code > 100 else f"exit {code}")
try:
    print(f"memfd_exec: {memfd_exec()}", flush=True)
except OSError as e:
    print(f"memfd_exec: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
sys.exit(42)
"#,
        &[s(&t)],
    );
    out.assert_code(PAYLOAD_DONE);
    for door in ["tmp_exec", "ldso_write_grant", "ldso_tmp", "memfd_exec"] {
        let got = out.value(door);
        assert!(
            got.is_some_and(|v| v != "ran"),
            "{door}: a binary the payload brought along ran ({got:?}): {out}"
        );
    }
}
