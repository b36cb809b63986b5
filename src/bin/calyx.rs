//! `calyx`: keys, trust policies and leases. Parse (no syscalls), then run.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    calyx::cli::calyx::run(calyx::cli::calyx::Cli::parse())
}
