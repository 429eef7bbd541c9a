//! Property tests of the JSON handlers: arbitrary bytes and arbitrary JSON of the
//! shape kube-scheduler sends never panic, and always get a well-formed answer: the
//! verb's result type, with every requested node accounted for, or a 4xx/5xx whose
//! body carries a non-empty `Error`.

use std::collections::BTreeSet;
use std::sync::Arc;

use drover_core::config::Config;
use drover_core::gang::{GROUP_LABEL, MIN_MEMBER_ANNOTATION};
use drover_core::model::{NodeInfo, PodInfo, PodKey, Resources};
use drover_core::snapshot::Snapshot;
use drover_extender::{Extender, Reply, Verb};
use proptest::prelude::*;
use serde_json::{Value, json};

const KNOWN: [&str; 6] = ["n0", "n1", "n2", "n3", "gpu0", "gpu1"];

fn extender() -> Extender {
    let nodes = KNOWN.iter().enumerate().map(|(i, n)| {
        let mut node = NodeInfo::new(n, Resources::cpu_mem(4000, 16 << 30), 8);
        if n.starts_with("gpu") {
            node.allocatable.gpu = 8;
        }
        if i % 2 == 0 {
            node.add_pod(Arc::new(PodInfo {
                key: PodKey::new("ns", &format!("busy{i}")),
                uid: format!("busy{i}").into(),
                requests: Resources::cpu_mem(2000, 4 << 30),
                ..Default::default()
            }));
        }
        node
    });
    let ext = Extender::with_snapshot(Config::default(), Snapshot::from_nodes(nodes));
    // Gang members already known, pending and bound, so gang paths run too.
    for (i, node) in [None, None, Some("n1"), Some("n3")].iter().enumerate() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("m{i}"), "namespace": "ns", "uid": format!("m{i}"),
                         "labels": {GROUP_LABEL: "g"}, "annotations": {MIN_MEMBER_ANNOTATION: "3"}},
            "spec": {"nodeName": node, "schedulerName": "default-scheduler",
                     "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
        }))
        .unwrap();
        ext.engine()
            .handle_pod(drover::k8s::convert::pod_info(&pod).unwrap(), 0);
    }
    ext
}

fn quantity() -> impl Strategy<Value = Value> {
    // Mostly valid, so that most requests reach drover's rules; sometimes not.
    prop_oneof![
        12 => prop_oneof![
            Just(json!("1")),
            Just(json!("500m")),
            Just(json!("3Gi")),
            Just(json!("0")),
            "[0-9]{1,4}(m|Ki|Mi|Gi|k|M|G)?".prop_map(Value::from),
        ],
        1 => prop_oneof![
            Just(json!("-1")),
            Just(json!("1e300")),
            Just(json!("lots")),
            Just(json!("")),
            Just(json!(7)),
            Just(Value::Null),
        ],
    ]
}

/// A node name: mostly one the snapshot knows.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(&KNOWN[..]).prop_map(String::from),
        1 => prop_oneof![Just("ghost".to_string()), Just(String::new()), "[a-z0-9.-]{1,12}"],
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.95, "[a-z][a-z0-9-]{0,8}"),
        prop::option::of(prop_oneof![Just("ns".to_string()), "[a-z]{1,6}"]),
        quantity(),
        quantity(),
        quantity(),
        prop::option::of(prop_oneof![Just("g".to_string()), "[a-z]{1,4}"]),
        prop::option::of(prop_oneof![Just("3".to_string()), Just("0".to_string()), "[a-z0-9 ]{0,4}"]),
        prop::option::of(prop_oneof![Just("g".to_string()), "[a-z]{1,4}"]),
        prop::option::of(prop_oneof![Just("team".to_string()), Just("default".to_string())]),
        any::<bool>(),
        prop::option::weighted(0.1, name()),
        prop::collection::vec((0u8..4, "[a-z]{1,3}"), 0..2),
    )
        .prop_map(
            |(n, ns, cpu, mem, gpu, label, min, volcano, queue, exclusive, node_name, sel)| {
                let mut labels = serde_json::Map::new();
                if let Some(l) = label {
                    labels.insert(GROUP_LABEL.into(), l.into());
                }
                if let Some(q) = queue {
                    labels.insert("drover.dev/queue".into(), q.into());
                }
                let mut ann = serde_json::Map::new();
                if let Some(m) = min {
                    ann.insert(MIN_MEMBER_ANNOTATION.into(), m.into());
                }
                if let Some(v) = volcano {
                    ann.insert("scheduling.k8s.io/group-name".into(), v.into());
                }
                if exclusive {
                    ann.insert("drover.dev/exclusive".into(), "true".into());
                }
                let selector: serde_json::Map<String, Value> = sel
                    .into_iter()
                    .map(|(k, v)| (format!("k{k}"), Value::from(v)))
                    .collect();
                json!({
                    "metadata": {"name": n, "namespace": ns, "uid": "u-fuzz", "labels": labels, "annotations": ann},
                    "spec": {
                        "schedulerName": "default-scheduler",
                        "nodeName": node_name,
                        "nodeSelector": selector,
                        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem, "nvidia.com/gpu": gpu}}}],
                    },
                    "status": {},
                })
            },
        )
}

fn node_object() -> impl Strategy<Value = Value> {
    (name(), quantity(), quantity(), quantity(), any::<bool>()).prop_map(
        |(n, cpu, mem, pods, cordoned)| {
            json!({
                "metadata": {"name": n},
                "spec": {"unschedulable": cordoned},
                "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods}},
            })
        },
    )
}

/// `ExtenderArgs`: NodeNames, or Nodes, or neither, or both; sometimes no pod.
fn args() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, pod()),
        prop_oneof![4 => Just(2u8), 4 => Just(1u8), 1 => Just(0u8), 1 => Just(3u8)],
        prop::collection::vec(name(), 0..8),
        prop::collection::vec(node_object(), 0..6),
    )
        .prop_map(|(pod, shape, names, nodes)| {
            let mut v = json!({ "Pod": pod });
            if shape & 1 == 0 {
                v["NodeNames"] = json!(names);
            }
            if shape & 2 == 0 {
                v["Nodes"] = json!({"metadata": {}, "items": nodes});
            }
            v
        })
}

fn preemption_args() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, pod()),
        any::<bool>(),
        prop::collection::btree_map(
            name(),
            (
                prop::collection::vec(
                    prop_oneof![Just("m2".to_string()), Just("m3".to_string()), "[a-z0-9]{0,6}"],
                    0..4,
                ),
                prop::collection::vec(pod(), 0..3),
                -2i64..3,
            ),
            0..4,
        ),
    )
        .prop_map(|(pod, meta, victims)| {
            let mut v = json!({ "Pod": pod });
            if meta {
                v["NodeNameToMetaVictims"] = victims
                    .into_iter()
                    .map(|(n, (uids, _, pdb))| {
                        (n, json!({"Pods": uids.into_iter().map(|u| json!({"UID": u})).collect::<Vec<_>>(), "NumPDBViolations": pdb}))
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            } else {
                v["NodeNameToVictims"] = victims
                    .into_iter()
                    .map(|(n, (_, pods, pdb))| (n, json!({"Pods": pods, "NumPDBViolations": pdb})))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            v
        })
}

/// Checks the answer's shape; returns its JSON.
fn well_formed(verb: Verb, r: &Reply) -> Value {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{verb:?}: the body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    if r.status == 200 {
        assert!(r.error.is_none());
        match verb {
            Verb::Filter => {
                assert!(v.get("FailedNodes").is_some() && v["Error"] == "", "{v}");
            }
            Verb::Prioritize => {
                for h in v.as_array().expect("a HostPriorityList") {
                    let s = h["Score"].as_i64().unwrap();
                    assert!((0..=10).contains(&s), "{v}");
                }
            }
            Verb::Preempt => assert!(v["NodeNameToMetaVictims"].is_object(), "{v}"),
            Verb::Bind => {}
        }
    } else {
        assert!((400..600).contains(&r.status), "{}", r.status);
        let e = v["Error"].as_str().expect("an Error field");
        assert!(!e.is_empty());
        assert!(r.error.is_some());
    }
    v
}

/// Every node name kube-scheduler sent comes back once: passed, or failed with a reason.
fn accounts_for_every_node(args: &Value, answer: &Value) {
    let asked: BTreeSet<String> = match (&args["NodeNames"], &args["Nodes"]["items"]) {
        (Value::Array(n), _) => n
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        (_, Value::Array(items)) => items
            .iter()
            .filter_map(|x| x["metadata"]["name"].as_str().map(String::from))
            .collect(),
        _ => return,
    };
    let mut got = BTreeSet::new();
    if let Some(n) = answer["NodeNames"].as_array() {
        got.extend(n.iter().filter_map(|x| x.as_str().map(String::from)));
    }
    if let Some(items) = answer["Nodes"]["items"].as_array() {
        got.extend(
            items
                .iter()
                .filter_map(|x| x["metadata"]["name"].as_str().map(String::from)),
        );
    }
    for key in ["FailedNodes", "FailedAndUnresolvableNodes"] {
        if let Some(m) = answer[key].as_object() {
            got.extend(m.keys().cloned());
        }
    }
    assert_eq!(asked, got, "{answer}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        let ext = extender();
        for verb in [Verb::Filter, Verb::Prioritize, Verb::Preempt] {
            let r = ext.handle(verb, &body);
            well_formed(verb, &r);
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(ext.handle_bind(&body));
        well_formed(Verb::Bind, &r);
    }

    #[test]
    fn arbitrary_extender_args_get_well_formed_answers(a in args()) {
        let ext = extender();
        let body = serde_json::to_vec(&a).unwrap();
        let r = ext.handle(Verb::Filter, &body);
        let v = well_formed(Verb::Filter, &r);
        if r.status == 200 {
            accounts_for_every_node(&a, &v);
        }
        let r = ext.handle(Verb::Prioritize, &body);
        let v = well_formed(Verb::Prioritize, &r);
        if r.status == 200 && a["NodeNames"].is_array() {
            prop_assert_eq!(v.as_array().unwrap().len(), a["NodeNames"].as_array().unwrap().len());
        }
    }

    #[test]
    fn arbitrary_preemption_args_get_well_formed_answers(a in preemption_args()) {
        let ext = extender();
        let r = ext.handle(Verb::Preempt, &serde_json::to_vec(&a).unwrap());
        let v = well_formed(Verb::Preempt, &r);
        if r.status == 200 {
            // Only candidates kube-scheduler proposed come back.
            let proposed = a.get("NodeNameToMetaVictims").or(a.get("NodeNameToVictims")).unwrap();
            for n in v["NodeNameToMetaVictims"].as_object().unwrap().keys() {
                prop_assert!(proposed.get(n).is_some());
            }
        }
    }

    #[test]
    fn arbitrary_binding_args_get_well_formed_answers(
        name in prop::option::of(name()), ns in prop::option::of(name()), node in prop::option::of(name()),
    ) {
        let ext = extender();
        let body = serde_json::to_vec(&json!({"PodName": name, "PodNamespace": ns, "PodUID": "u", "Node": node})).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        well_formed(Verb::Bind, &rt.block_on(ext.handle_bind(&body)));
    }
}
