//! Raw system calls: the only module allowed to use `unsafe`.
//!
//! Every function here is a thin, typed wrapper that returns `io::Result`; callers decide what
//! an errno means. Functions that run in the sandbox's init after `clone` allocate nothing
//! unless noted, so they stay safe to call in a child of a (single-threaded) parent.
#![allow(unsafe_code)]

pub mod beneath;
pub mod cgroup_sys;
pub mod clone;
pub mod entry;
pub mod fs;
pub mod lock;
pub mod net;
pub mod proc;
pub mod proc_ctl;
pub mod signal;

use std::io;

/// `path` as the NUL-terminated string a system call takes; a path holding a NUL byte is
/// EINVAL, as the kernel would say of it.
pub(crate) fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a `-1`-on-error return value into `io::Result`, reading errno at once.
pub(crate) fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for calls returning `c_int`.
pub(crate) fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
