//! Faults drover must survive on the real control plane, each bounded in time and
//! asserting that nothing is lost and nothing is bound twice.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_e2e::{Drover, bound_count, node_of, pods};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};

const NS: &str = "default";

/// `Scheduled` Events per pod: one each, or a pod was bound twice.
async fn scheduled_events(client: &kube::Client) -> anyhow::Result<BTreeMap<String, usize>> {
    let evs = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items;
    let mut out = BTreeMap::new();
    for e in evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
    {
        let name = e
            .regarding
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_default();
        *out.entry(name).or_default() += 1;
    }
    Ok(out)
}

/// kube-apiserver killed with SIGKILL and down for 8 s while drover runs: every pod
/// created after it answers again is bound within 3 s of that moment (drover's
/// watches come back within 1.6 s), and every pod is bound exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_after_an_api_server_restart_bind_within_3_s() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let nodes: Vec<_> = (0..4)
        .map(|i| FakeNode::new(format!("n-{i}")).build())
        .collect();
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = |name: String| TestPod::new(name).scheduler("drover").cpu("100m").build();
    for i in 0..5 {
        api.create(&PostParams::default(), &pod(format!("before-{i}")))
            .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the pods before the restart bound",
        || async { Ok(bound_count(&client, NS).await? == 5) },
    )
    .await?;

    let back = cp.restart_apiserver(Duration::from_secs(8)).await?;
    for i in 0..10 {
        api.create(&PostParams::default(), &pod(format!("after-{i}")))
            .await?;
    }
    let mut bound_at = None;
    while back.elapsed() < Duration::from_secs(20) {
        if bound_count(&client, NS).await? == 15 {
            bound_at = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = bound_at.ok_or_else(|| {
        anyhow::anyhow!("pods created after the restart were not all bound within 20 s")
    })?;
    println!(
        "kube-apiserver down 8 s: the 10 pods created after it answered were bound {} ms after it answered",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_secs(3),
        "bound {took:?} after the API server answered"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = scheduled_events(&client).await?;
    for p in pods(&client, NS).await? {
        let name = p.metadata.name.clone().unwrap_or_default();
        assert!(node_of(&p).is_some(), "{name} bound");
        assert!(
            events.get(&name).copied().unwrap_or(0) <= 1,
            "{name} bound once: {events:?}"
        );
    }
    drover.stop().await
}
