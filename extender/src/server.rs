//! The HTTP(S) server: `POST /filter`, `/prioritize`, `/preempt`, `/bind`, and
//! `GET /healthz`, `/readyz`, `/metrics`.
//!
//! Every verb answers within `--timeout` (below kube-scheduler's 5 s `httpTimeout`
//! default), reads at most `--body-limit` bytes, and answers a bad request with a 4xx
//! whose body is the verb's result type with `Error` set. The work runs on the blocking
//! pool, so a slow or panicking call never stalls the server; each distinct error
//! message is logged once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::RequestError;
use crate::metrics::ExtenderMetrics;
use crate::verbs::{Extender, Reply, Verb};

/// Default largest request body: a 5000-node NodeList is several MB.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;
/// Default time to read and answer a call: below kube-scheduler's 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many distinct error messages are remembered (then forgotten at once) so that
/// each is logged once.
const LOGGED_MESSAGES: usize = 4096;
/// How long open connections get to finish when the server stops.
const DRAIN: Duration = Duration::from_secs(5);

/// A certificate and key in PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Time to read and answer one call.
    pub timeout: Duration,
    /// Serve HTTPS with this certificate.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: ([0, 0, 0, 0], 8888).into(),
            body_limit: DEFAULT_BODY_LIMIT,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        }
    }
}

#[derive(Clone)]
struct App {
    ext: Arc<Extender>,
    metrics: ExtenderMetrics,
    drover_metrics: Option<drover::metrics::Metrics>,
    body_limit: usize,
    timeout: Duration,
    logged: Arc<Mutex<HashSet<String>>>,
}

impl App {
    async fn verb(&self, verb: Verb, req: Request) -> Response {
        let start = Instant::now();
        let reply = self.answer(verb, req).await;
        self.metrics
            .duration
            .with_label_values(&[verb.as_str()])
            .observe(start.elapsed().as_secs_f64());
        if let Some(e) = &reply.error {
            self.metrics
                .errors
                .with_label_values(&[verb.as_str(), e.kind()])
                .inc();
            self.log_once(e);
        }
        let status =
            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            reply.body,
        )
            .into_response()
    }

    async fn answer(&self, verb: Verb, req: Request) -> Reply {
        let v = verb.as_str();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let millis = self.timeout.as_millis();
        if content_length(req.headers()).is_some_and(|n| n > self.body_limit) {
            return Reply::error(
                verb,
                RequestError::TooLarge {
                    verb: v,
                    limit: self.body_limit,
                },
            );
        }
        let read = Limited::new(req.into_body(), self.body_limit).collect();
        let body = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                return Reply::error(
                    verb,
                    RequestError::Timeout {
                        verb: v,
                        what: "reading the body",
                        millis,
                    },
                );
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Reply::error(
                    verb,
                    RequestError::TooLarge {
                        verb: v,
                        limit: self.body_limit,
                    },
                );
            }
            Ok(Err(e)) => {
                return Reply::error(
                    verb,
                    RequestError::Read {
                        verb: v,
                        detail: e.to_string(),
                    },
                );
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
        let timed_out = || {
            Reply::error(
                verb,
                RequestError::Timeout {
                    verb: v,
                    what: "answering",
                    millis,
                },
            )
        };
        if verb == Verb::Bind {
            return tokio::time::timeout_at(deadline, self.ext.handle_bind(&body))
                .await
                .unwrap_or_else(|_| timed_out());
        }
        let ext = self.ext.clone();
        let task = tokio::task::spawn_blocking(move || ext.handle(verb, &body));
        match tokio::time::timeout_at(deadline, task).await {
            Err(_) => timed_out(),
            Ok(Err(join)) => Reply::error(
                verb,
                RequestError::Internal {
                    verb: v,
                    detail: panic_message(join),
                },
            ),
            Ok(Ok(reply)) => reply,
        }
    }

    fn log_once(&self, e: &RequestError) {
        let message = e.to_string();
        let mut seen = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&message) {
            return;
        }
        if seen.len() >= LOGGED_MESSAGES {
            seen.clear();
        }
        seen.insert(message.clone());
        drop(seen);
        match e {
            RequestError::Internal { .. } => {
                tracing::error!(kind = e.kind(), %message, "extender call failed")
            }
            _ => tracing::warn!(kind = e.kind(), %message, "extender call refused"),
        }
    }
}

fn content_length(h: &HeaderMap) -> Option<usize> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

/// The router: the four verbs (at `/<verb>`, the verb names of the example
/// configuration), health, readiness and metrics.
pub fn router(
    ext: Arc<Extender>,
    metrics: ExtenderMetrics,
    drover_metrics: Option<drover::metrics::Metrics>,
    opts: &ServerOptions,
) -> Router {
    let app = App {
        ext,
        metrics,
        drover_metrics,
        body_limit: opts.body_limit,
        timeout: opts.timeout,
        logged: Arc::new(Mutex::new(HashSet::new())),
    };
    let mut r = Router::new();
    for verb in Verb::ALL {
        r =
            r.route(
                &format!("/{}", verb.as_str()),
                post(move |State(app): State<App>, req: Request| async move {
                    app.verb(verb, req).await
                }),
            );
    }
    r.route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(app): State<App>| async move {
                if app.ext.ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "nodes, pods, gangs or queues not listed yet",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(app): State<App>| async move {
                let mut text = app
                    .drover_metrics
                    .as_ref()
                    .map(|m| m.render())
                    .unwrap_or_default();
                text.push_str(&app.metrics.render());
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        // Bodies are read (and limited) by the verbs themselves.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// Reads a PEM certificate chain and key into a TLS acceptor (HTTP/1.1).
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = std::fs::read(&files.cert)
        .with_context(|| format!("--tls-cert {}", files.cert.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e:?}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--tls-cert {}: no PEM certificate in the file",
            files.cert.display()
        );
    }
    let key_pem =
        std::fs::read(&files.key).with_context(|| format!("--tls-key {}", files.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e:?}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("--tls-cert/--tls-key: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A running server.
pub struct Server {
    /// The address it listens on (the port chosen, when asked for port 0).
    pub addr: SocketAddr,
    /// Ends after `shutdown` once open connections finished (at most a few seconds).
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `opts.listen` (failing at once if it is taken or the TLS files are bad) and
/// serves `router` until `shutdown`.
pub async fn serve(
    router: Router,
    opts: &ServerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    let tls = opts.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, https = tls.is_some(), "serving filter, prioritize, preempt, bind, /healthz, /readyz, /metrics");
    let header_timeout = opts.timeout;
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, _peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn).await;
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn).await;
                    }
                }
            });
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(DRAIN) => tracing::warn!("connections still open after draining; closing"),
        }
    });
    Ok(Server { addr, task })
}
