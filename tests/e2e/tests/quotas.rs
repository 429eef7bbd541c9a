//! Fair-share queues against a real kube-apiserver + etcd + kwok: shares converge to
//! the fair ones under saturating demand, a queue at max never exceeds it (gangs
//! included), and bad Queue objects and missing queues are reported.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{Drover, QUEUE_CRD, node_of, pods, unschedulable_message};
use drover_testenv::{ControlPlane, TestPod, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "default";

async fn create_queue(client: &Client, body: serde_json::Value) -> anyhow::Result<()> {
    let name = body["name"].as_str().unwrap_or_default();
    drover_e2e::create_queue(client, name, body["spec"].clone()).await?;
    Ok(())
}

async fn queue_status(client: &Client, name: &str) -> anyhow::Result<serde_json::Value> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &drover::k8s::status::queue_resource());
    Ok(api.get(name).await?.data["status"].clone())
}

fn team_pod(name: &str, queue: &str, cpu: &str) -> Pod {
    TestPod::new(name)
        .scheduler("drover")
        .cpu(cpu)
        .memory("128Mi")
        .label("drover.dev/queue", queue)
        .build()
}

/// `n` nodes of 4 cpus and 32 GiB, `n-0`, `n-1`, ...
fn four_cpu_nodes(n: usize) -> Vec<Node> {
    drover_e2e::nodes(n, "4", "32Gi")
}

/// `p` with a termination grace period of 0: evicted, it ends at once (kwok honours
/// the grace period).
fn ends_at_once(mut p: Pod) -> Pod {
    p.spec
        .as_mut()
        .expect("a pod spec")
        .termination_grace_period_seconds = Some(0);
    p
}

/// Names of the pods in `NS` that are not being deleted.
async fn remaining(client: &Client) -> anyhow::Result<Vec<String>> {
    Ok(pods(client, NS)
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Of the gang of `size` whose members' names start with `prefix`, all remain or none.
fn assert_whole_gang(left: &[String], prefix: &str, size: usize) {
    let n = left.iter().filter(|n| n.starts_with(prefix)).count();
    assert!(n == 0 || n == size, "half a gang evicted: {left:?}");
}

/// Bound cpu (millicores) per queue label.
async fn bound_cpu(client: &Client) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for p in pods(client, NS).await? {
        let (Some(q), Some(_)) = (
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("drover.dev/queue"))
                .cloned(),
            node_of(&p),
        ) else {
            continue;
        };
        let cpu = p.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| drover_core::quantity::parse_resource("cpu", &q.0).unwrap())
            .unwrap_or(0);
        *out.entry(q).or_default() += cpu;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_converge_to_the_fair_shares_under_saturating_demand() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[QUEUE_CRD]).await?;
    let client = cp.client();
    // 40 cpus; guarantees 40/40/20 % (16/16/8 cpus), weights 1/1/2.
    cp.create_nodes(&four_cpu_nodes(10)).await?;
    for (name, g, w) in [("team-a", "16", 1), ("team-b", "16", 1), ("team-c", "8", 2)] {
        create_queue(
            &client,
            json!({"name": name, "spec": {"guaranteed": {"cpu": g}, "weight": w}}),
        )
        .await?;
    }
    // Each team asks for the whole cluster, in interleaved order.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..40 {
        for team in ["team-c", "team-a", "team-b"] {
            api.create(
                &PostParams::default(),
                &team_pod(&format!("{team}-{i}"), team, "1"),
            )
            .await?;
        }
    }
    let drover = Drover::start(client.clone());
    wait_until(
        Duration::from_secs(90),
        Duration::from_millis(250),
        "the cluster full",
        || {
            let c = client.clone();
            async move { Ok(bound_cpu(&c).await?.values().sum::<i64>() == 40_000) }
        },
    )
    .await?;
    let got = bound_cpu(&client).await?;
    let share = |q: &str| got.get(q).copied().unwrap_or(0) as f64 / 40_000.0 * 100.0;
    eprintln!(
        "allocated shares (ideal 40/40/20 %): team-a {:.1} %, team-b {:.1} %, team-c {:.1} %",
        share("team-a"),
        share("team-b"),
        share("team-c")
    );
    for (q, ideal) in [("team-a", 40.0), ("team-b", 40.0), ("team-c", 20.0)] {
        assert!(
            (share(q) - ideal).abs() <= 5.0,
            "{q}: {:.1} % vs ideal {ideal} %",
            share(q)
        );
    }
    // Queue status and metrics follow.
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(250),
        "Queue team-c status written",
        || {
            let c = client.clone();
            async move {
                let s = queue_status(&c, "team-c").await?;
                Ok(s["allocated"]["cpu"].is_string() && s["fairShare"]["cpu"].is_string())
            }
        },
    )
    .await?;
    let metrics = drover.shared.metrics.render();
    assert!(
        metrics.contains(
            "drover_queue_resource{kind=\"guaranteed\",queue=\"team-a\",resource=\"cpu\"} 16"
        ),
        "{metrics}"
    );
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_at_max_never_exceeds_it_and_bad_input_is_reported() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[QUEUE_CRD, drover_e2e::POD_GROUP_CRD])
        .await?;
    let client = cp.client();
    let nodes: Vec<Node> = drover_e2e::nodes(4, "8", "32Gi");
    cp.create_nodes(&nodes).await?;
    // The API refuses what its schema can tell is wrong, naming the field.
    for (body, field) in [
        (
            json!({"name": "over", "spec": {"guaranteed": {"cpu": "4"}, "max": {"cpu": "2"}}}),
            "spec.guaranteed",
        ),
        (
            json!({"name": "loop", "spec": {"parent": "loop"}}),
            "spec.parent",
        ),
        (
            json!({"name": "light", "spec": {"weight": 0}}),
            "spec.weight",
        ),
        (
            json!({"name": "neg", "spec": {"max": {"cpu": "-1"}}}),
            "spec.max",
        ),
    ] {
        let err = create_queue(&client, body)
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    // What only drover can tell is flagged on the Queue and on its pods.
    create_queue(
        &client,
        json!({"name": "orphan", "spec": {"parent": "nowhere"}}),
    )
    .await?;
    create_queue(
        &client,
        json!({"name": "capped", "spec": {"max": {"cpu": "3"}}}),
    )
    .await?;
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "analytics", "labels": {"drover.dev/queue": "capped"}}}),
    )?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    // A gang of 4 × 1 cpu can never fit a 3-cpu max: it waits whole, nothing bound.
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("big-{i}"))
                .scheduler("drover")
                .cpu("1")
                .label("drover.dev/queue", "capped")
                .label(GROUP_LABEL, "big")
                .annotation(MIN_MEMBER_ANNOTATION, "4")
                .build(),
        )
        .await?;
    }
    // Two single pods fit; a third of 2 cpus would not.
    for (name, cpu) in [("one", "1"), ("two", "1")] {
        api.create(&PostParams::default(), &team_pod(name, "capped", cpu))
            .await?;
    }
    api.create(&PostParams::default(), &team_pod("lost", "ghost", "1"))
        .await?;
    api.create(&PostParams::default(), &team_pod("stray", "orphan", "1"))
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "every refusal reported",
        || {
            let c = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(c.clone(), NS);
                let msg = |p: Pod| unschedulable_message(&p).unwrap_or_default();
                let big = msg(api.get("big-0").await?);
                let lost = msg(api.get("lost").await?);
                let stray = msg(api.get("stray").await?);
                let two_bound = node_of(&api.get("one").await?).is_some()
                    && node_of(&api.get("two").await?).is_some();
                Ok(
                    big.contains("gang default/big: queue capped would exceed its max cpu")
                        && lost.contains("queue \"ghost\" does not exist")
                        && stray.contains("Queue orphan: spec.parent")
                        && two_bound,
                )
            }
        },
    )
    .await?;
    let bound = bound_cpu(&client).await?;
    assert_eq!(bound.get("capped"), Some(&2000), "{bound:?}");
    // The namespace's default queue: a pod without a label in `analytics` is capped too.
    let analytics: Api<Pod> = Api::namespaced(client.clone(), "analytics");
    analytics
        .create(
            &PostParams::default(),
            &TestPod::new("via-namespace")
                .namespace("analytics")
                .scheduler("drover")
                .cpu("2")
                .build(),
        )
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the namespace's queue applied",
        || {
            let a = analytics.clone();
            async move {
                Ok(unschedulable_message(&a.get("via-namespace").await?)
                    .is_some_and(|m| m.contains("queue capped would exceed its max cpu")))
            }
        },
    )
    .await?;
    // `drover explain` says why: the queue, where it comes from, its standing, and
    // for the gang, its members too.
    let config = drover_core::config::Config::default();
    let out =
        drover::k8s::explain::explain_pod(&client, &config, "analytics", "via-namespace").await?;
    for want in [
        "queue: capped (the drover.dev/queue label of namespace analytics)",
        "max cpu=3",
        "allocated cpu=2",
        "admission: waits: queue capped would exceed its max cpu: 2 allocated + 2 asked > 3 max",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let out = drover::k8s::explain::explain_pod(&client, &config, NS, "big-0").await?;
    for want in [
        "queue: capped (its drover.dev/queue label)",
        "gang: default/big (minMember 4 from drover.dev/min-member): 4 pending",
        "the scheduler said: gang default/big: queue capped would exceed its max cpu",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(250),
        "Queue orphan flagged in its status",
        || {
            let c = client.clone();
            async move { Ok(queue_status(&c, "orphan").await?["conditions"][0]["status"] == "False") }
        },
    )
    .await?;
    let status = queue_status(&client, "orphan").await?;
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"nowhere\" does not exist")),
        "{status}"
    );
    // Raising the max lets the waiting work in (2 + 2 + 4 cpus), never beyond it.
    let qapi: Api<DynamicObject> =
        Api::all_with(client.clone(), &drover::k8s::status::queue_resource());
    qapi.patch(
        "capped",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"max": {"cpu": "8"}}})),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the gang fits the raised max",
        || {
            let c = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(c, NS);
                let mut all = true;
                for i in 0..4 {
                    all &= node_of(&api.get(&format!("big-{i}")).await?).is_some();
                }
                Ok(all)
            }
        },
    )
    .await?;
    let capped: i64 = bound_cpu(&client)
        .await?
        .get("capped")
        .copied()
        .unwrap_or(0);
    let via_ns = node_of(
        &Api::<Pod>::namespaced(client.clone(), "analytics")
            .get("via-namespace")
            .await?,
    )
    .is_some();
    let total = capped + if via_ns { 2000 } else { 0 };
    assert!(total <= 8000, "capped holds {total} millicores, max 8000");
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_team_gets_its_guarantee_back_by_reclaim() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[QUEUE_CRD]).await?;
    let client = cp.client();
    cp.create_nodes(&four_cpu_nodes(2)).await?;
    for name in ["team-a", "team-b"] {
        create_queue(
            &client,
            json!({"name": name, "spec": {"guaranteed": {"cpu": "4"}}}),
        )
        .await?;
    }
    let drover = Drover::start_with_config(client.clone(), drover_e2e::QUICK_EVICTIONS)?;
    // team-a is idle; team-b takes the whole cluster: a 2-pod gang, four plain pods,
    // and (youngest, so first in line) two pods a PodDisruptionBudget protects.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let b = |name: &str| {
        TestPod::new(name)
            .scheduler("drover")
            .cpu("1")
            .label("drover.dev/queue", "team-b")
    };
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &ends_at_once(
                b(&format!("b-gang-{i}"))
                    .label(GROUP_LABEL, "b-gang")
                    .annotation(MIN_MEMBER_ANNOTATION, "2")
                    .build(),
            ),
        )
        .await?;
    }
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &ends_at_once(b(&format!("b-{i}")).build()),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &b(&format!("b-protected-{i}"))
                .label("protected", "yes")
                .build(),
        )
        .await?;
    }
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "protect"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"protected": "yes"}}}
    }))?;
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pdb)
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "team-b holds the cluster",
        || {
            let c = client.clone();
            async move { Ok(bound_cpu(&c).await?.get("team-b") == Some(&8000)) }
        },
    )
    .await?;
    // The PDB controller is not running here: set what it would compute.
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), NS);
    pdbs.patch_status(
        "protect",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {
            "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2,
            "disruptionsAllowed": 0, "observedGeneration": 1
        }})),
    )
    .await?;
    // team-a wakes up and asks for its guarantee.
    let asked = std::time::Instant::now();
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &team_pod(&format!("a-{i}"), "team-a", "1"),
        )
        .await?;
    }
    let restored = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "team-a's guarantee restored",
        || {
            let c = client.clone();
            async move { Ok(bound_cpu(&c).await?.get("team-a") == Some(&4000)) }
        },
    )
    .await;
    if restored.is_err() {
        for p in pods(&client, NS).await? {
            let name = p.metadata.name.clone().unwrap_or_default();
            eprintln!(
                "{name}: node {:?} deleting {:?} phase {:?} events {:?}",
                drover_e2e::node_of(&p),
                p.metadata.deletion_timestamp,
                p.status.as_ref().and_then(|s| s.phase.clone()),
                drover_e2e::events_for(&client, NS, &name).await?
            );
        }
    }
    restored?;
    eprintln!(
        "team-a's 4 cpus restored {:?} after it asked (grace 1 s)",
        asked.elapsed()
    );
    let left = remaining(&client).await?;
    // Whole gangs only: both members stay or both go.
    assert_whole_gang(&left, "b-gang-", 2);
    // The PodDisruptionBudget was honoured.
    assert!(
        left.contains(&"b-protected-0".to_string()) && left.contains(&"b-protected-1".to_string()),
        "{left:?}"
    );
    // team-b keeps its own guarantee.
    let b_cpu = bound_cpu(&client)
        .await?
        .get("team-b")
        .copied()
        .unwrap_or(0);
    assert!(b_cpu >= 4000, "team-b fell below its guarantee: {b_cpu}");
    // Every eviction says which queue reclaimed.
    let evicted: Vec<String> = ["b-0", "b-1", "b-2", "b-3", "b-gang-0", "b-gang-1"]
        .iter()
        .filter(|n| !left.contains(&n.to_string()))
        .map(|n| n.to_string())
        .collect();
    assert!(!evicted.is_empty());
    for v in &evicted {
        drover_e2e::wait_event(
            &client,
            NS,
            v,
            Duration::from_secs(10),
            "Reclaimed by queue team-a",
            |r, n| r == "Reclaimed" && n.contains("queue team-a reclaims"),
        )
        .await?;
    }
    assert!(
        drover
            .shared
            .metrics
            .evictions
            .with_label_values(&["reclaim"])
            .get()
            >= evicted.len() as u64
    );
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_gang_preempts_whole_lower_priority_units_in_its_queue()
-> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&four_cpu_nodes(2)).await?;
    let drover = Drover::start_with_config(client.clone(), drover_e2e::QUICK_EVICTIONS)?;
    // No Queue objects: every pod is in the queue `default`. Low-priority work fills
    // the cluster: a 2-member gang of 2 cpus each, then four 1-cpu pods.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &ends_at_once(
                TestPod::new(format!("low-gang-{i}"))
                    .scheduler("drover")
                    .cpu("2")
                    .priority(10)
                    .label(GROUP_LABEL, "low-gang")
                    .annotation(MIN_MEMBER_ANNOTATION, "2")
                    .build(),
            ),
        )
        .await?;
    }
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &ends_at_once(
                TestPod::new(format!("low-{i}"))
                    .scheduler("drover")
                    .cpu("1")
                    .priority(10)
                    .build(),
            ),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "low-priority work holds the cluster",
        || {
            let c = client.clone();
            async move { Ok(drover_e2e::bound_count(&c, NS).await? == 6) }
        },
    )
    .await?;
    // A pod that may not preempt (preemptionPolicy: Never) evicts nothing.
    let mut polite = TestPod::new("polite")
        .scheduler("drover")
        .cpu("1")
        .priority(1000)
        .build();
    polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
    api.create(&PostParams::default(), &polite).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(drover_e2e::bound_count(&client, NS).await?, 6);
    api.delete("polite", &Default::default()).await?;
    // A high-priority gang of two 2-cpu pods: room is made for both, whole units go.
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("urgent-{i}"))
                .scheduler("drover")
                .cpu("2")
                .priority(1000)
                .label(GROUP_LABEL, "urgent")
                .annotation(MIN_MEMBER_ANNOTATION, "2")
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the urgent gang bound in full",
        || {
            let c = client.clone();
            async move {
                let bound = pods(&c, NS)
                    .await?
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .unwrap_or("")
                            .starts_with("urgent-")
                            && node_of(p).is_some()
                    })
                    .count();
                Ok(bound == 2)
            }
        },
    )
    .await?;
    let left = remaining(&client).await?;
    assert_whole_gang(&left, "low-gang-", 2);
    // Only as much as needed: 4 cpus of low-priority work are left.
    let low_cpu: usize = left
        .iter()
        .map(|n| {
            if n.starts_with("low-gang-") {
                2
            } else if n.starts_with("low-") {
                1
            } else {
                0
            }
        })
        .sum();
    assert_eq!(low_cpu, 4, "{left:?}");
    let evicted: Vec<&str> = [
        "low-gang-0",
        "low-gang-1",
        "low-0",
        "low-1",
        "low-2",
        "low-3",
    ]
    .into_iter()
    .filter(|n| !left.iter().any(|l| l == n))
    .collect();
    for v in &evicted {
        drover_e2e::wait_event(
            &client,
            NS,
            v,
            Duration::from_secs(10),
            "Preempted for gang default/urgent",
            |r, n| r == "Preempted" && n.contains("gang default/urgent"),
        )
        .await?;
    }
    let counted = drover
        .shared
        .metrics
        .evictions
        .with_label_values(&["preemption"])
        .get();
    assert_eq!(counted, evicted.len() as u64);
    drover.stop().await
}
