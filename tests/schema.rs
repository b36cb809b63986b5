//! `policies/lease.schema.json` must match the Rust lease types; `cargo xtask schema` rewrites it.

#[test]
fn committed_lease_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/lease.schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == calyx::lease::model::lease_schema_json(),
        "{path} is stale or missing: run `cargo xtask schema` and commit the result"
    );
}
