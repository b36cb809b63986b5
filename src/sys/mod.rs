//! The only module allowed to contain `unsafe`: thin wrappers around raw system calls.
//!
//! Every `unsafe` block states, in a `// SAFETY:` comment, the invariant that makes it sound.
//! Callers outside `sys` get safe functions returning `std::io::Result`.
#![allow(unsafe_code)]

pub mod proc_ctl;
