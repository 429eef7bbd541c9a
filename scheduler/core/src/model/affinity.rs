//! Inter-pod affinity and anti-affinity terms, in the form the `InterPodAffinity`
//! plugin reads (see [`crate::plugins::interpod`]).

use std::sync::Arc;

use super::{LabelSelector, Labels, PodInfo};

/// The namespaces whose pods a term looks at: the listed ones and those whose labels
/// match the selector. A term that lists none and has no selector looks at its own
/// pod's namespace (filled in when the term is read); an empty selector matches every
/// namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NamespaceScope {
    /// `namespaces`, sorted.
    pub names: Vec<Arc<str>>,
    /// `namespaceSelector`.
    pub selector: Option<LabelSelector>,
}

impl NamespaceScope {
    /// True when a pod of `namespace`, whose labels are `labels` (`None`: unknown),
    /// is in scope.
    #[inline]
    pub fn contains(&self, namespace: &str, labels: Option<&Labels>) -> bool {
        self.names.iter().any(|n| **n == *namespace)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| s.0.is_empty() || labels.is_some_and(|l| s.matches(l)))
    }
}

/// One pod affinity term (`PodAffinityTerm`): pods in scope whose labels match the
/// selector, in the same domain of `topology_key` as the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodAffinityTerm {
    /// `labelSelector`, with `matchLabelKeys` / `mismatchLabelKeys` merged in as the
    /// API server merges them; `None` (no selector) matches no pod.
    pub selector: Option<LabelSelector>,
    /// The namespaces it looks at.
    pub namespaces: NamespaceScope,
    /// `topologyKey`.
    pub topology_key: Arc<str>,
}

impl PodAffinityTerm {
    /// True when `pod`, whose namespace's labels are `namespace_labels`, is one of
    /// the pods the term is about.
    #[inline]
    pub fn matches(&self, pod: &PodInfo, namespace_labels: Option<&Labels>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches(&pod.labels))
            && self
                .namespaces
                .contains(&pod.key.namespace, namespace_labels)
    }
}

/// A pod's inter-pod affinity (`spec.affinity.podAffinity` and `podAntiAffinity`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodAffinity {
    /// Required affinity terms: all must hold.
    pub required: Vec<PodAffinityTerm>,
    /// Required anti-affinity terms: none may be violated.
    pub required_anti: Vec<PodAffinityTerm>,
    /// Preferred affinity terms with their weights.
    pub preferred: Vec<(i32, PodAffinityTerm)>,
    /// Preferred anti-affinity terms with their weights.
    pub preferred_anti: Vec<(i32, PodAffinityTerm)>,
}

impl PodAffinity {
    /// True when it has no term at all.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
            && self.required_anti.is_empty()
            && self.preferred.is_empty()
            && self.preferred_anti.is_empty()
    }
}
