//! Fair-share queues against a real kube-apiserver + etcd + kwok: shares converge to
//! the fair ones under saturating demand, a queue at max never exceeds it (gangs
//! included), and bad Queue objects and missing queues are reported.

use std::collections::BTreeMap;
use std::time::Duration;

use drover::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{Drover, QUEUE_CRD, node_of, pods, unschedulable_message};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "default";

async fn create_queue(client: &Client, body: serde_json::Value) -> anyhow::Result<()> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &drover::k8s::status::queue_resource());
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "drover.dev/v1alpha1", "kind": "Queue"
    }))?;
    obj.metadata.name = body["name"].as_str().map(String::from);
    obj.data = json!({ "spec": body["spec"] });
    api.create(&PostParams::default(), &obj).await?;
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
            .map(|q| drover::quantity::parse_resource("cpu", &q.0).unwrap())
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
    let nodes: Vec<Node> = (0..10)
        .map(|i| {
            FakeNode::new(format!("n-{i}"))
                .cpu("4")
                .memory("32Gi")
                .build()
        })
        .collect();
    cp.create_nodes(&nodes).await?;
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
    let nodes: Vec<Node> = (0..4)
        .map(|i| {
            FakeNode::new(format!("n-{i}"))
                .cpu("8")
                .memory("32Gi")
                .build()
        })
        .collect();
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
