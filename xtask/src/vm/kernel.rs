//! Debian cloud kernels for the VM tier: pick the newest package of each series from the apt
//! index at run time, download it once and unpack it into a cache under `target/vm/kernels`.
//!
//! Only the kernel image is used: everything the tier needs (tmpfs, proc, devtmpfs, devpts,
//! cgroup2 with memory/pids/cpu/io, Landlock, seccomp, user namespaces) is built into the cloud
//! kernels, which is checked by booting them (`tests/vm_env.rs`), so no modules are packed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Result, fail};

/// A kernel series the tier boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// What `--kernel` and `CALYX_VM_KERNEL` call it (major.minor).
    pub name: &'static str,
    /// Package name up to the number that grows with each upload.
    prefix: &'static str,
}

/// 6.12 has Landlock ABI 6 and every cgroup v2 controller; 6.1 (ABI 2: no truncate, no network
/// rules) proves the Landlock degradation path on a kernel still in wide use.
pub const SERIES: &[Series] = &[
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
    },
];

const SUFFIX: &str = "-cloud-amd64";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// Looks up a series by its `--kernel` name.
pub fn series_named(name: &str) -> Option<Series> {
    SERIES.iter().copied().find(|s| s.name == name)
}

/// The upload number of a package of this series (`linux-image-6.12.117+deb12-cloud-amd64` →
/// 117), or None for meta-packages, debug symbols, unsigned builds and other series.
fn upload_number(series: &Series, package: &str) -> Option<u32> {
    let rest = package.strip_prefix(series.prefix)?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let tail = &rest[digits..];
    // What may follow the number: nothing but a Debian release tag and the flavour.
    let tail_ok = tail == SUFFIX
        || tail
            .strip_prefix("+deb")
            .and_then(|t| t.strip_suffix(SUFFIX))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if digits == 0 || !tail_ok {
        return None;
    }
    rest[..digits].parse().ok()
}

/// The newest package of the series in `apt-cache search` output (`name - description` lines).
pub fn newest_package(series: &Series, search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| upload_number(series, name).map(|n| (n, name)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, name)| name.to_string())
}

/// Finds the newest kernel of the series, downloading and unpacking it unless cached.
pub fn fetch(series: Series, cache: &Path) -> Result<Kernel> {
    let package = match newest_package(&series, &apt_search()?) {
        Some(p) => p,
        None if util::is_root() => {
            // A fresh machine has no package lists yet.
            util::run(Command::new("apt-get").args(["update", "-qq"]))?;
            newest_package(&series, &apt_search()?).ok_or_else(|| {
                fail(format!(
                    "no {}*{SUFFIX} package in the apt index",
                    series.prefix
                ))
            })?
        }
        None => {
            return Err(fail(format!(
                "no {}*{SUFFIX} package in the apt index; run as root: apt-get update",
                series.prefix
            )));
        }
    };
    let dir = cache.join(&package);
    prune_older(&series, &package, cache);
    if let Some(vmlinuz) = find_vmlinuz(&dir) {
        println!("vm: kernel {} (cached)", package);
        return Ok(Kernel {
            series,
            package,
            vmlinuz,
        });
    }
    println!("vm: downloading {package}");
    let download = cache.join("download");
    std::fs::create_dir_all(&download)
        .map_err(|e| fail(format!("creating {}: {e}", download.display())))?;
    // Running as root, apt would drop to _apt, who cannot write into target/.
    util::run(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(&package),
    )?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| fail(format!("reading {}: {e}", download.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .ok_or_else(|| fail(format!("apt-get download left no {package}_*.deb")))?;
    // Unpack beside the final place and rename, so an interrupted run leaves no half cache.
    let partial = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::rename(&partial, &dir).map_err(|e| {
        fail(format!(
            "renaming {} to {}: {e}",
            partial.display(),
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&deb);
    let vmlinuz =
        find_vmlinuz(&dir).ok_or_else(|| fail(format!("{package} holds no boot/vmlinuz-*")))?;
    Ok(Kernel {
        series,
        package,
        vmlinuz,
    })
}

/// Removes cached kernels of the series that a newer upload replaced, so the cache holds one
/// kernel per series however many security updates pass.
fn prune_older(series: &Series, keep: &str, cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != keep && upload_number(series, &name).is_some() {
            println!("vm: removing superseded {name}");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn apt_search() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-6\\..*-cloud-amd64$"])
        .output()
        .map_err(|e| fail(format!("cannot run apt-cache search: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("apt-cache search failed: {}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64-dbg - Linux 6.1 for x86-64 cloud (debug symbols)
linux-image-6.1.0-58-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12.100+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.118+deb12-cloud-amd64-dbg - debug
linux-image-6.16.3+deb12-cloud-amd64 - Linux 6.16
";

    #[test]
    fn picks_the_newest_upload_numerically() {
        let newest = |name| newest_package(&series_named(name).unwrap(), SEARCH);
        assert_eq!(
            newest("6.12").as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(
            newest("6.1").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(newest_package(&SERIES[0], ""), None);
    }

    #[test]
    fn rejects_packages_of_other_kinds() {
        let s612 = series_named("6.12").unwrap();
        let s61 = series_named("6.1").unwrap();
        let table = [
            (s612, "linux-image-6.12.117+deb12-cloud-amd64", Some(117)),
            (s612, "linux-image-6.12-cloud-amd64", None),
            (s612, "linux-image-6.12.117+deb12-cloud-amd64-dbg", None),
            (s612, "linux-image-6.12.117+debX-cloud-amd64", None),
            (s612, "linux-image-6.1.0-56-cloud-amd64", None),
            (s61, "linux-image-6.1.0-56-cloud-amd64", Some(56)),
            (s61, "linux-image-6.1.0-56-amd64", None),
            (s61, "linux-image-6.12.117+deb12-cloud-amd64", None),
            (s61, "linux-image-6.1.0--cloud-amd64", None),
        ];
        for (series, package, want) in table {
            assert_eq!(upload_number(&series, package), want, "{package}");
        }
    }
}
