#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn numbers_and_limits() {
    assert_eq!(parse_u64("memory.current", "4096\n").unwrap(), 4096);
    assert!(parse_u64("memory.current", "x").is_err());
    let cases = [
        ("max\n", Some(None)),
        ("32\n", Some(Some(32))),
        ("9223372036854771712\n", Some(None)),
        ("-1", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_limit("limit", text).ok(), want, "{text}");
    }
}

#[test]
fn flat_keyed_files() {
    let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
    let m = parse_flat_keyed("memory.events", events).unwrap();
    assert_eq!((m["max"], m["oom_kill"]), (12, 1));
    let cpu = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 20\nthrottled_usec 1000\n";
    assert_eq!(
        parse_flat_keyed("cpu.stat", cpu).unwrap()["usage_usec"],
        2_500_000
    );
    let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
    assert_eq!(
        parse_flat_keyed("memory.oom_control", oom).unwrap()["oom_kill"],
        3
    );
    assert_eq!(
        parse_flat_keyed("pids.events", "max 7\n").unwrap()["max"],
        7
    );
    assert!(parse_flat_keyed("x", "novalue\n").is_err());
    assert!(parse_flat_keyed("x", "k notanumber\n").is_err());
}

#[test]
fn io_stat_table() {
    let text = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=2 rios=3 wios=4\n";
    let m = parse_io_stat(text).unwrap();
    assert_eq!(
        m["254:0"],
        IoCounters {
            rbytes: 4096,
            wbytes: 8192,
            rios: 1,
            wios: 2
        }
    );
    assert_eq!(m["8:0"].wios, 4);
    assert!(parse_io_stat("254:0 rbytes\n").is_err());
    assert!(parse_io_stat("").unwrap().is_empty());
}

#[test]
fn blkio_service_bytes() {
    let text = "254:0 Read 1000\n254:0 Write 24\n254:0 Sync 1024\n254:0 Async 0\n254:0 Discard 0\n254:0 Total 1024\n8:0 Read 1\n8:0 Write 2\nTotal 1027\n";
    assert_eq!(parse_blkio_service_bytes(text).unwrap(), (1001, 26));
    assert_eq!(parse_blkio_service_bytes("Total 0\n").unwrap(), (0, 0));
    assert!(parse_blkio_service_bytes("254:0 Read x\n").is_err());
}

#[test]
fn psi_table() {
    let text = "some avg10=12.50 avg60=3.00 avg300=0.10 total=123456\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=99\n";
    let p = parse_psi(text).unwrap();
    assert_eq!(p.some.avg10, 12.5);
    assert_eq!(p.some.total, 123_456);
    assert_eq!(p.full.unwrap().total, 99);
    let only_some = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
    assert!(only_some.full.is_none());
    assert!(parse_psi("full avg10=1.00 avg60=0.00 avg300=0.00 total=1\n").is_err());
    assert!(parse_psi("some avg10=abc avg60=0 avg300=0 total=0\n").is_err());
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn v2_sample_from_fixture_tree() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("calyx-r1");
    write(
        &dir,
        &[
            ("memory.current", "60397977\n"),
            ("memory.max", "67108864\n"),
            ("memory.peak", "62000000\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n"),
            ("pids.current", "31\n"),
            ("pids.max", "32\n"),
            ("pids.events", "max 5\n"),
            (
                "cpu.stat",
                "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
            ),
            (
                "io.stat",
                "254:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n",
            ),
            (
                "memory.pressure",
                "some avg10=4.20 avg60=1.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
        ],
    );
    let src = StatSource::V2 { dir: dir.clone() };
    let s = src.read().unwrap();
    assert_eq!(s.memory_limit, Some(67_108_864));
    assert!((s.metric(HaltMetric::MemoryPercent).unwrap() - 90.0).abs() < 0.01);
    // The fixture's pids.events records 5 refused forks: the limit was reached.
    assert_eq!(s.metric(HaltMetric::PidsPercent), Some(100.0));
    assert_eq!(s.metric(HaltMetric::CpuSeconds), Some(1.5));
    assert_eq!(s.metric(HaltMetric::MemoryPressureSomeAvg10), Some(4.2));
    assert_eq!(s.metric(HaltMetric::OutputBytes), None);
    assert_eq!(
        (s.io_read_bytes, s.io_write_bytes, s.pids_max_events),
        (Some(10), Some(20), Some(5))
    );
    assert_eq!(src.event_files().len(), 3);
    assert_eq!(src.pressure_file(), Some(dir.join("memory.pressure")));
    // Inactive file cache is reclaimable: not counted against the limit.
    std::fs::write(
        dir.join("memory.stat"),
        "anon 1000\nfile 50000000\ninactive_file 26843546\nactive_file 100\n",
    )
    .unwrap();
    let s = src.read().unwrap();
    assert_eq!(s.memory_inactive_file, Some(26_843_546));
    assert!((s.metric(HaltMetric::MemoryPercent).unwrap() - 50.0).abs() < 0.01);
    let quick = src.read_metrics(&[HaltMetric::MemoryPercent], &s).unwrap();
    assert_eq!(quick.working_set(), s.working_set());
    std::fs::remove_file(dir.join("memory.stat")).unwrap();
    // No memory limit: no percentage, so memory_percent rules cannot fire on a bogus figure.
    std::fs::write(dir.join("memory.max"), "max\n").unwrap();
    assert_eq!(src.read().unwrap().metric(HaltMetric::MemoryPercent), None);
    // A corrupt file is an error, not a silent zero.
    std::fs::write(dir.join("pids.current"), "lots\n").unwrap();
    assert!(src.read().is_err());
    // The frequent tick reads only the rules' files and takes limits from the full sample.
    let full = Sample {
        memory_limit: Some(67_108_864),
        ..Sample::default()
    };
    let quick = src
        .read_metrics(&[HaltMetric::MemoryPercent, HaltMetric::CpuSeconds], &full)
        .unwrap();
    assert!((quick.metric(HaltMetric::MemoryPercent).unwrap() - 90.0).abs() < 0.01);
    assert_eq!(
        (quick.cpu_usec, quick.pids, quick.memory_peak),
        (Some(1_500_000), None, None)
    );
    assert!(src.read_metrics(&[HaltMetric::PidsPercent], &full).is_err());
}

#[test]
fn v1_sample_from_fixture_tree() {
    let t = tempfile::tempdir().unwrap();
    let (m, p, c, b) = (
        t.path().join("memory"),
        t.path().join("pids"),
        t.path().join("cpuacct"),
        t.path().join("blkio"),
    );
    write(
        &m,
        &[
            ("memory.usage_in_bytes", "1048576\n"),
            ("memory.limit_in_bytes", "2097152\n"),
            ("memory.max_usage_in_bytes", "1500000\n"),
            ("memory.failcnt", "0\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            // v1 counts the hierarchical total_inactive_file, not the local figure.
            (
                "memory.stat",
                "cache 0\nrss 0\ninactive_file 999\ntotal_inactive_file 0\n",
            ),
        ],
    );
    write(
        &p,
        &[
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("pids.events", "max 0\n"),
        ],
    );
    write(&c, &[("cpuacct.usage", "2500000000\n")]);
    write(
        &b,
        &[(
            "blkio.throttle.io_service_bytes_recursive",
            "254:0 Read 7\n254:0 Write 9\nTotal 16\n",
        )],
    );
    let src = StatSource::V1 {
        memory: Some(m),
        pids: Some(p.clone()),
        cpuacct: Some(c),
        blkio: Some(b),
        v2: None,
    };
    let s = src.read().unwrap();
    assert_eq!(s.metric(HaltMetric::MemoryPercent), Some(50.0));
    assert_eq!(s.metric(HaltMetric::PidsPercent), None);
    assert_eq!(s.metric(HaltMetric::CpuSeconds), Some(2.5));
    assert_eq!((s.memory_peak, s.oom_kills), (Some(1_500_000), Some(2)));
    assert_eq!((s.io_read_bytes, s.io_write_bytes), (Some(7), Some(9)));
    assert_eq!(s.memory_pressure_some_avg10, None);
    assert_eq!(src.event_files(), vec![p.join("pids.events")]);
    let quick = src
        .read_metrics(&[HaltMetric::MemoryPercent, HaltMetric::CpuSeconds], &s)
        .unwrap();
    assert_eq!(
        (quick.metric(HaltMetric::MemoryPercent), quick.cpu_usec),
        (Some(50.0), Some(2_500_000))
    );
    assert_eq!(src.pressure_file(), None);
    // The usage reading agrees with the full one on every usage figure, here where v1 keeps
    // a memory peak but no pids.peak (so pids.current stands in).
    let u = src.read_usage().unwrap();
    assert_eq!(
        (u.memory_peak, u.oom_kills, u.cpu_usec, u.pids, u.pids_peak),
        (Some(1_500_000), Some(2), Some(2_500_000), Some(3), None)
    );
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(7), Some(9)));
    assert_eq!(u.memory_bytes, None, "current memory read despite a peak");
}

/// The last reading of a run never generates memory.stat (nor the limits): a memory.stat
/// that cannot be read fails the full sample and not the usage one.
#[test]
fn usage_reading_leaves_memory_stat_alone() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("run");
    write(
        &d,
        &[
            (
                "memory.current",
                "4096
",
            ),
            (
                "memory.peak",
                "8192
",
            ),
            (
                "memory.events",
                "low 0
high 0
max 0
oom 0
oom_kill 1
",
            ),
            (
                "pids.current",
                "1
",
            ),
            (
                "pids.peak",
                "4
",
            ),
            (
                "cpu.stat",
                "usage_usec 1200
user_usec 700
system_usec 500
",
            ),
            (
                "io.stat",
                "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0
",
            ),
        ],
    );
    std::fs::create_dir(d.join("memory.stat")).unwrap();
    let src = StatSource::V2 { dir: d };
    assert!(src.read().is_err());
    let u = src.read_usage().unwrap();
    assert_eq!(
        (
            u.memory_peak,
            u.memory_bytes,
            u.oom_kills,
            u.pids_peak,
            u.pids
        ),
        (Some(8192), None, Some(1), Some(4), None)
    );
    assert_eq!(
        (u.cpu_usec, u.io_read_bytes, u.io_write_bytes),
        (Some(1200), Some(10), Some(20))
    );
}

/// v1 without cpuacct (left out next to a v2 companion): CPU time from the companion.
#[test]
fn v1_cpu_time_falls_back_to_the_companion() {
    let t = tempfile::tempdir().unwrap();
    let (m, v2) = (t.path().join("memory"), t.path().join("unified"));
    write(
        &m,
        &[(
            "memory.max_usage_in_bytes",
            "100
",
        )],
    );
    write(
        &v2,
        &[(
            "cpu.stat",
            "usage_usec 777
user_usec 1
system_usec 2
",
        )],
    );
    let src = StatSource::V1 {
        memory: Some(m),
        pids: None,
        cpuacct: None,
        blkio: None,
        v2: Some(v2),
    };
    assert_eq!(src.read().unwrap().cpu_usec, Some(777));
    assert_eq!(src.read_usage().unwrap().cpu_usec, Some(777));
}

#[test]
fn a_refused_fork_counts_as_the_pids_limit_reached() {
    let s = Sample {
        pids: Some(3),
        pids_limit: Some(32),
        pids_max_events: Some(1),
        ..Sample::default()
    };
    assert_eq!(s.metric(HaltMetric::PidsPercent), Some(100.0));
    let calm = Sample {
        pids_max_events: Some(0),
        ..s.clone()
    };
    assert!((calm.metric(HaltMetric::PidsPercent).unwrap() - 9.375).abs() < 1e-9);
}
