//! The sentinel: threads in the runner, outside the sandbox, that read the run's cgroup
//! statistics and halt the run when a rule is breached (SPEC §4.4).
//!
//! - [`stats`]: parsers for the cgroup files and one [`stats::Sample`] per reading;
//! - [`rules`]: pure evaluation of halt rules over timestamped samples;
//! - [`policy`]: `policies/halt.toml`, validated, merged with the lease's rules;
//! - [`watch`]: the watcher thread (event-driven where the kernel offers it, sampled
//!   otherwise) that acts through the cgroup module and reports over a channel.

pub mod policy;
pub mod rules;
pub mod stats;
pub mod thresholds;
pub mod watch;

use std::io;
use std::path::PathBuf;

/// Errors of the sentinel.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// Reading a statistics or policy file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A statistics file did not parse.
    #[error("parsing {what}: unexpected {text:?}")]
    Parse {
        /// Which file.
        what: &'static str,
        /// The offending text (first 200 characters).
        text: String,
    },
    /// The halt policy is not valid TOML (or, built in, JSON) of the expected shape.
    #[error("parsing halt policy {path}: {source}")]
    PolicyParse {
        /// Policy file (or `<inline>`).
        path: PathBuf,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A halt rule is out of range.
    #[error("halt rule {index} ({origin}): {reason}")]
    RuleInvalid {
        /// Where the rule comes from (policy file or `lease`).
        origin: String,
        /// Position in its list.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Setting up the watcher (inotify, PSI trigger, thread) failed.
    #[error("starting the sentinel: {op} {path}: {source}")]
    Setup {
        /// Operation.
        op: &'static str,
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}
