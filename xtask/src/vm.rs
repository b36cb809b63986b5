//! `cargo xtask vm-test`: the privileged test tier inside real Debian kernels under qemu.
//!
//! This host's cgroups are hybrid and its kernel is new, so two things cannot be tested on it:
//! the pure cgroup v2 path most users have, and Landlock degradation on an older kernel. This
//! task boots each kernel series in [`kernel::SERIES`] with a pure cgroup2 hierarchy, runs the
//! test binaries listed in [`VM_TESTS`] inside as root (they drop to `nobody` themselves where
//! they need to), and fails on any nonzero result, a missing or repeated result marker, a
//! kernel panic, an unfinished run, or the time limit.
//!
//! Steps: host packages → kernels (cached under `target/vm/kernels`) → `cargo test --no-run`
//! → initramfs (`target/vm/initramfs.cpio`) → KVM probe → one boot per kernel, console in
//! `target/vm/console-<series>.log`.

mod boot;
mod initramfs;
mod kernel;
mod markers;
mod targets;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Result, fail, header};
use boot::Accel;

/// Test targets of the `calyx` package run in the VM, in this order: `lib` (the library's unit
/// tests), an integration test's name, or a prefix ending in `*`. Each must match a target.
/// The environment check comes first, so a wrong VM fails before anything else is believed.
/// The pure-logic suites (`lease_*`, `cli_calyx`) stay on the host: emulation makes them slow
/// and a kernel cannot change their answer.
pub const VM_TESTS: &[&str] = &[
    "vm_env",
    "lib",
    "isolate_*",
    "runner_*",
    "run_bad_input",
    "cgroup_*",
    "escape",
    "doctor",
];

/// Tests of a VM binary that stay on the host, as libtest `--skip` filters (substrings of the
/// test path). Only pure computations belong here: a kernel cannot change their answer, and
/// under emulation they cost more than every kernel-facing test of their binary together.
/// `isolate::seccomp::tests` compiles and interprets the BPF programs in user space (20 s and
/// 17 s of the library's 21 s in the guest); loading filters into the kernel is tested by
/// `isolate_seccomp`, the runner suites and the escape suite, which do run here.
pub const VM_SKIPS: &[(&str, &str)] = &[("lib", "isolate::seccomp::tests::")];

const PACKAGE: &str = "calyx";

/// The whole tier should take less than this on a 2-core machine under emulation; going over
/// is reported, not failed, since slowness is not a wrong result.
const BUDGET: Duration = Duration::from_secs(600);

/// Host files the tier needs and the Debian package that provides each.
const HOST_FILES: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/bin/busybox", "busybox-static"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/bin/objcopy", "binutils"),
    ("/usr/bin/python3", "python3"),
    ("/usr/bin/setpriv", "util-linux"),
    ("/usr/bin/unshare", "util-linux"),
    ("/usr/bin/dash", "dash"),
    ("/usr/bin/dpkg", "dpkg"),
];

const USAGE: &str = "usage: cargo xtask vm-test [--kernel 6.12|6.1|all] [--keep]
                       [--accel auto|tcg|kvm] [--timeout SECS] [--test-timeout SECS]
                       [--threads N] [--memory MIB] [--only SELECTOR,...]
                       [--report-time]

Boots Debian cloud kernels under qemu with a pure cgroup v2 hierarchy and runs the VM test
list inside as root. --keep leaves the initramfs staging tree in target/vm/root. --only runs
a subset of the list (for working on one suite; `vm_env` always runs first), and
--report-time prints each test's duration (libtest's unstable --report-time).";

/// The guest's list: one line per binary, `NAME PATH [SKIP]` (see `xtask/vm/init`).
fn test_list(chosen: &[targets::TestBinary]) -> String {
    chosen
        .iter()
        .map(|t| {
            let skip = VM_SKIPS
                .iter()
                .find(|(name, _)| *name == t.name)
                .map(|(_, filter)| format!(" {filter}"))
                .unwrap_or_default();
            format!("{} {}{skip}\n", t.name, t.path.display())
        })
        .collect()
}

/// Options of one run; the defaults are what `cargo xtask ci` uses.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    kernels: Vec<kernel::Series>,
    keep: bool,
    accel: AccelChoice,
    /// Limit for one boot, from qemu start to power-off.
    boot_limit: Duration,
    /// Limit for one test binary inside the guest.
    test_limit: Duration,
    threads: u32,
    memory: u32,
    /// Selectors replacing [`VM_TESTS`] (after `vm_env`), when given.
    only: Option<Vec<String>>,
    report_time: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccelChoice {
    Auto,
    Force(Accel),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernels: kernel::SERIES.to_vec(),
            keep: false,
            accel: AccelChoice::Auto,
            // Generous enough for the full privileged list under emulation (a boot is slower
            // than the budget below, not hung); the per-binary limit catches hangs early.
            boot_limit: Duration::from_secs(1200),
            test_limit: Duration::from_secs(600),
            threads: 2,
            memory: 2048,
            only: None,
            report_time: false,
        }
    }
}

/// `cargo xtask vm-test [options]`.
pub fn vm_test(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    run(&parse_options(args)?)
}

/// The VM tier as `cargo xtask ci` runs it: every kernel series, default limits. An error
/// means the tier failed or could not run; with CI=true both must fail the build.
pub fn vm_tier() -> Result<()> {
    run(&Options::default())
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| fail(format!("{flag} needs a value\n{USAGE}")))
        };
        match arg.as_str() {
            "--keep" => o.keep = true,
            "--kernel" => {
                let v = value("--kernel")?;
                o.kernels =
                    match v.as_str() {
                        "all" => kernel::SERIES.to_vec(),
                        name => vec![kernel::series_named(name).ok_or_else(|| {
                            fail(format!("unknown kernel series {name:?}\n{USAGE}"))
                        })?],
                    };
            }
            "--accel" => {
                o.accel = match value("--accel")?.as_str() {
                    "auto" => AccelChoice::Auto,
                    "tcg" => AccelChoice::Force(Accel::Tcg),
                    "kvm" => AccelChoice::Force(Accel::Kvm),
                    other => return Err(fail(format!("unknown --accel {other:?}\n{USAGE}"))),
                }
            }
            "--timeout" => o.boot_limit = Duration::from_secs(number(&value("--timeout")?)?),
            "--test-timeout" => {
                o.test_limit = Duration::from_secs(number(&value("--test-timeout")?)?)
            }
            "--threads" => o.threads = small_number(&value("--threads")?)?,
            "--memory" => o.memory = small_number(&value("--memory")?)?,
            "--only" => {
                let list: Vec<String> = value("--only")?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if list.is_empty() {
                    return Err(fail(format!("--only needs at least one selector\n{USAGE}")));
                }
                o.only = Some(list);
            }
            "--report-time" => o.report_time = true,
            other => return Err(fail(format!("unknown argument {other:?}\n{USAGE}"))),
        }
    }
    Ok(o)
}

fn number(s: &str) -> Result<u64> {
    s.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| fail(format!("expected a positive number, got {s:?}")))
}

fn small_number(s: &str) -> Result<u32> {
    u32::try_from(number(s)?).map_err(|_| fail(format!("{s} is too large")))
}

fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let work = vm_dir();
    mkdir(&work)?;

    header("vm: host packages");
    ensure_host_files()?;

    header("vm: kernels");
    let mut kernels = Vec::new();
    for series in &opts.kernels {
        kernels.push(kernel::fetch(*series, &work.join("kernels"))?);
    }

    header("vm: test binaries");
    let build = build_tests()?;
    let selectors: Vec<&str> = match &opts.only {
        // The environment check stays first: a subset run on the wrong VM proves nothing.
        Some(only) => std::iter::once("vm_env")
            .chain(only.iter().map(String::as_str).filter(|s| *s != "vm_env"))
            .collect(),
        None => VM_TESTS.to_vec(),
    };
    let chosen = targets::select(&selectors, &build.tests)?;
    for t in &chosen {
        println!("vm: runs {} ({})", t.name, t.path.display());
    }
    let left_out: Vec<&str> = build
        .tests
        .iter()
        .filter(|t| !chosen.contains(t))
        .map(|t| t.name.as_str())
        .collect();
    if !left_out.is_empty() {
        println!("vm: not in the VM list: {}", left_out.join(", "));
    }

    header("vm: initramfs");
    let t = Instant::now();
    let initrd = work.join("initramfs.cpio");
    let staging = work.join("root");
    let repo = util::repo_root();
    let init = repo.join("xtask/vm/init");
    let contents = initramfs::Contents {
        init: &init,
        repo: &repo,
        executables: build
            .bins
            .iter()
            .chain(&chosen)
            .map(|b| b.path.as_path())
            .collect(),
        test_list: test_list(&chosen),
    };
    initramfs::build(&staging, &initrd, &contents)?;
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    println!(
        "vm: {} ({} MiB) in {:.1}s",
        initrd.display(),
        size >> 20,
        t.elapsed().as_secs_f64()
    );

    header("vm: accelerator");
    let accel = choose_accel(opts.accel, &kernels, &initrd, &work)?;

    let names: Vec<String> = chosen.iter().map(|t| t.name.clone()).collect();
    // Each emulated machine runs its vCPUs on one host thread (see boot.rs), so the kernels
    // boot side by side, one per host core; their console lines carry the series as a prefix.
    for k in &kernels {
        header(&format!("vm: boot {} ({})", k.series.name, k.package));
    }
    let results: Vec<Result<(String, bool)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|k| {
                let (initrd, work, names) = (&initrd, &work, &names);
                scope.spawn(move || boot_one(k, opts, accel, initrd, work, names))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail("a VM boot thread panicked")))
            })
            .collect()
    });
    let mut summary = Vec::new();
    let mut failed = 0;
    for r in results {
        let (line, ok) = r?;
        if !ok {
            failed += 1;
        }
        summary.push(line);
    }

    header("vm: summary");
    for line in &summary {
        println!("{line}");
    }
    let total = started.elapsed();
    let over = if total > BUDGET {
        format!(", OVER the {}s budget", BUDGET.as_secs())
    } else {
        String::new()
    };
    println!("  total {:.0}s ({accel:?}{over})", total.as_secs_f64());
    if failed > 0 {
        return Err(fail(format!(
            "{failed} of {} kernel(s) failed the VM tier",
            kernels.len()
        )));
    }
    Ok(())
}

/// `target/vm` (or under CARGO_TARGET_DIR).
fn vm_dir() -> PathBuf {
    util::target_dir().join("vm")
}

/// Installs what is missing when root; otherwise names the exact apt-get line.
fn ensure_host_files() -> Result<()> {
    let mut missing: Vec<&str> = HOST_FILES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        println!("vm: qemu, busybox, cpio, binutils, python3, util-linux, dash present");
        return Ok(());
    }
    let line = format!("apt-get install -y {}", missing.join(" "));
    if !util::is_root() {
        return Err(fail(format!("missing packages; run as root: {line}")));
    }
    println!("vm: installing {}", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    )
}

/// Builds every test target of the package and reads cargo's JSON description of them.
fn build_tests() -> Result<targets::Build> {
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--package",
        PACKAGE,
        "--no-run",
        "--lib",
        "--bins",
        "--tests",
        "--message-format=json-render-diagnostics",
    ]);
    let shown = util::show(&cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot start `{shown}`: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("`{shown}` failed: {}", out.status)));
    }
    targets::parse_build(&String::from_utf8_lossy(&out.stdout), PACKAGE)
}

fn choose_accel(
    choice: AccelChoice,
    kernels: &[kernel::Kernel],
    initrd: &Path,
    work: &Path,
) -> Result<Accel> {
    if let AccelChoice::Force(a) = choice {
        println!("vm: {a:?} (forced)");
        return Ok(a);
    }
    let Some(k) = kernels.first() else {
        return Err(fail("no kernel selected"));
    };
    let t = Instant::now();
    let log = work.join("kvm-probe.log");
    if boot::kvm_works(&k.vmlinuz, initrd, &log, &nonce()?) {
        println!("vm: KVM works ({:.1}s probe)", t.elapsed().as_secs_f64());
        Ok(Accel::Kvm)
    } else {
        println!(
            "vm: KVM unusable here (see {}); software emulation (TCG)",
            log.display()
        );
        Ok(Accel::Tcg)
    }
}

/// A fresh per-boot secret for the result markers.
fn nonce() -> Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| fail(format!("reading /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| fail(format!("creating {}: {e}", p.display())))
}

/// Boots one kernel and judges its console: the summary line, and whether it passed.
fn boot_one(
    k: &kernel::Kernel,
    opts: &Options,
    accel: Accel,
    initrd: &Path,
    work: &Path,
    names: &[String],
) -> Result<(String, bool)> {
    let nonce = nonce()?;
    let log = work.join(format!("console-{}.log", k.series.name));
    let console = boot::run(&boot::Boot {
        label: k.series.name,
        vmlinuz: &k.vmlinuz,
        initrd,
        accel,
        memory: opts.memory,
        cmdline: format!(
            "console=ttyS0 quiet panic=-1 calyx.kernel={} calyx.nonce={nonce} \
             calyx.threads={} calyx.test_timeout={} calyx.report_time={}",
            k.series.name,
            opts.threads,
            opts.test_limit.as_secs(),
            u8::from(opts.report_time)
        ),
        limit: opts.boot_limit,
        log: &log,
        echo: true,
        stop_on: &[],
    })?;
    let mut problems: Vec<String> = markers::judge(&console.text, &nonce, names)
        .iter()
        .map(ToString::to_string)
        .collect();
    if console.timed_out {
        problems.insert(
            0,
            format!("time limit of {}s reached", opts.boot_limit.as_secs()),
        );
    }
    let codes: Vec<String> = markers::reported(&console.text, &nonce)
        .into_iter()
        .map(|(n, c)| format!("{n}={c}"))
        .collect();
    let ok = problems.is_empty();
    let verdict = if ok {
        "passed".to_string()
    } else {
        format!("FAILED: {}", problems.join("; "))
    };
    let line = format!(
        "  {:<5} {:>5.0}s  {}  [{}]  log {}",
        k.series.name,
        console.elapsed.as_secs_f64(),
        verdict,
        codes.join(" "),
        log.display()
    );
    Ok((line, ok))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        parse_options(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_guest_list_carries_skips_for_the_named_binary_only() {
        let bin = |name: &str| targets::TestBinary {
            name: name.into(),
            path: format!("/t/{name}").into(),
        };
        let list = test_list(&[bin("vm_env"), bin("lib")]);
        assert_eq!(
            list,
            "vm_env /t/vm_env\nlib /t/lib isolate::seccomp::tests::\n"
        );
        // Every skip names a binary of the list and is one word (the guest splits on spaces).
        for (name, filter) in VM_SKIPS {
            assert!(VM_TESTS.contains(name), "{name}");
            assert!(!filter.is_empty() && !filter.contains(char::is_whitespace));
        }
    }

    #[test]
    fn parses_options() {
        assert_eq!(parse(&[]).unwrap(), Options::default());
        let o = parse(&[
            "--kernel",
            "6.1",
            "--keep",
            "--accel",
            "tcg",
            "--timeout",
            "60",
        ])
        .unwrap();
        assert_eq!(o.kernels, vec![kernel::series_named("6.1").unwrap()]);
        assert!(o.keep);
        assert_eq!(o.accel, AccelChoice::Force(Accel::Tcg));
        assert_eq!(o.boot_limit, Duration::from_secs(60));
        assert_eq!(parse(&["--kernel", "all"]).unwrap().kernels.len(), 2);
        let o = parse(&["--only", "escape, runner_*", "--report-time"]).unwrap();
        assert_eq!(o.only.unwrap(), ["escape", "runner_*"]);
        assert!(o.report_time);
        for bad in [
            &["--kernel", "5.10"][..],
            &["--kernel"],
            &["--timeout", "0"],
            &["--threads", "x"],
            &["--only", " , "],
            &["--frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nonces_differ() {
        let a = nonce().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, nonce().unwrap());
    }
}
