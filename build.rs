//! Build script: the built-in profiles (`profiles/*.toml`, the format users read and edit)
//! converted to JSON in `OUT_DIR`, which `calyx::profile` embeds. calyx-run loads its profile
//! at every run, before the sandbox is cloned; the JSON parser is already warm from the lease
//! there, and parsing a profile as JSON takes about 12 us against 45 us as TOML. A profile that
//! is not valid TOML fails the build; the tests check that both forms load to the same
//! profile.

use std::path::Path;

/// The built-in profiles, by file stem (as `profile::BUILTIN_PROFILES` names them).
const PROFILES: &[&str] = &["default", "strict"];

fn main() {
    let out = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from);
    let Some(out) = out else {
        panic!("cargo sets OUT_DIR for build scripts");
    };
    for name in PROFILES {
        let src = Path::new("profiles").join(format!("{name}.toml"));
        println!("cargo:rerun-if-changed={}", src.display());
        let text = match std::fs::read_to_string(&src) {
            Ok(t) => t,
            Err(e) => panic!("reading {}: {e}", src.display()),
        };
        let value: toml::Value = match toml::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("{} is not valid TOML: {e}", src.display()),
        };
        let json = match serde_json::to_string(&value) {
            Ok(j) => j,
            Err(e) => panic!("{} has no JSON form: {e}", src.display()),
        };
        let dst = out.join(format!("profile-{name}.json"));
        if let Err(e) = std::fs::write(&dst, json) {
            panic!("writing {}: {e}", dst.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
