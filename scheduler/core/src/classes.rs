//! Equivalence classes of nodes.
//!
//! Clusters are built from node groups: hundreds of nodes with the same labels, taints
//! and GPU model. Several filters and scores (taints, node affinity, cordon, GPU
//! memory) read only those properties, so for one pod they give the same answer on
//! every node of a group. The cache numbers the distinct combinations — a node's
//! [`ClassKey`] — and stamps each node with its [`ClassId`]; a scheduling cycle answers
//! those plugins once per class instead of once per node (see `framework`).
//!
//! `kubernetes.io/hostname` is left out of the key: it differs on every node and would
//! make every class a class of one. A pod whose node selector or affinity reads that
//! label, or a node field (`matchFields`), is evaluated node by node for that plugin.
//!
//! Within one snapshot a class id means one key: ids are freed only when no node in
//! the cache holds them, and every node of a snapshot comes from one state of the
//! cache.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Labels, NodeInfo, PodInfo, SelectorTerm, Taint};

/// The label left out of a node's class, because it names the node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The number of a node's class in its snapshot; [`ClassId::NONE`] for a node that has
/// none (built outside the cache): such a node is evaluated on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClassId(pub u32);

impl ClassId {
    /// No class.
    pub const NONE: ClassId = ClassId(u32::MAX);

    /// The id as an index, or `None` for [`ClassId::NONE`].
    #[inline]
    pub fn index(self) -> Option<usize> {
        (self != ClassId::NONE).then_some(self.0 as usize)
    }
}

impl Default for ClassId {
    fn default() -> Self {
        ClassId::NONE
    }
}

/// Everything the class-wide plugins read from a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassKey {
    /// The labels, without [`HOSTNAME_LABEL`].
    pub labels: Labels,
    /// The taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Memory per GPU in MiB.
    pub gpu_memory_mib: Option<i64>,
}

impl ClassKey {
    /// The key of `node`.
    pub fn of(node: &NodeInfo) -> ClassKey {
        ClassKey {
            labels: Labels::new(
                node.labels
                    .iter()
                    .filter(|(k, _)| *k != HOSTNAME_LABEL)
                    .map(|(k, v)| (Arc::<str>::from(k), Arc::<str>::from(v))),
            ),
            taints: node.taints.clone(),
            unschedulable: node.unschedulable,
            gpu_memory_mib: node.gpu_memory_mib,
        }
    }

    /// True when `node` has this key (cheaper than building its key).
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.unschedulable == node.unschedulable
            && self.gpu_memory_mib == node.gpu_memory_mib
            && self.taints == node.taints
            && self
                .labels
                .iter()
                .eq(node.labels.iter().filter(|(k, _)| *k != HOSTNAME_LABEL))
    }
}

/// True when `term` reads only what a node's class holds: no `matchFields`, no
/// hostname label.
pub fn term_is_class_wide(term: &SelectorTerm) -> bool {
    term.0.iter().all(|r| !r.field && &*r.key != HOSTNAME_LABEL)
}

/// True when the pod's node selector and required node affinity read only what a
/// node's class holds.
pub fn required_affinity_is_class_wide(pod: &PodInfo) -> bool {
    term_is_class_wide(&pod.node_selector) && pod.required_affinity.iter().all(term_is_class_wide)
}

/// True when the pod's preferred node affinity reads only what a node's class holds.
pub fn preferred_affinity_is_class_wide(pod: &PodInfo) -> bool {
    pod.preferred_affinity
        .iter()
        .all(|(_, t)| term_is_class_wide(t))
}

/// The cache's numbering of classes, with a count of nodes per class so that ids of
/// classes no node has any more are reused.
#[derive(Debug, Default)]
pub struct NodeClasses {
    ids: HashMap<Arc<ClassKey>, u32>,
    entries: Vec<Option<(Arc<ClassKey>, usize)>>,
    free: Vec<u32>,
}

impl NodeClasses {
    /// The id for a node that had class `old` and now looks like `node`: `old` itself
    /// when its key still matches, else the (possibly new) id of the node's key, with
    /// `old` released.
    pub fn reassign(&mut self, old: ClassId, node: &NodeInfo) -> ClassId {
        if let Some(i) = old.index()
            && let Some(Some((key, _))) = self.entries.get(i)
            && key.matches(node)
        {
            return old;
        }
        self.release(old);
        self.acquire(ClassKey::of(node))
    }

    /// Counts one more node of class `key`; returns its id.
    fn acquire(&mut self, key: ClassKey) -> ClassId {
        if let Some(&id) = self.ids.get(&key) {
            if let Some(Some((_, n))) = self.entries.get_mut(id as usize) {
                *n += 1;
            }
            return ClassId(id);
        }
        let key = Arc::new(key);
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some((key.clone(), 1));
                id
            }
            None => {
                self.entries.push(Some((key.clone(), 1)));
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        ClassId(id)
    }

    /// Counts one node fewer of class `id`; frees the id when none is left.
    pub fn release(&mut self, id: ClassId) {
        let Some(i) = id.index() else { return };
        let Some(slot) = self.entries.get_mut(i) else {
            return;
        };
        let Some((key, n)) = slot else { return };
        *n -= 1;
        if *n == 0 {
            self.ids.remove(&**key);
            *slot = None;
            self.free.push(id.0);
        }
    }

    /// One more than the highest id in use: the size of a per-class table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no class is in use.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of classes in use.
    pub fn in_use(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Requirement, Resources, SelectorOp, TaintEffect};

    fn node(name: &str, pool: &str) -> NodeInfo {
        let mut n = NodeInfo::new(name, Resources::cpu_mem(1000, 1 << 30), 110);
        n.labels = Labels::new([(HOSTNAME_LABEL, name), ("pool", pool)]);
        n
    }

    #[test]
    fn nodes_alike_but_for_their_hostname_share_a_class() {
        let mut c = NodeClasses::default();
        let a = c.reassign(ClassId::NONE, &node("a", "cpu"));
        let b = c.reassign(ClassId::NONE, &node("b", "cpu"));
        let g = c.reassign(ClassId::NONE, &node("g", "gpu"));
        assert_eq!(a, b);
        assert_ne!(a, g);
        assert_eq!(c.in_use(), 2);

        // A taint makes another class; the old one keeps its other node.
        let mut tainted = node("a", "cpu");
        tainted.taints.push(Taint {
            key: "k".into(),
            value: "".into(),
            effect: TaintEffect::NoSchedule,
        });
        let t = c.reassign(a, &tainted);
        assert_ne!(t, a);
        assert_eq!(
            c.reassign(b, &node("b", "cpu")),
            b,
            "unchanged keeps its id"
        );
        assert_eq!(c.in_use(), 3);

        // The last node of a class leaves: its id is reused for the next new key.
        c.release(g);
        assert_eq!(c.in_use(), 2);
        let mut cordoned = node("c", "cpu");
        cordoned.unschedulable = true;
        assert_eq!(c.reassign(ClassId::NONE, &cordoned), g);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn hostname_and_fields_are_not_class_wide() {
        let term = |key: &str, field: bool| {
            SelectorTerm(vec![Requirement {
                key: key.into(),
                op: SelectorOp::In,
                values: vec!["x".into()],
                bound: 0,
                field,
            }])
        };
        assert!(term_is_class_wide(&term("pool", false)));
        assert!(!term_is_class_wide(&term(HOSTNAME_LABEL, false)));
        assert!(!term_is_class_wide(&term("metadata.name", true)));
        let mut p = PodInfo::default();
        assert!(required_affinity_is_class_wide(&p) && preferred_affinity_is_class_wide(&p));
        p.required_affinity = vec![term("pool", false), term(HOSTNAME_LABEL, false)];
        assert!(!required_affinity_is_class_wide(&p));
        p.preferred_affinity = vec![(1, term("metadata.name", true))];
        assert!(!preferred_affinity_is_class_wide(&p));
    }
}
