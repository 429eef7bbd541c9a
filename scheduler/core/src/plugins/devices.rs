//! Pods with Dynamic Resource Allocation claims (`spec.resourceClaims`). drover does
//! not allocate devices yet: a pod goes only where every one of its claims is already
//! allocated (by kube-scheduler or a driver), on a node the allocation's node selector
//! admits; a pod with a claim that is missing or unallocated waits, and says so.

use std::sync::Arc;

use super::Reason;
use crate::model::{ClaimKey, DeviceClaim, NodeInfo, PodInfo, Volumes};

/// What one cycle worked out for a pod with resource claims.
#[derive(Clone, Debug)]
pub struct State {
    /// A reason that keeps the pod off every node.
    everywhere: Option<Reason>,
    /// The allocated claims.
    claims: Vec<Arc<DeviceClaim>>,
}

impl State {
    /// Reads `pod`'s resource claims from `store`; `None` when it has none.
    pub fn new(pod: &PodInfo, store: Option<&Arc<Volumes>>) -> Option<State> {
        let refs = pod.device_claims.as_ref()?;
        let mut s = State {
            everywhere: None,
            claims: Vec::with_capacity(refs.len()),
        };
        for r in refs.iter() {
            let Some(name) = &r.claim else {
                s.everywhere = Some(Reason::DeviceClaimNotCreated(r.name.clone()));
                break;
            };
            let key = ClaimKey::new(pod.key.namespace.clone(), name.clone());
            let reason = match store.and_then(|v| v.device_claims.get(&key)) {
                None => Reason::DeviceClaimNotFound(name.clone()),
                Some(c) if c.deleting => Reason::DeviceClaimDeleting(name.clone()),
                Some(c) if !c.allocated => Reason::DeviceClaimNotAllocated(name.clone()),
                Some(c) => {
                    s.claims.push(c.clone());
                    continue;
                }
            };
            s.everywhere = Some(reason);
            break;
        }
        Some(s)
    }

    /// True when `node` reaches every claim's allocated devices.
    pub fn filter(&self, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
        if let Some(r) = &self.everywhere {
            why(r.clone());
            return false;
        }
        let reachable = self.claims.iter().all(|c| {
            c.nodes
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(&node.labels, &node.name)))
        });
        if !reachable {
            why(Reason::DeviceClaimElsewhere);
        }
        reachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceClaimRef, Labels, PodKey, Requirement, SelectorOp, SelectorTerm};

    fn pod(refs: &[(&str, Option<&str>)]) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", "p"),
            device_claims: Some(
                refs.iter()
                    .map(|(n, c)| DeviceClaimRef {
                        name: (*n).into(),
                        claim: c.map(Into::into),
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn on(host: &str) -> DeviceClaim {
        DeviceClaim {
            allocated: true,
            nodes: Some(vec![SelectorTerm(vec![Requirement {
                key: "kubernetes.io/hostname".into(),
                op: SelectorOp::In,
                values: vec![host.into()],
                bound: 0,
                field: false,
            }])]),
            deleting: false,
        }
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: Labels::new([("kubernetes.io/hostname", name)]),
            ..Default::default()
        }
    }

    #[test]
    fn only_allocated_claims_place_a_pod_and_only_where_they_were_allocated() {
        let mut store = Volumes::default();
        for (name, c) in [
            ("gpu-on-a", on("a")),
            (
                "anywhere",
                DeviceClaim {
                    nodes: None,
                    ..on("a")
                },
            ),
            (
                "unallocated",
                DeviceClaim {
                    allocated: false,
                    ..Default::default()
                },
            ),
            (
                "going",
                DeviceClaim {
                    deleting: true,
                    ..on("a")
                },
            ),
        ] {
            store
                .device_claims
                .insert(ClaimKey::new("ns", name), Arc::new(c));
        }
        let store = Arc::new(store);
        let verdict = |refs: &[(&str, Option<&str>)]| {
            let p = pod(refs);
            let s = State::new(&p, Some(&store)).expect("claims");
            ["a", "b"].map(|n| {
                let mut r = None;
                s.filter(&node(n), &mut |x| r = Some(x))
                    .then_some(())
                    .ok_or(r)
            })
        };
        let no = |r: Reason| Err(Some(r));
        type Refs<'a> = &'a [(&'a str, Option<&'a str>)];
        type Verdicts = [Result<(), Option<Reason>>; 2];
        let rows: [(Refs, Verdicts); 6] = [
            (
                &[("gpu", Some("gpu-on-a"))],
                [Ok(()), no(Reason::DeviceClaimElsewhere)],
            ),
            (
                &[("gpu", Some("gpu-on-a")), ("net", Some("anywhere"))],
                [Ok(()), no(Reason::DeviceClaimElsewhere)],
            ),
            (&[("net", Some("anywhere"))], [Ok(()), Ok(())]),
            (
                &[("gpu", None)],
                [
                    no(Reason::DeviceClaimNotCreated("gpu".into())),
                    no(Reason::DeviceClaimNotCreated("gpu".into())),
                ],
            ),
            (
                &[("gpu", Some("unallocated"))],
                [
                    no(Reason::DeviceClaimNotAllocated("unallocated".into())),
                    no(Reason::DeviceClaimNotAllocated("unallocated".into())),
                ],
            ),
            (
                &[("gpu", Some("missing")), ("x", Some("going"))],
                [
                    no(Reason::DeviceClaimNotFound("missing".into())),
                    no(Reason::DeviceClaimNotFound("missing".into())),
                ],
            ),
        ];
        for (refs, want) in rows {
            assert_eq!(verdict(refs), want, "{refs:?}");
        }
        assert_eq!(
            verdict(&[("x", Some("going"))])[0],
            no(Reason::DeviceClaimDeleting("going".into()))
        );
        assert!(State::new(&PodInfo::default(), Some(&store)).is_none());
    }
}
