//! The guest's whole filesystem, packed as an initramfs: the init script, the test binaries
//! and `calyx`/`calyx-run` at their host paths, the shared libraries every ELF needs, python3
//! with its standard library, dash as /bin/sh, setpriv and unshare, busybox for everything
//! else, and the few /etc files a host has.
//!
//! Host paths are mirrored exactly, symlinks included (Debian's /bin → usr/bin and friends),
//! because integration tests carry absolute host paths baked in at compile time
//! (`CARGO_BIN_EXE_*`, `CARGO_MANIFEST_DIR`). Files are always written through directories
//! that are real on the host, never through a symlink in the staging tree, which could point
//! back into the host.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{self, Result, fail};

/// Real programs the tests run by path; busybox must not shadow them.
pub const HOST_PROGRAMS: &[&str] = &[
    "/bin/sh",
    "/usr/bin/dash",
    "/usr/bin/python3",
    "/usr/bin/setpriv",
    "/usr/bin/unshare",
];
/// Debian packages whose programs all come along: tests pin executables by sha256, which
/// busybox's one-binary applets would make indistinguishable (`true` and `false` alike).
pub const HOST_PACKAGES: &[&str] = &["coreutils"];

/// The Python standard library (ctypes, subprocess, socket… for test payloads).
const PYTHON_LIB: &str = "/usr/lib/python3.11";
/// Parts of the standard library no payload uses; skipping them saves most of its size (the
/// config directory alone holds a 25 MB static libpython). The compiled `__pycache__` files
/// stay (11 MB): without them every Python start inside a sandbox, where the library is
/// read-only, compiles each module it imports from source again. They are valid only next to
/// sources with the host's mtimes, which [`Tree::add`] keeps.
const PYTHON_SKIP: &[&str] = &[
    "config-3.11-x86_64-linux-gnu",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
];
/// Host files that sandbox profiles bind when present.
const ETC_OPTIONAL: &[&str] = &["/etc/localtime"];
/// Repository directories that tests read through `CARGO_MANIFEST_DIR`.
const REPO_DIRS: &[&str] = &["profiles", "policies", "tests"];

/// What goes in besides the system files.
pub struct Contents<'a> {
    pub init: &'a Path,
    pub repo: &'a Path,
    /// Executables copied to their own host path, without debug info.
    pub executables: Vec<&'a Path>,
    /// `name path` lines for the init, in run order.
    pub test_list: String,
}

/// A staging tree mirroring host paths under `root`.
struct Tree {
    root: PathBuf,
    seen: BTreeSet<PathBuf>,
    elves: Vec<PathBuf>,
}

/// Builds the staging tree in `staging` (emptied first) and packs it into `out`.
pub fn build(staging: &Path, out: &Path, contents: &Contents<'_>) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    mkdir(staging)?;
    let mut tree = Tree {
        root: staging.to_path_buf(),
        seen: BTreeSet::new(),
        elves: Vec::new(),
    };
    for dir in ["proc", "sys", "dev", "tmp", "run", "var/tmp", "calyx-vm"] {
        mkdir(&staging.join(dir))?;
    }
    mkdir_mode(&staging.join("root"), 0o700)?;
    copy_mode(contents.init, &staging.join("init"), 0o755)?;
    write(&staging.join("calyx-vm/tests"), &contents.test_list)?;
    write(
        &staging.join("calyx-vm/repo"),
        &format!("{}\n", contents.repo.display()),
    )?;
    write_etc(staging)?;

    for exe in &contents.executables {
        tree.add_stripped(exe)?;
    }
    for dir in REPO_DIRS {
        let host = contents.repo.join(dir);
        if host.is_dir() {
            tree.add_tree(&host, &[])?;
        }
    }
    // Integration tests may write under CARGO_TARGET_TMPDIR, baked in as <target>/tmp.
    if let Some(target) = contents.executables.first().and_then(|e| target_dir(e)) {
        tree.add(&target)?;
        mkdir(&tree.dest_for(&target.join("tmp"))?)?;
    }
    for prog in HOST_PROGRAMS {
        tree.add(Path::new(prog))?;
    }
    for package in HOST_PACKAGES {
        for prog in package_programs(package)? {
            tree.add(&prog)?;
        }
    }
    tree.add_tree(Path::new(PYTHON_LIB), PYTHON_SKIP)?;
    tree.add(Path::new("/usr/bin/busybox"))?;
    for optional in ETC_OPTIONAL {
        if std::fs::symlink_metadata(optional).is_ok() {
            tree.add(Path::new(optional))?;
        }
    }
    tree.add_libraries()?;
    tree.add_busybox_applets()?;
    loader_cache(staging)?;
    pack(staging, out)
}

/// The loader's cache for what the archive holds; profiles bind /etc/ld.so.cache into the
/// sandbox as a system file, and a host without one would not look like a host.
fn loader_cache(staging: &Path) -> Result<()> {
    write(
        &staging.join("etc/ld.so.conf"),
        "/usr/local/lib\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
    )?;
    util::run(Command::new("/sbin/ldconfig").arg("-r").arg(staging))
}

impl Tree {
    /// Where a host path lands: under the staging root, through the host's real directories.
    fn dest_for(&self, host: &Path) -> Result<PathBuf> {
        let parent = host.parent().unwrap_or(Path::new("/"));
        let real_parent = std::fs::canonicalize(parent)
            .map_err(|e| fail(format!("resolving {}: {e}", parent.display())))?;
        let name = host
            .file_name()
            .ok_or_else(|| fail(format!("{} has no file name", host.display())))?;
        Ok(self.root.join(relative(&real_parent)).join(name))
    }

    /// Mirrors one host path: its parent directories first, a symlink as the same symlink plus
    /// what it points to, a directory as an empty directory, a file as a copy.
    fn add(&mut self, host: &Path) -> Result<()> {
        if host == Path::new("/") || !self.seen.insert(host.to_path_buf()) {
            return Ok(());
        }
        if let Some(parent) = host.parent() {
            self.add(parent)?;
        }
        let dest = self.dest_for(host)?;
        let meta = std::fs::symlink_metadata(host)
            .map_err(|e| fail(format!("reading {}: {e}", host.display())))?;
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(host)
                .map_err(|e| fail(format!("reading link {}: {e}", host.display())))?;
            if std::fs::symlink_metadata(&dest).is_err() {
                std::os::unix::fs::symlink(&link, &dest)
                    .map_err(|e| fail(format!("creating link {}: {e}", dest.display())))?;
            }
            // A relative target resolves from the directory that really holds the link.
            let real_parent = dest
                .parent()
                .and_then(|p| p.strip_prefix(&self.root).ok())
                .map(|p| Path::new("/").join(p))
                .unwrap_or_else(|| PathBuf::from("/"));
            let target = lexical_normalize(&real_parent.join(link));
            self.add(&target)
        } else if meta.is_dir() {
            mkdir(&dest)
        } else {
            std::fs::copy(host, &dest).map_err(|e| {
                fail(format!(
                    "copying {} to {}: {e}",
                    host.display(),
                    dest.display()
                ))
            })?;
            // The host's mtime, which cpio keeps: Python trusts a .pyc only when the
            // modification time of its source matches the one recorded inside it.
            let keep_mtime = meta.modified().and_then(|t| {
                std::fs::File::options()
                    .write(true)
                    .open(&dest)?
                    .set_modified(t)
            });
            keep_mtime
                .map_err(|e| fail(format!("setting the mtime of {}: {e}", dest.display())))?;
            if is_elf(host) {
                self.elves.push(host.to_path_buf());
            }
            Ok(())
        }
    }

    /// Copies an executable without its debug info, which is most of a debug build's size.
    fn add_stripped(&mut self, host: &Path) -> Result<()> {
        if let Some(parent) = host.parent() {
            self.add(parent)?;
        }
        self.seen.insert(host.to_path_buf());
        let dest = self.dest_for(host)?;
        util::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(host)
                .arg(&dest),
        )?;
        self.elves.push(host.to_path_buf());
        Ok(())
    }

    /// Mirrors a directory tree, skipping entries with the given names.
    fn add_tree(&mut self, dir: &Path, skip: &[&str]) -> Result<()> {
        self.add(dir)?;
        let entries =
            std::fs::read_dir(dir).map_err(|e| fail(format!("listing {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(format!("listing {}: {e}", dir.display())))?;
            let name = entry.file_name();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                self.add_tree(&path, skip)?;
            } else {
                self.add(&path)?;
            }
        }
        Ok(())
    }

    /// Adds the shared libraries and loader of every ELF added so far. ldd lists the whole
    /// closure, so one pass over the programs is enough.
    fn add_libraries(&mut self) -> Result<()> {
        let programs = std::mem::take(&mut self.elves);
        let mut libs = BTreeSet::new();
        for prog in &programs {
            let out = Command::new("ldd")
                .arg(prog)
                .stderr(Stdio::null())
                .output()
                .map_err(|e| fail(format!("cannot run ldd {}: {e}", prog.display())))?;
            // A static binary makes ldd exit 1; it needs nothing.
            libs.extend(ldd_paths(&String::from_utf8_lossy(&out.stdout)));
        }
        for lib in libs {
            self.add(&lib)?;
        }
        Ok(())
    }

    /// Links each busybox applet where no real program of that name was put.
    fn add_busybox_applets(&mut self) -> Result<()> {
        let out = Command::new("/usr/bin/busybox")
            .arg("--list-full")
            .output()
            .map_err(|e| fail(format!("cannot run busybox --list-full: {e}")))?;
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let host = Path::new("/").join(applet);
            let Some(parent) = host.parent() else {
                continue;
            };
            if !parent.exists() {
                continue;
            }
            self.add(parent)?;
            let dest = self.dest_for(&host)?;
            if std::fs::symlink_metadata(&dest).is_err() {
                std::os::unix::fs::symlink("/usr/bin/busybox", &dest)
                    .map_err(|e| fail(format!("linking {}: {e}", dest.display())))?;
            }
        }
        Ok(())
    }
}

/// The programs a Debian package installs (its files in a bin or sbin directory).
fn package_programs(package: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("dpkg")
        .args(["-L", package])
        .output()
        .map_err(|e| fail(format!("cannot run dpkg -L {package}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("dpkg -L {package} failed: {}", out.status)));
    }
    Ok(programs_in_listing(&String::from_utf8_lossy(&out.stdout)))
}

fn programs_in_listing(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .map(Path::new)
        .filter(|p| {
            p.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "bin" || d == "sbin")
        })
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .map(Path::to_path_buf)
        .collect()
}

/// Paths in ldd output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and the loader
/// line `/lib64/ld-linux-x86-64.so.2 (0x…)`.
fn ldd_paths(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `/a/b/../c` → `/a/c` without touching the filesystem (the caller resolves symlinks).
fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn relative(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// `<target>` from `<target>/<profile>/deps/x` or `<target>/<profile>/x`.
fn target_dir(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .find(|a| a.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn write_etc(root: &Path) -> Result<()> {
    let etc = root.join("etc");
    mkdir(&etc)?;
    let files = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n"),
        ("hostname", "calyx-vm\n"),
        ("hosts", "127.0.0.1 localhost calyx-vm\n::1 localhost\n"),
        // Fixed: a lease bound to this host id must work on every boot.
        ("machine-id", "c41e7c0ffee0000000000000000000a1\n"),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
    ];
    for (name, text) in files {
        write(&etc.join(name), text)?;
    }
    Ok(())
}

/// `find . | cpio -o -H newc`, owned by root whoever builds it. Not compressed: under
/// emulation the kernel inflates slowly (measured here, a 106 MB archive to the tests: 25 s
/// plain, 30 s as lz4, 40 s as zstd; a 139 MB one: 26 s plain, 44 s gzipped), while qemu
/// reads the plain file from the host's page cache.
fn pack(staging: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "set -o pipefail; find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > '{}'",
        out.display()
    );
    util::run(
        Command::new("bash")
            .current_dir(staging)
            .args(["-c", &script]),
    )
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| fail(format!("creating {}: {e}", p.display())))
}

fn mkdir_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    mkdir(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(format!("chmod {}: {e}", p.display())))
}

fn copy_mode(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).map_err(|e| {
        fail(format!(
            "copying {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(format!("chmod {}: {e}", to.display())))
}

fn write(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).map_err(|e| fail(format!("writing {}: {e}", p.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibcap-ng.so.0 => /lib/x86_64-linux-gnu/libcap-ng.so.0 (0x00007f7f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7e)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f7f5a0ca000)\n\
                   \tlibmissing.so => not found\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libcap-ng.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn takes_only_programs_from_a_package_listing() {
        let listing = "/.\n/bin\n/bin/sh\n/usr/share/doc/x/copyright\n/usr/lib/x/bin\n\
                       /usr/sbin/definitely-not-here-calyx\n";
        // Directories and missing files are dropped; /bin/sh exists on every Debian host.
        assert_eq!(programs_in_listing(listing), [PathBuf::from("/bin/sh")]);
    }

    #[test]
    fn normalizes_lexically() {
        let table = [
            ("/usr/lib/../bin/x", "/usr/bin/x"),
            ("/a/./b", "/a/b"),
            ("/../x", "/x"),
        ];
        for (input, want) in table {
            assert_eq!(lexical_normalize(Path::new(input)), Path::new(want));
        }
    }

    #[test]
    fn mirrors_symlinked_paths_through_real_directories() {
        // /bin → usr/bin on this Debian host: /bin/sh must land in usr/bin, with the links.
        if std::fs::symlink_metadata("/bin").is_ok_and(|m| m.file_type().is_symlink()) {
            let dir = std::env::temp_dir().join(format!("calyx-vm-tree-{}", std::process::id()));
            let mut tree = Tree {
                root: dir.clone(),
                seen: BTreeSet::new(),
                elves: Vec::new(),
            };
            mkdir(&dir).unwrap();
            tree.add(Path::new("/bin/sh")).unwrap();
            let bin = std::fs::symlink_metadata(dir.join("bin")).unwrap();
            assert!(bin.file_type().is_symlink());
            let sh = std::fs::canonicalize("/bin/sh").unwrap();
            assert!(dir.join(relative(&sh)).is_file());
            std::fs::remove_dir_all(&dir).unwrap();
        } else {
            eprintln!("HOST VARIANT: /bin is not a symlink here; mirrored layout not exercised");
            assert!(Path::new("/bin/sh").exists());
        }
    }
}
