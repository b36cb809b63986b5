//! Leases: the payload model, the DSSE envelope, keys, trust policies and verification.
//!
//! The order matters and is enforced in [`verify`]: bound the input, authenticate the exact
//! bytes against a trust policy the caller owns, only then parse the payload and check it.

pub mod argv;
mod atomic;
pub mod envelope;
pub mod keys;
pub mod model;
pub mod trust;
pub mod units;
pub mod verify;

/// Replaces `path` atomically (temp file with `mode`, fsync, rename): readers see the old
/// file or the new one, never a torn one.
pub fn write_file_atomic(
    path: &std::path::Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    atomic::write_atomic(path, contents, mode)
}
