//! `calyx lease issue`: draft an unsigned lease from a spec file and flags.
//!
//! Deciding the lease ([`build_lease`]) is a pure function of the spec, the flags, the time
//! and a random suffix, so it is tested as a table; only [`read_spec`] touches the disk.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use thiserror::Error;
use time::OffsetDateTime;

use crate::lease::model::{
    Artifacts, CommandRule, EnvGrants, HaltRule, LEASE_VERSION, Lease, Limits, Network, PathGrants,
    Require, Risk,
};
use crate::lease::units::{UnitError, parse_duration_secs, parse_size_bytes};

use super::calyx_split::split_command;

/// A spec is a hand-written file of a few KiB; the bound keeps a wrong path (a disk image)
/// from being read whole.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// Lifetime of a lease when neither `--ttl` nor the spec's `expires_at` says.
const DEFAULT_TTL: &str = "1h";

/// Flags of `calyx lease issue`.
#[derive(Debug, Clone, Default, Args)]
pub struct IssueArgs {
    /// Where to write the unsigned envelope (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A TOML or JSON file with payload fields; flags override it.
    #[arg(long, value_name = "SPEC")]
    pub from: Option<PathBuf>,
    /// Intent id (INT-…); generated if absent.
    #[arg(long)]
    pub intent: Option<String>,
    /// Who will run the lease (agent or pipeline id).
    #[arg(long)]
    pub subject: Option<String>,
    /// Who drafts it; default: $USER.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Allowed command, split like a shell would: "/bin/sh -c *" (repeatable).
    #[arg(long = "command", value_name = "CMD")]
    pub commands: Vec<String>,
    /// Path mounted read-only (repeatable).
    #[arg(long, value_name = "PATH")]
    pub read: Vec<PathBuf>,
    /// Path mounted read-write (repeatable).
    #[arg(long, value_name = "PATH")]
    pub write: Vec<PathBuf>,
    /// Path allowed to execute (repeatable).
    #[arg(long, value_name = "PATH")]
    pub exec: Vec<PathBuf>,
    /// Environment variable passed through (repeatable).
    #[arg(long = "env-allow", value_name = "NAME")]
    pub env_allow: Vec<String>,
    /// Environment variable set to a fixed value (repeatable).
    #[arg(long = "env-set", value_name = "K=V")]
    pub env_set: Vec<String>,
    /// Network inside the sandbox.
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Lifetime from not_before, e.g. 30m, 1h, 2d (default 1h).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Number of runs authorized.
    #[arg(long = "max-uses")]
    pub max_uses: Option<u32>,
    /// Risk class; the trust policy may require more cosigners for higher risk.
    #[arg(long, value_enum)]
    pub risk: Option<RiskArg>,
    /// Memory limit, e.g. 256M, 1G.
    #[arg(long)]
    pub memory: Option<String>,
    /// Process and thread limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU bandwidth in cores, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Wall-clock limit, e.g. 30s, 5m.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Profile to run under.
    #[arg(long)]
    pub profile: Option<String>,
    /// Sandbox path kept after the run (repeatable).
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<PathBuf>,
    /// Total size cap of kept artifacts, e.g. 10M.
    #[arg(long = "artifact-max", value_name = "SIZE")]
    pub artifact_max: Option<String>,
    /// Host id (machine-id or hostname) the lease is valid on (repeatable).
    #[arg(long = "host", value_name = "ID")]
    pub hosts: Vec<String>,
}

/// `--network` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// No network at all.
    None,
    /// A private loopback interface only.
    Loopback,
}

/// `--risk` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RiskArg {
    /// Routine.
    Low,
    /// Needs care.
    Medium,
    /// Needs the policy's stricter cosigner counts.
    High,
}

/// The `--from` file: the payload's fields, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSpec {
    version: Option<u32>,
    lease_id: Option<String>,
    intent_id: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    issued_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    not_before: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    max_uses: Option<u32>,
    risk: Option<Risk>,
    hosts: Option<Vec<String>>,
    profile: Option<String>,
    commands: Option<Vec<CommandRule>>,
    paths: Option<PathGrants>,
    env: Option<EnvGrants>,
    network: Option<Network>,
    limits: Option<Limits>,
    halt: Option<Vec<HaltRule>>,
    artifacts: Option<Artifacts>,
    require: Option<Require>,
}

/// Why a lease could not be drafted.
#[derive(Debug, Error)]
pub enum IssueError {
    /// Reading the spec failed.
    #[error("reading lease spec {path}: {source}")]
    ReadSpec {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spec is larger than any spec.
    #[error("lease spec {path} is larger than {MAX_SPEC_BYTES} bytes")]
    SpecTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The spec is not valid JSON for a lease spec.
    #[error("lease spec {path}: {source}")]
    SpecJson {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        source: serde_json::Error,
    },
    /// The spec is not valid TOML for a lease spec.
    #[error("lease spec {path}: {source}")]
    SpecToml {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        source: toml::de::Error,
    },
    /// A `--command` string does not split.
    #[error("--command {text:?}: {reason}")]
    Split {
        /// The string.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration or size flag does not parse.
    #[error("--{flag}: {source}")]
    Unit {
        /// The flag.
        flag: &'static str,
        /// The parser's reason.
        source: UnitError,
    },
    /// `--env-set` without `=`.
    #[error("--env-set {text:?}: expected NAME=VALUE")]
    EnvSet {
        /// The argument.
        text: String,
    },
    /// The drafted lease breaks a rule every lease must follow.
    #[error("invalid lease: {0}")]
    Invalid(String),
}

/// Reads the `--from` spec: JSON when the name ends in `.json` or the text starts with `{`,
/// TOML otherwise.
pub fn read_spec(path: &Path) -> Result<LeaseSpec, IssueError> {
    use std::io::Read;
    let read_err = |source| IssueError::ReadSpec {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(IssueError::SpecTooLarge {
            path: path.to_owned(),
        });
    }
    parse_spec(&text, path)
}

/// Parses spec text; `path` picks the format by extension and names errors.
pub fn parse_spec(text: &str, path: &Path) -> Result<LeaseSpec, IssueError> {
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if json {
        serde_json::from_str(text).map_err(|source| IssueError::SpecJson {
            path: path.to_owned(),
            source,
        })
    } else {
        toml::from_str(text).map_err(|source| IssueError::SpecToml {
            path: path.to_owned(),
            source,
        })
    }
}

/// Turns one `--command` string into a rule: the first word is the executable.
pub fn command_rule(text: &str) -> Result<CommandRule, IssueError> {
    let split_err = |reason| IssueError::Split {
        text: text.to_owned(),
        reason,
    };
    let mut words = split_command(text).map_err(split_err)?.into_iter();
    let path = words.next().ok_or_else(|| split_err("is empty"))?;
    Ok(CommandRule {
        path: PathBuf::from(path),
        args: words.collect(),
        sha256: None,
    })
}

/// Draft-time facts that are not flags: the time, a random suffix, the default issuer.
#[derive(Debug, Clone)]
pub struct IssueEnv {
    /// Now.
    pub now: OffsetDateTime,
    /// 4 random bytes for the lease id.
    pub random: [u8; 4],
    /// Default issuer ($USER).
    pub user: String,
}

/// Decides the lease: spec, then flags on top, then defaults, then validation.
pub fn build_lease(spec: LeaseSpec, args: &IssueArgs, env: &IssueEnv) -> Result<Lease, IssueError> {
    let unit =
        |flag, r: Result<u64, UnitError>| r.map_err(|source| IssueError::Unit { flag, source });
    let now = env.now.replace_nanosecond(0).unwrap_or(env.now);
    let stamp = lease_stamp(now);
    let suffix = hex::encode(env.random);
    let issued_at = spec.issued_at.unwrap_or(now);
    let not_before = spec.not_before.unwrap_or(issued_at);
    let expires_at = match (&args.ttl, spec.expires_at) {
        (Some(ttl), _) => not_before + ttl_duration(unit("ttl", parse_duration_secs(ttl))?)?,
        (None, Some(at)) => at,
        (None, None) => not_before + ttl_duration(unit("ttl", parse_duration_secs(DEFAULT_TTL))?)?,
    };
    let mut commands = spec.commands.unwrap_or_default();
    if !args.commands.is_empty() {
        commands = args
            .commands
            .iter()
            .map(|c| command_rule(c))
            .collect::<Result<_, _>>()?;
    }
    let mut paths = spec.paths.unwrap_or_default();
    replace_if_given(&mut paths.read, &args.read);
    replace_if_given(&mut paths.write, &args.write);
    replace_if_given(&mut paths.exec, &args.exec);
    let mut envg = spec.env.unwrap_or_default();
    replace_if_given(&mut envg.allow, &args.env_allow);
    for kv in &args.env_set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| IssueError::EnvSet { text: kv.clone() })?;
        envg.set.insert(k.to_owned(), v.to_owned());
    }
    let mut limits = spec.limits.unwrap_or_default();
    if let Some(m) = &args.memory {
        limits.memory_bytes = Some(unit("memory", parse_size_bytes(m))?);
    }
    if let Some(t) = &args.timeout {
        limits.timeout_secs = Some(unit("timeout", parse_duration_secs(t))?);
    }
    limits.pids = args.pids.or(limits.pids);
    limits.cpu = args.cpu.or(limits.cpu);
    let mut artifacts = spec.artifacts.unwrap_or_default();
    replace_if_given(&mut artifacts.paths, &args.artifacts);
    if let Some(m) = &args.artifact_max {
        artifacts.max_bytes = Some(unit("artifact-max", parse_size_bytes(m))?);
    }
    let mut hosts = spec.hosts.unwrap_or_default();
    replace_if_given(&mut hosts, &args.hosts);
    let lease = Lease {
        version: spec.version.unwrap_or(LEASE_VERSION),
        lease_id: spec
            .lease_id
            .unwrap_or_else(|| format!("LEASE-{stamp}-{suffix}")),
        intent_id: args
            .intent
            .clone()
            .or(spec.intent_id)
            .unwrap_or_else(|| format!("INT-{stamp}-{suffix}")),
        issuer: args
            .issuer
            .clone()
            .or(spec.issuer)
            .unwrap_or_else(|| env.user.clone()),
        subject: args
            .subject
            .clone()
            .or(spec.subject)
            .unwrap_or_else(|| env.user.clone()),
        issued_at,
        not_before,
        expires_at,
        max_uses: args.max_uses.or(spec.max_uses).unwrap_or(1),
        risk: args.risk.map(Risk::from).or(spec.risk).unwrap_or_default(),
        hosts,
        profile: args
            .profile
            .clone()
            .or(spec.profile)
            .unwrap_or_else(|| "default".to_owned()),
        commands,
        paths,
        env: envg,
        network: args
            .network
            .map(Network::from)
            .or(spec.network)
            .unwrap_or_default(),
        limits,
        halt: spec.halt.unwrap_or_default(),
        artifacts,
        require: spec.require.unwrap_or_default(),
    };
    validate(&lease)?;
    Ok(lease)
}

fn replace_if_given<T: Clone>(target: &mut Vec<T>, given: &[T]) {
    if !given.is_empty() {
        *target = given.to_vec();
    }
}

fn ttl_duration(secs: u64) -> Result<time::Duration, IssueError> {
    if secs == 0 {
        return Err(IssueError::Invalid("--ttl must be more than 0s".to_owned()));
    }
    let secs =
        i64::try_from(secs).map_err(|_| IssueError::Invalid("--ttl is too large".to_owned()))?;
    Ok(time::Duration::seconds(secs))
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn lease_stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Rules every drafted lease must follow; verification would accept some of these, but a
/// lease that breaks them is a mistake better caught before anyone cosigns it.
pub fn validate(lease: &Lease) -> Result<(), IssueError> {
    let invalid = |m: String| Err(IssueError::Invalid(m));
    if lease.version != LEASE_VERSION {
        return invalid(format!("version must be {LEASE_VERSION}"));
    }
    if lease.commands.is_empty() {
        return invalid("at least one --command is required".to_owned());
    }
    if lease.expires_at <= lease.not_before {
        return invalid("expires_at must be after not_before (ttl > 0)".to_owned());
    }
    if lease.max_uses == 0 {
        return invalid("max_uses must be at least 1".to_owned());
    }
    let mut named: Vec<(String, &Path)> = Vec::new();
    for (i, c) in lease.commands.iter().enumerate() {
        named.push((format!("commands[{i}]"), &c.path));
    }
    for (list, paths) in [
        ("read", &lease.paths.read),
        ("write", &lease.paths.write),
        ("exec", &lease.paths.exec),
        ("artifact", &lease.artifacts.paths),
    ] {
        for p in paths {
            named.push((list.to_owned(), p));
        }
    }
    for (what, p) in named {
        if !p.is_absolute() {
            return invalid(format!("{what} path {} is not absolute", p.display()));
        }
    }
    if let Some(cpu) = lease.limits.cpu
        && !(cpu.is_finite() && cpu > 0.0)
    {
        return invalid(format!("cpu {cpu} must be a positive number of cores"));
    }
    for k in lease.env.set.keys().chain(lease.env.allow.iter()) {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return invalid(format!("environment name {k:?} is not valid"));
        }
    }
    Ok(())
}

impl From<RiskArg> for Risk {
    fn from(r: RiskArg) -> Risk {
        match r {
            RiskArg::Low => Risk::Low,
            RiskArg::Medium => Risk::Medium,
            RiskArg::High => Risk::High,
        }
    }
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Network {
        match n {
            NetworkArg::None => Network::None,
            NetworkArg::Loopback => Network::Loopback,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn env() -> IssueEnv {
        IssueEnv {
            now: datetime!(2030-01-02 03:04:05.678 UTC),
            random: [0xde, 0xad, 0xbe, 0xef],
            user: "ops".to_owned(),
        }
    }

    fn args() -> IssueArgs {
        IssueArgs {
            commands: vec!["/usr/bin/make test".to_owned()],
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_command_is_refused() {
        assert!(matches!(
            command_rule("   "),
            Err(IssueError::Split {
                reason: "is empty",
                ..
            })
        ));
    }

    #[test]
    fn defaults_fill_ids_times_and_issuer() {
        let lease = build_lease(LeaseSpec::default(), &args(), &env()).unwrap();
        assert_eq!(lease.lease_id, "LEASE-20300102-030405-deadbeef");
        assert_eq!(lease.intent_id, "INT-20300102-030405-deadbeef");
        assert_eq!(lease.issuer, "ops");
        assert_eq!(lease.issued_at, datetime!(2030-01-02 03:04:05 UTC));
        assert_eq!(lease.expires_at, datetime!(2030-01-02 04:04:05 UTC));
        assert_eq!(lease.commands[0].args, ["test"]);
        assert_eq!(lease.max_uses, 1);
    }

    #[test]
    fn flags_override_the_spec() {
        let spec = parse_spec(
            "intent_id = \"INT-spec\"\nnot_before = \"2030-05-01T00:00:00Z\"\nexpires_at = \"2030-05-01T06:00:00Z\"\nnetwork = \"loopback\"\n[[commands]]\npath = \"/bin/true\"\n[limits]\npids = 10\n",
            Path::new("s.toml"),
        )
        .unwrap();
        let lease = build_lease(spec.clone(), &IssueArgs::default(), &env()).unwrap();
        assert_eq!(lease.intent_id, "INT-spec");
        assert_eq!(lease.expires_at, datetime!(2030-05-01 06:00:00 UTC));
        assert_eq!(lease.commands[0].path, PathBuf::from("/bin/true"));
        let a = IssueArgs {
            intent: Some("INT-flag".to_owned()),
            ttl: Some("30m".to_owned()),
            memory: Some("64M".to_owned()),
            network: Some(NetworkArg::None),
            env_set: vec!["A=b=c".to_owned()],
            ..args()
        };
        let lease = build_lease(spec, &a, &env()).unwrap();
        assert_eq!(lease.intent_id, "INT-flag");
        assert_eq!(lease.expires_at, datetime!(2030-05-01 00:30:00 UTC));
        assert_eq!(lease.commands[0].path, PathBuf::from("/usr/bin/make"));
        assert_eq!(lease.limits.memory_bytes, Some(64 << 20));
        assert_eq!(lease.limits.pids, Some(10));
        assert_eq!(lease.network, Network::None);
        assert_eq!(lease.env.set["A"], "b=c");
    }

    #[test]
    fn invalid_drafts_are_refused() {
        let cases: Vec<(IssueArgs, &str)> = vec![
            (
                IssueArgs::default(),
                "invalid lease: at least one --command is required",
            ),
            (
                IssueArgs {
                    commands: vec!["make test".to_owned()],
                    ..args()
                },
                "invalid lease: commands[0] path make is not absolute",
            ),
            (
                IssueArgs {
                    read: vec![PathBuf::from("src")],
                    ..args()
                },
                "invalid lease: read path src is not absolute",
            ),
            (
                IssueArgs {
                    ttl: Some("0s".to_owned()),
                    ..args()
                },
                "invalid lease: --ttl must be more than 0s",
            ),
            (
                IssueArgs {
                    cpu: Some(0.0),
                    ..args()
                },
                "invalid lease: cpu 0 must be a positive number of cores",
            ),
            (
                IssueArgs {
                    max_uses: Some(0),
                    ..args()
                },
                "invalid lease: max_uses must be at least 1",
            ),
            (
                IssueArgs {
                    env_set: vec!["NOVALUE".to_owned()],
                    ..args()
                },
                "--env-set \"NOVALUE\": expected NAME=VALUE",
            ),
        ];
        for (a, want) in cases {
            let err = build_lease(LeaseSpec::default(), &a, &env()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let err = build_lease(
            LeaseSpec::default(),
            &IssueArgs {
                memory: Some("lots".to_owned()),
                ..args()
            },
            &env(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--memory: invalid size \"lots\""),
            "{err}"
        );
    }

    #[test]
    fn spec_format_follows_extension_or_content() {
        assert!(parse_spec("{\"subject\": \"x\"}", Path::new("s")).is_ok());
        assert!(parse_spec("subject = \"x\"", Path::new("s.toml")).is_ok());
        let err = parse_spec("{\"subjct\": \"x\"}", Path::new("s.json")).unwrap_err();
        assert!(err.to_string().contains("unknown field `subjct`"), "{err}");
    }
}
