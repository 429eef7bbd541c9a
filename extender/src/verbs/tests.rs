//! The verbs over hand-built clusters fed to the engine: no server, no API.

use std::sync::Arc;

use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_core::model::{NodeInfo, PodInfo, PodKey, ResourceKind, Resources, Taint, TaintEffect};
use drover_core::quota::QueueSpec;
use drover_core::snapshot::Snapshot;
use serde_json::{Value, json};

use super::*;

const GI: i64 = 1 << 30;

fn node(name: &str, cpu: i64, mem_gi: i64) -> NodeInfo {
    NodeInfo::new(name, Resources::cpu_mem(cpu * 1000, mem_gi * GI), 110)
}

fn running(name: &str, cpu: i64) -> Arc<PodInfo> {
    Arc::new(PodInfo {
        key: PodKey::new("other", name),
        uid: format!("uid-{name}").into(),
        requests: Resources::cpu_mem(cpu * 1000, GI),
        declares_requests: true,
        ..Default::default()
    })
}

/// a: 4 cpu with 3 in use; b: 4 cpu free; c: 4 cpu, tainted.
fn small_cluster() -> Snapshot {
    let mut a = node("a", 4, 16);
    a.add_pod(running("busy", 3));
    let mut c = node("c", 4, 16);
    c.taints.push(Taint {
        key: "gpu".into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    });
    Snapshot::from_nodes([a, node("b", 4, 16), c])
}

/// Queue `team` with a max of `millicores` cpu.
fn team_queue(millicores: i64) -> QueueSpec {
    let mut max = Resources::default();
    max.set(&ResourceKind::Cpu, millicores);
    QueueSpec {
        name: "team".into(),
        max: Some(max),
        max_listed: vec![ResourceKind::Cpu],
        weight: 1,
        ..Default::default()
    }
}

fn pod_json(name: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"schedulerName": "default-scheduler", "containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
        ]},
        "status": {}
    })
}

fn member_json(name: &str, gang: &str, min: &str, cpu: &str) -> Value {
    let mut p = pod_json(name, cpu, "1Gi");
    p["metadata"]["labels"] = json!({ GROUP_LABEL: gang });
    p["metadata"]["annotations"] = json!({ MIN_MEMBER_ANNOTATION: min });
    p
}

fn info(p: &Value) -> PodInfo {
    drover::k8s::convert::pod_info(&serde_json::from_value(p.clone()).unwrap()).unwrap()
}

fn names_args(pod: &Value, names: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({"Pod": pod, "Nodes": null, "NodeNames": names})).unwrap()
}

fn call(ext: &Extender, verb: Verb, body: &[u8]) -> (u16, Value) {
    let r = ext.handle(verb, body);
    let v: Value = serde_json::from_slice(&r.body).expect("the body is JSON");
    (r.status, v)
}

fn passed(v: &Value) -> Vec<String> {
    serde_json::from_value(v["NodeNames"].clone()).unwrap_or_default()
}

#[test]
fn filter_by_name_uses_drover_filters_and_wording() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let (status, v) = call(
        &ext,
        Verb::Filter,
        &names_args(&pod_json("p", "2", "1Gi"), &["a", "b", "c"]),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(passed(&v), vec!["b"]);
    assert_eq!(v["Nodes"], Value::Null, "answers in the shape it was asked");
    assert_eq!(v["FailedNodes"]["a"], "Insufficient cpu");
    assert_eq!(
        v["FailedAndUnresolvableNodes"]["c"],
        "node(s) had untolerated taint {gpu: true}"
    );
    assert_eq!(v["Error"], "");
}

#[test]
fn filter_with_whole_nodes_counts_the_cached_pods() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let node = |name: &str| {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
               "spec": {},
               "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}}})
    };
    let body = serde_json::to_vec(&json!({
        "Pod": pod_json("p", "2", "1Gi"),
        "Nodes": {"metadata": {}, "items": [node("a"), node("fresh")]},
        "NodeNames": null,
    }))
    .unwrap();
    let (status, v) = call(&ext, Verb::Filter, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["NodeNames"], Value::Null);
    let items = v["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "fresh");
    assert_eq!(
        items[0]["metadata"]["labels"]["kubernetes.io/hostname"], "fresh",
        "the Node goes back whole"
    );
    assert_eq!(
        v["FailedNodes"]["a"], "Insufficient cpu",
        "a's cached pod counts"
    );
}

#[test]
fn bad_requests_get_a_4xx_with_an_error() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let no_name = json!({"metadata": {}, "spec": {"containers": []}});
    let mut bad_qty = pod_json("p", "lots", "1Gi");
    bad_qty["metadata"]["name"] = json!("p");
    // (verb, body, status, fragment of Error)
    let cases: Vec<(Verb, Vec<u8>, u16, &str)> = vec![
        (Verb::Filter, b"{".to_vec(), 400, "not ExtenderArgs JSON"),
        (
            Verb::Filter,
            b"[1,2]".to_vec(),
            400,
            "not ExtenderArgs JSON",
        ),
        (
            Verb::Filter,
            br#"{"NodeNames":["a"]}"#.to_vec(),
            400,
            "Pod is missing",
        ),
        (
            Verb::Filter,
            names_args(&no_name, &["a"]),
            400,
            "Pod.metadata.name",
        ),
        (Verb::Filter, names_args(&bad_qty, &["a"]), 400, "cpu"),
        (
            Verb::Filter,
            serde_json::to_vec(&json!({"Pod": pod_json("p", "1", "1Gi")})).unwrap(),
            400,
            "NodeNames or Nodes",
        ),
        (
            Verb::Filter,
            names_args(&pod_json("p", "1", "1Gi"), &["a", "ghost"]),
            422,
            "\"ghost\"",
        ),
        (
            Verb::Prioritize,
            names_args(&pod_json("p", "1", "1Gi"), &["ghost"]),
            422,
            "unknown",
        ),
        (
            Verb::Preempt,
            b"nope".to_vec(),
            400,
            "ExtenderPreemptionArgs",
        ),
        (Verb::Bind, b"{}".to_vec(), 404, "asynchronously"),
    ];
    for (i, (verb, body, status, fragment)) in cases.into_iter().enumerate() {
        let (got, v) = call(&ext, verb, &body);
        assert_eq!(got, status, "case {i}: {v}");
        let e = v["Error"].as_str().unwrap_or_default();
        assert!(e.contains(fragment), "case {i}: {e}");
    }
}

#[test]
fn not_ready_until_synced() {
    // Nothing listed yet.
    let ext = Extender::new(Config::default(), DEFAULT_PLAN_TTL);
    let (status, v) = call(
        &ext,
        Verb::Filter,
        &names_args(&pod_json("p", "1", "1Gi"), &["a"]),
    );
    assert_eq!(status, 503);
    assert!(v["Error"].as_str().unwrap().contains("not listed"), "{v}");
}

#[test]
fn prioritize_sends_a_small_pod_to_the_smallest_node_that_fits() {
    // kube-scheduler's LeastAllocated would pick the idle 512 GiB node.
    let snap = Snapshot::from_nodes([
        node("big", 64, 512),
        node("small", 2, 4),
        node("tiny", 1, 2),
    ]);
    let ext = Extender::with_snapshot(Config::default(), snap);
    let (status, v) = call(
        &ext,
        Verb::Prioritize,
        &names_args(&pod_json("p", "1", "3Gi"), &["big", "small", "tiny"]),
    );
    assert_eq!(status, 200, "{v}");
    let scores: Vec<HostPriority> = serde_json::from_value(v).unwrap();
    let score = |h: &str| scores.iter().find(|s| s.host == h).unwrap().score;
    assert_eq!(score("small"), MAX_EXTENDER_PRIORITY);
    assert!(score("big") < score("small"));
    assert!(score("big") >= 1, "feasible nodes score at least 1");
    assert_eq!(score("tiny"), 0, "tiny cannot hold 3 GiB");
}

#[test]
fn scores_keep_drover_order_in_0_to_10() {
    let mut out = vec![0; 5];
    scale(&[(0, 900), (1, 450), (2, 0), (4, 899)], &mut out);
    assert_eq!(out, vec![10, 6, 1, 0, 10]);
    let mut out = vec![0; 2];
    scale(&[(0, 7), (1, 7)], &mut out);
    assert_eq!(out, vec![10, 10], "no preference: all equal");
    let mut out = vec![0; 2];
    scale(&[(0, i64::MIN), (1, i64::MAX)], &mut out);
    assert_eq!(out, vec![1, 10]);
}

#[test]
fn exclusive_pods_use_drover_rules() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let mut p = pod_json("p", "500m", "1Gi");
    p["metadata"]["annotations"] = json!({"drover.dev/exclusive": "true"});
    let (_, v) = call(&ext, Verb::Filter, &names_args(&p, &["a", "b"]));
    assert_eq!(passed(&v), vec!["b"]);
    assert_eq!(
        v["FailedNodes"]["a"],
        "node(s) already ran other pods (the pod asks for a node to itself)"
    );
}

/// Four 3-cpu members on nodes with room for three: none passes, with the gang's
/// message; with a fourth node each member is filtered to its own planned node.
#[test]
fn gang_members_wait_for_the_whole_gang_then_get_their_planned_nodes() {
    let ext = Extender::with_snapshot(
        Config::default(),
        Snapshot::from_nodes([node("n1", 4, 16), node("n2", 4, 16), node("n3", 4, 16)]),
    );
    let members: Vec<Value> = (0..4)
        .map(|i| member_json(&format!("m{i}"), "train", "4", "3"))
        .collect();
    for m in &members {
        ext.engine().handle_pod(info(m), 0);
    }
    let (status, v) = call(
        &ext,
        Verb::Filter,
        &names_args(&members[0], &["n1", "n2", "n3"]),
    );
    assert_eq!(status, 200);
    assert!(passed(&v).is_empty(), "{v}");
    let msg = v["FailedAndUnresolvableNodes"]["n1"].as_str().unwrap();
    assert!(
        msg.starts_with("gang ml/train: 3/4 members placeable at once"),
        "{msg}"
    );

    ext.engine().handle_node(node("n4", 4, 16), 0);
    let all = ["n1", "n2", "n3", "n4"];
    let mut chosen = Vec::new();
    for m in &members {
        let (_, v) = call(&ext, Verb::Filter, &names_args(m, &all));
        let p = passed(&v);
        assert_eq!(p.len(), 1, "{v}");
        let others = v["FailedAndUnresolvableNodes"].as_object().unwrap();
        assert_eq!(others.len(), 3);
        assert!(
            others
                .values()
                .all(|m| m.as_str().unwrap().contains("placed all together"))
        );
        // prioritize agrees with the plan.
        let (_, s) = call(&ext, Verb::Prioritize, &names_args(m, &all));
        let s: Vec<HostPriority> = serde_json::from_value(s).unwrap();
        assert_eq!(
            s.iter()
                .find(|h| h.score == MAX_EXTENDER_PRIORITY)
                .unwrap()
                .host,
            p[0]
        );
        chosen.push(p[0].clone());
    }
    chosen.sort();
    assert_eq!(chosen, all, "one member per node");
    assert_eq!(
        ext.gangs_planned().get(),
        1,
        "decided once, then the plan is reused"
    );

    // A pod that is not in the gang sees the planned members as placed.
    let (_, v) = call(
        &ext,
        Verb::Filter,
        &names_args(&pod_json("x", "2", "1Gi"), &all),
    );
    assert!(passed(&v).is_empty(), "{v}");
    assert_eq!(v["FailedNodes"]["n1"], "Insufficient cpu");
}

#[test]
fn a_gang_short_of_members_waits_with_drovers_message() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let members: Vec<Value> = (0..3)
        .map(|i| member_json(&format!("m{i}"), "dask", "5", "100m"))
        .collect();
    for m in &members[..2] {
        ext.engine().handle_pod(info(m), 0);
    }
    // The third is not in drover's cache yet (the watch lags): after a short wait for
    // it, every node fails and says why; kube-scheduler asks again.
    let (_, v) = call(&ext, Verb::Filter, &names_args(&members[2], &["a", "b"]));
    let msg = v["FailedAndUnresolvableNodes"]["b"].as_str().unwrap();
    assert!(
        msg.contains("drover's watch has not shown this pod yet"),
        "{msg}"
    );
    ext.engine().handle_pod(info(&members[2]), 0);
    let (_, v) = call(&ext, Verb::Filter, &names_args(&members[2], &["a", "b"]));
    assert_eq!(
        v["FailedAndUnresolvableNodes"]["b"],
        "gang ml/dask: 3 of minMember 5 pods exist; waiting for 2 more"
    );
    // Members that disagree on the size are told so.
    let odd = member_json("m9", "dask", "4", "100m");
    ext.engine().handle_pod(info(&odd), 0);
    let (_, v) = call(&ext, Verb::Filter, &names_args(&odd, &["a"]));
    let msg = v["FailedAndUnresolvableNodes"]["a"].as_str().unwrap();
    assert!(msg.contains("members disagree"), "{msg}");
}

#[test]
fn a_pod_over_its_queue_max_is_filtered_everywhere() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    ext.engine().handle_queue(team_queue(2000), 0);
    let team = |name: &str| {
        let mut p = pod_json(name, "1", "1Gi");
        p["metadata"]["labels"] = json!({"drover.dev/queue": "team"});
        p
    };
    for (name, admitted) in [("p1", true), ("p2", true), ("p3", false)] {
        ext.engine().handle_pod(info(&team(name)), 0);
        let (_, v) = call(&ext, Verb::Filter, &names_args(&team(name), &["a", "b"]));
        assert_eq!(!passed(&v).is_empty(), admitted, "{name}: {v}");
        if !admitted {
            let msg = v["FailedAndUnresolvableNodes"]["b"].as_str().unwrap();
            assert!(
                msg.contains("queue team would exceed its max cpu: 2 allocated + 1 asked > 2 max"),
                "{msg}"
            );
        }
    }
}

#[test]
fn preemption_never_breaks_a_gang() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    // Gang g (minMember 2): g0 and g1 on node a. Gang h (minMember 2): h0 on a, h1 on b.
    // Gang e (minMember 1): e0, e1 on b: one may go.
    let bound = |name: &str, gang: &str, min: &str, node: &str| {
        let mut p = member_json(name, gang, min, "100m");
        p["spec"]["nodeName"] = json!(node);
        ext.engine().handle_pod(info(&p), 0);
    };
    bound("g0", "g", "2", "a");
    bound("g1", "g", "2", "a");
    bound("h0", "h", "2", "a");
    bound("h1", "h", "2", "b");
    bound("e0", "e", "1", "b");
    bound("e1", "e", "1", "b");
    let meta = |uids: &[&str]| json!({"Pods": uids.iter().map(|u| json!({"UID": u})).collect::<Vec<_>>(), "NumPDBViolations": 0});
    let body = serde_json::to_vec(&json!({
        "Pod": pod_json("p", "1", "1Gi"),
        "NodeNameToMetaVictims": {
            "a": meta(&["uid-g0", "uid-plain"]),
            "b": meta(&["uid-h1"]),
            "c": meta(&["uid-e0"]),
        },
    }))
    .unwrap();
    let (status, v) = call(&ext, Verb::Preempt, &body);
    assert_eq!(status, 200, "{v}");
    let out: ExtenderPreemptionResult = serde_json::from_value(v).unwrap();
    let out = out.node_name_to_meta_victims.unwrap();
    let uids = |n: &str| -> Vec<String> {
        let mut v: Vec<String> = out[n]
            .pods
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.uid)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        uids("a"),
        vec!["uid-g0", "uid-g1", "uid-plain"],
        "all of g goes"
    );
    assert!(
        !out.contains_key("b"),
        "h1 alone would break h (h0 is on a)"
    );
    assert_eq!(uids("c"), vec!["uid-e0"], "e keeps minMember without e0");

    // Whole victims (nodeCacheCapable: false) answer by UID too.
    let mut victim = member_json("h0", "h", "2", "100m");
    victim["spec"]["nodeName"] = json!("a");
    let body = serde_json::to_vec(&json!({
        "Pod": pod_json("p", "1", "1Gi"),
        "NodeNameToVictims": {"a": {"Pods": [victim], "NumPDBViolations": 1}},
    }))
    .unwrap();
    let (_, v) = call(&ext, Verb::Preempt, &body);
    assert_eq!(
        v["NodeNameToMetaVictims"],
        json!({}),
        "h1 on b keeps h alive only with h0"
    );
}

#[tokio::test]
async fn bind_without_a_cluster_says_so() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let r = ext
        .handle_bind(br#"{"PodName":"p","PodNamespace":"ml","PodUID":"u","Node":"a"}"#)
        .await;
    assert_eq!(r.status, 404);
    let r = ext.handle_bind(br#"{"PodName":"p"}"#).await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["Error"].as_str().unwrap().contains("PodNamespace"), "{v}");
}

#[test]
fn bind_is_allowed_only_where_filter_would_pass() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let small = pod_json("small", "1", "1Gi");
    let huge = pod_json("huge", "1000", "1Gi");
    ext.engine().handle_pod(info(&small), 0);
    ext.engine().handle_pod(info(&huge), 0);
    let mut drovers = pod_json("drovers", "1", "1Gi");
    drovers["spec"]["schedulerName"] = json!("drover");
    ext.engine().handle_pod(info(&drovers), 0);
    let members: Vec<Value> = (0..3)
        .map(|i| member_json(&format!("m{i}"), "dask", "5", "100m"))
        .collect();
    for m in &members {
        ext.engine().handle_pod(info(m), 0);
    }
    let key = |n: &str| PodKey::new("ml", n);
    assert_eq!(ext.may_bind(&key("small"), "uid-small", "b"), Ok(()));
    for (pod, uid, node, fragment) in [
        ("small", "", "b", "PodUID is empty"),
        (
            "small",
            "forged",
            "b",
            "with UID forged is not in drover-extender's cache",
        ),
        (
            "ghost",
            "uid-ghost",
            "b",
            "is not in drover-extender's cache",
        ),
        ("small", "uid-small", "c", "does not fit node c"),
        ("small", "uid-small", "nowhere", "node nowhere is not in"),
        (
            "huge",
            "uid-huge",
            "b",
            "does not fit node b: Insufficient cpu",
        ),
        ("m0", "uid-m0", "b", "3 of minMember 5 pods exist"),
        ("busy", "uid-busy", "a", "not in drover-extender's cache"),
        (
            "drovers",
            "uid-drovers",
            "b",
            "not one of --scheduler-names (default-scheduler)",
        ),
    ] {
        let e = ext.may_bind(&key(pod), uid, node).unwrap_err();
        assert!(e.contains(fragment), "{pod} {uid:?} {node}: {e}");
    }

    // A gang member binds only to its planned node.
    let ext = Extender::with_snapshot(
        Config::default(),
        Snapshot::from_nodes([node("n1", 4, 16), node("n2", 4, 16)]),
    );
    let members: Vec<Value> = (0..2)
        .map(|i| member_json(&format!("m{i}"), "train", "2", "3"))
        .collect();
    for m in &members {
        ext.engine().handle_pod(info(m), 0);
    }
    let (_, v) = call(&ext, Verb::Filter, &names_args(&members[0], &["n1", "n2"]));
    let planned = passed(&v);
    assert_eq!(planned.len(), 1, "{v}");
    let other = if planned[0] == "n1" { "n2" } else { "n1" };
    assert_eq!(ext.may_bind(&key("m0"), "uid-m0", &planned[0]), Ok(()));
    let e = ext.may_bind(&key("m0"), "uid-m0", other).unwrap_err();
    assert!(e.contains("holds this member for node"), "{e}");
}

#[test]
fn a_filter_naming_a_pod_with_another_uid_admits_nothing() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    ext.engine().handle_queue(team_queue(1000), 0);
    let mut real = pod_json("p1", "1", "1Gi");
    real["metadata"]["labels"] = json!({"drover.dev/queue": "team"});
    ext.engine().handle_pod(info(&real), 0);
    // Calls that name the real pod's key with no UID or another UID: none may take
    // the queue's room, so the real pod is still admitted afterwards.
    for uid in ["", "forged"] {
        let mut fake = real.clone();
        fake["metadata"]["uid"] = json!(uid);
        for _ in 0..3 {
            let (_, v) = call(&ext, Verb::Filter, &names_args(&fake, &["a", "b"]));
            assert!(passed(&v).is_empty(), "{uid:?}: {v}");
        }
    }
    let (_, v) = call(&ext, Verb::Filter, &names_args(&real, &["a", "b"]));
    assert_eq!(passed(&v), ["a", "b"], "{v}");
}

#[test]
fn work_past_its_deadline_is_abandoned() {
    let ext = Extender::with_snapshot(Config::default(), small_cluster());
    let body = names_args(&pod_json("p", "1", "1Gi"), &["a", "b"]);
    let past = std::time::Instant::now() - Duration::from_millis(1);
    for verb in [Verb::Filter, Verb::Prioritize] {
        let r = ext.handle_until(verb, &body, past);
        assert_eq!(r.status, 408, "{verb:?}");
        assert_eq!(r.error.map(|e| e.kind()), Some("timeout"));
    }
    assert_eq!(ext.handle(Verb::Filter, &body).status, 200);
}
