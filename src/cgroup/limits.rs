//! Limits: what to write to which file (a pure plan per cgroup version) and how to check the
//! kernel's answer when reading it back.
//!
//! IO limits name a block device. calyx throttles the whole disk that holds the path the
//! caller names (the runner passes the filesystem of the sandbox's writable state): v2 `io.max`
//! and v1 `blkio.throttle.*` only accept whole disks, so a partition is mapped to its disk
//! through sysfs. A path on tmpfs or another device-less filesystem has no disk to throttle;
//! its writes are memory and fall under the memory limit, so an io limit there is refused.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::CgroupError;
use crate::lease::model::Limits;

/// CFS period used for CPU limits: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// IO bandwidth limit on one device, read and write each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLimit {
    /// Whole-disk device.
    pub device: DevNum,
    /// Bytes per second.
    pub bps: u64,
}

/// The limits of one run cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitSpec {
    /// memory.max / memory.limit_in_bytes.
    pub memory_max: Option<u64>,
    /// memory.high (v2 only: v1 has no equivalent throttle).
    pub memory_high: Option<u64>,
    /// Swap allowed on top of memory.
    pub swap_max: Option<u64>,
    /// Processes and threads.
    pub pids_max: Option<u64>,
    /// Fraction of one core.
    pub cpu: Option<f64>,
    /// IO bandwidth.
    pub io: Option<IoLimit>,
}

impl LimitSpec {
    /// The cgroup part of a lease's limits; `io_device` is required when `io_bps` is set
    /// (see [`io_device_for_path`]).
    pub fn from_lease(limits: &Limits, io_device: Option<DevNum>) -> Result<Self, CgroupError> {
        let io = match (limits.io_bps, io_device) {
            (None, _) => None,
            (Some(bps), Some(device)) => Some(IoLimit { device, bps }),
            (Some(bps), None) => {
                return Err(CgroupError::InvalidLimit {
                    limit: "io",
                    value: bps.to_string(),
                    reason: "no block device was given to apply it to",
                });
            }
        };
        Ok(Self {
            memory_max: limits.memory_bytes,
            memory_high: None,
            swap_max: limits.swap_bytes,
            pids_max: limits.pids,
            cpu: limits.cpu,
            io,
        })
    }
}

/// How the read-back text must look for a write to count as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The file reads exactly this.
    Exact(String),
    /// Some line of the file starts with the device and contains every given token.
    DeviceLine {
        /// "MAJ:MIN".
        device: String,
        /// Tokens that must follow on that line.
        tokens: Vec<String>,
    },
}

/// One write of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// Controller owning the file (picks the v1 hierarchy).
    pub controller: &'static str,
    /// File name inside the cgroup.
    pub file: &'static str,
    /// Value to write.
    pub value: String,
    /// What reading back must show.
    pub expect: Expect,
}

impl LimitWrite {
    fn exact(controller: &'static str, file: &'static str, value: String) -> Self {
        Self {
            controller,
            file,
            expect: Expect::Exact(value.clone()),
            value,
        }
    }
}

/// The kernel stores memory limits in pages; write page multiples so the read-back is exact.
fn round_to_page(bytes: u64, page: u64) -> u64 {
    bytes - bytes % page.max(1)
}

/// CPU quota in µs per [`CPU_PERIOD_US`] for a fraction of a core.
pub fn cpu_quota_us(fraction: f64) -> Result<u64, CgroupError> {
    let invalid = |reason| CgroupError::InvalidLimit {
        limit: "cpu",
        value: fraction.to_string(),
        reason,
    };
    if !fraction.is_finite() || fraction <= 0.0 {
        return Err(invalid("must be a positive number of cores"));
    }
    if fraction > 4096.0 {
        return Err(invalid("more than 4096 cores"));
    }
    // Bounded above, so the cast cannot overflow; quotas below 1 ms are rounded up to it.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let quota = (fraction * CPU_PERIOD_US as f64).round() as u64;
    Ok(quota.max(CPU_MIN_QUOTA_US))
}

fn memory_bytes(limit: &'static str, bytes: u64, page: u64) -> Result<u64, CgroupError> {
    let rounded = round_to_page(bytes, page);
    if rounded == 0 {
        return Err(CgroupError::InvalidLimit {
            limit,
            value: bytes.to_string(),
            reason: "less than one page",
        });
    }
    Ok(rounded)
}

/// The writes for a cgroup v2 cgroup, in order.
pub fn plan_v2(spec: &LimitSpec, page: u64) -> Result<Vec<LimitWrite>, CgroupError> {
    let mut w = Vec::new();
    if let Some(b) = spec.memory_max {
        w.push(LimitWrite::exact(
            "memory",
            "memory.max",
            memory_bytes("memory", b, page)?.to_string(),
        ));
    }
    if let Some(b) = spec.memory_high {
        w.push(LimitWrite::exact(
            "memory",
            "memory.high",
            memory_bytes("memory.high", b, page)?.to_string(),
        ));
    }
    if let Some(b) = spec.swap_max {
        // 0 is a valid swap limit ("no swap"), so no one-page floor here.
        w.push(LimitWrite::exact(
            "memory",
            "memory.swap.max",
            round_to_page(b, page).to_string(),
        ));
    }
    if let Some(n) = spec.pids_max {
        w.push(LimitWrite::exact("pids", "pids.max", n.to_string()));
    }
    if let Some(f) = spec.cpu {
        let value = format!("{} {CPU_PERIOD_US}", cpu_quota_us(f)?);
        w.push(LimitWrite::exact("cpu", "cpu.max", value));
    }
    if let Some(io) = spec.io {
        let (dev, bps) = (io.device.to_string(), io.bps);
        w.push(LimitWrite {
            controller: "io",
            file: "io.max",
            value: format!("{dev} rbps={bps} wbps={bps}"),
            expect: Expect::DeviceLine {
                device: dev,
                tokens: vec![format!("rbps={bps}"), format!("wbps={bps}")],
            },
        });
    }
    Ok(w)
}

/// The writes for v1 hierarchies, in order (memory before memsw, which must not be lower).
pub fn plan_v1(spec: &LimitSpec, page: u64) -> Result<Vec<LimitWrite>, CgroupError> {
    let mut w = Vec::new();
    if spec.memory_high.is_some() {
        return Err(CgroupError::Unsupported {
            limit: "memory.high",
            reason: "cgroup v1 has no memory.high throttle",
            remedy: "drop memory_high or run on a cgroup v2 host",
        });
    }
    let memory = spec
        .memory_max
        .map(|b| memory_bytes("memory", b, page))
        .transpose()?;
    if let Some(m) = memory {
        w.push(LimitWrite::exact(
            "memory",
            "memory.limit_in_bytes",
            m.to_string(),
        ));
    }
    if let Some(s) = spec.swap_max {
        // v1 limits memory+swap together, so a swap limit is only expressible with a memory one.
        let Some(m) = memory else {
            return Err(CgroupError::InvalidLimit {
                limit: "swap",
                value: s.to_string(),
                reason: "cgroup v1 limits memory+swap together and needs a memory limit too",
            });
        };
        let total = m.saturating_add(round_to_page(s, page));
        w.push(LimitWrite::exact(
            "memory",
            "memory.memsw.limit_in_bytes",
            total.to_string(),
        ));
    }
    if let Some(n) = spec.pids_max {
        w.push(LimitWrite::exact("pids", "pids.max", n.to_string()));
    }
    if let Some(f) = spec.cpu {
        w.push(LimitWrite::exact(
            "cpu",
            "cpu.cfs_period_us",
            CPU_PERIOD_US.to_string(),
        ));
        w.push(LimitWrite::exact(
            "cpu",
            "cpu.cfs_quota_us",
            cpu_quota_us(f)?.to_string(),
        ));
    }
    if let Some(io) = spec.io {
        for file in [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
        ] {
            let dev = io.device.to_string();
            w.push(LimitWrite {
                controller: "blkio",
                file,
                value: format!("{dev} {}", io.bps),
                expect: Expect::DeviceLine {
                    device: dev,
                    tokens: vec![io.bps.to_string()],
                },
            });
        }
    }
    Ok(w)
}

/// True if `read` (the file's content) shows the write applied.
pub fn verify(expect: &Expect, read: &str) -> bool {
    match expect {
        Expect::Exact(v) => read.trim() == v,
        Expect::DeviceLine { device, tokens } => read.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(device.as_str()) && {
                let rest: Vec<&str> = fields.collect();
                tokens.iter().all(|t| rest.contains(&t.as_str()))
            }
        }),
    }
}

/// The whole disk holding `path`, found through `sys_root/dev/block/MAJ:MIN` (`/sys` in
/// production).
pub fn io_device_for_path(path: &Path, sys_root: &Path) -> Result<DevNum, CgroupError> {
    let meta = std::fs::metadata(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dev = meta.dev();
    whole_disk(
        path,
        DevNum {
            major: libc::major(dev),
            minor: libc::minor(dev),
        },
        sys_root,
    )
}

/// Map a device number to its whole disk (itself, or the parent of a partition).
pub fn whole_disk(path: &Path, dev: DevNum, sys_root: &Path) -> Result<DevNum, CgroupError> {
    let no_device = || CgroupError::NoBlockDevice {
        path: path.to_owned(),
        major: dev.major,
        minor: dev.minor,
    };
    let node = sys_root.join("dev/block").join(dev.to_string());
    // Device-less filesystems (tmpfs, overlay, proc) have major 0 and no sysfs node.
    let Ok(node) = node.canonicalize() else {
        return Err(no_device());
    };
    if !node.join("partition").exists() {
        return Ok(dev);
    }
    let parent_dev = node.parent().map(|p| p.join("dev")).ok_or_else(no_device)?;
    let text = super::read_file(&parent_dev)?;
    let (major, minor) = text.split_once(':').ok_or_else(no_device)?;
    match (major.parse(), minor.parse()) {
        (Ok(major), Ok(minor)) => Ok(DevNum { major, minor }),
        _ => Err(no_device()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spec() -> LimitSpec {
        LimitSpec {
            memory_max: Some(64 * MIB + 123),
            swap_max: Some(0),
            pids_max: Some(32),
            cpu: Some(0.5),
            io: Some(IoLimit {
                device: DevNum {
                    major: 254,
                    minor: 0,
                },
                bps: 1_000_000,
            }),
            ..LimitSpec::default()
        }
    }

    fn files(plan: &[LimitWrite]) -> Vec<(&str, &str)> {
        plan.iter().map(|w| (w.file, w.value.as_str())).collect()
    }

    #[test]
    fn v2_plan_table() {
        let plan = plan_v2(&spec(), 4096).unwrap();
        assert_eq!(
            files(&plan),
            [
                ("memory.max", "67108864"),
                ("memory.swap.max", "0"),
                ("pids.max", "32"),
                ("cpu.max", "50000 100000"),
                ("io.max", "254:0 rbps=1000000 wbps=1000000"),
            ]
        );
    }

    #[test]
    fn v1_plan_table() {
        let plan = plan_v1(&spec(), 4096).unwrap();
        assert_eq!(
            files(&plan),
            [
                ("memory.limit_in_bytes", "67108864"),
                ("memory.memsw.limit_in_bytes", "67108864"),
                ("pids.max", "32"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("blkio.throttle.read_bps_device", "254:0 1000000"),
                ("blkio.throttle.write_bps_device", "254:0 1000000"),
            ]
        );
    }

    #[test]
    fn invalid_limits_are_typed() {
        let cases: [(LimitSpec, bool); 5] = [
            (
                LimitSpec {
                    cpu: Some(0.0),
                    ..LimitSpec::default()
                },
                true,
            ),
            (
                LimitSpec {
                    cpu: Some(f64::NAN),
                    ..LimitSpec::default()
                },
                true,
            ),
            (
                LimitSpec {
                    memory_max: Some(100),
                    ..LimitSpec::default()
                },
                true,
            ),
            (
                LimitSpec {
                    swap_max: Some(MIB),
                    ..LimitSpec::default()
                },
                false,
            ),
            (
                LimitSpec {
                    memory_high: Some(MIB),
                    ..LimitSpec::default()
                },
                false,
            ),
        ];
        for (s, v2_fails) in cases {
            assert!(plan_v1(&s, 4096).is_err(), "{s:?}");
            assert_eq!(plan_v2(&s, 4096).is_err(), v2_fails, "{s:?}");
        }
        // Tiny fractions round up to the kernel's 1 ms minimum.
        assert_eq!(cpu_quota_us(0.001).unwrap(), 1000);
    }

    #[test]
    fn from_lease_limits() {
        let lease = Limits {
            memory_bytes: Some(MIB),
            pids: Some(8),
            cpu: Some(0.5),
            io_bps: Some(5),
            ..Limits::default()
        };
        let dev = DevNum { major: 8, minor: 0 };
        let s = LimitSpec::from_lease(&lease, Some(dev)).unwrap();
        assert_eq!(
            (s.memory_max, s.pids_max, s.cpu),
            (Some(MIB), Some(8), Some(0.5))
        );
        assert_eq!(
            s.io,
            Some(IoLimit {
                device: dev,
                bps: 5
            })
        );
        // An io limit without a device to apply it to is an error, not a dropped limit.
        assert!(LimitSpec::from_lease(&lease, None).is_err());
    }

    #[test]
    fn verify_table() {
        let exact = Expect::Exact("32".into());
        assert!(verify(&exact, "32\n"));
        assert!(!verify(&exact, "max"));
        let line = Expect::DeviceLine {
            device: "254:0".into(),
            tokens: vec!["rbps=5".into(), "wbps=5".into()],
        };
        assert!(verify(
            &line,
            "8:0 rbps=1 wbps=1\n254:0 rbps=5 wbps=5 riops=max wiops=max\n"
        ));
        assert!(!verify(
            &line,
            "254:0 rbps=5 wbps=max riops=max wiops=max\n"
        ));
        assert!(!verify(&line, ""));
        let v1 = Expect::DeviceLine {
            device: "254:0".into(),
            tokens: vec!["7".into()],
        };
        assert!(verify(&v1, "254:0 7\n"));
        assert!(!verify(&v1, "254:00 7\n"));
    }

    #[test]
    fn partitions_map_to_their_disk() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/vda");
        std::fs::create_dir_all(disk.join("vda1")).unwrap();
        std::fs::write(disk.join("dev"), "254:0\n").unwrap();
        std::fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.path().join("dev/block/254:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("vda1"), sys.path().join("dev/block/254:1")).unwrap();
        let p = Path::new("/x");
        let whole = DevNum {
            major: 254,
            minor: 0,
        };
        assert_eq!(
            whole_disk(
                p,
                DevNum {
                    major: 254,
                    minor: 1
                },
                sys.path()
            )
            .unwrap(),
            whole
        );
        assert_eq!(whole_disk(p, whole, sys.path()).unwrap(), whole);
        let tmpfs = whole_disk(
            p,
            DevNum {
                major: 0,
                minor: 45,
            },
            sys.path(),
        )
        .unwrap_err();
        assert!(matches!(tmpfs, CgroupError::NoBlockDevice { major: 0, .. }));
    }
}
