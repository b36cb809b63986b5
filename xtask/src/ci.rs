//! `cargo xtask ci`: every check and every test tier, in the order a failure is cheapest.
//!
//! With `CI=true` a tier that cannot run on this host is a failure, not a skip: a green CI must
//! mean every layer was exercised.

use std::process::Command;

use crate::util::{self, Result, cargo, fail, header, run};

/// One tier's outcome, for the closing summary.
enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

pub fn ci() -> Result<()> {
    let strict = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut tiers: Vec<(&str, Outcome)> = Vec::new();

    header("host packages");
    // The tests run payloads with python3 and drop to `nobody` with setpriv; gcc builds
    // cargo's build scripts. Installed here so a fresh Debian machine needs nothing else.
    util::ensure_packages(&[
        ("python3", "python3"),
        ("setpriv", "util-linux"),
        ("cc", "gcc"),
    ])?;

    if let Some(dir) = target_dir_for_nobody() {
        println!(
            "xtask: the checkout is not reachable by `nobody`; building in {}",
            dir.display()
        );
        util::use_target_dir(dir);
    }

    header("format");
    tiers.push((
        "fmt",
        outcome(run(cargo().args(["fmt", "--all", "--", "--check"]))),
    ));

    header("clippy (warnings are errors)");
    tiers.push((
        "clippy",
        outcome(run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))),
    ));

    header("unit and host integration tests");
    // The host tier attacks real sandboxes as root and as `nobody`; only root can drop to
    // another user, so without root that half cannot run.
    if util::is_root() {
        tiers.push((
            "unit+host",
            outcome(run(cargo().args(["test", "--workspace", "--locked"]))),
        ));
    } else {
        tiers.push((
            "unit+host",
            Outcome::Skipped("needs root to run the unprivileged half as `nobody`".into()),
        ));
    }

    header("VM tier: pure cgroup v2 and an older kernel, under qemu");
    // Root installs qemu and fetches kernels; without root the tier cannot run at all.
    if util::is_root() {
        tiers.push(("vm", outcome(crate::vm::vm_tier())));
    } else {
        tiers.push((
            "vm",
            Outcome::Skipped("needs root to install qemu and fetch kernels".into()),
        ));
    }

    header("fuzz smoke (verify target)");
    tiers.push(("fuzz", fuzz_smoke()));

    header("summary");
    let mut bad = 0;
    for (name, o) in &tiers {
        match o {
            Outcome::Passed => println!("  {name:<10} passed"),
            Outcome::Failed(why) => {
                bad += 1;
                println!("  {name:<10} FAILED: {why}");
            }
            Outcome::Skipped(why) => {
                if strict {
                    bad += 1;
                    println!("  {name:<10} SKIPPED (a failure with CI=true): {why}");
                } else {
                    println!("  {name:<10} SKIPPED: {why}");
                }
            }
        }
    }
    if bad > 0 {
        return Err(fail(format!("{bad} tier(s) did not pass")));
    }
    Ok(())
}

/// The host tier runs the built binaries as `nobody`, so every directory above them must be
/// searchable by others. A checkout under a private home directory is not: build elsewhere.
fn target_dir_for_nobody() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        return None;
    }
    let root = util::repo_root();
    let reachable = root
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    (!reachable).then(|| std::path::PathBuf::from("/var/tmp/calyx-ci-target"))
}

fn outcome(r: Result<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e.0),
    }
}

/// Builds the fuzz target with nightly and runs it briefly: long enough to catch a parser
/// that panics on shallow input, short enough for every CI run.
fn fuzz_smoke() -> Outcome {
    let root = util::repo_root();
    if !root.join("fuzz/Cargo.toml").is_file() {
        return Outcome::Failed("fuzz/Cargo.toml is missing".into());
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        if let Err(e) = run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"])) {
            return Outcome::Failed(e.0);
        }
    }
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        return Outcome::Skipped("no nightly toolchain (rustup toolchain install nightly)".into());
    }
    // The fresh corpus starts from the committed seeds: one envelope signed by the fuzz
    // target's keys, so the run reaches payload parsing and the checks after it.
    let corpus = root.join("fuzz/corpus/verify");
    if let Err(e) = std::fs::create_dir_all(&corpus) {
        return Outcome::Failed(format!("mkdir {}: {e}", corpus.display()));
    }
    outcome(run(Command::new("cargo").current_dir(&root).args([
        "+nightly",
        "fuzz",
        "run",
        "verify",
        "fuzz/corpus/verify",
        "fuzz/seeds/verify",
        "--",
        "-max_total_time=30",
    ])))
}
