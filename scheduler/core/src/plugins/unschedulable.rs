//! `NodeUnschedulable`: cordoned nodes (`spec.unschedulable`, also set while a node is
//! drained) take no new pods unless the pod tolerates
//! `node.kubernetes.io/unschedulable:NoSchedule`.

use crate::model::{NodeInfo, PodInfo, Taint, TaintEffect, labels::tolerated};

use super::Reason;

/// The taint key Kubernetes uses for cordoned nodes.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    if !node.unschedulable {
        return true;
    }
    let taint = Taint {
        key: UNSCHEDULABLE_TAINT.into(),
        value: "".into(),
        effect: TaintEffect::NoSchedule,
    };
    if tolerated(&pod.tolerations, &taint) {
        return true;
    }
    why(Reason::Unschedulable);
    false
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use super::UNSCHEDULABLE_TAINT;
    use crate::model::Toleration;

    #[test]
    fn table() {
        let mut cordoned = node("c", 1, 1);
        cordoned.unschedulable = true;
        let open = node("o", 1, 1);
        let plain = pod(1, 1);
        let mut tolerant = pod(1, 1);
        tolerant.tolerations = vec![Toleration {
            key: UNSCHEDULABLE_TAINT.into(),
            exists: true,
            value: "".into(),
            effect: None,
        }];
        assert_eq!(run(&Filter::Unschedulable, &plain, &open), (true, vec![]));
        assert_eq!(
            run(&Filter::Unschedulable, &plain, &cordoned),
            (false, vec!["node(s) were unschedulable".to_string()])
        );
        assert_eq!(
            run(&Filter::Unschedulable, &tolerant, &cordoned),
            (true, vec![])
        );
    }
}
