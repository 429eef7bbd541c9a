//! Gang placement: a set of pods that is useless unless all of them run (a Dask
//! scheduler and its workers, a training job's ranks) is decided as one unit over one
//! snapshot. Either every member gets a node, or none does and nothing is held.

use std::sync::Arc;

use crate::framework::{Diagnosis, Outcome, Overlay, Profile, schedule_one};
use crate::model::{PodInfo, PodKey};
use crate::snapshot::Snapshot;

/// The result of trying to place a gang.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GangOutcome {
    /// Every member has a node: `(pod, slot, node name)`, in member order.
    Placed(Vec<(PodKey, usize, Arc<str>)>),
    /// Not all members fit at once; nothing is placed.
    Waiting {
        /// How many members could be placed before the first that could not.
        placeable: usize,
        /// The member that did not fit, and why.
        blocked: PodKey,
        /// Per-node reasons for that member (with the earlier members counted).
        diagnosis: Diagnosis,
    },
}

/// Places `members` all together over `snapshot`, largest request first so the big
/// members are not crowded out by the small ones. Pods are placed one after another on
/// an overlay of the snapshot, so each sees the ones placed before it.
pub fn place_all(profile: &Profile, members: &[Arc<PodInfo>], snapshot: &Snapshot) -> GangOutcome {
    let mut order: Vec<&Arc<PodInfo>> = members.iter().collect();
    order.sort_by(|a, b| {
        let (ra, rb) = (&a.requests, &b.requests);
        (rb.gpu, rb.memory, rb.cpu)
            .cmp(&(ra.gpu, ra.memory, ra.cpu))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut overlay = Overlay::new(snapshot);
    let mut placed = Vec::with_capacity(members.len());
    for (i, pod) in order.iter().enumerate() {
        match schedule_one(profile, pod, &overlay) {
            Outcome::Placed(p) => {
                overlay.place(p.slot, (*pod).clone());
                placed.push((pod.key.clone(), p.slot, p.node));
            }
            Outcome::Unschedulable(diagnosis) => {
                return GangOutcome::Waiting {
                    placeable: i,
                    blocked: pod.key.clone(),
                    diagnosis,
                };
            }
        }
    }
    // Report in the caller's member order.
    placed.sort_by_key(|(k, _, _)| members.iter().position(|m| &m.key == k));
    GangOutcome::Placed(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn pod(name: &str, cpu: i64) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: PodKey::new("ns", name),
            uid: name.into(),
            requests: Resources::cpu_mem(cpu, 0),
            ..Default::default()
        })
    }

    fn nodes(cpus: &[i64]) -> Snapshot {
        Snapshot::from_nodes(
            cpus.iter().enumerate().map(|(i, c)| {
                NodeInfo::new(&format!("n{i}"), Resources::cpu_mem(*c, 1 << 30), 110)
            }),
        )
    }

    #[test]
    fn all_or_nothing_table() {
        // (node cpus, member cpus, placed?, placeable when waiting)
        let cases: [(&[i64], &[i64], bool, usize); 5] = [
            (&[4000, 4000], &[2000, 2000, 2000, 2000], true, 0),
            (&[4000, 4000], &[2000, 2000, 2000, 2000, 2000], false, 4),
            (&[4000], &[3000, 3000], false, 1),
            (&[6000, 2000], &[1000, 1000, 5000], true, 0),
            (&[], &[1], false, 0),
        ];
        for (i, (caps, members, ok, placeable)) in cases.iter().enumerate() {
            let s = nodes(caps);
            let m: Vec<_> = members
                .iter()
                .enumerate()
                .map(|(j, c)| pod(&format!("m{j}"), *c))
                .collect();
            match place_all(&Profile::default(), &m, &s) {
                GangOutcome::Placed(p) => {
                    assert!(*ok, "case {i}: placed {p:?}");
                    assert_eq!(p.len(), m.len());
                    for (slot, cap) in caps.iter().enumerate() {
                        let used: i64 = p
                            .iter()
                            .filter(|x| x.1 == slot)
                            .map(|x| m.iter().find(|y| y.key == x.0).unwrap().requests.cpu)
                            .sum();
                        assert!(used <= *cap, "case {i}: node {slot} over capacity");
                    }
                }
                GangOutcome::Waiting { placeable: got, .. } => {
                    assert!(!ok, "case {i}: should have been placed");
                    assert_eq!(got, *placeable, "case {i}");
                }
            }
            assert!(
                s.nodes().all(|(_, n)| n.requested.cpu == 0),
                "case {i}: the snapshot is never changed"
            );
        }
    }
}
