//! The roles as separate processes: a worker process SIGKILLed mid-load (the shards notice,
//! place its invocations again on the surviving worker, and every request gets an answer, a
//! result or a clear 503, none hangs, each answered invocation billed once), a shard process SIGKILLed mid-load (the gateway sends
//! what it had in flight there, and new work, to the other shard; the worker cancels the
//! first attempts, and every invocation answered is billed exactly once), a cluster of `turnpike shard`, `turnpike worker` and
//! `turnpike gateway` processes serving a route and a call between functions, and
//! `turnpike up --emulate` serving emulated invocations and stopping cleanly on SIGTERM, and a
//! shard stopping on SIGTERM while it holds an invocation no worker will take.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use turnpike_cluster::up::{self, UpConfig};

use common::{counter, get, start_role, start_role_with_metrics, Child, BIN};

/// A `turnpike gateway` on a loopback port with its data in `dir`, sending to `shard`, with
/// one operator `route`; and its address.
fn start_gateway(dir: &std::path::Path, shard: &str, route: &str) -> (Child, SocketAddr) {
    let (child, url) = start_role(
        &[
            "gateway".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--shard".into(),
            shard.into(),
            "--route".into(),
            route.into(),
        ],
        "gateway listening on http://",
    );
    (child, url.parse().expect("gateway address"))
}

/// Invocations billed to the operator (the routes' owner) this month.
async fn billed(store: &turnpike_store::Store) -> u64 {
    let month = turnpike_store::Day::of_unix(turnpike_store::unix_now()).month_start();
    store
        .usage(
            turnpike_gateway::routing::OPERATOR,
            &[],
            month,
            month.next_month_start(),
        )
        .await
        .expect("usage")
        .iter()
        .map(|r| r.totals.invocations)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_mid_load_and_every_request_is_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.workers = 1;
    config.cores_per_worker = 1;
    config.memory_mb_per_worker = 1024;
    let cluster = up::start(&config).await.expect("the cluster starts");
    let gw = cluster.gateway;

    // A second worker in its own process, registered with the same shards, with the demo
    // app's components loaded.
    let mut args = vec![
        "worker".to_string(),
        "--insecure-internal".into(),
        "--data-dir".into(),
        dir.path().join("external").display().to_string(),
    ];
    for s in &cluster.shards {
        args.extend(["--shard".into(), s.to_string()]);
    }
    for f in ["hello", "spin"] {
        args.extend([
            "--load".into(),
            config
                .functions_dir
                .join(format!("{f}.wasm"))
                .display()
                .to_string(),
        ]);
    }
    let mut child = Child(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("turnpike worker starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("readable");
    assert!(first.starts_with("worker listening on"), "{first}");
    // Keep reading what it prints, so it never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let start = Instant::now();
    while (0..4).any(|s| cluster.shard(s).live_workers() < 2) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker process never registered with every shard"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let requests: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    "/work/batch?ms=200"
                } else {
                    "/work/critical?ms=30"
                };
                get(gw, path).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.0.kill().expect("SIGKILL the worker process");
    let mut statuses = Vec::new();
    for r in requests {
        let (status, text) = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("every request is answered, none hangs")
            .expect("request task");
        assert!(
            status == 200 || status == 503,
            "a result or a clear error, got {text}"
        );
        statuses.push(status);
    }
    let lost: u64 = (0..4)
        .map(|s| cluster.shard(s).counters().workers_lost)
        .sum();
    let replaced: u64 = (0..4).map(|s| cluster.shard(s).counters().replaced).sum();
    assert!(lost >= 1, "no shard noticed the killed worker");
    assert!(replaced >= 1, "nothing was placed again");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 14,
        "the survivor should have taken over: {statuses:?}"
    );
    assert_eq!(get(gw, "/hello").await.0, 200, "new work still runs");
    // Each invocation answered 200 is billed once (the /hello just now too), for the run
    // that answered; a run lost with the killed process is the platform's loss, not billed.
    let answered = statuses.iter().filter(|&&s| s == 200).count() as u64 + 1;
    let store = cluster.store.clone();
    cluster.stop().await;
    let billed = billed(&store).await;
    assert_eq!(billed, answered, "each answered invocation billed once");
}

/// Runs `turnpike ARGS`, which must succeed.
fn turnpike(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("turnpike runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster CA and one certificate per role named after it, made by `turnpike certs`.
fn certificates(dir: &std::path::Path) -> String {
    let dir = dir.display().to_string();
    turnpike(&["certs", "init", "--dir", &dir]);
    for role in ["gateway", "shard", "worker"] {
        turnpike(&["certs", "issue", "--role", role, role, "--dir", &dir]);
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_in_its_own_process() {
    let gateway_dir = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let tls_dir = tempfile::tempdir().expect("temp dir");
    // Every RPC between these processes is mutual TLS with certificates from `turnpike certs`.
    let tls_dir = certificates(tls_dir.path());
    let tls = |mut args: Vec<String>| {
        args.extend(["--tls-dir".into(), tls_dir.clone()]);
        args
    };
    let functions = turnpike_cluster::up::default_functions_dir();
    let mut children = Vec::new();
    let mut shards = Vec::new();
    // One shard from flags, one from a config file (whose `seed` the command line overrides;
    // with one runtime thread, as the gateway below).
    let config = dir.path().join("shard.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nseed = 9\nk = 2\nthreads = 1\n",
    )
    .expect("write");
    for args in [
        vec!["shard".to_string(), "--seed".into(), "1".into()],
        vec![
            "shard".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--seed".into(),
            "2".into(),
        ],
    ] {
        let args = tls(args);
        let (child, addr) = start_role(&args, "shard listening on ");
        children.push(child);
        shards.push(addr);
    }
    // The gateway first: the worker sends its guests' calls there. Functions are named by
    // their content hashes, which the worker will print as it loads them.
    let hash = |name: &str| {
        let bytes = std::fs::read(functions.join(format!("{name}.wasm"))).expect("example");
        turnpike_worker::cache::sha256_hex(&bytes)
    };
    let mut gateway_args = vec![
        "gateway".to_string(),
        "--threads".into(),
        "1".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        gateway_dir.path().display().to_string(),
        "--route".into(),
        format!("/hello={}@critical", hash("hello")),
        "--route".into(),
        format!("/chain={}@batch", hash("chain")),
    ];
    for s in &shards {
        gateway_args.extend(["--shard".into(), s.clone()]);
    }
    let (gateway, url) = start_role(&tls(gateway_args), "gateway listening on http://");
    children.push(gateway);
    let mut worker_args = vec![
        "worker".to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--gateway".into(),
        url.clone(),
    ];
    for name in ["hello", "chain"] {
        worker_args.extend([
            "--load".into(),
            functions.join(format!("{name}.wasm")).display().to_string(),
        ]);
    }
    for s in &shards {
        worker_args.extend(["--shard".into(), s.clone()]);
    }
    let (worker, _) = start_role(&tls(worker_args), "worker listening on ");
    children.push(worker);
    let gw: SocketAddr = url.parse().expect("gateway address");
    // The worker registers with the shards in its first dispatcher round.
    let start = Instant::now();
    loop {
        let (status, text) = get(gw, "/hello").await;
        if status == 200 {
            assert!(text.contains("hello from turnpike"), "{text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no answer from the separate roles: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(gw, "/elsewhere").await.0, 404);
    // A call between functions: the gateway signs the caller's call token with its chain key.
    let (status, text) = get(gw, "/chain?to=/hello").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\r\n\r\ncalled /hello: 200, ran at critical\n"),
        "{text}"
    );
    // The dashboard's numbers come over the same mutual-TLS RPCs: the gateway asks each
    // shard (`Shard.Metrics`), which asks its workers (`Worker.Metrics`).
    let store = turnpike_store::Store::open(&turnpike_store::Store::sqlite_url(gateway_dir.path()))
        .await
        .expect("the gateway's store");
    let (_, key) = store
        .create_tenant("watcher", true)
        .await
        .expect("an admin");
    let snapshot = common::dashboard_event(gw, &key).await;
    assert_eq!(snapshot["shards_missing"], 0, "{snapshot}");
    let workers = snapshot["workers"].as_array().expect("workers");
    assert_eq!(
        workers.len(),
        1,
        "one worker, counted once though at two shards: {snapshot}"
    );
    assert!(
        workers[0]["slots"].as_f64().is_some_and(|s| s >= 1.0),
        "{snapshot}"
    );
    let critical = snapshot["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .find(|c| c["name"] == "critical")
        .expect("the critical class");
    assert!(
        critical["requests_total"].as_u64().is_some_and(|n| n >= 2),
        "{snapshot}"
    );
    drop(children);
}

#[test]
fn a_bad_route_is_refused_at_start_naming_the_classes() {
    let out = Command::new(BIN)
        .args([
            "gateway",
            "--insecure-internal",
            "--shard",
            "127.0.0.1:1",
            "--route",
            "/x=abc@gold",
        ])
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gold") && err.contains("critical"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_emulated_workers_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut up, url) = start_role(
        &[
            "up".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--emulate".into(),
            "50".into(),
            "--policy".into(),
            "hermod".into(),
        ],
        "Turnpike is up: gateway http://",
    );
    let gw: SocketAddr = url.parse().expect("gateway address");
    let (status, text) = get(gw, "/work/batch?ms=3&mb=5").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\nemulated ms=3 mb=5\n"), "{text}");

    let pid = up.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let start = Instant::now();
    loop {
        if let Some(status) = up.0.try_wait().expect("wait") {
            assert!(
                status.success(),
                "`turnpike up` exits cleanly on SIGTERM: {status}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "`turnpike up` did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_role_without_tls_or_insecure_internal_is_refused_naming_both() {
    for args in [
        &["shard"][..],
        &["worker", "--shard", "127.0.0.1:1"],
        &["gateway", "--shard", "127.0.0.1:1"],
    ] {
        let role = args[0];
        let out = Command::new(BIN)
            .args(args)
            .env_remove("TURNPIKE_TLS_DIR")
            .env_remove("TURNPIKE_INSECURE_INTERNAL")
            .output()
            .expect("starts");
        assert_eq!(out.status.code(), Some(2), "{role}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--tls-dir") && err.contains("--insecure-internal"),
            "{role}: {err}"
        );
    }
    // A TLS directory without the role's certificate says which file and how to make it.
    let dir = tempfile::tempdir().expect("temp dir");
    let tls_dir = certificates(dir.path());
    std::fs::remove_file(dir.path().join("shard.key")).expect("remove");
    let out = Command::new(BIN)
        .args(["shard", "--tls-dir", &tls_dir])
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shard.key") && err.contains("turnpike certs"),
        "{err}"
    );
}

#[test]
fn certs_init_refuses_to_replace_a_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls_dir = certificates(dir.path());
    let out = Command::new(BIN)
        .args(["certs", "init", "--dir", &tls_dir])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.key already exists"), "{err}");
}

#[test]
fn a_policy_without_emulated_workers_is_refused() {
    let out = Command::new(BIN)
        .args(["up", "--insecure-internal", "--policy", "hermod"])
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--emulate"), "{err}");
}

#[test]
fn a_short_chain_token_is_refused_at_start() {
    // Only gateways hold the chain key (workers carry the tokens it signs).
    let out = Command::new(BIN)
        .args(["gateway", "--insecure-internal", "--shard", "127.0.0.1:1"])
        .env("TURNPIKE_CHAIN_TOKEN", "guessable")
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_process_killed_mid_load_and_every_request_is_answered() {
    let gateway_dir = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let functions = turnpike_cluster::up::default_functions_dir();
    let spin = functions.join("spin.wasm");
    let spin_hash = turnpike_worker::cache::sha256_hex(&std::fs::read(&spin).expect("spin.wasm"));
    let mut shards = Vec::new();
    let mut shard_children = Vec::new();
    for seed in 1..=2 {
        let (child, addr) = start_role(
            &["shard".into(), "--seed".into(), seed.to_string()],
            "shard listening on ",
        );
        shard_children.push(child);
        shards.push(addr);
    }
    let mut args = vec![
        "worker".to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--cores".into(),
        "2".into(),
        "--load".into(),
        spin.display().to_string(),
    ];
    for s in &shards {
        args.extend(["--shard".into(), s.clone()]);
    }
    let (worker, _, worker_metrics) = start_role_with_metrics(&args, "worker listening on ");
    let mut args = vec![
        "gateway".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        gateway_dir.path().display().to_string(),
        "--route".into(),
        format!("/spin={spin_hash}@batch"),
    ];
    for s in &shards {
        args.extend(["--shard".into(), s.clone()]);
    }
    let (gateway, url, gateway_metrics) =
        start_role_with_metrics(&args, "gateway listening on http://");
    let gw: SocketAddr = url.parse().expect("gateway address");
    let start = Instant::now();
    while get(gw, "/spin?ms=1").await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 24 spins of 100 ms over 2 slots: both shards have work in flight when one dies.
    let requests: Vec<_> = (0..24)
        .map(|_| tokio::spawn(async move { get(gw, "/spin?ms=100").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(shard_children.remove(0)); // SIGKILL
    let mut ok = 0;
    for r in requests {
        let (status, text) = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("every request is answered, none hangs")
            .expect("request task");
        match status {
            200 => ok += 1,
            503 => assert!(text.contains("shard"), "a 503 says why: {text}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(ok > 0, "work placed by the surviving shard succeeds");
    // New work goes to the surviving shard.
    for _ in 0..6 {
        let (status, text) = get(gw, "/spin?ms=1").await;
        assert_eq!(status, 200, "{text}");
    }
    // Billed exactly once each: the 200s (the first, the burst's and these six). A first
    // attempt whose shard died was cancelled on the worker and is not billed; its retry is.
    // The gateway's ledger commits within milliseconds; SIGKILL would lose what it holds, so
    // read the store while it runs.
    let store = turnpike_store::Store::open(&turnpike_store::Store::sqlite_url(gateway_dir.path()))
        .await
        .expect("the gateway's store");
    let answered = 1 + ok + 6;
    let start = Instant::now();
    let billed = loop {
        let billed = billed(&store).await;
        if billed >= answered || start.elapsed() > Duration::from_secs(10) {
            break billed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(billed, answered, "each invocation answered 200 billed once");
    // The metrics say what happened: the gateway retried elsewhere, and the worker cancelled
    // the attempts that came through the dead shard instead of running them for nobody.
    let retries = counter(&gateway_metrics, "turnpike_gateway_shard_retries_total").await;
    let cancelled = counter(&worker_metrics, "turnpike_worker_cancelled_total").await;
    assert!(retries >= 1.0, "{retries} retries");
    assert!(cancelled >= 1.0, "{cancelled} cancelled on the worker");
    drop((worker, gateway));
}

#[test]
fn a_bad_config_file_is_refused_naming_the_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "shard = [\"127.0.0.1:1\"]\nlisten = \"127.0.0.1:0\"\nroutes = []\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["gateway", "--insecure-internal", "--config"])
        .arg(&config)
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml: line 3") && err.contains("`routes`") && err.contains("route"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_of_emulated_workers_serves_a_separate_gateway() {
    let gateway_dir = tempfile::tempdir().expect("temp dir");
    let (shard, shard_addr) = start_role(&["shard".into()], "shard listening on ");
    let (workers, line) = start_role(
        &[
            "worker".into(),
            "--emulate".into(),
            "100".into(),
            "--shard".into(),
            shard_addr.clone(),
        ],
        "100 emulated workers listening on ",
    );
    assert!(line.contains(" .. "), "{line}");
    let (gateway, gw) = start_gateway(gateway_dir.path(), &shard_addr, "/e=anything@critical");
    let start = Instant::now();
    loop {
        let (status, text) = get(gw, "/e?ms=2&mb=3").await;
        if status == 200 {
            assert!(text.ends_with("\r\n\r\nemulated ms=2 mb=3\n"), "{text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((shard, workers, gateway));
}

/// A shard holding an invocation no worker will ever take (it has none) still stops on
/// SIGTERM: its RPC server would wait for that open call forever, so the shard gives its calls
/// a grace period and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_an_invocation_waiting_for_a_worker_stops_on_sigterm() {
    let gateway_dir = tempfile::tempdir().expect("temp dir");
    let (mut shard, shard_addr) = start_role(
        &["shard".to_string(), "--listen".into(), "127.0.0.1:0".into()],
        "shard listening on ",
    );
    let route = format!("/nowhere={}@critical", "ab".repeat(32));
    let (_gateway, gateway) = start_gateway(gateway_dir.path(), &shard_addr, &route);
    // Queued at the shard, with no worker to place it on: the request waits.
    let waiting = tokio::spawn(async move { get(gateway, "/nowhere").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the invocation should wait for a worker"
    );
    let pid = shard.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.expect("kill runs").success());
    // Bounded only so that a shard that never stops fails the test instead of hanging it.
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = shard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "the shard is still running 60 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    // The gateway answers the waiting request (its only shard is gone), not never.
    let (status, text) = waiting.await.expect("the request task");
    assert!(status >= 500, "{text}");
}
