//! Small process helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A task failed; the message says which step and why.
#[derive(Debug)]
pub struct TaskError(pub String);

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, TaskError>;

/// Builds a `TaskError` from anything printable.
pub fn fail(msg: impl Into<String>) -> TaskError {
    TaskError(msg.into())
}

/// The repository root (the workspace holding xtask).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Renders a command for logs.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    let status = cmd
        .status()
        .map_err(|e| fail(format!("cannot start `{shown}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!("`{shown}` failed: {status}")))
    }
}

/// A target directory every later `cargo` child uses instead of the checkout's `target/`.
static TARGET_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes every later [`cargo`] build into `dir`.
pub fn use_target_dir(dir: PathBuf) {
    let _ = TARGET_DIR.set(dir);
}

/// The target directory cargo builds into: the one set by [`use_target_dir`], else
/// `CARGO_TARGET_DIR`, else the checkout's `target/`.
pub fn target_dir() -> PathBuf {
    TARGET_DIR
        .get()
        .cloned()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Where the binaries of `profile` (`debug`, `release`) built into `target_dir` are.
/// `.cargo/config.toml` builds for the host tuple named explicitly, so cargo puts them under
/// `target_dir/<host tuple>/<profile>`.
pub fn bin_dir(target_dir: &Path, profile: &str) -> Result<PathBuf> {
    Ok(target_dir.join(host_tuple()?).join(profile))
}

/// The host tuple as rustc names it (`host:` in `rustc -vV`).
fn host_tuple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| fail(format!("cannot run `{rustc} -vV`: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| fail(format!("`{rustc} -vV` names no host tuple")))
}

/// `cargo` as the one running this task.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(repo_root());
    if let Some(dir) = TARGET_DIR.get() {
        c.env("CARGO_TARGET_DIR", dir);
    }
    c
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // The effective uid is the owner of /proc/self; reading it needs no unsafe code.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Makes sure each (program, Debian package) pair is present, installing the missing
/// packages with apt-get when root; otherwise names the exact command to run.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(prog, _)| !have(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return Err(fail(format!("missing packages; run as root: {line}")));
    }
    println!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(&missing))?;
    Ok(())
}

/// Prints a section header.
pub fn header(title: &str) {
    println!("\n==> {title}");
}
