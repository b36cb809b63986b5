//! Tests of the seccomp policy: compilation for every architecture.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::profile::builtin_names;

#[test]
fn every_profile_compiles_for_every_arch_and_network() {
    for name in builtin_names() {
        let profile = Profile::builtin(name).unwrap();
        for arch in SyscallArch::ALL {
            for network in [Network::None, Network::Loopback] {
                let progs = SeccompPolicy::decide(&profile, network, arch)
                    .compile()
                    .unwrap_or_else(|e| panic!("{name} {arch} {network:?}: {e}"));
                assert_eq!(progs.filters().count(), 3);
            }
        }
    }
}
