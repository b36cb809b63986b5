//! The v1 and hybrid paths against fixture trees: legacy hosts with a combined cpu,cpuacct
//! hierarchy, hybrid hosts with and without a writable unified tree, and the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use calyx::cgroup::run::Gap;
use calyx::cgroup::v2::DelegationProblem;
use calyx::cgroup::{
    CgroupError, CgroupMode, CreateOptions, DevNum, InternalProcessPolicy, IoLimit, KillMethod,
    Layout, LimitSpec, RunCgroup,
};

const MIB: u64 = 1 << 20;

/// A fake host: `v1` is a list of (mount dir, super options); `unified` adds a cgroup2 mount.
fn host(v1: &[(&str, &str)], unified: bool) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let mut mountinfo = String::from("25 18 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n");
    let mut proc_cgroup = String::new();
    for (i, (dir, opts)) in v1.iter().enumerate() {
        mountinfo.push_str(&format!(
            "{} 25 0:{} / /sys/fs/cgroup/{dir} rw - cgroup cgroup rw,{opts}\n",
            30 + i,
            30 + i
        ));
        proc_cgroup.push_str(&format!("{}:{opts}:/job\n", i + 1));
        std::fs::create_dir_all(root.join("sys/fs/cgroup").join(dir).join("job")).unwrap();
    }
    if unified {
        mountinfo.push_str("60 25 0:60 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
        proc_cgroup.push_str("0::/\n");
        let u = root.join("sys/fs/cgroup/unified");
        std::fs::create_dir_all(&u).unwrap();
        for f in ["cgroup.procs", "cgroup.subtree_control"] {
            std::fs::write(u.join(f), "").unwrap();
        }
    }
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    std::fs::write(root.join("proc/self/mountinfo"), mountinfo).unwrap();
    std::fs::write(root.join("proc/self/cgroup"), proc_cgroup).unwrap();
    t
}

const LEGACY: &[(&str, &str)] = &[
    ("cpu,cpuacct", "cpu,cpuacct"),
    ("memory", "memory"),
    ("pids", "pids"),
    ("freezer", "freezer"),
    ("blkio", "blkio"),
];

fn opts(limits: &LimitSpec, uid: u32) -> CreateOptions<'_> {
    CreateOptions {
        run_id: "r1",
        limits,
        internal: InternalProcessPolicy::Refuse,
        uid,
        gid: uid,
        page_size: 4096,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

fn child(t: &tempfile::TempDir, hierarchy: &str) -> PathBuf {
    t.path()
        .join("sys/fs/cgroup")
        .join(hierarchy)
        .join("job/calyx-r1")
}

#[test]
fn legacy_limits_land_in_their_hierarchies() {
    let t = host(LEGACY, false);
    let layout = Layout::discover(t.path(), None).unwrap();
    assert_eq!(layout.mode, CgroupMode::Legacy);
    let limits = LimitSpec {
        memory_max: Some(64 * MIB),
        pids_max: Some(32),
        cpu: Some(0.25),
        io: Some(IoLimit {
            device: DevNum { major: 8, minor: 0 },
            bps: 4096,
        }),
        ..LimitSpec::default()
    };
    let cg = RunCgroup::create(&layout, &opts(&limits, 0)).unwrap();
    assert_eq!(cg.v2_dir(), None);
    assert!(cg.gaps().is_empty(), "{:?}", cg.gaps());
    // cpu and cpuacct share one hierarchy, hence one directory.
    assert_eq!(cg.v1_dir("cpu"), cg.v1_dir("cpuacct"));
    assert_eq!(
        read(&child(&t, "memory").join("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(read(&child(&t, "pids").join("pids.max")), "32");
    assert_eq!(
        read(&child(&t, "cpu,cpuacct").join("cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(
        read(&child(&t, "cpu,cpuacct").join("cpu.cfs_quota_us")),
        "25000"
    );
    assert_eq!(
        read(&child(&t, "blkio").join("blkio.throttle.read_bps_device")),
        "8:0 4096"
    );
    // No cgroup.kill: the frozen sweep of the v1 freezer kills.
    std::fs::write(child(&t, "freezer").join("cgroup.procs"), "").unwrap();
    assert_eq!(
        cg.kill(None).unwrap(),
        KillMethod::FreezerSweep { signalled: 0 }
    );
    assert_eq!(read(&child(&t, "freezer").join("freezer.state")), "THAWED");
}

/// (limits, caller uid, the expected refusal).
type RefusalCase = (LimitSpec, u32, fn(&CgroupError) -> bool);

#[test]
fn legacy_refusals_leave_nothing_behind() {
    let t = host(LEGACY, false);
    let layout = Layout::discover(t.path(), None).unwrap();
    let cases: Vec<RefusalCase> = vec![
        // Swap accounting off: no memory.memsw.limit_in_bytes.
        (
            LimitSpec {
                memory_max: Some(MIB),
                swap_max: Some(0),
                ..LimitSpec::default()
            },
            0,
            |e| matches!(e, CgroupError::Unsupported { limit: "swap", .. }),
        ),
        // memory.high has no v1 equivalent.
        (
            LimitSpec {
                memory_high: Some(MIB),
                ..LimitSpec::default()
            },
            0,
            |e| {
                matches!(
                    e,
                    CgroupError::Unsupported {
                        limit: "memory.high",
                        ..
                    }
                )
            },
        ),
        // Unprivileged caller on root-owned v1 hierarchies.
        (LimitSpec::default(), 65534, |e| {
            matches!(e, CgroupError::V1NotWritable { uid: 65534, .. })
        }),
    ];
    for (limits, uid, want) in cases {
        let err = RunCgroup::create(&layout, &opts(&limits, uid)).unwrap_err();
        assert!(want(&err), "{limits:?}: {err}");
        for (h, _) in LEGACY {
            assert!(!child(&t, h).exists(), "{h} left behind after: {err}");
        }
    }
}

#[test]
fn limit_on_an_unmounted_controller_is_refused() {
    let t = host(&[("memory", "memory")], false);
    let layout = Layout::discover(t.path(), None).unwrap();
    let err = RunCgroup::create(
        &layout,
        &opts(
            &LimitSpec {
                pids_max: Some(4),
                ..LimitSpec::default()
            },
            0,
        ),
    )
    .unwrap_err();
    assert!(
        matches!(err, CgroupError::Unsupported { limit: "pids", .. }),
        "{err}"
    );
    // Monitoring-only controllers that are missing are reported, not fatal.
    let cg = RunCgroup::create(&layout, &opts(&LimitSpec::default(), 0)).unwrap();
    assert!(cg.gaps().contains(&Gap::NoMonitor("pids")));
    assert!(cg.gaps().contains(&Gap::NoMonitor("freezer")));
    // No cgroup.kill, no freezer, no pid: killing is impossible and says so.
    assert!(matches!(
        cg.kill(None),
        Err(CgroupError::NoKillMethod { .. })
    ));
}

#[test]
fn hybrid_adds_a_v2_companion_where_writable() {
    let t = host(LEGACY, true);
    let layout = Layout::discover(t.path(), None).unwrap();
    assert_eq!(layout.mode, CgroupMode::Hybrid);
    let cg = RunCgroup::create(&layout, &opts(&LimitSpec::default(), 0)).unwrap();
    assert_eq!(
        cg.v2_dir(),
        Some(t.path().join("sys/fs/cgroup/unified/calyx-r1").as_path())
    );
    // With cgroup.kill in the companion, it is preferred over the v1 sweep.
    std::fs::write(
        t.path().join("sys/fs/cgroup/unified/calyx-r1/cgroup.kill"),
        "",
    )
    .unwrap();
    assert_eq!(cg.kill(None).unwrap(), KillMethod::CgroupKill);
}

#[test]
fn hybrid_without_writable_unified_tree_reports_the_gap() {
    let t = host(LEGACY, true);
    // v1 parents delegated to uid 1000 (chowned), the unified tree still root's.
    for (h, _) in LEGACY {
        std::os::unix::fs::chown(
            t.path().join("sys/fs/cgroup").join(h).join("job"),
            Some(1000),
            Some(1000),
        )
        .unwrap();
    }
    let layout = Layout::discover(t.path(), None).unwrap();
    let cg = RunCgroup::create(&layout, &opts(&LimitSpec::default(), 1000)).unwrap();
    assert_eq!(cg.v2_dir(), None);
    assert_eq!(
        cg.gaps(),
        [Gap::NoV2Companion(DelegationProblem::NotWritable(
            "the cgroup directory"
        ))]
    );
    assert!(cg.gaps()[0].to_string().contains("no cgroup.kill"));
}

/// The runner's split: `prepare` makes nothing on v1 and refuses what `create` refuses (swap
/// accounting off, before any directory exists); `make_v1` then makes the directories with
/// their limits, once; `v1_join` opens each hierarchy's parent, below which `tasks` exists
/// after `make_v1`.
#[test]
fn prepare_plans_v1_and_make_v1_makes_it() {
    let t = host(LEGACY, false);
    let layout = Layout::discover(t.path(), None).unwrap();
    let swap = LimitSpec {
        memory_max: Some(MIB),
        swap_max: Some(0),
        ..LimitSpec::default()
    };
    let err = RunCgroup::prepare(&layout, &opts(&swap, 0)).unwrap_err();
    assert!(
        matches!(err, CgroupError::Unsupported { limit: "swap", .. }),
        "{err}"
    );
    let limits = LimitSpec {
        memory_max: Some(64 * MIB),
        pids_max: Some(32),
        ..LimitSpec::default()
    };
    let cg = RunCgroup::prepare(&layout, &opts(&limits, 0)).unwrap();
    assert!(cg.v1_pending());
    for (h, _) in LEGACY {
        assert!(!child(&t, h).exists(), "{h} made before make_v1");
    }
    // The planned directories are named already (for the run's status line).
    assert_eq!(cg.v1_dir("memory"), Some(child(&t, "memory").as_path()));
    assert!(cg.v1_join().unwrap().is_some());
    cg.make_v1().unwrap();
    assert!(!cg.v1_pending());
    assert_eq!(
        read(&child(&t, "memory").join("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(read(&child(&t, "pids").join("pids.max")), "32");
    // A second call makes nothing twice.
    cg.make_v1().unwrap();
    // A prepared cgroup that never got its v1 directories is removed all the same.
    let other = RunCgroup::prepare(
        &layout,
        &CreateOptions {
            run_id: "r2",
            ..opts(&limits, 0)
        },
    )
    .unwrap();
    other.remove().unwrap();
    // (The fixture's limit files keep `cg`'s directories from an rmdir; cgroupfs has none.)
}
