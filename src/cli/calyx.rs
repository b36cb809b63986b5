//! `calyx`: keys, trust policies and leases (SPEC §7).
//!
//! [`Cli::parse`] only parses; [`run`] does the work and maps every error to the exit codes of
//! SPEC §4.5. There is deliberately no way to override the clock: a flag or variable that set
//! "now" would let anyone holding an expired lease make it valid again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use thiserror::Error;
use time::OffsetDateTime;

use super::calyx_issue::{self, IssueArgs, IssueEnv, IssueError};
use super::calyx_ledger::{self, LedgerCliError, ListArgs, RevokeArgs};
use super::calyx_show;
use crate::exit;
use crate::lease::envelope::{Envelope, EnvelopeError, SignOutcome};
use crate::lease::keys::{self, KeyError};
use crate::lease::model::LEASE_PAYLOAD_TYPE;
use crate::lease::trust::{Role, TrustError, TrustPolicy};
use crate::lease::units::format_duration_secs;
use crate::lease::verify::{self, VerifyContext, VerifyError};

/// Exit codes, shown in `--help`.
const EXIT_CODES_HELP: &str = "Exit codes:
  0   success
  1   an operation failed (I/O)
  2   usage error
  77  refused: the lease is invalid, expired, tampered with or not authorized
  78  refused: bad configuration (trust policy, key file permissions)
  125 doctor: a layer the profile requires is missing on this host";

/// calyx: keys, trust policies and signed leases.
#[derive(Debug, Parser)]
#[command(name = "calyx", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Trust policies.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Leases: draft, cosign, verify, inspect.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Artifacts kept by runs: copy one out of the content-addressed store.
    #[command(subcommand)]
    Artifact(super::calyx_artifact::ArtifactCommand),
    /// Run receipts: verify one with the host's public key, or get one from the audit log.
    #[command(subcommand)]
    Receipt(super::calyx_receipt::ReceiptCommand),
    /// Probe the host: every isolation layer, available or not, why, and the remedy.
    /// Exit 0 when every layer the profile requires is available, else 125.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Profile whose required layers decide the exit code.
        #[arg(long, default_value = "default")]
        profile: String,
    },
    /// The audit log: verify its hash chain, or read it.
    #[command(subcommand)]
    Audit(super::calyx_audit::AuditCommand),
}

/// `calyx key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an Ed25519 key: FILE (PKCS#8 PEM, mode 0600) and FILE.pub (SPKI PEM).
    Gen {
        /// Private key file to create (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A name to print with the key id (the id to use with `calyx trust add`).
        #[arg(long)]
        id: Option<String>,
    },
}

/// `calyx trust …`
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Add a public key to a trust policy, creating it (one human + one agent) if missing.
    Add {
        /// The trust policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The public key (SPKI PEM, as written by `calyx key gen`).
        #[arg(long = "pub", value_name = "FILE.pub")]
        public: PathBuf,
        /// The key's name in the policy.
        #[arg(long)]
        id: String,
        /// The role it signs in.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

/// `--role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// A person.
    Human,
    /// An automated cosigner.
    Agent,
}

/// `calyx lease …`
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Draft an unsigned lease envelope.
    Issue(Box<IssueArgs>),
    /// Add one signature to a lease, in place.
    Sign {
        /// The lease file.
        file: PathBuf,
        /// The private key.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Verify a lease now: exit 0 when valid, 77 with the reason when not (signatures, trust,
    /// expiry, host; and the ledger: revoked, or every use spent).
    Verify {
        /// The lease file.
        file: PathBuf,
        /// Trust policy (default: $CALYX_TRUST, /etc/calyx/trust.toml for root, else XDG).
        #[arg(long, value_name = "POLICY")]
        trust: Option<PathBuf>,
        /// State directory holding the ledger (default as for calyx-run; CALYX_STATE_DIR).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print a JSON result on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what a lease allows, who signed it and its risks.
    Show {
        /// The lease file.
        file: PathBuf,
        /// Trust policy for signer roles (default as for verify).
        #[arg(long, value_name = "POLICY")]
        trust: Option<PathBuf>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a lease in the ledger (by id or file); its next run is refused with the reason.
    Revoke(RevokeArgs),
    /// Leases in the ledger: uses left, expiry, last outcome, revocation.
    List(ListArgs),
}

/// Everything that can stop a `calyx` command.
#[derive(Debug, Error)]
pub enum CliError {
    /// Key files.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Trust policy.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Lease verification or reading.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Drafting a lease.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The lease ledger (revoke, list).
    #[error(transparent)]
    Ledger(#[from] LedgerCliError),
    /// The ledger refuses the lease's next use (revoked, or every use spent).
    #[error("refused by the ledger: {0}")]
    Refused(crate::ledger::Refusal),
    /// Writing a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file that must not be overwritten exists.
    #[error("refusing to overwrite {path}")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// This process's uid could not be determined (needed for the trust policy owner check).
    #[error("cannot determine the effective uid from /proc/self/status; is /proc mounted?")]
    NoUid,
}

impl CliError {
    /// The exit code of SPEC §4.5 for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Verify(e) => e.exit_code(),
            CliError::Trust(e) => e.exit_code(),
            CliError::Key(KeyError::Io { .. } | KeyError::Exists { .. }) => 1,
            CliError::Key(_) => exit::BAD_CONFIG,
            CliError::Issue(IssueError::ReadSpec { .. }) => 1,
            CliError::Issue(_) => exit::USAGE,
            CliError::Io { .. } | CliError::Exists { .. } => 1,
            CliError::NoUid => exit::BAD_CONFIG,
            CliError::Ledger(e) => e.exit_code(),
            CliError::Refused(_) => exit::REFUSED,
        }
    }
}

/// Runs one parsed command; errors go to stderr prefixed `calyx: `.
pub fn run(cli: Cli) -> ExitCode {
    // An output that could not be written (other than to a reader that left) fails a
    // command that otherwise succeeded (see `out`).
    ExitCode::from(super::out::exit_code(run_command(cli)))
}

fn run_command(cli: Cli) -> u8 {
    // doctor has its own exit codes (125 when a required layer is missing).
    if let Command::Doctor { json, profile } = &cli.command {
        return super::doctor::run(*json, profile);
    }
    if let Command::Artifact(c) = &cli.command {
        return super::calyx_artifact::run(c);
    }
    if let Command::Receipt(c) = &cli.command {
        return super::calyx_receipt::run(c);
    }
    if let Command::Audit(cmd) = cli.command {
        return super::calyx_audit::run(cmd);
    }
    match dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("calyx: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Key(KeyCommand::Gen { out, id }) => key_gen(&out, id.as_deref()),
        Command::Trust(TrustCommand::Add {
            policy,
            public,
            id,
            role,
        }) => trust_add(&policy, &public, &id, role),
        Command::Lease(LeaseCommand::Issue(args)) => lease_issue(&args),
        Command::Lease(LeaseCommand::Sign { file, key }) => lease_sign(&file, &key),
        Command::Lease(LeaseCommand::Verify {
            file,
            trust,
            state_dir,
            json,
        }) => lease_verify(&file, trust, state_dir.as_deref(), json),
        Command::Lease(LeaseCommand::Show { file, trust, json }) => lease_show(&file, trust, json),
        Command::Lease(LeaseCommand::Revoke(args)) => Ok(calyx_ledger::revoke(&args)?),
        Command::Lease(LeaseCommand::List(args)) => Ok(calyx_ledger::list(&args)?),
        Command::Doctor { .. } | Command::Audit(_) | Command::Artifact(_) | Command::Receipt(_) => {
            Ok(())
        }
    }
}

fn euid() -> Result<u32, CliError> {
    super::effective_uid_from(Path::new("/proc/self/status")).ok_or(CliError::NoUid)
}

/// `--trust`, else the default location for this user (CALYX_TRUST, /etc/calyx, XDG).
fn trust_path(flag: Option<PathBuf>, uid: u32) -> PathBuf {
    flag.unwrap_or_else(|| crate::paths::default_locations(uid, &|k| std::env::var(k).ok()).trust)
}

fn key_gen(out: &Path, id: Option<&str>) -> Result<(), CliError> {
    let generated = keys::generate(out)?;
    match id {
        Some(id) => crate::outln!("{} {id}", generated.keyid),
        None => crate::outln!("{}", generated.keyid),
    }
    eprintln!(
        "calyx: wrote {} (private, 0600) and {}",
        generated.private_path.display(),
        generated.public_path.display()
    );
    Ok(())
}

fn trust_add(policy: &Path, public: &Path, id: &str, role: RoleArg) -> Result<(), CliError> {
    let uid = euid()?;
    let key = keys::load_verifying_key(public)?;
    let role = match role {
        RoleArg::Human => Role::Human,
        RoleArg::Agent => Role::Agent,
    };
    // Extending a policy the caller could not load would launder a tampered file.
    let current = match TrustPolicy::load(policy, uid) {
        Ok(p) => p,
        Err(TrustError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            TrustPolicy::empty_default()
        }
        Err(e) => return Err(e.into()),
    };
    let created = current.keys.is_empty() && !policy.exists();
    let updated = current.with_key(id, role, &key, policy)?;
    updated.write(policy)?;
    let keyid = keys::keyid(&key);
    if created {
        crate::outln!(
            "created {} (requires 1 human + 1 agent signature); added {id} ({role}) {keyid}",
            policy.display()
        );
    } else {
        crate::outln!("added {id} ({role}) {keyid} to {}", policy.display());
    }
    Ok(())
}

fn lease_issue(args: &IssueArgs) -> Result<(), CliError> {
    let spec = match &args.from {
        Some(path) => calyx_issue::read_spec(path)?,
        None => Default::default(),
    };
    let mut random = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let env = IssueEnv {
        now: OffsetDateTime::now_utc(),
        random,
        user: std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "unknown".to_owned()),
    };
    let lease = calyx_issue::build_lease(spec, args, &env)?;
    // Pretty JSON keeps the payload readable after base64-decoding; its bytes are what is
    // signed, so the formatting never changes after this point.
    let body = serde_json::to_vec_pretty(&lease).map_err(|e| CliError::Io {
        op: "encoding lease for",
        path: args.out.clone(),
        source: std::io::Error::other(e),
    })?;
    let envelope = Envelope::unsigned(LEASE_PAYLOAD_TYPE, &body);
    if args.out.symlink_metadata().is_ok() {
        return Err(CliError::Exists {
            path: args.out.clone(),
        });
    }
    write_lease(&args.out, &envelope)?;
    crate::outln!("{}", lease.lease_id);
    eprintln!(
        "calyx: wrote unsigned lease {} valid {} from {}; cosign with `calyx lease sign {} --key KEY`",
        args.out.display(),
        format_duration_secs(
            u64::try_from((lease.expires_at - lease.not_before).whole_seconds()).unwrap_or(0)
        ),
        lease
            .not_before
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        args.out.display()
    );
    Ok(())
}

fn write_lease(path: &Path, envelope: &Envelope) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    // Keep the mode of a lease being cosigned in place; new leases are world-readable, since a
    // lease grants nothing without the runner's own trust policy.
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777);
    crate::lease::write_file_atomic(path, envelope.to_json_pretty().as_bytes(), mode).map_err(
        |source| CliError::Io {
            op: "writing lease",
            path: path.to_owned(),
            source,
        },
    )
}

/// Reads and parses the envelope of a lease file, checking its payloadType.
fn read_envelope(file: &Path) -> Result<Envelope, CliError> {
    let raw = verify::read_lease_file(file)?;
    let envelope = Envelope::from_json(&raw).map_err(VerifyError::from)?;
    if envelope.payload_type != LEASE_PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType {
            found: envelope.payload_type,
        }
        .into());
    }
    Ok(envelope)
}

fn lease_sign(file: &Path, key: &Path) -> Result<(), CliError> {
    let signing = keys::load_signing_key(key)?;
    let mut envelope = read_envelope(file)?;
    match envelope.sign(&signing).map_err(VerifyError::from)? {
        SignOutcome::AlreadySigned { keyid } => {
            crate::outln!(
                "{} is already signed by key {keyid}; nothing changed",
                file.display()
            );
        }
        SignOutcome::Added { keyid } => {
            write_lease(file, &envelope)?;
            crate::outln!(
                "signed {} with key {keyid} ({} signature{})",
                file.display(),
                envelope.signatures.len(),
                if envelope.signatures.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
        }
    }
    Ok(())
}

fn lease_verify(
    file: &Path,
    trust: Option<PathBuf>,
    state_dir: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    // Valid now means calyx-run would run it now: the ledger is asked once the signatures
    // hold (a forged file must not even reach the ledger's lookup).
    let outcome = verify_now(file, trust).and_then(|v| {
        let standing =
            calyx_ledger::standing(state_dir, &crate::ledger::LeaseRecord::of(&v.lease))?;
        match standing.refusal {
            Some(r) => Err(CliError::Refused(r)),
            None => Ok((v, standing)),
        }
    });
    match (&outcome, json) {
        (Ok((v, standing)), false) => {
            let signers: Vec<String> = v
                .signers
                .iter()
                .map(|s| format!("{} ({})", s.id, s.role))
                .collect();
            let left =
                u64::try_from((v.lease.expires_at - OffsetDateTime::now_utc()).whole_seconds())
                    .unwrap_or(0);
            // The count is this host's (or this state directory's): say whose.
            let whose = match &standing.ledger {
                Ok(file) => format!("ledger {}", file.display()),
                Err(dir) => format!("no ledger in {}", dir.display()),
            };
            crate::outln!(
                "OK {} for intent {}: signed by {}; expires in {}; {} of {} use(s) taken ({whose})",
                v.lease.lease_id,
                v.lease.intent_id,
                signers.join(", "),
                format_duration_secs(left),
                standing.used,
                v.lease.max_uses
            );
        }
        (Ok((v, standing)), true) => {
            let signers: Vec<serde_json::Value> = v
                .signers
                .iter()
                .map(|s| serde_json::json!({"id": s.id, "keyid": s.keyid, "role": s.role}))
                .collect();
            crate::outln!(
                "{}",
                serde_json::json!({
                    "ok": true,
                    "lease_id": v.lease.lease_id,
                    "intent_id": v.lease.intent_id,
                    "payload_sha256": v.payload_sha256,
                    "signers": signers,
                    "expires_at": v.lease.expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
                    "uses": {
                        "used": standing.used,
                        "max": v.lease.max_uses,
                        "ledger": standing.ledger.as_ref().ok(),
                    },
                })
            );
        }
        (Err(e), true) => crate::outln!(
            "{}",
            serde_json::json!({"ok": false, "reason": e.to_string(), "exit_code": e.exit_code()})
        ),
        (Err(_), false) => {}
    }
    outcome.map(|_| ())
}

fn verify_now(file: &Path, trust: Option<PathBuf>) -> Result<verify::Verified, CliError> {
    let uid = euid()?;
    let policy = TrustPolicy::load(&trust_path(trust, uid), uid)?;
    let raw = verify::read_lease_file(file)?;
    let ctx = VerifyContext {
        now: OffsetDateTime::now_utc(),
        host_ids: verify::local_host_ids(),
    };
    Ok(verify::verify_envelope_bytes(&raw, &policy, &ctx)?)
}

fn lease_show(file: &Path, trust: Option<PathBuf>, json: bool) -> Result<(), CliError> {
    let uid = euid()?;
    let explicit = trust.is_some();
    let policy_path = trust_path(trust, uid);
    // An explicit policy must load; the default one may simply not exist yet.
    let policy = match TrustPolicy::load(&policy_path, uid) {
        Ok(p) => Some(p),
        Err(TrustError::Io { source, .. })
            if !explicit && source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let raw = verify::read_lease_file(file)?;
    let ctx = VerifyContext {
        now: OffsetDateTime::now_utc(),
        host_ids: verify::local_host_ids(),
    };
    let report = calyx_show::build_report(&raw, policy.as_ref(), &policy_path, &ctx)?;
    if json {
        crate::outln!("{}", calyx_show::report_json(&report));
    } else {
        crate::out!("{}", calyx_show::report_text(&report, &ctx));
    }
    Ok(())
}

impl From<EnvelopeError> for CliError {
    fn from(e: EnvelopeError) -> Self {
        CliError::Verify(VerifyError::from(e))
    }
}
