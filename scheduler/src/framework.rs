//! The scheduling cycle for one pod over a snapshot: run every filter on every node,
//! score the feasible ones, pick the best. No sampling: every node is evaluated.
//!
//! The hot path reads `&NodeInfo`s from an immutable [`NodeSource`] in parallel
//! (rayon, one task per snapshot chunk) without locks, allocates once per decision (the
//! list of feasible nodes), and builds rejection reasons only when the pod fits
//! nowhere, in a second pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::model::{NodeInfo, PodInfo};
use crate::plugins::{Filter, Reason, Score, packing::Packing};
use crate::snapshot::{CHUNK, Snapshot};

/// Below this many slots the cycle runs on the calling thread; rayon's overhead would
/// outweigh the work.
const PARALLEL_MIN_SLOTS: usize = 512;

/// Most score plugins a profile may have.
pub const MAX_SCORE_PLUGINS: usize = 5;

/// The filters and weighted scores one scheduling profile runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Filters, in order; a node fails at its first failing filter.
    pub filters: Vec<Filter>,
    /// Scores with their weights.
    pub scores: Vec<(Score, i64)>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile::with_packing(Packing::default())
    }
}

impl Profile {
    /// The default filters and kube-scheduler's default weights, with `packing`.
    pub fn with_packing(packing: Packing) -> Self {
        let packing_strategy = packing.strategy;
        Profile {
            filters: Filter::DEFAULT.to_vec(),
            scores: vec![
                (Score::Packing(packing), 1),
                (Score::NodeAffinity, 4),
                (Score::Taints, 3),
                // Least waste packs too; a spreading profile leaves it out.
                (
                    Score::LeastWaste(crate::plugins::waste::Waste::default()),
                    if packing_strategy == crate::plugins::packing::Strategy::MostAllocated {
                        2
                    } else {
                        0
                    },
                ),
                (Score::Numa, 1),
            ],
        }
    }
}

/// Anything the cycle can read nodes from: a snapshot, or a snapshot with a few nodes
/// replaced (a gang being placed pod by pod).
pub trait NodeSource: Sync {
    /// Number of slots.
    fn slots(&self) -> usize;
    /// The node in slot `i`, if any.
    fn get(&self, i: usize) -> Option<&NodeInfo>;
}

impl NodeSource for Snapshot {
    fn slots(&self) -> usize {
        Snapshot::slots(self)
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        self.slot(i).map(|n| &**n)
    }
}

/// A snapshot with some nodes replaced by local copies.
pub struct Overlay<'a> {
    base: &'a Snapshot,
    local: Vec<Option<Box<NodeInfo>>>,
}

impl<'a> Overlay<'a> {
    /// An overlay that changes nothing yet.
    pub fn new(base: &'a Snapshot) -> Self {
        Overlay {
            base,
            local: vec![None; base.slots()],
        }
    }

    /// Counts `pod` on the node in `slot` (a local copy of that node).
    pub fn place(&mut self, slot: usize, pod: Arc<PodInfo>) {
        let entry = &mut self.local[slot];
        if entry.is_none() {
            let base = self.base.slot(slot).expect("placing on an empty slot");
            *entry = Some(Box::new((**base).clone()));
        }
        entry.as_mut().expect("set above").add_pod(pod);
    }

    /// Takes the pod with `key` off the node in `slot` (a local copy of that node).
    pub fn remove(&mut self, slot: usize, key: &crate::model::PodKey) {
        let entry = &mut self.local[slot];
        if entry.is_none() {
            let Some(base) = self.base.slot(slot) else {
                return;
            };
            *entry = Some(Box::new((**base).clone()));
        }
        entry.as_mut().expect("set above").remove_pod(key);
    }
}

impl NodeSource for Overlay<'_> {
    fn slots(&self) -> usize {
        self.base.slots()
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        match self.local.get(i) {
            Some(Some(n)) => Some(n),
            _ => self.base.slot(i).map(|n| &**n),
        }
    }
}

/// Where a pod goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The node's slot in the snapshot.
    pub slot: usize,
    /// The node's name.
    pub node: Arc<str>,
    /// The winning total score.
    pub score: i64,
    /// How many nodes passed every filter.
    pub feasible: usize,
}

/// Why a pod fits nowhere: how many nodes were rejected for each reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Nodes evaluated.
    pub nodes: usize,
    /// Reason → number of nodes.
    pub reasons: BTreeMap<String, usize>,
}

impl Diagnosis {
    /// kube-scheduler's wording: `0/12 nodes are available: 4 node(s) had untolerated
    /// taint {gpu: true}, 8 Insufficient memory.`
    pub fn message(&self) -> String {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            if self.nodes == 0 {
                return "no nodes available to schedule pods".to_string();
            }
            return format!("0/{} nodes are available.", self.nodes);
        }
        format!(
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// The result of one cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod goes here.
    Placed(Placement),
    /// No node passed every filter.
    Unschedulable(Diagnosis),
}

/// True when some node of `nodes` passes every filter for `pod`.
pub fn feasible_anywhere<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> bool {
    (0..nodes.slots()).any(|i| nodes.get(i).is_some_and(|n| feasible(profile, pod, n)))
}

/// True when `node` passes every filter of `profile` for `pod`.
#[inline]
pub fn feasible(profile: &Profile, pod: &PodInfo, node: &NodeInfo) -> bool {
    node.known
        && profile
            .filters
            .iter()
            .all(|f| f.filter(pod, node, &mut |_| {}))
}

type Raw = (usize, [i64; MAX_SCORE_PLUGINS]);

fn evaluate_range<N: NodeSource + ?Sized>(
    profile: &Profile,
    active: &[bool; MAX_SCORE_PLUGINS],
    pod: &PodInfo,
    nodes: &N,
    range: std::ops::Range<usize>,
    out: &mut Vec<Raw>,
) {
    for i in range {
        let Some(node) = nodes.get(i) else { continue };
        if !feasible(profile, pod, node) {
            continue;
        }
        let mut raw = [0i64; MAX_SCORE_PLUGINS];
        for (k, (s, _)) in profile.scores.iter().enumerate() {
            if active[k] {
                raw[k] = s.score(pod, node);
            }
        }
        out.push((i, raw));
    }
}

/// Which score plugins can tell nodes apart for `pod`.
fn active_scores(profile: &Profile, pod: &PodInfo) -> [bool; MAX_SCORE_PLUGINS] {
    assert!(
        profile.scores.len() <= MAX_SCORE_PLUGINS,
        "too many score plugins in the profile"
    );
    let mut active = [false; MAX_SCORE_PLUGINS];
    for (k, (s, w)) in profile.scores.iter().enumerate() {
        active[k] = *w != 0 && !s.is_flat_for(pod);
    }
    active
}

/// Every feasible node with its raw scores per plugin, in slot order.
fn feasible_nodes<N: NodeSource + ?Sized>(
    profile: &Profile,
    active: &[bool; MAX_SCORE_PLUGINS],
    pod: &PodInfo,
    nodes: &N,
) -> Vec<Raw> {
    let active = *active;
    let slots = nodes.slots();
    if slots < PARALLEL_MIN_SLOTS {
        let mut out = Vec::with_capacity(slots);
        evaluate_range(profile, &active, pod, nodes, 0..slots, &mut out);
        return out;
    }
    // Chunks in parallel, each into its own vector, joined once in slot order.
    let parts: Vec<Vec<Raw>> = (0..slots.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut part = Vec::with_capacity(CHUNK);
            evaluate_range(
                profile,
                &active,
                pod,
                nodes,
                c * CHUNK..((c + 1) * CHUNK).min(slots),
                &mut part,
            );
            part
        })
        .collect();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        out.extend(p);
    }
    out
}

/// Normalizes and weighs the raw scores; returns the total per feasible node.
fn totals(profile: &Profile, raws: &[Raw]) -> Vec<i64> {
    let mut total = vec![0i64; raws.len()];
    let mut column = vec![0i64; raws.len()];
    for (k, (s, w)) in profile.scores.iter().enumerate() {
        if *w == 0 {
            continue;
        }
        for (c, r) in column.iter_mut().zip(raws) {
            *c = r.1[k];
        }
        s.normalize(&mut column);
        for (t, c) in total.iter_mut().zip(&column) {
            *t += c * w;
        }
    }
    total
}

/// Scores every feasible node: `(slot, total score)`, in slot order.
pub fn score_nodes<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> Vec<(usize, i64)> {
    let raws = feasible_nodes(profile, &active_scores(profile, pod), pod, nodes);
    let t = totals(profile, &raws);
    raws.iter().map(|r| r.0).zip(t).collect()
}

/// The filter and raw score results of one pod over a node source. Kept between
/// placements of identical pods (the members of a gang), so that each placement
/// re-evaluates only the node it changed instead of every node.
#[derive(Clone, Debug)]
pub struct Evaluation {
    active: [bool; MAX_SCORE_PLUGINS],
    raws: Vec<Raw>,
}

impl Evaluation {
    /// Filters and scores every node for `pod`.
    pub fn new<N: NodeSource + ?Sized>(profile: &Profile, pod: &PodInfo, nodes: &N) -> Self {
        let active = active_scores(profile, pod);
        let raws = feasible_nodes(profile, &active, pod, nodes);
        Evaluation { active, raws }
    }

    /// Re-evaluates the node in `slot` (it changed) for `pod`.
    pub fn refresh<N: NodeSource + ?Sized>(
        &mut self,
        profile: &Profile,
        pod: &PodInfo,
        nodes: &N,
        slot: usize,
    ) {
        let at = self.raws.binary_search_by_key(&slot, |r| r.0);
        let mut fresh = Vec::with_capacity(1);
        evaluate_range(
            profile,
            &self.active,
            pod,
            nodes,
            slot..slot + 1,
            &mut fresh,
        );
        match (at, fresh.pop()) {
            (Ok(i), Some(r)) => self.raws[i] = r,
            (Ok(i), None) => {
                self.raws.remove(i);
            }
            (Err(i), Some(r)) => self.raws.insert(i, r),
            (Err(_), None) => {}
        }
    }

    /// How many nodes pass every filter.
    pub fn feasible(&self) -> usize {
        self.raws.len()
    }

    /// The best node: the highest total; among equals, the first name.
    pub fn best<N: NodeSource + ?Sized>(&self, profile: &Profile, nodes: &N) -> Option<Placement> {
        let t = totals(profile, &self.raws);
        let top = t.iter().copied().max()?;
        let name = |s: usize| nodes.get(s).map_or("", |n| &*n.name);
        let (slot, score) = self
            .raws
            .iter()
            .zip(&t)
            .filter(|(_, t)| **t == top)
            .map(|(r, t)| (r.0, *t))
            .min_by(|(a, _), (b, _)| name(*a).cmp(name(*b)))?;
        Some(Placement {
            slot,
            node: nodes.get(slot).expect("scored node exists").name.clone(),
            score,
            feasible: self.raws.len(),
        })
    }
}

/// True when `a` and `b` ask the filters and scores the very same question, so one
/// [`Evaluation`] serves both.
pub fn same_shape(a: &PodInfo, b: &PodInfo) -> bool {
    a.requests == b.requests
        && a.declares_requests == b.declares_requests
        && a.priority == b.priority
        && a.key.namespace == b.key.namespace
        && a.node_name == b.node_name
        && a.node_selector == b.node_selector
        && a.required_affinity == b.required_affinity
        && a.preferred_affinity == b.preferred_affinity
        && a.tolerations == b.tolerations
        && a.host_ports == b.host_ports
        && a.daemonset == b.daemonset
        && a.exclusive == b.exclusive
        && a.gang.as_ref().map(|g| &g.name) == b.gang.as_ref().map(|g| &g.name)
        && a.gpu_memory_min_mib == b.gpu_memory_min_mib
}

/// Runs one scheduling cycle for `pod`. Ties go to the node whose name sorts first,
/// so the same input always gives the same answer.
pub fn schedule_one<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> Outcome {
    match Evaluation::new(profile, pod, nodes).best(profile, nodes) {
        Some(p) => Outcome::Placed(p),
        None => Outcome::Unschedulable(diagnose(profile, pod, nodes)),
    }
}

/// Why each node rejects `pod`: the reasons of the first failing filter of every node.
pub fn diagnose<N: NodeSource + ?Sized>(profile: &Profile, pod: &PodInfo, nodes: &N) -> Diagnosis {
    let mut d = Diagnosis::default();
    for i in 0..nodes.slots() {
        let Some(node) = nodes.get(i).filter(|n| n.known) else {
            continue;
        };
        d.nodes += 1;
        for f in &profile.filters {
            let mut reasons: Vec<Reason> = Vec::new();
            if !f.filter(pod, node, &mut |r| reasons.push(r)) {
                for r in reasons {
                    *d.reasons.entry(r.to_string()).or_default() += 1;
                }
                break;
            }
        }
    }
    d
}

/// Per-node rejection reasons for `pod` (for `explain` and the extender's
/// `FailedNodes`): node name → the first failing filter's reasons.
pub fn rejections<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> Vec<(Arc<str>, Vec<Reason>)> {
    let mut out = Vec::new();
    for i in 0..nodes.slots() {
        let Some(node) = nodes.get(i).filter(|n| n.known) else {
            continue;
        };
        for f in &profile.filters {
            let mut reasons = Vec::new();
            if !f.filter(pod, node, &mut |r| reasons.push(r)) {
                out.push((node.name.clone(), reasons));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::plugins::packing::Strategy;

    const GI: i64 = 1 << 30;

    fn pod(cpu: i64, mem: i64) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", "p"),
            uid: "u".into(),
            requests: Resources::cpu_mem(cpu, mem),
            ..Default::default()
        }
    }

    fn cluster(n: usize) -> Snapshot {
        Snapshot::from_nodes((0..n).map(|i| {
            let mut node =
                NodeInfo::new(&format!("n{i:04}"), Resources::cpu_mem(8000, 32 * GI), 110);
            if i % 3 == 0 {
                node.add_pod(Arc::new(PodInfo {
                    key: PodKey::new("x", &format!("b{i}")),
                    requests: Resources::cpu_mem(4000, 8 * GI),
                    ..Default::default()
                }));
            }
            if i % 5 == 0 {
                node.taints.push(Taint {
                    key: "dedicated".into(),
                    value: "gpu".into(),
                    effect: TaintEffect::NoSchedule,
                });
            }
            node
        }))
    }

    #[test]
    fn packs_onto_the_busiest_feasible_node() {
        let s = cluster(10);
        // n0003, n0006, n0009 are half full and untainted; n0000 is busy but tainted.
        let Outcome::Placed(p) = schedule_one(&Profile::default(), &pod(1000, GI), &s) else {
            panic!()
        };
        assert_eq!(&*p.node, "n0003", "ties go to the first name");
        assert_eq!(p.feasible, 8);
        let spread = Profile::with_packing(Packing {
            strategy: Strategy::LeastAllocated,
            ..Packing::default()
        });
        let Outcome::Placed(p) = schedule_one(&spread, &pod(1000, GI), &s) else {
            panic!()
        };
        assert_eq!(&*p.node, "n0001");
    }

    #[test]
    fn parallel_and_sequential_agree() {
        let big = cluster(2000);
        let scored = score_nodes(&Profile::default(), &pod(1000, GI), &big);
        let slots: Vec<usize> = scored.iter().map(|s| s.0).collect();
        let mut sorted = slots.clone();
        sorted.sort();
        assert_eq!(slots, sorted, "results come back in slot order");
        assert_eq!(scored.len(), 2000 - 400, "every untainted node is feasible");
        let Outcome::Placed(p) = schedule_one(&Profile::default(), &pod(1000, GI), &big) else {
            panic!()
        };
        assert_eq!(&*p.node, "n0003");
    }

    #[test]
    fn diagnosis_reads_like_kube_scheduler() {
        let s = cluster(12);
        // n0000, n0005, n0010 are tainted (the taint filter runs before fit); the
        // other nine have at most 8000m free.
        let out = schedule_one(&Profile::default(), &pod(9000, GI), &s);
        let Outcome::Unschedulable(d) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            d.message(),
            "0/12 nodes are available: 3 node(s) had untolerated taint {dedicated: gpu}, 9 Insufficient cpu."
        );
        assert_eq!(
            diagnose(&Profile::default(), &pod(1, 1), &Snapshot::default()).message(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn overlay_counts_placed_pods() {
        let s = Snapshot::from_nodes([NodeInfo::new("a", Resources::cpu_mem(2000, GI), 110)]);
        let mut o = Overlay::new(&s);
        let p = Arc::new(pod(1500, 0));
        assert!(matches!(
            schedule_one(&Profile::default(), &p, &o),
            Outcome::Placed(_)
        ));
        o.place(0, p.clone());
        assert!(matches!(
            schedule_one(&Profile::default(), &p, &o),
            Outcome::Unschedulable(_)
        ));
        assert_eq!(
            s.node("a").unwrap().requested.cpu,
            0,
            "the snapshot is untouched"
        );
    }

    #[test]
    fn a_preferred_node_affinity_beats_packing() {
        // A nearly full small node outside the preferred zone (a tight fit: packing and
        // least waste both like it) and an idle large node inside it.
        let mut tight = NodeInfo::new("tight", Resources::cpu_mem(8000, 32 * GI), 110);
        tight.labels = Labels::new([("zone", "a")]);
        tight.add_pod(Arc::new(PodInfo {
            key: PodKey::new("x", "filler"),
            requests: Resources::cpu_mem(7000, 31 * GI),
            ..Default::default()
        }));
        let mut roomy = NodeInfo::new("roomy", Resources::cpu_mem(32000, 128 * GI), 110);
        roomy.labels = Labels::new([("zone", "c")]);
        let s = Snapshot::from_nodes([tight, roomy]);
        let mut p = pod(1000, GI);
        p.preferred_affinity = vec![(
            50,
            SelectorTerm(vec![Requirement {
                key: "zone".into(),
                op: SelectorOp::In,
                values: vec!["c".into()],
                bound: 0,
                field: false,
            }]),
        )];
        let Outcome::Placed(placed) = schedule_one(&Profile::default(), &p, &s) else {
            panic!()
        };
        assert_eq!(&*placed.node, "roomy", "the user's preference wins");
        // Without the preference, packing takes the tight node.
        let Outcome::Placed(placed) = schedule_one(&Profile::default(), &pod(1000, GI), &s) else {
            panic!()
        };
        assert_eq!(&*placed.node, "tight");
    }
}
