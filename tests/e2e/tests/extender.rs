//! drover-extender behind the real kube-scheduler (built by the test harness), on kwok
//! nodes, with the example configuration from manifests/extender/: pods that keep the
//! default scheduler name are placed by drover's scores (in both nodeCacheCapable
//! modes), a gang is held until all of it can be placed, gangs competing for room for
//! fewer of them never share it (two gangs of 4 with room for 6, three with room for
//! 8, created interleaved or one after the other, polled every 100 ms), and a pod over
//! its queue's max is filtered everywhere.

use std::time::Duration;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{
    ExtenderCerts, QUEUE_CRD, node_of, start_extender, start_extender_with, unschedulable_message,
};
use drover_extender::Running;
use drover_testenv::{ControlPlane, FakeNode, ProcessGuard, TestPod, repo_root, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

/// The example KubeSchedulerConfiguration, pointed at `url` with the client
/// certificate and CA of `certs`, in the given cache mode; the harness fills in its
/// own kubeconfig.
fn scheduler_config(
    url: &str,
    certs: &ExtenderCerts,
    node_cache_capable: bool,
) -> anyhow::Result<String> {
    let path = repo_root().join("manifests/extender/kube-scheduler-config.yaml");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?;
    let map = config
        .as_mapping_mut()
        .ok_or_else(|| anyhow::anyhow!("{} is not a mapping", path.display()))?;
    map.remove("clientConnection");
    let ext = &mut config["extenders"][0];
    ext["urlPrefix"] = url.into();
    ext["nodeCacheCapable"] = node_cache_capable.into();
    anyhow::ensure!(
        ext["enableHTTPS"].as_bool() == Some(true),
        "the example configuration speaks mutual TLS to drover-extender"
    );
    for (field, file) in [
        ("certFile", "client.crt"),
        ("keyFile", "client.key"),
        ("caFile", "ca.crt"),
    ] {
        anyhow::ensure!(
            ext["tlsConfig"][field].is_string(),
            "the example configuration sets tlsConfig.{field}"
        );
        ext["tlsConfig"][field] = certs.path(file).display().to_string().into();
    }
    Ok(serde_yaml_ng::to_string(&config)?)
}

async fn with_drover(
    cp: &ControlPlane,
    node_cache_capable: bool,
) -> anyhow::Result<(Running, CancellationToken, ProcessGuard)> {
    // As shipped: kube-scheduler presents its client certificate over HTTPS.
    let certs = ExtenderCerts::new(cp.dir())?;
    let (running, shutdown) = start_extender_with(cp.client(), |o| certs.apply(o)).await?;
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    let ks = cp
        .start_kube_scheduler(Some(&scheduler_config(&url, &certs, node_cache_capable)?))
        .await?;
    Ok((running, shutdown, ks))
}

async fn node_of_pod(client: &Client, name: &str) -> anyhow::Result<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        &format!("pod {name} bound"),
        || {
            let api = api.clone();
            async move { Ok(node_of(&api.get(name).await?).is_some()) }
        },
    )
    .await?;
    Ok(node_of(&api.get(name).await?)
        .unwrap_or_default()
        .to_string())
}

fn notebook(name: &str) -> Pod {
    TestPod::new(name).cpu("100m").memory("3Gi").build()
}

/// A 3 GiB pod on an idle 512 GiB node and a 4 GiB node: kube-scheduler's default
/// LeastAllocated spreads it onto the big node; with drover's prioritize (least waste)
/// it goes to the 4 GiB node.
async fn placed_by_drovers_scores(node_cache_capable: bool) -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[
        FakeNode::new("big").cpu("64").memory("512Gi").build(),
        FakeNode::new("small").cpu("2").memory("4Gi").build(),
    ])
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // kube-scheduler alone.
    let alone = cp.start_kube_scheduler(None).await?;
    pods.create(&PostParams::default(), &notebook("alone"))
        .await?;
    let chosen_alone = node_of_pod(&client, "alone").await?;
    drop(alone);
    pods.delete("alone", &DeleteParams::default().grace_period(0))
        .await?;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "pod alone deleted",
        || {
            let pods = pods.clone();
            async move { Ok(pods.get_opt("alone").await?.is_none()) }
        },
    )
    .await?;

    // kube-scheduler with drover-extender.
    let (_running, shutdown, _ks) = with_drover(&cp, node_cache_capable).await?;
    pods.create(&PostParams::default(), &notebook("with-drover"))
        .await?;
    let chosen = node_of_pod(&client, "with-drover").await?;
    eprintln!(
        "nodeCacheCapable {node_cache_capable}: kube-scheduler alone chose {chosen_alone}, with drover-extender {chosen}"
    );
    assert_eq!(chosen_alone, "big", "the premise: LeastAllocated spreads");
    assert_eq!(chosen, "small", "drover's least waste decides");
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prioritize_decides_with_node_names() -> anyhow::Result<()> {
    placed_by_drovers_scores(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prioritize_decides_with_whole_nodes() -> anyhow::Result<()> {
    placed_by_drovers_scores(false).await
}

/// Four 3-cpu members on three 4-cpu nodes: kube-scheduler alone would bind three and
/// strand the fourth. With drover none is bound until a fourth node arrives; then all
/// four are, one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_is_held_until_all_of_it_fits() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&(0..3).map(small_node).collect::<Vec<Node>>())
        .await?;
    let (running, shutdown, _ks) = with_drover(&cp, true).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..4 {
        let p = TestPod::new(format!("train-{i}"))
            .cpu("3")
            .memory("1Gi")
            .label(GROUP_LABEL, "train")
            .annotation(MIN_MEMBER_ANNOTATION, "4")
            .build();
        pods.create(&PostParams::default(), &p).await?;
    }
    // Every member is tried and told why it waits; none is bound.
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "every member unschedulable with its gang's message",
        || {
            let client = client.clone();
            async move {
                let all = drover_e2e::pods(&client, NS).await?;
                let messages: Vec<String> = all.iter().filter_map(unschedulable_message).collect();
                Ok(messages.len() == 4
                    && messages.iter().all(|m| m.contains("gang default/train: "))
                    && messages
                        .iter()
                        .any(|m| m.contains("gang default/train: 3/4 members placeable at once")))
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        drover_e2e::bound_count(&client, NS).await?,
        0,
        "no member bound"
    );
    let msg = unschedulable_message(&pods.get("train-0").await?).unwrap_or_default();
    eprintln!("held: {msg}");

    cp.create_nodes(&[small_node(3)]).await?;
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "all four members bound",
        || {
            let client = client.clone();
            async move { Ok(drover_e2e::bound_count(&client, NS).await? == 4) }
        },
    )
    .await?;
    let mut nodes: Vec<String> = drover_e2e::pods(&client, NS)
        .await?
        .iter()
        .filter_map(|p| node_of(p).map(String::from))
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        vec!["n-0", "n-1", "n-2", "n-3"],
        "one member per node"
    );
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    assert_eq!(running.extender.gangs_planned().get(), 1);
    shutdown.cancel();
    Ok(())
}

/// A Queue with max cpu 2: two 1-cpu pods bound, the third filtered on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_queue_max_is_filtered_everywhere() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.install_crds(&[QUEUE_CRD]).await?;
    let client = cp.client();
    cp.create_nodes(&[
        FakeNode::new("n-0").cpu("8").memory("16Gi").build(),
        FakeNode::new("n-1").cpu("8").memory("16Gi").build(),
    ])
    .await?;
    drover_e2e::create_queue(&client, "team", json!({"max": {"cpu": "2"}})).await?;
    let (running, shutdown, _ks) = with_drover(&cp, true).await?;
    let ext = running.extender.clone();
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the extender sees Queue team",
        || {
            let ext = ext.clone();
            async move { Ok(ext.engine().queue_tree().get("team").is_some()) }
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..3 {
        let p = TestPod::new(format!("q-{i}"))
            .cpu("1")
            .memory("128Mi")
            .label("drover.dev/queue", "team")
            .build();
        pods.create(&PostParams::default(), &p).await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "two bound, one refused by its queue",
        || {
            let client = client.clone();
            async move {
                let all = drover_e2e::pods(&client, NS).await?;
                let bound = all.iter().filter(|p| node_of(p).is_some()).count();
                let refused = all.iter().any(|p| {
                    unschedulable_message(p).is_some_and(|m| {
                        m.contains(
                            "queue team would exceed its max cpu: 2 allocated + 1 asked > 2 max",
                        )
                    })
                });
                Ok(bound == 2 && refused)
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        drover_e2e::bound_count(&client, NS).await?,
        2,
        "never above max"
    );
    shutdown.cancel();
    Ok(())
}

/// POSTs `body` to the extender at `addr` and returns (status, body).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The bind verb is off unless enabled (403 in every variant); enabled, it binds only
/// what drover's filter would pass, through the binding subresource with the pod's
/// UID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_verb_binds_only_what_filter_would_pass() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").build()]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // No kube-scheduler runs: only a bind call could place these.
    let mut uids = std::collections::HashMap::new();
    for p in [
        TestPod::new("b").build(),
        TestPod::new("huge").cpu("1000").build(),
        TestPod::new("drovers").scheduler("drover").build(),
    ] {
        let p = pods.create(&PostParams::default(), &p).await?;
        uids.insert(
            p.metadata.name.clone().unwrap_or_default(),
            p.metadata.uid.clone().unwrap_or_default(),
        );
    }
    let args = |name: &str, uid: &str| {
        json!({"PodName": name, "PodNamespace": NS, "PodUID": uid, "Node": "n-0"}).to_string()
    };
    let variants = [
        ("b", uids["b"].clone(), "--enable-bind"),
        ("b", String::new(), "PodUID is empty"),
        (
            "b",
            "a-recreated-pod".to_string(),
            "with UID a-recreated-pod is not in",
        ),
        ("huge", uids["huge"].clone(), "does not fit node n-0"),
        (
            "drovers",
            uids["drovers"].clone(),
            "not one of --scheduler-names",
        ),
    ];
    let (off, stop_off) = start_extender(cp.client()).await?;
    for (name, uid, _) in &variants {
        let (status, body) = post(off.addr, "/bind", &args(name, uid)).await?;
        assert_eq!(status, 403, "bind off, {name} {uid:?}: {body}");
        assert!(body.contains("--enable-bind"), "{body}");
    }
    stop_off.cancel();
    let (on, stop_on) = start_extender_with(cp.client(), |o| o.server.enable_bind = true).await?;
    for (name, uid, why) in &variants[1..] {
        let (status, body) = post(on.addr, "/bind", &args(name, uid)).await?;
        assert_eq!(status, 403, "{name} {uid:?}: {body}");
        assert!(body.contains(why), "{name} {uid:?}: {body}");
    }
    for name in ["b", "huge", "drovers"] {
        let p = pods.get(name).await?;
        assert_eq!(
            p.spec.and_then(|s| s.node_name),
            None,
            "{name} stays unbound"
        );
    }
    let (status, body) = post(on.addr, "/bind", &args("b", &uids["b"])).await?;
    assert_eq!((status, body.as_str()), (200, r#"{"Error":""}"#));
    assert_eq!(node_of_pod(&client, "b").await?, "n-0");
    stop_on.cancel();
    Ok(())
}

/// A 4-cpu, 8 GiB node.
fn small_node(i: usize) -> Node {
    FakeNode::new(format!("n-{i}"))
        .cpu("4")
        .memory("8Gi")
        .build()
}

/// A control plane with `nodes` small nodes, drover behind kube-scheduler, and the
/// members of `gangs` created interleaved (`a-0`, `b-0`, `a-1`, ...).
async fn competing(
    nodes: usize,
    gangs: &[&str],
) -> anyhow::Result<(ControlPlane, CancellationToken, ProcessGuard)> {
    let cp = ControlPlane::start().await?;
    cp.create_nodes(&(0..nodes).map(small_node).collect::<Vec<Node>>())
        .await?;
    let (_running, shutdown, ks) = with_drover(&cp, true).await?;
    let pods: Api<Pod> = Api::namespaced(cp.client(), NS);
    for i in 0..4 {
        for g in gangs {
            pods.create(&PostParams::default(), &member(g, i)).await?;
        }
    }
    Ok((cp, shutdown, ks))
}

/// Members of `gang` (4 of them, one per 4-CPU node), created by the caller's order.
fn member(gang: &str, i: usize) -> Pod {
    TestPod::new(format!("{gang}-{i}"))
        .cpu("3")
        .memory("1Gi")
        .label(GROUP_LABEL, gang)
        .annotation(MIN_MEMBER_ANNOTATION, "4")
        .build()
}

/// Bound members per gang (every gang named, bound or not), live pods only.
async fn bound_by_gang(
    client: &Client,
    gangs: &[&str],
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut counts: std::collections::BTreeMap<String, usize> =
        gangs.iter().map(|g| (g.to_string(), 0)).collect();
    for p in drover_e2e::pods(client, NS).await? {
        if p.metadata.deletion_timestamp.is_some() || node_of(&p).is_none() {
            continue;
        }
        if let Some(g) = p.metadata.labels.as_ref().and_then(|l| l.get(GROUP_LABEL))
            && let Some(c) = counts.get_mut(g)
        {
            *c += 1;
        }
    }
    Ok(counts)
}

/// Polls every 100 ms until `done` holds of the counts, failing the moment more than
/// `room` gangs have members bound (kube-scheduler binds a gang member by member, so a
/// gang may be partly bound on its way to whole, but a gang beyond the room would
/// mean two gangs share room for one: a deadlock). Returns the counts that satisfied
/// `done`.
async fn watch_gangs(
    client: &Client,
    gangs: &[&str],
    room: usize,
    within: Duration,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, usize>) -> bool,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let counts = bound_by_gang(client, gangs).await?;
        let started = counts.values().filter(|c| **c > 0).count();
        anyhow::ensure!(
            started <= room,
            "{started} gangs have members bound with room for {room}: {counts:?}"
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

/// For `hold` more, every gang stays whole or empty, polled every 100 ms.
async fn stays_whole_or_empty(
    client: &Client,
    gangs: &[&str],
    hold: Duration,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let until = tokio::time::Instant::now() + hold;
    let mut last = bound_by_gang(client, gangs).await?;
    while tokio::time::Instant::now() < until {
        last = bound_by_gang(client, gangs).await?;
        anyhow::ensure!(
            last.values().all(|c| *c == 0 || *c == 4),
            "a gang partly bound once settled: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(last)
}

async fn delete_gang(client: &Client, gang: &str) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..4 {
        api.delete(
            &format!("{gang}-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        &format!("gang {gang}'s pods gone"),
        || {
            let api = api.clone();
            let gang = gang.to_string();
            async move {
                let all = api.list(&Default::default()).await?.items;
                Ok(!all.iter().any(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("{gang}-")))
                }))
            }
        },
    )
    .await
}

/// Two gangs of 4 with room for 6, members created interleaved: one binds whole, the
/// other binds nothing (never 3 and 3). Deleting the placed gang lets the other bind
/// whole. A third gang created after, all at once, finds room for 2 and binds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gangs_with_room_for_one_never_share_it() -> anyhow::Result<()> {
    let (cp, shutdown, _ks) = competing(6, &["a", "b"]).await?;
    let client = cp.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let gangs = ["a", "b", "c"];
    let first = watch_gangs(
        &client,
        &gangs,
        1,
        Duration::from_secs(60),
        "one gang whole",
        |c| c.values().any(|n| *n == 4),
    )
    .await?;
    let (whole, other) = if first["a"] == 4 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let settled = stays_whole_or_empty(&client, &gangs, Duration::from_secs(3)).await?;
    assert_eq!((settled[whole], settled[other]), (4, 0), "{settled:?}");
    let held = pods.get(&format!("{other}-0")).await?;
    let msg = unschedulable_message(&held).unwrap_or_default();
    assert!(msg.contains(&format!("gang default/{other}")), "{msg}");
    eprintln!("interleaved: {whole} whole, {other} held: {msg}");

    delete_gang(&client, whole).await?;
    watch_gangs(
        &client,
        &gangs,
        1,
        Duration::from_secs(60),
        "the other gang whole",
        |c| c[other] == 4,
    )
    .await?;

    // One gang after the other: c, created whole while `other` runs, has room for 2.
    for i in 0..4 {
        pods.create(&PostParams::default(), &member("c", i)).await?;
    }
    let settled = stays_whole_or_empty(&client, &gangs, Duration::from_secs(5)).await?;
    assert_eq!((settled[other], settled["c"]), (4, 0), "{settled:?}");
    delete_gang(&client, other).await?;
    watch_gangs(
        &client,
        &gangs,
        1,
        Duration::from_secs(60),
        "gang c whole",
        |c| c["c"] == 4,
    )
    .await?;
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    shutdown.cancel();
    Ok(())
}

/// Three gangs of 4 with room for 8, members created interleaved: two bind whole, one
/// binds nothing; deleting one placed gang lets the third bind whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gangs_with_room_for_two() -> anyhow::Result<()> {
    let gangs = ["a", "b", "c"];
    let (cp, shutdown, _ks) = competing(8, &gangs).await?;
    let client = cp.client();
    watch_gangs(
        &client,
        &gangs,
        2,
        Duration::from_secs(90),
        "two gangs whole",
        |c| c.values().filter(|n| **n == 4).count() == 2,
    )
    .await?;
    let settled = stays_whole_or_empty(&client, &gangs, Duration::from_secs(3)).await?;
    let mut counts: Vec<usize> = settled.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![0, 4, 4], "{settled:?}");
    let waiting = settled
        .iter()
        .find(|(_, n)| **n == 0)
        .map(|(g, _)| g.clone())
        .expect("one gang waits");
    let placed = settled
        .iter()
        .find(|(_, n)| **n == 4)
        .map(|(g, _)| g.clone())
        .expect("a gang runs");
    delete_gang(&client, &placed).await?;
    watch_gangs(
        &client,
        &gangs,
        2,
        Duration::from_secs(60),
        "the waiting gang whole",
        |c| c[&waiting] == 4,
    )
    .await?;
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    shutdown.cancel();
    Ok(())
}
