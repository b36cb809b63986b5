//! cgroup v1 specifics: the freezer (freeze, thaw, and the frozen sweep that kills every
//! process of a run where `cgroup.kill` does not exist).

use std::path::Path;
use std::time::{Duration, Instant};

use super::CgroupError;
use crate::sys::cgroup_sys;

/// How long freezing may take before it is an error. Freezing waits for every task to reach
/// the refrigerator; tasks in uninterruptible sleep can delay it.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Poll `file` until it reads `want` (after trimming), or time out.
pub(crate) fn wait_for(
    file: &Path,
    cgroup: &Path,
    matches: impl Fn(&str) -> bool,
) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if matches(&super::read_file(file)?) {
            return Ok(());
        }
        if start.elapsed() >= FREEZE_TIMEOUT {
            let waited_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Err(CgroupError::FreezeTimeout {
                path: cgroup.to_owned(),
                waited_ms,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Freeze a v1 freezer cgroup and wait until the kernel reports FROZEN (it passes through
/// FREEZING while tasks are being stopped).
pub fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    super::write_file(&state, "FROZEN")?;
    wait_for(&state, dir, |s| s == "FROZEN")
}

/// Thaw a v1 freezer cgroup.
pub fn thaw(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    super::write_file(&state, "THAWED")?;
    wait_for(&state, dir, |s| s == "THAWED")
}

/// Kill every process of a v1 freezer cgroup: freeze it so nothing can fork between reading
/// the list and signalling, SIGKILL each listed process, then thaw so the signals are
/// delivered. Returns how many processes were signalled.
pub fn frozen_sweep(dir: &Path) -> Result<usize, CgroupError> {
    freeze(dir)?;
    let pids = super::parse_pids(&super::read_file(&dir.join("cgroup.procs"))?);
    let mut signalled = 0;
    for pid in pids {
        match cgroup_sys::sigkill_pid(pid) {
            Ok(()) => signalled += 1,
            // Already gone between the listing and the signal: nothing to do.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => {
                // Thaw regardless, so a failed sweep does not leave the run frozen forever.
                let _ = thaw(dir);
                return Err(CgroupError::Signal { pid, source });
            }
        }
    }
    thaw(dir)?;
    Ok(signalled)
}
