//! `NUMATopology`: inside a node, a pod's CPUs and GPUs should come from one NUMA zone.
//!
//! Reads the per-zone resources node-feature-discovery publishes as
//! `NodeResourceTopology`. On a node whose kubelet runs the `single-numa-node` policy,
//! a pod whose CPUs and GPUs fit in no single zone would be rejected by the kubelet
//! (`TopologyAffinityError`), so drover rejects the node. Elsewhere, nodes score by how
//! few zones the pod would span. Nodes without a `NodeResourceTopology` count as one
//! zone. Zones report what was available when the updater last looked; pods bound
//! since then are not subtracted until it looks again.

use crate::model::{NodeInfo, Numa, PodInfo};

use super::{MAX_SCORE, Reason};

/// How many zones, taken largest first, cover the pod's CPUs and GPUs; `None` when
/// even all of them do not.
pub fn zones_needed(numa: &Numa, pod: &PodInfo) -> Option<usize> {
    let (cpu, gpu) = (pod.requests.cpu.max(0), pod.requests.gpu.max(0));
    if cpu == 0 && gpu == 0 {
        return Some(1);
    }
    let mut zones: Vec<(i64, i64)> = numa
        .zones
        .iter()
        .map(|z| (z.available.gpu, z.available.cpu))
        .collect();
    zones.sort_unstable_by(|a, b| b.cmp(a));
    let (mut c, mut g) = (0, 0);
    for (i, (zg, zc)) in zones.iter().enumerate() {
        c += zc;
        g += zg;
        if c >= cpu && g >= gpu {
            return Some(i + 1);
        }
    }
    None
}

fn fits_one_zone(numa: &Numa, pod: &PodInfo) -> bool {
    let (cpu, gpu) = (pod.requests.cpu, pod.requests.gpu);
    (cpu <= 0 && gpu <= 0)
        || numa
            .zones
            .iter()
            .any(|z| z.available.cpu >= cpu && z.available.gpu >= gpu)
}

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    match node.numa.as_deref() {
        Some(numa) if numa.single_numa_node && !fits_one_zone(numa, pod) => {
            why(Reason::NumaZone);
            false
        }
        _ => true,
    }
}

/// Raw score: the number of zones the pod would span (fewer is better; see
/// [`normalize`]).
#[inline]
pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    match node.numa.as_deref() {
        None => 1,
        Some(numa) => zones_needed(numa, pod).map_or(numa.zones.len().max(1) as i64, |z| z as i64),
    }
}

/// One zone scores MAX_SCORE; each further zone less, relative to the worst node.
pub fn normalize(raw: &mut [i64]) {
    let (Some(min), Some(max)) = (raw.iter().copied().min(), raw.iter().copied().max()) else {
        return;
    };
    for s in raw.iter_mut() {
        *s = normalized(*s, min, max);
    }
}

/// One raw score normalized against the `min` and `max` of all of them.
#[inline]
pub fn normalized(raw: i64, min: i64, max: i64) -> i64 {
    if max == min {
        MAX_SCORE
    } else {
        (max - raw) * MAX_SCORE / (max - min)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use super::*;
    use crate::model::*;
    use std::sync::Arc;

    fn numa(single: bool, zones: &[(i64, i64)]) -> Arc<Numa> {
        Arc::new(Numa {
            single_numa_node: single,
            zones: zones
                .iter()
                .enumerate()
                .map(|(i, (cpu, gpu))| {
                    let mut r = Resources::cpu_mem(*cpu, 0);
                    r.gpu = *gpu;
                    NumaZone {
                        name: format!("node-{i}").into(),
                        available: r,
                    }
                })
                .collect(),
        })
    }

    fn gpu_pod(cpu: i64, gpu: i64) -> PodInfo {
        let mut p = pod(cpu, 0);
        p.requests.gpu = gpu;
        p
    }

    #[test]
    fn table() {
        // (policy single-numa?, zones (cpu, gpu), pod (cpu, gpu), fits?, zones spanned)
        let cases = [
            (
                true,
                vec![(16_000, 2), (16_000, 3)],
                (4_000, 4),
                false,
                Some(2),
            ),
            (
                true,
                vec![(16_000, 4), (16_000, 0)],
                (4_000, 4),
                true,
                Some(1),
            ),
            (
                true,
                vec![(2_000, 4), (16_000, 4)],
                (4_000, 4),
                true,
                Some(1),
            ),
            (
                false,
                vec![(16_000, 2), (16_000, 2)],
                (4_000, 3),
                true,
                Some(2),
            ),
            (
                false,
                vec![(16_000, 4), (16_000, 0)],
                (4_000, 3),
                true,
                Some(1),
            ),
            (false, vec![(1_000, 1), (1_000, 1)], (4_000, 3), true, None),
            (true, vec![(1_000, 0)], (0, 0), true, Some(1)),
        ];
        for (i, (single, zones, (cpu, gpu), fits, spanned)) in cases.into_iter().enumerate() {
            let mut n = node("n", 64_000, 1 << 36);
            n.numa = Some(numa(single, &zones));
            let p = gpu_pod(cpu, gpu);
            let (ok, why) = run(&Filter::Numa, &p, &n);
            assert_eq!(ok, fits, "case {i}");
            if !ok {
                assert!(why[0].contains("single NUMA zone"), "case {i}: {why:?}");
            }
            assert_eq!(
                zones_needed(n.numa.as_ref().unwrap(), &p),
                spanned,
                "case {i}"
            );
        }
        // No NodeResourceTopology: one zone, never rejected.
        let plain = node("plain", 64_000, 1 << 36);
        assert!(run(&Filter::Numa, &gpu_pod(4_000, 8), &plain).0);
        assert_eq!(score(&gpu_pod(4_000, 8), &plain), 1);
        let mut raw = vec![1, 2, 3];
        normalize(&mut raw);
        assert_eq!(raw, vec![100, 50, 0]);
    }
}
