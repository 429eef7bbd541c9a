//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::run::Shared;

/// What the engine holds about one pod and would do with it now (JSON, read-only, no
/// secrets): `drover explain` asks the leader this, so that it says what the
/// scheduler would do. 503 with the same body from a replica that does not lead.
async fn debug_pod(
    State(s): State<Shared>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(asks) = s.asks.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not scheduling yet").into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let key = drover_core::model::PodKey::new(&namespace, &name);
    if asks
        .send(super::watch::Input::Explain { key, reply })
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduling loop stopped",
        )
            .into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(state)) => {
            let status = if state.leading {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(state)).into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduling loop did not answer within 5 s",
        )
            .into_response(),
    }
}

/// Binds `addr` and serves until `shutdown`. Fails at once if the address is taken.
pub async fn spawn(
    addr: SocketAddr,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Shared>| async move {
                if s.synced.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .route("/debug/pods/{namespace}/{name}", get(debug_pod))
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(local)
}
