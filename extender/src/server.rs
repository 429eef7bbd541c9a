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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// Client certificates the server requires (mutual TLS).
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// PEM bundle of the CAs that sign client certificates (kube-scheduler's
    /// `tlsConfig.certData`).
    pub ca: PathBuf,
    /// Accept only certificates with one of these names (the subject's CN or a DNS
    /// name among its subject alternative names); empty: any certificate the CA signed.
    pub allowed_names: Vec<String>,
}

/// Default budget of request bodies in flight: two bodies of the largest default size.
pub const DEFAULT_IN_FLIGHT_LIMIT: usize = 128 << 20;

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
    /// Require client certificates (needs `tls`).
    pub client_auth: Option<ClientAuth>,
    /// The bytes of request bodies all calls together may hold at once; a call that
    /// would go beyond is answered 503 at once. Held until the call's work ends, not
    /// merely until it is answered.
    pub in_flight_limit: usize,
    /// Also serve `/healthz`, `/readyz` and `/metrics` over plain HTTP here (for
    /// kubelet probes and Prometheus when the verbs need client certificates).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/bind`. Off: `/bind` answers 403, so no caller can bind through
    /// drover-extender's ServiceAccount.
    pub enable_bind: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: ([0, 0, 0, 0], 8888).into(),
            body_limit: DEFAULT_BODY_LIMIT,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
            client_auth: None,
            metrics_listen: None,
            in_flight_limit: DEFAULT_IN_FLIGHT_LIMIT,
            enable_bind: false,
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
    in_flight: Arc<Semaphore>,
    in_flight_limit: usize,
    enable_bind: bool,
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
        if verb == Verb::Bind && !self.enable_bind {
            return Reply::error(
                verb,
                RequestError::Forbidden {
                    verb: v,
                    detail: "drover-extender serves bind only with --enable-bind (and the \
                             pods/binding grant of manifests/extender-bind); leave bindVerb \
                             out of kube-scheduler's configuration otherwise"
                        .into(),
                },
            );
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let millis = self.timeout.as_millis();
        let declared = content_length(req.headers());
        if declared.is_some_and(|n| n > self.body_limit) {
            return Reply::error(
                verb,
                RequestError::TooLarge {
                    verb: v,
                    limit: self.body_limit,
                },
            );
        }
        let busy = || {
            Reply::error(
                verb,
                RequestError::Busy {
                    verb: v,
                    limit: self.in_flight_limit,
                },
            )
        };
        // The body's bytes are taken from the budget before they are read: all of a
        // declared length at once, a chunked body frame by frame.
        let Some(mut held) = self.reserve(declared.unwrap_or(0)) else {
            return busy();
        };
        let mut body = Limited::new(req.into_body(), self.body_limit);
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        let read = async {
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > held.num_permits() {
                    let more = bytes.len() + data.len() - held.num_permits();
                    match self.reserve(more) {
                        Some(p) => held.merge(p),
                        None => return Ok(false),
                    }
                }
                bytes.extend_from_slice(&data);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(true)
        };
        match tokio::time::timeout_at(deadline, read).await {
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
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return busy(),
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
        }
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
            let reply = tokio::time::timeout_at(deadline, self.ext.handle_bind(&bytes))
                .await
                .unwrap_or_else(|_| timed_out());
            drop(held);
            return reply;
        }
        let ext = self.ext.clone();
        let until = deadline.into_std();
        // The budget is given back when the work ends: a call answered 408 still holds
        // its bytes until it stops at its next check of the deadline.
        let task = tokio::task::spawn_blocking(move || {
            let reply = ext.handle_until(verb, &bytes, until);
            drop(bytes);
            drop(held);
            reply
        });
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

    /// `n` bytes from the budget of bodies in flight, or None when it has not that many
    /// left.
    fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.in_flight.clone().try_acquire_many_owned(n).ok()
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
        in_flight: Arc::new(Semaphore::new(opts.in_flight_limit)),
        in_flight_limit: opts.in_flight_limit,
        enable_bind: opts.enable_bind,
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

fn read_certs(
    path: &std::path::Path,
    flag: &str,
) -> anyhow::Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e:?}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{flag} {}: no PEM certificate in the file", path.display());
    }
    Ok(certs)
}

/// Reads a PEM certificate chain and key into a TLS acceptor (HTTP/1.1); with
/// `client`, it also requires a client certificate signed by one of its CAs.
pub fn tls_acceptor(files: &TlsFiles, client: Option<&ClientAuth>) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key_pem =
        std::fs::read(&files.key).with_context(|| format!("--tls-key {}", files.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e:?}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(&auth.ca, "--client-ca")? {
                roots
                    .add(ca)
                    .map_err(|e| anyhow::anyhow!("--client-ca {}: {e}", auth.ca.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| anyhow::anyhow!("--client-ca {}: {e}", auth.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("--tls-cert/--tls-key: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The names a client certificate (DER) goes by: its subject's CNs and the DNS names
/// among its subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// Why a verified client may not call: its certificate names none of `allowed`.
fn refusal(peer: Option<&[u8]>, allowed: &[String]) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let names = peer.map(certificate_names).unwrap_or_default();
    if names.iter().any(|n| allowed.contains(n)) {
        return None;
    }
    Some(format!(
        "the client certificate ({}) names none of --allowed-names ({})",
        if names.is_empty() {
            "no CN or DNS name".to_string()
        } else {
            names.join(", ")
        },
        allowed.join(", ")
    ))
}

/// Answers 403 with `message` to every call on a connection whose client is refused.
fn refused(message: String) -> Router {
    Router::new().fallback(move || {
        let body = serde_json::json!({ "Error": message }).to_string();
        async move {
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    })
}

/// A running server.
pub struct Server {
    /// The address it listens on (the port chosen, when asked for port 0).
    pub addr: SocketAddr,
    /// The address of the plain-HTTP health and metrics port, if asked for.
    pub metrics_addr: Option<SocketAddr>,
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
    if opts.client_auth.is_some() && opts.tls.is_none() {
        anyhow::bail!(
            "--client-ca needs --tls-cert and --tls-key: client certificates come with HTTPS"
        );
    }
    let tls = opts
        .tls
        .as_ref()
        .map(|f| tls_acceptor(f, opts.client_auth.as_ref()))
        .transpose()?;
    let allowed: Arc<[String]> = opts
        .client_auth
        .as_ref()
        .map(|a| a.allowed_names.clone())
        .unwrap_or_default()
        .into();
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let plain = match opts.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("--metrics-listen {at}"))?,
        ),
        None => None,
    };
    let metrics_addr = plain.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(%addr, https = tls.is_some(), client_certificates = opts.client_auth.is_some(), "serving filter, prioritize, preempt, bind, /healthz, /readyz, /metrics");
    let metrics_task = plain.map(|listener| {
        if let Some(at) = metrics_addr {
            tracing::info!(addr = %at, "serving /healthz, /readyz, /metrics over HTTP");
        }
        let health = router.clone().layer(axum::middleware::from_fn(health_only));
        accept(
            listener,
            health,
            None,
            Arc::from([]),
            opts.timeout,
            shutdown.clone(),
        )
    });
    let main = accept(listener, router, tls, allowed, opts.timeout, shutdown);
    let task = tokio::spawn(async move {
        let _ = main.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
    });
    Ok(Server {
        addr,
        metrics_addr,
        task,
    })
}

/// The plain port serves health, readiness and metrics, and no verb.
async fn health_only(req: Request, next: axum::middleware::Next) -> Response {
    match req.uri().path() {
        "/healthz" | "/readyz" | "/metrics" => next.run(req).await,
        _ => (
            StatusCode::NOT_FOUND,
            "this port serves /healthz, /readyz and /metrics only",
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` (over TLS with `tls`, refusing clients whose
/// certificate names none of `allowed`) until `shutdown`, then drains.
fn accept(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    allowed: Arc<[String]>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Each refusal is logged once per message (a caller retrying must not flood the
    // log); the set starts over when it grows large.
    let refusals: Arc<Mutex<HashSet<String>>> = Arc::default();
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer_addr) = tokio::select! {
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
            let router = router.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let allowed = allowed.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                match tls {
                    None => {
                        let service = TowerToHyperService::new(router);
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn).await;
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.as_ref().to_vec());
                        let router = match refusal(peer.as_deref(), &allowed) {
                            None => router,
                            Some(message) => {
                                let mut seen = refusals.lock().unwrap_or_else(|p| p.into_inner());
                                if seen.len() >= LOGGED_MESSAGES {
                                    seen.clear();
                                }
                                if seen.insert(message.clone()) {
                                    tracing::warn!(%peer_addr, %message, "client refused");
                                }
                                drop(seen);
                                refused(message)
                            }
                        };
                        let service = TowerToHyperService::new(router);
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
    })
}
