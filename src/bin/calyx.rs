//! `calyx`: keys, leases, trust policies, audit, doctor.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(calyx::exit::USAGE)
}
