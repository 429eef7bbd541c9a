//! The manifests in manifests/ against a real API server: every object is accepted,
//! the shipped config is drover's default, and drover running as the ServiceAccount
//! with exactly the shipped RBAC can do its whole job (schedule, bind, write
//! conditions, Events and PodGroup status, hold the leader Lease, read
//! PodDisruptionBudgets and evict).

use std::time::Duration;

use drover_core::gang::GROUP_LABEL;
use drover_e2e::{Drover, create_pod_group, events_for, node_of, pod_group_status};
use drover_testenv::{ControlPlane, FakeNode, TestPod, repo_root, wait_until};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DynamicObject, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

/// (verb, API group, resource) granted by the ClusterRoles and Roles in `files`.
fn granted(
    files: &[std::path::PathBuf],
) -> anyhow::Result<std::collections::BTreeSet<(String, String, String)>> {
    let mut out = std::collections::BTreeSet::new();
    for f in files {
        for doc in docs(f)? {
            let kind = doc
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            if kind != "ClusterRole" && kind != "Role" {
                continue;
            }
            for rule in doc.data["rules"].as_array().into_iter().flatten() {
                let list = |k: &str| -> Vec<String> {
                    rule[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                };
                for g in list("apiGroups") {
                    for r in list("resources") {
                        for v in list("verbs") {
                            out.insert((v.clone(), g.clone(), r.clone()));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What `user` did, from the audit log, against what `files` grant: fails on any
/// request refused (but those the test provoked, `refusals`), any (verb, resource)
/// used but not granted, and any granted but never used.
fn least_privilege(
    cp: &ControlPlane,
    user: &str,
    files: &[std::path::PathBuf],
    refusals: &[(&str, &str, &str)],
) -> anyhow::Result<()> {
    let mut used = std::collections::BTreeSet::new();
    for (v, g, r, code) in cp.audit(user)? {
        let provoked = refusals.contains(&(v.as_str(), g.as_str(), r.as_str()));
        anyhow::ensure!(code != 403 || provoked, "{user}: refused {v} {g}/{r}");
        used.insert((v, g, r));
    }
    let granted = granted(files)?;
    let not_granted: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    println!(
        "{user}: {} (verb, resource) pairs used; used but not granted: {not_granted:?}; granted but not used: {unused:?}",
        used.len()
    );
    anyhow::ensure!(
        not_granted.is_empty(),
        "{user}: used but not granted: {not_granted:?}"
    );
    anyhow::ensure!(
        unused.is_empty(),
        "{user}: granted but never used: {unused:?}"
    );
    Ok(())
}

/// True once drover wrote the status of Queue `team`.
async fn queue_status_written(client: &Client) -> anyhow::Result<bool> {
    let queues: Api<DynamicObject> =
        Api::all_with(client.clone(), &drover::k8s::status::queue_resource());
    Ok(queues
        .get("team")
        .await?
        .data
        .get("status")
        .is_some_and(|s| !s.is_null()))
}

/// The files a kustomization in `dir` lists as resources (not the directories it
/// builds on).
fn kustomized(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let k: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    Ok(k["resources"]
        .as_sequence()
        .ok_or_else(|| anyhow::anyhow!("{} lists no resources", dir.display()))?
        .iter()
        .filter_map(|r| r.as_str())
        .filter(|r| dir.join(r).is_file())
        .map(str::to_string)
        .collect())
}

fn docs(path: &std::path::Path) -> anyhow::Result<Vec<DynamicObject>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_yaml_ng::Value::deserialize(d)?;
        if !v.is_null() {
            out.push(serde_yaml_ng::from_value(v)?);
        }
    }
    Ok(out)
}

/// Creates `obj` through discovery; `dry_run` asks the server to validate only.
async fn apply(
    client: &Client,
    discovery: &Discovery,
    obj: &DynamicObject,
    dry_run: bool,
) -> anyhow::Result<()> {
    let tm = obj.types.as_ref().expect("typed");
    let (group, version) = tm
        .api_version
        .split_once('/')
        .unwrap_or(("", &tm.api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &tm.kind);
    let (ar, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| anyhow::anyhow!("the API server does not serve {gvk:?}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.metadata.namespace.as_deref().unwrap_or("drover-system"),
            &ar,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    api.create(&pp, obj).await.map_err(|e| {
        anyhow::anyhow!(
            "{} {}: {e}",
            tm.kind,
            obj.metadata.name.as_deref().unwrap_or("?")
        )
    })?;
    Ok(())
}

/// Applies every document of `files` in `dir`: for real, except Deployments, which the
/// server only validates (no image runs here).
async fn apply_files(
    client: &Client,
    discovery: &Discovery,
    dir: &std::path::Path,
    files: &[&str],
) -> anyhow::Result<usize> {
    let mut applied = 0;
    for f in files {
        for obj in docs(&dir.join(f))? {
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            apply(client, discovery, &obj, kind == "Deployment").await?;
            applied += 1;
        }
    }
    Ok(applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_install_and_their_rbac_is_enough() -> anyhow::Result<()> {
    let cp = ControlPlane::builder().audit(true).start().await?;
    let admin = cp.client();
    cp.install_crds(&[
        drover_e2e::POD_GROUP_CRD,
        drover_e2e::QUEUE_CRD,
        "tests/e2e/crds/topology.node.k8s.io_noderesourcetopologies.yaml",
        drover_e2e::VOLCANO_POD_GROUP_CRD,
    ])
    .await?;
    let discovery = Discovery::new(admin.clone()).run().await?;
    let base = repo_root().join("manifests/base");
    let files = kustomized(&base)?;
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert!(files.contains(&"networkpolicy.yaml"), "{files:?}");
    apply_files(&admin, &discovery, &base, &files).await?;
    // The shipped config file is valid and is exactly the defaults.
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), "drover-system")
        .get("drover-config")
        .await?;
    let text = &cm.data.unwrap()["config.yaml"];
    let config =
        drover_core::config::FileConfig::parse(text, "configmap drover-config")?.validate()?;
    assert_eq!(config, drover_core::config::Config::default());

    // drover as the ServiceAccount, with only that RBAC.
    let token = cp.service_account_token("drover-system", "drover").await?;
    let sa = cp.client_with_token(&token);
    cp.create_nodes(&[FakeNode::new("n-0").cpu("8").memory("32Gi").build()])
        .await?;
    let mut opts = drover::k8s::RunOptions::new("drover");
    opts.config = config;
    opts.leader_election = Some(drover::k8s::run::LeaderElection {
        namespace: "drover-system".into(),
        name: "drover".into(),
        duration_seconds: 15,
    });
    let drover = Drover::start_with(sa.clone(), opts);
    create_pod_group(&admin, "default", "pair", json!({"minMember": 2})).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for i in 0..2 {
        pods.create(
            &PostParams::default(),
            &TestPod::new(format!("pair-{i}"))
                .scheduler("drover")
                .cpu("1")
                .label(GROUP_LABEL, "pair")
                .build(),
        )
        .await?;
    }
    // A gang in Volcano's dialect: drover writes the Volcano PodGroup's status.
    drover_e2e::create_volcano_pod_group(&admin, "default", "trio", json!({"minMember": 2}))
        .await?;
    for i in 0..2 {
        pods.create(
            &PostParams::default(),
            &TestPod::new(format!("trio-{i}"))
                .scheduler("drover")
                .cpu("1")
                .annotation(drover_core::gang::VOLCANO_GROUP_ANNOTATION, "trio")
                .build(),
        )
        .await?;
    }
    pods.create(
        &PostParams::default(),
        &TestPod::new("too-big")
            .scheduler("drover")
            .cpu("64")
            .build(),
    )
    .await?;
    // The rest of its job: a Queue's status, a WaitForFirstConsumer claim bound to a
    // static volume, a claim of allocated devices reserved for its pod.
    drover_e2e::create_queue(&admin, "team", json!({"weight": 1})).await?;
    // Created through discovery, as the manifests are.
    let create = |v: serde_json::Value| {
        let (admin, discovery) = (&admin, &discovery);
        async move {
            let obj: DynamicObject = serde_json::from_value(v)?;
            apply(admin, discovery, &obj, false).await
        }
    };
    create(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner",
               "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await?;
    create(
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-0"},
               "spec": {"storageClassName": "local", "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "csi": {"driver": "csi.example.com", "volumeHandle": "pv-0"}}}),
    )
    .await?;
    // No volume controller runs here: say the volume is Available, as it would.
    Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(admin.clone())
        .patch_status(
            "pv-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Available"}})),
        )
        .await?;
    create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data", "namespace": "default"},
               "spec": {"storageClassName": "local", "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}))
    .await?;
    // A class that provisions: drover asks its provisioner for a volume on the node.
    create(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "fast"}, "provisioner": "csi.example.com",
               "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await?;
    create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "scratch", "namespace": "default"},
               "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}))
    .await?;
    let mut with_scratch = TestPod::new("with-scratch")
        .scheduler("drover")
        .cpu("100m")
        .build();
    with_scratch.spec.as_mut().expect("spec").volumes = Some(vec![serde_json::from_value(
        json!({"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}}),
    )?]);
    pods.create(&PostParams::default(), &with_scratch).await?;
    let mut with_volume = TestPod::new("with-volume")
        .scheduler("drover")
        .cpu("100m")
        .build();
    with_volume.spec.as_mut().expect("spec").volumes = Some(vec![serde_json::from_value(
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}),
    )?]);
    pods.create(&PostParams::default(), &with_volume).await?;
    let claims =
        Api::<k8s_openapi::api::resource::v1::ResourceClaim>::namespaced(admin.clone(), "default");
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "gpu", "namespace": "default"},
                "spec": {"devices": {"requests": [
                    {"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}}))?,
        )
        .await?;
    claims
        .patch_status(
            "gpu",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"allocation": {
                "devices": {"results": [{"request": "gpu", "driver": "gpu.example.com",
                    "pool": "n-0", "device": "gpu-0"}]},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["n-0"]}]}]}}}})),
        )
        .await?;
    let mut with_devices = TestPod::new("with-devices")
        .scheduler("drover")
        .cpu("100m")
        .build();
    with_devices.spec.as_mut().expect("spec").resource_claims = Some(vec![serde_json::from_value(
        json!({"name": "gpu", "resourceClaimName": "gpu"}),
    )?]);
    pods.create(&PostParams::default(), &with_devices).await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "bound, PodGroup and Queue status written, Unschedulable condition and Events written, a volume bound to a claim, a device claim reserved",
        || {
            let c = admin.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(c.clone(), "default");
                let bound = node_of(&api.get("pair-0").await?).is_some()
                    && node_of(&api.get("pair-1").await?).is_some();
                let status = pod_group_status(&c, "default", "pair").await?;
                let volcano =
                    drover_e2e::volcano_pod_group_status(&c, "default", "trio").await?;
                let cond = drover_e2e::unschedulable_message(&api.get("too-big").await?).is_some();
                let events = events_for(&c, "default", "too-big").await?;
                let queue = queue_status_written(&c).await?;
                let pv = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(c.clone())
                    .get("pv-0")
                    .await?
                    .spec
                    .and_then(|s| s.claim_ref)
                    .is_some();
                let devices = node_of(&api.get("with-devices").await?).is_some();
                let provisioning = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
                    c.clone(),
                    "default",
                )
                .get("scratch")
                .await?
                .metadata
                .annotations
                .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"));
                Ok(bound
                    && status["scheduled"] == 2
                    && volcano["phase"] == "Running"
                    && cond
                    && events.iter().any(|(r, _)| r == "FailedScheduling")
                    && queue
                    && pv
                    && devices
                    && provisioning)
            }
        },
    )
    .await?;
    // A change that gives the waiting pod a new reason: one more FailedScheduling in
    // its Event's series.
    cp.create_nodes(&[FakeNode::new("n-1").cpu("2").memory("4Gi").build()])
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "too-big told its new reason",
        || {
            let c = admin.clone();
            async move {
                let p = Api::<Pod>::namespaced(c, "default").get("too-big").await?;
                Ok(drover_e2e::unschedulable_message(&p)
                    .is_some_and(|m| m.starts_with("0/2 nodes")))
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        drover
            .shared
            .leader
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    let malformed = drover.shared.metrics.malformed_objects.get();
    assert_eq!(malformed, 0);
    // What reclaim and preemption do, with the same credentials: read the
    // PodDisruptionBudgets and evict a pod.
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::all(sa.clone())
        .list(&Default::default())
        .await?;
    Api::<Pod>::namespaced(sa.clone(), "default")
        .evict("pair-1", &Default::default())
        .await?;
    drover.stop().await?;

    // Least privilege, from the API server's audit log: every (verb, resource) the
    // ServiceAccount used is granted, and every grant is used.
    least_privilege(
        &cp,
        "system:serviceaccount:drover-system:drover",
        &[base.join("rbac.yaml")],
        &[],
    )?;
    Ok(())
}

/// manifests/extender: every object is accepted (namespace.yaml may already exist
/// from the base, so each test has its own control plane), and drover-extender running
/// as its ServiceAccount with exactly that RBAC lists everything it needs and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extender_manifests_install_and_their_rbac_is_enough() -> anyhow::Result<()> {
    let cp = ControlPlane::builder().audit(true).start().await?;
    let admin = cp.client();
    cp.install_crds(&[
        drover_e2e::POD_GROUP_CRD,
        drover_e2e::QUEUE_CRD,
        "tests/e2e/crds/topology.node.k8s.io_noderesourcetopologies.yaml",
        drover_e2e::VOLCANO_POD_GROUP_CRD,
    ])
    .await?;
    let discovery = Discovery::new(admin.clone()).run().await?;
    let dir = repo_root().join("manifests/extender");
    let files = kustomized(&dir)?;
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert!(files.contains(&"networkpolicy.yaml"), "{files:?}");
    apply_files(&admin, &discovery, &dir, &files).await?;
    // Its config file is valid.
    let text = std::fs::read_to_string(dir.join("config.yaml"))?;
    drover_core::config::FileConfig::parse(&text, "manifests/extender/config.yaml")?.validate()?;

    let token = cp
        .service_account_token("drover-system", "drover-extender")
        .await?;
    let sa = cp.client_with_token(&token);
    cp.create_nodes(&[FakeNode::new("n-0").cpu("8").memory("32Gi").build()])
        .await?;
    // Ready means every list and watch it needs was allowed.
    let (_running, shutdown) = drover_e2e::start_extender(sa.clone()).await?;
    shutdown.cancel();

    // Binding is not granted by these manifests; manifests/extender-bind grants it.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &TestPod::new("b").build())
        .await?;
    let (running, shutdown) =
        drover_e2e::start_extender_with(sa, |o| o.server.enable_bind = true).await?;
    let args = serde_json::to_string(&json!({
        "PodName": "b", "PodNamespace": "default",
        "PodUID": p.metadata.uid.unwrap_or_default(), "Node": "n-0",
    }))?;
    let bind = || async {
        running
            .extender
            .handle_bind(args.as_bytes())
            .await
            .error
            .map(|e| e.to_string())
    };
    let refused = bind().await.unwrap_or_default();
    assert!(refused.contains("forbidden"), "{refused}");
    let overlay = repo_root().join("manifests/extender-bind");
    let files = kustomized(&overlay)?;
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(apply_files(&admin, &discovery, &overlay, &files).await?, 2);
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "bind allowed by manifests/extender-bind",
        || async { Ok(bind().await.is_none()) },
    )
    .await?;
    assert_eq!(node_of(&pods.get("b").await?), Some("n-0"));
    shutdown.cancel();
    least_privilege(
        &cp,
        "system:serviceaccount:drover-system:drover-extender",
        &[dir.join("rbac.yaml"), overlay.join("rbac.yaml")],
        // The bind refused before manifests/extender-bind was applied.
        &[("create", "", "pods/binding")],
    )
}

/// manifests/monitoring: the ServiceMonitor and PrometheusRule are accepted by the
/// Prometheus Operator's CRDs (fetched at a pinned version), and the dashboard
/// ConfigMap its kustomization generates is accepted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_manifests_are_accepted() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.client();
    let crds = drover_e2e::prometheus_operator_crds()?;
    let crds: Vec<&str> = crds.iter().map(String::as_str).collect();
    cp.install_crds(&crds).await?;
    let discovery = Discovery::new(admin.clone()).run().await?;
    apply_files(
        &admin,
        &discovery,
        &repo_root().join("manifests/base"),
        &["namespace.yaml"],
    )
    .await?;
    let dir = repo_root().join("manifests/monitoring");
    let kustomization: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .ok_or_else(|| anyhow::anyhow!("manifests/monitoring lists no resources"))?
        .iter()
        .map(|f| f.as_str().unwrap_or_default())
        .collect();
    let applied = apply_files(&admin, &discovery, &dir, &resources).await?;
    assert_eq!(applied, 2, "a ServiceMonitor and a PrometheusRule");
    // The generated ConfigMap, as kustomize's configMapGenerator writes it.
    let generator = &kustomization["configMapGenerator"][0];
    let name = generator["name"].as_str().unwrap_or_default();
    let file = generator["files"][0].as_str().unwrap_or_default();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "drover-system",
            "labels": generator["options"]["labels"],
        },
        "data": { file: std::fs::read_to_string(dir.join(file))? },
    }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), "drover-system")
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}
