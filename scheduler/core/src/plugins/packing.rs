//! The packing score: how full each resource of the node would be with the pod on it.
//!
//! `MostAllocated` (drover's default) packs pods onto busy nodes so whole nodes stay
//! empty for large jobs and for the cluster autoscaler to remove; `LeastAllocated`
//! spreads them (kube-scheduler's default). Each resource has a weight; a resource the
//! node does not have, or an extended resource the pod does not request, is skipped, as
//! in kube-scheduler.

use serde::{Deserialize, Serialize};

use crate::model::{NodeInfo, PodInfo, ResourceKind, Row};

use super::{MAX_SCORE, Weighed};

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
    /// The raw score of `node` for `pod`: the weighted average of requested (with the
    /// pod) over allocatable, or of what stays free, per resource.
    #[inline]
    pub fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        self.prepare(pod).score(node)
    }

    /// The resources that count for `pod` (CPU and memory always, the others when
    /// the pod asks for them), with the pod's request of each: what every node's
    /// score for the pod starts from.
    pub fn prepare(&self, pod: &PodInfo) -> PackingFor {
        let counted = self.resources.iter().filter(|(kind, _)| {
            pod.requests.get(kind) != 0 || matches!(kind, ResourceKind::Cpu | ResourceKind::Memory)
        });
        let weighed = Weighed::new(counted.map(|(k, w)| (k, *w)), &pod.requests);
        let mut builtin = [(0, 0, 0); 4];
        let mut n = 0;
        for i in 0..4 {
            if weighed.weights[i] != 0 {
                builtin[n] = (i, weighed.weights[i], weighed.wants[i]);
                n += 1;
            }
        }
        PackingFor {
            strategy: self.strategy,
            builtin,
            n,
            extended: weighed.extended,
        }
    }
}

/// [`Packing`] prepared for one pod (see [`Packing::prepare`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PackingFor {
    strategy: Strategy,
    /// The first `n` entries: the built-in resources that count for the pod, as
    /// (position, weight, the pod's request).
    builtin: [(usize, i64, i64); 4],
    n: usize,
    /// The extended resources that count for the pod: name, weight, the pod's request.
    extended: Vec<(std::sync::Arc<str>, i64, i64)>,
}

impl PackingFor {
    /// The raw score of `node`.
    #[inline]
    pub fn score(&self, node: &NodeInfo) -> i64 {
        let mut sum = self.builtin(&node.allocatable.builtins(), &node.requested.builtins());
        for (name, w, want) in &self.extended {
            sum.add(
                self.strategy,
                *w,
                *want,
                node.allocatable.extended_amount(name),
                node.requested.extended_amount(name),
            );
        }
        sum.score()
    }

    /// True when an extended resource counts for the pod: then the score reads the
    /// node, not only its row.
    #[inline]
    pub fn needs_node(&self) -> bool {
        !self.extended.is_empty()
    }

    /// The raw score from a node's row, when no extended resource counts (see
    /// [`PackingFor::needs_node`]).
    #[inline(always)]
    pub fn score_row(&self, row: &Row) -> i64 {
        self.builtin(&row.alloc, &row.used).score()
    }

    /// The terms of the built-in resources.
    #[inline(always)]
    fn builtin(&self, alloc: &[i64; 4], requested: &[i64; 4]) -> Sum {
        let mut sum = Sum::default();
        for &(i, w, want) in &self.builtin[..self.n] {
            sum.add(self.strategy, w, want, alloc[i], requested[i]);
        }
        sum
    }
}

/// The weighted terms of a packing score, added up resource by resource.
#[derive(Default)]
struct Sum {
    total: i64,
    weights: i64,
}

impl Sum {
    /// Adds the term of one resource: `want` more of it on a node with `alloc`, of
    /// which `requested` is taken. A resource the node does not have is skipped.
    #[inline(always)]
    fn add(&mut self, strategy: Strategy, w: i64, want: i64, alloc: i64, requested: i64) {
        if w == 0 || alloc <= 0 {
            return;
        }
        let used = (requested + want).min(alloc);
        let s = match strategy {
            Strategy::MostAllocated => used * MAX_SCORE / alloc,
            Strategy::LeastAllocated => (alloc - used) * MAX_SCORE / alloc,
        };
        self.total += s * w;
        self.weights += w;
    }

    /// The weighted average.
    #[inline]
    fn score(&self) -> i64 {
        if self.weights == 0 {
            0
        } else {
            self.total / self.weights
        }
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

    /// The score term by term, as the plugin is defined: each listed resource the
    /// pod counts on (CPU and memory always, others when requested) that the node
    /// has, weighed.
    fn by_definition(p: &Packing, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (mut total, mut weights) = (0i64, 0i64);
        for (kind, w) in &p.resources {
            let want = pod.requests.get(kind);
            if want == 0 && !matches!(kind, ResourceKind::Cpu | ResourceKind::Memory) {
                continue;
            }
            let alloc = node.allocatable.get(kind);
            if alloc <= 0 {
                continue;
            }
            let used = (node.requested.get(kind) + want).min(alloc);
            let s = match p.strategy {
                Strategy::MostAllocated => used * MAX_SCORE / alloc,
                Strategy::LeastAllocated => (alloc - used) * MAX_SCORE / alloc,
            };
            total += s * w;
            weights += w;
        }
        if weights == 0 { 0 } else { total / weights }
    }

    proptest::proptest! {
        /// The prepared score (built-in resources in fixed places, weights of a
        /// resource listed twice added) equals the definition.
        #[test]
        fn prepared_equals_the_definition(
            resources in proptest::collection::vec((0u8..6, 0i64..5), 0..8),
            least in proptest::bool::ANY,
            alloc in proptest::collection::vec(0i64..64, 6),
            requested in proptest::collection::vec(0i64..80, 6),
            want in proptest::collection::vec(0i64..16, 6),
        ) {
            use super::super::testutil::{amounts, kind};
            let p = Packing {
                strategy: if least { Strategy::LeastAllocated } else { Strategy::MostAllocated },
                resources: resources.iter().map(|(k, w)| (kind(*k), *w)).collect(),
            };
            let mut n = node("n", 0, 0);
            n.allocatable = amounts(&alloc);
            n.requested = amounts(&requested);
            let mut pd = pod(0, 0);
            pd.requests = amounts(&want);
            proptest::prop_assert_eq!(p.prepare(&pd).score(&n), by_definition(&p, &pd, &n));
        }
    }
}
