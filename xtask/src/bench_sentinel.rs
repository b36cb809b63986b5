//! `cargo xtask bench`, sentinel part (SPEC §4.4): how long a kill rule takes to end a run
//! once the breach is visible in the cgroup's files, and what an idle sentinel costs the
//! runner. Both go through the real `calyx-run` with a lease made by the real `calyx` CLI;
//! the run cgroups are created and removed by calyx-run alone, this code only reads them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Result, fail, run};

/// Halt runs. With 20 samples the p99 is the largest one; it is reported as such.
const HALT_RUNS: usize = 20;
/// The rule under test: memory working set above this percentage of the limit, at once.
const HALT_PERCENT: f64 = 50.0;
const HALT_LIMIT: u64 = 64 << 20;
/// A ramp of 1 MiB of touched memory every 5 ms: the threshold (32 MiB) is crossed about
/// 0.2 s after start, well before the 64 MiB limit could bring in the OOM killer.
const HOG: &str =
    "import time\nl = []\nwhile True:\n    l.append(b'x' * (1 << 20))\n    time.sleep(0.005)\n";
/// Pause between two reads of the cgroup's files: the resolution of both instants.
const POLL: Duration = Duration::from_micros(250);
/// Length of the idle run, and the part of it that counts as idle (start-up and teardown
/// excluded).
const IDLE_SECS: u64 = 60;
const IDLE_FROM: Duration = Duration::from_secs(1);
const IDLE_TO: Duration = Duration::from_secs(58);

/// Halt latency over [`HALT_RUNS`] runs, in milliseconds.
#[derive(Debug)]
pub struct HaltLatency {
    /// dead − crossed, one per run that the rule halted.
    pub latency_ms: Vec<f64>,
    /// Largest gap between the last read below the threshold and the read above it: how
    /// much earlier the true crossing may have been.
    pub max_cross_gap_ms: f64,
    /// Runs that ended otherwise (OOM killer, error); they are not in `latency_ms`.
    pub not_halted: usize,
    /// Runs halted by the rule whose crossing no read of xtask saw (the run was gone before a
    /// read above the threshold, e.g. xtask not scheduled for those milliseconds on a busy
    /// host): no latency to report for them, so they are counted, not measured.
    pub unobserved: usize,
}

/// CPU time of the runner (calyx-run's own threads) during an idle `sleep`.
#[derive(Debug)]
pub struct IdleCost {
    /// Window measured: from [`IDLE_FROM`] to the last sample before [`IDLE_TO`].
    pub window: Duration,
    /// Runner CPU time in that window (schedstat, ns precision).
    pub cpu: Duration,
    /// The same CPU time by thread name (the sentinel is `calyx:sentinel`).
    pub by_thread: Vec<(String, Duration)>,
    /// Whole life of calyx-run until its last sample: utime+stime (clock ticks) and wall.
    pub life_cpu: Duration,
    pub life_wall: Duration,
}

impl IdleCost {
    fn percent(cpu: Duration, wall: Duration) -> f64 {
        cpu.as_secs_f64() * 100.0 / wall.as_secs_f64().max(1e-9)
    }
}

/// Runs a python memory ramp under a `memory_percent > 50` kill rule [`HALT_RUNS`] times and
/// times each halt from outside: this process polls the run cgroup's memory usage and its
/// process list every [`POLL`], `crossed` is the first read with the working set (usage minus
/// inactive file cache, as the rule computes it) above the threshold, `dead` the first read
/// with no process left in the cgroup (or the cgroup removed).
pub fn halt_latency(bin: &Path, dir: &Path) -> Result<HaltLatency> {
    let fx = Fixture::new(bin, &dir.join("sentinel"))?;
    let lease = fx.lease(
        "halt",
        &format!(
            "[[commands]]\npath = \"/usr/bin/python3\"\nargs = [\"-c\", \"*\"]\n\n\
             [limits]\nmemory_bytes = {HALT_LIMIT}\nswap_bytes = 0\ntimeout_secs = 30\n\n\
             [[halt]]\nmetric = \"memory_percent\"\nabove = {HALT_PERCENT:.1}\nfor_ms = 0\naction = \"kill\"\n"
        ),
    )?;
    let mut out = HaltLatency {
        latency_ms: Vec::new(),
        max_cross_gap_ms: 0.0,
        not_halted: 0,
        unobserved: 0,
    };
    for i in 0..HALT_RUNS {
        let result = fx.dir.join(format!("halt-{i}.json"));
        let mut guard = fx.spawn(&lease, &result, &["/usr/bin/python3", "-c", HOG])?;
        // On an error the guard's drop stops calyx-run.
        let observed = observe_halt(&mut guard)?;
        let status = guard.wait()?;
        let r = read_result(&result)?;
        if status == Some(137) && r["outcome"] == "halted" {
            let Some((latency, gap)) = observed else {
                eprintln!("halt run {i}: halted by the rule, but no read saw the crossing");
                out.unobserved += 1;
                continue;
            };
            out.latency_ms.push(latency.as_secs_f64() * 1e3);
            out.max_cross_gap_ms = out.max_cross_gap_ms.max(gap.as_secs_f64() * 1e3);
        } else {
            eprintln!(
                "halt run {i}: not halted by the rule (exit {status:?}, outcome {}): {}",
                r["outcome"],
                stderr_of(&result)
            );
            out.not_halted += 1;
        }
    }
    if out.latency_ms.is_empty() {
        return Err(fail("halt latency: no run was halted by the rule"));
    }
    Ok(out)
}

/// Polls the run's cgroup until its processes are gone: (dead − crossed, crossing gap), or
/// None when the run was gone before any read saw its memory above the threshold.
fn observe_halt(run: &mut RunGuard) -> Result<Option<(Duration, Duration)>> {
    let cg = run.find_cgroup()?;
    let limit = cg.limit()?;
    let threshold = (limit as f64 * HALT_PERCENT / 100.0) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_below = Instant::now();
    let mut crossed: Option<(Instant, Duration)> = None;
    loop {
        if Instant::now() > deadline {
            return Err(fail("halt latency: the run was not ended within 30 s"));
        }
        if crossed.is_none() {
            match cg.working_set_above(threshold) {
                Some(true) => {
                    let now = Instant::now();
                    crossed = Some((now, now - last_below));
                }
                Some(false) => last_below = Instant::now(),
                None => {}
            }
        }
        if cg.is_empty() {
            let dead = Instant::now();
            return Ok(crossed.map(|(at, gap)| (dead - at, gap)));
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `/bin/sleep 60` under a lease with a memory limit (so the run has a cgroup and the
/// default halt rules are watched) and samples calyx-run's threads from /proc.
pub fn idle_cost(bin: &Path, dir: &Path) -> Result<IdleCost> {
    let fx = Fixture::new(bin, &dir.join("sentinel"))?;
    let lease = fx.lease(
        "idle",
        &format!(
            "[[commands]]\npath = \"/bin/sleep\"\nargs = [\"{IDLE_SECS}\"]\n\n\
             [limits]\nmemory_bytes = {}\ntimeout_secs = {}\n",
            256 << 20,
            IDLE_SECS * 2
        ),
    )?;
    let tick = clock_ticks()?;
    let result = fx.dir.join("idle.json");
    let spawned = Instant::now();
    let mut guard = fx.spawn(&lease, &result, &["/bin/sleep", &IDLE_SECS.to_string()])?;
    let pid = guard.pid();
    guard.find_cgroup()?;
    let payload = Instant::now();
    let mut first: Option<(Instant, Threads)> = None;
    let mut last_window: Option<(Instant, Threads)> = None;
    let mut life = None;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some((ticks, state)) = proc_stat_ticks(pid) else {
            break;
        };
        if state == 'Z' {
            break;
        }
        let now = Instant::now();
        life = Some((ticks, now - spawned));
        let since = now - payload;
        if since >= IDLE_FROM && since <= IDLE_TO {
            let threads = thread_cpu_ns(pid);
            if first.is_none() {
                first = Some((now, threads));
            } else {
                last_window = Some((now, threads));
            }
        }
    }
    let status = guard.wait()?;
    let r = read_result(&result)?;
    if status != Some(0) || r["outcome"] != "exited" {
        return Err(fail(format!(
            "idle run: calyx-run exit {status:?}, outcome {}: {}",
            r["outcome"],
            stderr_of(&result)
        )));
    }
    let (Some((t0, a)), Some((t1, b)), Some((ticks, wall))) = (first, last_window, life) else {
        return Err(fail("idle run: too few samples of calyx-run"));
    };
    // Per thread, so a thread that ended in the window does not subtract.
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for (tid, (name, v)) in &b {
        let before = a.get(tid).map_or(0, |(_, ns)| *ns);
        *by_name.entry(name.clone()).or_default() += v.saturating_sub(before);
    }
    let ns = by_name.values().sum();
    let mut by_thread: Vec<(String, Duration)> = by_name
        .into_iter()
        .map(|(name, ns)| (name, Duration::from_nanos(ns)))
        .collect();
    by_thread.sort();
    Ok(IdleCost {
        window: t1 - t0,
        cpu: Duration::from_nanos(ns),
        by_thread,
        life_cpu: Duration::from_secs_f64(ticks as f64 / tick as f64),
        life_wall: wall,
    })
}

/// The markdown table and what it measures, printed and appended to `report_to`.
pub fn report(halt: &mut HaltLatency, idle: &IdleCost, report_to: &Path) -> Result<()> {
    halt.latency_ms.sort_by(f64::total_cmp);
    let n = halt.latency_ms.len();
    let at = |q: f64| {
        let i = (((n as f64) * q).ceil() as usize).clamp(1, n) - 1;
        halt.latency_ms[i]
    };
    let (median, p99) = (at(0.5), at(0.99));
    let idle_pct = IdleCost::percent(idle.cpu, idle.window);
    let life_pct = IdleCost::percent(idle.life_cpu, idle.life_wall);
    let mut t = String::from("\n| sentinel | figure | target |\n|---|---:|---:|\n");
    t.push_str(&format!(
        "| halt latency, median ({n} runs) | {median:.1} ms | |\n\
         | halt latency, p99 ({n} runs: the maximum) | {p99:.1} ms | < 50 ms |\n\
         | idle runner CPU, {:.0} s of `sleep {IDLE_SECS}` | {idle_pct:.3} % of a core | < 0.5 % |\n\
         | runner CPU, whole run to its last sample ({:.1} s) | {life_pct:.3} % of a core | |\n",
        idle.window.as_secs_f64(),
        idle.life_wall.as_secs_f64(),
    ));
    let notes = format!(
        "\nHalt latency: a python payload touches 1 MiB every 5 ms under memory {} MiB, swap 0 and \
         the lease rule `memory_percent > {HALT_PERCENT}` (for_ms 0, kill). xtask polls the run's \
         memory cgroup every {} µs: crossed = first read with usage minus inactive file cache \
         above the threshold, dead = first read with cgroup.procs empty or the cgroup gone; \
         latency = dead − crossed. The true crossing may precede the read that saw it by up to \
         {:.2} ms (largest gap between two reads at the crossing). Runs not halted by the rule: {}; \
         halted by it with no read seeing the crossing (not timed): {}.\n\
         Idle cost: `calyx-run … -- /bin/sleep {IDLE_SECS}` with a 256 MiB limit (run cgroup, \
         default halt rules, MONITORED every 1 s); CPU time of calyx-run's own threads \
         (/proc/PID/task/*/schedstat) from {} s to {} s after the payload appeared in its cgroup; \
         the last row is utime+stime of /proc/PID/stat (clock ticks) over its whole life.\n",
        HALT_LIMIT >> 20,
        POLL.as_micros(),
        halt.max_cross_gap_ms,
        halt.not_halted,
        halt.unobserved,
        IDLE_FROM.as_secs(),
        IDLE_TO.as_secs(),
    );
    let threads: Vec<String> = idle
        .by_thread
        .iter()
        .map(|(name, cpu)| format!("{name} {:.1} ms", cpu.as_secs_f64() * 1e3))
        .collect();
    let runs: Vec<String> = halt
        .latency_ms
        .iter()
        .map(|ms| format!("{ms:.1}"))
        .collect();
    let notes = format!(
        "{notes}Halt latency of every run, sorted (ms): {}.\nIdle CPU by runner thread: {}.\n",
        runs.join(", "),
        threads.join(", ")
    );
    println!("{t}{notes}");
    let mut text = fs::read_to_string(report_to).unwrap_or_default();
    text.push_str(&t);
    text.push_str(&notes);
    fs::write(report_to, text).map_err(|e| fail(format!("{}: {e}", report_to.display())))?;
    println!("sentinel table appended to {}", report_to.display());
    Ok(())
}

/// Keys, a trust policy and the state made with the real CLI, in a directory of their own.
struct Fixture {
    bin: PathBuf,
    dir: PathBuf,
}

impl Fixture {
    fn new(bin: &Path, dir: &Path) -> Result<Fixture> {
        let fx = Fixture {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
        };
        if fx.dir.join("trust.toml").exists() {
            return Ok(fx);
        }
        fs::create_dir_all(dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
        for (id, role) in [("alice", "human"), ("cp14", "agent")] {
            let key = fx.path(&format!("{id}.key"));
            run(fx.calyx().args(["key", "gen", "--id", id, "--out", &key]))?;
            let (policy, public) = (fx.path("trust.toml"), format!("{key}.pub"));
            let add = [
                "trust", "add", "--id", id, "--role", role, "--policy", &policy,
            ];
            run(fx.calyx().args(add).args(["--pub", &public]))?;
        }
        Ok(fx)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn calyx(&self) -> Command {
        let mut c = Command::new(self.bin.join("calyx"));
        c.stdout(Stdio::null());
        c
    }

    /// A lease from a TOML spec, signed by both keys.
    fn lease(&self, name: &str, spec: &str) -> Result<String> {
        let spec_path = self.dir.join(format!("{name}.toml"));
        fs::write(
            &spec_path,
            format!("subject = \"bench\"\nintent_id = \"INT-bench\"\n{spec}"),
        )
        .map_err(|e| fail(format!("{}: {e}", spec_path.display())))?;
        let lease = self.path(&format!("{name}.json"));
        run(self
            .calyx()
            .args(["lease", "issue", "--out", &lease, "--ttl", "1h"])
            .args(["--max-uses", "1000", "--from"])
            .arg(&spec_path))?;
        for id in ["alice", "cp14"] {
            let key = self.path(&format!("{id}.key"));
            run(self.calyx().args(["lease", "sign", &lease, "--key", &key]))?;
        }
        Ok(lease)
    }

    fn spawn(&self, lease: &str, result: &Path, argv: &[&str]) -> Result<RunGuard> {
        let before = calyx_cgroups(&own_memory_cgroup()?);
        // calyx-run's stderr (one "halted" line per run) is kept for a failure's message.
        let err_path = result.with_extension("err");
        let err = fs::File::create(&err_path)
            .map_err(|e| fail(format!("{}: {e}", err_path.display())))?;
        let mut c = Command::new(self.bin.join("calyx-run"));
        c.args(["--lease", lease, "--trust", &self.path("trust.toml")])
            .args(["--state-dir", &self.path("state")])
            .args(["--audit-log", &self.path("audit.jsonl")])
            .arg("--result")
            .arg(result)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = c
            .spawn()
            .map_err(|e| fail(format!("starting calyx-run: {e}")))?;
        Ok(RunGuard {
            child: Some(child),
            before,
        })
    }
}

/// A running calyx-run; stopped and reaped on drop if the benchmark bails out early.
struct RunGuard {
    child: Option<Child>,
    /// calyx cgroups that existed before it started (another run's, not ours).
    before: HashSet<PathBuf>,
}

impl RunGuard {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The run cgroup: a new `calyx-*` directory in our memory cgroup holding a descendant
    /// of our calyx-run (others may run calyx at the same time).
    fn find_cgroup(&mut self) -> Result<RunCg> {
        let parent = own_memory_cgroup()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for dir in calyx_cgroups(&parent).difference(&self.before) {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs
                    .lines()
                    .filter_map(|p| p.trim().parse().ok())
                    .any(|p| descends_from(p, self.pid()))
                {
                    return Ok(RunCg::new(dir.clone(), &parent));
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Err(fail(format!(
            "no run cgroup of calyx-run {} appeared under {}",
            self.pid(),
            parent.display()
        )))
    }

    /// Reaps calyx-run: its exit code (None when ended by a signal).
    fn wait(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let status = child
            .wait()
            .map_err(|e| fail(format!("waiting for calyx-run: {e}")))?;
        Ok(status.code())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM first so calyx-run ends its sandbox and removes its cgroup itself.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The run's memory cgroup files, v1 (hybrid host) or v2.
struct RunCg {
    dir: PathBuf,
    v2: bool,
}

impl RunCg {
    fn new(dir: PathBuf, parent: &Path) -> RunCg {
        let v2 = parent.join("cgroup.controllers").exists();
        RunCg { dir, v2 }
    }

    fn read_u64(&self, file: &str) -> Option<u64> {
        let text = fs::read_to_string(self.dir.join(file)).ok()?;
        text.trim().parse().ok()
    }

    /// The memory limit calyx-run wrote (it reads it back before the payload runs).
    fn limit(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        self.read_u64(file)
            .filter(|&l| l < 1 << 62)
            .ok_or_else(|| fail(format!("no memory limit in {}", self.dir.display())))
    }

    /// Whether usage minus inactive file cache is above `threshold`; None once unreadable.
    /// memory.stat is read only when the raw usage is above it, as the sentinel does.
    fn working_set_above(&self, threshold: u64) -> Option<bool> {
        let usage = self.read_u64(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        })?;
        if usage <= threshold {
            return Some(false);
        }
        let key = if self.v2 {
            "inactive_file"
        } else {
            "total_inactive_file"
        };
        let stat = fs::read_to_string(self.dir.join("memory.stat")).ok()?;
        let inactive = stat
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0u64);
        Some(usage.saturating_sub(inactive) > threshold)
    }

    /// No process left (or the cgroup already removed).
    fn is_empty(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
    }
}

/// This process's memory cgroup directory (v1 `memory` hierarchy, else the v2 one).
fn own_memory_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| fail(format!("/proc/self/cgroup: {e}")))?;
    let mut v2 = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctl, path) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or(""));
        let rel = path.trim_start_matches('/');
        if ctl.split(',').any(|c| c == "memory") {
            return Ok(Path::new("/sys/fs/cgroup/memory").join(rel));
        }
        if ctl.is_empty() {
            v2 = Some(Path::new("/sys/fs/cgroup").join(rel));
        }
    }
    v2.filter(|d| d.join("cgroup.controllers").exists())
        .ok_or_else(|| fail("no memory cgroup for this process in /proc/self/cgroup"))
}

fn calyx_cgroups(parent: &Path) -> HashSet<PathBuf> {
    fs::read_dir(parent)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("calyx-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is `ancestor` or below it (host pids, from /proc/PID/stat's ppid).
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
            Some(ppid) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// /proc/PID/stat fields after the command name: state is [0], ppid [1], utime [11].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime+stime (fields 14–15, all threads of the process) and the state letter.
fn proc_stat_ticks(pid: u32) -> Option<(u64, char)> {
    let f = stat_fields(pid)?;
    let state = f.first()?.chars().next()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ticks, state))
}

/// Live threads of a process by tid: (name, CPU time in ns).
type Threads = HashMap<String, (String, u64)>;

/// CPU time in ns of each live thread of `pid` (schedstat's first field), with its name.
fn thread_cpu_ns(pid: u32) -> Threads {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    rd.flatten()
        .filter_map(|t| {
            let s = fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = s.split_whitespace().next()?.parse().ok()?;
            let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let tid = t.file_name().to_string_lossy().into_owned();
            Some((tid, (comm.trim().to_owned(), ns)))
        })
        .collect()
}

/// USER_HZ, the unit of /proc/PID/stat's times.
pub(crate) fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| fail(format!("getconf CLK_TCK: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| fail(format!("getconf CLK_TCK: {e}")))
}

/// The run's JSON result; when missing, the error carries calyx-run's stderr.
fn read_result(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).map_err(|e| {
        let said = stderr_of(path);
        fail(format!("{}: {e}; calyx-run said: {said}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn stderr_of(result: &Path) -> String {
    fs::read_to_string(result.with_extension("err"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
