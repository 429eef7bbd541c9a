//! The scheduling cycle for one pod over a snapshot: run every filter on every node,
//! score the feasible ones, pick the best. No sampling: every node is evaluated.
//!
//! The hot path reads an immutable [`NodeSource`] without locks: on a snapshot, each
//! chunk's rows of numbers (see [`Row`]), and a node itself only where its row does not
//! say enough. Large snapshots are split by chunk between the threads of the scoring
//! pool (rayon; see [`crate::pool`] for why a cycle should start on a pool thread). A
//! cycle allocates the list of feasible nodes and little else, and builds rejection
//! reasons only when the pod fits nowhere, in a second pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use rayon::prelude::*;

use crate::classes::ClassId;
use crate::model::Labels;
use crate::model::{NodeInfo, PodInfo, Resources, Row};
use crate::plugins::{
    CycleState, Filter, Norm, Reason, Score, ScoreFor, fit::FitRow, packing::Packing,
};
use crate::snapshot::{CHUNK, Chunk, Snapshot};

/// Below this many slots the cycle filters and scores on the calling thread alone:
/// splitting the work costs more than it saves. Measured on two cpus with the cycle
/// started on a scoring pool thread (`cargo bench -p drover-bench --bench hot_path`):
/// 3000 nodes take 49 µs alone and about 60 µs split, 5000 nodes 83 µs alone and about
/// 60 µs split.
const PARALLEL_MIN_SLOTS: usize = 3072;

/// Most score plugins with a raw-score column a profile may have (every one but
/// [`Score::InterPodAffinity`] and [`Score::TopologySpread`], which are worked out
/// after filtering, over the feasible nodes, and may come after them).
pub const MAX_SCORE_PLUGINS: usize = 5;

/// True when the score keeps a raw-score column in a cycle. The two that read other
/// pods do not: a pod without terms or constraints pays nothing for them node by node.
fn has_column(s: &Score) -> bool {
    !matches!(s, Score::TopologySpread | Score::InterPodAffinity)
}

/// The filters and weighted scores one scheduling profile runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Filters, in order; a node fails at its first failing filter.
    pub filters: Vec<Filter>,
    /// Scores with their weights.
    pub scores: Vec<(Score, i64)>,
    /// Cluster default topology spread constraints, for pods with none of their own
    /// (counting the pods of their controller; see [`crate::plugins::spread`]). None
    /// by default: drover packs.
    pub spread_defaults: Vec<crate::model::SpreadConstraint>,
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
                // kube-scheduler's weights.
                (Score::InterPodAffinity, 2),
                (Score::TopologySpread, 2),
            ],
            spread_defaults: Vec::new(),
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
    /// The node in slot `i` with its [`Row`]: read from the slot's chunk when the
    /// source has one, else made from the node.
    #[inline]
    fn get_with_row(&self, i: usize) -> Option<(&NodeInfo, Row)> {
        match self.chunk(i / CHUNK) {
            Some(chunk) => {
                let node = chunk.node(i % CHUNK)?;
                Some((node, chunk.rows()[i % CHUNK]))
            }
            None => self.get(i).map(|n| (n, n.row())),
        }
    }
    /// One more than the highest node class id of its nodes (see [`crate::classes`]);
    /// 0 when they carry none.
    fn classes(&self) -> usize {
        0
    }
    /// False only when no node carries NUMA zones.
    fn may_have_numa(&self) -> bool {
        true
    }
    /// The chunk that holds slots `c * CHUNK..(c + 1) * CHUNK`, when the source's slots
    /// are a snapshot's (their rows are then read from it instead of made node by
    /// node).
    fn chunk(&self, _c: usize) -> Option<&Chunk> {
        None
    }
    /// False only when no node runs a pod with inter-pod affinity or anti-affinity
    /// terms (then only the pod's own terms are counted).
    fn may_have_pod_affinity(&self) -> bool {
        true
    }
    /// The labels of namespace `name`, for terms' `namespaceSelector`s.
    fn namespace_labels(&self, _name: &str) -> Option<&Labels> {
        None
    }
    /// The claims, volumes, classes and CSI nodes of the cluster, when known.
    fn volumes(&self) -> Option<&Arc<crate::model::Volumes>> {
        None
    }
    /// Calls `f` on every node (with its row) of the cluster the source shows: a view
    /// of some of a snapshot's nodes still counts the pods of all of them for terms
    /// whose domains reach past the view.
    fn visit_all(&self, f: &mut dyn FnMut(&NodeInfo, Row)) {
        for i in 0..self.slots() {
            if let Some((n, row)) = self.get_with_row(i) {
                f(n, row);
            }
        }
    }
}

impl NodeSource for Snapshot {
    fn slots(&self) -> usize {
        Snapshot::slots(self)
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        self.slot(i).map(|n| &**n)
    }
    fn classes(&self) -> usize {
        Snapshot::classes(self)
    }
    fn may_have_numa(&self) -> bool {
        Snapshot::may_have_numa(self)
    }
    #[inline]
    fn chunk(&self, c: usize) -> Option<&Chunk> {
        self.chunks().get(c).map(|c| &**c)
    }
    fn may_have_pod_affinity(&self) -> bool {
        Snapshot::may_have_pod_affinity(self)
    }
    fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        Snapshot::namespace_labels(self, name)
    }
    fn volumes(&self) -> Option<&Arc<crate::model::Volumes>> {
        Some(Snapshot::volumes(self))
    }
}

/// A snapshot with some nodes replaced by local copies: the chunks of changed nodes
/// are copied (copy on write, as the cache does), the others shared with the snapshot.
pub struct Overlay<'a> {
    base: &'a Snapshot,
    chunks: Vec<Arc<Chunk>>,
    /// The base's volumes with the volumes promised to the pods placed here, once any
    /// placed pod has a claim that waits for its node.
    volumes: Option<Arc<crate::model::Volumes>>,
}

impl<'a> Overlay<'a> {
    /// An overlay that changes nothing yet.
    pub fn new(base: &'a Snapshot) -> Self {
        Overlay {
            base,
            chunks: base.chunks().to_vec(),
            volumes: None,
        }
    }

    /// Counts `pod` on the node in `slot` (a local copy of that node). The volumes its
    /// waiting claims would bind there are promised to it, so the pods placed after it
    /// are not offered them (the engine binds a gang's members in the same order, so it
    /// chooses the same volumes).
    pub fn place(&mut self, slot: usize, pod: Arc<PodInfo>) {
        assert!(self.get(slot).is_some(), "placing on an empty slot");
        if pod.claims.is_some() {
            let choices = self.get(slot).and_then(|node| {
                crate::plugins::volume::State::new(&pod, self.volumes(), &mut |_| false)?
                    .choose(&pod, node)
                    .ok()
            });
            if let Some(choices) = choices.filter(|c| !c.is_empty()) {
                // Copied from the base once; the members placed after change it in place.
                let base = self.base;
                let store =
                    Arc::make_mut(self.volumes.get_or_insert_with(|| base.volumes().clone()));
                for c in &choices {
                    if let crate::model::VolumeChoice::Bind { claim, volume, .. } = c {
                        store.assumed.insert(volume.clone(), claim.clone());
                    }
                }
            }
        }
        Arc::make_mut(&mut self.chunks[slot / CHUNK]).update(slot % CHUNK, |n| n.add_pod(pod));
    }

    /// Takes the pod with `key` off the node in `slot` (a local copy of that node).
    pub fn remove(&mut self, slot: usize, key: &crate::model::PodKey) {
        if self.get(slot).is_some() {
            Arc::make_mut(&mut self.chunks[slot / CHUNK]).update(slot % CHUNK, |n| {
                n.remove_pod(key);
            });
        }
    }
}

impl NodeSource for Overlay<'_> {
    fn slots(&self) -> usize {
        self.base.slots()
    }
    #[inline]
    fn get(&self, i: usize) -> Option<&NodeInfo> {
        self.chunks.get(i / CHUNK)?.node(i % CHUNK).map(|n| &**n)
    }
    fn classes(&self) -> usize {
        self.base.classes()
    }
    fn may_have_numa(&self) -> bool {
        self.base.may_have_numa()
    }
    #[inline]
    fn chunk(&self, c: usize) -> Option<&Chunk> {
        self.chunks.get(c).map(|c| &**c)
    }
    fn may_have_pod_affinity(&self) -> bool {
        self.chunks.iter().any(|c| c.flags() & Row::AFFINITY != 0)
    }
    fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.base.namespace_labels(name)
    }
    fn volumes(&self) -> Option<&Arc<crate::model::Volumes>> {
        Some(self.volumes.as_ref().unwrap_or(self.base.volumes()))
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

/// One resource as [`Resources`] prints it (`cpu=1k`, `memory=512Gi`).
fn one(kind: &crate::model::ResourceKind, v: i64) -> String {
    let mut r = Resources::default();
    r.set(kind, v);
    r.to_string()
}

/// Why `pod` could never fit any node of `nodes`, even an empty one: the first
/// resource it requests beyond every node's allocatable, with the largest node.
pub fn beyond_every_node<N: NodeSource + ?Sized>(pod: &PodInfo, nodes: &N) -> Option<String> {
    for (kind, want) in pod.requests.iter() {
        if want <= 0 {
            continue;
        }
        let mut largest: Option<(&NodeInfo, i64)> = None;
        for i in 0..nodes.slots() {
            if let Some(n) = nodes.get(i).filter(|n| n.known) {
                let have = n.allocatable.get(&kind);
                if largest.is_none_or(|(_, h)| have > h) {
                    largest = Some((n, have));
                }
            }
        }
        let (node, have) = largest?;
        if want > have {
            return Some(format!(
                "No current node could fit it even empty: it requests {}, and the largest node ({}) has {} allocatable.",
                one(&kind, want),
                node.name,
                one(&kind, have),
            ));
        }
    }
    None
}

/// Why `members` could never run at once on all of `nodes` together, even empty:
/// the first resource their requests add up to beyond the whole cluster's
/// allocatable.
pub fn beyond_the_cluster<N: NodeSource + ?Sized>(
    members: &[Arc<PodInfo>],
    nodes: &N,
) -> Option<String> {
    let mut want = Resources::default();
    for m in members {
        want.add(&m.requests);
    }
    let mut have = Resources::default();
    let mut count = 0;
    for i in 0..nodes.slots() {
        if let Some(n) = nodes.get(i).filter(|n| n.known) {
            have.add(&n.allocatable);
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    want.iter().find(|(k, v)| *v > have.get(k)).map(|(k, v)| {
        format!(
            "the current nodes could not hold it even empty: its {} pods request {}, and all {} nodes together have {} allocatable",
            members.len(),
            one(&k, v),
            count,
            one(&k, have.get(&k)),
        )
    })
}

/// True when some node of `nodes` passes every filter for `pod`.
pub fn feasible_anywhere<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> bool {
    let cx = CycleState::new(profile, pod, nodes);
    (0..nodes.slots()).any(|i| nodes.get(i).is_some_and(|n| feasible(profile, &cx, pod, n)))
}

/// True when `node` passes every filter of `profile` for `pod`; `cx` is what was
/// counted for `pod` over the nodes `node` is one of ([`CycleState::new`]).
#[inline]
pub fn feasible(profile: &Profile, cx: &CycleState, pod: &PodInfo, node: &NodeInfo) -> bool {
    node.known
        && profile
            .filters
            .iter()
            .all(|f| f.filter(cx, pod, node, &mut |_| {}))
}

/// A feasible node: its slot, its class, and its raw score per plugin (the columns of
/// scores the plan leaves out stay 0).
#[derive(Clone, Copy, Debug)]
struct Scored {
    slot: usize,
    class: ClassId,
    raw: [i64; MAX_SCORE_PLUGINS],
}

/// What a class's memo cell says.
const UNKNOWN: u8 = 0;
const PASSES: u8 = 1;
const FAILS: u8 = 2;

/// The answers of the class-wide plugins for one pod, per node class (see
/// [`crate::classes`]): filled by the first node of each class that the cycle meets,
/// read by the others. Threads racing on a cell compute the same answer, so the cells
/// need no lock; the verdict is published after the scores it guards.
#[derive(Debug, Default)]
struct ClassMemo {
    verdicts: Box<[AtomicU8]>,
    /// `verdicts.len() * MAX_SCORE_PLUGINS` raw scores.
    scores: Box<[AtomicI64]>,
}

impl ClassMemo {
    fn new(classes: usize) -> Self {
        ClassMemo {
            verdicts: (0..classes).map(|_| AtomicU8::new(UNKNOWN)).collect(),
            scores: (0..classes * MAX_SCORE_PLUGINS)
                .map(|_| AtomicI64::new(0))
                .collect(),
        }
    }

    /// The raw score in column `k` of class `c` (valid once its verdict is
    /// [`PASSES`]).
    #[inline(always)]
    fn score(&self, c: usize, k: usize) -> &AtomicI64 {
        &self.scores[c * MAX_SCORE_PLUGINS + k]
    }
}

/// How one cycle evaluates a pod: which filters and scores are answered once per node
/// class, which node by node; filters that pass every node and scores that cannot tell
/// nodes apart are left out. The common filters and scores (fit, exclusive, packing,
/// least waste) read a node's [`Row`], and the node itself only when the row does not
/// hold what they need.
#[derive(Clone, Debug)]
struct Plan {
    /// The filters answered per class.
    class_filters: Vec<Filter>,
    /// The filters answered node by node (but fit and exclusive).
    node_filters: Vec<Filter>,
    /// `NodeResourcesFit` is among the filters; `Some(None)` when the pod requests an
    /// extended resource (the node is read, not only its row).
    fit: Option<Option<FitRow>>,
    /// The row flags that reject a node (`NodeExclusive`, when among the filters).
    reject: u32,
    /// Every filter and score but the class-wide ones reads only rows: the cycle runs
    /// [`evaluate_rows`] over the chunks of a snapshot.
    rows_only: bool,
    /// The scores answered per class, prepared for the pod, with their columns
    /// (indices into the profile's scores).
    class_scores: Vec<(usize, ScoreFor)>,
    /// The scores answered node by node (but the two below), prepared, with their
    /// columns.
    node_scores: Vec<(usize, ScoreFor)>,
    /// The first packing score with its column.
    packing: Option<(usize, crate::plugins::packing::PackingFor)>,
    /// The first least-waste score with its column.
    waste: Option<(usize, crate::plugins::waste::WasteFor)>,
    /// Empty when nothing is answered per class.
    memo: Arc<ClassMemo>,
    /// The weight of the `PodTopologySpread` score, when it scores the pod.
    spread: Option<i64>,
    /// The weight of the `InterPodAffinity` score, when it scores the pod.
    inter_pod: Option<i64>,
    /// The pod's own `ScheduleAnyway` spread constraints outrank packing: the packing
    /// and least-waste scores only break ties between the totals of the others.
    spread_outranks_packing: bool,
    /// What was counted over every node for the pod.
    cx: CycleState,
}

impl Plan {
    fn new<N: NodeSource + ?Sized>(profile: &Profile, pod: &PodInfo, nodes: &N) -> Self {
        assert!(
            profile
                .scores
                .iter()
                .enumerate()
                .all(|(k, (s, _))| k < MAX_SCORE_PLUGINS || !has_column(s)),
            "too many score plugins in the profile"
        );
        // Without NUMA zones anywhere, every node counts as one zone: the NUMA filter
        // passes it and the NUMA score is the same on all (a column left at 0 totals
        // as a column of equal scores does).
        let numa = nodes.may_have_numa();
        let cx = CycleState::new(profile, pod, nodes);
        let (class_scores, mut node_scores): (Vec<_>, Vec<_>) = profile
            .scores
            .iter()
            .enumerate()
            .filter(|(_, (s, w))| {
                *w != 0
                    && has_column(s)
                    && !s.is_flat_for(pod, &cx)
                    && (numa || !matches!(s, Score::Numa))
            })
            .map(|(k, (s, _))| (k, s.prepare(&cx, pod)))
            .partition(|(k, _)| profile.scores[*k].0.class_wide(pod));
        let (class_filters, mut node_filters): (Vec<Filter>, Vec<Filter>) = profile
            .filters
            .iter()
            .filter(|f| !f.passes_everywhere(pod, &cx) && (numa || **f != Filter::Numa))
            .cloned()
            .partition(|f| f.class_wide(pod));
        // Fit and exclusive read rows; a node must pass every filter, so their order
        // does not matter here (only `diagnose` keeps it).
        let fit = node_filters
            .contains(&Filter::Fit)
            .then(|| FitRow::new(pod));
        node_filters.retain(|f| *f != Filter::Fit);
        let reject = node_filters
            .iter()
            .position(|f| matches!(f, Filter::Exclusive { .. }))
            .map_or(0, |i| match node_filters.remove(i) {
                Filter::Exclusive { system_pods_count } => {
                    crate::plugins::exclusive::rejecting_flags(pod, system_pods_count)
                }
                _ => unreachable!("found above"),
            });
        let mut packing = None;
        let mut waste = None;
        node_scores.retain(|(k, s)| match s {
            ScoreFor::Packing(p) if packing.is_none() => {
                packing = Some((*k, p.clone()));
                false
            }
            ScoreFor::LeastWaste(w) if waste.is_none() => {
                waste = Some((*k, w.clone()));
                false
            }
            _ => true,
        });
        let rows_only = node_filters.is_empty()
            && node_scores.is_empty()
            && fit.as_ref().is_none_or(Option::is_some)
            && packing.as_ref().is_none_or(|(_, p)| !p.needs_node())
            && waste.as_ref().is_none_or(|(_, w)| !w.needs_node());
        let weight_of = |score: fn(&Score) -> bool| {
            profile
                .scores
                .iter()
                .find(|(s, w)| *w != 0 && score(s) && !s.is_flat_for(pod, &cx))
                .map(|(_, w)| *w)
        };
        let spread = weight_of(|s| matches!(s, Score::TopologySpread));
        let inter_pod = weight_of(|s| matches!(s, Score::InterPodAffinity));
        let memo = if class_filters.is_empty() && class_scores.is_empty() {
            ClassMemo::default()
        } else {
            ClassMemo::new(nodes.classes())
        };
        Plan {
            class_filters,
            node_filters,
            fit,
            reject,
            rows_only,
            class_scores,
            node_scores,
            packing,
            waste,
            memo: Arc::new(memo),
            spread_outranks_packing: spread.is_some()
                && pod
                    .topology_spread
                    .as_ref()
                    .is_some_and(|cs| cs.iter().any(|c| !c.hard)),
            spread,
            inter_pod,
            cx,
        }
    }

    /// The columns of the scores the plan computes (the others stay 0).
    #[cfg(test)]
    fn active(&self, k: usize) -> bool {
        self.class_scores
            .iter()
            .chain(&self.node_scores)
            .any(|(c, _)| *c == k)
            || self.packing.as_ref().is_some_and(|(c, _)| *c == k)
            || self.waste.as_ref().is_some_and(|(c, _)| *c == k)
    }

    /// The class-wide filters and scores on `node`, scores written into `raw`: false
    /// when a filter fails.
    #[inline]
    fn class_part(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        raw: &mut [i64; MAX_SCORE_PLUGINS],
    ) -> bool {
        if !self
            .class_filters
            .iter()
            .all(|f| f.filter(&self.cx, pod, node, &mut |_| {}))
        {
            return false;
        }
        for (k, s) in &self.class_scores {
            raw[*k] = s.score(pod, node);
        }
        true
    }

    /// The class-wide part for `node` of class `class`, from the class's memo cell when
    /// the node has a class (filling the cell if it is the first of its class).
    #[inline(always)]
    fn class_part_memo(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        class: ClassId,
        raw: &mut [i64; MAX_SCORE_PLUGINS],
    ) -> bool {
        let Some(c) = class.index().filter(|&c| c < self.memo.verdicts.len()) else {
            return self.class_part(pod, node, raw);
        };
        match self.memo.verdicts[c].load(Ordering::Acquire) {
            PASSES => {
                for (k, _) in &self.class_scores {
                    raw[*k] = self.memo.score(c, *k).load(Ordering::Relaxed);
                }
                true
            }
            FAILS => false,
            _ => {
                let passes = self.class_part(pod, node, raw);
                if passes {
                    for (k, _) in &self.class_scores {
                        self.memo.score(c, *k).store(raw[*k], Ordering::Relaxed);
                    }
                }
                let verdict = if passes { PASSES } else { FAILS };
                self.memo.verdicts[c].store(verdict, Ordering::Release);
                passes
            }
        }
    }

    /// Every filter and active score of `node`, whose row is `row`, scores written
    /// into `raw` (columns of inactive scores are left as they are): false when a
    /// filter fails.
    #[inline]
    fn evaluate_into(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        row: &Row,
        raw: &mut [i64; MAX_SCORE_PLUGINS],
    ) -> bool {
        if !row.has(Row::KNOWN) || !self.class_part_memo(pod, node, row.class, raw) {
            return false;
        }
        if let Some(fit) = &self.fit {
            // A reservation's backfill rule and extended resources are read from the
            // node.
            let fits = match fit {
                Some(fit) if !row.has(Row::RESERVED) => fit.fits(row),
                _ => crate::plugins::fit::filter(pod, node, &mut |_| {}),
            };
            if !fits {
                return false;
            }
        }
        if row.flags & self.reject != 0 {
            return false;
        }
        if !self
            .node_filters
            .iter()
            .all(|f| f.filter(&self.cx, pod, node, &mut |_| {}))
        {
            return false;
        }
        if let Some((k, p)) = &self.packing {
            raw[*k] = if p.needs_node() {
                p.score(node)
            } else {
                p.score_row(row)
            };
        }
        if let Some((k, w)) = &self.waste {
            raw[*k] = if w.needs_node() {
                w.waste(node)
            } else {
                w.waste_row(row)
            };
        }
        for (k, s) in &self.node_scores {
            raw[*k] = s.score(pod, node);
        }
        true
    }

    /// `node` in `slot`, whose row is `row`, with its raw scores, when it passes every
    /// filter.
    fn evaluate(&self, pod: &PodInfo, slot: usize, node: &NodeInfo, row: &Row) -> Option<Scored> {
        let mut raw = [0; MAX_SCORE_PLUGINS];
        self.evaluate_into(pod, node, row, &mut raw)
            .then_some(Scored {
                slot,
                class: row.class,
                raw,
            })
    }
}

/// Pushes `node` (in `slot`, with row `row`) onto `out` with its raw scores when it
/// passes every filter.
#[inline(always)]
fn push_feasible(
    plan: &Plan,
    pod: &PodInfo,
    slot: usize,
    node: &NodeInfo,
    row: &Row,
    out: &mut Vec<Scored>,
) {
    // Scores are written where they are kept: a copy of scores just stored stalls on
    // store forwarding.
    out.push(Scored {
        slot,
        class: row.class,
        raw: [0; MAX_SCORE_PLUGINS],
    });
    let raw = &mut out.last_mut().expect("pushed above").raw;
    if !plan.evaluate_into(pod, node, row, raw) {
        out.pop();
    }
}

/// The loop over a chunk's rows for a plan that reads rows only (and, for the first
/// node of each class, the class-wide part): no dispatch per plugin, and no pointer to
/// a node followed but for the class part and a reservation.
#[inline(always)]
fn evaluate_rows(plan: &Plan, pod: &PodInfo, chunk: &Chunk, first: usize, out: &mut Vec<Scored>) {
    let fit = plan.fit.as_ref().and_then(Option::as_ref);
    let look = Row::KNOWN | Row::RESERVED | plan.reject;
    for (j, (row, node)) in chunk.rows().iter().zip(chunk.nodes()).enumerate() {
        let Some(node) = node else { continue };
        let flags = row.flags & look;
        if flags != Row::KNOWN {
            // A placeholder, a node its flags reject, or a reservation whose backfill
            // rule reads the node.
            if flags & (Row::KNOWN | plan.reject) == Row::KNOWN {
                push_feasible(plan, pod, first + j, node, row, out);
            }
            continue;
        }
        if fit.is_some_and(|f| !f.fits(row)) {
            continue;
        }
        out.push(Scored {
            slot: first + j,
            class: row.class,
            raw: [0; MAX_SCORE_PLUGINS],
        });
        let raw = &mut out.last_mut().expect("pushed above").raw;
        if !plan.class_part_memo(pod, node, row.class, raw) {
            out.pop();
            continue;
        }
        if let Some((k, p)) = &plan.packing {
            raw[*k] = p.score_row(row);
        }
        if let Some((k, w)) = &plan.waste {
            raw[*k] = w.waste_row(row);
        }
    }
}

/// The feasible nodes among slots `c * CHUNK..` of `nodes`: by [`evaluate_rows`] when
/// the plan reads rows only and the source has the chunk, else node by node (each with
/// its row, from the chunk when there is one).
fn evaluate_chunk<N: NodeSource + ?Sized>(
    plan: &Plan,
    pod: &PodInfo,
    nodes: &N,
    c: usize,
    out: &mut Vec<Scored>,
) {
    let first = c * CHUNK;
    if plan.rows_only
        && let Some(chunk) = nodes.chunk(c)
    {
        return evaluate_rows(plan, pod, chunk, first, out);
    }
    for i in first..(first + CHUNK).min(nodes.slots()) {
        if let Some((node, row)) = nodes.get_with_row(i) {
            push_feasible(plan, pod, i, node, &row, out);
        }
    }
}

/// Below this many feasible nodes, the best one is found on the calling thread (the
/// same measurements as [`PARALLEL_MIN_SLOTS`]).
const PARALLEL_MIN_FEASIBLE: usize = 1024;

/// Every feasible node with its raw scores per plugin: one part per [`CHUNK`] slots
/// (part `c` holds the feasible slots of `c * CHUNK..(c + 1) * CHUNK`, in order), and
/// the ranges of those scores, found in the same pass.
fn feasible_nodes<N: NodeSource + ?Sized>(
    plan: &Plan,
    pod: &PodInfo,
    nodes: &N,
) -> (Vec<Vec<Scored>>, Ranges) {
    let slots = nodes.slots();
    let part = |c: usize| {
        let mut part = Vec::with_capacity(CHUNK);
        evaluate_chunk(plan, pod, nodes, c, &mut part);
        let ranges = ranges_of(std::slice::from_ref(&part));
        (part, ranges)
    };
    let parts: Vec<(Vec<Scored>, Ranges)> = if slots < PARALLEL_MIN_SLOTS {
        (0..slots.div_ceil(CHUNK)).map(part).collect()
    } else {
        (0..slots.div_ceil(CHUNK))
            .into_par_iter()
            .map(part)
            .collect()
    };
    let ranges = parts.iter().fold(None, |acc, (_, r)| join(acc, *r));
    (parts.into_iter().map(|(p, _)| p).collect(), ranges)
}

/// The least and greatest raw score per column over some feasible nodes (`None`: no
/// node).
type Ranges = Option<[(i64, i64); MAX_SCORE_PLUGINS]>;

/// The ranges of two sets of nodes together.
fn join(a: Ranges, b: Ranges) -> Ranges {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            for (x, y) in a.iter_mut().zip(b) {
                *x = (x.0.min(y.0), x.1.max(y.1));
            }
            Some(a)
        }
        (a, None) => a,
        (None, b) => b,
    }
}

/// The ranges of the feasible nodes in `parts`.
fn ranges_of(parts: &[Vec<Scored>]) -> Ranges {
    let mut r = [(i64::MAX, i64::MIN); MAX_SCORE_PLUGINS];
    let mut any = false;
    for s in parts.iter().flatten() {
        any = true;
        for (r, v) in r.iter_mut().zip(s.raw) {
            *r = (r.0.min(v), r.1.max(v));
        }
    }
    any.then_some(r)
}

/// A weighted score that differs between the feasible nodes: its column, its
/// normalization over them, its weight.
type Varying = (usize, Norm, i64);

/// How to total a node's raw scores over one set of feasible nodes: the normalization
/// of each weighted score that differs between them, and the weighted sum of those
/// that do not (a score all nodes share normalizes to one value: it is added once).
/// The class-wide scores of a node of a class are the class's: their weighted sum is
/// worked out once per class.
#[derive(Clone, Debug)]
struct Totals {
    /// The weighted sum of the scores every feasible node shares.
    constant: i64,
    /// The scores answered node by node that differ.
    node: Vec<Varying>,
    /// The scores answered per class that differ.
    class: Vec<Varying>,
    /// The weighted sum of `class` for each class whose memo cell passes (by class id).
    by_class: Vec<i64>,
    /// The weighted `PodTopologySpread` and `InterPodAffinity` scores by slot (empty when
    /// neither scores the pod).
    by_slot: Vec<i64>,
    /// When the pod's own spread constraints outrank packing: the packing and
    /// least-waste scores that differ, the weighted sum of those that do not, and the
    /// factor that lifts the other scores' total above the greatest tie-break.
    tie: Vec<Varying>,
    tie_constant: i64,
    lift: i64,
}

impl Totals {
    /// The totalling of feasible nodes whose raw scores span `ranges`.
    fn new(profile: &Profile, plan: &Plan, ranges: Ranges, by_slot: Vec<i64>) -> Self {
        let mut t = Totals {
            constant: 0,
            node: Vec::new(),
            class: Vec::new(),
            by_class: Vec::new(),
            by_slot,
            tie: Vec::new(),
            tie_constant: 0,
            lift: 1,
        };
        for (k, (s, w)) in profile.scores.iter().enumerate() {
            if *w == 0 || !has_column(s) {
                continue;
            }
            let (min, max) = ranges.map_or((0, 0), |r| r[k]);
            let norm = s.norm(min, max);
            if plan.spread_outranks_packing && matches!(s, Score::Packing(_) | Score::LeastWaste(_))
            {
                t.lift += w * crate::plugins::MAX_SCORE;
                if min == max {
                    t.tie_constant += norm.apply(min) * w;
                } else {
                    t.tie.push((k, norm, *w));
                }
            } else if min == max {
                t.constant += norm.apply(min) * w;
            } else if plan.class_scores.iter().any(|(c, _)| *c == k) {
                t.class.push((k, norm, *w));
            } else {
                t.node.push((k, norm, *w));
            }
        }
        if !t.class.is_empty() {
            let memo = &plan.memo;
            t.by_class = (0..memo.verdicts.len())
                .map(|c| {
                    if memo.verdicts[c].load(Ordering::Acquire) != PASSES {
                        return 0;
                    }
                    sum(&t.class, |k| memo.score(c, k).load(Ordering::Relaxed))
                })
                .collect();
        }
        t
    }

    /// The weighted total of one node's raw scores.
    #[inline]
    fn of(&self, s: &Scored) -> i64 {
        let mut t = self.constant + sum(&self.node, |k| s.raw[k]);
        if !self.by_slot.is_empty() {
            t += self.by_slot[s.slot];
        }
        if !self.class.is_empty() {
            // A node's class answered for it exactly when the class is in the memo.
            t += match s.class.index().and_then(|c| self.by_class.get(c)) {
                Some(v) => *v,
                None => sum(&self.class, |k| s.raw[k]),
            };
        }
        if self.lift > 1 {
            t = t * self.lift + self.tie_constant + sum(&self.tie, |k| s.raw[k]);
        }
        t
    }
}

/// The weighted sum of the normalized scores of `columns`, raw scores read by `raw`.
#[inline]
fn sum(columns: &[Varying], raw: impl Fn(usize) -> i64) -> i64 {
    columns
        .iter()
        .map(|(k, norm, w)| norm.apply(raw(*k)) * w)
        .sum()
}

/// Scores every feasible node: `(slot, total score)`, in slot order.
pub fn score_nodes<N: NodeSource + ?Sized>(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &N,
) -> Vec<(usize, i64)> {
    Evaluation::new(profile, pod, nodes).totals(profile, nodes)
}

/// The filter and raw score results of one pod over a node source. Kept between
/// placements of identical pods (the members of a gang), so that each placement
/// re-evaluates only the node it changed instead of every node.
#[derive(Clone, Debug)]
pub struct Evaluation {
    plan: Plan,
    /// The feasible nodes, one part per chunk of slots (see `feasible_nodes`).
    parts: Vec<Vec<Scored>>,
    feasible: usize,
    /// The ranges of the raw scores; `None` once a refresh may have changed them.
    ranges: Option<Ranges>,
}

impl Evaluation {
    /// Filters and scores every node for `pod`.
    pub fn new<N: NodeSource + ?Sized>(profile: &Profile, pod: &PodInfo, nodes: &N) -> Self {
        let plan = Plan::new(profile, pod, nodes);
        let (parts, ranges) = feasible_nodes(&plan, pod, nodes);
        let feasible = parts.iter().map(Vec::len).sum();
        Evaluation {
            plan,
            parts,
            feasible,
            ranges: Some(ranges),
        }
    }

    /// Re-evaluates the node in `slot` (it changed) for `pod`. `nodes` must hold the
    /// nodes of the source the evaluation was made over (a changed copy of one of
    /// them is fine: its class is the same).
    pub fn refresh<N: NodeSource + ?Sized>(&mut self, pod: &PodInfo, nodes: &N, slot: usize) {
        let Some(part) = self.parts.get_mut(slot / CHUNK) else {
            return;
        };
        self.ranges = None;
        let at = part.binary_search_by_key(&slot, |s| s.slot);
        let fresh = nodes
            .get_with_row(slot)
            .and_then(|(n, row)| self.plan.evaluate(pod, slot, n, &row));
        match (at, fresh) {
            (Ok(i), Some(r)) => part[i] = r,
            (Ok(i), None) => {
                part.remove(i);
                self.feasible -= 1;
            }
            (Err(i), Some(r)) => {
                part.insert(i, r);
                self.feasible += 1;
            }
            (Err(_), None) => {}
        }
    }

    /// How many nodes pass every filter.
    pub fn feasible(&self) -> usize {
        self.feasible
    }

    /// `pod` was just placed on the node in `slot` of `nodes`, and the next pod asks
    /// the same question ([`same_question`]): re-evaluates that node and, when the
    /// pods of other nodes matter (inter-pod terms), counts `pod` among them and
    /// re-evaluates every node of the topology domains that changed. False when the
    /// evaluation must be made afresh instead: placing the pod turned a plugin on that
    /// was off for this pod (a first pod whose anti-affinity repels the next).
    pub fn placed<N: NodeSource + ?Sized>(
        &mut self,
        pod: &PodInfo,
        nodes: &N,
        slot: usize,
        domains: &mut Domains,
    ) -> bool {
        if !self.plan.cx.reads_other_pods() {
            self.refresh(pod, nodes, slot);
            return true;
        }
        let Some(node) = nodes.get(slot) else {
            return false;
        };
        let mut changed = Vec::new();
        if let Some(shared) = self.plan.cx.inter_pod.as_mut() {
            // Its score is worked out from the counts when the nodes are totalled.
            let state = Arc::make_mut(shared);
            let before = (state.filters(), state.scores());
            changed = state.count_placed(pod, node, nodes);
            if (state.filters(), state.scores()) != before {
                return false;
            }
        }
        if let Some(shared) = self.plan.cx.spread.as_mut() {
            // Its score is worked out from the counts when the nodes are totalled.
            changed.extend(Arc::make_mut(shared).count_placed(pod, node));
        }
        self.refresh(pod, nodes, slot);
        changed.sort();
        changed.dedup();
        for (key, value) in changed {
            for other in domains.slots(nodes, &key, &value).to_vec() {
                if other != slot {
                    self.refresh(pod, nodes, other);
                }
            }
        }
        true
    }

    /// True when some node's verdict depends on the pods of other nodes: after a pod
    /// is placed the evaluation must be made again, not refreshed node by node.
    pub fn reads_other_pods(&self) -> bool {
        self.plan.cx.reads_other_pods()
    }

    /// The weighted `PodTopologySpread` and `InterPodAffinity` scores of each feasible
    /// node, by slot (empty when neither scores the pod): worked out over the feasible
    /// nodes, as both normalize over them.
    fn by_slot<N: NodeSource + ?Sized>(&self, nodes: &N) -> Vec<i64> {
        let spread = self.plan.spread.zip(self.plan.cx.spread.as_ref());
        let inter_pod = self
            .plan
            .inter_pod
            .zip(self.plan.cx.inter_pod.as_ref().filter(|s| s.scores()));
        if spread.is_none() && inter_pod.is_none() {
            return Vec::new();
        }
        let (slots, feasible): (Vec<usize>, Vec<&NodeInfo>) = self
            .parts
            .iter()
            .flatten()
            .filter_map(|s| Some((s.slot, nodes.get(s.slot)?)))
            .unzip();
        let mut by_slot = vec![0; nodes.slots()];
        if let Some((w, state)) = spread {
            for (slot, v) in slots.iter().zip(state.normalized_scores(&feasible)) {
                by_slot[*slot] += v * w;
            }
        }
        if let Some((w, state)) = inter_pod {
            // kube-scheduler's normalization: min to max over the feasible nodes.
            let raw: Vec<i64> = feasible.iter().map(|n| state.score(n)).collect();
            let min = raw.iter().copied().min().unwrap_or(0);
            let max = raw.iter().copied().max().unwrap_or(0);
            let norm = Score::InterPodAffinity.norm(min, max);
            for (slot, v) in slots.iter().zip(raw) {
                by_slot[*slot] += norm.apply(v) * w;
            }
        }
        by_slot
    }

    /// The ranges of the raw scores, found again after a refresh.
    fn ranges(&self) -> Ranges {
        self.ranges.unwrap_or_else(|| ranges_of(&self.parts))
    }

    /// Every feasible node with its total score, in slot order.
    pub fn totals<N: NodeSource + ?Sized>(
        &self,
        profile: &Profile,
        nodes: &N,
    ) -> Vec<(usize, i64)> {
        let totals = Totals::new(profile, &self.plan, self.ranges(), self.by_slot(nodes));
        self.parts
            .iter()
            .flatten()
            .map(|s| (s.slot, totals.of(s)))
            .collect()
    }

    /// The best node: the highest total; among equals, the first name.
    pub fn best<N: NodeSource + ?Sized>(&self, profile: &Profile, nodes: &N) -> Option<Placement> {
        let parallel = self.feasible >= PARALLEL_MIN_FEASIBLE;
        let totals = Totals::new(profile, &self.plan, self.ranges(), self.by_slot(nodes));
        let name = |s: usize| nodes.get(s).map_or("", |n| &*n.name);
        // The better of two (total, slot) candidates.
        let better = |a: Option<(i64, usize)>, b: Option<(i64, usize)>| match (a, b) {
            (Some(x), Some(y)) => {
                if y.0 > x.0 || (y.0 == x.0 && name(y.1) < name(x.1)) {
                    Some(y)
                } else {
                    Some(x)
                }
            }
            (x, None) => x,
            (None, y) => y,
        };
        let part_best = |p: &Vec<Scored>| {
            p.iter()
                .fold(None, |acc, s| better(acc, Some((totals.of(s), s.slot))))
        };
        let (score, slot) = if parallel {
            self.parts
                .par_iter()
                .map(part_best)
                .reduce(|| None, better)?
        } else {
            self.parts.iter().map(part_best).fold(None, better)?
        };
        Some(Placement {
            slot,
            node: nodes.get(slot).expect("scored node exists").name.clone(),
            score,
            feasible: self.feasible,
        })
    }
}

/// The slots of a node source by topology domain, found on first use of each key:
/// the nodes a placement changes for inter-pod terms on that key.
#[derive(Debug, Default)]
pub struct Domains {
    by_key: HashMap<Arc<str>, HashMap<Arc<str>, Vec<usize>>>,
}

impl Domains {
    /// The slots of `nodes` whose label `key` is `value`.
    pub fn slots<N: NodeSource + ?Sized>(
        &mut self,
        nodes: &N,
        key: &Arc<str>,
        value: &str,
    ) -> &[usize] {
        let by_value = self.by_key.entry(key.clone()).or_insert_with(|| {
            let mut m: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
            for i in 0..nodes.slots() {
                if let Some(v) = nodes.get(i).and_then(|n| n.labels.get_shared(key)) {
                    m.entry(v.clone()).or_default().push(i);
                }
            }
            m
        });
        by_value.get(value).map_or(&[], Vec::as_slice)
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
        && a.pod_affinity == b.pod_affinity
        && a.topology_spread == b.topology_spread
        && a.owner == b.owner
        && a.claims == b.claims
        && a.device_claims == b.device_claims
}

/// [`same_shape`] over `nodes`: labels matter too when the pod's own terms or any
/// existing pod's terms may read them.
pub fn same_question<N: NodeSource + ?Sized>(a: &PodInfo, b: &PodInfo, nodes: &N) -> bool {
    same_shape(a, b)
        && (a.labels == b.labels
            || (a.pod_affinity.is_none()
                && a.topology_spread.is_none()
                && !nodes.may_have_pod_affinity()))
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
    let cx = CycleState::new(profile, pod, nodes);
    let mut d = Diagnosis::default();
    for i in 0..nodes.slots() {
        let Some(node) = nodes.get(i).filter(|n| n.known) else {
            continue;
        };
        d.nodes += 1;
        for f in &profile.filters {
            let mut reasons: Vec<Reason> = Vec::new();
            if !f.filter(&cx, pod, node, &mut |r| reasons.push(r)) {
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
    let cx = CycleState::new(profile, pod, nodes);
    let mut out = Vec::new();
    for i in 0..nodes.slots() {
        let Some(node) = nodes.get(i).filter(|n| n.known) else {
            continue;
        };
        for f in &profile.filters {
            let mut reasons = Vec::new();
            if !f.filter(&cx, pod, node, &mut |r| reasons.push(r)) {
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
        // Enough slots and feasible nodes for both passes to run in parallel.
        let big = cluster(4000);
        assert!(big.slots() >= PARALLEL_MIN_SLOTS);
        let scored = score_nodes(&Profile::default(), &pod(1000, GI), &big);
        let slots: Vec<usize> = scored.iter().map(|s| s.0).collect();
        let mut sorted = slots.clone();
        sorted.sort();
        assert_eq!(slots, sorted, "results come back in slot order");
        assert_eq!(scored.len(), 4000 - 800, "every untainted node is feasible");
        assert!(scored.len() >= PARALLEL_MIN_FEASIBLE);
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

    /// The same nodes with their classes hidden: every node is evaluated on its own.
    struct Classless<'a>(&'a Snapshot);

    impl NodeSource for Classless<'_> {
        fn slots(&self) -> usize {
            self.0.slots()
        }
        fn get(&self, i: usize) -> Option<&NodeInfo> {
            self.0.slot(i).map(|n| &**n)
        }
    }

    fn requirement(key: &str, op: SelectorOp, values: &[&str], field: bool) -> Requirement {
        Requirement {
            key: key.into(),
            op,
            values: values.iter().map(|v| Arc::from(*v)).collect(),
            bound: 0,
            field,
        }
    }

    /// A node of one of a few groups (pool, zone, taint, cordon, GPU memory), with its
    /// own hostname and some load.
    fn grouped_node(i: usize, group: u8, load: u8) -> NodeInfo {
        let name = format!("n{i:04}");
        let mut n = NodeInfo::new(&name, Resources::cpu_mem(8000, 32 * GI), 110);
        let pool = ["cpu", "gpu", "mem"][usize::from(group % 3)];
        let zone = ["a", "b"][usize::from(group / 3 % 2)];
        n.labels = Labels::new([
            (crate::classes::HOSTNAME_LABEL, name.as_str()),
            ("pool", pool),
            ("zone", zone),
        ]);
        if group % 4 == 1 {
            n.taints.push(Taint {
                key: "dedicated".into(),
                value: pool.into(),
                effect: TaintEffect::NoSchedule,
            });
        }
        if group % 5 == 2 {
            n.taints.push(Taint {
                key: "spot".into(),
                value: "".into(),
                effect: TaintEffect::PreferNoSchedule,
            });
        }
        n.unschedulable = group % 7 == 3;
        n.gpu_memory_mib = (group % 2 == 1).then_some(40_960 * i64::from(group % 3));
        if group % 4 == 3 {
            n.allocatable.gpu = 8;
        }
        if load % 8 == 5 {
            // Full: its one pod is all it takes.
            n.max_pods = 1;
        }
        if group % 6 == 4 {
            n.allocatable.set(&ResourceKind::from_name(FPGA), 2);
        }
        let mut requests = Resources::cpu_mem(i64::from(load) * 100, i64::from(load) * GI / 2);
        requests.gpu = i64::from(load % 9).min(n.allocatable.gpu);
        n.add_pod(Arc::new(PodInfo {
            key: PodKey::new("x", &format!("load-{i}")),
            requests,
            host_ports: if load.is_multiple_of(6) {
                vec![http_port()]
            } else {
                vec![]
            },
            daemonset: load % 10 == 1,
            exclusive: load % 10 == 2,
            ..Default::default()
        }));
        n
    }

    /// An extended resource some nodes have and some pods request.
    const FPGA: &str = "example.com/fpga";

    fn http_port() -> HostPort {
        HostPort {
            protocol: Protocol::Tcp,
            ip: "".into(),
            port: 8080,
        }
    }

    /// A pod whose selectors, tolerations and preferences come from `bits`.
    fn varied_pod(bits: u16, host: usize) -> PodInfo {
        let mut p = pod(500 + i64::from(bits % 7) * 500, GI);
        if bits & 1 != 0 {
            p.required_affinity = vec![SelectorTerm(vec![requirement(
                "pool",
                SelectorOp::In,
                &["cpu", "mem"],
                false,
            )])];
        }
        if bits & 2 != 0 {
            p.tolerations.push(Toleration {
                key: "dedicated".into(),
                exists: true,
                value: "".into(),
                effect: None,
            });
        }
        if bits & 4 != 0 {
            p.preferred_affinity.push((
                30,
                SelectorTerm(vec![requirement("zone", SelectorOp::In, &["b"], false)]),
            ));
        }
        if bits & 8 != 0 {
            // Reads the hostname: answered node by node.
            let name = format!("n{host:04}");
            p.preferred_affinity.push((
                70,
                SelectorTerm(vec![requirement(
                    crate::classes::HOSTNAME_LABEL,
                    SelectorOp::In,
                    &[name.as_str()],
                    false,
                )]),
            ));
        }
        if bits & 16 != 0 {
            let name = format!("n{:04}", host + 1);
            p.node_selector = SelectorTerm(vec![requirement(
                "metadata.name",
                SelectorOp::NotIn,
                &[name.as_str()],
                true,
            )]);
        }
        if bits & 32 != 0 {
            p.gpu_memory_min_mib = Some(40_000);
        }
        if bits & 128 != 0 {
            p.node_name = Some(format!("n{host:04}").into());
        }
        if bits & 256 != 0 {
            p.host_ports = vec![http_port()];
        }
        if bits & 512 != 0 {
            p.daemonset = true;
        }
        if bits & 1024 != 0 {
            p.exclusive = true;
        }
        if bits & 64 != 0 {
            p.tolerations.push(Toleration {
                key: crate::plugins::unschedulable::UNSCHEDULABLE_TAINT.into(),
                exists: true,
                value: "".into(),
                effect: None,
            });
        }
        if bits & 2048 != 0 {
            p.requests.gpu = 2;
        }
        if bits & 4096 != 0 {
            p.requests.set(&ResourceKind::from_name(FPGA), 1);
        }
        if bits & 8192 != 0 {
            // Above the reservation's priority: backfill does not hold it back.
            p.priority = 10;
        }
        p
    }

    /// The plain way: every node filtered on its own, every score column normalized
    /// as a whole, the winner the first name among the highest totals. Gives the
    /// totals, the winner, and the raw scores before normalization.
    #[allow(clippy::type_complexity)]
    fn reference(
        profile: &Profile,
        pod: &PodInfo,
        nodes: &Snapshot,
    ) -> (
        Vec<(usize, i64)>,
        Option<usize>,
        Vec<(usize, [i64; MAX_SCORE_PLUGINS])>,
    ) {
        // The columns the cycle leaves out (NUMA without NUMA zones, flat scores) are
        // left out here too: raw scores compare column by column.
        let plan = Plan::new(profile, pod, nodes);
        let active = |k: usize| plan.active(k);
        let cx = &plan.cx;
        let rows: Vec<(usize, &NodeInfo)> = nodes
            .nodes()
            .filter(|(_, n)| feasible(profile, cx, pod, n))
            .map(|(i, n)| (i, &**n))
            .collect();
        let mut totals = vec![0i64; rows.len()];
        let mut raws = vec![[0i64; MAX_SCORE_PLUGINS]; rows.len()];
        for (k, (s, w)) in profile.scores.iter().enumerate() {
            if *w == 0 || !has_column(s) {
                continue;
            }
            let mut column: Vec<i64> = rows
                .iter()
                .map(|(_, n)| if active(k) { s.score(cx, pod, n) } else { 0 })
                .collect();
            for (raw, c) in raws.iter_mut().zip(&column) {
                raw[k] = *c;
            }
            s.normalize(&mut column);
            for (t, c) in totals.iter_mut().zip(column) {
                *t += c * w;
            }
        }
        let best = rows
            .iter()
            .zip(&totals)
            .max_by(|(a, ta), (b, tb)| ta.cmp(tb).then_with(|| b.1.name.cmp(&a.1.name)))
            .map(|((i, _), _)| *i);
        let slots = || rows.iter().map(|(i, _)| *i);
        (
            slots().zip(totals).collect(),
            best,
            slots().zip(raws).collect(),
        )
    }

    /// The raw scores of every feasible node, as a cycle finds them.
    fn raw_scores<N: NodeSource + ?Sized>(
        profile: &Profile,
        pod: &PodInfo,
        nodes: &N,
    ) -> Vec<(usize, [i64; MAX_SCORE_PLUGINS])> {
        let e = Evaluation::new(profile, pod, nodes);
        e.parts.iter().flatten().map(|s| (s.slot, s.raw)).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Answering plugins once per class, and normalizing node by node, give
        /// exactly what evaluating every node and normalizing whole columns give: the
        /// same feasible nodes, the same totals, the same winner.
        #[test]
        fn classes_change_no_answer(
            groups in proptest::collection::vec((0u8..12, 0u8..60), 1..40),
            big in proptest::bool::ANY,
            // Each feature of the pod in one case of eight, so that most pods read
            // rows only (the common case) and some combine features.
            bits in proptest::strategy::Strategy::prop_map(
                (0u16..16384, 0u16..16384, 0u16..16384),
                |(a, b, c)| a & b & c,
            ),
            reserved in proptest::collection::vec(0usize..3200, 0..6),
            host in 0usize..40,
            numa in proptest::bool::ANY,
            spread in proptest::bool::ANY,
        ) {
            // Repeat the groups up to 3200 nodes (filters and totals in parallel) or
            // keep them short.
            let n = if big { 3200 } else { groups.len() };
            let mut cache = crate::cache::ClusterCache::default();
            for i in 0..n {
                let (g, load) = groups[i % groups.len()];
                cache.add_node_with_pods(grouped_node(i, g, load));
                // Some nodes with NUMA zones: two of 4 cores, one of them
                // single-NUMA-node.
                if numa && g % 3 == 0 {
                    cache.set_numa(&format!("n{i:04}"), Some(Arc::new(Numa {
                        single_numa_node: g % 2 == 0,
                        zones: (0..2)
                            .map(|z| NumaZone {
                                name: format!("node-{z}").into(),
                                available: Resources::cpu_mem(4000 - i64::from(load) * 50, 0),
                            })
                            .collect(),
                    })));
                }
            }
            // A gang's reservation on a few nodes, and a pod bound to a node the cache
            // does not know (a placeholder).
            let plan = reserved
                .iter()
                .map(|s| (s % n, (Resources::cpu_mem(3000, 8 * GI), 1)))
                .collect();
            cache.reserve("x", "waiting", 0, &plan);
            cache.upsert_pod(PodInfo {
                key: PodKey::new("x", "on-a-ghost"),
                node_name: Some("ghost".into()),
                requests: Resources::cpu_mem(100, GI),
                ..Default::default()
            });
            let snap = cache.snapshot();
            proptest::prop_assert!(snap.classes() <= 12);
            proptest::prop_assert_eq!(
                snap.may_have_numa(),
                snap.nodes().any(|(_, n)| n.numa.is_some())
            );
            let p = varied_pod(bits, host % n);
            // Drover's default, or spreading (no least waste) with the filters in
            // another order and one listed twice.
            let profile = if spread {
                let mut pr = Profile::with_packing(Packing {
                    strategy: Strategy::LeastAllocated,
                    ..Packing::default()
                });
                pr.filters.reverse();
                pr.filters.push(Filter::Exclusive { system_pods_count: true });
                pr
            } else {
                Profile::default()
            };
            proptest::prop_assert_eq!(
                score_nodes(&profile, &p, &snap),
                score_nodes(&profile, &p, &Classless(&snap))
            );
            proptest::prop_assert_eq!(
                schedule_one(&profile, &p, &snap),
                schedule_one(&profile, &p, &Classless(&snap))
            );
            let (totals, best, raws) = reference(&profile, &p, &snap);
            proptest::prop_assert_eq!(raw_scores(&profile, &p, &snap), raws);
            proptest::prop_assert_eq!(score_nodes(&profile, &p, &snap), totals);
            let placed = match schedule_one(&profile, &p, &snap) {
                Outcome::Placed(pl) => Some(pl.slot),
                Outcome::Unschedulable(_) => None,
            };
            proptest::prop_assert_eq!(placed, best);
        }
    }

    #[test]
    fn a_gang_refresh_keeps_the_class_answers() {
        // Two nodes of one class; the first placement fills one, the refresh must see
        // it full while the other still passes on its class's memo cell.
        let s = Snapshot::from_nodes((0..2).map(|i| grouped_node(i, 0, 0)));
        assert_eq!(s.classes(), 1);
        let p = Arc::new(pod(6000, GI));
        let profile = Profile::default();
        let mut overlay = Overlay::new(&s);
        let mut e = Evaluation::new(&profile, &p, &overlay);
        assert_eq!(e.feasible(), 2);
        let first = e.best(&profile, &overlay).unwrap();
        overlay.place(first.slot, p.clone());
        e.refresh(&p, &overlay, first.slot);
        assert_eq!(e.feasible(), 1);
        let second = e.best(&profile, &overlay).unwrap();
        assert_ne!(second.slot, first.slot);
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
