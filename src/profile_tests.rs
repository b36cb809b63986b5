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
            p.syscalls.entries().unwrap().len() > 50,
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

const MINIMAL: &str = r#"
description = "test"
layers = ["seccomp"]
[view]
paths = [{ path = "/usr", exec = true }]
[seccomp]
syscalls = "strict"
[landlock]
min_abi = 1
"#;

#[test]
fn minimal_profile_gets_defaults_and_core_zero() {
    let p = Profile::from_toml("t", MINIMAL).unwrap();
    assert_eq!(p.on_deny, DenyAction::Errno);
    assert_eq!(p.rlimits, vec![(Resource::Core, 0)]);
    assert_eq!(p.limits, Limits::default());
    assert!(p.requires(Layer::Seccomp) && !p.requires(Layer::Landlock));
}

#[test]
fn bad_profiles_are_refused_with_the_reason() {
    let table: &[(&str, &str, &str)] = &[
        (
            "unknown top-level field",
            "[extra]\nx = 1\n",
            "unknown field",
        ),
        ("core cannot be raised", "[rlimits]\ncore = 100\n", ""),
        (
            "unknown rlimit",
            "[rlimits]\nbogus = 1\n",
            "unknown variant",
        ),
        ("unknown limit", "[limits]\nfoo = 1\n", "unknown field"),
    ];
    for (what, extra, want) in table {
        let text = format!("{MINIMAL}{extra}");
        match (Profile::from_toml("t", &text), want.is_empty()) {
            (Err(e), false) => {
                assert!(e.to_string().contains(want), "{what}: {e}");
                assert_eq!(e.exit_code(), crate::exit::BAD_CONFIG, "{what}");
            }
            // core is forced to 0 whatever the file says.
            (Ok(p), true) => assert_eq!(p.rlimits[0], (Resource::Core, 0), "{what}"),
            (r, _) => panic!("{what}: unexpected {r:?}"),
        }
    }
    let replace = |from: &str, to: &str| Profile::from_toml("t", &MINIMAL.replace(from, to));
    let cases: &[(&str, Result<Profile, ProfileError>, &str)] = &[
        (
            "relative view path",
            replace("\"/usr\"", "\"usr\""),
            "must be absolute",
        ),
        (
            "dot-dot view path",
            replace("\"/usr\"", "\"/usr/../etc\""),
            "must be absolute",
        ),
        (
            "duplicate view path",
            replace("}]", "}, { path = \"/usr\" }]"),
            "listed twice",
        ),
        (
            "unknown view field",
            replace("exec = true", "exec = true, rw = true"),
            "unknown field",
        ),
        (
            "unknown layer",
            replace("\"seccomp\"]", "\"seccomp\", \"magic\"]"),
            "unknown variant",
        ),
        (
            "floor 0",
            replace("min_abi = 1", "min_abi = 0"),
            "the floor is 1",
        ),
        (
            "unknown set",
            replace("\"strict\"", "\"nope\""),
            "unknown syscall set",
        ),
        (
            "unknown deny action",
            replace("[seccomp]", "[seccomp]\non_deny = \"trap\""),
            "unknown variant",
        ),
    ];
    for (what, result, want) in cases {
        let err = result.as_ref().map(|_| ()).expect_err(what);
        assert!(err.to_string().contains(want), "{what}: {err}");
        assert_eq!(err.exit_code(), crate::exit::BAD_CONFIG, "{what}");
    }
}

#[test]
fn syscall_set_parser_table() {
    let set = SyscallSet::parse(
        "t",
        "# comment\nread write # trailing\n\nx86_64: open\naarch64: renameat2 read\nread\n",
    )
    .unwrap();
    assert_eq!(
        set.names_for(SyscallArch::X86_64).unwrap(),
        ["read", "write", "open"]
    );
    assert_eq!(
        set.names_for(SyscallArch::Aarch64).unwrap(),
        ["read", "write", "renameat2"]
    );
    let errors: &[(&str, &str)] = &[
        ("mips: read\n", "unknown architecture"),
        ("Read\n", "malformed syscall name"),
        ("read;\n", "malformed syscall name"),
        ("mount\n", "always denies"),
        ("x86_64: ptrace\n", "always denies"),
        ("io_uring_setup\n", "always denies"),
    ];
    for (text, want) in errors {
        let err = SyscallSet::parse("t", text).unwrap_err();
        assert!(err.to_string().contains(want), "{text:?}: {err}");
    }
}

/// A merged-usr tree: /usr/{bin,lib}, /bin -> usr/bin, /lib -> usr/lib, /etc/ld.so.cache,
/// /etc/localtime -> /usr/share/zoneinfo/UTC, /etc/escape -> /root (outside the view).
fn fixture_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in ["usr/bin", "usr/lib", "usr/share/zoneinfo", "etc"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("etc/ld.so.cache"), "").unwrap();
    std::fs::write(r.join("usr/share/zoneinfo/UTC"), "").unwrap();
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", r.join("etc/localtime")).unwrap();
    std::os::unix::fs::symlink("/root", r.join("etc/escape")).unwrap();
    dir
}

fn profile_with_view(paths: &str) -> Profile {
    let text = MINIMAL.replace("[{ path = \"/usr\", exec = true }]", paths);
    Profile::from_toml("t", &text).unwrap()
}

#[test]
fn resolve_view_binds_dirs_and_files_and_recreates_symlinks() {
    let root = fixture_root();
    let p = profile_with_view(
        r#"[{ path = "/usr", exec = true }, { path = "/bin", exec = true },
            { path = "/lib", exec = true }, { path = "/lib64", exec = true, optional = true },
            { path = "/etc/ld.so.cache" }, { path = "/etc/localtime", optional = true }]"#,
    );
    let view = p.resolve_view(root.path()).unwrap();
    assert_eq!(
        view,
        vec![
            ViewEntry::Bind {
                path: "/usr".into(),
                exec: true,
                dir: true
            },
            ViewEntry::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into()
            },
            ViewEntry::Symlink {
                path: "/lib".into(),
                target: "usr/lib".into()
            },
            ViewEntry::Bind {
                path: "/etc/ld.so.cache".into(),
                exec: false,
                dir: false
            },
            ViewEntry::Symlink {
                path: "/etc/localtime".into(),
                target: "/usr/share/zoneinfo/UTC".into()
            },
        ]
    );
}

#[test]
fn resolve_view_refuses_missing_paths_and_symlinks_out_of_the_view() {
    let root = fixture_root();
    let missing = profile_with_view(r#"[{ path = "/usr" }, { path = "/lib64" }]"#);
    let err = missing.resolve_view(root.path()).unwrap_err();
    assert!(
        matches!(&err, ProfileError::ViewPathMissing { path, .. } if path == Path::new("/lib64"))
    );
    assert_eq!(err.exit_code(), crate::exit::SETUP_FAILED);
    let escape = profile_with_view(r#"[{ path = "/usr" }, { path = "/etc/escape" }]"#);
    let err = escape.resolve_view(root.path()).unwrap_err();
    assert!(
        matches!(err, ProfileError::SymlinkOutsideView { .. }),
        "{err}"
    );
    // A symlink into nothing bound is refused even when the target would exist on the host.
    let lone = profile_with_view(r#"[{ path = "/bin" }]"#);
    assert!(lone.resolve_view(root.path()).is_err());
}

#[test]
fn builtin_views_resolve_on_this_host() {
    // This host is Debian with merged /usr: both profiles must resolve here.
    for name in builtin_names() {
        let view = Profile::builtin(name)
            .unwrap()
            .resolve_view(Path::new("/"))
            .unwrap();
        assert!(view.iter().any(|e| matches!(e, ViewEntry::Bind { path, exec: true, .. } if path == Path::new("/usr"))), "{name}");
    }
}

#[test]
fn resolve_link_table() {
    let table = [
        ("/bin", "usr/bin", "/usr/bin"),
        ("/lib64", "usr/lib64", "/usr/lib64"),
        (
            "/etc/localtime",
            "/usr/share/zoneinfo/UTC",
            "/usr/share/zoneinfo/UTC",
        ),
        (
            "/etc/localtime",
            "../usr/share/zoneinfo/UTC",
            "/usr/share/zoneinfo/UTC",
        ),
        ("/etc/x", "../../../root", "/root"),
        ("/etc/x", "./y", "/etc/y"),
    ];
    for (link, target, want) in table {
        assert_eq!(
            resolve_link(Path::new(link), Path::new(target)),
            PathBuf::from(want),
            "{link} -> {target}"
        );
    }
}

#[test]
fn the_builtin_json_is_the_toml_source() {
    // build.rs converts profiles/*.toml to the JSON that `builtin` parses at every run.
    for name in builtin_names() {
        assert_eq!(
            Profile::builtin(name).unwrap(),
            Profile::builtin_from_toml(name).unwrap(),
            "{name}"
        );
    }
    assert!(matches!(
        Profile::builtin_from_toml("nope"),
        Err(ProfileError::Unknown { .. })
    ));
}
