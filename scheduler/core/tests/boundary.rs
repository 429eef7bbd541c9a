//! The core has no I/O: its dependency tree (normal dependencies, all the way down)
//! holds no Kubernetes client, API types, async runtime or HTTP stack.

use std::process::Command;

const FORBIDDEN: [&str; 8] = [
    "kube",
    "kube-client",
    "kube-runtime",
    "k8s-openapi",
    "tokio",
    "hyper",
    "axum",
    "reqwest",
];

#[test]
fn the_core_cannot_reach_the_network_or_an_async_runtime() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "drover-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"drover-core"), "{tree}");
    assert!(
        crates.contains(&"rayon"),
        "the tree is the real one: {tree}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(
        found.is_empty(),
        "drover-core depends on {found:?}:\n{tree}"
    );
}
