//! The discrete-event simulator: virtual time in milliseconds, driving drover's
//! [`Engine`] — the very state machine `drover run` drives on a cluster — over a
//! simulated API server: jobs arrive and create their pods (and, for gangs, their
//! PodGroup), binds land after a latency, evictions delete pods after their grace
//! period (the owner recreates them), jobs finish after their duration.
//!
//! Both policies are the engine; they differ only in what they are told and how they
//! are configured. drover gets the configuration `drover run` uses, the teams as
//! Queues (guarantees, limits, weights: reclaim and fair share), gangs as PodGroups
//! and topology requests as annotations. The baseline is kube-scheduler-like: a
//! spreading profile, no reservation, and it sees no gangs and no queues (like
//! kube-scheduler without a coscheduling plugin), only priorities.
//!
//! Events at the same instant run in a fixed order: completions and evictions, then
//! binds landing, then arrivals, then the engine, then a sample, so a sample sees the
//! state after everything that happened at its instant. Nothing depends on wall time
//! or on hash order, so a run is a pure function of its input.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use drover_core::config::Config;
use drover_core::engine::{
    Action, BindResult, Engine, EvictionReason, EvictionResult, Options, Resource,
};
use drover_core::framework::Profile;
use drover_core::gang::PodGroupInfo;
use drover_core::model::{
    GangRef, Labels, Phase, PodInfo, PodKey, Requirement, Resources, SelectorOp, SelectorTerm,
    Toleration,
};
use drover_core::plugins::packing::{Packing, Strategy};
use drover_core::quota::QueueSpec;
use drover_core::snapshot::Snapshot;

use super::metrics::{JobOutcome, JobStatus, Sample};
use super::scenario::Scenario;
use super::workload::{JobSpec, TopologyMode, parse_toleration};

/// How often the state is sampled for the report (virtual ms).
pub const SAMPLE_MS: i64 = 60_000;

/// A scheduling policy: the engine's configuration and what it is told.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Short name for the report.
    pub name: String,
    /// One line saying what it does.
    pub description: String,
    /// The engine's configuration.
    pub config: Config,
    /// Gangs are declared (PodGroups, the pod-group label, topology annotations).
    pub gangs: bool,
    /// The scenario's teams are Queues (guarantees, limits, weights).
    pub queues: bool,
}

impl Policy {
    /// drover as `drover run` runs by default, with the scenario's topology levels:
    /// bin packing and least waste, gangs all or nothing with reservation and
    /// backfill, required and preferred topology, the teams' queues with fair share,
    /// borrowing, reclaim and priority preemption.
    pub fn drover(scenario: &Scenario) -> Self {
        let config = Config {
            topology_levels: scenario
                .levels()
                .iter()
                .map(|l| l.as_str().into())
                .collect(),
            ..Config::default()
        };
        Policy {
            name: "drover".into(),
            description: "drover's engine as drover run runs it: MostAllocated + least-waste packing; gangs all or nothing with reservation; topology; team queues with fair share, reclaim and preemption"
                .into(),
            config,
            gangs: true,
            queues: true,
        }
    }

    /// Modelled on kube-scheduler's default profile: LeastAllocated spreading over cpu
    /// and memory, pod by pod (it sees no gangs), no queues, priority preemption.
    pub fn baseline() -> Self {
        use drover_core::model::ResourceKind;
        let mut profile = Profile::with_packing(Packing {
            strategy: Strategy::LeastAllocated,
            resources: vec![(ResourceKind::Cpu, 1), (ResourceKind::Memory, 1)],
        });
        // kube-scheduler weighs preferred node affinity 2.
        for (score, weight) in &mut profile.scores {
            if matches!(score, drover_core::plugins::Score::NodeAffinity) {
                *weight = 2;
            }
        }
        let config = Config {
            profile,
            gang_reservation_ms: None,
            ..Config::default()
        };
        Policy {
            name: "baseline".into(),
            description: "like kube-scheduler's default profile: LeastAllocated spreading (cpu, memory), pod by pod, no gangs, no quota, priority preemption".into(),
            config,
            gangs: false,
            queues: false,
        }
    }
}

/// How the simulated cluster answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    /// How long a bind takes to land (virtual ms).
    pub bind_latency_ms: i64,
    /// How long an evicted pod takes to go (its termination grace, virtual ms).
    pub eviction_grace_ms: i64,
}

impl Default for World {
    fn default() -> Self {
        World {
            bind_latency_ms: 50,
            eviction_grace_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A pod of a job that is not a gang ran its course (pod, its incarnation).
    FinishPod(usize, usize, u32),
    /// A job's run ended (its run counter).
    FinishJob(usize, u32),
    /// An evicted pod is gone (pod, its incarnation).
    Evicted(usize, usize, u32),
    /// A bind lands (pod, its incarnation).
    BindDone(usize, usize, u32),
    Arrive(usize),
    Wake,
    Sample,
}

impl Ev {
    /// Order of events at the same instant.
    fn class(self) -> u8 {
        match self {
            Ev::FinishPod(..) | Ev::FinishJob(..) | Ev::Evicted(..) => 0,
            Ev::BindDone(..) => 1,
            Ev::Arrive(_) => 2,
            Ev::Wake => 3,
            Ev::Sample => 4,
        }
    }
}

#[derive(Debug)]
struct PodRt {
    info: Arc<PodInfo>,
    /// Bumped each time the owner recreates the pod (after an eviction).
    incarnation: u32,
    /// The node of a bind in flight.
    binding: Option<Arc<str>>,
    /// The node it runs on, once its bind landed.
    node: Option<Arc<str>>,
    /// When its bind landed.
    since: i64,
    done: bool,
}

#[derive(Debug, Default)]
struct JobRt {
    team: usize,
    pods: Vec<PodRt>,
    /// Gang size (0: not a gang).
    core: usize,
    arrived: bool,
    /// Pods on nodes now.
    placed: usize,
    /// Pods that ever started.
    ever_started: usize,
    /// Pods done.
    done: usize,
    /// When the job first started.
    started_at: Option<i64>,
    /// The current run (a gang's work) is going on.
    running: bool,
    /// Bumped each time a run is interrupted, so its finish is dropped.
    run: u32,
    finished_at: Option<i64>,
    partial_since: Option<i64>,
    ever_partial: bool,
    partial_ms: i64,
    /// The last unschedulable message for one of its pods, and its class.
    reason: Option<(String, String)>,
    topology_domains: Option<usize>,
    /// Pods of this job evicted.
    evicted: usize,
}

/// Evictions by victim team and reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionCounts {
    /// Pods evicted so that another queue got its guarantee back.
    pub reclaimed: Vec<usize>,
    /// Pods evicted for a pod of higher priority.
    pub preempted: Vec<usize>,
    /// Pods of a gang left partly placed beyond `gangs.repairSeconds`, evicted so
    /// that it starts again whole.
    pub released: Vec<usize>,
    /// GPU-milliseconds evicted pods had run: work that is lost and done again.
    pub lost_gpu_ms: i64,
}

/// One policy's run over one scenario and workload.
pub struct Simulation<'a> {
    policy: &'a Policy,
    world: World,
    specs: &'a [JobSpec],
    now: i64,
    horizon: i64,
    engine: Engine,
    events: BinaryHeap<Reverse<(i64, u8, u64, Ev)>>,
    seq: u64,
    wake_at: BTreeSet<i64>,
    jobs: Vec<JobRt>,
    /// Pod key → (job, pod index).
    by_key: HashMap<PodKey, (usize, usize)>,
    team_names: Vec<String>,
    team_shares: Vec<f64>,
    team_alloc: Vec<Resources>,
    active_jobs: BTreeSet<usize>,
    totals: Totals,
    samples: Vec<Sample>,
    evictions: EvictionCounts,
    /// Engine decisions made.
    pub decisions: u64,
    /// Events processed.
    pub events_processed: u64,
}

/// Cluster-wide capacity, for percentages.
#[derive(Clone, Debug, Default)]
struct Totals {
    gpus: i64,
    memory: i64,
    cpu_nodes_cpu: i64,
    cpu_nodes_memory: i64,
}

/// What a finished run returns.
#[derive(Debug)]
pub struct RunOutput {
    /// The state every [`SAMPLE_MS`].
    pub samples: Vec<Sample>,
    /// Every job that arrived within the horizon.
    pub jobs: Vec<JobOutcome>,
    /// Evictions per team.
    pub evictions: EvictionCounts,
    /// Engine decisions made (pods or gangs looked at over a snapshot).
    pub decisions: u64,
    /// Events processed.
    pub events: u64,
}

/// The Queue a team becomes under a policy with queues.
pub fn team_queue(team: &super::scenario::Team) -> QueueSpec {
    let guaranteed = team.guaranteed.resources();
    let max = team.max.as_ref().map(|m| m.resources());
    QueueSpec {
        name: team.name.as_str().into(),
        parent: None,
        max_listed: team.max.as_ref().map(|m| m.listed()).unwrap_or_default(),
        max,
        guaranteed,
        // Shares are weights; the engine's are whole numbers.
        weight: ((team.share * 1000.0).round() as i64).max(1),
        reclaimable: team.reclaimable,
        unreadable: None,
    }
}

impl<'a> Simulation<'a> {
    /// A run of `policy` over `scenario`'s nodes and teams and `specs` (sorted by
    /// arrival), up to `horizon_ms`.
    pub fn new(
        policy: &'a Policy,
        world: World,
        scenario: &Scenario,
        specs: &'a [JobSpec],
        horizon_ms: i64,
    ) -> Self {
        let nodes = scenario.nodes();
        let team_names: Vec<String> = scenario.teams.iter().map(|t| t.name.clone()).collect();
        let mut engine = Engine::new(Options::scheduler(policy.config.clone(), "drover"));
        let mut totals = Totals::default();
        for n in nodes {
            totals.gpus += n.allocatable.gpu;
            totals.memory += n.allocatable.memory;
            if n.allocatable.gpu == 0 {
                totals.cpu_nodes_cpu += n.allocatable.cpu;
                totals.cpu_nodes_memory += n.allocatable.memory;
            }
            engine.handle_node(n, 0);
        }
        for t in &scenario.teams {
            engine.handle_namespace(&t.name, Some(Default::default()), 0);
            if policy.queues {
                engine.handle_queue(team_queue(t), 0);
            }
        }
        for r in Resource::ALL {
            engine.handle_list_done(r, 0);
        }
        engine.handle_leadership(true, 0);
        let teams = team_names.len();
        let mut sim = Simulation {
            policy,
            world,
            specs,
            now: 0,
            horizon: horizon_ms,
            engine,
            events: BinaryHeap::new(),
            seq: 0,
            wake_at: BTreeSet::new(),
            jobs: Vec::with_capacity(specs.len()),
            by_key: HashMap::new(),
            team_shares: scenario.teams.iter().map(|t| t.share).collect(),
            team_names,
            team_alloc: vec![Resources::default(); teams],
            active_jobs: BTreeSet::new(),
            totals,
            samples: Vec::new(),
            evictions: EvictionCounts {
                reclaimed: vec![0; teams],
                preempted: vec![0; teams],
                released: vec![0; teams],
                lost_gpu_ms: 0,
            },
            decisions: 0,
            events_processed: 0,
        };
        for (j, spec) in specs.iter().enumerate() {
            let team = sim
                .team_names
                .iter()
                .position(|t| *t == spec.team)
                .expect("workload validated against the scenario");
            sim.jobs.push(JobRt {
                team,
                core: if spec.is_gang() {
                    spec.min_member as usize
                } else {
                    0
                },
                ..Default::default()
            });
            if spec.arrival_ms <= horizon_ms {
                sim.push(spec.arrival_ms, Ev::Arrive(j));
            }
        }
        sim.push(0, Ev::Sample);
        sim
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, ev.class(), self.seq, ev)));
    }

    /// The current virtual time (ms).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The current state of the cluster, as the engine sees it.
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// Processes the next event; false when the run is over (no event left before the
    /// horizon).
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, _, _, ev))) = self.events.peek().copied() else {
            return false;
        };
        if at > self.horizon {
            return false;
        }
        self.events.pop();
        self.now = at;
        self.events_processed += 1;
        match ev {
            Ev::Arrive(j) => self.arrive(j),
            Ev::FinishJob(j, run) => self.finish_job(j, run),
            Ev::FinishPod(j, i, inc) => self.finish_pod(j, i, inc),
            Ev::Evicted(j, i, inc) => self.evicted(j, i, inc),
            Ev::BindDone(j, i, inc) => self.bind_done(j, i, inc),
            Ev::Wake => {
                self.wake_at.remove(&at);
            }
            Ev::Sample => {
                self.sample();
                if at + SAMPLE_MS <= self.horizon {
                    self.push(at + SAMPLE_MS, Ev::Sample);
                } else if at < self.horizon {
                    self.push(self.horizon, Ev::Sample);
                }
            }
        }
        // Everything that happens at this instant is seen before the engine decides
        // (two jobs arriving together are both in its queue).
        let more_now = self
            .events
            .peek()
            .is_some_and(|Reverse((t, class, _, _))| *t == at && *class < Ev::Wake.class());
        if !more_now {
            self.drive();
        }
        true
    }

    /// Runs to the horizon, calling `progress` with the virtual time after each sample.
    pub fn run(mut self, mut progress: impl FnMut(i64)) -> RunOutput {
        let mut last = -1;
        while self.step() {
            if self.samples.len() as i64 != last {
                last = self.samples.len() as i64;
                progress(self.now);
            }
        }
        self.finish()
    }

    /// Lets the engine do everything due now, carries out its actions, and arranges
    /// to wake it when it next wants to be.
    fn drive(&mut self) {
        let now = self.now;
        loop {
            while let Some(a) = self.engine.poll_action() {
                self.execute(a);
            }
            match self.engine.poll_timeout() {
                Some(t) if t <= now => self.engine.handle_timeout(now),
                Some(t) => {
                    if self.wake_at.insert(t) {
                        self.push(t, Ev::Wake);
                    }
                    break;
                }
                None => break,
            }
        }
        self.decisions += self.engine.take_stats().decisions;
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Bind { pod, node, .. } => {
                let Some(&(j, i)) = self.by_key.get(&pod.key) else {
                    return;
                };
                let inc = self.jobs[j].pods[i].incarnation;
                if self.jobs[j].pods[i].info.uid != pod.uid {
                    // A bind for an earlier incarnation: the API refuses it.
                    self.engine.handle_bind_result(
                        &pod.key,
                        BindResult::Gone("the pod was recreated".into()),
                        self.now,
                    );
                    return;
                }
                self.jobs[j].pods[i].binding = Some(node);
                self.push(
                    self.now + self.world.bind_latency_ms,
                    Ev::BindDone(j, i, inc),
                );
            }
            Action::Evict { pod, reason } => {
                let Some(&(j, i)) = self.by_key.get(&pod.key) else {
                    return;
                };
                let team = self.jobs[j].team;
                match reason {
                    EvictionReason::Reclaim => self.evictions.reclaimed[team] += 1,
                    EvictionReason::Preemption => self.evictions.preempted[team] += 1,
                    EvictionReason::GangRelease => self.evictions.released[team] += 1,
                }
                self.engine
                    .handle_eviction_result(&pod.key, EvictionResult::Evicted, self.now);
                // The API server marks it for deletion at once; it goes after its grace.
                let p = &self.jobs[j].pods[i];
                let terminating = PodInfo {
                    node_name: p.node.clone().or_else(|| p.binding.clone()),
                    phase: if p.node.is_some() {
                        Phase::Running
                    } else {
                        Phase::Pending
                    },
                    deleting: true,
                    ..(*p.info).clone()
                };
                if p.node.is_some() {
                    self.engine.handle_pod(terminating, self.now);
                }
                let inc = self.jobs[j].pods[i].incarnation;
                self.push(
                    self.now + self.world.eviction_grace_ms,
                    Ev::Evicted(j, i, inc),
                );
            }
            Action::Unschedulable { pod, message } => {
                if let Some(&(j, _)) = self.by_key.get(&pod) {
                    let class = reason_class(&message);
                    self.jobs[j].reason = Some((message, class));
                }
            }
            // Events and status: what users would read; nothing to simulate.
            Action::Event(_)
            | Action::PodGroupStatus { .. }
            | Action::QueueStatus { .. }
            | Action::Nominate { .. } => {}
        }
    }

    fn make_pod(&self, j: usize, i: usize, incarnation: u32) -> PodInfo {
        let spec = &self.specs[j];
        let requests = spec.pod_requests(i).clone();
        let mut tolerations: Vec<Toleration> = spec
            .tolerations
            .iter()
            .map(|t| parse_toleration(t).expect("validated"))
            .collect();
        if requests.gpu > 0 {
            // As the ExtendedResourceToleration admission plugin adds.
            tolerations.push(Toleration {
                key: drover_core::model::GPU.into(),
                exists: true,
                value: "".into(),
                effect: None,
            });
        }
        let node_selector = SelectorTerm(
            spec.node_selector
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.as_str().into(),
                    op: SelectorOp::In,
                    values: vec![v.as_str().into()],
                    bound: 0,
                    field: false,
                })
                .collect(),
        );
        let name = format!("{}-{i}", spec.name);
        let gang = (self.policy.gangs && spec.is_gang()).then(|| {
            let level = spec.topology.as_ref().map(|t| Arc::from(t.level.as_str()));
            let required = spec
                .topology
                .as_ref()
                .is_some_and(|t| t.mode == TopologyMode::Required);
            GangRef {
                name: spec.name.as_str().into(),
                min_member: None,
                conflict: None,
                topology_required: level.clone().filter(|_| required),
                topology_preferred: level.filter(|_| !required),
            }
        });
        let mut labels = vec![("drover.dev/job", spec.name.clone())];
        if gang.is_some() {
            labels.push((drover_core::gang::GROUP_LABEL, spec.name.clone()));
        }
        PodInfo {
            key: PodKey::new(&spec.team, &name),
            uid: format!("{}/{name}/{incarnation}", spec.team).into(),
            scheduler_name: "drover".into(),
            declares_requests: !requests.is_zero(),
            requests,
            priority: spec.priority,
            // Controllers create a job's pods one after another: a millisecond apart,
            // so that pods of jobs arriving together interleave, as they do on a
            // cluster.
            created_ms: spec.arrival_ms + i as i64,
            labels: Labels::new(labels),
            node_selector,
            tolerations,
            gang: gang.map(Arc::new),
            queue: self
                .policy
                .queues
                .then(|| Arc::from(self.team_names[self.jobs[j].team].as_str())),
            ..Default::default()
        }
    }

    fn arrive(&mut self, j: usize) {
        let n = self.specs[j].pod_count();
        let spec = &self.specs[j];
        if self.policy.gangs && spec.is_gang() {
            self.engine.handle_pod_group(
                PodGroupInfo {
                    key: drover_core::gang::GangKey::new(&spec.team, &spec.name),
                    uid: format!("{}/{}", spec.team, spec.name).into(),
                    min_member: i64::from(spec.min_member),
                    ..Default::default()
                },
                self.now,
            );
        }
        let pods: Vec<PodRt> = (0..n)
            .map(|i| PodRt {
                info: Arc::new(self.make_pod(j, i, 0)),
                incarnation: 0,
                binding: None,
                node: None,
                since: 0,
                done: false,
            })
            .collect();
        for (i, p) in pods.iter().enumerate() {
            self.by_key.insert(p.info.key.clone(), (j, i));
        }
        self.jobs[j].pods = pods;
        self.jobs[j].arrived = true;
        self.active_jobs.insert(j);
        for i in 0..n {
            let info = (*self.jobs[j].pods[i].info).clone();
            self.engine.handle_pod(info, self.now);
        }
    }

    /// A bind lands: the pod runs on its node, the engine hears the answer and the
    /// watch event.
    fn bind_done(&mut self, j: usize, i: usize, inc: u32) {
        let p = &mut self.jobs[j].pods[i];
        let key = p.info.key.clone();
        if p.incarnation != inc || p.done {
            self.engine.handle_bind_result(
                &key,
                BindResult::Gone("the pod is gone".into()),
                self.now,
            );
            return;
        }
        let Some(node) = p.binding.take() else {
            return;
        };
        p.node = Some(node.clone());
        p.since = self.now;
        let p = &self.jobs[j].pods[i];
        let bound = PodInfo {
            node_name: Some(node),
            phase: Phase::Running,
            ..(*p.info).clone()
        };
        self.engine
            .handle_bind_result(&key, BindResult::Bound, self.now);
        self.engine.handle_pod(bound, self.now);
        let requests = self.jobs[j].pods[i].info.requests.clone();
        let job = &mut self.jobs[j];
        job.placed += 1;
        job.ever_started += 1;
        self.team_alloc[job.team].add(&requests);
        self.after_place(j, i);
    }

    fn after_place(&mut self, j: usize, i: usize) {
        let now = self.now;
        let duration = self.specs[j].duration_ms;
        let job = &mut self.jobs[j];
        if job.core == 0 {
            if job.ever_started == job.pods.len() && job.started_at.is_none() {
                job.started_at = Some(now);
            }
            let inc = job.pods[i].incarnation;
            self.push(now + duration, Ev::FinishPod(j, i, inc));
        } else if !job.running {
            if job.placed >= job.core {
                self.start(j);
            } else if job.partial_since.is_none() {
                job.partial_since = Some(now);
            }
        }
    }

    /// A gang that is not running and has no pod on a node is no longer partly placed.
    fn settle_partial(&mut self, j: usize) {
        let now = self.now;
        let job = &mut self.jobs[j];
        if job.core > 0
            && !job.running
            && job.placed == 0
            && let Some(since) = job.partial_since.take()
        {
            job.partial_ms += now - since;
            job.ever_partial |= now > since;
        }
    }

    /// A gang has its `minMember` pods: its work starts (again), and with it the clock.
    fn start(&mut self, j: usize) {
        let now = self.now;
        let job = &mut self.jobs[j];
        job.running = true;
        job.started_at.get_or_insert(now);
        if let Some(since) = job.partial_since.take() {
            job.partial_ms += now - since;
            // Members that land one after another within one instant do not count.
            job.ever_partial |= now > since;
        }
        let run = job.run;
        if let Some(t) = &self.specs[j].topology
            && self.jobs[j].topology_domains.is_none()
        {
            let snap = self.engine.snapshot();
            let domains: BTreeSet<Option<&str>> = self.jobs[j]
                .pods
                .iter()
                .filter_map(|p| p.node.as_deref())
                .map(|n| snap.node(n).and_then(|n| n.labels.get(&t.level)))
                .collect();
            self.jobs[j].topology_domains = Some(domains.len());
        }
        self.push(now + self.specs[j].duration_ms, Ev::FinishJob(j, run));
    }

    /// The pod leaves the cluster: it ended, or its job did.
    fn release(&mut self, j: usize, i: usize) {
        let job = &mut self.jobs[j];
        let team = job.team;
        let p = &mut job.pods[i];
        if p.done {
            return;
        }
        p.done = true;
        job.done += 1;
        let key = p.info.key.clone();
        if p.node.take().is_some() {
            let req = p.info.requests.clone();
            job.placed = job.placed.saturating_sub(1);
            self.team_alloc[team].sub(&req);
        }
        self.engine.handle_pod_deleted(&key, self.now);
    }

    fn finish_job(&mut self, j: usize, run: u32) {
        if self.jobs[j].run != run || !self.jobs[j].running || self.jobs[j].finished_at.is_some() {
            return;
        }
        for i in 0..self.jobs[j].pods.len() {
            self.release(j, i);
        }
        self.jobs[j].running = false;
        self.jobs[j].finished_at = Some(self.now);
        self.active_jobs.remove(&j);
    }

    fn finish_pod(&mut self, j: usize, i: usize, inc: u32) {
        if self.jobs[j].pods[i].incarnation != inc {
            return;
        }
        self.release(j, i);
        if self.jobs[j].done == self.jobs[j].pods.len() {
            self.jobs[j].finished_at = Some(self.now);
            self.active_jobs.remove(&j);
        }
    }

    /// An evicted pod is gone; its owner creates it again, pending, and the work it
    /// did is lost (a gang's run stops when it falls below `minMember`).
    fn evicted(&mut self, j: usize, i: usize, inc: u32) {
        let p = &self.jobs[j].pods[i];
        if p.incarnation != inc || p.done {
            return;
        }
        let key = p.info.key.clone();
        let on_node = p.node.is_some();
        let requests = p.info.requests.clone();
        if on_node {
            self.evictions.lost_gpu_ms += requests.gpu * (self.now - p.since);
        }
        self.engine.handle_pod_deleted(&key, self.now);
        let job = &mut self.jobs[j];
        job.evicted += 1;
        if on_node {
            job.placed = job.placed.saturating_sub(1);
            self.team_alloc[job.team].sub(&requests);
        }
        let next = inc + 1;
        let info = Arc::new(self.make_pod(j, i, next));
        let job = &mut self.jobs[j];
        job.pods[i] = PodRt {
            info: info.clone(),
            incarnation: next,
            binding: None,
            node: None,
            since: 0,
            done: false,
        };
        if job.core > 0 && job.running && job.placed < job.core {
            job.running = false;
            job.run += 1;
            job.partial_since = Some(self.now);
        }
        self.settle_partial(j);
        self.engine.handle_pod((*info).clone(), self.now);
    }

    /// True when pod `i` of job `j` waits for a node now.
    fn is_pending(&self, j: usize, i: usize) -> bool {
        let job = &self.jobs[j];
        let p = &job.pods[i];
        p.node.is_none() && p.binding.is_none() && !p.done && job.finished_at.is_none()
    }

    fn sample(&mut self) {
        let snap = self.engine.snapshot();
        // The smallest GPU request among waiting pods: free GPUs on a node that cannot
        // take even that are of no use to the waiting work.
        let mut reference: Option<(i64, i64, i64)> = None;
        let mut pending_pods = 0;
        let mut partial_gangs = 0;
        let mut partial_gang_gpus = 0;
        let mut started_gpus = 0;
        let mut started_gpus_spread = 0;
        let teams = self.team_names.len();
        let mut team_pending_gpus = vec![0i64; teams];
        for &j in &self.active_jobs {
            let job = &self.jobs[j];
            let placed_gpus: i64 = job
                .pods
                .iter()
                .filter(|p| p.node.is_some())
                .map(|p| p.info.requests.gpu)
                .sum();
            if job.core > 0 && !job.running {
                if job.placed > 0 {
                    partial_gangs += 1;
                    partial_gang_gpus += placed_gpus;
                }
            } else {
                started_gpus += placed_gpus;
                let required = self.specs[j]
                    .topology
                    .as_ref()
                    .is_some_and(|t| t.mode == TopologyMode::Required);
                if required && job.topology_domains.is_some_and(|d| d > 1) {
                    started_gpus_spread += placed_gpus;
                }
            }
            for i in 0..job.pods.len() {
                if !self.is_pending(j, i) {
                    continue;
                }
                pending_pods += 1;
                let r = &job.pods[i].info.requests;
                team_pending_gpus[job.team] += r.gpu;
                if r.gpu > 0 {
                    let k = (r.gpu, r.memory, r.cpu);
                    reference = Some(reference.map_or(k, |cur| cur.min(k)));
                }
            }
        }
        let mut s = Sample {
            t_min: self.now as f64 / 60_000.0,
            pending_pods,
            partial_gangs,
            partial_gang_gpus,
            started_gpus,
            started_gpus_spread,
            running_jobs: self
                .active_jobs
                .iter()
                .filter(|j| self.jobs[**j].started_at.is_some())
                .count() as i64,
            ..Default::default()
        };
        let (mut gpu_used, mut cpu_used, mut mem_used) = (0i64, 0i64, 0i64);
        for (_, n) in snap.nodes() {
            if !n.known {
                continue;
            }
            let a = &n.allocatable;
            let r = &n.requested;
            gpu_used += r.gpu;
            if a.gpu == 0 {
                cpu_used += r.cpu;
                mem_used += r.memory;
            }
            if n.pods.is_empty() {
                s.free_nodes += 1;
                if a.gpu > 0 {
                    s.free_gpu_nodes += 1;
                }
            }
            let free_gpu = a.gpu - r.gpu;
            if free_gpu > 0 && !n.pods.is_empty() {
                s.gpus_on_busy_nodes += free_gpu;
            }
            if free_gpu > 0
                && let Some((g, m, c)) = reference
                && !n.unschedulable
                && (free_gpu < g || a.memory - r.memory < m || a.cpu - r.cpu < c)
            {
                s.gpus_unusable += free_gpu;
            }
        }
        let frac = |used: i64, total: i64| {
            if total > 0 {
                used as f64 / total as f64
            } else {
                0.0
            }
        };
        s.gpu_alloc = frac(gpu_used, self.totals.gpus);
        s.cpu_alloc = frac(cpu_used, self.totals.cpu_nodes_cpu);
        s.mem_alloc = frac(mem_used, self.totals.cpu_nodes_memory);
        s.team_gpu = self
            .team_alloc
            .iter()
            .map(|r| frac(r.gpu, self.totals.gpus))
            .collect();
        s.team_mem = self
            .team_alloc
            .iter()
            .map(|r| frac(r.memory, self.totals.memory))
            .collect();
        let demand: Vec<f64> = (0..teams)
            .map(|t| (self.team_alloc[t].gpu + team_pending_gpus[t]) as f64)
            .collect();
        // What was handed out, divided fairly: fairness apart from how much is used
        // (which the GPU-hours measure).
        s.team_gpu_fair = fair_gpu_shares(gpu_used as f64, &demand, &self.team_shares)
            .into_iter()
            .map(|f| f.map(|g| frac_f(g, self.totals.gpus)))
            .collect();
        self.samples.push(s);
    }

    fn finish(mut self) -> RunOutput {
        let end = self.horizon;
        let mut jobs = Vec::new();
        for (j, spec) in self.specs.iter().enumerate() {
            let job = &mut self.jobs[j];
            if !job.arrived {
                continue;
            }
            if let Some(since) = job.partial_since {
                job.partial_ms += end - since;
                job.ever_partial |= end > since;
            }
            let status = match (job.finished_at, job.started_at) {
                (Some(_), _) => JobStatus::Completed,
                (None, Some(_)) => JobStatus::Running,
                (None, None) => JobStatus::Waiting,
            };
            let (reason, reason_class) = if status == JobStatus::Waiting {
                let (why, class) = job.reason.clone().unwrap_or_else(|| {
                    let m = "not attempted before the end of the run".to_string();
                    (m.clone(), m)
                });
                if job.core > 0 && job.placed > 0 {
                    (
                        Some(format!(
                            "partly placed gang: {} of {} pods hold their nodes, waiting for the rest: {why}",
                            job.placed, job.core
                        )),
                        Some(class.replacen(
                            "fits no node",
                            "partly placed gang, the rest fit no node",
                            1,
                        )),
                    )
                } else if job.core == 0 && job.ever_started > 0 {
                    (
                        Some(format!(
                            "{} of {} pods started, the others wait: {why}",
                            job.ever_started,
                            job.pods.len()
                        )),
                        Some(class),
                    )
                } else {
                    (Some(why), Some(class))
                }
            } else {
                (None, None)
            };
            let start = job.started_at;
            jobs.push(JobOutcome {
                name: spec.name.clone(),
                team: self.team_names[job.team].clone(),
                kind: spec.kind.name().to_string(),
                pods: job.pods.len(),
                gpus: spec.total_gpus(),
                gang: job.core,
                arrival_s: spec.arrival_ms as f64 / 1000.0,
                start_s: start.map(|t| t as f64 / 1000.0),
                end_s: job.finished_at.map(|t| t as f64 / 1000.0),
                wait_s: (start.unwrap_or(end) - spec.arrival_ms) as f64 / 1000.0,
                status,
                ever_partial: job.ever_partial,
                partial_s: job.partial_ms as f64 / 1000.0,
                placed_at_end: job.placed,
                evicted: job.evicted,
                reason,
                reason_class,
                topology_level: spec.topology.as_ref().map(|t| t.level.clone()),
                topology_domains: job.topology_domains,
            });
        }
        RunOutput {
            samples: self.samples,
            jobs,
            evictions: self.evictions,
            decisions: self.decisions,
            events: self.events_processed,
        }
    }
}

fn frac_f(v: f64, total: i64) -> f64 {
    if total > 0 { v / total as f64 } else { 0.0 }
}

/// Each team's fair share of `total` GPUs (in GPUs), by weighted max-min fairness over
/// the teams with demand: every team with demand gets its weight's part of what is
/// left, never more than it asks for, and what one cannot use goes to the others. A
/// team without demand has no fair share (`None`).
pub fn fair_gpu_shares(total: f64, demand: &[f64], weights: &[f64]) -> Vec<Option<f64>> {
    let n = demand.len();
    let mut share = vec![0.0; n];
    let mut open: Vec<usize> = (0..n).filter(|t| demand[*t] > 0.0).collect();
    let mut left = total;
    while !open.is_empty() && left > 1e-9 {
        let w: f64 = open.iter().map(|t| weights[*t]).sum();
        let mut capped = Vec::new();
        for &t in &open {
            if share[t] + left * weights[t] / w >= demand[t] {
                capped.push(t);
            }
        }
        if capped.is_empty() {
            for &t in &open {
                share[t] += left * weights[t] / w;
            }
            break;
        }
        for &t in &capped {
            left -= demand[t] - share[t];
            share[t] = demand[t];
        }
        open.retain(|t| !capped.contains(t));
    }
    (0..n)
        .map(|t| (demand[t] > 0.0).then_some(share[t]))
        .collect()
}

/// A waiting reason without its counts and names, for grouping: `fits no node:
/// Insufficient memory, node(s) had untolerated taint {nvidia.com/gpu: present}`.
pub fn reason_class(message: &str) -> String {
    let what = if message.starts_with("gang ") {
        if message.contains("waiting for") && message.contains("pods exist") {
            return "gang waits for its members".into();
        }
        "gang does not fit at once"
    } else {
        "fits no node"
    };
    if let Some(q) = message.find("queue ")
        && message[q..].contains("would exceed its max")
    {
        return "over its queue's max".into();
    }
    match message.rsplit_once("nodes are available: ") {
        Some((_, reasons)) => {
            let reasons: Vec<String> = reasons
                .trim_end_matches('.')
                .split(", ")
                .map(|r| {
                    r.split_once(' ')
                        .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
                        .map_or(r, |(_, rest)| rest)
                        .to_string()
                })
                .collect();
            format!("{what}: {}", reasons.join(", "))
        }
        None if message.contains("nodes are available") => format!("{what}: no nodes"),
        None => message
            .split(':')
            .next_back()
            .map(|m| format!("{what}: {}", m.trim()))
            .unwrap_or_else(|| what.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::builtin_day;

    fn check_capacity(snap: &Snapshot, at: i64, policy: &str) {
        for (_, n) in snap.nodes() {
            let mut sum = Resources::default();
            for p in &n.pods {
                sum.add(&p.requests);
            }
            assert_eq!(sum, n.requested, "{policy} t={at}: {} aggregate", n.name);
            if n.known {
                for (k, v) in n.requested.iter() {
                    assert!(
                        v <= n.allocatable.get(&k),
                        "{policy} t={at}: {} over allocatable {k}",
                        n.name
                    );
                }
            }
        }
    }

    struct Checked {
        out: RunOutput,
        events: u64,
        partial_seen: usize,
    }

    fn run_checked(policy: &Policy, scenario: &Scenario, seed: u64, hours: f64) -> Checked {
        let specs = builtin_day(scenario, seed, hours);
        let horizon = (hours * 3_600_000.0) as i64;
        let mut sim = Simulation::new(policy, World::default(), scenario, &specs, horizon);
        let mut events = 0;
        let mut partial_seen = 0;
        while sim.step() {
            events += 1;
            if events % 50 == 0 {
                check_capacity(&sim.snapshot(), sim.now(), &policy.name);
            }
            for job in &sim.jobs {
                assert!(job.placed <= job.pods.len());
                if job.core > 0 && !job.running && job.placed > 0 {
                    partial_seen += 1;
                }
            }
        }
        Checked {
            out: sim.finish(),
            events,
            partial_seen,
        }
    }

    fn check_outcomes(out: &RunOutput, policy: &str) {
        assert!(!out.jobs.is_empty());
        for j in &out.jobs {
            match j.status {
                JobStatus::Completed => assert!(j.end_s.is_some() && j.start_s.is_some()),
                JobStatus::Running => assert!(j.start_s.is_some() && j.end_s.is_none()),
                JobStatus::Waiting => {
                    assert!(j.start_s.is_none());
                    assert!(
                        j.reason.is_some(),
                        "{policy}: waiting job {} has a reason",
                        j.name
                    );
                }
            }
        }
    }

    #[test]
    fn invariants_hold_at_every_event() {
        let scenario = Scenario::builtin();
        let drover = run_checked(&Policy::drover(&scenario), &scenario, 1, 8.0);
        let baseline = run_checked(&Policy::baseline(), &scenario, 1, 8.0);
        assert!(drover.events > 1000, "a real run: {} events", drover.events);
        check_outcomes(&drover.out, "drover");
        check_outcomes(&baseline.out, "baseline");
        // drover's gangs land whole: a gang's binds land at one instant, so it is
        // never seen partly placed between events.
        assert!(drover.out.jobs.iter().all(|j| !j.ever_partial));
        assert_eq!(drover.out.jobs.len(), baseline.out.jobs.len());
        let done = |o: &RunOutput| {
            o.jobs
                .iter()
                .filter(|j| j.status == JobStatus::Completed)
                .count()
        };
        assert!(done(&drover.out) > 0 && done(&baseline.out) > 0);
        assert!(baseline.partial_seen >= drover.partial_seen);
    }

    #[test]
    fn runs_are_deterministic() {
        let scenario = Scenario::builtin();
        let policy = Policy::drover(&scenario);
        let run = || {
            let out = run_checked(&policy, &scenario, 7, 3.0).out;
            out.jobs
                .iter()
                .map(|j| (j.name.clone(), j.start_s, j.end_s, j.evicted))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn baseline_deadlocks_where_drover_does_not() {
        // Two 4-rank gangs of 8 GPUs each on 6 GPU nodes: pod by pod, both gangs grab
        // three nodes each and wait forever; all or nothing, one runs, then the other.
        let scenario = Scenario::parse(
            "nodeGroups:\n- {name: gpu, count: 6, cpu: 96, memory: 1000Gi, gpus: 8}\nteams:\n- {name: ml, share: 1}\n",
            "t",
        )
        .unwrap();
        let wl = "jobs:\n- {name: x, kind: training, team: ml, replicas: 4, arrival: 0s, duration: 1h, requests: {cpu: 8, memory: 60Gi, gpu: 8}}\n- {name: y, kind: training, team: ml, replicas: 4, arrival: 0s, duration: 1h, requests: {cpu: 8, memory: 60Gi, gpu: 8}}\n";
        let specs = crate::workload::parse_yaml(wl, "w", &scenario).unwrap();
        let horizon = 5 * 3_600_000;
        let status = |out: &RunOutput| out.jobs.iter().map(|j| j.status).collect::<Vec<_>>();
        let drover = Policy::drover(&scenario);
        let drov =
            Simulation::new(&drover, World::default(), &scenario, &specs, horizon).run(|_| {});
        assert_eq!(status(&drov), [JobStatus::Completed, JobStatus::Completed]);
        assert!(drov.jobs.iter().all(|j| !j.ever_partial));
        let baseline = Policy::baseline();
        let base =
            Simulation::new(&baseline, World::default(), &scenario, &specs, horizon).run(|_| {});
        assert_eq!(status(&base), [JobStatus::Waiting, JobStatus::Waiting]);
        assert!(base.jobs.iter().all(|j| j.ever_partial));
        let y = &base.jobs[1];
        assert!(
            y.reason
                .as_deref()
                .unwrap()
                .starts_with("partly placed gang"),
            "{y:?}"
        );
    }

    #[test]
    fn a_team_within_its_guarantee_reclaims_from_a_borrower() {
        // research borrows every GPU while analytics is idle; analytics then arrives
        // within its guarantee: drover evicts research's newest gang for it.
        let scenario = Scenario::parse(
            "nodeGroups:\n- {name: gpu, count: 4, cpu: 96, memory: 1000Gi, gpus: 8}\nteams:\n- {name: research, share: 1, guaranteed: {gpus: 16}}\n- {name: analytics, share: 1, guaranteed: {gpus: 16}}\n",
            "t",
        )
        .unwrap();
        let mut wl = String::from("jobs:\n");
        for i in 0..4 {
            wl.push_str(&format!("- {{name: r{i}, kind: training, team: research, replicas: 1, arrival: {}s, duration: 10h, requests: {{cpu: 8, memory: 60Gi, gpu: 8}}}}\n", i));
        }
        wl.push_str("- {name: a0, kind: training, team: analytics, replicas: 1, arrival: 600s, duration: 1h, requests: {cpu: 8, memory: 60Gi, gpu: 8}}\n");
        let specs = crate::workload::parse_yaml(&wl, "w", &scenario).unwrap();
        let horizon = 3 * 3_600_000;
        let drover = Policy::drover(&scenario);
        let out =
            Simulation::new(&drover, World::default(), &scenario, &specs, horizon).run(|_| {});
        assert_eq!(
            out.evictions.reclaimed,
            vec![1, 0],
            "one research pod reclaimed"
        );
        let a0 = out.jobs.iter().find(|j| j.name == "a0").unwrap();
        assert!(a0.start_s.is_some_and(|s| s < 700.0 + 60.0), "{a0:?}");
        // The baseline knows no queues: analytics waits for research to finish.
        let baseline = Policy::baseline();
        let out =
            Simulation::new(&baseline, World::default(), &scenario, &specs, horizon).run(|_| {});
        assert_eq!(out.evictions.reclaimed, vec![0, 0]);
        let a0 = out.jobs.iter().find(|j| j.name == "a0").unwrap();
        assert_eq!(a0.status, JobStatus::Waiting);
    }

    #[test]
    fn fair_shares_fill_by_weight_up_to_demand() {
        let f = fair_gpu_shares(100.0, &[10.0, 200.0, 200.0, 0.0], &[1.0, 1.0, 2.0, 5.0]);
        assert_eq!(f[3], None, "no demand, no fair share");
        assert!((f[0].unwrap() - 10.0).abs() < 1e-9);
        assert!((f[1].unwrap() - 30.0).abs() < 1e-9);
        assert!((f[2].unwrap() - 60.0).abs() < 1e-9);
    }

    #[test]
    fn reasons_group_without_counts_or_names() {
        assert_eq!(
            reason_class(
                "0/12 nodes are available: 4 Insufficient cpu, 8 node(s) had untolerated taint {gpu: true}."
            ),
            "fits no node: Insufficient cpu, node(s) had untolerated taint {gpu: true}"
        );
        assert_eq!(
            reason_class(
                "gang ml/x: 3/4 members placeable at once; the next (cpu=1) fits nowhere: 0/3 nodes are available: 3 Insufficient cpu."
            ),
            "gang does not fit at once: Insufficient cpu"
        );
        assert_eq!(
            reason_class("gang ml/d: 2 of minMember 5 pods exist; waiting for 3 more"),
            "gang waits for its members"
        );
        assert_eq!(
            reason_class(
                "pod ml/p: queue team would exceed its max cpu: 2 allocated + 1 asked > 2 max"
            ),
            "over its queue's max"
        );
    }
}
