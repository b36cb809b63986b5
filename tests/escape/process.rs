//! Processes, signals, terminal, environment and fds: what the caller leaves lying around and
//! what outlives the runner.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    self, PAYLOAD_DONE, Running, Sandbox, User, Wiring, kill_pids, pids_with_marker, unique,
};
use crate::{READ_DENIED, s};

pub(crate) fn kill_host_process(user: User) {
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

pub(crate) fn tiocsti_on_stdin(user: User) {
    let mut sb = Sandbox::new().wiring(Wiring::Pty);
    let out = sb.run_py(
        user,
        r#"
import fcntl, termios
print(f"isatty: {os.isatty(0)}", flush=True)
attempt("tiocsti", lambda: fcntl.ioctl(0, termios.TIOCSTI, b"Q"))
attempt("tioclinux", lambda: fcntl.ioctl(0, 0x541C, b"\x06\x00"))
# The kernel reads ioctl's cmd as 32 bits: a filter comparing all 64 would let a request with
# high bits set through, and the kernel would still do TIOCSTI.
q = ctypes.c_char_p(b"Q")
attempt("tiocsti_high_bits", lambda: sysc(16, 0, ctypes.c_ulong((1 << 32) | termios.TIOCSTI), q))
print(f"sid_is_self: {os.getsid(0) == os.getpid()}", flush=True)
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("tiocsti", &["EPERM"])
        .assert_value_in("tioclinux", &["EPERM"])
        .assert_value_in("tiocsti_high_bits", &["EPERM"]);
    // Host side: an injected byte would be echoed back through the terminal; no output line
    // of the payload contains an upper-case Q. (calyx-run's own lines may name temp paths,
    // which can hold any letter.)
    assert!(
        !out.stdout
            .lines()
            .filter(|l| !l.starts_with("calyx-run:"))
            .any(|l| l.contains('Q')),
        "a byte was injected into the terminal: {out}"
    );
    eprintln!("tiocsti: payload saw isatty = {:?}", out.value("isatty"));
}

pub(crate) fn caller_env_secret(user: User) {
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

pub(crate) fn caller_open_fd(user: User) {
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

pub(crate) fn survive_runner_sigkill(user: User) {
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

pub(crate) fn outlive_timeout(user: User) {
    // The payload ignores SIGTERM and leaves a double-forked, SIGTERM-ignoring heartbeat
    // behind: the wall-clock limit must still end everything (SPEC §4.2: exit 124).
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let marker = unique("calyx-timeout-marker");
    let hb = work.join("hb");
    // 6 s: long enough for python to start and the heartbeat to beat before the limit under
    // emulation (the VM tier saw 2 s expire before the first beat), short on a host.
    let mut sb = sb.write(&work).timeout_secs(6);
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
        out.elapsed < Duration::from_secs(30),
        "the 6 s timeout took {:?}\n{out}",
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

pub(crate) fn proc_shows_only_sandbox(user: User) {
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

pub(crate) fn cwd_inside_new_root(user: User) {
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

pub(crate) fn hostname_not_hosts(user: User) {
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

pub(crate) fn daemon_outlives_payload(user: User) {
    // The payload daemonizes a heartbeat (setsid, double fork, SIGTERM and SIGHUP ignored)
    // and exits at once: the run ends with the payload, and so does everything it left.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let marker = unique("calyx-daemon-marker");
    let hb = work.join("hb");
    let mut sb = sb.write(&work);
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
import signal, time
hb = sys.argv[1] + "/hb"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while True:
            with open(hb, "a") as f:
                f.write("x")
            time.sleep(0.05)
    os._exit(0)
while not os.path.exists(hb):
    time.sleep(0.02)
sys.exit(42)
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
        "the daemon outlived the run: {survivors:?}\n{out}"
    );
    out.assert_code(PAYLOAD_DONE);
    // Half the per-run bound: 10 s on a host, 60 s under the emulated VM tier.
    assert!(
        out.elapsed < common::run_deadline() / 2,
        "the run waited {:?} for its daemon\n{out}",
        out.elapsed
    );
    let len1 = fs::metadata(&hb).map(|m| m.len()).unwrap_or(0);
    thread::sleep(Duration::from_millis(300));
    let len2 = fs::metadata(&hb).map(|m| m.len()).unwrap_or(0);
    assert!(len1 > 0, "the heartbeat never ran\n{out}");
    assert_eq!(len1, len2, "the heartbeat kept going after the run\n{out}");
}

pub(crate) fn caller_closed_stdio(user: User) {
    // Started with fds 0-2 closed, calyx-run's own files (lease, trust policy, audit log,
    // channel) must not become the payload's stdio: writing to 1 and 2 must not reach them.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let mark = unique("stdio-forged");
    let mut sb = sb.write(&work).wiring(Wiring::ClosedStdio);
    let lease = sb.prepared_lease();
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
w, mark = sys.argv[1], sys.argv[2][::-1]
links = []
for fd in (0, 1, 2):
    try:
        links.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    except OSError as e:
        links.append(f"{fd}: {errno.errorcode.get(e.errno)}")
    try:
        os.write(fd, (mark + "\n").encode())
    except OSError:
        pass
open(w + "/fds", "w").write("\n".join(links) + "\n")
os._exit(42)
"#
    );
    let out = sb.run_with_lease(
        user,
        &lease,
        &[common::PYTHON, "-c", &code, s(&work), &mark],
    );
    out.assert_code(PAYLOAD_DONE);
    let fds = fs::read_to_string(work.join("fds")).unwrap_or_default();
    assert!(
        fds.lines().count() == 3,
        "the payload did not report its fds: {out}"
    );
    eprintln!("caller_closed_stdio: payload stdio:\n{fds}");
    let written: String = mark.chars().rev().collect();
    for file in [lease.as_path(), sb.trust(), &sb.audit_log()] {
        let text = fs::read_to_string(file).unwrap_or_default();
        assert!(
            !text.contains(&written),
            "the payload's stdio wrote into {file:?}:\n{text}\npayload fds:\n{fds}"
        );
    }
    for host_path in [s(&lease), s(sb.trust()), s(&sb.state_dir())] {
        assert!(
            !fds.contains(host_path),
            "a calyx file became the payload's stdio:\n{fds}"
        );
    }
}
