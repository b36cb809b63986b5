//! Run receipts: a DSSE envelope, signed with the host key, summarising one run (SPEC §5).
//!
//! A receipt binds the lease (SHA-256 of the envelope bytes as read), the argv and the digest
//! of the executable, the enforcement status of every layer, the resource usage, the outcome
//! and exit code, the artifacts' digests, and the hash and sequence number of the run's
//! opening audit line, so a reviewer holding the host's public key can check a run offline
//! and find its place in the hash-chained audit log. The run's closing audit line carries the
//! signed envelope itself: the log's sync makes it durable, the chain covers it, and
//! `STATE_DIR/receipts/<run id>.json` is a copy that [`from_audit_line`] can always restore.
//!
//! Threat model: a receipt is evidence handed to third parties; anyone may edit the file, so
//! [`verify`] bounds the read, checks the signature over the exact payload bytes
//! (`verify_strict` over the DSSE PAE) before parsing, and parses with `deny_unknown_fields`.
//! It proves what this host's calyx-run said; it does not protect against the host's root,
//! who holds the key.

pub mod exe;
pub mod hostkey;

pub use exe::{ExeDigestJob, executable};

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::exit;
use crate::lease::envelope::{self, Envelope, EnvelopeError};
use crate::lease::keys::{self, KeyError};

/// payloadType of a receipt envelope.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.calyx.receipt.v1+json";
/// The payload version this code writes. Version 1 (still read) pointed at the closing audit
/// line; version 2 points at the opening one, since the closing line now carries the receipt.
pub const RECEIPT_VERSION: u32 = 2;
/// The oldest payload version [`verify`] accepts; the fields are the same in both.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// The field of the closing audit line that holds the signed envelope.
pub const AUDIT_FIELD: &str = "receipt";
/// A receipt is a few KiB plus about 150 bytes per artifact; 16 MiB holds the 100,000 entries
/// one run may keep and keeps a hostile file from costing more memory than that.
const MAX_RECEIPT_BYTES: u64 = 16 << 20;

/// How the executable's digest was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExeDigestSource {
    /// The lease pins the digest and init checked it on the opened file it then executed.
    PinnedVerified,
    /// Hashed by calyx-run from the host file at argv[0] (system paths and grants are bound at
    /// the same place, so it names the file the sandbox executes), opened before the clone;
    /// see [`exe`] for when it is hashed.
    HostFile,
    /// The file could not be read on the host; no digest.
    Unavailable,
}

/// The executable of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executable {
    /// argv[0].
    pub path: String,
    /// Lowercase hex SHA-256.
    pub sha256: Option<String>,
    /// Where the digest comes from.
    pub source: ExeDigestSource,
}

/// One kept artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptArtifact {
    /// Sandbox path.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 (its name in the store).
    pub sha256: String,
}

/// The audit line a receipt points at: the run's opening line (version 2; version 1 pointed at
/// the closing line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRef {
    /// Sequence number in the log.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the line without its newline.
    pub hash: String,
}

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`RECEIPT_VERSION`].
    pub version: u32,
    /// Run id.
    pub run_id: String,
    /// Host name.
    pub host: String,
    /// Lease id.
    pub lease_id: String,
    /// Intent id.
    pub intent_id: String,
    /// Lowercase hex SHA-256 of the lease envelope file's bytes as calyx-run read them.
    pub lease_sha256: String,
    /// argv as run.
    pub argv: Vec<String>,
    /// The executable and its digest.
    pub executable: Executable,
    /// Profile.
    pub profile: String,
    /// Per-layer enforcement status (as in the run result).
    pub enforcement: Value,
    /// Resource usage (as in the run result), if measured.
    pub usage: Option<Value>,
    /// exited | signaled | timeout | halted | rejected | setup_failed.
    pub outcome: String,
    /// calyx-run's exit code.
    pub exit_code: u8,
    /// Signal that killed the payload.
    pub signal: Option<i32>,
    /// When the run ended (RFC 3339, UTC).
    pub finished_at: String,
    /// Wall time of the calyx-run invocation, milliseconds.
    pub duration_ms: u64,
    /// Artifacts kept.
    pub artifacts: Vec<ReceiptArtifact>,
    /// The run's opening audit line: `exec_event.STARTED`, or `lease_event.VERIFIED` for a run
    /// stopped before its start.
    pub audit: AuditRef,
}

/// Errors writing or verifying a receipt.
#[derive(Debug, Error)]
pub enum ReceiptError {
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is larger than any receipt.
    #[error("{path} is larger than {MAX_RECEIPT_BYTES} bytes: not a receipt")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The host key could not be loaded or created.
    #[error("host key: {0}")]
    Key(#[from] KeyError),
    /// Not a DSSE envelope.
    #[error("not a DSSE envelope: {source}")]
    NotEnvelope {
        /// serde_json's reason, with line and column.
        source: serde_json::Error,
    },
    /// A field of the envelope does not decode.
    #[error("receipt envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// Wrong payloadType.
    #[error("payloadType is {found:?}, expected {RECEIPT_PAYLOAD_TYPE:?}")]
    PayloadType {
        /// What the envelope says.
        found: String,
    },
    /// No signature by the given key.
    #[error("no signature by host key {keyid} (signed by: {signers})")]
    NotSigned {
        /// The expected key id.
        keyid: String,
        /// Key ids that did sign.
        signers: String,
    },
    /// A signature by the key that does not verify.
    #[error("bad signature by host key {keyid}: the receipt was altered or signed by another key")]
    BadSignature {
        /// The key id.
        keyid: String,
    },
    /// The payload is not a receipt.
    #[error("receipt payload is not valid: {source}")]
    Payload {
        /// serde's reason.
        source: serde_json::Error,
    },
    /// An unsupported payload version.
    #[error(
        "receipt version {found} is not supported (this calyx reads versions {OLDEST_READABLE_VERSION} to {RECEIPT_VERSION})"
    )]
    Version {
        /// The version found.
        found: u32,
    },
}

impl ReceiptError {
    /// Exit code for `calyx receipt verify`: 77 for a receipt that does not verify, 78 for an
    /// unusable key file, 1 when the receipt cannot be read.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReceiptError::Io { .. } => 1,
            ReceiptError::Key(_) => exit::BAD_CONFIG,
            _ => exit::REFUSED,
        }
    }
}

/// Signs `receipt` and returns the envelope JSON (pretty, with a trailing newline).
pub fn sign(receipt: &Receipt, key: &SigningKey) -> Result<String, ReceiptError> {
    Ok(sign_envelope(receipt, key)?.to_json_pretty())
}

/// Signs `receipt` and returns the envelope.
pub fn sign_envelope(receipt: &Receipt, key: &SigningKey) -> Result<Envelope, ReceiptError> {
    let body =
        serde_json::to_vec_pretty(receipt).map_err(|source| ReceiptError::Payload { source })?;
    let mut env = Envelope::unsigned(RECEIPT_PAYLOAD_TYPE, &body);
    env.sign(key)?;
    Ok(env)
}

/// Writes a signed receipt (`text`, from [`sign`]) to `STATE_DIR/receipts/<run id>.json`
/// (directory 0700, file 0644: a receipt holds nothing secret and is meant to be handed out,
/// but the directory stays as private as the rest of the state directory), through a
/// temporary sibling and a rename, so the name never shows a partial file.
///
/// Not synced: this file is a copy. The durable one is the run's closing audit line, which
/// carries the same envelope ([`AUDIT_FIELD`]) and is synced; one sync for both instead of two
/// side by side, which the disk served one after the other (0.24 ms of every run here). After
/// a power loss the file may be missing or torn (a torn one fails verification); `calyx
/// receipt get RUN-ID` writes it again from the log.
pub fn write_copy(state_dir: &Path, run_id: &str, text: &str) -> Result<PathBuf, ReceiptError> {
    receipts_dir(state_dir)?;
    let path = copy_path(state_dir, run_id);
    crate::lease::write_file_unsynced(&path, text.as_bytes(), 0o644).map_err(|source| {
        ReceiptError::Io {
            op: "writing receipt",
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// `STATE_DIR/receipts`, made (0700) if missing.
fn receipts_dir(state_dir: &Path) -> Result<PathBuf, ReceiptError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir.join(RECEIPTS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| ReceiptError::Io {
            op: "creating the receipt directory",
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// The receipts' directory in the state directory.
const RECEIPTS_DIR: &str = "receipts";

fn copy_name(run_id: &str) -> String {
    format!("{run_id}.json")
}

/// Where a run's copy goes: `STATE_DIR/receipts/<run id>.json`.
fn copy_path(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join(RECEIPTS_DIR).join(copy_name(run_id))
}

/// A receipt's copy made ready while the payload runs, so that writing it once the closing
/// record is synced is one write and one link rather than creating a file and renaming it
/// (about 0.1 ms less between the payload's exit and calyx-run's): an unnamed file
/// (`O_TMPFILE`, 0644 less the umask, as [`write_copy`]) in `STATE_DIR/receipts` that gets its
/// name only once complete. As with [`write_copy`] the name never shows a partial file; and a
/// runner that dies first leaves nothing behind, not even a temporary. Where the filesystem
/// has no `O_TMPFILE`, or the link fails, [`CopyFile::write`] falls back to [`write_copy`].
#[derive(Debug)]
pub struct CopyFile {
    state_dir: PathBuf,
    dir: std::fs::File,
    unnamed: Option<std::fs::File>,
}

impl CopyFile {
    /// Makes the receipt directory if needed and opens the unnamed file in it.
    pub fn prepare(state_dir: &Path) -> Result<CopyFile, ReceiptError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir_path = receipts_dir(state_dir)?;
        let io = |op, source| ReceiptError::Io {
            op,
            path: dir_path.clone(),
            source,
        };
        let dir = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir_path)
            .map_err(|e| io("opening the receipt directory", e))?;
        let unnamed = match std::fs::File::options()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir_path)
        {
            Ok(f) => Some(f),
            // No O_TMPFILE on this filesystem (EOPNOTSUPP), or a kernel that takes the flag
            // for O_DIRECTORY alone (EISDIR): the copy is written the other way.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => None,
            Err(e) => return Err(io("creating the receipt copy in", e)),
        };
        Ok(CopyFile {
            state_dir: state_dir.to_owned(),
            dir,
            unnamed,
        })
    }

    /// Writes `text` (from [`sign`]) and names the file `<run id>.json`; the path written.
    pub fn write(self, run_id: &str, text: &str) -> Result<PathBuf, ReceiptError> {
        use std::io::Write;
        use std::os::fd::AsFd;
        let Some(mut file) = self.unnamed else {
            return write_copy(&self.state_dir, run_id, text);
        };
        let path = copy_path(&self.state_dir, run_id);
        file.write_all(text.as_bytes())
            .map_err(|source| ReceiptError::Io {
                op: "writing receipt",
                path: path.clone(),
                source,
            })?;
        let linked = std::ffi::CString::new(copy_name(run_id))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|c| crate::sys::fs::link_open_file(file.as_fd(), self.dir.as_fd(), &c));
        match linked {
            Ok(()) => Ok(path),
            // No /proc to link through, a name taken, a directory replaced: the other way,
            // which reports its own error.
            Err(_) => write_copy(&self.state_dir, run_id, text),
        }
    }
}

/// The signed envelope a closing audit line carries, as the text of a receipt file (pretty
/// JSON and a newline, as [`sign`] writes it). None when `line` is not such a line. The
/// signature covers the payload bytes, not this formatting: the text verifies as the file
/// written at the run did.
pub fn from_audit_line(line: &Value) -> Option<String> {
    let env = Envelope::deserialize(line.get(AUDIT_FIELD)?).ok()?;
    (env.payload_type == RECEIPT_PAYLOAD_TYPE).then(|| env.to_json_pretty())
}

/// Reads a receipt file (bounded) and verifies it against `key`: payloadType, a
/// `verify_strict` signature by that key over the exact payload bytes, then the payload.
pub fn verify_file(path: &Path, key: &VerifyingKey) -> Result<Receipt, ReceiptError> {
    let io = |op, source| ReceiptError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| io("opening receipt", e))?;
    let mut raw = Vec::new();
    file.take(MAX_RECEIPT_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| io("reading receipt", e))?;
    if raw.len() as u64 > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::TooLarge {
            path: path.to_owned(),
        });
    }
    verify(&raw, key)
}

/// Verifies envelope bytes against `key` (see [`verify_file`]).
pub fn verify(raw: &[u8], key: &VerifyingKey) -> Result<Receipt, ReceiptError> {
    // Parsed here rather than by Envelope::from_json, whose error speaks of leases.
    let env: Envelope =
        serde_json::from_slice(raw).map_err(|source| ReceiptError::NotEnvelope { source })?;
    if env.payload_type != RECEIPT_PAYLOAD_TYPE {
        return Err(ReceiptError::PayloadType {
            found: env.payload_type,
        });
    }
    let body = env.payload_bytes()?;
    let keyid = keys::keyid(key);
    let mut seen = false;
    for (i, s) in env.signatures.iter().enumerate() {
        if s.keyid != keyid {
            continue;
        }
        seen = true;
        let sig = envelope::decode_signature(&s.sig, i + 1)?;
        if envelope::verify_signature(key, RECEIPT_PAYLOAD_TYPE, &body, &sig) {
            let receipt: Receipt =
                serde_json::from_slice(&body).map_err(|source| ReceiptError::Payload { source })?;
            if !(OLDEST_READABLE_VERSION..=RECEIPT_VERSION).contains(&receipt.version) {
                return Err(ReceiptError::Version {
                    found: receipt.version,
                });
            }
            return Ok(receipt);
        }
    }
    if seen {
        return Err(ReceiptError::BadSignature { keyid });
    }
    let signers: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
    Err(ReceiptError::NotSigned {
        keyid,
        signers: if signers.is_empty() {
            "nobody".to_owned()
        } else {
            signers.join(", ")
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn sample() -> Receipt {
        Receipt {
            version: RECEIPT_VERSION,
            run_id: "RUN-1".into(),
            host: "h".into(),
            lease_id: "LEASE-1".into(),
            intent_id: "INT-1".into(),
            lease_sha256: "ab".repeat(32),
            argv: vec!["/usr/bin/true".into()],
            executable: executable("/nonexistent/exe", None),
            profile: "default".into(),
            enforcement: serde_json::json!({"seccomp": "on"}),
            usage: None,
            outcome: "exited".into(),
            exit_code: 0,
            signal: None,
            finished_at: "2030-01-01T00:00:00Z".into(),
            duration_ms: 5,
            artifacts: vec![],
            audit: AuditRef {
                seq: 3,
                hash: "cd".repeat(32),
            },
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_every_tampering_is_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let text = sign(&sample(), &key).unwrap();
        assert_eq!(
            verify(text.as_bytes(), &key.verifying_key()).unwrap(),
            sample()
        );
        assert!(matches!(
            verify(text.as_bytes(), &other.verifying_key()),
            Err(ReceiptError::NotSigned { .. })
        ));
        let env = Envelope::from_json(text.as_bytes()).unwrap();
        // One flipped bit in the payload.
        let mut body = env.payload_bytes().unwrap();
        let at = body.len() / 2;
        body[at] ^= 1;
        let mut bad = env.clone();
        bad.payload = STANDARD.encode(&body);
        assert!(matches!(
            verify(bad.to_json_pretty().as_bytes(), &key.verifying_key()),
            Err(ReceiptError::BadSignature { .. })
        ));
        // One flipped bit in the signature.
        let mut sig = STANDARD.decode(&env.signatures[0].sig).unwrap();
        sig[10] ^= 1;
        let mut bad = env.clone();
        bad.signatures[0].sig = STANDARD.encode(&sig);
        assert!(matches!(
            verify(bad.to_json_pretty().as_bytes(), &key.verifying_key()),
            Err(ReceiptError::BadSignature { .. })
        ));
        // A lease envelope is not a receipt, even when signed by the host key.
        let mut lease = Envelope::unsigned(crate::lease::model::LEASE_PAYLOAD_TYPE, b"{}");
        lease.sign(&key).unwrap();
        assert!(matches!(
            verify(lease.to_json_pretty().as_bytes(), &key.verifying_key()),
            Err(ReceiptError::PayloadType { .. })
        ));
    }

    #[test]
    fn versions_one_and_two_verify_and_others_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        for (version, ok) in [(0, false), (1, true), (2, true), (3, false)] {
            let mut r = sample();
            r.version = version;
            let text = sign(&r, &key).unwrap();
            let got = verify(text.as_bytes(), &key.verifying_key());
            match (ok, got) {
                (true, Ok(back)) => assert_eq!(back.version, version),
                (false, Err(ReceiptError::Version { found })) => assert_eq!(found, version),
                (_, other) => panic!("version {version}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_closing_audit_line_gives_back_the_receipt_file() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let env = sign_envelope(&sample(), &key).unwrap();
        let line = serde_json::json!({"seq": 7, "event": "exec_event.FINISHED", AUDIT_FIELD: env});
        // Byte for byte the text `write_copy` writes, and it verifies.
        let text = from_audit_line(&line).unwrap();
        assert_eq!(text, sign(&sample(), &key).unwrap());
        assert_eq!(
            verify(text.as_bytes(), &key.verifying_key()).unwrap(),
            sample()
        );
        // Lines without one, or with another kind of envelope, give nothing.
        assert_eq!(from_audit_line(&serde_json::json!({"seq": 1})), None);
        let mut lease = Envelope::unsigned(crate::lease::model::LEASE_PAYLOAD_TYPE, b"{}");
        lease.sign(&key).unwrap();
        assert_eq!(
            from_audit_line(&serde_json::json!({AUDIT_FIELD: lease})),
            None
        );
        assert_eq!(
            from_audit_line(&serde_json::json!({AUDIT_FIELD: "text"})),
            None
        );
    }
    /// Names in a directory, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_prepared_copy_is_named_only_once_written_and_leaves_nothing_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let text = sign(&sample(), &key).unwrap();
        // Prepared: the directory exists (0700) and holds no name yet.
        let copy = CopyFile::prepare(state.path()).unwrap();
        let dir = state.path().join("receipts");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        let path = copy.write("RUN-1", &text).unwrap();
        assert_eq!(path, dir.join("RUN-1.json"));
        assert_eq!(names(&dir), ["RUN-1.json"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(verify_file(&path, &key.verifying_key()).unwrap(), sample());
        // A copy prepared and never written (the closing record was not synced) leaves no
        // file behind, named or not.
        drop(CopyFile::prepare(state.path()).unwrap());
        assert_eq!(names(&dir), ["RUN-1.json"]);
        // A name already taken is replaced, as write_copy does.
        let again = CopyFile::prepare(state.path()).unwrap();
        again.write("RUN-1", "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        assert_eq!(names(&dir), ["RUN-1.json"]);
    }
}
