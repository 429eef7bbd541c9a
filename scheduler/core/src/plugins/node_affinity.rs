//! `NodeAffinity`: the filter applies `nodeSelector` and required node affinity (terms
//! ORed, requirements within a term ANDed); the score sums the weights of the preferred
//! terms a node matches.

use crate::model::{NodeInfo, PodInfo};

use super::Reason;

/// True when the node satisfies the pod's nodeSelector and required affinity.
#[inline]
pub fn matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let sel = &pod.node_selector;
    if !sel.0.is_empty() && !sel.matches(&node.labels, &node.name) {
        return false;
    }
    pod.required_affinity.is_empty()
        || pod
            .required_affinity
            .iter()
            .any(|t| t.matches(&node.labels, &node.name))
}

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    if !pod.has_node_constraints() || matches(pod, node) {
        return true;
    }
    why(Reason::NodeAffinity);
    false
}

/// The sum of the weights of the preferred terms the node matches.
#[inline]
pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred_affinity
        .iter()
        .filter(|(_, t)| t.matches(&node.labels, &node.name))
        .map(|(w, _)| i64::from(*w))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use super::score;
    use crate::model::*;
    use std::sync::Arc;

    fn term(key: &str, op: SelectorOp, values: &[&str]) -> SelectorTerm {
        SelectorTerm(vec![Requirement {
            key: key.into(),
            op,
            values: values.iter().map(|v| Arc::from(*v)).collect(),
            bound: 0,
            field: false,
        }])
    }

    #[test]
    fn filter_table() {
        let mut n = node("n1", 1000, 1000);
        n.labels = Labels::new([("zone", "a"), ("pool", "gpu")]);
        let cases: Vec<(&str, SelectorTerm, Vec<SelectorTerm>, bool)> = vec![
            ("none", SelectorTerm::default(), vec![], true),
            (
                "selector match",
                term("zone", SelectorOp::In, &["a"]),
                vec![],
                true,
            ),
            (
                "selector miss",
                term("zone", SelectorOp::In, &["b"]),
                vec![],
                false,
            ),
            (
                "affinity any term",
                SelectorTerm::default(),
                vec![
                    term("zone", SelectorOp::In, &["b"]),
                    term("pool", SelectorOp::Exists, &[]),
                ],
                true,
            ),
            (
                "affinity no term",
                SelectorTerm::default(),
                vec![term("zone", SelectorOp::NotIn, &["a"])],
                false,
            ),
            (
                "both must hold",
                term("zone", SelectorOp::In, &["a"]),
                vec![term("pool", SelectorOp::In, &["cpu"])],
                false,
            ),
        ];
        for (name, sel, req, ok) in cases {
            let mut p = pod(1, 1);
            p.node_selector = sel;
            p.required_affinity = req;
            let (got, why) = run(&Filter::NodeAffinity, &p, &n);
            assert_eq!(got, ok, "{name}");
            assert_eq!(why.len(), usize::from(!ok), "{name}");
            if !ok {
                assert_eq!(why[0], "node(s) didn't match Pod's node affinity/selector");
            }
        }
    }

    #[test]
    fn score_sums_matching_weights() {
        let mut n = node("n1", 1000, 1000);
        n.labels = Labels::new([("zone", "a"), ("pool", "gpu")]);
        let mut p = pod(1, 1);
        p.preferred_affinity = vec![
            (10, term("zone", SelectorOp::In, &["a"])),
            (5, term("pool", SelectorOp::In, &["gpu"])),
            (7, term("pool", SelectorOp::In, &["cpu"])),
        ];
        assert_eq!(score(&p, &n), 15);
    }
}
