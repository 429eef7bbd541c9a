//! Synthetic clusters shaped like real data-science clusters, for the benchmarks:
//! CPU node groups of several sizes, 8-GPU nodes in racks and blocks, zone and
//! instance-type labels, some taints, pods already running, and pending pods with and
//! without node affinity.

use std::sync::Arc;

use drover_core::cache::ClusterCache;
use drover_core::model::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const GI: i64 = 1 << 30;

/// Node shapes: (name prefix, cpu millis, memory bytes, gpus, share of the cluster in %).
pub const GROUPS: [(&str, i64, i64, i64, u32); 6] = [
    ("cpu-s", 4_000, 16 * GI, 0, 20),
    ("cpu-m", 16_000, 64 * GI, 0, 30),
    ("cpu-l", 64_000, 256 * GI, 0, 20),
    ("cpu-xl", 128_000, 512 * GI, 0, 10),
    ("gpu", 96_000, 1024 * GI, 8, 15),
    ("infra", 8_000, 32 * GI, 0, 5),
];

/// The `i`-th node of a cluster of `n` nodes.
pub fn node(i: usize, n: usize) -> NodeInfo {
    let mut at = 0u32;
    let pct = (i * 100 / n.max(1)) as u32;
    let (prefix, cpu, mem, gpu, _) = GROUPS
        .iter()
        .copied()
        .find(|g| {
            at += g.4;
            pct < at
        })
        .unwrap_or(GROUPS[0]);
    let mut alloc = Resources::cpu_mem(cpu, mem);
    alloc.gpu = gpu;
    alloc.ephemeral_storage = 200 * GI;
    let mut node = NodeInfo::new(&format!("{prefix}-{i:05}"), alloc, 110);
    let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3];
    let mut labels = vec![
        ("kubernetes.io/hostname".to_string(), node.name.to_string()),
        ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
        (
            "node.kubernetes.io/instance-type".to_string(),
            format!("{prefix}.large"),
        ),
        ("pool".to_string(), prefix.to_string()),
    ];
    if gpu > 0 {
        labels.push((
            "nvidia.com/gpu.product".into(),
            "NVIDIA-H100-80GB-HBM3".into(),
        ));
        labels.push((
            "network.topology.nvidia.com/block".into(),
            format!("block-{}", i / 64),
        ));
        labels.push((
            "topology.kubernetes.io/rack".into(),
            format!("rack-{}", i / 16),
        ));
        node.taints.push(Taint {
            key: "nvidia.com/gpu".into(),
            value: "present".into(),
            effect: TaintEffect::NoSchedule,
        });
    }
    if prefix == "infra" {
        node.taints.push(Taint {
            key: "dedicated".into(),
            value: "infra".into(),
            effect: TaintEffect::NoExecute,
        });
    }
    node.labels = Labels::new(labels);
    node
}

/// A running pod sized to leave the node partly used.
pub fn running_pod(i: usize, node: &NodeInfo, rng: &mut SmallRng) -> PodInfo {
    let cpu = node.allocatable.cpu / 40 * rng.random_range(1..4);
    let mem = node.allocatable.memory / 40 * rng.random_range(1..4);
    PodInfo {
        key: PodKey::new("bench", &format!("running-{i}")),
        uid: format!("uid-running-{i}").into(),
        scheduler_name: "drover".into(),
        node_name: Some(node.name.clone()),
        phase: Phase::Running,
        requests: Resources::cpu_mem(cpu, mem),
        declares_requests: true,
        ..Default::default()
    }
}

/// A cache of `nodes` nodes holding `pods` running pods, spread evenly.
pub fn cluster(nodes: usize, pods: usize) -> ClusterCache {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut cache = ClusterCache::new();
    let infos: Vec<NodeInfo> = (0..nodes).map(|i| node(i, nodes)).collect();
    for n in &infos {
        cache.upsert_node_info(n.clone());
    }
    for i in 0..pods {
        let n = &infos[i % nodes];
        cache.upsert_pod(running_pod(i, n, &mut rng));
    }
    cache
}

/// A pending pod: 2 cpu, 8 GiB, preferring one zone, tolerating nothing.
pub fn pending_pod(name: &str) -> PodInfo {
    let zone = SelectorTerm(vec![Requirement {
        key: "topology.kubernetes.io/zone".into(),
        op: SelectorOp::In,
        values: vec!["us-east-1b".into()],
        bound: 0,
        field: false,
    }]);
    PodInfo {
        key: PodKey::new("bench", name),
        uid: format!("uid-{name}").into(),
        scheduler_name: "drover".into(),
        requests: Resources::cpu_mem(2_000, 8 * GI),
        declares_requests: true,
        preferred_affinity: vec![(10, zone)],
        ..Default::default()
    }
}

/// A pending pod with a required node affinity on the pool label.
pub fn pending_pod_with_affinity(name: &str) -> PodInfo {
    let mut p = pending_pod(name);
    p.required_affinity = vec![SelectorTerm(vec![Requirement {
        key: "pool".into(),
        op: SelectorOp::In,
        values: vec!["cpu-l".into(), "cpu-xl".into()],
        bound: 0,
        field: false,
    }])];
    p
}

/// A gang of `size` GPU training ranks, one GPU each.
pub fn gpu_gang(size: usize) -> Vec<Arc<PodInfo>> {
    (0..size)
        .map(|i| {
            let mut p = pending_pod(&format!("rank-{i}"));
            p.preferred_affinity.clear();
            p.requests = Resources::cpu_mem(8_000, 64 * GI);
            p.requests.gpu = 1;
            p.tolerations = vec![Toleration {
                key: "nvidia.com/gpu".into(),
                exists: true,
                value: "".into(),
                effect: None,
            }];
            Arc::new(p)
        })
        .collect()
}

/// Apps the running pods of [`cluster_with_apps`] belong to.
pub const APPS: usize = 1_000;

/// A required term on `topology_key` about the pods labelled `app=<app>` of the
/// pod's own namespace.
pub fn app_term(topology_key: &str, app: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        selector: Some(LabelSelector(vec![Requirement {
            key: "app".into(),
            op: SelectorOp::In,
            values: vec![app.into()],
            bound: 0,
            field: false,
        }])),
        namespaces: NamespaceScope {
            names: vec!["bench".into()],
            selector: None,
        },
        topology_key: topology_key.into(),
    }
}

/// Like [`cluster`], with every running pod in one of [`APPS`] apps (`app=app-<k>`,
/// drawn at random), and the pods of one app in twenty carrying a required
/// anti-affinity to their own app on hostname, as spread replicas do: the state
/// inter-pod affinity reads on a cluster where some charts use it.
pub fn cluster_with_apps(nodes: usize, pods: usize) -> ClusterCache {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut apps = SmallRng::seed_from_u64(43);
    let mut cache = ClusterCache::new();
    let infos: Vec<NodeInfo> = (0..nodes).map(|i| node(i, nodes)).collect();
    for n in &infos {
        cache.upsert_node_info(n.clone());
    }
    let spread: Vec<Arc<PodAffinity>> = (0..APPS)
        .map(|k| {
            Arc::new(PodAffinity {
                required_anti: vec![app_term(HOSTNAME, &format!("app-{k}"))],
                ..Default::default()
            })
        })
        .collect();
    for i in 0..pods {
        let mut p = running_pod(i, &infos[i % nodes], &mut rng);
        // 30 pods a node, a quarter of `running_pod`'s size: the nodes are not full.
        p.requests = Resources::cpu_mem(p.requests.cpu / 4, p.requests.memory / 4);
        let k = apps.random_range(0..APPS);
        p.labels = Labels::new([("app", format!("app-{k}"))]);
        if k % 20 == 0 {
            p.pod_affinity = Some(spread[k].clone());
        }
        cache.upsert_pod(p);
    }
    cache
}

const HOSTNAME: &str = "kubernetes.io/hostname";

/// [`pending_pod`] labelled `app=web` with a required anti-affinity on hostname to
/// the pods of `app-7` (about 150 of [`cluster_with_apps`]'s nodes hold one).
pub fn pending_pod_with_anti_affinity(name: &str) -> PodInfo {
    let mut p = pending_pod(name);
    p.labels = Labels::new([("app", "web")]);
    p.pod_affinity = Some(Arc::new(PodAffinity {
        required_anti: vec![app_term(HOSTNAME, "app-7")],
        ..Default::default()
    }));
    p
}

/// [`gpu_gang`] whose ranks repel each other on hostname: one rank per node.
pub fn gpu_gang_with_anti_affinity(size: usize) -> Vec<Arc<PodInfo>> {
    let affinity = Arc::new(PodAffinity {
        required_anti: vec![app_term(HOSTNAME, "trainer")],
        ..Default::default()
    });
    gpu_gang(size)
        .into_iter()
        .map(|p| {
            let mut p = (*p).clone();
            p.labels = Labels::new([("app", "trainer")]);
            p.pod_affinity = Some(affinity.clone());
            Arc::new(p)
        })
        .collect()
}

/// Resident memory of this process in bytes (Linux), or 0 where unknown.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
