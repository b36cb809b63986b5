//! Default locations of the trust policy, state directory and audit log (SPEC §7).
//!
//! Root uses the system locations; other users the XDG ones. `CALYX_TRUST`, `CALYX_STATE_DIR`
//! and `CALYX_AUDIT_LOG` override them, and command-line flags override those. The environment
//! is passed in, never read here, so the choice is a pure, tested function.

use std::path::PathBuf;

/// Where the three files live for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// Trust policy file.
    pub trust: PathBuf,
    /// State directory (ledger, artifacts, host key).
    pub state_dir: PathBuf,
    /// Audit log file.
    pub audit_log: PathBuf,
}

/// Picks the locations for a caller with effective uid `euid` and environment lookup `env`.
pub fn default_locations(euid: u32, env: &dyn Fn(&str) -> Option<String>) -> Locations {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let (config, state) = if euid == 0 {
        (PathBuf::from("/etc/calyx"), PathBuf::from("/var/lib/calyx"))
    } else {
        let home = nonempty("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let config = nonempty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"));
        let state = nonempty("XDG_STATE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local/state"));
        (config.join("calyx"), state.join("calyx"))
    };
    let state_dir = nonempty("CALYX_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or(state);
    Locations {
        trust: nonempty("CALYX_TRUST")
            .map(PathBuf::from)
            .unwrap_or_else(|| config.join("trust.toml")),
        audit_log: nonempty("CALYX_AUDIT_LOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("audit.jsonl")),
        state_dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn root_uses_system_locations() {
        let l = default_locations(0, &env_of(&[("HOME", "/root")]));
        assert_eq!(l.trust, PathBuf::from("/etc/calyx/trust.toml"));
        assert_eq!(l.state_dir, PathBuf::from("/var/lib/calyx"));
        assert_eq!(l.audit_log, PathBuf::from("/var/lib/calyx/audit.jsonl"));
    }

    #[test]
    fn user_uses_xdg_and_env_overrides() {
        let l = default_locations(1000, &env_of(&[("HOME", "/home/u")]));
        assert_eq!(l.trust, PathBuf::from("/home/u/.config/calyx/trust.toml"));
        assert_eq!(l.state_dir, PathBuf::from("/home/u/.local/state/calyx"));
        let l = default_locations(
            1000,
            &env_of(&[
                ("HOME", "/home/u"),
                ("CALYX_STATE_DIR", "/s"),
                ("CALYX_TRUST", "/t.toml"),
            ]),
        );
        assert_eq!(l.trust, PathBuf::from("/t.toml"));
        assert_eq!(l.audit_log, PathBuf::from("/s/audit.jsonl"));
    }
}
