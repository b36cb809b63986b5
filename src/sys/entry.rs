//! A binary's process entry point without Rust's runtime start-up.
//!
//! Before `main`, Rust's runtime finds the main thread's stack guard (glibc reads
//! `/proc/self/maps` for it), maps an alternate signal stack and installs SIGSEGV and SIGBUS
//! handlers that print "has overflowed its stack"; every thread spawned later then maps and,
//! at its end, unmaps an alternate stack of its own. calyx-run starts a process per run and
//! up to six short-lived threads in it: on this project's two-vCPU reference VM that
//! machinery cost 0.16 to 0.24 ms of CPU per run (`perf stat`, three loops of 150 runs), and
//! each unmapping flushes the TLB of the other cores. A binary that opts out with
//! `#![cfg_attr(all(target_env = "gnu", not(test)), no_main)]` and
//! [`c_main!`](crate::c_main) keeps
//! everything else: SIGPIPE ignored (a closed pipe is an EPIPE error, as under the runtime),
//! standard output flushed at the end, a panic reported and turned into exit code 101. A stack
//! overflow still kills the process with SIGSEGV, without the message.
//!
//! glibc only: it hands argc and argv to the standard library through `.init_array`, so
//! `std::env::args` works without the runtime's start-up. Elsewhere, and in the binary's
//! test build (whose `main` is the test harness's), the macro defines an ordinary Rust
//! `main` around the same body.

use std::io::Write;

/// Runs `body` as a process's whole program and returns its exit code; see the module docs.
/// Called by the `main` that [`c_main!`](crate::c_main) defines.
pub fn run(body: fn() -> u8) -> libc::c_int {
    // SAFETY: SIG_IGN is a valid disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A panic has already been reported by the panic hook; the code is the runtime's.
    let code = std::panic::catch_unwind(body).unwrap_or(101);
    let _ = std::io::stdout().flush();
    libc::c_int::from(code)
}

/// Defines the C `main` of a `#![no_main]` binary (glibc, not under test), or an ordinary
/// `main` otherwise, running `$body: fn() -> u8` through [`run`](crate::sys::entry::run).
#[macro_export]
macro_rules! c_main {
    ($body:path) => {
        // SAFETY: `main` is the one symbol of this name in the binary (the crate is
        // `#![no_main]` on glibc, so Rust emits none) and has the signature the C runtime
        // calls it with; argc and argv are not read here (glibc gives them to
        // std::env::args).
        #[cfg(all(target_env = "gnu", not(test)))]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn main(
            _argc: ::core::ffi::c_int,
            _argv: *const *const ::core::ffi::c_char,
        ) -> ::core::ffi::c_int {
            $crate::sys::entry::run($body)
        }

        #[cfg(any(not(target_env = "gnu"), test))]
        fn main() {
            ::std::process::exit($crate::sys::entry::run($body));
        }
    };
}
