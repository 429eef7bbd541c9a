//! What the scheduler tells users: the `PodScheduled` condition and Events.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;

use crate::model::PodInfo;

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
