//! The HTTP server on loopback: routes, body limits, timeouts, metrics and HTTPS. No
//! API server: the extender answers over a fixed snapshot.

use std::sync::Arc;
use std::time::Duration;

use drover_core::config::Config;
use drover_core::model::{NodeInfo, Resources};
use drover_core::snapshot::Snapshot;
use drover_extender::metrics::ExtenderMetrics;
use drover_extender::server::{self, ServerOptions, TlsFiles};
use drover_extender::{Extender, Verb};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn extender() -> Arc<Extender> {
    let snap = Snapshot::from_nodes([
        NodeInfo::new("a", Resources::cpu_mem(4000, 8 << 30), 110),
        NodeInfo::new("b", Resources::cpu_mem(1000, 8 << 30), 110),
    ]);
    Arc::new(Extender::with_snapshot(Config::default(), snap))
}

fn filter_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "Pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}},
        "Nodes": null,
        "NodeNames": ["a", "b"],
    }))
    .unwrap()
}

async fn start(opts: ServerOptions) -> (std::net::SocketAddr, CancellationToken) {
    let ext = extender();
    let metrics = ExtenderMetrics::new(ext.gangs_planned());
    let router = server::router(ext, metrics, None, &opts);
    let shutdown = CancellationToken::new();
    let s = server::serve(router, &opts, shutdown.clone())
        .await
        .unwrap();
    (s.addr, shutdown)
}

fn local(opts: ServerOptions) -> ServerOptions {
    ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..opts
    }
}

/// Sends a raw HTTP/1.1 request and reads the whole answer: (status, body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn verbs_health_and_metrics() {
    let (addr, shutdown) = start(local(ServerOptions::default())).await;
    let (status, body) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/filter",
        &filter_body(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["NodeNames"], json!(["a"]));
    assert_eq!(v["FailedNodes"]["b"], "Insufficient cpu");

    let (status, body) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/prioritize",
        &filter_body(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!([{"Host": "a", "Score": 10}, {"Host": "b", "Score": 0}])
    );

    let (status, body) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/filter",
        b"{oops",
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["Error"].as_str().unwrap().contains("filter"), "{v}");

    for (path, want) in [("/healthz", "ok"), ("/readyz", "ok")] {
        let (status, body) =
            exchange(TcpStream::connect(addr).await.unwrap(), "GET", path, b"").await;
        assert_eq!((status, body.as_str()), (200, want));
    }
    let (_, metrics) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "GET",
        "/metrics",
        b"",
    )
    .await;
    assert!(
        metrics.contains("drover_extender_request_duration_seconds_count{verb=\"filter\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_extender_errors_total{kind=\"malformed\",verb=\"filter\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_extender_request_duration_seconds_count{verb=\"bind\"} 0"));
    shutdown.cancel();
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_with_an_error() {
    let (addr, shutdown) = start(local(ServerOptions {
        body_limit: 1024,
        ..Default::default()
    }))
    .await;
    let big = vec![b' '; 4096];
    let (status, body) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/filter",
        &big,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["Error"].as_str().unwrap().contains("--body-limit"), "{v}");

    // Chunked, without a Content-Length: the limit holds while reading.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /prioritize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        s.write_all(b"400\r\n").await.unwrap();
        s.write_all(&[b' '; 1024]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 413, "{body}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_slow_client_gets_408_within_the_timeout() {
    let (addr, shutdown) = start(local(ServerOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    }))
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{",
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("the server answers, it does not hang")
        .unwrap();
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("--timeout"), "{body}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // Headers that never end: the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("closed after the header timeout")
        .ok();
    shutdown.cancel();
}

#[tokio::test]
async fn https_with_a_provided_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (addr, shutdown) = start(local(ServerOptions {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..Default::default()
    }))
    .await;

    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (status, body) = exchange(tls, "POST", "/filter", &filter_body()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"NodeNames\":[\"a\"]"), "{body}");

    // Bad files fail at start, naming the flag.
    let err = server::tls_acceptor(&TlsFiles {
        cert: key,
        key: cert,
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn wrong_methods_paths_and_disabled_verbs_are_refused() {
    let (addr, shutdown) = start(local(ServerOptions::default())).await;
    let (status, _) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "GET",
        "/filter",
        b"",
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/nope",
        b"{}",
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = exchange(
        TcpStream::connect(addr).await.unwrap(),
        "POST",
        "/bind",
        b"{\"PodName\":\"p\",\"PodNamespace\":\"n\",\"Node\":\"a\"}",
    )
    .await;
    assert_eq!(status, 404, "no cluster connection: {body}");
    assert_eq!(Verb::ALL.len(), 4);
    shutdown.cancel();
}
