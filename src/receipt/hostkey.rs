//! The host key that signs receipts.
//!
//! Where it comes from, first match wins: `calyx-run --host-key FILE`, the `CALYX_HOST_KEY`
//! environment variable, else `STATE_DIR/host-key.pem` (+ `.pub`), generated on first use
//! with the same code as `calyx key gen` (PKCS#8 PEM, 0600). A configured key that is missing
//! is an error, never silently replaced by a new one: receipts would then be signed by a key
//! nobody trusts. As for lease keys, a private key readable by group or others is refused.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::ReceiptError;
use crate::lease::keys::{self, KeyError};

/// Where the host key is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeySource {
    /// `--host-key FILE`.
    Flag(PathBuf),
    /// `CALYX_HOST_KEY`.
    Env(PathBuf),
    /// `STATE_DIR/host-key.pem`, created when missing.
    StateDir(PathBuf),
}

impl HostKeySource {
    /// The private key file.
    pub fn path(&self) -> &Path {
        match self {
            HostKeySource::Flag(p) | HostKeySource::Env(p) | HostKeySource::StateDir(p) => p,
        }
    }
}

/// Picks the host key's location (pure).
pub fn resolve(flag: Option<&Path>, env: Option<&str>, state_dir: &Path) -> HostKeySource {
    match (flag, env.filter(|v| !v.is_empty())) {
        (Some(f), _) => HostKeySource::Flag(f.to_owned()),
        (None, Some(e)) => HostKeySource::Env(PathBuf::from(e)),
        (None, None) => HostKeySource::StateDir(state_dir.join("host-key.pem")),
    }
}

/// Loads the host key, generating the state directory's key on first use.
pub fn load_or_create(source: &HostKeySource) -> Result<SigningKey, ReceiptError> {
    let path = source.path();
    match keys::load_signing_key(path) {
        Ok(k) => return Ok(k),
        Err(KeyError::Io { source: e, .. })
            if e.kind() == io::ErrorKind::NotFound
                && matches!(source, HostKeySource::StateDir(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ReceiptError::Io {
                op: "creating the state directory",
                path: dir.to_owned(),
                source,
            })?;
    }
    match keys::generate(path) {
        Ok(_) => Ok(keys::load_signing_key(path)?),
        // Another runner created it first; it may still be writing the PEM, so give it a
        // moment rather than failing on a half-written file.
        Err(KeyError::Exists { .. }) => {
            let mut last = None;
            for _ in 0..10 {
                match keys::load_signing_key(path) {
                    Ok(k) => return Ok(k),
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(last.map_or_else(
                || {
                    ReceiptError::Key(KeyError::Exists {
                        path: path.to_owned(),
                    })
                },
                ReceiptError::Key,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_state_dir() {
        let s = Path::new("/state");
        assert_eq!(
            resolve(Some(Path::new("/f")), Some("/e"), s),
            HostKeySource::Flag("/f".into())
        );
        assert_eq!(
            resolve(None, Some("/e"), s),
            HostKeySource::Env("/e".into())
        );
        assert_eq!(
            resolve(None, Some(""), s),
            HostKeySource::StateDir("/state/host-key.pem".into())
        );
    }

    #[test]
    fn the_state_dir_key_is_created_once_and_a_configured_one_never() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = resolve(None, None, &dir.path().join("state"));
        let a = load_or_create(&src).unwrap();
        let b = load_or_create(&src).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        let mode = std::fs::metadata(src.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keys::public_path(src.path()).exists());
        let missing = HostKeySource::Flag(dir.path().join("nope.pem"));
        assert!(load_or_create(&missing).is_err());
        assert!(!dir.path().join("nope.pem").exists());
    }
}
