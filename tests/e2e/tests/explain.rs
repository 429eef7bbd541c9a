//! `drover explain` asks the running scheduler what it holds and would do, so the two
//! agree: on a gang holding capacity, on a pod kept off that capacity (backfill), and
//! on a pod over its queue's max. Without a scheduler it says it is its own reading.

use std::time::Duration;

use drover::k8s::RunOptions;
use drover::k8s::explain::{Leader, explain_with_scheduler};
use drover_core::config::Config;
use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_core::quota::QUEUE_LABEL;
use drover_e2e::{Drover, QUEUE_CRD, unschedulable_message};
use drover_testenv::{ControlPlane, FakeNode, TestPod};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "default";

async fn told(client: &Client, name: &str) -> anyhow::Result<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = unschedulable_message(&api.get(name).await?) {
            return Ok(m);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "pod {name} was not told why it waits within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_what_the_scheduler_would_do() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[QUEUE_CRD]).await?;
    let client = cp.client();
    cp.create_nodes(&[
        FakeNode::new("a").cpu("4").memory("16Gi").build(),
        FakeNode::new("b").cpu("4").memory("16Gi").build(),
    ])
    .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    // 3 of a's 4 cpus are taken by a pod of another scheduler.
    api.create(
        &PostParams::default(),
        &TestPod::new("busy").cpu("3").node_name("a").build(),
    )
    .await?;
    drover_e2e::create_queue(&client, "team", json!({"max": {"cpu": "500m"}})).await?;

    let mut opts = RunOptions::new("drover");
    opts.metrics_addr = Some("127.0.0.1:0".parse()?);
    let drover = Drover::start_with(client.clone(), opts);
    // A gang of 2 × 4 cpu: b is free, a drains: capacity is held on b.
    for i in 0..2 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("g{i}"))
                .scheduler("drover")
                .cpu("4")
                .label(GROUP_LABEL, "train")
                .annotation(MIN_MEMBER_ANNOTATION, "2")
                .build(),
        )
        .await?;
    }
    told(&client, "g0").await?;
    // A 2-cpu pod that b could take but for the capacity held there.
    api.create(
        &PostParams::default(),
        &TestPod::new("small").scheduler("drover").cpu("2").build(),
    )
    .await?;
    let small_told = told(&client, "small").await?;
    assert!(
        small_told.contains("held for a waiting gang"),
        "{small_told}"
    );
    // Over its queue's max.
    api.create(
        &PostParams::default(),
        &TestPod::new("over")
            .scheduler("drover")
            .cpu("1")
            .label(QUEUE_LABEL, "team")
            .build(),
    )
    .await?;
    let over_told = told(&client, "over").await?;

    let url = format!("http://{}", drover.shared.served_at.get().expect("serving"));
    let leader = Leader::Url(url);
    let config = Config::default();
    for (pod, expect) in [
        ("g0", "scheduler (http://".to_string()),
        ("small", format!("waits: {small_told}")),
        ("over", format!("waits: {over_told}")),
    ] {
        let out = explain_with_scheduler(&client, &config, NS, pod, Some(&leader)).await?;
        println!("--- drover explain {pod}\n{out}");
        let first = out.lines().next().unwrap_or_default();
        assert!(first.starts_with("scheduler (http://"), "{out}");
        assert!(
            first.contains(&expect) || expect.starts_with("scheduler"),
            "{pod}: {out}"
        );
        assert!(out.contains("drover explain's own reading"), "{out}");
    }
    let g0 = explain_with_scheduler(&client, &config, NS, "g0", Some(&leader)).await?;
    assert!(
        g0.lines()
            .next()
            .unwrap_or_default()
            .contains("waits: gang default/train"),
        "{g0}"
    );
    assert!(
        g0.contains("capacity held for gang default/train on: ")
            && g0.contains("capacity is held for it meanwhile"),
        "{g0}"
    );

    // No scheduler to ask: it says so.
    let alone = explain_with_scheduler(
        &client,
        &config,
        NS,
        "small",
        Some(&Leader::Url("http://127.0.0.1:9".into())),
    )
    .await?;
    assert!(alone.starts_with("no scheduler answered ("), "{alone}");
    drover.stop().await
}
