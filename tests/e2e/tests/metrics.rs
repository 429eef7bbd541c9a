//! `/metrics` of drover and of drover-extender, read over HTTP from running instances
//! and parsed by the parser Prometheus itself uses: the text is valid, every metric
//! drover declares is there with its type, and the counters moved with the work done.

use std::time::Duration;

use drover_e2e::{Drover, http_get, parse_prometheus_text};
use drover_testenv::{ControlPlane, FakeNode, TestPod, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").cpu("4").memory("16Gi").build()])
        .await?;
    let drover = Drover::start(client.clone());
    let addr = drover::k8s::serve::spawn(
        "127.0.0.1:0".parse()?,
        drover.shared.clone(),
        drover.shutdown.clone(),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, cpu) in [("fits", "1"), ("too-big", "64")] {
        pods.create(
            &PostParams::default(),
            &TestPod::new(name).scheduler("drover").cpu(cpu).build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "one pod bound, one unschedulable",
        || {
            let s = drover.shared.clone();
            async move {
                let a = &s.metrics.attempts;
                Ok(a.with_label_values(&["scheduled"]).get() == 1
                    && a.with_label_values(&["unschedulable"]).get() >= 1)
            }
        },
    )
    .await?;
    let text = http_get(addr, "/metrics").await?;
    let families = parse_prometheus_text(&text)?;
    // Every metric drover declares is served, with a type (a vector without series yet
    // is absent, which Prometheus reads as "no data": only those may be missing).
    for name in drover.shared.metrics.names() {
        if let Some((kind, _)) = families.get(&name) {
            assert!(
                ["COUNTER", "GAUGE", "HISTOGRAM"].contains(&kind.as_str()),
                "{name}: {kind}"
            );
        }
    }
    assert_eq!(
        families["drover_schedule_attempts_total"],
        ("COUNTER".to_string(), 2),
        "scheduled and unschedulable"
    );
    assert_eq!(
        families["drover_pod_scheduling_duration_seconds"].0,
        "HISTOGRAM"
    );
    assert_eq!(families["drover_leader"].0, "GAUGE");
    for line in ["drover_leader 1", "drover_cache_nodes 1"] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // Something that is not the text format is refused: the parser can fail.
    assert!(parse_prometheus_text("drover_leader one\n").is_err());
    drover.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extender_metrics_parse_as_prometheus_text() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let (running, shutdown) = drover_e2e::start_extender(cp.client()).await?;
    // One malformed call, so that an error counter has a series.
    let bad = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(running.addr).await?;
        s.write_all(
            b"POST /filter HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{oops",
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        out
    };
    assert!(
        bad.starts_with("HTTP/1.0 400") || bad.starts_with("HTTP/1.1 400"),
        "{bad}"
    );
    let text = http_get(running.addr, "/metrics").await?;
    let families = parse_prometheus_text(&text)?;
    assert_eq!(
        families["drover_extender_request_duration_seconds"].0,
        "HISTOGRAM"
    );
    assert_eq!(families["drover_extender_errors_total"].0, "COUNTER");
    // The cache's own drover_* metrics are served alongside, once each.
    assert_eq!(families["drover_cache_nodes"].0, "GAUGE");
    shutdown.cancel();
    Ok(())
}
