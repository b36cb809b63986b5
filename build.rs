//! Build script: the built-in profiles (`profiles/*.toml`, the format users read and edit)
//! and the default halt rules (`policies/halt.toml`) converted to JSON in `OUT_DIR`, which
//! `calyx::profile` and `calyx::sentinel::policy` embed. calyx-run loads both at every run,
//! before the sandbox is cloned; the JSON parser is already warm from the lease there, and
//! parsing a profile as JSON takes about 12 us against 45 us as TOML (the halt rules: about
//! 3 against 16 us). A file that is not valid TOML fails the build; the tests check that both
//! forms load to the same profile and the same rules. It also fingerprints the sources of the
//! precompiled seccomp programs (`seccomp_inputs`).

fn main() {
    let out = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from);
    let Some(out) = out else {
        panic!("cargo sets OUT_DIR for build scripts");
    };
    // Every profile in the directory (`profile::BUILTIN_PROFILES_JSON` names the ones embedded).
    println!("cargo:rerun-if-changed=profiles");
    for src in profile_files("toml") {
        let Some(name) = src.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        to_json(&src, &out.join(format!("profile-{name}.json")));
    }
    println!("cargo:rerun-if-changed=policies/halt.toml");
    to_json(
        std::path::Path::new("policies/halt.toml"),
        &out.join("halt.json"),
    );
    seccomp_inputs();
    pack_relative_relocs();
    println!("cargo:rerun-if-changed=build.rs");
}

/// `profiles/*.EXT`, sorted.
fn profile_files(ext: &str) -> Vec<std::path::PathBuf> {
    let entries = match std::fs::read_dir("profiles") {
        Ok(e) => e,
        Err(e) => panic!("listing profiles/: {e}"),
    };
    let mut files: Vec<std::path::PathBuf> = entries
        .map(|entry| match entry {
            Ok(e) => e.path(),
            Err(e) => panic!("listing profiles/: {e}"),
        })
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// The sources the precompiled seccomp programs (`src/isolate/seccomp_builtin.rs`) are made
/// from besides the syscall sets (`profiles/*.syscalls`): the syscall tables and the code that
/// parses and compiles them.
const SECCOMP_INPUTS: &[&str] = &[
    "src/profile.rs",
    "src/isolate/seccomp.rs",
    "src/isolate/setid.rs",
    "src/isolate/syscalls_x86_64.rs",
    "src/isolate/syscalls_aarch64.rs",
];

/// A fingerprint of the syscall sets and [`SECCOMP_INPUTS`], as `CALYX_SECCOMP_INPUTS`: the precompiled table records the one it was made with, and
/// `isolate::seccomp` uses the table only when the two agree. FNV-1a: it tells versions of
/// the sources apart, nothing more is asked of it.
fn seccomp_inputs() {
    let mut files = profile_files("syscalls");
    for input in SECCOMP_INPUTS {
        println!("cargo:rerun-if-changed={input}");
        files.push(std::path::PathBuf::from(input));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in &files {
        let text = match std::fs::read(file) {
            Ok(t) => t,
            Err(e) => panic!("reading {}: {e}", file.display()),
        };
        feed(file.to_string_lossy().as_bytes());
        feed(&(text.len() as u64).to_le_bytes());
        feed(&text);
    }
    println!("cargo:rustc-env=CALYX_SECCOMP_INPUTS={hash:016x}");
}

/// Packed relative relocations (DT_RELR) for calyx's static-pie binaries: 2 KiB of them
/// instead of 152 KiB, read at every start (8 fewer page faults, about 0.03 ms of CPU per
/// process). A static-pie applies its own relocations through its C library's start-up code,
/// which knows this format from glibc 2.36 on; with an older or unknown glibc they stay
/// unpacked, since a binary whose start-up cannot apply them would not run at all. (A linker
/// older than binutils 2.38 ignores the option.)
fn pack_relative_relocs() {
    let cfg = |k: &str| std::env::var(k).unwrap_or_default();
    let static_glibc = cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu"
        && cfg("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static");
    if !static_glibc {
        return;
    }
    // "glibc 2.36": the C library the binaries link against (builds are for the host).
    let version = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            let (major, minor) = s.trim().strip_prefix("glibc ")?.split_once('.')?;
            let minor = minor.split(|c: char| !c.is_ascii_digit()).next()?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        });
    if version.is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}

/// Writes the TOML file `src` as JSON to `dst`.
fn to_json(src: &std::path::Path, dst: &std::path::Path) {
    let text = match std::fs::read_to_string(src) {
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
    if let Err(e) = std::fs::write(dst, json) {
        panic!("writing {}: {e}", dst.display());
    }
}
