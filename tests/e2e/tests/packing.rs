//! Whole-node packing against a real kube-apiserver + etcd + kwok: exclusive notebooks
//! on the smallest node that fits, pods without requests on the smallest node, and the
//! same workload through the real kube-scheduler for comparison.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use drover_e2e::{Drover, node_of, overcommitted, pods, wait_event};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

const NS: &str = "default";
const GROUPS: [(i64, &str); 6] = [
    (4, "2"),
    (16, "4"),
    (64, "16"),
    (128, "16"),
    (256, "32"),
    (512, "64"),
];

/// Three nodes of each size: `mem-<GiB>-<i>`, labelled with their group.
fn pool() -> Vec<Node> {
    let mut v = Vec::new();
    for (gib, cpu) in GROUPS {
        for i in 0..3 {
            v.push(
                FakeNode::new(format!("mem-{gib}-{i}"))
                    .cpu(cpu)
                    .memory(&format!("{gib}Gi"))
                    .label("drover.dev/node-group", &format!("mem-{gib}"))
                    .build(),
            );
        }
    }
    v
}

/// Two notebooks each of 3, 14, 60 and 120 GiB, asking for a node to themselves,
/// and one pod without requests.
fn workload(scheduler: &str) -> Vec<Pod> {
    let mut v = Vec::new();
    for gib in [3, 14, 60, 120] {
        for i in 0..2 {
            v.push(
                TestPod::new(format!("notebook-{gib}gi-{i}"))
                    .scheduler(scheduler)
                    .cpu("500m")
                    .memory(&format!("{gib}Gi"))
                    .annotation("drover.dev/exclusive", "true")
                    .build(),
            );
        }
    }
    v.push(TestPod::new("no-requests").scheduler(scheduler).build());
    v
}

async fn run_workload(
    client: &Client,
    scheduler: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let want = workload(scheduler);
    let n = want.len();
    for p in want {
        api.create(&PostParams::default(), &p).await?;
    }
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "every pod bound",
        || {
            let c = client.clone();
            async move {
                Ok(pods(&c, NS)
                    .await?
                    .iter()
                    .filter(|p| node_of(p).is_some())
                    .count()
                    == n)
            }
        },
    )
    .await?;
    Ok(pods(client, NS)
        .await?
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, node_of(p)?.to_string())))
        .collect())
}

/// Total allocatable memory (GiB) of the nodes that run at least one pod.
async fn memory_of_used_nodes(
    client: &Client,
    placed: &BTreeMap<String, String>,
) -> anyhow::Result<i64> {
    let used: HashSet<&String> = placed.values().collect();
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut total = 0;
    for n in nodes {
        if used.contains(n.metadata.name.as_ref().unwrap()) {
            let q = &n.status.unwrap().allocatable.unwrap()["memory"];
            total += drover_core::quantity::parse_resource("memory", &q.0)? >> 30;
        }
    }
    Ok(total)
}

fn group_of(node: &str) -> i64 {
    node.split('-')
        .nth(1)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebooks_get_the_smallest_node_that_fits_and_keep_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&pool()).await?;
    let drover = Drover::start(client.clone());
    let placed = run_workload(&client, "drover").await?;

    for (gib, want) in [(3, 4), (14, 16), (60, 64), (120, 128)] {
        for i in 0..2 {
            let node = &placed[&format!("notebook-{gib}gi-{i}")];
            assert_eq!(
                group_of(node),
                want,
                "a {gib} GiB notebook goes to the {want} GiB group, not {node}"
            );
        }
    }
    // No two exclusive pods share a node, and nothing else joins them.
    let mut per_node: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (pod, node) in &placed {
        per_node.entry(node).or_default().push(pod);
    }
    for (node, ps) in &per_node {
        assert_eq!(ps.len(), 1, "{node} runs {ps:?}");
    }
    // The pod without requests: the smallest node, and a Warning that says why.
    assert_eq!(group_of(&placed["no-requests"]), 4, "{placed:?}");
    wait_event(
        &client,
        NS,
        "no-requests",
        Duration::from_secs(10),
        "a NoRequests Warning",
        |r, n| {
            r == "NoRequests"
                && n.contains("declares no resource requests")
                && n.contains(&format!("placed it on {} (", placed["no-requests"]))
                && n.contains("allocatable)")
        },
    )
    .await?;
    // A further exclusive pod finds no free 4 GiB node... and takes the next size up
    // rather than sharing.
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &TestPod::new("notebook-late")
                .scheduler("drover")
                .cpu("500m")
                .memory("3Gi")
                .annotation("drover.dev/exclusive", "true")
                .build(),
        )
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the late notebook bound",
        || {
            let c = client.clone();
            async move {
                let p = Api::<Pod>::namespaced(c, NS).get("notebook-late").await?;
                Ok(node_of(&p).is_some())
            }
        },
    )
    .await?;
    let late = Api::<Pod>::namespaced(client.clone(), NS)
        .get("notebook-late")
        .await?;
    let late_node = node_of(&late).unwrap().to_string();
    assert_eq!(group_of(&late_node), 16, "next size up: {late_node}");
    assert!(!per_node.contains_key(&late_node), "alone on {late_node}");
    assert!(overcommitted(&client).await?.is_empty());
    let drover_gib = memory_of_used_nodes(&client, &placed).await?;
    drover.stop().await?;
    drop(cp);

    // The same workload through kube-scheduler's default profile.
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&pool()).await?;
    let _ks = cp.start_kube_scheduler(None).await?;
    let placed_ks = run_workload(&client, "default-scheduler").await?;
    let ks_gib = memory_of_used_nodes(&client, &placed_ks).await?;
    eprintln!(
        "memory of the nodes used for 8 notebooks + 1 pod without requests: drover {drover_gib} GiB, kube-scheduler {ks_gib} GiB ({:.1}x)",
        ks_gib as f64 / drover_gib as f64
    );
    assert!(
        drover_gib < ks_gib,
        "drover {drover_gib} GiB vs kube-scheduler {ks_gib} GiB"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_gangs_and_cordoned_nodes() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let mut nodes: Vec<Node> = drover_e2e::nodes(4, "8", "32Gi");
    nodes.push(
        FakeNode::new("cordoned")
            .cpu("64")
            .memory("256Gi")
            .unschedulable(true)
            .build(),
    );
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start_with_config(client.clone(), "exclusive: {namespaces: [default]}")?;
    // A 3-member gang in an exclusive namespace: one node per member, all at once.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("rank-{i}"))
                .scheduler("drover")
                .cpu("1")
                .memory("1Gi")
                .label(drover_core::gang::GROUP_LABEL, "ranks")
                .annotation(drover_core::gang::MIN_MEMBER_ANNOTATION, "3")
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the gang bound",
        || {
            let c = client.clone();
            async move {
                Ok(pods(&c, NS)
                    .await?
                    .iter()
                    .filter(|p| node_of(p).is_some())
                    .count()
                    == 3)
            }
        },
    )
    .await?;
    let all = pods(&client, NS).await?;
    let used: HashSet<&str> = all.iter().filter_map(node_of).collect();
    assert_eq!(used.len(), 3, "one node per member");
    assert!(!used.contains("cordoned"));
    // Two more exclusive pods: one fits the last free node, the other fits nowhere
    // (the cordoned node is never used) and says so in the standard condition.
    for name in ["extra-0", "extra-1"] {
        api.create(
            &PostParams::default(),
            &TestPod::new(name).scheduler("drover").cpu("1").build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "one extra bound, the other Unschedulable",
        || {
            let c = client.clone();
            async move {
                let ps = pods(&c, NS).await?;
                let bound = ps.iter().filter(|p| node_of(p).is_some()).count();
                let unsched = ps.iter().any(|p| {
                    drover_e2e::unschedulable_message(p).is_some_and(|m| {
                        m.contains("held by an exclusive pod") && m.contains("were unschedulable")
                    })
                });
                Ok(bound == 4 && unsched)
            }
        },
    )
    .await?;
    let all = pods(&client, NS).await?;
    let used: Vec<&str> = all.iter().filter_map(node_of).collect();
    let distinct: HashSet<&&str> = used.iter().collect();
    assert_eq!(
        distinct.len(),
        used.len(),
        "no two exclusive pods share: {used:?}"
    );
    drover.stop().await
}
