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
    print!("{}", explain_pod(&client, &config, ns, name).await?);
    Ok(())
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
