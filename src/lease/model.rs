//! The lease payload: what one signed grant allows (SPEC §3.1).
//!
//! Every struct denies unknown fields, so a field a newer issuer added (or an attacker
//! smuggled in) is a refusal rather than something silently ignored. Sizes are bytes and
//! durations are whole units named in the field, so the signed document is unambiguous.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The only payload version this build understands.
pub const LEASE_VERSION: u32 = 1;

/// DSSE payloadType of a lease envelope.
pub const LEASE_PAYLOAD_TYPE: &str = "application/vnd.calyx.lease.v1+json";

/// One lease payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Payload format version; only 1 exists.
    pub version: u32,
    /// Unique id: `LEASE-<yyyymmdd>-<hhmmss>-<random hex>`.
    pub lease_id: String,
    /// The intent this lease answers (`INT-…`).
    pub intent_id: String,
    /// Who drafted the lease (pipeline or orchestrator id).
    pub issuer: String,
    /// Who will run it (agent or pipeline id).
    pub subject: String,
    /// When it was drafted (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub issued_at: OffsetDateTime,
    /// Not valid before this instant (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub not_before: OffsetDateTime,
    /// Not valid from this instant on (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: OffsetDateTime,
    /// How many runs the lease authorizes; enforced by the ledger.
    #[serde(default = "one")]
    pub max_uses: u32,
    /// Risk class; the trust policy may demand more cosigners for higher risk.
    #[serde(default)]
    pub risk: Risk,
    /// Host ids (machine-id or hostname) the lease is valid on; empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Name of the profile under `profiles/` to run with.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Allowed commands; a run's argv must match one entry.
    pub commands: Vec<CommandRule>,
    /// Filesystem grants.
    #[serde(default)]
    pub paths: PathGrants,
    /// Environment passed to the payload.
    #[serde(default)]
    pub env: EnvGrants,
    /// Network mode inside the sandbox.
    #[serde(default)]
    pub network: Network,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Sentinel rules that override or tighten the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halt: Vec<HaltRule>,
    /// Sandbox paths kept after the run.
    #[serde(default)]
    pub artifacts: Artifacts,
    /// The enforcement floor: layers that must be in force, else the run is refused.
    #[serde(default)]
    pub require: Require,
}

fn one() -> u32 {
    1
}

fn default_profile() -> String {
    "default".to_owned()
}

/// Risk class of a lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Routine work.
    #[default]
    Low,
    /// Needs care.
    Medium,
    /// Needs the policy's stricter cosigner counts.
    High,
}

/// One allowed command: an absolute executable and an argv pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRule {
    /// Absolute path of the executable inside the sandbox view.
    pub path: PathBuf,
    /// Arguments after argv[0]: matched exactly, or as a prefix when the last one is `*`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Optional hex SHA-256 the executable must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Filesystem grants; every entry is an absolute path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathGrants {
    /// Mounted read-only and readable under Landlock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathBuf>,
    /// Mounted read-write and writable under Landlock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<PathBuf>,
    /// Executable under Landlock and mounted without noexec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<PathBuf>,
}

/// Environment grants; everything not named here is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvGrants {
    /// Names passed through from the caller's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Fixed values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

/// Network mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No interface, only AF_UNIX sockets.
    #[default]
    None,
    /// `lo` up inside a private namespace; IP sockets allowed.
    Loopback,
}

/// Resource limits; an absent field takes the profile's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Memory maximum in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Swap maximum in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_bytes: Option<u64>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU bandwidth as a fraction of one core (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// IO bandwidth in bytes per second (read and write each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_bps: Option<u64>,
    /// Bytes the payload may write to stdout and stderr together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Size of the sandbox's `/tmp` tmpfs in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_bytes: Option<u64>,
}

/// One sentinel rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltRule {
    /// What is measured.
    pub metric: HaltMetric,
    /// Threshold the metric must exceed.
    pub above: f64,
    /// How long the breach must last, in milliseconds (0 = at once).
    #[serde(default)]
    pub for_ms: u64,
    /// What to do on breach.
    #[serde(default)]
    pub action: HaltAction,
}

/// Metrics the sentinel evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HaltMetric {
    /// memory.current as a percentage of the memory limit.
    MemoryPercent,
    /// CPU seconds used.
    CpuSeconds,
    /// pids.current as a percentage of the pids limit.
    PidsPercent,
    /// memory.pressure `some avg10`.
    MemoryPressureSomeAvg10,
    /// Bytes written to stdout and stderr.
    OutputBytes,
}

/// Action taken when a rule is breached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaltAction {
    /// Record an event only.
    Warn,
    /// Freeze the cgroup until a human decides.
    Freeze,
    /// Kill the whole run.
    #[default]
    Kill,
}

/// Files kept after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    /// Sandbox paths to copy into the content-addressed store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// Total size cap in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// The enforcement floor a lease demands on top of its profile's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Require {
    /// Layers that must be in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// Minimum Landlock ABI; below it the run is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_abi: Option<u8>,
    /// Allow resource limits to fall back to rlimits where cgroups cannot enforce them.
    #[serde(default)]
    pub allow_rlimit_fallback: bool,
}

/// An isolation layer that can be required and is reported per run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// New user namespace.
    UserNs,
    /// New mount namespace with a private root.
    MountNs,
    /// New pid namespace.
    PidNs,
    /// New network namespace.
    NetNs,
    /// New IPC namespace.
    IpcNs,
    /// New UTS namespace.
    UtsNs,
    /// New cgroup namespace.
    CgroupNs,
    /// Landlock path (and, from ABI 4, network) rules.
    Landlock,
    /// Seccomp syscall filter.
    Seccomp,
    /// Empty capability sets.
    Capabilities,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// Per-run cgroup with quotas.
    Cgroup,
    /// rlimits.
    Rlimits,
}

/// The JSON Schema of the lease payload, as committed in `policies/lease.schema.json`.
pub fn lease_schema_json() -> String {
    let schema = schemars::schema_for!(Lease);
    // Pretty-printing a schema built from our own types cannot fail; fall back to the compact
    // form rather than panic if serde_json ever disagrees.
    let mut text =
        serde_json::to_string_pretty(&schema).unwrap_or_else(|_| schema.as_value().to_string());
    text.push('\n');
    text
}
