//! Fair-share queues: a tree of team queues with guarantees, limits and weights.
//!
//! A pod names its queue with the label `drover.dev/queue` (or its namespace does, or it
//! falls into the queue named `default`). A pod or a whole gang is admitted only if its
//! queue and every ancestor stay within `max`; below `guaranteed` it always may; beyond,
//! it borrows what is idle. Work is taken from the queue with the lowest weighted
//! dominant share first (DRF over the tree: siblings are compared level by level).
//!
//! Pure: the adapter feeds queue specs and usage; this module validates, admits,
//! orders and computes fair shares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::{PodInfo, ResourceKind, Resources};

/// The pod label that names a queue.
pub const QUEUE_LABEL: &str = "drover.dev/queue";
/// The queue for pods that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// A `Queue` object as read from the API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSpec {
    /// The queue's name (cluster-scoped).
    pub name: Arc<str>,
    /// The parent queue, if any.
    pub parent: Option<Arc<str>>,
    /// Always available to this queue.
    pub guaranteed: Resources,
    /// Never exceeded by this queue and its children together, for the resources
    /// listed; `None`: no limit.
    pub max: Option<Resources>,
    /// The resources `max` lists (a resource it does not list has no limit).
    pub max_listed: Vec<ResourceKind>,
    /// Share of what is beyond guarantees (≥ 1).
    pub weight: i64,
    /// Whether what it borrows may be taken back.
    pub reclaimable: bool,
    /// Set when drover could not read the object: the field and what is wrong with
    /// it. The queue is then flagged (and its pods wait) instead of being guessed at.
    pub unreadable: Option<(String, String)>,
}

/// A problem with a queue, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProblem {
    /// The queue.
    pub queue: Arc<str>,
    /// The field, e.g. `spec.guaranteed[cpu]`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for QueueProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue {}: {}: {}", self.queue, self.field, self.message)
    }
}

/// The validated tree of queues. Queues with problems are kept out; pods that name
/// them wait, saying why.
#[derive(Clone, Debug, Default)]
pub struct QueueTree {
    queues: BTreeMap<Arc<str>, QueueSpec>,
    problems: BTreeMap<Arc<str>, QueueProblem>,
}

fn exceeds(a: &Resources, b: &Resources) -> Option<ResourceKind> {
    a.iter().find(|(k, v)| *v > b.get(k)).map(|(k, _)| k)
}

impl QueueSpec {
    /// The limit on `kind`, if `max` lists it.
    pub fn limit(&self, kind: &ResourceKind) -> Option<i64> {
        let max = self.max.as_ref()?;
        self.max_listed.contains(kind).then(|| max.get(kind))
    }
}

impl QueueTree {
    /// Builds the tree from every Queue object, flagging the bad ones: unknown parents,
    /// cycles, negative quantities, `guaranteed` above `max`, children's guarantees above
    /// their parent's, a weight below 1.
    pub fn build(specs: impl IntoIterator<Item = QueueSpec>) -> QueueTree {
        let all: BTreeMap<Arc<str>, QueueSpec> =
            specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let mut problems: BTreeMap<Arc<str>, QueueProblem> = BTreeMap::new();
        let mut flag = |q: &Arc<str>, field: String, message: String| {
            problems.entry(q.clone()).or_insert(QueueProblem {
                queue: q.clone(),
                field,
                message,
            });
        };
        for (name, q) in &all {
            if let Some((field, message)) = &q.unreadable {
                flag(name, field.clone(), message.clone());
            }
            for (what, r) in [("guaranteed", Some(&q.guaranteed)), ("max", q.max.as_ref())] {
                if let Some((k, v)) = r.and_then(|r| r.iter().find(|(_, v)| *v < 0)) {
                    flag(
                        name,
                        format!("spec.{what}[{k}]"),
                        format!("{v} is negative"),
                    );
                }
            }
            if let Some(k) = q
                .guaranteed
                .iter()
                .find(|(k, v)| q.limit(k).is_some_and(|m| *v > m))
                .map(|(k, _)| k)
            {
                let max = q.max.clone().unwrap_or_default();
                flag(
                    name,
                    format!("spec.guaranteed[{k}]"),
                    format!(
                        "{} is above spec.max[{k}] {}; lower the guarantee or raise max",
                        q.guaranteed.get(&k),
                        max.get(&k)
                    ),
                );
            }
            if q.weight < 1 {
                flag(
                    name,
                    "spec.weight".into(),
                    format!("{} must be at least 1", q.weight),
                );
            }
            if let Some(p) = &q.parent {
                if !all.contains_key(p) {
                    flag(
                        name,
                        "spec.parent".into(),
                        format!("queue {p:?} does not exist; create it or remove spec.parent"),
                    );
                }
                // A cycle: following parents comes back here.
                let mut seen = BTreeSet::new();
                let mut at = Some(p.clone());
                while let Some(cur) = at {
                    if cur == *name {
                        flag(
                            name,
                            "spec.parent".into(),
                            "the parents form a cycle; a queue cannot be its own ancestor".into(),
                        );
                        break;
                    }
                    if !seen.insert(cur.clone()) {
                        break;
                    }
                    at = all.get(&cur).and_then(|c| c.parent.clone());
                }
            }
        }
        // Children's guarantees within the parent's.
        let mut children: BTreeMap<&Arc<str>, Resources> = BTreeMap::new();
        for q in all.values() {
            if let Some(p) = &q.parent {
                children.entry(p).or_default().add(&q.guaranteed);
            }
        }
        for (p, sum) in children {
            if let Some(parent) = all.get(p)
                && let Some(k) = exceeds(&sum, &parent.guaranteed)
            {
                flag(
                    p,
                    format!("spec.guaranteed[{k}]"),
                    format!(
                        "{} is below its children's guarantees ({} together)",
                        parent.guaranteed.get(&k),
                        sum.get(&k)
                    ),
                );
            }
        }
        // A queue under a flagged ancestor is unusable too.
        let mut queues = BTreeMap::new();
        for (name, q) in &all {
            let mut at = Some(name.clone());
            let mut bad = None;
            let mut depth = 0;
            while let Some(cur) = at {
                if let Some(p) = problems.get(&cur) {
                    bad = Some(p.clone());
                    break;
                }
                depth += 1;
                if depth > all.len() {
                    break;
                }
                at = all.get(&cur).and_then(|c| c.parent.clone());
            }
            match bad {
                Some(p) if p.queue != *name => {
                    problems.entry(name.clone()).or_insert(QueueProblem {
                        queue: name.clone(),
                        field: "spec.parent".into(),
                        message: format!("its ancestor has a problem: {p}"),
                    });
                }
                Some(_) => {}
                None => {
                    queues.insert(name.clone(), q.clone());
                }
            }
        }
        QueueTree { queues, problems }
    }

    /// The queue, if it exists and is valid.
    pub fn get(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.get(name)
    }

    /// Problems found, by queue.
    pub fn problems(&self) -> impl Iterator<Item = &QueueProblem> {
        self.problems.values()
    }

    /// Every valid queue.
    pub fn queues(&self) -> impl Iterator<Item = &QueueSpec> {
        self.queues.values()
    }

    /// `name` and its ancestors, the queue itself first.
    pub fn path(&self, name: &str) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        let mut at = self.queues.get(name).map(|q| q.name.clone());
        while let Some(cur) = at {
            if out.contains(&cur) {
                break;
            }
            at = self.queues.get(&cur).and_then(|q| q.parent.clone());
            out.push(cur);
        }
        out
    }

    /// Why a pod (or gang) of `queue` asking `request` cannot be placed now, or `None`
    /// when it may: the queue must be valid and it and every ancestor stay within `max`.
    /// The implicit `default` queue has no limit.
    pub fn admit(&self, usage: &Usage, queue: &str, request: &Resources) -> Option<String> {
        if let Some(p) = self.problems.get(queue) {
            return Some(format!("{p}"));
        }
        if !self.queues.contains_key(queue) {
            if queue == DEFAULT_QUEUE {
                return None;
            }
            return Some(format!(
                "queue {queue:?} does not exist; create the Queue or fix the {QUEUE_LABEL} label"
            ));
        }
        for q in self.path(queue) {
            let Some(spec) = self.queues.get(&q) else {
                continue;
            };
            let mut after = usage.allocated(&q);
            after.add(request);
            for (k, want) in request.iter() {
                let Some(limit) = spec.limit(&k) else {
                    continue;
                };
                if want > 0 && after.get(&k) > limit {
                    return Some(format!(
                        "queue {q} would exceed its max {k}: {} allocated + {} asked > {} max",
                        fmt_amount(&k, usage.allocated(&q).get(&k)),
                        fmt_amount(&k, want),
                        fmt_amount(&k, limit)
                    ));
                }
            }
        }
        None
    }

    /// The order of `queue` against other queues (lower first): for each queue on the
    /// path from the top of the tree down to it, how much of its fair share it holds
    /// (the largest ratio over the resources its fair share has). Queues under their
    /// guarantee come first; beyond, they share by weight (DRF over the tree). A queue
    /// with no fair share of anything (the default queue) ranks by its dominant share of
    /// the cluster.
    pub fn order_key(
        &self,
        usage: &Usage,
        fair: &BTreeMap<Arc<str>, Resources>,
        cluster: &Resources,
        queue: &str,
    ) -> Vec<f64> {
        let mut path = self.path(queue);
        path.reverse();
        if path.is_empty() {
            path.push(queue.into());
        }
        path.iter()
            .map(|q| {
                let alloc = usage.allocated(q);
                match fair.get(q).filter(|f| !f.is_zero()) {
                    Some(f) => alloc
                        .iter()
                        .map(|(k, v)| {
                            let share = f.get(&k);
                            if share > 0 {
                                v as f64 / share as f64
                            } else {
                                f64::INFINITY
                            }
                        })
                        .fold(0.0, f64::max),
                    None => dominant_share(&alloc, cluster),
                }
            })
            .collect()
    }

    /// Each queue's fair share of `cluster`: its guarantee, plus what is beyond its
    /// siblings' guarantees split by weight among the siblings that have demand, capped
    /// at `max`. Computed top-down.
    pub fn fair_shares(&self, usage: &Usage, cluster: &Resources) -> BTreeMap<Arc<str>, Resources> {
        let mut out = BTreeMap::new();
        self.split(None, cluster, usage, &mut out);
        out
    }

    fn split(
        &self,
        parent: Option<&Arc<str>>,
        total: &Resources,
        usage: &Usage,
        out: &mut BTreeMap<Arc<str>, Resources>,
    ) {
        let kids: Vec<&QueueSpec> = self
            .queues
            .values()
            .filter(|q| q.parent.as_ref() == parent)
            .collect();
        if kids.is_empty() {
            return;
        }
        let mut rest = total.clone();
        for k in &kids {
            rest.sub(&k.guaranteed);
        }
        let wanting: Vec<&&QueueSpec> = kids
            .iter()
            .filter(|k| usage.wants(&k.name) || !usage.allocated(&k.name).is_zero())
            .collect();
        let weights: i64 = wanting.iter().map(|k| k.weight.max(1)).sum();
        for k in &kids {
            let mut share = k.guaranteed.clone();
            if weights > 0 && wanting.iter().any(|w| w.name == k.name) {
                for (r, v) in rest.iter() {
                    if v > 0 {
                        let extra = (v as i128 * k.weight.max(1) as i128 / weights as i128) as i64;
                        share.set(&r, share.get(&r) + extra);
                    }
                }
            }
            for (r, v) in share.clone().iter() {
                if let Some(cap) = k.limit(&r)
                    && v > cap
                {
                    share.set(&r, cap);
                }
            }
            out.insert(k.name.clone(), share.clone());
            self.split(Some(&k.name), &share, usage, out);
        }
    }
}

fn fmt_amount(k: &ResourceKind, v: i64) -> String {
    let mut r = Resources::default();
    r.set(k, v);
    r.to_string()
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| v.to_string())
}

/// The largest share of any resource of `cluster` that `used` holds.
pub fn dominant_share(used: &Resources, cluster: &Resources) -> f64 {
    used.iter()
        .filter(|(k, _)| cluster.get(k) > 0)
        .map(|(k, v)| v as f64 / cluster.get(&k) as f64)
        .fold(0.0, f64::max)
}

/// What each queue holds and wants; ancestors include their children.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    allocated: BTreeMap<Arc<str>, Resources>,
    pending: BTreeMap<Arc<str>, Resources>,
}

impl Usage {
    /// Usage from the pods: placed ones count as allocated, pending ones as demand, to
    /// their queue and every ancestor.
    pub fn from_pods<'a>(
        tree: &QueueTree,
        pods: impl IntoIterator<Item = (&'a PodInfo, bool)>,
    ) -> Usage {
        let mut u = Usage::default();
        for (pod, placed) in pods {
            let q = queue_of(pod);
            let path = tree.path(&q);
            let targets: Vec<Arc<str>> = if path.is_empty() { vec![q] } else { path };
            for t in targets {
                let m = if placed {
                    &mut u.allocated
                } else {
                    &mut u.pending
                };
                m.entry(t).or_default().add(&pod.requests);
            }
        }
        u
    }

    /// What the queue (with its children) holds.
    pub fn allocated(&self, q: &str) -> Resources {
        self.allocated.get(q).cloned().unwrap_or_default()
    }

    /// What the queue's pending pods ask for.
    pub fn pending(&self, q: &str) -> Resources {
        self.pending.get(q).cloned().unwrap_or_default()
    }

    /// True when the queue has pending work.
    pub fn wants(&self, q: &str) -> bool {
        self.pending.get(q).is_some_and(|r| !r.is_zero())
    }

    /// Takes `request` off what `queue` and its ancestors hold (an eviction planned
    /// before the next recount).
    pub fn discharge(&mut self, tree: &QueueTree, queue: &str, request: &Resources) {
        let path = tree.path(queue);
        let targets: Vec<Arc<str>> = if path.is_empty() {
            vec![queue.into()]
        } else {
            path
        };
        for t in targets {
            if let Some(a) = self.allocated.get_mut(&t) {
                a.sub(request);
            }
        }
    }

    /// Counts `request` as allocated to `queue` and its ancestors (a placement made
    /// before the next recount).
    pub fn charge(&mut self, tree: &QueueTree, queue: &str, request: &Resources) {
        let path = tree.path(queue);
        let targets: Vec<Arc<str>> = if path.is_empty() {
            vec![queue.into()]
        } else {
            path
        };
        for t in targets {
            self.allocated.entry(t.clone()).or_default().add(request);
            if let Some(p) = self.pending.get_mut(&t) {
                p.sub(request);
            }
        }
    }
}

/// What one pod contributes to its queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    /// The pod's queue.
    pub queue: Arc<str>,
    /// What it requests.
    pub requests: Resources,
    /// Placed (allocated), or pending (demand).
    pub placed: bool,
    /// Its priority.
    pub priority: i32,
}

/// What each pod contributes to its queue, kept up to date from events so that
/// [`Ledger::usage`] costs the number of queues, not the number of pods.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    entries: std::collections::HashMap<crate::model::PodKey, Contribution>,
    allocated: BTreeMap<Arc<str>, Resources>,
    pending: BTreeMap<Arc<str>, Resources>,
    /// Placed pods per queue and priority.
    placed_priorities: BTreeMap<Arc<str>, BTreeMap<i32, usize>>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what the pod contributes, or nothing.
    pub fn set(&mut self, key: &crate::model::PodKey, entry: Option<Contribution>) {
        if let Some(old) = self.entries.remove(key) {
            let m = if old.placed {
                &mut self.allocated
            } else {
                &mut self.pending
            };
            if let Some(v) = m.get_mut(&old.queue) {
                v.sub(&old.requests);
            }
            if old.placed
                && let Some(by) = self.placed_priorities.get_mut(&old.queue)
                && let Some(n) = by.get_mut(&old.priority)
            {
                *n -= 1;
                if *n == 0 {
                    by.remove(&old.priority);
                }
            }
        }
        if let Some(c) = entry {
            let m = if c.placed {
                &mut self.allocated
            } else {
                &mut self.pending
            };
            m.entry(c.queue.clone()).or_default().add(&c.requests);
            if c.placed {
                *self
                    .placed_priorities
                    .entry(c.queue.clone())
                    .or_default()
                    .entry(c.priority)
                    .or_default() += 1;
            }
            self.entries.insert(key.clone(), c);
        }
    }

    /// The lowest priority among the queue's placed pods (what priority preemption
    /// inside it could take), if it has any.
    pub fn lowest_placed_priority(&self, queue: &str) -> Option<i32> {
        self.placed_priorities
            .get(queue)
            .and_then(|by| by.keys().next().copied())
    }

    /// Per-queue usage with ancestors including their children.
    pub fn usage(&self, tree: &QueueTree) -> Usage {
        let mut u = Usage::default();
        for (src, dst) in [
            (&self.allocated, &mut u.allocated),
            (&self.pending, &mut u.pending),
        ] {
            for (q, r) in src {
                let path = tree.path(q);
                let targets: Vec<Arc<str>> = if path.is_empty() {
                    vec![q.clone()]
                } else {
                    path
                };
                for t in targets {
                    dst.entry(t).or_default().add(r);
                }
            }
        }
        u
    }
}

/// A pod that may be evicted to give a queue back its guarantee.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The pod (bound).
    pub pod: Arc<PodInfo>,
    /// Its fair-share queue.
    pub queue: Arc<str>,
    /// When it started (ms), for shortest-running-first and the minimum runtime.
    pub started_ms: i64,
    /// The key of its unit: the gang's name, or the pod's own; victims go whole units.
    pub unit: Arc<str>,
}

/// True when `queue` has a guarantee of something `request` asks for and stays within
/// it after `request` (only the resources the guarantee lists count: one it does not
/// list is not guaranteed, so it is neither reclaimed nor in the way). Only then may
/// the queue reclaim.
pub fn within_guarantee(tree: &QueueTree, usage: &Usage, queue: &str, request: &Resources) -> bool {
    let Some(spec) = tree.get(queue) else {
        return false;
    };
    let mut after = usage.allocated(queue);
    after.add(request);
    // The pod must ask for something the queue is guaranteed: a pod that needs only
    // what no guarantee lists borrows; it does not reclaim.
    spec.guaranteed
        .iter()
        .any(|(k, g)| g > 0 && request.get(&k) > 0)
        && !spec
            .guaranteed
            .iter()
            .any(|(k, g)| request.get(&k) > 0 && after.get(&k) > g)
}

/// True when `spec` may be reclaimed from now: it allows reclaim and holds more than its
/// guarantee of some resource.
pub fn lends(usage: &Usage, spec: &QueueSpec) -> bool {
    spec.reclaimable
        && usage
            .allocated(&spec.name)
            .iter()
            .any(|(k, v)| v > spec.guaranteed.get(&k))
}

/// What a victim search works from: the queue tree and its usage, the candidates
/// (bound pods, grouped into units), the profile that decides fit, and the clock.
pub struct VictimSearch<'a> {
    /// The queue tree.
    pub tree: &'a QueueTree,
    /// Usage, with the plan so far applied.
    pub usage: &'a Usage,
    /// The profile deciding whether a pod fits a node.
    pub profile: &'a crate::framework::Profile,
    /// Pods that may be evicted.
    pub candidates: &'a [Candidate],
    /// Now (ms).
    pub now_ms: i64,
    /// Nothing that has run less than this (ms) is evicted.
    pub min_runtime_ms: i64,
}

/// The pods to evict, and the node where the claimant then fits.
pub type Victims = (Vec<Arc<PodInfo>>, Arc<str>);

impl VictimSearch<'_> {
    /// Reclaim: evicts so that `pod` of `queue` fits on some node, whole units (gangs,
    /// never half of one) of queues that have borrowed beyond their guarantee and
    /// allow reclaim, lowest priority and shortest-running first, never taking a queue
    /// below its own guarantee. Reclaim happens only up to `queue`'s guarantee.
    pub fn reclaim(
        &self,
        queue: &str,
        pod: &PodInfo,
        nodes: &dyn crate::framework::NodeSource,
    ) -> Option<Victims> {
        if !within_guarantee(self.tree, self.usage, queue, &pod.requests) {
            return None; // beyond its guarantee it borrows; it does not reclaim
        }
        let units = self.units(|c| {
            let Some(q) = self.tree.get(&c.queue) else {
                return false;
            };
            c.queue.as_ref() != queue && lends(self.usage, q)
        });
        self.cheapest(pod, nodes, &units, true)
    }

    /// Priority preemption inside a queue: evicts whole units of `queue` whose every
    /// member has a lower priority than `pod`, lowest priority and shortest-running
    /// first, so that `pod` fits on some node.
    pub fn preempt(
        &self,
        queue: &str,
        pod: &PodInfo,
        nodes: &dyn crate::framework::NodeSource,
    ) -> Option<Victims> {
        let mut units = self.units(|c| c.queue.as_ref() == queue);
        units.retain(|(_, m)| m.iter().all(|c| c.pod.priority < pod.priority));
        self.cheapest(pod, nodes, &units, false)
    }

    /// Candidates that pass `eligible`, grouped into units that are old enough
    /// (every member), in eviction order: lowest priority, then shortest-running.
    fn units(&self, eligible: impl Fn(&Candidate) -> bool) -> Vec<(Arc<str>, Vec<&Candidate>)> {
        let mut units: BTreeMap<Arc<str>, Vec<&Candidate>> = BTreeMap::new();
        for c in self.candidates {
            units.entry(c.unit.clone()).or_default().push(c);
        }
        // A unit goes whole or not at all: one ineligible member keeps it all.
        let mut order: Vec<(Arc<str>, Vec<&Candidate>)> = units
            .into_iter()
            .filter(|(_, m)| {
                m.iter()
                    .all(|c| eligible(c) && self.now_ms - c.started_ms >= self.min_runtime_ms)
            })
            .collect();
        order.sort_by_key(|(u, m)| {
            let prio = m.iter().map(|c| c.pod.priority).max().unwrap_or(0);
            let started = m.iter().map(|c| c.started_ms).max().unwrap_or(0);
            (prio, std::cmp::Reverse(started), u.clone())
        });
        order
    }

    /// For each node, evicts units touching it, in order, until `pod` fits there;
    /// keeps the node that needs the fewest evicted pods. With `keep_guarantees`, no
    /// unit is taken whose queue would fall below its own guarantee.
    fn cheapest(
        &self,
        pod: &PodInfo,
        nodes: &dyn crate::framework::NodeSource,
        order: &[(Arc<str>, Vec<&Candidate>)],
        keep_guarantees: bool,
    ) -> Option<Victims> {
        // Units by the nodes they touch, in eviction order: each node looks only at
        // its own.
        let mut by_node: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        for (i, (_, members)) in order.iter().enumerate() {
            for c in members {
                if let Some(n) = c.pod.node_name.as_deref() {
                    let v = by_node.entry(n).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
        }
        // Inter-pod terms are counted over the nodes as they are: evicting a victim
        // is not assumed to lift an anti-affinity it imposes.
        let cx = crate::plugins::CycleState::new(self.profile, pod, nodes);
        let mut best: Option<Victims> = None;
        for slot in 0..nodes.slots() {
            let Some(node) = nodes.get(slot).filter(|n| n.known) else {
                continue;
            };
            let Some(touching) = by_node.get(&*node.name) else {
                continue;
            };
            let mut n = node.clone();
            let mut victims: Vec<Arc<PodInfo>> = Vec::new();
            let mut taken: BTreeMap<Arc<str>, Resources> = BTreeMap::new();
            let mut fits = false;
            for &i in touching {
                if fits {
                    break;
                }
                // A pod may be in two units (a gang's member beyond minMember, alone
                // and with its gang): it is taken once.
                let members: Vec<&Candidate> = order[i]
                    .1
                    .iter()
                    .copied()
                    .filter(|c| !victims.iter().any(|v| v.key == c.pod.key))
                    .collect();
                if keep_guarantees && !self.keeps_guarantees(&members, &mut taken) {
                    continue;
                }
                for c in members.iter() {
                    if c.pod.node_name.as_deref() == Some(&*n.name) {
                        n.remove_pod(&c.pod.key);
                    }
                    victims.push(c.pod.clone());
                }
                fits = crate::framework::feasible(self.profile, &cx, pod, &n);
            }
            if fits
                && !victims.is_empty()
                && best.as_ref().is_none_or(|(b, _)| victims.len() < b.len())
            {
                best = Some((victims, n.name.clone()));
            }
        }
        best
    }

    /// Whether taking `members` (on top of `taken`) leaves every queue at or above
    /// its guarantee; if so, counts them in `taken`.
    fn keeps_guarantees(
        &self,
        members: &[&Candidate],
        taken: &mut BTreeMap<Arc<str>, Resources>,
    ) -> bool {
        let mut trial = taken.clone();
        for c in members {
            let t = trial.entry(c.queue.clone()).or_default();
            t.add(&c.pod.requests);
            let mut left = self.usage.allocated(&c.queue);
            left.sub(t);
            let g = self
                .tree
                .get(&c.queue)
                .map(|q| q.guaranteed.clone())
                .unwrap_or_default();
            if c.pod
                .requests
                .iter()
                .any(|(k, v)| v > 0 && left.get(&k) < g.get(&k))
            {
                return false;
            }
        }
        *taken = trial;
        true
    }
}

/// The queue a pod names (its label), or the default queue. The adapter resolves a
/// namespace default into the label's absence before calling this.
pub fn queue_of(pod: &PodInfo) -> Arc<str> {
    pod.queue.clone().unwrap_or_else(|| DEFAULT_QUEUE.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodKey;

    fn q(name: &str, parent: Option<&str>, g: i64, max: Option<i64>, w: i64) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            parent: parent.map(Into::into),
            guaranteed: Resources::cpu_mem(g, 0),
            max: max.map(|m| Resources::cpu_mem(m, 0)),
            max_listed: if max.is_some() {
                vec![ResourceKind::Cpu]
            } else {
                vec![]
            },
            weight: w,
            reclaimable: true,
            unreadable: None,
        }
    }

    fn pod(name: &str, queue: &str, cpu: i64) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", name),
            requests: Resources::cpu_mem(cpu, 0),
            queue: Some(queue.into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation_table() {
        // (queues, the queue flagged, the field, a fragment of the message)
        let cases: Vec<(Vec<QueueSpec>, &str, &str, &str)> = vec![
            (
                vec![q("a", Some("nope"), 0, None, 1)],
                "a",
                "spec.parent",
                "does not exist",
            ),
            (
                vec![q("a", Some("b"), 0, None, 1), q("b", Some("a"), 0, None, 1)],
                "a",
                "spec.parent",
                "cycle",
            ),
            (
                vec![q("a", None, 10, Some(5), 1)],
                "a",
                "spec.guaranteed[cpu]",
                "above spec.max",
            ),
            (
                vec![q("a", None, -1, None, 1)],
                "a",
                "spec.guaranteed[cpu]",
                "negative",
            ),
            (
                vec![q("a", None, 0, None, 0)],
                "a",
                "spec.weight",
                "at least 1",
            ),
            (
                vec![
                    q("p", None, 10, None, 1),
                    q("c1", Some("p"), 8, None, 1),
                    q("c2", Some("p"), 8, None, 1),
                ],
                "p",
                "spec.guaranteed[cpu]",
                "below its children's guarantees",
            ),
            (
                vec![q("p", None, 0, None, 0), q("c", Some("p"), 0, None, 1)],
                "c",
                "spec.parent",
                "its ancestor has a problem",
            ),
        ];
        for (i, (qs, bad, field, frag)) in cases.into_iter().enumerate() {
            let t = QueueTree::build(qs);
            let p = t
                .problems()
                .find(|p| &*p.queue == bad)
                .unwrap_or_else(|| panic!("case {i}: {bad} not flagged"));
            assert_eq!(p.field, field, "case {i}");
            assert!(p.message.contains(frag), "case {i}: {p}");
            assert!(
                t.get(bad).is_none(),
                "case {i}: a flagged queue is unusable"
            );
            let msg = t
                .admit(&Usage::default(), bad, &Resources::cpu_mem(1, 0))
                .unwrap();
            assert!(msg.contains(&format!("Queue {bad}")), "case {i}: {msg}");
        }
        let ok = QueueTree::build([q("a", None, 5, Some(10), 2), q("b", Some("a"), 5, None, 1)]);
        assert_eq!(ok.problems().count(), 0);
        assert_eq!(ok.path("b"), vec![Arc::from("b"), Arc::from("a")]);
    }

    #[test]
    fn admission_respects_max_up_the_tree() {
        let t = QueueTree::build([
            q("org", None, 0, Some(10_000), 1),
            q("team", Some("org"), 0, Some(8_000), 1),
            q("other", Some("org"), 0, None, 1),
        ]);
        let pods = [pod("a", "team", 6_000), pod("b", "other", 3_000)];
        let u = Usage::from_pods(&t, pods.iter().map(|p| (p, true)));
        assert_eq!(u.allocated("org").cpu, 9_000);
        // (queue, cpu asked, admitted?, fragment)
        for (queue, cpu, ok, frag) in [
            ("team", 2_000, false, "queue org would exceed its max cpu"),
            ("team", 1_000, true, ""),
            ("team", 3_000, false, "queue team would exceed its max cpu"),
            ("other", 1_000, true, ""),
            ("other", 1_500, false, "queue org"),
            ("default", 1_000_000, true, ""),
            ("ghost", 1, false, "queue \"ghost\" does not exist"),
        ] {
            let got = t.admit(&u, queue, &Resources::cpu_mem(cpu, 0));
            assert_eq!(got.is_none(), ok, "{queue} {cpu}: {got:?}");
            if let Some(m) = got {
                assert!(m.contains(frag), "{m}");
            }
        }
        // A resource max does not list has no limit.
        let mut mem = Resources::cpu_mem(0, 1 << 40);
        mem.gpu = 64;
        assert_eq!(t.admit(&u, "team", &mem), None);
    }

    #[test]
    fn drf_orders_by_weighted_dominant_share() {
        let t = QueueTree::build([
            q("a", None, 0, None, 1),
            q("b", None, 0, None, 2),
            q("c", None, 0, None, 1),
        ]);
        let cluster = Resources::cpu_mem(100_000, 0);
        let pods = [
            pod("x", "a", 20_000),
            pod("y", "b", 30_000),
            pod("z", "c", 10_000),
        ];
        let u = Usage::from_pods(&t, pods.iter().map(|p| (p, true)));
        let fair = t.fair_shares(&u, &cluster);
        let mut order: Vec<&str> = vec!["a", "b", "c"];
        order.sort_by(|x, y| {
            t.order_key(&u, &fair, &cluster, x)
                .partial_cmp(&t.order_key(&u, &fair, &cluster, y))
                .unwrap()
        });
        // Fair shares 25/50/25 % (weights 1/2/1): c holds 10/25, b 30/50, a 20/25.
        assert_eq!(order, vec!["c", "b", "a"]);
        // With guarantees 40/40/20, the queue furthest below its guarantee goes first.
        let g = QueueTree::build([
            q("a", None, 40_000, None, 1),
            q("b", None, 40_000, None, 1),
            q("c", None, 20_000, None, 2),
        ]);
        let pods = [
            pod("x", "a", 30_000),
            pod("y", "b", 35_000),
            pod("z", "c", 19_000),
        ];
        let u = Usage::from_pods(&g, pods.iter().map(|p| (p, true)));
        let fair = g.fair_shares(&u, &cluster);
        let mut order: Vec<&str> = vec!["a", "b", "c"];
        order.sort_by(|x, y| {
            g.order_key(&u, &fair, &cluster, x)
                .partial_cmp(&g.order_key(&u, &fair, &cluster, y))
                .unwrap()
        });
        assert_eq!(order, vec!["a", "b", "c"]);
        // Dominant share: the largest of cpu and memory.
        let mut used = Resources::cpu_mem(10_000, 60 << 30);
        used.gpu = 0;
        let mut total = Resources::cpu_mem(100_000, 100 << 30);
        total.gpu = 8;
        assert!((dominant_share(&used, &total) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn fair_shares_split_what_is_beyond_guarantees_by_weight() {
        let t = QueueTree::build([
            q("a", None, 40_000, None, 1),
            q("b", None, 40_000, None, 1),
            q("c", None, 20_000, Some(30_000), 2),
            q("idle", None, 0, None, 1),
        ]);
        let cluster = Resources::cpu_mem(140_000, 0);
        let pods = [pod("x", "a", 1), pod("y", "b", 1), pod("z", "c", 1)];
        let u = Usage::from_pods(&t, pods.iter().map(|p| (p, false)));
        let f = t.fair_shares(&u, &cluster);
        // 40 000 beyond guarantees, weights 1/1/2 among the queues with demand.
        assert_eq!(f["a"].cpu, 50_000);
        assert_eq!(f["b"].cpu, 50_000);
        assert_eq!(f["c"].cpu, 30_000, "capped at max");
        assert_eq!(f["idle"].cpu, 0);
    }

    #[test]
    fn the_ledger_follows_pods_and_matches_a_recount() {
        let t = QueueTree::build([
            q("org", None, 0, None, 1),
            q("team", Some("org"), 0, None, 1),
        ]);
        let mut l = Ledger::new();
        let a = pod("a", "team", 1_000);
        let b = pod("b", "org", 2_000);
        let c = |q: &str, p: &PodInfo, placed: bool| {
            Some(Contribution {
                queue: q.into(),
                requests: p.requests.clone(),
                placed,
                priority: p.priority,
            })
        };
        l.set(&a.key, c("team", &a, false));
        assert_eq!(l.lowest_placed_priority("team"), None);
        l.set(&b.key, c("org", &b, true));
        l.set(&a.key, c("team", &a, true));
        assert_eq!(l.lowest_placed_priority("team"), Some(a.priority));
        let u = l.usage(&t);
        assert_eq!(u.allocated("org").cpu, 3_000);
        assert_eq!(u.allocated("team").cpu, 1_000);
        assert!(!u.wants("team"));
        let recount = Usage::from_pods(&t, [(&a, true), (&b, true)]);
        assert_eq!(recount.allocated("org"), u.allocated("org"));
        l.set(&b.key, None);
        assert_eq!(l.lowest_placed_priority("org"), None);
        assert_eq!(l.usage(&t).allocated("org").cpu, 1_000);
    }

    #[test]
    fn victims_are_whole_units_youngest_and_lowest_priority_first() {
        use crate::framework::Profile;
        use crate::model::NodeInfo;
        fn reclaim(
            t: &QueueTree,
            usage: &Usage,
            cands: &[Candidate],
            min_runtime_ms: i64,
            claim: &PodInfo,
            snap: &crate::snapshot::Snapshot,
        ) -> Option<Victims> {
            VictimSearch {
                tree: t,
                usage,
                profile: &Profile::default(),
                candidates: cands,
                now_ms: 1_000,
                min_runtime_ms,
            }
            .reclaim("a", claim, snap)
        }
        let t = QueueTree::build([
            q("a", None, 8_000, None, 1),
            q("b", None, 8_000, None, 1),
            {
                let mut x = q("c", None, 0, None, 1);
                x.reclaimable = false;
                x
            },
        ]);
        // Two 8-cpu nodes full of b's pods: n0 runs a 2-member gang g (one member on
        // each node) and an old pod; n1 runs the other gang member, a young pod and
        // a high-priority pod. b holds 16 cpus against a guarantee of 8.
        let mut cache = crate::cache::ClusterCache::new();
        for n in ["n0", "n1"] {
            cache.upsert_node_info(NodeInfo::new(n, Resources::cpu_mem(8_000, 1 << 34), 10));
        }
        let mk = |name: &str, node: &str, cpu: i64, prio: i32, started: i64, unit: &str| {
            let mut p = pod(name, "b", cpu);
            p.node_name = Some(node.into());
            p.priority = prio;
            let p = Arc::new(p);
            (
                p.clone(),
                Candidate {
                    pod: p,
                    queue: "b".into(),
                    started_ms: started,
                    unit: unit.into(),
                },
            )
        };
        let set = [
            mk("g-0", "n0", 4_000, 0, 100, "gang/g"),
            mk("old", "n0", 4_000, 0, 10, "old"),
            mk("g-1", "n1", 4_000, 0, 100, "gang/g"),
            mk("young", "n1", 2_000, 0, 500, "young"),
            mk("vip", "n1", 2_000, 10, 600, "vip"),
        ];
        for (p, _) in &set {
            cache.upsert_pod((**p).clone());
        }
        let cands: Vec<Candidate> = set.iter().map(|(_, c)| c.clone()).collect();
        let usage = Usage::from_pods(&t, set.iter().map(|(p, _)| (&**p, true)));
        let snap = cache.snapshot();
        let claim = pod("claim", "a", 2_000);
        let (victims, node) =
            reclaim(&t, &usage, &cands, 0, &claim, &snap).expect("reclaim finds room");
        let names: Vec<&str> = victims.iter().map(|v| &*v.key.name).collect();
        // The youngest low-priority unit is enough, on n1.
        assert_eq!((names, &*node), (vec!["young"], "n1"));

        // A claim that needs 4 cpus: on n1 the young pod is not enough; the next unit
        // in order is the gang, which goes whole (both members), never half.
        let claim = pod("claim", "a", 4_000);
        let (victims, _) = reclaim(&t, &usage, &cands, 0, &claim, &snap).unwrap();
        let mut names: Vec<&str> = victims.iter().map(|v| &*v.key.name).collect();
        names.sort();
        assert_eq!(names, vec!["g-0", "g-1"], "the whole gang, on n0");
        // Too young to evict: nothing.
        assert!(reclaim(&t, &usage, &cands, 10_000, &claim, &snap).is_none());
        // Beyond its guarantee a queue does not reclaim.
        let big = pod("claim", "a", 9_000);
        assert!(reclaim(&t, &usage, &cands, 0, &big, &snap).is_none());
        // Nothing is taken from a queue that does not allow it.
        let cands_c: Vec<Candidate> = cands
            .iter()
            .cloned()
            .map(|mut c| {
                c.queue = "c".into();
                c
            })
            .collect();
        let usage_c = Usage::default();
        assert!(reclaim(&t, &usage_c, &cands_c, 0, &claim, &snap).is_none());

        // Priority preemption inside queue b: only units whose every member has a
        // lower priority than the claimant, whole, the cheapest node.
        let search = VictimSearch {
            tree: &t,
            usage: &usage,
            profile: &Profile::default(),
            candidates: &cands,
            now_ms: 1_000,
            min_runtime_ms: 0,
        };
        let mut vip = pod("urgent", "b", 4_000);
        vip.priority = 5;
        let (victims, node) = search
            .preempt("b", &vip, &snap)
            .expect("room by preemption");
        let mut names: Vec<&str> = victims.iter().map(|v| &*v.key.name).collect();
        names.sort();
        assert_eq!((names, &*node), (vec!["g-0", "g-1"], "n0"));
        // Equal priority preempts nothing; neither does another queue's pod.
        vip.priority = 0;
        assert!(search.preempt("b", &vip, &snap).is_none());
        vip.priority = 5;
        assert!(search.preempt("a", &vip, &snap).is_none());
    }
}
