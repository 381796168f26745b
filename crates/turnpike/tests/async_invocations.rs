//! Asynchronous invocations end to end through the real `turnpike` binary: submitted with
//! `Prefer: respond-async` or to an `async = true` route, answered 202 once stored, run
//! through the cluster, their results read back; retries of the function's own failures as
//! asked; idempotency keys; the per-tenant queue bound; another tenant's id is 404; and
//! nothing accepted is lost when the whole system is killed and started again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{send, Answer};
use common::{create_tenant, fresh_postgres, turnpike, up_with};
use serde_json::Value;

/// An app of the example functions: `echo` and `spin` directly, `/` (hello) synchronous,
/// `/jobs` (spin) asynchronous with one retry.
const MANIFEST: &str = r#"app = "shop"

[functions]
hello = "dist/hello.wasm"
echo = "dist/echo.wasm"
spin = "dist/spin.wasm"

[[routes]]
path = "/"
function = "hello"
class = "critical"

[[routes]]
path = "/jobs"
function = "spin"
class = "batch"
async = true
retries = 1
"#;

/// An app whose only trigger is a schedule, every second.
const TICKS: &str = r#"app = "ticks"

[functions]
spin = "dist/spin.wasm"

[[schedules]]
cron = "@every 1s"
function = "spin"
path = "/?ms=1"
class = "interactive"
"#;

/// A directory with the example components and [`MANIFEST`].
fn app_dir() -> tempfile::TempDir {
    app_dir_of(MANIFEST)
}

/// A directory with the example components and `manifest`.
fn app_dir_of(manifest: &str) -> tempfile::TempDir {
    common::app_dir(manifest, &["hello", "echo", "spin"])
}

/// A tenant with the app deployed: its key.
fn tenant_with_app(gateway: SocketAddr, admin: &str, name: &str) -> String {
    let key = create_tenant(gateway, admin, name);
    let dir = app_dir();
    let manifest = dir.path().join("turnpike.toml");
    turnpike(
        gateway,
        &key,
        &["deploy", "--manifest", manifest.to_str().expect("utf-8")],
    );
    key
}

fn json(answer: &Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

/// Submits an asynchronous direct invocation of `shop/{function}`: the 202's id.
async fn submit(
    gateway: SocketAddr,
    key: &str,
    function: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("x-turnpike-class", "standard"),
        ("Prefer", "respond-async"),
    ];
    headers.extend_from_slice(extra);
    send(
        gateway,
        "POST",
        &format!("/v1/apps/shop/functions/{function}/invoke{path}"),
        &headers,
        body,
    )
    .await
}

/// `GET /v1/invocations/{id}` as `key`.
async fn show(gateway: SocketAddr, key: &str, id: &str) -> Answer {
    let auth = format!("Bearer {key}");
    send(
        gateway,
        "GET",
        &format!("/v1/invocations/{id}"),
        &[("Authorization", &auth)],
        "",
    )
    .await
}

/// Polls invocation `id` until it has ended (or `within` passes): its JSON.
async fn ended(gateway: SocketAddr, key: &str, id: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let answer = show(gateway, key, id).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let value = json(&answer);
        if value["state"] == "succeeded" || value["state"] == "failed" {
            return value;
        }
        assert!(
            Instant::now() < until,
            "invocation {id} did not end within {within:?}: {value:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_invocations_queue_run_retry_and_keep_their_results() {
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, gateway, admin) = common::up(data.path());
    let key = tenant_with_app(gateway, &admin, "acme");
    let other = create_tenant(gateway, &admin, "other");

    // A direct invocation with `Prefer: respond-async`: 202 once stored, then run.
    let accepted = submit(gateway, &key, "echo", "/x?y=1", &[], "hello async").await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let id = json(&accepted)["id"].as_str().expect("an id").to_string();
    assert_eq!(
        accepted.header("location"),
        Some(format!("/v1/invocations/{id}").as_str())
    );
    let done = ended(gateway, &key, &id, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["class"], "standard");
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["body"], "hello async");
    assert_eq!(done["result"]["headers"]["x-echo-method"], "POST");
    assert!(done["result"]["invocation"].as_u64().is_some(), "{done:#}");
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(
            done[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{done:#}"
        );
    }

    // Another tenant sees no such invocation, exactly as a missing one.
    assert_eq!(show(gateway, &other, &id).await.status, 404);
    assert_eq!(show(gateway, &key, "0123456789abcdef").await.status, 404);

    // An `async = true` route: 202 without asking.
    let host = "shop.localhost";
    let routed = send(gateway, "GET", "/jobs?ms=5", &[("Host", host)], "").await;
    assert_eq!(routed.status, 202, "{routed:?}");
    let routed_id = json(&routed)["id"].as_str().expect("an id").to_string();
    let done = ended(gateway, &key, &routed_id, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["class"], "batch");
    assert!(
        done["result"]["body"]
            .as_str()
            .unwrap_or("")
            .starts_with("checksum="),
        "{done:#}"
    );
    // Asking for an asynchronous run on a route that is not declared async: refused, named.
    let refused = send(
        gateway,
        "GET",
        "/",
        &[("Host", host), ("Prefer", "respond-async")],
        "",
    )
    .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("async = true"), "{refused:?}");

    // The function's own failure (its deadline passes) is retried as asked, then failed.
    let failing = submit(
        gateway,
        &key,
        "spin",
        "?ms=400",
        &[
            ("x-turnpike-deadline-ms", "30"),
            ("x-turnpike-retries", "1"),
        ],
        "",
    )
    .await;
    assert_eq!(failing.status, 202, "{failing:?}");
    let failing_id = json(&failing)["id"].as_str().expect("an id").to_string();
    let done = ended(gateway, &key, &failing_id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(done["attempts"], 2, "one retry: {done:#}");
    assert_eq!(done["result"]["status"], 504, "{done:#}");
    assert!(
        done["error"].as_str().unwrap_or("").contains("deadline"),
        "{done:#}"
    );

    // Bad input: each a clear 4xx naming the field, nothing stored.
    let before = list(gateway, &key, "").await.len();
    let bad = submit(
        gateway,
        &key,
        "echo",
        "",
        &[("x-turnpike-retries", "11")],
        "",
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("x-turnpike-retries"), "{bad:?}");
    let bad = submit(
        gateway,
        &key,
        "echo",
        "",
        &[("x-turnpike-deadline-ms", "soon")],
        "",
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(list(gateway, &key, "").await.len(), before);

    // An idempotency key: the same request twice is one invocation; another request with
    // the key is refused.
    let key_header = [("Idempotency-Key", "order-7")];
    let first = submit(gateway, &key, "echo", "", &key_header, "one").await;
    let again = submit(gateway, &key, "echo", "", &key_header, "one").await;
    assert_eq!((first.status, again.status), (202, 202), "{again:?}");
    assert_eq!(json(&first)["id"], json(&again)["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let reused = submit(gateway, &key, "echo", "", &key_header, "two").await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert!(reused.body.contains("order-7"), "{reused:?}");

    // Listing: by state and function, the caller's own only.
    let first_id = json(&first)["id"].as_str().expect("an id").to_string();
    ended(gateway, &key, &first_id, Duration::from_secs(20)).await;
    let echoes = list(gateway, &key, "?state=succeeded&function=shop/echo").await;
    let ids: BTreeSet<&str> = echoes.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, BTreeSet::from([id.as_str(), first_id.as_str()]));
    assert!(list(gateway, &other, "").await.is_empty());
    let bad = send_get(gateway, &key, "/v1/invocations?state=done").await;
    assert_eq!(bad.status, 400, "{bad:?}");

    // The CLI: `invoke --async` prints the id, `invocations ID` shows it.
    let printed = turnpike(
        gateway,
        &key,
        &[
            "invoke",
            "shop/echo",
            "--class",
            "batch",
            "--async",
            "--data",
            "from the cli",
        ],
    );
    let cli_id = printed.trim().to_string();
    let done = ended(gateway, &key, &cli_id, Duration::from_secs(20)).await;
    assert_eq!(done["result"]["body"], "from the cli");
    let shown = turnpike(gateway, &key, &["invocations", &cli_id]);
    assert!(
        shown.contains("succeeded") && shown.contains("from the cli"),
        "{shown}"
    );
    let table = turnpike(gateway, &key, &["invocations", "--state", "failed"]);
    assert!(
        table.contains(&failing_id) && !table.contains(&cli_id),
        "{table}"
    );

    // Every attempt that ran is in the usage ledger, once: echo 3 times (the first, the
    // idempotent one - its replay ran nothing - and the CLI's), spin 3 times (the route's and
    // the failing one's 2 attempts).
    let usage = turnpike(gateway, &key, &["usage", "--json"]);
    let usage: Value = serde_json::from_str(&usage).expect("usage JSON");
    let by_function: BTreeMap<&str, u64> = usage["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["function"].as_str().unwrap_or("?"),
                r["invocations"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_function,
        BTreeMap::from([("echo", 3), ("spin", 3)]),
        "{usage:#}"
    );
}

async fn send_get(gateway: SocketAddr, key: &str, path: &str) -> Answer {
    let auth = format!("Bearer {key}");
    send(gateway, "GET", path, &[("Authorization", &auth)], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_tick() {
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, gateway, admin) = common::up(data.path());
    let key = create_tenant(gateway, &admin, "acme");
    let dir = app_dir_of(TICKS);
    let manifest = dir.path().join("turnpike.toml");
    let deployed = Instant::now();
    turnpike(
        gateway,
        &key,
        &["deploy", "--manifest", manifest.to_str().expect("utf-8")],
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let runs = list(gateway, &key, "?function=ticks/spin").await;
    let elapsed = deployed.elapsed().as_secs_f64();
    // One tick a second since the deploy, each fired once: about `elapsed` of them (the
    // first tick comes up to a second after the deploy; a tick fires within 250 ms).
    assert!(
        runs.len() >= 2 && runs.len() as f64 <= elapsed.ceil(),
        "{} runs in {elapsed:.1} s: {runs:#?}",
        runs.len()
    );
    let created: BTreeSet<&str> = runs
        .iter()
        .filter_map(|r| r["created_at"].as_str())
        .collect();
    assert_eq!(
        created.len(),
        runs.len(),
        "two runs for one tick: {runs:#?}"
    );
    assert!(
        runs.iter().all(|r| r["class"] == "interactive"),
        "{runs:#?}"
    );
    let shown = turnpike(gateway, &key, &["schedules"]);
    assert!(
        shown.contains("@every 1s") && shown.contains("ticks/spin"),
        "{shown}"
    );
    let ended = ended(
        gateway,
        &key,
        runs[runs.len() - 1]["id"].as_str().expect("an id"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    assert!(
        ended["result"]["body"]
            .as_str()
            .unwrap_or("")
            .starts_with("checksum="),
        "{ended:#}"
    );
}

/// `GET /v1/invocations{query}`: the list.
async fn list(gateway: SocketAddr, key: &str, query: &str) -> Vec<Value> {
    let answer = send_get(gateway, key, &format!("/v1/invocations{query}")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    json(&answer)["invocations"]
        .as_array()
        .expect("a list")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_queue_is_bounded() {
    let data = tempfile::tempdir().expect("temp dir");
    // One runner slot, so the first submission holds it and the next ones wait.
    let (_up, gateway, admin) = up_with(
        data.path(),
        &[
            "--async-queue-invocations-max",
            "2",
            "--gateway-async-runs-max",
            "1",
        ],
    );
    let admin = admin.expect("an admin key");
    let key = tenant_with_app(gateway, &admin, "acme");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(submit(gateway, &key, "spin", "?ms=1500", &[], "").await);
    }
    assert_eq!(statuses[0].status, 202, "{:?}", statuses[0]);
    assert_eq!(statuses[1].status, 202, "{:?}", statuses[1]);
    assert_eq!(statuses[2].status, 429, "{:?}", statuses[2]);
    assert!(
        statuses[2].body.contains("async_queue_max"),
        "{:?}",
        statuses[2]
    );
    assert_eq!(
        list(gateway, &key, "").await.len(),
        2,
        "nothing stored for the refused one"
    );
}

/// SIGKILL of the whole system while 1,000 asynchronous invocations are queued or running;
/// started again on the same data, every one ends `succeeded`, and each succeeded one's last
/// attempt is in the ledger once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_when_the_whole_system_is_killed() {
    let data = tempfile::tempdir().expect("temp dir");
    let (first, gateway, admin) = common::up(data.path());
    let key = tenant_with_app(gateway, &admin, "acme");
    let restart = || vec![up_with(data.path(), &[])];
    let store = format!("sqlite://{}", data.path().join("turnpike.db").display());
    survives_a_kill(vec![(first, gateway, None)], &key, restart, &store).await;
}

/// The same with two gateways (two `turnpike up`s, each with its own shards and workers) on
/// one PostgreSQL database: each takes submissions and runs the queue; after the kill both
/// start again. An attempt run by both at once would be two ledger rows for one attempt, so
/// the ledger may never hold more rows than attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_with_two_gateways_on_postgres() {
    let Some(store) = fresh_postgres("async_kill").await else {
        return;
    };
    let (one, two) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let start = |dir: &Path| up_with(dir, &["--store", &store]);
    let (first, gateway, admin) = start(one.path());
    let admin = admin.expect("the first start on a fresh store prints the admin key");
    let second = start(two.path());
    let key = tenant_with_app(gateway, &admin, "acme");
    // The second gateway learns of the deploy at its next routing poll (every second).
    let auth = format!("Bearer {key}");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let headers = [
            ("Authorization", auth.as_str()),
            ("x-turnpike-class", "batch"),
        ];
        let path = "/v1/apps/shop/functions/echo/invoke";
        let answer = send(second.1, "POST", path, &headers, "").await;
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the second gateway never saw the app: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = || vec![start(one.path()), start(two.path())];
    survives_a_kill(vec![(first, gateway, None), second], &key, restart, &store).await;
}

/// Submits 1,000 asynchronous invocations through `systems`' gateways in turn, SIGKILLs
/// every system while some are queued or running, starts them again with `restart`, and
/// checks that every one ends `succeeded` and is billed (the ledger read at `store`).
async fn survives_a_kill(
    systems: Vec<(common::Child, SocketAddr, Option<String>)>,
    key: &str,
    restart: impl FnOnce() -> Vec<(common::Child, SocketAddr, Option<String>)>,
    store: &str,
) {
    const SUBMISSIONS: usize = 1000;
    const CLIENTS: usize = 16;
    let gateways: Vec<SocketAddr> = systems.iter().map(|s| s.1).collect();
    let started = Instant::now();
    // 16 clients at once, each submitting its share one after another, the gateways in turn.
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let key = key.to_string();
        let gateway = gateways[client % gateways.len()];
        let share = SUBMISSIONS / CLIENTS + usize::from(client < SUBMISSIONS % CLIENTS);
        clients.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..share {
                let answer = submit(gateway, &key, "spin", "?ms=3", &[], "").await;
                assert_eq!(answer.status, 202, "{answer:?}");
                ids.push(json(&answer)["id"].as_str().expect("an id").to_string());
            }
            ids
        });
    }
    let mut ids = Vec::with_capacity(SUBMISSIONS);
    while let Some(done) = clients.join_next().await {
        ids.extend(done.expect("a client"));
    }
    let submitting = started.elapsed();
    let waiting = list(gateways[0], key, "?state=queued&limit=1000")
        .await
        .len()
        + list(gateways[0], key, "?state=running&limit=1000")
            .await
            .len();
    eprintln!(
        "{SUBMISSIONS} submitted in {submitting:?} through {} gateways; {waiting} queued or running at the kill",
        gateways.len()
    );
    assert!(
        waiting > 0,
        "everything ran before the kill: the test proves nothing"
    );
    for (mut child, ..) in systems {
        let _ = child.0.kill();
        let _ = child.0.wait();
    }

    let systems = restart();
    let gateway = systems[0].1;
    let until = Instant::now() + Duration::from_secs(120);
    let (all, counts) = loop {
        let all = list(gateway, key, "?limit=1000").await;
        let counts: BTreeMap<String, usize> = all.iter().fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
        let done = counts.get("succeeded").copied().unwrap_or(0)
            + counts.get("failed").copied().unwrap_or(0);
        if done == SUBMISSIONS || Instant::now() > until {
            break (all, counts);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        counts.get("succeeded").copied(),
        Some(SUBMISSIONS),
        "after the restart: {counts:?}"
    );
    let listed: BTreeSet<&str> = all.iter().filter_map(|i| i["id"].as_str()).collect();
    let submitted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(listed, submitted, "every accepted id, and no other");

    // Each succeeded one's last attempt is billed, once (the ledger's key is the attempt's
    // id); no more rows than attempts (none billed twice, none run twice at once).
    let ledger = ledger_ids(store).await;
    let attempts: u64 = all
        .iter()
        .map(|i| i["attempts"].as_u64().unwrap_or(0))
        .sum();
    for invocation in &all {
        let last = invocation["result"]["invocation"]
            .as_u64()
            .expect("its attempt's id");
        assert!(
            ledger.contains(&(last as i64)),
            "attempt {last} not billed: {invocation:#}"
        );
    }
    let billed = ledger.len() as u64;
    assert!(
        billed >= SUBMISSIONS as u64 && billed <= attempts,
        "{billed} ledger rows for {SUBMISSIONS} invocations in {attempts} attempts"
    );
    eprintln!("{attempts} attempts, {billed} billed, {counts:?}");
    drop(systems);
}

/// Unix milliseconds of an API time, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn unix_ms(time: &Value) -> f64 {
    let text = time.as_str().expect("a time");
    let (date, clock) = text.split_once('T').expect("a date and a time");
    let day = turnpike_store::Day::parse(date).expect("a date");
    let clock: Vec<f64> = clock
        .trim_end_matches('Z')
        .split(':')
        .map(|part| part.parse().expect("a number"))
        .collect();
    let seconds = day.start_unix() as f64 + clock[0] * 3600.0 + clock[1] * 60.0 + clock[2];
    seconds * 1000.0
}

/// The invocation ids of `spin` in the ledger of the store at `url` (SQLite or PostgreSQL).
async fn ledger_ids(url: &str) -> BTreeSet<i64> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("open the store");
    let rows = sqlx::query("SELECT invocation FROM ledger WHERE function = 'spin'")
        .fetch_all(&pool)
        .await
        .expect("read the ledger");
    pool.close().await;
    rows.iter().map(|r| r.get::<i64, _>("invocation")).collect()
}

/// The asynchronous path's figures, printed (never asserted: a measurement, not a test).
/// `cargo test --release -p turnpike --test async_invocations -- --ignored --nocapture
/// measure_the_async_path` (with `TURNPIKE_POSTGRES_URL` set, PostgreSQL too): on one `turnpike
/// up`, 16 clients; the baseline is the same hello run synchronously in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name with --ignored"]
async fn measure_the_async_path() {
    let data = tempfile::tempdir().expect("temp dir");
    measure_on(data.path(), &[], "SQLite").await;
    if let Some(store) = fresh_postgres("async_measure").await {
        let data = tempfile::tempdir().expect("temp dir");
        measure_on(data.path(), &["--store", &store], "PostgreSQL").await;
    }
}

async fn measure_on(data: &Path, flags: &[&str], label: &str) {
    const N: usize = 2000;
    const CLIENTS: usize = 16;
    let (_up, gateway, admin) = up_with(data, flags);
    let key = tenant_with_app(gateway, &admin.expect("an admin key"), "acme");
    // N requests from 16 clients at once: the seconds they took.
    async fn load(
        gateway: SocketAddr,
        key: &str,
        extra: &[(&'static str, &'static str)],
    ) -> (f64, Vec<String>) {
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (key, extra) = (key.to_string(), extra.to_vec());
            clients.spawn(async move {
                let auth = format!("Bearer {key}");
                let mut ids = Vec::new();
                for _ in 0..N / CLIENTS {
                    let mut headers = vec![
                        ("Authorization", auth.as_str()),
                        ("x-turnpike-class", "standard"),
                    ];
                    headers.extend(extra.iter().copied());
                    let answer = send(
                        gateway,
                        "POST",
                        "/v1/apps/shop/functions/echo/invoke",
                        &headers,
                        "x",
                    )
                    .await;
                    assert!(answer.status == 200 || answer.status == 202, "{answer:?}");
                    if answer.status == 202 {
                        ids.push(json(&answer)["id"].as_str().expect("an id").to_string());
                    }
                }
                ids
            });
        }
        let mut ids = Vec::new();
        while let Some(done) = clients.join_next().await {
            ids.extend(done.expect("a client"));
        }
        (started.elapsed().as_secs_f64(), ids)
    }
    let (sync_s, _) = load(gateway, &key, &[]).await;
    let submitted_at = Instant::now();
    let (submit_s, ids) = load(gateway, &key, &[("Prefer", "respond-async")]).await;
    // Until every one has run.
    loop {
        let left = list(gateway, &key, "?state=queued&limit=1").await.len()
            + list(gateway, &key, "?state=running&limit=1").await.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_s = submitted_at.elapsed().as_secs_f64();
    let sync_rate = N as f64 / sync_s;
    let submit_rate = N as f64 / submit_s;
    let run_rate = ids.len() as f64 / all_s;
    println!(
        "{label}: sync echo {sync_rate:.0}/s; async submissions {submit_rate:.0}/s ({:.2}x sync); submitted and run {run_rate:.0}/s ({:.2}x sync)",
        submit_rate / sync_rate,
        run_rate / sync_rate
    );

    // Queue-to-start by class under load: 200 of each class of 10 ms of CPU submitted at
    // once (8 s of CPU on this machine's cores), the wait from submission to first start.
    let mut by_class: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for class in ["batch", "standard", "interactive", "critical"] {
        for _ in 0..200 {
            let auth = format!("Bearer {key}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("x-turnpike-class", class),
                ("Prefer", "respond-async"),
            ];
            let answer = send(
                gateway,
                "POST",
                "/v1/apps/shop/functions/spin/invoke?ms=10",
                &headers,
                "",
            )
            .await;
            assert_eq!(answer.status, 202, "{answer:?}");
            by_class
                .entry(class)
                .or_default()
                .push(json(&answer)["id"].as_str().expect("an id").to_string());
        }
    }
    for (class, ids) in &by_class {
        let mut waits = Vec::new();
        for id in ids {
            let done = ended(gateway, &key, id, Duration::from_secs(120)).await;
            let wait = unix_ms(&done["started_at"]) - unix_ms(&done["created_at"]);
            waits.push(wait);
        }
        waits.sort_by(f64::total_cmp);
        let at =
            |q: f64| waits[((q * waits.len() as f64).ceil() as usize).clamp(1, waits.len()) - 1];
        println!(
            "{label}: {class:<12} queue to start p50 {:7.1} ms  p99 {:7.1} ms  (n={})",
            at(0.5),
            at(0.99),
            waits.len()
        );
    }
}
