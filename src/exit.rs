//! The exit codes of SPEC §4.5, shared by both binaries.

/// Refused: lease or authorization; nothing ran.
pub const REFUSED: u8 = 77;
/// Refused: bad configuration, profile or trust policy; nothing ran.
pub const BAD_CONFIG: u8 = 78;
/// The wall-clock timeout ended the run.
pub const TIMEOUT: u8 = 124;
/// calyx could not set up the sandbox, or a required layer is missing; nothing ran.
pub const SETUP_FAILED: u8 = 125;
/// The command exists in the sandbox but cannot be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command does not exist inside the sandbox.
pub const NOT_FOUND: u8 = 127;
/// The sentinel halted the run.
pub const HALTED: u8 = 137;
/// Usage error on the command line (clap's convention).
pub const USAGE: u8 = 2;
