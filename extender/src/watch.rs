//! Watches that feed the extender's [`ClusterIndex`](crate::index::ClusterIndex):
//! pods (gang members, and what every pod on a node holds per queue), PodGroups and
//! Queues (when their CRDs are installed) and namespaces (their default queue).
//!
//! drover's own cache (`drover::k8s::run_with` with `cache_only`) keeps the node
//! snapshot; these watches add what the snapshot does not carry. A watch that fails
//! is retried with backoff and relists after 410 Gone; objects that vanished during a
//! relist are dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use drover::gang::GangKey;
use drover::k8s::convert::{pod_group, pod_info, queue};
use drover::k8s::status::{pod_group_resource, queue_resource};
use drover::model::PodKey;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::verbs::Extender;

const PODS: u8 = 1;
const GROUPS: u8 = 2;
const QUEUES: u8 = 4;
const NAMESPACES: u8 = 8;
const ALL: u8 = PODS | GROUPS | QUEUES | NAMESPACES;

/// Which watches have listed everything; the extender is ready when all have.
struct Synced {
    bits: AtomicU8,
    ext: Arc<Extender>,
}

impl Synced {
    fn set(&self, bit: u8) {
        let before = self.bits.fetch_or(bit, Ordering::SeqCst);
        if before | bit == ALL && before != ALL {
            tracing::info!("pods, PodGroups, Queues and namespaces listed");
            self.ext.set_index_synced(true);
        }
    }
}

/// Starts every watch; they run until `shutdown`.
pub fn spawn_watches(client: Client, ext: Arc<Extender>, shutdown: CancellationToken) {
    let synced = Arc::new(Synced {
        bits: AtomicU8::new(0),
        ext: ext.clone(),
    });

    let mut seen_pods: Option<HashSet<PodKey>> = None;
    spawn(
        Api::<Pod>::all(client.clone()),
        "pods",
        PODS,
        false,
        ext.clone(),
        synced.clone(),
        shutdown.clone(),
        move |ext, ev| match ev {
            watcher::Event::Init => seen_pods = Some(HashSet::new()),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => match pod_info(&p) {
                Ok(info) => {
                    if let Some(s) = seen_pods.as_mut() {
                        s.insert(info.key.clone());
                    }
                    ext.index().apply_pod(info);
                }
                Err(e) => tracing::debug!(error = %e, "skipping a pod drover cannot read"),
            },
            watcher::Event::Delete(p) => {
                if let Some(name) = p.metadata.name.as_deref() {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                    ext.index().delete_pod(&PodKey::new(ns, name));
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = seen_pods.take() {
                    let mut ix = ext.index();
                    for k in ix.pod_keys() {
                        if !seen.contains(&k) {
                            ix.delete_pod(&k);
                        }
                    }
                }
            }
        },
    );

    let mut seen_groups: Option<HashSet<GangKey>> = None;
    spawn(
        Api::<DynamicObject>::all_with(client.clone(), &pod_group_resource()),
        "podgroups",
        GROUPS,
        true,
        ext.clone(),
        synced.clone(),
        shutdown.clone(),
        move |ext, ev| match ev {
            watcher::Event::Init => seen_groups = Some(HashSet::new()),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => match pod_group(&o) {
                Ok(g) => {
                    if let Some(s) = seen_groups.as_mut() {
                        s.insert(g.key.clone());
                    }
                    ext.index().apply_group(g);
                }
                Err(e) => tracing::warn!(error = %e, "skipping a PodGroup drover cannot read"),
            },
            watcher::Event::Delete(o) => {
                if let (Some(ns), Some(name)) =
                    (o.metadata.namespace.as_deref(), o.metadata.name.as_deref())
                {
                    ext.index().delete_group(&GangKey::new(ns, name));
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = seen_groups.take() {
                    let mut ix = ext.index();
                    for k in ix.group_keys() {
                        if !seen.contains(&k) {
                            ix.delete_group(&k);
                        }
                    }
                }
            }
        },
    );

    let mut seen_queues: Option<HashSet<Arc<str>>> = None;
    spawn(
        Api::<DynamicObject>::all_with(client.clone(), &queue_resource()),
        "queues",
        QUEUES,
        true,
        ext.clone(),
        synced.clone(),
        shutdown.clone(),
        move |ext, ev| {
            let problems = match ev {
                watcher::Event::Init => {
                    seen_queues = Some(HashSet::new());
                    Vec::new()
                }
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => match queue(&o) {
                    Ok(q) => {
                        if let Some(s) = seen_queues.as_mut() {
                            s.insert(q.name.clone());
                        }
                        ext.index().apply_queue(q)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a Queue drover cannot read");
                        Vec::new()
                    }
                },
                watcher::Event::Delete(o) => match o.metadata.name.as_deref() {
                    Some(n) => ext.index().delete_queue(n),
                    None => Vec::new(),
                },
                watcher::Event::InitDone => {
                    let mut problems = Vec::new();
                    if let Some(seen) = seen_queues.take() {
                        let mut ix = ext.index();
                        for n in ix.queue_names() {
                            if !seen.contains(&n) {
                                problems.extend(ix.delete_queue(&n));
                            }
                        }
                    }
                    problems
                }
            };
            for p in problems {
                tracing::warn!(problem = %p, "invalid Queue");
            }
        },
    );

    let mut seen_namespaces: Option<HashSet<Arc<str>>> = None;
    spawn(
        Api::<Namespace>::all(client),
        "namespaces",
        NAMESPACES,
        false,
        ext.clone(),
        synced,
        shutdown,
        move |ext, ev| match ev {
            watcher::Event::Init => seen_namespaces = Some(HashSet::new()),
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    if let Some(s) = seen_namespaces.as_mut() {
                        s.insert(name.into());
                    }
                    let q = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(drover::quota::QUEUE_LABEL))
                        .filter(|v| !v.is_empty())
                        .map(|v| Arc::from(v.as_str()));
                    ext.index().set_namespace_queue(name, q);
                }
            }
            watcher::Event::Delete(n) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    ext.index().set_namespace_queue(name, None);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = seen_namespaces.take() {
                    let mut ix = ext.index();
                    for n in ix.namespaces() {
                        if !seen.contains(&n) {
                            ix.set_namespace_queue(&n, None);
                        }
                    }
                }
            }
        },
    );
}

/// Runs one watch, handing each event to `apply`. `optional`: the resource is a CRD
/// that may not be installed; a 404 then counts as listed (nothing to list), and the
/// watch keeps retrying in case it is installed later.
#[allow(clippy::too_many_arguments)]
fn spawn<K, F>(
    api: Api<K>,
    what: &'static str,
    bit: u8,
    optional: bool,
    ext: Arc<Extender>,
    synced: Arc<Synced>,
    shutdown: CancellationToken,
    mut apply: F,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: FnMut(&Extender, watcher::Event<K>) + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut absent_logged = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        let done = matches!(ev, watcher::Event::InitDone);
                        apply(&ext, ev);
                        if done {
                            synced.set(bit);
                        }
                    }
                    Some(Err(e)) if optional && is_not_found(&e) => {
                        if !absent_logged {
                            tracing::info!(what, "the CRD is not installed; working without it");
                            absent_logged = true;
                        }
                        synced.set(bit);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, what, "watch failed; retrying"),
                    None => return,
                }
            }
        }
    });
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}
