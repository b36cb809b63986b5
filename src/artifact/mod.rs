//! Artifacts: files a run produced, kept after it in a content-addressed store (SPEC §5).
//!
//! - [`plan`]: which write grant holds each artifact path (pure; a path outside every write
//!   grant refuses the lease with 78 before anything runs).
//! - [`collect`]: after the payload ends and its cgroup is removed (stage 15 of SPEC §4.1),
//!   the paths are walked beneath their grant without following any symbolic link and copied
//!   into the store, up to `artifacts.max_bytes`.
//! - [`store`]: `STATE_DIR/artifacts/sha256/<hex>`, written atomically, deduplicated, and read
//!   back by `calyx artifact get`, which verifies the digest while copying.
//!
//! Threat model: the payload chose the contents of its write grants, names included, and
//! calyx-run may be root; see [`collect`] for the rules that keep the copy inside the grant.
//! Test strategy: the planner and store are unit-tested here; the walk is exercised end to end
//! by tests/artifacts.rs through the real binaries, as root and as `nobody`.

pub mod collect;
pub mod plan;
pub mod store;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::exit;

/// Errors of the artifact store.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// A file operation on the store or an output file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Not a SHA-256 digest.
    #[error("{digest:?} is not a sha256 digest (64 hex digits, optionally prefixed sha256:)")]
    BadDigest {
        /// What was given.
        digest: String,
    },
    /// No blob with that digest.
    #[error("no artifact sha256:{digest} in {store}")]
    NotFound {
        /// The digest.
        digest: String,
        /// The store searched.
        store: PathBuf,
    },
    /// The blob's content does not hash to its name.
    #[error("artifact {path} is corrupt: its content hashes to sha256:{found}; nothing written")]
    Corrupt {
        /// The blob.
        path: PathBuf,
        /// What its content hashes to.
        found: String,
    },
    /// The output file exists.
    #[error("refusing to overwrite {path}")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl ArtifactError {
    /// Exit code for `calyx artifact get`: a store whose content no longer matches its digest
    /// is a verification failure (77); a malformed digest is a usage error; the rest are I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            ArtifactError::Corrupt { .. } => exit::REFUSED,
            ArtifactError::BadDigest { .. } => exit::USAGE,
            ArtifactError::Io { .. }
            | ArtifactError::NotFound { .. }
            | ArtifactError::Exists { .. } => 1,
        }
    }
}
