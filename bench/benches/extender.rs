//! The HTTP extender's verbs as kube-scheduler calls them: the raw JSON request in, the
//! JSON answer out (parsing and encoding included), over a 5 000-node snapshot with
//! 50 000 running pods. The pod tolerates every taint, so all 5 000 nodes are
//! candidates, as they are after kube-scheduler's own filters on a cluster of that size
//! with `percentageOfNodesToScore: 100`.
//!
//! Run: `cargo bench -p drover-bench --bench extender`. Before divan's table it prints
//! p50/p99 of filter + prioritize (one pod, both calls) over 300 runs.

use std::time::{Duration, Instant};

use divan::Bencher;
use drover_bench::cluster;
use drover_core::config::Config;
use drover_core::model::NodeInfo;
use drover_extender::{Extender, Verb};
use serde_json::{Value, json};

const NODES: usize = 5_000;
const PODS: usize = 50_000;

fn main() {
    // `cargo test --benches` and `--list` run main too: measure only for real runs.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list") {
        percentiles();
    }
    divan::main();
}

struct Fixture {
    ext: Extender,
    by_name: Vec<u8>,
    whole: Vec<u8>,
}

fn pod() -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "bench", "uid": "uid-p",
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {
            "schedulerName": "default-scheduler",
            "tolerations": [{"operator": "Exists"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]}
                ]}}
            ]}},
            "containers": [{"name": "c", "image": "x",
                            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}]
        },
        "status": {}
    })
}

/// A Node object as kube-scheduler sends it (`nodeCacheCapable: false`).
fn node_json(n: &NodeInfo) -> Value {
    let labels: serde_json::Map<String, Value> = n
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    let taints: Vec<Value> = n
        .taints
        .iter()
        .map(|t| json!({"key": &*t.key, "value": &*t.value, "effect": format!("{:?}", t.effect)}))
        .collect();
    let a = &n.allocatable;
    json!({
        "metadata": {"name": &*n.name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {
            "cpu": format!("{}m", a.cpu), "memory": a.memory.to_string(),
            "nvidia.com/gpu": a.gpu.to_string(), "ephemeral-storage": a.ephemeral_storage.to_string(),
            "pods": n.max_pods.to_string()
        }}
    })
}

fn fixture() -> Fixture {
    let snap = cluster(NODES, PODS).snapshot();
    let names: Vec<String> = snap.nodes().map(|(_, n)| n.name.to_string()).collect();
    let nodes: Vec<Value> = snap.nodes().map(|(_, n)| node_json(n)).collect();
    let by_name =
        serde_json::to_vec(&json!({"Pod": pod(), "Nodes": null, "NodeNames": names})).unwrap();
    let whole = serde_json::to_vec(
        &json!({"Pod": pod(), "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}),
    )
    .unwrap();
    Fixture {
        ext: Extender::with_snapshot(Config::default(), snap),
        by_name,
        whole,
    }
}

fn call(ext: &Extender, verb: Verb, body: &[u8]) -> Vec<u8> {
    let r = ext.handle(verb, body);
    assert_eq!(r.status, 200, "{:?}", r.error);
    r.body
}

fn percentiles() {
    let f = fixture();
    let passed = |body: &[u8]| -> usize {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["NodeNames"].as_array().map_or_else(
            || v["Nodes"]["items"].as_array().map_or(0, Vec::len),
            Vec::len,
        )
    };
    println!(
        "request bodies: {} KiB with node names, {} KiB with whole nodes; {} of {NODES} nodes pass filter",
        f.by_name.len() / 1024,
        f.whole.len() / 1024,
        passed(&call(&f.ext, Verb::Filter, &f.by_name)),
    );
    for (what, body) in [("NodeNames", &f.by_name), ("whole Nodes", &f.whole)] {
        for _ in 0..10 {
            call(&f.ext, Verb::Filter, body);
            call(&f.ext, Verb::Prioritize, body);
        }
        let runs = if what == "NodeNames" { 300 } else { 60 };
        let mut filter = Vec::with_capacity(runs);
        let mut both = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            call(&f.ext, Verb::Filter, body);
            let mid = t.elapsed();
            call(&f.ext, Verb::Prioritize, body);
            filter.push(mid);
            both.push(t.elapsed());
        }
        let pct = |v: &mut Vec<Duration>, p: f64| {
            v.sort();
            v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
        };
        println!(
            "{what}, {NODES} nodes: filter p50 {:.2?} p99 {:.2?}; filter + prioritize p50 {:.2?} p99 {:.2?} ({runs} runs)",
            pct(&mut filter, 0.50),
            pct(&mut filter, 0.99),
            pct(&mut both, 0.50),
            pct(&mut both, 0.99),
        );
    }
}

/// Filter, 5 000 node names (`nodeCacheCapable: true`).
#[divan::bench(sample_count = 100)]
fn filter_5000_node_names(b: Bencher) {
    let f = fixture();
    b.bench_local(|| call(&f.ext, Verb::Filter, divan::black_box(&f.by_name)));
}

/// Prioritize, 5 000 node names.
#[divan::bench(sample_count = 100)]
fn prioritize_5000_node_names(b: Bencher) {
    let f = fixture();
    b.bench_local(|| call(&f.ext, Verb::Prioritize, divan::black_box(&f.by_name)));
}

/// Filter then prioritize for one pod, 5 000 node names: what kube-scheduler waits for.
#[divan::bench(sample_count = 100)]
fn filter_and_prioritize_5000_node_names(b: Bencher) {
    let f = fixture();
    b.bench_local(|| {
        call(&f.ext, Verb::Filter, divan::black_box(&f.by_name));
        call(&f.ext, Verb::Prioritize, divan::black_box(&f.by_name))
    });
}

/// Filter with 5 000 whole Node objects (`nodeCacheCapable: false`): several MB of
/// JSON per call.
#[divan::bench(sample_count = 20)]
fn filter_5000_whole_nodes(b: Bencher) {
    let f = fixture();
    b.bench_local(|| call(&f.ext, Verb::Filter, divan::black_box(&f.whole)));
}
