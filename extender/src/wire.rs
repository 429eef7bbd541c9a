//! The wire format of `k8s.io/kube-scheduler/extender/v1`.
//!
//! The Go structs carry no JSON tags, so every key is the Go field name: PascalCase,
//! with Go's own initialisms (`PodUID`, `UID`, `NumPDBViolations`). Go's decoder
//! matches keys case-insensitively, so the requests also accept lower-case spellings;
//! answers always use the exact names. A nil pointer, slice or map is `null` in Go's
//! JSON: `Option::None` serializes the same way, so every answer has the shape Go's
//! own encoder would give it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::{Deserialize, Deserializer, Serialize};

/// Highest score an extender may give a node (`MaxExtenderPriority`).
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// Node name → why the node cannot take the pod (`FailedNodesMap`).
pub type FailedNodesMap = BTreeMap<String, String>;

/// One Node object of a request, kept as its JSON text: it is parsed one at a time
/// into what drover needs, and sent back as it came, so a list of thousands of nodes
/// never lives in memory as parsed objects.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawNode(pub Box<serde_json::value::RawValue>);

impl RawNode {
    /// The JSON of `node`.
    pub fn new(node: &Node) -> RawNode {
        RawNode(serde_json::value::to_raw_value(node).expect("a Node serializes"))
    }

    /// The Node.
    pub fn parse(&self) -> serde_json::Result<Node> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RawNode {
    fn eq(&self, other: &RawNode) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A `v1.NodeList` as kube-scheduler writes it: `metadata` and `items` (Go writes no
/// `apiVersion`/`kind` for it, and `null` for no items).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    /// `apiVersion`, when a client sends one.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// `kind`, when a client sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// List metadata (empty from kube-scheduler).
    #[serde(default)]
    pub metadata: ListMeta,
    /// The nodes.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub items: Vec<RawNode>,
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// What kube-scheduler sends to `filter` and `prioritize` (`ExtenderArgs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    #[serde(default, alias = "pod")]
    pub pod: Option<Pod>,
    /// Candidate nodes, whole (`nodeCacheCapable: false`).
    #[serde(default, alias = "nodes")]
    pub nodes: Option<NodeList>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(default, alias = "nodenames", alias = "nodeNames")]
    pub node_names: Option<Vec<String>>,
}

/// The answer to `filter` (`ExtenderFilterResult`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// Nodes that can take the pod, whole, when the request sent `Nodes`.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Names of the nodes that can take the pod, when the request sent `NodeNames`.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
    /// Nodes that cannot take the pod now (preemption might help), with the reason.
    #[serde(default)]
    pub failed_nodes: Option<FailedNodesMap>,
    /// Nodes that cannot take the pod and where preemption would not help.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: Option<FailedNodesMap>,
    /// Set when the whole call failed.
    #[serde(default)]
    pub error: String,
}

/// One node's score (`HostPriority`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    /// The node's name.
    #[serde(alias = "host")]
    pub host: String,
    /// 0..=[`MAX_EXTENDER_PRIORITY`], higher is better.
    #[serde(alias = "score")]
    pub score: i64,
}

/// The answer to `prioritize` (`HostPriorityList`).
pub type HostPriorityList = Vec<HostPriority>;

/// What kube-scheduler sends to `bind` (`ExtenderBindingArgs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingArgs {
    /// The pod's name.
    #[serde(rename = "PodName", alias = "podName", alias = "podname", default)]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(
        rename = "PodNamespace",
        alias = "podNamespace",
        alias = "podnamespace",
        default
    )]
    pub pod_namespace: String,
    /// The pod's UID: a pod recreated under the same name is never bound by mistake.
    #[serde(
        rename = "PodUID",
        alias = "podUID",
        alias = "podUid",
        alias = "poduid",
        default
    )]
    pub pod_uid: String,
    /// The node kube-scheduler chose.
    #[serde(rename = "Node", alias = "node", default)]
    pub node: String,
}

/// The answer to `bind` (`ExtenderBindingResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingResult {
    /// Empty on success.
    #[serde(rename = "Error", default)]
    pub error: String,
}

/// A pod identified by UID only (`MetaPod`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaPod {
    /// The pod's UID.
    #[serde(rename = "UID", alias = "uid", alias = "Uid", default)]
    pub uid: String,
}

/// Pods to evict on one node, by UID (`MetaVictims`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaVictims {
    /// The pods.
    #[serde(rename = "Pods", alias = "pods", default)]
    pub pods: Option<Vec<MetaPod>>,
    /// How many PodDisruptionBudgets evicting them would violate.
    #[serde(
        rename = "NumPDBViolations",
        alias = "numPDBViolations",
        alias = "numpdbviolations",
        default
    )]
    pub num_pdb_violations: i64,
}

/// Pods to evict on one node, whole (`Victims`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Victims {
    /// The pods.
    #[serde(rename = "Pods", alias = "pods", default)]
    pub pods: Option<Vec<Pod>>,
    /// How many PodDisruptionBudgets evicting them would violate.
    #[serde(
        rename = "NumPDBViolations",
        alias = "numPDBViolations",
        alias = "numpdbviolations",
        default
    )]
    pub num_pdb_violations: i64,
}

/// What kube-scheduler sends to `preempt` (`ExtenderPreemptionArgs`): whole victims
/// without a node cache, victims by UID with one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionArgs {
    /// The pod that needs room.
    #[serde(default, alias = "pod")]
    pub pod: Option<Pod>,
    /// Candidate node → victims, whole (`nodeCacheCapable: false`).
    #[serde(default, alias = "nodeNameToVictims")]
    pub node_name_to_victims: Option<BTreeMap<String, Option<Victims>>>,
    /// Candidate node → victims by UID (`nodeCacheCapable: true`).
    #[serde(default, alias = "nodeNameToMetaVictims")]
    pub node_name_to_meta_victims: Option<BTreeMap<String, Option<MetaVictims>>>,
}

/// The answer to `preempt` (`ExtenderPreemptionResult`): always by UID. A node left
/// out is no longer a candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    /// Node → victims by UID.
    #[serde(default)]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// The body of a failed `prioritize` or `preempt`, whose result types have no `Error`
/// field of their own (kube-scheduler reads only the status code then; the message is
/// for people and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResult {
    /// What was wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    //! Golden JSON written by Go's `encoding/json` from the real
    //! `k8s.io/kube-scheduler/extender/v1` types (v0.34.4): see `tests/golden/`.

    use super::*;
    use serde_json::Value;

    fn golden(name: &str) -> &'static str {
        const ALL: &str = include_str!("../tests/golden/extender-v1.tsv");
        ALL.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('\t'))
            .unwrap_or_else(|| panic!("no golden line {name}"))
    }

    /// Parses the golden JSON into `T`, writes it back, and checks that nothing was
    /// lost or renamed.
    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(name: &str) -> T {
        let text = golden(name);
        let parsed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Value = serde_json::from_str(text).unwrap();
        let mut got = serde_json::to_value(&parsed).unwrap();
        // k8s-openapi writes apiVersion and kind of every Pod and Node; Go leaves an
        // empty TypeMeta out. Either is the same object to Go's decoder.
        strip_type_meta(&mut got);
        assert_eq!(
            got, want,
            "{name}: round trip changed the JSON\n got: {got}\nwant: {want}"
        );
        parsed
    }

    fn strip_type_meta(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if matches!(m.get("kind").and_then(Value::as_str), Some("Pod" | "Node"))
                    && m.get("apiVersion").and_then(Value::as_str) == Some("v1")
                {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                m.values_mut().for_each(strip_type_meta);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_type_meta),
            _ => {}
        }
    }

    #[test]
    fn args_with_node_names() {
        let a: ExtenderArgs = round_trip("args_names");
        assert_eq!(
            a.node_names.as_deref(),
            Some(&["n1".into(), "n2".into()][..])
        );
        assert!(a.nodes.is_none());
        let pod = a.pod.unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn args_with_whole_nodes() {
        let a: ExtenderArgs = round_trip("args_nodes");
        assert!(a.node_names.is_none());
        let nodes = a.nodes.unwrap();
        assert_eq!(nodes.items.len(), 1);
        assert_eq!(
            nodes.items[0].parse().unwrap().metadata.name.as_deref(),
            Some("n1")
        );
    }

    #[test]
    fn filter_results() {
        let r: ExtenderFilterResult = round_trip("filter_names");
        assert_eq!(r.node_names, Some(vec!["n1".to_string()]));
        assert_eq!(
            r.failed_nodes.unwrap().get("n2").map(String::as_str),
            Some("Insufficient cpu")
        );
        let r: ExtenderFilterResult = round_trip("filter_nodes");
        assert_eq!(r.nodes.unwrap().items.len(), 1);
        let r: ExtenderFilterResult = round_trip("filter_error");
        assert_eq!(r.error, "boom");
    }

    #[test]
    fn priorities_bind_and_preemption() {
        let p: HostPriorityList = round_trip("priorities");
        assert_eq!(p[0].host, "n1");
        assert_eq!(p[0].score, MAX_EXTENDER_PRIORITY);
        let b: ExtenderBindingArgs = round_trip("bind_args");
        assert_eq!(
            (
                b.pod_name.as_str(),
                b.pod_namespace.as_str(),
                b.pod_uid.as_str(),
                b.node.as_str()
            ),
            ("p", "ml", "uid-p", "n1")
        );
        let _: ExtenderBindingResult = round_trip("bind_result");
        let m: ExtenderPreemptionArgs = round_trip("preempt_args_meta");
        let v = m.node_name_to_meta_victims.unwrap()["n1"].clone().unwrap();
        assert_eq!(v.pods.unwrap()[0].uid, "uid-v");
        assert_eq!(v.num_pdb_violations, 1);
        let f: ExtenderPreemptionArgs = round_trip("preempt_args_full");
        let v = f.node_name_to_victims.unwrap()["n1"].clone().unwrap();
        assert_eq!(
            v.pods.unwrap()[0]
                .spec
                .as_ref()
                .unwrap()
                .node_name
                .as_deref(),
            Some("n1")
        );
        let _: ExtenderPreemptionResult = round_trip("preempt_result");
    }

    #[test]
    fn lower_case_keys_are_read_as_go_reads_them() {
        let a: ExtenderArgs =
            serde_json::from_str(r#"{"pod":{"metadata":{"name":"p"}},"nodenames":["a"]}"#).unwrap();
        assert_eq!(a.node_names, Some(vec!["a".to_string()]));
        let b: ExtenderBindingArgs =
            serde_json::from_str(r#"{"podName":"p","podNamespace":"ns","podUID":"u","node":"n"}"#)
                .unwrap();
        assert_eq!(b.pod_uid, "u");
    }
}
