//! Resident memory of the cluster cache at 5 000 nodes / 150 000 pods (or the sizes
//! given): `cargo run --release -p drover-bench --bin cache-memory [nodes] [pods]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(150_000);
    let before = drover_bench::resident_bytes();
    let cache = drover_bench::cluster(nodes, pods);
    let snap = cache.snapshot();
    let after = drover_bench::resident_bytes();
    println!(
        "cache with {} nodes and {} pods: {:.1} MiB resident (process {:.1} MiB before, {:.1} MiB after)",
        snap.node_count(),
        cache.placed_pods(),
        (after - before) as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
    );
}
