//! Matching a requested argv against the lease's `commands` allowlist (SPEC §3.4 step 6).
//!
//! argv[0] must be the absolute path written in the rule: a bare name is never resolved
//! through PATH, because the file PATH finds depends on the caller's environment, which the
//! signers did not see. Arguments match exactly, or as a prefix when the rule's last argument
//! is `*` (which then stands for zero or more further arguments).

use std::path::Path;

use thiserror::Error;

use crate::lease::model::CommandRule;

/// Why no rule allowed the argv. The message names the closest rule and the first mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArgvError {
    /// Nothing to run.
    #[error("empty command: give the executable's absolute path after --")]
    Empty,
    /// The lease allows no command at all.
    #[error("the lease allows no commands")]
    NoRules,
    /// argv[0] is not absolute.
    #[error(
        "argv[0] {0:?} is not an absolute path; commands are matched by the absolute path written in the lease (no PATH lookup)"
    )]
    NotAbsolute(String),
    /// argv[0] matches no rule's path.
    #[error("argv[0] {got:?} not allowed: the lease allows {allowed}")]
    UnknownExecutable {
        /// Requested executable.
        got: String,
        /// The rules' paths, comma-separated.
        allowed: String,
    },
    /// Same executable, an argument differs.
    #[error("argv[{index}] {got:?} not allowed by commands[{rule}] (expected {expected:?})")]
    ArgMismatch {
        /// Index in argv (1-based for arguments).
        index: usize,
        /// What was given.
        got: String,
        /// What the rule has there.
        expected: String,
        /// Index of the closest rule.
        rule: usize,
    },
    /// argv is longer than an exact rule.
    #[error(
        "argv[{index}] {got:?} not allowed by commands[{rule}] (it allows {allowed} argument(s) and no more)"
    )]
    TooMany {
        /// First extra index.
        index: usize,
        /// The extra argument.
        got: String,
        /// Number of args the rule allows.
        allowed: usize,
        /// Closest rule.
        rule: usize,
    },
    /// argv is shorter than the rule.
    #[error("argv[{index}] missing: commands[{rule}] requires {expected:?} there")]
    Missing {
        /// First missing index.
        index: usize,
        /// What the rule expects.
        expected: String,
        /// Closest rule.
        rule: usize,
    },
}

/// How far one rule got: the number of leading args that matched, and the failure.
fn match_rule(
    rule_idx: usize,
    rule: &CommandRule,
    args: &[String],
) -> Result<(), (usize, ArgvError)> {
    let (fixed, wildcard) = match rule.args.split_last() {
        Some((last, head)) if last == "*" => (head, true),
        _ => (rule.args.as_slice(), false),
    };
    for (i, want) in fixed.iter().enumerate() {
        match args.get(i) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err((
                    i,
                    ArgvError::ArgMismatch {
                        index: i + 1,
                        got: got.clone(),
                        expected: want.clone(),
                        rule: rule_idx,
                    },
                ));
            }
            None => {
                return Err((
                    i,
                    ArgvError::Missing {
                        index: i + 1,
                        expected: want.clone(),
                        rule: rule_idx,
                    },
                ));
            }
        }
    }
    if !wildcard && args.len() > fixed.len() {
        return Err((
            fixed.len(),
            ArgvError::TooMany {
                index: fixed.len() + 1,
                got: args[fixed.len()].clone(),
                allowed: fixed.len(),
                rule: rule_idx,
            },
        ));
    }
    Ok(())
}

/// Returns the index of the first rule allowing `argv`, or why none does (naming the rule whose
/// arguments matched longest).
pub fn match_argv(rules: &[CommandRule], argv: &[String]) -> Result<usize, ArgvError> {
    let (exe, args) = argv.split_first().ok_or(ArgvError::Empty)?;
    if rules.is_empty() {
        return Err(ArgvError::NoRules);
    }
    if !Path::new(exe).is_absolute() {
        return Err(ArgvError::NotAbsolute(exe.clone()));
    }
    let mut best: Option<(usize, ArgvError)> = None;
    for (i, rule) in rules.iter().enumerate() {
        if rule.path.as_os_str() != exe.as_str() {
            continue;
        }
        match match_rule(i, rule, args) {
            Ok(()) => return Ok(i),
            Err((depth, err)) => {
                if best.as_ref().is_none_or(|(d, _)| depth > *d) {
                    best = Some((depth, err));
                }
            }
        }
    }
    Err(best
        .map(|(_, e)| e)
        .unwrap_or_else(|| ArgvError::UnknownExecutable {
            got: exe.clone(),
            allowed: rules
                .iter()
                .map(|r| r.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rule(path: &str, args: &[&str]) -> CommandRule {
        CommandRule {
            path: path.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            sha256: None,
        }
    }

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn table() {
        let rules = vec![
            rule("/usr/bin/git", &["status"]),
            rule("/usr/bin/git", &["log", "*"]),
            rule("/bin/sh", &["-c", "*"]),
            rule("/bin/echo", &[]),
        ];
        let ok: &[(&[&str], usize)] = &[
            (&["/usr/bin/git", "status"], 0),
            (&["/usr/bin/git", "log"], 1),
            (&["/usr/bin/git", "log", "-n", "3"], 1),
            (&["/bin/sh", "-c", "echo hi"], 2),
            (&["/bin/echo"], 3),
        ];
        for (a, want) in ok {
            assert_eq!(match_argv(&rules, &argv(a)), Ok(*want), "{a:?}");
        }
        let bad: &[(&[&str], &str)] = &[
            (&[], "empty command"),
            (&["git", "status"], "not an absolute path"),
            (
                &["/usr/bin/git", "deploy"],
                "argv[1] \"deploy\" not allowed by commands[0]",
            ),
            (
                &["/usr/bin/git", "status", "-v"],
                "argv[2] \"-v\" not allowed by commands[0]",
            ),
            (
                &["/bin/sh", "-x"],
                "argv[1] \"-x\" not allowed by commands[2]",
            ),
            (&["/bin/sh"], "argv[1] missing: commands[2] requires \"-c\""),
            (
                &["/bin/echo", "hello"],
                "argv[1] \"hello\" not allowed by commands[3]",
            ),
            (&["/usr/bin/curl"], "argv[0] \"/usr/bin/curl\" not allowed"),
        ];
        for (a, want) in bad {
            let msg = match_argv(&rules, &argv(a)).unwrap_err().to_string();
            assert!(msg.contains(want), "{a:?}: {msg}");
        }
    }

    #[test]
    fn closest_rule_is_the_one_that_matched_longest() {
        let rules = vec![rule("/x", &["a", "b", "c"]), rule("/x", &["a", "q", "*"])];
        let msg = match_argv(&rules, &argv(&["/x", "a", "b", "z"]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("argv[3] \"z\" not allowed by commands[0]"),
            "{msg}"
        );
    }

    #[test]
    fn no_rules() {
        assert_eq!(
            match_argv(&[], &argv(&["/bin/true"])),
            Err(ArgvError::NoRules)
        );
    }
}
