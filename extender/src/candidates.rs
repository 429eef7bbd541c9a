//! The nodes kube-scheduler asks about, as a view over a snapshot.
//!
//! With `nodeCacheCapable: true` the request names nodes and drover's own watched
//! snapshot supplies them. Without, the request carries whole Node objects: drover
//! builds a snapshot of exactly those nodes, each with the pods drover's cache holds on
//! it (none for a node the cache has not seen), so that resource fit counts every pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::RequestError;
use crate::wire::RawNode;
use drover_core::framework::NodeSource;
use drover_core::model::NodeInfo;
use drover_core::snapshot::{CHUNK, Chunk, Snapshot};

/// The nodes of earlier requests, by name, at the resourceVersion they were read:
/// kube-scheduler sends the same Node objects call after call, so each is parsed and
/// converted once per change instead of once per call.
#[derive(Default)]
pub struct NodeMemo {
    nodes: Mutex<HashMap<String, Memo>>,
}

struct Memo {
    resource_version: String,
    /// The node as converted, without pods.
    info: NodeInfo,
    /// The Node as it goes back (see [`answer_form`]).
    raw: RawNode,
}

/// Nodes remembered at most; beyond, the memo starts over.
const MEMO_MAX: usize = 50_000;

/// What identifies a Node's version: name and resourceVersion, read without building
/// the object.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(serde::Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// The Node as it goes back to kube-scheduler: without `metadata.managedFields` and
/// `status.images`. kube-scheduler builds a fresh NodeInfo from each node that passes
/// (`SetNode`), whose image states come from its own cache, not from the Node; no
/// plugin reads managed fields. Together they are most of a real Node's JSON, which
/// kube-scheduler decodes for every node that passes, on every call.
fn answer_form(node: &mut k8s_openapi::api::core::v1::Node) -> bool {
    let fields = node.metadata.managed_fields.take().is_some();
    let images = node
        .status
        .as_mut()
        .is_some_and(|s| s.images.take().is_some());
    fields || images
}

impl NodeMemo {
    /// The converted node and its answer form for `raw`, from the memo when its
    /// resourceVersion is the one remembered.
    fn get(
        &self,
        verb: &'static str,
        i: usize,
        raw: &RawNode,
    ) -> Result<(NodeInfo, Option<RawNode>), RequestError> {
        let head: Option<HeadMeta> = serde_json::from_str::<Head>(raw.0.get())
            .ok()
            .map(|h| h.metadata);
        let key = head.and_then(|h| Some((h.name?, h.resource_version?)));
        if let Some((name, rv)) = &key {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = nodes.get(name).filter(|m| &m.resource_version == rv) {
                return Ok((m.info.clone(), Some(m.raw.clone())));
            }
        }
        let mut node = raw.parse().map_err(|e| RequestError::BadObject {
            verb,
            detail: format!("Nodes.items[{i}] is not a Node: {e}"),
        })?;
        let info = drover::k8s::convert::node_info(&node).map_err(|e| match e {
            drover::k8s::convert::ConvertError::NoName { .. } => RequestError::MissingField {
                verb,
                field: "Nodes.items[].metadata.name",
                hint: "",
            },
            e => RequestError::BadObject {
                verb,
                detail: format!("node {e}"),
            },
        })?;
        let answer = answer_form(&mut node).then(|| RawNode::new(&node));
        if let Some((name, rv)) = key {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            if nodes.len() >= MEMO_MAX {
                nodes.clear();
            }
            nodes.insert(
                name,
                Memo {
                    resource_version: rv,
                    info: info.clone(),
                    raw: answer.clone().unwrap_or_else(|| raw.clone()),
                },
            );
        }
        Ok((info, answer))
    }
}

/// How many unknown node names an error message lists.
const UNKNOWN_LISTED: usize = 5;

/// The candidate nodes of one request.
pub struct Candidates {
    /// The snapshot the candidates live in.
    pub snapshot: Arc<Snapshot>,
    /// The candidates' slots in `snapshot`, in request order.
    pub slots: Vec<usize>,
    /// The candidates' names, in request order.
    pub names: Vec<String>,
    /// The request's Node objects (`nodeCacheCapable: false`), to send back the ones
    /// that pass.
    pub whole: Option<Vec<RawNode>>,
}

impl Candidates {
    /// Candidates named in the request, looked up in drover's snapshot. Names the
    /// snapshot does not know (or knows only as a placeholder) fail the request.
    pub fn by_name(
        verb: &'static str,
        snapshot: Arc<Snapshot>,
        names: Vec<String>,
    ) -> Result<Candidates, RequestError> {
        let mut slots = Vec::with_capacity(names.len());
        let mut unknown: Vec<&str> = Vec::new();
        let mut unknown_count = 0;
        for name in &names {
            match snapshot
                .slot_of(name)
                .filter(|s| snapshot.slot(*s).is_some_and(|n| n.known))
            {
                Some(s) => slots.push(s),
                None => {
                    unknown_count += 1;
                    if unknown.len() < UNKNOWN_LISTED {
                        unknown.push(name);
                    }
                }
            }
        }
        if unknown_count > 0 {
            let more = unknown_count - unknown.len();
            let mut listed = unknown
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if more > 0 {
                listed.push_str(&format!(" and {more} more"));
            }
            return Err(RequestError::UnknownNodes {
                verb,
                count: unknown_count,
                names: listed,
            });
        }
        Ok(Candidates {
            snapshot,
            slots,
            names,
            whole: None,
        })
    }

    /// Candidates sent whole: a snapshot of exactly these nodes, each with the pods
    /// `cache` holds on it.
    pub fn whole(
        verb: &'static str,
        cache: &Snapshot,
        memo: &NodeMemo,
        mut nodes: Vec<RawNode>,
    ) -> Result<Candidates, RequestError> {
        let mut chunks: Vec<Arc<Chunk>> = Vec::with_capacity(nodes.len().div_ceil(CHUNK));
        let mut index: HashMap<Arc<str>, usize> = HashMap::with_capacity(nodes.len());
        let mut names = Vec::with_capacity(nodes.len());
        let mut chunk = Chunk::default();
        for (i, raw) in nodes.iter_mut().enumerate() {
            let (mut info, answer) = memo.get(verb, i, raw)?;
            if let Some(answer) = answer {
                *raw = answer;
            }
            if let Some(cached) = cache.node(&info.name) {
                info.numa = cached.numa.clone();
                for p in &cached.pods {
                    info.add_pod(p.clone());
                }
            }
            names.push(info.name.to_string());
            index.insert(info.name.clone(), i);
            chunk.set(i % CHUNK, Some(Arc::new(info)));
            if i % CHUNK == CHUNK - 1 {
                chunks.push(Arc::new(std::mem::take(&mut chunk)));
            }
        }
        if !nodes.len().is_multiple_of(CHUNK) {
            chunks.push(Arc::new(chunk));
        }
        let slots = (0..nodes.len()).collect();
        Ok(Candidates {
            snapshot: Arc::new(Snapshot::from_parts(
                chunks,
                Arc::new(index),
                cache.generation,
                // Nodes from the request carry no class: each is evaluated on its own.
                0,
                // Their zones come from the cache.
                cache.may_have_numa(),
                cache.namespace_map(),
            )),
            slots,
            names,
            whole: Some(nodes),
        })
    }

    /// The same candidates over a newer snapshot.
    pub fn refresh(
        self,
        verb: &'static str,
        snapshot: Arc<Snapshot>,
        memo: &NodeMemo,
    ) -> Result<Candidates, RequestError> {
        match self.whole {
            Some(nodes) => Candidates::whole(verb, &snapshot, memo, nodes),
            None => Candidates::by_name(verb, snapshot, self.names),
        }
    }

    /// The position of the candidate called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Some slots of a node source, renumbered 0.. in the given order: the framework's
/// filters and scores then run over exactly the candidates.
pub struct Subset<'a, N: NodeSource + ?Sized> {
    base: &'a N,
    slots: &'a [usize],
}

impl<'a, N: NodeSource + ?Sized> Subset<'a, N> {
    /// The view of `slots` of `base`.
    pub fn new(base: &'a N, slots: &'a [usize]) -> Self {
        Subset { base, slots }
    }
}

impl<N: NodeSource + ?Sized> NodeSource for Subset<'_, N> {
    fn slots(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        self.base.get(*self.slots.get(i)?)
    }

    #[inline]
    fn get_with_row(&self, i: usize) -> Option<(&NodeInfo, drover_core::model::Row)> {
        self.base.get_with_row(*self.slots.get(i)?)
    }

    fn classes(&self) -> usize {
        self.base.classes()
    }

    fn may_have_numa(&self) -> bool {
        self.base.may_have_numa()
    }

    fn may_have_pod_affinity(&self) -> bool {
        self.base.may_have_pod_affinity()
    }

    fn namespace_labels(&self, name: &str) -> Option<&drover_core::model::Labels> {
        self.base.namespace_labels(name)
    }

    fn visit_all(&self, f: &mut dyn FnMut(&NodeInfo, drover_core::model::Row)) {
        self.base.visit_all(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::model::{PodInfo, PodKey, Resources};

    fn cache() -> Snapshot {
        let mut a = NodeInfo::new("a", Resources::cpu_mem(4000, 1 << 30), 110);
        a.add_pod(Arc::new(PodInfo {
            key: PodKey::new("ns", "busy"),
            requests: Resources::cpu_mem(3000, 0),
            ..Default::default()
        }));
        Snapshot::from_nodes([
            a,
            NodeInfo::new("b", Resources::cpu_mem(4000, 1 << 30), 110),
        ])
    }

    #[test]
    fn names_resolve_in_order_and_unknown_names_fail() {
        let c =
            Candidates::by_name("filter", Arc::new(cache()), vec!["b".into(), "a".into()]).unwrap();
        let sub = Subset::new(&*c.snapshot, &c.slots);
        assert_eq!(sub.slots(), 2);
        assert_eq!(&*sub.get(0).unwrap().name, "b");
        assert_eq!(&*sub.get(1).unwrap().name, "a");
        assert!(sub.get(2).is_none());
        let names: Vec<String> = (0..8).map(|i| format!("x{i}")).collect();
        let e = Candidates::by_name("filter", Arc::new(cache()), names)
            .err()
            .unwrap();
        assert_eq!(e.status(), 422);
        assert!(e.to_string().contains("8 node name(s)"), "{e}");
        assert!(e.to_string().contains("and 3 more"), "{e}");
    }

    #[test]
    fn whole_nodes_carry_the_cached_pods() {
        let raw = |v: serde_json::Value| RawNode(serde_json::value::to_raw_value(&v).unwrap());
        let node = |name: &str| {
            raw(serde_json::json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": "4", "memory": "1Gi", "pods": "110"}}
            }))
        };
        let c = Candidates::whole(
            "filter",
            &cache(),
            &NodeMemo::default(),
            vec![node("a"), node("new")],
        )
        .unwrap();
        assert_eq!(c.names, vec!["a", "new"]);
        let a = c.snapshot.node("a").unwrap();
        assert_eq!(a.requested.cpu, 3000, "the cached pod counts");
        assert_eq!(c.snapshot.node("new").unwrap().pods.len(), 0);
        let e = Candidates::whole(
            "filter",
            &cache(),
            &NodeMemo::default(),
            vec![raw(serde_json::json!({"metadata": {}}))],
        )
        .err()
        .unwrap();
        assert!(matches!(e, RequestError::MissingField { .. }), "{e}");
        let e = Candidates::whole(
            "filter",
            &cache(),
            &NodeMemo::default(),
            vec![node("a"), raw(serde_json::json!({"metadata": "a string"}))],
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("Nodes.items[1] is not a Node"),
            "{e}"
        );
    }

    #[test]
    fn nodes_are_converted_once_per_version_and_go_back_without_bulk() {
        let raw = |v: serde_json::Value| RawNode(serde_json::value::to_raw_value(&v).unwrap());
        let node = |rv: &str, zone: &str| {
            raw(serde_json::json!({
                "metadata": {"name": "z", "resourceVersion": rv,
                             "labels": {"zone": zone},
                             "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
                "status": {"allocatable": {"cpu": "4", "memory": "1Gi", "pods": "110"},
                           "images": [{"names": ["registry.example/big:1"], "sizeBytes": 1}]}
            }))
        };
        let memo = NodeMemo::default();
        let zone = |c: &Candidates| {
            c.snapshot
                .node("z")
                .unwrap()
                .labels
                .get("zone")
                .map(|z| z.to_string())
        };
        let c = Candidates::whole("filter", &cache(), &memo, vec![node("1", "a")]).unwrap();
        assert_eq!(zone(&c).as_deref(), Some("a"));
        let back = c.whole.as_ref().unwrap()[0].0.get().to_string();
        assert!(
            !back.contains("managedFields") && !back.contains("images"),
            "{back}"
        );
        assert!(
            back.contains("\"zone\":\"a\"") && back.contains("allocatable"),
            "{back}"
        );
        // The same version is not read again (a different body under the same
        // resourceVersion cannot happen on a real API server); a new one is.
        let c = Candidates::whole("filter", &cache(), &memo, vec![node("1", "b")]).unwrap();
        assert_eq!(zone(&c).as_deref(), Some("a"));
        let c = Candidates::whole("filter", &cache(), &memo, vec![node("2", "b")]).unwrap();
        assert_eq!(zone(&c).as_deref(), Some("b"));
        assert!(c.whole.unwrap()[0].0.get().contains("\"zone\":\"b\""));
    }
}
