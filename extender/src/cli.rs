//! Flags (each with an environment variable), their validation, and starting the whole
//! extender: drover's cache, the watches of the index, and the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use drover::k8s::LogFormat;
use drover_core::config::Config;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::ExtenderMetrics;
use crate::server::{self, ServerOptions, TlsFiles};
use crate::verbs::Extender;

/// kube-scheduler's default `httpTimeout` for extender calls.
const KUBE_SCHEDULER_TIMEOUT: Duration = Duration::from_secs(5);

/// `drover-extender`: drover's filters, scores, gangs and queues as an HTTP extender
/// for kube-scheduler.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "drover-extender", version, about, long_about = None)]
pub struct Args {
    /// Kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, env = "DROVER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "DROVER_CONTEXT")]
    pub context: Option<String>,
    /// Address to serve the verbs, /healthz, /readyz and /metrics on.
    #[arg(long, env = "DROVER_EXTENDER_LISTEN", default_value = "0.0.0.0:8888")]
    pub listen: String,
    /// Also serve /healthz, /readyz and /metrics over plain HTTP on this address
    /// (host:port), for kubelet probes and Prometheus when --client-ca makes the main
    /// port take only kube-scheduler's certificate.
    #[arg(long, env = "DROVER_EXTENDER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Largest request body (a quantity: 64Mi). A NodeList of 5000 nodes
    /// (nodeCacheCapable: false) is several MB.
    #[arg(long, env = "DROVER_EXTENDER_BODY_LIMIT", default_value = "64Mi")]
    pub body_limit: String,
    /// Time to read and answer one call (3s, 2500ms). Keep it below kube-scheduler's
    /// httpTimeout (5s by default) so that kube-scheduler reads drover's error.
    #[arg(long, env = "DROVER_EXTENDER_TIMEOUT", default_value = "3s")]
    pub timeout: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "DROVER_EXTENDER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DROVER_EXTENDER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM bundle (mutual TLS; needs
    /// --tls-cert). kube-scheduler presents its `tlsConfig.certData`/`keyData`.
    #[arg(long, env = "DROVER_EXTENDER_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: accept only client certificates whose subject CN, or one of
    /// whose DNS names, is in this comma-separated list (e.g. kube-scheduler).
    #[arg(
        long,
        env = "DROVER_EXTENDER_ALLOWED_NAMES",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub allowed_names: Vec<String>,
    /// Serve `/bind` (kube-scheduler's bindVerb). Off, `/bind` answers 403 and the
    /// extender's ServiceAccount needs no pods/binding grant (manifests/extender-bind
    /// adds it).
    #[arg(long, env = "DROVER_EXTENDER_ENABLE_BIND")]
    pub enable_bind: bool,
    /// The schedulerName of each kube-scheduler profile that calls this extender
    /// (comma-separated): bind refuses pods that name another scheduler.
    #[arg(
        long,
        env = "DROVER_EXTENDER_SCHEDULER_NAMES",
        value_delimiter = ',',
        default_value = "default-scheduler"
    )]
    pub scheduler_names: Vec<String>,
    /// The request bodies all calls together may hold at once (a quantity: 128Mi; at
    /// least --body-limit). A call beyond it is answered 503 at once; parsing a body
    /// takes several times its size, so keep the memory limit well above this.
    #[arg(long, env = "DROVER_EXTENDER_IN_FLIGHT_LIMIT", default_value = "128Mi")]
    pub in_flight_limit: String,
    /// drover's configuration file (YAML, the same as `drover run --config`): weights,
    /// packing, exclusive namespaces, topology levels. See docs/configuration.md.
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds a gang's plan holds: all its members must come through filter within
    /// this, or the gang is decided again.
    #[arg(long, env = "DROVER_EXTENDER_GANG_PLAN_SECONDS", default_value_t = 60)]
    pub gang_plan_seconds: u64,
    /// Log format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Everything the extender needs, validated.
#[derive(Clone, Debug)]
pub struct Options {
    /// drover's configuration.
    pub config: Config,
    /// The server.
    pub server: ServerOptions,
    /// How long a gang plan holds.
    pub plan_ttl: Duration,
    /// kube-scheduler's profiles (their schedulerName) that call the extender.
    pub profiles: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::default(),
            server: ServerOptions::default(),
            plan_ttl: crate::verbs::DEFAULT_PLAN_TTL,
            profiles: vec![crate::verbs::DEFAULT_PROFILE.to_string()],
        }
    }
}

/// Parses a duration: `3s`, `2500ms`, `1.5s`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

impl Args {
    /// Validates the flags and the config file; errors name the flag.
    pub fn options(&self) -> anyhow::Result<Options> {
        let config = match &self.config {
            Some(p) => drover::k8s::load_config(p)?,
            None => Config::default(),
        };
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            anyhow::anyhow!(
                "--listen {:?}: {e}; use host:port such as 0.0.0.0:8888",
                self.listen
            )
        })?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|m| {
                m.parse::<SocketAddr>().map_err(|e| {
                    anyhow::anyhow!(
                        "--metrics-listen {m:?}: {e}; use host:port such as 0.0.0.0:8889"
                    )
                })
            })
            .transpose()?;
        if metrics_listen.is_some_and(|m| m == listen && m.port() != 0) {
            anyhow::bail!("--metrics-listen {listen} is --listen too: give it a port of its own");
        }
        let size = |flag: &str, value: &str, example: &str| {
            drover_core::quantity::parse_resource("memory", value.trim())
                .ok()
                .and_then(|b| usize::try_from(b).ok())
                .filter(|b| (1024..=u32::MAX as usize).contains(b))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{flag} {value:?}: use a size from 1Ki to 4Gi, such as {example}"
                    )
                })
        };
        let body_limit = size("--body-limit", &self.body_limit, "64Mi")?;
        let in_flight_limit = size("--in-flight-limit", &self.in_flight_limit, "128Mi")?;
        if in_flight_limit < body_limit {
            anyhow::bail!(
                "--in-flight-limit {} is below --body-limit {}: a body of the largest size could never be read; raise --in-flight-limit or lower --body-limit",
                self.in_flight_limit,
                self.body_limit
            );
        }
        let timeout = parse_duration(&self.timeout)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--timeout {:?}: use a duration such as 3s or 2500ms",
                    self.timeout
                )
            })?;
        if timeout >= KUBE_SCHEDULER_TIMEOUT {
            tracing::warn!(
                timeout = ?timeout,
                "--timeout is not below kube-scheduler's default httpTimeout (5s): raise httpTimeout in the KubeSchedulerConfiguration above it, or kube-scheduler gives up first"
            );
        }
        if self.gang_plan_seconds == 0 {
            anyhow::bail!("--gang-plan-seconds 0: a gang plan must hold for at least a second");
        }
        let profiles: Vec<String> = self
            .scheduler_names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if profiles.is_empty() {
            anyhow::bail!(
                "--scheduler-names is empty: name kube-scheduler's profiles, such as default-scheduler"
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(Options {
            config,
            server: ServerOptions {
                listen,
                body_limit,
                timeout,
                tls,
                client_auth: self.client_ca.clone().map(|ca| server::ClientAuth {
                    ca,
                    allowed_names: self
                        .allowed_names
                        .iter()
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty())
                        .collect(),
                }),
                in_flight_limit,
                metrics_listen,
                enable_bind: self.enable_bind,
            },
            plan_ttl: Duration::from_secs(self.gang_plan_seconds),
            profiles,
        })
    }
}

/// A running extender.
pub struct Running {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The extender (its engine, readiness).
    pub extender: Arc<Extender>,
    /// drover's metrics of the watches and cache, served beside the extender's.
    pub metrics: drover::metrics::Metrics,
    watches: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until it stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.watches.await.context("the task feeding the watches")?;
        let _ = self.server.await;
        Ok(())
    }
}

/// Starts the engine (extender mode: it never binds or writes on its own), the
/// watches that feed it and the server. Fails at once if the address is taken or the
/// TLS files are bad.
pub async fn start(
    client: Client,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let drover_metrics = drover::metrics::Metrics::new();
    let extender = Arc::new(
        Extender::new(opts.config.clone(), opts.plan_ttl)
            .with_profiles(opts.profiles.clone())
            .with_client(client.clone()),
    );
    let metrics = ExtenderMetrics::new(extender.gangs_planned());
    let router = server::router(
        extender.clone(),
        metrics,
        Some(drover_metrics.clone()),
        &opts.server,
    );
    let server = server::serve(router, &opts.server, shutdown.clone()).await?;
    let watches = crate::watch::spawn_watches_into(
        &client,
        extender.clone(),
        drover_metrics.clone(),
        shutdown,
    );
    Ok(Running {
        addr: server.addr,
        extender,
        metrics: drover_metrics,
        watches,
        server: server.task,
    })
}

/// `drover-extender` from its flags: connect, start, and run until Ctrl-C or SIGTERM.
pub async fn run_from_args(args: Args) -> anyhow::Result<()> {
    let opts = args.options()?;
    let client =
        drover::k8s::run::client_for(args.kubeconfig.as_ref(), args.context.as_ref()).await?;
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
    start(client, opts, shutdown).await?.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_validate_with_messages_that_name_them() {
        let ok = Args::parse_from(["drover-extender"]).options().unwrap();
        assert_eq!(ok.server.body_limit, 64 << 20);
        assert_eq!(ok.server.timeout, Duration::from_secs(3));
        assert_eq!(ok.server.listen.port(), 8888);
        let o = Args::parse_from(["x", "--timeout", "2500ms", "--body-limit", "8Mi"])
            .options()
            .unwrap();
        assert_eq!(o.server.timeout, Duration::from_millis(2500));
        assert_eq!(o.server.body_limit, 8 << 20);
        for (flag, value, fragment) in [
            ("--timeout", "soon", "--timeout"),
            ("--timeout", "0s", "--timeout"),
            ("--body-limit", "12", "--body-limit"),
            ("--listen", "8888", "--listen"),
            ("--gang-plan-seconds", "0", "--gang-plan-seconds"),
            ("--in-flight-limit", "1Mi", "--in-flight-limit"),
            ("--scheduler-names", ",", "--scheduler-names"),
            ("--metrics-listen", "8889", "--metrics-listen"),
            ("--metrics-listen", "0.0.0.0:8888", "--metrics-listen"),
            ("--in-flight-limit", "8Gi", "--in-flight-limit"),
        ] {
            let e = Args::parse_from(["x", flag, value]).options().unwrap_err();
            assert!(e.to_string().contains(fragment), "{flag} {value}: {e}");
        }
        assert!(Args::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        assert!(Args::try_parse_from(["x", "--client-ca", "ca.pem"]).is_err());
        assert!(Args::try_parse_from(["x", "--allowed-names", "kube-scheduler"]).is_err());
        let m = Args::parse_from([
            "x",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
            "--allowed-names",
            "kube-scheduler, system:kube-scheduler",
        ])
        .options()
        .unwrap();
        let auth = m.server.client_auth.unwrap();
        assert_eq!(
            auth.allowed_names,
            ["kube-scheduler", "system:kube-scheduler"]
        );
        assert!(!m.server.enable_bind && !ok.server.enable_bind);
        assert_eq!(ok.server.in_flight_limit, 128 << 20);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("NaN"), None);
    }
}
