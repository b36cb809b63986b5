//! Which test binaries run inside the VM, found in cargo's JSON build messages.
//!
//! The selection is a list of selectors over the `calyx` package's test targets: `lib` (the
//! library's unit tests), an integration test's name (`vm_env`), or a name prefix ending in `*`
//! (`runner_*`). Every selector must match at least one target, so a renamed or deleted test
//! fails the tier instead of silently dropping out of it.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::{Result, fail};

/// One test executable to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// `lib` for the library's unit tests, `bin:NAME` for a binary's, else the test's name.
    pub name: String,
    pub path: PathBuf,
}

/// What one `cargo test --no-run --message-format=json` produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Build {
    /// Test executables of the package, in build order.
    pub tests: Vec<TestBinary>,
    /// The package's ordinary binaries (`calyx`, `calyx-run`), at the path baked into the
    /// integration tests as `CARGO_BIN_EXE_*`.
    pub bins: Vec<TestBinary>,
}

/// Collects the package's executables from cargo's JSON lines.
pub fn parse_build(json_lines: &str, package: &str) -> Result<Build> {
    let mut build = Build::default();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let msg: Value = serde_json::from_str(line).map_err(|e| {
            fail(format!(
                "cargo printed a JSON line that does not parse: {e}"
            ))
        })?;
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        // package_id looks like `path+file:///work/x#calyx@0.1.0`; the target name alone is
        // not enough, since xtask's unit tests would otherwise look like ours.
        let id = msg["package_id"].as_str().unwrap_or_default();
        if !id.contains(&format!("#{package}@")) && !id.contains(&format!("/{package}#")) {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let target = &msg["target"];
        let name = target["name"].as_str().unwrap_or_default();
        let kinds: Vec<&str> = target["kind"]
            .as_array()
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_test_build = msg["profile"]["test"].as_bool().unwrap_or(false);
        let entry = |name: String| TestBinary {
            name,
            path: PathBuf::from(exe),
        };
        match (kinds.as_slice(), is_test_build) {
            (["bin"], false) => build.bins.push(entry(name.into())),
            (["bin"], true) => build.tests.push(entry(format!("bin:{name}"))),
            (["test"], true) => build.tests.push(entry(name.into())),
            (k, true) if k.contains(&"lib") => build.tests.push(entry("lib".into())),
            _ => {}
        }
    }
    Ok(build)
}

/// Applies the selectors, keeping the order of the selectors (cheap checks first) and then of
/// the build. Fails naming every selector that matched nothing.
pub fn select(selectors: &[&str], available: &[TestBinary]) -> Result<Vec<TestBinary>> {
    let mut chosen: Vec<TestBinary> = Vec::new();
    let mut unmatched = Vec::new();
    for sel in selectors {
        let matching: Vec<&TestBinary> = available.iter().filter(|t| matches(sel, t)).collect();
        if matching.is_empty() {
            unmatched.push(*sel);
        }
        for t in matching {
            if !chosen.contains(t) {
                chosen.push(t.clone());
            }
        }
    }
    if !unmatched.is_empty() {
        let names: Vec<&str> = available.iter().map(|t| t.name.as_str()).collect();
        return Err(fail(format!(
            "VM test list names targets that do not exist: {} (built: {})",
            unmatched.join(", "),
            names.join(", ")
        )));
    }
    Ok(chosen)
}

fn matches(selector: &str, t: &TestBinary) -> bool {
    match selector.strip_suffix('*') {
        Some(prefix) => t.name.starts_with(prefix),
        None => t.name == selector,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn artifact(pkg: &str, kind: &str, name: &str, test: bool, exe: &str) -> String {
        format!(
            r#"{{"reason":"compiler-artifact","package_id":"path+file:///w#{pkg}@0.1.0","target":{{"kind":["{kind}"],"name":"{name}"}},"profile":{{"test":{test}}},"executable":"{exe}","fresh":true}}"#
        )
    }

    fn tb(name: &str, path: &str) -> TestBinary {
        TestBinary {
            name: name.into(),
            path: path.into(),
        }
    }

    #[test]
    fn finds_tests_and_binaries_of_the_package() {
        let lines = [
            r#"{"reason":"compiler-artifact","package_id":"registry+https://x#libc@0.2.1","target":{"kind":["lib"],"name":"libc"},"profile":{"test":false},"executable":null}"#.to_string(),
            artifact("calyx", "lib", "calyx", true, "/t/deps/calyx-aa"),
            artifact("calyx", "bin", "calyx-run", false, "/t/calyx-run"),
            artifact("calyx", "bin", "calyx-run", true, "/t/deps/calyx_run-bb"),
            artifact("calyx", "test", "vm_env", true, "/t/deps/vm_env-cc"),
            artifact("xtask", "bin", "xtask", true, "/t/deps/xtask-dd"),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
            "   Compiling calyx (plain text is skipped)".to_string(),
        ];
        let build = parse_build(&lines.join("\n"), "calyx").unwrap();
        assert_eq!(build.bins, vec![tb("calyx-run", "/t/calyx-run")]);
        assert_eq!(
            build.tests,
            vec![
                tb("lib", "/t/deps/calyx-aa"),
                tb("bin:calyx-run", "/t/deps/calyx_run-bb"),
                tb("vm_env", "/t/deps/vm_env-cc"),
            ]
        );
    }

    #[test]
    fn selectors_must_each_match() {
        let built = vec![
            tb("lib", "/a"),
            tb("vm_env", "/b"),
            tb("runner_fs", "/c"),
            tb("runner_net", "/d"),
        ];
        let chosen = select(&["vm_env", "lib", "runner_*"], &built).unwrap();
        let names: Vec<&str> = chosen.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["vm_env", "lib", "runner_fs", "runner_net"]);

        let err = select(&["vm_env", "escape", "cli_*"], &built).unwrap_err();
        assert!(err.0.contains("escape, cli_*"), "{}", err.0);
        // A target named twice runs once.
        assert_eq!(select(&["lib", "l*"], &built).unwrap().len(), 1);
    }
}
