//! What the scheduler tells users: the `PodScheduled` condition and Events.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Reporter};

use super::events::EventRecorder;
use serde_json::json;

use drover_core::engine::{PodGroupStatus, QueueStatus};
use drover_core::gang::{Dialect, GangKey, GangPhase, PodGroupInfo};
use drover_core::model::{PodInfo, PodKey, Resources};

/// The API group of `PodGroup`.
pub const POD_GROUP_GROUP: &str = "scheduling.x-k8s.io";
/// The version of `PodGroup` drover reads.
pub const POD_GROUP_VERSION: &str = "v1alpha1";

/// `NodeResourceTopology` (node-feature-discovery) as an untyped API resource.
pub fn node_resource_topology_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("topology.node.k8s.io", "v1alpha2", "NodeResourceTopology"),
        "noderesourcetopologies",
    )
}

/// drover's `Queue` (`drover.dev/v1alpha1`, cluster-scoped) as an untyped API resource.
pub fn queue_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("drover.dev", "v1alpha1", "Queue"),
        "queues",
    )
}

/// Volcano's `PodGroup` (`scheduling.volcano.sh/v1beta1`) as an untyped API resource.
pub fn volcano_pod_group_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup"),
        "podgroups",
    )
}

/// `PodGroup` as an untyped API resource.
pub fn pod_group_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(POD_GROUP_GROUP, POD_GROUP_VERSION, "PodGroup"),
        "podgroups",
    )
}

/// Writes conditions and Events for pods.
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
    recorder: std::sync::Arc<EventRecorder>,
    /// Writes under way (see [`StatusWriter::spawn`]).
    tasks: tokio_util::task::TaskTracker,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: prometheus::IntCounter,
}

/// At most this many status writes and Events wait at once; beyond, new ones are
/// dropped (and counted) rather than kept in memory without bound.
pub const MAX_PENDING_WRITES: usize = 10_000;

fn reference(pod: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.key.name.to_string()),
        namespace: Some(pod.key.namespace.to_string()),
        uid: Some(pod.uid.to_string()).filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

impl StatusWriter {
    /// A writer reporting as `controller` (the scheduler's name) from `instance`;
    /// writes dropped because too many wait are counted in `dropped`.
    pub fn new(
        client: Client,
        controller: &str,
        instance: &str,
        dropped: prometheus::IntCounter,
    ) -> Self {
        let recorder = std::sync::Arc::new(EventRecorder::new(
            client.clone(),
            Reporter {
                controller: controller.into(),
                instance: Some(instance.into()),
            },
        ));
        StatusWriter {
            client,
            recorder,
            tasks: tokio_util::task::TaskTracker::new(),
            pending: Default::default(),
            dropped,
        }
    }

    /// Runs `write` (an Event, a condition, an eviction) in the background, tracked so
    /// that [`StatusWriter::flush`] can wait for it. Drops it when
    /// [`MAX_PENDING_WRITES`] already wait.
    pub fn spawn<F>(&self, write: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        if self.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_WRITES {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            if self.dropped.get() == 0 {
                tracing::warn!(
                    max = MAX_PENDING_WRITES,
                    "too many Events and status writes waiting; dropping new ones (drover_status_writes_dropped_total)"
                );
            }
            self.dropped.inc();
            return;
        }
        let pending = self.pending.clone();
        self.tasks.spawn(async move {
            write.await;
            pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Waits (at most `limit`) for the writes under way, so that the Events of the
    /// last pods bound are not lost when drover stops.
    pub async fn flush(&self, limit: std::time::Duration) {
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "stopping with Events or status writes unfinished"
            );
        }
    }

    /// Merges `status` into the status subresource of `target` (a strategic merge
    /// for a pod, so that its other conditions stay). Errors are logged here; the
    /// caller decides whether to try again.
    pub async fn write_status(
        &self,
        target: &StatusTarget,
        status: &serde_json::Value,
    ) -> Result<(), kube::Error> {
        let patch = json!({ "status": status });
        let params = PatchParams::default();
        let written = match target {
            StatusTarget::PodGroup(g) | StatusTarget::VolcanoPodGroup(g) => {
                let resource = match target {
                    StatusTarget::VolcanoPodGroup(_) => volcano_pod_group_resource(),
                    _ => pod_group_resource(),
                };
                Api::<DynamicObject>::namespaced_with(self.client.clone(), &g.namespace, &resource)
            }
            .patch_status(&g.name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
            StatusTarget::Queue(q) => {
                Api::<DynamicObject>::all_with(self.client.clone(), &queue_resource())
                    .patch_status(q, &params, &Patch::Merge(&patch))
                    .await
                    .map(drop)
            }
            StatusTarget::Pod(p) | StatusTarget::Nominated(p) => {
                Api::<Pod>::namespaced(self.client.clone(), &p.namespace)
                    .patch_status(&p.name, &params, &Patch::Strategic(&patch))
                    .await
                    .map(drop)
            }
        };
        match written {
            Ok(_) => Ok(()),
            // The object is gone: nothing to write, nothing to retry.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => {
                tracing::warn!(object = ?target, error = %e, "could not update the status");
                Err(e)
            }
        }
    }

    /// Records an Event on a PodGroup.
    pub async fn pod_group_event(
        &self,
        group: &PodGroupInfo,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let api_version = match group.dialect {
            Dialect::SchedulerPlugins => format!("{POD_GROUP_GROUP}/{POD_GROUP_VERSION}"),
            Dialect::Volcano => "scheduling.volcano.sh/v1beta1".to_string(),
        };
        let r = ObjectReference {
            api_version: Some(api_version),
            kind: Some("PodGroup".into()),
            name: Some(group.key.name.to_string()),
            namespace: Some(group.key.namespace.to_string()),
            uid: Some(group.uid.to_string()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &r).await {
            tracing::warn!(podgroup = %group.key, error = %e, reason, "could not record an Event");
        }
    }

    /// Records an Event on the pod.
    pub async fn event(&self, pod: &PodInfo, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference(pod)).await {
            tracing::warn!(pod = %pod.key, error = %e, reason, "could not record an Event");
        }
    }
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An object whose status subresource drover writes. The sink writes them in
/// this order, so a flood of pod conditions never holds up PodGroups and Queues.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusTarget {
    /// A PodGroup.
    PodGroup(GangKey),
    /// A Volcano PodGroup.
    VolcanoPodGroup(GangKey),
    /// A Queue (cluster-scoped).
    Queue(String),
    /// A pod's `PodScheduled` condition (see [`unschedulable_condition`]).
    Pod(PodKey),
    /// A pod's `status.nominatedNodeName` (see [`nominated_node`]).
    Nominated(PodKey),
}

/// The status that sets a pod's `nominatedNodeName`, or clears it (`None`).
pub fn nominated_node(node: Option<&str>) -> serde_json::Value {
    json!({ "nominatedNodeName": node })
}

/// The status that sets a pod's `PodScheduled=False, reason=Unschedulable` with
/// `message`: what cluster-autoscaler and Karpenter look for.
pub fn unschedulable_condition(message: &str) -> serde_json::Value {
    json!({"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastTransitionTime": jiff_now(), "lastProbeTime": null
    }]})
}

fn timestamp(ms: i64) -> Option<String> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()?
        .round(k8s_openapi::jiff::Unit::Second)
        .ok()
        .map(|t| t.to_string())
}

/// A PodGroup's `status`, as scheduler-plugins writes it.
pub fn pod_group_status(s: &PodGroupStatus) -> serde_json::Value {
    if s.dialect == Dialect::Volcano {
        return volcano_pod_group_status(s);
    }
    let mut status = json!({
        "phase": s.phase.as_str(),
        "scheduled": s.scheduled,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
    });
    let start = s.schedule_start_ms.and_then(timestamp);
    if let Some(t) = &start {
        status["scheduleStartTime"] = t.clone().into();
    }
    let mut conditions = Vec::new();
    if s.timed_out {
        conditions.push(json!({
            "type": "ScheduleTimedOut",
            "status": "True",
            "reason": "ScheduleTimeout",
            "message": "not placed within scheduleTimeoutSeconds; members keep waiting",
            "lastTransitionTime": start.clone().unwrap_or_default(),
        }));
    }
    if let Some(message) = &s.invalid {
        conditions.push(json!({
            "type": "Invalid",
            "status": "True",
            "reason": "InvalidSpec",
            "message": message,
            "lastTransitionTime": timestamp(crate::k8s::run::now_ms()).unwrap_or_default(),
        }));
    }
    if !conditions.is_empty() {
        status["conditions"] = conditions.into();
    }
    status
}

/// A Volcano PodGroup's `status`: `phase` as Volcano's controllers read it —
/// `Pending` until admitted, `Inqueue` once its minResources fit its queue and the
/// cluster's free room (training-operator in Volcano mode creates the pods only then),
/// `Running` with minMember members running, `Completed` when they succeeded,
/// `Unknown` when members failed and too few are left — and the member counts.
pub fn volcano_pod_group_status(s: &PodGroupStatus) -> serde_json::Value {
    let phase = match s.phase {
        GangPhase::Running => "Running",
        GangPhase::Finished => "Completed",
        GangPhase::Failed => "Unknown",
        GangPhase::Pending | GangPhase::Scheduling if s.admitted => "Inqueue",
        GangPhase::Pending | GangPhase::Scheduling => "Pending",
    };
    let mut status = json!({
        "phase": phase,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
    });
    let mut conditions = Vec::new();
    if let Some(message) = &s.invalid {
        conditions.push(json!({
            "type": "Unschedulable",
            "status": "True",
            "reason": "InvalidSpec",
            "message": message,
            "lastTransitionTime": timestamp(crate::k8s::run::now_ms()).unwrap_or_default(),
        }));
    }
    if s.timed_out {
        conditions.push(json!({
            "type": "Unschedulable",
            "status": "True",
            "reason": "ScheduleTimeout",
            "message": "not placed within scheduleTimeoutSeconds; members keep waiting",
            "lastTransitionTime": timestamp(crate::k8s::run::now_ms()).unwrap_or_default(),
        }));
    }
    if !conditions.is_empty() {
        status["conditions"] = conditions.into();
    }
    status
}

fn quantities(r: &Resources) -> serde_json::Value {
    r.iter()
        .map(|(k, v)| {
            (
                k.name().to_string(),
                serde_json::Value::from(drover_core::quantity::format_quantity(&k, v)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A Queue's `status`.
pub fn queue_status(s: &QueueStatus) -> serde_json::Value {
    match s {
        QueueStatus::Valid {
            allocated,
            pending,
            fair_share,
            dominant_permille,
        } => json!({
            "allocated": quantities(allocated),
            "pending": quantities(pending),
            "fairShare": quantities(fair_share),
            "dominantShare": format!("{:.3}", *dominant_permille as f64 / 1000.0),
            "conditions": [{"type": "Valid", "status": "True", "reason": "Valid", "message": ""}],
        }),
        QueueStatus::Invalid { message } => json!({
            "conditions": [{"type": "Valid", "status": "False", "reason": "Invalid", "message": message}],
        }),
    }
}

enum StatusCmd {
    Write(StatusTarget, serde_json::Value),
    /// Drop every write not yet made (leadership lost).
    Clear,
}

/// Status writes in order, one object at a time, the latest value per object
/// winning: two patches for the same PodGroup, or two messages for the same
/// unschedulable pod, can never land out of order and leave the older behind. A failed write is retried (a few times, with a
/// pause) unless a newer value for the same object has arrived meanwhile.
#[derive(Clone)]
pub struct StatusSink {
    tx: tokio::sync::mpsc::UnboundedSender<StatusCmd>,
}

/// Attempts per write before it is given up (the next change writes again).
const STATUS_ATTEMPTS: u32 = 5;

impl StatusSink {
    /// Starts the writing task.
    pub fn spawn(writer: StatusWriter) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pending: std::collections::BTreeMap<StatusTarget, (serde_json::Value, u32)> =
                Default::default();
            loop {
                if pending.is_empty() {
                    match rx.recv().await {
                        Some(cmd) => apply(&mut pending, cmd),
                        None => return,
                    }
                }
                while let Ok(cmd) = rx.try_recv() {
                    apply(&mut pending, cmd);
                }
                let Some((target, (value, tries))) = pending.pop_first() else {
                    continue;
                };
                if writer.write_status(&target, &value).await.is_ok() {
                    continue;
                }
                if tries + 1 < STATUS_ATTEMPTS {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    // A newer value that arrived meanwhile replaces this one.
                    while let Ok(cmd) = rx.try_recv() {
                        apply(&mut pending, cmd);
                    }
                    pending.entry(target).or_insert((value, tries + 1));
                }
            }
        });
        StatusSink { tx }
    }

    /// Queues `status` (merged into the object's status) for writing.
    pub fn write(&self, target: StatusTarget, status: serde_json::Value) {
        let _ = self.tx.send(StatusCmd::Write(target, status));
    }

    /// Drops every write not yet made.
    pub fn clear(&self) {
        let _ = self.tx.send(StatusCmd::Clear);
    }
}

fn apply(
    pending: &mut std::collections::BTreeMap<StatusTarget, (serde_json::Value, u32)>,
    cmd: StatusCmd,
) {
    match cmd {
        StatusCmd::Write(t, v) => {
            pending.insert(t, (v, 0));
        }
        StatusCmd::Clear => pending.clear(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose client is never used (nothing here talks to a server).
    fn writer() -> StatusWriter {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URI"));
        let client = Client::try_from(config).expect("a client");
        let dropped = prometheus::IntCounter::new("dropped", "dropped").expect("metric");
        StatusWriter::new(client, "drover", "test", dropped)
    }

    #[tokio::test]
    async fn writes_wait_bounded_and_are_flushed() {
        let w = writer();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..MAX_PENDING_WRITES + 3 {
            let (gate, done) = (gate.clone(), done.clone());
            w.spawn(async move {
                let _ = gate.acquire().await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // Three beyond the bound were dropped and counted; the rest wait.
        assert_eq!(w.dropped.get(), 3);
        gate.add_permits(MAX_PENDING_WRITES);
        w.flush(std::time::Duration::from_secs(10)).await;
        assert_eq!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            MAX_PENDING_WRITES
        );
        assert_eq!(w.pending.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn the_latest_value_per_object_wins_and_pod_conditions_come_last() {
        let mut pending = std::collections::BTreeMap::new();
        let pod = StatusTarget::Pod(PodKey::new("ns", "p"));
        let queue = StatusTarget::Queue("q".into());
        let older = unschedulable_condition("gang ns/g: 4 of minMember 6 pods exist");
        let newer = unschedulable_condition("gang ns/g: 3/6 members placeable at once");
        apply(&mut pending, StatusCmd::Write(pod.clone(), older));
        apply(
            &mut pending,
            StatusCmd::Write(queue.clone(), json!({"x": 1})),
        );
        apply(&mut pending, StatusCmd::Write(pod.clone(), newer.clone()));
        assert_eq!(pending.len(), 2);
        assert_eq!(pending.pop_first().map(|(t, _)| t), Some(queue));
        assert_eq!(pending.pop_first(), Some((pod, (newer.clone(), 0))));
        assert_eq!(
            newer["conditions"][0]["message"],
            "gang ns/g: 3/6 members placeable at once"
        );
        assert_eq!(newer["conditions"][0]["reason"], "Unschedulable");
        apply(
            &mut pending,
            StatusCmd::Write(StatusTarget::Queue("q".into()), json!({})),
        );
        apply(&mut pending, StatusCmd::Clear);
        assert!(pending.is_empty());
    }
}
