//! Helpers shared by drover's integration tests: run drover in-process against a test
//! control plane, and check placements against the API server's own records.

use std::collections::BTreeMap;
use std::time::Duration;

use drover::k8s::{RunOptions, Shared};
use drover_core::quantity::parse_resource;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// A drover instance running in this process.
pub struct Drover {
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    /// Its snapshot and metrics.
    pub shared: Shared,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A configuration that reclaims and preempts after one second and protects no pod
/// by its runtime: what tests of evictions use, so they need not wait.
pub const QUICK_EVICTIONS: &str = "quota: {reclaimGraceSeconds: 1, minRuntimeSeconds: 0}";

impl Drover {
    /// Starts drover with the default configuration and scheduler name `drover`.
    pub fn start(client: Client) -> Drover {
        Self::start_with(client, RunOptions::new("drover"))
    }

    /// Starts drover with scheduler name `drover` and the configuration file `config`
    /// (YAML, as in drover's ConfigMap).
    pub fn start_with_config(client: Client, config: &str) -> anyhow::Result<Drover> {
        let mut opts = RunOptions::new("drover");
        opts.config = drover_core::config::FileConfig::parse(config, "test")?.validate()?;
        Ok(Self::start_with(client, opts))
    }

    /// Starts drover with `opts`.
    pub fn start_with(client: Client, opts: RunOptions) -> Drover {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let shutdown = CancellationToken::new();
        let shared = Shared::new();
        let handle = tokio::spawn(drover::k8s::run_with(
            client,
            opts,
            shared.clone(),
            shutdown.clone(),
        ));
        Drover {
            shutdown,
            shared,
            handle,
        }
    }

    /// Stops it and waits for it to end; fails if it ended with an error.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle).await??
    }
}

/// Every pod in `namespace`.
pub async fn pods(client: &Client, namespace: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items)
}

/// Number of pods in `namespace` that have a node.
pub async fn bound_count(client: &Client, namespace: &str) -> anyhow::Result<usize> {
    Ok(pods(client, namespace)
        .await?
        .iter()
        .filter(|p| node_of(p).is_some())
        .count())
}

/// The node a pod is bound to.
pub fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn sum_requests(p: &Pod) -> BTreeMap<String, i64> {
    // Containers only (the tests create no init containers or overhead), computed here
    // independently of drover's own arithmetic.
    let mut out = BTreeMap::new();
    for c in p.spec.iter().flat_map(|s| &s.containers) {
        for (k, q) in c.resources.iter().flat_map(|r| r.requests.iter().flatten()) {
            *out.entry(k.clone()).or_default() +=
                parse_resource(k, &q.0).expect("test pods have valid quantities");
        }
    }
    out
}

/// Checks, from the API server's records, that no node holds more than its
/// allocatable of any resource or pods. Returns a description of each violation.
pub async fn overcommitted(client: &Client) -> anyhow::Result<Vec<String>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let all = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut used: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for p in &all {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        if let Some(n) = node_of(p) {
            let u = used.entry(n.to_string()).or_default();
            for (k, v) in sum_requests(p) {
                *u.entry(k).or_default() += v;
            }
            *u.entry("pods".into()).or_default() += 1;
        }
    }
    let mut bad = Vec::new();
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let alloc = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        for (k, v) in used.get(&name).into_iter().flatten() {
            let cap = alloc
                .get(k)
                .map(|q| parse_resource(k, &q.0).expect("valid"))
                .unwrap_or(0);
            if *v > cap {
                bad.push(format!("node {name}: {k} used {v} > allocatable {cap}"));
            }
        }
    }
    Ok(bad)
}

/// The PodGroup CRD drover ships, relative to the repository root.
pub const POD_GROUP_CRD: &str = "manifests/crds/scheduling.x-k8s.io_podgroups.yaml";

/// The Queue CRD drover ships, relative to the repository root.
pub const QUEUE_CRD: &str = "manifests/crds/drover.dev_queues.yaml";

/// Volcano's PodGroup CRD, as `manifests/volcano` ships it.
pub const VOLCANO_POD_GROUP_CRD: &str = "manifests/volcano/scheduling.volcano.sh_podgroups.yaml";

/// Events (events.k8s.io/v1) about the object named `name` in `namespace`:
/// `(reason, note)` pairs, oldest first.
pub async fn events_for(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut evs = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    evs.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
    evs.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    Ok(evs
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// Waits up to `timeout` for an Event about `name` in `namespace` that `matches` its
/// `(reason, note)`; on timeout the error lists the object's Events. drover writes
/// Events from their own tasks, so one can land after the change it reports is visible.
pub async fn wait_event(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<()> {
    let matches = &matches;
    let what = format!("an Event about {namespace}/{name}: {what}");
    let found = drover_testenv::wait_until(timeout, Duration::from_millis(100), &what, || async {
        Ok(events_for(client, namespace, name)
            .await?
            .iter()
            .any(|(r, n)| matches(r, n)))
    })
    .await;
    if let Err(e) = found {
        let events = events_for(client, namespace, name).await?;
        return Err(e.context(format!("its Events: {events:?}")));
    }
    Ok(())
}

/// The message of a pod's `PodScheduled=False` condition, if it has one.
pub fn unschedulable_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

/// `count` fake nodes `n-0`, `n-1`, ... of `cpu` and `memory` each.
pub fn nodes(count: usize, cpu: &str, memory: &str) -> Vec<k8s_openapi::api::core::v1::Node> {
    (0..count)
        .map(|i| {
            drover_testenv::FakeNode::new(format!("n-{i}"))
                .cpu(cpu)
                .memory(memory)
                .build()
        })
        .collect()
}

/// Bound and total pod counts per gang label value (`scheduling.x-k8s.io/pod-group`)
/// in `namespace`.
pub async fn gang_counts(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, (usize, usize)>> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for p in pods(client, namespace).await? {
        let Some(g) = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(drover_core::gang::GROUP_LABEL))
        else {
            continue;
        };
        let e = out.entry(g.clone()).or_default();
        e.1 += 1;
        if node_of(&p).is_some() {
            e.0 += 1;
        }
    }
    Ok(out)
}

/// Creates a PodGroup (`scheduling.x-k8s.io/v1alpha1`) with `spec`.
pub async fn create_pod_group(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<kube::api::DynamicObject> {
    create_group_in(
        client,
        drover::k8s::status::pod_group_resource(),
        namespace,
        name,
        spec,
    )
    .await
}

/// Creates a Volcano PodGroup (`scheduling.volcano.sh/v1beta1`) with `spec`.
pub async fn create_volcano_pod_group(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<kube::api::DynamicObject> {
    let ar = drover::k8s::status::volcano_pod_group_resource();
    create_group_in(client, ar, namespace, name, spec).await
}

/// Reads a Volcano PodGroup's `status` (null when it has none).
pub async fn volcano_pod_group_status(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let ar = drover::k8s::status::volcano_pod_group_resource();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    Ok(api
        .get(name)
        .await?
        .data
        .get("status")
        .cloned()
        .unwrap_or_default())
}

async fn create_group_in(
    client: &Client,
    ar: kube::api::ApiResource,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<kube::api::DynamicObject> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let mut obj = kube::api::DynamicObject::new(name, &ar).within(namespace);
    obj.data = serde_json::json!({ "spec": spec });
    Ok(api.create(&kube::api::PostParams::default(), &obj).await?)
}

/// Creates a drover Queue (`drover.dev/v1alpha1`, cluster-scoped) with `spec`.
pub async fn create_queue(
    client: &Client,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<kube::api::DynamicObject> {
    let ar = drover::k8s::status::queue_resource();
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut obj = kube::api::DynamicObject::new(name, &ar);
    obj.data = serde_json::json!({ "spec": spec });
    Ok(api.create(&kube::api::PostParams::default(), &obj).await?)
}

/// Reads a PodGroup's `status` (null when it has none).
pub async fn pod_group_status(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let ar = drover::k8s::status::pod_group_resource();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let g = api.get(name).await?;
    Ok(g.data.get("status").cloned().unwrap_or_default())
}

/// The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, fetched by
/// `tests/controlplane/crds.sh` from the Go module proxy into the cache (absolute
/// paths, for [`ControlPlane::install_crds`](drover_testenv::ControlPlane::install_crds)).
pub fn prometheus_operator_crds() -> anyhow::Result<Vec<String>> {
    let script = drover_testenv::repo_root().join("tests/controlplane/crds.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "bash {} failed ({})",
        script.display(),
        out.status
    );
    let text = String::from_utf8(out.stdout)?;
    let dir = text
        .lines()
        .last()
        .ok_or_else(|| anyhow::anyhow!("{} printed nothing", script.display()))?;
    Ok([
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ]
    .iter()
    .map(|f| format!("{dir}/{f}"))
    .collect())
}

/// The body of `GET path` on `addr` (plain HTTP/1.0), failing on a status other than 200.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no HTTP header in {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "GET {path}: {status}");
    Ok(body.to_string())
}

/// Parses Prometheus text format with the parser Prometheus itself uses (Go's
/// `github.com/prometheus/common/expfmt`, run from `tests/controlplane/promparse`):
/// metric family name → (type, number of series). An error carries the parser's message.
pub fn parse_prometheus_text(
    text: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, usize)>> {
    use std::io::Write;
    let dir = drover_testenv::repo_root().join("tests/controlplane/promparse");
    let mut child = std::process::Command::new("go")
        .args(["run", "."])
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("go run in {}: {e} (Go is needed)", dir.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the Prometheus text parser rejects it: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut families = std::collections::BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let mut f = line.split(' ');
        if let (Some(name), Some(kind), Some(n)) = (f.next(), f.next(), f.next()) {
            families.insert(name.to_string(), (kind.to_string(), n.parse()?));
        }
    }
    Ok(families)
}

/// drover-extender in this process with `client`, on a free loopback port, once it is
/// ready (nodes, pods, gangs and queues listed). Cancel the token to stop it.
pub async fn start_extender(
    client: Client,
) -> anyhow::Result<(drover_extender::Running, CancellationToken)> {
    start_extender_with(client, |_| {}).await
}

/// [`start_extender`] with its options changed by `change` first.
pub async fn start_extender_with(
    client: Client,
    change: impl FnOnce(&mut drover_extender::Options),
) -> anyhow::Result<(drover_extender::Running, CancellationToken)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut opts = drover_extender::Options::default();
    opts.server.listen = "127.0.0.1:0".parse()?;
    change(&mut opts);
    let shutdown = CancellationToken::new();
    let running = drover_extender::start(client, opts, shutdown.clone()).await?;
    let ext = running.extender.clone();
    drover_testenv::wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        "drover-extender ready",
        || {
            let ext = ext.clone();
            async move { Ok(ext.ready()) }
        },
    )
    .await?;
    Ok((running, shutdown))
}

/// Certificates for mutual TLS between kube-scheduler and drover-extender, as the
/// shipped manifests use them: one CA, drover-extender's serving certificate (for
/// 127.0.0.1 and localhost) and kube-scheduler's client certificate (CN
/// `kube-scheduler`), in PEM files under a directory of the caller's.
pub struct ExtenderCerts {
    dir: std::path::PathBuf,
}

impl ExtenderCerts {
    /// A fresh CA and the two certificates it signs, written under `parent`.
    pub fn new(parent: &std::path::Path) -> anyhow::Result<ExtenderCerts> {
        let dir = parent.join("extender-pki");
        std::fs::create_dir_all(&dir)?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "drover-extender test CA");
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
        for (name, cn, sans) in [
            ("server", "drover-extender", vec!["127.0.0.1", "localhost"]),
            ("client", "kube-scheduler", vec![]),
        ] {
            let mut p = rcgen::CertificateParams::new(
                sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )?;
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        }
        Ok(ExtenderCerts { dir })
    }

    /// The path of `file`: `ca.crt`, `server.crt`, `server.key`, `client.crt`,
    /// `client.key`.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    /// Sets `opts` to serve HTTPS with the server certificate and to take only
    /// kube-scheduler's client certificate.
    pub fn apply(&self, opts: &mut drover_extender::Options) {
        opts.server.tls = Some(drover_extender::server::TlsFiles {
            cert: self.path("server.crt"),
            key: self.path("server.key"),
        });
        opts.server.client_auth = Some(drover_extender::server::ClientAuth {
            ca: self.path("ca.crt"),
            allowed_names: vec!["kube-scheduler".into()],
        });
    }
}
