//! The seeded fault-injecting simulation: drover's [`Engine`] driven over a simulated
//! API server that misbehaves, with invariants checked after every step.
//!
//! One seed makes one cluster (nodes in racks, a few pods of another scheduler),
//! three Queues (guarantees, a max, borrowing), and jobs arriving over virtual time:
//! single pods and gangs of 2–6 (some elastic, some requiring one rack, some covered by
//! a PodDisruptionBudget), of two priorities. The world then does what clusters do:
//!
//! - binds answer late and out of order, fail with a 500, or time out (having landed,
//!   or not); a bind for a pod already bound or recreated is answered 409, for a
//!   deleted one 404;
//! - watch events arrive late (order kept per resource, as one watch stream keeps
//!   it) and some twice; a watch outage drops what was under way and ends in a full
//!   relist that no longer shows what was deleted meanwhile;
//! - nodes go away under running pods (the pod GC deletes them, owners recreate them,
//!   a gang's job restarts whole) and new nodes come;
//! - evictions are refused (a PodDisruptionBudget the engine may not have seen yet,
//!   or a 429) or take a grace period;
//! - the Lease is lost and regained; the scheduler restarts (a fresh engine built
//!   from a relist, binds in flight having landed or not).
//!
//! After every step the invariants below hold, or the run stops with the seed, the
//! step and the last things that happened; `DROVER_SIM_SEED=N cargo test -p
//! drover-sim --test faults -- --ignored` replays a seed exactly (the run is a pure function of it).
//!
//! - no node over its allocatable (pods, cpu, memory, GPUs, extended resources), in
//!   the API and in the engine's own snapshot;
//! - no bind handed out for a pod with a bind in flight, for a pod the engine was
//!   shown bound, for a pod answered 409/404 (same UID), for a pod of another
//!   scheduler, or while not leading;
//! - no queue above its max;
//! - a reclaim victim's queue keeps its guarantee;
//! - a pod that a gang's reservation does not admit is placed on a reserved node only
//!   when the reserved amount stays free;
//! - a gang is partly bound (1 to minMember − 1 members) only for a repair window
//!   after a failed bind, a node loss, a refused eviction, a restart, an outage or a
//!   change of leader;
//! - every pod of drover's left pending has a reason (its `PodScheduled` condition);
//! - once the faults stop, every gang ends whole or empty and no bind is left in
//!   flight.
//!
//! Exemptions are named where they are made: a bind that timed out but landed lets
//! its node and queue be over for as long as the engine has not been shown it (the
//! engine was told it failed; the kubelet's admission refuses the extra pod, as it
//! would under kube-scheduler).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use drover_core::config::Config;
use drover_core::engine::{
    Action, BindResult, Engine, EvictionReason, EvictionResult, Options, Resource,
};
use drover_core::gang::{GangKey, PodGroupInfo};
use drover_core::model::{
    DisruptionBudget, GangRef, Labels, NodeInfo, Phase, PodInfo, PodKey, Requirement, ResourceKind,
    Resources, SelectorOp, SelectorTerm,
};
use drover_core::quota::QueueSpec;

const GI: i64 = 1 << 30;
/// How long a gang may stay partly bound after something disturbed it.
const REPAIR_WINDOW_MS: i64 = 60_000;
/// How long a pod may wait without a reason.
const REASON_WINDOW_MS: i64 = 10_000;
/// How long the world runs on without faults or arrivals once the events are spent.
const TAIL_MS: i64 = 120_000;
/// After the tail, how long binds already issued may take to land while no job finishes
/// (a gang placed in the tail's last instant is not yet whole when the tail ends).
const SETTLE_MS: i64 = 60_000;
/// Lines of history a failure prints (`DROVER_SIM_TRACE` overrides).
const TRACE_LINES: usize = 60;
/// A request that times out is answered after this long.
const TIMEOUT_MS: i64 = 5_000;
/// What a timed-out bind is answered.
const TIMED_OUT: &str = "request timed out";

const QUEUES: [&str; 3] = ["qa", "qb", "qc"];

/// What one seed did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// World events processed (arrivals, watch deliveries, answers, faults...).
    pub events: u64,
    /// Binds handed out by the engine.
    pub binds: u64,
    /// Evictions handed out by the engine.
    pub evictions: u64,
    /// Faults injected (failed or late binds, outages, node losses, restarts...).
    pub faults: u64,
    /// Jobs that arrived.
    pub jobs: usize,
    /// Jobs that ran to completion.
    pub completed: usize,
    /// Virtual milliseconds simulated.
    pub virtual_ms: i64,
    /// A digest of every action, in order: equal digests, equal runs.
    pub digest: u64,
}

/// An invariant that did not hold.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The world event at which it was seen.
    pub step: u64,
    /// Virtual time (ms).
    pub at_ms: i64,
    /// What did not hold.
    pub what: String,
    /// What happened last, oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {} ({} ms virtual): {}",
            self.seed, self.step, self.at_ms, self.what
        )?;
        writeln!(
            f,
            "replay: DROVER_SIM_SEED={} cargo test -p drover-sim --test faults",
            self.seed
        )?;
        writeln!(f, "last {} steps:", self.trace.len())?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// Runs one seed for `events` world events, then a quiet tail; checks the invariants
/// after every step.
pub fn run(seed: u64, events: u64) -> Result<Outcome, Violation> {
    let mut w = World::new(seed, events);
    match w.run() {
        Ok(()) => Ok(Outcome {
            events: w.processed,
            binds: w.binds,
            evictions: w.evictions,
            faults: w.faults,
            jobs: w.jobs.len(),
            completed: w.jobs.iter().filter(|j| j.done).count(),
            virtual_ms: w.now,
            digest: w.digest,
        }),
        Err(what) => Err(Violation {
            seed,
            step: w.processed,
            at_ms: w.now,
            what,
            trace: w.trace.into_iter().collect(),
        }),
    }
}

/// The engine's configuration in the simulation: the defaults, with racks as a
/// topology level and shorter waits so that reclaim and preemption happen in a run.
pub fn config() -> Config {
    Config {
        topology_levels: vec!["rack".into()],
        reclaim_grace_ms: 2_000,
        min_runtime_ms: 1_000,
        gang_reservation_ms: Some(30_000),
        ..Config::default()
    }
}

// ----- the world ----------------------------------------------------------------

/// A watch event on its way to the engine.
#[derive(Clone, Debug)]
enum Delivery {
    Pod(Box<PodInfo>),
    PodDeleted(PodKey),
    Node(NodeInfo),
    NodeDeleted(Arc<str>),
    Group(PodGroupInfo),
    GroupDeleted(GangKey),
    Budget(String, Option<DisruptionBudget>),
}

impl Delivery {
    /// The watch stream it comes on (each keeps its order).
    fn stream(&self) -> usize {
        match self {
            Delivery::Pod(_) | Delivery::PodDeleted(_) => 0,
            Delivery::Node(_) | Delivery::NodeDeleted(_) => 1,
            Delivery::Group(_) | Delivery::GroupDeleted(_) => 2,
            Delivery::Budget(..) => 3,
        }
    }

    fn describe(&self) -> String {
        match self {
            Delivery::Pod(p) => format!(
                "pod {} uid {} node {:?}{}",
                p.key,
                p.uid,
                p.node_name.as_deref(),
                if p.deleting { " deleting" } else { "" }
            ),
            Delivery::PodDeleted(k) => format!("pod {k} deleted"),
            Delivery::Node(n) => format!("node {}", n.name),
            Delivery::NodeDeleted(n) => format!("node {n} deleted"),
            Delivery::Group(g) => format!("podgroup {} min {}", g.key, g.min_member),
            Delivery::GroupDeleted(g) => format!("podgroup {g} deleted"),
            Delivery::Budget(k, b) => format!("pdb {k} {:?}", b.as_ref().map(|b| b.allowed)),
        }
    }
}

/// What becomes of a bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Lands, then is answered with what the API made of it.
    Ok,
    /// Answered 500, did not land.
    Error,
    /// Landed, but the answer timed out.
    TimeoutLanded,
    /// Timed out before it reached the API.
    TimeoutLost,
}

#[derive(Clone, Debug)]
enum Ev {
    Arrive,
    Deliver {
        watch: u32,
        what: Box<Delivery>,
    },
    BindLand {
        key: PodKey,
        uid: Arc<str>,
        node: Arc<str>,
        fate: Fate,
        epoch: u32,
    },
    BindAnswer {
        key: PodKey,
        result: BindResult,
        epoch: u32,
    },
    EvictAnswer {
        key: PodKey,
        result: EvictionResult,
        epoch: u32,
    },
    /// An evicted pod's grace period ended.
    EvictGone {
        key: PodKey,
        uid: Arc<str>,
    },
    /// The pod GC deletes a pod whose node is gone.
    PodGc {
        key: PodKey,
        uid: Arc<str>,
    },
    /// The owner recreates a pod of a job.
    Recreate {
        job: usize,
        index: usize,
    },
    Finish {
        job: usize,
        run: u32,
    },
    Fault,
    NodeAdd,
    OutageEnd {
        watch: u32,
    },
    GainLease {
        epoch: u32,
    },
    EngineUp {
        epoch: u32,
    },
}

#[derive(Clone, Debug)]
struct ApiPod {
    info: PodInfo,
    job: Option<usize>,
    /// The latest `PodScheduled=False` message.
    condition: Option<String>,
}

#[derive(Clone, Debug)]
struct Job {
    queue: &'static str,
    size: usize,
    /// Members that must run together (0: not a gang).
    min: usize,
    priority: i32,
    requests: Resources,
    rack: bool,
    budget: Option<i32>,
    duration: i64,
    /// Incarnation of each pod (bumped when its owner recreates it).
    incarnations: Vec<u32>,
    running: bool,
    run: u32,
    done: bool,
    partial_since: Option<i64>,
    /// Something outside the engine disturbed the gang (a node loss, a refused
    /// eviction, a failed bind) at this time.
    troubled_at: i64,
    /// A member's eviction was refused: partly bound until whole or empty.
    refused: bool,
}

/// Job number `j`'s name.
fn job_name(j: usize) -> String {
    format!("j{j}")
}

impl Job {
    /// The key of member `i` of this job, number `j`.
    fn member(&self, j: usize, i: usize) -> PodKey {
        PodKey::new(self.queue, &format!("{}-{i}", job_name(j)))
    }
}

struct Outstanding {
    uid: Arc<str>,
    node: Arc<str>,
    issued: i64,
}

struct World {
    rng: SmallRng,
    now: i64,
    target: u64,
    processed: u64,
    tail_from: Option<i64>,
    /// The tail is over; only binds already issued still land.
    settling: bool,
    events: BTreeMap<(i64, u64), Ev>,
    seq: u64,
    // The API server's truth.
    nodes: BTreeMap<Arc<str>, NodeInfo>,
    pods: BTreeMap<PodKey, ApiPod>,
    groups: BTreeMap<GangKey, PodGroupInfo>,
    budgets: BTreeMap<String, DisruptionBudget>,
    queues: Vec<QueueSpec>,
    jobs: Vec<Job>,
    next_node: usize,
    // The scheduler process.
    engine: Engine,
    /// Bumped at each restart: answers to an earlier process are dropped.
    epoch: u32,
    up: bool,
    leading: bool,
    /// Bumped at each outage or restart: deliveries under way are dropped.
    watch: u32,
    watching: bool,
    stream_last: [i64; 4],
    last_disruption: i64,
    // What the engine was shown and asked.
    shown: BTreeMap<PodKey, PodInfo>,
    outstanding: BTreeMap<PodKey, Outstanding>,
    gone: HashSet<(PodKey, Arc<str>)>,
    /// Binds that landed although the engine was told they failed, until the engine
    /// is shown the pod.
    ambiguous: BTreeMap<PodKey, Arc<str>>,
    /// Binds answered "unknown" (uid, when): the engine keeps their room and counts them
    /// for their queue until the watch shows them or its confirm timeout passes.
    unanswered: BTreeMap<PodKey, (Arc<str>, i64)>,
    /// The engine's `binding.confirmTimeoutSeconds`, in ms.
    confirm_ms: i64,
    failed_bind_at: HashMap<PodKey, i64>,
    /// Victims of evictions under way, by this process.
    victims: BTreeSet<PodKey>,
    // Counts.
    binds: u64,
    evictions: u64,
    faults: u64,
    digest: u64,
    trace: VecDeque<String>,
    trace_lines: usize,
}

fn new_engine() -> Engine {
    Engine::new(Options::scheduler(config(), "drover"))
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes().fold(h ^ 0xff, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl World {
    fn new(seed: u64, target: u64) -> Self {
        let mut w = World {
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            target,
            processed: 0,
            tail_from: None,
            settling: false,
            events: BTreeMap::new(),
            seq: 0,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            groups: BTreeMap::new(),
            budgets: BTreeMap::new(),
            queues: Vec::new(),
            jobs: Vec::new(),
            next_node: 0,
            engine: new_engine(),
            epoch: 0,
            up: false,
            leading: false,
            watch: 0,
            watching: false,
            stream_last: [0; 4],
            last_disruption: 0,
            shown: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            gone: HashSet::new(),
            ambiguous: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            confirm_ms: config().confirm_timeout_ms,
            failed_bind_at: HashMap::new(),
            victims: BTreeSet::new(),
            binds: 0,
            evictions: 0,
            faults: 0,
            digest: 0xcbf2_9ce4_8422_2325,
            trace: VecDeque::new(),
            trace_lines: std::env::var("DROVER_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(TRACE_LINES),
        };
        let nodes = w.rng.random_range(6..=10);
        for _ in 0..nodes {
            let n = w.make_node();
            w.nodes.insert(n.name.clone(), n);
        }
        w.queues = vec![
            queue("qa", Resources::cpu_mem(16_000, 64 * GI).with_gpu(4), None),
            queue("qb", Resources::cpu_mem(8_000, 32 * GI), None),
            queue(
                "qc",
                Resources::default(),
                Some(Resources::cpu_mem(24_000, 96 * GI).with_gpu(8)),
            ),
        ];
        // Pods of another scheduler, already running where they fit.
        let names: Vec<Arc<str>> = w.nodes.keys().cloned().collect();
        for i in 0..w.rng.random_range(0..=4) {
            let node = names[w.rng.random_range(0..names.len())].clone();
            let requests = Resources::cpu_mem(w.rng.random_range(1..=4) * 500, 2 * GI);
            let key = PodKey::new("kube-system", &format!("foreign-{i}"));
            let info = PodInfo {
                uid: format!("foreign-{i}").into(),
                key: key.clone(),
                scheduler_name: "default-scheduler".into(),
                node_name: Some(node.clone()),
                phase: Phase::Running,
                declares_requests: true,
                requests: requests.clone(),
                ..Default::default()
            };
            if w.fits(&node, &requests) {
                w.pods.insert(
                    key,
                    ApiPod {
                        info,
                        job: None,
                        condition: None,
                    },
                );
            }
        }
        w.push(0, Ev::EngineUp { epoch: 0 });
        w.push(0, Ev::Arrive);
        let at = w.exp(4_000.0);
        w.push(at, Ev::Fault);
        w
    }

    fn make_node(&mut self) -> NodeInfo {
        let i = self.next_node;
        self.next_node += 1;
        let cpu = [8_000, 16_000, 32_000][self.rng.random_range(0..3)];
        let mem = [32, 64, 128][self.rng.random_range(0..3)] * GI;
        let gpu = if self.rng.random_bool(0.5) {
            [4, 8][self.rng.random_range(0..2)]
        } else {
            0
        };
        let name = format!("n{i}");
        let mut n = NodeInfo::new(&name, Resources::cpu_mem(cpu, mem).with_gpu(gpu), 16);
        n.labels = Labels::new([
            ("rack", format!("r{}", i % 3)),
            ("kubernetes.io/hostname", name.clone()),
        ]);
        n
    }

    fn fits(&self, node: &str, extra: &Resources) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let mut used = extra.clone();
        let mut count = 1;
        for p in self.pods.values() {
            if p.info.node_name.as_deref() == Some(node) {
                used.add(&p.info.requests);
                count += 1;
            }
        }
        count <= n.max_pods && used.iter().all(|(k, v)| v <= n.allocatable.get(&k))
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), ev);
    }

    fn exp(&mut self, mean_ms: f64) -> i64 {
        let u: f64 = self.rng.random_range(1e-9..1.0);
        self.now + (-u.ln() * mean_ms) as i64
    }

    fn faulting(&self) -> bool {
        self.tail_from.is_none()
    }

    fn note(&mut self, line: String) {
        if self.trace.len() >= self.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9} {line}", self.now));
    }

    // ----- the watch ------------------------------------------------------------

    /// The API changed: the watch shows it, late, maybe twice.
    fn emit(&mut self, what: Delivery) {
        if !self.watching {
            return; // the relist at the end of the outage shows the outcome
        }
        let r: f64 = self.rng.random();
        let delay = if !self.faulting() || r < 0.8 {
            self.rng.random_range(0..50)
        } else if r < 0.95 {
            self.rng.random_range(50..500)
        } else {
            self.faults += 1;
            self.rng.random_range(500..3_000)
        };
        let s = what.stream();
        let at = (self.now + delay).max(self.stream_last[s]);
        self.stream_last[s] = at;
        let watch = self.watch;
        if self.faulting() && self.rng.random_bool(0.03) {
            self.faults += 1;
            self.push(
                at,
                Ev::Deliver {
                    watch,
                    what: Box::new(what.clone()),
                },
            );
        }
        self.push(
            at,
            Ev::Deliver {
                watch,
                what: Box::new(what),
            },
        );
    }

    fn deliver(&mut self, what: Delivery) {
        let now = self.now;
        self.note(format!("watch: {}", what.describe()));
        match what {
            Delivery::Pod(p) => {
                if p.node_name.is_some() {
                    self.ambiguous.remove(&p.key);
                    self.outstanding.remove(&p.key);
                    self.unanswered.remove(&p.key);
                }
                // A pod recreated under its name: the bind in flight was for the old one.
                if self.outstanding.get(&p.key).is_some_and(|o| o.uid != p.uid) {
                    self.outstanding.remove(&p.key);
                }
                self.shown.insert(p.key.clone(), (*p).clone());
                self.engine.handle_pod(*p, now);
            }
            Delivery::PodDeleted(k) => {
                self.ambiguous.remove(&k);
                self.unanswered.remove(&k);
                self.outstanding.remove(&k);
                self.shown.remove(&k);
                self.engine.handle_pod_deleted(&k, now);
            }
            Delivery::Node(n) => self.engine.handle_node(n, now),
            Delivery::NodeDeleted(n) => self.engine.handle_node_deleted(&n, now),
            Delivery::Group(g) => self.engine.handle_pod_group(g, now),
            Delivery::GroupDeleted(g) => self.engine.handle_pod_group_deleted(&g, now),
            Delivery::Budget(k, b) => self.engine.handle_budget(&k, b),
        }
    }

    /// Lists everything, as informers do after a start or a lost watch.
    fn relist(&mut self) {
        let now = self.now;
        self.note("relist".into());
        self.watching = true;
        self.stream_last = [now; 4];
        let e = &mut self.engine;
        for r in Resource::ALL {
            e.handle_list_started(r);
            match r {
                Resource::Nodes => {
                    for n in self.nodes.values() {
                        e.handle_node(n.clone(), now);
                    }
                }
                Resource::Namespaces => {
                    for q in QUEUES {
                        e.handle_namespace(q, Some(Default::default()), now);
                    }
                }
                Resource::Queues => {
                    for q in &self.queues {
                        e.handle_queue(q.clone(), now);
                    }
                }
                Resource::PodGroups => {
                    for g in self.groups.values() {
                        e.handle_pod_group(g.clone(), now);
                    }
                }
                Resource::Budgets => {
                    for (k, b) in &self.budgets {
                        e.handle_budget(k, Some(b.clone()));
                    }
                }
                Resource::VolcanoPodGroups
                | Resource::NodeTopologies
                | Resource::Claims
                | Resource::PersistentVolumes
                | Resource::StorageClasses
                | Resource::CsiNodes
                | Resource::ResourceClaims => {}
                Resource::Pods => {
                    for p in self.pods.values() {
                        e.handle_pod(p.info.clone(), now);
                    }
                }
            }
            e.handle_list_done(r, now);
        }
        self.shown = self
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), p.info.clone()))
            .collect();
        for (k, p) in &self.pods {
            if p.info.node_name.is_some() {
                self.ambiguous.remove(k);
                self.outstanding.remove(k);
            }
        }
        self.ambiguous.retain(|k, _| self.pods.contains_key(k));
        self.outstanding
            .retain(|k, o| self.pods.get(k).is_some_and(|p| p.info.uid == o.uid));
    }

    // ----- the API --------------------------------------------------------------

    fn set_pod(&mut self, info: PodInfo) {
        let key = info.key.clone();
        if let Some(p) = self.pods.get_mut(&key) {
            p.info = info.clone();
        }
        self.emit(Delivery::Pod(Box::new(info)));
    }

    fn delete_pod(&mut self, key: &PodKey) -> Option<ApiPod> {
        let p = self.pods.remove(key)?;
        self.emit(Delivery::PodDeleted(key.clone()));
        Some(p)
    }

    fn create_pod(&mut self, job: usize, index: usize) {
        let j = &self.jobs[job];
        let name = format!("{}-{index}", job_name(job));
        let inc = j.incarnations[index];
        let gang = (j.min > 0).then(|| GangRef {
            name: job_name(job).into(),
            min_member: None,
            conflict: None,
            topology_required: j.rack.then(|| "rack".into()),
            topology_preferred: None,
        });
        let info = PodInfo {
            key: PodKey::new(j.queue, &name),
            uid: format!("{name}-{inc}").into(),
            scheduler_name: "drover".into(),
            requests: j.requests.clone(),
            declares_requests: true,
            priority: j.priority,
            created_ms: self.now,
            labels: Labels::new([("job", job_name(job))]),
            gang: gang.map(std::sync::Arc::new),
            queue: Some(j.queue.into()),
            ..Default::default()
        };
        self.pods.insert(
            info.key.clone(),
            ApiPod {
                info: info.clone(),
                job: Some(job),
                condition: None,
            },
        );
        self.emit(Delivery::Pod(Box::new(info)));
    }

    fn arrive(&mut self) {
        if !self.faulting() {
            return;
        }
        let next = self.exp(1_500.0);
        self.push(next, Ev::Arrive);
        let j = self.jobs.len();
        let gang = self.rng.random_bool(0.4);
        let size = if gang {
            self.rng.random_range(2..=6)
        } else {
            1
        };
        let min = if !gang {
            0
        } else if self.rng.random_bool(0.7) {
            size
        } else {
            self.rng.random_range(1..size).max(2).min(size)
        };
        let gpu = if self.rng.random_bool(0.3) {
            self.rng.random_range(1..=2)
        } else {
            0
        };
        let requests = Resources::cpu_mem(
            self.rng.random_range(1..=8) * 500,
            self.rng.random_range(1..=16) * GI,
        )
        .with_gpu(gpu);
        let job = Job {
            queue: QUEUES[self.rng.random_range(0..QUEUES.len())],
            size,
            min,
            priority: if self.rng.random_bool(0.2) { 100 } else { 0 },
            requests,
            rack: gang && self.rng.random_bool(0.3),
            budget: (size > 1 && self.rng.random_bool(0.25)).then(|| self.rng.random_range(0..=1)),
            duration: self.rng.random_range(2_000..40_000),
            incarnations: vec![0; size],
            running: false,
            run: 0,
            done: false,
            partial_since: None,
            troubled_at: i64::MIN / 2,
            refused: false,
        };
        let name = job_name(j);
        self.note(format!(
            "arrive {name} in {} size {} min {} prio {} rack {} pdb {:?}",
            job.queue, job.size, job.min, job.priority, job.rack, job.budget
        ));
        let ns = job.queue;
        if let Some(allowed) = job.budget {
            let key = format!("{ns}/pdb-{name}");
            let b = DisruptionBudget {
                namespace: ns.to_string(),
                selector: Some(SelectorTerm(vec![Requirement {
                    key: "job".into(),
                    op: SelectorOp::In,
                    values: vec![name.as_str().into()],
                    bound: 0,
                    field: false,
                }])),
                allowed,
            };
            self.budgets.insert(key.clone(), b.clone());
            self.emit(Delivery::Budget(key, Some(b)));
        }
        if job.min > 0 {
            let g = PodGroupInfo {
                key: GangKey::new(ns, &name),
                uid: format!("pg-{name}").into(),
                min_member: job.min as i64,
                ..Default::default()
            };
            self.groups.insert(g.key.clone(), g.clone());
            self.emit(Delivery::Group(g));
        }
        self.jobs.push(job);
        for i in 0..size {
            self.create_pod(j, i);
        }
    }

    /// Members of a job on nodes now (not terminating).
    fn bound_members(&self, job: usize) -> usize {
        let j = &self.jobs[job];
        (0..j.size)
            .filter(|i| {
                self.pods
                    .get(&j.member(job, *i))
                    .is_some_and(|p| p.info.node_name.is_some() && !p.info.deleting)
            })
            .count()
    }

    /// Starts or interrupts the job's run; tracks a gang partly bound.
    fn update_job(&mut self, job: usize) {
        if self.jobs[job].done {
            return;
        }
        let bound = self.bound_members(job);
        let now = self.now;
        let j = &mut self.jobs[job];
        let need = j.min.max(1);
        if bound >= need && !j.running {
            j.running = true;
            let (run, at) = (j.run, now + j.duration);
            self.push(at, Ev::Finish { job, run });
        } else if bound < need && j.running {
            j.running = false;
            j.run += 1;
        }
        let j = &mut self.jobs[job];
        if j.min > 0 && bound > 0 && bound < j.min {
            j.partial_since.get_or_insert(now);
        } else {
            j.partial_since = None;
            j.refused = false;
        }
    }

    fn finish(&mut self, job: usize, run: u32) {
        let j = &self.jobs[job];
        if j.done || j.run != run || !j.running {
            return;
        }
        let (ns, name, size) = (j.queue, job_name(job), j.size);
        self.note(format!("{name} done"));
        self.jobs[job].done = true;
        for i in 0..size {
            let key = self.jobs[job].member(job, i);
            self.delete_pod(&key);
        }
        let g = GangKey::new(ns, &name);
        if self.groups.remove(&g).is_some() {
            self.emit(Delivery::GroupDeleted(g));
        }
        let b = format!("{ns}/pdb-{name}");
        if self.budgets.remove(&b).is_some() {
            self.emit(Delivery::Budget(b, None));
        }
    }

    /// A pod of `job` was deleted from under it (eviction, node loss): its owner
    /// recreates it; a gang's job restarts whole after a node loss.
    fn lost(&mut self, job: usize, index: usize, whole: bool) {
        let now = self.now;
        let j = &mut self.jobs[job];
        if j.done {
            return;
        }
        j.troubled_at = now;
        let indices: Vec<usize> = if whole && j.min > 0 {
            (0..j.size).collect()
        } else {
            vec![index]
        };
        for i in indices {
            let key = self.jobs[job].member(job, i);
            if i != index {
                self.delete_pod(&key);
            }
            self.jobs[job].incarnations[i] += 1;
            let at = now + 500;
            self.push(at, Ev::Recreate { job, index: i });
        }
        self.update_job(job);
    }

    // ----- the scheduler's actions -----------------------------------------------

    fn execute(&mut self, action: Action) -> Result<(), String> {
        let line = match &action {
            Action::Bind { pod, node, .. } => format!("bind {} uid {} -> {node}", pod.key, pod.uid),
            Action::Evict { pod, reason } => {
                format!("evict {} uid {} ({})", pod.key, pod.uid, reason.as_str())
            }
            Action::Unschedulable { pod, message } => format!("unschedulable {pod}: {message}"),
            Action::Event(e) => format!("event {}", e.reason),
            Action::PodGroupStatus { gang, .. } => format!("podgroup status {gang}"),
            Action::QueueStatus { queue, .. } => format!("queue status {queue}"),
            Action::Nominate { pod, node } => format!("nominate {pod} -> {node:?}"),
        };
        self.digest = fnv(self.digest, &line);
        self.note(line);
        match action {
            Action::Bind { pod, node, .. } => self.bind(&pod, node),
            Action::Evict { pod, reason } => self.evict(&pod, reason),
            Action::Unschedulable { pod, message } => {
                if self.leading
                    && let Some(p) = self.pods.get_mut(&pod)
                {
                    p.condition = Some(message);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn bind(&mut self, pod: &Arc<PodInfo>, node: Arc<str>) -> Result<(), String> {
        let key = &pod.key;
        if !self.leading {
            return Err(format!("bind of {key} handed out while not leading"));
        }
        if self
            .unanswered
            .remove(key)
            .is_some_and(|(uid, at)| uid == pod.uid && self.now - at < self.confirm_ms)
        {
            return Err(format!(
                "bind of {key} handed out again while its last bind is unanswered"
            ));
        }
        if &*pod.scheduler_name != "drover" {
            return Err(format!(
                "bind of {key}, a pod of scheduler {}",
                pod.scheduler_name
            ));
        }
        if let Some(o) = self.outstanding.get(key) {
            return Err(format!(
                "bind of {key} to {node} while its bind to {} (uid {}, at {}) is in flight",
                o.node, o.uid, o.issued
            ));
        }
        if self.gone.contains(&(key.clone(), pod.uid.clone())) {
            return Err(format!(
                "bind of {key} (uid {}) retried after the API answered it 409/404",
                pod.uid
            ));
        }
        if let Some(s) = self.shown.get(key)
            && s.uid == pod.uid
            && s.node_name.is_some()
        {
            return Err(format!(
                "bind of {key} to {node}: the engine was shown it bound to {:?}",
                s.node_name
            ));
        }
        self.check_engine_node(pod, &node)?;
        self.binds += 1;
        self.outstanding.insert(
            key.clone(),
            Outstanding {
                uid: pod.uid.clone(),
                node: node.clone(),
                issued: self.now,
            },
        );
        let r: f64 = self.rng.random();
        let fate = if !self.faulting() || r < 0.9 {
            Fate::Ok
        } else if r < 0.94 {
            Fate::Error
        } else if r < 0.97 {
            Fate::TimeoutLanded
        } else {
            Fate::TimeoutLost
        };
        if fate != Fate::Ok {
            self.faults += 1;
        }
        let epoch = self.epoch;
        let latency = self.rng.random_range(1..100);
        match fate {
            Fate::Ok | Fate::TimeoutLanded => self.push(
                self.now + latency,
                Ev::BindLand {
                    key: key.clone(),
                    uid: pod.uid.clone(),
                    node,
                    fate,
                    epoch,
                },
            ),
            Fate::Error | Fate::TimeoutLost => {
                let (after, result) = if fate == Fate::Error {
                    (
                        latency,
                        BindResult::Failed("500 Internal Server Error".into()),
                    )
                } else {
                    (TIMEOUT_MS, BindResult::Unknown(TIMED_OUT.into()))
                };
                self.push(
                    self.now + after,
                    Ev::BindAnswer {
                        key: key.clone(),
                        result,
                        epoch,
                    },
                );
            }
        }
        Ok(())
    }

    /// The engine's own view of the node it just chose: not over its allocatable,
    /// and a reservation that does not admit the pod keeps its amount free.
    fn check_engine_node(&self, pod: &PodInfo, node: &str) -> Result<(), String> {
        let snap = self.engine.snapshot();
        let Some(n) = snap.node(node) else {
            return Err(format!(
                "bind of {} to {node}, a node the engine does not know",
                pod.key
            ));
        };
        if self.ambiguous.values().any(|a| **a == *node) {
            return Ok(());
        }
        let placed = n.pods.iter().any(|p| p.key == pod.key);
        let mut used = n.requested.clone();
        let mut count = n.pod_count();
        if !placed {
            used.add(&pod.requests);
            count += 1;
        }
        if count > n.max_pods {
            return Err(format!(
                "engine placed {} on {node}: {count} pods over its {}",
                pod.key, n.max_pods
            ));
        }
        if let Some((k, v)) = used.iter().find(|(k, v)| *v > n.allocatable.get(k)) {
            let on: Vec<String> = n
                .pods
                .iter()
                .map(|p| format!("{} ({})", p.key, p.requests))
                .collect();
            return Err(format!(
                "engine placed {} on {node}: {} {v} requested over its allocatable {} (the engine counts {})",
                pod.key,
                k.name(),
                n.allocatable.get(&k),
                on.join(", ")
            ));
        }
        if let Some(res) = &n.reservation
            && !res.admits(pod)
        {
            // The room held may still be taken by pods about to leave; what the pod
            // asks for must come from beyond it.
            let mut held = used.clone();
            held.add(&res.amount);
            if let Some((k, v)) = held
                .iter()
                .find(|(k, v)| pod.requests.get(k) > 0 && *v > n.allocatable.get(k))
            {
                let on: Vec<String> = n.pods.iter().map(|p| p.key.to_string()).collect();
                return Err(format!(
                    "{} backfilled onto {node} into the room reserved for gang {}/{}: {} requested + reserved {v} over allocatable {} (requested {:?}, reserved {:?} for {} pods, on it: {})",
                    pod.key,
                    res.namespace,
                    res.gang,
                    k.name(),
                    n.allocatable.get(&k),
                    n.requested,
                    res.amount,
                    res.pods,
                    on.join(", ")
                ));
            }
            if count + res.pods > n.max_pods {
                return Err(format!(
                    "{} backfilled onto {node} into pod slots reserved for gang {}/{}",
                    pod.key, res.namespace, res.gang
                ));
            }
        }
        Ok(())
    }

    fn land(&mut self, key: PodKey, uid: Arc<str>, node: Arc<str>, fate: Fate, epoch: u32) {
        let result = match self.pods.get(&key) {
            None => BindResult::Gone(format!("404: pods \"{}\" not found", key.name)),
            Some(p) if p.info.uid != uid => BindResult::Gone(format!(
                "409: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                p.info.uid
            )),
            Some(p) if p.info.node_name.is_some() => BindResult::Gone(format!(
                "409: pod {key} is already assigned to node {:?}",
                p.info.node_name.as_deref()
            )),
            Some(p) if p.info.deleting => {
                BindResult::Gone(format!("409: pod {key} is being deleted"))
            }
            Some(p) => {
                let mut info = p.info.clone();
                info.node_name = Some(node.clone());
                info.phase = Phase::Running;
                let job = p.job;
                self.note(format!("landed {key} on {node} ({fate:?})"));
                self.set_pod(info);
                if fate == Fate::TimeoutLanded {
                    self.ambiguous.insert(key.clone(), node.clone());
                }
                if !self.nodes.contains_key(&node) {
                    // Bound to a node that is gone: the pod GC deletes it.
                    let at = self.now + 1_000;
                    self.push(
                        at,
                        Ev::PodGc {
                            key: key.clone(),
                            uid,
                        },
                    );
                }
                if let Some(j) = job {
                    self.update_job(j);
                }
                BindResult::Bound
            }
        };
        let latency = self.rng.random_range(1..50);
        let (at, result) = match fate {
            Fate::TimeoutLanded => (self.now + TIMEOUT_MS, BindResult::Unknown(TIMED_OUT.into())),
            _ => (self.now + latency, result),
        };
        self.push(at, Ev::BindAnswer { key, result, epoch });
    }

    fn bind_answer(&mut self, key: PodKey, result: BindResult) {
        let Some(o) = self.outstanding.remove(&key) else {
            // Shown bound already; the engine still hears the answer.
            self.engine.handle_bind_result(&key, result, self.now);
            return;
        };
        match &result {
            BindResult::Gone(_) => {
                self.gone.insert((key.clone(), o.uid.clone()));
            }
            BindResult::Failed(_) | BindResult::Unknown(_) => {
                if matches!(result, BindResult::Unknown(_)) {
                    self.unanswered
                        .insert(key.clone(), (o.uid.clone(), self.now));
                }
                self.failed_bind_at.insert(key.clone(), self.now);
                if let Some(j) = self.pods.get(&key).and_then(|p| p.job) {
                    self.jobs[j].troubled_at = self.now;
                }
            }
            BindResult::Bound => {
                // In flight until the engine is shown it: an assumption.
                self.outstanding.insert(key.clone(), o);
            }
        }
        self.note(format!("bind answer {key}: {result:?}"));
        self.engine.handle_bind_result(&key, result, self.now);
    }

    fn evict(&mut self, pod: &Arc<PodInfo>, reason: EvictionReason) -> Result<(), String> {
        let key = &pod.key;
        if !self.leading {
            return Err(format!("eviction of {key} handed out while not leading"));
        }
        if reason == EvictionReason::Reclaim {
            self.check_reclaim(pod)?;
        }
        self.evictions += 1;
        self.victims.insert(key.clone());
        let epoch = self.epoch;
        let latency = self.rng.random_range(1..100);
        let at = self.now + latency;
        let refuse = |why: String| Ev::EvictAnswer {
            key: key.clone(),
            result: EvictionResult::Refused(why),
            epoch,
        };
        let Some(p) = self.pods.get(key).filter(|p| p.info.uid == pod.uid) else {
            self.push(at, refuse(format!("404: pods \"{}\" not found", key.name)));
            return Ok(());
        };
        let blocked = self
            .budgets
            .iter()
            .find(|(_, b)| b.covers(&p.info) && b.allowed == 0)
            .map(|(k, _)| k.clone());
        if let Some(b) = blocked {
            self.push(
                at,
                refuse(format!(
                    "429: Cannot evict pod as it would violate the pod's disruption budget {b}"
                )),
            );
            return self.refused(key);
        }
        if self.faulting() && self.rng.random_bool(0.05) {
            self.faults += 1;
            self.push(at, refuse("429: Too Many Requests".into()));
            return self.refused(key);
        }
        let mut info = p.info.clone();
        let job = p.job;
        if !info.deleting {
            info.deleting = true;
            self.set_pod(info);
            if let Some(j) = job {
                self.update_job(j);
            }
            let grace = self.rng.random_range(200..5_000);
            self.push(
                self.now + grace,
                Ev::EvictGone {
                    key: key.clone(),
                    uid: pod.uid.clone(),
                },
            );
        }
        self.push(
            at,
            Ev::EvictAnswer {
                key: key.clone(),
                result: EvictionResult::Evicted,
                epoch,
            },
        );
        Ok(())
    }

    fn refused(&mut self, key: &PodKey) -> Result<(), String> {
        if let Some(j) = self.pods.get(key).and_then(|p| p.job) {
            self.jobs[j].troubled_at = self.now;
            self.jobs[j].refused = true;
        }
        Ok(())
    }

    /// What the engine was shown a queue holds: its pods on nodes (not terminating,
    /// not already victims) and its binds in flight.
    fn shown_usage(&self, queue: &str) -> Resources {
        let mut used = Resources::default();
        for (k, p) in &self.shown {
            if p.queue.as_deref() != Some(queue) || p.deleting || self.victims.contains(k) {
                continue;
            }
            let unanswered = self
                .unanswered
                .get(k)
                .is_some_and(|(uid, at)| *uid == p.uid && self.now - at <= self.confirm_ms);
            if p.node_name.is_some()
                || unanswered
                || self.outstanding.get(k).is_some_and(|o| o.uid == p.uid)
            {
                used.add(&p.requests);
            }
        }
        used
    }

    fn check_reclaim(&self, victim: &PodInfo) -> Result<(), String> {
        let Some(q) = victim.queue.as_deref() else {
            return Ok(());
        };
        let Some(spec) = self.queues.iter().find(|s| &*s.name == q) else {
            return Ok(());
        };
        let mut left = self.shown_usage(q);
        left.sub(&victim.requests);
        for (k, v) in victim.requests.iter() {
            let g = spec.guaranteed.get(&k);
            if v > 0 && g > 0 && left.get(&k) < g {
                return Err(format!(
                    "reclaim of {} takes queue {q} below its guarantee: {} {} left of {g} guaranteed",
                    victim.key,
                    k.name(),
                    left.get(&k)
                ));
            }
        }
        Ok(())
    }

    // ----- faults ---------------------------------------------------------------

    fn fault(&mut self) {
        if !self.faulting() {
            return;
        }
        let next = self.exp(4_000.0);
        self.push(next, Ev::Fault);
        self.faults += 1;
        let r = self.rng.random_range(0..100);
        if r < 30 {
            self.node_loss();
        } else if r < 55 {
            if self.watching && self.up {
                self.note("watch outage".into());
                self.watching = false;
                self.watch += 1;
                self.last_disruption = self.now;
                let at = self.now + self.rng.random_range(500..20_000);
                let watch = self.watch;
                self.push(at, Ev::OutageEnd { watch });
            }
        } else if r < 80 {
            if self.up && self.leading {
                self.note("lease lost".into());
                self.leading = false;
                self.last_disruption = self.now;
                self.engine.handle_leadership(false, self.now);
                let at = self.now + self.rng.random_range(1_000..10_000);
                let epoch = self.epoch;
                self.push(at, Ev::GainLease { epoch });
            }
        } else {
            self.restart();
        }
    }

    fn node_loss(&mut self) {
        let names: Vec<Arc<str>> = self.nodes.keys().cloned().collect();
        if names.len() <= 3 {
            return;
        }
        let name = names[self.rng.random_range(0..names.len())].clone();
        self.note(format!("node {name} lost"));
        self.nodes.remove(&name);
        self.emit(Delivery::NodeDeleted(name.clone()));
        let on: Vec<(PodKey, Arc<str>)> = self
            .pods
            .values()
            .filter(|p| p.info.node_name.as_deref() == Some(&*name))
            .map(|p| (p.info.key.clone(), p.info.uid.clone()))
            .collect();
        for (key, uid) in on {
            let at = self.now + self.rng.random_range(500..3_000);
            self.push(at, Ev::PodGc { key, uid });
        }
        let at = self.now + self.rng.random_range(2_000..20_000);
        self.push(at, Ev::NodeAdd);
    }

    fn restart(&mut self) {
        self.note("scheduler restarts".into());
        // Binds in flight reached the API server or did not; the new process learns
        // the outcome from its relist.
        let inflight: Vec<(i64, u64)> = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Ev::BindLand { .. }))
            .map(|(k, _)| *k)
            .collect();
        for k in inflight {
            let Some(Ev::BindLand {
                key,
                uid,
                node,
                fate,
                epoch,
            }) = self.events.remove(&k)
            else {
                continue;
            };
            if self.rng.random_bool(0.5) {
                self.land(key, uid, node, fate, epoch);
            }
        }
        self.epoch += 1;
        self.watch += 1;
        self.watching = false;
        self.up = false;
        self.leading = false;
        self.last_disruption = self.now;
        self.engine = new_engine();
        self.outstanding.clear();
        self.unanswered.clear();
        self.ambiguous.clear();
        self.victims.clear();
        self.shown.clear();
        let at = self.now + self.rng.random_range(500..3_000);
        let epoch = self.epoch;
        self.push(at, Ev::EngineUp { epoch });
    }

    // ----- the loop -------------------------------------------------------------

    fn process(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Arrive => self.arrive(),
            Ev::Deliver { watch, what } => {
                if watch == self.watch && self.watching {
                    self.deliver(*what);
                }
            }
            Ev::BindLand {
                key,
                uid,
                node,
                fate,
                epoch,
            } => self.land(key, uid, node, fate, epoch),
            Ev::BindAnswer { key, result, epoch } => {
                if epoch == self.epoch {
                    self.bind_answer(key, result);
                }
            }
            Ev::EvictAnswer { key, result, epoch } => {
                if epoch == self.epoch {
                    if matches!(result, EvictionResult::Refused(_)) {
                        self.victims.remove(&key);
                    }
                    self.note(format!("eviction answer {key}: {result:?}"));
                    self.engine.handle_eviction_result(&key, result, self.now);
                }
            }
            Ev::EvictGone { key, uid } | Ev::PodGc { key, uid } => {
                if self.pods.get(&key).is_some_and(|p| p.info.uid == uid) {
                    let whole = !self.pods.get(&key).is_some_and(|p| p.info.deleting);
                    let p = self.delete_pod(&key).expect("checked");
                    self.victims.remove(&key);
                    if let Some(j) = p.job {
                        let index = key
                            .name
                            .rsplit('-')
                            .next()
                            .and_then(|i| i.parse().ok())
                            .expect("pod names end in their index");
                        self.lost(j, index, whole);
                    }
                }
            }
            Ev::Recreate { job, index } => {
                if !self.jobs[job].done {
                    let key = self.jobs[job].member(job, index);
                    if !self.pods.contains_key(&key) {
                        self.create_pod(job, index);
                    }
                }
            }
            // Settling: no room opens, so nothing new is placed while binds land.
            Ev::Finish { .. } if self.settling => {}
            Ev::Finish { job, run } => self.finish(job, run),
            Ev::Fault => self.fault(),
            Ev::NodeAdd => {
                let n = self.make_node();
                self.note(format!("node {} added", n.name));
                self.nodes.insert(n.name.clone(), n.clone());
                self.emit(Delivery::Node(n));
            }
            Ev::OutageEnd { watch } => {
                if watch == self.watch && self.up && !self.watching {
                    self.last_disruption = self.now;
                    self.relist();
                }
            }
            Ev::GainLease { epoch } => {
                if epoch == self.epoch && self.up && !self.leading {
                    self.note("lease regained".into());
                    self.leading = true;
                    self.last_disruption = self.now;
                    self.engine.handle_leadership(true, self.now);
                }
            }
            Ev::EngineUp { epoch } => {
                if epoch == self.epoch {
                    self.note("scheduler up".into());
                    self.up = true;
                    self.relist();
                    self.leading = true;
                    self.last_disruption = self.now;
                    self.engine.handle_leadership(true, self.now);
                }
            }
        }
        Ok(())
    }

    /// Lets the engine do what is due now, executing its actions.
    fn drive(&mut self) -> Result<(), String> {
        if !self.up {
            return Ok(());
        }
        let mut rounds = 0;
        loop {
            while let Some(a) = self.engine.poll_action() {
                self.execute(a)?;
            }
            match self.engine.poll_timeout() {
                Some(t) if t <= self.now => {
                    rounds += 1;
                    if rounds > 100_000 {
                        return Err(
                            "the engine keeps asking to be woken at the same instant".into()
                        );
                    }
                    self.engine.handle_timeout(self.now);
                }
                _ => return Ok(()),
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let next_event = self.events.first_key_value().map(|(k, _)| k.0);
            let wake = if self.up {
                self.engine.poll_timeout()
            } else {
                None
            };
            match (next_event, wake) {
                (_, Some(w)) if next_event.is_none_or(|e| w < e) => {
                    self.now = self.now.max(w);
                    self.drive()?;
                }
                (Some(_), _) => {
                    let ((at, _), ev) = self.events.pop_first().expect("peeked");
                    self.now = at;
                    self.processed += 1;
                    self.process(ev)?;
                    self.drive()?;
                }
                (None, _) => break,
            }
            self.check()?;
            if self.tail_from.is_none() && self.processed >= self.target {
                self.tail_from = Some(self.now);
                self.note("faults and arrivals stop".into());
            }
            if let Some(t) = self.tail_from
                && self.now > t + TAIL_MS
            {
                if !self.settling {
                    self.settling = true;
                    self.note("the tail ends; binds in flight may land, no job finishes".into());
                }
                if self.outstanding.is_empty() || self.now > t + TAIL_MS + SETTLE_MS {
                    break;
                }
            }
        }
        self.check_settled()
    }

    // ----- invariants -----------------------------------------------------------

    fn check(&self) -> Result<(), String> {
        // Nodes in the API.
        let mut used: BTreeMap<&str, (Resources, i64)> = BTreeMap::new();
        let mut queue_used: BTreeMap<&str, Resources> = BTreeMap::new();
        for (k, p) in &self.pods {
            let counts_for_queue = p.info.node_name.is_some()
                || self.outstanding.get(k).is_some_and(|o| o.uid == p.info.uid);
            if counts_for_queue
                && p.info.scheduler_name.as_ref() == "drover"
                && let Some(q) = p.info.queue.as_deref()
            {
                queue_used.entry(q).or_default().add(&p.info.requests);
            }
            if let Some(n) = p.info.node_name.as_deref() {
                let e = used.entry(n).or_default();
                e.0.add(&p.info.requests);
                e.1 += 1;
            }
        }
        let exempt_nodes: HashSet<&str> = self.ambiguous.values().map(|n| &**n).collect();
        for (name, (r, count)) in &used {
            let Some(n) = self.nodes.get(*name) else {
                continue;
            };
            if exempt_nodes.contains(name) {
                continue;
            }
            if *count > n.max_pods {
                return Err(format!(
                    "node {name} runs {count} pods, over its {}",
                    n.max_pods
                ));
            }
            if let Some((k, v)) = r.iter().find(|(k, v)| *v > n.allocatable.get(k)) {
                return Err(format!(
                    "node {name}: {} {v} requested, over its allocatable {}",
                    k.name(),
                    n.allocatable.get(&k)
                ));
            }
        }
        // Queue limits.
        let exempt_queues: HashSet<&str> = self.ambiguous.keys().map(|k| &*k.namespace).collect();
        for q in &self.queues {
            let (Some(max), Some(used)) = (&q.max, queue_used.get(&*q.name)) else {
                continue;
            };
            if exempt_queues.contains(&*q.name) {
                continue;
            }
            for k in &q.max_listed {
                if used.get(k) > max.get(k) {
                    return Err(format!(
                        "queue {} holds {} {} (bound and binding), over its max {}",
                        q.name,
                        k.name(),
                        used.get(k),
                        max.get(k)
                    ));
                }
            }
        }
        // Gangs partly bound.
        for (j, job) in self.jobs.iter().enumerate() {
            let Some(since) = job.partial_since else {
                continue;
            };
            if job.refused {
                continue; // partly evicted: whole or empty once the claimant is done
            }
            let from = since.max(self.last_disruption).max(job.troubled_at);
            if self.now - from > REPAIR_WINDOW_MS {
                return Err(format!(
                    "gang j{j} ({}) has {} of its minMember {} bound since {since}",
                    job.queue,
                    self.bound_members(j),
                    job.min
                ));
            }
        }
        // Pending pods have a reason.
        if self.up
            && self.leading
            && self.watching
            && self.now - self.last_disruption > REASON_WINDOW_MS
        {
            for (k, p) in &self.pods {
                let i = &p.info;
                if i.scheduler_name.as_ref() != "drover"
                    || i.node_name.is_some()
                    || i.deleting
                    || p.condition.is_some()
                    || self.now - i.created_ms <= REASON_WINDOW_MS
                    || self.outstanding.contains_key(k)
                    || self
                        .failed_bind_at
                        .get(k)
                        .is_some_and(|t| self.now - t <= REASON_WINDOW_MS)
                {
                    continue;
                }
                return Err(format!(
                    "pod {k} (uid {}) has waited {} ms with no reason given",
                    i.uid,
                    self.now - i.created_ms
                ));
            }
        }
        Ok(())
    }

    /// After the quiet tail: gangs whole or empty, nothing left in flight.
    fn check_settled(&self) -> Result<(), String> {
        for (j, job) in self.jobs.iter().enumerate() {
            if job.partial_since.is_some() {
                return Err(format!(
                    "after the faults stopped, gang j{j} still has {} of its minMember {} bound",
                    self.bound_members(j),
                    job.min
                ));
            }
        }
        if let Some((k, o)) = self
            .outstanding
            .iter()
            .find(|(_, o)| self.now - o.issued > 30_000)
        {
            return Err(format!(
                "the bind of {k} to {} (at {}) was never answered nor shown",
                o.node, o.issued
            ));
        }
        Ok(())
    }
}

fn queue(name: &str, guaranteed: Resources, max: Option<Resources>) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        parent: None,
        max_listed: if max.is_some() {
            vec![ResourceKind::Cpu, ResourceKind::Memory, ResourceKind::Gpu]
        } else {
            Vec::new()
        },
        max,
        guaranteed,
        weight: 1,
        reclaimable: true,
        unreadable: None,
    }
}

trait WithGpu {
    fn with_gpu(self, gpu: i64) -> Self;
}

impl WithGpu for Resources {
    fn with_gpu(mut self, gpu: i64) -> Self {
        self.gpu = gpu;
        self
    }
}
