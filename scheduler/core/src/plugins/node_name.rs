//! `NodeName`: a pod that names a node (`spec.nodeName`) fits only that node.

use crate::model::{NodeInfo, PodInfo};

use super::Reason;

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    match &pod.node_name {
        Some(n) if *n != node.name => {
            why(Reason::NodeName);
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
        let n = node("a", 1, 1);
        for (want, ok) in [(None, true), (Some("a"), true), (Some("b"), false)] {
            let mut p = pod(1, 1);
            p.node_name = want.map(Into::into);
            assert_eq!(run(&Filter::NodeName, &p, &n).0, ok, "{want:?}");
        }
    }
}
