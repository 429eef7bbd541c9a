//! The gangs of other projects' controllers, run for real against the test control
//! plane: each creates its own objects (PodGroups, pods, scheduler names) and drover
//! places them all together or not at all.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_e2e::{Drover, node_of, pods};
use drover_testenv::{ControlPlane, ray_cluster_crd};
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

const NS: &str = "default";

/// The name KubeRay's scheduler-plugins mode writes into every pod it creates.
const SCHEDULER_PLUGINS_NAME: &str = "scheduler-plugins-scheduler";

fn ray_clusters(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ray.io", "v1", "RayCluster");
    Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk))
}

/// A RayCluster labelled for gang scheduling: a head and `workers` workers, each
/// asking for 3 cpus (one per 4-cpu node).
fn ray_cluster(name: &str, workers: i64) -> anyhow::Result<DynamicObject> {
    let container = |n: &str| {
        json!({"name": n, "image": "rayproject/ray:2.46.0",
               "resources": {"requests": {"cpu": "3", "memory": "1Gi"},
                             "limits": {"cpu": "3", "memory": "1Gi"}}})
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"ray.io/gang-scheduling-enabled": "true"}},
        "spec": {
            "rayVersion": "2.46.0",
            "headGroupSpec": {"rayStartParams": {},
                              "template": {"spec": {"containers": [container("ray-head")],
                                                    "terminationGracePeriodSeconds": 0}}},
            "workerGroupSpecs": [{
                "groupName": "workers", "replicas": workers, "minReplicas": workers,
                "maxReplicas": workers, "rayStartParams": {},
                "template": {"spec": {"containers": [container("ray-worker")],
                                     "terminationGracePeriodSeconds": 0}},
            }],
        },
    }))?)
}

/// Live pods per Ray cluster (the `ray.io/cluster` label KubeRay sets): (bound, all),
/// and whether every pod of it names the scheduler-plugins scheduler.
async fn by_cluster(
    client: &kube::Client,
) -> anyhow::Result<BTreeMap<String, (usize, usize, bool)>> {
    let mut out: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
    for p in pods(client, NS).await? {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(c) = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("ray.io/cluster"))
        else {
            continue;
        };
        let e = out.entry(c.clone()).or_insert((0, 0, true));
        e.1 += 1;
        if node_of(&p).is_some() {
            e.0 += 1;
        }
        let name = p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
        e.2 &= name == Some(SCHEDULER_PLUGINS_NAME);
    }
    Ok(out)
}

/// Polls every 100 ms until `done`; fails the moment more than one cluster has a pod
/// bound (room for one: a second would be half-placed). Returns the last counts.
async fn watch_clusters(
    client: &kube::Client,
    within: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, (usize, usize, bool)>) -> bool,
) -> anyhow::Result<BTreeMap<String, (usize, usize, bool)>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let counts = by_cluster(client).await?;
        let started = counts.values().filter(|c| c.0 > 0).count();
        anyhow::ensure!(
            started <= 1,
            "{started} Ray clusters have pods bound with room for one: {counts:?}"
        );
        if done(&counts) {
            return Ok(counts);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not {what} within {within:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// KubeRay v1.5 with `--batch-scheduler=scheduler-plugins`: it creates a PodGroup
/// (minMember = head + workers) for each RayCluster labelled
/// `ray.io/gang-scheduling-enabled`, labels the pods with it and sets their
/// `schedulerName` to `scheduler-plugins-scheduler`, which drover answers for with
/// `--scheduler-name drover,scheduler-plugins-scheduler`. Two clusters of 4 pods on
/// room for one: one runs whole, the other has nothing bound; deleted, the first
/// makes room and the second runs whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuberay_clusters_in_scheduler_plugins_mode_start_whole_or_not_at_all() -> anyhow::Result<()>
{
    let cp = ControlPlane::start().await?;
    let crd = tokio::task::spawn_blocking(ray_cluster_crd).await??;
    cp.install_crds(&[drover_e2e::POD_GROUP_CRD, &crd.display().to_string()])
        .await?;
    // Garbage collection removes a deleted RayCluster's pods and PodGroup; started
    // after the CRDs so that it watches RayClusters from the start (it finds CRDs
    // installed later only at its next discovery, up to 30 s on).
    let _gc = cp.start_controller_manager().await?;
    let client = cp.client();
    let nodes: Vec<_> = drover_e2e::nodes(4, "4", "16Gi");
    cp.create_nodes(&nodes).await?;
    let _operator = cp
        .start_ray_operator(&["--batch-scheduler=scheduler-plugins"])
        .await?;
    let mut opts = drover::k8s::RunOptions::new("drover");
    opts.scheduler_names.push(SCHEDULER_PLUGINS_NAME.into());
    let drover = Drover::start_with(client.clone(), opts);

    let api = ray_clusters(&client);
    for name in ["alpha", "beta"] {
        api.create(&PostParams::default(), &ray_cluster(name, 3)?)
            .await?;
    }
    // KubeRay's PodGroups, as it writes them.
    let gvk = GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup");
    let groups: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk));
    let started = std::time::Instant::now();
    let first = watch_clusters(
        &client,
        Duration::from_secs(90),
        "one Ray cluster whole",
        |c| c.values().any(|(b, n, _)| *b == 4 && *n == 4),
    )
    .await?;
    let took = started.elapsed();
    let min_members: BTreeMap<String, i64> = groups
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|g| {
            (
                g.metadata.name.clone().unwrap_or_default(),
                g.data["spec"]["minMember"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        min_members,
        BTreeMap::from([("alpha".into(), 4), ("beta".into(), 4)]),
        "KubeRay's PodGroups"
    );
    // Settled: the other cluster's pods all exist, none bound, for 3 s.
    let settled = watch_clusters(
        &client,
        Duration::from_secs(30),
        "the other cluster's pods all created",
        |c| c.len() == 2 && c.values().all(|(_, n, _)| *n == 4),
    )
    .await?;
    let hold = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < hold {
        watch_clusters(&client, Duration::ZERO, "", |_| true).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled.values().all(|(_, _, named)| *named),
        "KubeRay named the scheduler-plugins scheduler on every pod: {settled:?}"
    );
    let running = first
        .iter()
        .find(|(_, (b, _, _))| *b == 4)
        .map(|(c, _)| c.clone())
        .expect("one cluster whole");
    let waiting = if running == "alpha" { "beta" } else { "alpha" };
    println!(
        "KubeRay scheduler-plugins mode: {running} whole {} ms after both RayClusters were created; {waiting} held with nothing bound",
        took.as_millis()
    );
    api.delete(&running, &DeleteParams::background()).await?;
    let deleted = std::time::Instant::now();
    watch_clusters(
        &client,
        Duration::from_secs(90),
        "the second Ray cluster whole",
        |c| c.get(waiting).is_some_and(|(b, n, _)| *b == 4 && *n == 4),
    )
    .await?;
    println!(
        "{waiting} whole {} ms after {running} was deleted",
        deleted.elapsed().as_millis()
    );
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    drover.stop().await
}

/// A controller in Volcano mode, as training-operator is: it creates a Volcano
/// PodGroup (minMember 4, minResources 12 cpu) and creates the job's pods only once
/// drover has set `status.phase: Inqueue`. Two such jobs on room for one: the first
/// is admitted, the second stays Pending (its room is the first's) with no pod made;
/// the first runs (phase Running); once it is gone, the second is admitted and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volcano_pod_groups_go_inqueue_only_with_room_and_then_run() -> anyhow::Result<()> {
    use drover_core::gang::VOLCANO_GROUP_ANNOTATION;
    use drover_testenv::{TestPod, wait_until};
    use k8s_openapi::api::core::v1::Pod;
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[drover_e2e::VOLCANO_POD_GROUP_CRD])
        .await?;
    let client = cp.client();
    let nodes: Vec<_> = drover_e2e::nodes(4, "4", "16Gi");
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start(client.clone());
    let phase = |name: &'static str| {
        let c = client.clone();
        async move {
            let s = drover_e2e::volcano_pod_group_status(&c, NS, name).await?;
            Ok::<_, anyhow::Error>(s["phase"].as_str().unwrap_or("").to_string())
        }
    };
    let spec = json!({"minMember": 4, "minResources": {"cpu": "12"}, "queue": "default"});
    let t = std::time::Instant::now();
    drover_e2e::create_volcano_pod_group(&client, NS, "job-a", spec.clone()).await?;
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "job-a Inqueue",
        || async { Ok(phase("job-a").await? == "Inqueue") },
    )
    .await?;
    let admitted_in = t.elapsed();
    drover_e2e::create_volcano_pod_group(&client, NS, "job-b", spec).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let create_members = |job: &'static str| {
        let pods = pods.clone();
        async move {
            for i in 0..4 {
                pods.create(
                    &PostParams::default(),
                    &TestPod::new(format!("{job}-{i}"))
                        .scheduler("drover")
                        .cpu("3")
                        .annotation(VOLCANO_GROUP_ANNOTATION, job)
                        .build(),
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    // The controller makes job-a's pods now that it is admitted.
    create_members("job-a").await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "job-a Running",
        || async { Ok(phase("job-a").await? == "Running") },
    )
    .await?;
    let running_in = t.elapsed();
    // job-b: not admitted while job-a holds the room.
    let hold = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < hold {
        let p = phase("job-b").await?;
        anyhow::ensure!(
            p == "Pending" || p.is_empty(),
            "job-b is {p:?} with no room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        phase("job-b").await? == "Pending",
        "job-b's status says Pending"
    );
    // job-a ends: its pods and PodGroup go.
    for i in 0..4 {
        pods.delete(
            &format!("job-a-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
    }
    let gone = std::time::Instant::now();
    let gvk = GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup");
    Api::<DynamicObject>::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk))
        .delete("job-a", &DeleteParams::default())
        .await?;
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "job-b Inqueue",
        || async { Ok(phase("job-b").await? == "Inqueue") },
    )
    .await?;
    let b_admitted = gone.elapsed();
    create_members("job-b").await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "job-b Running",
        || async { Ok(phase("job-b").await? == "Running") },
    )
    .await?;
    println!(
        "Volcano PodGroups: job-a Inqueue {} ms after creation and Running at {} ms; job-b Pending while job-a ran, Inqueue {} ms after job-a's pods were deleted",
        admitted_in.as_millis(),
        running_in.as_millis(),
        b_admitted.as_millis()
    );
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    drover.stop().await
}
