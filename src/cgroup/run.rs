//! One run's cgroup: created with its limits (each read back), the sandbox placed in it,
//! frozen, killed and removed; plus the clean-up of cgroups a killed runner left behind.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::detect::{CgroupMode, Hierarchy, Layout};
use super::limits::{self, LimitSpec, LimitWrite};
pub use super::v2::InternalProcessPolicy;
use super::v2::{self, DelegationProblem};
use super::{CgroupError, read_file, v1, write_file};
use crate::sys::cgroup_sys;

/// Prefix of every cgroup calyx creates; [`cleanup_stale`](super::cleanup_stale) only ever touches these.
pub const NAME_PREFIX: &str = "calyx-";

/// v1 controllers joined for usage and control even when no limit needs them.
const V1_MONITOR: &[&str] = &["memory", "pids", "cpuacct", "blkio", "freezer"];

/// Every v1 controller a run cgroup may be made for (monitoring, or a limit): the
/// hierarchies the stale sweep lists.
pub const V1_USED: &[&str] = &["memory", "pids", "cpu", "cpuacct", "blkio", "freezer"];

/// The v1 monitoring controllers a hybrid host's v2 companion makes redundant, with the core
/// files of the companion that stand in for them: CPU time from `cpu.stat` (kept by every
/// cgroup2 directory, whatever its controllers), freezing and killing through `cgroup.freeze`
/// and `cgroup.kill`. Each v1 hierarchy left out saves a directory made, joined and removed on
/// every run.
const COVERED_BY_COMPANION: &[(&str, &[&str])] = &[
    ("cpuacct", &["cpu.stat"]),
    ("freezer", &["cgroup.freeze", "cgroup.kill"]),
];

/// The v1 monitoring controllers still needed next to a companion that has the files for
/// which `has` says true (none of them covered without a companion).
pub fn v1_monitors(companion: Option<&dyn Fn(&str) -> bool>) -> Vec<&'static str> {
    V1_MONITOR
        .iter()
        .copied()
        .filter(|c| {
            let covered = COVERED_BY_COMPANION
                .iter()
                .find(|(name, _)| name == c)
                .zip(companion)
                .is_some_and(|((_, files), has)| files.iter().all(|f| has(f)));
            !covered
        })
        .collect()
}

/// v2 controllers enabled for usage even when no limit needs them.
const V2_MONITOR: &[&str] = &["memory", "pids"];

/// Inputs of [`RunCgroup::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions<'a> {
    /// The run id; the cgroup is named `calyx-<run id>`.
    pub run_id: &'a str,
    /// Limits to write and read back.
    pub limits: &'a LimitSpec,
    /// What to do when the v2 parent holds this process.
    pub internal: InternalProcessPolicy,
    /// Caller's effective uid and gid (from [`cgroup_sys`] in production; injected in tests).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Memory page size; limits are written in page multiples.
    pub page_size: u64,
}

/// Something the run cgroup does without, reported rather than silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// Hybrid host whose unified tree is not writable: no cgroup.kill, events or PSI.
    NoV2Companion(DelegationProblem),
    /// A controller used only for usage figures is not available.
    NoMonitor(&'static str),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::NoV2Companion(p) => write!(
                f,
                "no v2 cgroup next to v1 ({p}): no cgroup.kill, cgroup.events or PSI"
            ),
            Gap::NoMonitor(c) => write!(f, "controller {c} unavailable: its usage is not reported"),
        }
    }
}

/// Which way [`RunCgroup::kill`] killed the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// `cgroup.kill`: every process of the cgroup, atomically.
    CgroupKill,
    /// v1 freezer: froze, SIGKILLed each listed process, thawed.
    FreezerSweep {
        /// Processes signalled.
        signalled: usize,
    },
    /// SIGKILL to the pid the caller gave (pid 1 of the sandbox: its death ends the pid
    /// namespace, which kills the rest).
    Pid(u32),
}

/// Which mechanism froze or thawed the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeMethod {
    /// v2 `cgroup.freeze`.
    V2,
    /// v1 `freezer.state`.
    V1Freezer,
}

/// A created run cgroup. Remove it with [`RunCgroup::remove`] once the run is over.
#[derive(Debug)]
pub struct RunCgroup {
    name: String,
    mode: CgroupMode,
    v2: Option<PathBuf>,
    /// The run's v1 directories; between [`RunCgroup::prepare`] and [`RunCgroup::make_v1`]
    /// they are planned, not made.
    v1: Vec<Hierarchy>,
    /// The v1 limits [`RunCgroup::make_v1`] writes and reads back.
    v1_writes: Vec<LimitWrite>,
    /// True once the v1 directories exist with their limits (or none are planned).
    v1_made: AtomicBool,
    gaps: Vec<Gap>,
}

/// What a single-threaded child needs to move itself into the run's v1 cgroups once they
/// exist: each hierarchy's parent directory, opened before the clone, and the path of the
/// run's `tasks` file below it. See [`join_v1_self`].
#[derive(Debug)]
pub struct V1Join {
    parents: Vec<OwnedFd>,
    tasks: CString,
}

/// `calyx-<run id>`, refusing ids that could name another directory.
pub fn run_cgroup_name(run_id: &str) -> Result<String, CgroupError> {
    let bad = |reason| CgroupError::InvalidRunId {
        id: run_id.to_owned(),
        reason,
    };
    if run_id.is_empty() || run_id.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if run_id.starts_with('.') {
        return Err(bad(
            "must not start with a dot (no `.`, `..` or hidden names)",
        ));
    }
    if !run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(
            "only ASCII letters, digits, `-`, `_` and `.` are allowed (no `/`)",
        ));
    }
    Ok(format!("{NAME_PREFIX}{run_id}"))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(path).map_err(|source| CgroupError::Create {
        path: path.to_owned(),
        source,
    })
}

fn no_swap_accounting() -> CgroupError {
    CgroupError::Unsupported {
        limit: "swap",
        reason: "swap accounting is off (no memory.memsw.limit_in_bytes or memory.swap.max)",
        remedy: "boot with swapaccount=1, or drop the swap limit",
    }
}

/// Write each planned value into `dir_for(controller)` and read it back. A swap limit the
/// host cannot account is refused before anything is written.
fn apply_writes<'a>(
    plan: &[LimitWrite],
    dir_for: impl Fn(&'static str) -> Result<&'a Path, CgroupError>,
) -> Result<(), CgroupError> {
    for w in plan {
        let swap_file = matches!(w.file, "memory.memsw.limit_in_bytes" | "memory.swap.max");
        if swap_file && !dir_for(w.controller)?.join(w.file).exists() {
            return Err(no_swap_accounting());
        }
    }
    for w in plan {
        let file = dir_for(w.controller)?.join(w.file);
        write_file(&file, &w.value)?;
        let read = read_file(&file)?;
        if !limits::verify(&w.expect, &read) {
            return Err(CgroupError::LimitNotApplied {
                file,
                written: w.value.clone(),
                read,
            });
        }
    }
    Ok(())
}

impl RunCgroup {
    /// Create the run's cgroup under `layout` with `opts.limits` applied and verified. On
    /// error everything created so far is removed again.
    pub fn create(layout: &Layout, opts: &CreateOptions<'_>) -> Result<Self, CgroupError> {
        let run = Self::prepare(layout, opts)?;
        if let Err(e) = run.make_v1() {
            let _ = run.remove();
            return Err(e);
        }
        Ok(run)
    }

    /// Everything of [`RunCgroup::create`] but the v1 directories: the v2 cgroup (unified host)
    /// or companion (hybrid) is made with its limits, and every check that can refuse the run
    /// or make it fall back is done (controllers mounted, parents writable, swap accounting),
    /// so [`RunCgroup::make_v1`] fails only on an error of the kernel's. The runner makes the
    /// v1 directories right after the clone, while init creates its network namespace, and
    /// init moves itself in before it forks anything ([`RunCgroup::v1_join`]). On error
    /// everything created is removed.
    pub fn prepare(layout: &Layout, opts: &CreateOptions<'_>) -> Result<Self, CgroupError> {
        let name = run_cgroup_name(opts.run_id)?;
        let mut run = Self {
            name,
            mode: layout.mode,
            v2: None,
            v1: Vec::new(),
            v1_writes: Vec::new(),
            v1_made: AtomicBool::new(true),
            gaps: Vec::new(),
        };
        let result = match layout.mode {
            CgroupMode::Unified => run.create_unified(layout, opts),
            CgroupMode::Hybrid | CgroupMode::Legacy => run.plan_v1(layout, opts),
        };
        if let Err(e) = result {
            // The original error matters more than a failure to clean up after it.
            let _ = run.remove();
            return Err(e);
        }
        Ok(run)
    }

    /// True while the v1 directories of [`RunCgroup::prepare`] are still to be made.
    pub fn v1_pending(&self) -> bool {
        !self.v1_made.load(Ordering::Acquire)
    }

    /// Makes the v1 directories planned by [`RunCgroup::prepare`] and writes their limits,
    /// reading each back. Nothing to do when they exist already or none are planned. On error
    /// the caller removes the cgroup ([`RunCgroup::remove`] skips what is not there).
    pub fn make_v1(&self) -> Result<(), CgroupError> {
        if !self.v1_pending() {
            return Ok(());
        }
        for h in &self.v1 {
            mkdir(&h.dir)?;
        }
        let v1 = &self.v1;
        apply_writes(&self.v1_writes, |c| {
            v1.iter()
                .find(|h| h.has(c))
                .map(|h| h.dir.as_path())
                .ok_or(CgroupError::Unsupported {
                    limit: c,
                    reason: "its v1 controller is not mounted",
                    remedy: "mount the controller, or drop the limit",
                })
        })?;
        self.v1_made.store(true, Ordering::Release);
        Ok(())
    }

    /// For a single-threaded child to move itself into the v1 hierarchies with `0` once
    /// [`RunCgroup::make_v1`] has made them (see [`join_v1_self`]): each hierarchy's parent
    /// directory, opened now. `None` without v1 hierarchies.
    ///
    /// Why the child moves itself: moving another process (`cgroup.procs` with a pid) takes
    /// the kernel's global threadgroup lock for writing, which waits for an RCU grace period
    /// whenever no other move happened in the last few milliseconds (5–15 ms here); a thread
    /// moving itself through `tasks` needs no such lock (Linux 5.17+). The child's credentials
    /// are the runner's (the same kernel uid), so it needs no privilege.
    pub fn v1_join(&self) -> Result<Option<V1Join>, CgroupError> {
        if self.v1.is_empty() {
            return Ok(None);
        }
        let parents = self
            .v1
            .iter()
            .map(|h| {
                let parent = h.dir.parent().unwrap_or(Path::new("/"));
                File::options()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(parent)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Open {
                        path: parent.to_owned(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tasks = CString::new(format!("{}/tasks", self.name)).map_err(|_| {
            CgroupError::InvalidRunId {
                id: self.name.clone(),
                reason: "contains a NUL byte",
            }
        })?;
        Ok(Some(V1Join { parents, tasks }))
    }

    fn create_unified(
        &mut self,
        layout: &Layout,
        opts: &CreateOptions<'_>,
    ) -> Result<(), CgroupError> {
        let parent = layout.v2.as_deref().ok_or(CgroupError::NoCgroupFs)?;
        v2::check_delegation(parent, opts.uid, opts.gid)?;
        let plan = limits::plan_v2(opts.limits, opts.page_size)?;
        let state = v2::parent_state(parent)?;
        // Limits need their controllers; usage controllers are added when the parent has them.
        let mut needed: Vec<&str> = plan.iter().map(|w| w.controller).collect();
        for c in V2_MONITOR {
            if state.available.iter().any(|a| a == c) {
                needed.push(c);
            } else {
                self.gaps.push(Gap::NoMonitor(c));
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let enable = v2::plan_enable(&needed, parent, &state, std::process::id(), opts.internal)?;
        v2::apply_enable(parent, &enable)?;
        let dir = parent.join(&self.name);
        mkdir(&dir)?;
        self.v2 = Some(dir.clone());
        apply_writes(&plan, |_| Ok(dir.as_path()))
    }

    fn plan_v1(&mut self, layout: &Layout, opts: &CreateOptions<'_>) -> Result<(), CgroupError> {
        let plan = limits::plan_v1(opts.limits, opts.page_size)?;
        // Every limit's controller must exist; a missing one refuses the run.
        for w in &plan {
            let Some(h) = layout.v1_for(w.controller) else {
                return Err(CgroupError::Unsupported {
                    limit: w.controller,
                    reason: "its v1 controller is not mounted",
                    remedy: "mount the controller, or drop the limit",
                });
            };
            // Swap accounting shows in every memory cgroup, the parent included: checked here,
            // so that its absence refuses the run (or lets it fall back) before the clone.
            if w.file == "memory.memsw.limit_in_bytes" && !h.dir.join(w.file).exists() {
                return Err(no_swap_accounting());
            }
        }
        // Hybrid: the v2 companion first (cgroup.kill, cgroup.events and PSI, where we may
        // write), since what it offers decides which v1 hierarchies are still needed.
        if let Some(parent) = layout.v2.as_deref() {
            match v2::delegation_verdict(&v2::DelegationFacts::of(parent), opts.uid, opts.gid) {
                Ok(()) => {
                    let dir = parent.join(&self.name);
                    mkdir(&dir)?;
                    self.v2 = Some(dir);
                }
                Err(problem) => self.gaps.push(Gap::NoV2Companion(problem)),
            }
        }
        let companion = self.v2.as_deref();
        let has = |f: &str| companion.is_some_and(|d| d.join(f).exists());
        let monitors = v1_monitors(companion.map(|_| &has as &dyn Fn(&str) -> bool));
        let mut wanted: Vec<&'static str> = plan.iter().map(|w| w.controller).collect();
        wanted.extend(monitors);
        for c in wanted {
            let Some(h) = layout.v1_for(c) else {
                self.gaps.push(Gap::NoMonitor(c));
                continue;
            };
            // Hierarchies carrying several controllers (cpu,cpuacct) get one directory.
            if self.v1.iter().any(|mine| mine.controllers == h.controllers) {
                continue;
            }
            // Checked by ownership rather than by a failing mkdir, so the refusal names the
            // remedy (and tests can inject the caller).
            let writable =
                v2::FileFacts::of(&h.dir).is_some_and(|f| f.writable_by(opts.uid, opts.gid));
            if !writable {
                return Err(CgroupError::V1NotWritable {
                    path: h.dir.clone(),
                    uid: opts.uid,
                });
            }
            self.v1.push(Hierarchy {
                controllers: h.controllers.clone(),
                dir: h.dir.join(&self.name),
            });
        }
        self.gaps.dedup();
        self.v1_writes = plan;
        self.v1_made.store(self.v1.is_empty(), Ordering::Release);
        Ok(())
    }

    /// The cgroup name (`calyx-<run id>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host mode the cgroup was created in.
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The v2 directory: primary on unified hosts, companion on hybrid ones.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// The v1 directory carrying `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|h| h.has(controller))
            .map(|h| h.dir.as_path())
    }

    /// What this cgroup does without (to report in the run result).
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// An `O_DIRECTORY` fd of the v2 cgroup for `clone3(CLONE_INTO_CGROUP)`, so the sandbox
    /// is accounted from its first instruction. `None` when there is no v2 cgroup. On hybrid
    /// hosts the child joins the v1 hierarchies itself through [`RunCgroup::v1_join`].
    pub fn cgroup_fd_for_clone_into(&self) -> Result<Option<OwnedFd>, CgroupError> {
        let Some(dir) = &self.v2 else { return Ok(None) };
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|source| CgroupError::Open {
                path: dir.clone(),
                source,
            })?;
        Ok(Some(file.into()))
    }

    /// Move `pid` (a process the caller started) into every hierarchy of the run. Writing a
    /// pid already in place is harmless, so this also completes a CLONE_INTO_CGROUP.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        if let Some(dir) = &self.v2 {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        self.add_pid_v1(pid)
    }

    /// Move `pid` into the v2 cgroup only (when it was not cloned into it).
    pub fn add_pid_v2(&self, pid: u32) -> Result<(), CgroupError> {
        match &self.v2 {
            Some(dir) => write_file(&dir.join("cgroup.procs"), &pid.to_string()),
            None => Ok(()),
        }
    }

    /// Move `pid` into every v1 hierarchy of the run.
    pub fn add_pid_v1(&self, pid: u32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for h in &self.v1 {
            write_file(&h.dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// Processes of the run (from the v2 cgroup, else the first v1 hierarchy).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let Some(dir) = self.v2.as_ref().or(self.v1.first().map(|h| &h.dir)) else {
            return Ok(Vec::new());
        };
        Ok(super::parse_pids(&read_file(&dir.join("cgroup.procs"))?))
    }

    /// True while any process is in the run's cgroup.
    pub fn populated(&self) -> Result<bool, CgroupError> {
        match &self.v2 {
            Some(dir) => {
                Ok(events_field(&read_file(&dir.join("cgroup.events"))?, "populated") == Some(1))
            }
            None => Ok(!self.pids()?.is_empty()),
        }
    }

    /// Kill every process of the run: `cgroup.kill` where it exists, else the v1 freezer
    /// sweep, else SIGKILL to `pid` (pid 1 of the sandbox, whose death empties its pid
    /// namespace). Says which was used.
    pub fn kill(&self, pid: Option<u32>) -> Result<KillMethod, CgroupError> {
        if let Some(dir) = &self.v2 {
            let file = dir.join("cgroup.kill");
            if file.exists() {
                write_file(&file, "1")?;
                return Ok(KillMethod::CgroupKill);
            }
        }
        if let Some(dir) = self.v1_dir("freezer") {
            return Ok(KillMethod::FreezerSweep {
                signalled: v1::frozen_sweep(dir)?,
            });
        }
        let pid = pid.ok_or_else(|| CgroupError::NoKillMethod {
            name: self.name.clone(),
        })?;
        cgroup_sys::sigkill_pid(pid).map_err(|source| CgroupError::Signal { pid, source })?;
        Ok(KillMethod::Pid(pid))
    }

    /// Freeze the run and wait until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<FreezeMethod, CgroupError> {
        self.set_frozen(true)
    }

    /// Thaw a frozen run.
    pub fn thaw(&self) -> Result<FreezeMethod, CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<FreezeMethod, CgroupError> {
        if let Some(dir) = self
            .v2
            .as_deref()
            .filter(|d| d.join("cgroup.freeze").exists())
        {
            write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
            let want = u64::from(frozen);
            v1::wait_for(&dir.join("cgroup.events"), dir, |t| {
                events_field(t, "frozen") == Some(want)
            })?;
            return Ok(FreezeMethod::V2);
        }
        let dir = self.v1_dir("freezer").ok_or(CgroupError::Unsupported {
            limit: "freeze",
            reason: "no cgroup.freeze and no v1 freezer",
            remedy: "mount the v1 freezer controller or use a cgroup v2 host",
        })?;
        if frozen {
            v1::freeze(dir)?
        } else {
            v1::thaw(dir)?
        }
        Ok(FreezeMethod::V1Freezer)
    }

    /// Remove every directory of the run (they must be empty of processes). Directories
    /// already gone count as removed.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.v2.iter().chain(self.v1.iter().map(|h| &h.dir)) {
            if let Err(e) = rmdir_retry(dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A field of a flat-keyed file such as cgroup.events.
pub(crate) fn events_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// rmdir, retrying EBUSY: the last task of a killed cgroup can take a moment to be released.
pub(crate) fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let mut pause = Duration::from_millis(5);
    for attempt in 0..8 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 7 => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Moves the calling thread (the whole process, when single-threaded) into the run's v1
/// cgroups ([`RunCgroup::v1_join`]), which must exist by now. Only system calls: init calls
/// this.
pub fn join_v1_self(join: &V1Join) -> std::io::Result<()> {
    for parent in &join.parents {
        let tasks = crate::sys::fs::open_write_at(parent.as_fd(), &join.tasks)?;
        let n = crate::sys::fs::write_once(tasks.as_fd(), b"0")?;
        if n != 1 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn run_names_table() {
        assert_eq!(
            run_cgroup_name("01HXYZ-a_b.c").unwrap(),
            "calyx-01HXYZ-a_b.c"
        );
        for bad in [
            "",
            "..",
            ".",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(run_cgroup_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The stale sweep lists every v1 hierarchy a limit can be written to.
    #[test]
    fn every_v1_limit_controller_is_swept() {
        let all = LimitSpec {
            memory_max: Some(1 << 30),
            swap_max: Some(0),
            pids_max: Some(8),
            cpu: Some(0.5),
            io: Some(super::super::IoLimit {
                device: super::super::DevNum { major: 8, minor: 0 },
                bps: 4096,
            }),
            ..LimitSpec::default()
        };
        let plan = limits::plan_v1(&all, 4096).unwrap();
        assert!(plan.len() >= 5, "{plan:?}");
        for w in plan {
            assert!(V1_USED.contains(&w.controller), "{}", w.controller);
        }
        for c in V1_MONITOR {
            assert!(V1_USED.contains(c), "{c}");
        }
    }

    /// A v1 hierarchy is left out only when the companion has every file standing in for it.
    #[test]
    fn companion_files_decide_the_v1_monitors() {
        let all = ["memory", "pids", "cpuacct", "blkio", "freezer"];
        assert_eq!(v1_monitors(None), all);
        let nothing = |_: &str| false;
        assert_eq!(v1_monitors(Some(&nothing)), all);
        let everything = |_: &str| true;
        assert_eq!(v1_monitors(Some(&everything)), ["memory", "pids", "blkio"]);
        // A kernel with cgroup.freeze but no cgroup.kill (5.2 to 5.13) keeps the v1 freezer:
        // it is the only way left to kill every process of the run.
        let no_kill = |f: &str| f != "cgroup.kill";
        assert_eq!(
            v1_monitors(Some(&no_kill)),
            ["memory", "pids", "blkio", "freezer"]
        );
        let no_cpu_stat = |f: &str| f != "cpu.stat";
        assert_eq!(
            v1_monitors(Some(&no_cpu_stat)),
            ["memory", "pids", "cpuacct", "blkio"]
        );
    }

    #[test]
    fn events_fields() {
        let t = "populated 1\nfrozen 0\n";
        assert_eq!(events_field(t, "populated"), Some(1));
        assert_eq!(events_field(t, "frozen"), Some(0));
        assert_eq!(events_field("populatedx 1", "populated"), None);
    }
}
