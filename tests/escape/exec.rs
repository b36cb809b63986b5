//! Executing what the lease did not grant, and set-id binaries in both directions.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::{self, PAYLOAD_DONE, Running, Sandbox, User, set_mode};
use crate::s;

pub(crate) fn exec_from_write_only_grant(user: User) {
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let t = work.join("true");
    fs::copy("/usr/bin/true", &t).unwrap();
    set_mode(&t, 0o755);
    let mut sb = sb.write(&work).command(s(&t));
    let out = sb.run_py(
        user,
        r#"
t = sys.argv[1]
attempt("stat", lambda: os.stat(t).st_mode & 0o777)
attempt("exec", lambda: os.execv(t, [t]))
sys.exit(42)
"#,
        &[s(&t)],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("stat: OK 493")
        .assert_value_in("exec", &["EACCES", "EPERM"]);
    // Named as the command itself, it must not run either (true would exit 0).
    let direct = sb.run_as(user, &[s(&t)]);
    assert!(
        matches!(direct.code(), 126 | 77),
        "running {t:?} from a write-only grant: {direct}"
    );
}

pub(crate) fn exec_bypasses(user: User) {
    // Other doors to the same attack as exec_from_write_only_grant: run a binary the payload
    // brought along, from /tmp, through the dynamic loader (mmap instead of execve), or
    // fileless from a memfd.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let t = work.join("true");
    fs::copy("/usr/bin/true", &t).unwrap();
    set_mode(&t, 0o755);
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
import shutil, subprocess
def run(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return "ran" if r.returncode == 0 else f"exit {r.returncode}"
attempt("tmp_copy", lambda: shutil.copy("/usr/bin/true", "/tmp/true"))
attempt("tmp_chmod", lambda: os.chmod("/tmp/true", 0o755))
print(f"tmp_exec: {run(['/tmp/true'])}", flush=True)
ldso = "/lib64/ld-linux-x86-64.so.2"
print(f"ldso_write_grant: {run([ldso, sys.argv[1]])}", flush=True)
print(f"ldso_tmp: {run([ldso, '/tmp/true'])}", flush=True)
def memfd_exec(flags=0, chmod=False):
    fd = os.memfd_create("payload", flags)
    os.write(fd, open("/usr/bin/true", "rb").read())
    if chmod:
        os.fchmod(fd, 0o755)
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(fd, ["true"], {})
        except OSError as e:
            os._exit(100 + e.errno)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    return "ran" if code == 0 else (errno.errorcode.get(code - 100, code) if code > 100 else f"exit {code}")
MFD_NOEXEC_SEAL, MFD_EXEC = 0x8, 0x10
for tag, flags, chmod in [("memfd_exec", 0, False), ("memfd_mfd_exec", MFD_EXEC, False),
                          ("memfd_sealed_chmod", MFD_NOEXEC_SEAL, True)]:
    try:
        print(f"{tag}: {memfd_exec(flags, chmod)}", flush=True)
    except OSError as e:
        print(f"{tag}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
sys.exit(42)
"#,
        &[s(&t)],
    );
    out.assert_code(PAYLOAD_DONE);
    let doors = [
        "tmp_exec",
        "ldso_write_grant",
        "ldso_tmp",
        "memfd_exec",
        "memfd_mfd_exec",
        "memfd_sealed_chmod",
    ];
    for door in doors {
        let got = out.value(door);
        assert!(
            got.is_some_and(|v| v != "ran"),
            "{door}: a binary the payload brought along ran ({got:?}): {out}"
        );
    }
}

fn status_field<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

pub(crate) fn setuid_binary(user: User) {
    let sb = Sandbox::new();
    let dir = sb.mkdir("suid", 0o755);
    let cat = dir.join("cat");
    fs::copy("/usr/bin/cat", &cat).unwrap();
    common::chown(&cat, 0);
    // setuid and setgid root; chmod after chown, which clears the bits.
    set_mode(&cat, 0o6755);
    if user == User::Nobody {
        // Control on the host: the copy really is setuid root there, so what follows
        // measures the sandbox and not a filesystem that ignores the bit.
        let mut argv = user.prefix();
        argv.extend([cat.clone().into_os_string(), "/proc/self/status".into()]);
        let host = Running::start(&argv, &[], None).finish(common::run_deadline());
        assert_eq!(
            status_field(&host.stdout, "Uid:").get(1),
            Some(&"0"),
            "{host}"
        );
    }
    let mut sb = sb
        .read(&dir)
        .exec(&dir)
        .commands(&[&format!("{} /proc/self/status", s(&cat))]);
    let out = sb.run_as(user, &[s(&cat), "/proc/self/status"]);
    out.assert_code(0);
    let uid = status_field(&out.stdout, "Uid:");
    let gid = status_field(&out.stdout, "Gid:");
    assert!(
        uid.len() == 4 && uid.iter().all(|u| *u == uid[0]),
        "uid changed: {uid:?}\n{out}"
    );
    assert!(
        gid.len() == 4 && gid.iter().all(|g| *g == gid[0]),
        "gid changed: {gid:?}\n{out}"
    );
    if user == User::Nobody {
        assert_ne!(uid[1], "0", "nobody became root: {out}");
    }
    for cap in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&out.stdout, cap),
            ["0000000000000000"],
            "{cap} after exec of a setuid binary\n{out}"
        );
    }
}

pub(crate) fn plant_setuid_in_write_grant(user: User) {
    // The write grant is a host directory: a set-id file the payload leaves there is a
    // set-id file on the host, owned by the payload's host uid (root, when root ran calyx).
    // Any host user who can reach the directory would then run it with that uid.
    let sb = Sandbox::new();
    let work = sb.mkdir("work", 0o755);
    let mut sb = sb.write(&work);
    let out = sb.run_py(
        user,
        r#"
import shutil
w = sys.argv[1]
attempt("copy", lambda: shutil.copyfile("/usr/bin/id", w + "/id"))
attempt("chmod_setid", lambda: os.chmod(w + "/id", 0o6755))
attempt("mode", lambda: oct(os.stat(w + "/id").st_mode & 0o7777))
attempt("mkdir_setgid", lambda: os.mkdir(w + "/d", 0o2777))
# Created with the bits directly (no chmod call), and through fchmod on an open fd.
os.umask(0)
def create_setid():
    fd = os.open(w + "/id2", os.O_CREAT | os.O_WRONLY, 0o6755)
    os.write(fd, open("/usr/bin/id", "rb").read())
    os.close(fd)
    return oct(os.stat(w + "/id2").st_mode & 0o7777)
attempt("create_setid", create_setid)
def fchmod_setid():
    fd = os.open(w + "/id3", os.O_CREAT | os.O_WRONLY, 0o755)
    os.write(fd, open("/usr/bin/id", "rb").read())
    os.fchmod(fd, 0o4755)
    os.close(fd)
    return oct(os.stat(w + "/id3").st_mode & 0o7777)
attempt("fchmod_setid", fchmod_setid)
# The kernel reads the mode as 16 bits: high bits must not slip a set-id mode past a filter.
hi = lambda m: ctypes.c_ulong((1 << 32) | m)
attempt("chmod_high_bits", lambda: sysc(90, ctypes.c_char_p((w + "/id").encode()), hi(0o4755)))
attempt("fchmodat_high_bits", lambda: sysc(268, -100, ctypes.c_char_p((w + "/id").encode()), hi(0o4755)))
# File capabilities are the other way to leave a privileged binary: VFS_CAP_REVISION_2 with
# CAP_SETUID (bit 7) permitted and effective.
import struct
cap = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)
attempt("setcap", lambda: os.setxattr(w + "/id", "security.capability", cap))
# A world-writable device node left on the host would be as good as a setuid binary.
import stat
attempt("mknod_block", lambda: os.mknod(w + "/disk", stat.S_IFBLK | 0o666, os.makedev(8, 0)))
attempt("mknod_char", lambda: os.mknod(w + "/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1)))
sys.exit(42)
"#,
        &[s(&work)],
    );
    out.assert_code(PAYLOAD_DONE);
    assert!(
        out.value("copy").is_some_and(|v| v.starts_with("OK")),
        "the control copy into the write grant failed: {out}"
    );
    out.assert_value_in("setcap", &["EPERM", "EACCES", "EROFS", "ENOTSUP", "ENOENT"])
        .assert_value_in("mknod_block", &["EPERM", "EACCES"])
        .assert_value_in("mknod_char", &["EPERM", "EACCES"]);
    for node in ["disk", "mem"] {
        assert!(
            !work.join(node).exists(),
            "a device node {node} appeared on the host: {out}"
        );
    }
    for name in ["id", "id2", "id3", "d"] {
        let Ok(meta) = fs::metadata(work.join(name)) else {
            continue;
        };
        assert!(
            meta.mode() & 0o6000 == 0,
            "the payload left a set-id {name} on the host: mode {:o}, owner uid {}\n{out}",
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
}

fn file_fingerprint(p: &Path) -> (u64, std::time::SystemTime, Vec<u8>) {
    let meta = fs::metadata(p).unwrap();
    let head = fs::read(p).unwrap().into_iter().take(4096).collect();
    (meta.len(), meta.modified().unwrap(), head)
}

pub(crate) fn overwrite_runner_binary(user: User) {
    // CVE-2019-5736 class: reach the runner's binary through /proc/<init>/exe and write it.
    let runner = common::run_bin();
    let python = fs::canonicalize(common::PYTHON).unwrap();
    let before = (file_fingerprint(&runner), file_fingerprint(&python));
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
attempt("init_exe_link", lambda: os.readlink("/proc/1/exe"))
attempt("init_exe_write", lambda: os.close(os.open("/proc/1/exe", os.O_WRONLY)) or "opened")
attempt("init_exe_read", lambda: len(open("/proc/1/exe", "rb").read(64)))
attempt("self_exe_write", lambda: os.close(os.open("/proc/self/exe", os.O_WRONLY)) or "opened")
attempt("python_write", lambda: os.close(os.open(os.path.realpath(sys.executable), os.O_WRONLY)) or "opened")
sys.exit(42)
"#,
        &[],
    );
    let denied = &["EACCES", "EPERM", "ETXTBSY", "EROFS", "ENOENT"];
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("init_exe_write", denied)
        .assert_value_in("init_exe_read", denied)
        .assert_value_in("self_exe_write", denied)
        .assert_value_in("python_write", denied);
    let after = (file_fingerprint(&runner), file_fingerprint(&python));
    assert!(
        before == after,
        "a host binary changed during the run: {out}"
    );
}
