//! `calyx-run`: verify a lease, plan, run the command in the sandbox, report.
//!
//! [`Args`] is pure clap parsing (no syscalls); [`main`] does the rest in the order of
//! SPEC §4.1 and maps every failure to a SPEC §4.5 exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use crate::audit::{Appended, AuditLog, Durability, RunIds, names};
use crate::exit;
use crate::features;
use crate::lease::model::Lease;
use crate::lease::trust::TrustPolicy;
use crate::lease::verify::{self, VerifyContext};
use crate::ledger::run_use::{RunUse, UseStop};
use crate::plan::{self, Plan, PlanInput, ProfileSpec, RealFs, SystemEntry};
use crate::profile::{Profile, ViewEntry};
use crate::sentinel::watch::{Applied, SentinelEvent};
use crate::stage::confine::Confinement;
use crate::stage::parent::{self, Outcome, RunReport};
use crate::stage::resources;
use crate::sys;

use super::out;
use super::result::{Enforcement, RunResult};
use super::run_outputs::{self, ReceiptInputs};

const EXIT_CODES: &str = "\
Exit codes:
  0-123  the command's own exit status
  128+N  the command was killed by signal N (not sent by calyx)
  77     refused: lease or authorization (nothing ran)
  78     refused: bad configuration, profile or trust policy (nothing ran)
  124    wall-clock timeout
  125    calyx could not set up the sandbox, or a required layer is missing (nothing ran)
  126    command not executable inside the sandbox
  127    command not found inside the sandbox
  137    halted by the sentinel (outcome \"halted\"); an OOM kill at the memory limit is
         also 137, as 128+9, with outcome \"signaled\" and usage.oom_kills set";

/// Command-line arguments of `calyx-run`.
#[derive(Debug, PartialEq, Eq, Parser)]
#[command(name = "calyx-run", version, about = "Verify a lease and run one command inside the calyx sandbox", after_help = EXIT_CODES)]
pub struct Args {
    /// Signed lease envelope (DSSE JSON).
    #[arg(long, value_name = "FILE")]
    pub lease: PathBuf,
    /// Trust policy (default: /etc/calyx/trust.toml for root, XDG config otherwise; CALYX_TRUST).
    #[arg(long, value_name = "POLICY")]
    pub trust: Option<PathBuf>,
    /// State directory (default: /var/lib/calyx or XDG state; CALYX_STATE_DIR).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Audit log (default: STATE_DIR/audit.jsonl; CALYX_AUDIT_LOG).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Print the machine result (or, with --dry-run, the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the machine result to FILE.
    #[arg(long, value_name = "FILE")]
    pub result: Option<PathBuf>,
    /// Verify and plan, print the plan, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the run's cgroup under this cgroup (a path relative to each hierarchy's root,
    /// e.g. /calyx.slice) instead of under calyx-run's own cgroup.
    #[arg(long, value_name = "CGROUP")]
    pub cgroup_parent: Option<String>,
    /// Private key that signs run receipts (default: $CALYX_HOST_KEY, else
    /// STATE_DIR/host-key.pem, generated on first use).
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,
    /// Interval of resource_event.MONITORED samples in the audit log, milliseconds (0: none).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub monitor_interval_ms: u64,
    /// The command: absolute executable path as in the lease, then its arguments.
    // Required: an empty command is a usage error (exit 2); there is nothing to authorize.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// A refusal or failure before the payload: message and exit code.
struct Stop {
    code: u8,
    outcome: Outcome,
    message: String,
}

fn stop(code: u8, outcome: Outcome, message: impl Into<String>) -> Stop {
    Stop {
        code,
        outcome,
        message: message.into(),
    }
}

/// Runs `calyx-run` with parsed arguments; returns the process exit code.
pub fn main(args: Args) -> u8 {
    let started = Instant::now();
    // Started setuid/setgid (or with file capabilities), calyx refuses: it is built to run with
    // exactly the caller's privileges and must never be a confused deputy.
    let ids = sys::proc::ids();
    if ids.uid != ids.euid || ids.gid != ids.egid || sys::proc::at_secure() {
        eprintln!(
            "calyx-run: refusing to run setuid or setgid (real uid {}, effective uid {}); install calyx-run without the setuid bit",
            ids.uid, ids.euid
        );
        return exit::SETUP_FAILED;
    }
    // A closed stdin/stdout/stderr would let the audit log or the channel take that number and
    // reach the payload as a standard stream. Rust's runtime does this today too; the explicit
    // check keeps the guarantee ours.
    if let Err(e) = sys::fs::ensure_std_fds() {
        eprintln!("calyx-run: opening /dev/null for a closed standard descriptor: {e}");
        return exit::SETUP_FAILED;
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    crate::timeline::start(lookup("CALYX_TIMELINE").as_deref() == Some("1"), started);
    let mut loc = crate::paths::default_locations(ids.euid, &lookup);
    if let Some(d) = &args.state_dir {
        loc.audit_log = d.join("audit.jsonl");
        loc.state_dir = d.clone();
    }
    if let Some(t) = &args.trust {
        loc.trust = t.clone();
    }
    if let Some(a) = &args.audit_log {
        loc.audit_log = a.clone();
    }
    if lookup("CALYX_AUDIT_LOG").is_some_and(|v| !v.is_empty()) && args.audit_log.is_none() {
        loc.audit_log = PathBuf::from(lookup("CALYX_AUDIT_LOG").unwrap_or_default());
    }
    let host = crate::sys::proc::hostname();
    let mut ids_audit = RunIds {
        run_id: new_run_id(),
        lease_id: None,
        intent_id: None,
    };

    // The audit log first: a run whose records cannot be written does not happen. A dry run
    // runs nothing and records nothing.
    let mut audit = if args.dry_run {
        None
    } else {
        match AuditLog::open(&loc.audit_log, host.clone()) {
            Ok(a) => {
                crate::timeline::mark("audit log opened");
                Some(a)
            }
            Err(e) => {
                eprintln!("calyx-run: {e}");
                return exit::SETUP_FAILED;
            }
        }
    };
    let mut result = RunResult::new(&ids_audit.run_id, &args.command);

    // The host key is loaded (or created) before anything runs: a run that could not be
    // given a receipt is refused up front rather than discovered afterwards. Not for dry runs.
    if cfg!(feature = "bench-baseline") {
        eprintln!(
            "calyx-run: this is a bench-baseline build: no lease ledger and no receipts; it \
             exists only for `cargo xtask bench` and must never be installed"
        );
    }
    let key_source = (!args.dry_run && !cfg!(feature = "bench-baseline")).then(|| {
        crate::receipt::hostkey::resolve(
            args.host_key.as_deref(),
            lookup("CALYX_HOST_KEY").as_deref(),
            &loc.state_dir,
        )
    });
    let prepared = prepare(&args, &loc.trust, key_source.as_ref(), ids, &env);
    let (lease, plan, profile, sealed) = match prepared {
        Ok(p) => p,
        Err((lease_ids, s)) => {
            if let Some((lease_id, intent_id)) = lease_ids {
                ids_audit.lease_id = Some(lease_id);
                ids_audit.intent_id = Some(intent_id);
            }
            eprintln!("calyx-run: {}", s.message);
            if let Some(a) = audit.as_mut() {
                let fields =
                    json!({"reason": s.message, "exit_code": s.code, "argv": args.command});
                if let Err(e) = a.append(
                    names::LEASE_REJECTED,
                    &ids_audit,
                    fields,
                    Durability::Synced,
                ) {
                    eprintln!("calyx-run: {e}");
                }
            }
            result.fail(&ids_audit, s.outcome, s.code, s.message, started.elapsed());
            emit(&args, &result);
            return s.code;
        }
    };
    ids_audit.lease_id = Some(lease.lease_id.clone());
    ids_audit.intent_id = Some(lease.intent_id.clone());

    if args.dry_run {
        return match print_plan(&args, &lease, &plan) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("calyx-run: writing the plan to standard output: {e}");
                exit::SETUP_FAILED
            }
        };
    }
    let receipt_inputs = sealed.map(|(key, lease_sha256)| ReceiptInputs {
        key,
        lease_sha256,
        host: host.clone(),
        state_dir: loc.state_dir.clone(),
    });
    // Opened (or, inside a write grant, hashed) before the clone; see receipt::exe.
    let exe_job = receipt_inputs
        .as_ref()
        .map(|_| crate::receipt::ExeDigestJob::prepare(&plan));
    let code = run_planned(
        &args,
        (&lease, &plan, &profile),
        Outputs {
            receipt: receipt_inputs.as_ref(),
            exe_job,
            state_dir: &loc.state_dir,
        },
        audit.as_mut(),
        &ids_audit,
        &mut result,
        started,
    );
    emit(&args, &result);
    crate::timeline::print("calyx-run");
    code
}

/// The lease, its plan and profile, and for real runs the host key and the lease's SHA-256.
type Prepared = (
    Lease,
    Plan,
    Profile,
    Option<(Result<ed25519_dalek::SigningKey, String>, String)>,
);

/// Verify → profile → features → plan → host key. Returns the lease (when parsed) with every
/// refusal.
fn prepare(
    args: &Args,
    trust: &Path,
    key_source: Option<&crate::receipt::hostkey::HostKeySource>,
    ids: sys::proc::Ids,
    env: &[(String, String)],
) -> Result<Prepared, (Option<(String, String)>, Stop)> {
    let policy = TrustPolicy::load(trust, ids.uid)
        .map_err(|e| (None, stop(e.exit_code(), Outcome::Rejected, e.to_string())))?;
    crate::timeline::mark("trust policy loaded");
    let raw = verify::read_lease_file(&args.lease).map_err(|e| {
        (
            None,
            stop(e.exit_code(), Outcome::Rejected, format!("refused: {e}")),
        )
    })?;
    let ctx = VerifyContext {
        now: time::OffsetDateTime::now_utc(),
        host_ids: verify::local_host_ids(),
    };
    let verified = verify::verify_envelope_bytes(&raw, &policy, &ctx).map_err(|e| {
        (
            None,
            stop(e.exit_code(), Outcome::Rejected, format!("refused: {e}")),
        )
    })?;
    let lease = verified.lease;
    crate::timeline::mark("lease read and verified");
    let with = |l: &Lease, s: Stop| (Some((l.lease_id.clone(), l.intent_id.clone())), s);
    let profile = Profile::builtin(&lease.profile).map_err(|e| {
        with(
            &lease,
            stop(e.exit_code(), Outcome::Rejected, e.to_string()),
        )
    })?;
    let spec = profile_spec(&profile).map_err(|e| {
        with(
            &lease,
            stop(e.exit_code(), Outcome::Rejected, e.to_string()),
        )
    })?;
    crate::timeline::mark("profile resolved");
    let features = features::probe(ids.euid);
    crate::timeline::mark("host features probed");
    let input = PlanInput {
        lease: &lease,
        profile: &spec,
        features: &features,
        argv: &args.command,
        caller_env: env,
        caller_ids: (ids.uid, ids.gid),
        host: &RealFs,
    };
    let plan = plan::plan(&input).map_err(|e| {
        let outcome = if e.exit_code() == exit::SETUP_FAILED {
            Outcome::SetupFailed
        } else {
            Outcome::Rejected
        };
        with(&lease, stop(e.exit_code(), outcome, e.to_string()))
    })?;
    crate::timeline::mark("planned");
    let sealed = match key_source {
        None => None,
        Some(src) => {
            let key = run_outputs::host_key_for_run(src)
                .map_err(|msg| with(&lease, stop(exit::BAD_CONFIG, Outcome::Rejected, msg)))?;
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw));
            crate::timeline::mark("host key loaded, lease hashed");
            Some((key, digest))
        }
    };
    Ok((lease, plan, profile, sealed))
}

/// The planner's view of a loaded profile (its view resolved against the real host).
fn profile_spec(p: &Profile) -> Result<ProfileSpec, crate::profile::ProfileError> {
    let system = p
        .resolve_view(Path::new("/"))?
        .into_iter()
        .map(|e| match e {
            ViewEntry::Bind { path, exec, dir } => SystemEntry::Bind { path, exec, dir },
            ViewEntry::Symlink { path, target } => SystemEntry::Symlink { path, target },
        })
        .collect();
    Ok(ProfileSpec {
        name: p.name.clone(),
        system,
        tmp_bytes: p.limits.tmp_bytes.unwrap_or(64 << 20),
        timeout_secs: p.limits.timeout_secs.unwrap_or(600),
        rlimits: p
            .rlimits
            .iter()
            .map(|(r, v)| (r.name().to_owned(), *v))
            .collect(),
        require: p.layers.clone(),
        landlock_min_abi: u32::from(p.landlock_min_abi),
    })
}

/// Where the run's durable outputs go: state directory (ledger, artifacts), receipt inputs
/// and the executable's digest job.
struct Outputs<'a> {
    receipt: Option<&'a ReceiptInputs>,
    exe_job: Option<crate::receipt::ExeDigestJob>,
    state_dir: &'a Path,
}

fn run_planned(
    args: &Args,
    (lease, plan, profile): (&Lease, &Plan, &Profile),
    Outputs {
        receipt,
        exe_job,
        state_dir,
    }: Outputs<'_>,
    audit: Option<&mut AuditLog>,
    ids: &RunIds,
    result: &mut RunResult,
    started: Instant,
) -> u8 {
    let Some(audit) = audit else {
        return exit::SETUP_FAILED;
    };
    let fail = |result: &mut RunResult, audit: &mut AuditLog, msg: String| {
        eprintln!("calyx-run: {msg}");
        let _ = audit.append(names::EXEC_FINISHED, ids, json!({"argv": plan.argv, "outcome": "setup_failed", "exit_code": exit::SETUP_FAILED, "error": msg}), Durability::Synced);
        result.fail(
            ids,
            Outcome::SetupFailed,
            exit::SETUP_FAILED,
            msg,
            started.elapsed(),
        );
        exit::SETUP_FAILED
    };
    // The ledger is opened and the use taken on a thread from the clone on (`Hooks`); a run
    // it cannot record, or refuses, never starts its payload.
    let mut lease_use = RunUse::new(state_dir, lease, &ids.run_id);
    // Everything the child will need is built now, before the clone (2 in SPEC §4.1).
    let mut confine = match Confinement::prepare(plan, profile) {
        Ok(c) => c,
        Err(e) => return fail(result, audit, e.to_string()),
    };
    crate::timeline::mark("confinement prepared (seccomp compiled)");
    // Stage 3, before the clone: the cgroup exists with its limits read back, so init is
    // born inside it and nothing of the run escapes accounting.
    let resources = match resources::setup(&resources::SetupInput {
        run_id: &ids.run_id,
        cgroup_parent: args.cgroup_parent.as_deref(),
        lease,
        profile_limits: &profile.limits,
        required: &plan.required_layers,
        timeout_secs: plan.timeout_ms / 1000,
        monitor_interval: (args.monitor_interval_ms > 0)
            .then(|| Duration::from_millis(args.monitor_interval_ms)),
        uid: sys::cgroup_sys::effective_uid(),
        gid: sys::cgroup_sys::effective_gid(),
    }) {
        Ok(r) => r,
        Err(refusal) => return fail(result, audit, refusal),
    };
    crate::timeline::mark("cgroup created, limits read back");
    confine.add_fallback_rlimits(&resources.fallback);
    let mut enforcement = Enforcement::planned(plan, &confine);
    enforcement.cgroup = resources.status.clone();
    let watched = match (resources.cgroup, resources.watch) {
        (Some(cgroup), Some(config)) => Some(parent::Watched {
            cgroup: Arc::new(cgroup),
            config,
            sweep: resources.sweep,
        }),
        _ => None,
    };
    let ctx = match crate::stage::build_init_context(plan, confine) {
        Ok(c) => c,
        Err(e) => {
            remove_unused(watched.as_ref());
            return fail(result, audit, e);
        }
    };
    let verified = match audit.append(
        names::LEASE_VERIFIED,
        ids,
        json!({"argv": plan.argv, "profile": plan.profile, "rule": plan.rule_index}),
        Durability::Buffered,
    ) {
        Ok(a) => a,
        Err(e) => {
            remove_unused(watched.as_ref());
            return fail(result, audit, e.to_string());
        }
    };
    crate::timeline::mark("init context built, VERIFIED buffered");
    let timeout = Duration::from_millis(plan.timeout_ms);
    let mut hooks = Hooks {
        audit: &mut *audit,
        ids,
        plan,
        enforcement: &enforcement,
        exe_job,
        copy_dir: receipt
            .filter(|r| r.key.is_ok())
            .map(|r| r.state_dir.as_path()),
        copy: None,
        lease_use: &mut lease_use,
        opening: verified,
    };
    let mut teardown = parent::Teardown::default();
    // Artifacts are copied out of the write grants once every process of the run is gone;
    // without any, the closing record need not wait for init's teardown.
    let close = if plan.artifacts.items.is_empty() {
        parent::Close::AtPayloadExit
    } else {
        parent::Close::AfterInit
    };
    let mut report: RunReport = parent::run(
        &ctx,
        plan.uid_map,
        plan.gid_map,
        timeout,
        &mut hooks,
        watched,
        close,
        &mut teardown,
    );
    let exe_job = hooks.exe_job.take();
    let copy = hooks.copy.take();
    let opening = hooks.opening.clone();
    // A use the ledger refused stopped the run before its payload: a lease refusal (77).
    if let Some(refusal) = lease_use.refusal() {
        report.outcome = Outcome::Rejected;
        report.exit_code = exit::REFUSED;
        report.error = Some(format!("refused: {refusal}"));
    }
    if let Some((level, abi)) = report.landlock {
        enforcement.landlock_reported(level, abi);
    }
    let duration = started.elapsed();
    if let Some(e) = &report.error {
        let exe = plan.argv.first().map(String::as_str).unwrap_or("");
        match report.exit_code {
            exit::NOT_EXECUTABLE | exit::NOT_FOUND if report.outcome == Outcome::Exited => {
                eprintln!("calyx-run: {exe} inside the sandbox: {e}");
            }
            _ => eprintln!("calyx-run: {e}"),
        }
    }
    if report.outcome == Outcome::Timeout {
        eprintln!("calyx-run: timed out after {} ms", plan.timeout_ms);
    }
    if let Some(h) = report
        .halt
        .as_ref()
        .filter(|_| report.outcome == Outcome::Halted)
    {
        eprintln!(
            "calyx-run: halted by the sentinel: {:?} {} above {} ({})",
            h.rule.metric, h.value, h.threshold, h.applied
        );
    }
    result.finish(ids, &report, &enforcement, duration);
    // Stage 15: the cgroup is gone (parent::run removed it) and every process of the run with
    // it, so nothing changes the write grants while their artifacts are copied.
    let payload_ran = !matches!(report.outcome, Outcome::Rejected | Outcome::SetupFailed);
    if payload_ran {
        run_outputs::persist_artifacts(plan, state_dir, audit, ids, result);
        crate::timeline::mark("artifacts persisted");
    }
    // A pinned digest that does not match is a lease refusal found late (on the opened file).
    let name = if report.outcome == Outcome::Timeout {
        names::EXEC_TIMEOUT
    } else if report.outcome == Outcome::Halted {
        names::EXEC_HALTED
    } else if report.outcome == Outcome::Rejected {
        names::LEASE_REJECTED
    } else {
        names::EXEC_FINISHED
    };
    let mut fields = json!({"argv": plan.argv, "outcome": report.outcome, "exit_code": report.exit_code, "duration_ms": duration.as_millis() as u64, "enforcement": enforcement, "usage": report.usage, "error": report.error});
    if report.outcome == Outcome::Rejected {
        fields["reason"] = json!(report.error);
    }
    if let Some(h) = &report.halt {
        fields["halt"] = json!(h);
    }
    // The receipt is signed first and travels in the closing record: the record's one
    // fdatasync makes both durable. The receipt's copy in STATE_DIR/receipts (not synced; see
    // receipt::write_copy) and the ledger's last outcome are written once that sync is done,
    // on this thread, so a copy exists only where its record is on disk. (Written on a second
    // thread beside the sync, the copy had to be withdrawn when the sync failed, and the run
    // was no faster: paired comparisons of 500 to 800 rounds, -0.10, +0.15 and 0.00 ms.)
    let signed = receipt.and_then(|r| {
        let executable = exe_job.map(crate::receipt::ExeDigestJob::finish);
        let env = run_outputs::sign_receipt(r, plan, executable, result, &opening);
        crate::timeline::mark("receipt signed");
        env
    });
    if let Some(env) = &signed {
        fields[crate::receipt::AUDIT_FIELD] = json!(env);
    }
    let closing = audit
        .append(name, ids, fields, Durability::Buffered)
        .and_then(|_| audit.sync())
        .map_err(|e| e.to_string());
    match (&closing, receipt, &signed) {
        (Ok(()), Some(r), Some(env)) => {
            crate::timeline::mark("closing record synced");
            run_outputs::write_receipt_copy(r, result, env, copy);
            crate::timeline::mark("receipt copy written");
        }
        (Ok(()), ..) => crate::timeline::mark("closing record synced"),
        (Err(e), Some(_), Some(_)) => {
            eprintln!("calyx-run: {e}");
            let msg = "receipt not written: the closing audit record could not be written";
            eprintln!("calyx-run: {msg}");
            result.receipt_error = Some(msg.to_owned());
        }
        (Err(e), ..) => eprintln!("calyx-run: {e}"),
    }
    // Not synced: the closing record is the durable account of the run.
    let outcome = serde_json::to_value(report.outcome).unwrap_or_default();
    let ledger_end = lease_use.finish(outcome.as_str().unwrap_or("unknown"), report.exit_code);
    if let Err(e) = ledger_end {
        eprintln!("calyx-run: {e}");
    }
    crate::timeline::mark("ledger outcome recorded");
    teardown.wait();
    crate::timeline::mark("cgroup removed (teardown joined)");
    report.exit_code
}

/// The audit side of the run, called by the parent stage.
struct Hooks<'a> {
    audit: &'a mut AuditLog,
    ids: &'a RunIds,
    plan: &'a Plan,
    enforcement: &'a Enforcement,
    /// The executable digest, hashed on a thread from here on (see receipt::exe).
    exe_job: Option<crate::receipt::ExeDigestJob>,
    /// Where the receipt's copy goes, for a run that will have a receipt.
    copy_dir: Option<&'a Path>,
    /// The copy's file, made ready while the payload runs (see receipt::CopyFile).
    copy: Option<Result<crate::receipt::CopyFile, crate::receipt::ReceiptError>>,
    lease_use: &'a mut RunUse,
    /// The run's opening audit line, which its receipt points at: VERIFIED, then STARTED once
    /// that is written.
    opening: Appended,
}

impl parent::RunHooks for Hooks<'_> {
    fn cloned(&mut self) {
        // The runner may have threads from here on; the payload does not exist yet. The
        // ledger's open and commit run beside the rest of the setup (the sentinel, init
        // building its view).
        self.lease_use.begin();
    }

    fn started(&mut self) {
        // The executable's digest is needed only by the receipt: hashed beside the payload.
        self.exe_job = self.exe_job.take().map(crate::receipt::ExeDigestJob::start);
        // And the receipt's copy is made ready meanwhile: at the end it is a write and a link.
        self.copy = self.copy_dir.map(crate::receipt::CopyFile::prepare);
    }

    fn released(&mut self) -> Result<(), String> {
        // The use must be granted before Start lets init fork the payload. A refusal, or a
        // ledger that cannot record the use, returns Err and the parent kills init before
        // Start: nothing of the payload has run. A refused run has no start record.
        //
        // STARTED is on disk before the payload can exist: no run without its record. It is
        // written once the ledger has granted the use (written, its write lock held) and
        // synced while the ledger's commit is: two fsyncs side by side rather than one after
        // the other. Should that commit then fail, the run stops here with STARTED on disk
        // and its closing record says setup_failed: the log may name a start that never ran
        // a payload, never the reverse. It carries the planned enforcement; FINISHED carries
        // what init achieved.
        let (audit, ids, plan, enforcement) =
            (&mut *self.audit, self.ids, self.plan, self.enforcement);
        let (taken, started) = self.lease_use.take_beside(|| {
            audit
                .append(
                    names::EXEC_STARTED,
                    ids,
                    json!({"argv": plan.argv, "profile": plan.profile, "enforcement": enforcement}),
                    Durability::Synced,
                )
                .inspect(|_| crate::timeline::mark("STARTED synced"))
                .map_err(|e| e.to_string())
        });
        let started =
            started.unwrap_or_else(|| Err("exec_event.STARTED was not written".to_owned()));
        if let Ok(a) = &started {
            self.opening = a.clone();
        }
        taken.map_err(|stop: UseStop| stop.to_string())?;
        crate::timeline::mark("lease use taken (ledger synced)");
        started.map(drop)
    }

    fn sentinel_event(&mut self, event: &SentinelEvent) {
        // Halts are synced (they explain the end of the run); samples are buffered and reach
        // the disk with the next synced record.
        let durability = match event {
            SentinelEvent::Halted { .. } => Durability::Synced,
            _ => Durability::Buffered,
        };
        if let SentinelEvent::Halted {
            decision,
            applied: Applied::Frozen(_),
        } = event
        {
            eprintln!(
                "calyx-run: frozen by the sentinel ({:?} {} above {}); the run waits, the \
                 timeout still applies; thaw it by writing 0 to cgroup.freeze (v2) or THAWED \
                 to freezer.state (v1) of its cgroup calyx-{}",
                decision.rule.metric, decision.value, decision.threshold, self.ids.run_id
            );
        }
        if let Err(e) = self.audit.append(
            event.event_name(),
            self.ids,
            event.audit_fields(),
            durability,
        ) {
            eprintln!("calyx-run: {e}");
        }
    }
}

/// Removes a cgroup created at stage 3 when the run stops before the clone.
fn remove_unused(watched: Option<&parent::Watched>) {
    if let Some(w) = watched {
        if let Err(e) = w.cgroup.remove() {
            eprintln!("calyx-run: {e} (the next run removes it)");
        }
    }
}

fn print_plan(args: &Args, lease: &Lease, plan: &Plan) -> std::io::Result<()> {
    if args.json {
        let text = serde_json::to_string_pretty(
            &json!({"lease_id": lease.lease_id, "intent_id": lease.intent_id, "plan": plan}),
        )
        .unwrap_or_default();
        return out::try_write(format_args!("{text}\n"));
    }
    out::try_write(format_args!("{}", super::result::human_plan(lease, plan)))
}

/// The run's JSON result to standard output (`--json`) and to `--result FILE`. A reader that
/// has gone away (`calyx-run --json … | head -c 100`) costs the result on standard output,
/// said on stderr, never the run's exit code: the run is over and its audit records are
/// written.
fn emit(args: &Args, result: &RunResult) {
    let text = serde_json::to_string(result).unwrap_or_default();
    if args.json && !args.dry_run {
        if let Err(e) = out::try_write(format_args!("{text}\n")) {
            eprintln!("calyx-run: writing the result to standard output: {e}");
        }
    }
    if let Some(path) = &args.result {
        if let Err(e) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("calyx-run: writing result {}: {e}", path.display());
        }
    }
}

fn new_run_id() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    let now = time::OffsetDateTime::now_utc();
    format!(
        "RUN-{:04}{:02}{:02}-{:02}{:02}{:02}-{}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        hex::encode(b)
    )
}
