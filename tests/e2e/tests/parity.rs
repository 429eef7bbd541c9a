//! drover as a drop-in for kube-scheduler, against a real kube-apiserver + etcd + kwok:
//! the same objects, on a fresh control plane for each scheduler, end placed (or left
//! pending) the same way by drover and by the real kube-scheduler.

use std::time::Duration;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{Drover, gang_counts, node_of, unschedulable_message};
use drover_testenv::{ControlPlane, FakeNode, ProcessGuard, TestPod, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "default";
const GATE: &str = "example.com/admission";

/// Which scheduler places the pods of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    Drover,
    KubeScheduler,
}

impl Sched {
    const BOTH: [Sched; 2] = [Sched::Drover, Sched::KubeScheduler];

    /// The `schedulerName` its pods carry.
    fn name(self) -> &'static str {
        match self {
            Sched::Drover => "drover",
            Sched::KubeScheduler => "default-scheduler",
        }
    }
}

/// A running scheduler of either kind; dropped at the end of its run.
enum Running {
    Drover(Drover),
    KubeScheduler(#[allow(dead_code)] ProcessGuard),
}

impl Running {
    async fn start(cp: &ControlPlane, s: Sched) -> anyhow::Result<Running> {
        Ok(match s {
            Sched::Drover => Running::Drover(Drover::start(cp.client())),
            Sched::KubeScheduler => Running::KubeScheduler(cp.start_kube_scheduler(None).await?),
        })
    }

    fn drover(&self) -> Option<&Drover> {
        match self {
            Running::Drover(d) => Some(d),
            Running::KubeScheduler(_) => None,
        }
    }
}

async fn create(client: &Client, pod: &Pod) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), pod)
        .await?;
    Ok(())
}

/// Removes every scheduling gate of pod `name`, as Kueue does when it admits a job.
async fn lift_gates(client: &Client, name: &str) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"schedulingGates": null}})),
        )
        .await?;
    Ok(())
}

async fn node_of_pod(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let p = Api::<Pod>::namespaced(client.clone(), NS).get(name).await?;
    Ok(node_of(&p).map(str::to_string))
}

/// `PodScheduled` condition's reason, if any.
fn scheduled_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?
        .reason
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_waits_for_either_scheduler_and_binds_once_ungated() -> anyhow::Result<()> {
    for s in Sched::BOTH {
        let cp = ControlPlane::start().await?;
        let client = cp.client();
        cp.create_nodes(&[FakeNode::new("n-0").cpu("4").memory("16Gi").build()])
            .await?;
        let running = Running::start(&cp, s).await?;
        create(
            &client,
            &TestPod::new("gated")
                .scheduler(s.name())
                .cpu("1")
                .memory("1Gi")
                .scheduling_gate(GATE)
                .build(),
        )
        .await?;
        // A plain pod created after it is bound: the scheduler is at work.
        create(
            &client,
            &TestPod::new("plain")
                .scheduler(s.name())
                .cpu("1")
                .memory("1Gi")
                .build(),
        )
        .await?;
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            "the plain pod bound",
            || {
                let c = client.clone();
                async move { Ok(node_of_pod(&c, "plain").await?.is_some()) }
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pod = Api::<Pod>::namespaced(client.clone(), NS)
            .get("gated")
            .await?;
        assert_eq!(node_of(&pod), None, "{s:?}: a gated pod is never bound");
        assert_eq!(
            scheduled_reason(&pod).as_deref(),
            Some("SchedulingGated"),
            "{s:?}: the API server's condition stays"
        );
        if let Some(d) = running.drover() {
            let gauge = d.shared.metrics.pending.with_label_values(&["gated"]);
            wait_until(
                Duration::from_secs(10),
                Duration::from_millis(100),
                "drover_pending_pods{state=\"gated\"} 1",
                || {
                    let v = gauge.get();
                    async move { Ok(v == 1) }
                },
            )
            .await?;
        }
        lift_gates(&client, "gated").await?;
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            "the ungated pod bound",
            || {
                let c = client.clone();
                async move { Ok(node_of_pod(&c, "gated").await?.is_some()) }
            },
        )
        .await?;
        if let Running::Drover(d) = running {
            d.stop().await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_with_a_gated_member_waits_whole_then_binds_whole() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[
        FakeNode::new("n-0").cpu("4").memory("16Gi").build(),
        FakeNode::new("n-1").cpu("4").memory("16Gi").build(),
    ])
    .await?;
    let drover = Drover::start(client.clone());
    // Room for the whole gang; one of its three members is gated (an elastic gang
    // whose two ungated members alone would make minMember 2 waits all the same).
    for (gang, min) in [("g", 3), ("e", 2)] {
        for i in 0..3 {
            let mut p = TestPod::new(format!("{gang}-{i}"))
                .scheduler("drover")
                .cpu("1")
                .memory("1Gi")
                .label(GROUP_LABEL, gang)
                .annotation(MIN_MEMBER_ANNOTATION, &min.to_string());
            if i == 2 {
                p = p.scheduling_gate(GATE);
            }
            create(&client, &p.build()).await?;
        }
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the ungated members say why they wait",
        || {
            let c = client.clone();
            async move {
                let api = Api::<Pod>::namespaced(c, NS);
                for name in ["g-0", "e-0"] {
                    let m = unschedulable_message(&api.get(name).await?).unwrap_or_default();
                    if !m.contains("waiting for scheduling gates on 1 member(s)") {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = gang_counts(&client, NS).await?;
    for gang in ["g", "e"] {
        assert_eq!(
            counts.get(gang).map_or(0, |c| c.0),
            0,
            "gang {gang}: nothing bound while a member is gated: {counts:?}"
        );
    }
    for gang in ["g", "e"] {
        lift_gates(&client, &format!("{gang}-2")).await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "both gangs bound whole",
        || {
            let c = client.clone();
            async move {
                let g = gang_counts(&c, NS).await?;
                Ok(["g", "e"]
                    .iter()
                    .all(|k| g.get(*k).is_some_and(|c| c.0 == 3)))
            }
        },
    )
    .await?;
    drover.stop().await
}
