//! Where each artifact path of a lease is looked up after the run (pure, table-tested).

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::lease::model::Lease;
use crate::plan::PlanError;

/// Artifacts kept when the lease names no `artifacts.max_bytes`: large enough for build
/// outputs and reports, small enough that one run cannot fill the state directory's disk.
pub const DEFAULT_ARTIFACT_MAX_BYTES: u64 = 256 << 20;

/// One artifact path of the lease and where it is looked up after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactItem {
    /// The path as the lease names it (sandbox path; write grants are bound at the same place
    /// on the host, so it is also the host path).
    pub path: PathBuf,
    /// The host directory it is resolved beneath: the write grant holding it, or the grant's
    /// parent directory when the grant is a single file.
    pub base: PathBuf,
}

/// The artifacts part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactPlan {
    /// Paths to keep, in lease order.
    pub items: Vec<ArtifactItem>,
    /// Total size cap in bytes.
    pub max_bytes: u64,
}

/// Places every artifact path in the write grant that holds it (the deepest one when grants
/// nest). A path outside every write grant is refused (78) rather than silently never kept:
/// the signers asked for something this lease can never produce.
pub fn plan_artifacts(
    lease: &Lease,
    write_grants: &[(PathBuf, bool)],
) -> Result<ArtifactPlan, PlanError> {
    let mut items = Vec::new();
    for path in &lease.artifacts.paths {
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(PlanError::PathUnusable {
                list: "artifacts",
                path: path.clone(),
                why: "it must be absolute, without . or ..",
            });
        }
        let grant = write_grants
            .iter()
            .filter(|(g, dir)| if *dir { path.starts_with(g) } else { path == g })
            .max_by_key(|(g, _)| g.components().count());
        let Some((grant, dir)) = grant else {
            return Err(PlanError::ArtifactOutsideGrants {
                path: path.clone(),
                why: "add the directory to paths.write or name a path inside one",
            });
        };
        let base = if *dir {
            grant.clone()
        } else {
            // A single-file grant (checked to be a file, so it has a parent directory).
            grant.parent().unwrap_or(Path::new("/")).to_owned()
        };
        items.push(ArtifactItem {
            path: path.clone(),
            base,
        });
    }
    Ok(ArtifactPlan {
        items,
        max_bytes: lease
            .artifacts
            .max_bytes
            .unwrap_or(DEFAULT_ARTIFACT_MAX_BYTES),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::exit;

    fn lease(paths: &[&str], max: Option<u64>) -> Lease {
        serde_json::from_value(serde_json::json!({
            "version": 1, "lease_id": "L", "intent_id": "I", "issuer": "i", "subject": "s",
            "issued_at": "2030-01-01T00:00:00Z", "not_before": "2030-01-01T00:00:00Z",
            "expires_at": "2030-01-01T01:00:00Z",
            "commands": [{"path": "/bin/true", "args": []}],
            "artifacts": {"paths": paths, "max_bytes": max},
        }))
        .unwrap()
    }

    #[test]
    fn artifact_paths_map_to_the_deepest_write_grant_or_are_refused() {
        let grants = vec![
            (PathBuf::from("/srv/out"), true),
            (PathBuf::from("/srv/out/deep"), true),
            (PathBuf::from("/srv/report.txt"), false),
        ];
        // (artifact path, Ok(base) or Err(exit code))
        let table: &[(&str, Result<&str, u8>)] = &[
            ("/srv/out", Ok("/srv/out")),
            ("/srv/out/a/b.bin", Ok("/srv/out")),
            ("/srv/out/deep/x", Ok("/srv/out/deep")),
            ("/srv/report.txt", Ok("/srv")),
            ("/srv/report.txt/x", Err(exit::BAD_CONFIG)),
            ("/srv/outside", Err(exit::BAD_CONFIG)),
            ("/tmp/result", Err(exit::BAD_CONFIG)),
            ("/srv/out/../etc", Err(exit::BAD_CONFIG)),
            ("relative", Err(exit::BAD_CONFIG)),
        ];
        for (path, want) in table {
            let got = plan_artifacts(&lease(&[path], None), &grants);
            match (got, want) {
                (Ok(p), Ok(base)) => {
                    assert_eq!(p.items[0].base, Path::new(base), "{path}");
                    assert_eq!(p.items[0].path, Path::new(path), "{path}");
                    assert_eq!(p.max_bytes, DEFAULT_ARTIFACT_MAX_BYTES);
                }
                (Err(e), Err(code)) => assert_eq!(e.exit_code(), *code, "{path}: {e}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_lease_cap_is_used_and_no_artifacts_is_an_empty_plan() {
        let grants = vec![(PathBuf::from("/srv/out"), true)];
        assert_eq!(
            plan_artifacts(&lease(&["/srv/out"], Some(10)), &grants)
                .unwrap()
                .max_bytes,
            10
        );
        assert!(
            plan_artifacts(&lease(&[], None), &[])
                .unwrap()
                .items
                .is_empty()
        );
    }
}
