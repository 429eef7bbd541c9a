//! `drover run`: the engine driven on a cluster.
//!
//! One task owns the [`Engine`] (no locks around it). The watches feed it through a
//! channel ([`super::watch`]); when the engine's timeout is due the task lets it
//! decide, then carries out what it asks — binds and evictions on tasks of their own
//! whose results come back through the same channel, conditions and statuses through
//! the ordered [`StatusSink`], Events through the recorder. The task decides nothing
//! itself: every policy lives in the engine, which starts deciding once everything is
//! listed, so no node is overcommitted by pods drover has not yet seen.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use drover_core::config::Config;
use drover_core::engine::{Action, Engine, EventObject, Options};
use drover_core::snapshot::Snapshot;
use kube::Client;
use kube::runtime::events::EventType;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::binder::{bind, bind_volumes, reserve_device_claims};
use super::serve;
use super::status::{
    StatusSink, StatusTarget, StatusWriter, nominated_node, pod_group_status, queue_status,
    unschedulable_condition,
};
use super::watch::{Input, apply, spawn_watches};
use crate::metrics::Metrics;

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
    /// Schedule pods whose spec.schedulerName is one of these, comma-separated: e.g.
    /// `drover,scheduler-plugins-scheduler` to also take the pods of a controller that
    /// sets a fixed name (KubeRay in scheduler-plugins mode). Events name the first.
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
    /// The scheduler names pods select (at least one; Events name the first).
    pub scheduler_names: Vec<String>,
    /// The validated configuration.
    pub config: Config,
    /// Where to serve metrics and health, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// This replica's identity.
    pub identity: String,
    /// Leader election; `None`: this replica always leads.
    pub leader_election: Option<LeaderElection>,
}

impl RunOptions {
    /// Options with the default configuration.
    pub fn new(scheduler_name: &str) -> Self {
        RunOptions {
            scheduler_names: vec![scheduler_name.into()],
            config: Config::default(),
            metrics_addr: None,
            identity: hostname(),
            leader_election: None,
        }
    }
}

/// `--scheduler-name`'s list: comma-separated, each a valid name, none twice.
fn scheduler_names(flag: &str) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for n in flag.split(',').map(str::trim) {
        if n.is_empty() {
            anyhow::bail!(
                "--scheduler-name {flag:?}: an empty name; pods select a scheduler by spec.schedulerName, e.g. drover or drover,scheduler-plugins-scheduler"
            );
        }
        let valid = n.len() <= 253
            && n.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            anyhow::bail!(
                "--scheduler-name {n:?}: not a valid scheduler name (lower-case letters, digits, '-' and '.', as spec.schedulerName takes)"
            );
        }
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    }
    Ok(names)
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
        let scheduler_names = scheduler_names(&self.scheduler_name)?;
        let config = match &self.config {
            Some(p) => super::load_config(p)?,
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
            scheduler_names,
            config,
            metrics_addr,
            identity: self.identity.clone().unwrap_or_else(hostname),
            leader_election,
        })
    }
}

/// Sets up logging in the given format (RUST_LOG filters; default `info`).
pub fn init_logging(format: &LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal (and never with NO_COLOR set): log
    // collectors get plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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

/// How long a stopping scheduler waits for binds it has already sent (and then for
/// the Events and status writes under way).
const SHUTDOWN_BIND_WAIT: Duration = Duration::from_secs(5);

/// How long an eviction may take before it counts as refused.
const EVICTION_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared with the HTTP server and other readers.
#[derive(Clone)]
pub struct Shared {
    /// The newest snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// True once every watch the engine needs has listed everything.
    pub synced: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Metrics,
    /// True while this replica leads (always, without leader election).
    pub leader: Arc<AtomicBool>,
    /// The scheduling task's input, once it runs: `/debug/pods/...` asks it about a pod.
    pub asks: Arc<std::sync::OnceLock<mpsc::UnboundedSender<Input>>>,
    /// The address `/metrics` and `/debug/pods/...` are served on, once bound.
    pub served_at: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl Shared {
    /// Fresh shared state: an empty snapshot, not synced, not leading.
    pub fn new() -> Self {
        Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            synced: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::new(),
            leader: Arc::new(AtomicBool::new(false)),
            asks: Arc::default(),
            served_at: Arc::default(),
        }
    }

    /// Publishes the engine's state: its snapshot when it changed, and whether it is
    /// synced.
    pub fn publish(&self, engine: &Engine) -> bool {
        self.synced.store(engine.synced(), Ordering::SeqCst);
        if self.snapshot.load().generation == engine.generation() {
            return false;
        }
        let snap = engine.snapshot();
        self.metrics.nodes.set(snap.node_count() as i64);
        self.metrics.snapshot_generation.set(snap.generation as i64);
        self.snapshot.store(Arc::new(snap));
        true
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch: the time drivers hand the engine.
pub fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// The scheduling task: the engine and what executes its actions.
struct Driver {
    client: Client,
    engine: Engine,
    shared: Shared,
    status: StatusWriter,
    /// Conditions, PodGroup and Queue status, written in order by one task.
    sink: StatusSink,
    tx: mpsc::UnboundedSender<Input>,
    binds: Arc<Semaphore>,
    identity: String,
    /// When the snapshot was last published.
    published_at: Instant,
    /// When the gauges are next refreshed (ms).
    next_gauges: i64,
}

impl Driver {
    /// Takes in one input: a watch event for the engine, or a result or leadership
    /// change the driver reports to it.
    fn handle(&mut self, input: Input, now: i64) {
        let Some(other) = apply(&mut self.engine, input, now, &self.shared.metrics) else {
            return;
        };
        match other {
            Input::Leader(leading) => {
                if leading != self.engine.leading() {
                    if leading {
                        tracing::info!(identity = %self.identity, "leading: scheduling starts");
                    } else {
                        tracing::warn!(identity = %self.identity, "lost the leader Lease: scheduling stops");
                        // Writes queued but not made are no longer this replica's.
                        self.sink.clear();
                    }
                }
                self.engine.handle_leadership(leading, now);
                self.shared.leader.store(leading, Ordering::SeqCst);
                self.shared.metrics.leader.set(i64::from(leading));
            }
            Input::Bound {
                key,
                created_ms,
                result,
            } => {
                if result == drover_core::engine::BindResult::Bound && created_ms > 0 {
                    self.shared
                        .metrics
                        .e2e_seconds
                        .observe((now - created_ms).max(0) as f64 / 1000.0);
                }
                self.engine.handle_bind_result(&key, result, now);
            }
            Input::Evicted { key, result } => self.engine.handle_eviction_result(&key, result, now),
            Input::Explain { key, reply } => {
                let _ = reply.send(self.engine.decision_state(&key, now));
            }
            _ => {}
        }
    }

    /// Lets the engine do what is due at `now` and carries out its actions. Returns
    /// true when more is due at once.
    fn step(&mut self, now: i64) -> bool {
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            let start = Instant::now();
            self.engine.handle_timeout(now);
            let elapsed = start.elapsed().as_secs_f64();
            let stats = self.engine.take_stats();
            if stats.decisions > 0 {
                self.shared.metrics.decision_seconds.observe(elapsed);
            }
            self.count(stats);
        }
        while let Some(action) = self.engine.poll_action() {
            self.execute(action);
        }
        let stats = self.engine.take_stats();
        self.count(stats);
        if now >= self.next_gauges {
            self.gauges(now);
            self.next_gauges = now + 1_000;
        }
        if self.shared.publish(&self.engine) {
            self.published_at = Instant::now();
        }
        self.engine.poll_timeout().is_some_and(|t| t <= now)
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Bind { pod, node, volumes } => {
                let (client, tx, binds) =
                    (self.client.clone(), self.tx.clone(), self.binds.clone());
                let volume_timeout = std::time::Duration::from_millis(
                    self.engine.options().config.volume_bind_timeout_ms as u64,
                );
                tokio::spawn(async move {
                    // Waiting for claims to bind holds no bind slot.
                    let mut volumes = if volumes.is_empty() {
                        Ok(())
                    } else {
                        bind_volumes(client.clone(), &volumes, volume_timeout).await
                    };
                    if volumes.is_ok() && pod.device_claims.is_some() {
                        volumes = reserve_device_claims(client.clone(), &pod).await;
                    }
                    let result = match volumes {
                        Ok(()) => {
                            let _permit = binds.acquire_owned().await;
                            bind(client, &pod.key, &pod.uid, &node).await
                        }
                        Err(why) => drover_core::engine::BindResult::Failed(why),
                    };
                    let _ = tx.send(Input::Bound {
                        key: pod.key.clone(),
                        created_ms: pod.created_ms,
                        result,
                    });
                });
            }
            Action::Evict { pod, reason } => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                self.status.spawn(async move {
                    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                        kube::Api::namespaced(client, &pod.key.namespace);
                    // The client retries a 429 (what a PodDisruptionBudget answers) for
                    // minutes; a refusal must be noticed at once, so the wait is bounded.
                    let evicted = tokio::time::timeout(
                        EVICTION_TIMEOUT,
                        api.evict(&pod.key.name, &Default::default()),
                    )
                    .await;
                    let result = match evicted {
                        Ok(Ok(_)) => drover_core::engine::EvictionResult::Evicted,
                        Ok(Err(e)) => drover_core::engine::EvictionResult::Refused(e.to_string()),
                        Err(_) => drover_core::engine::EvictionResult::Refused(format!(
                            "not accepted within {}s (a PodDisruptionBudget refuses it)",
                            EVICTION_TIMEOUT.as_secs()
                        )),
                    };
                    tracing::debug!(pod = %pod.key, reason = reason.as_str(), ?result, "eviction");
                    let _ = tx.send(Input::Evicted {
                        key: pod.key.clone(),
                        result,
                    });
                });
            }
            Action::Unschedulable { pod, message } => self
                .sink
                .write(StatusTarget::Pod(pod), unschedulable_condition(&message)),
            Action::Nominate { pod, node } => self.sink.write(
                StatusTarget::Nominated(pod),
                nominated_node(node.as_deref()),
            ),
            Action::Event(ev) => {
                let status = self.status.clone();
                let type_ = if ev.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                self.status.spawn(async move {
                    match &ev.object {
                        EventObject::Pod(p) => status.event(p, type_, ev.reason, &ev.note).await,
                        EventObject::PodGroup(g) => {
                            status.pod_group_event(g, type_, ev.reason, &ev.note).await
                        }
                    }
                });
            }
            Action::PodGroupStatus { gang, status } => {
                let target = match status.dialect {
                    drover_core::gang::Dialect::SchedulerPlugins => StatusTarget::PodGroup(gang),
                    drover_core::gang::Dialect::Volcano => StatusTarget::VolcanoPodGroup(gang),
                };
                self.sink.write(target, pod_group_status(&status))
            }
            Action::QueueStatus { queue, status } => {
                if let drover_core::engine::QueueStatus::Invalid { message } = &status {
                    tracing::warn!(queue = %queue, %message, "invalid Queue");
                }
                self.sink.write(
                    StatusTarget::Queue(queue.to_string()),
                    queue_status(&status),
                )
            }
        }
    }

    /// Adds what the engine counted to the metrics (a series appears with its first
    /// count, not before).
    fn count(&self, s: drover_core::engine::Stats) {
        let m = &self.shared.metrics;
        let add = |v: &prometheus::IntCounterVec, label: &str, n: u64| {
            if n > 0 {
                v.with_label_values(&[label]).inc_by(n);
            }
        };
        add(&m.attempts, "scheduled", s.scheduled);
        add(&m.attempts, "unschedulable", s.unschedulable);
        add(&m.attempts, "error", s.bind_failures);
        add(&m.bind_errors, "conflict", s.bind_conflicts);
        add(&m.bind_errors, "other", s.bind_failures);
        for (reason, n) in s.evictions {
            add(&m.evictions, reason, n);
        }
        m.gangs_placed.inc_by(s.gangs_placed);
        m.gang_repairs.inc_by(s.gang_repairs);
        for w in s.gang_waits_ms {
            m.gang_wait_seconds.observe(w as f64 / 1000.0);
        }
    }

    /// Refreshes the gauges from the engine's state.
    fn gauges(&self, now: i64) {
        let g = self.engine.gauges(now);
        let m = &self.shared.metrics;
        m.gangs_waiting.set(g.gangs_waiting);
        m.gangs_running.set(g.gangs_running);
        m.gang_oldest_wait_seconds
            .set(g.oldest_gang_wait_ms as f64 / 1000.0);
        for (state, v) in g.pending {
            m.pending.with_label_values(&[state]).set(v);
        }
        m.queue_pending_pods.reset();
        for (q, n) in &g.pending_per_queue {
            m.queue_pending_pods.with_label_values(&[q]).set(*n);
        }
        m.queue_resources.reset();
        let units = |k: &drover_core::model::ResourceKind, v: i64| match k {
            drover_core::model::ResourceKind::Cpu => v as f64 / 1000.0,
            _ => v as f64,
        };
        for q in &g.queues {
            for (kind, r) in [
                ("allocated", &q.allocated),
                ("guaranteed", &q.guaranteed),
                ("fair_share", &q.fair_share),
            ]
            .into_iter()
            .chain(q.max.as_ref().map(|mx| ("max", mx)))
            {
                for (k, v) in r.iter() {
                    m.queue_resources
                        .with_label_values(&[&q.name, k.name(), kind])
                        .set(units(&k, v));
                }
            }
        }
        m.wasted_memory_bytes.set(g.wasted_memory);
        m.wasted_cost.set(g.wasted_cost);
        m.gpus_free
            .with_label_values(&["whole_node"])
            .set(g.gpus_free_whole);
        m.gpus_free
            .with_label_values(&["partly_used_node"])
            .set(g.gpus_free_partly);
        m.snapshot_age_seconds
            .set(self.published_at.elapsed().as_secs_f64());
    }
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
    anyhow::ensure!(
        !opts.scheduler_names.is_empty(),
        "no scheduler name: drover would take no pod (RunOptions::new names one)"
    );
    if let Some(addr) = opts.metrics_addr {
        let at = serve::spawn(addr, shared.clone(), shutdown.clone()).await?;
        let _ = shared.served_at.set(at);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = shared.asks.set(tx.clone());
    let lease = match opts.leader_election.clone() {
        None => {
            let _ = tx.send(Input::Leader(true));
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
    spawn_watches(&client, &tx, &shutdown);
    let status = StatusWriter::new(
        client.clone(),
        &opts.scheduler_names[0],
        &opts.identity,
        shared.metrics.status_writes_dropped.clone(),
    );
    let binds = Arc::new(Semaphore::new(opts.config.bind_concurrency));
    tracing::info!(scheduler_names = %opts.scheduler_names.join(","), identity = %opts.identity, "drover starting");
    let mut d = Driver {
        client,
        engine: Engine::new(Options {
            scheduler_names: opts
                .scheduler_names
                .iter()
                .map(|n| n.as_str().into())
                .collect(),
            ..Options::scheduler(opts.config.clone(), &opts.scheduler_names[0])
        }),
        shared,
        sink: StatusSink::spawn(status.clone()),
        status,
        tx,
        binds,
        identity: opts.identity.clone(),
        published_at: Instant::now(),
        next_gauges: 0,
    };
    // The loop runs on a thread of a scoring pool of its own, so that each decision
    // starts at once on that thread (see `drover_core::pool`).
    let pool = drover_core::pool::build("drover-scoring")?;
    let stop = shutdown.clone();
    let (mut d, mut rx) = on_pool(&pool, async move {
        schedule_until_stopped(&mut d, &mut rx, &stop).await;
        (d, rx)
    })
    .await;
    // Binds already sent to the API server finish and are accounted for, so that a
    // restarted instance sees them bound and the metrics count each bind once.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BIND_WAIT;
    while d.engine.binds_in_flight() > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m @ Input::Bound { .. })) => {
                let now = now_ms();
                d.handle(m, now);
                while let Some(a) = d.engine.poll_action() {
                    d.execute(a);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                tracing::warn!(
                    in_flight = d.engine.binds_in_flight(),
                    "stopping with binds still unanswered"
                );
                break;
            }
        }
    }
    let stats = d.engine.take_stats();
    d.count(stats);
    // Events of the last binds (and other writes under way) go out before drover stops.
    d.status.flush(SHUTDOWN_BIND_WAIT).await;
    if let Some(task) = lease {
        // The lease task releases the Lease on shutdown so a follower takes over at once.
        let _ = tokio::time::timeout(SHUTDOWN_BIND_WAIT, task).await;
    }
    d.shared.leader.store(false, Ordering::SeqCst);
    tracing::info!("drover stopped");
    Ok(())
}

/// Takes in what arrives and lets the engine decide, until `shutdown`.
async fn schedule_until_stopped(
    d: &mut Driver,
    rx: &mut mpsc::UnboundedReceiver<Input>,
    shutdown: &CancellationToken,
) {
    let mut announced = false;
    while !shutdown.is_cancelled() {
        // Take in everything that has arrived, then let the engine decide.
        let now = now_ms();
        let mut drained = 0;
        while let Ok(input) = rx.try_recv() {
            d.handle(input, now);
            drained += 1;
            if drained >= 10_000 {
                break;
            }
        }
        let busy = d.step(now);
        if !announced && d.engine.synced() {
            announced = true;
            tracing::info!(
                nodes = d.engine.snapshot().node_count(),
                "caches synced; scheduling"
            );
        }
        if busy || drained >= 10_000 {
            // Let bind tasks and watchers run between decisions.
            tokio::task::yield_now().await;
            continue;
        }
        let wake = d
            .engine
            .poll_timeout()
            .map_or(1_000, |t| (t - now).clamp(1, 1_000));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            input = rx.recv() => match input {
                Some(i) => d.handle(i, now_ms()),
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
    tx: mpsc::UnboundedSender<Input>,
    shutdown: CancellationToken,
) {
    let params = super::lease::Params {
        namespace: le.namespace,
        name: le.name,
        identity,
        duration: Duration::from_secs(le.duration_seconds),
    };
    let changed = move |leading| tx.send(Input::Leader(leading)).is_ok();
    super::lease::run(client, params, changed, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::scheduler_names;

    #[test]
    fn scheduler_names_are_a_comma_separated_list_of_valid_names() {
        assert_eq!(
            scheduler_names("drover, scheduler-plugins-scheduler,drover").unwrap(),
            ["drover", "scheduler-plugins-scheduler"]
        );
        assert_eq!(scheduler_names("drover").unwrap(), ["drover"]);
        for (bad, says) in [
            ("", "an empty name"),
            ("drover,", "an empty name"),
            ("Drover", "not a valid scheduler name"),
            ("drover_x", "not a valid scheduler name"),
            ("-drover", "not a valid scheduler name"),
        ] {
            let err = scheduler_names(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains("--scheduler-name"), "{bad:?}: {err}");
        }
    }
}
