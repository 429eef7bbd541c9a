//! Scheduling throughput, side by side, on a real control plane (etcd, kube-apiserver and
//! kwok from `drover-testenv`): drover, the real kube-scheduler at the same client QPS
//! and at its defaults, and a trivial binder that makes no decision at all (the ceiling
//! the API server allows here), without and with a `Scheduled` Event per pod.
//!
//! Each contender gets a fresh control plane: N kwok nodes are created, the contender is
//! started, then M small pending pods are created by several concurrent creators, and
//! the clock runs from the first pod created to the last pod bound (seen by a watch on
//! pods with a `spec.nodeName`). With `--backlog` the pods are created first and the
//! clock runs from the contender's first bind to its last.
//!
//! ```sh
//! cargo run --release -p drover-bench --bin throughput -- --nodes 200 --pods 2000
//! ```
//!
//! See docs/performance.md for what the numbers mean and how they were measured.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use drover::k8s::{RunOptions, Shared};
use drover_testenv::{ControlPlane, FakeNode, ProcessGuard, TestPod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The namespace the pods go to.
const NAMESPACE: &str = "default";
/// The scheduler name of the trivial binder's pods.
const CEILING_SCHEDULER: &str = "bench-ceiling";
/// kube-scheduler's client QPS and burst when its configuration sets none.
const KUBE_SCHEDULER_DEFAULT_QPS: (f64, u32) = (50.0, 100);
/// The CPU report's keys for the whole machine and for processes the harness did not
/// start (on a shared machine: someone else's work).
const MACHINE: &str = "machine (all cpus)";
const OTHER: &str = "other processes";
/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ) on every
/// mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Scheduling throughput of drover, kube-scheduler and a no-decision binder, each on a
/// fresh control plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "throughput")]
struct Args {
    /// kwok nodes per contender (8/16/32 cpu, 32/64/128Gi, 110 pods, in turn).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pending pods per contender (cpu 100m, memory 128Mi each).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Run only this contender (repeat for several). Without it, every contender but
    /// `drover-defaults` runs.
    #[arg(long, value_enum)]
    only: Vec<Contender>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Client QPS given to both drover and kube-scheduler for the "equal QPS" runs
    /// (kube-scheduler's `clientConnection.qps`; for drover, a client-side token bucket
    /// like client-go's, since kube-rs has none).
    #[arg(long, default_value_t = 5000.0)]
    qps: f64,
    /// Client burst that goes with `--qps`.
    #[arg(long, default_value_t = 5000)]
    burst: u32,
    /// Pod creations in flight at once.
    #[arg(long, default_value_t = 32)]
    creators: usize,
    /// Binds in flight at once in the trivial binder.
    #[arg(long, default_value_t = 64)]
    ceiling_binds: usize,
    /// kwok's node Lease duration in seconds; 0 keeps no Leases (kwok renews each Lease
    /// every quarter of it: 1000 nodes at kubelet's 40 s would be 100 writes a second
    /// competing with the scheduler; no scheduler here reads Leases).
    #[arg(long, default_value_t = 0)]
    node_lease_seconds: u32,
    /// Create every pod before the contender starts, and time from its first bind to
    /// its last: the rate at which it drains a backlog, without the pod creators
    /// competing for the API server.
    #[arg(long)]
    backlog: bool,
    /// Run every contender this many times (in interleaved rounds); the ratios use each
    /// contender's median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_seconds: u64,
    /// Give up on a contender when no pod was bound for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
    /// Give up on a contender after this many seconds of measurement.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
}

/// Who schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Contender {
    /// drover in this process, its client limited to `--qps`/`--burst`.
    Drover,
    /// The real kube-scheduler with `clientConnection.qps`/`burst` = `--qps`/`--burst`.
    KubeScheduler,
    /// The real kube-scheduler with its default client QPS 50, burst 100.
    KubeSchedulerDefaults,
    /// A watch-and-bind loop that binds pods round-robin without any decision.
    Ceiling,
    /// The same loop writing a `Scheduled` Event for each pod it binds, as drover and
    /// kube-scheduler do: the ceiling for a scheduler that reports its decisions.
    CeilingEvents,
    /// drover with its client limited to kube-scheduler's defaults (QPS 50, burst 100);
    /// only with `--only`.
    DroverDefaults,
    /// kube-scheduler (at `--qps`/`--burst`) calling drover-extender with
    /// `nodeCacheCapable: true`, the shipped configuration otherwise; only with `--only`.
    Extender,
    /// The same with `nodeCacheCapable: false`: every call carries the Node objects.
    ExtenderWhole,
}

impl Contender {
    const DEFAULT_SET: [Contender; 5] = [
        Contender::Drover,
        Contender::KubeScheduler,
        Contender::KubeSchedulerDefaults,
        Contender::Ceiling,
        Contender::CeilingEvents,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Drover => "drover",
            Contender::KubeScheduler => "kube-scheduler",
            Contender::KubeSchedulerDefaults => "kube-scheduler-defaults",
            Contender::Ceiling => "ceiling",
            Contender::CeilingEvents => "ceiling-events",
            Contender::DroverDefaults => "drover-defaults",
            Contender::Extender => "extender",
            Contender::ExtenderWhole => "extender-whole",
        }
    }

    fn scheduler_name(self) -> &'static str {
        match self {
            Contender::Drover | Contender::DroverDefaults => "drover",
            Contender::KubeScheduler
            | Contender::KubeSchedulerDefaults
            | Contender::Extender
            | Contender::ExtenderWhole => "default-scheduler",
            Contender::Ceiling | Contender::CeilingEvents => CEILING_SCHEDULER,
        }
    }

    /// The client (QPS, burst) this contender runs with; `None`: unlimited.
    fn client_limit(self, args: &Args) -> Option<(f64, u32)> {
        match self {
            Contender::Drover
            | Contender::KubeScheduler
            | Contender::Extender
            | Contender::ExtenderWhole => Some((args.qps, args.burst)),
            Contender::KubeSchedulerDefaults | Contender::DroverDefaults => {
                Some(KUBE_SCHEDULER_DEFAULT_QPS)
            }
            Contender::Ceiling | Contender::CeilingEvents => None,
        }
    }
}

/// What one contender achieved.
#[derive(Debug, Clone, Serialize)]
struct RunResult {
    contender: Contender,
    /// Which round of `--repeat` (from 1).
    round: usize,
    scheduler_name: &'static str,
    /// `concurrent` (pods created while the contender runs; clock from the first pod
    /// created) or `backlog` (pods created first; clock from the first bind).
    mode: &'static str,
    /// Client (QPS, burst); `None`: no client-side limit.
    client_qps: Option<f64>,
    client_burst: Option<u32>,
    nodes: usize,
    pods: usize,
    /// Pods seen bound when the measurement ended.
    bound: usize,
    /// All pods were bound.
    complete: bool,
    /// From the first pod created (backlog: the first pod bound) to the last pod bound
    /// (or to the give-up).
    seconds: f64,
    pods_per_second: f64,
    /// From the first pod created to the last pod created.
    create_seconds: f64,
    /// Pod creations per second (the feed rate; a scheduler cannot beat it).
    create_per_second: f64,
    /// From the first pod created (backlog: the contender's start) to the first pod bound.
    first_bound_seconds: f64,
    /// CPU seconds used during the measurement, by component.
    cpu_seconds: BTreeMap<String, f64>,
    /// CPU milliseconds per pod bound, of everything but other processes (the control
    /// plane, the contender, the harness): what a pod costs on a machine whose CPUs
    /// are the limit, whoever else runs on it.
    cpu_ms_per_pod: f64,
    /// Seconds to start the control plane, to create the nodes, to start the contender.
    setup_seconds: BTreeMap<String, f64>,
    /// Contender-specific counters (drover's metrics, the binder's errors).
    notes: BTreeMap<String, String>,
}

/// The whole run, as written by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    nodes: usize,
    pods: usize,
    repeat: usize,
    qps: f64,
    burst: u32,
    creators: usize,
    ceiling_binds: usize,
    node_lease_seconds: u32,
    cpus: usize,
    results: Vec<RunResult>,
    ratios: BTreeMap<String, f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes == 0 || args.pods == 0 || args.repeat == 0 {
        bail!("--nodes, --pods and --repeat must be at least 1");
    }
    if args.qps <= 0.0 || args.burst == 0 {
        bail!("--qps and --burst must be positive (kube-scheduler's defaults are 50 and 100)");
    }
    let _ = tracing_subscriber::fmt()
        // kube-client logs every failed request at ERROR (among them the harness's
        // readiness probes of a starting apiserver) and warns of every probe of a
        // self-signed component; the harness reports real failures itself.
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench")
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let contenders: Vec<Contender> = if args.only.is_empty() {
        Contender::DEFAULT_SET.to_vec()
    } else {
        let mut v = args.only.clone();
        v.dedup();
        v
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "throughput ({}): {} nodes, {} pods, contenders {}; equal-QPS client {}/{}; {} cpus",
        if args.backlog {
            "backlog: pods created first, clock from first bind to last"
        } else {
            "concurrent: pods created while scheduling, clock from first created to last bound"
        },
        args.nodes,
        args.pods,
        contenders
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.qps,
        args.burst,
        cpus
    );
    let mut results = Vec::new();
    // Rounds interleave the contenders, so that a noisy neighbour on a shared machine
    // hits them all alike.
    for round in 1..=args.repeat {
        for &c in &contenders {
            match run_one(c, &args).await {
                Ok(mut r) => {
                    r.round = round;
                    println!(
                        "[{}] {} of {} pods bound in {:.2} s: {:.1} pods/s",
                        c.name(),
                        r.bound,
                        r.pods,
                        r.seconds,
                        r.pods_per_second
                    );
                    results.push(r);
                }
                Err(e) => eprintln!("[{}] failed: {e:#}", c.name()),
            }
        }
    }
    let ratios = ratios(&results);
    print_table(&results, &ratios);
    if let Some(path) = &args.json {
        let report = Report {
            mode: if args.backlog {
                "backlog"
            } else {
                "concurrent"
            },
            nodes: args.nodes,
            pods: args.pods,
            repeat: args.repeat,
            qps: args.qps,
            burst: args.burst,
            creators: args.creators,
            ceiling_binds: args.ceiling_binds,
            node_lease_seconds: args.node_lease_seconds,
            cpus,
            results,
            ratios,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The nodes: 8/16/32 cpu with 32/64/128Gi in turn, 110 pods each.
fn nodes(n: usize) -> Vec<k8s_openapi::api::core::v1::Node> {
    const SHAPES: [(&str, &str); 3] = [("8", "32Gi"), ("16", "64Gi"), ("32", "128Gi")];
    (0..n)
        .map(|i| {
            let (cpu, mem) = SHAPES[i % SHAPES.len()];
            FakeNode::new(format!("node-{i:05}"))
                .cpu(cpu)
                .memory(mem)
                .pods(110)
                .build()
        })
        .collect()
}

fn pod_name(i: usize) -> String {
    format!("p-{i:06}")
}

/// A running contender; dropping it stops it.
enum Running {
    Drover(DroverHandle),
    KubeScheduler(ProcessGuard),
    Ceiling(CeilingHandle),
    /// kube-scheduler, and drover-extender on a runtime of its own.
    Extender(ProcessGuard, ExtenderHandle),
}

impl Running {
    /// The kube-scheduler process, when the contender runs one.
    fn kube_scheduler(&self) -> Option<&ProcessGuard> {
        match self {
            Running::KubeScheduler(p) | Running::Extender(p, _) => Some(p),
            _ => None,
        }
    }
}

/// drover-extender on a runtime of its own, as if it were its own process.
struct ExtenderHandle {
    shutdown: CancellationToken,
    addr: std::net::SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl ExtenderHandle {
    async fn start(config: kube::Config) -> anyhow::Result<ExtenderHandle> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("extender-rt")
            .enable_all()
            .build()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let running = rt
            .spawn(async move {
                let client = Client::try_from(config)?;
                let mut opts = drover_extender::Options::default();
                opts.server.listen = "127.0.0.1:0".parse()?;
                let running = drover_extender::start(client, opts, stop).await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !running.extender.ready() {
                    if Instant::now() > deadline {
                        bail!("drover-extender did not list the cluster within 120 s");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok::<_, anyhow::Error>(running.addr)
            })
            .await??;
        Ok(ExtenderHandle {
            shutdown,
            addr: running,
            rt: Some(rt),
        })
    }
}

impl Drop for ExtenderHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// kube-scheduler's configuration calling drover-extender at `addr` as the shipped
/// example does, but over plain HTTP.
fn extender_scheduler_config(
    limit: (f64, u32),
    addr: std::net::SocketAddr,
    node_cache_capable: bool,
) -> anyhow::Result<String> {
    let path = drover_testenv::repo_root().join("manifests/extender/kube-scheduler-config.yaml");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?;
    if let Some(m) = config.as_mapping_mut() {
        m.remove("clientConnection");
    }
    config["clientConnection"] =
        serde_yaml_ng::from_str(&format!("{{qps: {}, burst: {}}}", limit.0, limit.1))?;
    let ext = &mut config["extenders"][0];
    ext["urlPrefix"] = format!("http://{addr}").into();
    ext["nodeCacheCapable"] = node_cache_capable.into();
    ext["enableHTTPS"] = false.into();
    if let Some(m) = ext.as_mapping_mut() {
        m.remove("tlsConfig");
    }
    Ok(serde_yaml_ng::to_string(&config)?)
}

/// drover on a runtime of its own (as if it were its own process), so that its
/// decisions never wait behind the harness's pod creators.
struct DroverHandle {
    shutdown: CancellationToken,
    shared: Shared,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl DroverHandle {
    async fn start(
        config: kube::Config,
        limit: Option<(f64, u32)>,
    ) -> anyhow::Result<DroverHandle> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("drover-rt")
            .enable_all()
            .build()?;
        // Built on drover's runtime, so that its connections (TLS, HTTP) run there too.
        let client = rt
            .spawn(async move { client_with_limit(config, limit) })
            .await??;
        let shutdown = CancellationToken::new();
        let shared = Shared::new();
        let handle = rt.spawn(drover::k8s::run_with(
            client,
            RunOptions::new("drover"),
            shared.clone(),
            shutdown.clone(),
        ));
        let d = DroverHandle {
            shutdown,
            shared,
            handle,
            rt: Some(rt),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !d.shared.synced.load(Ordering::SeqCst) {
            if d.handle.is_finished() {
                bail!("drover ended before its caches synced");
            }
            if Instant::now() > deadline {
                bail!("drover's caches did not sync within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(d)
    }

    /// drover's own counts, read after it stopped (so that every bind has answered).
    fn notes(shared: &Shared) -> BTreeMap<String, String> {
        let m = &shared.metrics;
        let mut out = BTreeMap::new();
        let n = m.decision_seconds.get_sample_count();
        out.insert("decisions".into(), n.to_string());
        if n > 0 {
            out.insert(
                "decision_mean_us".into(),
                format!(
                    "{:.1}",
                    m.decision_seconds.get_sample_sum() / n as f64 * 1e6
                ),
            );
        }
        for outcome in ["scheduled", "unschedulable", "error"] {
            out.insert(
                format!("attempts_{outcome}"),
                m.attempts.with_label_values(&[outcome]).get().to_string(),
            );
        }
        for kind in ["conflict", "other"] {
            out.insert(
                format!("bind_errors_{kind}"),
                m.bind_errors.with_label_values(&[kind]).get().to_string(),
            );
        }
        out
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), &mut self.handle).await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        match r {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("drover did not stop within 15 s"),
        }
    }
}

impl Drop for DroverHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The trivial binder: a watch on this scheduler's unbound pods feeding binds, many in
/// flight, to nodes in turn; optionally a `Scheduled` Event for each pod bound.
struct CeilingHandle {
    shutdown: CancellationToken,
    errors: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
    binds: Arc<AtomicU64>,
    /// Events written and failed, when it writes them.
    events: Option<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

impl CeilingHandle {
    async fn start(
        client: Client,
        node_names: Vec<String>,
        in_flight: usize,
        with_events: bool,
    ) -> anyhow::Result<CeilingHandle> {
        let shutdown = CancellationToken::new();
        let errors = Arc::new(AtomicU64::new(0));
        let conflicts = Arc::new(AtomicU64::new(0));
        let binds = Arc::new(AtomicU64::new(0));
        let events =
            with_events.then(|| (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))));
        // drover's own Event recorder, so that the Events are the ones drover writes.
        let recorder = with_events.then(|| {
            Arc::new(drover::k8s::events::EventRecorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: CEILING_SCHEDULER.into(),
                    instance: None,
                },
            ))
        });
        let (tx, rx) = futures::channel::mpsc::unbounded::<(String, String)>();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();

        // Watch: every unbound pod of ours, once.
        let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let cfg = watcher::Config::default().fields(&format!(
            "spec.schedulerName={CEILING_SCHEDULER},spec.nodeName="
        ));
        let stop = shutdown.clone();
        let retry_tx = tx.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut synced_tx = Some(synced_tx);
            let mut stream = watcher(api, cfg).default_backoff().boxed();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = stream.next() => ev,
                };
                match ev {
                    Some(Ok(Event::InitApply(p) | Event::Apply(p))) => {
                        let unbound = p.spec.as_ref().is_some_and(|s| s.node_name.is_none());
                        if let (true, Some(name), Some(uid)) =
                            (unbound, p.metadata.name, p.metadata.uid)
                            && seen.insert(name.clone())
                            && tx.unbounded_send((name, uid)).is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(Event::InitDone)) => {
                        if let Some(s) = synced_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => eprintln!("[ceiling] watch error (retrying): {e}"),
                    None => return,
                }
            }
        });

        // Bind: `in_flight` at once, nodes in turn, no decision.
        let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let next = Arc::new(AtomicUsize::new(0));
        let nodes = Arc::new(node_names);
        let (e, c, b, stop) = (
            errors.clone(),
            conflicts.clone(),
            binds.clone(),
            shutdown.clone(),
        );
        let counted = events.clone();
        tokio::spawn(async move {
            let work = rx
                .map(|(name, uid)| {
                    let api = api.clone();
                    let node = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()].clone();
                    async move {
                        let r = bind(&api, &name, &uid, &node).await;
                        (name, uid, node, r)
                    }
                })
                .buffer_unordered(in_flight)
                .for_each(|(name, uid, node, r)| {
                    match r {
                        Ok(()) => {
                            b.fetch_add(1, Ordering::Relaxed);
                            if let (Some(rec), Some((written, failed))) = (&recorder, &counted) {
                                // In a task of its own, as drover writes its Events.
                                let (rec, written, failed) =
                                    (rec.clone(), written.clone(), failed.clone());
                                tokio::spawn(async move {
                                    match scheduled_event(&rec, &name, &uid, &node).await {
                                        Ok(()) => written.fetch_add(1, Ordering::Relaxed),
                                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                                    };
                                });
                            }
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            if e.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("[ceiling] bind {name} failed (retrying): {err}");
                            }
                            let _ = retry_tx.unbounded_send((name, uid));
                        }
                    }
                    futures::future::ready(())
                });
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
        });

        tokio::time::timeout(Duration::from_secs(60), synced_rx)
            .await
            .context("the trivial binder's watch did not list within 60 s")?
            .context("the trivial binder's watch ended")?;
        Ok(CeilingHandle {
            shutdown,
            errors,
            conflicts,
            binds,
            events,
        })
    }

    fn notes(&self) -> BTreeMap<String, String> {
        let mut counts = vec![
            ("binds", &self.binds),
            ("bind_conflicts", &self.conflicts),
            ("bind_errors", &self.errors),
        ];
        if let Some((written, failed)) = &self.events {
            counts.push(("events", written));
            counts.push(("event_errors", failed));
        }
        counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed).to_string()))
            .collect()
    }
}

/// The Event drover writes for a pod it bound.
async fn scheduled_event(
    recorder: &drover::k8s::events::EventRecorder,
    name: &str,
    uid: &str,
    node: &str,
) -> Result<(), kube::Error> {
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(NAMESPACE.into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..Default::default()
    };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "Scheduled".into(),
        note: Some(format!(
            "Successfully assigned {NAMESPACE}/{name} to {node}"
        )),
        action: "Scheduling".into(),
        secondary: None,
    };
    recorder.publish(&event, &pod).await
}

impl Drop for CeilingHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// POST pods/{name}/binding, with the pod's UID, as a scheduler does.
async fn bind(api: &Api<Pod>, name: &str, uid: &str, node: &str) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            uid: Some(uid.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    api.create_subresource::<_, kube::core::Status>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

/// kube-scheduler's configuration for a client limit, or `None` for its defaults.
fn kube_scheduler_config(limit: (f64, u32)) -> Option<String> {
    (limit != KUBE_SCHEDULER_DEFAULT_QPS).then(|| {
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  qps: {}\n  burst: {}\n",
            limit.0, limit.1
        )
    })
}

/// What the bound-pod watch has seen.
#[derive(Default)]
struct BoundState {
    bound: AtomicUsize,
    first_bound: OnceLock<Instant>,
    last_bound: Mutex<Option<Instant>>,
}

/// Watches pods that have a node and counts them; returns once the watch has listed.
async fn watch_bound(
    client: Client,
    want: usize,
    stop: CancellationToken,
) -> anyhow::Result<Arc<BoundState>> {
    let state = Arc::new(BoundState::default());
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let cfg = watcher::Config::default().fields("spec.nodeName!=");
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let st = state.clone();
    tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::with_capacity(want);
        let mut synced_tx = Some(synced_tx);
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                Some(Ok(Event::InitApply(p) | Event::Apply(p))) => {
                    let bound = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                    if let (true, Some(name)) = (bound, p.metadata.name)
                        && seen.insert(name)
                    {
                        let now = Instant::now();
                        let _ = st.first_bound.set(now);
                        *st.last_bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                        st.bound.store(seen.len(), Ordering::SeqCst);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    if let Some(s) = synced_tx.take() {
                        let _ = s.send(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("bound-pod watch error (retrying): {e}"),
                None => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), synced_rx)
        .await
        .context("the bound-pod watch did not list within 60 s")?
        .context("the bound-pod watch ended")?;
    Ok(state)
}

/// Creation progress shared with the progress loop.
#[derive(Default)]
struct CreateState {
    created: AtomicUsize,
    first_created: OnceLock<Instant>,
    last_created: Mutex<Option<Instant>>,
    failed: AtomicBool,
}

/// Creates the pods, `concurrency` requests in flight, retrying transient errors.
async fn create_pods(
    client: Client,
    scheduler: &'static str,
    pods: usize,
    concurrency: usize,
    state: Arc<CreateState>,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let res = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            let state = state.clone();
            async move {
                let pod = TestPod::new(pod_name(i))
                    .scheduler(scheduler)
                    .cpu("100m")
                    .memory("128Mi")
                    .label("app", "throughput")
                    .build();
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 => break,
                        Err(e) if attempt < 5 => {
                            eprintln!("creating {} failed (retrying): {e}", pod_name(i));
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("creating pod {}", pod_name(i)));
                        }
                    }
                }
                let now = Instant::now();
                let _ = state.first_created.set(now);
                *state.last_created.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                state.created.fetch_add(1, Ordering::SeqCst);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await;
    if res.is_err() {
        state.failed.store(true, Ordering::SeqCst);
    }
    res.map(|_| ())
}

/// CPU time (ticks) of the processes that matter, of this process's threads by role,
/// and of the whole machine.
#[derive(Debug, Clone, Default)]
struct CpuSample {
    procs: BTreeMap<String, u64>,
    machine_busy: u64,
}

fn proc_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn thread_name(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

fn sample_cpu(pids: &[(String, u32)]) -> CpuSample {
    let mut procs = BTreeMap::new();
    for (name, pid) in pids {
        if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| proc_ticks(&s))
        {
            procs.insert(name.clone(), t);
        }
    }
    // This process: drover's threads apart from the rest: its scoring pool (named by
    // `run_with`; one of its threads runs the scheduling loop) and its runtime.
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (Some(name), Some(t)) = (thread_name(&stat), proc_ticks(&stat)) else {
                continue;
            };
            let role = if name.starts_with("drover-scoring") {
                "drover loop and scoring pool"
            } else if name.starts_with("drover-") {
                "drover runtime"
            } else {
                "bench harness"
            };
            *procs.entry(role.to_string()).or_default() += t;
        }
    }
    let machine_busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
        })
        .unwrap_or(0);
    CpuSample {
        procs,
        machine_busy,
    }
}

fn cpu_delta(a: &CpuSample, b: &CpuSample) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut known = 0;
    for (name, t1) in &b.procs {
        let d = t1.saturating_sub(a.procs.get(name).copied().unwrap_or(0));
        known += d;
        out.insert(name.clone(), d as f64 / TICKS_PER_SECOND);
    }
    let busy = b.machine_busy.saturating_sub(a.machine_busy);
    out.insert(MACHINE.into(), busy as f64 / TICKS_PER_SECOND);
    out.insert(
        OTHER.into(),
        busy.saturating_sub(known) as f64 / TICKS_PER_SECOND,
    );
    out
}

/// A client limited to `qps` requests a second with bursts of `burst`, like client-go's
/// token bucket; `None`: no limit. Build it on the runtime that is to drive its
/// connections.
fn client_with_limit(config: kube::Config, limit: Option<(f64, u32)>) -> anyhow::Result<Client> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(match limit {
        None => builder.build(),
        Some((qps, burst)) => builder.with_layer(&RateLimit { qps, burst }).build(),
    })
}

/// Starts contender `c` against `cp` and waits until it is ready to schedule.
async fn start_contender(
    c: Contender,
    cp: &ControlPlane,
    args: &Args,
    node_names: Vec<String>,
) -> anyhow::Result<Running> {
    let limit = c.client_limit(args);
    Ok(match c {
        Contender::Drover | Contender::DroverDefaults => {
            Running::Drover(DroverHandle::start(cp.client_config(), limit).await?)
        }
        Contender::KubeScheduler | Contender::KubeSchedulerDefaults => {
            let cfg = kube_scheduler_config(limit.expect("kube-scheduler always has a limit"));
            Running::KubeScheduler(cp.start_kube_scheduler(cfg.as_deref()).await?)
        }
        Contender::Extender | Contender::ExtenderWhole => {
            let ext = ExtenderHandle::start(cp.client_config()).await?;
            let cfg = extender_scheduler_config(
                limit.expect("kube-scheduler always has a limit"),
                ext.addr,
                c == Contender::Extender,
            )?;
            Running::Extender(cp.start_kube_scheduler(Some(&cfg)).await?, ext)
        }
        Contender::Ceiling | Contender::CeilingEvents => Running::Ceiling(
            CeilingHandle::start(
                cp.client(),
                node_names,
                args.ceiling_binds,
                c == Contender::CeilingEvents,
            )
            .await?,
        ),
    })
}

async fn run_one(c: Contender, args: &Args) -> anyhow::Result<RunResult> {
    let name = c.name();
    let mut setup = BTreeMap::new();
    let t = Instant::now();
    let cp = ControlPlane::builder()
        .node_lease_seconds(args.node_lease_seconds)
        .start()
        .await
        .context("starting the control plane")?;
    setup.insert("control_plane".into(), t.elapsed().as_secs_f64());
    println!(
        "[{name}] control plane up in {:.1} s; creating {} nodes",
        t.elapsed().as_secs_f64(),
        args.nodes
    );

    let t = Instant::now();
    let node_objs = nodes(args.nodes);
    let node_names: Vec<String> = node_objs
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    cp.create_nodes(&node_objs)
        .await
        .context("creating nodes")?;
    setup.insert("nodes".into(), t.elapsed().as_secs_f64());
    println!(
        "[{name}] {} nodes Ready in {:.1} s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let bound = watch_bound(cp.client(), args.pods, stop.clone()).await?;
    let created = Arc::new(CreateState::default());
    let create = |created: Arc<CreateState>| {
        create_pods(
            cp.client(),
            c.scheduler_name(),
            args.pods,
            args.creators,
            created,
        )
    };

    // Concurrent: start the contender, then create pods while it schedules; the clock
    // runs from the first pod created. Backlog: create every pod first, then start the
    // contender; the clock runs from its first bind.
    let (running, clock_start, cpu0, creating) = if args.backlog {
        println!("[{name}] creating {} pods before {name} starts", args.pods);
        let t = Instant::now();
        create(created.clone()).await?;
        setup.insert("backlog".into(), t.elapsed().as_secs_f64());
        println!(
            "[{name}] {} pods pending after {:.1} s; starting {name}",
            args.pods,
            t.elapsed().as_secs_f64()
        );
        let cpu0 = sample_cpu(&cp.pids());
        let t = Instant::now();
        let running = start_contender(c, &cp, args, node_names).await?;
        setup.insert("contender".into(), t.elapsed().as_secs_f64());
        (running, t, cpu0, None)
    } else {
        println!("[{name}] starting {name}");
        let t = Instant::now();
        let running = start_contender(c, &cp, args, node_names).await?;
        setup.insert("contender".into(), t.elapsed().as_secs_f64());
        println!(
            "[{name}] ready in {:.1} s; creating {} pods ({} in flight)",
            t.elapsed().as_secs_f64(),
            args.pods,
            args.creators
        );
        let mut pids = cp.pids();
        if let Some(p) = running.kube_scheduler() {
            pids.push(("kube-scheduler".into(), p.pid()));
        }
        let cpu0 = sample_cpu(&pids);
        let creating = tokio::spawn(create(created.clone()));
        (running, Instant::now(), cpu0, Some(creating))
    };
    let mut pids = cp.pids();
    if let Some(p) = running.kube_scheduler() {
        pids.push(("kube-scheduler".into(), p.pid()));
    }

    let tick = Duration::from_millis(50);
    let (mut last_print, mut last_bound, mut last_progress) =
        (clock_start, bound.bound.load(Ordering::SeqCst), clock_start);
    // drover's decisions so far (count, seconds), for the mean per progress line.
    let decisions = |r: &Running| match r {
        Running::Drover(d) => Some((
            d.shared.metrics.decision_seconds.get_sample_count(),
            d.shared.metrics.decision_seconds.get_sample_sum(),
        )),
        _ => None,
    };
    let mut last_decisions = decisions(&running);
    let complete = loop {
        tokio::time::sleep(tick).await;
        let b = bound.bound.load(Ordering::SeqCst);
        if b >= args.pods {
            break true;
        }
        if created.failed.load(Ordering::SeqCst) {
            break false;
        }
        let now = Instant::now();
        if b > last_bound {
            last_progress = now;
        }
        if now.duration_since(last_print) >= Duration::from_secs(args.progress_seconds) {
            let dt = now.duration_since(last_print).as_secs_f64();
            let d = decisions(&running);
            let decided = match (last_decisions, d) {
                (Some((n0, s0)), Some((n1, s1))) if n1 > n0 => format!(
                    "; drover decided {} pods, {:.0} µs each",
                    n1 - n0,
                    (s1 - s0) / (n1 - n0) as f64 * 1e6
                ),
                _ => String::new(),
            };
            last_decisions = d;
            println!(
                "[{name}] {:6.1} s  created {:>6}/{}  bound {:>6}/{}  ({:.0} pods/s over the last {:.0} s{decided})",
                now.duration_since(clock_start).as_secs_f64(),
                created.created.load(Ordering::SeqCst),
                args.pods,
                b,
                args.pods,
                (b - last_bound) as f64 / dt,
                dt
            );
            last_print = now;
            last_bound = b;
        }
        if now.duration_since(last_progress) >= Duration::from_secs(args.stall_seconds)
            && created.created.load(Ordering::SeqCst) >= args.pods
        {
            println!(
                "[{name}] no pod bound for {} s; giving up",
                args.stall_seconds
            );
            break false;
        }
        if now.duration_since(clock_start) >= Duration::from_secs(args.timeout_seconds) {
            println!(
                "[{name}] timeout after {} s; giving up",
                args.timeout_seconds
            );
            break false;
        }
        if let Some(p) = running.kube_scheduler()
            && std::fs::metadata(format!("/proc/{}", p.pid())).is_err()
        {
            bail!("kube-scheduler exited:\n{}", p.log_tail(30));
        }
        cp.ensure_running()?;
    };
    let end = Instant::now();
    let cpu1 = sample_cpu(&pids);
    if let Some(creating) = creating {
        if creating.is_finished() {
            creating.await?.context("creating pods")?;
        } else {
            creating.abort();
        }
    }

    let first_created = created.first_created.get().copied().unwrap_or(clock_start);
    let last_created = created
        .last_created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(end);
    let first_bound = bound.first_bound.get().copied();
    let last_bound_at = bound
        .last_bound
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(end);
    let n_bound = bound.bound.load(Ordering::SeqCst).min(args.pods);
    let stop_at = if complete { last_bound_at } else { end };
    let from = if args.backlog {
        first_bound.unwrap_or(clock_start)
    } else {
        first_created
    };
    let seconds = stop_at.saturating_duration_since(from).as_secs_f64();
    let create_seconds = last_created
        .saturating_duration_since(first_created)
        .as_secs_f64();
    let first_bound_seconds = first_bound.map_or(f64::NAN, |t| {
        let zero = if args.backlog {
            clock_start
        } else {
            first_created
        };
        t.saturating_duration_since(zero).as_secs_f64()
    });

    let notes = match running {
        Running::Drover(d) => {
            let shared = d.shared.clone();
            if let Err(e) = d.stop().await {
                eprintln!("[{name}] drover stopped with an error: {e:#}");
            }
            DroverHandle::notes(&shared)
        }
        Running::Ceiling(h) => h.notes(),
        Running::KubeScheduler(p) => {
            drop(p);
            BTreeMap::new()
        }
        Running::Extender(p, ext) => {
            drop(p);
            drop(ext);
            BTreeMap::new()
        }
    };
    stop.cancel();
    drop(cp);

    let limit = c.client_limit(args);
    Ok(RunResult {
        contender: c,
        round: 1,
        scheduler_name: c.scheduler_name(),
        mode: if args.backlog {
            "backlog"
        } else {
            "concurrent"
        },
        client_qps: limit.map(|l| l.0),
        client_burst: limit.map(|l| l.1),
        nodes: args.nodes,
        pods: args.pods,
        bound: n_bound,
        complete,
        seconds,
        pods_per_second: if seconds > 0.0 {
            n_bound as f64 / seconds
        } else {
            0.0
        },
        create_seconds,
        create_per_second: if create_seconds > 0.0 {
            created.created.load(Ordering::SeqCst) as f64 / create_seconds
        } else {
            0.0
        },
        first_bound_seconds,
        cpu_ms_per_pod: {
            let cpu = cpu_delta(&cpu0, &cpu1);
            let ours =
                cpu.get(MACHINE).copied().unwrap_or(0.0) - cpu.get(OTHER).copied().unwrap_or(0.0);
            ours * 1000.0 / n_bound.max(1) as f64
        },
        cpu_seconds: cpu_delta(&cpu0, &cpu1),
        setup_seconds: setup,
        notes,
    })
}

/// The median pods/s of each contender's runs.
fn medians(results: &[RunResult]) -> BTreeMap<Contender, f64> {
    let mut by: BTreeMap<Contender, Vec<f64>> = BTreeMap::new();
    for r in results {
        by.entry(r.contender).or_default().push(r.pods_per_second);
    }
    by.into_iter()
        .map(|(c, mut v)| {
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            let median = if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            };
            (c, median)
        })
        .collect()
}

fn ratios(results: &[RunResult]) -> BTreeMap<String, f64> {
    let medians = medians(results);
    let rate = |c: Contender| medians.get(&c).copied();
    let mut out = BTreeMap::new();
    if let Some(d) = rate(Contender::Drover) {
        for (key, other) in [
            (
                "drover/kube-scheduler (equal QPS)",
                Contender::KubeScheduler,
            ),
            (
                "drover/kube-scheduler (defaults)",
                Contender::KubeSchedulerDefaults,
            ),
            ("drover/ceiling", Contender::Ceiling),
            ("drover/ceiling-events", Contender::CeilingEvents),
        ] {
            if let Some(o) = rate(other).filter(|o| *o > 0.0) {
                out.insert(key.to_string(), d / o);
            }
        }
    }
    if let (Some(d), Some(k)) = (
        rate(Contender::DroverDefaults),
        rate(Contender::KubeSchedulerDefaults).filter(|k| *k > 0.0),
    ) {
        out.insert("drover-defaults/kube-scheduler (defaults)".into(), d / k);
    }
    out
}

fn limit_label(r: &RunResult) -> String {
    match (r.client_qps, r.client_burst) {
        (Some(q), Some(b)) => format!("{q}/{b}"),
        _ => "none".into(),
    }
}

fn print_table(results: &[RunResult], ratios: &BTreeMap<String, f64>) {
    println!();
    println!(
        "| contender | round | mode | client QPS/burst | pods | seconds | pods/s | pods created/s | first bind s | CPU ms/pod |"
    );
    println!("|---|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {}{} | {:.2} | {:.1} | {:.0} | {:.2} | {:.2} |",
            r.contender.name(),
            r.round,
            r.mode,
            limit_label(r),
            r.bound,
            if r.complete {
                String::new()
            } else {
                format!(" of {} (incomplete)", r.pods)
            },
            r.seconds,
            r.pods_per_second,
            r.create_per_second,
            r.first_bound_seconds,
            r.cpu_ms_per_pod
        );
    }
    if results.iter().any(|r| r.round > 1) {
        println!();
        println!("| contender | runs | median pods/s |");
        println!("|---|---:|---:|");
        for (c, m) in medians(results) {
            let n = results.iter().filter(|r| r.contender == c).count();
            println!("| {} | {n} | {m:.1} |", c.name());
        }
    }
    println!();
    println!("CPU seconds used during the measurement (1 CPU-second per second per cpu):");
    let mut keys: Vec<&String> = results.iter().flat_map(|r| r.cpu_seconds.keys()).collect();
    keys.sort();
    keys.dedup();
    print!("| contender | round |");
    for k in &keys {
        print!(" {k} |");
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(keys.len()));
    for r in results {
        print!("| {} | {} |", r.contender.name(), r.round);
        for k in &keys {
            match r.cpu_seconds.get(*k) {
                Some(v) => print!(" {v:.1} |"),
                None => print!(" |"),
            }
        }
        println!();
    }
    for r in results.iter().filter(|r| !r.notes.is_empty()) {
        let notes: Vec<String> = r.notes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{} (round {}): {}",
            r.contender.name(),
            r.round,
            notes.join(" ")
        );
    }
    if !ratios.is_empty() {
        println!();
        if results.iter().any(|r| r.round > 1) {
            println!("ratios of the medians:");
        }
        for (k, v) in ratios {
            println!("{k}: {v:.2}");
        }
    }
}

/// client-go's client-side rate limit (a token bucket: `burst` tokens, refilled at
/// `qps` a second, one per request) as a tower layer for kube-rs's client, which has
/// none of its own.
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    qps: f64,
    burst: u32,
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            qps: self.qps,
            burst: f64::from(self.burst),
            tokens: f64::from(self.burst),
            last: tokio::time::Instant::now(),
            has_token: false,
            sleep: None,
        }
    }
}

/// The service [`RateLimit`] makes. kube-rs drives its stack from one buffer worker,
/// so the bucket needs no lock.
struct RateLimited<S> {
    inner: S,
    qps: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
    has_token: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S, R> tower::Service<R> for RateLimited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.has_token {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(self.last).as_secs_f64() * self.qps;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                self.has_token = true;
            } else {
                let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
                self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.has_token = false;
        self.inner.call(req)
    }
}
