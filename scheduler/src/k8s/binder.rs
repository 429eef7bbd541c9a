//! Binding pods to nodes through the `binding` subresource.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use drover_core::engine::BindResult;
use drover_core::model::PodKey;

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
        // A gateway timeout, a dropped connection, a client timeout: it may have landed.
        Err(e) => BindResult::Unknown(e.to_string()),
    }
}
