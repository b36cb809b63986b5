//! Adapter between the run plan and the confinement mechanisms of `crate::isolate`
//! (capabilities, rlimits, no_new_privs, Landlock, seccomp): everything is prepared in the
//! parent before the clone; init and the payload child only apply it.

use crate::isolate::caps;
use crate::isolate::landlock::{self as ll, AccessClass, LandlockPlan as IsoLandlockPlan};
use crate::isolate::rlimit::{self, Resource};
use crate::isolate::seccomp::{self, SeccompProgram};
use crate::plan::Plan;
use crate::profile::Profile;
use crate::stage::channel::{LandlockLevel, Step};

/// Why confinement could not be prepared in the parent.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The seccomp program did not build.
    #[error("building the seccomp program of profile {profile}: {source}")]
    Seccomp {
        /// Profile name.
        profile: String,
        /// Cause.
        source: seccomp::SeccompError,
    },
}

/// Everything init and the payload child apply, precomputed.
pub struct Confinement {
    landlock: IsoLandlockPlan,
    rlimits: Vec<(Resource, u64)>,
    seccomp: SeccompProgram,
}

impl Confinement {
    /// Builds the Landlock plan and the seccomp BPF (allocating: parent only).
    pub fn prepare(plan: &Plan, profile: &Profile) -> Result<Confinement, PrepareError> {
        let mut landlock = IsoLandlockPlan {
            rules: Vec::new(),
            deny_tcp: plan.landlock.deny_tcp,
            min_abi: u8::try_from(plan.landlock.min_abi).unwrap_or(u8::MAX),
        };
        for (path, r) in &plan.landlock.rules {
            let class = match (r.write, r.exec) {
                (false, false) => AccessClass::Read,
                (false, true) => AccessClass::ReadExec,
                (true, false) => AccessClass::ReadWrite,
                (true, true) => AccessClass::ReadWriteExec,
            };
            landlock.grant(path.clone(), class);
        }
        let seccomp = seccomp::build_program(profile, plan.network).map_err(|source| {
            PrepareError::Seccomp {
                profile: profile.name.clone(),
                source,
            }
        })?;
        Ok(Confinement {
            landlock,
            rlimits: profile.rlimits.clone(),
            seccomp,
        })
    }

    /// Adds rlimits that stand in for cgroup limits the host cannot enforce (a lower existing
    /// value of the same resource is kept).
    pub fn add_fallback_rlimits(&mut self, extra: &[(Resource, u64)]) {
        for &(r, v) in extra {
            match self.rlimits.iter_mut().find(|(have, _)| *have == r) {
                Some(slot) => slot.1 = slot.1.min(v),
                None => self.rlimits.push((r, v)),
            }
        }
    }

    /// One-line seccomp status for reports.
    pub fn seccomp_status(&self) -> String {
        self.seccomp.status_line()
    }

    /// The rlimits requested.
    pub fn rlimits_requested(&self) -> String {
        self.rlimits
            .iter()
            .map(|(r, v)| format!("{}={v}", r.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// In init, after the view is built: capabilities, rlimits, Landlock (which sets
    /// no_new_privs), no_new_privs verified. Returns the Landlock level and ABI.
    pub fn apply_in_init(&self) -> Result<(LandlockLevel, u32), (Step, i32)> {
        // Capabilities first: the mounts that needed them are done, and nothing later may gain
        // one back.
        caps::drop_all_capabilities().map_err(|e| (Step::Capabilities, errno(&e)))?;
        // rlimits after the drop: they can then only be lowered, never raised again.
        rlimit::apply_rlimits(&self.rlimits).map_err(|e| (Step::Rlimits, errno(&e)))?;
        // no_new_privs before Landlock: without CAP_SYS_ADMIN the kernel requires it.
        caps::set_no_new_privs().map_err(|e| (Step::NoNewPrivs, errno(&e)))?;
        let status = ll::apply_landlock_on_current_thread(&self.landlock)
            .map_err(|e| (Step::Landlock, errno(&e)))?;
        let level = match status.enforcement {
            ll::Enforcement::Full => LandlockLevel::Full,
            ll::Enforcement::Partial => LandlockLevel::Partial,
        };
        Ok((level, u32::from(status.abi)))
    }

    /// In the payload child right before exec: seccomp, the last step.
    pub fn apply_in_payload(&self) -> Result<(), (Step, i32)> {
        // One program: profile allowlist, always-denied calls, argument and set-id rules.
        seccomp::apply_seccomp_on_current_thread(&self.seccomp)
            .map_err(|_| (Step::Seccomp, libc::EPERM))
    }
}

/// The errno at the bottom of an error chain (EPERM when none carries one).
fn errno(e: &(dyn std::error::Error + 'static)) -> i32 {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.raw_os_error().unwrap_or(libc::EIO);
        }
        src = s.source();
    }
    libc::EPERM
}
