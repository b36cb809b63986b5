//! End-to-end smoke tests of the real `calyx-run` binary, as the caller and as nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runner_common;

use runner_common::{Fixture, text, users};
use serde_json::json;

#[test]
fn echo_hello_exits_zero_and_prints() {
    let f = Fixture::new();
    let lease = f.lease(
        "echo",
        json!([{"path": "/bin/echo", "args": ["*"]}]),
        json!({}),
    );
    for who in users() {
        let out = f.run(who, &lease, &[], &["/bin/echo", "hello"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{who:?}: stderr {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "hello\n", "{who:?}");
    }
}
