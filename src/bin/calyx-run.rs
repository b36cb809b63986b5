//! `calyx-run`: verify a lease and run one command inside the sandbox.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(calyx::exit::SETUP_FAILED)
}
