//! Booting one kernel under qemu: the serial console streamed to stdout and a log file, a hard
//! time limit, and a probe that says whether KVM works here (nested KVM often does not).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{Result, fail};

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualization, used only after a probe boot succeeded.
    Kvm,
}

/// One boot to make.
pub struct Boot<'a> {
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory: u32,
    pub cmdline: String,
    pub limit: Duration,
    pub log: &'a Path,
    /// Print the console as it comes.
    pub echo: bool,
    /// Stop as soon as a line contains one of these (the probe's answers).
    pub stop_on: &'a [&'a str],
}

/// What a boot printed and how it ended.
pub struct Console {
    pub text: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Boots and collects the console until qemu exits, a stop line shows, or the limit passes.
pub fn run(boot: &Boot<'_>) -> Result<Console> {
    let mut cmd = qemu_command(boot);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start qemu-system-x86_64: {e}")))?;
    let mut log = std::fs::File::create(boot.log)
        .map_err(|e| fail(format!("creating {}: {e}", boot.log.display())))?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<String>();
    // qemu's own errors (stderr) and the guest's serial console (stdout) share one stream,
    // so a KVM failure or a bad option shows in the log where it happened.
    let readers = [
        child.stdout.take().map(|s| spawn_reader(s, tx.clone())),
        child.stderr.take().map(|s| spawn_reader(s, tx.clone())),
    ];
    drop(tx);

    let mut text = String::new();
    let mut timed_out = false;
    loop {
        let left = boot.limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if boot.echo {
                    println!("[{}] {}", boot.label, printable(&line));
                }
                let _ = writeln!(log, "{line}");
                text.push_str(&line);
                text.push('\n');
                if boot.stop_on.iter().any(|s| line.contains(s)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = writeln!(log, "xtask: time limit of {:?} reached", boot.limit);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    stop(&mut child, !timed_out);
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    Ok(Console {
        text,
        timed_out,
        elapsed: start.elapsed(),
    })
}

fn qemu_command(boot: &Boot<'_>) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match boot.accel {
        // One host thread runs both vCPUs in turn. With a thread per vCPU the guest kernel's
        // live code patching (static keys flipped through int3) raced the emulator's view of
        // the changed code on another vCPU: "Oops: int3" in __alloc_pages and a panic in the
        // middle of the cgroup tests. Round-robin makes every patch visible before the other
        // vCPU runs again; the tier is slower for it, and deterministic.
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
    };
    cmd.args(["-smp", "2", "-m", &boot.memory.to_string()])
        // No default devices (VGA, NIC, floppy): the guest needs a serial console and memory.
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initrd)
        .arg("-append")
        .arg(&boot.cmdline);
    cmd
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Lines are split on bytes: the console is not guaranteed to be UTF-8.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    })
}

/// Kills qemu if it is still running and reaps it; with `grace`, a guest that just printed
/// its last line first gets a moment to power off by itself.
fn stop(child: &mut Child, grace: bool) {
    if matches!(child.try_wait(), Ok(None)) {
        let grace = Instant::now() + Duration::from_secs(if grace { 3 } else { 0 });
        while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The line without terminal control sequences, which would otherwise clear the screen.
fn printable(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

/// Whether KVM can run this guest: boots it with `calyx.probe=1`, where the init prints a
/// marker and powers off at once. Nested KVM can fail with "KVM internal error" right away.
pub fn kvm_works(vmlinuz: &Path, initrd: &Path, log: &Path, nonce: &str) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return false;
    }
    let marker = format!("CALYX-VM-PROBE {nonce}");
    let probe = Boot {
        label: "kvm probe",
        vmlinuz,
        initrd,
        accel: Accel::Kvm,
        memory: 2048,
        cmdline: format!("console=ttyS0 quiet panic=-1 calyx.probe=1 calyx.nonce={nonce}"),
        limit: Duration::from_secs(30),
        log,
        echo: false,
        stop_on: &[&marker, "KVM internal error", "Kernel panic"],
    };
    run(&probe).is_ok_and(|c| c.text.lines().any(|l| l.contains(&marker)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_controls() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7lBooting\tok\r"),
            "c[?7lBooting\tok"
        );
    }
}
