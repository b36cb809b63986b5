//! The sandbox scenario builder: keys, trust policy, grants, lease issue and cosign, and the
//! calyx-run command line (as root or nobody, through pipes, a pty or with a leaked fd).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{
    Outcome, PYTHON, Running, User, calyx_in_process, calyx_ok, chown, run_bin, run_deadline,
    set_mode, unsandboxed,
};

/// Network mode of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    None,
    Loopback,
}

/// Which signatures the lease gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Human and agent: what the generated trust policy requires.
    Both,
    /// No signature at all.
    Unsigned,
}

/// How calyx-run is wired to the test.
#[derive(Clone, Debug, Default)]
pub enum Wiring {
    /// Pipes for stdout/stderr, stdin from /dev/null.
    #[default]
    Pipes,
    /// calyx-run inherits fd 7 opened read-only on this host file (no CLOEXEC).
    LeakFd7(PathBuf),
    /// calyx-run's stdin/stdout/stderr are a pty slave; output arrives on stdout.
    Pty,
    /// calyx-run starts inside a user namespace (as its root) whose
    /// `user.max_user_namespaces` is 0: a host without user namespaces, for this process
    /// tree only, so other tests on the machine are unaffected.
    NoUserNamespaces,
    /// calyx-run starts with stdin, stdout and stderr closed.
    ClosedStdio,
    /// calyx-run starts in a mount namespace of its own (made by root with util-linux's
    /// unshare) where every mount is shared, as systemd leaves a host's mounts.
    SharedMounts,
}

/// One sandbox scenario: a temp dir (0755, so nobody can traverse it), two keys, a trust
/// policy, and the grants the lease will carry. Each `run_as` issues and cosigns a fresh lease.
pub struct Sandbox {
    dir: TempDir,
    human_key: PathBuf,
    agent_key: PathBuf,
    trust: PathBuf,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    exec: Vec<PathBuf>,
    commands: Vec<String>,
    network: Net,
    timeout_secs: u64,
    issue_extra: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    wiring: Wiring,
    signing: Signing,
    runs: u32,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A new scenario with keys and a trust policy (alice: human, cp14: agent).
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("calyx-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create temp dir: {e}"));
        set_mode(dir.path(), 0o755);
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap_or_else(|e| panic!("mkdir {keys:?}: {e}"));
        // Private keys stay root-only: the signer is root; only the trust policy and the
        // lease must be readable by the user who runs calyx-run.
        set_mode(&keys, 0o700);
        let human_key = keys.join("alice.key");
        let agent_key = keys.join("cp14.key");
        let trust = dir.path().join("trust.toml");
        // The keys and policy come from the real CLI once per test binary and are copied into
        // each scenario: four process starts fewer per scenario, which is most of the cost of
        // the short runs under the emulated VM tier.
        let fx = key_fixture();
        for (path, bytes, mode) in [
            (&human_key, &fx.human, 0o600),
            (&agent_key, &fx.agent, 0o600),
        ] {
            write_new(path, bytes, mode);
            let mut public = path.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            let pub_bytes = if path == &human_key {
                &fx.human_pub
            } else {
                &fx.agent_pub
            };
            write_new(&public, pub_bytes, 0o644);
        }
        write_new(&trust, &fx.trust, 0o644);
        set_mode(&trust, 0o644);
        Sandbox {
            dir,
            human_key,
            agent_key,
            trust,
            read: Vec::new(),
            write: Vec::new(),
            exec: Vec::new(),
            commands: vec![format!("{PYTHON} -c *")],
            network: Net::None,
            // A run's own limit, above any healthy run: 15 s on a host, 90 s in the VM tier,
            // where emulation is about 13 times slower and a racing test loads the guest (a
            // 15 s limit timed out a healthy run there).
            timeout_secs: if super::in_vm_tier() { 90 } else { 15 },
            issue_extra: Vec::new(),
            env: Vec::new(),
            cwd: None,
            wiring: Wiring::Pipes,
            signing: Signing::Both,
            runs: 0,
        }
    }

    /// The scenario's host temp dir (root-owned, 0755).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The trust policy path.
    pub fn trust(&self) -> &Path {
        &self.trust
    }

    /// Creates a host dir `rel` under the temp dir with `mode`.
    pub fn mkdir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
        set_mode(&p, mode);
        p
    }

    /// Creates a host file `rel` with `content` and `mode`.
    pub fn file(&self, rel: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        set_mode(&p, mode);
        p
    }

    /// Grants read access to `p`.
    pub fn read(mut self, p: &Path) -> Self {
        self.read.push(p.to_owned());
        self
    }

    /// Grants write access to `p`; it is chowned to the running user before each run.
    pub fn write(mut self, p: &Path) -> Self {
        self.write.push(p.to_owned());
        self
    }

    /// Grants exec access to `p`.
    pub fn exec(mut self, p: &Path) -> Self {
        self.exec.push(p.to_owned());
        self
    }

    /// Replaces the allowed commands (default: `/usr/bin/python3 -c *`).
    pub fn commands(mut self, commands: &[&str]) -> Self {
        self.commands = commands.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Adds one allowed command.
    pub fn command(mut self, command: &str) -> Self {
        self.commands.push(command.to_owned());
        self
    }

    /// Network `loopback` instead of `none`.
    pub fn network_loopback(mut self) -> Self {
        self.network = Net::Loopback;
        self
    }

    /// Network mode.
    pub fn network(mut self, net: Net) -> Self {
        self.network = net;
        self
    }

    /// Lease timeout in seconds.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Extra raw arguments for `calyx lease issue`.
    pub fn issue_arg(mut self, arg: &str) -> Self {
        self.issue_extra.push(arg.into());
        self
    }

    /// An environment variable for calyx-run (the caller's environment).
    pub fn caller_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// calyx-run's working directory on the host.
    pub fn caller_cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// How calyx-run is wired (pipes, leaked fd, pty).
    pub fn wiring(mut self, wiring: Wiring) -> Self {
        self.wiring = wiring;
        self
    }

    /// Which signatures the lease gets.
    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = signing;
        self
    }

    /// Changes which signatures later leases get, in place.
    pub fn set_signing(&mut self, signing: Signing) {
        self.signing = signing;
    }

    /// Issues a fresh lease for the current grants (unsigned), returns its path.
    pub fn issue(&mut self) -> PathBuf {
        self.runs += 1;
        let lease = self.dir.path().join(format!("lease-{}.json", self.runs));
        let mut args: Vec<OsString> = ["lease", "issue", "--out"].map(OsString::from).to_vec();
        args.push(lease.clone().into_os_string());
        for (flag, value) in [
            ("--intent", "INT-test"),
            ("--subject", "test"),
            (
                "--network",
                match self.network {
                    Net::None => "none",
                    Net::Loopback => "loopback",
                },
            ),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.push("--timeout".into());
        args.push(format!("{}s", self.timeout_secs).into());
        for c in &self.commands {
            args.push("--command".into());
            args.push(c.into());
        }
        for (flag, list) in [
            ("--read", &self.read),
            ("--write", &self.write),
            ("--exec", &self.exec),
        ] {
            for p in list {
                args.push(flag.into());
                args.push(p.clone().into_os_string());
            }
        }
        // CALYX_TEST_PROFILE=strict runs the whole suite under another profile, except the
        // scenarios that name their own.
        let own_profile = self.issue_extra.iter().any(|a| a == "--profile");
        if let Some(profile) = std::env::var_os("CALYX_TEST_PROFILE").filter(|_| !own_profile) {
            args.push("--profile".into());
            args.push(profile);
        }
        args.extend(self.issue_extra.iter().cloned());
        calyx_in_process(&args);
        lease
    }

    /// Adds both signatures to `lease`.
    pub fn sign(&self, lease: &Path) {
        for key in [&self.human_key, &self.agent_key] {
            calyx_in_process(&[
                OsStr::new("lease"),
                "sign".as_ref(),
                lease.as_os_str(),
                "--key".as_ref(),
                key.as_os_str(),
            ]);
        }
    }

    /// Adds only the human signature to `lease` (the policy also needs an agent).
    pub fn sign_human_only(&self, lease: &Path) {
        self.sign_with(lease, &self.human_key);
    }

    /// Adds one signature with `key` to `lease`.
    pub fn sign_with(&self, lease: &Path, key: &Path) {
        calyx_in_process(&[
            OsStr::new("lease"),
            "sign".as_ref(),
            lease.as_os_str(),
            "--key".as_ref(),
            key.as_os_str(),
        ]);
    }

    /// The human key (alice).
    pub fn human_key(&self) -> &Path {
        &self.human_key
    }

    /// Generates a key the trust policy does not know, returns its private key path.
    pub fn stranger_key(&self, name: &str) -> PathBuf {
        let key = self.dir.path().join("keys").join(format!("{name}.key"));
        calyx_ok(&[
            OsStr::new("key"),
            "gen".as_ref(),
            "--out".as_ref(),
            key.as_os_str(),
        ]);
        key
    }

    /// Issues (and, per [`Signing`], cosigns) a lease for this run and makes it readable.
    pub fn prepared_lease(&mut self) -> PathBuf {
        let lease = self.issue();
        if self.signing == Signing::Both {
            self.sign(&lease);
        }
        set_mode(&lease, 0o644);
        lease
    }

    /// State dir of the latest run (a fresh one per issued lease).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(format!("state-{}", self.runs))
    }

    /// Audit log of the latest run.
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir().join("audit.jsonl")
    }

    /// The audit log of the latest run as text (empty when it does not exist).
    pub fn audit_text(&self) -> String {
        fs::read_to_string(self.audit_log()).unwrap_or_default()
    }

    /// The full argv that starts calyx-run as `user` with `lease` and `cmd`.
    pub fn run_argv(&mut self, user: User, lease: &Path, cmd: &[&str]) -> Vec<OsString> {
        // A fresh state dir per run: the ledger counts lease uses, and runs must not share it.
        let state = self.state_dir();
        fs::create_dir_all(&state).unwrap_or_else(|e| panic!("mkdir {state:?}: {e}"));
        chown(&state, user.uid());
        // lchown: a race test swaps a grant for a symlink, and the harness must not hand the
        // link's target to the user itself; for the same reason the grant may be missing
        // for an instant.
        for w in &self.write {
            match std::os::unix::fs::lchown(w, Some(user.uid()), Some(user.uid())) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    panic!("lchown {} {w:?}: {e}", user.uid())
                }
                _ => {}
            }
        }
        let mut argv: Vec<OsString> = Vec::new();
        match &self.wiring {
            Wiring::Pipes => {}
            Wiring::LeakFd7(path) => {
                // The shell opens the file as root without CLOEXEC and execs on: fd 7 reaches
                // calyx-run exactly like a careless caller's fd would.
                argv.extend(["/bin/sh", "-c", "exec 7<\"$0\" && exec \"$@\""].map(OsString::from));
                argv.push(path.clone().into_os_string());
            }
            Wiring::Pty => {
                argv.extend([PYTHON, "-c", PTY_WRAPPER].map(OsString::from));
            }
            Wiring::NoUserNamespaces => {}
            Wiring::SharedMounts => {
                argv.extend(
                    [
                        "/usr/bin/unshare",
                        "--mount",
                        "--propagation",
                        "shared",
                        "--",
                    ]
                    .map(OsString::from),
                );
            }
            Wiring::ClosedStdio => {
                // Whatever calyx-run opens first would land on 0-2 and, unless it takes
                // care, be inherited by the payload as its stdio.
                argv.extend(
                    ["/bin/sh", "-c", "exec 0<&- 1>&- 2>&- && exec \"$@\"", "sh"]
                        .map(OsString::from),
                );
            }
        }
        argv.extend(user.prefix());
        if let Wiring::NoUserNamespaces = self.wiring {
            argv.extend(
                [
                    "/usr/bin/unshare",
                    "--user",
                    "--map-root-user",
                    "--",
                    "/bin/sh",
                    "-c",
                    "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"",
                    "sh",
                ]
                .map(OsString::from),
            );
        }
        if unsandboxed() {
            argv.extend(cmd.iter().map(OsString::from));
            return argv;
        }
        argv.push(run_bin().into_os_string());
        argv.push("--lease".into());
        argv.push(lease.as_os_str().to_owned());
        argv.push("--trust".into());
        argv.push(self.trust.clone().into_os_string());
        argv.push("--state-dir".into());
        argv.push(state.clone().into_os_string());
        argv.push("--audit-log".into());
        argv.push(state.join("audit.jsonl").into_os_string());
        argv.push("--".into());
        argv.extend(cmd.iter().map(OsString::from));
        argv
    }

    /// Starts calyx-run as `user` with a fresh lease, without waiting.
    pub fn spawn_as(&mut self, user: User, cmd: &[&str]) -> Running {
        let lease = self.prepared_lease();
        self.spawn_with_lease(user, &lease, cmd)
    }

    /// Starts calyx-run as `user` with the given lease, without waiting.
    pub fn spawn_with_lease(&mut self, user: User, lease: &Path, cmd: &[&str]) -> Running {
        let argv = self.run_argv(user, lease, cmd);
        Running::start(&argv, &self.env, self.cwd.as_deref())
    }

    /// Runs `cmd` in the sandbox as `user` with a fresh lease and waits (bounded).
    pub fn run_as(&mut self, user: User, cmd: &[&str]) -> Outcome {
        self.spawn_as(user, cmd).finish(run_deadline())
    }

    /// Runs `cmd` as `user` with the given lease and waits (bounded).
    pub fn run_with_lease(&mut self, user: User, lease: &Path, cmd: &[&str]) -> Outcome {
        self.spawn_with_lease(user, lease, cmd)
            .finish(run_deadline())
    }

    /// Runs a Python payload (the prelude of [`PY_PRELUDE`] first) as `user`.
    pub fn run_py(&mut self, user: User, code: &str, extra_args: &[&str]) -> Outcome {
        let full = format!("{PY_PRELUDE}\n{code}");
        let mut cmd = vec![PYTHON, "-c", full.as_str()];
        cmd.extend_from_slice(extra_args);
        self.run_as(user, &cmd)
    }
}

/// Wraps a command in a new pty: its stdin/stdout/stderr become the slave, output is copied
/// to our stdout, and the exit code is passed on.
const PTY_WRAPPER: &str = r#"
import os, pty, sys
status = pty.spawn(sys.argv[1:])
sys.exit(os.waitstatus_to_exitcode(status) & 0xff)
"#;

/// Helpers every Python payload starts with. `attempt(tag, fn)` prints `tag: OK …` when the
/// attack worked, `tag: ERRNAME` when the kernel refused it; `sysc` makes a raw syscall.
pub const PY_PRELUDE: &str = r#"
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def sysc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def attempt(tag, fn):
    try:
        r = fn()
        print(f"{tag}: OK {r!r}", flush=True)
    except OSError as e:
        print(f"{tag}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
"#;

/// Key material made by the real CLI, once per test binary.
struct KeyFixture {
    human: Vec<u8>,
    human_pub: Vec<u8>,
    agent: Vec<u8>,
    agent_pub: Vec<u8>,
    trust: Vec<u8>,
}

fn key_fixture() -> &'static KeyFixture {
    static FIXTURE: std::sync::OnceLock<KeyFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("calyx-keys-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create temp dir: {e}"));
        let human = dir.path().join("alice.key");
        let agent = dir.path().join("cp14.key");
        let trust = dir.path().join("trust.toml");
        for key in [&human, &agent] {
            calyx_ok(&[
                OsStr::new("key"),
                "gen".as_ref(),
                "--out".as_ref(),
                key.as_os_str(),
            ]);
        }
        for (key, id, role) in [(&human, "alice", "human"), (&agent, "cp14", "agent")] {
            let mut public = key.clone().into_os_string();
            public.push(".pub");
            calyx_ok(&[
                OsStr::new("trust"),
                "add".as_ref(),
                "--policy".as_ref(),
                trust.as_os_str(),
                "--pub".as_ref(),
                &public,
                "--id".as_ref(),
                id.as_ref(),
                "--role".as_ref(),
                role.as_ref(),
            ]);
        }
        let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        let with_pub = |p: &Path| {
            let mut s = p.to_owned().into_os_string();
            s.push(".pub");
            read(Path::new(&s))
        };
        KeyFixture {
            human: read(&human),
            human_pub: with_pub(&human),
            agent: read(&agent),
            agent_pub: with_pub(&agent),
            trust: read(&trust),
        }
    })
}

/// Creates `path` (which must not exist) with `bytes` and `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    set_mode(path, mode);
}
