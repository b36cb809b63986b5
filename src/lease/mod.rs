//! Leases: the payload model, the DSSE envelope, keys, trust policies and verification.
//!
//! # Threat model
//!
//! A lease file is attacker-controlled until verified: it may be huge, malformed, re-signed,
//! replayed after expiry, or signed by the right number of keys in the wrong roles. The trust
//! policy is the root of authority and must be a file only root or the caller can change.
//! Private keys must be readable only by their owner.
//!
//! # Order
//!
//! Enforced in [`verify`]: bound the input, authenticate the exact bytes against the trust
//! policy, only then parse the payload and check it. Revocation and remaining uses are the
//! ledger's job, on the [`verify::Verified`] result.
//!
//! # Test strategy
//!
//! Every refusal has a test pinning its exact message (`tests/lease_verify.rs`, with an
//! injected clock); file permission rules in `tests/lease_trust.rs`; round trips and PAE
//! properties in `tests/lease_props.rs`; the binary end to end in `tests/cli_calyx.rs`; and a
//! cargo-fuzz target in `fuzz/`.

pub mod argv;
mod atomic;
pub mod envelope;
pub mod keys;
pub mod model;
pub mod trust;
mod trust_error;
pub mod units;
pub mod verify;

/// Reads `file` to its end, but at most `max + 1` bytes (one more than allowed shows that a file
/// is too large), into a buffer sized from its length (`len`, or its metadata when the caller
/// has not looked already): one `read` for the data instead of a 32-byte probe and doublings.
pub fn read_capped(file: &std::fs::File, max: u64, len: Option<u64>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let size = len.unwrap_or_else(|| file.metadata().map_or(0, |m| m.len()));
    let cap = usize::try_from(size.min(max))
        .unwrap_or(0)
        .saturating_add(1);
    let mut raw = Vec::with_capacity(cap);
    file.take(max.saturating_add(1)).read_to_end(&mut raw)?;
    Ok(raw)
}

/// [`read_capped`] as text; invalid UTF-8 is an `InvalidData` error, as with `read_to_string`.
pub fn read_text_capped(
    file: &std::fs::File,
    max: u64,
    len: Option<u64>,
) -> std::io::Result<String> {
    String::from_utf8(read_capped(file, max, len)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Replaces `path` atomically (temp file with `mode`, fsync, rename): readers see the old
/// file or the new one, never a torn one.
pub fn write_file_atomic(
    path: &std::path::Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    atomic::write_atomic(path, contents, mode)
}

/// [`write_file_atomic`] without its syncs: readers never see a torn file, but after a power
/// loss it may be missing or torn. For copies of what is kept durably elsewhere.
pub fn write_file_unsynced(
    path: &std::path::Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    atomic::replace(path, contents, mode, atomic::Flush::PageCache)
}
