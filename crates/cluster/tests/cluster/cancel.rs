//! Cancellation through a real `turnpike up` of wasm workers: a client that hangs up, or whose
//! deadline (`x-turnpike-deadline-ms`) passes, cancels its invocation wherever it is, and
//! what it ran is billed once - with the roles calling each other in process and over
//! loopback gRPC (where the cancellation travels as a cancel frame on each link).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use turnpike_cluster::up::{self, Cluster, UpConfig};
use turnpike_store::{Store, UsageTotals};

use crate::common::{billed_this_month, exchange, serial};

/// One worker with `slots` core slots.
async fn cluster(slots: u32, dir: &tempfile::TempDir, loopback_rpc: bool) -> Cluster {
    let mut config = UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.loopback_rpc = loopback_rpc;
    config.workers = 1;
    config.cores_per_worker = slots;
    config.memory_mb_per_worker = 1024;
    up::start(&config).await.expect("the cluster starts")
}

/// Everything billed this month, once the cluster has stopped (stopping commits the ledger).
async fn billed(cluster: Cluster) -> UsageTotals {
    let store: Store = cluster.store.clone();
    cluster.stop().await;
    billed_this_month(&store).await
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: turnpike\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_running_invocation_which_is_billed_once() {
    for loopback_rpc in [false, true] {
        let _serial = serial().await;
        let dir = tempfile::tempdir().expect("temp dir");
        // A slot each: all three run at once.
        let cluster = cluster(3, &dir, loopback_rpc).await;
        let gateway = cluster.gateway;
        let clients: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(gateway).await.expect("connect");
                    let request = get("/work/batch?ms=1500", "");
                    stream.write_all(request.as_bytes()).await.expect("send");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // Hangs up with the invocation running.
                    drop(stream);
                })
            })
            .collect();
        for client in clients {
            client.await.expect("client");
        }
        // The worker is free at once, not after the 1.5 s the abandoned ones would have run.
        let (status, _, body) = exchange(gateway, get("/work/batch?ms=5", "").as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        let billed = billed(cluster).await;
        assert_eq!(
            billed.invocations, 4,
            "loopback RPC {loopback_rpc}: the three abandoned and the last one, each once: {billed:?}"
        );
        // Stopped after about 0.3 s of their 1.5 s each: far less than one whole run.
        assert!(
            billed.cpu_seconds > 0.0 && billed.cpu_seconds < 1.5,
            "loopback RPC {loopback_rpc}: billed for what ran until cancelled: {billed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_cancels_a_queued_or_running_invocation_with_504() {
    for loopback_rpc in [false, true] {
        let _serial = serial().await;
        let dir = tempfile::tempdir().expect("temp dir");
        // One slot: a top-class invocation holds it while a batch one waits.
        let cluster = cluster(1, &dir, loopback_rpc).await;
        let gateway = cluster.gateway;
        let holder = tokio::spawn(async move {
            exchange(gateway, get("/work/critical?ms=1500", "").as_bytes()).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Waits behind the top class (at the shard or the worker), never runs, and is cancelled
        // when its deadline passes, queueing counted.
        let deadline = "x-turnpike-deadline-ms: 300\r\n";
        let (status, _, body) =
            exchange(gateway, get("/work/batch?ms=10", deadline).as_bytes()).await;
        assert_eq!(status, 504, "loopback RPC {loopback_rpc}: {body}");
        assert!(body.contains("deadline"), "{body}");
        let (status, _, body) = holder.await.expect("holder");
        assert_eq!(status, 200, "{body}");
        // Running when its deadline passes: stopped, answered 504, billed.
        let (status, _, body) =
            exchange(gateway, get("/work/critical?ms=3000", deadline).as_bytes()).await;
        assert_eq!(status, 504, "loopback RPC {loopback_rpc}: {body}");
        // A malformed deadline is the caller's error.
        let bad = "x-turnpike-deadline-ms: soon\r\n";
        let (status, _, body) = exchange(gateway, get("/hello", bad).as_bytes()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("x-turnpike-deadline-ms"), "{body}");
        let billed = billed(cluster).await;
        // The holder and the running one; the queued one never ran.
        assert_eq!(
            billed.invocations, 2,
            "loopback RPC {loopback_rpc}: {billed:?}"
        );
        // The holder's 1.5 s and the running one's 0.3 s at most, not its 3 s.
        assert!(
            billed.cpu_seconds < 3.0,
            "loopback RPC {loopback_rpc}: {billed:?}"
        );
    }
}
