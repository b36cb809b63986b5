//! `calyx artifact get DIGEST --out FILE [--state-dir DIR]`: copy a stored artifact out.

use std::path::PathBuf;

use clap::Subcommand;

use crate::artifact::store::Store;

/// `calyx artifact …`
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Copy the artifact with this digest out of the store, verifying its SHA-256 while
    /// copying. FILE must not exist (it is never overwritten) and is created 0600. Exit 0;
    /// 77 when the stored content does not match its digest (nothing is written); 1 when it is
    /// missing or FILE exists; 2 for a malformed digest.
    Get {
        /// `sha256:<hex>` or `<hex>` (64 hex digits), as listed by calyx-run.
        digest: String,
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// State directory holding the store (default: /var/lib/calyx for root, XDG state
        /// otherwise; CALYX_STATE_DIR).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// Runs one `calyx artifact` command; returns the exit code.
pub fn run(cmd: &ArtifactCommand) -> u8 {
    let ArtifactCommand::Get {
        digest,
        out,
        state_dir,
    } = cmd;
    let state_dir = state_dir.clone().unwrap_or_else(|| {
        let uid = super::effective_uid_from(std::path::Path::new("/proc/self/status"))
            .unwrap_or(u32::MAX);
        crate::paths::default_locations(uid, &|k| std::env::var(k).ok()).state_dir
    });
    match Store::at(&state_dir).get(digest, out) {
        Ok(size) => {
            eprintln!(
                "calyx: wrote {} ({size} bytes, sha256 verified)",
                out.display()
            );
            0
        }
        Err(e) => {
            eprintln!("calyx: {e}");
            e.exit_code()
        }
    }
}
