//! `turnpike up` end to end, on loopback ports chosen by the OS: the demo app through the
//! gateway, shards and workers; bad requests; call chains; priorities under overload; a shard
//! restart with its idle list rebuilt. (A worker killed mid-load needs a process to kill:
//! `crates/turnpike/tests/cluster.rs`.)
//!
//! The priorities and the shard restart run twice: with the roles calling each other in
//! process (as `turnpike up` ships) and over loopback gRPC (`--loopback-rpc`).
//!
//! Like every test of this binary they run one at a time (`serial`): they measure orderings
//! on a 2-core machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnpike_cluster::up::{self, Cluster, UpConfig};

use crate::common::{exchange, serial};

async fn cluster(workers: usize, dir: &tempfile::TempDir) -> Cluster {
    cluster_with_rpc(workers, dir, false).await
}

/// With `loopback_rpc`, the roles call each other over loopback gRPC instead of in process.
async fn cluster_with_rpc(workers: usize, dir: &tempfile::TempDir, loopback_rpc: bool) -> Cluster {
    let mut config = UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.loopback_rpc = loopback_rpc;
    // One-slot workers: the orderings asserted below are those of one slot each.
    config.workers = workers;
    config.cores_per_worker = 1;
    config.memory_mb_per_worker = 1024;
    config.max_request_bytes = 4096;
    up::start(&config).await.expect("the cluster starts")
}

/// One HTTP/1.1 exchange on a new connection: (status, body).
async fn http(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let (status, _, body) = exchange(addr, raw).await;
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: turnpike\r\nConnection: close\r\n\r\n");
    http(addr, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_app_answers_and_bad_requests_get_clear_errors() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(2, &dir).await;
    let gw = cluster.gateway;

    let (status, body) = get(gw, "/hello").await;
    assert_eq!((status, body.trim()), (200, "hello from turnpike"));
    let (status, body) = get(gw, "/work/critical?ms=5").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("checksum="), "{body}");
    let (status, body) = get(gw, "/work/batch?ms=5").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = get(gw, "/nowhere").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/nowhere"), "{body}");
    // A prefix matches whole segments only.
    assert_eq!(get(gw, "/hellothere").await.0, 404);

    let key = cluster
        .admin_key
        .clone()
        .expect("a fresh store has a new admin");
    let unknown_class = format!("POST /v1/invoke/0123 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nx-turnpike-class: gold\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let (status, body) = http(gw, unknown_class.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("gold") && body.contains("batch") && body.contains("critical"),
        "names the class and the known ones: {body}"
    );

    let big = "x".repeat(5000);
    let oversized = format!(
        "POST /v1/invoke/0123 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nx-turnpike-class: critical\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    let (status, body) = http(gw, oversized.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("4096"), "{body}");

    let (status, _) = http(gw, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(status, 400);

    // The published price list.
    let (status, body) = get(gw, "/v1/classes").await;
    assert_eq!(status, 200, "{body}");
    let catalogue: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let names: Vec<&str> = catalogue["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["batch", "standard", "interactive", "critical"]);
    assert_eq!(catalogue["classes"][3]["price_per_cpu_second"], 2.0);
    assert_eq!(catalogue["memory_price_per_gb_second"], 1.0);

    // Nothing above broke the cluster.
    assert_eq!(get(gw, "/hello").await.0, 200);

    // Every role serves Prometheus metrics, and they saw the requests above.
    assert_eq!(cluster.metrics.len(), 1 + 4 + 2);
    let scrape = |role: &str| {
        let addr = cluster
            .metrics
            .iter()
            .find(|(r, _)| r == role)
            .map(|&(_, a)| a)
            .unwrap_or_else(|| panic!("no metrics for {role}"));
        get(addr, "/metrics")
    };
    let (status, gateway) = scrape("gateway").await;
    assert_eq!(status, 200);
    // hello twice, critical once at the top class; batch once at the bottom.
    assert!(
        gateway.contains("turnpike_gateway_request_seconds_count{class=\"critical\"} 3\n"),
        "{gateway}"
    );
    assert!(
        gateway.contains("turnpike_gateway_request_seconds_count{class=\"batch\"} 1\n"),
        "{gateway}"
    );
    assert!(gateway.contains("turnpike_gateway_responses_total{code=\"4xx\"}"));
    let mut placements = 0.0;
    for s in 0..4 {
        let (_, shard) = scrape(&format!("shard {s}")).await;
        assert!(
            shard.contains("turnpike_shard_queue_length{class=\"batch\"} 0"),
            "{shard}"
        );
        assert!(shard.contains("turnpike_shard_idle_list_size"), "{shard}");
        placements += shard
            .lines()
            .filter(|l| l.starts_with("turnpike_shard_placements_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert_eq!(placements, 4.0, "four invocations were placed");
    let (_, worker) = scrape("worker 0").await;
    for family in [
        "turnpike_worker_memory_used_mb",
        "turnpike_worker_preemptions_total",
        "turnpike_worker_swap_outs_total{class=\"batch\"}",
        "turnpike_worker_kills_total{class=\"batch\"}",
        "turnpike_worker_invocation_seconds_bucket{le=\"+Inf\",class=\"critical\"}",
    ] {
        assert!(worker.contains(family), "{family} missing from {worker}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_class_finishes_near_its_runtime_while_the_bottom_class_waits() {
    for loopback_rpc in [false, true] {
        top_class_first(loopback_rpc).await;
    }
}

async fn top_class_first(loopback_rpc: bool) {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // One worker with one slot: every invocation competes for it.
    let cluster = cluster_with_rpc(1, &dir, loopback_rpc).await;
    let gw = cluster.gateway;
    let t0 = Instant::now();
    let batch: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let (status, _) = get(gw, "/work/batch?ms=300").await;
                (status, t0.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    let (status, _) = get(gw, "/work/critical?ms=50").await;
    let critical_latency = sent.elapsed();
    let critical_done = t0.elapsed();
    assert_eq!(status, 200);
    let mut batch_done = Vec::new();
    for b in batch {
        let (status, done) = b.await.expect("batch request");
        assert_eq!(status, 200);
        batch_done.push(done);
    }
    batch_done.sort();
    // 4 x 300 ms of batch work on one slot: the critical one, sent 100 ms in, preempts it and
    // finishes before all but possibly the first batch invocation.
    assert!(
        critical_done < batch_done[1],
        "loopback RPC {loopback_rpc}: critical done at {critical_done:?}, batch at {batch_done:?}"
    );
    // Its latency is its own 50 ms plus overheads, far below the 1.1 s of batch queued ahead.
    assert!(
        critical_latency < batch_done[3] / 4,
        "loopback RPC {loopback_rpc}: critical took {critical_latency:?}; batch finished at {batch_done:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_gets_its_workers_and_idle_list_back() {
    for loopback_rpc in [false, true] {
        restarted_shard(loopback_rpc).await;
    }
}

async fn restarted_shard(loopback_rpc: bool) {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = cluster_with_rpc(2, &dir, loopback_rpc).await;
    let gw = cluster.gateway;
    assert_eq!(get(gw, "/hello").await.0, 200);
    let idle_total =
        |c: &Cluster| -> usize { (0..4).map(|s| c.shard(s).idle_list_len()).sum::<usize>() };
    // Both idle workers are on some shard's idle list.
    let start = Instant::now();
    while idle_total(&cluster) < 2 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(idle_total(&cluster), 2);
    let with_members = (0..4)
        .find(|&s| cluster.shard(s).idle_list_len() > 0)
        .expect("a shard with idle workers");
    cluster
        .restart_shard(with_members)
        .await
        .expect("the shard restarts");
    assert_eq!(cluster.shard(with_members).live_workers(), 0);
    // The workers re-register and re-join: no coordinator, no lost membership.
    let start = Instant::now();
    while (cluster.shard(with_members).live_workers() < 2 || idle_total(&cluster) < 2)
        && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cluster.shard(with_members).live_workers(), 2);
    assert_eq!(idle_total(&cluster), 2);
    for _ in 0..8 {
        assert_eq!(get(gw, "/hello").await.0, 200);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_called_function_runs_at_the_higher_of_its_callers_and_its_routes_class() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(2, &dir).await;
    let gw = cluster.gateway;

    // `/chain` is a batch route; hello's route is critical, so hello runs at critical.
    let (status, head, body) = exchange(
        gw,
        b"GET /chain?to=/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "called /hello: 200, ran at critical\nhello from turnpike\n"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-turnpike-class: batch"),
        "the caller itself ran at batch: {head}"
    );

    // Batch calling batch stays batch.
    let (status, body) = get(gw, "/chain?to=/work/batch%3Fms%3D1").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("called /work/batch?ms=1: 200, ran at batch\n"),
        "{body}"
    );

    // A critical caller lifts its batch callee to critical.
    let chain = &cluster
        .demo_functions
        .iter()
        .find(|(name, _)| name == "chain")
        .expect("chain is in the demo app")
        .1;
    let direct = format!(
        "GET /v1/invoke/{chain}?to=/work/batch%3Fms%3D1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nx-turnpike-class: critical\r\nConnection: close\r\n\r\n",
        cluster.admin_key.as_deref().expect("a fresh store has a new admin")
    );
    let (status, body) = http(gw, direct.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("called /work/batch?ms=1: 200, ran at critical\n"),
        "{body}"
    );

    // A function calling itself is stopped by the depth limit, and every level answers.
    let (status, body) = get(gw, "/chain?to=self").await;
    assert_eq!(status, 508, "{body}");
    assert_eq!(
        body.matches("called /chain?to=self: 508").count(),
        9,
        "depths 0 to 8 ran, depth 9 was refused: {body}"
    );
    assert!(
        body.contains("call chain depth 9 is over the limit of 8"),
        "{body}"
    );

    // An outside request cannot claim a caller's class: without a call token signed by the
    // gateway, or with a made-up one, the platform's headers are refused.
    for extra in [
        "x-turnpike-caller-class: critical\r\nx-turnpike-depth: 1\r\n",
        "x-turnpike-caller-class: critical\r\nx-turnpike-depth: 1\r\nx-turnpike-chain-token: guess\r\n",
        "x-turnpike-depth: 0\r\n",
    ] {
        let request = format!(
            "GET /work/batch?ms=1 HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n"
        );
        let (status, body) = http(gw, request.as_bytes()).await;
        assert_eq!(status, 403, "{extra}: {body}");
        assert!(
            body.contains("set by the platform") || body.contains("call token is malformed"),
            "{body}"
        );
    }
    assert_eq!(get(gw, "/hello").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_workers_run_through_the_real_gateway_and_shards() {
    use turnpike_node::emulated::{EmulatedConfig, MachinePolicy};
    let _serial = serial().await;
    for policy in [MachinePolicy::Turnpike, MachinePolicy::Hermod] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = UpConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.path().to_path_buf(),
        );
        config.workers = 200;
        let mut emulated = EmulatedConfig::new(turnpike_policy::ClassSet::default_four());
        emulated.policy = policy;
        config.emulated = Some(emulated);
        let cluster = up::start(&config).await.expect("the cluster starts");
        assert_eq!(cluster.workers.len(), 200);
        for s in 0..4 {
            assert_eq!(cluster.shard(s).live_workers(), 200, "{policy:?}");
        }
        let gw = cluster.gateway;
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                tokio::spawn(
                    async move { get(gw, &format!("/work/batch?ms={}&mb=8", i % 5)).await },
                )
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (status, body) = t.await.expect("request");
            assert_eq!(status, 200, "{policy:?}: {body}");
            assert_eq!(body, format!("emulated ms={} mb=8\n", i % 5));
        }
        // A runtime the emulation cannot read is the caller's mistake, not a failure.
        let (status, body) = get(gw, "/work/batch?ms=soon").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("ms"), "{body}");
        // Every request was placed once, the unreadable one too (its worker refused it).
        let placed: u64 = (0..4)
            .map(|s| {
                let c = cluster.shard(s).counters();
                c.placed_idle_list + c.placed_polling
            })
            .sum();
        assert_eq!(placed, 51, "{policy:?}");
        cluster.stop().await;
    }
}
