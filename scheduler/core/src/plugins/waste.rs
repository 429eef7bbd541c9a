//! `LeastWaste`: prefer the node that would be left with the least unused capacity,
//! in absolute terms, so a 4 GiB notebook goes to a 4 GiB node and not to an idle
//! 512 GiB one, and a pod without requests goes to the smallest node that fits.
//!
//! The waste of a node is what stays free on it once the pod is placed, weighed per
//! resource in natural units (memory and ephemeral storage per GiB, CPU per core, GPUs
//! and other resources per unit). GPUs a pod leaves unused count as heavily wasted
//! (by default one GPU weighs as much as 500 GiB of memory), so pods without GPUs
//! stay off GPU nodes when other nodes fit. With a price table by
//! `node.kubernetes.io/instance-type`, waste is the price of the unused share of the
//! node instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{NodeInfo, PodInfo, ResourceKind, Resources, Row};

use super::{MAX_SCORE, Weighed};

/// The node label that names its price.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// Settings of the waste score.
#[derive(Clone, Debug, PartialEq)]
pub struct Waste {
    /// Weight per resource, per natural unit (GiB, core, device).
    pub weights: Vec<(ResourceKind, i64)>,
    /// Price per hour by instance type; empty: weigh leftovers instead.
    pub prices: Arc<BTreeMap<String, f64>>,
}

impl Default for Waste {
    fn default() -> Self {
        Waste {
            weights: vec![
                (ResourceKind::Memory, 4),
                (ResourceKind::Cpu, 1),
                (ResourceKind::Gpu, 2000),
            ],
            prices: Arc::default(),
        }
    }
}

/// An amount in the resource's natural unit, times 1000 (bytes are counted in whole
/// MiB first: a shift, not a division, on the hot path).
#[inline]
fn milli_units(kind: &ResourceKind, v: i64) -> i64 {
    match kind {
        ResourceKind::Cpu => v,
        ResourceKind::Memory | ResourceKind::EphemeralStorage => (v >> 20) * 1000 / 1024,
        _ => v * 1000,
    }
}

impl Waste {
    /// The weighted size of `r` (milli-units times weights).
    pub fn weigh(&self, r: &Resources) -> i64 {
        self.weights
            .iter()
            .map(|(k, w)| milli_units(k, r.get(k).max(0)) * w)
            .sum()
    }

    /// The node's price per hour, if prices are configured: its instance type's, or the
    /// highest in the table for a node whose type is not listed.
    #[inline]
    pub fn price(&self, node: &NodeInfo) -> Option<f64> {
        if self.prices.is_empty() {
            return None;
        }
        node.labels
            .get(INSTANCE_TYPE_LABEL)
            .and_then(|t| self.prices.get(t).copied())
            .or_else(|| self.prices.values().copied().reduce(f64::max))
    }

    /// What would stay unused on `node` with `pod` on it: weighted leftover, or with
    /// prices, micro-dollars per hour of the unused share of the node. Lower is better.
    #[inline]
    pub fn waste(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        self.prepare(pod).waste(node)
    }

    /// The pod's side of every node's waste: its request per weighed resource, and
    /// what its GPU memory minimum makes of a node's GPU memory.
    pub fn prepare(&self, pod: &PodInfo) -> WasteFor {
        let mem_weight = self
            .weights
            .iter()
            .find(|(k, _)| *k == ResourceKind::Memory)
            .map_or(1, |(_, w)| *w);
        WasteFor {
            weighed: Weighed::new(self.weights.iter().map(|(k, w)| (k, *w)), &pod.requests),
            gpu_memory: pod
                .gpu_memory_min_mib
                .filter(|_| pod.requests.gpu > 0)
                .map(|min| (min, pod.requests.gpu * mem_weight)),
            waste: self.clone(),
        }
    }
}

/// [`Waste`] prepared for one pod (see [`Waste::prepare`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WasteFor {
    /// The weighed resources.
    weighed: Weighed,
    /// The pod's GPU memory minimum and the weight of a MiB of GPU memory beyond it
    /// (its GPUs times the weight of memory), when it asks for GPUs with a minimum.
    gpu_memory: Option<(i64, i64)>,
    waste: Waste,
}

impl WasteFor {
    /// GPU memory beyond what the pod asks for, on each GPU it takes (weighed as host
    /// memory), so the smallest GPU type that satisfies `drover.dev/gpu-memory-min`
    /// wins.
    #[inline]
    fn gpu_memory_waste(&self, node: &NodeInfo) -> i64 {
        match (self.gpu_memory, node.gpu_memory_mib) {
            (Some((min, weight)), Some(have)) if have >= min => (have - min) * 1000 / 1024 * weight,
            _ => 0,
        }
    }

    /// True when the waste reads more of the node than its row: extended resources
    /// are weighed, the pod has a GPU memory minimum, or prices are set.
    #[inline]
    pub fn needs_node(&self) -> bool {
        !self.weighed.extended.is_empty()
            || self.gpu_memory.is_some()
            || !self.waste.prices.is_empty()
    }

    /// The waste from a node's row, when it needs nothing else (see
    /// [`WasteFor::needs_node`]).
    #[inline(always)]
    pub fn waste_row(&self, row: &Row) -> i64 {
        self.builtin(&row.alloc, &row.used)
    }

    /// The weighted leftover of the built-in resources, in milli-units (see
    /// `milli_units`).
    #[inline(always)]
    fn builtin(&self, alloc: &[i64; 4], requested: &[i64; 4]) -> i64 {
        let w = &self.weighed;
        let left = |i: usize| (alloc[i] - requested[i] - w.wants[i]).max(0);
        left(0) * w.weights[0]
            + ((left(1) >> 20) * 1000 / 1024) * w.weights[1]
            + ((left(2) >> 20) * 1000 / 1024) * w.weights[2]
            + left(3) * 1000 * w.weights[3]
    }

    /// What would stay unused on `node` with the pod on it (see [`Waste::waste`]).
    #[inline]
    pub fn waste(&self, node: &NodeInfo) -> i64 {
        let builtin = self.builtin(&node.allocatable.builtins(), &node.requested.builtins());
        let w = &self.weighed;
        let extended: i64 = w
            .extended
            .iter()
            .map(|(name, weight, want)| {
                let left = node.allocatable.extended_amount(name)
                    - node.requested.extended_amount(name)
                    - want;
                left.max(0) * 1000 * weight
            })
            .sum();
        let leftover = builtin + extended + self.gpu_memory_waste(node);
        match self.waste.price(node) {
            None => leftover,
            Some(p) => {
                let size = self.waste.weigh(&node.allocatable).max(1);
                (p * 1e6 * leftover as f64 / size as f64) as i64
            }
        }
    }
}

/// Maps wastes (lower is better) to 0..=MAX_SCORE: the least waste gets MAX_SCORE, the
/// most gets 0.
pub fn normalize(raw: &mut [i64]) {
    let (Some(min), Some(max)) = (raw.iter().copied().min(), raw.iter().copied().max()) else {
        return;
    };
    for s in raw.iter_mut() {
        *s = normalized(*s, min, max);
    }
}

/// One raw score normalized against the `min` and `max` of all of them: least waste
/// scores MAX_SCORE, most waste 0; all equal, all MAX_SCORE.
#[inline]
pub fn normalized(raw: i64, min: i64, max: i64) -> i64 {
    if max == min {
        return MAX_SCORE;
    }
    ((max - raw) as f64 * MAX_SCORE as f64 / (max - min) as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{node, pod};
    use super::*;
    use crate::model::Labels;

    const GIB: i64 = 1 << 30;

    fn best(w: &Waste, p: &PodInfo, nodes: &[NodeInfo]) -> String {
        let mut raw: Vec<i64> = nodes.iter().map(|n| w.waste(p, n)).collect();
        normalize(&mut raw);
        let i = (0..nodes.len())
            .max_by_key(|i| (raw[*i], std::cmp::Reverse(*i)))
            .unwrap();
        nodes[i].name.to_string()
    }

    fn pool() -> Vec<NodeInfo> {
        [4, 16, 64, 128, 256, 512]
            .iter()
            .map(|g| node(&format!("mem-{g}"), (*g / 2).max(2) * 1000, g * GIB))
            .collect()
    }

    #[test]
    fn smallest_fitting_node_for_each_notebook() {
        let w = Waste::default();
        let nodes = pool();
        // (memory GiB requested, cpu millicores, expected node) among nodes that fit
        for (gib, cpu, want) in [
            (3, 500, "mem-4"),
            (14, 2000, "mem-16"),
            (60, 4000, "mem-64"),
            (120, 8000, "mem-128"),
            (0, 0, "mem-4"),
        ] {
            let p = pod(cpu, gib * GIB);
            let fits: Vec<NodeInfo> = nodes
                .iter()
                .filter(|n| n.allocatable.memory >= gib * GIB && n.allocatable.cpu >= cpu)
                .cloned()
                .collect();
            assert_eq!(best(&w, &p, &fits), want, "{gib} GiB");
        }
    }

    #[test]
    fn unused_gpus_are_waste_and_busy_nodes_are_best_fit() {
        let w = Waste::default();
        let mut gpu = node("gpu", 32000, 256 * GIB);
        gpu.allocatable.gpu = 8;
        let big = node("cpu-512", 64000, 512 * GIB);
        // A CPU pod stays off the GPU node although the GPU node is smaller.
        assert_eq!(
            best(&w, &pod(1000, 8 * GIB), &[gpu.clone(), big.clone()]),
            "cpu-512"
        );
        // A GPU pod goes where its GPUs leave the fewest unused.
        let mut p = pod(1000, 8 * GIB);
        p.requests.gpu = 4;
        let mut gpu4 = gpu.clone();
        gpu4.name = "gpu-4".into();
        gpu4.allocatable.gpu = 4;
        assert_eq!(best(&w, &p, &[gpu.clone(), gpu4]), "gpu-4");
        // Best fit: a busy big node with little left beats an empty medium node.
        let mut busy = node("busy-64", 32000, 64 * GIB);
        busy.add_pod(std::sync::Arc::new(pod(1000, 58 * GIB)));
        let empty = node("empty-16", 8000, 16 * GIB);
        assert_eq!(best(&w, &pod(500, 4 * GIB), &[empty, busy]), "busy-64");
    }

    #[test]
    fn prices_minimise_the_cost_of_what_stays_unused() {
        let mut w = Waste::default();
        let labelled = |name: &str, gib: i64, t: &str| {
            let mut n = node(name, 4000, gib * GIB);
            n.labels = Labels::new([(INSTANCE_TYPE_LABEL, t)]);
            n
        };
        let cheap_big = labelled("cheap-big", 64, "spot.big");
        let dear_small = labelled("dear-small", 16, "ondemand.small");
        let unknown = labelled("unknown", 16, "mystery");
        w.prices = Arc::new(BTreeMap::from([
            ("spot.big".to_string(), 0.10),
            ("ondemand.small".to_string(), 1.00),
        ]));
        let p = pod(1000, 8 * GIB);
        assert_eq!(
            best(&w, &p, &[dear_small.clone(), cheap_big.clone()]),
            "cheap-big"
        );
        // Unlisted types cost the most in the table.
        assert_eq!(w.price(&unknown), Some(1.00));
        // Without prices the absolute leftover decides.
        assert_eq!(
            best(&Waste::default(), &p, &[dear_small, cheap_big]),
            "dear-small"
        );
    }

    #[test]
    fn normalize_table() {
        for (raw, want) in [
            (vec![10, 20, 30], vec![100, 50, 0]),
            (vec![5, 5], vec![100, 100]),
            (vec![], vec![]),
        ] {
            let mut r = raw.clone();
            normalize(&mut r);
            assert_eq!(r, want, "{raw:?}");
        }
    }

    #[test]
    fn the_smallest_gpu_type_that_satisfies_the_minimum() {
        let w = Waste::default();
        let mut nodes = Vec::new();
        for (name, mib) in [("a100-80", 81_920), ("a10-24", 24_576), ("l40-48", 49_152)] {
            let mut n = node(name, 32_000, 256 * GIB);
            n.allocatable.gpu = 8;
            n.gpu_memory_mib = Some(mib);
            nodes.push(n);
        }
        let mut p = pod(1000, 8 * GIB);
        p.requests.gpu = 1;
        p.gpu_memory_min_mib = Some(40 * 1024);
        // The 24 GiB node is filtered out by GPUMemory; of the others, 48 GiB wins.
        let fits: Vec<NodeInfo> = nodes
            .into_iter()
            .filter(|n| n.gpu_memory_mib >= p.gpu_memory_min_mib)
            .collect();
        assert_eq!(best(&w, &p, &fits), "l40-48");
    }

    proptest::proptest! {
        /// The prepared waste (built-in resources in fixed places, weights of a
        /// resource listed twice added) equals the definition: each weighed
        /// resource's leftover in milli-units times its weight, plus GPU memory beyond
        /// the minimum.
        #[test]
        fn prepared_equals_the_definition(
            weights in proptest::collection::vec((0u8..6, 0i64..2000), 0..8),
            alloc in proptest::collection::vec(0i64..64, 6),
            requested in proptest::collection::vec(0i64..80, 6),
            want in proptest::collection::vec(0i64..16, 6),
            gpu_memory in proptest::option::of(0i64..100_000),
            min in proptest::option::of(0i64..100_000),
        ) {
            use super::super::testutil::{amounts, kind};
            let w = Waste {
                weights: weights.iter().map(|(k, w)| (kind(*k), *w)).collect(),
                prices: Arc::default(),
            };
            let mut n = node("n", 0, 0);
            n.allocatable = amounts(&alloc);
            n.requested = amounts(&requested);
            n.gpu_memory_mib = gpu_memory;
            let mut p = pod(0, 0);
            p.requests = amounts(&want);
            p.gpu_memory_min_mib = min;
            let mem_weight = w
                .weights
                .iter()
                .find(|(k, _)| *k == ResourceKind::Memory)
                .map_or(1, |(_, w)| *w);
            let leftover: i64 = w
                .weights
                .iter()
                .map(|(k, wt)| {
                    let left = n.allocatable.get(k) - n.requested.get(k) - p.requests.get(k);
                    milli_units(k, left.max(0)) * wt
                })
                .sum();
            let beyond = match (min.filter(|_| p.requests.gpu > 0), gpu_memory) {
                (Some(min), Some(have)) if have >= min => {
                    (have - min) * 1000 / 1024 * p.requests.gpu * mem_weight
                }
                _ => 0,
            };
            proptest::prop_assert_eq!(w.prepare(&p).waste(&n), leftover + beyond);
        }
    }
}
