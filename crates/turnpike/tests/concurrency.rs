//! Concurrency limits end to end through the real `turnpike` binary: a function's
//! `concurrency_max` from the manifest and a tenant's set with `turnpike tenants limit`, each
//! counted from the guests' own wall-clock stamps (the `sleep` example with `stamp=1` says
//! when it started and ended, so the most that ran at once is read off what ran, not off the
//! platform's counters); excess invocations wait (none is refused) and leave by class; one
//! whose deadline passes while it waits gets 504; asynchronous ones wait in the store; bad
//! limits are refused naming the field. With two gateways sharing two shards the limit holds
//! exactly; with gateways that disagree on the shards (the worst case of a failover) it
//! overshoots by at most the stated bound, twice the limit.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::send;
use common::{create_tenant, fresh_postgres, start_role, turnpike, up, Child};
use serde_json::Value;

/// `sleep` limited to 2 at once; `hello` unlimited.
const MANIFEST: &str = r#"app = "shop"

[functions]
hello = "dist/hello.wasm"
sleep = { component = "dist/sleep.wasm", concurrency_max = 2 }
"#;

fn deploy(gateway: SocketAddr, key: &str, manifest: &str) {
    let dir = common::app_dir(manifest, &["hello", "sleep"]);
    let path = dir.path().join("turnpike.toml");
    turnpike(
        gateway,
        key,
        &["deploy", "--manifest", path.to_str().expect("utf-8")],
    );
}

/// One run of `sleep` as the guest saw it: `(start, end)` in wall-clock microseconds.
fn stamps(body: &str) -> (u64, u64) {
    let words: Vec<&str> = body.split_whitespace().collect();
    match words.as_slice() {
        ["slept", _, "ms", "from", start, "to", end] => (
            start.parse().expect("a start"),
            end.parse().expect("an end"),
        ),
        _ => panic!("not a stamped sleep: {body:?}"),
    }
}

/// The most runs in progress at once.
fn most_at_once(runs: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = runs
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An end before a start at the same microsecond: back to back is not at once.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Invokes `shop/sleep` `n` times at once (spread over `gateways`, at `class`, `ms` each):
/// each run's stamps, in the order sent.
async fn sleeps(gateways: &[SocketAddr], key: &str, n: usize, ms: u64) -> Vec<(u64, u64)> {
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..n {
        let gateway = gateways[i % gateways.len()];
        let auth = format!("Bearer {key}");
        runs.spawn(async move {
            let path = format!("/v1/apps/shop/functions/sleep/invoke?ms={ms}&stamp=1");
            let headers = [
                ("Authorization", auth.as_str()),
                ("x-turnpike-class", "batch"),
            ];
            let answer = send(gateway, "POST", &path, &headers, "").await;
            assert_eq!(answer.status, 200, "none is refused: {answer:?}");
            (i, stamps(&answer.body))
        });
    }
    let mut done: Vec<(usize, (u64, u64))> = runs.join_all().await;
    done.sort();
    done.into_iter().map(|(_, run)| run).collect()
}

/// Through `turnpike up` (SQLite, its shards in one process): the function's limit, the
/// tenant's, class order among waiters, a deadline passing while waiting, asynchronous
/// invocations, and bad limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_waiters_leave_by_class_and_bad_limits_are_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, gateway, admin) = up(data.path());
    let key = create_tenant(gateway, &admin, "acme");
    deploy(gateway, &key, MANIFEST);
    let app = turnpike(gateway, &key, &["apps", "list", "--json"]);
    assert!(app.contains("\"concurrency_max\": 2"), "{app}");

    // The function's limit: 8 at once, at most 2 run at once, every one answered.
    let runs = sleeps(&[gateway], &key, 8, 300).await;
    assert_eq!(most_at_once(&runs), 2, "{runs:?}");

    // The tenant's limit, lower: 1.
    turnpike(
        gateway,
        &admin,
        &["tenants", "limit", "acme", "--concurrency-max", "1"],
    );
    let tenants = turnpike(gateway, &admin, &["tenants", "list", "--json"]);
    assert!(tenants.contains("\"concurrency_max\": 1"), "{tenants}");
    let runs = sleeps(&[gateway], &key, 4, 200).await;
    assert_eq!(most_at_once(&runs), 1, "{runs:?}");

    // Waiters leave by class: one runs, a batch and then a critical one wait; the critical
    // one runs first.
    let auth = format!("Bearer {key}");
    let invoke = |class: &'static str, ms: u64, deadline: Option<&'static str>| {
        let auth = auth.clone();
        async move {
            let path = format!("/v1/apps/shop/functions/sleep/invoke?ms={ms}&stamp=1");
            let mut headers = vec![
                ("Authorization", auth.as_str()),
                ("x-turnpike-class", class),
            ];
            if let Some(d) = deadline {
                headers.push(("x-turnpike-deadline-ms", d));
            }
            send(gateway, "POST", &path, &headers, "").await
        }
    };
    let first = tokio::spawn(invoke("batch", 600, None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let batch = tokio::spawn(invoke("batch", 50, None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let critical = tokio::spawn(invoke("critical", 50, None));
    // And one whose deadline passes while it waits: 504, naming the deadline.
    let late = invoke("critical", 50, Some("100")).await;
    assert_eq!(late.status, 504, "{late:?}");
    assert!(late.body.contains("deadline"), "{late:?}");
    let (first, batch, critical) = (
        first.await.expect("first"),
        batch.await.expect("batch"),
        critical.await.expect("critical"),
    );
    for answer in [&first, &batch, &critical] {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let (first, batch, critical) = (
        stamps(&first.body),
        stamps(&batch.body),
        stamps(&critical.body),
    );
    assert!(
        first.1 <= critical.0 && critical.1 <= batch.0,
        "the critical waiter runs before the batch one that came first: first {first:?}, critical {critical:?}, batch {batch:?}"
    );

    // Asynchronous invocations of a limited function wait in the store and all run.
    turnpike(gateway, &admin, &["tenants", "limit", "acme", "--none"]);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let answer = send(
            gateway,
            "POST",
            "/v1/apps/shop/functions/sleep/invoke?ms=200&stamp=1",
            &[
                ("Authorization", auth.as_str()),
                ("x-turnpike-class", "standard"),
                ("Prefer", "respond-async"),
            ],
            "",
        )
        .await;
        assert_eq!(answer.status, 202, "{answer:?}");
        let id: Value = serde_json::from_str(&answer.body).expect("JSON");
        ids.push(id["id"].as_str().expect("an id").to_string());
    }
    // They take at least 600 ms two at a time: just after they were submitted, some wait
    // in the store.
    let listed = send(
        gateway,
        "GET",
        "/v1/invocations?state=queued",
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    let listed: Value = serde_json::from_str(&listed.body).expect("JSON");
    let queued = listed["invocations"].as_array().map_or(0, Vec::len);
    assert!(queued >= 1, "some wait in the store, queued: {listed:#}");
    let mut runs = Vec::new();
    for id in &ids {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = send(
                gateway,
                "GET",
                &format!("/v1/invocations/{id}"),
                &[("Authorization", auth.as_str())],
                "",
            )
            .await;
            let value: Value = serde_json::from_str(&answer.body).expect("JSON");
            if value["state"] == "succeeded" {
                let body = value["result"]["body"]
                    .as_str()
                    .expect("a body")
                    .to_string();
                runs.push(stamps(&body));
                break;
            }
            assert_ne!(value["state"], "failed", "{value:#}");
            assert!(Instant::now() < until, "{id} did not end: {value:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(most_at_once(&runs) <= 2, "{runs:?}");
    // A percent-encoded query value is decoded: `shop%2Fsleep` is `shop/sleep`.
    let listed = send(
        gateway,
        "GET",
        "/v1/invocations?state=succeeded&function=shop%2Fsleep",
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    let listed: Value = serde_json::from_str(&listed.body).expect("JSON");
    assert_eq!(
        listed["invocations"].as_array().map_or(0, Vec::len),
        ids.len(),
        "{listed:#}"
    );

    // Bad limits: refused naming the field, nothing changed.
    let bad = Command::new(common::BIN)
        .args(["tenants", "limit", "acme", "--concurrency-max", "-3"])
        .env("TURNPIKE_GATEWAY", format!("http://{gateway}"))
        .env("TURNPIKE_KEY", &admin)
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--concurrency-max"), "{stderr}");
    for (body, says) in [
        (r#"{"concurrency_max": 0}"#, "concurrency_max"),
        (r#"{"concurrency_max": 99999999999}"#, "concurrency_max"),
        (r#"{"concurrency": 3}"#, "unknown field"),
    ] {
        let answer = send(
            gateway,
            "PUT",
            "/v1/tenants/acme",
            &[("Authorization", &format!("Bearer {admin}"))],
            body,
        )
        .await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert!(answer.body.contains(says), "{body}: {answer:?}");
    }
    // Only an admin sets a tenant's limit.
    let answer = send(
        gateway,
        "PUT",
        "/v1/tenants/acme",
        &[("Authorization", auth.as_str())],
        r#"{"concurrency_max": 100}"#,
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    let app = r#"{"functions": {"sleep": "x"}, "concurrency_max": {"sleep": -1}}"#;
    let answer = send(
        gateway,
        "PUT",
        "/v1/apps/shop",
        &[("Authorization", auth.as_str())],
        app,
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("concurrency_max.sleep"), "{answer:?}");
    let tenants = turnpike(gateway, &admin, &["tenants", "list", "--json"]);
    assert!(!tenants.contains("concurrency_max"), "{tenants}");
    let runs = sleeps(&[gateway], &key, 4, 200).await;
    assert_eq!(
        most_at_once(&runs),
        2,
        "the function's limit is as deployed: {runs:?}"
    );
}

/// Shards, a worker with 8 slots registered with all of them, and a gateway per entry of
/// `gateway_shards` (the shards it sends to) on the store at `store`; a tenant with the app:
/// the processes, the gateways and the tenant's key.
async fn roles(
    store: &str,
    shards: usize,
    gateway_shards: &[&[usize]],
) -> (Vec<Child>, Vec<SocketAddr>, String) {
    let mut children = Vec::new();
    let mut shard_addrs = Vec::new();
    for seed in 0..shards {
        let (child, addr) = start_role(
            &["shard".into(), "--seed".into(), seed.to_string()],
            "shard listening on ",
        );
        children.push(child);
        shard_addrs.push(addr);
    }
    let mut gateways = Vec::new();
    let mut dirs = Vec::new();
    for uses in gateway_shards {
        let dir = tempfile::tempdir().expect("dir");
        let mut args = vec![
            "gateway".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--store".into(),
            store.into(),
        ];
        for &s in *uses {
            args.extend(["--shard".into(), shard_addrs[s].clone()]);
        }
        let (child, url) = start_role(&args, "gateway listening on http://");
        children.push(child);
        gateways.push(url.parse().expect("gateway address"));
        dirs.push(dir);
    }
    let worker_dir = tempfile::tempdir().expect("dir");
    let mut args = vec![
        "worker".to_string(),
        "--cores".into(),
        "8".into(),
        "--data-dir".into(),
        worker_dir.path().display().to_string(),
        "--store".into(),
        store.into(),
    ];
    for s in &shard_addrs {
        args.extend(["--shard".into(), s.clone()]);
    }
    let (worker, _) = start_role(&args, "worker listening on ");
    children.push(worker);
    // The tenant and its key straight in the store (the gateways print the admin key once,
    // on a line these helpers do not read).
    let opened = turnpike_store::Store::open(store).await.expect("the store");
    let (_, key) = opened.create_tenant("acme", false).await.expect("a tenant");
    deploy(gateways[0], &key, MANIFEST);
    // Every gateway has the app (the others at their next routing poll) and a worker.
    for &gateway in &gateways {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = send(
                gateway,
                "POST",
                "/v1/apps/shop/functions/hello/invoke",
                &[
                    ("Authorization", &format!("Bearer {key}")),
                    ("x-turnpike-class", "batch"),
                ],
                "",
            )
            .await;
            if answer.status == 200 {
                break;
            }
            assert!(Instant::now() < until, "{gateway} never served: {answer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    std::mem::forget(dirs);
    std::mem::forget(worker_dir);
    (children, gateways, key)
}

/// Two gateways sharing two shards: every invocation of the key reaches its home shard, so
/// the limit holds exactly across gateways. Two gateways that each know a different shard
/// (what gateways that disagree during a failover amount to at worst) give the key two homes:
/// at most twice the limit run at once, the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_gateways_and_shards_and_overshoots_at_most_twice_when_they_disagree(
) {
    let Some(store) = fresh_postgres("concurrency").await else {
        return;
    };
    let (children, gateways, key) = roles(&store, 2, &[&[0, 1], &[1, 0]]).await;
    let runs = sleeps(&gateways, &key, 12, 300).await;
    assert_eq!(most_at_once(&runs), 2, "exact across gateways: {runs:?}");
    drop(children);

    let Some(store) = fresh_postgres("concurrency_split").await else {
        return;
    };
    let (children, gateways, key) = roles(&store, 2, &[&[0], &[1]]).await;
    let runs = sleeps(&gateways, &key, 12, 300).await;
    let most = most_at_once(&runs);
    assert!(most <= 4, "at most twice the limit: {most}, {runs:?}");
    assert!(
        most > 2,
        "two homes do overshoot (so the bound is the one tested): {runs:?}"
    );
    drop(children);
}

#[test]
fn most_at_once_counts_overlaps_not_back_to_back_runs() {
    assert_eq!(most_at_once(&[(0, 10), (10, 20), (20, 30)]), 1);
    assert_eq!(most_at_once(&[(0, 10), (5, 20), (6, 7), (15, 30)]), 3);
    assert_eq!(most_at_once(&[]), 0);
}
