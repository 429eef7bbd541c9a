//! `GPUMemory`: a pod that asks for GPUs with at least so much memory each
//! (`drover.dev/gpu-memory-min`) fits only nodes whose GPUs have it, as GPU Feature
//! Discovery reports in `nvidia.com/gpu.memory` (MiB). Among those, the least-waste
//! score prefers the smallest GPU type that satisfies the pod.

use crate::model::{NodeInfo, PodInfo};

use super::Reason;

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    match pod.gpu_memory_min_mib {
        Some(min) if node.gpu_memory_mib.is_none_or(|have| have < min) => {
            why(Reason::GpuMemory);
            false
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};

    #[test]
    fn table() {
        // (node GPU memory MiB, pod minimum MiB, fits)
        for (have, want, ok) in [
            (Some(81_559), Some(40_960), true),
            (Some(40_960), Some(40_960), true),
            (Some(24_576), Some(40_960), false),
            (None, Some(1), false),
            (None, None, true),
            (Some(81_559), Some(i64::MAX), false),
        ] {
            let mut n = node("g", 1000, 1 << 30);
            n.gpu_memory_mib = have;
            let mut p = pod(100, 0);
            p.gpu_memory_min_mib = want;
            let (got, why) = run(&Filter::GpuMemory, &p, &n);
            assert_eq!(got, ok, "{have:?} {want:?}");
            if !ok {
                assert!(why[0].contains("gpu-memory-min"), "{why:?}");
            }
        }
    }
}
