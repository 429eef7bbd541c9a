//! The `drover-extender` binary as a user runs it: a bad flag or an unreachable
//! cluster ends with one line naming the problem, no backtrace, and logs without
//! terminal colours when stderr is not a terminal.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-extender"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn user_errors_are_one_line_without_a_backtrace_or_colours() {
    let (code, err) = run(&["--timeout", "soon"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("drover-extender: --timeout \"soon\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A warning is logged, then the missing kubeconfig ends it: plain text both.
    let (code, err) = run(&["--timeout", "6s", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--timeout is not below"), "{err}");
    assert!(
        err.lines().last().unwrap().starts_with("drover-extender: "),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "no terminal colour codes: {err:?}");
    assert!(
        !err.contains("stack backtrace") && !err.contains("Stack backtrace"),
        "{err}"
    );
}
