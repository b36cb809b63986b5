//! `calyx doctor [--json]` (SPEC §4.3): probe the host once and say, for every isolation
//! layer, whether it is available to the caller, why not, and the exact remedy.
//!
//! Exit 0 when every layer the profile (default: `default`) requires is available, 125 when
//! one is missing (the code `calyx-run` would refuse with), 78 for an unknown profile. Layers
//! the profile does not require are reported but do not change the exit code.
//!
//! The checks are pure functions of a [`HostFeatures`] probe and the files under a `&Path`
//! root, so the tests run them against fixture trees.

use std::path::Path;

use serde::Serialize;

use crate::cgroup::v2::{DelegationFacts, FileFacts, delegation_verdict};
use crate::cgroup::{CgroupMode, DELEGATE_REMEDY, Layout};
use crate::exit;
use crate::features::{self, HostFeatures, LandlockSupport, SECCOMP_REMEDY, UserNs};
use crate::lease::model::Layer;
use crate::profile::Profile;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Check name (`user_namespaces`, `landlock`, `seccomp`, `cgroup`, `cgroup_delegation`,
    /// `cgroup_kill`, `psi`, …).
    pub name: &'static str,
    /// Usable by the caller.
    pub available: bool,
    /// The profile requires it (a missing one makes the exit code 125).
    pub required: bool,
    /// What was found, or why it is missing.
    pub detail: String,
    /// What to do when missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Effective uid the checks were made for.
    pub uid: u32,
    /// Profile whose requirements decide `ok`.
    pub profile: String,
    /// Every check.
    pub checks: Vec<Check>,
    /// Every required check is available.
    pub ok: bool,
}

fn check(name: &'static str, available: bool, detail: String, remedy: Option<String>) -> Check {
    Check {
        name,
        available,
        required: false,
        detail,
        remedy: remedy.filter(|_| !available),
    }
}

/// User namespaces, Landlock and seccomp from the probe.
pub fn kernel_checks(f: &HostFeatures, min_landlock_abi: u32) -> Vec<Check> {
    let userns = match &f.user_ns {
        UserNs::Available => check("user_namespaces", true, "available".to_owned(), None),
        UserNs::Blocked { reason, remedy } => check(
            "user_namespaces",
            false,
            reason.clone(),
            Some(remedy.clone()),
        ),
    };
    let landlock = match &f.landlock {
        LandlockSupport::Available { abi } if *abi >= min_landlock_abi => {
            check("landlock", true, format!("ABI {abi}"), None)
        }
        LandlockSupport::Available { abi } => check(
            "landlock",
            false,
            format!("ABI {abi}, the profile's floor is {min_landlock_abi}"),
            Some("boot a newer kernel".to_owned()),
        ),
        LandlockSupport::Missing { reason, remedy } => {
            check("landlock", false, reason.clone(), Some(remedy.clone()))
        }
    };
    let seccomp = check(
        "seccomp",
        f.seccomp,
        if f.seccomp {
            "filter mode available".to_owned()
        } else {
            "the kernel has no seccomp filter mode".to_owned()
        },
        Some(SECCOMP_REMEDY.to_owned()),
    );
    vec![userns, landlock, seccomp]
}

/// The cgroup layer as the caller would get it under `root`: mode, delegated/writable
/// controllers, cgroup.kill, freeze, PSI.
pub fn cgroup_checks(root: &Path, uid: u32, gid: u32) -> Vec<Check> {
    let layout = match Layout::discover(root, None) {
        Ok(l) => l,
        Err(e) => {
            return vec![check(
                "cgroup",
                false,
                e.to_string(),
                Some(
                    "mount cgroup2 on /sys/fs/cgroup (or boot with systemd's unified hierarchy)"
                        .to_owned(),
                ),
            )];
        }
    };
    let mut out = Vec::new();
    let mode = match layout.mode {
        CgroupMode::Unified => "v2 (unified)",
        CgroupMode::Hybrid => "hybrid (v1 controllers + cgroup2 without controllers)",
        CgroupMode::Legacy => "v1 (legacy)",
    };
    let v2_ok = layout
        .v2
        .as_deref()
        .map(|d| delegation_verdict(&DelegationFacts::of(d), uid, gid));
    let (delegated, detail, remedy) = match layout.mode {
        CgroupMode::Unified => {
            let dir = layout.v2.as_deref().unwrap_or(Path::new("?"));
            let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            match &v2_ok {
                Some(Ok(())) => (
                    true,
                    format!("{} delegated to uid {uid}: {controllers}", dir.display()),
                    None,
                ),
                Some(Err(p)) => (
                    false,
                    format!("{} is not delegated to uid {uid}: {p}", dir.display()),
                    Some(DELEGATE_REMEDY.to_owned()),
                ),
                None => (false, "no cgroup2 directory".to_owned(), None),
            }
        }
        CgroupMode::Hybrid | CgroupMode::Legacy => {
            let writable: Vec<String> = layout
                .v1
                .iter()
                .filter(|h| FileFacts::of(&h.dir).is_some_and(|f| f.writable_by(uid, gid)))
                .flat_map(|h| h.controllers.clone())
                .collect();
            let all: Vec<String> = layout
                .v1
                .iter()
                .flat_map(|h| h.controllers.clone())
                .collect();
            let need = ["memory", "pids", "cpu"];
            let ok = need.iter().all(|c| writable.iter().any(|w| w == c));
            (
                ok,
                format!(
                    "v1 controllers writable by uid {uid}: {} (of {})",
                    if writable.is_empty() {
                        "none".to_owned()
                    } else {
                        writable.join(",")
                    },
                    all.join(",")
                ),
                Some(
                    "v1 hierarchies are not delegated to unprivileged users: run calyx-run as \
                     root, pass --cgroup-parent naming v1 cgroups chowned to the caller, or \
                     boot the host with the unified hierarchy \
                     (systemd.unified_cgroup_hierarchy=1) and delegate it"
                        .to_owned(),
                ),
            )
        }
    };
    out.push(check("cgroup", true, mode.to_owned(), None));
    out.push(check("cgroup_delegation", delegated, detail, remedy));
    // cgroup.kill, cgroup.freeze and PSI live in the v2 tree (the companion on hybrid hosts).
    let v2_dir = layout.v2.as_deref();
    // The root cgroup has no cgroup.kill or cgroup.freeze; every child has them from Linux 5.14
    // and 5.2, so a root parent is judged by the kernel release.
    let release = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease"))
        .ok()
        .and_then(|r| parse_release(&r));
    let has = |f: &str| {
        let since = match f {
            "cgroup.kill" => Some((5, 14)),
            "cgroup.freeze" => Some((5, 2)),
            _ => None,
        };
        v2_dir.is_some_and(|d| {
            d.join(f).exists()
                || (!d.join("cgroup.type").exists()
                    && since.zip(release).is_some_and(|(s, r)| r >= s))
        })
    };
    let v2_usable = matches!(v2_ok, Some(Ok(())));
    let v2_remedy = Some(format!(
        "needs Linux 5.14+ and a writable cgroup2 tree; {DELEGATE_REMEDY}"
    ));
    out.push(check(
        "cgroup_kill",
        has("cgroup.kill") && v2_usable,
        match (has("cgroup.kill"), v2_usable) {
            (true, true) => "cgroup.kill present".to_owned(),
            (true, false) => "cgroup.kill present, but the cgroup2 tree is not writable: runs are killed through the v1 freezer or pid 1".to_owned(),
            (false, _) => "no cgroup.kill (Linux < 5.14): runs are killed through the v1 freezer or pid 1".to_owned(),
        },
        v2_remedy.clone(),
    ));
    let freezer_v1 = layout.v1_for("freezer").is_some();
    out.push(check(
        "cgroup_freeze",
        (has("cgroup.freeze") && v2_usable) || freezer_v1,
        if has("cgroup.freeze") && v2_usable {
            "cgroup.freeze".to_owned()
        } else if freezer_v1 {
            "v1 freezer".to_owned()
        } else {
            "no cgroup.freeze and no v1 freezer".to_owned()
        },
        v2_remedy,
    ));
    let psi_global = root.join("proc/pressure/memory").exists();
    let psi_cgroup = has("memory.pressure") || has("cgroup.pressure");
    out.push(check(
        "psi",
        psi_global,
        match (psi_global, psi_cgroup) {
            (true, true) => "/proc/pressure and per-cgroup *.pressure".to_owned(),
            (true, false) => "/proc/pressure only (no per-cgroup pressure files here)".to_owned(),
            (false, _) => "no /proc/pressure".to_owned(),
        },
        Some("boot a kernel with CONFIG_PSI=y (add psi=1 to the command line if CONFIG_PSI_DEFAULT_DISABLED)".to_owned()),
    ));
    out
}

/// `6.18.0-1-amd64` → (6, 18).
pub fn parse_release(r: &str) -> Option<(u32, u32)> {
    let mut it = r.trim().split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Marks the checks the profile requires and decides `ok`.
pub fn assemble(uid: u32, profile: &str, required: &[Layer], mut checks: Vec<Check>) -> Report {
    for c in &mut checks {
        c.required = required.iter().any(|l| layer_check(*l) == Some(c.name));
    }
    let ok = checks.iter().all(|c| c.available || !c.required);
    Report {
        uid,
        profile: profile.to_owned(),
        checks,
        ok,
    }
}

/// Which check answers for a layer (None: always there once the process runs, e.g. rlimits).
pub fn layer_check(l: Layer) -> Option<&'static str> {
    match l {
        Layer::UserNs
        | Layer::MountNs
        | Layer::PidNs
        | Layer::NetNs
        | Layer::IpcNs
        | Layer::UtsNs
        | Layer::CgroupNs => Some("user_namespaces"),
        Layer::Landlock => Some("landlock"),
        Layer::Seccomp => Some("seccomp"),
        Layer::Cgroup => Some("cgroup_delegation"),
        _ => None,
    }
}

/// Human rendering: one line per check, remedy under a missing one.
pub fn render(r: &Report) -> String {
    let mut s = format!("calyx doctor (uid {}, profile {})\n", r.uid, r.profile);
    for c in &r.checks {
        let mark = match (c.available, c.required) {
            (true, _) => "ok     ",
            (false, true) => "MISSING",
            (false, false) => "no     ",
        };
        let req = if c.required { " [required]" } else { "" };
        s.push_str(&format!("{mark} {:<18} {}{req}\n", c.name, c.detail));
        if let Some(remedy) = &c.remedy {
            s.push_str(&format!("        remedy: {remedy}\n"));
        }
    }
    s.push_str(if r.ok {
        "every required layer is available\n"
    } else {
        "a required layer is missing: calyx-run would refuse (exit 125)\n"
    });
    s
}

/// `calyx doctor`: returns the exit code.
pub fn run(json: bool, profile: &str) -> u8 {
    let p = match Profile::builtin(profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("calyx: {e}");
            return e.exit_code();
        }
    };
    let uid = crate::sys::cgroup_sys::effective_uid();
    let gid = crate::sys::cgroup_sys::effective_gid();
    let f = features::probe(uid);
    let mut checks = kernel_checks(&f, u32::from(p.landlock_min_abi));
    checks.extend(cgroup_checks(Path::new("/"), uid, gid));
    let report = assemble(uid, &p.name, &p.layers, checks);
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        crate::out!("{}", render(&report));
    }
    if report.ok { 0 } else { exit::SETUP_FAILED }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "doctor_tests.rs"]
mod tests;
