//! `calyx receipt verify FILE --host-key PUB [--json]`: check a run receipt offline.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use crate::lease::keys;
use crate::receipt::{self, Receipt};

/// `calyx receipt …`
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Verify a run receipt with the host's public key and print a summary. Exit 0 when the
    /// signature (verify_strict over the DSSE PAE), payloadType and payload are valid; 77 with
    /// the reason when not; 78 when the key file is unusable; 1 when FILE cannot be read.
    Verify {
        /// The receipt (STATE_DIR/receipts/RUN-….json).
        file: PathBuf,
        /// The host's public key (SPKI PEM, e.g. STATE_DIR/host-key.pem.pub).
        #[arg(long, value_name = "PUB")]
        host_key: PathBuf,
        /// Print a JSON result on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `calyx receipt` command; returns the exit code.
pub fn run(cmd: &ReceiptCommand) -> u8 {
    let ReceiptCommand::Verify {
        file,
        host_key,
        json,
    } = cmd;
    let checked = keys::load_verifying_key(host_key)
        .map_err(receipt::ReceiptError::from)
        .and_then(|key| Ok((receipt::verify_file(file, &key)?, keys::keyid(&key))));
    match (checked, *json) {
        (Ok((r, keyid)), false) => {
            print!("{}", summary(&r, &keyid));
            0
        }
        (Ok((r, keyid)), true) => {
            println!("{}", json!({"valid": true, "keyid": keyid, "receipt": r}));
            0
        }
        (Err(e), json) => {
            if json {
                println!("{}", json!({"valid": false, "reason": e.to_string()}));
            }
            eprintln!("calyx: {}: {e}", file.display());
            e.exit_code()
        }
    }
}

fn summary(r: &Receipt, keyid: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "OK receipt of {} signed by host key {keyid}", r.run_id);
    let _ = writeln!(s, "host       {}", r.host);
    let _ = writeln!(
        s,
        "lease      {} (intent {}), envelope sha256 {}",
        r.lease_id, r.intent_id, r.lease_sha256
    );
    let _ = writeln!(s, "argv       {:?} (profile {})", r.argv, r.profile);
    let source = serde_json::to_value(r.executable.source).unwrap_or_default();
    let _ = writeln!(
        s,
        "executable {} sha256 {} ({})",
        r.executable.path,
        r.executable.sha256.as_deref().unwrap_or("unknown"),
        source.as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "outcome    {}, exit code {}, {} ms, finished {}",
        r.outcome, r.exit_code, r.duration_ms, r.finished_at
    );
    let _ = writeln!(s, "artifacts  {}", r.artifacts.len());
    for a in &r.artifacts {
        let _ = writeln!(
            s,
            "           sha256:{} {} bytes {}",
            a.sha256,
            a.size,
            a.path.display()
        );
    }
    let _ = writeln!(
        s,
        "audit      closing line seq {} sha256 {}",
        r.audit.seq, r.audit.hash
    );
    s
}
