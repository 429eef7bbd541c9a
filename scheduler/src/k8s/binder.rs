//! Binding pods to nodes through the `binding` subresource, and their waiting claims to
//! volumes before that.

use k8s_openapi::api::core::v1::{
    Binding, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use drover_core::engine::BindResult;
use drover_core::model::{ClaimKey, PodInfo, PodKey, VolumeChoice};

use super::volumes::{BOUND_BY_CONTROLLER, SELECTED_NODE, binding_completed};

/// Binds `key` (with UID `uid`, so a recreated pod is never bound by mistake) to `node`.
/// A 409 (already bound, or recreated) or 404 (deleted) is [`BindResult::Gone`]; an
/// error that leaves the outcome open (no answer, a 504) is [`BindResult::Unknown`].
pub async fn bind(client: Client, key: &PodKey, uid: &str, node: &str) -> BindResult {
    let api: Api<Pod> = Api::namespaced(client, &key.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(key.name.to_string()),
            namespace: Some(key.namespace.to_string()),
            uid: Some(uid.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    match api
        .create_subresource::<_, kube::core::Status>(
            "binding",
            &key.name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => BindResult::Bound,
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            BindResult::Gone(s.message.clone())
        }
        // The server said it did not bind.
        Err(kube::Error::Api(s)) if s.code != 504 => BindResult::Failed(s.message.clone()),
        // No connection to send it on (the API server is down or restarting): it was
        // never sent, so it is retried as soon as the back-off allows.
        Err(e) if never_sent(&e) => BindResult::Failed(e.to_string()),
        // A gateway timeout, a dropped connection, a client timeout: it may have landed.
        Err(e) => BindResult::Unknown(e.to_string()),
    }
}

/// The request could not even connect: the server never saw it.
fn never_sent(e: &kube::Error) -> bool {
    match e {
        kube::Error::Service(e) => e
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect()),
        _ => false,
    }
}

/// How often a bind that waits for its claims looks at them.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Carries out `choices` before a pod binds, as kube-scheduler's VolumeBinding PreBind
/// does: binds each chosen volume to its claim (the volume's `claimRef`, under its
/// resourceVersion) or asks the claim's provisioner for a volume on the node
/// (`volume.kubernetes.io/selected-node`), then waits until the volume controller shows
/// every claim bound. On failure or after `timeout` it undoes what it wrote to claims
/// still unbound and says why.
pub async fn bind_volumes(
    client: Client,
    choices: &[VolumeChoice],
    timeout: std::time::Duration,
) -> Result<(), String> {
    let result = match write_choices(&client, choices).await {
        Ok(()) => tokio::time::timeout(timeout, wait_bound(&client, choices))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "claims {} did not bind within binding.volumeBindTimeoutSeconds ({}s)",
                    claim_list(choices),
                    timeout.as_secs()
                ))
            }),
        Err(e) => Err(e),
    };
    if result.is_err() {
        undo(&client, choices).await;
    }
    result
}

fn claim_list(choices: &[VolumeChoice]) -> String {
    choices
        .iter()
        .map(|c| c.claim().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn claims_api(client: &Client, claim: &ClaimKey) -> Api<PersistentVolumeClaim> {
    Api::namespaced(client.clone(), &claim.namespace)
}

async fn write_choices(client: &Client, choices: &[VolumeChoice]) -> Result<(), String> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for c in choices {
        match c {
            VolumeChoice::Bind { claim, uid, volume } => {
                let pv = pvs
                    .get(volume)
                    .await
                    .map_err(|e| format!("reading persistentvolume {volume}: {e}"))?;
                let current = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                if let Some(r) = current {
                    let ours = r.namespace.as_deref() == Some(&*claim.namespace)
                        && r.name.as_deref() == Some(&*claim.name);
                    if ours {
                        continue;
                    }
                    return Err(format!(
                        "persistentvolume {volume} was claimed by {}/{} meanwhile",
                        r.namespace.as_deref().unwrap_or(""),
                        r.name.as_deref().unwrap_or("")
                    ));
                }
                let patch = json!({
                    "metadata": {
                        "resourceVersion": pv.metadata.resource_version,
                        "annotations": {BOUND_BY_CONTROLLER: "yes"},
                    },
                    "spec": {"claimRef": {
                        "kind": "PersistentVolumeClaim",
                        "apiVersion": "v1",
                        "namespace": &*claim.namespace,
                        "name": &*claim.name,
                        "uid": &**uid,
                    }},
                });
                pvs.patch(volume, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| format!("binding persistentvolume {volume} to {claim}: {e}"))?;
            }
            VolumeChoice::Provision { claim, node } => {
                let patch = json!({"metadata": {"annotations": {SELECTED_NODE: &**node}}});
                claims_api(client, claim)
                    .patch(&claim.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| format!("selecting node {node} for {claim}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// True when the claim shows bound: a volume named and the binding completed.
fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    let named = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    named && binding_completed(pvc)
}

async fn wait_bound(client: &Client, choices: &[VolumeChoice]) -> Result<(), String> {
    loop {
        let mut all = true;
        for c in choices {
            let claim = c.claim();
            let pvc = claims_api(client, claim)
                .get(&claim.name)
                .await
                .map_err(|e| format!("reading {claim}: {e}"))?;
            if pvc.metadata.deletion_timestamp.is_some() {
                return Err(format!("{claim} is being deleted"));
            }
            if is_bound(&pvc) {
                continue;
            }
            all = false;
            if let VolumeChoice::Provision { node, .. } = c {
                let selected = pvc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SELECTED_NODE));
                if selected.map(String::as_str) != Some(&**node) {
                    return Err(format!(
                        "the provisioner gave up on {claim} for node {node} (its selected-node annotation was reset)"
                    ));
                }
            }
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

/// Takes back what `choices` wrote, for claims still unbound: the selected node of a
/// claim waiting for provisioning, the claimRef of a volume the controller has not bound.
async fn undo(client: &Client, choices: &[VolumeChoice]) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for c in choices {
        let claim = c.claim();
        let api = claims_api(client, claim);
        if api.get(&claim.name).await.is_ok_and(|p| is_bound(&p)) {
            continue;
        }
        let undone = match c {
            VolumeChoice::Provision { .. } => {
                let patch = json!({"metadata": {"annotations": {SELECTED_NODE: null}}});
                api.patch(&claim.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            VolumeChoice::Bind { uid, volume, .. } => match pvs.get(volume).await {
                Ok(pv) => {
                    let reserved = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| r.uid.as_deref() == Some(&**uid));
                    let bound =
                        pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
                    if reserved && !bound {
                        let patch = json!({
                            "metadata": {"resourceVersion": pv.metadata.resource_version},
                            "spec": {"claimRef": null},
                        });
                        pvs.patch(volume, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = undone {
            tracing::warn!(claim = %claim, error = %e, "could not undo a volume choice");
        }
    }
}

/// Adds the pod to `status.reservedFor` of each of its allocated ResourceClaims, as
/// kube-scheduler's DynamicResources PreBind does (the kubelet runs a pod only on
/// claims reserved for it). Each write carries the claim's resourceVersion.
pub async fn reserve_device_claims(client: Client, pod: &PodInfo) -> Result<(), String> {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    let api: Api<ResourceClaim> = Api::namespaced(client, &pod.key.namespace);
    for name in pod
        .device_claims
        .iter()
        .flat_map(|c| c.iter())
        .filter_map(|r| r.claim.as_deref())
    {
        let claim = api
            .get_status(name)
            .await
            .map_err(|e| format!("reading resourceclaim {name}: {e}"))?;
        let mut reserved: Vec<serde_json::Value> = claim
            .status
            .as_ref()
            .and_then(|s| s.reserved_for.as_ref())
            .into_iter()
            .flatten()
            .map(|r| json!({"apiGroup": r.api_group, "resource": r.resource, "name": r.name, "uid": r.uid}))
            .collect();
        if reserved.iter().any(|r| r["uid"] == *pod.uid) {
            continue;
        }
        reserved.push(json!({"resource": "pods", "name": &*pod.key.name, "uid": &*pod.uid}));
        let patch = json!({
            "metadata": {"resourceVersion": claim.metadata.resource_version},
            "status": {"reservedFor": reserved},
        });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("reserving resourceclaim {name} for the pod: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on the port: the bind never reached a server, so it is a plain
    /// failure (retried after the back-off), not an outcome to wait for.
    #[tokio::test]
    async fn a_bind_that_cannot_connect_failed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let config = kube::Config::new(url.parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let key = PodKey::new("default", "p");
        match bind(client, &key, "uid-1", "n-0").await {
            BindResult::Failed(why) => assert!(why.contains("Connect"), "{why}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}
