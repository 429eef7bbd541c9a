//! Standalone scheduling against a real kube-apiserver + etcd + kwok.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use drover_e2e::{Drover, bound_count, node_of, overcommitted, pods};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PreferredSchedulingTerm,
};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

const NS: &str = "default";

fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

fn required(reqs: Vec<NodeSelectorRequirement>) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(reqs),
                    match_fields: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn preferred(weight: i32, reqs: Vec<NodeSelectorRequirement>) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                PreferredSchedulingTerm {
                    weight,
                    preference: NodeSelectorTerm {
                        match_expressions: Some(reqs),
                        match_fields: None,
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_all(client: &Client, pods: Vec<Pod>) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(pods)
        .map(|p| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &p).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Checks a placement against the pod's own spec, independently of drover's code:
/// nodeSelector, required node affinity (In/NotIn/Exists), NoSchedule/NoExecute taints.
fn violations(pod: &Pod, node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("spec");
    let labels = node.metadata.labels.clone().unwrap_or_default();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.get(k) != Some(v) {
            out.push(format!("{name}: nodeSelector {k}={v} not met"));
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| s.node_selector_terms.clone());
    if let Some(terms) = terms {
        let term_ok = |t: &NodeSelectorTerm| {
            t.match_expressions.iter().flatten().all(|r| {
                let vals = r.values.clone().unwrap_or_default();
                match r.operator.as_str() {
                    "In" => labels.get(&r.key).is_some_and(|v| vals.contains(v)),
                    "NotIn" => labels.get(&r.key).is_none_or(|v| !vals.contains(v)),
                    "Exists" => labels.contains_key(&r.key),
                    other => panic!("checker does not know {other}"),
                }
            })
        };
        if !terms.iter().any(term_ok) {
            out.push(format!("{name}: required node affinity not met"));
        }
    }
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
    {
        if t.effect == "PreferNoSchedule" {
            continue;
        }
        let tolerated = spec.tolerations.iter().flatten().any(|tol| {
            let key_ok = tol
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == t.key);
            let effect_ok = tol
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == t.effect);
            let value_ok = tol.operator.as_deref() == Some("Exists")
                || tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("");
            key_ok && effect_ok && value_ok
        });
        if !tolerated {
            out.push(format!(
                "{name}: taint {}={:?}:{} not tolerated",
                t.key, t.value, t.effect
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_pods_on_fifty_mixed_nodes_respect_every_constraint() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let zones = ["a", "b", "c"];
    let mut nodes = Vec::new();
    for i in 0..20 {
        nodes.push(
            FakeNode::new(format!("small-{i}"))
                .cpu("8")
                .memory("32Gi")
                .label("pool", "general")
                .label("zone", zones[i % 2])
                .build(),
        );
    }
    for i in 0..15 {
        nodes.push(
            FakeNode::new(format!("large-{i}"))
                .cpu("32")
                .memory("128Gi")
                .label("pool", "highmem")
                .label("zone", zones[i % 3])
                .build(),
        );
    }
    for i in 0..10 {
        nodes.push(
            FakeNode::new(format!("gpu-{i}"))
                .cpu("32")
                .memory("256Gi")
                .gpus(8)
                .label("pool", "gpu")
                .label("zone", zones[i % 3])
                .taint("nvidia.com/gpu", "present", "NoSchedule")
                .build(),
        );
    }
    for i in 0..5 {
        nodes.push(
            FakeNode::new(format!("infra-{i}"))
                .cpu("8")
                .memory("16Gi")
                .label("pool", "infra")
                .label("zone", "a")
                .taint("dedicated", "infra", "NoExecute")
                .build(),
        );
    }
    cp.create_nodes(&nodes).await?;

    let mut batch = Vec::new();
    for i in 0..100 {
        batch.push(
            TestPod::new(format!("highmem-{i}"))
                .scheduler("drover")
                .cpu("500m")
                .memory("8Gi")
                .node_selector("pool", "highmem")
                .build(),
        );
    }
    for i in 0..40 {
        batch.push(
            TestPod::new(format!("gpu-{i}"))
                .scheduler("drover")
                .cpu("2")
                .memory("16Gi")
                .gpus(1 + (i % 2) as i64)
                .node_selector("pool", "gpu")
                .toleration("nvidia.com/gpu", "Exists", "", "NoSchedule")
                .build(),
        );
    }
    for i in 0..30 {
        batch.push(
            TestPod::new(format!("infra-{i}"))
                .scheduler("drover")
                .cpu("1")
                .memory("2Gi")
                .toleration("dedicated", "Equal", "infra", "NoExecute")
                .affinity(required(vec![req("pool", "In", &["infra"])]))
                .build(),
        );
    }
    for i in 0..50 {
        batch.push(
            TestPod::new(format!("zoned-{i}"))
                .scheduler("drover")
                .cpu("1")
                .memory("2Gi")
                .affinity(required(vec![
                    req("zone", "In", &["a", "b"]),
                    req("pool", "NotIn", &["gpu"]),
                ]))
                .build(),
        );
    }
    for i in 0..30 {
        batch.push(
            TestPod::new(format!("prefers-{i}"))
                .scheduler("drover")
                .cpu("1")
                .memory("1Gi")
                .affinity(preferred(50, vec![req("zone", "In", &["c"])]))
                .build(),
        );
    }
    for i in 0..250 {
        let cpu = ["500m", "1", "1500m", "2"][i % 4];
        let mem = ["1Gi", "2Gi", "3Gi", "4Gi"][(i / 4) % 4];
        batch.push(
            TestPod::new(format!("general-{i}"))
                .scheduler("drover")
                .cpu(cpu)
                .memory(mem)
                .build(),
        );
    }
    assert_eq!(batch.len(), 500);

    let drover = Drover::start(client.clone());
    create_all(&client, batch).await?;
    wait_until(
        Duration::from_secs(180),
        Duration::from_millis(500),
        "all 500 pods bound",
        || {
            let c = client.clone();
            async move { Ok(bound_count(&c, NS).await? == 500) }
        },
    )
    .await?;

    let nodes: HashMap<String, Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
        .collect();
    let mut bad = Vec::new();
    for p in pods(&client, NS).await? {
        let node = node_of(&p).expect("bound");
        bad.extend(violations(&p, &nodes[node]));
    }
    bad.extend(overcommitted(&client).await?);
    assert!(bad.is_empty(), "constraint violations:\n{}", bad.join("\n"));

    // Preferred affinity steers pods to zone c when it has room.
    let in_c = pods(&client, NS)
        .await?
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("prefers-"))
        })
        .filter(|p| {
            nodes[node_of(p).unwrap()]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("zone"))
                .map(String::as_str)
                == Some("c")
        })
        .count();
    assert_eq!(in_c, 30, "every pod that prefers zone c got it");
    drover.stop().await
}

async fn failed_scheduling_notes(client: &Client, pod: &str) -> anyhow::Result<Vec<String>> {
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(events
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                && e.reason.as_deref() == Some("FailedScheduling")
        })
        .filter_map(|e| e.note)
        .collect())
}

fn unschedulable_condition(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_is_reported_and_bound_when_a_node_fits() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let mut nodes: Vec<Node> = drover_e2e::nodes(3, "4", "16Gi");
    nodes.push(
        FakeNode::new("tainted")
            .cpu("64")
            .memory("256Gi")
            .taint("dedicated", "infra", "NoSchedule")
            .build(),
    );
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    api.create(
        &PostParams::default(),
        &TestPod::new("big")
            .scheduler("drover")
            .cpu("16")
            .memory("8Gi")
            .build(),
    )
    .await?;

    let want = "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, 3 Insufficient cpu.";
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the Unschedulable condition",
        || {
            let api = api.clone();
            async move {
                Ok(api
                    .get("big")
                    .await
                    .ok()
                    .and_then(|p| unschedulable_condition(&p))
                    .as_deref()
                    == Some(want))
            }
        },
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "a FailedScheduling Event",
        || {
            let c = client.clone();
            async move {
                Ok(failed_scheduling_notes(&c, "big")
                    .await?
                    .iter()
                    .any(|n| n == want))
            }
        },
    )
    .await?;
    assert!(node_of(&api.get("big").await?).is_none());

    // A node that fits arrives: the pod is bound to it without restarting drover.
    cp.create_nodes(&[FakeNode::new("roomy").cpu("32").memory("64Gi").build()])
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "big bound to roomy",
        || {
            let api = api.clone();
            async move { Ok(api.get("big").await.ok().as_ref().and_then(node_of) == Some("roomy")) }
        },
    )
    .await?;
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_other_schedulers_and_bound_pods_are_counted() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[
        FakeNode::new("n-0").cpu("4").memory("8Gi").build(),
        FakeNode::new("n-1").cpu("4").memory("8Gi").build(),
    ])
    .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    // Bound before drover starts, by "another scheduler".
    api.create(
        &PostParams::default(),
        &TestPod::new("early")
            .cpu("3")
            .memory("1Gi")
            .node_name("n-0")
            .build(),
    )
    .await?;
    let drover = Drover::start(client.clone());
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "drover synced",
        || {
            let s = drover.shared.synced.clone();
            async move { Ok(s.load(std::sync::atomic::Ordering::SeqCst)) }
        },
    )
    .await?;
    // Bound while drover runs, again by someone else (a pod of another scheduler name).
    api.create(
        &PostParams::default(),
        &TestPod::new("late")
            .scheduler("other-scheduler")
            .cpu("3")
            .memory("1Gi")
            .node_name("n-1")
            .build(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("mine-{i}"))
                .scheduler("drover")
                .cpu("3")
                .memory("1Gi")
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "both drover pods reported unschedulable",
        || {
            let api = api.clone();
            async move {
                let mut n = 0;
                for i in 0..2 {
                    if api
                        .get(&format!("mine-{i}"))
                        .await
                        .ok()
                        .and_then(|p| unschedulable_condition(&p))
                        .is_some_and(|m| m.contains("2 Insufficient cpu"))
                    {
                        n += 1;
                    }
                }
                Ok(n == 2)
            }
        },
    )
    .await?;
    assert_eq!(
        bound_count(&client, NS).await?,
        2,
        "only the two foreign pods are bound"
    );

    // The foreign pod on n-1 goes away: exactly one drover pod now fits, on n-1.
    api.delete("late", &DeleteParams::background().grace_period(0))
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "one drover pod bound to n-1",
        || {
            let c = client.clone();
            async move {
                let placed: Vec<_> = pods(&c, NS)
                    .await?
                    .into_iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("mine-"))
                    })
                    .filter_map(|p| node_of(&p).map(String::from))
                    .collect();
                Ok(placed == ["n-1"])
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        overcommitted(&client).await?.is_empty(),
        "{:?}",
        overcommitted(&client).await?
    );
    let mine_bound = pods(&client, NS)
        .await?
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("mine-"))
                && node_of(p).is_some()
        })
        .count();
    assert_eq!(mine_bound, 1, "the second drover pod still has no room");
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_loses_nothing_and_binds_nothing_twice() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let nodes: Vec<Node> = drover_e2e::nodes(20, "8", "32Gi");
    cp.create_nodes(&nodes).await?;

    // Record every node each pod is ever seen on.
    let seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> = Default::default();
    let seen_w = seen.clone();
    let watch_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let watch = tokio::spawn(async move {
        let mut s = watcher(watch_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(p)) = s.next().await {
            if let (Some(name), Some(node)) = (p.metadata.name.clone(), node_of(&p)) {
                let mut m = seen_w.lock().unwrap();
                let v = m.entry(name).or_default();
                if v.last().map(String::as_str) != Some(node) {
                    v.push(node.to_string());
                }
            }
        }
    });

    let first = Drover::start(client.clone());
    // Pods keep arriving one by one while the first instance runs and stops.
    let creator = {
        let api: Api<Pod> = Api::namespaced(client.clone(), NS);
        tokio::spawn(async move {
            for i in 0..300 {
                api.create(
                    &PostParams::default(),
                    &TestPod::new(format!("p-{i}"))
                        .scheduler("drover")
                        .cpu("500m")
                        .memory("1Gi")
                        .build(),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "some pods bound",
        || {
            let c = client.clone();
            async move { Ok(bound_count(&c, NS).await? >= 60) }
        },
    )
    .await?;
    let first_metrics = first.shared.metrics.clone();
    first.stop().await?;
    let at_restart = bound_count(&client, NS).await?;
    assert!(
        at_restart < 300,
        "the restart must happen mid-run (bound {at_restart})"
    );

    let second = Drover::start(client.clone());
    creator.await??;
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        "all 300 pods bound",
        || {
            let c = client.clone();
            async move { Ok(bound_count(&c, NS).await? == 300) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let scheduled =
        |m: &drover::metrics::Metrics| m.attempts.with_label_values(&["scheduled"]).get();
    let total = scheduled(&first_metrics) + scheduled(&second.shared.metrics);
    assert_eq!(
        total,
        300,
        "successful binds across both runs: first {} + second {}",
        scheduled(&first_metrics),
        scheduled(&second.shared.metrics)
    );
    let moved: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.len() != 1)
        .map(|(k, v)| format!("{k}: {v:?}"))
        .collect();
    assert!(
        moved.is_empty(),
        "pods seen on more than one node: {moved:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 300);
    assert!(overcommitted(&client).await?.is_empty());
    watch.abort();
    second.stop().await
}

/// A drover replica called `id` that elects a leader on the Lease `default/drover`
/// (6 s, so a takeover test does not wait long).
fn replica(client: &Client, id: &str) -> Drover {
    let mut o = drover::k8s::RunOptions::new("drover");
    o.identity = id.into();
    o.leader_election = Some(drover::k8s::run::LeaderElection {
        namespace: "default".into(),
        name: "drover".into(),
        duration_seconds: 6,
    });
    Drover::start_with(client.clone(), o)
}

/// True while `d` leads.
fn leads(d: &Drover) -> bool {
    d.shared.leader.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits until `d` leads (`leading`) or has stopped leading.
async fn wait_leading(
    d: &Drover,
    leading: bool,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    wait_until(within, Duration::from_millis(50), what, || {
        let l = d.shared.leader.clone();
        async move { Ok(l.load(std::sync::atomic::Ordering::SeqCst) == leading) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_binds_and_a_follower_takes_over() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let nodes: Vec<Node> = drover_e2e::nodes(4, "8", "32Gi");
    cp.create_nodes(&nodes).await?;
    let a = replica(&client, "replica-a");
    let b = replica(&client, "replica-b");
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "one replica leads",
        || {
            let (la, lb) = (a.shared.leader.clone(), b.shared.leader.clone());
            async move {
                Ok(la.load(std::sync::atomic::Ordering::SeqCst)
                    || lb.load(std::sync::atomic::Ordering::SeqCst))
            }
        },
    )
    .await?;
    let (leader, follower) = if leads(&a) { (a, b) } else { (b, a) };
    assert!(!leads(&follower), "never two leaders");
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..20 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("first-{i}"))
                .scheduler("drover")
                .cpu("500m")
                .build(),
        )
        .await?;
    }
    fn scheduled(m: &drover::metrics::Metrics) -> u64 {
        m.attempts.with_label_values(&["scheduled"]).get()
    }
    // A bind lands in the API server a moment before the binder's answer reaches the
    // scheduling loop that counts it: wait for both.
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "20 pods bound by the leader",
        || {
            let c = client.clone();
            let m = leader.shared.metrics.clone();
            async move { Ok(bound_count(&c, NS).await? == 20 && scheduled(&m) == 20) }
        },
    )
    .await?;
    assert_eq!(
        scheduled(&follower.shared.metrics),
        0,
        "the follower binds nothing"
    );
    // The follower's cache is warm: its watch brings it every pod on its node.
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the follower's cache holds the 20 bound pods",
        || {
            let s = follower.shared.snapshot.clone();
            async move {
                let snap = s.load();
                Ok(snap.nodes().map(|(_, n)| n.pods.len()).sum::<usize>() == 20)
            }
        },
    )
    .await?;
    assert_eq!(scheduled(&leader.shared.metrics), 20, "each pod bound once");

    // The leader stops (and releases the Lease): the follower takes over.
    leader.stop().await?;
    wait_leading(
        &follower,
        true,
        Duration::from_secs(30),
        "the follower leads",
    )
    .await?;
    for i in 0..10 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("second-{i}"))
                .scheduler("drover")
                .cpu("500m")
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the rest bound by the new leader",
        || {
            let c = client.clone();
            let m = follower.shared.metrics.clone();
            async move { Ok(bound_count(&c, NS).await? == 30 && scheduled(&m) == 10) }
        },
    )
    .await?;
    assert!(overcommitted(&client).await?.is_empty());
    follower.stop().await
}

/// Another replica's write to the Lease (a holder this replica cannot see, say one
/// that took over while this one could not reach the API server): this replica stops
/// scheduling at once and takes the Lease back only when it is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stops_scheduling() -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").cpu("8").memory("32Gi").build()])
        .await?;
    let a = replica(&client, "replica-a");
    wait_leading(&a, true, Duration::from_secs(30), "replica-a leads").await?;

    // "replica-b" writes itself into the Lease and keeps renewing it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let take = {
        let leases = leases.clone();
        move |holder: Option<&'static str>| {
            let leases = leases.clone();
            async move {
                let mut l = leases.get("drover").await?;
                let spec = l.spec.get_or_insert_with(Default::default);
                spec.holder_identity = holder.map(String::from);
                spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                leases.replace("drover", &PostParams::default(), &l).await?;
                anyhow::Ok(())
            }
        }
    };
    let intruder = {
        let take = take.clone();
        tokio::spawn(async move {
            loop {
                // A conflict with replica-a's renewal is retried at the next tick.
                let _ = take(Some("replica-b")).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    wait_leading(
        &a,
        false,
        Duration::from_secs(10),
        "replica-a stops leading",
    )
    .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    api.create(
        &PostParams::default(),
        &TestPod::new("while-b-holds")
            .scheduler("drover")
            .cpu("500m")
            .build(),
    )
    .await?;
    // Longer than the lease: replica-a must keep waiting while replica-b renews.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        bound_count(&client, NS).await?,
        0,
        "a follower binds nothing"
    );
    assert!(
        !leads(&a),
        "replica-a does not take a Lease that is renewed"
    );
    let held = leases.get("drover").await?;
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-b")
    );

    // replica-b gives the Lease up: replica-a takes it and schedules.
    intruder.abort();
    let _ = intruder.await;
    take(None).await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "replica-a leads again and binds the pod",
        || {
            let c = client.clone();
            async move { Ok(bound_count(&c, NS).await? == 1) }
        },
    )
    .await?;
    assert!(leads(&a));
    let lease = leases.get("drover").await?.spec.unwrap_or_default();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-a"));
    assert!(
        lease.lease_transitions.unwrap_or(0) >= 1,
        "taking the Lease over counts a transition: {lease:?}"
    );
    a.stop().await?;
    // A clean stop gives the Lease up.
    let released = leases.get("drover").await?.spec.unwrap_or_default();
    assert_eq!(released.holder_identity, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why_a_pod_waits() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            FakeNode::new(format!("small-{i}"))
                .cpu("2")
                .memory("8Gi")
                .build()
        })
        .collect();
    nodes.push(
        FakeNode::new("gpu-0")
            .cpu("32")
            .memory("128Gi")
            .gpus(8)
            .taint("nvidia.com/gpu", "present", "NoSchedule")
            .build(),
    );
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    api.create(
        &PostParams::default(),
        &TestPod::new("too-big")
            .scheduler("drover")
            .cpu("4")
            .memory("16Gi")
            .build(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "too-big marked Unschedulable",
        || {
            let c = client.clone();
            async move {
                let p = Api::<Pod>::namespaced(c, NS).get("too-big").await?;
                Ok(drover_e2e::unschedulable_message(&p).is_some())
            }
        },
    )
    .await?;
    let out = drover::k8s::explain::explain_pod(
        &client,
        &drover_core::config::Config::default(),
        NS,
        "too-big",
    )
    .await?;
    for want in [
        "pod default/too-big",
        "requests: cpu=4,memory=16Gi",
        "the scheduler said: 0/4 nodes are available",
        "4 evaluated, 0 would take it now, 4 would not",
        "3  Insufficient cpu: small-0, small-1, small-2",
        "1  node(s) had untolerated taint {nvidia.com/gpu: present}: gpu-0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let missing = drover::k8s::explain::explain_pod(
        &client,
        &drover_core::config::Config::default(),
        NS,
        "nobody",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("pod default/nobody not found"),
        "{missing}"
    );
    drover.stop().await
}

/// A pod asking for an impossible quantity (`cpu: 1e16`, more millicores than drover
/// can count) is never bound, and says why: its condition and one FailedScheduling
/// Event name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_drover_cannot_read_says_why() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").cpu("4").memory("16Gi").build()])
        .await?;
    let drover = Drover::start(client.clone());
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    api.create(
        &PostParams::default(),
        &TestPod::new("huge")
            .scheduler("drover")
            .cpu("1e16")
            .memory("1Gi")
            .build(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the unreadable pod's condition",
        || {
            let api = api.clone();
            async move {
                Ok(unschedulable_condition(&api.get("huge").await?)
                    .is_some_and(|m| m.contains("drover cannot read this pod")))
            }
        },
    )
    .await?;
    let pod = api.get("huge").await?;
    let m = unschedulable_condition(&pod).unwrap_or_default();
    assert!(m.contains("cpu"), "names the resource: {m}");
    assert_eq!(node_of(&pod), None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let notes = failed_scheduling_notes(&client, "huge").await?;
    assert_eq!(notes.len(), 1, "one Event: {notes:?}");

    // Running on a node already, with requests drover cannot read: that node is full
    // to drover, so a pod that fits it only by the numbers drover can read waits.
    cp.create_nodes(&[FakeNode::new("n-1").cpu("8").memory("32Gi").build()])
        .await?;
    api.create(
        &PostParams::default(),
        &TestPod::new("strange")
            .cpu("1e16")
            .memory("1Gi")
            .node_name("n-1")
            .build(),
    )
    .await?;
    api.create(
        &PostParams::default(),
        &TestPod::new("next").scheduler("drover").cpu("6").build(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the 6-cpu pod told it waits",
        || {
            let api = api.clone();
            async move { Ok(unschedulable_condition(&api.get("next").await?).is_some()) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        node_of(&api.get("next").await?),
        None,
        "not beside the unreadable pod"
    );
    api.delete("strange", &kube::api::DeleteParams::default())
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the 6-cpu pod bound once the unreadable pod is gone",
        || {
            let api = api.clone();
            async move { Ok(node_of(&api.get("next").await?) == Some("n-1")) }
        },
    )
    .await?;
    drover.stop().await
}
