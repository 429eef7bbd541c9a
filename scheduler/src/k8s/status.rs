//! What the scheduler tells users: the `PodScheduled` condition and Events.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;

use crate::gang::{GangKey, PodGroupInfo};
use crate::model::PodInfo;

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
    recorder: Recorder,
}

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
    /// A writer reporting as `controller` (the scheduler's name) from `instance`.
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: controller.into(),
                instance: Some(instance.into()),
            },
        );
        StatusWriter { client, recorder }
    }

    /// Sets `PodScheduled=False, reason=Unschedulable` with `message` (what
    /// cluster-autoscaler and Karpenter look for) and records a `FailedScheduling`
    /// Warning Event.
    pub async fn unschedulable(&self, pod: &PodInfo, message: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.key.namespace);
        let now = jiff_now();
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastTransitionTime": now, "lastProbeTime": null
        }]}});
        if let Err(e) = api
            .patch_status(
                &pod.key.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::warn!(pod = %pod.key, error = %e, "could not set the PodScheduled condition");
        }
        self.event(pod, EventType::Warning, "FailedScheduling", message)
            .await;
    }

    /// Merges `status` into the PodGroup's status subresource.
    pub async fn pod_group_status(&self, group: &GangKey, status: serde_json::Value) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &group.namespace, &pod_group_resource());
        let patch = json!({ "status": status });
        if let Err(e) = api
            .patch_status(&group.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(podgroup = %group, error = %e, "could not update the PodGroup status");
        }
    }

    /// Merges `status` into a Queue's status subresource.
    pub async fn queue_status(&self, queue: &str, status: serde_json::Value) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &queue_resource());
        let patch = json!({ "status": status });
        if let Err(e) = api
            .patch_status(queue, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(queue, error = %e, "could not update the Queue status");
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
        let r = ObjectReference {
            api_version: Some(format!("{POD_GROUP_GROUP}/{POD_GROUP_VERSION}")),
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
