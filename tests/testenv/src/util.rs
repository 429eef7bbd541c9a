//! Waiting, and small helpers over the API.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

/// Calls `check` every `interval` until it returns `Ok(true)`, for at most `timeout`.
///
/// An `Err` from `check` counts as "not yet" (the API may be briefly unavailable); the
/// last one is part of the timeout error, which names `what` was waited for.
///
/// ```no_run
/// # async fn f(client: kube::Client) -> anyhow::Result<()> {
/// use std::time::Duration;
/// drover_testenv::wait_until(Duration::from_secs(30), Duration::from_millis(200), "pod p-1 bound", || {
///     let client = client.clone();
///     async move { Ok(drover_testenv::bound_pods(&client, "default").await?.iter().any(|(p, _)| p == "p-1")) }
/// })
/// .await
/// # }
/// ```
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            let msg = format!("timed out after {timeout:?} waiting for {what}");
            return Err(match last_err {
                Some(e) => e.context(format!("{msg} (the last check failed)")),
                None => anyhow::anyhow!(msg),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// `(pod name, node name)` of every pod in `namespace` that has a node.
pub async fn bound_pods(client: &Client, namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing pods in {namespace}"))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some((p.metadata.name?, node))
        })
        .collect())
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::core::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}
