//! The run's stages (SPEC §4.1): the parent on the host, calyx's init as pid 1 of the sandbox,
//! and the channel between them.

pub mod channel;
pub mod confine;
pub mod init;
pub mod parent;

use std::ffi::CString;
use std::ptr;

use crate::isolate::mounts::PreparedView;
use crate::plan::Plan;
use confine::Confinement;
use init::InitContext;

/// Turns the plan into init's ready-to-use context (C strings, pointer arrays, the view), in
/// the parent, before the clone.
pub fn build_init_context(plan: &Plan, confine: Confinement) -> Result<InitContext, String> {
    let c = |s: &str, what: &str| {
        CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
    };
    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|a| c(a, "argument"))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = plan
        .env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}"), "environment entry"))
        .collect::<Result<_, _>>()?;
    let exe = argv
        .first()
        .cloned()
        .ok_or_else(|| "empty command".to_owned())?;
    let exe_sha256 = match &plan.exe_sha256 {
        None => None,
        Some(h) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out).map_err(|e| {
                format!(
                    "commands[{}].sha256 {h:?} is not 64 hex digits: {e}",
                    plan.rule_index
                )
            })?;
            Some(out)
        }
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(ptr::null());
    let view = PreparedView::prepare(&plan.mounts, &plan.cwd).map_err(|e| e.to_string())?;
    Ok(InitContext {
        view,
        network: plan.network,
        exe,
        exe_sha256,
        argv,
        argv_ptrs,
        env,
        env_ptrs,
        confine,
    })
}
