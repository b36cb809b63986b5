//! `calyx-run`'s command line without clap for the common case.
//!
//! clap builds its whole command (every argument, the help and the exit-code text) before it
//! matches anything: 50 to 60 µs of every run on this project's two-vCPU VM, where a run
//! starts in about 5 ms. [`quick`] reads the arguments of an ordinary invocation directly and
//! answers only when the line is one clap would read the same way: known long options, each
//! at most once, values that do not start with `-`, plain decimal digits for the interval,
//! then the command after `--` or as the first word that is not an option. Anything else —
//! `--help`, `--version`, a short option, an unknown or repeated option, an empty or
//! hyphen-led value, an argument that is not UTF-8, a missing `--lease` or command — goes to
//! clap, which parses it (or reports the error) exactly as before. A test checks the two
//! agree on every line `quick` accepts.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::run::Args;

impl Args {
    /// The process's arguments: [`quick`] for an ordinary line, clap for the rest (clap
    /// exits with its usage error, code 2, or prints help or the version).
    pub fn from_env() -> Args {
        let argv: Vec<OsString> = std::env::args_os().collect();
        quick(&argv).unwrap_or_else(|| Args::parse_from(argv))
    }
}

/// The long options of calyx-run that take a value (the two flags, `--json` and
/// `--dry-run`, are read by name).
enum Field {
    Lease,
    Trust,
    StateDir,
    AuditLog,
    Result,
    CgroupParent,
    HostKey,
    MonitorInterval,
}

fn field(name: &str) -> Option<Field> {
    Some(match name {
        "lease" => Field::Lease,
        "trust" => Field::Trust,
        "state-dir" => Field::StateDir,
        "audit-log" => Field::AuditLog,
        "result" => Field::Result,
        "cgroup-parent" => Field::CgroupParent,
        "host-key" => Field::HostKey,
        "monitor-interval-ms" => Field::MonitorInterval,
        _ => return None,
    })
}

/// `argv` (program name first) read without clap, or None for clap to read.
pub fn quick(argv: &[OsString]) -> Option<Args> {
    let words: Vec<&str> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_str())
        .collect::<Option<_>>()?;
    let mut lease = None;
    let mut trust = None;
    let mut state_dir = None;
    let mut audit_log = None;
    let mut result = None;
    let mut cgroup_parent = None;
    let mut host_key = None;
    let mut monitor = None;
    let mut json = None;
    let mut dry_run = None;
    let mut i = 0;
    let command_at = loop {
        let word = *words.get(i)?;
        if word == "--" {
            break i + 1;
        }
        let Some(option) = word.strip_prefix("--") else {
            // The first word that is not an option starts the command, as with clap's
            // trailing arguments; a short option is clap's to read.
            if word.starts_with('-') {
                return None;
            }
            break i;
        };
        let (name, inline) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option, None),
        };
        let flag = match name {
            "json" => Some(&mut json),
            "dry-run" => Some(&mut dry_run),
            _ => None,
        };
        if let Some(slot) = flag {
            // A flag takes no value; `--json=…` is clap's to judge.
            if inline.is_some() || slot.replace(true).is_some() {
                return None;
            }
            i += 1;
            continue;
        }
        let f = field(name)?;
        let value = match inline {
            Some(v) => {
                i += 1;
                v
            }
            None => {
                let v = *words.get(i + 1)?;
                i += 2;
                v
            }
        };
        if value.is_empty() || value.starts_with('-') {
            return None;
        }
        let set = |slot: &mut Option<PathBuf>| slot.replace(PathBuf::from(value)).is_none();
        let fresh = match f {
            Field::Lease => set(&mut lease),
            Field::Trust => set(&mut trust),
            Field::StateDir => set(&mut state_dir),
            Field::AuditLog => set(&mut audit_log),
            Field::Result => set(&mut result),
            Field::HostKey => set(&mut host_key),
            Field::CgroupParent => cgroup_parent.replace(value.to_owned()).is_none(),
            Field::MonitorInterval => {
                if !value.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                monitor.replace(value.parse::<u64>().ok()?).is_none()
            }
        };
        if !fresh {
            return None;
        }
    };
    let command: Vec<String> = words
        .get(command_at..)?
        .iter()
        .map(|w| (*w).to_owned())
        .collect();
    if command.is_empty() {
        return None;
    }
    Some(Args {
        lease: lease?,
        trust,
        state_dir,
        audit_log,
        json: json.unwrap_or(false),
        result,
        dry_run: dry_run.unwrap_or(false),
        cgroup_parent,
        host_key,
        monitor_interval_ms: monitor.unwrap_or(1000),
        command,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn line(words: &[&str]) -> Vec<OsString> {
        std::iter::once("calyx-run")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn an_ordinary_line_is_read_without_clap() {
        let argv = line(&[
            "--lease",
            "l.json",
            "--trust=t.toml",
            "--json",
            "--monitor-interval-ms",
            "0",
            "--",
            "/bin/sh",
            "-c",
            "--json",
        ]);
        let a = quick(&argv).expect("read");
        assert_eq!(a, Args::try_parse_from(&argv).unwrap());
        assert_eq!(a.command, ["/bin/sh", "-c", "--json"]);
        assert!(a.json && a.monitor_interval_ms == 0);
        // The command may also start at the first word that is not an option.
        let argv = line(&["--lease", "l", "/usr/bin/env", "-i", "--lease", "x"]);
        assert_eq!(
            quick(&argv).unwrap().command,
            ["/usr/bin/env", "-i", "--lease", "x"]
        );
    }

    #[test]
    fn what_it_does_not_read_is_left_to_clap() {
        for words in [
            &["--help"][..],
            &["--version"],
            &["-h"],
            &["--lease", "l"],
            &["--lease", "l", "--"],
            &["--", "/bin/true"],
            &["--lease", "l", "--lease", "m", "--", "/bin/true"],
            &["--lease", "-l", "--", "/bin/true"],
            &["--lease", "", "--", "/bin/true"],
            &["--lease", "l", "--json", "--json", "--", "/bin/true"],
            &["--lease", "l", "--json=yes", "--", "/bin/true"],
            &[
                "--lease",
                "l",
                "--monitor-interval-ms",
                "+5",
                "--",
                "/bin/true",
            ],
            &[
                "--lease",
                "l",
                "--monitor-interval-ms",
                "99999999999999999999",
                "x",
            ],
            &["--lease", "l", "--leas", "x", "--", "/bin/true"],
            &["--lease", "l", "-x", "/bin/true"],
            &["--lease"],
        ] {
            assert!(quick(&line(words)).is_none(), "{words:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let mut argv = line(&["--lease", "l", "--"]);
        argv.push(OsString::from_vec(vec![0xff]));
        assert!(quick(&argv).is_none());
    }

    /// Every line built from these words, up to four of them after `--lease l`: whatever
    /// `quick` reads, clap reads the same.
    #[test]
    fn whatever_it_reads_clap_reads_the_same() {
        let pool = [
            "--",
            "--json",
            "--dry-run",
            "--trust",
            "t",
            "--state-dir=s",
            "--result",
            "-",
            "--cgroup-parent",
            "/c",
            "--monitor-interval-ms",
            "7",
            "/bin/true",
            "-c",
            "",
            "--host-key=",
            "--audit-log",
            "--lease",
        ];
        let mut read = 0;
        let mut stack: Vec<Vec<&str>> = vec![vec![]];
        while let Some(tail) = stack.pop() {
            let mut words = vec!["--lease", "l"];
            words.extend(&tail);
            let argv = line(&words);
            if let Some(a) = quick(&argv) {
                read += 1;
                let clap = Args::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("{words:?}: quick read it, clap says {e}"));
                assert_eq!(a, clap, "{words:?}");
            }
            if tail.len() < 4 {
                for w in pool {
                    let mut next = tail.clone();
                    next.push(w);
                    stack.push(next);
                }
            }
        }
        assert!(read > 10_000, "only {read} lines read");
    }
}
