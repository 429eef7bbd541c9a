//! `drover explain <namespace>/<pod>`: reads the cluster the way the scheduler does and
//! prints why the pod waits (or where else it could go), per node reason and for its
//! gang.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};

use crate::cache::ClusterCache;
use crate::config::{Config, FileConfig};
use crate::explain::{PodStatus, explain};
use crate::gang::{GangKey, GangTracker, MemberState};
use crate::model::{Phase, PodInfo};

use super::convert::{node_info, pod_group, pod_info};
use super::status::pod_group_resource;

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
        Some(p) => FileConfig::load(&p.to_string_lossy())?,
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
    let groups = match Api::<DynamicObject>::all_with(client.clone(), &pod_group_resource())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
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
    exclusive(&mut me);
    for p in &pods {
        let Ok(mut info) = pod_info(p) else { continue };
        exclusive(&mut info);
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
    Ok(explain(
        &config.profile,
        &config.topology_levels,
        &me,
        &status,
        &snapshot,
        &gangs,
        &pending,
    ))
}
