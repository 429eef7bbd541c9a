//! The watches every driver on a cluster runs (`drover run` and `drover-extender`
//! alike), and their translation into the engine's events.
//!
//! Each watch sends what it sees down one channel; [`apply`] converts the objects
//! into the core's model and hands them to the [`Engine`]. A watch that fails is
//! retried with backoff and relists after 410 Gone (the engine drops whatever the
//! relist no longer shows); a resource the API server does not serve (a CRD that is
//! not installed) is reported once, and drover works without it.

use drover_core::engine::{BindResult, Engine, EvictionResult, Resource};
use drover_core::gang::{Dialect, GangKey};
use drover_core::model::{ClaimKey, PodKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::resource::v1::ResourceClaim;
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::convert::{
    disruption_budget, node_info, node_resource_topology, pod_group, pod_identity, pod_info, queue,
    unreadable_queue, volcano_pod_group,
};
use super::status::{
    node_resource_topology_resource, pod_group_resource, queue_resource, volcano_pod_group_resource,
};
use super::volumes;
use crate::metrics::Metrics;

/// What reaches a driver's loop: watch events, and the results of its own actions.
#[derive(Debug)]
pub enum Input {
    /// A pod watch event.
    Pod(Box<watcher::Event<Pod>>),
    /// A node watch event.
    Node(Box<watcher::Event<Node>>),
    /// A PodGroup watch event.
    Group(Dialect, Box<watcher::Event<DynamicObject>>),
    /// A Queue watch event.
    Queue(Box<watcher::Event<DynamicObject>>),
    /// A namespace watch event.
    Namespace(Box<watcher::Event<Namespace>>),
    /// A PodDisruptionBudget watch event.
    Budget(Box<watcher::Event<PodDisruptionBudget>>),
    /// A NodeResourceTopology watch event.
    Topology(Box<watcher::Event<DynamicObject>>),
    /// A PersistentVolumeClaim watch event.
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    /// A PersistentVolume watch event.
    Volume(Box<watcher::Event<PersistentVolume>>),
    /// A StorageClass watch event.
    StorageClass(Box<watcher::Event<StorageClass>>),
    /// A CSINode watch event.
    CsiNode(Box<watcher::Event<CSINode>>),
    /// A ResourceClaim watch event.
    DeviceClaim(Box<watcher::Event<ResourceClaim>>),
    /// The API server does not serve this resource.
    NotServed(Resource),
    /// This replica became the leader (true) or lost the Lease (false).
    Leader(bool),
    /// `/debug/pods/...` asks what the engine holds about a pod and would do with it.
    Explain {
        /// The pod.
        key: drover_core::model::PodKey,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<drover_core::engine::DecisionState>,
    },
    /// A bind the driver made ended.
    Bound {
        /// The pod.
        key: PodKey,
        /// Its creation time (ms), for the end-to-end latency.
        created_ms: i64,
        /// How it ended.
        result: BindResult,
    },
    /// An eviction the driver made ended.
    Evicted {
        /// The pod.
        key: PodKey,
        /// How it ended.
        result: EvictionResult,
    },
}

/// How soon a failed watch is tried again: 200 ms, doubling to 1.6 s, back to 200 ms
/// once one succeeds. A scheduler's watches must come back within a couple of seconds
/// of the API server (kube-rs's default grows to 30 s, so pods created after an API
/// server restart waited up to 10 s); at one retry per watch per 1.6 s, a down API
/// server sees about ten requests a second from drover.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

/// The first retry delay of [`WatchBackoff`].
pub const WATCH_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest retry delay of [`WatchBackoff`].
pub const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(1600);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_RETRY_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(WATCH_RETRY_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_MIN;
    }
}

fn spawn_one<K, F>(
    api: Api<K>,
    resource: Resource,
    tx: mpsc::UnboundedSender<Input>,
    wrap: F,
    shutdown: CancellationToken,
    optional: bool,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(watcher::Event<K>) -> Input + Send + 'static,
{
    tokio::spawn(async move {
        // Failed watches are retried (and relisted after 410 Gone) within 1.6 s.
        let mut stream = watcher(api, watcher::Config::default())
            .backoff(WatchBackoff::default())
            .boxed();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => if tx.send(wrap(ev)).is_err() { return },
                    Some(Err(e)) if optional && is_not_found(&e) => {
                        tracing::debug!(?resource, "resource not served; retrying later");
                        if tx.send(Input::NotServed(resource)).is_err() { return }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, ?resource, "watch failed; retrying"),
                    None => return,
                }
            }
        }
    });
}

/// A PodGroup drover cannot read, as its gang knows it: the problem and no more.
fn unreadable_pod_group(
    obj: &DynamicObject,
    err: &crate::k8s::convert::ConvertError,
    dialect: Dialect,
) -> Option<drover_core::gang::PodGroupInfo> {
    let name = obj.metadata.name.as_deref()?;
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let problem = match err {
        crate::k8s::convert::ConvertError::Field { problem, .. } => problem.clone(),
        e => e.to_string(),
    };
    Some(drover_core::gang::PodGroupInfo {
        key: GangKey::new(ns, name),
        dialect,
        uid: obj.metadata.uid.as_deref().unwrap_or("").into(),
        problem: Some(problem.into()),
        ..Default::default()
    })
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Starts every watch; they send to `tx` until `shutdown`.
pub fn spawn_watches(
    client: &Client,
    tx: &mpsc::UnboundedSender<Input>,
    shutdown: &CancellationToken,
) {
    let (c, s) = (client.clone(), shutdown.clone());
    spawn_one(
        Api::<Pod>::all(c.clone()),
        Resource::Pods,
        tx.clone(),
        |e| Input::Pod(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<Node>::all(c.clone()),
        Resource::Nodes,
        tx.clone(),
        |e| Input::Node(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<DynamicObject>::all_with(c.clone(), &pod_group_resource()),
        Resource::PodGroups,
        tx.clone(),
        |e| Input::Group(Dialect::SchedulerPlugins, Box::new(e)),
        s.clone(),
        true,
    );
    spawn_one(
        Api::<DynamicObject>::all_with(c.clone(), &volcano_pod_group_resource()),
        Resource::VolcanoPodGroups,
        tx.clone(),
        |e| Input::Group(Dialect::Volcano, Box::new(e)),
        s.clone(),
        true,
    );
    spawn_one(
        Api::<DynamicObject>::all_with(c.clone(), &queue_resource()),
        Resource::Queues,
        tx.clone(),
        |e| Input::Queue(Box::new(e)),
        s.clone(),
        true,
    );
    spawn_one(
        Api::<DynamicObject>::all_with(c.clone(), &node_resource_topology_resource()),
        Resource::NodeTopologies,
        tx.clone(),
        |e| Input::Topology(Box::new(e)),
        s.clone(),
        true,
    );
    spawn_one(
        Api::<Namespace>::all(c.clone()),
        Resource::Namespaces,
        tx.clone(),
        |e| Input::Namespace(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<PodDisruptionBudget>::all(c.clone()),
        Resource::Budgets,
        tx.clone(),
        |e| Input::Budget(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<PersistentVolumeClaim>::all(c.clone()),
        Resource::Claims,
        tx.clone(),
        |e| Input::Claim(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<PersistentVolume>::all(c.clone()),
        Resource::PersistentVolumes,
        tx.clone(),
        |e| Input::Volume(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<StorageClass>::all(c.clone()),
        Resource::StorageClasses,
        tx.clone(),
        |e| Input::StorageClass(Box::new(e)),
        s.clone(),
        false,
    );
    spawn_one(
        Api::<CSINode>::all(c.clone()),
        Resource::CsiNodes,
        tx.clone(),
        |e| Input::CsiNode(Box::new(e)),
        s.clone(),
        false,
    );
    // resource.k8s.io/v1 is served from Kubernetes 1.34 on.
    spawn_one(
        Api::<ResourceClaim>::all(c),
        Resource::ResourceClaims,
        tx.clone(),
        |e| Input::DeviceClaim(Box::new(e)),
        s,
        true,
    );
}

/// Feeds one watch event of `resource` to the engine: `apply` for an object seen,
/// `delete` for one gone, relists bracketed.
fn feed<K>(
    engine: &mut Engine,
    resource: Resource,
    ev: watcher::Event<K>,
    now: i64,
    mut apply: impl FnMut(&mut Engine, K),
    mut delete: impl FnMut(&mut Engine, K),
) {
    match ev {
        watcher::Event::Init => engine.handle_list_started(resource),
        watcher::Event::InitApply(o) | watcher::Event::Apply(o) => apply(engine, o),
        watcher::Event::Delete(o) => delete(engine, o),
        watcher::Event::InitDone => engine.handle_list_done(resource, now),
    }
}

fn unreadable(metrics: &Metrics, what: &str, error: &dyn std::fmt::Display) {
    metrics.malformed_objects.inc();
    tracing::warn!(error = %error, "skipping a {what} drover cannot read");
}

/// Hands a watch event to the engine, converted; returns the input back when it is
/// not a watch event (a result or leadership, which the driver handles).
pub fn apply(engine: &mut Engine, input: Input, now: i64, metrics: &Metrics) -> Option<Input> {
    match input {
        Input::Pod(ev) => feed(
            engine,
            Resource::Pods,
            *ev,
            now,
            |e, p| match pod_info(&p) {
                Ok(info) => e.handle_pod(info, now),
                Err(err) => {
                    unreadable(metrics, "pod", &err);
                    if let Ok(info) = pod_identity(&p) {
                        e.handle_unreadable_pod(info, &err.to_string(), now);
                    }
                }
            },
            |e, p| {
                if let Some(name) = p.metadata.name.as_deref() {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                    e.handle_pod_deleted(&PodKey::new(ns, name), now);
                }
            },
        ),
        Input::Node(ev) => feed(
            engine,
            Resource::Nodes,
            *ev,
            now,
            |e, n| match node_info(&n) {
                Ok(info) => e.handle_node(info, now),
                Err(err) => unreadable(metrics, "node", &err),
            },
            |e, n| {
                if let Some(name) = n.metadata.name.as_deref() {
                    e.handle_node_deleted(name, now);
                }
            },
        ),
        Input::Group(dialect, ev) => feed(
            engine,
            match dialect {
                Dialect::SchedulerPlugins => Resource::PodGroups,
                Dialect::Volcano => Resource::VolcanoPodGroups,
            },
            *ev,
            now,
            |e, g| {
                let read = match dialect {
                    Dialect::SchedulerPlugins => pod_group(&g),
                    Dialect::Volcano => volcano_pod_group(&g),
                };
                match read {
                    Ok(info) => e.handle_pod_group(info, now),
                    Err(err) => {
                        unreadable(metrics, "PodGroup", &err);
                        // Its gang waits naming what is wrong, rather than "not found".
                        if let Some(info) = unreadable_pod_group(&g, &err, dialect) {
                            e.handle_pod_group(info, now);
                        }
                    }
                }
            },
            |e, g| {
                if let (Some(ns), Some(name)) =
                    (g.metadata.namespace.as_deref(), g.metadata.name.as_deref())
                {
                    e.handle_pod_group_deleted(&GangKey::new(ns, name), now);
                }
            },
        ),
        Input::Queue(ev) => feed(
            engine,
            Resource::Queues,
            *ev,
            now,
            |e, q| match queue(&q) {
                Ok(spec) => e.handle_queue(spec, now),
                Err(err) => {
                    unreadable(metrics, "Queue", &err);
                    // Its pods wait naming what is wrong; the Queue's status says it.
                    if let Some(spec) = unreadable_queue(&q, &err) {
                        e.handle_queue(spec, now);
                    }
                }
            },
            |e, q| {
                if let Some(name) = q.metadata.name.as_deref() {
                    e.handle_queue_deleted(name, now);
                }
            },
        ),
        Input::Namespace(ev) => feed(
            engine,
            Resource::Namespaces,
            *ev,
            now,
            |e, n| {
                if let Some(name) = n.metadata.name.as_deref() {
                    let labels = drover_core::model::Labels::new(
                        n.metadata
                            .labels
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    );
                    e.handle_namespace(name, Some(labels), now);
                }
            },
            |e, n| {
                if let Some(name) = n.metadata.name.as_deref() {
                    e.handle_namespace(name, None, now);
                }
            },
        ),
        Input::Budget(ev) => {
            let key = |p: &PodDisruptionBudget| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or("")
                )
            };
            feed(
                engine,
                Resource::Budgets,
                *ev,
                now,
                |e, p| e.handle_budget(&key(&p), disruption_budget(&p)),
                |e, p| e.handle_budget(&key(&p), None),
            )
        }
        Input::Topology(ev) => feed(
            engine,
            Resource::NodeTopologies,
            *ev,
            now,
            |e, o| match node_resource_topology(&o) {
                Ok((node, numa)) => e.handle_node_topology(&node, Some(numa), now),
                Err(err) => unreadable(metrics, "NodeResourceTopology", &err),
            },
            |e, o| {
                if let Some(n) = o.metadata.name.as_deref() {
                    e.handle_node_topology(n, None, now);
                }
            },
        ),
        Input::Claim(ev) => feed(
            engine,
            Resource::Claims,
            *ev,
            now,
            |e, c| match volumes::claim(&c) {
                Ok((key, claim)) => e.handle_claim(key, Some(claim), now),
                Err(err) => unreadable(metrics, "PersistentVolumeClaim", &err),
            },
            |e, c| {
                if let Some(name) = c.metadata.name.as_deref() {
                    let ns = c.metadata.namespace.as_deref().unwrap_or("default");
                    e.handle_claim(ClaimKey::new(ns, name), None, now);
                }
            },
        ),
        Input::Volume(ev) => feed(
            engine,
            Resource::PersistentVolumes,
            *ev,
            now,
            |e, v| match volumes::volume(&v) {
                Ok((name, v)) => e.handle_volume(&name, Some(v), now),
                Err(err) => unreadable(metrics, "PersistentVolume", &err),
            },
            |e, v| {
                if let Some(name) = v.metadata.name.as_deref() {
                    e.handle_volume(name, None, now);
                }
            },
        ),
        Input::StorageClass(ev) => feed(
            engine,
            Resource::StorageClasses,
            *ev,
            now,
            |e, c| match volumes::storage_class(&c) {
                Ok((name, c)) => e.handle_storage_class(&name, Some(c), now),
                Err(err) => unreadable(metrics, "StorageClass", &err),
            },
            |e, c| {
                if let Some(name) = c.metadata.name.as_deref() {
                    e.handle_storage_class(name, None, now);
                }
            },
        ),
        Input::CsiNode(ev) => feed(
            engine,
            Resource::CsiNodes,
            *ev,
            now,
            |e, c| match volumes::csi_node(&c) {
                Ok((name, c)) => e.handle_csi_node(&name, Some(c), now),
                Err(err) => unreadable(metrics, "CSINode", &err),
            },
            |e, c| {
                if let Some(name) = c.metadata.name.as_deref() {
                    e.handle_csi_node(name, None, now);
                }
            },
        ),
        Input::DeviceClaim(ev) => feed(
            engine,
            Resource::ResourceClaims,
            *ev,
            now,
            |e, c| match volumes::device_claim(&c) {
                Ok((key, claim)) => e.handle_device_claim(key, Some(claim), now),
                Err(err) => unreadable(metrics, "ResourceClaim", &err),
            },
            |e, c| {
                if let Some(name) = c.metadata.name.as_deref() {
                    let ns = c.metadata.namespace.as_deref().unwrap_or("default");
                    e.handle_device_claim(ClaimKey::new(ns, name), None, now);
                }
            },
        ),
        Input::NotServed(r) => engine.handle_not_served(r),
        other => return Some(other),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_retries_stay_within_two_seconds_and_reset() {
        let mut b = WatchBackoff::default();
        let first: Vec<u128> = b.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(first, [200, 400, 800, 1600, 1600, 1600]);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_RETRY_MIN));
    }
}
