//! Capabilities: empty every set of the calling thread, then prove it from `/proc`.
//!
//! Order matters: the bounding set is emptied first because PR_CAPBSET_DROP needs
//! CAP_SETPCAP in the effective set, which the final `capset` removes. Ambient comes next
//! (it may only hold capabilities that are also permitted and inheritable, so it must not
//! outlive them), then `capset` empties inheritable, permitted and effective at once.
//! Capability sets are per thread: the sandbox init is single-threaded, and tests use a
//! spawned thread.

use std::path::{Path, PathBuf};

use crate::sys::proc_ctl;

/// Where the kernel publishes the highest capability number.
pub const CAP_LAST_CAP_PATH: &str = "/proc/sys/kernel/cap_last_cap";
/// The calling thread's status file (capability sets are per thread, so not /proc/self).
pub const THREAD_STATUS_PATH: &str = "/proc/thread-self/status";

/// The capability fields of a status file, in the order they are checked.
pub const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Why dropping or verifying capabilities failed.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// Reading a /proc file failed.
    #[error("capabilities: reading {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// cap_last_cap does not hold a number in range.
    #[error("capabilities: {path:?} holds {text:?}, not a capability number below 64")]
    BadLastCap {
        /// The file.
        path: PathBuf,
        /// Its contents.
        text: String,
    },
    /// PR_CAPBSET_DROP failed.
    #[error("capabilities: dropping capability {cap} from the bounding set: {source}")]
    BoundingDrop {
        /// Capability number.
        cap: u32,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// PR_CAP_AMBIENT_CLEAR_ALL failed.
    #[error("capabilities: clearing the ambient set: {source}")]
    AmbientClear {
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// capset failed.
    #[error("capabilities: capset to empty sets: {source}")]
    Capset {
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// A status field is missing or not hexadecimal.
    #[error("capabilities: {path:?} has no valid {field} line")]
    StatusField {
        /// The status file.
        path: PathBuf,
        /// The field name.
        field: &'static str,
    },
    /// PR_SET_NO_NEW_PRIVS or PR_GET_NO_NEW_PRIVS failed.
    #[error("no_new_privs: {operation}: {source}")]
    NoNewPrivs {
        /// Which prctl.
        operation: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// PR_GET_NO_NEW_PRIVS reads 0 after setting it.
    #[error("no_new_privs: still unset after PR_SET_NO_NEW_PRIVS")]
    NoNewPrivsNotSet,
    /// A set is not empty after the drop.
    #[error("capabilities: {field} is {value:#018x} after the drop, not 0")]
    NotEmpty {
        /// The field name.
        field: &'static str,
        /// The mask found.
        value: u64,
    },
}

/// The five capability masks of a status file, as (field, mask).
pub fn parse_cap_status(text: &str, path: &Path) -> Result<[(&'static str, u64); 5], CapsError> {
    let mut out = [("", 0u64); 5];
    for (slot, field) in out.iter_mut().zip(CAP_FIELDS) {
        let value = text
            .lines()
            .find_map(|line| {
                let (key, rest) = line.split_once(':')?;
                (key == field).then(|| u64::from_str_radix(rest.trim(), 16).ok())?
            })
            .ok_or_else(|| CapsError::StatusField {
                path: path.to_path_buf(),
                field,
            })?;
        *slot = (field, value);
    }
    Ok(out)
}

/// Checks that every capability mask of a status text is zero.
pub fn check_all_empty(text: &str, path: &Path) -> Result<(), CapsError> {
    for (field, value) in parse_cap_status(text, path)? {
        if value != 0 {
            return Err(CapsError::NotEmpty { field, value });
        }
    }
    Ok(())
}

/// Parses `cap_last_cap` (e.g. "40\n").
pub fn parse_last_cap(text: &str, path: &Path) -> Result<u32, CapsError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&n| n < 64)
        .ok_or_else(|| CapsError::BadLastCap {
            path: path.to_path_buf(),
            text: text.to_owned(),
        })
}

fn read(path: &Path) -> Result<String, CapsError> {
    std::fs::read_to_string(path).map_err(|source| CapsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Empties the bounding, ambient, inheritable, permitted and effective sets of the calling
/// thread, then verifies all five are zero in `status_path`. `cap_last_cap_path` and
/// `status_path` are parameters so tests can point them elsewhere; production uses
/// [`drop_all_capabilities`].
pub fn drop_all_capabilities_with(
    cap_last_cap_path: &Path,
    status_path: &Path,
) -> Result<(), CapsError> {
    let last = parse_last_cap(&read(cap_last_cap_path)?, cap_last_cap_path)?;
    // Bounding set first: dropping needs CAP_SETPCAP, which capset below removes.
    for cap in 0..=last {
        match proc_ctl::capbset_drop(cap) {
            Ok(()) => {}
            // Already out of the set and we lack CAP_SETPCAP: nothing to drop.
            Err(_) if proc_ctl::capbset_read(cap).is_ok_and(|present| !present) => {}
            Err(source) => return Err(CapsError::BoundingDrop { cap, source }),
        }
    }
    // Ambient before the others: it can only hold what is also permitted and inheritable.
    proc_ctl::cap_ambient_clear_all().map_err(|source| CapsError::AmbientClear { source })?;
    proc_ctl::capset_clear_all().map_err(|source| CapsError::Capset { source })?;
    // Trust the kernel's account, not our calls: every mask must read zero.
    check_all_empty(&read(status_path)?, status_path)
}

/// [`drop_all_capabilities_with`] on the real `/proc` files of the calling thread.
pub fn drop_all_capabilities() -> Result<(), CapsError> {
    drop_all_capabilities_with(Path::new(CAP_LAST_CAP_PATH), Path::new(THREAD_STATUS_PATH))
}

/// Sets no_new_privs on the calling thread (inherited by everything it forks and execs: no
/// setuid bit or file capability grants privileges from then on) and reads it back.
pub fn set_no_new_privs() -> Result<(), CapsError> {
    proc_ctl::set_no_new_privs().map_err(|source| CapsError::NoNewPrivs {
        operation: "PR_SET_NO_NEW_PRIVS",
        source,
    })?;
    let set = proc_ctl::no_new_privs().map_err(|source| CapsError::NoNewPrivs {
        operation: "PR_GET_NO_NEW_PRIVS",
        source,
    })?;
    if set {
        Ok(())
    } else {
        Err(CapsError::NoNewPrivsNotSet)
    }
}

/// The report line once [`set_no_new_privs`] succeeded.
pub const NO_NEW_PRIVS_STATUS_LINE: &str = "no_new_privs: set (verified)";

/// The report line once [`drop_all_capabilities`] succeeded.
pub const STATUS_LINE: &str = "capabilities: all sets empty (verified in /proc)";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ROOT_STATUS: &str = "Name:\tcargo\nUmask:\t0022\nCapInh:\t0000000000000000\n\
        CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";
    const EMPTY_STATUS: &str = "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn status_parser_table() {
        let p = Path::new("/fixture/status");
        let parsed = parse_cap_status(ROOT_STATUS, p).unwrap();
        assert_eq!(parsed[0], ("CapInh", 0));
        assert_eq!(parsed[1], ("CapPrm", 0x1ff_ffff_ffff));
        assert_eq!(parsed[3], ("CapBnd", 0x1ff_ffff_ffff));
        assert!(check_all_empty(EMPTY_STATUS, p).is_ok());
        // The first non-empty set is named.
        let err = check_all_empty(ROOT_STATUS, p).unwrap_err();
        assert!(
            matches!(
                err,
                CapsError::NotEmpty {
                    field: "CapPrm",
                    ..
                }
            ),
            "{err}"
        );
        // Missing or garbled fields are errors, never "empty".
        let missing = EMPTY_STATUS.replace("CapAmb:\t0000000000000000\n", "");
        assert!(matches!(
            check_all_empty(&missing, p),
            Err(CapsError::StatusField {
                field: "CapAmb",
                ..
            })
        ));
        let garbled = EMPTY_STATUS.replace("CapEff:\t0000000000000000", "CapEff:\tzz");
        assert!(matches!(
            check_all_empty(&garbled, p),
            Err(CapsError::StatusField {
                field: "CapEff",
                ..
            })
        ));
        // A field name that merely starts like another does not count.
        let lookalike = EMPTY_STATUS.replace("CapInh:", "CapInhX:");
        assert!(check_all_empty(&lookalike, p).is_err());
    }

    #[test]
    fn last_cap_parser_table() {
        let p = Path::new("/fixture/cap_last_cap");
        for (text, want) in [("40\n", Some(40)), ("0", Some(0)), ("63\n", Some(63))] {
            assert_eq!(parse_last_cap(text, p).ok(), want, "{text:?}");
        }
        for text in ["", "64", "-1", "forty", "40 41"] {
            assert!(parse_last_cap(text, p).is_err(), "{text:?}");
        }
    }
}
