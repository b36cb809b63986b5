//! `calyx-run`: verify a lease and run one command inside the sandbox.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = calyx::cli::run::Args::parse();
    std::process::ExitCode::from(calyx::cli::run::main(args))
}
