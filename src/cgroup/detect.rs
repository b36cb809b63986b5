//! Which cgroup filesystems are mounted, in which mode, and where this process may create
//! children: parsed from the text of /proc/self/mountinfo and /proc/self/cgroup.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// v1 controllers calyx knows by name; other super options of a v1 mount are flags.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup2 only.
    Unified,
    /// v1 controllers plus a cgroup2 mount (usually without controllers).
    Hybrid,
    /// v1 only.
    Legacy,
}

/// One cgroup mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// True for cgroup2.
    pub v2: bool,
    /// Where it is mounted (absolute, on the host).
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point.
    pub root: String,
    /// v1 controllers (and `name=…`); empty for v2.
    pub controllers: Vec<String>,
}

/// One line of /proc/self/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Controllers of the hierarchy; empty for v2 (`0::/path`).
    pub controllers: Vec<String>,
    /// Path of this process's cgroup inside the hierarchy.
    pub path: String,
}

/// A hierarchy and the directory under which calyx creates run cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 controllers served by this hierarchy.
    pub controllers: Vec<String>,
    /// Directory on disk (under the root given to [`Layout::discover`]).
    pub dir: PathBuf,
}

impl Hierarchy {
    /// True if this hierarchy serves `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Where this process may create run cgroups, per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Filesystem root all paths are under (`/` in production).
    pub root: PathBuf,
    /// Mode of the host.
    pub mode: CgroupMode,
    /// Parent directory in the cgroup2 tree, if one is mounted.
    pub v2: Option<PathBuf>,
    /// Parent directories in the v1 hierarchies (controller hierarchies only, no `name=`).
    pub v1: Vec<Hierarchy>,
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts listed in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>, CgroupError> {
    let malformed = |line: &str| CgroupError::Malformed {
        file: "mountinfo",
        line: line.to_owned(),
    };
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // Fields: id parent maj:min root mount_point opts [optional…] - fstype source super_opts
        let (left, right) = line.split_once(" - ").ok_or_else(|| malformed(line))?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
        else {
            return Err(malformed(line));
        };
        let v2 = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let super_opts = right.get(2).copied().unwrap_or("");
        let controllers = if v2 {
            Vec::new()
        } else {
            super_opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(str::to_owned)
                .collect()
        };
        mounts.push(CgroupMount {
            v2,
            mount_point: PathBuf::from(unescape(point)),
            root: unescape(root),
            controllers,
        });
    }
    Ok(mounts)
}

/// The lines of a /proc/self/cgroup text.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, CgroupError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(CgroupError::Malformed {
                    file: "/proc/self/cgroup",
                    line: line.into(),
                });
            };
            let controllers = ctrl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(ProcCgroup {
                controllers,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// The host's mode from its cgroup mounts.
pub fn detect_mode(mounts: &[CgroupMount]) -> Result<CgroupMode, CgroupError> {
    let has_v2 = mounts.iter().any(|m| m.v2);
    // A v1 mount carrying only `name=systemd` holds no controllers: it does not make a host
    // hybrid on its own.
    let has_v1 = mounts
        .iter()
        .any(|m| !m.v2 && m.controllers.iter().any(|c| !c.starts_with("name=")));
    match (has_v2, has_v1) {
        (true, true) => Ok(CgroupMode::Hybrid),
        (true, false) => Ok(CgroupMode::Unified),
        (false, true) => Ok(CgroupMode::Legacy),
        (false, false) => Err(CgroupError::NoCgroupFs),
    }
}

/// Map a cgroup path of a hierarchy to a directory under `root`, through a mount whose root
/// is a prefix of it.
fn dir_for(root: &Path, mounts: &[&CgroupMount], cgroup: &str) -> Option<PathBuf> {
    mounts.iter().find_map(|m| {
        let rel = if m.root == "/" {
            cgroup.trim_start_matches('/')
        } else {
            let rest = cgroup.strip_prefix(m.root.as_str())?;
            // "/a/bc" must not match a mount of "/a/b".
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest.trim_start_matches('/')
        };
        let point = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
        let dir = root.join(point);
        Some(if rel.is_empty() { dir } else { dir.join(rel) })
    })
}

/// Work out the layout from the two texts. `parent` (a `--cgroup-parent` path inside each
/// hierarchy, like `/calyx.slice`) replaces this process's own cgroup when given.
pub fn locate(
    root: &Path,
    mountinfo: &str,
    proc_cgroup: &str,
    parent: Option<&str>,
) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo)?;
    let mode = detect_mode(&mounts)?;
    let entries = parse_proc_cgroup(proc_cgroup)?;
    let mut layout = Layout {
        root: root.to_owned(),
        mode,
        v2: None,
        v1: Vec::new(),
    };
    for entry in &entries {
        let cgroup = parent.unwrap_or(&entry.path);
        let is_v2 = entry.controllers.is_empty();
        let candidates: Vec<&CgroupMount> = mounts
            .iter()
            .filter(|m| {
                if is_v2 {
                    m.v2
                } else {
                    !m.v2 && entry.controllers.iter().all(|c| m.controllers.contains(c))
                }
            })
            .collect();
        if candidates.is_empty() {
            // The hierarchy is not mounted here (e.g. hidden by a container): nothing to use.
            continue;
        }
        let dir = dir_for(root, &candidates, cgroup).ok_or_else(|| CgroupError::NotVisible {
            controllers: entry.controllers.join(","),
            cgroup: cgroup.to_owned(),
        })?;
        let tracking_only = !is_v2 && entry.controllers.iter().all(|c| c.starts_with("name="));
        if tracking_only {
            // name=systemd and the like carry no controller: calyx never uses them.
            continue;
        }
        // An explicit parent must exist where it carries limits; on hybrid hosts the v2
        // companion is optional and its absence is reported as a gap at creation.
        let optional = is_v2 && mode == CgroupMode::Hybrid;
        if parent.is_some() && !optional && !dir.is_dir() {
            return Err(CgroupError::ParentMissing { path: dir });
        }
        if is_v2 {
            layout.v2 = Some(dir);
        } else {
            layout.v1.push(Hierarchy {
                controllers: entry.controllers.clone(),
                dir,
            });
        }
    }
    Ok(layout)
}

impl Layout {
    /// Read `root/proc/self/mountinfo` and `root/proc/self/cgroup` and locate.
    pub fn discover(root: &Path, parent: Option<&str>) -> Result<Self, CgroupError> {
        let mountinfo = super::read_file(&root.join("proc/self/mountinfo"))?;
        let proc_cgroup = super::read_file(&root.join("proc/self/cgroup"))?;
        locate(root, &mountinfo, &proc_cgroup, parent)
    }

    /// The v1 hierarchy serving `controller`.
    pub fn v1_for(&self, controller: &str) -> Option<&Hierarchy> {
        self.v1.iter().find(|h| h.has(controller))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";
    const UNIFIED: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const LEGACY: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw shared:6 - cgroup cgroup rw,xattr,name=systemd
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:7 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:8 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw shared:9 - cgroup cgroup rw,pids
";

    #[test]
    fn modes_table() {
        let cases = [
            (HYBRID, Some(CgroupMode::Hybrid)),
            (UNIFIED, Some(CgroupMode::Unified)),
            (LEGACY, Some(CgroupMode::Legacy)),
            // Only the name=systemd tracking hierarchy: no controllers anywhere.
            (
                "26 25 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
                None,
            ),
            ("22 1 0:21 / /proc rw - proc proc rw\n", None),
        ];
        for (text, want) in cases {
            let got = detect_mode(&parse_mountinfo(text).unwrap()).ok();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn mountinfo_escapes_and_optional_fields() {
        let text = "30 23 0:26 / /sys/fs/my\\040cg rw shared:4 master:1 - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/my cg"));
        assert!(m[0].v2);
        assert!(parse_mountinfo("garbage without separator\n").is_err());
    }

    #[test]
    fn hybrid_layout_per_hierarchy() {
        let l = locate(Path::new("/r"), HYBRID, HYBRID_CGROUP, None).unwrap();
        assert_eq!(l.mode, CgroupMode::Hybrid);
        assert_eq!(l.v2, Some(PathBuf::from("/r/sys/fs/cgroup/unified")));
        assert_eq!(
            l.v1_for("memory").unwrap().dir,
            PathBuf::from("/r/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            l.v1_for("pids").unwrap().dir,
            PathBuf::from("/r/sys/fs/cgroup/pids")
        );
        assert!(l.v1_for("cpuset").is_none());
        // name=systemd carries no controller: not offered for limits.
        assert!(l.v1.iter().all(|h| !h.has("name=systemd")));
    }

    #[test]
    fn unified_and_legacy_layouts() {
        let l = locate(Path::new("/"), UNIFIED, "0::/user.slice/u.scope\n", None).unwrap();
        assert_eq!(
            l.v2,
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/u.scope"))
        );
        let legacy_cg = "4:cpu,cpuacct:/a\n3:memory:/a\n2:pids:/a\n1:name=systemd:/a\n";
        let l = locate(Path::new("/"), LEGACY, legacy_cg, None).unwrap();
        assert_eq!(l.v2, None);
        let cpu = l.v1_for("cpuacct").unwrap();
        assert_eq!(cpu.dir, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a"));
        assert!(cpu.has("cpu"));
    }

    #[test]
    fn mount_root_prefix_is_respected() {
        // Inside a cgroup namespace the mount root is the namespace's cgroup.
        let text = "30 23 0:26 /ns /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = locate(Path::new("/"), text, "0::/ns/job\n", None).unwrap();
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup/job")));
        let err = locate(Path::new("/"), text, "0::/nsother\n", None).unwrap_err();
        assert!(matches!(err, CgroupError::NotVisible { .. }), "{err}");
    }

    #[test]
    fn explicit_parent_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/fs/cgroup/calyx.slice")).unwrap();
        let l = locate(dir.path(), UNIFIED, "0::/x\n", Some("/calyx.slice")).unwrap();
        assert_eq!(l.v2, Some(dir.path().join("sys/fs/cgroup/calyx.slice")));
        let err = locate(dir.path(), UNIFIED, "0::/x\n", Some("/nope")).unwrap_err();
        assert!(matches!(err, CgroupError::ParentMissing { .. }));
        // Hybrid: the v1 parents must exist, the v2 companion's and name=systemd's need not.
        for h in ["cpu", "cpuacct", "memory", "freezer", "blkio", "pids"] {
            std::fs::create_dir_all(dir.path().join("sys/fs/cgroup").join(h).join("calyx.slice"))
                .unwrap();
        }
        let l = locate(dir.path(), HYBRID, HYBRID_CGROUP, Some("/calyx.slice")).unwrap();
        assert_eq!(l.v1.len(), 6);
        assert_eq!(
            l.v2,
            Some(dir.path().join("sys/fs/cgroup/unified/calyx.slice"))
        );
        std::fs::remove_dir(dir.path().join("sys/fs/cgroup/pids/calyx.slice")).unwrap();
        let err = locate(dir.path(), HYBRID, HYBRID_CGROUP, Some("/calyx.slice")).unwrap_err();
        assert!(
            matches!(err, CgroupError::ParentMissing { ref path } if path.ends_with("pids/calyx.slice"))
        );
    }
}
