//! drover as a drop-in for kube-scheduler, against a real kube-apiserver + etcd + kwok:
//! the same objects, on a fresh control plane for each scheduler, end placed (or left
//! pending) the same way by drover and by the real kube-scheduler.

use std::time::Duration;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_e2e::{Drover, gang_counts, node_of, unschedulable_message};
use drover_testenv::{ControlPlane, FakeNode, ProcessGuard, TestPod, wait_until};
use k8s_openapi::api::core::v1::{Affinity, Pod};
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
    // whose two ungated members alone would make minMember 2 waits all the same). The
    // gated member is created first: an elastic gang whose minimum exists is placed
    // without members that do not exist yet.
    for (gang, min) in [("g", 3), ("e", 2)] {
        for i in [2, 0, 1] {
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

const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// One required pod (anti-)affinity term as the API writes it.
fn term(key: &str, selector: serde_json::Value) -> serde_json::Value {
    json!({"topologyKey": key, "labelSelector": {"matchLabels": selector}})
}

fn affinity(affine: &[serde_json::Value], anti: &[serde_json::Value]) -> Affinity {
    let mut a = json!({});
    if !affine.is_empty() {
        a["podAffinity"] = json!({"requiredDuringSchedulingIgnoredDuringExecution": affine});
    }
    if !anti.is_empty() {
        a["podAntiAffinity"] = json!({"requiredDuringSchedulingIgnoredDuringExecution": anti});
    }
    serde_json::from_value(a).expect("a valid affinity")
}

/// Nodes `{pool}-0..n` of pool `pool`, in zone `{pool}-z{i / per_zone}`.
fn pool(pool: &str, n: usize, per_zone: usize) -> Vec<k8s_openapi::api::core::v1::Node> {
    (0..n)
        .map(|i| {
            FakeNode::new(format!("{pool}-{i}"))
                .cpu("4")
                .memory("16Gi")
                .label("pool", pool)
                .label(ZONE, &format!("{pool}-z{}", i / per_zone))
                .build()
        })
        .collect()
}

/// A 1-cpu pod of scheduler `s` restricted to pool `pool`.
fn pod_in(s: Sched, pool: &str, name: &str) -> TestPod {
    TestPod::new(name)
        .scheduler(s.name())
        .cpu("1")
        .memory("1Gi")
        .node_selector("pool", pool)
}

/// Where every pod of the namespace is, by name (None: pending).
async fn placements(
    client: &Client,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Option<String>>> {
    Ok(drover_e2e::pods(client, ns)
        .await?
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                node_of(p).map(str::to_string),
            )
        })
        .collect())
}

/// Waits (up to `timeout`) until at least `bound` pods of the namespace are bound by
/// scheduler `s`'s run, then a little longer so that any pod that should not bind has
/// had its chance; returns where every pod is.
async fn settled(
    client: &Client,
    s: Sched,
    bound: usize,
    timeout: Duration,
) -> anyhow::Result<std::collections::BTreeMap<String, Option<String>>> {
    wait_until(
        timeout,
        Duration::from_millis(200),
        "every placeable pod bound",
        || {
            let c = client.clone();
            async move { Ok(drover_e2e::bound_count(&c, NS).await? >= bound) }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    placements(client, NS).await
}

/// The inter-pod affinity rows of the parity table, every row in its own pool of
/// nodes, on a fresh control plane for each scheduler: the same objects, the same
/// outcome (which nodes differ where both schedulers may choose; what is required
/// holds for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_pod_affinity_is_decided_as_kube_scheduler_decides_it() -> anyhow::Result<()> {
    for s in Sched::BOTH {
        let cp = ControlPlane::start().await?;
        let client = cp.client();
        let mut nodes = Vec::new();
        for (p, n, per_zone) in [
            ("a", 5, 5),
            ("b", 5, 5),
            ("c", 4, 2),
            ("d", 1, 1),
            ("e", 2, 2),
            ("f", 2, 2),
            ("g", 2, 2),
        ] {
            nodes.extend(pool(p, n, per_zone));
        }
        cp.create_nodes(&nodes).await?;
        // Pods already placed (nodeName: no scheduler decides them), and a namespace
        // whose labels a namespaceSelector matches.
        drover_testenv::ensure_namespace(&client, "team-x").await?;
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                "team-x",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
            )
            .await?;
        let placed = [
            pod_in(s, "c", "db").label("role", "db").node_name("c-2"),
            pod_in(s, "e", "cache")
                .namespace("team-x")
                .label("role", "cache")
                .node_name("e-1"),
            pod_in(s, "f", "f-rev1")
                .label("app", "f")
                .label("rev", "1")
                .node_name("f-0"),
            pod_in(s, "f", "f-rev2")
                .label("app", "f")
                .label("rev", "2")
                .node_name("f-1"),
            pod_in(s, "g", "loner")
                .affinity(affinity(&[], &[term(HOST, json!({"app": "g"}))]))
                .node_name("g-0"),
        ];
        for p in placed {
            let p = p.build();
            let ns = p.metadata.namespace.clone().unwrap_or(NS.into());
            Api::<Pod>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &p)
                .await?;
        }
        let running = Running::start(&cp, s).await?;
        let spread = |app: &str| affinity(&[], &[term(HOST, json!({"app": app}))]);
        let mut pods = Vec::new();
        for i in 0..3 {
            pods.push(
                pod_in(s, "a", &format!("a-{i}"))
                    .label("app", "a")
                    .affinity(spread("a")),
            );
        }
        for i in 0..6 {
            pods.push(
                pod_in(s, "b", &format!("b-{i}"))
                    .label("app", "b")
                    .affinity(spread("b")),
            );
        }
        pods.push(
            pod_in(s, "c", "near-host")
                .affinity(affinity(&[term(HOST, json!({"role": "db"}))], &[])),
        );
        pods.push(
            pod_in(s, "c", "near-zone")
                .affinity(affinity(&[term(ZONE, json!({"role": "db"}))], &[])),
        );
        pods.push(
            pod_in(s, "d", "no-peer")
                .affinity(affinity(&[term(HOST, json!({"role": "nobody"}))], &[])),
        );
        let mut to_team = term(HOST, json!({"role": "cache"}));
        to_team["namespaceSelector"] = json!({"matchLabels": {"team": "x"}});
        pods.push(pod_in(s, "e", "to-team").affinity(affinity(&[to_team], &[])));
        pods.push(
            pod_in(s, "e", "own-ns-only")
                .affinity(affinity(&[term(HOST, json!({"role": "cache"}))], &[])),
        );
        let mut by_rev = term(HOST, json!({"app": "f"}));
        by_rev["matchLabelKeys"] = json!(["rev"]);
        pods.push(
            pod_in(s, "f", "f-new")
                .label("app", "f")
                .label("rev", "2")
                .affinity(affinity(&[], &[by_rev])),
        );
        pods.push(
            pod_in(s, "f", "f-any-rev")
                .label("app", "f")
                .label("rev", "3")
                .affinity(affinity(&[], &[term(HOST, json!({"app": "f"}))])),
        );
        pods.push(pod_in(s, "g", "g-member").label("app", "g"));
        for p in pods {
            create(&client, &p.build()).await?;
        }
        // a 3, b 5, near-host, near-zone, to-team, f-new, g-member: 13 bound by the
        // scheduler, beside the 4 of this namespace placed by nodeName.
        let expected_bound = 13;
        let at = settled(&client, s, expected_bound + 4, Duration::from_secs(60)).await?;
        let node = |name: &str| at.get(name).cloned().flatten();
        let hosts = |prefix: &str| -> Vec<String> {
            at.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, v)| v.clone())
                .collect()
        };
        let distinct = |v: &[String]| v.iter().collect::<std::collections::BTreeSet<_>>().len();
        let a = hosts("a-");
        assert_eq!(
            (a.len(), distinct(&a)),
            (3, 3),
            "{s:?}: 3 replicas on 3 hosts: {at:?}"
        );
        let b = hosts("b-");
        assert_eq!(
            (b.len(), distinct(&b)),
            (5, 5),
            "{s:?}: 5 of 6 bound, one per host: {at:?}"
        );
        assert_eq!(node("near-host").as_deref(), Some("c-2"), "{s:?}: {at:?}");
        assert!(
            matches!(node("near-zone").as_deref(), Some("c-2" | "c-3")),
            "{s:?}: near-zone in the db's zone c-z1: {at:?}"
        );
        assert_eq!(node("no-peer"), None, "{s:?}: no pod to be near: {at:?}");
        assert_eq!(node("to-team").as_deref(), Some("e-1"), "{s:?}: {at:?}");
        assert_eq!(
            node("own-ns-only"),
            None,
            "{s:?}: the cache is in another namespace: {at:?}"
        );
        assert_eq!(
            node("f-new").as_deref(),
            Some("f-0"),
            "{s:?}: only rev 2 repels it: {at:?}"
        );
        assert_eq!(
            node("f-any-rev"),
            None,
            "{s:?}: both hosts hold app=f: {at:?}"
        );
        assert_eq!(
            node("g-member").as_deref(),
            Some("g-1"),
            "{s:?}: the loner repels it: {at:?}"
        );
        let api = Api::<Pod>::namespaced(client.clone(), NS);
        let b_pending = at
            .iter()
            .find(|(k, v)| k.starts_with("b-") && v.is_none())
            .map(|(k, _)| k.clone())
            .expect("one b replica pending");
        for (name, says) in [
            (
                b_pending.as_str(),
                "5 node(s) didn't match pod anti-affinity rules",
            ),
            ("no-peer", "1 node(s) didn't match pod affinity rules"),
            ("own-ns-only", "2 node(s) didn't match pod affinity rules"),
            (
                "f-any-rev",
                "2 node(s) didn't match pod anti-affinity rules",
            ),
        ] {
            let m = unschedulable_message(&api.get(name).await?).unwrap_or_default();
            assert!(m.contains(says), "{s:?}: {name}: {m:?} says {says:?}");
        }
        if let Running::Drover(d) = running {
            d.stop().await?;
        }
    }
    Ok(())
}

/// A gang whose workers repel each other on hostname is decided over one snapshot:
/// one worker per node when there are enough nodes, no worker bound when there are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_with_hostname_anti_affinity_gets_one_node_per_worker_or_none() -> anyhow::Result<()>
{
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let mut nodes = pool("h", 4, 4);
    nodes.extend(pool("i", 4, 4));
    cp.create_nodes(&nodes).await?;
    let drover = Drover::start(client.clone());
    for (gang, n) in [("h", 4), ("i", 5)] {
        for k in 0..n {
            let p = pod_in(Sched::Drover, gang, &format!("{gang}-{k}"))
                .label("app", gang)
                .label(GROUP_LABEL, gang)
                .annotation(MIN_MEMBER_ANNOTATION, &n.to_string())
                .affinity(affinity(&[], &[term(HOST, json!({"app": gang}))]));
            create(&client, &p.build()).await?;
        }
    }
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "gang h bound whole",
        || {
            let c = client.clone();
            async move {
                Ok(gang_counts(&c, NS)
                    .await?
                    .get("h")
                    .is_some_and(|c| c.0 == 4))
            }
        },
    )
    .await?;
    let at = placements(&client, NS).await?;
    let h: std::collections::BTreeSet<_> = at
        .iter()
        .filter(|(k, _)| k.starts_with("h-"))
        .filter_map(|(_, v)| v.clone())
        .collect();
    assert_eq!(h.len(), 4, "one worker per node: {at:?}");
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "gang i says why it waits",
        || {
            let api = api.clone();
            async move {
                let m = unschedulable_message(&api.get("i-0").await?).unwrap_or_default();
                Ok(m.contains("anti-affinity"))
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = gang_counts(&client, NS).await?;
    assert_eq!(
        counts.get("i").map_or(0, |c| c.0),
        0,
        "5 workers, 4 hosts: none bound: {counts:?}"
    );
    let m = unschedulable_message(&api.get("i-0").await?).unwrap_or_default();
    assert!(
        m.contains("4/5 members placeable at once")
            && m.contains("4 node(s) didn't match pod anti-affinity rules"),
        "{m}"
    );
    drover.stop().await
}

/// `status.nominatedNodeName` of pod `name`, if set.
async fn nominated(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let p = Api::<Pod>::namespaced(client.clone(), NS).get(name).await?;
    Ok(p.status.and_then(|s| s.nominated_node_name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempting_pod_is_nominated_to_its_victims_node_then_binds_there() -> anyhow::Result<()>
{
    const HOLD: &str = "example.com/hold";
    for s in Sched::BOTH {
        let cp = ControlPlane::start().await?;
        let client = cp.client();
        cp.create_nodes(&[FakeNode::new("n-0").cpu("4").memory("16Gi").build()])
            .await?;
        let _running = match s {
            Sched::Drover => Running::Drover(Drover::start_with_config(
                client.clone(),
                drover_e2e::QUICK_EVICTIONS,
            )?),
            Sched::KubeScheduler => Running::start(&cp, s).await?,
        };
        // The victim holds the node and carries a finalizer, which kwok may remove on
        // its own; either way the preemptor is nominated to the victim's node and
        // binds there once the victim is gone.
        let mut low = TestPod::new("low")
            .scheduler(s.name())
            .cpu("4")
            .memory("1Gi")
            .priority(10)
            .build();
        low.metadata.finalizers = Some(vec![HOLD.to_string()]);
        create(&client, &low).await?;
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the low-priority pod bound",
            || {
                let c = client.clone();
                async move { Ok(node_of_pod(&c, "low").await?.is_some()) }
            },
        )
        .await?;
        create(
            &client,
            &TestPod::new("urgent")
                .scheduler(s.name())
                .cpu("4")
                .memory("1Gi")
                .priority(1000)
                .build(),
        )
        .await?;
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the preemptor nominated to n-0",
            || {
                let c = client.clone();
                async move { Ok(nominated(&c, "urgent").await?.as_deref() == Some("n-0")) }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
        let released = Api::<Pod>::namespaced(client.clone(), NS)
            .patch(
                "low",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        match released {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the preemptor bound to n-0",
            || {
                let c = client.clone();
                async move { Ok(node_of_pod(&c, "urgent").await?.as_deref() == Some("n-0")) }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    }
    Ok(())
}

/// Pod `p` with topology spread constraints `c`, as the API writes them.
fn with_spread(p: TestPod, c: serde_json::Value) -> Pod {
    let mut pod = p.build();
    pod.spec
        .as_mut()
        .expect("a pod spec")
        .topology_spread_constraints = Some(serde_json::from_value(c).expect("valid constraints"));
    pod
}

/// One zone spread constraint over pods labelled `app`.
fn zone_spread(app: &str, when: &str) -> serde_json::Value {
    json!({
        "maxSkew": 1,
        "topologyKey": ZONE,
        "whenUnsatisfiable": when,
        "labelSelector": {"matchLabels": {"app": app}},
    })
}

/// The topology spread rows of the parity table, each in its own pool of nodes, on a
/// fresh control plane for each scheduler: 9 pods over 3 zones end 3/3/3, minDomains
/// holds back what would crowd too few zones, matchLabelKeys counts only the pod's own
/// revision, and a pod's own ScheduleAnyway constraint spreads it over packing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_is_decided_as_kube_scheduler_decides_it() -> anyhow::Result<()> {
    for s in Sched::BOTH {
        let cp = ControlPlane::start().await?;
        let client = cp.client();
        let mut nodes = Vec::new();
        for (p, n, per_zone) in [("s", 9, 3), ("m", 2, 1), ("k", 2, 1), ("w", 3, 1)] {
            nodes.extend(pool(p, n, per_zone));
        }
        cp.create_nodes(&nodes).await?;
        // Revision 2 has one pod in zone k-z0, revision 1 two in k-z1.
        for (name, rev, node) in [("k-old-a", "1", "k-1"), ("k-old-b", "1", "k-1")]
            .into_iter()
            .chain([("k-cur", "2", "k-0")])
        {
            let p = pod_in(s, "k", name)
                .label("app", "k")
                .label("rev", rev)
                .node_name(node);
            create(&client, &p.build()).await?;
        }
        let running = Running::start(&cp, s).await?;
        for i in 0..9 {
            let p = pod_in(s, "s", &format!("s-{i}")).label("app", "s");
            create(
                &client,
                &with_spread(p, json!([zone_spread("s", "DoNotSchedule")])),
            )
            .await?;
        }
        for i in 0..3 {
            let mut c = zone_spread("m", "DoNotSchedule");
            c["minDomains"] = json!(3);
            let p = pod_in(s, "m", &format!("m-{i}")).label("app", "m");
            create(&client, &with_spread(p, json!([c]))).await?;
        }
        let mut by_rev = zone_spread("k", "DoNotSchedule");
        by_rev["matchLabelKeys"] = json!(["rev"]);
        let p = pod_in(s, "k", "k-new").label("app", "k").label("rev", "2");
        create(&client, &with_spread(p, json!([by_rev]))).await?;
        for i in 0..3 {
            let p = pod_in(s, "w", &format!("w-{i}")).label("app", "w");
            create(
                &client,
                &with_spread(p, json!([zone_spread("w", "ScheduleAnyway")])),
            )
            .await?;
        }
        // s 9, m 2, k-new, w 3: 15 bound by the scheduler, beside the 3 placed by
        // nodeName.
        let at = settled(&client, s, 15 + 3, Duration::from_secs(60)).await?;
        let zones = |prefix: &str| -> std::collections::BTreeMap<String, usize> {
            let mut z = std::collections::BTreeMap::new();
            for node in at
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, v)| v.as_deref())
            {
                // Pool nodes `{p}-{i}` sit in zone `{p}-z{i / per_zone}`.
                let (p, i) = node.split_once('-').expect("a pool node");
                let per_zone = if p == "s" { 3 } else { 1 };
                let i: usize = i.parse().expect("a node index");
                *z.entry(format!("{p}-z{}", i / per_zone)).or_default() += 1;
            }
            z
        };
        assert_eq!(
            zones("s-").into_values().collect::<Vec<_>>(),
            vec![3, 3, 3],
            "{s:?}: 9 pods, 3 zones, maxSkew 1: {at:?}"
        );
        assert_eq!(
            zones("m-").into_values().collect::<Vec<_>>(),
            vec![1, 1],
            "{s:?}: 2 zones of the 3 minDomains asks for: one pod each: {at:?}"
        );
        assert_eq!(
            at.get("k-new").cloned().flatten().as_deref(),
            Some("k-1"),
            "{s:?}: only revision 2 is counted: {at:?}"
        );
        assert_eq!(
            zones("w-").into_values().collect::<Vec<_>>(),
            vec![1, 1, 1],
            "{s:?}: ScheduleAnyway spreads over packing: {at:?}"
        );
        let api = Api::<Pod>::namespaced(client.clone(), NS);
        let m_pending = at
            .iter()
            .find(|(k, v)| k.starts_with("m-") && v.is_none())
            .map(|(k, _)| k.clone())
            .expect("one m pod pending");
        let m = unschedulable_message(&api.get(&m_pending).await?).unwrap_or_default();
        assert!(
            m.contains("2 node(s) didn't match pod topology spread constraints"),
            "{s:?}: {m:?}"
        );
        if let Running::Drover(d) = running {
            d.stop().await?;
        }
    }
    Ok(())
}

const CSI: &str = "csi.example.com";

/// Creates the object `v` describes through `api`.
async fn make<K>(api: &Api<K>, v: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Node affinity of a volume: `key` In `value`.
fn volume_nodes(key: &str, value: &str) -> serde_json::Value {
    json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": key, "operator": "In", "values": [value]}]}]}})
}

/// A PersistentVolume `name` of `class` ("" for none), 1Gi unless said, through CSI.
fn pv_json(
    name: &str,
    class: &str,
    modes: &[&str],
    nodes: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {
            "storageClassName": class,
            "capacity": {"storage": "1Gi"},
            "accessModes": modes,
            "csi": {"driver": CSI, "volumeHandle": name},
            "persistentVolumeReclaimPolicy": "Retain",
        }
    });
    if let Some(n) = nodes {
        v["spec"]["nodeAffinity"] = n;
    }
    v
}

/// A PersistentVolumeClaim `name` of `class` for 1Gi, pre-bound to `volume` if given.
fn pvc_json(name: &str, class: &str, modes: &[&str], volume: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "storageClassName": class,
            "accessModes": modes,
            "resources": {"requests": {"storage": "1Gi"}},
        }
    });
    if let Some(pv) = volume {
        v["spec"]["volumeName"] = json!(pv);
    }
    v
}

/// Pod `p` mounting claim `claim`.
fn mounting(p: TestPod, claim: &str) -> Pod {
    let mut pod = p.build();
    pod.spec.as_mut().expect("a pod spec").volumes = Some(vec![
        serde_json::from_value(
            json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}),
        )
        .expect("a volume"),
    ]);
    pod
}

async fn claim_phase(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let c =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), NS)
            .get(name)
            .await?;
    Ok(c.status.and_then(|s| s.phase))
}

/// The volume rows of the parity table, with the real volume controller
/// (kube-controller-manager) binding claims, on a fresh control plane for each
/// scheduler; the test plays the CSI provisioner (it creates the volume a claim's
/// selected-node asks for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_decided_as_kube_scheduler_decides_them() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
    for s in Sched::BOTH {
        let cp = ControlPlane::builder()
            .controller_manager(true)
            .start()
            .await?;
        let client = cp.client();
        let mut nodes = pool("v", 4, 2);
        nodes.extend(pool("l", 1, 1));
        nodes.extend(pool("o", 2, 2));
        cp.create_nodes(&nodes).await?;
        let (pvs, pvcs) = (
            Api::<PersistentVolume>::all(client.clone()),
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS),
        );
        let classes = Api::<StorageClass>::all(client.clone());
        for (name, provisioner, mode, zone) in [
            ("zonal", CSI, "WaitForFirstConsumer", Some("v-z1")),
            (
                "local",
                "kubernetes.io/no-provisioner",
                "WaitForFirstConsumer",
                None,
            ),
            ("now", CSI, "Immediate", None),
        ] {
            let mut c = json!({"metadata": {"name": name}, "provisioner": provisioner,
                "volumeBindingMode": mode});
            if let Some(z) = zone {
                c["allowedTopologies"] =
                    json!([{"matchLabelExpressions": [{"key": ZONE, "values": [z]}]}]);
            }
            make(&classes, c).await?;
        }
        make(
            &Api::<CSINode>::all(client.clone()),
            json!({"metadata": {"name": "l-0"}, "spec": {"drivers": [
                {"name": CSI, "nodeID": "l-0", "allocatable": {"count": 1}}]}}),
        )
        .await?;
        let rwo = ["ReadWriteOnce"];
        // Pre-bound pairs the volume controller binds: a zone-v-z1 volume, two CSI
        // volumes for the one-attachment node, a ReadWriteOncePod volume.
        for (pv, pvc, modes, nodes) in [
            (
                "pv-bound",
                "bound",
                &rwo[..],
                Some(volume_nodes(ZONE, "v-z1")),
            ),
            ("pv-l1", "l1", &rwo[..], None),
            ("pv-l2", "l2", &rwo[..], None),
            ("pv-solo", "solo", &["ReadWriteOncePod"][..], None),
        ] {
            let mut v = pv_json(pv, "", modes, nodes);
            v["spec"]["claimRef"] = json!({"namespace": NS, "name": pvc});
            make(&pvs, v).await?;
            make(&pvcs, pvc_json(pvc, "", modes, Some(pv))).await?;
        }
        // A static local volume on v-3 only; claims that wait for their consumer.
        make(
            &pvs,
            pv_json("pv-local", "local", &rwo, Some(volume_nodes(HOST, "v-3"))),
        )
        .await?;
        make(&pvcs, pvc_json("scratch", "local", &rwo, None)).await?;
        make(&pvcs, pvc_json("home", "zonal", &rwo, None)).await?;
        make(&pvcs, pvc_json("later", "now", &rwo, None)).await?;
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            "the volume controller bound the pre-bound claims",
            || {
                let c = client.clone();
                async move {
                    for n in ["bound", "l1", "l2", "solo"] {
                        if claim_phase(&c, n).await?.as_deref() != Some("Bound") {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
            },
        )
        .await?;
        let running = Running::start(&cp, s).await?;
        for (pod, pool, claim) in [
            ("uses-bound", "v", "bound"),
            ("notebook", "v", "home"),
            ("uses-local", "v", "scratch"),
            ("waits-immediate", "v", "later"),
            ("l-a", "l", "l1"),
            ("l-b", "l", "l2"),
            ("o-a", "o", "solo"),
            ("o-b", "o", "solo"),
        ] {
            create(&client, &mounting(pod_in(s, pool, pod), claim)).await?;
        }
        // Play the provisioner: once a node is selected for `home`, make its volume.
        let selected = wait_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            "a node selected for claim home",
            || {
                let pvcs = pvcs.clone();
                async move {
                    let c = pvcs.get("home").await?;
                    Ok(c.metadata
                        .annotations
                        .unwrap_or_default()
                        .contains_key("volume.kubernetes.io/selected-node"))
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{s:?}: {e}"));
        selected?;
        let home = pvcs.get("home").await?;
        let node = home.metadata.annotations.clone().unwrap_or_default()
            ["volume.kubernetes.io/selected-node"]
            .clone();
        let mut v = pv_json("pv-home", "zonal", &rwo, Some(volume_nodes(ZONE, "v-z1")));
        v["spec"]["claimRef"] = json!({"namespace": NS, "name": "home",
            "uid": home.metadata.uid});
        make(&pvs, v).await?;
        // uses-bound, notebook, uses-local, one of l-*, one of o-*.
        let at = settled(&client, s, 5, Duration::from_secs(90)).await?;
        let on = |p: &str| at.get(p).cloned().flatten();
        assert!(
            matches!(on("uses-bound").as_deref(), Some("v-2" | "v-3")),
            "{s:?}: its volume is in zone v-z1: {at:?}"
        );
        assert!(
            matches!(node.as_str(), "v-2" | "v-3"),
            "{s:?}: the class provisions in v-z1 only: selected {node}"
        );
        assert_eq!(on("notebook"), Some(node.clone()), "{s:?}: {at:?}");
        assert_eq!(on("uses-local").as_deref(), Some("v-3"), "{s:?}: {at:?}");
        let local = pvs.get("pv-local").await?;
        let claim_ref = local.spec.and_then(|s| s.claim_ref).and_then(|r| r.name);
        assert_eq!(
            claim_ref.as_deref(),
            Some("scratch"),
            "{s:?}: the static volume bound"
        );
        assert_eq!(on("waits-immediate"), None, "{s:?}: {at:?}");
        let api = Api::<Pod>::namespaced(client.clone(), NS);
        let says = |name: String, text: &'static str| {
            let api = api.clone();
            async move {
                let m = unschedulable_message(&api.get(&name).await?).unwrap_or_default();
                anyhow::ensure!(m.contains(text), "{s:?}: {name}: {m:?} says {text:?}");
                anyhow::Ok(())
            }
        };
        says(
            "waits-immediate".into(),
            "pod has unbound immediate PersistentVolumeClaims",
        )
        .await?;
        for (prefix, text) in [
            ("l-", "node(s) exceed max volume count"),
            ("o-", "ReadWriteOncePod access mode"),
        ] {
            let placed: Vec<_> = at
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(
                placed.iter().filter(|(_, v)| v.is_some()).count(),
                1,
                "{s:?}: one of {prefix}*: {at:?}"
            );
            let pending = placed
                .into_iter()
                .find(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .expect("one pending");
            says(pending, text).await?;
        }
        if let Running::Drover(d) = running {
            d.stop().await?;
        }
    }
    Ok(())
}

/// Pod `p` with one `spec.resourceClaims` entry `gpu` naming ResourceClaim `claim`.
fn with_device_claim(p: TestPod, claim: &str) -> Pod {
    let mut pod = p.build();
    pod.spec.as_mut().expect("a pod spec").resource_claims = Some(vec![
        serde_json::from_value(json!({"name": "gpu", "resourceClaimName": claim}))
            .expect("a pod resource claim"),
    ]);
    pod
}

/// Pods with Dynamic Resource Allocation claims: one whose claim was allocated on node
/// d-1 goes there and the claim is reserved for it, with either scheduler; pods whose
/// claim is unallocated or missing stay pending (drover does not allocate devices, and
/// says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_resource_claims_go_where_their_allocation_is() -> anyhow::Result<()> {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    for s in Sched::BOTH {
        let cp = ControlPlane::start().await?;
        let client = cp.client();
        cp.create_nodes(&pool("d", 2, 2)).await?;
        let claims = Api::<ResourceClaim>::namespaced(client.clone(), NS);
        for name in ["gpu-d1", "gpu-none"] {
            make(
                &claims,
                json!({"metadata": {"name": name, "namespace": NS},
                    "spec": {"devices": {"requests": [
                        {"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}}),
            )
            .await?;
        }
        // A driver (someone else) allocated gpu-d1 on node d-1.
        claims
            .patch_status(
                "gpu-d1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"allocation": {
                    "devices": {"results": [{"request": "gpu", "driver": "gpu.example.com",
                        "pool": "d-1", "device": "gpu-0"}]},
                    "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": ["d-1"]}]}]}}}})),
            )
            .await?;
        let running = Running::start(&cp, s).await?;
        for (pod, claim) in [
            ("on-device", "gpu-d1"),
            ("no-alloc", "gpu-none"),
            ("missing", "nope"),
        ] {
            create(&client, &with_device_claim(pod_in(s, "d", pod), claim)).await?;
        }
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            "the pod with an allocated claim bound",
            || {
                let c = client.clone();
                async move { Ok(node_of_pod(&c, "on-device").await?.is_some()) }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
        assert_eq!(
            node_of_pod(&client, "on-device").await?.as_deref(),
            Some("d-1"),
            "{s:?}"
        );
        let uid = Api::<Pod>::namespaced(client.clone(), NS)
            .get("on-device")
            .await?
            .metadata
            .uid;
        let reserved: Vec<_> = claims
            .get_status("gpu-d1")
            .await?
            .status
            .and_then(|s| s.reserved_for)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.uid)
            .collect();
        assert_eq!(
            reserved,
            vec![uid.unwrap_or_default()],
            "{s:?}: reserved for the pod"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        for p in ["no-alloc", "missing"] {
            assert_eq!(node_of_pod(&client, p).await?, None, "{s:?}: {p} waits");
        }
        if let Running::Drover(d) = running {
            let api = Api::<Pod>::namespaced(client.clone(), NS);
            for (p, says) in [
                ("no-alloc", "resourceclaim \"gpu-none\" is not allocated"),
                ("missing", "resourceclaim \"nope\" not found"),
            ] {
                let m = unschedulable_message(&api.get(p).await?).unwrap_or_default();
                assert!(m.contains(says), "{p}: {m:?} says {says:?}");
            }
            d.stop().await?;
        }
    }
    Ok(())
}
