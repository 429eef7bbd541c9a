//! drover-extender's memory under concurrent large bodies: C calls at once, each a
//! filter of about 50 MB (`nodeCacheCapable: false` with thousands of Node objects),
//! against the server on loopback. Each configuration runs in a process of its own, so
//! that its peak resident memory (VmHWM) is its own; the table compares the default
//! `--in-flight-limit` with no limit at all, side by side in one run.
//!
//! ```sh
//! cargo run --release -p drover-bench --bin extender-flood            # 4 and 16 calls
//! cargo run --release -p drover-bench --bin extender-flood -- 16 128Mi  # one run
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_core::config::Config;
use drover_core::model::{NodeInfo, Resources};
use drover_core::snapshot::Snapshot;
use drover_extender::Extender;
use drover_extender::metrics::ExtenderMetrics;
use drover_extender::server::{self, ServerOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Node objects per body: about 5 KB each, as real nodes with labels, conditions and
/// images are.
const NODES: usize = 18_000;

fn body() -> Vec<u8> {
    let images: Vec<_> = (0..12)
        .map(|i| json!({"names": [format!("registry.example.com/team/image-{i}@sha256:{:064x}", i)], "sizeBytes": 123456789}))
        .collect();
    let nodes: Vec<_> = (0..NODES)
        .map(|i| {
            json!({
                "metadata": {"name": format!("node-{i}"), "uid": format!("uid-{i}"),
                    "labels": (0..20).map(|l| (format!("example.com/label-{l}"), json!(format!("value-{i}-{l}")))).collect::<serde_json::Map<_, _>>()},
                "status": {
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                    "images": images,
                }
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "Pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}},
        "Nodes": {"items": nodes},
        "NodeNames": null,
    }))
    .expect("JSON")
}

/// VmHWM and VmRSS of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn post(addr: std::net::SocketAddr, body: Arc<Vec<u8>>) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    // A refused call is answered before its body is sent: the write may fail then.
    let _ = s.write_all(&body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn one(calls: usize, limit: usize) {
    let snap = Snapshot::from_nodes([NodeInfo::new("a", Resources::cpu_mem(4000, 8 << 30), 110)]);
    let ext = Arc::new(Extender::with_snapshot(Config::default(), snap));
    let opts = ServerOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        in_flight_limit: limit,
        ..Default::default()
    };
    let router = server::router(
        ext.clone(),
        ExtenderMetrics::new(ext.gangs_planned()),
        None,
        &opts,
    );
    let shutdown = CancellationToken::new();
    let s = server::serve(router, &opts, shutdown.clone())
        .await
        .expect("serve");
    let body = Arc::new(body());
    let (before, _) = memory();
    let started = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|_| tokio::spawn(post(s.addr, body.clone())))
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap_or(0)).or_default() += 1;
    }
    let took = started.elapsed();
    let (peak, _) = memory();
    // Work that outlived its answer ends, and what it held is given back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, after) = memory();
    let answers: Vec<String> = statuses.iter().map(|(s, n)| format!("{n}×{s}")).collect();
    println!(
        "{calls:>5} | {:>15} | {:>14.1} | {:>17.0} | {:>17.0} | {:>9.0} | {}",
        if limit == usize::MAX >> 4 {
            "none".to_string()
        } else {
            format!("{} MiB", limit >> 20)
        },
        body.len() as f64 / 1e6,
        peak - before,
        after - before,
        took.as_millis(),
        answers.join(", "),
    );
    shutdown.cancel();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [calls, limit] = &args[..] {
        let calls: usize = calls.parse().expect("calls: a number");
        let limit = if limit == "none" {
            usize::MAX >> 4
        } else {
            drover_core::quantity::parse_resource("memory", limit)
                .ok()
                .and_then(|b| usize::try_from(b).ok())
                .expect("limit: a size such as 128Mi, or none")
        };
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(one(calls, limit));
        return;
    }
    println!(
        "calls | in-flight limit | body size (MB) | peak RSS over base (MiB) | RSS 5 s after (MiB) | wall (ms) | answers"
    );
    println!("---|---|---|---|---|---|---");
    let me = std::env::current_exe().expect("this program");
    for calls in [4, 16] {
        for limit in ["128Mi", "none"] {
            let status = std::process::Command::new(&me)
                .args([calls.to_string(), limit.to_string()])
                .status()
                .expect("run a configuration");
            assert!(status.success(), "{calls} calls, limit {limit}: {status}");
        }
    }
}
