//! The `drover` binary as a user runs it: a bad input ends with one line naming the
//! problem, without a backtrace or terminal colours.

use std::process::Command;

#[test]
fn user_errors_are_one_line_without_a_backtrace() {
    for args in [
        &["run", "--kubeconfig", "/nonexistent/kubeconfig"][..],
        &["simulate", "--scenario", "/nonexistent/cluster.yaml"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("the binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("drover: "), "{args:?}: {err}");
        assert!(
            last.contains("/nonexistent/"),
            "{args:?} names the file: {err}"
        );
        assert!(
            !err.contains("backtrace") && !err.contains('\u{1b}'),
            "{args:?}: {err}"
        );
    }
}
