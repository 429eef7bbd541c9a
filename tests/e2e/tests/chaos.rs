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

/// What is killed with SIGKILL and left down for 8 s.
#[derive(Clone, Copy, Debug)]
enum Down {
    ApiServer,
    Etcd,
}

/// Drover runs while `down` is killed and left down for 8 s: every pod created once
/// kube-apiserver answers again is bound within 3 s of that moment (drover's watches
/// come back within 1.6 s), and every pod is bound exactly once.
async fn pods_created_after_a_restart_bind_within_3_s(down: Down) -> anyhow::Result<()> {
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

    let back = match down {
        Down::ApiServer => cp.restart_apiserver(Duration::from_secs(8)).await?,
        Down::Etcd => cp.restart_etcd(Duration::from_secs(8)).await?,
    };
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
        anyhow::anyhow!(
            "{down:?} down: pods created after the restart were not all bound within 20 s"
        )
    })?;
    println!(
        "{down:?} down 8 s: the 10 pods created once kube-apiserver answered were bound {} ms after it answered",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_secs(3),
        "{down:?}: bound {took:?} after the API server answered"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_after_an_api_server_restart_bind_within_3_s() -> anyhow::Result<()> {
    pods_created_after_a_restart_bind_within_3_s(Down::ApiServer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_after_an_etcd_restart_bind_within_3_s() -> anyhow::Result<()> {
    pods_created_after_a_restart_bind_within_3_s(Down::Etcd).await
}

/// A drover replica on a runtime of its own, so that it can be killed the way
/// `kill -9` kills a process: every task stops where it is, the Lease is not released.
struct Killable {
    rt: Option<tokio::runtime::Runtime>,
    shared: drover::k8s::Shared,
}

const LEASE_SECONDS: u64 = 6;

fn lease_options(id: &str) -> drover::k8s::RunOptions {
    let mut o = drover::k8s::RunOptions::new("drover");
    o.identity = id.into();
    o.leader_election = Some(drover::k8s::run::LeaderElection {
        namespace: "default".into(),
        name: "drover".into(),
        duration_seconds: LEASE_SECONDS,
    });
    o
}

impl Killable {
    fn start(cp: &ControlPlane, id: &str) -> anyhow::Result<Killable> {
        Killable::start_with(cp, lease_options(id))
    }

    fn start_with(cp: &ControlPlane, opts: drover::k8s::RunOptions) -> anyhow::Result<Killable> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let shared = drover::k8s::Shared::new();
        let (config, s) = (cp.client_config(), shared.clone());
        rt.spawn(async move {
            let client = kube::Client::try_from(config)?;
            drover::k8s::run_with(client, opts, s, tokio_util::sync::CancellationToken::new()).await
        });
        Ok(Killable {
            rt: Some(rt),
            shared,
        })
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn until_leading(shared: &drover::k8s::Shared, within: Duration) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    while !shared.leader.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::ensure!(start.elapsed() < within, "no hand-over within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// Two replicas with a 6 s Lease. The leader killed like `kill -9` (its Lease left
/// held): the follower leads once the Lease record has not changed for a whole
/// duration (6 s plus its retry period). The next leader stopped like SIGTERM (it
/// releases the Lease): the follower leads at its next retry (0.8 s). Each time the
/// new leader binds a pod created after the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hand_over_after_kill_and_after_sigterm() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").cpu("8").memory("32Gi").build()])
        .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut a = Killable::start(&cp, "replica-a")?;
    until_leading(&a.shared, Duration::from_secs(30)).await?;
    let b = Drover::start_with(client.clone(), lease_options("replica-b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !b.shared.leader.load(std::sync::atomic::Ordering::SeqCst),
        "one leader"
    );

    a.kill();
    let after_kill = until_leading(&b.shared, Duration::from_secs(30)).await?;
    let bind = |name: &'static str| {
        let (api, client) = (api.clone(), client.clone());
        async move {
            let t = std::time::Instant::now();
            api.create(
                &PostParams::default(),
                &TestPod::new(name).scheduler("drover").cpu("100m").build(),
            )
            .await?;
            wait_until(
                Duration::from_secs(20),
                Duration::from_millis(20),
                "the new leader binds a new pod",
                || {
                    let api = api.clone();
                    async move { Ok(node_of(&api.get(name).await?).is_some()) }
                },
            )
            .await?;
            let _ = client;
            anyhow::Ok(t.elapsed())
        }
    };
    let first = bind("after-kill").await?;

    let c = Drover::start_with(client.clone(), lease_options("replica-c"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = std::time::Instant::now();
    b.stop().await?;
    let after_term = stopped.elapsed() + until_leading(&c.shared, Duration::from_secs(30)).await?;
    let second = bind("after-sigterm").await?;
    println!(
        "Lease {LEASE_SECONDS} s: hand-over after kill -9 {} ms (then a new pod bound in {} ms); after SIGTERM {} ms (then {} ms)",
        after_kill.as_millis(),
        first.as_millis(),
        after_term.as_millis(),
        second.as_millis()
    );
    let lease = Duration::from_secs(LEASE_SECONDS);
    assert!(
        after_kill <= lease + Duration::from_secs(2),
        "{after_kill:?}"
    );
    assert!(after_term <= Duration::from_secs(3), "{after_term:?}");
    let events = scheduled_events(&client).await?;
    assert!(events.values().all(|n| *n <= 1), "{events:?}");
    c.stop().await
}

/// Ten 8-cpu nodes and the 50-member gang `cut` on them (1 cpu each, minMember 50).
async fn create_cut_gang(cp: &ControlPlane) -> anyhow::Result<()> {
    use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
    cp.create_nodes(&drover_e2e::nodes(10, "8", "32Gi")).await?;
    let api: Api<Pod> = Api::namespaced(cp.client(), NS);
    for i in 0..50 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("g-{i}"))
                .scheduler("drover")
                .cpu("1")
                .label(GROUP_LABEL, "cut")
                .annotation(MIN_MEMBER_ANNOTATION, "50")
                .build(),
        )
        .await?;
    }
    Ok(())
}

/// drover killed like `kill -9` while a 50-pod gang is being bound, then started
/// again: the new instance finds the gang partly bound and completes it; every member
/// ends bound, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_cut_by_kill_9_mid_bind_ends_whole_after_restart() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    create_cut_gang(&cp).await?;
    // No leader election: the restarted instance schedules at once.
    let mut first = Killable::start_with(&cp, drover::k8s::RunOptions::new("drover"))?;
    // Kill it as soon as the first members are bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cut_at = loop {
        let n = bound_count(&client, NS).await?;
        if n > 0 {
            first.kill();
            break n;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no member bound within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left_bound = bound_count(&client, NS).await?;
    let restarted = std::time::Instant::now();
    let second = Drover::start(client.clone());
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the whole gang bound after the restart",
        || async { Ok(bound_count(&client, NS).await? == 50) },
    )
    .await?;
    println!(
        "killed with {cut_at} of 50 members bound ({left_bound} once its binds in flight landed); the restarted instance bound the rest in {} ms",
        restarted.elapsed().as_millis()
    );
    let events = scheduled_events(&client).await?;
    assert!(
        events.values().all(|n| *n <= 1),
        "bound once each: {events:?}"
    );
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    second.stop().await
}

/// A validating admission webhook on `pods/binding`, served on loopback over HTTPS
/// with a certificate from a CA the API server trusts: `decide` gets each
/// AdmissionReview's `request` and allows it (`Ok`) or refuses it with a code and
/// message. Cancel the token to stop serving.
async fn binding_webhook<F, Fut>(
    cp: &ControlPlane,
    name: &str,
    decide: F,
) -> anyhow::Result<tokio_util::sync::CancellationToken>
where
    F: Fn(serde_json::Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), (u16, String)>> + Send + 'static,
{
    let certs = drover_e2e::ExtenderCerts::new(cp.dir())?;
    let router = axum::Router::new().route(
        "/validate",
        axum::routing::post(move |axum::Json(review): axum::Json<serde_json::Value>| {
            let decide = decide.clone();
            async move {
                let req = review["request"].clone();
                let uid = req["uid"].clone();
                let response = match decide(req).await {
                    Ok(()) => serde_json::json!({"uid": uid, "allowed": true}),
                    Err((code, message)) => serde_json::json!({"uid": uid, "allowed": false,
                        "status": {"code": code, "message": message}}),
                };
                axum::Json(serde_json::json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": response,
                }))
            }
        }),
    );
    let opts = drover_extender::server::ServerOptions {
        listen: "127.0.0.1:0".parse()?,
        tls: Some(drover_extender::server::TlsFiles {
            cert: certs.path("server.crt"),
            key: certs.path("server.key"),
        }),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let hook = drover_extender::server::serve(router, &opts, stop.clone()).await?;
    let ca = std::fs::read(certs.path("ca.crt"))?;
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(cp.client());
    webhooks
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "webhooks": [{
                    "name": format!("{name}.drover.test"),
                    "clientConfig": {
                        "url": format!("https://127.0.0.1:{}/validate", hook.addr.port()),
                        "caBundle": k8s_openapi::ByteString(ca),
                    },
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                               "resources": ["pods/binding"]}],
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }],
            }))?,
        )
        .await?;
    Ok(stop)
}

/// Every pod's first bind answered 500 by the API server (a validating admission
/// webhook on `pods/binding` that fails each pod's first try, served on loopback): drover
/// retries after its backoff, and every pod ends bound, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_answered_500_are_retried_and_land_once() -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    cp.create_nodes(&[FakeNode::new("n-0").cpu("8").memory("32Gi").build()])
        .await?;
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let t2 = tries.clone();
    let stop = binding_webhook(&cp, "fail-first-bind", move |req| {
        let name = req["name"].as_str().unwrap_or_default().to_string();
        let n = {
            let mut t = t2.lock().unwrap();
            let n = t.entry(name).or_default();
            *n += 1;
            *n
        };
        async move {
            (n > 1)
                .then_some(())
                .ok_or((500, "injected: the first bind of each pod fails".into()))
        }
    })
    .await?;
    let drover = Drover::start(client.clone());
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let t = std::time::Instant::now();
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("p-{i}"))
                .scheduler("drover")
                .cpu("100m")
                .build(),
        )
        .await?;
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "every pod bound despite its first bind failing",
        || async { Ok(bound_count(&client, NS).await? == 5) },
    )
    .await?;
    let took = t.elapsed();
    let seen = tries.lock().unwrap().clone();
    println!(
        "first bind of each of 5 pods answered 500: all bound {} ms after creation; tries per pod {seen:?}",
        took.as_millis()
    );
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen.values().all(|n| *n == 2),
        "one refused try and one bind each: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = scheduled_events(&client).await?;
    assert!(events.values().all(|n| *n <= 1), "{events:?}");
    stop.cancel();
    drover.stop().await
}

/// A 4-member gang on 8 nodes; the first member's bind is held by an admission
/// webhook while the test deletes that member's node (drover has the member assumed
/// there), then refused because the node is gone. drover forgets the node, places the
/// member elsewhere, and the gang ends whole on nodes that exist, each member bound
/// once, the deleted node never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_under_an_assumed_member_the_gang_ends_whole_elsewhere() -> anyhow::Result<()>
{
    use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
    use k8s_openapi::api::core::v1::Node;
    use std::sync::{Arc, Mutex};
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let nodes: Vec<_> = drover_e2e::nodes(8, "4", "16Gi");
    cp.create_nodes(&nodes).await?;
    // The first node a bind targets is the victim: binds to it wait 1.5 s, then are
    // refused if the node is gone by then (as an admission check would).
    let victim: Arc<Mutex<Option<String>>> = Arc::default();
    let victim_tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (v, vt, nodes_api) = (
        victim.clone(),
        victim_tries.clone(),
        Api::<Node>::all(client.clone()),
    );
    let stop = binding_webhook(&cp, "hold-and-check-node", move |req| {
        let target = req["object"]["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let is_victim = {
            let mut v = v.lock().unwrap();
            v.get_or_insert_with(|| target.clone()) == &target
        };
        let (vt, nodes_api) = (vt.clone(), nodes_api.clone());
        async move {
            if !is_victim {
                return Ok(());
            }
            vt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            match nodes_api.get_opt(&target).await {
                Ok(Some(_)) => Ok(()),
                _ => Err((403, format!("node {target} no longer exists"))),
            }
        }
    })
    .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &TestPod::new(format!("g-{i}"))
                .scheduler("drover")
                .cpu("3")
                .label(GROUP_LABEL, "g")
                .annotation(MIN_MEMBER_ANNOTATION, "4")
                .build(),
        )
        .await?;
    }
    let drover = Drover::start(client.clone());
    let mut gone = String::new();
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(10),
        "a bind to reach the webhook",
        || {
            let v = victim.lock().unwrap().clone();
            let found = v.is_some();
            if let Some(v) = v {
                gone = v;
            }
            async move { Ok(found) }
        },
    )
    .await?;
    Api::<Node>::all(client.clone())
        .delete(&gone, &Default::default())
        .await?;
    let deleted = std::time::Instant::now();
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the gang whole after its member's node was deleted",
        || async { Ok(bound_count(&client, NS).await? == 4) },
    )
    .await?;
    let took = deleted.elapsed();
    let placed: Vec<(String, String)> = pods(&client, NS)
        .await?
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                node_of(p).unwrap_or_default().to_string(),
            )
        })
        .collect();
    println!(
        "node {gone} deleted while a gang member was assumed on it: the gang whole {} ms later, at {placed:?}",
        took.as_millis()
    );
    assert!(placed.iter().all(|(_, n)| n != &gone), "{placed:?}");
    let distinct: std::collections::BTreeSet<_> = placed.iter().map(|(_, n)| n).collect();
    assert_eq!(
        distinct.len(),
        4,
        "one 3-cpu member per 4-cpu node: {placed:?}"
    );
    assert_eq!(
        victim_tries.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the deleted node was tried once"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = scheduled_events(&client).await?;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.values().all(|n| *n == 1), "{events:?}");
    assert!(drover_e2e::overcommitted(&client).await?.is_empty());
    stop.cancel();
    drover.stop().await
}
