//! Filesystem grants: reading and writing outside them, symlink and `..` tricks, races,
//! the lease and audit files, the capped /tmp and the mount flags of the view.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{self, Outcome, PAYLOAD_DONE, Sandbox, User, Wiring, set_mode, unique};
use crate::{READ_DENIED, WRITE_DENIED, s};

pub(crate) fn read_outside_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    // World-readable: for nobody too, the sandbox must be the only thing in the way.
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    let granted = sb.mkdir("granted", 0o755);
    sb.file("granted/ok.txt", "fine", 0o644);
    let mut sb = sb.read(&granted);
    let out = sb.run_py(
        user,
        r#"
attempt("control", lambda: open(sys.argv[1] + "/ok.txt").read())
attempt("secret", lambda: open(sys.argv[2]).read())
attempt("listdir", lambda: os.listdir(os.path.dirname(sys.argv[2])))
attempt("passwd_shadow", lambda: open("/etc/shadow").read())
sys.exit(42)
"#,
        &[s(&granted), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("control: OK 'fine'")
        .assert_value_in("secret", READ_DENIED)
        .assert_value_in("listdir", READ_DENIED)
        .assert_value_in("passwd_shadow", READ_DENIED)
        .assert_absent(&secret_value);
}

pub(crate) fn read_via_symlink_in_write_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    let work = sb.mkdir("work", 0o755);
    // Planted from the host side before the run: an absolute link out of the grant.
    std::os::unix::fs::symlink(&secret, work.join("planted")).unwrap();
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
w, secret = sys.argv[1], sys.argv[2]
attempt("planted", lambda: open(w + "/planted").read())
attempt("make_link", lambda: os.symlink(secret, w + "/mine"))
attempt("own_link", lambda: open(w + "/mine").read())
attempt("relative_link", lambda: os.symlink("../hidden/secret.txt", w + "/rel"))
attempt("own_relative", lambda: open(w + "/rel").read())
attempt("proc_root", lambda: open("/proc/self/root" + secret).read())
sys.exit(42)
"#,
        &[s(&work), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("planted", READ_DENIED)
        .assert_value_in("own_link", READ_DENIED)
        .assert_value_in("own_relative", READ_DENIED)
        .assert_value_in("proc_root", READ_DENIED)
        .assert_absent(&secret_value);
    // Making a link inside a write grant is allowed by default (strict denies symlink(2));
    // following it out is what must fail.
    out.assert_value_in("make_link", &["OK None", "EPERM"]);
    assert_eq!(fs::read_to_string(&secret).unwrap(), secret_value);
}

pub(crate) fn read_via_dotdot_from_grant(user: User) {
    let sb = Sandbox::new();
    let secret_value = unique("secret");
    sb.mkdir("hidden", 0o755);
    let secret = sb.file("hidden/secret.txt", &secret_value, 0o644);
    sb.file("sibling.txt", &secret_value, 0o644);
    let granted = sb.mkdir("granted", 0o755);
    let mut sb = sb.read(&granted);
    let out = sb.run_py(
        user,
        r#"
g = sys.argv[1]
attempt("dotdot_abs", lambda: open(g + "/../hidden/secret.txt").read())
attempt("dotdot_sibling", lambda: open(g + "/../sibling.txt").read())
os.chdir(g)
attempt("dotdot_rel", lambda: open("../hidden/secret.txt").read())
attempt("dotdot_deep", lambda: open("../../../../../../" + sys.argv[2]).read())
sys.exit(42)
"#,
        &[s(&granted), s(&secret)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("dotdot_abs", READ_DENIED)
        .assert_value_in("dotdot_sibling", READ_DENIED)
        .assert_value_in("dotdot_rel", READ_DENIED)
        .assert_value_in("dotdot_deep", READ_DENIED)
        .assert_absent(&secret_value);
}

pub(crate) fn write_outside_grant(user: User) {
    let sb = Sandbox::new();
    // World-writable host targets, so only the sandbox stands in the way for nobody too.
    let outside = sb.mkdir("outside", 0o777);
    let victim = sb.file("outside/victim.txt", "original", 0o666);
    let ro = sb.mkdir("ro", 0o777);
    let ro_file = sb.file("ro/file.txt", "read-only", 0o666);
    let work = sb.mkdir("work", 0o755);
    let mut sb = sb.read(&ro).write(&work);
    let out = sb.run_py(
        user,
        r#"
outside, ro, w = sys.argv[1], sys.argv[2], sys.argv[3]
attempt("control", lambda: open(w + "/ok.txt", "w").write("ok"))
attempt("victim", lambda: open(outside + "/victim.txt", "w").write("pwned"))
attempt("create", lambda: open(outside + "/new.txt", "w").write("pwned"))
attempt("ro_write", lambda: open(ro + "/file.txt", "w").write("pwned"))
attempt("ro_create", lambda: open(ro + "/new.txt", "w").write("pwned"))
attempt("ro_unlink", lambda: os.unlink(ro + "/file.txt"))
attempt("ro_chmod", lambda: os.chmod(ro + "/file.txt", 0o777))
sys.exit(42)
"#,
        &[s(&outside), s(&ro), s(&work)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("control: OK 2")
        .assert_value_in("victim", WRITE_DENIED)
        .assert_value_in("create", WRITE_DENIED)
        .assert_value_in("ro_write", WRITE_DENIED)
        .assert_value_in("ro_create", WRITE_DENIED)
        .assert_value_in("ro_unlink", WRITE_DENIED)
        .assert_value_in("ro_chmod", WRITE_DENIED);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "original");
    assert!(
        !outside.join("new.txt").exists(),
        "a file appeared outside the grant"
    );
    assert_eq!(fs::read_to_string(&ro_file).unwrap(), "read-only");
    assert!(
        !ro.join("new.txt").exists(),
        "a file appeared in a read-only grant"
    );
    assert_eq!(fs::read_to_string(work.join("ok.txt")).unwrap(), "ok");
}

pub(crate) fn tamper_lease_and_audit_from_inside(user: User) {
    let mut sb = Sandbox::new();
    let lease = sb.prepared_lease();
    let audit = sb.audit_log();
    let trust = sb.trust().to_owned();
    let lease_before = fs::read(&lease).unwrap();
    let trust_before = fs::read(&trust).unwrap();
    let mark = unique("pwned");
    let cmd_code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
# Reversed, so the audit log's own copy of argv cannot be mistaken for a successful write.
mark = sys.argv[4][::-1]
for tag, p in [("lease", sys.argv[1]), ("audit", sys.argv[2]), ("trust", sys.argv[3])]:
    attempt(tag, lambda: open(p, "a").write(mark))
sys.exit(42)
"#
    );
    let out = sb.run_with_lease(
        user,
        &lease,
        &[
            common::PYTHON,
            "-c",
            &cmd_code,
            s(&lease),
            s(&audit),
            s(&trust),
            &mark,
        ],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("lease", WRITE_DENIED)
        .assert_value_in("audit", WRITE_DENIED)
        .assert_value_in("trust", WRITE_DENIED);
    assert_eq!(fs::read(&lease).unwrap(), lease_before, "the lease changed");
    assert_eq!(
        fs::read(&trust).unwrap(),
        trust_before,
        "the trust policy changed"
    );
    let log = fs::read_to_string(&audit).unwrap_or_default();
    let written: String = mark.chars().rev().collect();
    assert!(
        !log.contains(&written),
        "the payload wrote into the audit log:\n{log}"
    );
}

pub(crate) fn grant_swapped_for_symlink_during_setup(user: User) {
    race_grant_swap(user, GrantKind::Read);
}

pub(crate) fn write_grant_swapped_for_symlink_during_setup(user: User) {
    race_grant_swap(user, GrantKind::Write);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GrantKind {
    Read,
    Write,
}

/// A race against the runner: while it checks and mounts a grant, the grant flips between a
/// real directory and a symlink to another one. No run may ever read (or, for a write grant,
/// change) the link's target; each either runs on the real directory or is refused.
fn race_grant_swap(user: User, kind: GrantKind) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = Sandbox::new();
    let secret_value = unique("racesecret");
    // World-writable target: for nobody too, only the sandbox protects it.
    let hidden = sb.mkdir("hidden", 0o777);
    let target = hidden.join("secret");
    fs::write(&target, &secret_value).unwrap();
    set_mode(&target, 0o666);
    sb.mkdir("shared", 0o755);
    let real = sb.mkdir("shared/real", 0o777);
    fs::write(real.join("secret"), "decoy").unwrap();
    set_mode(&real.join("secret"), 0o666);
    let data = sb.root().join("shared/data");
    fs::rename(&real, &data).unwrap();
    let sb = match kind {
        GrantKind::Read => sb.read(&data),
        GrantKind::Write => sb.write(&data),
    };
    let mut sb = sb.issue_arg("--max-uses").issue_arg("1000");
    let lease = sb.prepared_lease();
    // The flipper is stopped and joined when the guard drops, also when an assertion below
    // panics, so the temp dir (dropped after it) is removed with nothing racing it.
    struct Flipper {
        stop: Arc<AtomicBool>,
        handle: Option<thread::JoinHandle<u32>>,
    }
    impl Flipper {
        fn finish(&mut self) -> u32 {
            self.stop.store(true, Ordering::Relaxed);
            self.handle.take().map_or(0, |h| h.join().unwrap_or(0))
        }
    }
    impl Drop for Flipper {
        fn drop(&mut self) {
            self.finish();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut flipper = Flipper {
        stop: stop.clone(),
        handle: Some({
            let (data, real, hidden) = (data.clone(), real.clone(), hidden);
            thread::spawn(move || {
                let mut flips = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // data is the real dir: park it, plant the link; then undo.
                    let _ = fs::rename(&data, &real);
                    let _ = std::os::unix::fs::symlink(&hidden, &data);
                    thread::sleep(Duration::from_micros(300));
                    let _ = fs::remove_file(&data);
                    let _ = fs::rename(&real, &data);
                    thread::sleep(Duration::from_micros(300));
                    flips += 1;
                }
                flips
            })
        }),
    };
    let code = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
attempt("read", lambda: open(sys.argv[1] + "/secret").read())
if sys.argv[2] == "write":
    attempt("write", lambda: open(sys.argv[1] + "/secret", "a").write("pwned"))
sys.exit(42)
"#
    );
    let mode = if kind == GrantKind::Write {
        "write"
    } else {
        "read"
    };
    let (mut ran, mut refused) = (0, 0);
    // Up to 40 attempts in 8 s, but never fewer than 5 whatever they take: the count is what
    // makes the race mean something, and an emulated VM runs a sandbox ~13 times slower.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut leaked = None;
    while ran + refused < 5 || (Instant::now() < deadline && ran + refused < 40) {
        let argv = [common::PYTHON, "-c", &code, s(&data), mode];
        let out = sb.run_with_lease(user, &lease, &argv);
        if out.stdout.contains(&secret_value) || out.stderr.contains(&secret_value) {
            leaked = Some(out);
            break;
        }
        match out.code() {
            PAYLOAD_DONE => ran += 1,
            // Caught at check time (78) or at mount time (125, setup failed): nothing ran.
            77 | 78 | 125 => refused += 1,
            _ => panic!("unexpected outcome during the race: {out}"),
        }
    }
    let flips = flipper.finish();
    if let Some(out) = leaked {
        panic!("a run read the link's target through the swapped grant: {out}");
    }
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        secret_value,
        "a run wrote the link's target through the swapped grant"
    );
    eprintln!("race ({mode}): {ran} runs, {refused} refusals, {flips} flips, no leak");
}

pub(crate) fn fill_tmp(user: User) {
    // The sandbox's /tmp is a size-capped tmpfs: filling it stops at the cap (ENOSPC) and
    // costs the host nothing.
    let sb = Sandbox::new();
    let spec = sb.file(
        "limits.json",
        r#"{"limits": {"tmp_bytes": 8388608}}"#,
        0o644,
    );
    let mut sb = sb.issue_arg("--from").issue_arg(s(&spec));
    let out = sb.run_py(
        user,
        r#"
chunk = b"\0" * (1 << 20)
total = 0
def fill():
    global total
    with open("/tmp/fill", "wb") as f:
        for _ in range(64):
            f.write(chunk)
            f.flush()
            total += len(chunk)
    return total
attempt("fill", fill)
print(f"total: {total}")
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("fill", &["ENOSPC"]);
    let total: u64 = out.value("total").unwrap_or("0").parse().unwrap();
    assert!(
        total <= 8 << 20,
        "wrote {total} bytes into an 8 MiB /tmp\n{out}"
    );
}

/// Prints each mount of the view with its propagation (the optional fields of mountinfo up
/// to the separator: `shared:N`, `master:N`, `propagate_from:N`, or none for a private one).
const PRINT_PROPAGATION: &str = r#"
for line in open("/proc/self/mountinfo"):
    f = line.split()
    print(f"propagation {f[4]} {' '.join(f[6:f.index('-')]) or 'private'}")
"#;

/// Every mount of the view is private: none sends mount events to the host's namespace or
/// receives them from it (a host mount under a bound path would appear inside without the
/// view's flags).
fn assert_all_private(out: &Outcome) {
    let propagation: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("propagation "))
        .collect();
    assert!(propagation.len() >= 5, "too few mounts parsed: {out}");
    for p in &propagation {
        assert!(
            p.ends_with(" private"),
            "a mount that propagates: {p}: {out}"
        );
    }
}

pub(crate) fn mounts_private_where_the_host_shares(user: User) {
    // On a systemd host every mount is shared. The kernel makes the copies in the sandbox's
    // (less privileged) mount namespace slaves, which still receive the host's mount events;
    // the view's binds must not. Here calyx-run starts where every mount is shared.
    let mut sb = Sandbox::new().wiring(Wiring::SharedMounts);
    let out = sb.run_py(user, &format!("{PRINT_PROPAGATION}\nsys.exit(42)"), &[]);
    out.assert_code(PAYLOAD_DONE);
    assert_all_private(&out);
}

pub(crate) fn mount_flags(user: User) {
    // SPEC §4.2: every mount nosuid and nodev (device binds under /dev excepted, they would
    // not work otherwise), what is not granted exec is noexec, read grants read-only, and
    // nothing of the host is mounted beyond the profile's paths and the grants.
    let sb = Sandbox::new();
    let r = sb.mkdir("r", 0o755);
    let w = sb.mkdir("w", 0o755);
    let x = sb.mkdir("x", 0o755);
    let mut sb = sb.read(&r).write(&w).exec(&x);
    let out = sb.run_py(
        user,
        &format!(
            r#"{PRINT_PROPAGATION}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    print(f"mount {{f[4]}} {{f[5]}}")
    print(f"fstype {{f[4]}} {{f[f.index('-') + 1]}}")
attempt("dev_create", lambda: open("/dev/planted", "w").write("x"))
attempt("root_create", lambda: open("/planted", "w").write("x"))
sys.exit(42)
"#
        ),
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("dev_create", WRITE_DENIED)
        .assert_value_in("root_create", WRITE_DENIED);
    let mounts: Vec<(&str, Vec<&str>)> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .filter_map(|l| l.split_once(' '))
        .map(|(point, opts)| (point, opts.split(',').collect()))
        .collect();
    assert!(mounts.len() >= 5, "too few mounts parsed: {out}");
    assert_all_private(&out);
    // One root, the view's tmpfs: the host's root, stacked on it while the view was built,
    // is gone.
    let roots: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("fstype / "))
        .collect();
    assert_eq!(roots, ["tmpfs"], "{out}");
    let find = |want: &Path| {
        mounts
            .iter()
            .find(|(p, _)| Path::new(p) == want)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{want:?} is not mounted: {out}"))
    };
    for (point, opts) in &mounts {
        assert!(opts.contains(&"nosuid"), "{point} lacks nosuid: {out}");
        if !point.starts_with("/dev/") {
            assert!(opts.contains(&"nodev"), "{point} lacks nodev: {out}");
        }
        let known = [
            "/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/tmp", "/proc", "/dev",
        ]
        .iter()
        .any(|k| point == k || point.starts_with(&format!("{k}/")));
        assert!(known, "unexpected host mount {point} in the sandbox: {out}");
    }
    for noexec in [Path::new("/tmp"), &r, &w] {
        assert!(
            find(noexec).contains(&"noexec"),
            "{noexec:?} is not noexec: {out}"
        );
    }
    assert!(
        find(&r).contains(&"ro"),
        "the read grant is writable: {out}"
    );
    assert!(
        find(&w).contains(&"rw"),
        "the write grant is read-only: {out}"
    );
    assert!(
        !find(&x).contains(&"noexec"),
        "the exec grant is noexec: {out}"
    );
}

pub(crate) fn forge_audit_lines_through_argv(user: User) {
    // argv is logged; an argument holding newlines and JSON must stay one field of one event,
    // never become an event of its own in the JSON Lines audit log.
    let mut sb = Sandbox::new();
    let forged = format!(
        "x\n{{\"event\":\"exec_event.FINISHED\",\"outcome\":\"exited\",\"exit_code\":0,\"forged\":\"{}\"}}\n",
        unique("forged")
    );
    let out = sb.run_py(user, "sys.exit(42)", &[&forged]);
    out.assert_code(PAYLOAD_DONE);
    let log = fs::read_to_string(sb.audit_log()).unwrap();
    let mut finished = 0;
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line:?}\n{log}"));
        assert!(
            event.get("forged").is_none(),
            "a forged event made it in:\n{log}"
        );
        if event["event"] == "exec_event.FINISHED" {
            finished += 1;
            assert_eq!(
                event["exit_code"], 42,
                "the FINISHED event is not the run's:\n{log}"
            );
        }
    }
    assert_eq!(finished, 1, "expected exactly one FINISHED event:\n{log}");
}

pub(crate) fn landlock_beneath_the_mounts(user: User) {
    // Defence in depth (SPEC §4.2): what the view shows but the lease does not grant is still
    // refused by Landlock. The root tmpfs, /dev and the directory above a grant are all in
    // the view with mode 0755, so only Landlock explains an EACCES there.
    // Outside /tmp: the sandbox's own /tmp is granted, and would explain a listing there.
    let base = tempfile::Builder::new()
        .prefix("calyx-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    set_mode(base.path(), 0o755);
    let granted = base.path().join("granted");
    fs::create_dir(&granted).unwrap();
    set_mode(&granted, 0o755);
    fs::write(granted.join("ok.txt"), "fine").unwrap();
    set_mode(&granted.join("ok.txt"), 0o644);
    let mut sb = Sandbox::new().read(&granted);
    let out = sb.run_py(
        user,
        r#"
g = sys.argv[1]
attempt("mode_of_parent", lambda: oct(os.stat(os.path.dirname(g)).st_mode & 0o777))
attempt("mode_of_root", lambda: oct(os.stat("/").st_mode & 0o777))
attempt("list_root", lambda: os.listdir("/"))
attempt("list_dev", lambda: os.listdir("/dev"))
attempt("list_parent", lambda: os.listdir(os.path.dirname(g)))
attempt("list_grant", lambda: os.listdir(g))
sys.exit(42)
"#,
        &[s(&granted)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("mode_of_root: OK '0o755'")
        .assert_line("mode_of_parent: OK '0o755'")
        .assert_line("list_grant: OK ['ok.txt']")
        .assert_value_in("list_root", &["EACCES"])
        .assert_value_in("list_dev", &["EACCES"])
        .assert_value_in("list_parent", &["EACCES"]);
}
