//! The packing score: how full each resource of the node would be with the pod on it.
//!
//! `MostAllocated` (drover's default) packs pods onto busy nodes so whole nodes stay
//! empty for large jobs and for the cluster autoscaler to remove; `LeastAllocated`
//! spreads them (kube-scheduler's default). Each resource has a weight; a resource the
//! node does not have, or an extended resource the pod does not request, is skipped, as
//! in kube-scheduler.

use serde::{Deserialize, Serialize};

use crate::model::{NodeInfo, PodInfo, ResourceKind};

use super::MAX_SCORE;

/// How the packing score prefers nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Prefer the nodes that would be fullest (bin packing).
    #[default]
    MostAllocated,
    /// Prefer the nodes that would be emptiest (spreading).
    LeastAllocated,
}

/// The packing score's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Packing {
    /// Most or least allocated.
    pub strategy: Strategy,
    /// Resources and their weights.
    pub resources: Vec<(ResourceKind, i64)>,
}

impl Default for Packing {
    fn default() -> Self {
        Packing {
            strategy: Strategy::MostAllocated,
            resources: vec![
                (ResourceKind::Cpu, 1),
                (ResourceKind::Memory, 1),
                (ResourceKind::Gpu, 3),
            ],
        }
    }
}

impl Packing {
    /// The score, 0..=MAX_SCORE.
    #[inline]
    pub fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (mut total, mut weights) = (0i64, 0i64);
        for (kind, w) in &self.resources {
            // The pod's side first: it is the same for every node, so the branch
            // predicts well and a resource the pod does not ask for costs no lookup.
            let want = pod.requests.get(kind);
            if want == 0 && !matches!(kind, ResourceKind::Cpu | ResourceKind::Memory) {
                continue;
            }
            let alloc = node.allocatable.get(kind);
            if alloc <= 0 {
                continue;
            }
            let used = (node.requested.get(kind) + want).min(alloc);
            let s = match self.strategy {
                Strategy::MostAllocated => used * MAX_SCORE / alloc,
                Strategy::LeastAllocated => (alloc - used) * MAX_SCORE / alloc,
            };
            total += s * w;
            weights += w;
        }
        if weights == 0 { 0 } else { total / weights }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{node, pod};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn most_and_least_allocated() {
        let mut busy = node("busy", 4000, 4000);
        busy.add_pod(Arc::new(pod(2000, 2000)));
        let idle = node("idle", 4000, 4000);
        let p = pod(1000, 1000);
        let most = Packing::default();
        assert_eq!(most.score(&p, &busy), 75);
        assert_eq!(most.score(&p, &idle), 25);
        let least = Packing {
            strategy: Strategy::LeastAllocated,
            ..Packing::default()
        };
        assert_eq!(least.score(&p, &busy), 25);
        assert_eq!(least.score(&p, &idle), 75);
    }

    #[test]
    fn gpu_counts_only_when_requested() {
        let mut g = node("g", 4000, 4000);
        g.allocatable.gpu = 8;
        let p = pod(2000, 2000);
        assert_eq!(
            Packing::default().score(&p, &g),
            50,
            "gpu skipped for a cpu pod"
        );
        let mut gp = pod(2000, 2000);
        gp.requests.gpu = 8;
        // (50 + 50 + 3*100) / 5
        assert_eq!(Packing::default().score(&gp, &g), 80);
    }
}
