//! Gangs: a set of pods that is useless unless all of them run (a Dask scheduler and
//! its workers, a training job's ranks) is decided as one unit over one snapshot.
//! Either every member gets a node, or none does and nothing is held.
//!
//! A gang is declared by a `PodGroup` (`scheduling.x-k8s.io/v1alpha1`) with pods
//! labelled `scheduling.x-k8s.io/pod-group: <name>`, or by the same label (or Volcano's
//! `scheduling.k8s.io/group-name` annotation) plus a `drover.dev/min-member`
//! annotation. This module is pure: the [`GangTracker`] follows members and groups
//! from watch events, [`decide`] answers what to do with a gang over a snapshot, and
//! [`plan_reservation`] picks the capacity a blocked gang waits for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::framework::{
    Diagnosis, Domains, Evaluation, Overlay, Profile, diagnose, feasible, same_question,
};
use crate::model::{NodeInfo, PodInfo, PodKey, Resources};
use crate::plugins::CycleState;
use crate::snapshot::Snapshot;

/// The label that names a pod's group (scheduler-plugins, Kubeflow).
pub const GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";
/// Volcano's annotation that names a pod's group.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// The annotation that gives a gang's minimum member count without a PodGroup.
pub const MIN_MEMBER_ANNOTATION: &str = "drover.dev/min-member";

/// A gang's namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GangKey {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The group name.
    pub name: Arc<str>,
}

impl GangKey {
    /// A key from a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> Self {
        GangKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The gang `pod` belongs to, if it names one without a conflict.
    pub fn of(pod: &PodInfo) -> Option<GangKey> {
        let g = pod.gang.as_ref()?;
        Some(GangKey {
            namespace: pod.key.namespace.clone(),
            name: g.name.clone(),
        })
    }
}

impl fmt::Display for GangKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which project's PodGroup an object is: the API drover reads it from and writes its
/// status to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dialect {
    /// `scheduling.x-k8s.io/v1alpha1` (scheduler-plugins; Kubeflow, KubeRay, Spark).
    #[default]
    SchedulerPlugins,
    /// `scheduling.volcano.sh/v1beta1` (Volcano; LeaderWorkerSet, training-operator in
    /// Volcano mode): drover writes its `status.phase` Pending → Inqueue → Running.
    Volcano,
}

/// A `PodGroup` object, as read from the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodGroupInfo {
    /// Which API it comes from.
    pub dialect: Dialect,
    /// The queue its members go to (Volcano's `spec.queue`) when a pod names none.
    pub queue: Option<Arc<str>>,
    /// Namespace and name.
    pub key: GangKey,
    /// The object's UID (Events name it).
    pub uid: Arc<str>,
    /// `spec.minMember` as written (validated by [`GangTracker::min_member`]).
    pub min_member: i64,
    /// `spec.minResources`: the cluster must have this much free before the gang is
    /// attempted.
    pub min_resources: Resources,
    /// `spec.scheduleTimeoutSeconds`, in milliseconds.
    pub schedule_timeout_ms: Option<i64>,
    /// `drover.dev/topology-required` on the PodGroup, as written.
    pub topology_required: Option<Arc<str>>,
    /// `drover.dev/topology-preferred` on the PodGroup, as written.
    pub topology_preferred: Option<Arc<str>>,
    /// What drover cannot read in it (`field: what is wrong`): its gang waits and says
    /// so, and its status carries an `Invalid` condition.
    pub problem: Option<Arc<str>>,
}

/// Where a gang member stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Not on a node yet.
    Pending,
    /// Not on a node and carrying scheduling gates: never attempted, and while any
    /// member is gated a gang below minMember places none.
    Gated,
    /// Bound or assumed; `running` once its phase is Running.
    Assigned {
        /// Phase Running.
        running: bool,
    },
    /// Ended successfully.
    Succeeded,
    /// Ended in failure.
    Failed,
}

impl MemberState {
    /// The state of a member not on a node: gated while it carries scheduling gates.
    pub fn unplaced(pod: &PodInfo) -> Self {
        if pod.is_gated() {
            MemberState::Gated
        } else {
            MemberState::Pending
        }
    }
}

/// Member counts of one gang.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GangCounts {
    /// Members not on a node (gated ones apart).
    pub pending: usize,
    /// Members not on a node that carry scheduling gates.
    pub gated: usize,
    /// Members on a node (bound or assumed), running or not.
    pub scheduled: usize,
    /// Members running.
    pub running: usize,
    /// Members that ended successfully.
    pub succeeded: usize,
    /// Members that failed.
    pub failed: usize,
}

/// `status.phase` of a PodGroup, as scheduler-plugins names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GangPhase {
    /// Fewer than minMember members exist, or none was attempted yet.
    Pending,
    /// drover is placing the gang (or its pods wait to start).
    Scheduling,
    /// At least minMember members run.
    Running,
    /// At least minMember members succeeded and none runs.
    Finished,
    /// Members failed and too few are left to make up the gang.
    Failed,
}

impl GangPhase {
    /// The phase's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GangPhase::Pending => "Pending",
            GangPhase::Scheduling => "Scheduling",
            GangPhase::Running => "Running",
            GangPhase::Finished => "Finished",
            GangPhase::Failed => "Failed",
        }
    }
}

impl GangCounts {
    /// The phase these counts mean for a gang of `min` members that was (or was not)
    /// attempted.
    pub fn phase(&self, min: usize, attempted: bool) -> GangPhase {
        let min = min.max(1);
        if self.running >= min {
            GangPhase::Running
        } else if self.succeeded >= min && self.running == 0 {
            GangPhase::Finished
        } else if self.failed > 0
            && self.pending + self.gated + self.scheduled + self.succeeded < min
        {
            GangPhase::Failed
        } else if attempted || self.scheduled > 0 {
            GangPhase::Scheduling
        } else {
            GangPhase::Pending
        }
    }
}

/// Why a gang cannot be attempted at all; each is reported on its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GangProblem {
    /// Neither a PodGroup nor a `drover.dev/min-member` annotation gives the size.
    NoPodGroup,
    /// The minimum member count is zero, negative or not a number.
    BadMinMember {
        /// Where the value comes from.
        source: String,
        /// The value as written.
        value: String,
    },
    /// Members disagree on the annotation.
    Disagree(Vec<(PodKey, Arc<str>)>),
    /// The PodGroup cannot be read: what is wrong.
    Unreadable(Arc<str>),
}

impl GangProblem {
    /// A message that names the gang and says what to fix.
    pub fn message(&self, gang: &GangKey) -> String {
        match self {
            GangProblem::NoPodGroup => format!(
                "gang {gang}: PodGroup {gang} not found; create it, or set the annotation \
                 {MIN_MEMBER_ANNOTATION} on its pods"
            ),
            GangProblem::BadMinMember { source, value } => format!(
                "gang {gang}: {source} is {value:?}; it must be a whole number of at least 1"
            ),
            GangProblem::Unreadable(problem) => {
                format!("gang {gang}: drover cannot read PodGroup {gang}: {problem}; fix it")
            }
            GangProblem::Disagree(v) => {
                let list: Vec<String> = v.iter().map(|(k, m)| format!("{k}={m}")).collect();
                format!(
                    "gang {gang}: members disagree on {MIN_MEMBER_ANNOTATION} ({}); make them equal",
                    list.join(", ")
                )
            }
        }
    }
}

/// A gang's members: state and `drover.dev/min-member` annotation of each.
type Members = BTreeMap<PodKey, (MemberState, Option<Arc<str>>)>;

/// Follows gang members and PodGroups from watch events.
#[derive(Debug, Default)]
pub struct GangTracker {
    groups: HashMap<GangKey, PodGroupInfo>,
    members: HashMap<GangKey, Members>,
    member_of: HashMap<PodKey, GangKey>,
    /// When drover first attempted each gang (ms); cleared when it runs.
    started: HashMap<GangKey, i64>,
    /// Gangs whose counts or group changed since [`GangTracker::take_dirty`].
    dirty: HashSet<GangKey>,
}

impl GangTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A PodGroup was added or changed.
    pub fn upsert_group(&mut self, g: PodGroupInfo) {
        self.dirty.insert(g.key.clone());
        self.groups.insert(g.key.clone(), g);
    }

    /// A PodGroup was deleted.
    pub fn delete_group(&mut self, key: &GangKey) {
        self.groups.remove(key);
        self.dirty.insert(key.clone());
    }

    /// Every PodGroup's key in `dialect`, in name order (for reconciling after a relist).
    pub fn group_keys(&self, dialect: Dialect) -> Vec<GangKey> {
        let mut keys: Vec<GangKey> = self
            .groups
            .iter()
            .filter(|(_, g)| g.dialect == dialect)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// The PodGroup, if one exists.
    pub fn group(&self, key: &GangKey) -> Option<&PodGroupInfo> {
        self.groups.get(key)
    }

    /// Records `pod` (any phase) in `state`. Pods that name no gang, or left one, are
    /// dropped from it. Returns the gang when its membership or a member's state
    /// changed.
    pub fn observe(&mut self, pod: &PodInfo, state: MemberState) -> Option<GangKey> {
        let gang = GangKey::of(pod);
        if let Some(old) = self.member_of.get(&pod.key).cloned()
            && Some(&old) != gang.as_ref()
        {
            self.forget(&pod.key);
        }
        let gang = gang?;
        let annotation = pod.gang.as_ref().and_then(|g| g.min_member.clone());
        let entry = self.members.entry(gang.clone()).or_default();
        let new = (state, annotation);
        let changed = entry.get(&pod.key) != Some(&new);
        if changed {
            entry.insert(pod.key.clone(), new);
            self.dirty.insert(gang.clone());
        }
        self.member_of.insert(pod.key.clone(), gang.clone());
        changed.then_some(gang)
    }

    /// The pod is gone from the API.
    pub fn forget(&mut self, key: &PodKey) {
        if let Some(g) = self.member_of.remove(key) {
            if let Some(m) = self.members.get_mut(&g) {
                m.remove(key);
                if m.is_empty() {
                    self.members.remove(&g);
                    self.started.remove(&g);
                }
            }
            self.dirty.insert(g);
        }
    }

    /// The gang a pod was recorded in.
    pub fn gang_of(&self, key: &PodKey) -> Option<&GangKey> {
        self.member_of.get(key)
    }

    /// Keys of the members of `gang` in `state` (any `Assigned` matches any).
    pub fn members_in(&self, gang: &GangKey, pending: bool) -> Vec<PodKey> {
        self.members
            .get(gang)
            .into_iter()
            .flatten()
            .filter(|(_, (s, _))| (*s == MemberState::Pending) == pending)
            .filter(|(_, (s, _))| pending || matches!(s, MemberState::Assigned { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Member counts of `gang`.
    pub fn counts(&self, gang: &GangKey) -> GangCounts {
        let mut c = GangCounts::default();
        for (s, _) in self.members.get(gang).into_iter().flatten().map(|(_, v)| v) {
            match s {
                MemberState::Pending => c.pending += 1,
                MemberState::Gated => c.gated += 1,
                MemberState::Assigned { running } => {
                    c.scheduled += 1;
                    if *running {
                        c.running += 1;
                    }
                }
                MemberState::Succeeded => c.succeeded += 1,
                MemberState::Failed => c.failed += 1,
            }
        }
        c
    }

    /// Why a gang below `min` members on nodes waits for its gated members, naming
    /// them; `None` when none is gated or the gang already runs. A gang is placed all
    /// together or not at all, so none of its members is bound while another still
    /// carries a scheduling gate (Kueue's admission gate, for one).
    pub fn gated_wait(&self, gang: &GangKey, min: usize) -> Option<String> {
        let members = self.members.get(gang)?;
        let gated: Vec<String> = members
            .iter()
            .filter(|(_, (s, _))| *s == MemberState::Gated)
            .map(|(k, _)| k.name.to_string())
            .collect();
        if gated.is_empty() || self.counts(gang).scheduled >= min {
            return None;
        }
        const SHOWN: usize = 5;
        let more = gated.len().saturating_sub(SHOWN);
        Some(format!(
            "gang {gang}: waiting for scheduling gates on {} member(s) ({}{}); no member is bound until none is gated",
            gated.len(),
            gated[..gated.len().min(SHOWN)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))
    }

    /// The gang's minimum member count: from its PodGroup if there is one, else from
    /// its members' `drover.dev/min-member` annotation.
    pub fn min_member(&self, gang: &GangKey) -> Result<usize, GangProblem> {
        if let Some(g) = self.groups.get(gang) {
            if let Some(problem) = &g.problem {
                return Err(GangProblem::Unreadable(problem.clone()));
            }
            return usize::try_from(g.min_member)
                .ok()
                .filter(|m| *m >= 1)
                .ok_or_else(|| GangProblem::BadMinMember {
                    source: format!("PodGroup {gang} spec.minMember"),
                    value: g.min_member.to_string(),
                });
        }
        let mut seen: BTreeMap<Arc<str>, PodKey> = BTreeMap::new();
        for (k, (_, a)) in self.members.get(gang).into_iter().flatten() {
            if let Some(a) = a {
                seen.entry(a.clone()).or_insert_with(|| k.clone());
            }
        }
        match seen.len() {
            0 => Err(GangProblem::NoPodGroup),
            1 => {
                let raw = seen.keys().next().expect("one");
                raw.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|m| *m >= 1)
                    .ok_or_else(|| GangProblem::BadMinMember {
                        source: format!("annotation {MIN_MEMBER_ANNOTATION}"),
                        value: raw.to_string(),
                    })
            }
            _ => Err(GangProblem::Disagree(
                seen.into_iter().map(|(a, k)| (k, a)).collect(),
            )),
        }
    }

    /// Notes the first attempt at `gang`; returns when that was.
    pub fn attempted(&mut self, gang: &GangKey, now_ms: i64) -> i64 {
        let t = *self.started.entry(gang.clone()).or_insert(now_ms);
        if t == now_ms {
            self.dirty.insert(gang.clone());
        }
        t
    }

    /// When drover first attempted the gang, if it did.
    pub fn started(&self, gang: &GangKey) -> Option<i64> {
        self.started.get(gang).copied()
    }

    /// Every gang that has a PodGroup or members.
    pub fn gangs(&self) -> impl Iterator<Item = &GangKey> {
        self.members.keys().chain(
            self.groups
                .keys()
                .filter(|k| !self.members.contains_key(*k)),
        )
    }

    /// Marks a gang's status as needing to be written again.
    pub fn touch(&mut self, gang: &GangKey) {
        self.dirty.insert(gang.clone());
    }

    /// True when some gang's status changed since the last [`GangTracker::take_dirty`].
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Gangs whose counts or group changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<GangKey> {
        let mut v: Vec<GangKey> = self.dirty.drain().collect();
        v.sort();
        v
    }
}

/// What to do with a gang now.
#[derive(Clone, Debug)]
pub enum GangDecision {
    /// At least minMember members are on nodes: further members go one by one.
    Running,
    /// The gang cannot be attempted: every pending member waits with this message.
    Wait(String),
    /// Every listed member has a node (in the order given); bind them all. With a
    /// topology constraint, `where_` names the domain(s).
    Placed {
        /// `(pod, slot, node)`.
        placed: Vec<(Arc<PodInfo>, usize, Arc<str>)>,
        /// The domain(s) used, under a topology constraint.
        where_: Option<String>,
    },
    /// Not enough fit at once; nothing is placed.
    NoFit {
        /// The message for the members.
        message: String,
        /// The members that were tried (for a reservation).
        tried: Vec<Arc<PodInfo>>,
    },
}

/// Sums what is free on every usable node (known, not cordoned), an overcommitted
/// node counting as nothing free.
pub(crate) fn free_total(snapshot: &Snapshot) -> Resources {
    let mut total = Resources::default();
    for (_, n) in snapshot.nodes() {
        if !n.known || n.unschedulable {
            continue;
        }
        let mut f = n.free();
        for (k, v) in f.clone().iter() {
            if v < 0 {
                f.set(&k, 0);
            }
        }
        total.add(&f);
    }
    total
}

/// Why a gang with `have` of its `min` pods waits.
pub fn short_of_members(gang: &GangKey, have: usize, min: usize) -> String {
    format!(
        "gang {gang}: {have} of minMember {min} pods exist; waiting for {} more",
        min.saturating_sub(have)
    )
}

/// True when `message` is [`short_of_members`] of `gang`, whatever the counts.
pub fn is_short_of_members(gang: &GangKey, message: &str) -> bool {
    message
        .strip_prefix(&format!("gang {gang}: "))
        .is_some_and(|rest| {
            rest.contains(" of minMember ") && rest.contains(" pods exist; waiting for ")
        })
}

/// Decides a gang: `min` is its minimum member count, `pending` its members without
/// a node (current versions, oldest first), `scheduled` how many are on nodes.
///
/// When at least `min` members are scheduled the gang runs and members go one by one.
/// Otherwise, once enough members exist, all pending members are placed together
/// over `snapshot`; if they do not all fit but more are pending than the gang still
/// needs, exactly the needed number is tried. `min_resources` must be free in the
/// cluster before anything is tried.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    profile: &Profile,
    gang: &GangKey,
    min: usize,
    min_resources: Option<&Resources>,
    topology: Option<&crate::topology::Constraint>,
    pending: &[Arc<PodInfo>],
    scheduled: usize,
    snapshot: &Snapshot,
) -> GangDecision {
    if scheduled >= min {
        return GangDecision::Running;
    }
    let needed = min - scheduled;
    if pending.len() < needed {
        return GangDecision::Wait(short_of_members(gang, pending.len() + scheduled, min));
    }
    // A gang larger than the whole cluster waits without holding or freeing anything.
    if let Some(why) = crate::framework::beyond_the_cluster(&pending[..needed], snapshot) {
        return GangDecision::Wait(format!("gang {gang}: {why}"));
    }
    if let Some(want) = min_resources.filter(|r| !r.is_zero()) {
        let free = free_total(snapshot);
        let short: Vec<String> = want
            .iter()
            .filter(|(k, v)| free.get(k) < *v)
            .map(|(k, v)| {
                let mut w = Resources::default();
                w.set(&k, v);
                let mut f = Resources::default();
                f.set(&k, free.get(&k));
                format!("{w} wanted, {f} free")
            })
            .collect();
        if !short.is_empty() {
            return GangDecision::Wait(format!(
                "gang {gang}: minResources not free in the cluster: {}",
                short.join("; ")
            ));
        }
    }
    let mut tries: Vec<&[Arc<PodInfo>]> = vec![pending];
    if pending.len() > needed {
        tries.push(&pending[..needed]);
    }
    if let Some(c) = topology {
        let mut why = String::new();
        for members in tries {
            match crate::topology::place(profile, members, snapshot, c) {
                crate::topology::TopologyOutcome::Placed { placed, where_ } => {
                    return GangDecision::Placed {
                        placed: with_pods(members, placed),
                        where_: Some(where_),
                    };
                }
                crate::topology::TopologyOutcome::NoFit(m) => why = m,
            }
        }
        return GangDecision::NoFit {
            message: format!("gang {gang}: {why}"),
            tried: pending.to_vec(),
        };
    }
    let mut last = None;
    for members in tries {
        match place_all(profile, members, snapshot) {
            GangOutcome::Placed(p) => {
                return GangDecision::Placed {
                    placed: with_pods(members, p),
                    where_: None,
                };
            }
            GangOutcome::Waiting {
                placeable,
                blocked,
                diagnosis,
            } => last = Some((members, placeable, blocked, diagnosis)),
        }
    }
    let (members, placeable, blocked, diagnosis) = last.expect("at least one try");
    let blocked_req = members
        .iter()
        .find(|m| m.key == blocked)
        .map(|m| m.requests.to_string())
        .unwrap_or_default();
    GangDecision::NoFit {
        message: format!(
            "gang {gang}: {placeable}/{} members placeable at once; the next ({blocked_req}) fits nowhere: {}",
            members.len(),
            diagnosis.message()
        ),
        tried: members.to_vec(),
    }
}

/// The gang's topology request: from its PodGroup's annotations, else from the first
/// pending member that has one; checked against the configured `levels`.
pub fn topology_request(
    group: Option<&PodGroupInfo>,
    pending: &[Arc<PodInfo>],
    levels: &[Arc<str>],
) -> Option<Result<crate::topology::Constraint, String>> {
    let from_group = group.and_then(|g| {
        crate::topology::Constraint::from_annotations(
            g.topology_required.as_deref(),
            g.topology_preferred.as_deref(),
            levels,
        )
    });
    from_group.or_else(|| {
        pending.iter().find_map(|p| {
            let g = p.gang.as_ref()?;
            crate::topology::Constraint::from_annotations(
                g.topology_required.as_deref(),
                g.topology_preferred.as_deref(),
                levels,
            )
        })
    })
}

/// Pairs placements `(key, slot, node)` with the members' pods.
fn with_pods(
    members: &[Arc<PodInfo>],
    placed: Vec<(PodKey, usize, Arc<str>)>,
) -> Vec<(Arc<PodInfo>, usize, Arc<str>)> {
    placed
        .into_iter()
        .map(|(k, slot, node)| {
            let pod = members
                .iter()
                .find(|m| m.key == k)
                .expect("placed member")
                .clone();
            (pod, slot, node)
        })
        .collect()
}

/// Capacity to hold on nodes for a blocked gang: node slot → (amount, member count).
pub type ReservationPlan = BTreeMap<usize, (Resources, i64)>;

/// Picks where a blocked gang will go once enough drains, or `None` if it could not
/// fit even then. A pod that will not go away (a DaemonSet pod, or one of higher
/// priority than the gang) stays counted; every other pod is assumed to end in time.
/// Each member (largest first) takes the node that passes every other filter and
/// needs the least to drain before it fits, so the wait is as short as possible.
pub fn plan_reservation(
    profile: &Profile,
    members: &[Arc<PodInfo>],
    snapshot: &Snapshot,
) -> Option<ReservationPlan> {
    plan_reservation_on(profile, members, snapshot, None).map(|(plan, _)| plan)
}

/// Where a blocked gang that requires one domain of `level` will go once enough
/// drains: the domain whose plan needs the least to drain (GPUs, then memory, then
/// CPU), or `None` if no domain could hold it even drained.
pub fn plan_reservation_in_domain(
    profile: &Profile,
    members: &[Arc<PodInfo>],
    snapshot: &Snapshot,
    level: &str,
) -> Option<ReservationPlan> {
    crate::topology::domains(snapshot, level)
        .into_iter()
        .filter_map(|d| {
            let allowed: HashSet<usize> = d.slots.into_iter().collect();
            plan_reservation_on(profile, members, snapshot, Some(&allowed))
        })
        .min_by_key(|(_, cost)| *cost)
        .map(|(plan, _)| plan)
}

/// [`plan_reservation`] over the slots in `allowed` (every node when `None`); also
/// gives what must drain in all, `(gpu, memory, cpu)`.
fn plan_reservation_on(
    profile: &Profile,
    members: &[Arc<PodInfo>],
    snapshot: &Snapshot,
    allowed: Option<&HashSet<usize>>,
) -> Option<(ReservationPlan, (i64, i64, i64))> {
    let priority = members.iter().map(|m| m.priority).max().unwrap_or(0);
    let owner = members.first().and_then(|m| GangKey::of(m));
    // A node another gang holds is that gang's.
    let held_by_other = |n: &NodeInfo| {
        n.reservation.as_ref().is_some_and(|r| {
            owner
                .as_ref()
                .is_none_or(|o| *o.namespace != *r.namespace || *o.name != *r.gang)
        })
    };
    let order = placement_order(members);
    // The drained view of a node: only the pods that stay, plus what is planned.
    let mut drained: HashMap<usize, NodeInfo> = HashMap::new();
    let mut plan = ReservationPlan::new();
    let mut cost = (0i64, 0i64, 0i64);
    for pod in order {
        // Counted over the nodes as they are: what the drained pods' terms would allow
        // is not assumed.
        let cx = CycleState::new(profile, pod, snapshot);
        let mut best: Option<((i64, i64, i64, i64), usize)> = None;
        for (slot, node) in snapshot.nodes() {
            if !node.known || allowed.is_some_and(|a| !a.contains(&slot)) || held_by_other(node) {
                continue;
            }
            let view = drained.entry(slot).or_insert_with(|| {
                let mut v = (**node).clone();
                v.reservation = None;
                let leaving: Vec<PodKey> = v
                    .pods
                    .iter()
                    .filter(|p| !p.daemonset && p.priority <= priority)
                    .map(|p| p.key.clone())
                    .collect();
                for k in leaving {
                    v.remove_pod(&k);
                }
                v
            });
            if !feasible(profile, &cx, pod, view) {
                continue;
            }
            // What must still drain on the real node before the member fits there.
            let mut need = node.requested.clone();
            if let Some((planned, _)) = plan.get(&slot) {
                need.add(planned);
            }
            need.add(&pod.requests);
            need.sub(&node.allocatable);
            let short = (
                need.gpu.max(0),
                need.memory.max(0),
                need.cpu.max(0),
                node.pod_count(),
            );
            let better = match &best {
                None => true,
                Some((b, bs)) => {
                    short < *b
                        || (short == *b
                            && snapshot.slot(slot).map(|n| &n.name)
                                < snapshot.slot(*bs).map(|n| &n.name))
                }
            };
            if better {
                best = Some((short, slot));
            }
        }
        let (short, slot) = best?;
        cost.0 += short.0;
        cost.1 += short.1;
        cost.2 += short.2;
        drained
            .get_mut(&slot)
            .expect("viewed above")
            .add_pod((*pod).clone());
        let e = plan.entry(slot).or_insert((Resources::default(), 0));
        e.0.add(&pod.requests);
        e.1 += 1;
    }
    Some((plan, cost))
}

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

/// The order in which a gang's members are placed: largest request first (GPUs, then
/// memory, then CPU), so the big members are not crowded out by the small ones; then
/// by key. The engine binds a placed gang's members in this order too.
pub fn placement_order(members: &[Arc<PodInfo>]) -> Vec<&Arc<PodInfo>> {
    let mut order: Vec<&Arc<PodInfo>> = members.iter().collect();
    order.sort_by(|a, b| placement_cmp(a, b));
    order
}

/// [`placement_order`] as a comparison: `a` is placed before `b` when it sorts less.
pub fn placement_cmp(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    let (ra, rb) = (&a.requests, &b.requests);
    (rb.gpu, rb.memory, rb.cpu)
        .cmp(&(ra.gpu, ra.memory, ra.cpu))
        .then_with(|| a.key.cmp(&b.key))
}

/// Places `members` all together over `snapshot`, largest request first so the big
/// members are not crowded out by the small ones. Pods are placed one after another on
/// an overlay of the snapshot, so each sees the ones placed before it.
pub fn place_all(profile: &Profile, members: &[Arc<PodInfo>], snapshot: &Snapshot) -> GangOutcome {
    let order = placement_order(members);
    let mut overlay = Overlay::new(snapshot);
    let mut placed = Vec::with_capacity(members.len());
    // Members of the same shape share one evaluation: after each placement only the
    // node that changed is evaluated again.
    let mut eval: Option<(usize, Evaluation)> = None;
    let mut domains = Domains::default();
    for (i, pod) in order.iter().enumerate() {
        if !eval
            .as_ref()
            .is_some_and(|(j, _)| same_question(order[*j], pod, &overlay))
        {
            eval = Some((i, Evaluation::new(profile, pod, &overlay)));
        }
        let (_, e) = eval.as_mut().expect("set above");
        match e.best(profile, &overlay) {
            Some(p) => {
                overlay.place(p.slot, (*pod).clone());
                placed.push((pod.key.clone(), p.slot, p.node));
                // A member's terms (or the terms it answers to) reach past its node:
                // the nodes of the domains it changed are evaluated again.
                if !e.placed(pod, &overlay, p.slot, &mut domains) {
                    eval = None;
                }
            }
            None => {
                return GangOutcome::Waiting {
                    placeable: i,
                    blocked: pod.key.clone(),
                    diagnosis: diagnose(profile, pod, &overlay),
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
    use crate::model::GangRef;
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

    /// Members whose claims wait for their node: one free volume that either node
    /// reaches serves one member, not two; two volumes serve both.
    #[test]
    fn members_claims_take_distinct_volumes_inside_the_gang_decision() {
        let store = |volumes: &[&str]| {
            let mut v = Volumes::default();
            v.classes.insert(
                "local".into(),
                Arc::new(StorageClass {
                    provisioner: crate::model::volume::NO_PROVISIONER.into(),
                    binding_mode: BindingMode::WaitForFirstConsumer,
                    allowed_topologies: None,
                }),
            );
            for c in ["c0", "c1"] {
                v.claims.insert(
                    ClaimKey::new("ns", c),
                    Arc::new(Claim {
                        uid: c.into(),
                        class: Some("local".into()),
                        access_modes: AccessModes::RWO,
                        ..Default::default()
                    }),
                );
            }
            for name in volumes {
                v.volumes.insert(
                    (*name).into(),
                    Arc::new(Volume {
                        name: (*name).into(),
                        class: Some("local".into()),
                        access_modes: AccessModes::RWO,
                        available: true,
                        ..Default::default()
                    }),
                );
            }
            Arc::new(v)
        };
        let members: Vec<Arc<PodInfo>> = (0..2)
            .map(|i| {
                Arc::new(PodInfo {
                    claims: Some(vec![Arc::from(format!("c{i}"))].into()),
                    ..(*pod(&format!("m{i}"), 3000)).clone()
                })
            })
            .collect();
        let one = nodes(&[4000, 4000]).with_volumes(store(&["v"]));
        assert!(
            matches!(
                place_all(&Profile::default(), &members, &one),
                GangOutcome::Waiting { placeable: 1, .. }
            ),
            "one volume for two members"
        );
        let two = nodes(&[4000, 4000]).with_volumes(store(&["v", "w"]));
        assert!(matches!(
            place_all(&Profile::default(), &members, &two),
            GangOutcome::Placed(_)
        ));
    }

    fn member(name: &str, gang: &str, cpu: i64, min: Option<&str>) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: PodKey::new("ns", name),
            uid: name.into(),
            requests: Resources::cpu_mem(cpu, 0),
            gang: Some(Arc::new(GangRef {
                name: gang.into(),
                min_member: min.map(Into::into),
                conflict: None,
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    fn group(name: &str, min: i64) -> PodGroupInfo {
        PodGroupInfo {
            key: GangKey::new("ns", name),
            min_member: min,
            ..Default::default()
        }
    }

    #[test]
    fn min_member_sources_and_bad_input() {
        let g = GangKey::new("ns", "g");
        // (PodGroup minMember, member annotations, expected min or message fragment)
        type Case<'a> = (Option<i64>, Vec<Option<&'a str>>, Result<usize, &'a str>);
        let cases: Vec<Case> = vec![
            (Some(4), vec![None, None], Ok(4)),
            (Some(4), vec![Some("2")], Ok(4)),
            (None, vec![Some("3"), Some("3"), None], Ok(3)),
            (None, vec![Some(" 5 ")], Ok(5)),
            (None, vec![None], Err("PodGroup ns/g not found")),
            (Some(0), vec![None], Err("spec.minMember is \"0\"")),
            (Some(-2), vec![None], Err("spec.minMember is \"-2\"")),
            (
                None,
                vec![Some("0")],
                Err("annotation drover.dev/min-member is \"0\""),
            ),
            (None, vec![Some("many")], Err("is \"many\"")),
            (None, vec![Some("2"), Some("3")], Err("members disagree")),
        ];
        for (i, (pg, annotations, want)) in cases.into_iter().enumerate() {
            let mut t = GangTracker::new();
            if let Some(m) = pg {
                t.upsert_group(group("g", m));
            }
            for (j, a) in annotations.iter().enumerate() {
                t.observe(&member(&format!("p{j}"), "g", 1, *a), MemberState::Pending);
            }
            match (t.min_member(&g), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "case {i}"),
                (Err(p), Err(w)) => {
                    let m = p.message(&g);
                    assert!(m.contains(w) && m.contains("ns/g"), "case {i}: {m}");
                }
                (got, w) => panic!("case {i}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn tracker_counts_and_phases() {
        let g = GangKey::new("ns", "g");
        let mut t = GangTracker::new();
        t.upsert_group(group("g", 3));
        let states = [
            MemberState::Pending,
            MemberState::Assigned { running: false },
            MemberState::Assigned { running: true },
            MemberState::Succeeded,
            MemberState::Failed,
        ];
        for (i, st) in states.iter().enumerate() {
            t.observe(&member(&format!("p{i}"), "g", 1, None), *st);
        }
        assert_eq!(
            t.counts(&g),
            GangCounts {
                pending: 1,
                gated: 0,
                scheduled: 2,
                running: 1,
                succeeded: 1,
                failed: 1
            }
        );
        // A pod that moves to another gang leaves this one.
        t.observe(&member("p0", "other", 1, None), MemberState::Pending);
        assert_eq!(t.counts(&g).pending, 0);
        t.forget(&PodKey::new("ns", "p1"));
        assert_eq!(t.counts(&g).scheduled, 1);
        assert!(t.take_dirty().contains(&g));
        assert!(t.take_dirty().is_empty());

        // (counts, min, attempted, phase)
        let c = |pending, scheduled, running, succeeded, failed| GangCounts {
            pending,
            gated: 0,
            scheduled,
            running,
            succeeded,
            failed,
        };
        let table = [
            (c(2, 0, 0, 0, 0), 4, false, GangPhase::Pending),
            (c(4, 0, 0, 0, 0), 4, true, GangPhase::Scheduling),
            (c(0, 4, 0, 0, 0), 4, true, GangPhase::Scheduling),
            (c(0, 4, 4, 0, 0), 4, true, GangPhase::Running),
            (c(0, 5, 5, 0, 0), 4, true, GangPhase::Running),
            (c(0, 0, 0, 4, 0), 4, true, GangPhase::Finished),
            (c(0, 2, 2, 0, 2), 4, true, GangPhase::Failed),
            (c(2, 0, 0, 0, 2), 4, true, GangPhase::Failed),
            (c(4, 0, 0, 0, 1), 4, true, GangPhase::Scheduling),
        ];
        for (i, (counts, min, attempted, want)) in table.iter().enumerate() {
            assert_eq!(counts.phase(*min, *attempted), *want, "case {i}");
        }
    }

    #[test]
    fn decide_table() {
        let g = GangKey::new("ns", "g");
        let members = |n: usize, cpu: i64| -> Vec<Arc<PodInfo>> {
            (0..n)
                .map(|i| member(&format!("m{i}"), "g", cpu, None))
                .collect()
        };
        // (node cpus, min, pending members (count, cpu), scheduled, minResources cpu, expect)
        // expect: "run", "wait:<fragment>", "placed:<n>", "nofit:<fragment>"
        type Case<'a> = (&'a [i64], usize, (usize, i64), usize, i64, &'a str);
        let cases: Vec<Case> = vec![
            (&[4000, 4000], 4, (4, 2000), 0, 0, "placed:4"),
            (
                &[4000, 4000],
                4,
                (3, 2000),
                0,
                0,
                "wait:3 of minMember 4 pods exist; waiting for 1 more",
            ),
            (&[4000, 4000], 4, (2, 2000), 2, 0, "placed:2"),
            (&[4000, 4000], 2, (3, 1000), 2, 0, "run"),
            (&[4000, 4000], 4, (5, 2000), 0, 0, "placed:4"),
            (
                &[4000, 4000, 4000],
                4,
                (4, 3000),
                0,
                0,
                "nofit:3/4 members placeable",
            ),
            (
                &[4000, 4000],
                4,
                (4, 3000),
                0,
                0,
                "wait:the current nodes could not hold it even empty: its 4 pods request cpu=12, and all 2 nodes together have cpu=8",
            ),
            (
                &[4000, 4000],
                2,
                (2, 1000),
                0,
                16000,
                "wait:minResources not free",
            ),
            (&[4000, 4000], 2, (2, 1000), 0, 8000, "placed:2"),
            (&[], 1, (1, 1), 0, 0, "nofit:no nodes available"),
        ];
        for (i, (caps, min, (n, cpu), scheduled, min_cpu, expect)) in cases.iter().enumerate() {
            let snap = nodes(caps);
            let pending = members(*n, *cpu);
            let mr = Resources::cpu_mem(*min_cpu, 0);
            let d = decide(
                &Profile::default(),
                &g,
                *min,
                Some(&mr),
                None,
                &pending,
                *scheduled,
                &snap,
            );
            let (kind, frag) = expect.split_once(':').unwrap_or((expect, ""));
            match (kind, d) {
                ("run", GangDecision::Running) => {}
                ("wait", GangDecision::Wait(m)) => {
                    assert!(m.contains(frag) && m.contains("ns/g"), "case {i}: {m}")
                }
                ("placed", GangDecision::Placed { placed: p, .. }) => {
                    assert_eq!(p.len().to_string(), frag, "case {i}");
                }
                ("nofit", GangDecision::NoFit { message, .. }) => {
                    assert!(message.contains(frag), "case {i}: {message}")
                }
                (k, d) => panic!("case {i}: expected {k}, got {d:?}"),
            }
        }
    }

    #[test]
    fn reservation_plan_prefers_nodes_closest_to_draining_and_respects_stayers() {
        // Three 8-cpu nodes: n0 holds 6 cpu of short pods, n1 2 cpu, n2 a DaemonSet
        // pod of 6 cpu that never leaves. A gang of two 6-cpu members must wait for
        // n0 and n1 (n1 first: it needs the least to drain); n2 can never take one.
        let mut ns = Vec::new();
        for (i, (cpu, daemon)) in [(6000, false), (2000, false), (6000, true)]
            .iter()
            .enumerate()
        {
            let mut n = NodeInfo::new(&format!("n{i}"), Resources::cpu_mem(8000, 1 << 30), 110);
            n.add_pod(Arc::new(PodInfo {
                key: PodKey::new("ns", &format!("run{i}")),
                requests: Resources::cpu_mem(*cpu, 0),
                daemonset: *daemon,
                ..Default::default()
            }));
            ns.push(n);
        }
        let snap = Snapshot::from_nodes(ns);
        let gang = vec![member("a", "g", 6000, None), member("b", "g", 6000, None)];
        let plan = plan_reservation(&Profile::default(), &gang, &snap).expect("fits once drained");
        let names: Vec<&str> = plan.keys().map(|s| &*snap.slot(*s).unwrap().name).collect();
        assert_eq!(names, vec!["n0", "n1"]);
        assert!(plan.values().all(|(r, pods)| r.cpu == 6000 && *pods == 1));
        // A gang that could never fit gets no plan.
        let huge = vec![member("a", "g", 9000, None)];
        assert_eq!(plan_reservation(&Profile::default(), &huge, &snap), None);
    }

    #[test]
    fn backfill_uses_only_what_the_reservation_leaves() {
        let mut n = NodeInfo::new("n", Resources::cpu_mem(8000, 1 << 30), 110);
        n.add_pod(pod("running", 2000));
        let mut cache = crate::cache::ClusterCache::new();
        cache.add_node_with_pods(n);
        let plan = ReservationPlan::from([(0, (Resources::cpu_mem(5000, 0), 1))]);
        cache.reserve("ns", "g", 0, &plan);
        let snap = cache.snapshot();
        let profile = Profile::default();
        let cx = crate::plugins::CycleState::default();
        let fits =
            |p: &PodInfo| crate::framework::feasible(&profile, &cx, p, snap.slot(0).unwrap());
        // (pod, fits?)
        let mut high = (*pod("high", 3000)).clone();
        high.priority = 10;
        let cases: Vec<(PodInfo, bool)> = vec![
            ((*pod("small", 1000)).clone(), true),
            ((*pod("too-big", 2000)).clone(), false),
            ((*member("mine", "g", 6000, None)).clone(), true),
            ((*member("other-gang", "h", 2000, None)).clone(), false),
            (high, true),
        ];
        for (p, want) in cases {
            assert_eq!(fits(&p), want, "{}", p.key);
        }
        let d = crate::framework::diagnose(&profile, &pod("too-big", 2000), &snap);
        assert!(
            d.message().contains("held for a waiting gang"),
            "{}",
            d.message()
        );
        // Releasing the reservation frees the node for everyone.
        cache.clear_reservation("ns", "g");
        let snap = cache.snapshot();
        assert!(crate::framework::feasible(
            &profile,
            &cx,
            &pod("too-big", 2000),
            snap.slot(0).unwrap()
        ));
    }

    /// `place_all` gives exactly what placing the members one by one with a full
    /// cycle each gives, in the same (key) order.
    fn matches_full_cycles(seed: u64, members: &[Arc<PodInfo>], snap: &Snapshot) {
        let fast = place_all(&Profile::default(), members, snap);
        let mut overlay = Overlay::new(snap);
        let mut slow = Vec::new();
        let mut blocked = None;
        for (i, m) in members.iter().enumerate() {
            match crate::framework::schedule_one(&Profile::default(), m, &overlay) {
                crate::framework::Outcome::Placed(p) => {
                    overlay.place(p.slot, m.clone());
                    slow.push((m.key.clone(), p.slot, p.node));
                }
                crate::framework::Outcome::Unschedulable(_) => {
                    blocked = Some(i);
                    break;
                }
            }
        }
        match (fast, blocked) {
            (GangOutcome::Placed(p), None) => assert_eq!(p, slow, "seed {seed}"),
            (GangOutcome::Waiting { placeable, .. }, Some(b)) => {
                assert_eq!(placeable, b, "seed {seed}")
            }
            (f, b) => panic!("seed {seed}: {f:?} vs blocked at {b:?}"),
        }
    }

    /// The same with inter-pod terms, the members' own and existing pods': counting
    /// each placed member into the shared evaluation, and evaluating again the nodes
    /// of the domains it changed, gives what a full cycle per member gives.
    #[test]
    fn reusing_one_evaluation_with_pod_affinity_matches_a_full_cycle_per_member() {
        use crate::model::{
            LabelSelector, Labels, NamespaceScope, PodAffinity, PodAffinityTerm, Requirement,
            SelectorOp,
        };
        use rand::{Rng, SeedableRng};
        let term = |key: &str, app: &str| PodAffinityTerm {
            selector: Some(LabelSelector(vec![Requirement {
                key: "app".into(),
                op: SelectorOp::In,
                values: vec![app.into()],
                bound: 0,
                field: false,
            }])),
            namespaces: NamespaceScope {
                names: vec!["ns".into()],
                selector: None,
            },
            topology_key: key.into(),
        };
        const HOST: &str = "kubernetes.io/hostname";
        const ZONE: &str = "topology.kubernetes.io/zone";
        for seed in 0..120u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut existing = 0;
            let snap = Snapshot::from_nodes((0..24).map(|i| {
                let name = format!("n{i:02}");
                let mut n = NodeInfo::new(
                    &name,
                    Resources::cpu_mem(rng.random_range(2..16) * 1000, 64 << 30),
                    20,
                );
                n.labels = Labels::new([(HOST, name.clone()), (ZONE, format!("z{}", i % 4))]);
                // Pods of the gang's app, and pods that keep it out of their zone.
                for _ in 0..rng.random_range(0..3) {
                    existing += 1;
                    let repels = rng.random_bool(0.2);
                    n.add_pod(Arc::new(PodInfo {
                        key: PodKey::new("ns", &format!("e{existing}")),
                        node_name: Some(n.name.clone()),
                        requests: Resources::cpu_mem(500, 1 << 30),
                        declares_requests: true,
                        labels: Labels::new([("app", if repels { "other" } else { "m" })]),
                        pod_affinity: repels.then(|| {
                            Arc::new(PodAffinity {
                                required_anti: vec![term(ZONE, "m")],
                                ..Default::default()
                            })
                        }),
                        ..Default::default()
                    }));
                }
                n
            }));
            let terms = match seed % 6 {
                0 => PodAffinity {
                    required_anti: vec![term(HOST, "m")],
                    ..Default::default()
                },
                1 => PodAffinity {
                    required_anti: vec![term(ZONE, "m")],
                    ..Default::default()
                },
                2 => PodAffinity {
                    required: vec![term(ZONE, "m")],
                    ..Default::default()
                },
                3 => PodAffinity {
                    preferred_anti: vec![(50, term(HOST, "m"))],
                    preferred: vec![(20, term(ZONE, "m"))],
                    ..Default::default()
                },
                4 => PodAffinity {
                    required: vec![term(HOST, "nobody-yet")],
                    ..Default::default()
                },
                _ => PodAffinity::default(),
            };
            let terms = (!terms.is_empty()).then(|| Arc::new(terms));
            let size = rng.random_range(2..20);
            let members: Vec<Arc<PodInfo>> = (0..size)
                .map(|j| {
                    Arc::new(PodInfo {
                        key: PodKey::new("ns", &format!("m{j:02}")),
                        uid: format!("m{j}").into(),
                        requests: Resources::cpu_mem(rng.random_range(1..3) * 500, 1 << 30),
                        declares_requests: true,
                        labels: Labels::new([("app", "m")]),
                        pod_affinity: terms.clone(),
                        ..Default::default()
                    })
                })
                .collect();
            // One shape for all members (the requests drawn for the first).
            let first = members[0].requests.clone();
            let members: Vec<Arc<PodInfo>> = members
                .into_iter()
                .map(|m| {
                    let mut m = (*m).clone();
                    m.requests = first.clone();
                    Arc::new(m)
                })
                .collect();
            matches_full_cycles(seed, &members, &snap);
        }
    }

    /// The shared evaluation gives exactly what placing the members one by one with a
    /// full cycle each gives.
    #[test]
    fn reusing_one_evaluation_matches_a_full_cycle_per_member() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let snap = Snapshot::from_nodes((0..40).map(|i| {
                let mut n = NodeInfo::new(
                    &format!("n{i:02}"),
                    Resources::cpu_mem(
                        rng.random_range(2..16) * 1000,
                        rng.random_range(4..64) << 30,
                    ),
                    rng.random_range(3..10),
                );
                n.allocatable.gpu = if rng.random_bool(0.3) { 8 } else { 0 };
                n
            }));
            let size = rng.random_range(2..30);
            let mut req =
                Resources::cpu_mem(rng.random_range(1..4) * 500, rng.random_range(1..8) << 30);
            req.gpu = rng.random_range(0..3);
            let members: Vec<Arc<PodInfo>> = (0..size)
                .map(|j| {
                    Arc::new(PodInfo {
                        key: PodKey::new("ns", &format!("m{j:02}")),
                        uid: format!("m{j}").into(),
                        requests: req.clone(),
                        declares_requests: true,
                        ..Default::default()
                    })
                })
                .collect();
            matches_full_cycles(seed, &members, &snap);
        }
    }
}
