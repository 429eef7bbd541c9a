//! Topology across nodes: the operator names levels as node label keys, from the
//! widest to the narrowest (zone > block > rack > host, say); a gang asks for a level
//! as **required** (every member inside one domain of that level, else it waits) or
//! **preferred** (as few domains of that level as possible).
//!
//! The domain is chosen by best fit: of the domains that can hold the whole gang, the
//! one with the least free capacity, so large domains stay whole for large jobs. A node
//! without the level's label (or with an empty value) is a domain of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::framework::{
    Domains, Evaluation, NodeSource, Overlay, Profile, diagnose, same_question,
};
use crate::gang::GangOutcome;
use crate::model::{NodeInfo, PodInfo, PodKey, Resources};
use crate::snapshot::Snapshot;

/// The annotation (on a PodGroup or on the gang's pods) that requires a level.
pub const REQUIRED_ANNOTATION: &str = "drover.dev/topology-required";
/// The annotation that prefers a level.
pub const PREFERRED_ANNOTATION: &str = "drover.dev/topology-preferred";

/// The levels drover knows by default, widest first.
pub const DEFAULT_LEVELS: [&str; 5] = [
    "topology.kubernetes.io/zone",
    "network.topology.nvidia.com/spine",
    "network.topology.nvidia.com/block",
    "nvidia.com/gpu.clique",
    "kubernetes.io/hostname",
];

/// A gang's topology request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The level: a node label key.
    pub level: Arc<str>,
    /// Required (one domain or wait) or preferred (as few domains as possible).
    pub required: bool,
    /// For a required level: the domain the gang's bound members already hold (its
    /// members placed again after a failed bind or a lost node go there only).
    pub within: Option<Arc<str>>,
}

impl Constraint {
    /// Reads a request from annotations (required wins over preferred); `None` when
    /// there is none. Fails with a message when the level is not a configured one.
    pub fn from_annotations(
        required: Option<&str>,
        preferred: Option<&str>,
        levels: &[Arc<str>],
    ) -> Option<Result<Constraint, String>> {
        let (raw, is_required, name) = match (required, preferred) {
            (Some(r), _) => (r, true, REQUIRED_ANNOTATION),
            (None, Some(p)) => (p, false, PREFERRED_ANNOTATION),
            (None, None) => return None,
        };
        let raw = raw.trim();
        Some(match levels.iter().find(|l| &***l == raw) {
            Some(l) => Ok(Constraint {
                level: l.clone(),
                required: is_required,
                within: None,
            }),
            None => Err(format!(
                "{name}: {raw:?} is not a configured topology level; use one of {}",
                levels
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
    }
}

/// One domain of a level: its label value and its nodes' slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The label value (or, for a node without the label, the node's name).
    pub name: Arc<str>,
    /// Slots of its usable nodes.
    pub slots: Vec<usize>,
}

/// The domains of `level` over the usable nodes of `snapshot`, by name.
pub fn domains(snapshot: &Snapshot, level: &str) -> Vec<Domain> {
    let mut by: BTreeMap<Arc<str>, Vec<usize>> = BTreeMap::new();
    for (slot, n) in snapshot.nodes() {
        if !n.known || n.unschedulable {
            continue;
        }
        by.entry(domain_of(n, level)).or_default().push(slot);
    }
    by.into_iter()
        .map(|(name, slots)| Domain { name, slots })
        .collect()
}

/// The domain of `level` a node is in: the label's value, or the node itself.
pub fn domain_of(node: &NodeInfo, level: &str) -> Arc<str> {
    match node.labels.get(level).filter(|v| !v.is_empty()) {
        Some(v) => v.into(),
        None => format!("(node {})", node.name).into(),
    }
}

/// A snapshot overlay seen through a subset of its slots (renumbered 0..).
pub(crate) struct Within<'a, 'b> {
    pub(crate) overlay: &'b Overlay<'a>,
    pub(crate) slots: &'b [usize],
}

impl NodeSource for Within<'_, '_> {
    fn slots(&self) -> usize {
        self.slots.len()
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        self.overlay.get(*self.slots.get(i)?)
    }
    #[inline]
    fn get_with_row(&self, i: usize) -> Option<(&NodeInfo, crate::model::Row)> {
        self.overlay.get_with_row(*self.slots.get(i)?)
    }
    fn classes(&self) -> usize {
        self.overlay.classes()
    }
    fn may_have_numa(&self) -> bool {
        self.overlay.may_have_numa()
    }
    fn may_have_pod_affinity(&self) -> bool {
        self.overlay.may_have_pod_affinity()
    }
    fn namespace_labels(&self, name: &str) -> Option<&crate::model::Labels> {
        self.overlay.namespace_labels(name)
    }
    fn volumes(&self) -> Option<&std::sync::Arc<crate::model::Volumes>> {
        self.overlay.volumes()
    }
    fn visit_all(&self, f: &mut dyn FnMut(&NodeInfo, crate::model::Row)) {
        self.overlay.visit_all(f)
    }
}

fn free_of(snapshot: &Snapshot, slots: &[usize]) -> Resources {
    let mut total = Resources::default();
    for s in slots {
        if let Some(n) = snapshot.slot(*s) {
            let mut f = n.free();
            for (k, v) in f.clone().iter() {
                if v < 0 {
                    f.set(&k, 0);
                }
            }
            total.add(&f);
        }
    }
    total
}

fn covers(free: &Resources, want: &Resources) -> bool {
    want.iter().all(|(k, v)| free.get(&k) >= v)
}

/// Places `members` all together on the nodes in `slots` only (largest first, as
/// [`crate::gang::place_all`] does).
pub fn place_within(
    profile: &Profile,
    members: &[Arc<PodInfo>],
    snapshot: &Snapshot,
    slots: &[usize],
) -> GangOutcome {
    let order = crate::gang::placement_order(members);
    let mut overlay = Overlay::new(snapshot);
    let mut placed: Vec<(PodKey, usize, Arc<str>)> = Vec::with_capacity(members.len());
    let mut eval: Option<(usize, Evaluation)> = None;
    let mut domains = Domains::default();
    for (i, pod) in order.iter().enumerate() {
        let within = Within {
            overlay: &overlay,
            slots,
        };
        if !eval
            .as_ref()
            .is_some_and(|(j, _)| same_question(order[*j], pod, &within))
        {
            eval = Some((i, Evaluation::new(profile, pod, &within)));
        }
        let (_, e) = eval.as_mut().expect("set above");
        match e.best(profile, &within) {
            Some(p) => {
                let slot = slots[p.slot];
                overlay.place(slot, (*pod).clone());
                placed.push((pod.key.clone(), slot, p.node));
                // Inter-pod terms reach past the node: the nodes of the domains it
                // changed are evaluated again.
                let within = Within {
                    overlay: &overlay,
                    slots,
                };
                if !e.placed(pod, &within, p.slot, &mut domains) {
                    eval = None;
                }
            }
            None => {
                return GangOutcome::Waiting {
                    placeable: i,
                    blocked: pod.key.clone(),
                    diagnosis: diagnose(profile, pod, &within),
                };
            }
        }
    }
    placed.sort_by_key(|(k, _, _)| members.iter().position(|m| &m.key == k));
    GangOutcome::Placed(placed)
}

/// The result of placing a gang under a topology constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyOutcome {
    /// Every member has a node; `where_` says in which domain(s), for the Event.
    Placed {
        /// `(pod, slot, node)` in member order.
        placed: Vec<(PodKey, usize, Arc<str>)>,
        /// "rack r-3 (4 nodes)" or "2 racks: r-1, r-2 (7 nodes)".
        where_: String,
    },
    /// Not placeable under the constraint; why, naming the level.
    NoFit(String),
}

fn describe(level: &str, names: &[Arc<str>], placed: &[(PodKey, usize, Arc<str>)]) -> String {
    let nodes: std::collections::BTreeSet<&Arc<str>> = placed.iter().map(|p| &p.2).collect();
    let short = level.rsplit('/').next().unwrap_or(level);
    if names.len() == 1 {
        format!("{short} {} ({} node(s))", names[0], nodes.len())
    } else {
        format!(
            "{} {short} domains: {} ({} node(s))",
            names.len(),
            names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            nodes.len()
        )
    }
}

/// Places a gang under `c`: in the tightest single domain that holds it; if none and
/// the level is only preferred, in as few domains as possible (the roomiest first).
pub fn place(
    profile: &Profile,
    members: &[Arc<PodInfo>],
    snapshot: &Snapshot,
    c: &Constraint,
) -> TopologyOutcome {
    let mut want = Resources::default();
    for m in members {
        want.add(&m.requests);
    }
    let mut doms = domains(snapshot, &c.level);
    if let Some(held) = c.within.as_ref().filter(|_| c.required) {
        doms.retain(|d| d.name == *held);
    }
    let mut candidates: Vec<(Resources, &Domain)> = doms
        .iter()
        .map(|d| (free_of(snapshot, &d.slots), d))
        .filter(|(f, _)| covers(f, &want))
        .collect();
    // Best fit: the least free capacity first (GPUs, then memory, then CPU).
    candidates.sort_by(|(a, da), (b, db)| {
        (a.gpu, a.memory, a.cpu, &da.name).cmp(&(b.gpu, b.memory, b.cpu, &db.name))
    });
    let mut last_miss = None;
    for (_, d) in &candidates {
        match place_within(profile, members, snapshot, &d.slots) {
            GangOutcome::Placed(p) => {
                let where_ = describe(&c.level, std::slice::from_ref(&d.name), &p);
                return TopologyOutcome::Placed { placed: p, where_ };
            }
            GangOutcome::Waiting { diagnosis, .. } => last_miss = Some(diagnosis.message()),
        }
    }
    let short = c.level.rsplit('/').next().unwrap_or(&c.level);
    if let (true, Some(held)) = (c.required, &c.within) {
        let free = doms
            .first()
            .map(|d| free_of(snapshot, &d.slots).to_string())
            .unwrap_or_else(|| "no usable node".into());
        let why = last_miss
            .map(|m| format!(" (enough in sum, but not node by node: {m})"))
            .unwrap_or_default();
        return TopologyOutcome::NoFit(format!(
            "its bound members are in {short} {held} (required level {}), which cannot hold its {} pending member(s) ({want}) too; {held} has {free} free{why}",
            c.level,
            members.len(),
        ));
    }
    if c.required {
        let biggest = doms
            .iter()
            .map(|d| free_of(snapshot, &d.slots))
            .max_by(|a, b| (a.gpu, a.memory, a.cpu).cmp(&(b.gpu, b.memory, b.cpu)));
        return TopologyOutcome::NoFit(format!(
            "no single {short} domain (required level {}) can hold all {} members ({want}); the roomiest of {} has {} free",
            c.level,
            members.len(),
            doms.len(),
            biggest
                .map(|b| b.to_string())
                .unwrap_or_else(|| "nothing".into())
        ));
    }
    // Preferred: add the roomiest domains one by one until the gang fits.
    let mut by_room: Vec<(Resources, &Domain)> = doms
        .iter()
        .map(|d| (free_of(snapshot, &d.slots), d))
        .collect();
    by_room.sort_by(|(a, da), (b, db)| {
        (b.gpu, b.memory, b.cpu, &da.name).cmp(&(a.gpu, a.memory, a.cpu, &db.name))
    });
    let mut slots: Vec<usize> = Vec::new();
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut room = Resources::default();
    for (free, d) in by_room {
        slots.extend(&d.slots);
        names.push(d.name.clone());
        room.add(&free);
        if !covers(&room, &want) {
            continue;
        }
        if let GangOutcome::Placed(p) = place_within(profile, members, snapshot, &slots) {
            // Report only the domains actually used.
            let used: std::collections::BTreeSet<usize> = p.iter().map(|x| x.1).collect();
            let used_names: Vec<Arc<str>> = doms
                .iter()
                .filter(|d| d.slots.iter().any(|s| used.contains(s)))
                .map(|d| d.name.clone())
                .collect();
            let where_ = describe(&c.level, &used_names, &p);
            return TopologyOutcome::Placed { placed: p, where_ };
        }
    }
    TopologyOutcome::NoFit(format!(
        "the gang does not fit even across every {short} domain (preferred level {})",
        c.level
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    const GI: i64 = 1 << 30;

    /// `racks[r]` = free GPUs per node of rack r (8-GPU nodes; used = 8 - free).
    fn cluster(racks: &[&[i64]]) -> Snapshot {
        let mut cache = crate::cache::ClusterCache::new();
        let mut i = 0;
        for (r, nodes) in racks.iter().enumerate() {
            for free in nodes.iter() {
                let mut alloc = Resources::cpu_mem(64_000, 512 * GI);
                alloc.gpu = 8;
                let mut n = NodeInfo::new(&format!("n{i:02}"), alloc, 110);
                n.labels = Labels::new([
                    ("example.com/rack", format!("r{r}")),
                    ("example.com/block", format!("b{}", r / 2)),
                ]);
                cache.upsert_node_info(n);
                if *free < 8 {
                    let mut used = Resources::cpu_mem(1000, GI);
                    used.gpu = 8 - free;
                    cache.upsert_pod(PodInfo {
                        key: PodKey::new("ns", &format!("used{i}")),
                        uid: format!("u{i}").into(),
                        node_name: Some(format!("n{i:02}").into()),
                        requests: used,
                        ..Default::default()
                    });
                }
                i += 1;
            }
        }
        cache.snapshot()
    }

    fn gang(n: usize, gpus: i64) -> Vec<Arc<PodInfo>> {
        (0..n)
            .map(|i| {
                let mut r = Resources::cpu_mem(1000, GI);
                r.gpu = gpus;
                Arc::new(PodInfo {
                    key: PodKey::new("ns", &format!("m{i}")),
                    uid: format!("m{i}").into(),
                    requests: r,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn rack(required: bool) -> Constraint {
        Constraint {
            level: "example.com/rack".into(),
            required,
            within: None,
        }
    }

    fn racks_used(snap: &Snapshot, placed: &[(PodKey, usize, Arc<str>)]) -> Vec<String> {
        let mut v: Vec<String> = placed
            .iter()
            .map(|p| {
                snap.slot(p.1)
                    .unwrap()
                    .labels
                    .get("example.com/rack")
                    .unwrap()
                    .to_string()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn domain_selection_table() {
        // (free GPUs per node per rack, members × GPUs, required?, expected racks or
        // a fragment of the wait message)
        type Case<'a> = (
            Vec<&'a [i64]>,
            (usize, i64),
            bool,
            Result<Vec<&'a str>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            // Best fit: r1 is tighter than r0 and still holds 16 GPUs.
            (vec![&[8, 8, 8], &[8, 8, 0]], (2, 8), true, Ok(vec!["r1"])),
            (vec![&[8, 8, 8], &[8, 8, 0]], (3, 8), true, Ok(vec!["r0"])),
            // Required and no rack holds it: wait, never widen.
            (
                vec![&[8, 0], &[8, 0]],
                (2, 8),
                true,
                Err("no single rack domain"),
            ),
            // Preferred: the fewest racks, roomiest first.
            (
                vec![&[8, 0], &[8, 8], &[8, 0]],
                (3, 8),
                false,
                Ok(vec!["r0", "r1"]),
            ),
            (vec![&[8, 0], &[8, 0]], (2, 8), false, Ok(vec!["r0", "r1"])),
            (
                vec![&[4, 0], &[4, 0]],
                (2, 8),
                false,
                Err("does not fit even across every rack"),
            ),
            // Small members pack into one rack even when spread would be possible.
            (vec![&[2, 2], &[8, 8]], (4, 1), true, Ok(vec!["r0"])),
        ];
        for (i, (racks, (n, g), required, want)) in cases.into_iter().enumerate() {
            let snap = cluster(&racks);
            let out = place(&Profile::default(), &gang(n, g), &snap, &rack(required));
            match (out, want) {
                (TopologyOutcome::Placed { placed, where_ }, Ok(w)) => {
                    assert_eq!(placed.len(), n, "case {i}");
                    assert_eq!(racks_used(&snap, &placed), w, "case {i}: {where_}");
                    assert!(where_.contains("rack"), "case {i}: {where_}");
                }
                (TopologyOutcome::NoFit(m), Err(w)) => assert!(m.contains(w), "case {i}: {m}"),
                (o, w) => panic!("case {i}: got {o:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn a_gang_with_bound_members_repairs_inside_their_domain() {
        // Best fit alone would take r1 (the tighter rack); the rest of the gang is in r0.
        let snap = cluster(&[&[8, 8, 8], &[8, 8, 0]]);
        let held = Constraint {
            within: Some("r0".into()),
            ..rack(true)
        };
        let TopologyOutcome::Placed { placed, .. } =
            place(&Profile::default(), &gang(1, 8), &snap, &held)
        else {
            panic!("r0 has room");
        };
        assert_eq!(racks_used(&snap, &placed), vec!["r0"]);
        // No room left in the held rack: wait, naming it, even though r1 has room.
        let snap = cluster(&[&[0, 0], &[8, 8]]);
        match place(&Profile::default(), &gang(1, 8), &snap, &held) {
            TopologyOutcome::NoFit(m) => {
                assert!(m.contains("its bound members are in rack r0"), "{m}")
            }
            o => panic!("placed outside the held rack: {o:?}"),
        }
    }

    #[test]
    fn nodes_without_the_label_are_their_own_domain() {
        let mut cache = crate::cache::ClusterCache::new();
        for (name, rack) in [("a", Some("r0")), ("b", Some("")), ("c", None)] {
            let mut n = NodeInfo::new(name, Resources::cpu_mem(1000, GI), 10);
            if let Some(r) = rack {
                n.labels = Labels::new([("example.com/rack", r)]);
            }
            cache.upsert_node_info(n);
        }
        let d = domains(&cache.snapshot(), "example.com/rack");
        let names: Vec<&str> = d.iter().map(|d| &*d.name).collect();
        assert_eq!(names, vec!["(node b)", "(node c)", "r0"]);
    }

    #[test]
    fn requests_are_checked_against_the_configured_levels() {
        let levels: Vec<Arc<str>> = vec!["example.com/rack".into()];
        assert_eq!(Constraint::from_annotations(None, None, &levels), None);
        assert_eq!(
            Constraint::from_annotations(Some("example.com/rack"), Some("x"), &levels),
            Some(Ok(rack(true)))
        );
        assert_eq!(
            Constraint::from_annotations(None, Some(" example.com/rack "), &levels),
            Some(Ok(rack(false)))
        );
        let err = Constraint::from_annotations(Some("rack"), None, &levels)
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains(
                "\"rack\" is not a configured topology level; use one of example.com/rack"
            ),
            "{err}"
        );
    }
}
