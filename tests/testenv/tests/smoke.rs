//! Starts a real control plane and checks that fake nodes, kwok, kube-scheduler,
//! kube-controller-manager and teardown work.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_testenv::{ControlPlane, FakeNode, TestPod, bound_pods, wait_until};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

fn capacity(n: &Node) -> BTreeMap<String, String> {
    let s = n.status.as_ref().expect("status");
    let cap: BTreeMap<String, String> = s
        .capacity
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let alloc: BTreeMap<String, String> = s
        .allocatable
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    assert_eq!(
        cap, alloc,
        "capacity == allocatable on {:?}",
        n.metadata.name
    );
    cap
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn phase(api: &Api<Pod>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(api.get_opt(name).await?.and_then(|p| p.status?.phase))
}

/// Nothing that mentions `dir` on its command line still runs, and none of `pids` exists.
fn assert_all_gone(dir: &Path, pids: &[(String, u32)]) {
    for (name, pid) in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still exists after drop"
        );
    }
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(dir.as_os_str())
        .output()
        .expect("pgrep runs");
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(left.trim().is_empty(), "processes left running:\n{left}");
    if std::env::var_os("DROVER_TESTENV_KEEP").is_none() {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_fake_nodes_kwok_and_kube_scheduler() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    eprintln!(
        "control plane up in {:?} at {} ({})",
        cp.started_in(),
        cp.server_url(),
        cp.temp_dir().display()
    );
    let client = cp.client();
    let info = client.apiserver_version().await?;
    assert_eq!(
        info.git_version, "v1.34.4",
        "apiserver version (build.sh stamps it)"
    );

    // Three fake nodes with different capacities.
    let nodes = vec![
        FakeNode::new("small")
            .cpu("2")
            .memory("4Gi")
            .pods(20)
            .build(),
        FakeNode::new("big")
            .cpu("32")
            .memory("128Gi")
            .gpus(8)
            .resource("example.com/foo", "4")
            .label("pool", "gpu")
            .taint("nvidia.com/gpu", "present", "NoSchedule")
            .build(),
        FakeNode::new("cordoned")
            .cpu("8")
            .memory("32Gi")
            .gpus(2)
            .unschedulable(true)
            .build(),
    ];
    let t = Instant::now();
    cp.create_nodes(&nodes).await?;
    eprintln!("3 nodes Ready in {:?}", t.elapsed());
    let api_nodes: Api<Node> = Api::all(client.clone());
    let small = api_nodes.get("small").await?;
    let big = api_nodes.get("big").await?;
    let cordoned = api_nodes.get("cordoned").await?;
    assert_eq!(
        capacity(&small),
        map(&[("cpu", "2"), ("memory", "4Gi"), ("pods", "20")])
    );
    assert_eq!(
        capacity(&big),
        map(&[
            ("cpu", "32"),
            ("memory", "128Gi"),
            ("pods", "110"),
            ("nvidia.com/gpu", "8"),
            ("example.com/foo", "4")
        ])
    );
    assert_eq!(
        capacity(&cordoned),
        map(&[
            ("cpu", "8"),
            ("memory", "32Gi"),
            ("pods", "110"),
            ("nvidia.com/gpu", "2")
        ])
    );
    for n in [&small, &big, &cordoned] {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "{:?} Ready", n.metadata.name);
        let labels = n.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["type"], "kwok");
        assert_eq!(
            Some(&labels["kubernetes.io/hostname"]),
            n.metadata.name.as_ref()
        );
        // The not-ready taint of TaintNodesByCondition is not there.
        let taints: Vec<&str> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|t| t.key.as_str())
            .collect();
        assert!(
            !taints.contains(&"node.kubernetes.io/not-ready"),
            "{taints:?}"
        );
    }
    assert!(
        big.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.len() == 1 && t[0].key == "nvidia.com/gpu")
    );
    assert_eq!(
        cordoned.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );

    // A pod bound directly through nodeName is turned Running by kwok, then deleted.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &TestPod::new("direct")
            .cpu("500m")
            .memory("1Gi")
            .node_name("small")
            .build(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "pod direct Running",
        || {
            let pods = pods.clone();
            async move { Ok(phase(&pods, "direct").await?.as_deref() == Some("Running")) }
        },
    )
    .await?;
    assert!(
        pods.get("direct")
            .await?
            .status
            .and_then(|s| s.pod_ip)
            .is_some(),
        "kwok gives pods an IP"
    );
    pods.delete("direct", &DeleteParams::default()).await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "pod direct gone",
        || {
            let pods = pods.clone();
            async move { Ok(pods.get_opt("direct").await?.is_none()) }
        },
    )
    .await?;

    // The pod fields the builder sets are accepted as is (priority, overhead, init
    // containers, host ports, GPUs, tolerations).
    let fancy = TestPod::new("fancy")
        .scheduler("nobody")
        .cpu("1")
        .memory("1Gi")
        .gpus(1)
        .resource("example.com/foo", "1")
        .priority(1000)
        .overhead("100m", "64Mi")
        .init_container("2", "")
        .host_port(8080)
        .toleration("nvidia.com/gpu", "Exists", "", "NoSchedule")
        .label("app", "fancy")
        .build();
    let created = pods.create(&PostParams::default(), &fancy).await?;
    let spec = created.spec.expect("spec");
    assert_eq!(spec.priority, Some(1000));
    assert_eq!(spec.overhead.expect("overhead")["cpu"].0, "100m");
    assert_eq!(spec.init_containers.expect("init containers").len(), 1);

    // A ServiceAccount token from the TokenRequest API authenticates.
    let token = cp.service_account_token("drover-system", "drover").await?;
    let sa_client = cp.client_with_token(&token);
    let review = Api::<SelfSubjectReview>::all(sa_client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        user.as_deref(),
        Some("system:serviceaccount:drover-system:drover")
    );
    match Api::<Pod>::namespaced(sa_client, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "authenticated but not authorized: {e:?}")
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let anonymous = cp.client_with_token("not-a-token");
    match anonymous.apiserver_version().await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // The real kube-scheduler binds a default-scheduler pod to a schedulable node.
    let t = Instant::now();
    let scheduler = cp.start_kube_scheduler(None).await?;
    eprintln!("kube-scheduler ready in {:?}", t.elapsed());
    pods.create(
        &PostParams::default(),
        &TestPod::new("sched").cpu("1").memory("1Gi").build(),
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "pod sched bound by kube-scheduler",
        || {
            let c = client.clone();
            async move {
                Ok(bound_pods(&c, "default")
                    .await?
                    .iter()
                    .any(|(p, _)| p == "sched"))
            }
        },
    )
    .await?;
    let bound: BTreeMap<String, String> =
        bound_pods(&client, "default").await?.into_iter().collect();
    // Only `small` fits: `big` is tainted and `cordoned` is unschedulable.
    assert_eq!(bound.get("sched").map(String::as_str), Some("small"));
    assert!(!bound.contains_key("fancy"), "nobody schedules `fancy`");
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "pod sched Running",
        || {
            let pods = pods.clone();
            async move { Ok(phase(&pods, "sched").await?.as_deref() == Some("Running")) }
        },
    )
    .await?;

    // Teardown leaves nothing behind.
    let dir = cp.temp_dir().to_path_buf();
    let mut pids = cp.pids();
    pids.push(("kube-scheduler".into(), scheduler.pid()));
    assert_eq!(
        pids.len(),
        4,
        "etcd, kube-apiserver, kwok, kube-scheduler: {pids:?}"
    );
    drop(scheduler);
    drop(cp);
    assert_all_gone(&dir, &pids);
    eprintln!("smoke test done in {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_config_and_controller_manager() -> anyhow::Result<()> {
    let cp = ControlPlane::builder()
        .kwok(true)
        .controller_manager(true)
        .start()
        .await?;
    eprintln!(
        "control plane with kube-controller-manager up in {:?}",
        cp.started_in()
    );
    let client: Client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").build(), FakeNode::new("n-1").build()])
        .await?;

    // A KubeSchedulerConfiguration without clientConnection: the harness fills it in.
    let config = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: custom\n";
    let scheduler = cp.start_kube_scheduler(Some(config)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        let pod = TestPod::new(format!("c-{i}"))
            .scheduler("custom")
            .label("app", "c")
            .cpu("100m")
            .build();
        pods.create(&PostParams::default(), &pod).await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "3 pods Running",
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels("app=c")).await?;
                Ok(list
                    .items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count()
                    == 3)
            }
        },
    )
    .await?;

    // The disruption controller (in kube-controller-manager) fills in PDB status.
    let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "c"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "c"}}},
    }))?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    pdbs.create(&PostParams::default(), &pdb).await?;
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "PDB status from the disruption controller",
        || {
            let pdbs = pdbs.clone();
            async move {
                let s = pdbs.get("c").await?.status;
                Ok(s.is_some_and(|s| {
                    s.current_healthy == 3 && s.desired_healthy == 2 && s.disruptions_allowed == 1
                }))
            }
        },
    )
    .await?;

    let dir = cp.temp_dir().to_path_buf();
    let mut pids = cp.pids();
    pids.push(("kube-scheduler".into(), scheduler.pid()));
    assert_eq!(pids.len(), 5, "{pids:?}");
    drop(scheduler);
    drop(cp);
    assert_all_gone(&dir, &pids);
    Ok(())
}

#[tokio::test]
async fn wait_until_names_what_it_waited_for() {
    let err = wait_until(
        Duration::from_millis(50),
        Duration::from_millis(10),
        "the impossible",
        || async { Ok(false) },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("waiting for the impossible"),
        "{err}"
    );
    let err = wait_until(
        Duration::from_millis(50),
        Duration::from_millis(10),
        "a failing check",
        || async { anyhow::bail!("boom") },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("a failing check") && format!("{err:#}").contains("boom"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_test_leaves_no_processes() -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let scheduler = cp
            .start_kube_scheduler(None)
            .await
            .expect("kube-scheduler starts");
        let mut pids = cp.pids();
        pids.push(("kube-scheduler".into(), scheduler.pid()));
        tx.send((cp.temp_dir().to_path_buf(), pids))
            .expect("receiver waits");
        panic!("deliberate panic with a control plane running (expected in this test's output)");
    });
    let (dir, pids) = rx.await?;
    let err = task.await.expect_err("the task panicked");
    assert!(err.is_panic());
    assert_all_gone(&dir, &pids);
    Ok(())
}
