//! Persistent volumes: kube-scheduler's VolumeRestrictions (`ReadWriteOncePod`),
//! NodeVolumeLimits (CSI attach limits), VolumeBinding and VolumeZone, as one filter
//! over what the pod's claims are bound to, or could be bound to on each node.
//!
//! Per pod (kube-scheduler's PreFilter) the claims are sorted into:
//! - **bound** claims: their volume's node affinity and zone labels restrict nodes;
//! - claims that wait for their first consumer (`WaitForFirstConsumer`, no volume
//!   named yet): a node is feasible if a free volume of the claim's class, size, access
//!   modes, mode and selector is reachable from it, or the class can provision there;
//! - anything else unbound — an `Immediate` claim, a claim pre-bound to a volume that
//!   has not bound back — keeps the pod off every node until the claim binds.
//!
//! After a node is chosen, [`State::choose`] says what to write before the pod binds:
//! bind the smallest fitting volume to the claim, or ask the provisioner for one there.

use std::sync::Arc;

use super::Reason;
use crate::model::{
    AccessModes, BindingMode, Claim, ClaimKey, NodeInfo, PodInfo, StorageClass, Volume,
    VolumeChoice, Volumes,
};

/// A claim that waits for the pod's node.
#[derive(Clone, Debug)]
struct Waiting {
    key: ClaimKey,
    claim: Arc<Claim>,
    class: Arc<StorageClass>,
    /// Free volumes that would fit, the claim's own pre-bound one first, then smallest
    /// first (kube-scheduler binds the smallest that fits).
    candidates: Vec<Arc<Volume>>,
}

/// What one cycle worked out for a pod with claims.
#[derive(Clone, Debug)]
pub struct State {
    /// A reason that keeps the pod off every node.
    everywhere: Option<Reason>,
    /// Volumes of the pod's bound claims.
    bound: Vec<Arc<Volume>>,
    /// Claims waiting for the node.
    waiting: Vec<Waiting>,
    /// The store (for CSI attach limits).
    store: Arc<Volumes>,
}

impl State {
    /// Sorts `pod`'s claims over `store`; `None` when the pod mounts no claim.
    /// `used_elsewhere(claim)` tells whether another placed pod mounts the claim (asked
    /// only for `ReadWriteOncePod` claims).
    pub fn new(
        pod: &PodInfo,
        store: Option<&Arc<Volumes>>,
        used_elsewhere: &mut dyn FnMut(&ClaimKey) -> bool,
    ) -> Option<State> {
        let names = pod.claims.as_ref()?;
        let store = store.cloned().unwrap_or_default();
        let mut s = State {
            everywhere: None,
            bound: Vec::new(),
            waiting: Vec::new(),
            store: store.clone(),
        };
        for name in names.iter() {
            let key = ClaimKey::new(pod.key.namespace.clone(), name.clone());
            match s.sort(&store, key, used_elsewhere) {
                Ok(()) => {}
                Err(r) => {
                    s.everywhere = Some(r);
                    break;
                }
            }
        }
        Some(s)
    }

    fn sort(
        &mut self,
        store: &Volumes,
        key: ClaimKey,
        used_elsewhere: &mut dyn FnMut(&ClaimKey) -> bool,
    ) -> Result<(), Reason> {
        let Some(claim) = store.claims.get(&key) else {
            return Err(Reason::ClaimNotFound(key.name));
        };
        if claim.deleting {
            return Err(Reason::ClaimDeleting(key.name));
        }
        if claim.access_modes.contains(AccessModes::RWOP) && used_elsewhere(&key) {
            return Err(Reason::ReadWriteOncePod);
        }
        if claim.bound
            && let Some(v) = &claim.volume_name
        {
            return match store.volumes.get(v) {
                Some(v) => {
                    self.bound.push(v.clone());
                    Ok(())
                }
                None => Err(Reason::VolumeNotFound),
            };
        }
        let class = claim
            .class
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                store
                    .classes
                    .get(c)
                    .cloned()
                    .ok_or_else(|| Reason::ClassNotFound(c.clone()))
            })
            .transpose()?;
        match class {
            Some(class)
                if class.binding_mode == BindingMode::WaitForFirstConsumer
                    && claim.volume_name.is_none() =>
            {
                let mut candidates: Vec<Arc<Volume>> = store
                    .volumes
                    .values()
                    .filter(|v| fits(store, v, &key, claim))
                    .cloned()
                    .collect();
                candidates.sort_by(|a, b| {
                    (!a.claimed_by(&key, &claim.uid), a.capacity_bytes, &a.name).cmp(&(
                        !b.claimed_by(&key, &claim.uid),
                        b.capacity_bytes,
                        &b.name,
                    ))
                });
                self.waiting.push(Waiting {
                    key,
                    claim: claim.clone(),
                    class,
                    candidates,
                });
                Ok(())
            }
            _ => Err(Reason::UnboundImmediateClaims),
        }
    }

    /// True when the claims hold the pod back from every node whatever the node.
    pub fn rejects_everywhere(&self) -> bool {
        self.everywhere.is_some()
    }

    /// True when `node` can take the pod as far as its volumes go.
    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
        match self.choose(pod, node) {
            Ok(_) => true,
            Err(r) => {
                why(r);
                false
            }
        }
    }

    /// What binding the pod's waiting claims takes on `node`, or why the node cannot
    /// take the pod.
    pub fn choose(&self, pod: &PodInfo, node: &NodeInfo) -> Result<Vec<VolumeChoice>, Reason> {
        if let Some(r) = &self.everywhere {
            return Err(r.clone());
        }
        for v in &self.bound {
            if !v.affinity_allows(&node.labels, &node.name) {
                return Err(Reason::VolumeNodeAffinity);
            }
            if !v.zone_allows(&node.labels) {
                return Err(Reason::VolumeZone);
            }
        }
        let mut choices = Vec::with_capacity(self.waiting.len());
        for w in &self.waiting {
            if w.claim
                .selected_node
                .as_ref()
                .is_some_and(|n| *n != node.name)
            {
                return Err(Reason::VolumeBindConflict);
            }
            let taken = |v: &Volume| {
                choices
                    .iter()
                    .any(|c| matches!(c, VolumeChoice::Bind { volume, .. } if *volume == v.name))
            };
            let found = w
                .candidates
                .iter()
                .find(|v| v.reachable_from(&node.labels, &node.name) && !taken(v));
            let choice = match found {
                Some(v) => VolumeChoice::Bind {
                    claim: w.key.clone(),
                    uid: w.claim.uid.clone(),
                    volume: v.name.clone(),
                },
                None if w.class.provisions_for(&node.labels, &node.name) => {
                    VolumeChoice::Provision {
                        claim: w.key.clone(),
                        node: node.name.clone(),
                    }
                }
                None => return Err(Reason::VolumeBindConflict),
            };
            choices.push(choice);
        }
        if !self.within_attach_limits(pod, node, &choices) {
            return Err(Reason::VolumeLimit);
        }
        Ok(choices)
    }

    /// CSI attach limits: per driver with a limit on the node's CSINode, the distinct
    /// volumes of the node's pods and of this pod stay within it.
    fn within_attach_limits(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        choices: &[VolumeChoice],
    ) -> bool {
        let Some(csi) = self.store.csi_nodes.get(&node.name) else {
            return true;
        };
        let mut own: Vec<(Arc<str>, String)> = Vec::new();
        for v in &self.bound {
            if let Some(d) = &v.csi_driver {
                own.push((d.clone(), format!("pv:{}", v.name)));
            }
        }
        for c in choices {
            match c {
                VolumeChoice::Bind { volume, .. } => {
                    if let Some(d) = self
                        .store
                        .volumes
                        .get(volume)
                        .and_then(|v| v.csi_driver.clone())
                    {
                        own.push((d, format!("pv:{volume}")));
                    }
                }
                VolumeChoice::Provision { claim, .. } => {
                    if let Some(w) = self.waiting.iter().find(|w| w.key == *claim) {
                        own.push((w.class.provisioner.clone(), format!("claim:{claim}")));
                    }
                }
            }
        }
        own.retain(|(d, _)| csi.limit(d).is_some());
        if own.is_empty() {
            return true;
        }
        let mut attached: Vec<(Arc<str>, String)> = Vec::new();
        for p in node.pods.iter().filter(|p| p.key != pod.key) {
            for name in p.claims.iter().flat_map(|c| c.iter()) {
                let key = ClaimKey::new(p.key.namespace.clone(), name.clone());
                if let Some(id) = attachment(&self.store, &key) {
                    attached.push(id);
                }
            }
        }
        attached.sort();
        attached.dedup();
        own.sort();
        own.dedup();
        !own.iter().map(|(d, _)| d).any(|d| {
            let limit = csi.limit(d).unwrap_or(u32::MAX) as usize;
            let on_node = attached.iter().filter(|(x, _)| x == d).count();
            let new = own
                .iter()
                .filter(|o| &o.0 == d && !attached.contains(o))
                .count();
            on_node + new > limit
        })
    }
}

/// The CSI driver and volume id a placed pod's claim holds on its node, when a CSI
/// driver serves it.
fn attachment(store: &Volumes, key: &ClaimKey) -> Option<(Arc<str>, String)> {
    let claim = store.claims.get(key)?;
    if let Some(v) = claim
        .volume_name
        .as_ref()
        .and_then(|v| store.volumes.get(v))
    {
        return v.csi_driver.clone().map(|d| (d, format!("pv:{}", v.name)));
    }
    let class = store.classes.get(claim.class.as_ref()?)?;
    Some((class.provisioner.clone(), format!("claim:{key}")))
}

/// True when volume `v` could be bound to `claim` (`key`) somewhere: free for it, and
/// pre-bound to it or offering what it asks for.
fn fits(store: &Volumes, v: &Volume, key: &ClaimKey, claim: &Claim) -> bool {
    // A volume pre-bound to the claim is its, whatever else it offers.
    store.free_for(v, key, &claim.uid) && (v.claimed_by(key, &claim.uid) || offers(v, claim))
}

/// True when volume `v` offers what `claim` asks for: its class, size, access modes,
/// volume mode and labels.
fn offers(v: &Volume, claim: &Claim) -> bool {
    v.class.as_deref().unwrap_or("") == claim.class.as_deref().unwrap_or("")
        && v.capacity_bytes >= claim.request_bytes
        && v.access_modes.contains(claim.access_modes)
        && v.volume_mode == claim.volume_mode
        && claim.selector.as_ref().is_none_or(|s| s.matches(&v.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, PodKey, Requirement, SelectorOp, SelectorTerm, VolumeMode};

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            known: true,
            labels: Labels::new([(ZONE, zone)]),
            ..Default::default()
        }
    }

    fn in_zone(zone: &str) -> Vec<SelectorTerm> {
        vec![SelectorTerm(vec![Requirement {
            key: ZONE.into(),
            op: SelectorOp::In,
            values: vec![zone.into()],
            bound: 0,
            field: false,
        }])]
    }

    fn pod(claims: &[&str]) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", "p"),
            claims: Some(claims.iter().map(|c| Arc::<str>::from(*c)).collect()),
            ..Default::default()
        }
    }

    fn claim(class: &str, gib: i64) -> Claim {
        Claim {
            uid: "u".into(),
            class: Some(class.into()),
            request_bytes: gib << 30,
            access_modes: AccessModes::RWO,
            ..Default::default()
        }
    }

    fn pv(name: &str, class: &str, gib: i64, zone: &str) -> Volume {
        Volume {
            name: name.into(),
            class: Some(class.into()),
            capacity_bytes: gib << 30,
            access_modes: AccessModes::RWO,
            node_affinity: Some(in_zone(zone)),
            available: true,
            ..Default::default()
        }
    }

    fn class(provisioner: &str, mode: BindingMode, zone: Option<&str>) -> StorageClass {
        StorageClass {
            provisioner: provisioner.into(),
            binding_mode: mode,
            allowed_topologies: zone.map(in_zone),
        }
    }

    struct World {
        v: Volumes,
    }

    impl World {
        fn new() -> Self {
            let mut v = Volumes::default();
            v.classes.insert(
                "local".into(),
                Arc::new(class(
                    crate::model::volume::NO_PROVISIONER,
                    BindingMode::WaitForFirstConsumer,
                    None,
                )),
            );
            v.classes.insert(
                "zonal".into(),
                Arc::new(class(
                    "csi.example.com",
                    BindingMode::WaitForFirstConsumer,
                    Some("a"),
                )),
            );
            v.classes.insert(
                "now".into(),
                Arc::new(class("csi.example.com", BindingMode::Immediate, None)),
            );
            World { v }
        }
        fn claim(mut self, name: &str, c: Claim) -> Self {
            self.v.claims.insert(ClaimKey::new("ns", name), Arc::new(c));
            self
        }
        fn pv(mut self, v: Volume) -> Self {
            self.v.volumes.insert(v.name.clone(), Arc::new(v));
            self
        }
        fn state(&self, pod: &PodInfo) -> State {
            State::new(pod, Some(&Arc::new(self.v.clone())), &mut |_| false).expect("claims")
        }
    }

    /// The verdicts on nodes a (zone a) and b (zone b): the choices or the reason.
    type Verdicts = [Result<Vec<VolumeChoice>, Reason>; 2];

    fn verdicts(w: &World, p: &PodInfo) -> Verdicts {
        let s = w.state(p);
        [s.choose(p, &node("a", "a")), s.choose(p, &node("b", "b"))]
    }

    #[test]
    fn a_pod_without_claims_has_no_state() {
        let p = PodInfo::default();
        assert!(State::new(&p, None, &mut |_| false).is_none());
    }

    #[test]
    fn claims_decide_nodes_as_kube_scheduler_does() {
        let bound = Claim {
            volume_name: Some("pv-a".into()),
            bound: true,
            ..claim("local", 1)
        };
        let bind = |v: &str| {
            Ok(vec![VolumeChoice::Bind {
                claim: ClaimKey::new("ns", "c"),
                uid: "u".into(),
                volume: v.into(),
            }])
        };
        let provision = |n: &str| {
            Ok(vec![VolumeChoice::Provision {
                claim: ClaimKey::new("ns", "c"),
                node: n.into(),
            }])
        };
        let rows: Vec<(&str, World, Verdicts)> = vec![
            (
                "bound to a zone-a volume",
                World::new()
                    .claim("c", bound.clone())
                    .pv(pv("pv-a", "local", 1, "a")),
                [Ok(vec![]), Err(Reason::VolumeNodeAffinity)],
            ),
            (
                "bound to a volume that is gone",
                World::new().claim("c", bound.clone()),
                [Err(Reason::VolumeNotFound), Err(Reason::VolumeNotFound)],
            ),
            (
                "no such claim",
                World::new(),
                [
                    Err(Reason::ClaimNotFound("c".into())),
                    Err(Reason::ClaimNotFound("c".into())),
                ],
            ),
            (
                "an unbound Immediate claim",
                World::new().claim("c", claim("now", 1)),
                [
                    Err(Reason::UnboundImmediateClaims),
                    Err(Reason::UnboundImmediateClaims),
                ],
            ),
            (
                "a claim of no class, unbound",
                World::new().claim("c", claim("", 1)),
                [
                    Err(Reason::UnboundImmediateClaims),
                    Err(Reason::UnboundImmediateClaims),
                ],
            ),
            (
                "a claim of a class that does not exist",
                World::new().claim("c", claim("gone", 1)),
                [
                    Err(Reason::ClassNotFound("gone".into())),
                    Err(Reason::ClassNotFound("gone".into())),
                ],
            ),
            (
                "a static volume in zone a, the smallest that fits",
                World::new()
                    .claim("c", claim("local", 2))
                    .pv(pv("big", "local", 8, "a"))
                    .pv(pv("small", "local", 2, "a"))
                    .pv(pv("tiny", "local", 1, "a"))
                    .pv(pv("other-class", "zonal", 2, "b")),
                [bind("small"), Err(Reason::VolumeBindConflict)],
            ),
            (
                "a volume claimed by another claim is not free",
                World::new().claim("c", claim("local", 1)).pv(Volume {
                    claim: Some((ClaimKey::new("ns", "other"), None)),
                    ..pv("pv-a", "local", 1, "a")
                }),
                [
                    Err(Reason::VolumeBindConflict),
                    Err(Reason::VolumeBindConflict),
                ],
            ),
            (
                "access modes must be offered",
                World::new()
                    .claim(
                        "c",
                        Claim {
                            access_modes: AccessModes::RWX,
                            ..claim("local", 1)
                        },
                    )
                    .pv(pv("pv-a", "local", 1, "a")),
                [
                    Err(Reason::VolumeBindConflict),
                    Err(Reason::VolumeBindConflict),
                ],
            ),
            (
                "block claims take block volumes",
                World::new()
                    .claim(
                        "c",
                        Claim {
                            volume_mode: VolumeMode::Block,
                            ..claim("local", 1)
                        },
                    )
                    .pv(pv("pv-a", "local", 1, "a")),
                [
                    Err(Reason::VolumeBindConflict),
                    Err(Reason::VolumeBindConflict),
                ],
            ),
            (
                "a provisioner allowed in zone a",
                World::new().claim("c", claim("zonal", 1)),
                [provision("a"), Err(Reason::VolumeBindConflict)],
            ),
            (
                "a provisioning already asked for node b",
                World::new().claim(
                    "c",
                    Claim {
                        selected_node: Some("b".into()),
                        ..claim("zonal", 1)
                    },
                ),
                [
                    Err(Reason::VolumeBindConflict),
                    Err(Reason::VolumeBindConflict),
                ],
            ),
            (
                "a claim being deleted",
                World::new().claim(
                    "c",
                    Claim {
                        deleting: true,
                        ..claim("zonal", 1)
                    },
                ),
                [
                    Err(Reason::ClaimDeleting("c".into())),
                    Err(Reason::ClaimDeleting("c".into())),
                ],
            ),
            (
                "legacy zone labels on a bound volume",
                World::new().claim("c", bound.clone()).pv(Volume {
                    node_affinity: None,
                    zone_labels: vec![(ZONE.into(), vec!["b".into(), "c".into()])],
                    ..pv("pv-a", "local", 1, "a")
                }),
                [Err(Reason::VolumeZone), Ok(vec![])],
            ),
        ];
        for (row, world, want) in rows {
            assert_eq!(verdicts(&world, &pod(&["c"])), want, "{row}");
        }
    }

    #[test]
    fn two_claims_of_one_pod_take_two_volumes() {
        let w = World::new()
            .claim("c1", claim("local", 1))
            .claim("c2", claim("local", 1))
            .pv(pv("v1", "local", 1, "a"))
            .pv(pv("v2", "local", 1, "a"))
            .pv(pv("v3", "local", 1, "b"));
        let [a, b] = verdicts(&w, &pod(&["c1", "c2"]));
        let volumes: Vec<_> = a
            .expect("two volumes in zone a")
            .into_iter()
            .map(|c| match c {
                VolumeChoice::Bind { volume, .. } => volume,
                VolumeChoice::Provision { .. } => panic!("no provisioner"),
            })
            .collect();
        assert_eq!(volumes, vec![Arc::from("v1"), Arc::from("v2")]);
        assert_eq!(b, Err(Reason::VolumeBindConflict), "one volume in zone b");
    }

    #[test]
    fn a_volume_promised_to_another_claim_is_not_offered() {
        let mut w = World::new()
            .claim("c", claim("local", 1))
            .pv(pv("v1", "local", 1, "a"));
        w.v.assumed
            .insert("v1".into(), ClaimKey::new("ns", "other"));
        assert_eq!(
            verdicts(&w, &pod(&["c"]))[0],
            Err(Reason::VolumeBindConflict)
        );
        w.v.assumed.insert("v1".into(), ClaimKey::new("ns", "c"));
        assert!(verdicts(&w, &pod(&["c"]))[0].is_ok());
    }

    #[test]
    fn read_write_once_pod_claims_in_use_keep_the_pod_off() {
        let w = World::new().claim(
            "c",
            Claim {
                access_modes: AccessModes::RWOP,
                ..claim("zonal", 1)
            },
        );
        let p = pod(&["c"]);
        let store = Arc::new(w.v.clone());
        let s = State::new(&p, Some(&store), &mut |k| &*k.name == "c").expect("claims");
        assert!(s.rejects_everywhere());
        assert_eq!(s.choose(&p, &node("a", "a")), Err(Reason::ReadWriteOncePod));
        let s = State::new(&p, Some(&store), &mut |_| false).expect("claims");
        assert!(s.choose(&p, &node("a", "a")).is_ok());
    }

    #[test]
    fn csi_attach_limits_count_distinct_volumes_per_driver() {
        let csi = |name: &str, driver: &str| Volume {
            csi_driver: Some(driver.into()),
            node_affinity: None,
            ..pv(name, "local", 1, "a")
        };
        let bound_to = |v: &str| Claim {
            volume_name: Some(v.into()),
            bound: true,
            ..claim("local", 1)
        };
        let mut w = World::new()
            .claim("held", bound_to("v-held"))
            .claim("mine", bound_to("v-mine"))
            .claim("shared", bound_to("v-held"))
            .claim("other-driver", bound_to("v-other"))
            .pv(csi("v-held", "d"))
            .pv(csi("v-mine", "d"))
            .pv(csi("v-other", "e"));
        w.v.csi_nodes.insert(
            "a".into(),
            Arc::new(crate::model::CsiNode {
                drivers: vec![("d".into(), Some(1)), ("e".into(), None)],
            }),
        );
        let mut n = node("a", "a");
        let mut running = pod(&["held"]);
        running.key = PodKey::new("ns", "running");
        n.pods.push(Arc::new(running));
        let check = |w: &World, claims: &[&str]| {
            let p = pod(claims);
            w.state(&p).choose(&p, &n).map(|_| ())
        };
        assert_eq!(
            check(&w, &["mine"]),
            Err(Reason::VolumeLimit),
            "a second d volume"
        );
        assert_eq!(
            check(&w, &["shared"]),
            Ok(()),
            "the attached d volume again"
        );
        assert_eq!(check(&w, &["other-driver"]), Ok(()), "e has no limit");
        w.v.csi_nodes.clear();
        assert_eq!(check(&w, &["mine"]), Ok(()), "no CSINode, no limit");
    }
}
