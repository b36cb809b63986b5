//! Trust policies: which keys may cosign a lease, in which role, and what a lease needs.
//!
//! Roles come only from here, never from the lease, so a signer cannot promote itself. The
//! file itself is authority: whoever can write it can mint valid leases, so [`TrustPolicy::load`]
//! refuses a file that anyone but root or the caller owns, or that group or others can write.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::keys;
use super::model::Risk;
use super::units::{format_duration_secs, parse_duration_secs};

pub use super::trust_error::TrustError;

/// A policy of a few hundred keys is a few hundred KiB; more is a mistake or an attack.
pub(crate) const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// Default maximum lease lifetime when the policy names none: long enough for a working day,
/// short enough that a leaked lease soon expires.
pub const DEFAULT_MAX_LIFETIME: &str = "24h";

/// Default clock skew: hosts synchronised by NTP agree within far less than a minute.
pub const DEFAULT_CLOCK_SKEW: &str = "60s";

/// Clocks that disagree by more than an hour need fixing, not tolerating.
const MAX_CLOCK_SKEW_SECS: u64 = 3_600;

/// The role a key signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person who approves the work.
    Human,
    /// An automated cosigner (an agent platform's control plane).
    Agent,
}

impl Role {
    /// `human` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Human => "human",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many signatures of each role a lease needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleCounts {
    /// Distinct human keys.
    pub humans: u32,
    /// Distinct agent keys (from the allowlist, if there is one).
    pub agents: u32,
}

/// The policy file as written on disk (TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// What a lease needs.
    #[serde(default)]
    pub requirements: RequirementsFile,
    /// The trusted keys.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// `[requirements]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsFile {
    /// Human signatures needed at low risk.
    #[serde(default = "one")]
    pub humans: u32,
    /// Agent signatures needed at low risk.
    #[serde(default = "one")]
    pub agents: u32,
    /// If set, only these agent key ids count as agent signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<Vec<String>>,
    /// Longest allowed `expires_at - not_before`, e.g. `24h`.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: String,
    /// Tolerated clock difference between issuer and verifier, e.g. `60s`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: String,
    /// Counts for `risk = "medium"`; default: the low-risk counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<RoleCounts>,
    /// Counts for `risk = "high"`; default: the medium counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<RoleCounts>,
}

impl Default for RequirementsFile {
    fn default() -> Self {
        RequirementsFile {
            humans: 1,
            agents: 1,
            agent_ids: None,
            max_lifetime: default_max_lifetime(),
            clock_skew: default_clock_skew(),
            medium: None,
            high: None,
        }
    }
}

fn one() -> u32 {
    1
}
fn default_max_lifetime() -> String {
    DEFAULT_MAX_LIFETIME.to_owned()
}
fn default_clock_skew() -> String {
    DEFAULT_CLOCK_SKEW.to_owned()
}

/// One `[[keys]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A short name: `alice`, `cp14`.
    pub id: String,
    /// The role this key signs in.
    pub role: Role,
    /// SPKI PEM of the public key.
    pub public_key: String,
    /// Optional hex key id; when present it must match the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
}

/// A trusted key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its name in the policy.
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Hex SHA-256 of its SPKI DER.
    pub keyid: String,
    /// The key.
    pub public_key: VerifyingKey,
}

/// Requirements, validated and with durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Counts for low risk; also the floor checked before the payload is parsed.
    pub low: RoleCounts,
    /// Counts for medium risk.
    pub medium: RoleCounts,
    /// Counts for high risk.
    pub high: RoleCounts,
    /// Agent ids that count as agents, if restricted.
    pub agent_ids: Option<Vec<String>>,
    /// Longest allowed lease lifetime.
    pub max_lifetime_secs: u64,
    /// Tolerated clock skew.
    pub clock_skew_secs: u64,
}

impl Requirements {
    /// The counts a lease of `risk` needs.
    pub fn for_risk(&self, risk: Risk) -> RoleCounts {
        match risk {
            Risk::Low => self.low,
            Risk::Medium => self.medium,
            Risk::High => self.high,
        }
    }
}

/// A validated trust policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The trusted keys; ids and keys are unique.
    pub keys: Vec<TrustedKey>,
    /// What a lease needs.
    pub requirements: Requirements,
    /// The file it was read from, kept so `calyx trust add` can extend it.
    pub file: PolicyFile,
}

impl TrustPolicy {
    /// Reads and validates the policy at `path`, refusing a file that is not owned by root or
    /// `caller_uid`, or that group or others can write. Ownership and mode are checked on the
    /// opened file, so the file checked is the file read.
    pub fn load(path: &Path, caller_uid: u32) -> Result<TrustPolicy, TrustError> {
        let io = |op: &'static str| {
            move |source| TrustError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let file = File::open(path).map_err(io("opening"))?;
        let meta = file.metadata().map_err(io("inspecting"))?;
        check_file_trust(path, &meta, caller_uid)?;
        let text = super::read_text_capped(&file, MAX_POLICY_BYTES, Some(meta.len()))
            .map_err(io("reading"))?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(TrustError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates policy text; `path` only names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<TrustPolicy, TrustError> {
        let file: PolicyFile = toml::from_str(text).map_err(|source| TrustError::Toml {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file(file, path)
    }

    /// Validates a parsed policy file.
    pub fn from_file(file: PolicyFile, path: &Path) -> Result<TrustPolicy, TrustError> {
        let p = || path.to_owned();
        let mut keys: Vec<TrustedKey> = Vec::with_capacity(file.keys.len());
        for entry in &file.keys {
            let origin = format!("public_key of {:?}", entry.id);
            let public_key =
                keys::parse_public_key_pem(&entry.public_key, &origin).map_err(|source| {
                    TrustError::BadKey {
                        path: p(),
                        id: entry.id.clone(),
                        source: Box::new(source),
                    }
                })?;
            let keyid = keys::keyid(&public_key);
            if let Some(stated) = &entry.keyid
                && !stated.eq_ignore_ascii_case(&keyid)
            {
                return Err(TrustError::KeyidMismatch {
                    path: p(),
                    id: entry.id.clone(),
                    stated: stated.clone(),
                    actual: keyid,
                });
            }
            if keys.iter().any(|k| k.id == entry.id) {
                return Err(TrustError::DuplicateId {
                    path: p(),
                    id: entry.id.clone(),
                });
            }
            if let Some(other) = keys.iter().find(|k| k.keyid == keyid) {
                return Err(TrustError::DuplicateKey {
                    path: p(),
                    id: entry.id.clone(),
                    other: other.id.clone(),
                });
            }
            keys.push(TrustedKey {
                id: entry.id.clone(),
                role: entry.role,
                keyid,
                public_key,
            });
        }
        let requirements = validate_requirements(&file.requirements, &keys, path)?;
        Ok(TrustPolicy {
            keys,
            requirements,
            file,
        })
    }

    /// The trusted key with this key id, if any.
    pub fn key_by_keyid(&self, keyid: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.keyid == keyid)
    }

    /// Whether a key with this role and id counts as an agent under the allowlist.
    pub fn agent_allowed(&self, id: &str) -> bool {
        match &self.requirements.agent_ids {
            Some(ids) => ids.iter().any(|a| a == id),
            None => true,
        }
    }

    /// Adds a key (for `calyx trust add`), refusing an id or a public key already present,
    /// and returns the validated result.
    pub fn with_key(
        &self,
        id: &str,
        role: Role,
        public_key: &VerifyingKey,
        path: &Path,
    ) -> Result<TrustPolicy, TrustError> {
        if self.keys.iter().any(|k| k.id == id) {
            return Err(TrustError::IdTaken {
                path: path.to_owned(),
                id: id.to_owned(),
            });
        }
        let keyid = keys::keyid(public_key);
        if let Some(existing) = self.key_by_keyid(&keyid) {
            return Err(TrustError::KeyTaken {
                path: path.to_owned(),
                id: existing.id.clone(),
            });
        }
        let pem = keys::public_key_pem(public_key).map_err(|source| TrustError::BadKey {
            path: path.to_owned(),
            id: id.to_owned(),
            source: Box::new(source),
        })?;
        let mut file = self.file.clone();
        file.keys.push(KeyEntry {
            id: id.to_owned(),
            role,
            public_key: pem,
            keyid: Some(keyid),
        });
        Self::from_file(file, path)
    }

    /// A new policy with the default requirements (one human + one agent) and no keys.
    pub fn empty_default() -> TrustPolicy {
        TrustPolicy {
            keys: Vec::new(),
            requirements: Requirements {
                low: RoleCounts {
                    humans: 1,
                    agents: 1,
                },
                medium: RoleCounts {
                    humans: 1,
                    agents: 1,
                },
                high: RoleCounts {
                    humans: 1,
                    agents: 1,
                },
                agent_ids: None,
                max_lifetime_secs: 86_400,
                clock_skew_secs: 60,
            },
            file: PolicyFile {
                requirements: RequirementsFile::default(),
                keys: Vec::new(),
            },
        }
    }

    /// Writes the policy to `path` atomically, mode 0644 (readable by all, as a policy of
    /// public keys may be; writable only by the owner, as [`TrustPolicy::load`] demands).
    pub fn write(&self, path: &Path) -> Result<(), TrustError> {
        let body = toml::to_string(&self.file).map_err(|source| TrustError::Serialize {
            path: path.to_owned(),
            source,
        })?;
        let text = format!(
            "# calyx trust policy; every field is described in policies/trust.example.toml.\n\n{body}"
        );
        write_atomic(path, text.as_bytes(), 0o644).map_err(|source| TrustError::Io {
            op: "writing",
            path: path.to_owned(),
            source,
        })
    }
}

/// The ownership and mode rule of SPEC §3.3, on metadata of the opened file.
fn check_file_trust(
    path: &Path,
    meta: &std::fs::Metadata,
    caller_uid: u32,
) -> Result<(), TrustError> {
    if !meta.is_file() {
        return Err(TrustError::NotRegular {
            path: path.to_owned(),
        });
    }
    let owner = meta.uid();
    if owner != 0 && owner != caller_uid {
        return Err(TrustError::NotOwned {
            path: path.to_owned(),
            owner,
            caller: caller_uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn validate_requirements(
    req: &RequirementsFile,
    keys: &[TrustedKey],
    path: &Path,
) -> Result<Requirements, TrustError> {
    let duration = |field: &'static str, text: &str| {
        parse_duration_secs(text).map_err(|source| TrustError::Duration {
            path: path.to_owned(),
            field,
            source,
        })
    };
    let max_lifetime_secs = duration("max_lifetime", &req.max_lifetime)?;
    if max_lifetime_secs == 0 {
        return Err(TrustError::ZeroLifetime {
            path: path.to_owned(),
        });
    }
    let clock_skew_secs = duration("clock_skew", &req.clock_skew)?;
    if clock_skew_secs > MAX_CLOCK_SKEW_SECS {
        return Err(TrustError::SkewTooLarge {
            path: path.to_owned(),
            skew: req.clock_skew.clone(),
        });
    }
    let low = RoleCounts {
        humans: req.humans,
        agents: req.agents,
    };
    let medium = req.medium.unwrap_or(low);
    let high = req.high.unwrap_or(medium);
    for (tier, counts) in [("low", low), ("medium", medium), ("high", high)] {
        if counts.humans == 0 && counts.agents == 0 {
            return Err(TrustError::NoSignatureRequired {
                path: path.to_owned(),
                tier,
            });
        }
    }
    // The low-risk counts are checked before the payload (and so its risk) is parsed; a higher
    // tier asking for less would let that early check refuse leases the tier allows, and is a
    // policy mistake either way.
    for (tier, lower, counts) in [("medium", low, medium), ("high", medium, high)] {
        for (role, below, here) in [
            (Role::Human, lower.humans, counts.humans),
            (Role::Agent, lower.agents, counts.agents),
        ] {
            if here < below {
                return Err(TrustError::WeakerTier {
                    path: path.to_owned(),
                    tier,
                    role,
                });
            }
        }
    }
    if let Some(ids) = &req.agent_ids {
        for name in ids {
            if !keys.iter().any(|k| &k.id == name && k.role == Role::Agent) {
                return Err(TrustError::UnknownAgent {
                    path: path.to_owned(),
                    name: name.clone(),
                });
            }
        }
    }
    Ok(Requirements {
        low,
        medium,
        high,
        agent_ids: req.agent_ids.clone(),
        max_lifetime_secs,
        clock_skew_secs,
    })
}

/// Prints a duration for messages about policy limits.
pub fn describe_secs(secs: u64) -> String {
    format_duration_secs(secs)
}
