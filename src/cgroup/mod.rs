//! Per-run cgroups: find where this process may create one, create it with limits that are
//! read back, place the sandbox in it, freeze, kill and remove it.
//!
//! Written for calyx rather than taken from the cgroups-rs crate: on a hybrid host that crate
//! only sees v1 (its v2 root is fixed at `/sys/fs/cgroup`, so `/sys/fs/cgroup/unified` with
//! `cgroup.kill`, `cgroup.events` and PSI is out of reach), and its `apply` drops errors from
//! some setters, which for a sandbox would make an unapplied quota look applied.
//!
//! Every function takes the filesystem root as a `&Path` (`/` in production), so the tests
//! run the same code against fixture trees in a temp dir.
//!
//! # Modes
//!
//! - **unified**: one cgroup2 hierarchy; limits, `cgroup.kill`, `cgroup.freeze`, events, PSI.
//! - **hybrid**: v1 controllers carry the limits; where the cgroup2 tree (usually
//!   `/sys/fs/cgroup/unified`, without controllers) is writable, a v2 cgroup is created as well,
//!   for `cgroup.kill`, `cgroup.events`, `cgroup.freeze` and PSI.
//! - **legacy**: v1 only; kill is a sweep of the frozen v1 freezer cgroup, or the caller's pid.

//! # Wiring (the runner's side)
//!
//! ```text
//! let layout = Layout::discover(Path::new("/"), cgroup_parent)?;           // stage 3
//! cleanup_stale(&layout, SystemTime::now(), Duration::from_secs(10), None)?;      // last run's leftovers
//! let spec = LimitSpec::from_lease(&lease.limits, io_device)?;
//! let cg = Arc::new(RunCgroup::prepare(&layout, &CreateOptions { run_id, limits: &spec, … })?);
//! let fd = cg.cgroup_fd_for_clone_into()?;   // clone3(CLONE_INTO_CGROUP) where Some (stage 4)
//! let join = cg.v1_join()?;                  // v1 parents, inherited by the child
//! cg.make_v1()?;                             // after the clone; then Msg::Join: the child
//!                                            // writes itself in (join_v1_self)
//! cg.add_pid_v2(child_pid)?;                 // only the ENOSYS fallback; before release
//! let sentinel = sentinel::watch::start(cg.clone(), config, tx)?;          // stage 7
//! … wait …
//! let usage = sentinel.stop();                                              // stage 15
//! cg.kill(Some(child_pid))?; cg.remove()?;
//! ```

pub mod detect;
pub mod limits;
pub mod run;
pub mod stale;
pub mod v1;
pub mod v2;

use std::io;
use std::path::PathBuf;

pub use detect::{CgroupMode, Hierarchy, Layout};
pub use limits::{DevNum, IoLimit, LimitSpec};
pub use run::{CreateOptions, FreezeMethod, Gap, KillMethod, RunCgroup};
pub use stale::{StaleReport, cleanup_stale, may_hold_stale};
pub use v2::InternalProcessPolicy;

/// Remedy printed when cgroup v2 is not delegated to an unprivileged caller.
pub const DELEGATE_REMEDY: &str = "run calyx-run inside a delegated cgroup: \
`systemd-run --user --scope -p Delegate=yes calyx-run …`, or for a service add the drop-in \
`[Service]\\nDelegate=yes` (for user sessions: /etc/systemd/system/user@.service.d/delegate.conf \
with `Delegate=cpu cpuset io memory pids`, then `systemctl daemon-reload`), or pass \
--cgroup-parent naming a cgroup you own";

/// Errors of the cgroup module. Each names the operation and the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading a cgroup or proc file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// File read.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// File written.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Cause.
        source: io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Removing a cgroup directory failed (after retries for EBUSY).
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Opening a cgroup directory for `CLONE_INTO_CGROUP` failed.
    #[error("opening cgroup directory {path}: {source}")]
    Open {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A line of /proc/self/mountinfo or /proc/self/cgroup did not parse.
    #[error("malformed line in {file}: {line:?}")]
    Malformed {
        /// Which file.
        file: &'static str,
        /// The line.
        line: String,
    },
    /// No cgroup filesystem is mounted.
    #[error("no cgroup filesystem is mounted; remedy: mount cgroup2 on /sys/fs/cgroup")]
    NoCgroupFs,
    /// This process's cgroup lies outside every mount of its hierarchy.
    #[error("cgroup {cgroup} ({controllers}) is not visible under any mount of its hierarchy")]
    NotVisible {
        /// Controllers of the hierarchy ("" for v2).
        controllers: String,
        /// Path from /proc/self/cgroup.
        cgroup: String,
    },
    /// The requested parent cgroup does not exist.
    #[error("cgroup parent {path} does not exist")]
    ParentMissing {
        /// Directory.
        path: PathBuf,
    },
    /// cgroup v2 is not delegated to the caller.
    #[error(
        "cgroup v2 at {path} is not delegated to uid {uid}: {problem}; remedy: {}",
        DELEGATE_REMEDY
    )]
    NotDelegated {
        /// Parent cgroup directory.
        path: PathBuf,
        /// Caller.
        uid: u32,
        /// What is wrong.
        problem: v2::DelegationProblem,
    },
    /// A v1 hierarchy's parent cgroup is not writable by the caller.
    #[error(
        "cgroup v1 parent {path} is not writable by uid {uid}; v1 hierarchies are not delegated \
         to unprivileged users. Remedy: run calyx-run as root, or on a cgroup v2 host with \
         `systemd-run --user --scope -p Delegate=yes`, or pass --cgroup-parent naming a v1 \
         cgroup chowned to you"
    )]
    V1NotWritable {
        /// Parent directory.
        path: PathBuf,
        /// Caller.
        uid: u32,
    },
    /// A controller a limit needs is not available to the parent.
    #[error("controller {controller} is not available in {parent}; remedy: {remedy}")]
    ControllerUnavailable {
        /// Controller name.
        controller: String,
        /// Parent cgroup.
        parent: PathBuf,
        /// What to do.
        remedy: &'static str,
    },
    /// v2's no-internal-process rule forbids enabling controllers under the parent.
    #[error(
        "{parent} holds processes {pids:?}, and cgroup v2 forbids enabling controllers for the \
         children of a cgroup that holds processes; calyx never moves processes it did not \
         start. Remedy: start calyx-run in its own scope (`systemd-run --user --scope -p \
         Delegate=yes calyx-run …`) or pass --cgroup-parent naming an empty delegated cgroup"
    )]
    InternalProcess {
        /// Parent cgroup.
        parent: PathBuf,
        /// Processes found in it.
        pids: Vec<u32>,
    },
    /// The run id cannot form a cgroup name.
    #[error("run id {id:?} cannot name a cgroup: {reason}")]
    InvalidRunId {
        /// Offending id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A limit value is out of range.
    #[error("invalid {limit} limit {value}: {reason}")]
    InvalidLimit {
        /// Which limit.
        limit: &'static str,
        /// Value given.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The host cannot enforce a requested limit.
    #[error("{limit} cannot be enforced here: {reason}; remedy: {remedy}")]
    Unsupported {
        /// Which limit.
        limit: &'static str,
        /// Why.
        reason: &'static str,
        /// What to do.
        remedy: &'static str,
    },
    /// A limit was written but reading it back gave something else.
    #[error("limit not applied: wrote {written:?} to {file}, read back {read:?}")]
    LimitNotApplied {
        /// File.
        file: PathBuf,
        /// Written value.
        written: String,
        /// What the kernel reports.
        read: String,
    },
    /// The path has no block device an io limit could name.
    #[error("io limit: {path} is not backed by a block device (st_dev {major}:{minor})")]
    NoBlockDevice {
        /// Path whose device was looked up.
        path: PathBuf,
        /// st_dev major.
        major: u32,
        /// st_dev minor.
        minor: u32,
    },
    /// The cgroup did not reach the frozen state in time.
    #[error("{path} did not report frozen within {waited_ms} ms")]
    FreezeTimeout {
        /// cgroup.
        path: PathBuf,
        /// Time waited.
        waited_ms: u64,
    },
    /// No way to kill the run: no cgroup.kill, no freezer, no pid given.
    #[error("cannot kill run cgroup {name}: no cgroup.kill, no v1 freezer and no pid given")]
    NoKillMethod {
        /// Run cgroup name.
        name: String,
    },
    /// Sending SIGKILL failed.
    #[error("sending SIGKILL to pid {pid}: {source}")]
    Signal {
        /// Target.
        pid: u32,
        /// Cause.
        source: io::Error,
    },
}

/// Read a cgroup file whole, trimmed of its trailing newline.
pub(crate) fn read_file(path: &std::path::Path) -> Result<String, CgroupError> {
    crate::sys::fs::read_kernel_text(path)
        .map(|s| s.trim_end().to_owned())
        .map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Write one value to a cgroup file (cgroup files take one write per value).
pub(crate) fn write_file(path: &std::path::Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value.as_bytes()).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Parse a cgroup.procs listing.
pub(crate) fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
