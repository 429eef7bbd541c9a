//! etcd + kube-apiserver (+ kwok, kube-controller-manager, kube-scheduler) on loopback.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::{Binary, binary_path};
use crate::process::{ProcessGuard, free_port, port_collision};
use crate::util::ensure_namespace;

/// Admission plugins the test apiserver disables by default (see
/// [`ControlPlaneBuilder::disabled_admission_plugins`]):
///
/// - `ServiceAccount`: no controller creates the `default` ServiceAccount unless the
///   controller-manager runs, and pods would be rejected without it (envtest does the same).
///   TokenRequest for ServiceAccounts you create still works.
/// - `TaintNodesByCondition`: it taints every new node `node.kubernetes.io/not-ready`,
///   and only the controller-manager's node-lifecycle controller removes that taint.
/// - `Priority`: it rejects pods that set `spec.priority` without a matching
///   PriorityClass; with it off, [`TestPod::priority`](crate::TestPod::priority) is one call.
/// - `RuntimeClass`: it rejects pods that set `spec.overhead` without a RuntimeClass;
///   with it off, [`TestPod::overhead`](crate::TestPod::overhead) is one call.
pub const DEFAULT_DISABLED_ADMISSION_PLUGINS: &[&str] = &[
    "ServiceAccount",
    "TaintNodesByCondition",
    "Priority",
    "RuntimeClass",
];

/// The user name of the admin token (group `system:masters`).
pub const ADMIN_USER: &str = "drover-test-admin";

/// The kwok stages the harness installs (copied from kwok v0.7.0's `kustomize/stage/`):
/// node-initialize and node-heartbeat-with-lease for nodes; pod-ready, pod-complete and
/// pod-delete for pods.
pub const KWOK_STAGES: &[(&str, &str)] = &[
    (
        "node-initialize",
        include_str!("../stages/node-initialize.yaml"),
    ),
    (
        "node-heartbeat-with-lease",
        include_str!("../stages/node-heartbeat-with-lease.yaml"),
    ),
    ("pod-ready", include_str!("../stages/pod-ready.yaml")),
    ("pod-complete", include_str!("../stages/pod-complete.yaml")),
    ("pod-delete", include_str!("../stages/pod-delete.yaml")),
];

/// How many times a component is restarted on a fresh port when its port was taken.
const PORT_ATTEMPTS: usize = 5;

/// Options for [`ControlPlane`]; start with [`ControlPlane::builder`].
#[derive(Debug, Clone)]
pub struct ControlPlaneBuilder {
    kwok: bool,
    node_lease_seconds: u32,
    controller_manager: bool,
    apiserver_args: Vec<String>,
    disabled_admission_plugins: Vec<String>,
    start_timeout: Duration,
    audit: bool,
}

impl Default for ControlPlaneBuilder {
    fn default() -> Self {
        ControlPlaneBuilder {
            kwok: true,
            node_lease_seconds: 40,
            controller_manager: false,
            apiserver_args: Vec::new(),
            disabled_admission_plugins: DEFAULT_DISABLED_ADMISSION_PLUGINS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            start_timeout: Duration::from_secs(60),
            audit: false,
        }
    }
}

impl ControlPlaneBuilder {
    /// Whether to run kwok, which makes fake nodes Ready and their pods Running (default on).
    pub fn kwok(mut self, on: bool) -> Self {
        self.kwok = on;
        self
    }

    /// The duration of the node Leases kwok keeps for fake nodes (default 40 s, as
    /// kubelet); kwok renews each every quarter of it. With thousands of nodes that is
    /// hundreds of writes a second, so benchmarks may raise it, or set 0 to keep no
    /// Leases at all (fine unless kube-controller-manager runs: its node-lifecycle
    /// controller then marks the nodes NotReady).
    pub fn node_lease_seconds(mut self, seconds: u32) -> Self {
        self.node_lease_seconds = seconds;
        self
    }

    /// Whether to run kube-controller-manager with every default controller (default
    /// off; see [`ControlPlane::start_controller_manager`]).
    pub fn controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }

    /// Whether kube-apiserver writes an audit log of every request (metadata only),
    /// read back with [`ControlPlane::audit`] (default off).
    pub fn audit(mut self, on: bool) -> Self {
        self.audit = on;
        self
    }

    /// Adds a flag to kube-apiserver's command line, e.g. `"--max-requests-inflight=2000"`.
    /// It comes after the harness's own flags.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// The admission plugins to disable, replacing [`DEFAULT_DISABLED_ADMISSION_PLUGINS`].
    pub fn disabled_admission_plugins<I, S>(mut self, plugins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.disabled_admission_plugins = plugins.into_iter().map(Into::into).collect();
        self
    }

    /// How long each component may take to become ready (default 60 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the control plane.
    pub async fn start(self) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with(self).await
    }
}

/// Paths of the binaries a control plane runs.
#[derive(Debug, Clone)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    kwok: Option<PathBuf>,
}

/// A real control plane on loopback: etcd, kube-apiserver and (by default) kwok, in a
/// temporary directory. Dropping it kills every process it started and removes the
/// directory (set `DROVER_TESTENV_KEEP=1` to keep the directory for a look at the logs).
///
/// Clients made by [`client`](Self::client) and [`client_with_token`](Self::client_with_token)
/// have no client-side rate limit (kube-rs has none), so they are already "high QPS";
/// the admin identity is in `system:masters`, which API Priority and Fairness exempts.
pub struct ControlPlane {
    /// Processes in start order; killed in reverse order on drop.
    procs: Mutex<Vec<ProcessGuard>>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    server_url: String,
    etcd_url: String,
    admin_token: String,
    ca_der: Vec<u8>,
    ca_path: PathBuf,
    sa_key_path: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
    start_timeout: Duration,
    counter: AtomicUsize,
    started_in: Duration,
    /// kube-apiserver's binary and command line, to start it again the same way.
    apiserver_cmd: (PathBuf, Vec<String>),
    /// etcd's binary, command line and client port, likewise.
    etcd_cmd: (PathBuf, Vec<String>, u16),
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir_path)
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The control plane's own directory (PKI, configs, logs); removed with it.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir_path
    }

    /// Starts etcd, kube-apiserver and kwok with the default options.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        ControlPlaneBuilder::default().start().await
    }

    /// Options for a control plane: `ControlPlane::builder().kwok(true).controller_manager(false).start()`.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    async fn start_with(opts: ControlPlaneBuilder) -> anyhow::Result<ControlPlane> {
        let t0 = Instant::now();
        let want_kwok = opts.kwok;
        let bins = tokio::task::spawn_blocking(move || -> anyhow::Result<Binaries> {
            Ok(Binaries {
                etcd: binary_path(Binary::Etcd)?,
                apiserver: binary_path(Binary::KubeApiserver)?,
                kwok: if want_kwok {
                    Some(binary_path(Binary::Kwok)?)
                } else {
                    None
                },
            })
        })
        .await
        .context("finding the control-plane binaries")??;

        let dir = tempfile::Builder::new()
            .prefix("drover-testenv-")
            .tempdir()
            .context("creating the control plane's temporary directory")?;
        let dir_path = dir.path().to_path_buf();
        let pki = dir_path.join("pki");
        std::fs::create_dir_all(&pki).context("creating the cert dir")?;
        let certs = Pki::generate(&pki)?;
        let admin_token = random_token();
        let token_file = dir_path.join("tokens.csv");
        std::fs::write(
            &token_file,
            format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )
        .context("writing the token file")?;
        let mut opts = opts;
        if opts.audit {
            let policy = dir_path.join("audit-policy.yaml");
            std::fs::write(
                &policy,
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
            )
            .context("writing the audit policy")?;
            opts.apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", dir_path.join("audit.log").display()),
                "--audit-log-format=json".to_string(),
                "--audit-log-mode=blocking".to_string(),
            ]);
        }

        let mut procs = Vec::new();
        let (etcd, etcd_port, etcd_args) =
            start_etcd(&bins.etcd, &dir_path, opts.start_timeout).await?;
        procs.push(etcd);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");

        let (apiserver, server_url, client, apiserver_args) = start_apiserver(
            &bins.apiserver,
            &dir_path,
            &certs,
            &token_file,
            &etcd_url,
            &admin_token,
            &opts,
        )
        .await?;
        procs.push(apiserver);

        let kubeconfig = dir_path.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server_url, &certs.ca_path, ADMIN_USER, &admin_token),
        )
        .context("writing the kubeconfig")?;

        let mut cp = ControlPlane {
            apiserver_cmd: (bins.apiserver.clone(), apiserver_args),
            etcd_cmd: (bins.etcd.clone(), etcd_args, etcd_port),
            procs: Mutex::new(procs),
            dir: Some(dir),
            dir_path,
            server_url,
            etcd_url,
            admin_token,
            ca_der: certs.ca_der.clone(),
            ca_path: certs.ca_path.clone(),
            sa_key_path: certs.sa_key_path.clone(),
            kubeconfig,
            client,
            start_timeout: opts.start_timeout,
            counter: AtomicUsize::new(0),
            started_in: Duration::ZERO,
        };
        if let Some(kwok) = &bins.kwok {
            let p = cp.spawn_kwok(kwok, opts.node_lease_seconds)?;
            cp.procs().push(p);
        }
        if opts.controller_manager {
            let p = cp.start_controller_manager().await?;
            cp.procs().push(p);
        }
        cp.started_in = t0.elapsed();
        tracing::info!(url = cp.server_url, dir = %cp.dir_path.display(), started_in = ?cp.started_in, "control plane ready");
        Ok(cp)
    }

    fn procs(&self) -> MutexGuard<'_, Vec<ProcessGuard>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An admin client (token of [`ADMIN_USER`], group `system:masters`) that trusts the
    /// apiserver's CA. Cheap to clone.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The configuration behind [`client`](Self::client), to adjust (timeouts, headers)
    /// before making a client with `Client::try_from(config)`.
    pub fn client_config(&self) -> Config {
        client_config(&self.server_url, &self.ca_der, &self.admin_token)
    }

    /// A client that authenticates with `token` (e.g. a ServiceAccount token from
    /// [`service_account_token`](Self::service_account_token)) and trusts the apiserver's CA.
    pub fn client_with_token(&self, token: &str) -> Client {
        Client::try_from(client_config(&self.server_url, &self.ca_der, token))
            .expect("the admin client was built from the same TLS settings")
    }

    /// Creates (if needed) namespace `namespace` and ServiceAccount `name` in it, and
    /// returns a token for it from the TokenRequest API, valid for an hour.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        ensure_namespace(&self.client, namespace).await?;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating ServiceAccount {namespace}/{name}"));
            }
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let tr = api
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
        tr.status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .context("the TokenRequest came back without a token")
    }

    /// The admin kubeconfig (token auth, CA file), for processes such as kube-scheduler
    /// or drover's binary, and for `clientConnection.kubeconfig` in component configs.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig for `token` (user name `user`), as YAML.
    pub fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        kubeconfig_yaml(&self.server_url, &self.ca_path, user, token)
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `<temp dir>/<user>.kubeconfig`
    /// and returns its path.
    pub fn write_kubeconfig(&self, user: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir_path.join(format!("{user}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_yaml(user, token))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// etcd's client URL, `http://127.0.0.1:<port>`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin bearer token ([`ADMIN_USER`], group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The PEM file of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_path
    }

    /// The temporary directory holding data, certificates, configs and every process's logs.
    pub fn temp_dir(&self) -> &Path {
        &self.dir_path
    }

    /// How long [`start`](Self::start) took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Process ids of the processes the control plane owns (not those returned as a
    /// [`ProcessGuard`] by [`start_kube_scheduler`](Self::start_kube_scheduler) and the like).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs()
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// The last `lines` lines of the logs of the owned process named `name`
    /// (`etcd`, `kube-apiserver`, `kwok`, `kube-controller-manager`).
    pub fn log_tail(&self, name: &str, lines: usize) -> Option<String> {
        self.procs()
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.log_tail(lines))
    }

    /// Kills the owned process named `name` (SIGKILL) and returns its place, for the
    /// one started in its stead.
    fn kill_owned(&self, name: &str) -> anyhow::Result<usize> {
        let mut procs = self.procs();
        let at = procs
            .iter()
            .position(|p| p.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no {name} to restart"))?;
        procs[at].kill();
        Ok(at)
    }

    /// Kills kube-apiserver (SIGKILL), leaves it down for `down`, and starts it again
    /// on the same port with the same flags (etcd keeps every object). Returns when it
    /// answers `/readyz` again: the moment clients can reach it.
    pub async fn restart_apiserver(&self, down: Duration) -> anyhow::Result<Instant> {
        let at = self.kill_owned("kube-apiserver")?;
        tokio::time::sleep(down).await;
        let (bin, args) = &self.apiserver_cmd;
        let port = self
            .server_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok());
        let mut p = ProcessGuard::spawn("kube-apiserver", bin, args, &self.dir_path, port)?;
        wait_http_ok(&mut p, &self.client, "/readyz", self.start_timeout)
            .await
            .context("kube-apiserver after a restart")?;
        let ready = Instant::now();
        self.procs()[at] = p;
        Ok(ready)
    }

    /// Every request `user` made, from the audit log (see
    /// [`ControlPlaneBuilder::audit`]): (verb, API group, resource with its
    /// subresource as `pods/binding`, response code), one per request.
    pub fn audit(&self, user: &str) -> anyhow::Result<Vec<(String, String, String, u16)>> {
        let path = self.dir_path.join("audit.log");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is audit on?)", path.display()))?;
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["user"]["username"].as_str() != Some(user) || e["stage"] != "ResponseComplete" {
                continue;
            }
            let o = &e["objectRef"];
            let Some(resource) = o["resource"].as_str() else {
                continue;
            };
            let resource = match o["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            };
            out.push((
                e["verb"].as_str().unwrap_or_default().to_string(),
                o["apiGroup"].as_str().unwrap_or_default().to_string(),
                resource,
                e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
            ));
        }
        Ok(out)
    }

    /// Kills etcd (SIGKILL), leaves it down for `down`, and starts it again on the same
    /// ports and data directory. Returns when kube-apiserver answers `/readyz` again.
    pub async fn restart_etcd(&self, down: Duration) -> anyhow::Result<Instant> {
        let at = self.kill_owned("etcd")?;
        tokio::time::sleep(down).await;
        let (bin, args, port) = &self.etcd_cmd;
        let mut p = ProcessGuard::spawn("etcd", bin, args, &self.dir_path, Some(*port))?;
        wait_etcd(&mut p, *port, self.start_timeout)
            .await
            .context("etcd after a restart")?;
        self.procs()[at] = p;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let req = kube::core::Request::new("").get("readyz", &GetParams::default())?;
            let ready = matches!(
                tokio::time::timeout(Duration::from_secs(5), self.client.request_text(req)).await,
                Ok(Ok(_))
            );
            if ready {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "kube-apiserver not ready {:?} after etcd came back",
                self.start_timeout
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, with the tail of its logs, if any owned process has ended.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        for p in self.procs().iter_mut() {
            p.ensure_running()?;
        }
        Ok(())
    }

    /// `base` for the first process of a kind, `base-<n>` for later ones (log file names).
    fn process_name(&self, base: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        if self.dir_path.join(format!("{base}.stderr.log")).exists() {
            format!("{base}-{n}")
        } else {
            base.to_string()
        }
    }

    fn spawn_kwok(&self, kwok: &Path, node_lease_seconds: u32) -> anyhow::Result<ProcessGuard> {
        let config = self.dir_path.join("kwok.yaml");
        let stages: Vec<&str> = KWOK_STAGES.iter().map(|(_, y)| y.trim()).collect();
        std::fs::write(&config, stages.join("\n---\n") + "\n")
            .context("kwok: writing its stages config")?;
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--config={}", config.display()),
            "--manage-all-nodes=false".into(),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                crate::FAKE_NODE_ANNOTATION,
                crate::FAKE_NODE_ANNOTATION_VALUE
            ),
            format!("--node-lease-duration-seconds={node_lease_seconds}"),
            // The default 10.0.0.1/24 holds 254 pod IPs; tests run thousands of pods.
            "--cidr=10.64.0.1/10".into(),
        ];
        ProcessGuard::spawn("kwok", kwok, &args, &self.dir_path, None)
    }

    /// Starts the real kube-scheduler against this apiserver, without leader election,
    /// and waits until its `/readyz` answers. The caller owns the returned process.
    ///
    /// `config_yaml` is a `KubeSchedulerConfiguration` (`kubescheduler.config.k8s.io/v1`);
    /// `clientConnection.kubeconfig` is set to [`kubeconfig_path`](Self::kubeconfig_path)
    /// and `leaderElection.leaderElect` to false unless the YAML sets them. Without a
    /// config, the defaults apply (client QPS 50, burst 100, profile `default-scheduler`).
    /// Its secure port (for `/metrics` with the admin token) is [`ProcessGuard::port`].
    pub async fn start_kube_scheduler(
        &self,
        config_yaml: Option<&str>,
    ) -> anyhow::Result<ProcessGuard> {
        let bin = tokio::task::spawn_blocking(|| binary_path(Binary::KubeScheduler)).await??;
        let name = self.process_name("kube-scheduler");
        let mut config: serde_yaml_ng::Value = match config_yaml {
            Some(y) => serde_yaml_ng::from_str(y)
                .context("kube-scheduler: parsing the given KubeSchedulerConfiguration")?,
            None => serde_yaml_ng::from_str(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
            )?,
        };
        let kubeconfig = self.kubeconfig.display().to_string();
        set_default(
            &mut config,
            &["clientConnection", "kubeconfig"],
            kubeconfig.into(),
        )?;
        set_default(
            &mut config,
            &["leaderElection", "leaderElect"],
            false.into(),
        )?;
        let config_path = self.dir_path.join(format!("{name}.yaml"));
        std::fs::write(&config_path, serde_yaml_ng::to_string(&config)?)
            .context("kube-scheduler: writing its config")?;
        let args = |port: u16| {
            let mut a = vec![format!("--config={}", config_path.display())];
            a.extend(self.component_serving_args(&name, port));
            a
        };
        self.start_component(&name, &bin, args, "/readyz").await
    }

    /// Starts KubeRay's ray-operator (built by `tests/controlplane/build.sh`) with
    /// `extra` flags such as `--batch-scheduler=scheduler-plugins`, no leader election,
    /// its health probe on a loopback port, and waits until `/readyz` answers. Install
    /// its CRD first ([`ray_cluster_crd`]). The caller owns the returned process.
    pub async fn start_ray_operator(&self, extra: &[&str]) -> anyhow::Result<ProcessGuard> {
        let bin = tokio::task::spawn_blocking(|| binary_path(Binary::RayOperator)).await??;
        let name = self.process_name("ray-operator");
        let port = free_port()?;
        let mut args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--enable-leader-election=false".to_string(),
            "--metrics-addr=0".to_string(),
            format!("--health-probe-bind-address=127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut p = ProcessGuard::spawn(&name, &bin, &args, &self.dir_path, Some(port))?;
        let deadline = Instant::now() + self.start_timeout;
        // Ready once its informers have synced (the CRDs it watches must exist).
        loop {
            if let Ok(answer) = plain_get(port, "/readyz").await
                && answer.starts_with("HTTP/1.1 200")
            {
                return Ok(p);
            }
            p.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready after {:?}; last output:\n{}",
                    self.start_timeout,
                    p.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts kube-controller-manager (`--controllers=*`, among them disruption for PDB
    /// status, garbagecollector and namespace; `--use-service-account-credentials=false`,
    /// no leader election) and waits until its `/healthz` answers. The caller owns the
    /// returned process. [`ControlPlaneBuilder::controller_manager`] starts one the
    /// control plane owns instead.
    pub async fn start_controller_manager(&self) -> anyhow::Result<ProcessGuard> {
        let bin =
            tokio::task::spawn_blocking(|| binary_path(Binary::KubeControllerManager)).await??;
        let name = self.process_name("kube-controller-manager");
        let args = |port: u16| {
            let mut a = vec![
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--leader-elect=false".to_string(),
                "--controllers=*".to_string(),
                "--use-service-account-credentials=false".to_string(),
                format!(
                    "--service-account-private-key-file={}",
                    self.sa_key_path.display()
                ),
                format!("--root-ca-file={}", self.ca_path.display()),
                "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            ];
            a.extend(self.component_serving_args(&name, port));
            a
        };
        self.start_component(&name, &bin, args, "/healthz").await
    }

    /// Flags for a component's own HTTPS server on 127.0.0.1:`port`, delegating
    /// authentication and authorization to the apiserver with the admin kubeconfig.
    fn component_serving_args(&self, name: &str, port: u16) -> Vec<String> {
        vec![
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!(
                "--cert-dir={}",
                self.dir_path.join(format!("{name}-certs")).display()
            ),
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            // Token authentication through TokenReview is enough; looking up the
            // front-proxy CA (which this apiserver does not have) only logs errors.
            "--authentication-skip-lookup=true".to_string(),
        ]
    }

    /// Starts a component serving on a free port and waits until `health_path` answers 200,
    /// moving to another port if the chosen one was taken.
    async fn start_component(
        &self,
        name: &str,
        bin: &Path,
        args: impl Fn(u16) -> Vec<String>,
        health_path: &str,
    ) -> anyhow::Result<ProcessGuard> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let mut p = ProcessGuard::spawn(name, bin, &args(port), &self.dir_path, Some(port))?;
            let probe = Client::try_from(insecure_config(
                &format!("https://127.0.0.1:{port}"),
                &self.admin_token,
            ))?;
            match wait_http_ok(&mut p, &probe, health_path, self.start_timeout).await {
                Ok(()) => return Ok(p),
                Err(_) if attempt < PORT_ATTEMPTS && port_collision(&p.log_tail(50)) => continue,
                Err(e) => return Err(e.context(format!("starting {name}"))),
            }
        }
    }

    /// Installs the CustomResourceDefinitions in `files` (YAML, one or more documents;
    /// paths relative to the repository root) and waits until each is Established.
    pub async fn install_crds(&self, files: &[&str]) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use serde::Deserialize;
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let mut names = Vec::new();
        for f in files {
            let path = crate::binaries::repo_root().join(f);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = serde_yaml_ng::Value::deserialize(doc)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if value.is_null() {
                    continue;
                }
                let crd: CustomResourceDefinition =
                    serde_yaml_ng::from_value(value).with_context(|| {
                        format!("{} is not a CustomResourceDefinition", path.display())
                    })?;
                let name = crd.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &crd)
                    .await
                    .with_context(|| format!("creating CRD {name} from {}", path.display()))?;
                names.push(name);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in names {
            loop {
                let crd = api
                    .get(&name)
                    .await
                    .with_context(|| format!("reading CRD {name}"))?;
                let established = crd
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("CRD {name} not Established after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Discovery of the new API can lag the Established condition a little.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    /// Creates `nodes` (at most 32 requests at a time) and, when kwok runs, waits until
    /// each is Ready, checking that the capacity and allocatable given survived (they are
    /// written into the status if not).
    pub async fn create_nodes(&self, nodes: &[Node]) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        futures::stream::iter(nodes)
            .map(|n| {
                let api = api.clone();
                async move {
                    let name = n.metadata.name.as_deref().unwrap_or_default();
                    api.create(&PostParams::default(), n)
                        .await
                        .with_context(|| format!("creating node {name}"))
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await?;
        if !self.procs().iter().any(|p| p.name() == "kwok") {
            return Ok(());
        }

        let want: BTreeMap<String, &Node> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n)))
            .collect();
        let mut patched = HashSet::new();
        let timeout = Duration::from_secs(60) + Duration::from_millis(20 * nodes.len() as u64);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.procs().iter_mut().find(|p| p.name() == "kwok") {
                p.ensure_running()
                    .context("waiting for fake nodes to become Ready")?;
            }
            let listed = api
                .list(&ListParams::default())
                .await
                .context("listing nodes")?
                .items;
            let mut missing = Vec::new();
            for got in &listed {
                let Some(name) = got.metadata.name.as_deref() else {
                    continue;
                };
                let Some(given) = want.get(name) else {
                    continue;
                };
                if !node_ready(got) {
                    missing.push(name.to_string());
                    continue;
                }
                let (want_cap, want_alloc) = capacity_of(given);
                let (got_cap, got_alloc) = capacity_of(got);
                let changed = (want_cap.is_some() && want_cap != got_cap)
                    || (want_alloc.is_some() && want_alloc != got_alloc);
                // Patched once; after that the apiserver's canonical form of the quantities is accepted.
                if changed && patched.insert(name.to_string()) {
                    tracing::warn!(
                        node = name,
                        ?want_cap,
                        ?got_cap,
                        "node capacity changed on create; patching status"
                    );
                    let patch =
                        json!({"status": {"capacity": want_cap, "allocatable": want_alloc}});
                    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("patching the status of node {name}"))?;
                    missing.push(name.to_string());
                }
            }
            let seen: HashSet<&str> = listed
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            missing.extend(want.keys().filter(|n| !seen.contains(n.as_str())).cloned());
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let kwok = self.log_tail("kwok", 30).unwrap_or_default();
                bail!(
                    "{} of {} fake nodes not Ready after {timeout:?} (first: {:?}); kwok's log:\n{kwok}",
                    missing.len(),
                    want.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        if std::thread::panicking() {
            for p in procs.iter().filter(|p| p.name() != "etcd") {
                eprintln!(
                    "drover-testenv: test panicked; tail of {}'s logs:\n{}",
                    p.name(),
                    p.log_tail(15)
                );
            }
        }
        // Dependents first, etcd last.
        for p in procs.iter_mut().rev() {
            p.kill();
        }
        drop(procs);
        if std::env::var_os("DROVER_TESTENV_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("drover-testenv: kept {}", dir.keep().display());
        }
    }
}

/// Certificates and keys in the cert dir.
struct Pki {
    ca_der: Vec<u8>,
    ca_path: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key_path: PathBuf,
    sa_pub_path: PathBuf,
}

impl Pki {
    /// A CA, a serving certificate for localhost/127.0.0.1 signed by it, and an ECDSA
    /// P-256 ServiceAccount signing key, all as PEM files in `dir`.
    fn generate(dir: &Path) -> anyhow::Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "drover-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().context("generating the apiserver's serving key")?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the apiserver's serving certificate")?;

        let sa_key = KeyPair::generate().context("generating the ServiceAccount signing key")?;

        let pki = Pki {
            ca_der: ca_cert.der().to_vec(),
            ca_path: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key_path: dir.join("sa.key"),
            sa_pub_path: dir.join("sa.pub"),
        };
        std::fs::write(&pki.ca_path, ca_cert.pem())?;
        std::fs::write(&pki.serving_cert, cert.pem())?;
        std::fs::write(&pki.serving_key, key.serialize_pem())?;
        std::fs::write(&pki.sa_key_path, sa_key.serialize_pem())?;
        // The apiserver reads public keys from PKIX PEM, not from a PKCS#8 private key.
        std::fs::write(&pki.sa_pub_path, sa_key.public_key_pem())?;
        Ok(pki)
    }
}

/// A 128-bit random hex token (from the standard library's randomly seeded hasher).
fn random_token() -> String {
    let a = RandomState::new().hash_one(std::process::id());
    let b = RandomState::new().hash_one(Instant::now());
    format!("{a:016x}{b:016x}")
}

fn client_config(server_url: &str, ca_der: &[u8], token: &str) -> Config {
    let mut config = Config::new(server_url.parse().expect("the server URL is valid"));
    config.root_cert = Some(vec![ca_der.to_vec()]);
    config.auth_info =
        serde_json::from_value(json!({ "token": token })).expect("AuthInfo from a token");
    config
}

/// A client for a component's self-signed HTTPS endpoint.
fn insecure_config(url: &str, token: &str) -> Config {
    let mut config = Config::new(url.parse().expect("the URL is valid"));
    config.accept_invalid_certs = true;
    config.auth_info =
        serde_json::from_value(json!({ "token": token })).expect("AuthInfo from a token");
    config
}

fn kubeconfig_yaml(server_url: &str, ca_path: &Path, user: &str, token: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "drover-test", "cluster": {"server": server_url, "certificate-authority": ca_path.display().to_string()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "drover-test", "context": {"cluster": "drover-test", "user": user, "namespace": "default"}}],
        "current-context": "drover-test",
    });
    serde_yaml_ng::to_string(&doc).expect("a kubeconfig serializes")
}

/// Sets `path` in a YAML mapping to `value` unless it is already set.
fn set_default(
    doc: &mut serde_yaml_ng::Value,
    path: &[&str],
    value: serde_yaml_ng::Value,
) -> anyhow::Result<()> {
    let mut cur = doc;
    for (i, key) in path.iter().enumerate() {
        let map = cur
            .as_mapping_mut()
            .with_context(|| format!("{} is not a mapping", path[..i].join(".")))?;
        let k = serde_yaml_ng::Value::from(*key);
        if i == path.len() - 1 {
            if map.get(&k).is_none_or(|v| v.is_null()) {
                map.insert(k, value);
            }
            return Ok(());
        }
        if map.get(&k).is_none_or(|v| v.is_null()) {
            map.insert(k.clone(), serde_yaml_ng::Value::Mapping(Default::default()));
        }
        cur = map.get_mut(&k).expect("just inserted");
    }
    Ok(())
}

async fn start_etcd(
    bin: &Path,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<(ProcessGuard, u16, Vec<String>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=drover-test".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=drover-test={peer}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let mut p = ProcessGuard::spawn("etcd", bin, &args, dir, Some(client_port))?;
        match wait_etcd(&mut p, client_port, timeout).await {
            Ok(()) => return Ok((p, client_port, args)),
            Err(_) if attempt < PORT_ATTEMPTS && port_collision(&p.log_tail(50)) => {
                drop(p);
                let _ = std::fs::remove_dir_all(dir.join("etcd"));
            }
            Err(e) => return Err(e.context("starting etcd")),
        }
    }
}

/// Waits until etcd's `/health` says `"health":"true"`.
async fn wait_etcd(p: &mut ProcessGuard, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        p.ensure_running()?;
        let last = match etcd_health(port).await {
            Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
            Ok(body) => body,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "etcd not healthy after {timeout:?} (last answer: {last}); last output:\n{}",
                p.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn etcd_health(port: u16) -> anyhow::Result<String> {
    plain_get(port, "/health").await
}

/// `GET path` over plain HTTP on loopback: the whole answer, status line first.
async fn plain_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn start_apiserver(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    token_file: &Path,
    etcd_url: &str,
    admin_token: &str,
    opts: &ControlPlaneBuilder,
) -> anyhow::Result<(ProcessGuard, String, Client, Vec<String>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        let mut args = vec![
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!(
                "--cert-dir={}",
                pki.ca_path.parent().unwrap_or(dir).display()
            ),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_path.display()),
            format!("--etcd-servers={etcd_url}"),
            "--authorization-mode=RBAC".to_string(),
            format!("--token-auth-file={}", token_file.display()),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--service-account-issuer=https://localhost".to_string(),
            format!("--service-account-key-file={}", pki.sa_pub_path.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key_path.display()
            ),
            "--allow-privileged=true".to_string(),
            // Loopback cannot be advertised in the `kubernetes` Endpoints; skip that reconciler.
            "--endpoint-reconciler-type=none".to_string(),
        ];
        if !opts.disabled_admission_plugins.is_empty() {
            args.push(format!(
                "--disable-admission-plugins={}",
                opts.disabled_admission_plugins.join(",")
            ));
        }
        args.extend(opts.apiserver_args.iter().cloned());
        let mut p = ProcessGuard::spawn("kube-apiserver", bin, &args, dir, Some(port))?;
        let url = format!("https://127.0.0.1:{port}");
        let client = Client::try_from(client_config(&url, &pki.ca_der, admin_token))
            .context("kube-apiserver: building the admin client")?;
        let ready = async {
            wait_http_ok(&mut p, &client, "/readyz", opts.start_timeout).await?;
            // The bootstrap controller creates `default` soon after /readyz; wait for it.
            let ns: Api<Namespace> = Api::all(client.clone());
            let deadline = Instant::now() + opts.start_timeout;
            while ns.get_opt("default").await?.is_none() {
                if Instant::now() > deadline {
                    bail!("namespace default not created");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        };
        match ready.await {
            Ok(()) => return Ok((p, url, client, args)),
            Err(_) if attempt < PORT_ATTEMPTS && port_collision(&p.log_tail(50)) => continue,
            Err(e) => return Err(e.context("starting kube-apiserver")),
        }
    }
}

/// Polls `GET path` through `client` until it answers 200, failing early (with the
/// process's log tail) if the process ends, or after `timeout`.
async fn wait_http_ok(
    p: &mut ProcessGuard,
    client: &Client,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let name = path.trim_start_matches('/');
    loop {
        p.ensure_running()?;
        let req = kube::core::Request::new("").get(name, &GetParams::default())?;
        let err = match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5s".to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {timeout:?} ({path}: {err}); last output:\n{}",
                p.name(),
                p.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

type Resources = Option<BTreeMap<String, String>>;

fn capacity_of(n: &Node) -> (Resources, Resources) {
    let conv = |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
    };
    let s = n.status.as_ref();
    (
        s.and_then(|s| s.capacity.as_ref()).map(conv),
        s.and_then(|s| s.allocatable.as_ref()).map(conv),
    )
}
