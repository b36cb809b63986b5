//! The only place in calyx with `unsafe`: thin wrappers over raw syscalls.
//!
//! Each wrapper states the invariant its `unsafe` block relies on; callers get safe functions
//! returning `std::io::Result`.
#![allow(unsafe_code)]

pub mod cgroup_sys;
