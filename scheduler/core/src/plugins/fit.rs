//! `NodeResourcesFit` filter: the pod's requests fit in what the node has free, and the
//! node is below its pod limit. Counts exactly as kube-scheduler does: a resource the
//! pod does not request is never "insufficient", even on an overcommitted node.

use crate::model::{NodeInfo, PodInfo, ResourceKind, Row};

use super::Reason;

/// The built-in resources in [`ResourceKind::builtin`] order.
const BUILTIN: [ResourceKind; 4] = [
    ResourceKind::Cpu,
    ResourceKind::Memory,
    ResourceKind::EphemeralStorage,
    ResourceKind::Gpu,
];

/// True when a request of `want` does not fit in `alloc - used`. A resource the pod
/// does not request never is.
#[inline(always)]
fn insufficient(want: i64, alloc: i64, used: i64) -> bool {
    want > 0 && want > alloc - used
}

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    let mut ok = true;
    if node.pod_count() + 1 > node.max_pods {
        why(Reason::TooManyPods);
        ok = false;
    }
    let r = &pod.requests;
    let (a, u) = (&node.allocatable, &node.requested);
    let (want, alloc, used) = (r.builtins(), a.builtins(), u.builtins());
    for (i, kind) in BUILTIN.iter().enumerate() {
        if insufficient(want[i], alloc[i], used[i]) {
            why(Reason::Insufficient(kind.clone()));
            ok = false;
        }
    }
    for (name, want) in &r.extended {
        if insufficient(*want, a.extended_amount(name), u.extended_amount(name)) {
            why(Reason::Insufficient(ResourceKind::Extended(name.clone())));
            ok = false;
        }
    }
    if ok && let Some(res) = node.reservation.as_deref() {
        ok = backfill_fits(pod, node, res);
        if !ok {
            why(Reason::ReservedForGang);
        }
    }
    ok
}

/// The filter prepared for one pod that requests no extended resource, to be read
/// from rows of nodes that hold no reservation (else [`filter`] reads the node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitRow {
    /// The pod's request of each built-in resource.
    want: [i64; 4],
}

impl FitRow {
    /// The filter prepared for `pod`; `None` when it requests an extended resource.
    pub fn new(pod: &PodInfo) -> Option<FitRow> {
        pod.requests.extended.is_empty().then(|| FitRow {
            want: pod.requests.builtins(),
        })
    }

    /// True when the pod fits the node whose row is `row`.
    #[inline(always)]
    pub fn fits(&self, row: &Row) -> bool {
        // Every term, without a branch per resource.
        let mut short = row.room < 1;
        for i in 0..4 {
            short |= insufficient(self.want[i], row.alloc[i], row.used[i]);
        }
        !short
    }
}

/// Backfill: on a node that holds capacity for a waiting gang, a pod the reservation
/// does not admit fits only in what is left beyond the reservation, so placing it
/// never delays the gang.
fn backfill_fits(pod: &PodInfo, node: &NodeInfo, res: &crate::model::Reservation) -> bool {
    if res.admits(pod) {
        return true;
    }
    if node.pod_count() + res.pods + 1 > node.max_pods {
        return false;
    }
    let (r, a, u, h) = (
        &pod.requests,
        &node.allocatable,
        &node.requested,
        &res.amount,
    );
    let room =
        |want: i64, alloc: i64, used: i64, held: i64| want <= 0 || want <= alloc - used - held;
    room(r.cpu, a.cpu, u.cpu, h.cpu)
        && room(r.memory, a.memory, u.memory, h.memory)
        && room(
            r.ephemeral_storage,
            a.ephemeral_storage,
            u.ephemeral_storage,
            h.ephemeral_storage,
        )
        && room(r.gpu, a.gpu, u.gpu, h.gpu)
        && r.extended.iter().all(|(name, want)| {
            room(
                *want,
                a.extended_amount(name),
                u.extended_amount(name),
                h.extended_amount(name),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use crate::model::*;
    use std::sync::Arc;

    const GI: i64 = 1 << 30;

    fn with_gpu(mut p: PodInfo, g: i64) -> PodInfo {
        p.requests.gpu = g;
        p
    }

    #[test]
    fn table() {
        let mut full = node("full", 4000, 8 * GI);
        full.add_pod(Arc::new(pod(3500, 7 * GI)));
        let mut gpu_node = node("g", 32000, 256 * GI);
        gpu_node.allocatable.gpu = 8;
        gpu_node.add_pod(Arc::new(with_gpu(pod(0, 0), 6)));
        let mut foo_node = node("foo", 4000, 8 * GI);
        foo_node
            .allocatable
            .set(&ResourceKind::from_name("example.com/foo"), 2);
        let mut two_pods = node("tiny", 4000, 8 * GI);
        two_pods.max_pods = 1;
        two_pods.add_pod(Arc::new(pod(0, 0)));
        // 3 of 4 free CPUs held for a waiting gang.
        let mut reserved = node("r", 4000, 8 * GI);
        reserved.reservation = Some(Arc::new(Reservation {
            namespace: "default".into(),
            gang: "waiting".into(),
            priority: 0,
            amount: Resources {
                cpu: 3000,
                ..Default::default()
            },
            pods: 1,
        }));
        let mut completing = pod(2000, GI);
        completing.completes_gang = true;
        let mut higher = pod(2000, GI);
        higher.priority = 10;
        let mut foo_pod = pod(100, 0);
        foo_pod
            .requests
            .set(&ResourceKind::from_name("example.com/foo"), 3);

        let cases: Vec<(&str, PodInfo, &NodeInfo, bool, Vec<&str>)> = vec![
            ("fits", pod(500, GI), &full, true, vec![]),
            (
                "cpu short",
                pod(600, GI),
                &full,
                false,
                vec!["Insufficient cpu"],
            ),
            (
                "both short",
                pod(600, 2 * GI),
                &full,
                false,
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (
                "zero request always fits resources",
                pod(0, 0),
                &full,
                true,
                vec![],
            ),
            (
                "gpus fit",
                with_gpu(pod(1000, GI), 2),
                &gpu_node,
                true,
                vec![],
            ),
            (
                "gpus short",
                with_gpu(pod(1000, GI), 3),
                &gpu_node,
                false,
                vec!["Insufficient nvidia.com/gpu"],
            ),
            (
                "gpu on cpu node",
                with_gpu(pod(100, 0), 1),
                &full,
                false,
                vec!["Insufficient nvidia.com/gpu"],
            ),
            (
                "extended short",
                foo_pod.clone(),
                &foo_node,
                false,
                vec!["Insufficient example.com/foo"],
            ),
            (
                "backfill beside a reservation",
                pod(1000, GI),
                &reserved,
                true,
                vec![],
            ),
            (
                "backfill into a reservation",
                pod(2000, GI),
                &reserved,
                false,
                vec!["node(s) had free capacity held for a waiting gang"],
            ),
            (
                "a higher priority ignores it",
                higher,
                &reserved,
                true,
                vec![],
            ),
            (
                "a partly placed gang's member ignores it",
                completing,
                &reserved,
                true,
                vec![],
            ),
            (
                "pod count",
                pod(0, 0),
                &two_pods,
                false,
                vec!["Too many pods"],
            ),
        ];
        for (name, p, n, ok, reasons) in cases {
            let (got, why) = run(&Filter::Fit, &p, n);
            assert_eq!(got, ok, "{name}");
            assert_eq!(why, reasons, "{name}");
        }
    }
}
