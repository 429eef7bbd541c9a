//! `drover run`: watch the cluster, keep the cache, schedule, bind.
//!
//! One task owns the cache and the queue (no locks around them). Watchers feed it
//! events through a channel; it decides pods one at a time over a fresh snapshot
//! (scoring runs in parallel inside the decision), assumes each placement in the
//! cache, and hands the bind to a separate task whose result comes back through the
//! same channel. Scheduling starts only after both watches have listed everything, so
//! no node is overcommitted by pods drover has not yet seen.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DynamicObject;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cache::{ClusterCache, PodChange};
use crate::config::{Config, FileConfig};
use crate::framework::{Outcome, schedule_one};
use crate::gang::{self, GangDecision, GangKey, GangTracker, MemberState};
use crate::metrics::Metrics;
use crate::model::{NodeInfo, Phase, PodInfo, PodKey};
use crate::queue::QueueSet;
use crate::quota::{Ledger, QueueSpec, QueueTree};
use crate::snapshot::Snapshot;

use super::binder::{BindResult, bind};
use super::convert::{node_info, node_resource_topology, pod_group, pod_info};
use super::serve;
use super::status::{
    StatusSink, StatusTarget, StatusWriter, node_resource_topology_resource, pod_group_resource,
    unschedulable_condition,
};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `drover run`; each has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, env = "DROVER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "DROVER_CONTEXT")]
    pub context: Option<String>,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, env = "DROVER_SCHEDULER_NAME", default_value = "drover")]
    pub scheduler_name: String,
    /// Configuration file (YAML): scoring weights, packing, queue timing. See
    /// docs/configuration.md.
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz; `off` disables it.
    #[arg(long, env = "DROVER_METRICS_ADDR", default_value = "0.0.0.0:10259")]
    pub metrics_addr: String,
    /// Log format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// This replica's identity in Events and in the leader Lease (defaults to the
    /// host name).
    #[arg(long, env = "DROVER_IDENTITY")]
    pub identity: Option<String>,
    /// Run several replicas: only the holder of a coordination.k8s.io Lease binds and
    /// writes status; the others keep their caches warm, ready to take over.
    #[arg(long, env = "DROVER_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (defaults to $POD_NAMESPACE, else `default`).
    #[arg(long, env = "DROVER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "DROVER_LEASE_NAME", default_value = "drover")]
    pub lease_name: String,
    /// Seconds a Lease holds without renewal (the longest a dead leader blocks others).
    #[arg(
        long = "lease-duration",
        env = "DROVER_LEASE_DURATION",
        default_value_t = 15
    )]
    pub lease_duration_seconds: u64,
}

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Seconds the Lease holds without renewal.
    pub duration_seconds: u64,
}

/// Everything `run` needs, validated.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The scheduler name pods select.
    pub scheduler_name: String,
    /// The validated configuration.
    pub config: Config,
    /// Where to serve metrics and health, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// This replica's identity.
    pub identity: String,
    /// Leader election; `None`: this replica always leads.
    pub leader_election: Option<LeaderElection>,
    /// Keep the cache and publish snapshots, but never schedule, bind or write status
    /// (for the HTTP extender and tools that only read).
    pub cache_only: bool,
}

impl RunOptions {
    /// Options with the default configuration.
    pub fn new(scheduler_name: &str) -> Self {
        RunOptions {
            scheduler_name: scheduler_name.into(),
            config: Config::default(),
            metrics_addr: None,
            identity: hostname(),
            leader_election: None,
            cache_only: false,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "drover".into())
}

impl RunArgs {
    /// Validates the flags and the config file into options; errors name the flag.
    pub fn options(&self) -> anyhow::Result<RunOptions> {
        if self.scheduler_name.trim().is_empty() {
            anyhow::bail!(
                "--scheduler-name is empty: pods select a scheduler by spec.schedulerName, e.g. drover"
            );
        }
        let config = match &self.config {
            Some(p) => FileConfig::load(&p.to_string_lossy())?,
            None => Config::default(),
        };
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" | "" => None,
            a => Some(a.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--metrics-addr {a:?}: {e}; use host:port such as 0.0.0.0:10259, or off"
                )
            })?),
        };
        if self.leader_elect && self.lease_duration_seconds < 3 {
            anyhow::bail!(
                "--lease-duration {}: must be at least 3 seconds (15 is kube-scheduler's default)",
                self.lease_duration_seconds
            );
        }
        let leader_election = self.leader_elect.then(|| LeaderElection {
            namespace: self
                .lease_namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                })
                .unwrap_or_else(|| "default".into()),
            name: self.lease_name.clone(),
            duration_seconds: self.lease_duration_seconds,
        });
        Ok(RunOptions {
            scheduler_name: self.scheduler_name.clone(),
            config,
            metrics_addr,
            identity: self.identity.clone().unwrap_or_else(hostname),
            leader_election,
            cache_only: false,
        })
    }
}

/// Sets up logging in the given format (RUST_LOG filters; default `info`).
pub fn init_logging(format: &LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// `drover run` from its flags: connect, then [`run`] until Ctrl-C or SIGTERM.
pub async fn run_from_args(args: RunArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let client = client_from(&args).await?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        s.cancel();
    });
    run(client, opts, shutdown).await
}

async fn client_from(args: &RunArgs) -> anyhow::Result<Client> {
    client_for(args.kubeconfig.as_ref(), args.context.as_ref()).await
}

/// A client from a kubeconfig file and context, or the usual places.
pub async fn client_for(
    kubeconfig: Option<&PathBuf>,
    context: Option<&String>,
) -> anyhow::Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.cloned(),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no cluster to talk to ({e}); pass --kubeconfig or run inside a cluster"
            )
        })?,
    };
    Ok(Client::try_from(config)?)
}

/// Messages into the scheduling task.
enum Msg {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Group(Box<watcher::Event<DynamicObject>>),
    /// The PodGroup CRD is not installed: gangs come from annotations only.
    GroupsAbsent,
    /// This replica became the leader (true) or lost the lease (false).
    Leader(bool),
    /// An eviction was refused (a PodDisruptionBudget): leave the pod alone a while.
    EvictionRefused(PodKey),
    Numa(Box<watcher::Event<DynamicObject>>),
    Queue(Box<watcher::Event<DynamicObject>>),
    Namespace(Box<watcher::Event<k8s_openapi::api::core::v1::Namespace>>),
    Pdb(Box<watcher::Event<k8s_openapi::api::policy::v1::PodDisruptionBudget>>),
    /// The NodeResourceTopology CRD is not installed.
    NumaAbsent,
    Bound {
        pod: Arc<PodInfo>,
        node: Arc<str>,
        result: BindResult,
    },
}

/// How long a stopping scheduler waits for binds it has already sent (and then for
/// the Events and status writes under way).
const SHUTDOWN_BIND_WAIT: Duration = Duration::from_secs(5);

/// State shared with the HTTP server and other readers.
#[derive(Clone)]
pub struct Shared {
    /// The newest snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// True once both watches have listed everything.
    pub synced: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Metrics,
    /// True while this replica leads (always, without leader election).
    pub leader: Arc<AtomicBool>,
}

impl Shared {
    /// Fresh shared state: an empty snapshot, not synced, not leading.
    pub fn new() -> Self {
        Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            synced: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::new(),
            leader: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

fn spawn_watch<K, F>(
    api: Api<K>,
    what: &'static str,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: F,
    shutdown: CancellationToken,
    not_found: Option<fn() -> Msg>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(watcher::Event<K>) -> Msg + Send + 'static,
{
    tokio::spawn(async move {
        // The default backoff retries failed watches and relists after 410 Gone.
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => if tx.send(wrap(ev)).is_err() { return },
                    Some(Err(e)) => match not_found {
                        Some(msg) if is_not_found(&e) => {
                            tracing::debug!(what, "resource not served; retrying later");
                            if tx.send(msg()).is_err() { return }
                        }
                        _ => tracing::warn!(error = %e, what, "watch failed; retrying"),
                    },
                    None => return,
                }
            }
        }
    });
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// At most this many other pending pods of a queue share one round of evictions.
const MAX_CLAIMANTS: usize = 32;

/// How long an eviction may take before it counts as refused.
const EVICTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The scheduling task's state.
struct Scheduler {
    client: Client,
    opts: RunOptions,
    cache: ClusterCache,
    queue: QueueSet,
    shared: Shared,
    status: StatusWriter,
    /// PodGroup and Queue status, written in order by one task.
    status_sink: StatusSink,
    tx: mpsc::UnboundedSender<Msg>,
    binds: Arc<Semaphore>,
    /// Binds handed to a task whose result has not come back yet.
    binds_in_flight: usize,
    pods_synced: bool,
    nodes_synced: bool,
    /// PodGroups listed (or their CRD is not installed).
    groups_synced: bool,
    /// Namespaces listed (their default queues known).
    namespaces_synced: bool,
    pod_relist: Option<HashSet<PodKey>>,
    node_relist: Option<HashSet<Arc<str>>>,
    group_relist: Option<HashSet<GangKey>>,
    numa_relist: Option<HashSet<String>>,
    /// The last unschedulable message written per pod, so it is not written again.
    last_message: HashMap<PodKey, String>,
    /// Gang members and PodGroups.
    gangs: GangTracker,
    /// Cache generation at a gang's last failed attempt: not retried until it changes.
    gang_tried: HashMap<GangKey, u64>,
    /// The gang that holds a reservation, and until when.
    reservation: Option<(GangKey, i64)>,
    /// The last PodGroup status written per gang.
    group_status: HashMap<GangKey, serde_json::Value>,
    /// Gangs whose scheduleTimeoutSeconds passed (reported once).
    timed_out: HashSet<GangKey>,
    /// Failed binds per gang member, so a member that keeps failing backs off.
    bind_failures: HashMap<PodKey, u32>,
    /// This replica leads: it schedules, binds and writes status.
    leading: bool,
    /// When the last snapshot was published.
    published_at: Instant,
    /// Queue objects by name, and the validated tree built from them.
    queue_specs: std::collections::BTreeMap<Arc<str>, QueueSpec>,
    tree: QueueTree,
    queue_relist: Option<HashSet<Arc<str>>>,
    /// What each pod contributes to its fair-share queue.
    ledger: Ledger,
    /// Default queue per namespace (its `drover.dev/queue` label).
    namespace_queues: HashMap<String, Arc<str>>,
    /// Allocatable of every usable node, for dominant shares.
    cluster_total: crate::model::Resources,
    /// The last Queue status written, by queue.
    queue_status: HashMap<Arc<str>, serde_json::Value>,
    /// When each pod that could reclaim started waiting (ms).
    waiting_since: HashMap<PodKey, i64>,
    /// Pods being evicted, until the time given.
    evicting: HashMap<PodKey, i64>,
    /// Pods whose eviction was refused (a PodDisruptionBudget), left alone until the
    /// time given.
    refused: HashMap<PodKey, i64>,
    /// PodDisruptionBudgets by namespace/name: a unit that one of them would refuse
    /// to lose is not chosen as a victim.
    pdbs: HashMap<String, super::convert::DisruptionBudget>,
    pdb_relist: Option<HashSet<String>>,
}

impl Scheduler {
    fn ours(&self, p: &PodInfo) -> bool {
        *p.scheduler_name == *self.opts.scheduler_name
    }

    fn apply_pod(&mut self, pod: &Pod, now: i64) {
        let mut info = match pod_info(pod) {
            Ok(i) => i,
            Err(e) => {
                self.shared.metrics.malformed_objects.inc();
                tracing::warn!(error = %e, "skipping a pod drover cannot read");
                return;
            }
        };
        if let Some(seen) = self.pod_relist.as_mut() {
            seen.insert(info.key.clone());
        }
        if !info.exclusive
            && self
                .opts
                .config
                .exclusive_namespaces
                .iter()
                .any(|n| **n == *info.key.namespace)
        {
            info.exclusive = true;
        }
        let key = info.key.clone();
        let was_placed = self.cache.pod(&key).is_some_and(|p| p.node_name.is_some());
        let ours = self.ours(&info);
        let info = Arc::new(info);
        let change = self.cache.upsert_pod((*info).clone());
        let contribution = match change {
            PodChange::Assigned => Some(true),
            PodChange::Pending if ours => Some(false),
            _ => None,
        };
        self.ledger.set(
            &key,
            contribution.map(|placed| self.contribution(&info, placed)),
        );
        if ours && info.gang.as_ref().is_some_and(|g| g.conflict.is_none()) {
            let state = match (&change, info.phase) {
                (_, Phase::Succeeded) => Some(MemberState::Succeeded),
                (_, Phase::Failed) => Some(MemberState::Failed),
                (PodChange::Pending, _) => Some(MemberState::Pending),
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
                    }
                }
                None => self.gangs.forget(&key),
            }
        } else {
            self.gangs.forget(&key);
        }
        match change {
            PodChange::Pending if ours => {
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

    fn forget_pod(&mut self, key: &PodKey) {
        self.queue.remove(key);
        self.last_message.remove(key);
        self.bind_failures.remove(key);
        self.waiting_since.remove(key);
    }

    fn delete_pod(&mut self, key: &PodKey, now: i64) {
        let was_placed = self.cache.pod(key).is_some_and(|p| p.node_name.is_some());
        tracing::debug!(pod = %key, was_placed, "pod deleted");
        self.cache.delete_pod(key);
        self.gangs.forget(key);
        self.ledger.set(key, None);
        self.forget_pod(key);
        if was_placed {
            self.queue.cluster_changed(now);
        }
    }

    fn apply_node(&mut self, node: &Node, now: i64) {
        let info = match node_info(node) {
            Ok(i) => i,
            Err(e) => {
                self.shared.metrics.malformed_objects.inc();
                tracing::warn!(error = %e, "skipping a node drover cannot read");
                return;
            }
        };
        if let Some(seen) = self.node_relist.as_mut() {
            seen.insert(info.name.clone());
        }
        let snap = self.cache.snapshot();
        let unchanged = snap.node(&info.name).is_some_and(|n| same_node(n, &info));
        if !unchanged {
            self.cache.upsert_node_info(info);
            self.queue.cluster_changed(now);
            self.recount_cluster();
        }
    }

    fn handle(&mut self, msg: Msg, now: i64) {
        match msg {
            Msg::Pod(ev) => match *ev {
                watcher::Event::Init => self.pod_relist = Some(HashSet::new()),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => self.apply_pod(&p, now),
                watcher::Event::Delete(p) => {
                    if let Ok(info) = pod_info(&p) {
                        self.delete_pod(&info.key, now);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.pod_relist.take() {
                        for k in self.cache.pod_keys() {
                            if !seen.contains(&k) {
                                self.delete_pod(&k, now);
                            }
                        }
                    }
                    self.pods_synced = true;
                }
            },
            Msg::Node(ev) => match *ev {
                watcher::Event::Init => self.node_relist = Some(HashSet::new()),
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => self.apply_node(&n, now),
                watcher::Event::Delete(n) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        self.cache.delete_node(name);
                        self.recount_cluster();
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.node_relist.take() {
                        for n in self.cache.node_names() {
                            if !seen.contains(&n) {
                                self.cache.delete_node(&n);
                            }
                        }
                    }
                    self.nodes_synced = true;
                }
            },
            Msg::Group(ev) => match *ev {
                watcher::Event::Init => self.group_relist = Some(HashSet::new()),
                watcher::Event::InitApply(g) | watcher::Event::Apply(g) => match pod_group(&g) {
                    Ok(info) => {
                        if let Some(seen) = self.group_relist.as_mut() {
                            seen.insert(info.key.clone());
                        }
                        self.gang_changed(&info.key, now);
                        self.gangs.upsert_group(info);
                    }
                    Err(e) => {
                        self.shared.metrics.malformed_objects.inc();
                        tracing::warn!(error = %e, "skipping a PodGroup drover cannot read");
                    }
                },
                watcher::Event::Delete(g) => {
                    if let (Some(ns), Some(name)) =
                        (g.metadata.namespace.as_deref(), g.metadata.name.as_deref())
                    {
                        let key = GangKey::new(ns, name);
                        self.gangs.delete_group(&key);
                        self.gang_changed(&key, now);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.group_relist.take() {
                        for k in self.gangs.group_keys() {
                            if !seen.contains(&k) {
                                self.gangs.delete_group(&k);
                                self.gang_changed(&k, now);
                            }
                        }
                    }
                    self.groups_synced = true;
                }
            },
            Msg::GroupsAbsent => {
                if !self.groups_synced {
                    tracing::info!(
                        "the PodGroup CRD (scheduling.x-k8s.io/v1alpha1) is not installed; gangs come from the drover.dev/min-member annotation only"
                    );
                }
                self.groups_synced = true;
            }
            Msg::Leader(leading) => self.set_leading(leading, now),
            Msg::EvictionRefused(key) => {
                self.evicting.remove(&key);
                self.refused.insert(key, now + 60_000);
                self.queue.cluster_changed(now);
            }
            Msg::Numa(ev) => match *ev {
                watcher::Event::Init => self.numa_relist = Some(HashSet::new()),
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                    match node_resource_topology(&o) {
                        Ok((node, numa)) => {
                            if let Some(seen) = self.numa_relist.as_mut() {
                                seen.insert(node.clone());
                            }
                            self.cache.set_numa(&node, Some(Arc::new(numa)));
                            self.queue.cluster_changed(now);
                        }
                        Err(e) => {
                            self.shared.metrics.malformed_objects.inc();
                            tracing::warn!(error = %e, "skipping a NodeResourceTopology drover cannot read");
                        }
                    }
                }
                watcher::Event::Delete(o) => {
                    if let Some(n) = o.metadata.name.as_deref() {
                        self.cache.set_numa(n, None);
                        self.queue.cluster_changed(now);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.numa_relist.take() {
                        for n in self.cache.numa_nodes() {
                            if !seen.contains(&*n) {
                                self.cache.set_numa(&n, None);
                            }
                        }
                    }
                }
            },
            Msg::NumaAbsent => {}
            Msg::Pdb(ev) => {
                let key = |p: &k8s_openapi::api::policy::v1::PodDisruptionBudget| {
                    format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or(""),
                        p.metadata.name.as_deref().unwrap_or("")
                    )
                };
                match *ev {
                    watcher::Event::Init => self.pdb_relist = Some(HashSet::new()),
                    watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                        let k = key(&p);
                        if let Some(seen) = self.pdb_relist.as_mut() {
                            seen.insert(k.clone());
                        }
                        match super::convert::disruption_budget(&p) {
                            Some(b) => {
                                self.pdbs.insert(k, b);
                            }
                            None => {
                                self.pdbs.remove(&k);
                            }
                        }
                    }
                    watcher::Event::Delete(p) => {
                        self.pdbs.remove(&key(&p));
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = self.pdb_relist.take() {
                            self.pdbs.retain(|k, _| seen.contains(k));
                        }
                    }
                }
            }
            Msg::Queue(ev) => {
                match *ev {
                    watcher::Event::Init => self.queue_relist = Some(HashSet::new()),
                    watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                        match super::convert::queue(&o) {
                            Ok(spec) => {
                                if let Some(seen) = self.queue_relist.as_mut() {
                                    seen.insert(spec.name.clone());
                                }
                                self.queue_specs.insert(spec.name.clone(), spec);
                            }
                            Err(e) => {
                                self.shared.metrics.malformed_objects.inc();
                                tracing::warn!(error = %e, "skipping a Queue drover cannot read");
                            }
                        }
                    }
                    watcher::Event::Delete(o) => {
                        if let Some(n) = o.metadata.name.as_deref() {
                            self.queue_specs.remove(n);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = self.queue_relist.take() {
                            self.queue_specs.retain(|k, _| seen.contains(k));
                        }
                    }
                }
                let before: Vec<String> = self.tree.problems().map(|p| p.to_string()).collect();
                self.tree = QueueTree::build(self.queue_specs.values().cloned());
                for p in self.tree.problems() {
                    if !before.contains(&p.to_string()) {
                        tracing::warn!(problem = %p, "invalid Queue");
                    }
                }
                self.queue.cluster_changed(now);
            }
            Msg::Namespace(ev) => match *ev {
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    if let Some(name) = n.metadata.name.clone() {
                        match n
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(crate::quota::QUEUE_LABEL))
                            .filter(|v| !v.is_empty())
                        {
                            Some(q) => {
                                let q: Arc<str> = q.as_str().into();
                                if self.namespace_queues.get(&name) != Some(&q) {
                                    self.namespace_queues.insert(name.clone(), q);
                                    self.namespace_queue_changed(&name, now);
                                }
                            }
                            None => {
                                if self.namespace_queues.remove(&name).is_some() {
                                    self.namespace_queue_changed(&name, now);
                                }
                            }
                        }
                    }
                }
                watcher::Event::Delete(n) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        self.namespace_queues.remove(name);
                    }
                }
                watcher::Event::InitDone => self.namespaces_synced = true,
                watcher::Event::Init => {}
            },
            Msg::Bound { pod, node, result } => self.bound(pod, node, result, now),
        }
    }

    /// Starts or stops the writing half: scheduling, binding, status.
    fn set_leading(&mut self, leading: bool, now: i64) {
        if leading == self.leading {
            return;
        }
        self.leading = leading;
        self.shared.leader.store(leading, Ordering::SeqCst);
        self.shared.metrics.leader.set(i64::from(leading));
        if leading {
            tracing::info!(identity = %self.opts.identity, "leading: scheduling starts");
            // Another replica may have written since: write everything afresh.
            self.last_message.clear();
            self.group_status.clear();
            self.queue_status.clear();
            self.gang_tried.clear();
            for g in self.gangs.gangs().cloned().collect::<Vec<_>>() {
                self.gangs.touch(&g);
            }
            self.queue.cluster_changed(now);
        } else {
            tracing::warn!(identity = %self.opts.identity, "lost the leader Lease: scheduling stops");
            self.status_sink.clear();
            if self.reservation.take().is_some() {
                self.cache.clear_reservation();
            }
        }
    }

    /// What `pod` contributes to its queue's ledger entry.
    fn contribution(&self, pod: &PodInfo, placed: bool) -> crate::quota::Contribution {
        crate::quota::Contribution {
            queue: self.queue_name(pod),
            requests: pod.requests.clone(),
            placed,
            priority: pod.priority,
        }
    }

    /// The fair-share queue of a pod: its label, else its namespace's, else `default`.
    fn queue_name(&self, pod: &PodInfo) -> Arc<str> {
        pod.queue
            .clone()
            .or_else(|| self.namespace_queues.get(&*pod.key.namespace).cloned())
            .unwrap_or_else(|| crate::quota::DEFAULT_QUEUE.into())
    }

    /// A namespace's default queue changed: its pods move.
    fn namespace_queue_changed(&mut self, namespace: &str, now: i64) {
        for key in self.cache.pod_keys() {
            if *key.namespace != *namespace {
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

    /// Sums the allocatable of every usable node (dominant shares are relative to it).
    fn recount_cluster(&mut self) {
        let mut total = crate::model::Resources::default();
        for (_, n) in self.cache.snapshot().nodes() {
            if n.known && !n.unschedulable {
                total.add(&n.allocatable);
            }
        }
        self.cluster_total = total;
    }

    /// Why `queue` cannot take `request` now, if it cannot.
    fn quota_refusal(&self, queue: &str, request: &crate::model::Resources) -> Option<String> {
        self.tree
            .admit(&self.ledger.usage(&self.tree), queue, request)
    }

    /// A gang's definition changed: its waiting members get another try now.
    fn gang_changed(&mut self, gang: &GangKey, now: i64) {
        self.gang_tried.remove(gang);
        for k in self.gangs.members_in(gang, true) {
            self.queue.backoff(&k, now);
        }
    }

    fn bound(&mut self, pod: Arc<PodInfo>, node: Arc<str>, result: BindResult, now: i64) {
        self.binds_in_flight = self.binds_in_flight.saturating_sub(1);
        let m = self.shared.metrics.clone();
        match result {
            BindResult::Bound => {
                self.cache
                    .finish_binding(&pod.key, now + self.opts.config.confirm_timeout_ms);
                self.forget_pod(&pod.key);
                m.attempts.with_label_values(&["scheduled"]).inc();
                if pod.created_ms > 0 {
                    m.e2e_seconds
                        .observe((now - pod.created_ms).max(0) as f64 / 1000.0);
                }
                let status = self.status.clone();
                self.status.spawn(async move {
                    let note = format!("Successfully assigned {} to {node}", pod.key);
                    status
                        .event(&pod, EventType::Normal, "Scheduled", &note)
                        .await;
                    if !pod.declares_requests && !pod.daemonset {
                        let note = format!(
                            "pod {} declares no resource requests: drover placed it as the smallest footprint, on {node}, the smallest node that fit; set requests so it gets the room it needs",
                            pod.key
                        );
                        status
                            .event(&pod, EventType::Warning, "NoRequests", &note)
                            .await;
                    }
                });
            }
            BindResult::Gone(why) => {
                // Already bound (by an earlier run, say) or deleted: the watch has the truth.
                tracing::info!(pod = %pod.key, node = %node, reason = %why, "pod is gone or already bound; dropping it");
                m.bind_errors.with_label_values(&["conflict"]).inc();
                self.cache.forget(&pod.key);
                self.ledger
                    .set(&pod.key, Some(self.contribution(&pod, false)));
                self.forget_pod(&pod.key);
            }
            BindResult::Failed(why) => {
                tracing::warn!(pod = %pod.key, node = %node, error = %why, "bind failed; will retry");
                m.bind_errors.with_label_values(&["other"]).inc();
                m.attempts.with_label_values(&["error"]).inc();
                self.cache.forget(&pod.key);
                self.ledger
                    .set(&pod.key, Some(self.contribution(&pod, false)));
                // A watch update during the bind may have taken the pod out of the
                // queue: put it back, or it would wait for its next update.
                if !self.queue.contains(&pod.key)
                    && let Some(current) = self.cache.pod(&pod.key).cloned()
                    && current.node_name.is_none()
                {
                    self.queue
                        .add_or_update(self.queue_name(&current), current, now);
                }
                if let Some(gang) = self.gangs.gang_of(&pod.key).cloned() {
                    self.repair_gang(&gang, &pod, &node, &why, now);
                } else {
                    self.queue.backoff(&pod.key, now);
                }
                let status = self.status.clone();
                self.status.spawn(async move {
                    status
                        .event(
                            &pod,
                            EventType::Warning,
                            "FailedBinding",
                            &format!("binding to {node} failed: {why}"),
                        )
                        .await;
                });
            }
        }
    }

    /// Schedules one pod if one is active. Returns false when there was none.
    fn schedule_next(&mut self, now: i64) -> bool {
        let usage = self.ledger.usage(&self.tree);
        let (tree, cluster) = (&self.tree, &self.cluster_total);
        let fair = tree.fair_shares(&usage, cluster);
        let Some(pod) = self
            .queue
            .pop(now, |q| tree.order_key(&usage, &fair, cluster, q))
        else {
            return false;
        };
        // The queue may hold a pod the watch has since bound or removed.
        let current = self.cache.pod(&pod.key).cloned();
        if current
            .as_ref()
            .is_none_or(|c| c.node_name.is_some() || c.uid != pod.uid)
            || self.cache.is_assumed(&pod.key)
        {
            self.queue.remove(&pod.key);
            return true;
        }
        if let Some(g) = &pod.gang {
            if let Some(conflict) = g.conflict.clone() {
                self.wait(&pod, &format!("pod {}: {conflict}", pod.key), now);
                return true;
            }
            let gang = GangKey::of(&pod).expect("names a gang");
            if !self.schedule_gang(&gang, &pod, now) {
                return true;
            }
        }
        if let Some(why) = self.quota_refusal(&self.queue_name(&pod), &pod.requests) {
            self.shared
                .metrics
                .attempts
                .with_label_values(&["unschedulable"])
                .inc();
            self.wait(&pod, &format!("pod {}: {why}", pod.key), now);
            return true;
        }
        let snap = self.cache.snapshot();
        let start = Instant::now();
        let outcome = schedule_one(&self.opts.config.profile, &pod, &snap);
        self.shared
            .metrics
            .decision_seconds
            .observe(start.elapsed().as_secs_f64());
        match outcome {
            Outcome::Placed(p) => {
                self.cache.assume(&pod, &p.node);
                tracing::debug!(pod = %pod.key, node = %p.node, score = p.score, feasible = p.feasible, "placed");
                if pod.gang.is_some() {
                    self.gangs
                        .observe(&pod, MemberState::Assigned { running: false });
                }
                self.spawn_bind(pod, p.node);
            }
            Outcome::Unschedulable(d) => {
                self.shared
                    .metrics
                    .attempts
                    .with_label_values(&["unschedulable"])
                    .inc();
                self.wait(&pod, &d.message(), now);
                self.make_room(&pod, None, &snap, now);
            }
        }
        true
    }

    /// Parks a pending pod as unschedulable with `message`, writing the condition and
    /// a `FailedScheduling` Event when the message is new for it. The condition goes
    /// through the status sink, so an older message never lands after a newer one.
    fn wait(&mut self, pod: &Arc<PodInfo>, message: &str, now: i64) {
        self.queue.unschedulable(&pod.key, now);
        if self.last_message.get(&pod.key).map(String::as_str) != Some(message) {
            tracing::info!(pod = %pod.key, %message, "unschedulable");
            self.last_message
                .insert(pod.key.clone(), message.to_string());
            self.status_sink.write(
                StatusTarget::Pod(pod.key.clone()),
                unschedulable_condition(message),
            );
            let status = self.status.clone();
            let (pod, message) = (pod.clone(), message.to_string());
            self.status.spawn(async move {
                status
                    .event(&pod, EventType::Warning, "FailedScheduling", &message)
                    .await;
            });
        }
    }

    /// The gang's pending members that drover can place: current, unbound, its own.
    fn pending_members(&self, gang: &GangKey) -> Vec<Arc<PodInfo>> {
        let mut v: Vec<Arc<PodInfo>> = self
            .gangs
            .members_in(gang, true)
            .iter()
            .filter_map(|k| self.cache.pod(k))
            .filter(|p| p.node_name.is_none() && !p.deleting && self.ours(p))
            .filter(|p| !self.cache.is_assumed(&p.key))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        v
    }

    /// Decides `pod`'s gang. Returns true when `pod` is to be scheduled on its own
    /// (the gang already runs); false when the gang was handled here.
    fn schedule_gang(&mut self, gang: &GangKey, pod: &Arc<PodInfo>, now: i64) -> bool {
        let min = match self.gangs.min_member(gang) {
            Ok(m) => m,
            Err(problem) => {
                let message = problem.message(gang);
                for p in self.pending_members(gang) {
                    self.wait(&p, &message, now);
                }
                self.wait(pod, &message, now);
                return false;
            }
        };
        let counts = self.gangs.counts(gang);
        if counts.scheduled >= min {
            return true;
        }
        if self.gang_tried.get(gang) == Some(&self.cache.generation()) {
            // Nothing changed since this gang last failed: do not decide it again.
            self.queue.hold(&pod.key, now);
            return false;
        }
        let mut pending = self.pending_members(gang);
        // Quota: the whole set must fit the queue's max; failing that, exactly the
        // members the gang still needs; failing that, it waits.
        if let Some(first) = pending.first().cloned() {
            let queue = self.queue_name(&first);
            let needed = min.saturating_sub(counts.scheduled).min(pending.len());
            let sum = |ps: &[Arc<PodInfo>]| {
                let mut r = crate::model::Resources::default();
                for p in ps {
                    r.add(&p.requests);
                }
                r
            };
            if self.quota_refusal(&queue, &sum(&pending)).is_some() {
                if let Some(why) = self.quota_refusal(&queue, &sum(&pending[..needed])) {
                    let message = format!("gang {gang}: {why}");
                    for p in &pending {
                        self.wait(p, &message, now);
                    }
                    self.wait(pod, &message, now);
                    self.gang_tried
                        .insert(gang.clone(), self.cache.generation());
                    return false;
                }
                pending.truncate(needed);
            }
        }
        let min_resources = self.gangs.group(gang).map(|g| g.min_resources.clone());
        let topology = match gang::topology_request(
            self.gangs.group(gang),
            &pending,
            &self.opts.config.topology_levels,
        ) {
            Some(Err(problem)) => {
                let message = format!("gang {gang}: {problem}");
                for p in &pending {
                    self.wait(p, &message, now);
                }
                self.wait(pod, &message, now);
                return false;
            }
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let snap = self.cache.snapshot();
        let start = Instant::now();
        let decision = gang::decide(
            &self.opts.config.profile,
            gang,
            min,
            min_resources.as_ref(),
            topology.as_ref(),
            &pending,
            counts.scheduled,
            &snap,
        );
        self.shared
            .metrics
            .decision_seconds
            .observe(start.elapsed().as_secs_f64());
        match decision {
            GangDecision::Running => true,
            GangDecision::Wait(message) => {
                for p in &pending {
                    self.wait(p, &message, now);
                }
                self.wait(pod, &message, now);
                self.gang_tried
                    .insert(gang.clone(), self.cache.generation());
                false
            }
            GangDecision::NoFit { message, tried } => {
                self.gangs.attempted(gang, now);
                self.shared
                    .metrics
                    .attempts
                    .with_label_values(&["unschedulable"])
                    .inc();
                for p in &pending {
                    self.wait(p, &message, now);
                }
                // A reservation does not yet follow topology: a gang that requires a
                // level would hold capacity it may not be able to use.
                let required = topology.as_ref().is_some_and(|c| c.required);
                if !required {
                    self.reserve_for(gang, &tried, now);
                }
                self.gang_tried
                    .insert(gang.clone(), self.cache.generation());
                // Evictions are planned without topology: a gang that requires a
                // level waits for room instead.
                if !required {
                    self.make_room(pod, Some(gang), &snap, now);
                }
                false
            }
            GangDecision::Placed { placed, where_ } => {
                tracing::info!(gang = %gang, members = placed.len(), "gang placed");
                if let (Some(where_), Some(c)) = (where_, &topology) {
                    let mut total = crate::model::Resources::default();
                    for (m, _, _) in &placed {
                        total.add(&m.requests);
                    }
                    let note = format!(
                        "gang {gang}: {} members ({total}) in {where_}, {} level {}",
                        placed.len(),
                        if c.required { "required" } else { "preferred" },
                        c.level
                    );
                    let status = self.status.clone();
                    let group = self.gangs.group(gang).cloned();
                    let first = placed[0].0.clone();
                    self.status.spawn(async move {
                        status
                            .event(&first, EventType::Normal, "GangPlaced", &note)
                            .await;
                        if let Some(g) = group {
                            status
                                .pod_group_event(&g, EventType::Normal, "GangPlaced", &note)
                                .await;
                        }
                    });
                }
                self.shared.metrics.gangs_placed.inc();
                let first = self.gangs.attempted(gang, now);
                self.shared
                    .metrics
                    .gang_wait_seconds
                    .observe((now - first).max(0) as f64 / 1000.0);
                if self.reservation.as_ref().is_some_and(|(g, _)| g == gang) {
                    self.reservation = None;
                    self.cache.clear_reservation();
                    self.queue.cluster_changed(now);
                }
                self.gang_tried.remove(gang);
                for (member, _, node) in placed {
                    self.queue.take(&member.key);
                    self.cache.assume(&member, &node);
                    self.gangs
                        .observe(&member, MemberState::Assigned { running: false });
                    self.spawn_bind(member, node);
                }
                false
            }
        }
    }

    /// `pod` (alone, or with the rest of its gang in `gang`) fits nowhere: evict so
    /// that it fits. Reclaim when its queue is below its guarantee (whole units of
    /// queues that borrowed beyond theirs); otherwise priority preemption inside its
    /// queue (whole units of lower priority). Nothing is evicted before the pod has
    /// waited `reclaimGraceSeconds`; meanwhile it is retried with backoff. A gang is
    /// planned all or nothing: every member must fit after the evictions.
    fn make_room(&mut self, pod: &Arc<PodInfo>, gang: Option<&GangKey>, snap: &Snapshot, now: i64) {
        if pod.never_preempts {
            return;
        }
        let queue = self.queue_name(pod);
        // Reclaim needs the queue within its guarantee; preemption, lower-priority
        // pods in the queue. Without either, nothing is looked at. Without a guarantee
        // to reclaim, only lower-priority pods of the same queue are candidates.
        let mut usage = self.ledger.usage(&self.tree);
        let can_reclaim = crate::quota::within_guarantee(&self.tree, &usage, &queue, &pod.requests)
            && self
                .tree
                .queues()
                .any(|q| *q.name != *queue && crate::quota::lends(&usage, q));
        let can_preempt = self
            .ledger
            .lowest_placed_priority(&queue)
            .is_some_and(|p| p < pod.priority);
        if !can_reclaim && !can_preempt {
            return; // nothing could be evicted for it: no need to look at every pod
        }
        self.evicting
            .retain(|k, until| *until > now && self.cache.pod(k).is_some());
        self.refused.retain(|_, until| *until > now);
        if !self.evicting.is_empty() {
            // Evictions under way: wait for them (and retry soon).
            self.queue.backoff(&pod.key, now);
            return;
        }
        let unit_of = |p: &PodInfo| -> Arc<str> {
            match GangKey::of(p) {
                Some(g) => format!("gang/{g}").into(),
                None => format!("pod/{}", p.key).into(),
            }
        };
        // A unit with a member that refused eviction (or is going) is left whole.
        let blocked: HashSet<Arc<str>> = self
            .refused
            .keys()
            .filter_map(|k| self.cache.pod(k))
            .map(|p| unit_of(p))
            .collect();
        let mut candidates: Vec<crate::quota::Candidate> = Vec::new();
        for key in self.cache.pod_keys() {
            let Some(p) = self.cache.pod(&key) else {
                continue;
            };
            if p.node_name.is_none() || p.daemonset || p.deleting || !self.ours(p) {
                continue;
            }
            if !can_reclaim && (p.priority >= pod.priority || self.queue_name(p) != queue) {
                continue;
            }
            let unit = unit_of(p);
            if blocked.contains(&unit) {
                continue;
            }
            candidates.push(crate::quota::Candidate {
                pod: p.clone(),
                queue: self.queue_name(p),
                started_ms: p.created_ms,
                unit,
            });
        }
        // Members per unit that each PodDisruptionBudget covers: a unit needing more
        // disruptions than a budget allows now is not a victim (the Eviction API
        // would refuse part of it).
        if !self.pdbs.is_empty() {
            let mut covered: HashMap<(Arc<str>, &str), i32> = HashMap::new();
            for c in &candidates {
                for (name, b) in &self.pdbs {
                    if b.covers(&c.pod) {
                        *covered.entry((c.unit.clone(), name.as_str())).or_default() += 1;
                    }
                }
            }
            let over: HashSet<Arc<str>> = covered
                .iter()
                .filter(|((_, pdb), n)| self.pdbs.get(*pdb).is_some_and(|b| **n > b.allowed))
                .map(|((unit, _), _)| unit.clone())
                .collect();
            candidates.retain(|c| !over.contains(&c.unit));
        }
        if candidates.is_empty() {
            return;
        }
        // The claimants: the gang's pending members (all must fit), or this pod and
        // then every other pending single pod of its queue, so one round of
        // evictions serves them all.
        let all_or_nothing = gang.is_some();
        let claimants: Vec<Arc<PodInfo>> = match gang {
            Some(g) => self.pending_members(g),
            None => {
                let mut others: Vec<Arc<PodInfo>> = self
                    .cache
                    .pending_pods()
                    .filter(|p| {
                        p.key != pod.key
                            && self.ours(p)
                            && p.gang.is_none()
                            && !p.never_preempts
                            && self.queue_name(p) == queue
                    })
                    .cloned()
                    .collect();
                others.sort_by_key(|p| (std::cmp::Reverse(p.priority), p.created_ms));
                others.truncate(MAX_CLAIMANTS);
                std::iter::once(pod.clone()).chain(others).collect()
            }
        };
        let mut overlay = crate::framework::Overlay::new(snap);
        let mut planned: Vec<(Arc<PodInfo>, &'static str)> = Vec::new();
        for claimant in &claimants {
            if let crate::framework::Outcome::Placed(p) =
                schedule_one(&self.opts.config.profile, claimant, &overlay)
            {
                // Room already planned (or free).
                overlay.place(p.slot, claimant.clone());
                usage.charge(&self.tree, &queue, &claimant.requests);
                continue;
            }
            let left: Vec<crate::quota::Candidate> = candidates
                .iter()
                .filter(|c| !planned.iter().any(|(v, _)| v.key == c.pod.key))
                .cloned()
                .collect();
            let search = crate::quota::VictimSearch {
                tree: &self.tree,
                usage: &usage,
                profile: &self.opts.config.profile,
                candidates: &left,
                now_ms: now,
                min_runtime_ms: self.opts.config.min_runtime_ms,
            };
            let found = search
                .reclaim(&queue, claimant, &overlay)
                .map(|v| (v, "reclaim"))
                .or_else(|| {
                    search
                        .preempt(&queue, claimant, &overlay)
                        .map(|v| (v, "preemption"))
                });
            let Some(((victims, node), reason)) = found else {
                if all_or_nothing {
                    return; // a gang that would still not fit whole: evict nothing
                }
                continue;
            };
            for v in &victims {
                if let Some(s) = v.node_name.as_deref().and_then(|n| snap.slot_of(n)) {
                    overlay.remove(s, &v.key);
                }
                usage.discharge(&self.tree, &self.queue_name(v), &v.requests);
            }
            if let Some(s) = snap.slot_of(&node) {
                overlay.place(s, claimant.clone());
            }
            usage.charge(&self.tree, &queue, &claimant.requests);
            planned.extend(victims.into_iter().map(|v| (v, reason)));
        }
        if planned.is_empty() {
            return;
        }
        // Something can be done: retry soon rather than park, so the grace period
        // is noticed; a gang is decided afresh then.
        if let Some(g) = gang {
            self.gang_tried.remove(g);
        }
        self.queue.backoff(&pod.key, now);
        // A gang's wait is its first member's, whichever member was popped.
        let waiter = match gang {
            Some(_) => claimants.first().map_or(&pod.key, |c| &c.key),
            None => &pod.key,
        };
        let since = *self.waiting_since.entry(waiter.clone()).or_insert(now);
        if now - since < self.opts.config.reclaim_grace_ms {
            return;
        }
        let who = match gang {
            Some(g) => format!("gang {g}"),
            None => format!("pod {}", pod.key),
        };
        tracing::info!(claimant = %who, queue = %queue, victims = planned.len(), "evicting to make room");
        for (v, reason) in planned {
            // Until it is gone (its grace period may be long), or ten minutes.
            self.evicting.insert(v.key.clone(), now + 600_000);
            let evictions = self.shared.metrics.evictions.with_label_values(&[reason]);
            let (client, status, tx) = (self.client.clone(), self.status.clone(), self.tx.clone());
            let from = self.queue_name(&v);
            let (event_reason, note) = if reason == "reclaim" {
                (
                    "Reclaimed",
                    format!(
                        "evicted by drover: queue {queue} reclaims its guarantee (this pod's queue {from} had borrowed beyond its own) for {who}"
                    ),
                )
            } else {
                (
                    "Preempted",
                    format!(
                        "evicted by drover: {who} of queue {queue} has a higher priority ({}) than this pod ({})",
                        pod.priority, v.priority
                    ),
                )
            };
            self.status.spawn(async move {
                let api: Api<Pod> = Api::namespaced(client, &v.key.namespace);
                // The client retries a 429 (what a PodDisruptionBudget answers) for
                // minutes; a refusal must be noticed at once, so the wait is bounded.
                let evicted = tokio::time::timeout(
                    EVICTION_TIMEOUT,
                    api.evict(&v.key.name, &Default::default()),
                )
                .await;
                match evicted {
                    Ok(Ok(_)) => {
                        evictions.inc();
                        status
                            .event(&v, EventType::Warning, event_reason, &note)
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(pod = %v.key, error = %e, "eviction refused; left alone for a minute");
                        let _ = tx.send(Msg::EvictionRefused(v.key.clone()));
                    }
                    Err(_) => {
                        tracing::info!(pod = %v.key, "eviction not accepted within {}s (a PodDisruptionBudget refuses it); left alone for a minute", EVICTION_TIMEOUT.as_secs());
                        let _ = tx.send(Msg::EvictionRefused(v.key.clone()));
                    }
                }
            });
        }
    }

    /// Holds capacity for a blocked gang if no other gang holds some (or the hold ran
    /// out), so that small pods cannot starve it.
    fn reserve_for(&mut self, gang: &GangKey, members: &[Arc<PodInfo>], now: i64) {
        let Some(hold_ms) = self.opts.config.gang_reservation_ms else {
            return;
        };
        if let Some((g, until)) = &self.reservation
            && (g != gang || *until > now)
        {
            return;
        }
        let snap = self.cache.snapshot();
        let Some(plan) = gang::plan_reservation(&self.opts.config.profile, members, &snap) else {
            tracing::info!(gang = %gang, "gang does not fit even on drained nodes; nothing reserved");
            return;
        };
        let priority = members.iter().map(|m| m.priority).max().unwrap_or(0);
        self.cache
            .reserve(&gang.namespace, &gang.name, priority, &plan);
        self.reservation = Some((gang.clone(), now + hold_ms));
        let nodes: Vec<String> = plan
            .keys()
            .filter_map(|s| snap.slot(*s).map(|n| n.name.to_string()))
            .collect();
        let note = format!(
            "holding capacity on {} node(s) for gang {gang} for up to {}s while they drain; smaller pods use only what the gang does not need: {}",
            nodes.len(),
            hold_ms / 1000,
            nodes.join(", ")
        );
        tracing::info!(gang = %gang, %note, "reserved");
        if let Some(group) = self.gangs.group(gang).cloned() {
            let status = self.status.clone();
            self.status.spawn(async move {
                status
                    .pod_group_event(&group, EventType::Normal, "Reserved", &note)
                    .await;
            });
        }
    }

    /// A gang member's bind failed after its gang was placed: place it again ahead
    /// of other work (after a short backoff once it has failed a few times).
    fn repair_gang(&mut self, gang: &GangKey, pod: &Arc<PodInfo>, node: &str, why: &str, now: i64) {
        if let Some(current) = self.cache.pod(&pod.key).cloned() {
            self.gangs.observe(&current, MemberState::Pending);
        }
        let failures = self.bind_failures.entry(pod.key.clone()).or_default();
        *failures += 1;
        if *failures <= 3 {
            self.queue.urgent(&pod.key);
        } else {
            self.queue.backoff(&pod.key, now);
        }
        let counts = self.gangs.counts(gang);
        let note = format!(
            "gang {gang}: binding {} to {node} failed ({why}); {} member(s) bound or binding, placing it again ahead of other work",
            pod.key, counts.scheduled
        );
        tracing::warn!(%note, "gang repair");
        self.shared.metrics.gang_repairs.inc();
        let status = self.status.clone();
        let group = self.gangs.group(gang).cloned();
        let pod = pod.clone();
        self.status.spawn(async move {
            status
                .event(&pod, EventType::Warning, "GangRepair", &note)
                .await;
            if let Some(g) = group {
                status
                    .pod_group_event(&g, EventType::Warning, "GangRepair", &note)
                    .await;
            }
        });
    }

    /// Hands a placed pod to a bind task.
    fn spawn_bind(&mut self, pod: Arc<PodInfo>, node: Arc<str>) {
        self.ledger
            .set(&pod.key, Some(self.contribution(&pod, true)));
        let (client, tx, binds) = (self.client.clone(), self.tx.clone(), self.binds.clone());
        self.binds_in_flight += 1;
        tokio::spawn(async move {
            let _permit = binds.acquire_owned().await;
            let result = bind(client, &pod.key, &pod.uid, &node).await;
            let _ = tx.send(Msg::Bound { pod, node, result });
        });
    }

    /// Once a second: drop a reservation that is no longer needed or ran out, and
    /// report gangs past their scheduleTimeoutSeconds.
    fn gang_housekeeping(&mut self, now: i64) {
        if let Some((g, until)) = self.reservation.clone() {
            let done = self
                .gangs
                .min_member(&g)
                .map_or(true, |min| self.gangs.counts(&g).scheduled >= min)
                || self.gangs.counts(&g).pending == 0;
            if done || until <= now {
                tracing::info!(gang = %g, expired = !done, "reservation released");
                self.reservation = None;
                self.cache.clear_reservation();
                self.gang_tried.remove(&g);
                self.queue.cluster_changed(now);
            }
        }
        let gangs: Vec<GangKey> = self.gangs.gangs().cloned().collect();
        let (mut waiting, mut running, mut oldest) = (0, 0, 0i64);
        for g in gangs {
            let Ok(min) = self.gangs.min_member(&g) else {
                continue;
            };
            let c = self.gangs.counts(&g);
            if c.scheduled >= min {
                running += 1;
                continue;
            }
            if c.pending == 0 {
                continue;
            }
            waiting += 1;
            if let Some(t) = self.gangs.started(&g) {
                oldest = oldest.max(now - t);
            }
            let (Some(start), Some(group)) =
                (self.gangs.started(&g), self.gangs.group(&g).cloned())
            else {
                continue;
            };
            let Some(timeout) = group.schedule_timeout_ms else {
                continue;
            };
            if self.leading && now - start >= timeout && self.timed_out.insert(g.clone()) {
                let note = format!(
                    "gang {g}: not placed within scheduleTimeoutSeconds ({}s); its pods keep waiting and are retried",
                    timeout / 1000
                );
                tracing::warn!(%note, "gang timed out");
                self.gangs.touch(&g);
                let status = self.status.clone();
                self.status.spawn(async move {
                    status
                        .pod_group_event(&group, EventType::Warning, "ScheduleTimeout", &note)
                        .await;
                });
            }
        }
        self.sync_queues();
        self.shared.metrics.gangs_waiting.set(waiting);
        self.shared.metrics.gangs_running.set(running);
        self.shared
            .metrics
            .gang_oldest_wait_seconds
            .set(oldest as f64 / 1000.0);
        self.shared
            .metrics
            .snapshot_age_seconds
            .set(self.published_at.elapsed().as_secs_f64());
        self.measure_waste();
    }

    /// Queue status (when leading) and per-queue metrics, from the ledger.
    fn sync_queues(&mut self) {
        let usage = self.ledger.usage(&self.tree);
        let fair = self.tree.fair_shares(&usage, &self.cluster_total);
        let m = self.shared.metrics.clone();
        let tree = self.tree.clone();
        m.queue_resources.reset();
        m.queue_pending_pods.reset();
        let units = |k: &crate::model::ResourceKind, v: i64| match k {
            crate::model::ResourceKind::Cpu => v as f64 / 1000.0,
            _ => v as f64,
        };
        for (q, n) in self.queue.per_queue() {
            m.queue_pending_pods.with_label_values(&[q]).set(n as i64);
        }
        let quantity = |r: &crate::model::Resources| -> serde_json::Value {
            r.iter()
                .map(|(k, v)| {
                    (
                        k.name().to_string(),
                        serde_json::Value::from(crate::quantity::format_quantity(&k, v)),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        for spec in tree.queues() {
            let name = &spec.name;
            let alloc = usage.allocated(name);
            let share = fair.get(name).cloned().unwrap_or_default();
            for (kind, r) in [
                ("allocated", &alloc),
                ("guaranteed", &spec.guaranteed),
                ("fair_share", &share),
            ]
            .into_iter()
            .chain(spec.max.as_ref().map(|mx| ("max", mx)))
            {
                for (k, v) in r.iter() {
                    m.queue_resources
                        .with_label_values(&[name, k.name(), kind])
                        .set(units(&k, v));
                }
            }
            let status = serde_json::json!({
                "allocated": quantity(&alloc),
                "pending": quantity(&usage.pending(name)),
                "fairShare": quantity(&share),
                "dominantShare": format!("{:.3}", crate::quota::dominant_share(&alloc, &self.cluster_total)),
                "conditions": [{"type": "Valid", "status": "True", "reason": "Valid", "message": ""}],
            });
            self.write_queue_status(name.clone(), status);
        }
        for p in self.tree.problems().cloned().collect::<Vec<_>>() {
            let status = serde_json::json!({
                "conditions": [{"type": "Valid", "status": "False", "reason": "Invalid",
                                "message": format!("{}: {}", p.field, p.message)}],
            });
            self.write_queue_status(p.queue.clone(), status);
        }
    }

    fn write_queue_status(&mut self, queue: Arc<str>, status: serde_json::Value) {
        if !self.leading || self.queue_status.get(&queue) == Some(&status) {
            return;
        }
        self.queue_status.insert(queue.clone(), status.clone());
        self.status_sink
            .write(StatusTarget::Queue(queue.to_string()), status);
    }

    /// What nodes that run workload pods leave unused: memory, and with a price
    /// table, the price of the unused share.
    fn measure_waste(&self) {
        let waste = self
            .opts
            .config
            .profile
            .scores
            .iter()
            .find_map(|(s, _)| match s {
                crate::plugins::Score::LeastWaste(w) => Some(w),
                _ => None,
            });
        let snap = self.cache.snapshot();
        let (mut memory, mut cost) = (0i64, 0f64);
        let (mut whole, mut partly) = (0i64, 0i64);
        for (_, n) in snap.nodes() {
            if n.known && n.allocatable.gpu > 0 {
                let free = (n.allocatable.gpu - n.requested.gpu).max(0);
                if n.requested.gpu == 0 {
                    whole += free;
                } else {
                    partly += free;
                }
            }
            if !n.known || n.pod_count() == n.system_pods {
                continue;
            }
            let free = n.free();
            memory += free.memory.max(0);
            if let Some(w) = waste
                && let Some(price) = w.price(n)
            {
                cost += price * w.weigh(&free) as f64 / w.weigh(&n.allocatable).max(1) as f64;
            }
        }
        self.shared.metrics.wasted_memory_bytes.set(memory);
        let g = &self.shared.metrics.gpus_free;
        g.with_label_values(&["whole_node"]).set(whole);
        g.with_label_values(&["partly_used_node"]).set(partly);
        self.shared.metrics.wasted_cost.set(cost);
    }

    /// Writes the status of every PodGroup whose members changed.
    fn sync_group_status(&mut self) {
        for g in self.gangs.take_dirty() {
            let Some(group) = self.gangs.group(&g) else {
                self.group_status.remove(&g);
                continue;
            };
            let c = self.gangs.counts(&g);
            let started = self.gangs.started(&g);
            let min = usize::try_from(group.min_member).unwrap_or(0);
            let phase = c.phase(min, started.is_some());
            let mut status = serde_json::json!({
                "phase": phase.as_str(),
                "scheduled": c.scheduled,
                "running": c.running,
                "succeeded": c.succeeded,
                "failed": c.failed,
            });
            if let Some(t) =
                started.and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
            {
                status["scheduleStartTime"] = t
                    .round(k8s_openapi::jiff::Unit::Second)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
                    .into();
            }
            if self.timed_out.contains(&g) && phase != gang::GangPhase::Running {
                status["conditions"] = serde_json::json!([{
                    "type": "ScheduleTimedOut",
                    "status": "True",
                    "reason": "ScheduleTimeout",
                    "message": format!("not placed within scheduleTimeoutSeconds; members keep waiting"),
                    "lastTransitionTime": status.get("scheduleStartTime").cloned().unwrap_or_default(),
                }]);
            }
            if self.group_status.get(&g) == Some(&status) {
                continue;
            }
            self.group_status.insert(g.clone(), status.clone());
            self.status_sink.write(StatusTarget::PodGroup(g), status);
        }
    }

    fn publish(&mut self) {
        let generation = self.cache.generation();
        if self.shared.snapshot.load().generation != generation {
            let snap = self.cache.snapshot();
            self.shared.metrics.nodes.set(snap.node_count() as i64);
            self.shared
                .metrics
                .snapshot_generation
                .set(generation as i64);
            self.shared.snapshot.store(Arc::new(snap));
            self.published_at = Instant::now();
        }
        let (a, b, u, f) = self.queue.counts();
        for (state, v) in [
            ("active", a),
            ("backoff", b),
            ("unschedulable", u),
            ("in_flight", f),
        ] {
            self.shared
                .metrics
                .pending
                .with_label_values(&[state])
                .set(v as i64);
        }
    }
}

fn same_node(a: &NodeInfo, b: &NodeInfo) -> bool {
    a.known
        && a.labels == b.labels
        && a.taints == b.taints
        && a.unschedulable == b.unschedulable
        && a.allocatable == b.allocatable
        && a.max_pods == b.max_pods
        && a.gpu_memory_mib == b.gpu_memory_mib
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(client, opts, Shared::new(), shutdown).await
}

/// [`run`] with caller-provided shared state (to read the snapshot or metrics).
pub async fn run_with(
    client: Client,
    opts: RunOptions,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = opts.metrics_addr {
        serve::spawn(addr, shared.clone(), shutdown.clone()).await?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let lease = match opts.leader_election.clone() {
        _ if opts.cache_only => None,
        None => {
            let _ = tx.send(Msg::Leader(true));
            None
        }
        Some(le) => Some(tokio::spawn(lead(
            client.clone(),
            le,
            opts.identity.clone(),
            tx.clone(),
            shutdown.clone(),
        ))),
    };
    spawn_watch(
        Api::<Pod>::all(client.clone()),
        "pods",
        tx.clone(),
        |e| Msg::Pod(Box::new(e)),
        shutdown.clone(),
        None,
    );
    spawn_watch(
        Api::<Node>::all(client.clone()),
        "nodes",
        tx.clone(),
        |e| Msg::Node(Box::new(e)),
        shutdown.clone(),
        None,
    );
    spawn_watch(
        Api::<DynamicObject>::all_with(client.clone(), &pod_group_resource()),
        "podgroups",
        tx.clone(),
        |e| Msg::Group(Box::new(e)),
        shutdown.clone(),
        Some(|| Msg::GroupsAbsent),
    );
    spawn_watch(
        Api::<DynamicObject>::all_with(client.clone(), &node_resource_topology_resource()),
        "noderesourcetopologies",
        tx.clone(),
        |e| Msg::Numa(Box::new(e)),
        shutdown.clone(),
        Some(|| Msg::NumaAbsent),
    );
    spawn_watch(
        Api::<DynamicObject>::all_with(client.clone(), &super::status::queue_resource()),
        "queues",
        tx.clone(),
        |e| Msg::Queue(Box::new(e)),
        shutdown.clone(),
        Some(|| Msg::NumaAbsent),
    );
    spawn_watch(
        Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::all(client.clone()),
        "poddisruptionbudgets",
        tx.clone(),
        |e| Msg::Pdb(Box::new(e)),
        shutdown.clone(),
        None,
    );
    spawn_watch(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        "namespaces",
        tx.clone(),
        |e| Msg::Namespace(Box::new(e)),
        shutdown.clone(),
        None,
    );
    let status = StatusWriter::new(
        client.clone(),
        &opts.scheduler_name,
        &opts.identity,
        shared.metrics.status_writes_dropped.clone(),
    );
    let binds = Arc::new(Semaphore::new(opts.config.bind_concurrency));
    let queue = QueueSet::new(opts.config.queue);
    tracing::info!(scheduler_name = %opts.scheduler_name, identity = %opts.identity, "drover starting");
    let mut s = Scheduler {
        client,
        opts,
        cache: ClusterCache::new(),
        queue,
        shared,
        status_sink: StatusSink::spawn(status.clone()),
        status,
        tx,
        binds,
        binds_in_flight: 0,
        pods_synced: false,
        nodes_synced: false,
        groups_synced: false,
        namespaces_synced: false,
        pod_relist: None,
        node_relist: None,
        group_relist: None,
        numa_relist: None,
        last_message: HashMap::new(),
        gangs: GangTracker::new(),
        gang_tried: HashMap::new(),
        reservation: None,
        group_status: HashMap::new(),
        timed_out: HashSet::new(),
        bind_failures: HashMap::new(),
        leading: false,
        published_at: Instant::now(),
        queue_specs: Default::default(),
        tree: QueueTree::default(),
        queue_relist: None,
        ledger: Ledger::new(),
        namespace_queues: HashMap::new(),
        cluster_total: Default::default(),
        queue_status: HashMap::new(),
        waiting_since: HashMap::new(),
        evicting: HashMap::new(),
        refused: HashMap::new(),
        pdbs: HashMap::new(),
        pdb_relist: None,
    };
    // The loop runs on a thread of a scoring pool of its own, so that each decision
    // starts at once on that thread (see `crate::pool`).
    let pool = crate::pool::build("drover-scoring")?;
    let stop = shutdown.clone();
    let (mut s, mut rx) = on_pool(&pool, async move {
        schedule_until_stopped(&mut s, &mut rx, &stop).await;
        (s, rx)
    })
    .await;
    // Binds already sent to the API server finish and are accounted for, so that a
    // restarted instance sees them bound and the metrics count each bind once.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BIND_WAIT;
    while s.binds_in_flight > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m @ Msg::Bound { .. })) => s.handle(m, now_ms()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                tracing::warn!(
                    in_flight = s.binds_in_flight,
                    "stopping with binds still unanswered"
                );
                break;
            }
        }
    }
    // Events of the last binds (and other writes under way) go out before drover stops.
    s.status.flush(SHUTDOWN_BIND_WAIT).await;
    if let Some(task) = lease {
        // The lease task releases the Lease on shutdown so a follower takes over at once.
        let _ = tokio::time::timeout(SHUTDOWN_BIND_WAIT, task).await;
    }
    s.shared.leader.store(false, Ordering::SeqCst);
    tracing::info!("drover stopped");
    Ok(())
}

/// Takes in what arrives and decides pods one at a time, until `shutdown`.
async fn schedule_until_stopped(
    s: &mut Scheduler,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    shutdown: &CancellationToken,
) {
    let mut next_expire = 0;
    while !shutdown.is_cancelled() {
        // Take in everything that has arrived, then decide one pod.
        let now = now_ms();
        let mut drained = 0;
        while let Ok(msg) = rx.try_recv() {
            s.handle(msg, now);
            drained += 1;
            if drained >= 10_000 {
                break;
            }
        }
        if now >= next_expire {
            for k in s.cache.expire(now) {
                tracing::warn!(pod = %k, "binding was never confirmed by the watch; dropping the assumption");
            }
            s.gang_housekeeping(now);
            next_expire = now + 1_000;
        }
        let synced = s.pods_synced && s.nodes_synced && s.groups_synced && s.namespaces_synced;
        if synced && s.leading {
            s.sync_group_status();
        }
        if synced && !s.shared.synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                nodes = s.cache.snapshot().node_count(),
                pending = s.queue.len(),
                "caches synced; scheduling"
            );
        }
        let worked = synced && s.leading && s.schedule_next(now);
        s.publish();
        if worked {
            // Let bind tasks and watchers run between decisions.
            tokio::task::yield_now().await;
            continue;
        }
        let wake = s
            .queue
            .next_wakeup()
            .map_or(1_000, |t| (t - now).clamp(1, 1_000));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(m) => s.handle(m, now_ms()),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(wake as u64)) => {}
        }
    }
}

/// Runs `fut` to its end on a thread of `pool` (on this task's runtime, whose tasks
/// and timers it may use), and gives back its output; a panic in it resumes here.
async fn on_pool<F>(pool: &rayon::ThreadPool, fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(fut)));
        let _ = tx.send(out);
    });
    match rx.await.expect("the pool thread answers before it ends") {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Holds the leader Lease while it can (see [`super::lease`]), reporting each change
/// to the scheduling task; gives it up on shutdown.
async fn lead(
    client: Client,
    le: LeaderElection,
    identity: String,
    tx: mpsc::UnboundedSender<Msg>,
    shutdown: CancellationToken,
) {
    let params = super::lease::Params {
        namespace: le.namespace,
        name: le.name,
        identity,
        duration: Duration::from_secs(le.duration_seconds),
    };
    let changed = move |leading| tx.send(Msg::Leader(leading)).is_ok();
    super::lease::run(client, params, changed, shutdown).await;
}
