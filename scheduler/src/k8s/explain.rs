//! `drover explain <namespace>/<pod>`: reads the cluster the way the scheduler does and
//! prints why the pod waits (or where else it could go), per node reason and for its
//! gang.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};

use drover_core::cache::ClusterCache;
use drover_core::config::Config;
use drover_core::explain::{PodStatus, QuotaView, explain};
use drover_core::gang::{GangKey, GangTracker, MemberState};
use drover_core::model::{Phase, PodInfo};

use drover_core::quota::{QUEUE_LABEL, QueueTree, Usage};

use super::convert::{node_info, pod_group, pod_info, queue};
use super::status::{pod_group_resource, queue_resource};

/// Flags of `drover explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The pod, as `namespace/name` (or `name` in namespace `default`).
    pub pod: String,
    /// Kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "DROVER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "DROVER_CONTEXT")]
    pub context: Option<String>,
    /// drover's configuration file, so the answer uses the same weights and rules.
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ask this drover directly (its metrics address, e.g. http://127.0.0.1:10259)
    /// instead of finding the leader through its Lease.
    #[arg(long, env = "DROVER_EXPLAIN_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Namespace of drover's leader Lease, to find the leader.
    #[arg(long, env = "DROVER_LEASE_NAMESPACE", default_value = "drover-system")]
    pub lease_namespace: String,
    /// Name of drover's leader Lease.
    #[arg(long, env = "DROVER_LEASE_NAME", default_value = "drover")]
    pub lease_name: String,
    /// The leader's metrics port, reached through the API server's pod proxy.
    #[arg(long, default_value_t = 10259)]
    pub metrics_port: u16,
    /// Do not ask the scheduler: only explain's own reading of the cluster.
    #[arg(long)]
    pub offline: bool,
}

/// Where to ask the running scheduler.
#[derive(Debug, Clone)]
pub enum Leader {
    /// This URL (a drover's metrics address).
    Url(String),
    /// The holder of this Lease, through the API server's pod proxy on this port.
    Lease {
        /// Its namespace (also the leader pod's).
        namespace: String,
        /// Its name.
        name: String,
        /// The metrics port.
        port: u16,
    },
}

/// What the running scheduler says about a pod: (who answered, its state as JSON), or
/// why none answered.
pub async fn ask_scheduler(
    client: &Client,
    leader: &Leader,
    namespace: &str,
    name: &str,
) -> Result<(String, serde_json::Value), String> {
    let path = format!("/debug/pods/{namespace}/{name}");
    let (who, text) = match leader {
        Leader::Url(url) => {
            let url = format!("{}{path}", url.trim_end_matches('/'));
            let uri: hyper::Uri = url.parse().map_err(|e| format!("--scheduler {url}: {e}"))?;
            let text = http_get(&uri).await.map_err(|e| format!("{url}: {e}"))?;
            (url, text)
        }
        Leader::Lease {
            namespace: lns,
            name: lease,
            port,
        } => {
            let holder = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                client.clone(),
                lns,
            )
            .get_opt(lease)
            .await
            .map_err(|e| format!("reading Lease {lns}/{lease}: {e}"))?
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                format!(
                    "Lease {lns}/{lease} has no holder (is drover running with --leader-elect?)"
                )
            })?;
            let req = hyper::http::Request::get(format!(
                "/api/v1/namespaces/{lns}/pods/{holder}:{port}/proxy{path}"
            ))
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
            let text = client
                .request_text(req)
                .await
                .map_err(|e| format!("leader {holder} through the API server's pod proxy: {e}"))?;
            (format!("leader {holder}"), text)
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{who} answered {text:?}: {e}"))?;
    if v["leading"] != serde_json::Value::Bool(true) {
        return Err(format!("{who} does not lead"));
    }
    Ok((who, v))
}

/// A plain HTTP GET; the body of a 200 or 503 answer (a replica that does not lead
/// answers 503 with its state).
async fn http_get(uri: &hyper::Uri) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await??;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::http::Request::get(uri.path())
        .header(hyper::http::header::HOST, host)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let resp =
        tokio::time::timeout(std::time::Duration::from_secs(5), send.send_request(req)).await??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).to_string();
    if status != hyper::http::StatusCode::OK
        && status != hyper::http::StatusCode::SERVICE_UNAVAILABLE
    {
        anyhow::bail!("answered {status}: {text}");
    }
    Ok(text)
}

/// The scheduler's answer, as the first lines of the explanation.
pub fn scheduler_lines(who: &str, v: &serde_json::Value) -> String {
    let mut out = format!(
        "scheduler ({who}): {}\n",
        v["now"].as_str().unwrap_or("no answer")
    );
    if let Some(q) = v["queue"].as_object() {
        let state = q.get("state").and_then(|s| s.as_str()).unwrap_or("?");
        let attempts = q.get("attempts").and_then(|a| a.as_u64()).unwrap_or(0);
        let at = q.get("at_ms").and_then(|a| a.as_i64()).map(|ms| {
            let when = k8s_openapi::jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.to_string())
                .unwrap_or_default();
            match state {
                "backoff" => format!(" until {when}"),
                _ => format!(" since {when}"),
            }
        });
        out.push_str(&format!(
            "  queue: {state}{} after {attempts} attempt(s)\n",
            at.unwrap_or_default()
        ));
    }
    if let Some(t) = v["told"].as_str() {
        out.push_str(&format!("  told: {t}\n"));
    }
    if let Some(q) = v["fair_share_queue"].as_str() {
        out.push_str(&format!("  fair-share queue: {q}\n"));
    }
    if let Some(held) = v["reservations"].as_array().filter(|r| !r.is_empty()) {
        for r in held {
            let gang = r[0].as_str().unwrap_or("?");
            let nodes: Vec<&str> = r[1]
                .as_array()
                .map(|n| n.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "  capacity held for gang {gang} on: {}\n",
                nodes.join(", ")
            ));
        }
    }
    out
}

/// Runs `drover explain` and prints the answer.
pub async fn explain_from_args(args: ExplainArgs) -> anyhow::Result<()> {
    let (ns, name) = match args.pod.split_once('/') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() && !p.contains('/') => (n, p),
        None if !args.pod.is_empty() => ("default", args.pod.as_str()),
        _ => anyhow::bail!(
            "{:?} is not a pod: write namespace/name, e.g. ml/train-7-worker-0",
            args.pod
        ),
    };
    let config = match &args.config {
        Some(p) => super::load_config(p)?,
        None => Config::default(),
    };
    let client = super::run::client_for(args.kubeconfig.as_ref(), args.context.as_ref()).await?;
    let leader = (!args.offline).then(|| match &args.scheduler {
        Some(url) => Leader::Url(url.clone()),
        None => Leader::Lease {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            port: args.metrics_port,
        },
    });
    print!(
        "{}",
        explain_with_scheduler(&client, &config, ns, name, leader.as_ref()).await?
    );
    Ok(())
}

/// The explanation with the running scheduler's own answer first, when it gives one;
/// otherwise says that it is explain's own reading of the cluster, and why.
pub async fn explain_with_scheduler(
    client: &Client,
    config: &Config,
    namespace: &str,
    name: &str,
    leader: Option<&Leader>,
) -> anyhow::Result<String> {
    let own = explain_pod(client, config, namespace, name).await?;
    let asked = match leader {
        Some(l) => ask_scheduler(client, l, namespace, name).await,
        None => Err("--offline".to_string()),
    };
    Ok(match asked {
        Ok((who, state)) => format!(
            "{}\ndrover explain's own reading of the cluster (the scheduler's answer above is what it does; below, every node judged on its merits):\n{own}",
            scheduler_lines(&who, &state)
        ),
        Err(why) => format!(
            "no scheduler answered ({why}): this is drover explain's own reading of the cluster, which does not see the scheduler's reservations, gang attempts or backoff\n{own}"
        ),
    })
}

/// Builds the answer for `namespace/name` from what the API server holds now.
pub async fn explain_pod(
    client: &Client,
    config: &Config,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    let target = match Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    {
        Some(p) => p,
        None => anyhow::bail!("pod {namespace}/{name} not found"),
    };
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let groups = list_if_served(client, &pod_group_resource()).await?;
    let queues = list_if_served(client, &queue_resource()).await?;
    let namespace_queues: std::collections::HashMap<String, Arc<str>> =
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| {
                let q = n.metadata.labels.as_ref()?.get(QUEUE_LABEL)?.clone();
                let q: Arc<str> = Arc::from(q.as_str());
                Some((n.metadata.name?, q)).filter(|(_, q)| !q.is_empty())
            })
            .collect();
    // A pod without the label is in its namespace's default queue, if it has one.
    let resolve_queue = |p: &mut PodInfo| {
        if p.queue.is_none() {
            p.queue = namespace_queues.get(&*p.key.namespace).cloned();
        }
    };

    let mut cache = ClusterCache::new();
    for n in &nodes {
        if let Ok(info) = node_info(n) {
            cache.upsert_node_info(info);
        }
    }
    let mut gangs = GangTracker::new();
    for g in &groups {
        if let Ok(info) = pod_group(g) {
            gangs.upsert_group(info);
        }
    }
    let exclusive = |p: &mut PodInfo| {
        if config
            .exclusive_namespaces
            .iter()
            .any(|n| **n == *p.key.namespace)
        {
            p.exclusive = true;
        }
    };
    let mut me = pod_info(&target)?;
    let queue_source = if me.queue.is_some() {
        format!("its {QUEUE_LABEL} label")
    } else if namespace_queues.contains_key(&*me.key.namespace) {
        format!("the {QUEUE_LABEL} label of namespace {}", me.key.namespace)
    } else {
        format!("no {QUEUE_LABEL} label on the pod or its namespace")
    };
    exclusive(&mut me);
    resolve_queue(&mut me);
    // What every queue holds (bound pods) and asks for (this scheduler's pending pods).
    let mut counted: Vec<(PodInfo, bool)> = Vec::new();
    for p in &pods {
        let Ok(mut info) = pod_info(p) else { continue };
        exclusive(&mut info);
        resolve_queue(&mut info);
        if !info.phase.is_terminal() {
            match &info.node_name {
                Some(_) => counted.push((info.clone(), true)),
                None if info.scheduler_name == me.scheduler_name && !info.deleting => {
                    counted.push((info.clone(), false))
                }
                None => {}
            }
        }
        if info.scheduler_name == me.scheduler_name
            && info.gang.as_ref().is_some_and(|g| g.conflict.is_none())
        {
            let state = match (info.phase, &info.node_name) {
                (Phase::Succeeded, _) => MemberState::Succeeded,
                (Phase::Failed, _) => MemberState::Failed,
                (_, None) => MemberState::Pending,
                (p, Some(_)) => MemberState::Assigned {
                    running: p == Phase::Running,
                },
            };
            if !info.deleting || info.node_name.is_some() {
                gangs.observe(&info, state);
            }
        }
        if info.key != me.key {
            cache.upsert_pod(info);
        }
    }
    let status = PodStatus {
        bound_to: me.node_name.as_ref().map(|n| n.to_string()),
        unschedulable_message: target
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
            .and_then(|c| c.message.clone()),
    };
    // Explain the pod as if pending, so every node is judged on its merits.
    me.node_name = None;
    let snapshot = cache.snapshot();
    let pending = |g: &GangKey| -> Vec<Arc<PodInfo>> {
        let mut v: Vec<Arc<PodInfo>> = gangs
            .members_in(g, true)
            .iter()
            .filter_map(|k| {
                if *k == me.key {
                    Some(Arc::new(me.clone()))
                } else {
                    cache.pod(k).cloned()
                }
            })
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        v
    };
    let tree = QueueTree::build(queues.iter().filter_map(|q| queue(q).ok()));
    let usage = Usage::from_pods(&tree, counted.iter().map(|(p, placed)| (p, *placed)));
    let mut cluster = drover_core::model::Resources::default();
    for (_, n) in snapshot.nodes() {
        if n.known && !n.unschedulable {
            cluster.add(&n.allocatable);
        }
    }
    let fair = tree.fair_shares(&usage, &cluster);
    Ok(explain(
        &config.profile,
        &config.topology_levels,
        &me,
        &status,
        &snapshot,
        &gangs,
        &pending,
        &QuotaView {
            tree: &tree,
            usage: &usage,
            fair: &fair,
            source: &queue_source,
        },
    ))
}

/// Every object of a custom resource, or none when its CRD is not installed.
async fn list_if_served(
    client: &Client,
    resource: &kube::api::ApiResource,
) -> anyhow::Result<Vec<DynamicObject>> {
    match Api::<DynamicObject>::all_with(client.clone(), resource)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}
