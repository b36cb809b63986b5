//! Tests of profile loading, validation and view resolution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn every_builtin_profile_loads() {
    for name in builtin_names() {
        let p = Profile::builtin(name).unwrap();
        assert_eq!(&p.name, name);
        assert!(!p.description.is_empty());
        assert!(p.rlimits.contains(&(Resource::Core, 0)), "{name}: core = 0");
        assert!(p.landlock_min_abi >= 1);
        assert!(
            p.syscalls.entries.len() > 50,
            "{name}: suspiciously small set"
        );
    }
    assert_eq!(builtin_names().len(), BUILTIN_PROFILES.len());
}

#[test]
fn unknown_profile_is_bad_config_and_lists_known_names() {
    let err = Profile::builtin("nope").unwrap_err();
    assert_eq!(err.exit_code(), crate::exit::BAD_CONFIG);
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("default") && msg.contains("strict"),
        "{msg}"
    );
}
