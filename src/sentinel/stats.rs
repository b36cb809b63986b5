//! Parsers for the cgroup statistics files (v2 and v1), and one [`Sample`] read from a run's
//! cgroup. Parsers take text; readers take the cgroup directory, so fixtures work.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SentinelError;
use crate::cgroup::RunCgroup;
use crate::lease::model::HaltMetric;

/// v1 reports "no limit" as a huge page-aligned number (LONG_MAX rounded down to a page);
/// anything at or above 2^62 bytes is treated as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Raw memory percentage from which the frequent tick also reads memory.stat.
const STAT_CHECK_PERCENT: f64 = 50.0;

fn bad(what: &'static str, text: &str) -> SentinelError {
    SentinelError::Parse {
        what,
        text: text.chars().take(200).collect(),
    }
}

/// A single number (memory.current, pids.current, memory.usage_in_bytes, cpuacct.usage…).
pub fn parse_u64(what: &'static str, text: &str) -> Result<u64, SentinelError> {
    text.trim().parse().map_err(|_| bad(what, text))
}

/// A limit: a number or `max` (→ `None`).
pub fn parse_limit(what: &'static str, text: &str) -> Result<Option<u64>, SentinelError> {
    match text.trim() {
        "max" => Ok(None),
        t => Ok(Some(parse_u64(what, t)?).filter(|v| *v < V1_UNLIMITED)),
    }
}

/// `key value` lines (memory.events, memory.stat, pids.events, cpu.stat,
/// memory.oom_control…).
pub fn parse_flat_keyed(
    what: &'static str,
    text: &str,
) -> Result<BTreeMap<String, u64>, SentinelError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (k, v) = line.split_once(' ').ok_or_else(|| bad(what, line))?;
            Ok((k.to_owned(), v.trim().parse().map_err(|_| bad(what, line))?))
        })
        .collect()
}

/// Bytes and operations of one device in io.stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// v2 io.stat: `MAJ:MIN rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…` per device.
pub fn parse_io_stat(text: &str) -> Result<BTreeMap<String, IoCounters>, SentinelError> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let dev = fields.next().ok_or_else(|| bad("io.stat", line))?;
        let mut c = IoCounters::default();
        for f in fields {
            let (k, v) = f.split_once('=').ok_or_else(|| bad("io.stat", line))?;
            let v: u64 = v.parse().map_err(|_| bad("io.stat", line))?;
            match k {
                "rbytes" => c.rbytes = v,
                "wbytes" => c.wbytes = v,
                "rios" => c.rios = v,
                "wios" => c.wios = v,
                // Discard counters and future keys are not needed.
                _ => {}
            }
        }
        out.insert(dev.to_owned(), c);
    }
    Ok(out)
}

/// v1 blkio.throttle.io_service_bytes: `MAJ:MIN Read N` … lines and a `Total N` line.
/// Returns (read, write) bytes summed over devices.
pub fn parse_blkio_service_bytes(text: &str) -> Result<(u64, u64), SentinelError> {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "Read", n] => {
                read += n
                    .parse::<u64>()
                    .map_err(|_| bad("blkio.throttle.io_service_bytes", line))?
            }
            [_, "Write", n] => {
                write += n
                    .parse::<u64>()
                    .map_err(|_| bad("blkio.throttle.io_service_bytes", line))?
            }
            [_, _, n] | ["Total", n] => {
                n.parse::<u64>()
                    .map_err(|_| bad("blkio.throttle.io_service_bytes", line))?;
            }
            _ => return Err(bad("blkio.throttle.io_service_bytes", line)),
        }
    }
    Ok((read, write))
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PsiLine {
    /// % of the last 10 s.
    pub avg10: f64,
    /// % of the last 60 s.
    pub avg60: f64,
    /// % of the last 300 s.
    pub avg300: f64,
    /// Total stall time in µs.
    pub total: u64,
}

/// A PSI file (`*.pressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Psi {
    /// Some tasks stalled.
    pub some: PsiLine,
    /// All tasks stalled (absent for cpu on older kernels).
    pub full: Option<PsiLine>,
}

/// Parse `some avg10=… avg60=… avg300=… total=…` / `full …`.
pub fn parse_psi(text: &str) -> Result<Psi, SentinelError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let kind = fields.next();
        let mut p = PsiLine::default();
        for f in fields {
            let (k, v) = f.split_once('=').ok_or_else(|| bad("pressure", line))?;
            let num = |v: &str| v.parse::<f64>().map_err(|_| bad("pressure", line));
            match k {
                "avg10" => p.avg10 = num(v)?,
                "avg60" => p.avg60 = num(v)?,
                "avg300" => p.avg300 = num(v)?,
                "total" => p.total = v.parse().map_err(|_| bad("pressure", line))?,
                _ => return Err(bad("pressure", line)),
            }
        }
        match kind {
            Some("some") => some = Some(p),
            Some("full") => full = Some(p),
            _ => return Err(bad("pressure", line)),
        }
    }
    Ok(Psi {
        some: some.ok_or_else(|| bad("pressure", text))?,
        full,
    })
}

/// One reading of a run's cgroup. `None` means the host does not offer that figure.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Memory in use (bytes), page cache included (memory.current, memory.usage_in_bytes).
    pub memory_bytes: Option<u64>,
    /// Inactive file cache (bytes) from memory.stat: reclaimable, so not part of the working
    /// set that `memory_percent` measures.
    pub memory_inactive_file: Option<u64>,
    /// Memory limit (bytes), if any.
    pub memory_limit: Option<u64>,
    /// Peak memory (bytes).
    pub memory_peak: Option<u64>,
    /// OOM kills so far.
    pub oom_kills: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// pids limit, if any.
    pub pids_limit: Option<u64>,
    /// Peak processes (kernel's figure where offered).
    pub pids_peak: Option<u64>,
    /// Forks refused by pids.max.
    pub pids_max_events: Option<u64>,
    /// CPU time used (µs).
    pub cpu_usec: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// memory.pressure `some avg10`.
    pub memory_pressure_some_avg10: Option<f64>,
    /// Bytes the payload wrote to stdout and stderr (counted by the runner).
    pub output_bytes: Option<u64>,
}

impl Sample {
    /// Memory in use minus the inactive file cache. A payload that merely writes files fills
    /// its cgroup with page cache up to the limit (the kernel reclaims it on demand); counting
    /// that would halt every `cp` of a large file.
    pub fn working_set(&self) -> Option<u64> {
        self.memory_bytes
            .map(|b| b.saturating_sub(self.memory_inactive_file.unwrap_or(0)))
    }

    /// The value a halt rule compares, if this sample has it.
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52 in practice
    pub fn metric(&self, m: HaltMetric) -> Option<f64> {
        let percent = |v: Option<u64>, limit: Option<u64>| match (v, limit) {
            (Some(v), Some(l)) if l > 0 => Some(v as f64 * 100.0 / l as f64),
            _ => None,
        };
        match m {
            HaltMetric::MemoryPercent => percent(self.working_set(), self.memory_limit),
            // A fork the kernel refused means the cgroup sat at its limit, however quickly
            // the count fell again: a fork bomb's processes die and respawn faster than any
            // sampling interval, so the refusal counter is the reliable sign of a breach.
            HaltMetric::PidsPercent if self.pids_max_events.is_some_and(|n| n > 0) => {
                self.pids_limit.map(|_| 100.0)
            }
            HaltMetric::PidsPercent => percent(self.pids, self.pids_limit),
            HaltMetric::CpuSeconds => self.cpu_usec.map(|u| u as f64 / 1e6),
            HaltMetric::MemoryPressureSomeAvg10 => self.memory_pressure_some_avg10,
            HaltMetric::OutputBytes => self.output_bytes.map(|b| b as f64),
        }
    }
}

/// Where a run's statistics live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatSource {
    /// A cgroup v2 cgroup with its controllers.
    V2 {
        /// The run cgroup.
        dir: PathBuf,
    },
    /// v1 hierarchies, plus a v2 companion for PSI where one exists.
    V1 {
        /// memory hierarchy.
        memory: Option<PathBuf>,
        /// pids hierarchy.
        pids: Option<PathBuf>,
        /// cpuacct hierarchy.
        cpuacct: Option<PathBuf>,
        /// blkio hierarchy.
        blkio: Option<PathBuf>,
        /// v2 companion (memory.pressure, cgroup.events).
        v2: Option<PathBuf>,
    },
}

/// Read a file that may legitimately be absent (older kernels, disabled accounting).
fn read_opt(path: &Path) -> Result<Option<String>, SentinelError> {
    read_in(&Files::ByPath, path)
}

/// How a reading gets at its files.
enum Files<'a> {
    /// Opened by path, each time.
    ByPath,
    /// Opened by path, and kept open in the list for later readings.
    Keep(&'a RefCell<Vec<(PathBuf, File)>>),
    /// Read again, from the start, through descriptors kept open (by path for any other).
    Kept(&'a [(PathBuf, File)]),
}

/// The files [`StatSource::read_usage`] reads, kept open (see
/// [`StatSource::open_usage_files`]).
#[derive(Debug, Default)]
pub struct UsageFiles(Vec<(PathBuf, File)>);

fn read_in(files: &Files<'_>, path: &Path) -> Result<Option<String>, SentinelError> {
    let failed = |source| SentinelError::Read {
        path: path.to_owned(),
        source,
    };
    if let Files::Kept(kept) = files {
        if let Some((_, f)) = kept.iter().find(|(p, _)| p == path) {
            return crate::sys::fs::read_from_start(f).map(Some).map_err(failed);
        }
    }
    let opened = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let text = crate::sys::fs::read_from_start(&opened).map_err(failed)?;
    if let Files::Keep(list) = files {
        list.borrow_mut().push((path.to_owned(), opened));
    }
    Ok(Some(text))
}

fn num(dir: Option<&Path>, file: &'static str) -> Result<Option<u64>, SentinelError> {
    num_in(&Files::ByPath, dir, file)
}

fn num_in(
    files: &Files<'_>,
    dir: Option<&Path>,
    file: &'static str,
) -> Result<Option<u64>, SentinelError> {
    let Some(dir) = dir else { return Ok(None) };
    read_in(files, &dir.join(file))?
        .map(|t| parse_u64(file, &t))
        .transpose()
}

fn limit(dir: Option<&Path>, file: &'static str) -> Result<Option<u64>, SentinelError> {
    let Some(dir) = dir else { return Ok(None) };
    Ok(read_opt(&dir.join(file))?
        .map(|t| parse_limit(file, &t))
        .transpose()?
        .flatten())
}

fn keyed(dir: Option<&Path>, file: &'static str, key: &str) -> Result<Option<u64>, SentinelError> {
    keyed_in(&Files::ByPath, dir, file, key)
}

fn keyed_in(
    files: &Files<'_>,
    dir: Option<&Path>,
    file: &'static str,
    key: &str,
) -> Result<Option<u64>, SentinelError> {
    let Some(dir) = dir else { return Ok(None) };
    let Some(text) = read_in(files, &dir.join(file))? else {
        return Ok(None);
    };
    Ok(parse_flat_keyed(file, &text)?.get(key).copied())
}

/// Inactive file cache from memory.stat (v1: the hierarchical `total_` figure).
fn inactive_file(dir: Option<&Path>, v2: bool) -> Result<Option<u64>, SentinelError> {
    keyed(
        dir,
        "memory.stat",
        if v2 {
            "inactive_file"
        } else {
            "total_inactive_file"
        },
    )
}

fn pressure(dir: Option<&Path>) -> Result<Option<f64>, SentinelError> {
    let Some(dir) = dir else { return Ok(None) };
    Ok(read_opt(&dir.join("memory.pressure"))?
        .map(|t| parse_psi(&t))
        .transpose()?
        .map(|p| p.some.avg10))
}

/// CPU time on a v1 host: `cpuacct.usage` (nanoseconds) where the run has a cpuacct
/// hierarchy, else the v2 companion's `cpu.stat`, which stands in for it (see
/// `cgroup::run::v1_monitors`).
fn v1_cpu_usec(
    files: &Files<'_>,
    cpuacct: Option<&Path>,
    v2: Option<&Path>,
) -> Result<Option<u64>, SentinelError> {
    match cpuacct {
        Some(_) => Ok(num_in(files, cpuacct, "cpuacct.usage")?.map(|ns| ns / 1000)),
        None => keyed_in(files, v2, "cpu.stat", "usage_usec"),
    }
}

impl StatSource {
    /// The statistics of a run cgroup.
    pub fn of(run: &RunCgroup) -> Self {
        let v2 = run.v2_dir().map(Path::to_owned);
        match run.mode() {
            crate::cgroup::CgroupMode::Unified => Self::V2 {
                dir: v2.unwrap_or_default(),
            },
            _ => Self::V1 {
                memory: run.v1_dir("memory").map(Path::to_owned),
                pids: run.v1_dir("pids").map(Path::to_owned),
                cpuacct: run.v1_dir("cpuacct").map(Path::to_owned),
                blkio: run.v1_dir("blkio").map(Path::to_owned),
                v2,
            },
        }
    }

    /// The v1 memory cgroup, where usage thresholds can be registered.
    pub fn memory_v1(&self) -> Option<&std::path::Path> {
        match self {
            Self::V1 { memory, .. } => memory.as_deref(),
            Self::V2 { .. } => None,
        }
    }

    /// Files whose modification signals an event worth an immediate look.
    pub fn event_files(&self) -> Vec<PathBuf> {
        let (dirs, names): (Vec<&PathBuf>, &[&str]) = match self {
            Self::V2 { dir } => (
                vec![dir],
                &["memory.events", "pids.events", "cgroup.events"],
            ),
            Self::V1 { v2, pids, .. } => (
                v2.iter().chain(pids.iter()).collect(),
                &["cgroup.events", "pids.events"],
            ),
        };
        dirs.iter()
            .flat_map(|d| names.iter().map(|n| d.join(n)))
            .filter(|p| p.exists())
            .collect()
    }

    /// The memory.pressure file for a PSI trigger, if any.
    pub fn pressure_file(&self) -> Option<PathBuf> {
        let dir = match self {
            Self::V2 { dir } => Some(dir),
            Self::V1 { v2, .. } => v2.as_ref(),
        };
        dir.map(|d| d.join("memory.pressure"))
            .filter(|p| p.exists())
    }

    /// Read only what `metrics` need, taking the limits from `full` (an earlier full
    /// sample: limits are written once, before the run starts). This is the sentinel's
    /// frequent tick: one or two small files instead of a dozen.
    pub fn read_metrics(
        &self,
        metrics: &[HaltMetric],
        full: &Sample,
    ) -> Result<Sample, SentinelError> {
        let wants = |m: HaltMetric| metrics.contains(&m);
        let (memory, pids, psi): (Option<&Path>, Option<&Path>, Option<&Path>) = match self {
            Self::V2 { dir } => (Some(dir), Some(dir), Some(dir)),
            Self::V1 {
                memory, pids, v2, ..
            } => (memory.as_deref(), pids.as_deref(), v2.as_deref()),
        };
        let v2 = matches!(self, Self::V2 { .. });
        let mut s = Sample {
            memory_limit: full.memory_limit,
            pids_limit: full.pids_limit,
            ..Sample::default()
        };
        if wants(HaltMetric::MemoryPercent) {
            s.memory_bytes = num(
                memory,
                if v2 {
                    "memory.current"
                } else {
                    "memory.usage_in_bytes"
                },
            )?;
        }
        // memory.stat is a long file: read it only when the raw figure is high enough for
        // the cache to matter.
        if s.metric(HaltMetric::MemoryPercent)
            .is_some_and(|p| p >= STAT_CHECK_PERCENT)
        {
            s.memory_inactive_file = inactive_file(memory, v2)?;
        }
        if wants(HaltMetric::PidsPercent) {
            s.pids = num(pids, "pids.current")?;
            s.pids_max_events = keyed(pids, "pids.events", "max")?;
        }
        if wants(HaltMetric::CpuSeconds) {
            s.cpu_usec = self.cpu_usec()?;
        }
        if wants(HaltMetric::MemoryPressureSomeAvg10) {
            s.memory_pressure_some_avg10 = pressure(psi)?;
        }
        Ok(s)
    }

    /// CPU time of the run, µs.
    fn cpu_usec(&self) -> Result<Option<u64>, SentinelError> {
        self.cpu_usec_in(&Files::ByPath)
    }

    fn cpu_usec_in(&self, files: &Files<'_>) -> Result<Option<u64>, SentinelError> {
        match self {
            Self::V2 { dir } => keyed_in(files, Some(dir), "cpu.stat", "usage_usec"),
            Self::V1 { cpuacct, v2, .. } => v1_cpu_usec(files, cpuacct.as_deref(), v2.as_deref()),
        }
    }

    /// Processes the kernel's OOM killer killed in the run.
    fn oom_kills(&self) -> Result<Option<u64>, SentinelError> {
        self.oom_kills_in(&Files::ByPath)
    }

    fn oom_kills_in(&self, files: &Files<'_>) -> Result<Option<u64>, SentinelError> {
        match self {
            Self::V2 { dir } => keyed_in(files, Some(dir), "memory.events", "oom_kill"),
            Self::V1 { memory, .. } => {
                keyed_in(files, memory.as_deref(), "memory.oom_control", "oom_kill")
            }
        }
    }

    /// Bytes the run read from and wrote to block devices (io.stat; v1: blkio).
    fn io_bytes(&self) -> Result<Option<(u64, u64)>, SentinelError> {
        self.io_bytes_in(&Files::ByPath)
    }

    fn io_bytes_in(&self, files: &Files<'_>) -> Result<Option<(u64, u64)>, SentinelError> {
        let (file, dir) = match self {
            Self::V2 { dir } => ("io.stat", Some(dir.as_path())),
            Self::V1 { blkio, .. } => (
                "blkio.throttle.io_service_bytes_recursive",
                blkio.as_deref(),
            ),
        };
        let Some(text) = dir
            .map(|d| read_in(files, &d.join(file)))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        match self {
            Self::V2 { .. } => Ok(Some(
                parse_io_stat(&text)?
                    .values()
                    .fold((0, 0), |(r, w), c| (r + c.rbytes, w + c.wbytes)),
            )),
            Self::V1 { .. } => parse_blkio_service_bytes(&text).map(Some),
        }
    }

    /// Read only what a run's usage needs (peaks, CPU, IO, OOM kills): the last reading,
    /// taken on the way to the closing record. Five small files instead of a dozen, and never
    /// `memory.stat`, whose generation flushes the memory controller's per-CPU counters.
    /// Current values are read only where the kernel keeps no peak.
    pub fn read_usage(&self) -> Result<Sample, SentinelError> {
        self.read_usage_in(&Files::ByPath)
    }

    /// [`StatSource::read_usage`] through the files `kept` holds open: the last reading
    /// without opening, looking up and closing a file in four or five cgroup directories
    /// (100 µs on this machine's hybrid hierarchy, 20 µs through the kept descriptors).
    pub fn read_usage_from(&self, kept: &UsageFiles) -> Result<Sample, SentinelError> {
        self.read_usage_in(&Files::Kept(&kept.0))
    }

    /// Opens the files [`StatSource::read_usage`] reads (the reading itself says which) and
    /// keeps them open for [`StatSource::read_usage_from`]. A file that cannot be opened now
    /// is left to be opened by path then.
    pub fn open_usage_files(&self) -> UsageFiles {
        let kept = RefCell::new(Vec::new());
        let _ = self.read_usage_in(&Files::Keep(&kept));
        UsageFiles(kept.into_inner())
    }

    fn read_usage_in(&self, files: &Files<'_>) -> Result<Sample, SentinelError> {
        let (memory, pids, v2) = match self {
            Self::V2 { dir } => (Some(dir.as_path()), Some(dir.as_path()), true),
            Self::V1 { memory, pids, .. } => (memory.as_deref(), pids.as_deref(), false),
        };
        let (peak_file, current_file) = if v2 {
            ("memory.peak", "memory.current")
        } else {
            ("memory.max_usage_in_bytes", "memory.usage_in_bytes")
        };
        let memory_peak = num_in(files, memory, peak_file)?;
        let memory_bytes = match memory_peak {
            Some(_) => None,
            None => num_in(files, memory, current_file)?,
        };
        let pids_peak = num_in(files, pids, "pids.peak")?;
        let pids_now = match pids_peak {
            Some(_) => None,
            None => num_in(files, pids, "pids.current")?,
        };
        let io = self.io_bytes_in(files)?;
        Ok(Sample {
            memory_bytes,
            memory_peak,
            oom_kills: self.oom_kills_in(files)?,
            pids: pids_now,
            pids_peak,
            cpu_usec: self.cpu_usec_in(files)?,
            io_read_bytes: io.map(|(r, _)| r),
            io_write_bytes: io.map(|(_, w)| w),
            ..Sample::default()
        })
    }

    /// Read one full sample.
    pub fn read(&self) -> Result<Sample, SentinelError> {
        match self {
            Self::V2 { dir } => {
                let d = Some(dir.as_path());
                let io = self.io_bytes()?;
                Ok(Sample {
                    memory_bytes: num(d, "memory.current")?,
                    memory_inactive_file: inactive_file(d, true)?,
                    memory_limit: limit(d, "memory.max")?,
                    memory_peak: num(d, "memory.peak")?,
                    oom_kills: self.oom_kills()?,
                    pids: num(d, "pids.current")?,
                    pids_limit: limit(d, "pids.max")?,
                    pids_peak: num(d, "pids.peak")?,
                    pids_max_events: keyed(d, "pids.events", "max")?,
                    cpu_usec: self.cpu_usec()?,
                    io_read_bytes: io.map(|(r, _)| r),
                    io_write_bytes: io.map(|(_, w)| w),
                    memory_pressure_some_avg10: pressure(d)?,
                    output_bytes: None,
                })
            }
            Self::V1 {
                memory, pids, v2, ..
            } => {
                let (m, p) = (memory.as_deref(), pids.as_deref());
                let io = self.io_bytes()?;
                Ok(Sample {
                    memory_bytes: num(m, "memory.usage_in_bytes")?,
                    memory_inactive_file: inactive_file(m, false)?,
                    memory_limit: limit(m, "memory.limit_in_bytes")?,
                    memory_peak: num(m, "memory.max_usage_in_bytes")?,
                    oom_kills: self.oom_kills()?,
                    pids: num(p, "pids.current")?,
                    pids_limit: limit(p, "pids.max")?,
                    pids_peak: num(p, "pids.peak")?,
                    pids_max_events: keyed(p, "pids.events", "max")?,
                    cpu_usec: self.cpu_usec()?,
                    io_read_bytes: io.map(|(r, _)| r),
                    io_write_bytes: io.map(|(_, w)| w),
                    memory_pressure_some_avg10: pressure(v2.as_deref())?,
                    output_bytes: None,
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
