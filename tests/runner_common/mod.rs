//! Shared helpers of the runner tests: a trust policy and signed leases built with the library,
//! and a way to run `calyx-run` as root or as `nobody`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use calyx::lease::envelope::Envelope;
use calyx::lease::keys;
use calyx::lease::model::LEASE_PAYLOAD_TYPE;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

/// Who runs calyx-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// The test's own user (root on the build host).
    Caller,
    /// uid/gid 65534 through setpriv.
    Nobody,
}

/// A scratch directory with a trust policy, readable by nobody.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub trust: PathBuf,
    pub audit: PathBuf,
}

fn human() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}
fn agent() -> SigningKey {
    SigningKey::from_bytes(&[12; 32])
}

fn key_entry(id: &str, role: &str, k: &SigningKey) -> String {
    let pem = keys::public_key_pem(&k.verifying_key()).unwrap();
    format!("[[keys]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"\"\"\n{pem}\"\"\"\n\n")
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("calyx-runner-test")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let trust = dir.path().join("trust.toml");
        let text = format!(
            "[requirements]\n\n{}{}",
            key_entry("alice", "human", &human()),
            key_entry("cp14", "agent", &agent())
        );
        std::fs::write(&trust, text).unwrap();
        std::fs::set_permissions(&trust, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The audit directory must be writable by whoever runs calyx-run (root or nobody).
        let adir = dir.path().join("audit");
        std::fs::create_dir(&adir).unwrap();
        std::fs::set_permissions(&adir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Fixture {
            trust,
            audit: adir.join("audit.jsonl"),
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// [`Fixture::lease`] allowing `/bin/sh -c` followed by anything.
    pub fn sh_lease(&self, name: &str, extra: Value) -> PathBuf {
        self.lease(
            name,
            serde_json::json!([{"path": "/bin/sh", "args": ["-c", "*"]}]),
            extra,
        )
    }

    /// Writes a lease signed by one human and one agent. `extra` is merged into the payload.
    pub fn lease(&self, name: &str, commands: Value, extra: Value) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let mut payload = json!({
            "version": 1,
            "lease_id": format!("LEASE-TEST-{name}"),
            "intent_id": "INT-test",
            "issuer": "tests",
            "subject": "cp14",
            "issued_at": fmt(now - time::Duration::minutes(1)),
            "not_before": fmt(now - time::Duration::minutes(1)),
            "expires_at": fmt(now + time::Duration::minutes(30)),
            "commands": commands,
        });
        if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
            p.extend(e);
        }
        let body = serde_json::to_vec(&payload).unwrap();
        let mut env = Envelope::unsigned(LEASE_PAYLOAD_TYPE, &body);
        env.sign(&human()).unwrap();
        env.sign(&agent()).unwrap();
        let path = self.path(&format!("{name}.lease.json"));
        std::fs::write(&path, env.to_json_pretty()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// The audit log of runs by `who` (each user writes its own: the log is mode 0600).
    pub fn audit_of(&self, who: As) -> PathBuf {
        self.audit.with_file_name(format!("audit-{who:?}.jsonl"))
    }

    /// Runs calyx-run with `args` (before `--`) and `cmd`.
    pub fn run(&self, who: As, lease: &Path, args: &[&str], cmd: &[&str]) -> Output {
        self.command(who, lease, args, cmd).output().unwrap()
    }

    /// A fresh state directory (ledger, host key, receipts, artifacts) owned by `who`: every
    /// run gets its own, so the ledger's use counts never leak between runs or tests, and
    /// runs as root never write to the host's /var/lib/calyx.
    /// A test that runs one lease twice gives it `max_uses` 2.
    pub fn fresh_state(&self, who: As) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = self.path(&format!("state-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if who == As::Nobody {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        dir
    }

    /// The command line of [`Fixture::run`], not started.
    pub fn command(&self, who: As, lease: &Path, args: &[&str], cmd: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_calyx-run");
        let mut c = match who {
            As::Caller => Command::new(bin),
            As::Nobody => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--",
                    bin,
                ]);
                c
            }
        };
        c.arg("--lease")
            .arg(lease)
            .arg("--trust")
            .arg(&self.trust)
            .arg("--state-dir")
            .arg(self.fresh_state(who))
            .arg("--audit-log")
            .arg(self.audit_of(who));
        c.args(args).arg("--").args(cmd);
        c.env_clear()
            .env("HOME", "/nonexistent")
            .env("PATH", "/usr/bin:/bin")
            .env("CALYX_TEST_SECRET", "s3cret");
        c
    }
}

/// Both users, as the issue asks; fails loudly (no skip) when the host cannot drop to nobody.
pub fn users() -> [As; 2] {
    assert!(
        Path::new("/usr/bin/setpriv").exists() || Path::new("/bin/setpriv").exists(),
        "setpriv is required to run the tests as nobody"
    );
    [As::Caller, As::Nobody]
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
