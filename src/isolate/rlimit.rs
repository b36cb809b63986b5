//! Resource limits (`setrlimit`) for the payload.
//!
//! rlimits are process-wide and inherited across fork and exec, so the sandbox init sets them
//! on itself just before forking the payload. They run after the capability drop: without
//! CAP_SYS_RESOURCE a hard limit can only go down, so a requested value above the current hard
//! limit is lowered to it ([`decide`]) — never an error, never looser than asked. Every value is
//! read back with `getrlimit` and compared; a mismatch is an error, not a warning.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sys::proc_ctl::{self, RawResource};

/// A resource limit calyx knows how to set (names as in `prlimit(1)`, lowercase in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Address-space size in bytes (RLIMIT_AS).
    As,
    /// Core file size in bytes (RLIMIT_CORE); 0 disables core dumps.
    Core,
    /// CPU time in seconds (RLIMIT_CPU).
    Cpu,
    /// Data segment size in bytes (RLIMIT_DATA).
    Data,
    /// Largest file the process may create, in bytes (RLIMIT_FSIZE).
    Fsize,
    /// Locked memory in bytes (RLIMIT_MEMLOCK).
    Memlock,
    /// Bytes in POSIX message queues (RLIMIT_MSGQUEUE).
    Msgqueue,
    /// Ceiling of the nice value (RLIMIT_NICE).
    Nice,
    /// Open file descriptors (RLIMIT_NOFILE).
    Nofile,
    /// Processes of the real uid (RLIMIT_NPROC).
    Nproc,
    /// Real-time priority ceiling (RLIMIT_RTPRIO).
    Rtprio,
    /// Queued signals (RLIMIT_SIGPENDING).
    Sigpending,
    /// Stack size in bytes (RLIMIT_STACK).
    Stack,
}

impl Resource {
    /// The kernel's resource number.
    pub fn raw(self) -> RawResource {
        match self {
            Resource::As => libc::RLIMIT_AS,
            Resource::Core => libc::RLIMIT_CORE,
            Resource::Cpu => libc::RLIMIT_CPU,
            Resource::Data => libc::RLIMIT_DATA,
            Resource::Fsize => libc::RLIMIT_FSIZE,
            Resource::Memlock => libc::RLIMIT_MEMLOCK,
            Resource::Msgqueue => libc::RLIMIT_MSGQUEUE,
            Resource::Nice => libc::RLIMIT_NICE,
            Resource::Nofile => libc::RLIMIT_NOFILE,
            Resource::Nproc => libc::RLIMIT_NPROC,
            Resource::Rtprio => libc::RLIMIT_RTPRIO,
            Resource::Sigpending => libc::RLIMIT_SIGPENDING,
            Resource::Stack => libc::RLIMIT_STACK,
        }
    }

    /// The lowercase name used in profiles and reports.
    pub fn name(self) -> &'static str {
        match self {
            Resource::As => "as",
            Resource::Core => "core",
            Resource::Cpu => "cpu",
            Resource::Data => "data",
            Resource::Fsize => "fsize",
            Resource::Memlock => "memlock",
            Resource::Msgqueue => "msgqueue",
            Resource::Nice => "nice",
            Resource::Nofile => "nofile",
            Resource::Nproc => "nproc",
            Resource::Rtprio => "rtprio",
            Resource::Sigpending => "sigpending",
            Resource::Stack => "stack",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why applying rlimits failed.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// getrlimit failed.
    #[error("reading rlimit {resource}: {source}")]
    Get {
        /// The resource.
        resource: Resource,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// setrlimit failed.
    #[error("setting rlimit {resource} to {value}: {source}")]
    Set {
        /// The resource.
        resource: Resource,
        /// The value asked for (soft = hard).
        value: u64,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The value read back differs from the value set.
    #[error("rlimit {resource} did not take: set {expected}, read back soft {soft} hard {hard}")]
    Mismatch {
        /// The resource.
        resource: Resource,
        /// The value set (soft = hard).
        expected: u64,
        /// Soft limit read back.
        soft: u64,
        /// Hard limit read back.
        hard: u64,
    },
}

/// One limit as it is in force after [`apply_rlimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppliedRlimit {
    /// The resource.
    pub resource: Resource,
    /// The value the profile asked for.
    pub requested: u64,
    /// The value in force (soft = hard); below `requested` when the hard limit was lower.
    pub value: u64,
}

/// The limit to set for `requested` when the current hard limit is `current_hard`: never more
/// than the hard limit (it cannot be raised without CAP_SYS_RESOURCE, and a lower limit
/// already satisfies the request), soft = hard so the payload cannot raise it again.
/// `u64::MAX` is RLIM_INFINITY.
pub fn decide(requested: u64, current_hard: u64) -> u64 {
    requested.min(current_hard)
}

/// Sets every limit of `list` on the calling process (soft = hard), reads each back, and
/// returns what is in force. Process-wide: call it in the sandbox init, never in a process
/// whose limits must stay unchanged.
pub fn apply_rlimits(list: &[(Resource, u64)]) -> Result<Vec<AppliedRlimit>, RlimitError> {
    let mut applied = Vec::with_capacity(list.len());
    for &(resource, requested) in list {
        let raw = resource.raw();
        let (_, hard) =
            proc_ctl::getrlimit(raw).map_err(|source| RlimitError::Get { resource, source })?;
        let value = decide(requested, hard);
        proc_ctl::setrlimit(raw, value, value).map_err(|source| RlimitError::Set {
            resource,
            value,
            source,
        })?;
        // Read back: a limit that did not take is a refusal, not a warning.
        let (soft, hard) =
            proc_ctl::getrlimit(raw).map_err(|source| RlimitError::Get { resource, source })?;
        if soft != value || hard != value {
            return Err(RlimitError::Mismatch {
                resource,
                expected: value,
                soft,
                hard,
            });
        }
        applied.push(AppliedRlimit {
            resource,
            requested,
            value,
        });
    }
    Ok(applied)
}

/// One line for the run report, e.g. `rlimits: core=0 nofile=4096`.
pub fn status_line(applied: &[AppliedRlimit]) -> String {
    let mut line = String::from("rlimits:");
    for a in applied {
        line.push(' ');
        line.push_str(a.resource.name());
        line.push('=');
        if a.value == u64::MAX {
            line.push_str("unlimited");
        } else {
            line.push_str(&a.value.to_string());
        }
        if a.value != a.requested {
            line.push_str(&format!(" (asked {})", a.requested));
        }
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn decide_never_exceeds_the_hard_limit() {
        let table = [
            (0, u64::MAX, 0),
            (4096, u64::MAX, 4096),
            (4096, 1024, 1024),
            (4096, 4096, 4096),
            (u64::MAX, 1_000, 1_000),
            (0, 0, 0),
        ];
        for (requested, hard, want) in table {
            assert_eq!(decide(requested, hard), want, "decide({requested}, {hard})");
        }
    }

    #[test]
    fn resource_names_round_trip_through_toml() {
        #[derive(Deserialize)]
        struct T {
            r: std::collections::BTreeMap<Resource, u64>,
        }
        let t: T = toml::from_str("[r]\ncore = 0\nnofile = 64\nmsgqueue = 1\n").unwrap();
        let names: Vec<&str> = t.r.keys().map(|r| r.name()).collect();
        assert_eq!(names, ["core", "msgqueue", "nofile"]);
        assert!(toml::from_str::<T>("[r]\nbogus = 1\n").is_err());
    }

    #[test]
    fn status_line_shows_lowered_values() {
        let applied = [
            AppliedRlimit {
                resource: Resource::Core,
                requested: 0,
                value: 0,
            },
            AppliedRlimit {
                resource: Resource::Nofile,
                requested: 4096,
                value: 1024,
            },
        ];
        assert_eq!(
            status_line(&applied),
            "rlimits: core=0 nofile=1024 (asked 4096)"
        );
    }
}
