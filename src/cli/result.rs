//! The machine result of a run (`--json`, `--result FILE`) and the per-layer enforcement status
//! shared with the audit events, plus the human rendering of a plan for `--dry-run`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::audit::RunIds;
use crate::lease::model::{Lease, Network};
use crate::plan::{Access, MountStep, Plan};
use crate::stage::channel::LandlockLevel;
use crate::stage::confine::Confinement;
use crate::stage::parent::{Outcome, RunReport, Usage};

/// What each layer achieved, as strings a person can read in a log.
#[derive(Debug, Clone, Serialize)]
pub struct Enforcement {
    /// Namespaces created by the clone.
    pub namespaces: Vec<&'static str>,
    /// Filesystem view.
    pub mounts: String,
    /// Landlock, e.g. `full (ABI 7)`; `pending` until init reports.
    pub landlock: String,
    /// Seccomp status line.
    pub seccomp: String,
    /// Capabilities.
    pub capabilities: &'static str,
    /// no_new_privs.
    pub no_new_privs: &'static str,
    /// rlimits in force.
    pub rlimits: String,
    /// Network mode.
    pub network: &'static str,
    /// The run's cgroup: backend, limits, sentinel, gaps; or why there is none.
    pub cgroup: String,
}

impl Enforcement {
    /// Status before the clone: what the plan and the prepared confinement will apply.
    pub fn planned(plan: &Plan, confine: &Confinement) -> Enforcement {
        let binds = plan
            .mounts
            .iter()
            .filter(|m| matches!(m, MountStep::Bind { .. }))
            .count();
        Enforcement {
            namespaces: plan.namespaces.clone(),
            mounts: format!(
                "tmpfs root (read-only), {binds} binds nosuid+nodev, /proc, /dev, /tmp; pivot_root, host root detached"
            ),
            landlock: format!(
                "planned, floor ABI {} (achieved level in FINISHED)",
                plan.landlock.min_abi
            ),
            seccomp: confine
                .seccomp_status()
                .trim_start_matches("seccomp: ")
                .to_owned(),
            capabilities: "all five sets empty",
            no_new_privs: "set",
            rlimits: confine.rlimits_requested(),
            network: match plan.network {
                Network::None => "none",
                Network::Loopback => "loopback",
            },
            cgroup: "pending".to_owned(),
        }
    }

    /// Records what init reported.
    pub fn landlock_reported(&mut self, level: LandlockLevel, abi: u32) {
        self.landlock = match level {
            LandlockLevel::Full => format!("full (ABI {abi})"),
            LandlockLevel::Partial => format!("partial (ABI {abi})"),
            LandlockLevel::None => "not enforced".to_owned(),
        };
    }
}

/// The machine result.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Run id.
    pub run_id: String,
    /// Lease id (null when the lease could not be authenticated).
    pub lease_id: Option<String>,
    /// Intent id.
    pub intent_id: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// calyx-run's exit code.
    pub exit_code: u8,
    /// Signal that killed the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Wall time of the whole calyx-run invocation, milliseconds.
    pub duration_ms: u64,
    /// argv.
    pub argv: Vec<String>,
    /// Per-layer status (absent when nothing was set up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// Measured by wait4 on init.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Error or refusal reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The sentinel rule that halted the run: `{rule, value, threshold, applied}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt: Option<crate::stage::resources::HaltInfo>,
    /// Artifacts kept and skipped (when the lease names artifact paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<crate::artifact::collect::Collected>,
    /// Why no artifact could be kept (the store could not be written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts_error: Option<String>,
    /// The signed receipt of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<std::path::PathBuf>,
    /// Why the run has no receipt (its exit code is unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_error: Option<String>,
}

impl RunResult {
    /// A result with nothing decided yet.
    pub fn new(run_id: &str, argv: &[String]) -> RunResult {
        RunResult {
            run_id: run_id.to_owned(),
            lease_id: None,
            intent_id: None,
            outcome: Outcome::SetupFailed,
            exit_code: crate::exit::SETUP_FAILED,
            signal: None,
            duration_ms: 0,
            argv: argv.to_vec(),
            enforcement: None,
            usage: None,
            error: None,
            halt: None,
            artifacts: None,
            artifacts_error: None,
            receipt: None,
            receipt_error: None,
        }
    }

    fn ids(&mut self, ids: &RunIds) {
        self.lease_id = ids.lease_id.clone();
        self.intent_id = ids.intent_id.clone();
    }

    /// Fills in a refusal or setup failure.
    pub fn fail(&mut self, ids: &RunIds, outcome: Outcome, code: u8, error: String, d: Duration) {
        self.ids(ids);
        self.outcome = outcome;
        self.exit_code = code;
        self.error = Some(error);
        self.duration_ms = d.as_millis() as u64;
    }

    /// Fills in a run that reached the sandbox.
    pub fn finish(&mut self, ids: &RunIds, r: &RunReport, e: &Enforcement, d: Duration) {
        self.ids(ids);
        self.outcome = r.outcome;
        self.exit_code = r.exit_code;
        self.signal = r.signal;
        self.error = r.error.clone();
        self.usage = r.usage;
        self.halt = r.halt.clone();
        self.duration_ms = d.as_millis() as u64;
        self.enforcement = Some(e.clone());
    }
}

/// `--dry-run` without `--json`.
pub fn human_plan(lease: &Lease, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lease      {} (intent {})",
        lease.lease_id, lease.intent_id
    );
    let _ = writeln!(
        s,
        "argv       {:?}  (allowed by commands[{}]{})",
        plan.argv,
        plan.rule_index,
        if plan.exe_sha256.is_some() {
            ", sha256 pinned"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "profile    {}", plan.profile);
    let _ = writeln!(s, "namespaces {}", plan.namespaces.join(" "));
    let _ = writeln!(
        s,
        "ids        uid {} -> {}, gid {} -> {} (setgroups denied)",
        plan.uid_map.outside, plan.uid_map.inside, plan.gid_map.outside, plan.gid_map.inside
    );
    let _ = writeln!(
        s,
        "mounts     (fresh tmpfs root, read-only; pivot_root; host root detached)"
    );
    for m in &plan.mounts {
        let line = match m {
            MountStep::Bind {
                path, access, exec, ..
            } => format!(
                "bind   {} {}{}",
                path.display(),
                if *access == Access::Rw { "rw" } else { "ro" },
                if *exec { ",exec" } else { ",noexec" }
            ),
            MountStep::Symlink { path, target } => {
                format!("link   {} -> {}", path.display(), target.display())
            }
            MountStep::Tmpfs { path, size_bytes } => {
                format!("tmpfs  {} size={size_bytes}", path.display())
            }
            MountStep::Proc => "proc   /proc".to_owned(),
            MountStep::Dev { nodes } => format!("dev    /dev: {}", nodes.join(" ")),
        };
        let _ = writeln!(s, "           {line}");
    }
    let _ = writeln!(
        s,
        "landlock   floor ABI {}, {} rules{}",
        plan.landlock.min_abi,
        plan.landlock.rules.len(),
        if plan.landlock.deny_tcp {
            ", TCP bind/connect denied"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "seccomp    profile {} syscall set", plan.seccomp_profile);
    let _ = writeln!(
        s,
        "network    {}",
        match plan.network {
            Network::None => "none",
            Network::Loopback => "loopback",
        }
    );
    let _ = writeln!(
        s,
        "env        {}",
        plan.env
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "rlimits    {}",
        plan.rlimits
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(s, "timeout    {} ms", plan.timeout_ms);
    if !plan.artifacts.items.is_empty() {
        let paths: Vec<String> = plan
            .artifacts
            .items
            .iter()
            .map(|a| a.path.display().to_string())
            .collect();
        let _ = writeln!(
            s,
            "artifacts  {} (cap {} bytes)",
            paths.join(" "),
            plan.artifacts.max_bytes
        );
    }
    let layers: Vec<String> = plan
        .required_layers
        .iter()
        .map(|l| format!("{l:?}"))
        .collect();
    let _ = writeln!(s, "required   {}", layers.join(" "));
    s
}
