//! Reading a VM's console log: which test binaries reported, with what exit code, and whether
//! the boot finished. Pure, so the rules are tested on fixture logs.
//!
//! The guest init prints `CALYX-VM-RESULT <nonce> <name> <code>` once per binary and
//! `CALYX-VM-DONE <nonce>` at the end. The nonce is fresh per boot and known only to the host
//! and the init, so a test printing marker-like text cannot forge a result.

use std::collections::BTreeMap;
use std::fmt;

pub const RESULT: &str = "CALYX-VM-RESULT";
pub const DONE: &str = "CALYX-VM-DONE";
pub const INIT_FAILED: &str = "CALYX-VM-INIT-FAILED";
const PANIC: &str = "Kernel panic";

/// One reason a boot did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A binary ran and exited nonzero (137 also when the in-guest time limit killed it).
    Failed { name: String, code: i32 },
    /// A listed binary never reported: it did not run, or the boot ended first.
    Missing { name: String },
    /// A binary reported more than once: the log cannot be trusted.
    Duplicate { name: String },
    /// A marker for a binary that was not listed.
    Unexpected { name: String },
    /// A marker carrying the nonce whose fields do not parse.
    Malformed { line: String },
    /// The guest init could not set up the environment.
    InitFailed { line: String },
    /// The kernel panicked.
    Panic { line: String },
    /// The init never printed its closing marker.
    NoDone,
    /// The closing marker appeared more than once: the log cannot be trusted.
    DuplicateDone,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Failed { name, code } => write!(f, "{name} exited {code}"),
            Problem::Missing { name } => write!(f, "{name} reported no result"),
            Problem::Duplicate { name } => write!(f, "{name} reported more than one result"),
            Problem::Unexpected { name } => write!(f, "result for unlisted binary {name}"),
            Problem::Malformed { line } => write!(f, "malformed result marker: {line}"),
            Problem::InitFailed { line } => write!(f, "guest init failed: {line}"),
            Problem::Panic { line } => write!(f, "kernel panic: {line}"),
            Problem::NoDone => write!(f, "no {DONE} marker: the run did not finish"),
            Problem::DuplicateDone => write!(f, "more than one {DONE} marker"),
        }
    }
}

/// Judges a whole console log. `expected` is the list of binaries the init was given, in
/// order; an empty answer means the boot passed.
pub fn judge(log: &str, nonce: &str, expected: &[String]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut results: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    let mut done = 0usize;
    for raw in log.lines() {
        // Serial lines end in \r and may carry terminal escapes before the marker.
        let line = raw.trim_end_matches('\r');
        if line.contains(PANIC) {
            problems.push(Problem::Panic { line: line.into() });
        }
        if let Some(at) = line.find(INIT_FAILED) {
            problems.push(Problem::InitFailed {
                line: line[at..].into(),
            });
        }
        if let Some(fields) = marker_fields(line, RESULT, nonce) {
            match fields.as_slice() {
                [name, code] => match code.parse::<i32>() {
                    Ok(code) => results.entry(name).or_default().push(code),
                    Err(_) => problems.push(Problem::Malformed { line: line.into() }),
                },
                _ => problems.push(Problem::Malformed { line: line.into() }),
            }
        }
        if marker_fields(line, DONE, nonce).is_some_and(|f| f.is_empty()) {
            done += 1;
        }
    }
    for name in expected {
        match results.get(name.as_str()).map(Vec::as_slice) {
            None | Some([]) => problems.push(Problem::Missing { name: name.clone() }),
            Some([0]) => {}
            Some([code]) => problems.push(Problem::Failed {
                name: name.clone(),
                code: *code,
            }),
            Some(_) => problems.push(Problem::Duplicate { name: name.clone() }),
        }
    }
    for name in results.keys() {
        if !expected.iter().any(|e| e == name) {
            problems.push(Problem::Unexpected {
                name: (*name).into(),
            });
        }
    }
    match done {
        0 => problems.push(Problem::NoDone),
        1 => {}
        _ => problems.push(Problem::DuplicateDone),
    }
    problems
}

/// The fields after `<marker> <nonce>` if the line holds that marker with this boot's nonce.
fn marker_fields<'a>(line: &'a str, marker: &str, nonce: &str) -> Option<Vec<&'a str>> {
    let at = line.find(marker)?;
    let mut words = line[at + marker.len()..].split_whitespace();
    if words.next()? != nonce {
        return None;
    }
    Some(words.collect())
}

/// The exit codes reported, for the summary (binaries in reporting order).
pub fn reported(log: &str, nonce: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| marker_fields(l.trim_end_matches('\r'), RESULT, nonce))
        .filter_map(|f| match f.as_slice() {
            [name, code] => Some(((*name).to_string(), (*code).to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NONCE: &str = "5f1e";

    fn expected() -> Vec<String> {
        vec!["lib".into(), "vm_env".into()]
    }

    fn log(body: &str) -> String {
        format!("\u{1b}c\u{1b}[?7lBooting\r\n{body}")
    }

    #[test]
    fn judges_fixture_logs() {
        let table: &[(&str, &str, Vec<Problem>)] = &[
            (
                "all pass",
                "CALYX-VM-RESULT 5f1e lib 0\r\nCALYX-VM-RESULT 5f1e vm_env 0\r\nCALYX-VM-DONE 5f1e\r\n",
                vec![],
            ),
            (
                "nonzero result",
                "CALYX-VM-RESULT 5f1e lib 0\nCALYX-VM-RESULT 5f1e vm_env 101\nCALYX-VM-DONE 5f1e\n",
                vec![Problem::Failed {
                    name: "vm_env".into(),
                    code: 101,
                }],
            ),
            (
                "missing marker",
                "CALYX-VM-RESULT 5f1e lib 0\nCALYX-VM-DONE 5f1e\n",
                vec![Problem::Missing {
                    name: "vm_env".into(),
                }],
            ),
            (
                "duplicated marker",
                "CALYX-VM-RESULT 5f1e lib 0\nCALYX-VM-RESULT 5f1e lib 0\n\
                 CALYX-VM-RESULT 5f1e vm_env 0\nCALYX-VM-DONE 5f1e\n",
                vec![Problem::Duplicate { name: "lib".into() }],
            ),
            (
                "kernel panic before anything ran",
                "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
                vec![
                    Problem::Panic {
                        line: "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"
                            .into(),
                    },
                    Problem::Missing { name: "lib".into() },
                    Problem::Missing {
                        name: "vm_env".into(),
                    },
                    Problem::NoDone,
                ],
            ),
            (
                "no done marker",
                "CALYX-VM-RESULT 5f1e lib 0\nCALYX-VM-RESULT 5f1e vm_env 0\n",
                vec![Problem::NoDone],
            ),
            (
                "forged markers without the nonce count for nothing",
                "CALYX-VM-RESULT 0000 lib 0\nCALYX-VM-RESULT 0000 vm_env 0\nCALYX-VM-DONE 0000\n",
                vec![
                    Problem::Missing { name: "lib".into() },
                    Problem::Missing {
                        name: "vm_env".into(),
                    },
                    Problem::NoDone,
                ],
            ),
            (
                "unlisted binary and malformed code",
                "CALYX-VM-RESULT 5f1e lib zero\nCALYX-VM-RESULT 5f1e vm_env 0\n\
                 CALYX-VM-RESULT 5f1e extra 0\nCALYX-VM-DONE 5f1e\n",
                vec![
                    Problem::Malformed {
                        line: "CALYX-VM-RESULT 5f1e lib zero".into(),
                    },
                    Problem::Missing { name: "lib".into() },
                    Problem::Unexpected {
                        name: "extra".into(),
                    },
                ],
            ),
            (
                "init failure",
                "CALYX-VM-INIT-FAILED: mount cgroup2\n",
                vec![
                    Problem::InitFailed {
                        line: "CALYX-VM-INIT-FAILED: mount cgroup2".into(),
                    },
                    Problem::Missing { name: "lib".into() },
                    Problem::Missing {
                        name: "vm_env".into(),
                    },
                    Problem::NoDone,
                ],
            ),
            (
                "marker after test output on the same line",
                "test result: ok. 3 passedCALYX-VM-RESULT 5f1e lib 0\n\
                 CALYX-VM-RESULT 5f1e vm_env 0\nCALYX-VM-DONE 5f1e\n",
                vec![],
            ),
        ];
        for (what, body, want) in table {
            assert_eq!(&judge(&log(body), NONCE, &expected()), want, "{what}");
        }
    }

    #[test]
    fn two_done_markers_are_a_problem() {
        let body = "CALYX-VM-RESULT 5f1e lib 0\nCALYX-VM-RESULT 5f1e vm_env 0\n\
                    CALYX-VM-DONE 5f1e\nCALYX-VM-DONE 5f1e\n";
        assert_eq!(
            judge(body, NONCE, &expected()),
            vec![Problem::DuplicateDone]
        );
    }

    #[test]
    fn lists_reported_codes() {
        let body = "CALYX-VM-RESULT 5f1e lib 0\r\nCALYX-VM-RESULT 5f1e vm_env 3\r\n";
        assert_eq!(
            reported(body, NONCE),
            vec![("lib".into(), "0".into()), ("vm_env".into(), "3".into())]
        );
    }
}
