//! Project tasks: `cargo xtask ci|demo|schema|bench`.
fn main() {}
