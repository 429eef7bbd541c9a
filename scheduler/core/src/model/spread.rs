//! Topology spread constraints (`spec.topologySpreadConstraints`), in the form the
//! `PodTopologySpread` plugin reads (see [`crate::plugins::spread`]).

use std::sync::Arc;

use super::{LabelSelector, PodInfo};

/// Which pods a constraint counts (always among the pods of the incoming pod's
/// namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpreadSelector {
    /// `labelSelector`, with `matchLabelKeys` merged in as the API server merges
    /// them.
    Labels(LabelSelector),
    /// No `labelSelector`: the constraint counts no pod (kube-scheduler's
    /// `labels.Nothing()`).
    Nothing,
    /// A cluster default constraint: the pods of the same controller (the owner
    /// reference with `controller: true`, by uid).
    Owner(Arc<str>),
}

impl SpreadSelector {
    /// True when the constraint counts `pod`.
    #[inline]
    pub fn selects(&self, pod: &PodInfo) -> bool {
        match self {
            SpreadSelector::Labels(s) => s.matches(&pod.labels),
            SpreadSelector::Nothing => false,
            SpreadSelector::Owner(uid) => pod.owner.as_deref() == Some(&**uid),
        }
    }
}

/// One `TopologySpreadConstraint`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpreadConstraint {
    /// `maxSkew` (≥ 1).
    pub max_skew: i32,
    /// `topologyKey`.
    pub topology_key: Arc<str>,
    /// `whenUnsatisfiable: DoNotSchedule` (a filter); false for `ScheduleAnyway` (a
    /// score).
    pub hard: bool,
    /// The pods it counts.
    pub selector: SpreadSelector,
    /// `minDomains` (1 when unset): with fewer eligible domains than this, the global
    /// minimum counts as 0.
    pub min_domains: i32,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes that match the pod's
    /// nodeSelector and required node affinity count.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default `Ignore`): only nodes whose NoSchedule and
    /// NoExecute taints the pod tolerates count.
    pub honor_taints: bool,
}

impl SpreadConstraint {
    /// A constraint with kube-scheduler's defaults for the optional fields.
    pub fn new(
        max_skew: i32,
        topology_key: impl Into<Arc<str>>,
        hard: bool,
        selector: SpreadSelector,
    ) -> Self {
        SpreadConstraint {
            max_skew,
            topology_key: topology_key.into(),
            hard,
            selector,
            min_domains: 1,
            honor_node_affinity: true,
            honor_taints: false,
        }
    }
}
