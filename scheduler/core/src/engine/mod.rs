//! The engine: all of drover's scheduling policy as one state machine without I/O.
//!
//! Drivers feed it what they saw and carry out what it asks, in the style of a
//! sans-I/O protocol implementation:
//!
//! ```text
//!   watch events ──handle_pod / handle_node / handle_pod_group / ...──▶ ┌────────┐
//!   bind results ──handle_bind_result───────────────────────────────▶ │ Engine │ ──poll_action──▶ Bind, Evict,
//!   evictions    ──handle_eviction_result───────────────────────────▶ │        │     Unschedulable, Event,
//!   the lease    ──handle_leadership────────────────────────────────▶ │        │     PodGroupStatus, QueueStatus
//!   the clock    ──handle_timeout(now) when poll_timeout() is due────▶ └────────┘
//! ```
//!
//! Time is always passed in (milliseconds since the Unix epoch, or virtual time); the
//! engine never reads a clock, spawns, sleeps or blocks. Everything it decides is
//! decided here, over one snapshot per decision: which unit goes next (fair share,
//! priority, age), gangs all or nothing, reservation with backfill, repair after a
//! failed bind, schedule timeouts, quota admission, reclaim and priority preemption,
//! and what the user is told (conditions, Events, PodGroup and Queue status).
//!
//! Two modes share the state: [`Mode::Scheduler`] decides and binds on its own
//! (`drover run`, `drover simulate`); [`Mode::Extender`] answers kube-scheduler's
//! questions ([`Engine::extender_verdict`]) and never writes: kube-scheduler binds, and
//! a gang's plan is held in the cache as assumptions until the watch shows each
//! member bound or the plan lapses.

mod cycle;
mod extender;
mod report;
mod room;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::cache::{ClusterCache, PodChange};
use crate::config::Config;
use crate::framework::Diagnosis;
use crate::gang::{GangKey, GangTracker, MemberState, PodGroupInfo};
use crate::model::{
    Claim, ClaimKey, CsiNode, DeviceClaim, DisruptionBudget, Labels, NodeInfo, Numa, Phase,
    PodInfo, PodKey, Resources, StorageClass, Volume, VolumeChoice,
};
use crate::queue::QueueSet;
use crate::quota::{Contribution, Ledger, QueueSpec, QueueTree};
use crate::snapshot::Snapshot;

pub use extender::Verdict;
pub use report::{Gauges, PodGroupStatus, QueueGauge, QueueStatus};
pub use state::DecisionState;

/// How the engine works with the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// drover is the scheduler: it decides, binds, evicts and writes status.
    Scheduler,
    /// drover answers kube-scheduler as an HTTP extender: it decides only when asked
    /// and writes nothing.
    Extender {
        /// How long a gang's plan holds its members' places before it lapses (ms).
        plan_ttl_ms: i64,
        /// How long a pod that passed filter counts against its queue before the
        /// watch shows it bound (ms).
        admission_ttl_ms: i64,
    },
}

/// What a bound pod drover cannot read counts on its node: more than any node has
/// (millicores and bytes), so the node holds nothing else, yet far from overflowing
/// when added to what the node's other pods request.
const UNREADABLE_CPU: i64 = 1 << 50;
/// See [`UNREADABLE_CPU`].
const UNREADABLE_MEMORY: i64 = 1 << 60;

/// What the engine is built with.
#[derive(Clone, Debug)]
pub struct Options {
    /// The validated configuration.
    pub config: Config,
    /// The `spec.schedulerName`s whose pods drover schedules; empty: every pod (the
    /// extender, which is asked only about kube-scheduler's pods).
    pub scheduler_names: Vec<Arc<str>>,
    /// Scheduler or extender.
    pub mode: Mode,
    /// How often housekeeping runs (ms): expired assumptions, reservations, gang
    /// timeouts, Queue status.
    pub tick_ms: i64,
}

impl Options {
    /// Scheduler mode for pods that name `scheduler_name`.
    pub fn scheduler(config: Config, scheduler_name: &str) -> Self {
        Options {
            config,
            scheduler_names: vec![scheduler_name.into()],
            mode: Mode::Scheduler,
            tick_ms: 1_000,
        }
    }
}

/// The kinds of object the engine follows, each listed by its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Pods.
    Pods,
    /// Nodes.
    Nodes,
    /// PodGroups (scheduler-plugins).
    PodGroups,
    /// Volcano's PodGroups.
    VolcanoPodGroups,
    /// drover's Queues.
    Queues,
    /// Namespaces (their default queue).
    Namespaces,
    /// PodDisruptionBudgets.
    Budgets,
    /// NodeResourceTopologies (NUMA zones).
    NodeTopologies,
    /// PersistentVolumeClaims.
    Claims,
    /// PersistentVolumes.
    PersistentVolumes,
    /// StorageClasses.
    StorageClasses,
    /// CSINodes (CSI attach limits).
    CsiNodes,
    /// ResourceClaims (Dynamic Resource Allocation).
    ResourceClaims,
}

impl Resource {
    /// Every kind, in the order a full list shows them: what pods refer to first,
    /// pods last.
    pub const ALL: [Resource; 13] = [
        Resource::Nodes,
        Resource::Namespaces,
        Resource::Queues,
        Resource::PodGroups,
        Resource::VolcanoPodGroups,
        Resource::Budgets,
        Resource::NodeTopologies,
        Resource::StorageClasses,
        Resource::PersistentVolumes,
        Resource::Claims,
        Resource::CsiNodes,
        Resource::ResourceClaims,
        Resource::Pods,
    ];

    /// What must be listed before drover decides anything: without them a decision
    /// could overcommit a node, split a gang or overrun a queue.
    const BEFORE_DECIDING: [Resource; 11] = [
        Resource::Pods,
        Resource::Nodes,
        Resource::PodGroups,
        Resource::VolcanoPodGroups,
        Resource::Queues,
        Resource::Namespaces,
        Resource::Claims,
        Resource::PersistentVolumes,
        Resource::StorageClasses,
        Resource::CsiNodes,
        Resource::ResourceClaims,
    ];
}

/// The keys a relist did not show again (`seen` holds what it showed, as text).
fn unseen<'a, K: Clone + std::fmt::Display + 'a>(
    keys: impl Iterator<Item = &'a K>,
    seen: &HashSet<String>,
) -> Vec<K> {
    keys.filter(|k| !seen.contains(&k.to_string()))
        .cloned()
        .collect()
}

/// How a bind ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindResult {
    /// The pod is bound.
    Bound,
    /// The pod is already bound (by an earlier run, say), was recreated or deleted:
    /// drop it, the watch has the truth. Never retried.
    Gone(String),
    /// The request ended without an answer (a timeout, a dropped connection): the bind
    /// may have landed. The pod keeps its room on the node, so nothing else is given
    /// it, until the watch shows the pod; if it still shows it unbound once
    /// `binding.confirmTimeoutSeconds` pass, the pod is pending again and retried.
    Unknown(String),
    /// Anything else: the pod is pending again and retried.
    Failed(String),
}

/// How an eviction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvictionResult {
    /// The Eviction API accepted it; the pod goes after its grace period.
    Evicted,
    /// Refused (a PodDisruptionBudget) or not accepted in time: the pod is left alone
    /// for a while.
    Refused(String),
}

/// Why drover evicts a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// Its queue borrowed beyond its guarantee, and another queue reclaims.
    Reclaim,
    /// A pod of higher priority in its queue needs the room.
    Preemption,
    /// Its gang stayed partly placed (fewer than minMember) beyond
    /// `gangs.repairSeconds`: the placed members go so the gang can start whole.
    GangRelease,
}

impl EvictionReason {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Reclaim => "reclaim",
            EvictionReason::Preemption => "preemption",
            EvictionReason::GangRelease => "gang-release",
        }
    }
}

/// The object an Event is about.
#[derive(Clone, Debug)]
pub enum EventObject {
    /// A pod.
    Pod(Arc<PodInfo>),
    /// A PodGroup.
    PodGroup(PodGroupInfo),
}

/// An Event to record.
#[derive(Clone, Debug)]
pub struct Event {
    /// What it is about.
    pub object: EventObject,
    /// Warning (true) or Normal.
    pub warning: bool,
    /// The reason: `Scheduled`, `FailedScheduling`, `GangPlaced`, `Reclaimed`, ...
    pub reason: &'static str,
    /// The message.
    pub note: String,
}

/// What the engine asks its driver to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Bind the pod to the node (the `binding` subresource, with the pod's UID);
    /// report the outcome with [`Engine::handle_bind_result`].
    Bind {
        /// The pod as decided.
        pod: Arc<PodInfo>,
        /// Its node.
        node: Arc<str>,
        /// What to write for the pod's waiting claims before binding it: bind each to
        /// its volume, or ask its provisioner for one on the node; then wait until every
        /// claim is bound (bounded by `binding.volumeBindTimeoutSeconds`). Empty for most
        /// pods.
        volumes: Arc<[VolumeChoice]>,
    },
    /// Evict the pod through the Eviction API (honouring its disruption budgets);
    /// report the outcome with [`Engine::handle_eviction_result`].
    Evict {
        /// The victim.
        pod: Arc<PodInfo>,
        /// Why.
        reason: EvictionReason,
    },
    /// Set the pod's `PodScheduled=False, reason=Unschedulable` condition with this
    /// message (what autoscalers look for). Written in order per pod, the latest wins.
    Unschedulable {
        /// The pod.
        pod: PodKey,
        /// Why it waits.
        message: String,
    },
    /// Record an Event.
    Event(Event),
    /// Set the pod's `status.nominatedNodeName` (`Some`), as kube-scheduler does for a
    /// pod whose victims are being evicted from that node, or clear it (`None`) when
    /// the pod binds elsewhere or no longer makes room. Written in order per pod.
    Nominate {
        /// The pod.
        pod: PodKey,
        /// The node, or `None` to clear.
        node: Option<Arc<str>>,
    },
    /// Write a PodGroup's status.
    PodGroupStatus {
        /// The PodGroup.
        gang: GangKey,
        /// Its status.
        status: PodGroupStatus,
    },
    /// Write a Queue's status.
    QueueStatus {
        /// The Queue.
        queue: Arc<str>,
        /// Its status.
        status: QueueStatus,
    },
}

/// What happened since the last [`Engine::take_stats`]: counts for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Scheduling decisions made (pods or gangs looked at over a snapshot).
    pub decisions: u64,
    /// Pods bound.
    pub scheduled: u64,
    /// Attempts that found no room.
    pub unschedulable: u64,
    /// Binds that failed and will be retried.
    pub bind_failures: u64,
    /// Binds answered "already bound or gone".
    pub bind_conflicts: u64,
    /// Gangs placed all together.
    pub gangs_placed: u64,
    /// How long each gang placed waited since its first attempt (ms).
    pub gang_waits_ms: Vec<i64>,
    /// Gang members placed again after a failed bind.
    pub gang_repairs: u64,
    /// Evictions accepted, by reason.
    pub evictions: BTreeMap<&'static str, u64>,
    /// Assumptions that were never confirmed by the watch and expired.
    pub expired_assumptions: u64,
}

/// A bind handed out and not answered yet.
#[derive(Clone, Debug)]
struct InFlight {
    pod: Arc<PodInfo>,
    node: Arc<str>,
    /// What binding its claims takes (given back if the bind fails).
    volumes: Arc<[VolumeChoice]>,
}

/// An eviction handed out: until when it counts, and what to say once accepted.
#[derive(Clone, Debug)]
struct Eviction {
    until: i64,
    pod: Arc<PodInfo>,
    reason: EvictionReason,
    note: String,
    accepted: bool,
}

/// A failed single-pod attempt, reused for identical pods on the same snapshot.
#[derive(Clone, Debug)]
struct Memo {
    generation: u64,
    failed: Vec<(Arc<PodInfo>, Diagnosis)>,
}

/// drover's scheduling policy and state. See the module documentation.
pub struct Engine {
    opts: Options,
    cache: ClusterCache,
    queue: QueueSet,
    gangs: GangTracker,
    ledger: Ledger,
    queue_specs: BTreeMap<Arc<str>, QueueSpec>,
    tree: QueueTree,
    /// Some queue limits something (the extender skips the ledger otherwise).
    quotas_active: bool,
    namespace_queues: HashMap<String, Arc<str>>,
    pdbs: HashMap<String, DisruptionBudget>,
    /// Allocatable of every usable node, for dominant shares.
    cluster_total: Resources,
    /// Resources listed at least once (or not served).
    listed: HashSet<Resource>,
    /// Keys seen during a relist under way, by resource.
    relists: HashMap<Resource, HashSet<String>>,
    /// Every pod's key by UID (the extender's preempt names victims by UID).
    uids: HashMap<Arc<str>, PodKey>,
    leading: bool,
    /// The last unschedulable message per pod, so it is not written again.
    last_message: HashMap<PodKey, String>,
    /// Cache generation at a gang's last failed attempt: not retried until it changes.
    gang_tried: HashMap<GangKey, u64>,
    /// Per gang: a counter bumped whenever its members change, and when.
    gang_versions: HashMap<GangKey, (u64, i64)>,
    /// The gangs that hold a reservation, and until when.
    reservations: BTreeMap<GangKey, i64>,
    /// The last PodGroup status written per gang.
    group_status: HashMap<GangKey, PodGroupStatus>,
    /// Gangs whose scheduleTimeoutSeconds passed (reported once).
    timed_out: HashSet<GangKey>,
    /// Gangs with some but fewer than minMember members placed, since when.
    partial_since: HashMap<GangKey, i64>,
    /// Pods whose bind the API answered 409/404, by UID: never bound again; the watch
    /// says what became of them.
    conflicted: HashMap<PodKey, Arc<str>>,
    /// Of those, the pods whose bind went unanswered: retried if the watch still shows
    /// them unbound when their room expires.
    /// The message each was given.
    unanswered: HashMap<PodKey, String>,
    /// drover's pending pods that it cannot read, with why: told again when this
    /// replica starts leading.
    unreadable: HashMap<PodKey, (Arc<PodInfo>, String)>,
    /// Failed binds per gang member, so a member that keeps failing backs off.
    bind_failures: HashMap<PodKey, u32>,
    /// The last Queue status written, by queue.
    queue_status: HashMap<Arc<str>, QueueStatus>,
    /// When each pod (or gang's first member) that could reclaim started waiting.
    waiting_since: HashMap<PodKey, i64>,
    /// Evictions handed out.
    evicting: HashMap<PodKey, Eviction>,
    /// Pods given `status.nominatedNodeName`: the node their victims are leaving.
    nominated: HashMap<PodKey, Arc<str>>,
    /// Pods whose eviction was refused, left alone until the time given.
    refused: HashMap<PodKey, i64>,
    /// Binds handed out and not answered.
    in_flight: HashMap<PodKey, InFlight>,
    /// Pods the extender admitted against their queue, until when.
    admitted: HashMap<PodKey, i64>,
    /// Gang members the extender passed on their planned node: kube-scheduler is
    /// binding them, so a dropped plan keeps them where they go.
    handed: HashSet<PodKey>,
    /// Volcano PodGroups drover admitted (`Inqueue`): their minResources fit the
    /// cluster's free room and their queue. Kept until deleted, as Volcano keeps it.
    volcano_admitted: HashSet<GangKey>,
    /// When each pod on a node was first seen there (ms): how long it has run, for
    /// the minimum runtime of eviction victims.
    placed_at: HashMap<PodKey, i64>,
    /// Pending pods of ours that carry scheduling gates: never attempted.
    gated: HashSet<PodKey>,
    memo: Memo,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The latest time handed in.
    now: i64,
    next_tick: i64,
}

impl Engine {
    /// An engine that knows nothing yet: it decides once its driver has listed pods,
    /// nodes, PodGroups, Queues and namespaces ([`Engine::handle_list_done`] or
    /// [`Engine::handle_not_served`] for each), and in scheduler mode once it leads.
    pub fn new(opts: Options) -> Self {
        Engine {
            queue: QueueSet::new(opts.config.queue),
            opts,
            cache: ClusterCache::new(),
            gangs: GangTracker::new(),
            ledger: Ledger::new(),
            queue_specs: BTreeMap::new(),
            tree: QueueTree::default(),
            quotas_active: false,
            namespace_queues: HashMap::new(),
            pdbs: HashMap::new(),
            cluster_total: Resources::default(),
            listed: HashSet::new(),
            relists: HashMap::new(),
            uids: HashMap::new(),
            leading: false,
            last_message: HashMap::new(),
            gang_tried: HashMap::new(),
            gang_versions: HashMap::new(),
            reservations: BTreeMap::new(),
            group_status: HashMap::new(),
            timed_out: HashSet::new(),
            partial_since: HashMap::new(),
            conflicted: HashMap::new(),
            unanswered: HashMap::new(),
            unreadable: HashMap::new(),
            bind_failures: HashMap::new(),
            queue_status: HashMap::new(),
            waiting_since: HashMap::new(),
            evicting: HashMap::new(),
            nominated: HashMap::new(),
            refused: HashMap::new(),
            in_flight: HashMap::new(),
            admitted: HashMap::new(),
            handed: HashSet::new(),
            volcano_admitted: HashSet::new(),
            placed_at: HashMap::new(),
            gated: HashSet::new(),
            memo: Memo {
                generation: u64::MAX,
                failed: Vec::new(),
            },
            actions: VecDeque::new(),
            stats: Stats::default(),
            now: 0,
            next_tick: 0,
        }
    }

    // ----- reads ---------------------------------------------------------------

    /// The options the engine runs with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The current state of the cluster as drover counts it (bound and assumed pods).
    pub fn snapshot(&self) -> Snapshot {
        self.cache.snapshot()
    }

    /// The generation of the newest state: it changes whenever a node's pods or
    /// fields change.
    pub fn generation(&self) -> u64 {
        self.cache.generation()
    }

    /// True once pods, nodes, PodGroups, Queues and namespaces are listed.
    pub fn synced(&self) -> bool {
        Resource::BEFORE_DECIDING
            .iter()
            .all(|r| self.listed.contains(r))
    }

    /// True while this replica leads.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// The pod with `key` as the engine holds it.
    pub fn pod(&self, key: &PodKey) -> Option<&Arc<PodInfo>> {
        self.cache.pod(key)
    }

    /// The pod with this UID, if the engine holds it.
    pub fn pod_by_uid(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.cache.pod(self.uids.get(uid)?)
    }

    /// True while the pod counts on a node drover chose, not yet confirmed bound.
    pub fn is_assumed(&self, key: &PodKey) -> bool {
        self.cache.is_assumed(key)
    }

    /// Binds handed out and not answered.
    pub fn binds_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The gang tracker (members and PodGroups).
    pub fn gangs(&self) -> &GangTracker {
        &self.gangs
    }

    /// The validated queue tree.
    pub fn queue_tree(&self) -> &QueueTree {
        &self.tree
    }

    /// What every queue holds and asks for.
    pub fn usage(&self) -> crate::quota::Usage {
        self.ledger.usage(&self.tree)
    }

    /// The fair-share queue of a pod: its label, else its namespace's, else `default`.
    pub fn queue_name(&self, pod: &PodInfo) -> Arc<str> {
        pod.queue
            .clone()
            .or_else(|| {
                let gang = GangKey::of(pod)?;
                self.gangs.group(&gang)?.queue.clone()
            })
            .or_else(|| self.namespace_queues.get(&*pod.key.namespace).cloned())
            .unwrap_or_else(|| crate::quota::DEFAULT_QUEUE.into())
    }

    /// Allocatable of every usable node.
    pub fn cluster_total(&self) -> &Resources {
        &self.cluster_total
    }

    /// The gangs holding a reservation.
    pub fn reservations(&self) -> impl Iterator<Item = &GangKey> {
        self.reservations.keys()
    }

    /// Pods being evicted now.
    pub fn evicting(&self) -> impl Iterator<Item = &PodKey> {
        self.evicting.keys()
    }

    /// Counts since the last call (for metrics).
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    fn ours(&self, p: &PodInfo) -> bool {
        self.opts.scheduler_names.is_empty()
            || self
                .opts
                .scheduler_names
                .iter()
                .any(|n| **n == *p.scheduler_name)
    }

    fn writes(&self) -> bool {
        self.opts.mode == Mode::Scheduler && self.leading
    }

    /// Sets (`Some`) or clears (`None`) a pod's `status.nominatedNodeName`; written
    /// only when it changes.
    fn nominate(&mut self, key: &PodKey, node: Option<Arc<str>>) {
        let changed = match &node {
            Some(n) => self.nominated.insert(key.clone(), n.clone()).as_ref() != Some(n),
            None => self.nominated.remove(key).is_some(),
        };
        if changed && self.writes() {
            self.push(Action::Nominate {
                pod: key.clone(),
                node,
            });
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn event(&mut self, object: EventObject, warning: bool, reason: &'static str, note: String) {
        if self.writes() {
            self.push(Action::Event(Event {
                object,
                warning,
                reason,
                note,
            }));
        }
    }

    fn saw(&mut self, r: Resource, key: String) {
        if let Some(seen) = self.relists.get_mut(&r) {
            seen.insert(key);
        }
    }

    // ----- what was seen ---------------------------------------------------------

    /// A list of `resource` starts (after a start or a 410 Gone): objects not seen
    /// again before [`Engine::handle_list_done`] are gone.
    pub fn handle_list_started(&mut self, resource: Resource) {
        self.relists.insert(resource, HashSet::new());
    }

    /// A list of `resource` is complete: whatever it did not show is deleted.
    pub fn handle_list_done(&mut self, resource: Resource, now: i64) {
        self.now = now;
        if let Some(seen) = self.relists.remove(&resource) {
            match resource {
                Resource::Pods => {
                    for k in self.cache.pod_keys() {
                        if !seen.contains(&k.to_string()) {
                            self.handle_pod_deleted(&k, now);
                        }
                    }
                }
                Resource::Nodes => {
                    for n in self.cache.node_names() {
                        if !seen.contains(&*n) {
                            self.handle_node_deleted(&n, now);
                        }
                    }
                }
                Resource::PodGroups | Resource::VolcanoPodGroups => {
                    let dialect = if resource == Resource::PodGroups {
                        crate::gang::Dialect::SchedulerPlugins
                    } else {
                        crate::gang::Dialect::Volcano
                    };
                    for g in self.gangs.group_keys(dialect) {
                        if !seen.contains(&g.to_string()) {
                            self.handle_pod_group_deleted(&g, now);
                        }
                    }
                }
                Resource::Queues => {
                    let gone: Vec<Arc<str>> = self
                        .queue_specs
                        .keys()
                        .filter(|q| !seen.contains(&***q))
                        .cloned()
                        .collect();
                    for q in gone {
                        self.handle_queue_deleted(&q, now);
                    }
                }
                Resource::Namespaces => {
                    let mut gone: Vec<String> = self
                        .namespace_queues
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    gone.extend(
                        self.cache
                            .namespace_names()
                            .iter()
                            .filter(|n| !seen.contains(&***n))
                            .map(|n| n.to_string()),
                    );
                    gone.sort();
                    gone.dedup();
                    for n in gone {
                        self.handle_namespace(&n, None, now);
                    }
                }
                Resource::Budgets => self.pdbs.retain(|k, _| seen.contains(k)),
                Resource::NodeTopologies => {
                    for n in self.cache.numa_nodes() {
                        if !seen.contains(&*n) {
                            self.cache.set_numa(&n, None);
                        }
                    }
                }
                // The keys are collected first: the store is changed in place while
                // nothing else holds it.
                Resource::Claims => {
                    for k in unseen(self.cache.volumes().claims.keys(), &seen) {
                        self.handle_claim(k, None, now);
                    }
                }
                Resource::PersistentVolumes => {
                    for n in unseen(self.cache.volumes().volumes.keys(), &seen) {
                        self.handle_volume(&n, None, now);
                    }
                }
                Resource::StorageClasses => {
                    for n in unseen(self.cache.volumes().classes.keys(), &seen) {
                        self.handle_storage_class(&n, None, now);
                    }
                }
                Resource::ResourceClaims => {
                    for k in unseen(self.cache.volumes().device_claims.keys(), &seen) {
                        self.handle_device_claim(k, None, now);
                    }
                }
                Resource::CsiNodes => {
                    for n in unseen(self.cache.volumes().csi_nodes.keys(), &seen) {
                        self.handle_csi_node(&n, None, now);
                    }
                }
            }
        }
        self.listed.insert(resource);
    }

    /// The API server does not serve `resource` (its CRD is not installed): drover
    /// works without it.
    pub fn handle_not_served(&mut self, resource: Resource) {
        if self.listed.insert(resource) && resource == Resource::PodGroups {
            tracing::info!(
                "the PodGroup CRD (scheduling.x-k8s.io/v1alpha1) is not installed; gangs come from the drover.dev/min-member annotation only"
            );
        }
    }

    /// Applies the configuration's rules to a pod read from the API (exclusive
    /// namespaces), as the engine does to every pod it is handed.
    pub fn prepare(&self, mut pod: PodInfo) -> PodInfo {
        if !pod.exclusive
            && self
                .opts
                .config
                .exclusive_namespaces
                .iter()
                .any(|n| **n == *pod.key.namespace)
        {
            pod.exclusive = true;
        }
        pod
    }

    /// A pod was added or changed.
    pub fn handle_pod(&mut self, info: PodInfo, now: i64) {
        self.now = now;
        self.saw(Resource::Pods, info.key.to_string());
        let info = self.prepare(info);
        let key = info.key.clone();
        self.unreadable.remove(&key);
        if let Some(old) = self.cache.pod(&key)
            && old.uid != info.uid
        {
            self.uids.remove(&old.uid);
            // A new pod under the name (a relist may show no delete): it has heard
            // nothing yet.
            self.last_message.remove(&key);
        }
        if !info.uid.is_empty() {
            self.uids.insert(info.uid.clone(), key.clone());
        }
        let was_placed = self.cache.pod(&key).is_some_and(|p| p.node_name.is_some());
        if info.node_name.is_some() || self.conflicted.get(&key) != Some(&info.uid) {
            self.conflicted.remove(&key);
            self.unanswered.remove(&key);
        }
        let ours = self.ours(&info);
        let info = Arc::new(info);
        let change = self.cache.upsert_pod((*info).clone());
        // A gated pod is not yet asking for anything: no demand on its queue.
        let gated = ours && matches!(change, PodChange::Pending) && info.is_gated();
        if gated {
            self.gated.insert(key.clone());
        } else {
            self.gated.remove(&key);
        }
        let contribution = match change {
            PodChange::Assigned => Some(true),
            PodChange::Pending if ours && !gated => Some(false),
            _ => None,
        };
        if matches!(change, PodChange::Assigned) || !ours {
            self.admitted.remove(&key);
        }
        if info.node_name.is_some() || !ours {
            self.handed.remove(&key);
        }
        match change {
            PodChange::Assigned => {
                self.placed_at.entry(key.clone()).or_insert(now);
            }
            _ => {
                self.placed_at.remove(&key);
            }
        }
        let placed_by_admission = contribution == Some(false) && self.admitted.contains_key(&key);
        self.ledger.set(
            &key,
            contribution.map(|placed| self.contribution(&info, placed || placed_by_admission)),
        );
        if ours && info.gang.as_ref().is_some_and(|g| g.conflict.is_none()) {
            let state = match (&change, info.phase) {
                (_, Phase::Succeeded) => Some(MemberState::Succeeded),
                (_, Phase::Failed) => Some(MemberState::Failed),
                // Going away (evicted, deleted): no longer a member the gang can count
                // on, though it holds its node until it is gone.
                _ if info.deleting => None,
                (PodChange::Pending, _) => Some(MemberState::unplaced(&info)),
                (PodChange::Assigned, p) => Some(MemberState::Assigned {
                    running: p == Phase::Running,
                }),
                (PodChange::Terminal, _) => None,
            };
            match state {
                Some(st) => {
                    // A member arrived, left or moved: the gang is worth deciding again.
                    if let Some(g) = self.gangs.observe(&info, st) {
                        self.gang_tried.remove(&g);
                        self.bump(&g, now);
                        if gated {
                            // It does not enter the queue: the members waiting for it
                            // must hear that it is gated.
                            for m in self.pending_members(&g, None) {
                                self.queue.wake(&m.key, now);
                            }
                        }
                    }
                }
                None => self.forget_member(&key, now),
            }
        } else {
            self.forget_member(&key, now);
        }
        match change {
            PodChange::Pending if ours && !gated && self.opts.mode == Mode::Scheduler => {
                self.queue.add_or_update(self.queue_name(&info), info, now)
            }
            PodChange::Terminal if was_placed => {
                self.forget_pod(&key);
                self.queue.cluster_changed(now);
            }
            // Our bind is in flight: the pod stays in the queue until it answers.
            PodChange::Assigned if self.cache.is_assumed(&key) && info.node_name.is_none() => {}
            _ => self.forget_pod(&key),
        }
    }

    fn forget_member(&mut self, key: &PodKey, now: i64) {
        if let Some(g) = self.gangs.gang_of(key).cloned() {
            self.bump(&g, now);
        }
        self.gangs.forget(key);
    }

    fn bump(&mut self, gang: &GangKey, now: i64) {
        let e = self.gang_versions.entry(gang.clone()).or_insert((0, now));
        *e = (e.0 + 1, now);
    }

    fn forget_pod(&mut self, key: &PodKey) {
        self.queue.remove(key);
        self.last_message.remove(key);
        self.bind_failures.remove(key);
        self.waiting_since.remove(key);
    }

    /// A pod was deleted.
    pub fn handle_pod_deleted(&mut self, key: &PodKey, now: i64) {
        self.now = now;
        let was_placed = self.cache.pod(key).is_some_and(|p| p.node_name.is_some());
        if let Some(p) = self.cache.pod(key)
            && self.uids.get(&p.uid) == Some(key)
        {
            let uid = p.uid.clone();
            self.uids.remove(&uid);
        }
        tracing::debug!(pod = %key, was_placed, "pod deleted");
        self.conflicted.remove(key);
        self.unanswered.remove(key);
        self.unreadable.remove(key);
        self.cache.delete_pod(key);
        self.forget_member(key, now);
        self.ledger.set(key, None);
        self.admitted.remove(key);
        self.handed.remove(key);
        self.placed_at.remove(key);
        self.gated.remove(key);
        self.nominated.remove(key);
        self.forget_pod(key);
        if was_placed {
            self.queue.cluster_changed(now);
        }
    }

    /// A pod drover cannot read: its spec does not convert (an impossible quantity, a
    /// malformed selector). `pod` holds what could be read (name, uid, scheduler,
    /// node). It is never scheduled; when it is one of drover's pending pods, its
    /// `PodScheduled` condition and a `FailedScheduling` Event say why, once per
    /// problem, so its owner is not left guessing.
    pub fn handle_unreadable_pod(&mut self, pod: PodInfo, problem: &str, now: i64) {
        self.now = now;
        let key = pod.key.clone();
        if self.cache.pod(&key).is_some_and(|p| p.node_name.is_none()) {
            // What was readable before must not be scheduled from its old spec.
            self.handle_pod_deleted(&key, now);
        }
        if pod.node_name.is_some() && !pod.deleting && !pod.phase.is_terminal() {
            // Running somewhere with requests drover cannot read: its node counts as
            // full (no other pod is placed beside it), it is never a victim, and no
            // queue's ledger counts it.
            let holder = PodInfo {
                requests: Resources::cpu_mem(UNREADABLE_CPU, UNREADABLE_MEMORY),
                priority: i32::MAX,
                ..pod
            };
            self.unreadable.remove(&key);
            self.cache.upsert_pod(holder);
            self.queue.cluster_changed(now);
            return;
        }
        if pod.node_name.is_some() || pod.deleting || !self.ours(&pod) {
            self.unreadable.remove(&key);
            return;
        }
        let message = format!("drover cannot read this pod, so it never schedules it: {problem}");
        self.unreadable
            .insert(key.clone(), (Arc::new(pod), message));
        self.say_unreadable(&key);
    }

    /// Says why an unreadable pod waits, when it has not been said (by this replica,
    /// since it leads).
    fn say_unreadable(&mut self, key: &PodKey) {
        if let Some((pod, message)) = self.unreadable.get(key).cloned() {
            self.say_unschedulable(&pod, &message);
        }
    }

    /// A node was added or changed.
    pub fn handle_node(&mut self, info: NodeInfo, now: i64) {
        self.now = now;
        self.saw(Resource::Nodes, info.name.to_string());
        let snap = self.cache.snapshot();
        let unchanged = snap.node(&info.name).is_some_and(|n| same_node(n, &info));
        if !unchanged {
            self.cache.upsert_node_info(info);
            self.queue.cluster_changed(now);
            self.recount_cluster();
        }
    }

    /// A node was deleted. Pods still on it keep counting (on a placeholder that no
    /// filter accepts) until they are deleted.
    pub fn handle_node_deleted(&mut self, name: &str, now: i64) {
        self.now = now;
        self.cache.delete_node(name);
        self.recount_cluster();
    }

    /// A node's NUMA zones (`None`: it has none any more).
    pub fn handle_node_topology(&mut self, node: &str, numa: Option<Numa>, now: i64) {
        self.now = now;
        self.saw(Resource::NodeTopologies, node.to_string());
        self.cache.set_numa(node, numa.map(Arc::new));
        self.queue.cluster_changed(now);
    }

    /// A PodGroup was added or changed.
    pub fn handle_pod_group(&mut self, group: PodGroupInfo, now: i64) {
        self.now = now;
        let resource = match group.dialect {
            crate::gang::Dialect::SchedulerPlugins => Resource::PodGroups,
            crate::gang::Dialect::Volcano => Resource::VolcanoPodGroups,
        };
        self.saw(resource, group.key.to_string());
        let key = group.key.clone();
        let queue_before = self.gangs.group(&key).and_then(|g| g.queue.clone());
        let queue_changed = queue_before != group.queue;
        self.gangs.upsert_group(group);
        if queue_changed {
            let members: HashSet<PodKey> = self.gangs.members_in(&key, false).into_iter().collect();
            self.pods_changed_queue(|k| members.contains(k), now);
        }
        self.gang_changed(&key, now);
    }

    /// A PodGroup was deleted.
    pub fn handle_pod_group_deleted(&mut self, key: &GangKey, now: i64) {
        self.now = now;
        let had_queue = self.gangs.group(key).is_some_and(|g| g.queue.is_some());
        let members: HashSet<PodKey> = self.gangs.members_in(key, false).into_iter().collect();
        self.gangs.delete_group(key);
        self.volcano_admitted.remove(key);
        if had_queue {
            self.pods_changed_queue(|k| members.contains(k), now);
        }
        self.gang_changed(key, now);
    }

    /// A gang's definition changed: its waiting members get another try now.
    fn gang_changed(&mut self, gang: &GangKey, now: i64) {
        self.gang_tried.remove(gang);
        self.bump(gang, now);
        for k in self.gangs.members_in(gang, true) {
            self.queue.backoff(&k, now);
        }
    }

    /// A Queue was added or changed.
    pub fn handle_queue(&mut self, spec: QueueSpec, now: i64) {
        self.now = now;
        self.saw(Resource::Queues, spec.name.to_string());
        self.queue_specs.insert(spec.name.clone(), spec);
        self.rebuild_tree(now);
    }

    /// A Queue was deleted.
    pub fn handle_queue_deleted(&mut self, name: &str, now: i64) {
        self.now = now;
        if self.queue_specs.remove(name).is_some() {
            self.rebuild_tree(now);
        }
    }

    fn rebuild_tree(&mut self, now: i64) {
        let before: Vec<String> = self.tree.problems().map(|p| p.to_string()).collect();
        self.tree = QueueTree::build(self.queue_specs.values().cloned());
        self.quotas_active = self.tree.queues().any(|q| q.max.is_some());
        for p in self.tree.problems() {
            if !before.contains(&p.to_string()) {
                tracing::warn!(problem = %p, "invalid Queue");
            }
        }
        self.queue.cluster_changed(now);
    }

    /// Namespace `namespace` now has `labels` (`None`: it is gone): its
    /// `drover.dev/queue` label names the default queue of its pods, and terms'
    /// `namespaceSelector`s read its labels.
    pub fn handle_namespace(&mut self, namespace: &str, labels: Option<Labels>, now: i64) {
        self.now = now;
        self.saw(Resource::Namespaces, namespace.to_string());
        let queue = labels
            .as_ref()
            .and_then(|l| l.get(crate::quota::QUEUE_LABEL))
            .filter(|v| !v.is_empty())
            .map(Arc::<str>::from);
        if self.cache.set_namespace(namespace, labels) {
            // Pods' inter-pod terms may select it: pods that wait are worth trying.
            self.queue.cluster_changed(now);
        }
        let changed = match queue {
            Some(q) => {
                self.namespace_queues
                    .insert(namespace.to_string(), q.clone())
                    != Some(q)
            }
            None => self.namespace_queues.remove(namespace).is_some(),
        };
        if changed {
            self.namespace_queue_changed(namespace, now);
        }
    }

    /// A namespace's default queue changed: its pods move.
    fn namespace_queue_changed(&mut self, namespace: &str, now: i64) {
        self.pods_changed_queue(|k| *k.namespace == *namespace, now);
    }

    /// The queue of the pods `which` selects may have changed (their namespace's or
    /// PodGroup's): those that name none themselves move, in the ledger and the queue.
    fn pods_changed_queue(&mut self, which: impl Fn(&PodKey) -> bool, now: i64) {
        for key in self.cache.pod_keys() {
            if !which(&key) {
                continue;
            }
            let Some(pod) = self.cache.pod(&key).cloned() else {
                continue;
            };
            if pod.queue.is_some() {
                continue;
            }
            let q = self.queue_name(&pod);
            let placed = pod.node_name.is_some();
            if placed || self.ours(&pod) {
                self.ledger.set(&key, Some(self.contribution(&pod, placed)));
            }
            if self.queue.contains(&key) {
                self.queue.add_or_update(q, pod, now);
            }
        }
    }

    /// A PersistentVolumeClaim was added or changed (`None`: deleted). Pods that wait
    /// are worth trying again when it changed.
    pub fn handle_claim(&mut self, key: ClaimKey, claim: Option<Claim>, now: i64) {
        self.now = now;
        self.saw(Resource::Claims, key.to_string());
        if self.cache.set_claim(key, claim) {
            self.queue.cluster_changed(now);
        }
    }

    /// A PersistentVolume was added or changed (`None`: deleted).
    pub fn handle_volume(&mut self, name: &str, volume: Option<Volume>, now: i64) {
        self.now = now;
        self.saw(Resource::PersistentVolumes, name.to_string());
        if self.cache.set_volume(name, volume) {
            self.queue.cluster_changed(now);
        }
    }

    /// A StorageClass was added or changed (`None`: deleted).
    pub fn handle_storage_class(&mut self, name: &str, class: Option<StorageClass>, now: i64) {
        self.now = now;
        self.saw(Resource::StorageClasses, name.to_string());
        if self.cache.set_storage_class(name, class) {
            self.queue.cluster_changed(now);
        }
    }

    /// A ResourceClaim was added or changed (`None`: deleted).
    pub fn handle_device_claim(&mut self, key: ClaimKey, claim: Option<DeviceClaim>, now: i64) {
        self.now = now;
        self.saw(Resource::ResourceClaims, key.to_string());
        if self.cache.set_device_claim(key, claim) {
            self.queue.cluster_changed(now);
        }
    }

    /// A node's CSINode was added or changed (`None`: deleted).
    pub fn handle_csi_node(&mut self, node: &str, csi: Option<CsiNode>, now: i64) {
        self.now = now;
        self.saw(Resource::CsiNodes, node.to_string());
        if self.cache.set_csi_node(node, csi) {
            self.queue.cluster_changed(now);
        }
    }

    /// A PodDisruptionBudget (`None`: deleted, or it covers no pod).
    pub fn handle_budget(&mut self, key: &str, budget: Option<DisruptionBudget>) {
        self.saw(Resource::Budgets, key.to_string());
        match budget {
            Some(b) => self.pdbs.insert(key.to_string(), b),
            None => self.pdbs.remove(key),
        };
    }

    /// This replica became the leader (true) or lost the Lease (false). Only the
    /// leader decides; every replica keeps its state warm.
    pub fn handle_leadership(&mut self, leading: bool, now: i64) {
        self.now = now;
        if leading == self.leading {
            return;
        }
        self.leading = leading;
        if leading {
            // Another replica may have written since: write everything afresh.
            self.last_message.clear();
            self.group_status.clear();
            self.queue_status.clear();
            self.gang_tried.clear();
            for g in self.gangs.gangs().cloned().collect::<Vec<_>>() {
                self.gangs.touch(&g);
            }
            self.queue.cluster_changed(now);
            // Pods whose bind went unanswered wait for the watch, not the queue: say
            // why again.
            if self.writes() {
                let mut waiting: Vec<_> = self.unanswered.iter().collect();
                waiting.sort();
                let writes: Vec<Action> = waiting
                    .into_iter()
                    .map(|(k, m)| Action::Unschedulable {
                        pod: k.clone(),
                        message: m.clone(),
                    })
                    .collect();
                for a in writes {
                    self.push(a);
                }
                let mut unreadable: Vec<PodKey> = self.unreadable.keys().cloned().collect();
                unreadable.sort();
                for k in unreadable {
                    self.say_unreadable(&k);
                }
            }
        } else {
            // Writes not yet handed out are no longer this replica's to make.
            self.actions.clear();
            self.reservations.clear();
            self.cache.clear_reservations();
        }
    }

    /// What `pod` contributes to its queue's ledger entry.
    fn contribution(&self, pod: &PodInfo, placed: bool) -> Contribution {
        Contribution {
            queue: self.queue_name(pod),
            requests: pod.requests.clone(),
            placed,
            priority: pod.priority,
        }
    }

    /// Sums the allocatable of every usable node (dominant shares are relative to it).
    fn recount_cluster(&mut self) {
        let mut total = Resources::default();
        for (_, n) in self.cache.snapshot().nodes() {
            if n.known && !n.unschedulable {
                total.add(&n.allocatable);
            }
        }
        self.cluster_total = total;
    }

    /// Why `queue` cannot take `request` now, if it cannot.
    fn quota_refusal(&self, queue: &str, request: &Resources) -> Option<String> {
        if !self.quotas_active {
            // Nothing is limited: only invalid or unknown queues refuse.
            return self.tree.admit(&Default::default(), queue, request);
        }
        self.tree
            .admit(&self.ledger.usage(&self.tree), queue, request)
    }

    // ----- results of actions --------------------------------------------------

    /// A bind handed out as [`Action::Bind`] ended. Answers for pods the engine did
    /// not hand out (or already heard about) are ignored.
    pub fn handle_bind_result(&mut self, key: &PodKey, result: BindResult, now: i64) {
        self.now = now;
        let Some(InFlight { pod, node, volumes }) = self.in_flight.remove(key) else {
            return;
        };
        match result {
            BindResult::Bound => {
                self.cache
                    .finish_binding(&pod.key, now + self.opts.config.confirm_timeout_ms);
                // Bound where it was nominated, the API keeps the field; elsewhere, it
                // is cleared.
                if self.nominated.get(&pod.key) == Some(&node) {
                    self.nominated.remove(&pod.key);
                } else {
                    self.nominate(&pod.key, None);
                }
                self.forget_pod(&pod.key);
                self.stats.scheduled += 1;
                let note = format!("Successfully assigned {} to {node}", pod.key);
                self.event(EventObject::Pod(pod.clone()), false, "Scheduled", note);
                if !pod.declares_requests && !pod.daemonset {
                    // What happened, no more: the node it went to and that node's size.
                    let size = self
                        .cache
                        .node(&node)
                        .map(|n| format!(" ({} allocatable)", n.allocatable))
                        .unwrap_or_default();
                    let note = format!(
                        "pod {} declares no resource requests: drover counted it as needing nothing and placed it on {node}{size}; set requests so it gets the room it needs",
                        pod.key
                    );
                    self.event(EventObject::Pod(pod), true, "NoRequests", note);
                }
            }
            BindResult::Gone(why) => {
                // 409: it is bound already (most often by this very bind, answered
                // late after a timeout) or was replaced; 404: it is gone. The watch
                // says which; until then it keeps its room on the node and is never
                // bound again.
                tracing::info!(pod = %pod.key, node = %node, reason = %why, "pod is gone or already bound; waiting for the watch");
                self.stats.bind_conflicts += 1;
                self.await_watch(&pod, now);
            }
            BindResult::Unknown(why) => {
                // It may have landed: giving its room to another pod could put two on
                // room for one. Wait for the watch, as for a 409.
                tracing::warn!(pod = %pod.key, node = %node, error = %why, "bind unanswered; keeping its room until the watch shows the pod");
                self.stats.bind_failures += 1;
                self.await_watch(&pod, now);
                let note = format!(
                    "binding to {node} went unanswered ({why}); its room is kept until the pod shows bound, or is retried after binding.confirmTimeoutSeconds"
                );
                self.unanswered.insert(pod.key.clone(), note.clone());
                if self.writes() {
                    self.last_message.insert(pod.key.clone(), note.clone());
                    self.push(Action::Unschedulable {
                        pod: pod.key.clone(),
                        message: note.clone(),
                    });
                }
                self.event(EventObject::Pod(pod), true, "FailedBinding", note);
            }
            BindResult::Failed(why) => {
                tracing::warn!(pod = %pod.key, node = %node, error = %why, "bind failed; will retry");
                self.stats.bind_failures += 1;
                self.cache.forget_volumes(&volumes);
                self.unassume(&pod.key);
                // A watch update during the bind may have taken the pod out of the
                // queue: put it back, or it would wait for its next update.
                if !self.queue.contains(&pod.key)
                    && let Some(current) = self.cache.pod(&pod.key).cloned()
                    && current.node_name.is_none()
                    && self.ours(&current)
                {
                    self.queue
                        .add_or_update(self.queue_name(&current), current, now);
                }
                if let Some(gang) = self.gangs.gang_of(&pod.key).cloned() {
                    self.repair_gang(&gang, &pod, &node, &why, now);
                } else {
                    self.queue.backoff(&pod.key, now);
                }
                let note = format!("binding to {node} failed: {why}");
                self.event(EventObject::Pod(pod), true, "FailedBinding", note);
            }
        }
    }

    /// A bind whose outcome only the watch can tell: the pod keeps its room on the node
    /// until the watch shows it or the confirm timeout passes, and is not bound again
    /// for this UID meanwhile.
    fn await_watch(&mut self, pod: &PodInfo, now: i64) {
        self.conflicted.insert(pod.key.clone(), pod.uid.clone());
        self.cache
            .finish_binding(&pod.key, now + self.opts.config.confirm_timeout_ms);
        self.forget_pod(&pod.key);
    }

    /// Takes back an assumption: the pod no longer counts on its node and is pending
    /// again, in the ledger and its gang too.
    fn unassume(&mut self, key: &PodKey) {
        if !self.cache.is_assumed(key) {
            return;
        }
        self.cache.forget(key);
        self.placed_at.remove(key);
        self.handed.remove(key);
        if let Some(current) = self.cache.pod(key).cloned() {
            let ours = self.ours(&current);
            self.ledger
                .set(key, ours.then(|| self.contribution(&current, false)));
            if ours && self.gangs.gang_of(key).is_some() {
                self.gangs
                    .observe(&current, MemberState::unplaced(&current));
            }
        }
    }

    /// An eviction handed out as [`Action::Evict`] ended.
    pub fn handle_eviction_result(&mut self, key: &PodKey, result: EvictionResult, now: i64) {
        self.now = now;
        match result {
            EvictionResult::Evicted => {
                let Some(e) = self.evicting.get_mut(key).filter(|e| !e.accepted) else {
                    return;
                };
                e.accepted = true;
                let (pod, reason, note) = (e.pod.clone(), e.reason, e.note.clone());
                *self.stats.evictions.entry(reason.as_str()).or_default() += 1;
                let event = match reason {
                    EvictionReason::Reclaim => "Reclaimed",
                    EvictionReason::Preemption => "Preempted",
                    EvictionReason::GangRelease => "GangReleased",
                };
                self.event(EventObject::Pod(pod), true, event, note);
            }
            EvictionResult::Refused(why) => {
                if self.evicting.remove(key).is_none() {
                    return;
                }
                tracing::info!(pod = %key, reason = %why, "eviction refused; left alone for a minute");
                self.refused.insert(key.clone(), now + 60_000);
                self.queue.cluster_changed(now);
            }
        }
    }

    // ----- the clock -----------------------------------------------------------

    /// When the engine wants [`Engine::handle_timeout`] called next: now when there
    /// is work, else the next backoff's end or the next housekeeping.
    pub fn poll_timeout(&mut self) -> Option<i64> {
        let mut next = self.next_tick;
        if self.gangs.has_dirty() && self.writes() {
            next = next.min(self.now);
        }
        if self.opts.mode == Mode::Scheduler && self.leading {
            if self.queue.ready(self.now) {
                next = next.min(self.now);
            } else if let Some(t) = self.queue.next_wakeup() {
                next = next.min(t);
            }
        }
        Some(next)
    }

    /// Does what is due at `now`: housekeeping once a tick, then one scheduling
    /// decision (a pod, or a whole gang) if one is ready, then PodGroup status.
    pub fn handle_timeout(&mut self, now: i64) {
        self.now = now;
        if now >= self.next_tick {
            self.tick(now);
            self.next_tick = now + self.opts.tick_ms;
        }
        if !self.synced() {
            return;
        }
        if self.opts.mode == Mode::Scheduler && self.leading {
            self.schedule_next(now);
        }
        if self.writes() {
            self.sync_group_status();
        }
    }

    /// The next action for the driver, in the order decided.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Once a tick: expire assumptions the watch never confirmed and extender
    /// admissions, drop a reservation that is no longer needed or ran out, report
    /// gangs past their scheduleTimeoutSeconds, write Queue status.
    fn tick(&mut self, now: i64) {
        for k in self.cache.expire(now) {
            tracing::warn!(pod = %k, "binding was never confirmed by the watch; dropping the assumption");
            self.stats.expired_assumptions += 1;
            self.after_expiry(&k, now);
        }
        let lapsed: Vec<PodKey> = self
            .admitted
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in lapsed {
            self.admitted.remove(&k);
            if let Some(p) = self.cache.pod(&k).cloned()
                && p.node_name.is_none()
            {
                let ours = self.ours(&p);
                self.ledger
                    .set(&k, ours.then(|| self.contribution(&p, false)));
            }
        }
        self.evicting
            .retain(|k, e| e.until > now && self.cache.pod(k).is_some());
        self.refused.retain(|_, until| *until > now);
        let held: Vec<(GangKey, i64)> = self
            .reservations
            .iter()
            .map(|(g, u)| (g.clone(), *u))
            .collect();
        for (g, until) in held {
            let done = self
                .gangs
                .min_member(&g)
                .map_or(true, |min| self.gangs.counts(&g).scheduled >= min)
                || self.gangs.counts(&g).pending == 0;
            if done || until <= now {
                tracing::info!(gang = %g, expired = !done, "reservation released");
                self.release_reservation(&g, now);
            }
        }
        if self.writes() {
            self.report_timeouts(now);
            self.release_partial_gangs(now);
            self.sync_queues();
        }
    }

    /// Drops the gang's reservation: its nodes are everyone's again.
    fn release_reservation(&mut self, gang: &GangKey, now: i64) {
        if self.reservations.remove(gang).is_some() {
            self.cache.clear_reservation(&gang.namespace, &gang.name);
            self.gang_tried.remove(gang);
            self.queue.cluster_changed(now);
        }
    }

    /// An assumption expired: the pod is pending again (if it is in fact bound, the
    /// watch says so, and a new bind is answered "already bound").
    fn after_expiry(&mut self, key: &PodKey, now: i64) {
        // Its room on the node is free again.
        self.queue.cluster_changed(now);
        // An unanswered bind the watch never showed landed: try the pod again.
        if self.unanswered.remove(key).is_some() {
            self.conflicted.remove(key);
        }
        let Some(current) = self.cache.pod(key).cloned() else {
            return;
        };
        let ours = self.ours(&current);
        self.ledger
            .set(key, ours.then(|| self.contribution(&current, false)));
        if ours
            && self.gangs.gang_of(key).is_some()
            && let Some(g) = self
                .gangs
                .observe(&current, MemberState::unplaced(&current))
        {
            self.gang_tried.remove(&g);
            self.bump(&g, now);
        }
        if ours && self.opts.mode == Mode::Scheduler {
            self.queue
                .add_or_update(self.queue_name(&current), current, now);
        }
    }
}

/// True when the node's spec and status are those drover already holds.
fn same_node(a: &NodeInfo, b: &NodeInfo) -> bool {
    a.known
        && a.labels == b.labels
        && a.taints == b.taints
        && a.unschedulable == b.unschedulable
        && a.allocatable == b.allocatable
        && a.max_pods == b.max_pods
        && a.gpu_memory_mib == b.gpu_memory_mib
}

#[cfg(test)]
mod tests;
