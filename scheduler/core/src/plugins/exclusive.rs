//! `NodeExclusive`: a pod that asks for a node to itself gets one, and keeps it.
//!
//! An exclusive pod (annotation `drover.dev/exclusive: "true"`, or every pod of a
//! namespace named in the config) fits only a node that runs no other workload pod;
//! no other pod fits a node that runs an exclusive pod. System pods (DaemonSet pods
//! and static pods) go anywhere and, unless configured otherwise, do not make a node
//! "used".

use crate::model::{NodeInfo, PodInfo, Row};

use super::Reason;

/// See the module docs. `system_pods_count`: DaemonSet and static pods on a node keep
/// exclusive pods off it too.
#[inline]
pub fn filter(
    pod: &PodInfo,
    node: &NodeInfo,
    system_pods_count: bool,
    why: &mut dyn FnMut(Reason),
) -> bool {
    match verdict(pod, &node.row(), system_pods_count) {
        Ok(()) => true,
        Err(r) => {
            why(r);
            false
        }
    }
}

/// The row flags that reject a node for `pod` (see [`Row`]): a node held by an
/// exclusive pod and, for an exclusive pod, a node that runs other pods. A system pod
/// goes anywhere.
#[inline]
pub fn rejecting_flags(pod: &PodInfo, system_pods_count: bool) -> u32 {
    if pod.daemonset {
        return 0;
    }
    let others = match (pod.exclusive, system_pods_count) {
        (false, _) => 0,
        (true, true) => Row::PODS,
        (true, false) => Row::WORKLOAD,
    };
    Row::HELD | others
}

#[inline]
fn verdict(pod: &PodInfo, row: &Row, system_pods_count: bool) -> Result<(), Reason> {
    let hit = row.flags & rejecting_flags(pod, system_pods_count);
    if hit & Row::HELD != 0 {
        Err(Reason::HeldExclusively)
    } else if hit != 0 {
        Err(Reason::NotEmpty)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use crate::model::*;
    use std::sync::Arc;

    fn kind(exclusive: bool, system: bool) -> PodInfo {
        let mut p = pod(100, 1 << 20);
        p.exclusive = exclusive;
        p.daemonset = system;
        p
    }

    #[test]
    fn table() {
        let empty = node("empty", 4000, 1 << 32);
        let mut with_ds = node("ds", 4000, 1 << 32);
        with_ds.add_pod(Arc::new(kind(false, true)));
        let mut shared = node("shared", 4000, 1 << 32);
        shared.add_pod(Arc::new(kind(false, false)));
        let mut held = node("held", 4000, 1 << 32);
        held.add_pod(Arc::new(kind(true, false)));
        let strict = Filter::Exclusive {
            system_pods_count: true,
        };
        let default = Filter::Exclusive {
            system_pods_count: false,
        };
        // (filter, pod, node, fits, reason)
        let cases: Vec<(&Filter, PodInfo, &NodeInfo, bool, &str)> = vec![
            (&default, kind(true, false), &empty, true, ""),
            (&default, kind(true, false), &with_ds, true, ""),
            (
                &strict,
                kind(true, false),
                &with_ds,
                false,
                "already ran other pods",
            ),
            (
                &default,
                kind(true, false),
                &shared,
                false,
                "already ran other pods",
            ),
            (
                &default,
                kind(true, false),
                &held,
                false,
                "held by an exclusive pod",
            ),
            (
                &default,
                kind(false, false),
                &held,
                false,
                "held by an exclusive pod",
            ),
            (&default, kind(false, false), &shared, true, ""),
            (&default, kind(false, true), &held, true, ""),
            (&strict, kind(false, true), &held, true, ""),
        ];
        for (i, (f, p, n, ok, reason)) in cases.into_iter().enumerate() {
            let (got, why) = run(f, &p, n);
            assert_eq!(got, ok, "case {i}");
            assert!(why.join(" ").contains(reason), "case {i}: {why:?}");
        }
        // Removing the exclusive pod frees the node again.
        let key = held.pods[0].key.clone();
        held.remove_pod(&key);
        assert!(run(&default, &kind(false, false), &held).0);
    }
}
