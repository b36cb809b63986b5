//! What calyx-run keeps after the payload: the artifacts (stage 15 of SPEC §4.1, after the
//! cgroup is gone and before the closing audit record) and the signed receipt (carried by that
//! record, and copied to a file once it is written).
//! The logic lives in `crate::artifact` and `crate::receipt`; this is the glue to the audit
//! log, stderr and the machine result.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::json;

use crate::artifact::collect::{self, Collected};
use crate::artifact::store::Store;
use crate::audit::{Appended, AuditLog, Durability, RunIds, names};
use crate::lease::envelope::Envelope;
use crate::plan::Plan;
use crate::receipt::hostkey::{self, HostKeySource};
use crate::receipt::{self, AuditRef, Executable, Receipt, ReceiptArtifact};

use super::result::RunResult;

/// Entries named one by one on stderr; the rest are counted (all are in the event).
const STDERR_SKIPPED_SHOWN: usize = 10;

/// Everything a receipt needs that the run itself does not produce, gathered before the run.
pub struct ReceiptInputs {
    /// The host key, or why there is none (the run then has no receipt).
    pub key: Result<SigningKey, String>,
    /// SHA-256 of the lease envelope bytes as read.
    pub lease_sha256: String,
    /// Host name.
    pub host: String,
    /// Where receipts go (`STATE_DIR/receipts/`).
    pub state_dir: PathBuf,
}

/// Loads or creates the host key before the run. `Err`: a configured key (`--host-key`,
/// `CALYX_HOST_KEY`) that cannot be used refuses the run (78). `Ok(Err)`: the state
/// directory's key could not be made (e.g. no writable state directory for this user); the
/// run goes on without a receipt, said on stderr now and as `receipt_error` in the result.
pub fn host_key_for_run(src: &HostKeySource) -> Result<Result<SigningKey, String>, String> {
    match (hostkey::load_or_create(src), src) {
        (Ok(k), _) => Ok(Ok(k)),
        (Err(e), HostKeySource::StateDir(p)) => {
            let msg = format!("host key {}: {e}", p.display());
            eprintln!(
                "calyx-run: this run will have no receipt: {msg}; pass --host-key FILE (or CALYX_HOST_KEY) or a writable --state-dir"
            );
            Ok(Err(msg))
        }
        (Err(e), _) => Err(format!("host key {}: {e}", src.path().display())),
    }
}

/// Copies the plan's artifacts into the store, says what happened on stderr and in
/// `artifact_event.PERSISTED`, and puts the list in the result. Never changes the exit code:
/// the run already happened, and its outcome is what callers act on.
pub fn persist_artifacts(
    plan: &Plan,
    state_dir: &Path,
    audit: &mut AuditLog,
    ids: &RunIds,
    result: &mut RunResult,
) {
    if plan.artifacts.items.is_empty() {
        return;
    }
    let store = Store::at(state_dir);
    let fields = match collect::collect(&plan.artifacts, &store) {
        Ok(c) => {
            report_on_stderr(&c, store.dir());
            let fields = json!({"store": store.dir(), "kept": c.kept, "skipped": c.skipped,
                "total_bytes": c.total_bytes, "max_bytes": c.max_bytes, "stopped": c.stopped});
            result.artifacts = Some(c);
            fields
        }
        Err(e) => {
            eprintln!("calyx-run: artifacts not kept: {e}");
            result.artifacts_error = Some(e.to_string());
            json!({"store": store.dir(), "kept": [], "error": e.to_string()})
        }
    };
    // Buffered: the closing record right after it is synced, and carries this one to disk.
    if let Err(e) = audit.append(names::ARTIFACT_PERSISTED, ids, fields, Durability::Buffered) {
        eprintln!("calyx-run: {e}");
    }
}

fn report_on_stderr(c: &Collected, store: &Path) {
    eprintln!(
        "calyx-run: kept {} artifact file(s), {} bytes, in {}",
        c.kept.len(),
        c.total_bytes,
        store.display()
    );
    for s in c.skipped.iter().take(STDERR_SKIPPED_SHOWN) {
        let detail = s
            .detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let reason = serde_json::to_value(s.reason).unwrap_or_default();
        eprintln!(
            "calyx-run: artifact {} not kept: {}{detail}",
            s.path.display(),
            reason.as_str().unwrap_or("?")
        );
    }
    if c.skipped.len() > STDERR_SKIPPED_SHOWN {
        eprintln!(
            "calyx-run: … and {} more not kept (see artifact_event.PERSISTED)",
            c.skipped.len() - STDERR_SKIPPED_SHOWN
        );
    }
    if c.stopped {
        eprintln!(
            "calyx-run: artifacts stopped at the cap of {} bytes (artifacts.max_bytes); later files were not kept; the run's exit code is unchanged",
            c.max_bytes
        );
    }
}

/// Signs the receipt of a finished run, pointing at the run's opening audit line (`opening`).
/// Returns the envelope, which the closing audit record carries and [`write_receipt_copy`]
/// writes out once that record is written; None, with the reason on stderr and in the
/// result, when there is no host key or signing fails. A missing receipt never changes the
/// exit code: the payload ran and its result stands; `receipt_error` in the result and the
/// message on stderr say the receipt is missing.
pub fn sign_receipt(
    inputs: &ReceiptInputs,
    plan: &Plan,
    executable: Option<Executable>,
    result: &mut RunResult,
    opening: &Appended,
) -> Option<Envelope> {
    let key = match &inputs.key {
        Ok(k) => k,
        Err(why) => {
            result.receipt_error = Some(format!("receipt not written: {why}"));
            return None;
        }
    };
    let receipt = Receipt {
        version: receipt::RECEIPT_VERSION,
        run_id: result.run_id.clone(),
        host: inputs.host.clone(),
        lease_id: result.lease_id.clone().unwrap_or_default(),
        intent_id: result.intent_id.clone().unwrap_or_default(),
        lease_sha256: inputs.lease_sha256.clone(),
        argv: plan.argv.clone(),
        executable: executable.unwrap_or_else(|| {
            crate::receipt::executable(
                plan.argv.first().map(String::as_str).unwrap_or(""),
                plan.exe_sha256.as_deref(),
            )
        }),
        profile: plan.profile.clone(),
        enforcement: serde_json::to_value(&result.enforcement).unwrap_or_default(),
        usage: result
            .usage
            .map(|u| serde_json::to_value(u).unwrap_or_default()),
        outcome: serde_json::to_value(result.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        exit_code: result.exit_code,
        signal: result.signal,
        finished_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        duration_ms: result.duration_ms,
        artifacts: result
            .artifacts
            .iter()
            .flat_map(|c| &c.kept)
            .map(|k| ReceiptArtifact {
                path: k.path.clone(),
                size: k.size,
                sha256: k.sha256.clone(),
            })
            .collect(),
        audit: AuditRef {
            seq: opening.seq,
            hash: opening.hash.clone(),
        },
    };
    match receipt::sign_envelope(&receipt, key) {
        Ok(env) => Some(env),
        Err(e) => {
            eprintln!("calyx-run: receipt not written: {e}; the run's exit code is unchanged");
            result.receipt_error = Some(e.to_string());
            None
        }
    }
}

/// Writes the copy of a signed receipt to `STATE_DIR/receipts/<run id>.json` once the closing
/// record carrying it is written, and records its path (or why there is none) on stderr and
/// in the result.
pub fn write_receipt_copy(
    inputs: &ReceiptInputs,
    result: &mut RunResult,
    env: &Envelope,
    prepared: Option<Result<receipt::CopyFile, receipt::ReceiptError>>,
) {
    let text = env.to_json_pretty();
    let written = match prepared {
        Some(Ok(copy)) => copy.write(&result.run_id, &text),
        Some(Err(e)) => Err(e),
        // The payload never started (a refused use): nothing was made ready.
        None => receipt::write_copy(&inputs.state_dir, &result.run_id, &text),
    };
    match written {
        // Silent on success, like the rest of a good run: the path is in the JSON result
        // (`receipt`) and is always STATE_DIR/receipts/<run id>.json.
        Ok(path) => result.receipt = Some(path),
        Err(e) => {
            let msg = format!(
                "receipt file not written: {e}; the closing audit record holds the receipt \
                 (`calyx receipt get {}`)",
                result.run_id
            );
            eprintln!("calyx-run: {msg}; the run's exit code is unchanged");
            result.receipt_error = Some(msg);
        }
    }
}
