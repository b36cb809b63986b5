//! Command-line front ends. Parsing here is pure (clap only); the work starts in `run`.

pub mod calyx;
pub mod calyx_artifact;
pub mod calyx_audit;
mod calyx_issue;
mod calyx_ledger;
pub mod calyx_receipt;
mod calyx_show;
mod calyx_split;
pub mod doctor;
pub mod out;
pub mod result;
pub mod run;
mod run_args;
mod run_outputs;

use std::path::Path;

/// The effective uid of this process, read from `status` (normally `/proc/self/status`) so no
/// unsafe FFI is needed here; `None` when it cannot be read or parsed.
pub fn effective_uid_from(status: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(status).ok()?;
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(&status, "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n").unwrap();
        assert_eq!(effective_uid_from(&status), Some(0));
        std::fs::write(&status, "Name:\tx\n").unwrap();
        assert_eq!(effective_uid_from(&status), None);
    }
}
