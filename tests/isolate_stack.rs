//! The whole per-process stack in the order the sandbox init uses — capabilities, Landlock,
//! no_new_privs, seccomp — applied on a spawned thread, then real programs (/bin/sh,
//! coreutils, /usr/bin/python3) run under it: the profiles' syscall sets and views must be
//! enough for them, and the denials must still hold. rlimits are process-wide and are covered
//! by isolate_rlimit.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use calyx::isolate::caps::{drop_all_capabilities, set_no_new_privs};
use calyx::isolate::landlock::{LandlockPlan, apply_landlock_on_current_thread};
use calyx::isolate::seccomp::{apply_seccomp_on_current_thread, build_program};
use calyx::lease::model::{Network, PathGrants};
use calyx::profile::{Profile, builtin_names};

/// Applies the stack of `profile` with a write grant on `work`, then runs each command.
fn run_confined(profile: &str, work: &Path, commands: Vec<Vec<String>>) -> Vec<Output> {
    let profile = Profile::builtin(profile).unwrap();
    let view = profile.resolve_view(Path::new("/")).unwrap();
    let grants = PathGrants {
        write: vec![work.to_path_buf()],
        ..PathGrants::default()
    };
    let plan = LandlockPlan::for_run(&view, &grants, Network::None, profile.landlock_min_abi);
    let seccomp = build_program(&profile, Network::None).unwrap();
    std::thread::spawn(move || {
        drop_all_capabilities().unwrap();
        apply_landlock_on_current_thread(&plan).unwrap();
        set_no_new_privs().unwrap();
        apply_seccomp_on_current_thread(&seccomp).unwrap();
        commands
            .into_iter()
            .map(|argv| {
                Command::new(&argv[0])
                    .args(&argv[1..])
                    .env_clear()
                    .output()
                    .unwrap()
            })
            .collect()
    })
    .join()
    .unwrap()
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shell_coreutils_and_python_run_under_every_profile() {
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "this host must have /usr/bin/python3"
    );
    for name in builtin_names() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path().display().to_string();
        let coreutils = format!(
            "set -e; cd {w}; echo hello | tr a-z A-Z > up; cat up; mkdir -p d/e; cp up d/e/copy; \
             mv d/e/copy d/moved; ls d | sort; wc -c < d/moved; head -c 3 /dev/urandom | od >/dev/null; \
             date -u +%Y >/dev/null; sleep 0.01; seq 3 | sort -r | tr '\\n' ' '; rm -r d; echo done"
        );
        let python = vec![
            "/usr/bin/python3".to_owned(),
            "-c".to_owned(),
            format!(
                "import json, os, subprocess, tempfile, hashlib\n\
                 p = os.path.join('{w}', 'x.json')\n\
                 open(p, 'w').write(json.dumps({{'a': 1}}))\n\
                 r = subprocess.run(['/bin/echo', 'child'], capture_output=True, text=True)\n\
                 print(json.load(open(p))['a'], r.stdout.strip(), hashlib.sha256(b'').hexdigest()[:8])"
            ),
        ];
        let out = run_confined(name, work.path(), vec![sh(&coreutils), python]);
        assert!(
            out[0].status.success(),
            "{name} coreutils: {}",
            text(&out[0])
        );
        assert_eq!(
            String::from_utf8_lossy(&out[0].stdout),
            "HELLO\ne\nmoved\n6\n3 2 1 done\n",
            "{name}: {}",
            text(&out[0])
        );
        assert!(out[1].status.success(), "{name} python: {}", text(&out[1]));
        assert_eq!(
            String::from_utf8_lossy(&out[1].stdout),
            "1 child e3b0c442\n",
            "{name}"
        );
    }
}

#[test]
fn denials_hold_for_programs_under_the_stack() {
    let work = tempfile::tempdir().unwrap();
    let secret = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    std::fs::write(secret.path(), "host secret").unwrap();
    let py = |code: &str| {
        vec![
            "/usr/bin/python3".to_owned(),
            "-c".to_owned(),
            code.to_owned(),
        ]
    };
    let out = run_confined(
        "default",
        work.path(),
        vec![
            sh(&format!("cat {} 2>&1; echo rc=$?", secret.path().display())),
            sh("echo x > /usr/calyx-probe 2>&1; echo rc=$?"),
            py(
                "import socket\ntry:\n socket.socket(socket.AF_INET)\nexcept OSError as e: print(e.errno)",
            ),
            py("import ctypes\nc = ctypes.CDLL(None, use_errno=True)\n\
                print(c.unshare(0x10000000), ctypes.get_errno())"),
        ],
    );
    let o: Vec<String> = out
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert!(
        o[0].contains("Permission denied") && o[0].ends_with("rc=1\n"),
        "{}",
        text(&out[0])
    );
    assert!(
        o[1].ends_with("rc=2\n") || o[1].contains("denied"),
        "{}",
        text(&out[1])
    );
    assert_eq!(o[2], format!("{}\n", libc::EPERM), "{}", text(&out[2]));
    assert_eq!(o[3], format!("-1 {}\n", libc::EPERM), "{}", text(&out[3]));
}
