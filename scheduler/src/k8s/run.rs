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
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cache::{ClusterCache, PodChange};
use crate::config::{Config, FileConfig};
use crate::framework::{Outcome, schedule_one};
use crate::metrics::Metrics;
use crate::model::{NodeInfo, PodInfo, PodKey};
use crate::queue::SchedulingQueue;
use crate::snapshot::Snapshot;

use super::binder::{BindResult, bind};
use super::convert::{node_info, pod_info};
use super::serve;
use super::status::StatusWriter;

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
    /// This replica's identity in Events (defaults to the host name).
    #[arg(long, env = "DROVER_IDENTITY")]
    pub identity: Option<String>,
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
}

impl RunOptions {
    /// Options with the default configuration.
    pub fn new(scheduler_name: &str) -> Self {
        RunOptions {
            scheduler_name: scheduler_name.into(),
            config: Config::default(),
            metrics_addr: None,
            identity: hostname(),
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
        Ok(RunOptions {
            scheduler_name: self.scheduler_name.clone(),
            config,
            metrics_addr,
            identity: self.identity.clone().unwrap_or_else(hostname),
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
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
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
    Bound {
        pod: Arc<PodInfo>,
        node: Arc<str>,
        result: BindResult,
    },
}

/// State shared with the HTTP server and other readers.
#[derive(Clone)]
pub struct Shared {
    /// The newest snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// True once both watches have listed everything.
    pub synced: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Metrics,
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
                    Some(Err(e)) => tracing::warn!(error = %e, what, "watch failed; retrying"),
                    None => return,
                }
            }
        }
    });
}

/// The scheduling task's state.
struct Scheduler {
    client: Client,
    opts: RunOptions,
    cache: ClusterCache,
    queue: SchedulingQueue,
    shared: Shared,
    status: StatusWriter,
    tx: mpsc::UnboundedSender<Msg>,
    binds: Arc<Semaphore>,
    pods_synced: bool,
    nodes_synced: bool,
    pod_relist: Option<HashSet<PodKey>>,
    node_relist: Option<HashSet<Arc<str>>>,
    /// The last unschedulable message written per pod, so it is not written again.
    last_message: HashMap<PodKey, String>,
}

impl Scheduler {
    fn ours(&self, p: &PodInfo) -> bool {
        *p.scheduler_name == *self.opts.scheduler_name
    }

    fn apply_pod(&mut self, pod: &Pod, now: i64) {
        let info = match pod_info(pod) {
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
        let key = info.key.clone();
        let was_placed = self.cache.pod(&key).is_some_and(|p| p.node_name.is_some());
        let ours = self.ours(&info);
        let info = Arc::new(info);
        match self.cache.upsert_pod((*info).clone()) {
            PodChange::Pending if ours => self.queue.add_or_update(info, now),
            PodChange::Terminal if was_placed => {
                self.forget_pod(&key);
                self.queue.cluster_changed(now);
            }
            _ => self.forget_pod(&key),
        }
    }

    fn forget_pod(&mut self, key: &PodKey) {
        self.queue.remove(key);
        self.last_message.remove(key);
    }

    fn delete_pod(&mut self, key: &PodKey, now: i64) {
        let was_placed = self.cache.pod(key).is_some_and(|p| p.node_name.is_some());
        tracing::debug!(pod = %key, was_placed, "pod deleted");
        self.cache.delete_pod(key);
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
            Msg::Bound { pod, node, result } => self.bound(pod, node, result, now),
        }
    }

    fn bound(&mut self, pod: Arc<PodInfo>, node: Arc<str>, result: BindResult, now: i64) {
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
                tokio::spawn(async move {
                    let note = format!("Successfully assigned {} to {node}", pod.key);
                    status
                        .event(&pod, EventType::Normal, "Scheduled", &note)
                        .await;
                });
            }
            BindResult::Gone(why) => {
                // Already bound (by an earlier run, say) or deleted: the watch has the truth.
                tracing::info!(pod = %pod.key, node = %node, reason = %why, "pod is gone or already bound; dropping it");
                m.bind_errors.with_label_values(&["conflict"]).inc();
                self.cache.forget(&pod.key);
                self.forget_pod(&pod.key);
            }
            BindResult::Failed(why) => {
                tracing::warn!(pod = %pod.key, node = %node, error = %why, "bind failed; will retry");
                m.bind_errors.with_label_values(&["other"]).inc();
                m.attempts.with_label_values(&["error"]).inc();
                self.cache.forget(&pod.key);
                self.queue.backoff(&pod.key, now);
                let status = self.status.clone();
                tokio::spawn(async move {
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
        let Some(pod) = self.queue.pop(now) else {
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
                let (client, tx, binds, node) = (
                    self.client.clone(),
                    self.tx.clone(),
                    self.binds.clone(),
                    p.node.clone(),
                );
                tokio::spawn(async move {
                    let _permit = binds.acquire_owned().await;
                    let result = bind(client, &pod.key, &pod.uid, &node).await;
                    let _ = tx.send(Msg::Bound { pod, node, result });
                });
            }
            Outcome::Unschedulable(d) => {
                let message = d.message();
                self.queue.unschedulable(&pod.key, now);
                self.shared
                    .metrics
                    .attempts
                    .with_label_values(&["unschedulable"])
                    .inc();
                if self.last_message.get(&pod.key) != Some(&message) {
                    tracing::info!(pod = %pod.key, %message, "unschedulable");
                    self.last_message.insert(pod.key.clone(), message.clone());
                    let status = self.status.clone();
                    tokio::spawn(async move { status.unschedulable(&pod, &message).await });
                }
            }
        }
        true
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
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
        synced: Arc::new(AtomicBool::new(false)),
        metrics: Metrics::new(),
    };
    run_with(client, opts, shared, shutdown).await
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
    spawn_watch(
        Api::<Pod>::all(client.clone()),
        "pods",
        tx.clone(),
        |e| Msg::Pod(Box::new(e)),
        shutdown.clone(),
    );
    spawn_watch(
        Api::<Node>::all(client.clone()),
        "nodes",
        tx.clone(),
        |e| Msg::Node(Box::new(e)),
        shutdown.clone(),
    );
    let status = StatusWriter::new(client.clone(), &opts.scheduler_name, &opts.identity);
    let binds = Arc::new(Semaphore::new(opts.config.bind_concurrency));
    let queue = SchedulingQueue::new(opts.config.queue);
    tracing::info!(scheduler_name = %opts.scheduler_name, identity = %opts.identity, "drover starting");
    let mut s = Scheduler {
        client,
        opts,
        cache: ClusterCache::new(),
        queue,
        shared,
        status,
        tx,
        binds,
        pods_synced: false,
        nodes_synced: false,
        pod_relist: None,
        node_relist: None,
        last_message: HashMap::new(),
    };
    let mut next_expire = 0;
    loop {
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
            next_expire = now + 1_000;
        }
        let synced = s.pods_synced && s.nodes_synced;
        if synced && !s.shared.synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                nodes = s.cache.snapshot().node_count(),
                pending = s.queue.len(),
                "caches synced; scheduling"
            );
        }
        let worked = synced && s.schedule_next(now);
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
    tracing::info!("drover stopped");
    Ok(())
}
