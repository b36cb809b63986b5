//! Project tasks: `cargo xtask ci|demo|schema|bench`.

mod bench;
mod bench_sentinel;
mod ci;
mod demo;
mod util;
mod vm;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci       format check, clippy (warnings are errors) and every test tier
  demo     keys, a two-key lease, verification, a forgery refused, a sandboxed run
  schema   regenerate policies/lease.schema.json from the lease types
  bench    verification throughput and start-up time against bubblewrap, unshare and runc";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "ci" => ci::ci(),
        "demo" => demo::demo(),
        "schema" => schema(),
        "bench" => bench::bench(),
        "vm-test" => vm::vm_test(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn schema() -> util::Result<()> {
    let path = util::repo_root().join("policies/lease.schema.json");
    std::fs::write(&path, calyx::lease::model::lease_schema_json())
        .map_err(|e| util::fail(format!("writing {}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    Ok(())
}
