//! The hot path: one-pod decisions, gang placement, and applying an event to the cache
//! and publishing the next snapshot. Every node is evaluated (no sampling).
//!
//! Run: `cargo bench -p drover-bench --bench hot_path` (`RAYON_NUM_THREADS` sets the
//! scoring pool's size; one cpu each by default).

use std::sync::Arc;

use divan::Bencher;
use drover_bench::{
    cluster, cluster_with_apps, gpu_gang, gpu_gang_with_anti_affinity, pending_pod,
    pending_pod_with_affinity, pending_pod_with_anti_affinity, running_pod,
};
use drover_core::framework::{Outcome, Profile, schedule_one};
use drover_core::gang::{GangOutcome, place_all};
use drover_core::model::PodKey;
use rand::SeedableRng;

fn main() {
    // Decisions are timed on a thread of a scoring pool, where drover's scheduling loop
    // takes them (see `drover_core::pool`).
    drover_core::pool::build("bench")
        .expect("starting the scoring pool")
        .install(divan::main);
}

/// One pod, every node filtered and scored.
#[divan::bench(args = [1_000, 5_000, 15_000])]
fn one_pod_decision(b: Bencher, nodes: usize) {
    let snap = cluster(nodes, nodes * 10).snapshot();
    let profile = Profile::default();
    let pod = pending_pod("p");
    b.bench_local(|| {
        let out = schedule_one(&profile, divan::black_box(&pod), &snap);
        assert!(matches!(out, Outcome::Placed(_)));
        out
    });
}

/// One pod with a required node affinity, every node evaluated.
#[divan::bench(args = [5_000])]
fn one_pod_decision_with_affinity(b: Bencher, nodes: usize) {
    let snap = cluster(nodes, nodes * 10).snapshot();
    let profile = Profile::default();
    let pod = pending_pod_with_affinity("p");
    b.bench_local(|| schedule_one(&profile, divan::black_box(&pod), &snap));
}

/// One pod with a required anti-affinity on hostname, against 150 000 running pods
/// in 1 000 apps (one app in twenty with its own required anti-affinity) at 5 000
/// nodes: every existing pod's labels and terms are read for the pod's cycle state.
#[divan::bench(args = [5_000])]
fn one_pod_decision_with_pod_anti_affinity(b: Bencher, nodes: usize) {
    let snap = cluster_with_apps(nodes, 150_000).snapshot();
    let profile = Profile::default();
    let pod = pending_pod_with_anti_affinity("p");
    b.bench_local(|| {
        let out = schedule_one(&profile, divan::black_box(&pod), &snap);
        assert!(matches!(out, Outcome::Placed(_)));
        out
    });
}

/// The 256-rank gang with a required anti-affinity on hostname among its ranks: one
/// rank per GPU node, decided over one snapshot.
#[divan::bench(args = [256], sample_count = 20)]
fn gang_placement_with_hostname_anti_affinity(b: Bencher, size: usize) {
    let snap = cluster(5_000, 50_000).snapshot();
    let profile = Profile::default();
    let gang = gpu_gang_with_anti_affinity(size);
    b.bench_local(|| {
        let out = place_all(&profile, &gang, &snap);
        let GangOutcome::Placed(placed) = &out else {
            panic!("the gang fits: {out:?}");
        };
        let nodes: std::collections::HashSet<_> = placed.iter().map(|(_, _, n)| n).collect();
        assert_eq!(nodes.len(), size, "one rank per node");
        out
    });
}

/// A 256-rank GPU gang placed all-or-nothing at 5 000 nodes, no topology level.
#[divan::bench(args = [256], sample_count = 20)]
fn gang_placement(b: Bencher, size: usize) {
    let snap = cluster(5_000, 50_000).snapshot();
    let profile = Profile::default();
    let gang = gpu_gang(size);
    b.bench_local(|| {
        let out = place_all(&profile, &gang, &snap);
        assert!(matches!(out, GangOutcome::Placed(_)));
        out
    });
}

/// The same 256-rank gang with a required topology level (one NVLink block of 64
/// GPU nodes): domains are grouped, tried tightest first, the gang placed in one.
#[divan::bench(args = [256], sample_count = 20)]
fn gang_placement_required_block(b: Bencher, size: usize) {
    let snap = cluster(5_000, 50_000).snapshot();
    let profile = Profile::default();
    let gang = gpu_gang(size);
    let c = drover_core::topology::Constraint {
        level: "network.topology.nvidia.com/block".into(),
        required: true,
        within: None,
    };
    b.bench_local(|| {
        let out = drover_core::topology::place(&profile, &gang, &snap, &c);
        assert!(matches!(
            out,
            drover_core::topology::TopologyOutcome::Placed { .. }
        ));
        out
    });
}

/// A pod event applied to a cache of 5 000 nodes / 150 000 pods, then the next
/// snapshot published.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn event_apply_and_publish(b: Bencher) {
    let mut cache = cluster(5_000, 150_000);
    let snap = cache.snapshot();
    let nodes: Vec<_> = snap.nodes().map(|(_, n)| n.clone()).collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut i = 0usize;
    b.bench_local(|| {
        // Alternately bind a new pod and delete it again, so the cache stays the same size.
        let key = PodKey::new("bench", &format!("running-event-{}", i / 2));
        if i.is_multiple_of(2) {
            let n = &nodes[(i * 7919) % nodes.len()];
            let mut p = running_pod(i, n, &mut rng);
            p.key = key;
            cache.upsert_pod(p);
        } else {
            cache.delete_pod(&key);
        }
        i += 1;
        Arc::new(cache.snapshot())
    });
}
