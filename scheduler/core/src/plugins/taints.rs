//! `TaintToleration`: the filter rejects nodes with an untolerated NoSchedule or
//! NoExecute taint; the score prefers nodes with fewer untolerated PreferNoSchedule
//! taints.

use crate::model::{NodeInfo, PodInfo, TaintEffect, labels::tolerated};

use super::Reason;

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    for t in &node.taints {
        if t.effect != TaintEffect::PreferNoSchedule && !tolerated(&pod.tolerations, t) {
            why(Reason::UntoleratedTaint(t.clone()));
            return false;
        }
    }
    true
}

/// The number of untolerated PreferNoSchedule taints (normalized in reverse).
#[inline]
pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(&pod.tolerations, t))
        .count() as i64
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use super::score;
    use crate::model::*;

    fn taint(k: &str, v: &str, e: TaintEffect) -> Taint {
        Taint {
            key: k.into(),
            value: v.into(),
            effect: e,
        }
    }

    #[test]
    fn table() {
        let tol = Toleration {
            key: "gpu".into(),
            exists: true,
            value: "".into(),
            effect: None,
        };
        let cases = [
            ("no taints", vec![], vec![], true, vec![]),
            (
                "untolerated",
                vec![taint("gpu", "true", TaintEffect::NoSchedule)],
                vec![],
                false,
                vec!["node(s) had untolerated taint {gpu: true}"],
            ),
            (
                "tolerated",
                vec![taint("gpu", "true", TaintEffect::NoSchedule)],
                vec![tol.clone()],
                true,
                vec![],
            ),
            (
                "noexecute",
                vec![taint("x", "", TaintEffect::NoExecute)],
                vec![tol.clone()],
                false,
                vec!["node(s) had untolerated taint {x: }"],
            ),
            (
                "prefer only",
                vec![taint("x", "", TaintEffect::PreferNoSchedule)],
                vec![],
                true,
                vec![],
            ),
        ];
        for (name, taints, tols, ok, reasons) in cases {
            let mut n = node("n", 1000, 1000);
            n.taints = taints;
            let mut p = pod(1, 1);
            p.tolerations = tols;
            let (got, why) = run(&Filter::Taints, &p, &n);
            assert_eq!(
                (got, why),
                (ok, reasons.iter().map(|s| s.to_string()).collect()),
                "{name}"
            );
        }
    }

    #[test]
    fn score_counts_prefer_no_schedule() {
        let mut n = node("n", 1000, 1000);
        n.taints = vec![
            taint("a", "", TaintEffect::PreferNoSchedule),
            taint("b", "", TaintEffect::PreferNoSchedule),
            taint("c", "", TaintEffect::NoSchedule),
        ];
        let mut p = pod(1, 1);
        assert_eq!(score(&p, &n), 2);
        p.tolerations = vec![Toleration {
            key: "a".into(),
            exists: true,
            value: "".into(),
            effect: None,
        }];
        assert_eq!(score(&p, &n), 1);
    }
}
