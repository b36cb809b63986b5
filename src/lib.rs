//! calyx: run a command under a signed, expiring, two-key lease inside every Linux isolation
//! layer, with live resource policing and a tamper-evident audit trail.
//!
//! # Threat model
//!
//! The payload may be hostile. It must not read or write outside its lease's grants, reach the
//! network, gain privileges, see or signal host processes, or outlive its runner. The lease file
//! is untrusted until its signatures verify against a trust policy the caller owns.
//!
//! # Compatibility
//!
//! Linux 5.13+ with unprivileged user namespaces; Landlock ABI 1 is the floor and newer ABIs
//! are used when present, with the achieved level reported. cgroup v2, hybrid and v1 hosts.
//!
//! # Test strategy
//!
//! Pure logic (verification, planning, rule evaluation) is unit-tested with injected clocks and
//! fixture trees; process-wide mechanisms are tested in forked children or through the real
//! binaries; the escape suite attacks a real sandbox as root and as an unprivileged user.

pub mod artifact;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod exit;
pub mod features;
pub mod isolate;
pub mod lease;
pub mod ledger;
pub mod paths;
pub mod plan;
pub mod profile;
pub mod receipt;
pub mod sentinel;
pub mod stage;
pub mod sys;
pub mod timeline;
