//! What drover needs of a PodDisruptionBudget.

use super::labels::SelectorTerm;
use super::pod::PodInfo;

/// Which pods a PodDisruptionBudget covers and how many of them may be evicted now.
#[derive(Clone, Debug, PartialEq)]
pub struct DisruptionBudget {
    /// Its namespace (it covers pods there only).
    pub namespace: String,
    /// Its label selector; `None` for an empty selector, which covers every pod of
    /// the namespace.
    pub selector: Option<SelectorTerm>,
    /// `status.disruptionsAllowed` (0 until the disruption controller has set it).
    pub allowed: i32,
}

impl DisruptionBudget {
    /// True when the budget covers `pod`.
    pub fn covers(&self, pod: &PodInfo) -> bool {
        *pod.key.namespace == *self.namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels, ""))
    }
}
