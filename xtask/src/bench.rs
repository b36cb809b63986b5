//! `cargo xtask bench`: verification throughput (criterion) and the start-up cost of one
//! sandboxed `/usr/bin/true` against the peers, all measured in one run on this machine.
//!
//! Start-up is the median wall time from spawn to reaped exit. The tools run interleaved,
//! round by round, so drift in the machine's load falls on all of them alike, each after a pause
//! in which the previous run's deferred kernel work finishes (`SETTLE`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Result, cargo, fail, header, repo_root, run};

const CALYX_NAME: &str = "calyx-run (default profile)";
const BASELINE_NAME: &str = "calyx-run without ledger and receipts (bench-baseline build)";

/// Rounds per tool. 300 keeps the whole start-up comparison near ten seconds while the
/// median is stable to a few microseconds.
const ROUNDS: usize = 300;
/// Unmeasured runs first, so page cache and dentry cache are warm for every tool.
const WARMUP: usize = 20;
/// Pause before every timed run, so that each starts on a settled machine: the kernel work a
/// tool leaves behind when it exits (a network namespace taken apart on a kernel worker, about
/// 0.6 ms of CPU here; RCU callbacks; a journal commit) is done before the next tool starts,
/// and no tool's time includes another's. Without it, a tool that lets that work run after its
/// exit charged it to whichever tool came next.
const SETTLE: Duration = Duration::from_millis(20);
/// Runs of each tool alone, back to back, for its CPU per run; after CPU_WARMUP of its own.
const CPU_RUNS: usize = 200;
const CPU_WARMUP: usize = 5;

pub fn bench() -> Result<()> {
    if util::is_root() {
        util::ensure_packages(&[("bwrap", "bubblewrap"), ("runc", "runc")])?;
    }
    header("build (release, and the bench-baseline build without ledger and receipts)");
    run(cargo().args(["build", "--quiet", "--release", "--bins"]))?;
    let bin = util::bin_dir(&util::target_dir(), "release")?;
    let baseline_dir = util::target_dir().join("bench-baseline");
    run(cargo()
        .args(["build", "--quiet", "--release", "--bins"])
        .args(["--features", "bench-baseline", "--target-dir"])
        .arg(&baseline_dir))?;
    let baseline = util::bin_dir(&baseline_dir, "release")?.join("calyx-run");

    header("lease verification throughput (criterion, one core)");
    run(cargo().args(["bench", "--quiet", "--bench", "verify"]))?;

    header("start-up: median wall time of one sandboxed /usr/bin/true");
    let dir = scratch()?;
    let result = startup(&bin, &baseline, &dir).and_then(|()| {
        header("sentinel: halt latency and idle cost (about 90 s)");
        let mut halt = crate::bench_sentinel::halt_latency(&bin, &dir)?;
        let idle = crate::bench_sentinel::idle_cost(&bin, &dir)?;
        let table = repo_root().join("target/bench-startup.md");
        crate::bench_sentinel::report(&mut halt, &idle, &table)
    });
    let _ = fs::remove_dir_all(&dir);
    result
}

/// A tool under test: a name and how to build its command.
struct Tool {
    name: &'static str,
    cmd: Box<dyn Fn(usize) -> Command>,
}

fn startup(bin: &Path, baseline: &Path, dir: &Path) -> Result<()> {
    let lease = make_lease(bin, dir)?;
    let mut tools: Vec<Tool> = vec![Tool {
        name: "bare /usr/bin/true",
        cmd: Box::new(|_| Command::new("/usr/bin/true")),
    }];
    let calyx_run = bin.join("calyx-run");
    let (trust, state, audit) = (
        dir.join("trust.toml"),
        dir.join("state"),
        dir.join("audit.jsonl"),
    );
    tools.push(Tool {
        name: CALYX_NAME,
        cmd: Box::new(move |_| {
            let mut c = Command::new(&calyx_run);
            c.arg("--lease").arg(&lease).arg("--trust").arg(&trust);
            c.arg("--state-dir")
                .arg(&state)
                .arg("--audit-log")
                .arg(&audit);
            c.args(["--", "/usr/bin/true"]);
            c
        }),
    });
    // The same runner built without the lease ledger and receipts: what they cost.
    fs::create_dir_all(dir.join("baseline"))
        .map_err(|e| fail(format!("mkdir {}/baseline: {e}", dir.display())))?;
    let (baseline, lease2, trust2, state2, audit2) = (
        baseline.to_owned(),
        make_lease(bin, &dir.join("baseline"))?,
        dir.join("baseline/trust.toml"),
        dir.join("baseline/state"),
        dir.join("baseline/audit.jsonl"),
    );
    tools.push(Tool {
        name: BASELINE_NAME,
        cmd: Box::new(move |_| {
            let mut c = Command::new(&baseline);
            c.arg("--lease").arg(&lease2).arg("--trust").arg(&trust2);
            c.arg("--state-dir")
                .arg(&state2)
                .arg("--audit-log")
                .arg(&audit2);
            c.args(["--", "/usr/bin/true"]);
            c
        }),
    });
    if util::have("bwrap") {
        tools.push(Tool {
            name: "bwrap --unshare-all",
            cmd: Box::new(|_| bwrap()),
        });
    }
    if util::have("unshare") {
        tools.push(Tool {
            name: "unshare -Urnpf --mount-proc",
            cmd: Box::new(|_| {
                let mut c = Command::new("unshare");
                c.args(["-Urnpf", "--mount-proc", "/usr/bin/true"]);
                c
            }),
        });
    }
    if util::have("runc") && util::is_root() {
        let bundle = runc_bundle(dir)?;
        let state = dir.join("runc-state");
        tools.push(Tool {
            name: "runc run",
            cmd: Box::new(move |i| {
                let mut c = Command::new("runc");
                c.arg("--root")
                    .arg(&state)
                    .arg("run")
                    .arg("--bundle")
                    .arg(&bundle);
                c.arg(format!("calyx-bench-{}-{i}", std::process::id()));
                c
            }),
        });
    }

    // Every tool must actually succeed before its time means anything.
    for t in &tools {
        check(&(t.cmd)(0), t.name)?;
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); tools.len()];
    // A fresh order every round: each tool follows every other equally often, so none
    // always inherits another's after-effects (deferred kernel work, cold caches).
    let mut order = Shuffle::from_clock();
    println!("round order: shuffled each round (seed {:#x})", order.0);
    for round in 0..WARMUP + ROUNDS {
        for idx in order.permutation(tools.len()) {
            std::thread::sleep(SETTLE);
            let took = run_once(&tools[idx], round + 1)?;
            if round >= WARMUP {
                samples[idx].push(took);
            }
        }
    }
    // CPU: each tool alone, CPU_RUNS runs back to back after CPU_WARMUP of its own, so the
    // work a run leaves to the kernel (namespaces freed after the exit, RCU callbacks) lands
    // on the next run of the same tool; see `busy_ticks`.
    let mut busy = vec![0u64; tools.len()];
    for (idx, tool) in tools.iter().enumerate() {
        let name = |j: usize| WARMUP + ROUNDS + 1 + idx * (CPU_WARMUP + CPU_RUNS) + j;
        for j in 0..CPU_WARMUP {
            run_once(tool, name(j))?;
        }
        let busy0 = busy_ticks()?;
        for j in CPU_WARMUP..CPU_WARMUP + CPU_RUNS {
            run_once(tool, name(j))?;
        }
        busy[idx] = busy_ticks()?.saturating_sub(busy0);
    }

    let stats: Vec<(f64, f64)> = samples.iter_mut().map(|s| percentiles(s)).collect();
    let bwrap = tools.iter().position(|t| t.name.starts_with("bwrap"));
    let bwrap_median = bwrap.map(|i| stats[i].0);
    let tick_ms = 1e3 / crate::bench_sentinel::clock_ticks()? as f64;
    let cpu_ms: Vec<f64> = busy
        .iter()
        .map(|&t| t as f64 * tick_ms / CPU_RUNS as f64)
        .collect();
    let bwrap_cpu = bwrap.map(|i| cpu_ms[i]);
    let mut table = String::from(
        "| tool | median (ms) | p90 (ms) | ratio to bwrap | CPU per run (ms) | CPU ratio to bwrap |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for ((t, (median, p90)), cpu) in tools.iter().zip(&stats).zip(&cpu_ms) {
        let ratio = bwrap_median.map_or("n/a".to_owned(), |b| format!("{:.2}", median / b));
        let cpu_ratio = bwrap_cpu.map_or("n/a".to_owned(), |b| format!("{:.2}", cpu / b));
        table.push_str(&format!(
            "| {} | {median:.2} | {p90:.2} | {ratio} | {cpu:.2} | {cpu_ratio} |\n",
            t.name
        ));
    }
    let at = |name: &str| {
        tools
            .iter()
            .position(|t| t.name == name)
            .map(|i| stats[i].0)
    };
    if let (Some(full), Some(base)) = (at(CALYX_NAME), at(BASELINE_NAME)) {
        table.push_str(&format!(
            "\nledger + receipts (issue 6) add {:.2} ms to the median start-up: {full:.2} ms \
             with them, {base:.2} ms without (ratio {:.2})\n",
            full - base,
            full / base
        ));
    }
    println!("{table}");
    println!(
        "{ROUNDS} interleaved rounds after {WARMUP} warm-up rounds, each run after a {} ms \
         pause (the previous run's deferred kernel work done); {} cores",
        SETTLE.as_millis(),
        cores()
    );
    println!(
        "CPU per run: the machine's busy time on all cores (/proc/stat: user, nice, system, \
         irq, softirq, steal) over {CPU_RUNS} runs of the tool alone, back to back after \
         {CPU_WARMUP} of its own, divided by {CPU_RUNS}. It counts every process of the tool, \
         reaped or not, the kernel threads working for it (disk syncs, deferred namespace \
         teardown) and this harness's fork and wait, the floor shown by bare true; ticks are \
         sampled, so a few percent of noise. (getrusage of reaped children would miss most \
         of bwrap's: its outer process exits without waiting for the sandbox's pid 1.)"
    );
    let out = repo_root().join("target/bench-startup.md");
    let _ = fs::write(&out, &table);
    println!("table written to {}", out.display());
    Ok(())
}

/// Runs `tool` once (its `i`-th command) with null standard streams; its wall time, or an
/// error when it does not succeed.
fn run_once(tool: &Tool, i: usize) -> Result<Duration> {
    let mut cmd = (tool.cmd)(i);
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| fail(format!("{}: {e}", tool.name)))?;
    let took = t0.elapsed();
    if !status.success() {
        return Err(fail(format!(
            "{} failed during the benchmark: {status}",
            tool.name
        )));
    }
    Ok(took)
}

/// Round orders for the start-up benchmark: xorshift64* seeded from the clock (the seed is
/// printed), Fisher-Yates over the tools.
struct Shuffle(u64);

impl Shuffle {
    fn from_clock() -> Shuffle {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Shuffle(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// Busy clock ticks of the whole machine so far: the first line of /proc/stat (all cores)
/// less idle and iowait; guest time is already inside user time.
fn busy_ticks() -> Result<u64> {
    let text = fs::read_to_string("/proc/stat").map_err(|e| fail(format!("/proc/stat: {e}")))?;
    let fields: Vec<u64> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    match fields.as_slice() {
        [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] => {
            Ok(user + nice + system + irq + softirq + steal)
        }
        _ => Err(fail("/proc/stat: no aggregate cpu line with 8 fields")),
    }
}

fn check(cmd: &Command, name: &str) -> Result<()> {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    let out = c.output().map_err(|e| fail(format!("{name}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{name} does not run here ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// (median, p90) in milliseconds.
fn percentiles(s: &mut [Duration]) -> (f64, f64) {
    s.sort_unstable();
    let at = |q: f64| {
        let i = ((s.len() as f64 - 1.0) * q).round() as usize;
        s.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.9))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// bubblewrap with a view comparable to calyx's default profile: read-only /usr with the
/// merged-usr links, new /proc, minimal /dev, a tmpfs /tmp, every namespace unshared.
fn bwrap() -> Command {
    let mut c = Command::new("bwrap");
    c.args(["--unshare-all", "--die-with-parent", "--new-session"]);
    c.args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]);
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        c.args(["--symlink", target, link]);
    }
    c.args([
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--",
        "/usr/bin/true",
    ]);
    c
}

/// Keys, a trust policy and a two-key lease allowing `/usr/bin/true`, made with the real CLI.
fn make_lease(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let calyx = |args: &[&str]| {
        let mut c = Command::new(bin.join("calyx"));
        c.args(args).stdout(Stdio::null());
        c
    };
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let trust = p("trust.toml");
    for (id, role) in [("alice", "human"), ("cp14", "agent")] {
        run(&mut calyx(&[
            "key",
            "gen",
            "--out",
            &p(&format!("{id}.key")),
            "--id",
            id,
        ]))?;
        run(&mut calyx(&[
            "trust",
            "add",
            "--policy",
            &trust,
            "--pub",
            &p(&format!("{id}.key.pub")),
            "--id",
            id,
            "--role",
            role,
        ]))?;
    }
    let lease = p("lease.json");
    run(&mut calyx(&[
        "lease",
        "issue",
        "--out",
        &lease,
        "--intent",
        "INT-bench",
        "--subject",
        "bench",
        "--command",
        "/usr/bin/true",
        "--ttl",
        "1h",
        "--max-uses",
        "1000000",
    ]))?;
    for id in ["alice", "cp14"] {
        run(&mut calyx(&[
            "lease",
            "sign",
            &lease,
            "--key",
            &p(&format!("{id}.key")),
        ]))?;
    }
    Ok(PathBuf::from(lease))
}

/// A minimal OCI bundle: an empty root with /usr bound read-only and the merged-usr links.
/// Its cgroup path is relative, so runc creates it under this process's own cgroup.
fn runc_bundle(dir: &Path) -> Result<PathBuf> {
    let bundle = dir.join("runc-bundle");
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("usr")).map_err(|e| fail(format!("runc rootfs: {e}")))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, rootfs.join(link))
            .map_err(|e| fail(format!("runc rootfs link {link}: {e}")))?;
    }
    run(Command::new("runc").current_dir(&bundle).arg("spec"))?;
    let path = bundle.join("config.json");
    let text = fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("runc spec: {e}")))?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/usr/bin/true"]);
    spec["root"]["readonly"] = true.into();
    spec["linux"]["cgroupsPath"] = format!("calyx-bench-runc-{}", std::process::id()).into();
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro", "nosuid", "nodev"]
        }));
    }
    fs::write(&path, spec.to_string()).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(bundle)
}

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("calyx-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
    Ok(dir)
}
