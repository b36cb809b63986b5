//! `calyx-run`: verify a lease and run one command inside the sandbox.
//!
//! Without Rust's runtime start-up on glibc (`calyx::sys::entry`): 0.16 to 0.24 ms of CPU
//! per run.
#![cfg_attr(all(target_env = "gnu", not(test)), no_main)]

calyx::c_main!(run);

fn run() -> u8 {
    // Before any thread: one malloc arena for all of them (-0.17 to -0.28 ms per run).
    calyx::sys::proc::single_malloc_arena();
    let args = calyx::cli::run::Args::from_env();
    calyx::cli::run::main(args)
}
