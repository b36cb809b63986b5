//! Errors of trust policy handling; every one is a configuration problem (exit 78).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::keys::KeyError;
use super::trust::{MAX_POLICY_BYTES, Role};
use super::units::UnitError;

/// Errors loading, validating or writing a trust policy. All are configuration errors (78).
#[derive(Debug, Error)]
pub enum TrustError {
    /// Opening, reading or writing the file failed.
    #[error("{op} trust policy {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Someone other than root or the caller owns the file.
    #[error(
        "trust policy {path} is owned by uid {owner}, not by root or you (uid {caller}); whoever owns it can authorize leases: use a policy owned by root or by you (`chown {caller} {path}`)"
    )]
    NotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The caller's uid.
        caller: u32,
    },
    /// Group or others may write the file.
    #[error(
        "trust policy {path} is writable by group or others (mode {mode:04o}); run `chmod go-w {path}`"
    )]
    Writable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("trust policy {path} is not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// Larger than any sane policy.
    #[error("trust policy {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid TOML, or unknown fields.
    #[error("trust policy {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's reason, with the location.
        source: toml::de::Error,
    },
    /// A key entry's public key is not usable.
    #[error("trust policy {path}, key {id:?}: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The entry's id.
        id: String,
        /// Why the key is unusable.
        source: Box<KeyError>,
    },
    /// A stated keyid does not match the public key.
    #[error(
        "trust policy {path}, key {id:?}: keyid {stated} does not match its public key ({actual})"
    )]
    KeyidMismatch {
        /// The file.
        path: PathBuf,
        /// The entry's id.
        id: String,
        /// The keyid written in the file.
        stated: String,
        /// The keyid of the public key.
        actual: String,
    },
    /// Two entries share an id.
    #[error("trust policy {path}: key id {id:?} appears twice")]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The repeated id.
        id: String,
    },
    /// One public key appears under two ids (it could then fill two roles).
    #[error("trust policy {path}: key {id:?} is the same public key as {other:?}")]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The later entry.
        id: String,
        /// The earlier entry with the same key.
        other: String,
    },
    /// The agent allowlist names something that is not an agent key here.
    #[error(
        "trust policy {path}: agent_ids names {name:?}, which is not an agent key in this policy"
    )]
    UnknownAgent {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A requirement of zero signatures would accept unsigned leases.
    #[error("trust policy {path}: requirements for {tier} risk need no signature at all")]
    NoSignatureRequired {
        /// The file.
        path: PathBuf,
        /// low, medium or high.
        tier: &'static str,
    },
    /// A higher risk tier asks for fewer signatures than a lower one.
    #[error(
        "trust policy {path}: requirements.{tier} asks for fewer {role} signatures than the tier below it"
    )]
    WeakerTier {
        /// The file.
        path: PathBuf,
        /// medium or high.
        tier: &'static str,
        /// The role.
        role: Role,
    },
    /// A duration field does not parse.
    #[error("trust policy {path}, requirements.{field}: {source}")]
    Duration {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// The parser's reason.
        source: UnitError,
    },
    /// `max_lifetime` of zero would refuse every lease.
    #[error("trust policy {path}: requirements.max_lifetime must be more than 0s")]
    ZeroLifetime {
        /// The file.
        path: PathBuf,
    },
    /// A clock skew so large it would stretch every lease's window noticeably.
    #[error(
        "trust policy {path}: requirements.clock_skew {skew} is more than the 1h maximum; fix the clocks (NTP) instead"
    )]
    SkewTooLarge {
        /// The file.
        path: PathBuf,
        /// The value written.
        skew: String,
    },
    /// `trust add` with an id already present.
    #[error("trust policy {path} already has a key with id {id:?}")]
    IdTaken {
        /// The file.
        path: PathBuf,
        /// The id.
        id: String,
    },
    /// `trust add` with a key already present.
    #[error("trust policy {path} already has this public key, as {id:?}")]
    KeyTaken {
        /// The file.
        path: PathBuf,
        /// The existing entry's id.
        id: String,
    },
    /// Serializing the policy failed.
    #[error("writing trust policy {path}: {source}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The serializer's reason.
        source: toml::ser::Error,
    },
}

impl TrustError {
    /// Every trust policy problem is a configuration problem: 78.
    pub fn exit_code(&self) -> u8 {
        crate::exit::BAD_CONFIG
    }
}
