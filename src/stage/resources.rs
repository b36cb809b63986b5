//! The runner's resource layer (SPEC §4.1 stages 3, 7 and 15; §4.4): decide whether the run
//! needs a cgroup, create it with the lease's limits over the profile's defaults, build the
//! sentinel's configuration, and fall back to rlimits only where the lease allows it.
//!
//! # When a run gets a cgroup
//!
//! Every run tries to create one: quotas and the sentinel are part of the default sandbox.
//! Whether a failure refuses the run depends on who asked for what:
//!
//! - the profile or the lease `require`s the `cgroup` layer → refused (125) with the remedy;
//! - `--cgroup-parent` names where the cgroup must go → refused (125) when it cannot be made;
//! - the lease sets a cgroup-enforced limit (`memory_bytes`, `swap_bytes`, `pids`, `cpu`,
//!   `io_bps`) or its own `halt` rules → refused (125) with the remedy, unless
//!   `require.allow_rlimit_fallback` is set and every such limit has an rlimit stand-in;
//! - otherwise (only the profile's default limits) → the run goes ahead and the enforcement map
//!   says `cgroup: unavailable (…)`: an unprivileged user without delegation can still run a
//!   default lease, and nothing is degraded silently.
//!
//! Whatever the need, a cgroup that was created but whose limit reads back differently from
//! what was written (or an out-of-range limit) refuses the run: that is a quota that looks
//! applied and is not.
//!
//! # A frozen run
//!
//! A `freeze` rule freezes the cgroup and the runner keeps waiting: the wall-clock timeout
//! still applies (it kills through the cgroup, which also ends frozen processes). A person
//! with write access to the run's cgroup thaws it: `echo 0 > …/calyx-<run id>/cgroup.freeze`
//! (v2) or `echo THAWED > /sys/fs/cgroup/freezer/…/calyx-<run id>/freezer.state` (v1). A rule
//! that froze the run fires again only after its metric went back under the threshold.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cgroup::{
    self, CgroupError, CgroupMode, CreateOptions, InternalProcessPolicy, Layout, LimitSpec,
    RunCgroup,
};
use crate::isolate::rlimit::Resource;
use crate::lease::model::{HaltMetric, HaltRule, Layer, Lease, Limits};
use crate::sentinel::policy::{self, HaltPolicy};
use crate::sentinel::watch::WatchConfig;

/// A `calyx-*` cgroup older than this with no process in it is a dead run's leftover. Long
/// enough that a concurrent run between its mkdir and its clone (microseconds) is never taken.
pub const STALE_MIN_AGE: Duration = Duration::from_secs(5);

/// How much the run depends on its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A failure refuses the run; the string says why the cgroup is needed.
    Required {
        /// Why.
        why: String,
        /// The lease allows rlimits as a stand-in (never for an explicitly required layer).
        fallback_allowed: bool,
    },
    /// Only the profile's defaults would be enforced; a failure is reported, not fatal.
    BestEffort,
}

/// The lease's limits over the profile's defaults, field by field.
pub fn effective_limits(lease: &Limits, profile: &Limits) -> Limits {
    Limits {
        timeout_secs: lease.timeout_secs.or(profile.timeout_secs),
        memory_bytes: lease.memory_bytes.or(profile.memory_bytes),
        swap_bytes: lease.swap_bytes.or(profile.swap_bytes),
        pids: lease.pids.or(profile.pids),
        cpu: lease.cpu.or(profile.cpu),
        io_bps: lease.io_bps.or(profile.io_bps),
        output_bytes: lease.output_bytes.or(profile.output_bytes),
        tmp_bytes: lease.tmp_bytes.or(profile.tmp_bytes),
    }
}

/// Names of the cgroup-enforced limits the lease itself sets.
pub fn lease_cgroup_limits(l: &Limits) -> Vec<&'static str> {
    [
        ("memory", l.memory_bytes.is_some()),
        ("swap", l.swap_bytes.is_some()),
        ("pids", l.pids.is_some()),
        ("cpu", l.cpu.is_some()),
        ("io", l.io_bps.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect()
}

/// Decides [`Need`] from the lease and the layers the plan requires.
pub fn cgroup_need(lease: &Lease, required: &BTreeSet<Layer>) -> Need {
    if required.contains(&Layer::Cgroup) {
        return Need::Required {
            why: "the cgroup layer is required".to_owned(),
            fallback_allowed: false,
        };
    }
    let set = lease_cgroup_limits(&lease.limits);
    let fallback_allowed = lease.require.allow_rlimit_fallback;
    if !set.is_empty() {
        return Need::Required {
            why: format!("the lease sets cgroup limits ({})", set.join(", ")),
            fallback_allowed,
        };
    }
    if !lease.halt.is_empty() {
        return Need::Required {
            why: "the lease sets halt rules, which the sentinel applies on a cgroup".to_owned(),
            fallback_allowed,
        };
    }
    Need::BestEffort
}

/// rlimit stand-ins for the lease's cgroup limits, or why there is none.
///
/// - memory → `RLIMIT_AS`: per process and counting address space, not resident memory, so it
///   is both weaker (N processes may use N × the limit) and stricter (mappings count);
/// - cpu → `RLIMIT_CPU` of `ceil(cpu × timeout)` seconds: a per-process CPU-time budget, not
///   a rate;
/// - pids → none: `RLIMIT_NPROC` counts every process of the caller's uid on the whole host
///   (the payload keeps the caller's uid), so it would fail or be bypassed by unrelated
///   processes, and root ignores it;
/// - io, swap (without memory), halt rules → none.
pub fn rlimit_fallback(lease: &Lease, timeout_secs: u64) -> Result<Vec<(Resource, u64)>, String> {
    let l = &lease.limits;
    let mut out = Vec::new();
    if l.pids.is_some() {
        return Err(
            "pids has no rlimit stand-in (RLIMIT_NPROC counts every process of the \
                    caller's uid on the host, and root ignores it)"
                .to_owned(),
        );
    }
    if l.io_bps.is_some() {
        return Err("io has no rlimit stand-in".to_owned());
    }
    if !lease.halt.is_empty() {
        return Err("halt rules need the sentinel, which needs a cgroup".to_owned());
    }
    match (l.memory_bytes, l.swap_bytes) {
        (Some(m), swap) => out.push((Resource::As, m.saturating_add(swap.unwrap_or(0)))),
        (None, Some(_)) => return Err("swap alone has no rlimit stand-in".to_owned()),
        (None, None) => {}
    }
    if let Some(cpu) = l.cpu {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let secs = (cpu * timeout_secs as f64).ceil().max(1.0) as u64;
        out.push((Resource::Cpu, secs));
    }
    Ok(out)
}

/// Describes the fallback for the enforcement map.
pub fn describe_fallback(r: &[(Resource, u64)]) -> String {
    let parts: Vec<String> = r
        .iter()
        .map(|(res, v)| format!("{}={v}", res.name()))
        .collect();
    parts.join(", ")
}

/// Inputs of [`setup`].
#[derive(Debug)]
pub struct SetupInput<'a> {
    /// The run id (names the cgroup).
    pub run_id: &'a str,
    /// `--cgroup-parent`.
    pub cgroup_parent: Option<&'a str>,
    /// The verified lease.
    pub lease: &'a Lease,
    /// The profile's default limits.
    pub profile_limits: &'a Limits,
    /// Layers the plan requires.
    pub required: &'a BTreeSet<Layer>,
    /// Effective wall-clock limit.
    pub timeout_secs: u64,
    /// `resource_event.MONITORED` interval (None: no samples).
    pub monitor_interval: Option<Duration>,
    /// Caller's effective ids.
    pub uid: u32,
    /// Caller's effective gid.
    pub gid: u32,
}

/// What stage 3 produced.
#[derive(Debug)]
pub struct Resources {
    /// The run's cgroup, if one was created.
    pub cgroup: Option<RunCgroup>,
    /// The cgroup parents, to sweep for cgroups left by SIGKILLed runners once this run ends.
    pub sweep: Option<Layout>,
    /// The sentinel's configuration (with a cgroup only); kill_pid is set after the clone.
    pub watch: Option<WatchConfig>,
    /// rlimits to add to the payload's (fallback only).
    pub fallback: Vec<(Resource, u64)>,
    /// Status line for the enforcement map.
    pub status: String,
}

/// Stage 3: create the run's cgroup with its limits (read back), or refuse, or fall back.
/// Err is the refusal message (exit 125), with the remedy.
pub fn setup(input: &SetupInput<'_>) -> Result<Resources, String> {
    let mut need = cgroup_need(input.lease, input.required);
    // Naming a parent is asking for a cgroup: a wrong one is refused, not skipped.
    if input.cgroup_parent.is_some() && need == Need::BestEffort {
        need = Need::Required {
            why: "--cgroup-parent was given".to_owned(),
            fallback_allowed: false,
        };
    }
    let mut limits = effective_limits(&input.lease.limits, input.profile_limits);
    limits.timeout_secs = Some(input.timeout_secs);
    // Halt rules are built first: a bad lease rule refuses the run whether or not a cgroup
    // can be made.
    // The runner passes the payload's stdout and stderr straight through, so nothing counts
    // them: a lease rule or limit on output would be a promise this build cannot keep.
    if input
        .lease
        .halt
        .iter()
        .any(|r| r.metric == HaltMetric::OutputBytes)
        || input.lease.limits.output_bytes.is_some()
    {
        return Err(
            "the lease caps output (limits.output_bytes or an output_bytes halt rule), \
                    but this build of calyx-run passes output through without counting it; \
                    remedy: drop the output cap from the lease"
                .to_owned(),
        );
    }
    let policy = HaltPolicy::builtin().map_err(|e| format!("halt policy: {e}"))?;
    let rules = policy::merge(&policy, &input.lease.halt, &limits)
        .map_err(|e| format!("halt rules: {e}"))?;
    match create(input, &limits) {
        Ok((cg, layout)) => {
            let status = describe(&cg, &limits, rules.rules.len());
            let watch = WatchConfig {
                rules: rules.rules,
                monitor_interval: input.monitor_interval,
                ..WatchConfig::default()
            };
            Ok(Resources {
                cgroup: Some(cg),
                sweep: Some(layout),
                watch: Some(watch),
                fallback: Vec::new(),
                status,
            })
        }
        // A limit the kernel took differently from what was written is a refusal whoever
        // asked for it (SPEC §4.4): the cgroup exists, it just would not hold what it says.
        Err(e @ (CgroupError::LimitNotApplied { .. } | CgroupError::InvalidLimit { .. })) => {
            Err(format!("the run's cgroup limits could not be applied: {e}"))
        }
        Err(e) => match need {
            Need::BestEffort => Ok(Resources {
                cgroup: None,
                sweep: None,
                watch: None,
                fallback: Vec::new(),
                status: format!(
                    "unavailable ({e}); the profile's default limits and the sentinel are not \
                     in force"
                ),
            }),
            Need::Required {
                why,
                fallback_allowed: true,
            } => {
                let rl = rlimit_fallback(input.lease, input.timeout_secs)
                    .map_err(|no| format!("{why}, but no cgroup could be created and {no}: {e}"))?;
                Ok(Resources {
                    cgroup: None,
                    sweep: None,
                    watch: None,
                    status: format!("fallback to rlimits ({}); {e}", describe_fallback(&rl)),
                    fallback: rl,
                })
            }
            Need::Required { why, .. } => {
                Err(format!("{why}, but no cgroup could be created: {e}"))
            }
        },
    }
}

/// The run's cgroup and the layout it was made in (swept for stale cgroups after the run).
fn create(input: &SetupInput<'_>, limits: &Limits) -> Result<(RunCgroup, Layout), CgroupError> {
    let layout = Layout::discover(Path::new("/"), input.cgroup_parent)?;
    // io limits name a disk: the one holding the first write grant (where payload writes land;
    // /tmp is a tmpfs and does no block IO).
    let io_device = match limits.io_bps {
        None => None,
        Some(_) => {
            let target = input
                .lease
                .paths
                .write
                .first()
                .map_or(Path::new("/"), |p| p.as_path());
            Some(cgroup::limits::io_device_for_path(
                target,
                Path::new("/sys"),
            )?)
        }
    };
    let spec = LimitSpec::from_lease(limits, io_device)?;
    // The v1 directories are made by the runner after the clone (RunCgroup::make_v1).
    let cg = RunCgroup::prepare(
        &layout,
        &CreateOptions {
            run_id: input.run_id,
            limits: &spec,
            // calyx never moves processes it did not start (and not itself either).
            internal: InternalProcessPolicy::Refuse,
            uid: input.uid,
            gid: input.gid,
            page_size: crate::sys::cgroup_sys::page_size(),
        },
    )?;
    Ok((cg, layout))
}

/// `v1 (memory,pids,cpu) + v2 kill/events; memory=… pids=… cpu=…; 3 halt rules; gaps: …`.
fn describe(cg: &RunCgroup, l: &Limits, rules: usize) -> String {
    let backend = match cg.mode() {
        CgroupMode::Unified => "v2".to_owned(),
        CgroupMode::Hybrid | CgroupMode::Legacy => {
            let ctl: Vec<&str> = ["memory", "pids", "cpu", "blkio", "freezer"]
                .into_iter()
                .filter(|c| cg.v1_dir(c).is_some())
                .collect();
            let companion = if cg.v2_dir().is_some() {
                " + v2 kill/events"
            } else {
                ""
            };
            format!("v1 ({}){companion}", ctl.join(","))
        }
    };
    let mut set = Vec::new();
    if let Some(m) = l.memory_bytes {
        set.push(format!("memory={m}"));
    }
    if let Some(s) = l.swap_bytes {
        set.push(format!("swap={s}"));
    }
    if let Some(p) = l.pids {
        set.push(format!("pids={p}"));
    }
    if let Some(c) = l.cpu {
        set.push(format!("cpu={c}"));
    }
    if let Some(i) = l.io_bps {
        set.push(format!("io_bps={i}"));
    }
    let mut s = format!(
        "{backend}; limits {}; sentinel with {rules} halt rules; output not capped",
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(" ")
        }
    );
    if !cg.gaps().is_empty() {
        let gaps: Vec<String> = cg.gaps().iter().map(ToString::to_string).collect();
        s.push_str(&format!("; gaps: {}", gaps.join("; ")));
    }
    s
}

/// The halt details of the result (`halt: {rule, value, threshold}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HaltInfo {
    /// The rule that fired.
    pub rule: HaltRule,
    /// Observed value.
    pub value: f64,
    /// Threshold it exceeded.
    pub threshold: f64,
    /// `kill` or `freeze` (or `failed` when the action could not be applied).
    pub applied: &'static str,
}

/// A runner SIGKILLed mid-run leaves an empty cgroup behind; a later run removes it, once the
/// run is over (off its start-up path). Housekeeping only: a failure is reported, not fatal.
pub fn sweep_stale(layout: &Layout, own: Option<&str>) {
    if let Err(e) = cgroup::cleanup_stale(layout, SystemTime::now(), STALE_MIN_AGE, own) {
        eprintln!("calyx-run: cleaning stale cgroups: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "resources_tests.rs"]
mod tests;
