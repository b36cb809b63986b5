//! Lease verification, in the order of SPEC §3.4: bound → authenticate → parse → check.
//!
//! 1. [`read_lease_file`] reads at most [`MAX_LEASE_BYTES`] (+1 to detect more).
//! 2. The envelope is parsed and its payloadType checked; the payload stays opaque bytes.
//! 3. Every signature is checked with `verify_strict` over the PAE of those exact bytes against
//!    the trust policy, roles are counted over distinct trusted keys, and the policy's low-risk
//!    floor must be met: only an authorized payload reaches serde.
//! 4. The payload is parsed (`deny_unknown_fields`, `version == 1`), then the risk tier's counts
//!    are checked.
//! 5. Time window (with the policy's skew, clock injected), host binding, maximum lifetime.
//!
//! Revocation and remaining uses need state, so they are not checked here: the ledger checks
//! them on the [`Verified`] result (its `lease.lease_id`, `lease.max_uses` and
//! `payload_sha256`), before anything runs. A caller that skips the ledger enforces neither.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;

use super::envelope::{self, Envelope, EnvelopeError};
use super::model::{LEASE_PAYLOAD_TYPE, LEASE_VERSION, Lease};
use super::trust::{Role, RoleCounts, TrustPolicy, describe_secs};
use super::units::format_duration_secs;

/// The largest lease accepted. A real lease is a few KiB; 1 MiB leaves room for long command
/// and path lists while keeping a hostile file from costing more than a megabyte of memory and
/// a few milliseconds of parsing before its signatures have even been looked at.
pub const MAX_LEASE_BYTES: usize = 1024 * 1024;

/// What verification needs from the world, injected so tests and replays control it.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    /// The current time.
    pub now: OffsetDateTime,
    /// This host's ids (machine-id, hostname), for leases bound to hosts.
    pub host_ids: Vec<String>,
}

/// A trusted key that signed the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// Its id in the trust policy.
    pub id: String,
    /// Its key id.
    pub keyid: String,
    /// Its role in the trust policy.
    pub role: Role,
}

/// A lease that passed every stateless check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The parsed payload.
    pub lease: Lease,
    /// Hex SHA-256 of the exact payload bytes that were signed.
    pub payload_sha256: String,
    /// The trusted signers, in signature order.
    pub signers: Vec<Signer>,
}

/// Why a lease was refused. Every message is meant to be read by the person who must fix it.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The lease file could not be read.
    #[error("reading lease {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// More than [`MAX_LEASE_BYTES`].
    #[error("lease is {at_least}+ bytes, limit {MAX_LEASE_BYTES}")]
    TooLarge {
        /// How many bytes were seen before stopping.
        at_least: usize,
    },
    /// The envelope is not a DSSE envelope, or a field in it does not decode.
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    /// Not a calyx lease envelope.
    #[error("payloadType {found:?} is not {LEASE_PAYLOAD_TYPE}")]
    PayloadType {
        /// The payloadType found.
        found: String,
    },
    /// No signatures at all.
    #[error("lease is not signed")]
    Unsigned,
    /// A signature by a key the policy does not trust, when the policy is not otherwise met.
    #[error("{}; signature {number} by untrusted key {}", unmet.join("; "), short_keyid(keyid))]
    UntrustedKey {
        /// 1-based position.
        number: usize,
        /// The keyid it claims.
        keyid: String,
        /// The requirements left unmet without it.
        unmet: Vec<String>,
    },
    /// One trusted key signed more than once.
    #[error("key {id} signed twice")]
    DuplicateSigner {
        /// The key's policy id.
        id: String,
    },
    /// A trusted key's signature does not verify: the lease was altered or mis-signed.
    #[error("bad signature by key {id}")]
    BadSignature {
        /// The key's policy id.
        id: String,
    },
    /// Not enough signatures of a role.
    #[error("{}", unmet.join("; "))]
    Requirements {
        /// One message per unmet role, e.g. `needs 1 agent signature from cp14|cp18, has 0`.
        unmet: Vec<String>,
    },
    /// A field the payload model does not know.
    #[error("unknown field {name:?} in payload")]
    UnknownField {
        /// The field.
        name: String,
    },
    /// The payload is not a valid lease for another reason.
    #[error("payload is not a valid lease: {source}")]
    Payload {
        /// serde_json's reason.
        source: serde_json::Error,
    },
    /// A version this build does not understand.
    #[error("payload version {found} is not supported (this build understands {LEASE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// `expires_at` is not after `not_before`.
    #[error("lease window is empty: expires_at {expires_at} is not after not_before {not_before}")]
    EmptyWindow {
        /// RFC 3339.
        not_before: String,
        /// RFC 3339.
        expires_at: String,
    },
    /// Before `not_before` (beyond the skew).
    #[error("not valid for another {}", format_duration_secs(*in_secs))]
    NotYetValid {
        /// Seconds until `not_before`.
        in_secs: u64,
    },
    /// At or after `expires_at` (beyond the skew).
    #[error("expired {} ago", format_duration_secs(*ago_secs))]
    Expired {
        /// Seconds since `expires_at`.
        ago_secs: u64,
    },
    /// Bound to other hosts.
    #[error("lease is bound to hosts {}, and this host is {}", hosts.join("|"), local.join("|"))]
    WrongHost {
        /// The lease's hosts.
        hosts: Vec<String>,
        /// This host's ids.
        local: Vec<String>,
    },
    /// Longer than the policy allows.
    #[error("lifetime {} exceeds policy maximum {}", format_duration_secs(*lifetime_secs), describe_secs(*max_secs))]
    Lifetime {
        /// `expires_at - not_before`.
        lifetime_secs: u64,
        /// The policy's maximum.
        max_secs: u64,
    },
}

impl VerifyError {
    /// Every lease problem is a refusal: 77.
    pub fn exit_code(&self) -> u8 {
        crate::exit::REFUSED
    }
}

/// The first 8 hex digits of a key id, for messages.
fn short_keyid(keyid: &str) -> String {
    let head: String = keyid.chars().take(8).collect();
    if keyid.chars().count() > 8 {
        format!("{head}…")
    } else if head.is_empty() {
        "(no keyid)".to_owned()
    } else {
        head
    }
}

/// Reads a lease file, at most [`MAX_LEASE_BYTES`] + 1 bytes: a larger file is refused without
/// being read, let alone held, in full.
pub fn read_lease_file(path: &Path) -> Result<Vec<u8>, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let raw = super::read_capped(&file, MAX_LEASE_BYTES as u64, None).map_err(read_err)?;
    if raw.len() > MAX_LEASE_BYTES {
        return Err(VerifyError::TooLarge {
            at_least: raw.len(),
        });
    }
    Ok(raw)
}

/// This host's ids: the contents of `/etc/machine-id` (where readable) and the hostname.
pub fn local_host_ids() -> Vec<String> {
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for id in [machine_id.trim(), crate::sys::proc::hostname().trim()] {
        if !id.is_empty() && !ids.iter().any(|x| x == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// Verifies a lease envelope against `policy` at `ctx.now` on the host `ctx.host_ids`.
pub fn verify_envelope_bytes(
    raw: &[u8],
    policy: &TrustPolicy,
    ctx: &VerifyContext,
) -> Result<Verified, VerifyError> {
    // 1. Bound: callers holding bytes from elsewhere get the same limit as file readers.
    if raw.len() > MAX_LEASE_BYTES {
        return Err(VerifyError::TooLarge {
            at_least: raw.len(),
        });
    }
    // 2. Envelope only; the payload stays opaque until it is authenticated.
    let env = Envelope::from_json(raw)?;
    if env.payload_type != LEASE_PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType {
            found: env.payload_type,
        });
    }
    let body = env.payload_bytes()?;
    // 3. Authenticate the exact bytes and count roles against the low-risk floor.
    let (signers, untrusted) = check_signatures(&env, &body, policy)?;
    let floor_unmet = unmet(&signers, policy.requirements.low, policy);
    if !floor_unmet.is_empty() {
        return Err(refusal_for(floor_unmet, untrusted));
    }
    // 4. Parse only now.
    let lease = parse_payload(&body)?;
    let tier_unmet = unmet(&signers, policy.requirements.for_risk(lease.risk), policy);
    if !tier_unmet.is_empty() {
        let unmet = tier_unmet
            .into_iter()
            .map(|m| format!("risk {}: {m}", risk_name(&lease)))
            .collect();
        return Err(refusal_for(unmet, untrusted));
    }
    // 5. Stateless checks on the authenticated payload.
    check_window(&lease, policy.requirements.clock_skew_secs, ctx.now)?;
    check_host(&lease, &ctx.host_ids)?;
    check_lifetime(&lease, policy.requirements.max_lifetime_secs)?;
    Ok(Verified {
        payload_sha256: hex::encode(Sha256::digest(&body)),
        lease,
        signers,
    })
}

fn risk_name(lease: &Lease) -> &'static str {
    match lease.risk {
        super::model::Risk::Low => "low",
        super::model::Risk::Medium => "medium",
        super::model::Risk::High => "high",
    }
}

/// The first signature by a key the policy does not know: (1-based position, keyid).
type Untrusted = (usize, String);

/// An unmet requirement is reported with the first untrusted signature, if any, since that
/// is usually the key someone forgot to add to the policy.
fn refusal_for(unmet: Vec<String>, untrusted: Option<Untrusted>) -> VerifyError {
    match untrusted {
        Some((number, keyid)) => VerifyError::UntrustedKey {
            number,
            keyid,
            unmet,
        },
        None => VerifyError::Requirements { unmet },
    }
}

/// Verifies every signature. Returns the distinct trusted signers and the first untrusted
/// signature (which adds nothing). A trusted key with a bad signature, or signing twice, is
/// refused outright: neither happens by accident with calyx's own tools.
fn check_signatures(
    env: &Envelope,
    body: &[u8],
    policy: &TrustPolicy,
) -> Result<(Vec<Signer>, Option<Untrusted>), VerifyError> {
    if env.signatures.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    let message = envelope::pae(&env.payload_type, body);
    let mut signers: Vec<Signer> = Vec::with_capacity(env.signatures.len());
    let mut untrusted = None;
    for (i, s) in env.signatures.iter().enumerate() {
        let number = i + 1;
        let sig = envelope::decode_signature(&s.sig, number)?;
        let Some(key) = policy.key_by_keyid(&s.keyid) else {
            untrusted.get_or_insert((number, s.keyid.clone()));
            continue;
        };
        if signers.iter().any(|x| x.keyid == key.keyid) {
            return Err(VerifyError::DuplicateSigner { id: key.id.clone() });
        }
        if key.public_key.verify_strict(&message, &sig).is_err() {
            return Err(VerifyError::BadSignature { id: key.id.clone() });
        }
        signers.push(Signer {
            id: key.id.clone(),
            keyid: key.keyid.clone(),
            role: key.role,
        });
    }
    Ok((signers, untrusted))
}

/// The requirements `signers` leave unmet, one message per role.
fn unmet(signers: &[Signer], need: RoleCounts, policy: &TrustPolicy) -> Vec<String> {
    let humans = signers.iter().filter(|s| s.role == Role::Human).count();
    let agents = signers
        .iter()
        .filter(|s| s.role == Role::Agent && policy.agent_allowed(&s.id))
        .count();
    let mut out = Vec::new();
    for (role, need, have) in [
        (Role::Human, need.humans, humans),
        (Role::Agent, need.agents, agents),
    ] {
        if (have as u64) < u64::from(need) {
            let plural = if need == 1 { "" } else { "s" };
            let from = match (&policy.requirements.agent_ids, role) {
                (Some(ids), Role::Agent) => format!(" from {}", ids.join("|")),
                _ => String::new(),
            };
            out.push(format!(
                "needs {need} {role} signature{plural}{from}, has {have}"
            ));
        }
    }
    out
}

/// Parses payload bytes: unknown fields and other versions are refused.
/// [`verify_envelope_bytes`] calls it only after the signatures and role counts pass;
/// `calyx lease show` calls it to display a lease that may not verify, and acts on nothing in
/// it. Anything that grants authority must go through [`verify_envelope_bytes`].
pub fn parse_payload(body: &[u8]) -> Result<Lease, VerifyError> {
    let lease: Lease =
        serde_json::from_slice(body).map_err(|source| match unknown_field_name(&source) {
            Some(name) => VerifyError::UnknownField { name },
            None => VerifyError::Payload { source },
        })?;
    if lease.version != LEASE_VERSION {
        return Err(VerifyError::Version {
            found: lease.version,
        });
    }
    Ok(lease)
}

/// serde reports an unknown field as "unknown field `name`, expected …"; pull the name out so
/// the refusal reads `unknown field "name" in payload`.
fn unknown_field_name(err: &serde_json::Error) -> Option<String> {
    let text = err.to_string();
    let rest = text.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn check_window(lease: &Lease, skew_secs: u64, now: OffsetDateTime) -> Result<(), VerifyError> {
    if lease.expires_at <= lease.not_before {
        return Err(VerifyError::EmptyWindow {
            not_before: rfc3339(lease.not_before),
            expires_at: rfc3339(lease.expires_at),
        });
    }
    let skew = time::Duration::seconds(i64::try_from(skew_secs).unwrap_or(i64::MAX));
    // Checked arithmetic: a huge skew in a policy must not panic. Past the representable
    // range the skew tolerates everything, which is what such a policy asks for.
    let too_early = now.checked_add(skew).is_some_and(|t| t < lease.not_before);
    if too_early {
        return Err(VerifyError::NotYetValid {
            in_secs: whole_secs(lease.not_before - now),
        });
    }
    let too_late = lease.expires_at.checked_add(skew).is_some_and(|t| now >= t);
    if too_late {
        return Err(VerifyError::Expired {
            ago_secs: whole_secs(now - lease.expires_at),
        });
    }
    Ok(())
}

fn check_host(lease: &Lease, local: &[String]) -> Result<(), VerifyError> {
    if lease.hosts.is_empty() || lease.hosts.iter().any(|h| local.contains(h)) {
        return Ok(());
    }
    Err(VerifyError::WrongHost {
        hosts: lease.hosts.clone(),
        local: local.to_vec(),
    })
}

fn check_lifetime(lease: &Lease, max_secs: u64) -> Result<(), VerifyError> {
    let lifetime_secs = whole_secs(lease.expires_at - lease.not_before);
    if lifetime_secs > max_secs {
        return Err(VerifyError::Lifetime {
            lifetime_secs,
            max_secs,
        });
    }
    Ok(())
}

fn whole_secs(d: time::Duration) -> u64 {
    u64::try_from(d.whole_seconds()).unwrap_or(0)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
