//! The watches that feed the extender's engine: the very watches `drover run` runs
//! ([`drover::k8s::watch`]), consumed by one task that hands each event to the engine
//! under its lock, lets its housekeeping run when due (a gang plan that lapsed, an
//! admission that ran out), and publishes the snapshot the verbs read.

use std::sync::Arc;
use std::time::Duration;

use drover::k8s::run::now_ms;
use drover::k8s::watch::{apply, spawn_watches};
use drover::metrics::Metrics;
use kube::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::verbs::Extender;

/// At most this many events are applied under one hold of the engine's lock, so
/// that a verb waits for the lock no longer than that takes.
const BATCH: usize = 256;

/// Starts every watch and the task that feeds them to the engine; they run until
/// `shutdown`.
pub fn spawn_watches_into(
    client: &Client,
    ext: Arc<Extender>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_watches(client, &tx, &shutdown);
    tokio::spawn(async move {
        let mut announced = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    let now = now_ms();
                    let mut engine = ext.engine();
                    let mut input = Some(first);
                    let mut n = 0;
                    while let Some(i) = input.take() {
                        // Results and leadership never reach the extender's channel.
                        let _ = apply(&mut engine, i, now, &metrics);
                        n += 1;
                        if n < BATCH {
                            input = rx.try_recv().ok();
                        }
                    }
                    if engine.poll_timeout().is_some_and(|t| t <= now) {
                        engine.handle_timeout(now);
                    }
                    if !announced && engine.synced() {
                        announced = true;
                        tracing::info!(nodes = engine.snapshot().node_count(), "pods, nodes, PodGroups, Queues and namespaces listed");
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    // Housekeeping in a quiet cluster: plans and admissions lapse on time.
                    let now = now_ms();
                    let mut engine = ext.engine();
                    if engine.poll_timeout().is_some_and(|t| t <= now) {
                        engine.handle_timeout(now);
                    }
                }
            }
        }
    })
}
