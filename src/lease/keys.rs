//! Ed25519 keys on disk: PKCS#8 PEM private keys (mode 0600), SPKI PEM public keys, key ids.
//!
//! The formats are the standard ones so OpenSSL and other DSSE tools read the same files
//! (`openssl pkey -in KEY -pubout` prints the `.pub`). A key id is the hex SHA-256 of the public
//! key's SPKI DER, so anyone holding the `.pub` can compute it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Key files are a few hundred bytes; anything past this is not a key and is not read whole.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Errors from generating, writing or loading keys.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The output file already exists; keys are never overwritten.
    #[error("refusing to overwrite existing key file {path}")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Reading or writing a key file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A private key file that others could read is refused, as ssh refuses one.
    #[error(
        "private key {path} is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is larger than any key.
    #[error("{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The private key PEM does not decode as an Ed25519 PKCS#8 key.
    #[error("{path} is not an Ed25519 PKCS#8 PEM private key: {source}")]
    BadPrivate {
        /// The file.
        path: PathBuf,
        /// The decoder's reason.
        source: ed25519_dalek::pkcs8::Error,
    },
    /// The public key PEM does not decode as an Ed25519 SPKI key.
    #[error("{origin} is not an Ed25519 SPKI PEM public key: {source}")]
    BadPublic {
        /// The file or policy entry it came from.
        origin: String,
        /// The decoder's reason.
        source: ed25519_dalek::pkcs8::spki::Error,
    },
    /// Encoding a key failed (only on internal errors of the encoder).
    #[error("encoding the {what} key: {reason}")]
    Encode {
        /// "private" or "public".
        what: &'static str,
        /// The encoder's reason.
        reason: String,
    },
}

/// The hex SHA-256 of the public key's SPKI DER.
pub fn keyid(key: &VerifyingKey) -> String {
    // The SPKI DER of an Ed25519 key is a fixed 12-byte prefix and the 32 key bytes; building
    // it by hand avoids the encoder's allocation on the verification hot path and cannot fail.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut hasher = Sha256::new();
    hasher.update(SPKI_PREFIX);
    hasher.update(key.as_bytes());
    hex::encode(hasher.finalize())
}

/// The SPKI PEM text of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode {
            what: "public",
            reason: e.to_string(),
        })
}

/// Parses SPKI PEM text; `origin` names where it came from for the error.
pub fn parse_public_key_pem(pem: &str, origin: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|source| KeyError::BadPublic {
        origin: origin.to_owned(),
        source,
    })
}

/// The path of the public half: `FILE.pub`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A freshly generated key pair and where it was written.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The public key.
    pub public: VerifyingKey,
    /// Its key id.
    pub keyid: String,
    /// The private key file (0600).
    pub private_path: PathBuf,
    /// The public key file (0644).
    pub public_path: PathBuf,
}

/// Creates `path` with `mode` in one `open(O_CREAT|O_EXCL)`, so the file never exists with
/// wider permissions, not even for an instant, and an existing file is never clobbered.
fn create_new_with_mode(path: &Path, mode: u32, contents: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Io {
                op: "creating",
                path: path.to_owned(),
                source,
            },
        })?;
    let io_err = |source| KeyError::Io {
        op: "writing",
        path: path.to_owned(),
        source,
    };
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Generates a key from the OS random source and writes `out` (PKCS#8 PEM, 0600) and
/// `out.pub` (SPKI PEM, 0644). Neither file may exist yet.
pub fn generate(out: &Path) -> Result<GeneratedKey, KeyError> {
    let pub_path = public_path(out);
    // Check both names first so a refusal leaves nothing half-written behind.
    for p in [out, pub_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: p.to_owned() });
        }
    }
    let signing = SigningKey::generate(&mut rand_core::OsRng);
    // PKCS#8 v1 (RFC 8410: the seed only). The v2 form with the public key embedded, which
    // SigningKey's own encoder writes, is refused by OpenSSL 3.0, and interop is the point.
    let v1 = KeypairBytes {
        secret_key: signing.to_bytes(),
        public_key: None,
    };
    let private_pem = v1
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode {
            what: "private",
            reason: e.to_string(),
        })?;
    let public = signing.verifying_key();
    let public_pem = public_key_pem(&public)?;
    create_new_with_mode(out, 0o600, private_pem.as_bytes())?;
    create_new_with_mode(&pub_path, 0o644, public_pem.as_bytes())?;
    Ok(GeneratedKey {
        keyid: keyid(&public),
        public,
        private_path: out.to_owned(),
        public_path: pub_path,
    })
}

/// Reads a small text file through an already-open handle, bounded (`len`: its length, when
/// the caller has its metadata).
fn read_bounded(file: File, path: &Path, len: Option<u64>) -> Result<String, KeyError> {
    let text =
        super::read_text_capped(&file, MAX_KEY_FILE_BYTES, len).map_err(|source| KeyError::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Loads a private key, refusing one that group or others can access. The mode is checked on
/// the opened file (fstat), so the file checked is the file read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let file = File::open(path).map_err(|source| KeyError::Io {
        op: "opening private key",
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| KeyError::Io {
        op: "inspecting private key",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = read_bounded(file, path, Some(meta.len()))?;
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|source| KeyError::BadPrivate {
        path: path.to_owned(),
        source,
    })
}

/// Loads a public key from an SPKI PEM file.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let file = File::open(path).map_err(|source| KeyError::Io {
        op: "opening public key",
        path: path.to_owned(),
        source,
    })?;
    let pem = read_bounded(file, path, None)?;
    parse_public_key_pem(&pem, &path.display().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keyid_is_sha256_of_the_encoders_spki_der() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let der = key.to_public_key_der().unwrap();
        assert_eq!(keyid(&key), hex::encode(Sha256::digest(der.as_bytes())));
    }

    #[test]
    fn generated_files_have_the_right_modes_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k");
        let generated = generate(&out).unwrap();
        assert_eq!(out.metadata().unwrap().mode() & 0o777, 0o600);
        let loaded = load_signing_key(&out).unwrap();
        assert_eq!(loaded.verifying_key(), generated.public);
        let public = load_verifying_key(&generated.public_path).unwrap();
        assert_eq!(keyid(&public), generated.keyid);
        assert!(matches!(generate(&out), Err(KeyError::Exists { .. })));
    }
}
