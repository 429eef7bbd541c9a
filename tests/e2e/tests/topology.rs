//! Topology against a real kube-apiserver + etcd + kwok: gangs inside one rack when
//! required, across the fewest racks when preferred, waiting (never widening) when no
//! rack holds them; and GPU jobs that leave whole nodes free, compared with the real
//! kube-scheduler on the same sequence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{Drover, node_of, overcommitted, pods, unschedulable_message, wait_event};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use rand::{Rng, SeedableRng};

const NS: &str = "default";
const RACK: &str = "example.com/rack";
const BLOCK: &str = "example.com/block";

/// 4 blocks × 4 racks × 4 nodes × 8 GPUs.
fn cluster() -> Vec<Node> {
    let mut v = Vec::new();
    for b in 0..4 {
        for r in 0..4 {
            for n in 0..4 {
                v.push(
                    FakeNode::new(format!("b{b}-r{r}-n{n}"))
                        .cpu("96")
                        .memory("1024Gi")
                        .gpus(8)
                        .label(BLOCK, &format!("b{b}"))
                        .label(RACK, &format!("b{b}-r{r}"))
                        .build(),
                );
            }
        }
    }
    v
}

fn options() -> anyhow::Result<drover::k8s::RunOptions> {
    let mut o = drover::k8s::RunOptions::new("drover");
    o.config = drover_core::config::FileConfig::parse(
        &format!("topology:\n  levels: [{BLOCK}, {RACK}, kubernetes.io/hostname]\n"),
        "test",
    )?
    .validate()?;
    Ok(o)
}

fn member(gang: &str, i: usize, n: usize, gpus: i64, level: (&str, &str)) -> Pod {
    TestPod::new(format!("{gang}-{i}"))
        .scheduler("drover")
        .cpu("8")
        .memory("64Gi")
        .gpus(gpus)
        .label(GROUP_LABEL, gang)
        .annotation(MIN_MEMBER_ANNOTATION, &n.to_string())
        .annotation(level.0, level.1)
        .build()
}

async fn create(client: &Client, pods: Vec<Pod>) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for p in pods {
        api.create(&PostParams::default(), &p).await?;
    }
    Ok(())
}

/// The racks the bound members of `gang` are on.
async fn racks_of(client: &Client, gang: &str) -> anyhow::Result<(usize, BTreeSet<String>)> {
    let all = pods(client, NS).await?;
    let mut racks = BTreeSet::new();
    let mut bound = 0;
    for p in &all {
        let ours = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GROUP_LABEL))
            .is_some_and(|g| g == gang);
        if let (true, Some(n)) = (ours, node_of(p)) {
            bound += 1;
            // b{b}-r{r}-n{n} → b{b}-r{r}
            racks.insert(n.rsplit_once('-').map(|x| x.0).unwrap_or(n).to_string());
        }
    }
    Ok((bound, racks))
}

async fn wait_bound(client: &Client, gang: &str, n: usize) -> anyhow::Result<BTreeSet<String>> {
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        &format!("gang {gang} bound"),
        || {
            let c = client.clone();
            let g = gang.to_string();
            async move { Ok(racks_of(&c, &g).await?.0 == n) }
        },
    )
    .await?;
    Ok(racks_of(client, gang).await?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gangs_land_inside_one_rack_or_across_the_fewest() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&cluster()).await?;
    let drover = Drover::start_with(client.clone(), options()?);
    let required = ("drover.dev/topology-required", RACK);
    let preferred = ("drover.dev/topology-preferred", RACK);

    // A 32-GPU gang with rack required: one rack.
    create(
        &client,
        (0..4).map(|i| member("tight", i, 4, 8, required)).collect(),
    )
    .await?;
    let racks = wait_bound(&client, "tight", 4).await?;
    assert_eq!(racks.len(), 1, "{racks:?}");
    wait_event(
        &client,
        NS,
        "tight-0",
        Duration::from_secs(10),
        "GangPlaced naming its GPUs and required level",
        |r, n| {
            r == "GangPlaced"
                && n.contains("gang default/tight: 4 members")
                && n.contains("nvidia.com/gpu=32")
                && n.contains("required level example.com/rack")
        },
    )
    .await?;
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels(&format!("{GROUP_LABEL}=tight")),
        )
        .await?;

    // Fill three nodes of every rack: one free node per rack is left.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for b in 0..4 {
        for r in 0..4 {
            for n in 0..3 {
                api.create(
                    &PostParams::default(),
                    &TestPod::new(format!("filler-b{b}-r{r}-n{n}"))
                        .node_name(&format!("b{b}-r{r}-n{n}"))
                        .cpu("8")
                        .gpus(8)
                        .build(),
                )
                .await?;
            }
        }
    }
    // Required rack cannot be met now: the gang waits, and says which level failed.
    create(
        &client,
        (0..4)
            .map(|i| member("strict", i, 4, 8, required))
            .collect(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the strict gang waits with a message naming the level",
        || {
            let c = client.clone();
            async move {
                let p = Api::<Pod>::namespaced(c, NS).get("strict-0").await?;
                Ok(unschedulable_message(&p).is_some_and(|m| {
                    m.contains("no single rack domain (required level example.com/rack)")
                }))
            }
        },
    )
    .await?;
    assert_eq!(racks_of(&client, "strict").await?.0, 0, "never widened");
    // Preferred: the same gang spans the fewest racks possible (4, one node each).
    create(
        &client,
        (0..4)
            .map(|i| member("loose", i, 4, 8, preferred))
            .collect(),
    )
    .await?;
    let racks = wait_bound(&client, "loose", 4).await?;
    assert_eq!(racks.len(), 4, "{racks:?}");
    // A preferred gang of 2 × 4 GPUs fits one free node, so one rack.
    create(
        &client,
        (0..2).map(|i| member("pair", i, 2, 4, preferred)).collect(),
    )
    .await?;
    let racks = wait_bound(&client, "pair", 2).await?;
    assert_eq!(racks.len(), 1, "{racks:?}");
    // A bad level name is reported, nothing else is held up.
    create(
        &client,
        vec![member(
            "typo",
            0,
            1,
            1,
            ("drover.dev/topology-required", "rack"),
        )],
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the typo is reported",
        || {
            let c = client.clone();
            async move {
                let p = Api::<Pod>::namespaced(c, NS).get("typo-0").await?;
                Ok(unschedulable_message(&p)
                    .is_some_and(|m| m.contains("\"rack\" is not a configured topology level")))
            }
        },
    )
    .await?;
    assert!(overcommitted(&client).await?.is_empty());
    drover.stop().await
}

/// Runs 100 GPU jobs of 1, 2, 4 or 8 GPUs (seeded) through `scheduler`, keeping about
/// 12 alive (the oldest ends when a new one starts beyond that), and samples the whole
/// free GPU nodes after each job is placed. Returns the mean.
async fn gpu_jobs(client: &Client, scheduler: &str) -> anyhow::Result<f64> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut alive: VecDeque<String> = VecDeque::new();
    let mut samples = Vec::new();
    for i in 0..100 {
        let gpus = [1, 2, 4, 8][rng.random_range(0..4)];
        let name = format!("job-{i}");
        api.create(
            &PostParams::default(),
            &TestPod::new(&name)
                .scheduler(scheduler)
                .cpu("1")
                .memory("4Gi")
                .gpus(gpus)
                .build(),
        )
        .await?;
        alive.push_back(name.clone());
        // Wait for the bind (or give up on this one: it may not fit).
        for _ in 0..100 {
            if node_of(&api.get(&name).await?).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive.len() > 12 {
            let old = alive.pop_front().expect("non-empty");
            api.delete(&old, &DeleteParams::default().grace_period(0))
                .await?;
        }
        samples.push(whole_free_nodes(client).await? as f64);
    }
    Ok(samples.iter().sum::<f64>() / samples.len() as f64)
}

async fn whole_free_nodes(client: &Client) -> anyhow::Result<usize> {
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for p in pods(client, NS).await? {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(n) = node_of(&p) {
            *used.entry(n.to_string()).or_default() += 1;
        }
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(nodes
        .iter()
        .filter(|n| !used.contains_key(n.metadata.name.as_deref().unwrap_or("")))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_leave_more_whole_nodes_free_than_kube_scheduler() -> anyhow::Result<()> {
    // 16 nodes × 8 GPUs, the same job sequence through each scheduler.
    let nodes: Vec<Node> = cluster().into_iter().take(16).collect();
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start_with(client.clone(), options()?);
    let with_drover = gpu_jobs(&client, "drover").await?;
    let free_gpus = drover
        .shared
        .metrics
        .gpus_free
        .with_label_values(&["whole_node"])
        .get();
    drover.stop().await?;
    drop(cp);

    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&nodes).await?;
    let _ks = cp.start_kube_scheduler(None).await?;
    let with_ks = gpu_jobs(&client, "default-scheduler").await?;
    eprintln!(
        "mean whole free GPU nodes over 100 jobs of 1/2/4/8 GPUs on 16 × 8-GPU nodes: drover {with_drover:.1}, kube-scheduler {with_ks:.1}"
    );
    assert!(
        with_drover > with_ks,
        "drover {with_drover:.1} vs kube-scheduler {with_ks:.1}"
    );
    assert!(free_gpus > 0, "the metric counts whole free GPU nodes");
    Ok(())
}

/// A NodeResourceTopology for `node`: two NUMA zones with `(cpu, gpus)` available.
fn nrt(node: &str, single_numa: bool, zones: [(i64, i64); 2]) -> serde_json::Value {
    let zone = |i: usize, (cpu, gpu): (i64, i64)| {
        serde_json::json!({
            "name": format!("node-{i}"), "type": "Node",
            "resources": [
                {"name": "cpu", "capacity": "48", "allocatable": "48", "available": cpu.to_string()},
                {"name": "nvidia.com/gpu", "capacity": "4", "allocatable": "4", "available": gpu.to_string()}
            ]
        })
    };
    let policy = if single_numa {
        "single-numa-node"
    } else {
        "none"
    };
    serde_json::json!({
        "apiVersion": "topology.node.k8s.io/v1alpha2",
        "kind": "NodeResourceTopology",
        "metadata": {"name": node},
        "attributes": [{"name": "topologyManagerPolicy", "value": policy}],
        "zones": [zone(0, zones[0]), zone(1, zones[1])]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numa_zones_reject_and_score_nodes() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&["tests/e2e/crds/topology.node.k8s.io_noderesourcetopologies.yaml"])
        .await?;
    let client = cp.client();
    let gpu_node = |name: &str, group: &str| {
        FakeNode::new(name)
            .cpu("96")
            .memory("512Gi")
            .gpus(8)
            .label("numa-test", group)
            .build()
    };
    cp.create_nodes(&[
        gpu_node("numa-a", "strict"),
        gpu_node("numa-b", "strict"),
        gpu_node("numa-c", "loose"),
        gpu_node("numa-d", "loose"),
        gpu_node("numa-e", "loose"),
    ])
    .await?;
    let ar = drover::k8s::status::node_resource_topology_resource();
    let nrts: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    for v in [
        nrt("numa-a", true, [(16, 2), (16, 3)]),
        nrt("numa-b", true, [(16, 4), (16, 0)]),
        nrt("numa-c", false, [(16, 2), (16, 2)]),
        nrt("numa-d", false, [(16, 4), (16, 0)]),
    ] {
        nrts.create(&PostParams::default(), &serde_json::from_value(v)?)
            .await?;
    }
    // A malformed one (a quantity that does not parse) is skipped, and said so.
    let mut bad = nrt("numa-e", false, [(16, 4), (16, 4)]);
    bad["zones"][0]["resources"][1]["available"] = "lots".into();
    nrts.create(&PostParams::default(), &serde_json::from_value(bad)?)
        .await?;
    let drover = Drover::start(client.clone());
    let pod = |name: &str, gpus: i64, group: &str| {
        TestPod::new(name)
            .scheduler("drover")
            .cpu("1")
            .memory("8Gi")
            .gpus(gpus)
            .node_selector("numa-test", group)
            .build()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    // single-numa-node: numa-a has no zone with 4 GPUs; numa-b has.
    api.create(&PostParams::default(), &pod("four", 4, "strict"))
        .await?;
    // Neither has a zone with 6: Unschedulable, saying why.
    api.create(&PostParams::default(), &pod("six", 6, "strict"))
        .await?;
    // No policy: numa-d holds 3 GPUs in one zone, numa-c only across two (and numa-e
    // has no usable NodeResourceTopology: one zone as far as drover knows... but its
    // name sorts last, and it is equal otherwise, so it loses the tie).
    api.create(&PostParams::default(), &pod("three", 3, "loose"))
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "four and three bound, six Unschedulable",
        || {
            let c = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(c, NS);
                let four = node_of(&api.get("four").await?).map(String::from);
                let three = node_of(&api.get("three").await?).map(String::from);
                let six = unschedulable_message(&api.get("six").await?);
                Ok(four.is_some() && three.is_some() && six.is_some())
            }
        },
    )
    .await?;
    assert_eq!(node_of(&api.get("four").await?), Some("numa-b"));
    assert!(
        matches!(
            node_of(&api.get("three").await?),
            Some("numa-d") | Some("numa-e")
        ),
        "one zone, not two"
    );
    assert_ne!(node_of(&api.get("three").await?), Some("numa-c"));
    let six = unschedulable_message(&api.get("six").await?).unwrap_or_default();
    assert!(
        six.contains("node(s) had no single NUMA zone with enough cpu and nvidia.com/gpu"),
        "{six}"
    );
    assert_eq!(drover.shared.metrics.malformed_objects.get(), 1);
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimum_gpu_memory_gets_the_smallest_gpu_type_that_has_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let node = |name: &str, mib: &str| {
        FakeNode::new(name)
            .cpu("32")
            .memory("256Gi")
            .gpus(8)
            .label("nvidia.com/gpu.memory", mib)
            .build()
    };
    cp.create_nodes(&[
        node("a10-24g", "24576"),
        node("l40-48g", "49152"),
        node("h100-80g", "81559"),
    ])
    .await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (name, min) in [("needs-40g", "40Gi"), ("needs-100g", "100Gi")] {
        api.create(
            &PostParams::default(),
            &TestPod::new(name)
                .scheduler("drover")
                .cpu("1")
                .gpus(1)
                .annotation("drover.dev/gpu-memory-min", min)
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "needs-40g bound, needs-100g Unschedulable",
        || {
            let c = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(c, NS);
                Ok(node_of(&api.get("needs-40g").await?).is_some()
                    && unschedulable_message(&api.get("needs-100g").await?).is_some())
            }
        },
    )
    .await?;
    assert_eq!(node_of(&api.get("needs-40g").await?), Some("l40-48g"));
    let msg = unschedulable_message(&api.get("needs-100g").await?).unwrap_or_default();
    assert!(
        msg.contains("3 node(s) had GPUs with less memory than drover.dev/gpu-memory-min"),
        "{msg}"
    );
    drover.stop().await
}
