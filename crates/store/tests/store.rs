//! The store against both databases: every test runs on a fresh embedded SQLite file and on a
//! fresh database of a real PostgreSQL server named by `TURNPIKE_POSTGRES_URL` (a server's
//! admin URL; `scripts/test.sh` starts one with `scripts/postgres.sh`). Without the variable
//! the PostgreSQL half is skipped with a note, unless `TURNPIKE_REQUIRE_POSTGRES=1` (CI), when
//! it fails.

use std::collections::BTreeMap;
use std::future::Future;

use sqlx::Connection;
use turnpike_store::{
    AppSpec, AsyncResult, AsyncState, AsyncSubmission, Budget, ClaimSkip, Day, OverBudget,
    RouteSpec, ScheduleSpec, Store, StoreError, Submitted, UsageEntry, UsageKey,
};

/// Runs `test` on SQLite and on PostgreSQL, each with a store of its own.
async fn on_both<F, Fut>(name: &str, test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = Store::open(&Store::sqlite_url(dir.path()))
        .await
        .expect("open SQLite");
    test(sqlite).await;
    match std::env::var("TURNPIKE_POSTGRES_URL") {
        Ok(url) => {
            let store = fresh_postgres(&url, name).await;
            test(store).await;
        }
        Err(_) if std::env::var("TURNPIKE_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("TURNPIKE_POSTGRES_URL is not set (scripts/postgres.sh start DIR prints one)")
        }
        Err(_) => eprintln!("{name}: PostgreSQL half skipped (set TURNPIKE_POSTGRES_URL)"),
    }
}

/// A new, empty database on the server at `admin_url`, opened as a store.
async fn fresh_postgres(admin_url: &str, name: &str) -> Store {
    let db = format!("turnpike_{name}_{}", std::process::id());
    let mut admin = sqlx::postgres::PgConnection::connect(admin_url)
        .await
        .expect("connect to TURNPIKE_POSTGRES_URL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("TURNPIKE_POSTGRES_URL ends in /DATABASE");
    Store::open(&format!("{base}/{db}"))
        .await
        .expect("open PostgreSQL")
}

fn spec(functions: &[(&str, &str)], routes: &[(&str, &str, &str)]) -> AppSpec {
    AppSpec {
        functions: functions
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect::<BTreeMap<_, _>>(),
        routes: routes
            .iter()
            .map(|(path, function, class)| RouteSpec {
                path: path.to_string(),
                method: None,
                function: function.to_string(),
                class: class.to_string(),
                asynchronous: false,
                retries: 0,
            })
            .collect(),
        schedules: Vec::new(),
        concurrency_max: BTreeMap::new(),
    }
}

#[tokio::test]
async fn tenants_and_keys() {
    on_both("tenants", |store| async move {
        let (acme, key) = store.create_tenant("acme", false).await.unwrap();
        assert!(key.starts_with("tp_") && key.len() == 67, "{key}");
        assert_eq!(store.tenant_by_key(&key).await.unwrap(), Some(acme.clone()));
        // Only the hash is kept: the hash is not a key, and a wrong key finds nobody.
        let hash = turnpike_store::key_hash(&key);
        assert_eq!(store.tenant_by_key(&hash).await.unwrap(), None);
        assert_eq!(store.tenant_by_key("tp_wrong").await.unwrap(), None);
        let second = store.create_key("acme").await.unwrap();
        assert_ne!(second, key);
        assert_eq!(
            store.tenant_by_key(&second).await.unwrap(),
            Some(acme.clone())
        );
        // Keys are listed by id, revoked by id, never another tenant's, never the last.
        store.create_tenant("other", false).await.unwrap();
        let ids: Vec<String> = store
            .keys("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        let second_id = turnpike_store::key_id(&turnpike_store::key_hash(&second));
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&second_id), "{ids:?}");
        assert!(!store.revoke_key("other", &second_id).await.unwrap());
        assert!(!store.revoke_key("acme", "not-an-id").await.unwrap());
        assert!(store.revoke_key("acme", &second_id).await.unwrap());
        assert_eq!(store.tenant_by_key(&second).await.unwrap(), None);
        assert_eq!(store.tenant_by_key(&key).await.unwrap(), Some(acme));
        let first_id = turnpike_store::key_id(&hash);
        assert!(matches!(
            store.revoke_key("acme", &first_id).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(
            store.tenant_by_key(&key).await.unwrap().is_some(),
            "the last key stays"
        );
        // A taken name and a bad name are refused and write nothing.
        assert!(matches!(
            store.create_tenant("acme", true).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(!store.has_admin().await.unwrap());
        assert!(matches!(
            store.create_tenant("Bad Name", false).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.tenants().await.unwrap().len(), 2);
        store.create_tenant("root", true).await.unwrap();
        assert!(store.has_admin().await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn apps_deploy_atomically_and_stay_with_their_tenant() {
    on_both("apps", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store.create_tenant("evil", false).await.unwrap();
        let wasm_a = b"\0asm component a".to_vec();
        assert!(store.put_component("acme", "aaaa", &wasm_a).await.unwrap());
        assert!(!store.put_component("acme", "aaaa", &wasm_a).await.unwrap());
        store.put_component("acme", "bbbb", b"b").await.unwrap();
        assert_eq!(store.component("aaaa").await.unwrap(), Some(wasm_a));
        assert_eq!(store.component("cccc").await.unwrap(), None);
        let v0 = store.routing_version().await.unwrap();

        let app = store
            .deploy_app(
                "acme",
                "shop",
                &spec(&[("home", "aaaa")], &[("/", "home", "critical")]),
            )
            .await
            .unwrap();
        assert_eq!(app.function("home").unwrap().hash, "aaaa");
        assert_eq!(app.routes.len(), 1);
        assert!(store.routing_version().await.unwrap() > v0);

        // Another tenant: cannot see it, cannot take the name, cannot use acme's component.
        assert_eq!(store.app("evil", "shop").await.unwrap(), None);
        assert!(store.apps("evil").await.unwrap().is_empty());
        assert!(matches!(
            store.deploy_app("evil", "shop", &spec(&[], &[])).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .deploy_app("evil", "mine", &spec(&[("f", "aaaa")], &[]))
                .await,
            Err(StoreError::Invalid(_))
        ));
        assert!(!store.delete_app("evil", "shop").await.unwrap());
        assert!(!store.owns_component("evil", "aaaa").await.unwrap());

        // A bad redeploy (an unknown hash after a good function) changes nothing.
        let bad = spec(
            &[("home", "bbbb"), ("zzz", "ffff")],
            &[("/", "home", "critical")],
        );
        let refused = store.deploy_app("acme", "shop", &bad).await;
        assert!(
            matches!(refused, Err(StoreError::Invalid(_))),
            "{refused:?}"
        );
        assert_eq!(store.app("acme", "shop").await.unwrap(), Some(app.clone()));
        // Two routes on one path, a route to a missing function: refused.
        let twice = spec(
            &[("home", "aaaa")],
            &[("/a", "home", "batch"), ("/a/", "home", "critical")],
        );
        assert!(matches!(
            store.deploy_app("acme", "shop", &twice).await,
            Err(StoreError::Conflict(_))
        ));
        let dangling = spec(&[("home", "aaaa")], &[("/a", "nope", "batch")]);
        assert!(matches!(
            store.deploy_app("acme", "shop", &dangling).await,
            Err(StoreError::Invalid(_))
        ));

        // A good redeploy switches the version and keeps the history.
        let v1 = store.routing_version().await.unwrap();
        let app2 = store
            .deploy_app(
                "acme",
                "shop",
                &spec(&[("home", "bbbb")], &[("/", "home", "standard")]),
            )
            .await
            .unwrap();
        assert_eq!(app2.function("home").unwrap().hash, "bbbb");
        assert_eq!(app2.routes[0].class, "standard");
        assert!(store.routing_version().await.unwrap() > v1);
        let versions = store
            .function_versions("acme", "shop", "home")
            .await
            .unwrap();
        let hashes: Vec<&str> = versions.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hashes, ["aaaa", "bbbb"]);
        assert_eq!(store.all_apps().await.unwrap(), vec![app2]);

        assert!(store.delete_app("acme", "shop").await.unwrap());
        assert_eq!(store.app("acme", "shop").await.unwrap(), None);
        // The name is free again, for anyone.
        store.put_component("evil", "bbbb", b"b").await.unwrap();
        store
            .deploy_app("evil", "shop", &spec(&[("x", "bbbb")], &[]))
            .await
            .unwrap();
    })
    .await;
}

fn entry(invocation: i64, function: &str, class: &str, at: i64, cost: f64) -> UsageEntry {
    UsageEntry {
        invocation,
        tenant: "acme".into(),
        app: "shop".into(),
        function: function.into(),
        class: class.into(),
        at,
        status: 200,
        cpu_ns: 1_500_000_000,
        gb_seconds: 0.25,
        cost,
    }
}

#[tokio::test]
async fn the_ledger_counts_each_invocation_once() {
    on_both("ledger", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        let nov_2 = Day::parse("2026-11-02").unwrap().start_unix() + 60;
        let nov_3 = nov_2 + 86_400;
        let oct_31 = Day::parse("2026-10-31").unwrap().start_unix();
        let entries = vec![
            entry(1, "home", "critical", nov_2, 3.0),
            entry(2, "home", "batch", nov_2, 1.0),
            entry(3, "cart", "critical", nov_3, 3.0),
            entry(-4, "cart", "critical", oct_31, 7.0),
        ];
        assert_eq!(store.record(&entries).await.unwrap(), 4);
        // A retried write (the same ids) adds nothing; a batch with one new id adds one.
        assert_eq!(store.record(&entries).await.unwrap(), 0);
        assert_eq!(
            store
                .record(&[entries[0].clone(), entry(5, "home", "batch", nov_3, 1.0)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.ledger_len().await.unwrap(), 5);

        let nov = Day::parse("2026-11-01").unwrap();
        let end = Day::parse("2026-11-30").unwrap();
        let by_function = store
            .usage("acme", &[UsageKey::Function], nov, end)
            .await
            .unwrap();
        let summary: Vec<(String, u64, f64)> = by_function
            .iter()
            .map(|r| (r.keys[0].1.clone(), r.totals.invocations, r.totals.cost))
            .collect();
        assert_eq!(
            summary,
            [("cart".into(), 1, 3.0), ("home".into(), 3, 5.0)],
            "{by_function:?}"
        );
        assert_eq!(by_function[1].totals.cpu_seconds, 4.5);
        assert_eq!(by_function[1].totals.gb_seconds, 0.75);
        let by_class_day = store
            .usage("acme", &[UsageKey::Class, UsageKey::Day], nov, end)
            .await
            .unwrap();
        let keys: Vec<Vec<String>> = by_class_day
            .iter()
            .map(|r| r.keys.iter().map(|(_, v)| v.clone()).collect())
            .collect();
        assert_eq!(
            keys,
            [
                ["batch", "2026-11-02"],
                ["batch", "2026-11-03"],
                ["critical", "2026-11-02"],
                ["critical", "2026-11-03"]
            ]
        );
        let total = store.usage("acme", &[], nov, end).await.unwrap();
        assert_eq!(total[0].totals.invocations, 4);
        let everything = store
            .usage("acme", &[], Day::parse("2026-10-01").unwrap(), end)
            .await
            .unwrap();
        assert_eq!(everything[0].totals.invocations, 5);
        assert_eq!(store.spent_since("acme", nov).await.unwrap(), 8.0);
        assert_eq!(store.spent_since("evil", nov).await.unwrap(), 0.0);
        assert!(store
            .usage("evil", &[UsageKey::Function], nov, end)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

/// A batch longer than the largest statement goes in several statements of different sizes
/// (64, 16, 4, 1 rows) in one transaction: every row lands once, with its own values.
#[tokio::test]
async fn a_long_batch_lands_whole() {
    on_both("ledger_long", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        let at = Day::parse("2026-11-02").unwrap().start_unix();
        // 64 + 2 x 16 + 4 + 3 x 1 rows.
        let entries: Vec<UsageEntry> = (1..=103)
            .map(|i| entry(i, "home", "batch", at, i as f64))
            .collect();
        assert_eq!(store.record(&entries).await.unwrap(), 103);
        // Again with one new row at the end: only it is new.
        let mut again = entries.clone();
        again.push(entry(104, "home", "batch", at, 104.0));
        assert_eq!(store.record(&again).await.unwrap(), 1);
        assert_eq!(store.ledger_len().await.unwrap(), 104);
        let day = Day::parse("2026-11-02").unwrap();
        let totals = store.usage("acme", &[], day, day).await.unwrap();
        assert_eq!(totals[0].totals.invocations, 104);
        assert_eq!(totals[0].totals.cost, (1..=104).sum::<i64>() as f64);
        // The daily spend a budget check reads counts each row once too.
        assert_eq!(
            store.spent_since("acme", day).await.unwrap(),
            (1..=104).sum::<i64>() as f64
        );
    })
    .await;
}

/// A store from before the daily spend table (migration 2) gets it filled from its ledger.
#[tokio::test]
async fn an_older_store_gets_its_spend_from_the_ledger() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = Store::sqlite_url(dir.path());
    let store = Store::open(&url).await.expect("open SQLite");
    store.create_tenant("acme", false).await.unwrap();
    let nov_2 = Day::parse("2026-11-02").unwrap().start_unix();
    let oct_31 = Day::parse("2026-10-31").unwrap().start_unix();
    store
        .record(&[
            entry(1, "home", "batch", nov_2, 2.0),
            entry(2, "home", "batch", nov_2 + 86_400, 5.0),
            entry(3, "home", "batch", oct_31, 11.0),
        ])
        .await
        .unwrap();
    drop(store);
    // Back to the schema of migration 1: a ledger and no spend.
    let mut db = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
    for statement in [
        "DROP TABLE spend",
        "DELETE FROM schema_migrations WHERE version = 2",
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    db.close().await.unwrap();
    let store = Store::open(&url).await.expect("open and migrate");
    let nov = Day::parse("2026-11-01").unwrap();
    assert_eq!(store.spent_since("acme", nov).await.unwrap(), 7.0);
    let oct = Day::parse("2026-10-01").unwrap();
    assert_eq!(store.spent_since("acme", oct).await.unwrap(), 18.0);
    // New rows add to the filled-in days.
    store
        .record(&[entry(4, "home", "batch", nov_2, 1.0)])
        .await
        .unwrap();
    assert_eq!(store.spent_since("acme", nov).await.unwrap(), 8.0);
}

#[tokio::test]
async fn budgets() {
    on_both("budgets", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        assert_eq!(store.budget("acme").await.unwrap(), None);
        let budget = Budget {
            monthly: 1000.0,
            over: OverBudget::Lower,
            headroom: 0.1,
        };
        store.set_budget("acme", Some(&budget)).await.unwrap();
        assert_eq!(store.budget("acme").await.unwrap(), Some(budget));
        let bad = Budget {
            monthly: -1.0,
            ..budget
        };
        assert!(matches!(
            store.set_budget("acme", Some(&bad)).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.budget("acme").await.unwrap(), Some(budget));
        store.set_budget("acme", None).await.unwrap();
        assert_eq!(store.budget("acme").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn data_survives_reopening_and_concurrent_opens_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(dir.path());
    // Two processes starting at once: both open (and migrate) the same file.
    let (a, b) = tokio::join!(Store::open(&url), Store::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (_, key) = a.create_tenant("acme", false).await.unwrap();
    assert!(b.tenant_by_key(&key).await.unwrap().is_some());
    a.close().await;
    b.close().await;
    let reopened = Store::open(&url).await.unwrap();
    assert!(reopened.tenant_by_key(&key).await.unwrap().is_some());
    assert!(matches!(
        Store::open("mysql://nope").await,
        Err(StoreError::BadUrl(_))
    ));
}

fn submission(
    id: &str,
    tenant: &str,
    key: Option<&str>,
    body: &str,
    at_ms: i64,
) -> AsyncSubmission {
    AsyncSubmission {
        id: id.to_string(),
        tenant: tenant.to_string(),
        app: "shop".into(),
        function: "resize".into(),
        class: "batch".into(),
        priority: 0,
        method: "POST".into(),
        path_and_query: "/resize?w=10".into(),
        headers: vec![("content-type".into(), b"image/png".to_vec())],
        body: body.as_bytes().to_vec(),
        retries: 1,
        idempotency_key: key.map(String::from),
        request_digest: format!("digest of {body}"),
        at_ms,
    }
}

fn succeeded(invocation: i64) -> AsyncResult {
    AsyncResult {
        state: AsyncState::Succeeded,
        invocation: Some(invocation),
        status: Some(200),
        headers: vec![("x-done".into(), b"yes".to_vec())],
        body: b"resized".to_vec(),
        truncated: false,
        error: None,
    }
}

#[tokio::test]
async fn an_async_invocation_is_run_by_one_runner_at_a_time() {
    on_both("async_runs", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store.create_tenant("other", false).await.unwrap();
        let new = submission("a1", "acme", None, "png", 1_000);
        assert_eq!(
            store.submit_async(&new, 10).await.unwrap(),
            Submitted::New("a1".into())
        );
        let queued = store.async_invocation("acme", "a1").await.unwrap().unwrap();
        assert_eq!((queued.state, queued.attempts), (AsyncState::Queued, 0));
        assert!(store
            .async_invocation("other", "a1")
            .await
            .unwrap()
            .is_none());

        // Only its class's claim finds it; one runner gets it, the next finds nothing.
        let none = store
            .claim_async(
                "gw-b",
                "critical",
                8,
                (1_001, 11_001),
                &ClaimSkip::default(),
            )
            .await
            .unwrap();
        assert!(none.is_empty());
        let a = store
            .claim_async("gw-a", "batch", 8, (1_001, 11_001), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].attempt, 1);
        assert_eq!(a[0].body, b"png");
        assert_eq!(a[0].headers, new.headers);
        assert_eq!(a[0].path_and_query, "/resize?w=10");
        assert!(store
            .claim_async("gw-b", "batch", 8, (1_002, 11_002), &ClaimSkip::default())
            .await
            .unwrap()
            .is_empty());

        // A's lease lapses (it stopped renewing): B takes it over as attempt 2, a platform
        // failure; A can no longer end it.
        assert_eq!(store.renew_async_leases("gw-a", 12_000).await.unwrap(), 1);
        assert!(store
            .claim_async("gw-b", "batch", 8, (11_500, 21_500), &ClaimSkip::default())
            .await
            .unwrap()
            .is_empty());
        let b = store
            .claim_async("gw-b", "batch", 8, (12_001, 22_001), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!((b[0].attempt, b[0].platform_failures), (2, 1));
        assert!(!store
            .finish_async("gw-a", "a1", 1, &succeeded(7), 12_002)
            .await
            .unwrap());
        assert!(!store
            .finish_async("gw-b", "a1", 1, &succeeded(7), 12_002)
            .await
            .unwrap());
        assert!(store
            .finish_async("gw-b", "a1", 2, &succeeded(8), 12_003)
            .await
            .unwrap());
        let done = store.async_invocation("acme", "a1").await.unwrap().unwrap();
        assert_eq!(done.state, AsyncState::Succeeded);
        assert_eq!(done.attempts, 2);
        assert_eq!(done.finished_ms, Some(12_003));
        assert_eq!(done.result, Some(succeeded(8)));
        // Ended: nobody claims it again, even with its lease long gone.
        assert!(store
            .claim_async("gw-a", "batch", 8, (99_000, 99_999), &ClaimSkip::default())
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn async_retries_wait_their_backoff_and_budget_waits_do_not_count() {
    on_both("async_retries", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store
            .submit_async(&submission("r1", "acme", None, "x", 0), 10)
            .await
            .unwrap();
        let a = store
            .claim_async("gw", "batch", 1, (1, 10_001), &ClaimSkip::default())
            .await
            .unwrap();
        assert!(store
            .retry_async("gw", "r1", a[0].attempt, Some((true, "trapped")), 5_000)
            .await
            .unwrap());
        let queued = store.async_invocation("acme", "r1").await.unwrap().unwrap();
        assert_eq!(queued.state, AsyncState::Queued);
        assert_eq!(queued.not_before_ms, 5_000);
        assert_eq!(queued.error.as_deref(), Some("trapped"));
        assert!(store
            .claim_async("gw", "batch", 1, (4_999, 9_999), &ClaimSkip::default())
            .await
            .unwrap()
            .is_empty());
        let b = store
            .claim_async("gw", "batch", 1, (5_000, 15_000), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!((b[0].attempt, b[0].guest_failures), (2, 1));
        // Over budget: back in the queue without counting the attempt.
        assert!(store.retry_async("gw", "r1", 2, None, 6_000).await.unwrap());
        let c = store
            .claim_async("gw", "batch", 1, (6_000, 16_000), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!(
            (c[0].attempt, c[0].guest_failures, c[0].platform_failures),
            (2, 1, 0)
        );
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_queue_limits_listing_and_retention() {
    on_both("async_keys", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store.create_tenant("other", false).await.unwrap();
        let first = submission("k1", "acme", Some("order-7"), "a", 10);
        assert_eq!(
            store.submit_async(&first, 2).await.unwrap(),
            Submitted::New("k1".into())
        );
        // The same request again: the first one's id, nothing new stored.
        let again = submission("k2", "acme", Some("order-7"), "a", 20);
        assert_eq!(
            store.submit_async(&again, 2).await.unwrap(),
            Submitted::Existing("k1".into())
        );
        // The key with another request: refused, naming the key.
        let other_body = submission("k3", "acme", Some("order-7"), "b", 30);
        match store.submit_async(&other_body, 2).await {
            Err(StoreError::Unprocessable(m)) => assert!(m.contains("order-7"), "{m}"),
            other => panic!("a reused key was not refused: {other:?}"),
        }
        // Another tenant's key space is its own.
        let theirs = submission("k4", "other", Some("order-7"), "b", 30);
        assert_eq!(
            store.submit_async(&theirs, 2).await.unwrap(),
            Submitted::New("k4".into())
        );
        // The queue limit: acme has 1 waiting, may have 2.
        store
            .submit_async(&submission("k5", "acme", None, "c", 40), 2)
            .await
            .unwrap();
        match store
            .submit_async(&submission("k6", "acme", None, "d", 50), 2)
            .await
        {
            Err(StoreError::Full(m)) => assert!(m.contains("async_queue_max"), "{m}"),
            other => panic!("the queue limit did not hold: {other:?}"),
        }
        assert!(store
            .async_invocation("acme", "k6")
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.async_waiting("acme").await.unwrap(), 2);

        // Listing: newest first, by state and function, only the tenant's own.
        let all = store
            .async_invocations("acme", None, None, 10)
            .await
            .unwrap();
        let ids: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["k5", "k1"]);
        let claimed = store
            .claim_async("gw", "batch", 1, (100, 10_100), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!(claimed[0].id, "k1", "oldest first");
        assert!(store
            .finish_async("gw", "k1", 1, &succeeded(1), 200)
            .await
            .unwrap());
        let done = store
            .async_invocations("acme", Some(AsyncState::Succeeded), Some("shop/resize"), 10)
            .await
            .unwrap();
        assert_eq!(done.len(), 1);
        assert!(store
            .async_invocations("acme", None, Some("shop/other"), 10)
            .await
            .unwrap()
            .is_empty());

        // Retention: ended rows older than the cut go, and their keys with them.
        assert_eq!(store.purge_async(200).await.unwrap(), 0);
        assert_eq!(store.purge_async(201).await.unwrap(), 1);
        assert!(store
            .async_invocation("acme", "k1")
            .await
            .unwrap()
            .is_none());
        let reused = submission("k7", "acme", Some("order-7"), "b", 300);
        assert_eq!(
            store.submit_async(&reused, 3).await.unwrap(),
            Submitted::New("k7".into())
        );
    })
    .await;
}

#[tokio::test]
async fn each_schedule_tick_fires_once_and_missed_ticks_fire_once() {
    on_both("schedules", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store.put_component("acme", "aaaa", b"a").await.unwrap();
        let mut with_schedule = spec(&[("tick", "aaaa")], &[]);
        with_schedule.schedules = vec![ScheduleSpec {
            cron: "@every 10s".into(),
            function: "tick".into(),
            path: "/tick?n=1".into(),
            class: "batch".into(),
            method: "POST".into(),
        }];
        let deployed_ms = (turnpike_store::unix_now() + 1) * 1000;
        store
            .deploy_app("acme", "jobs", &with_schedule)
            .await
            .unwrap();
        let listed = store.schedules("acme").await.unwrap();
        assert_eq!(listed.len(), 1);
        let first = listed[0].next_ms.expect("a next tick");
        assert!(
            first % 10_000 == 0 && first <= deployed_ms + 10_000,
            "{first}"
        );
        assert!(store.schedules("other").await.unwrap().is_empty());

        let batch = |c: &str| (c == "batch").then_some(0);
        assert!(store
            .fire_due_schedules(first - 1, batch)
            .await
            .unwrap()
            .is_empty());
        // A gateway that does not know the class leaves the tick to one that does.
        assert!(store
            .fire_due_schedules(first, |_| None)
            .await
            .unwrap()
            .is_empty());
        let fired = store.fire_due_schedules(first, batch).await.unwrap();
        assert_eq!(fired.len(), 1);
        // A second gateway looking at the same instant finds the tick fired.
        assert!(store
            .fire_due_schedules(first, batch)
            .await
            .unwrap()
            .is_empty());
        let queued = store
            .async_invocation("acme", &fired[0])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(queued.state, AsyncState::Queued);
        assert_eq!(
            (queued.function.as_str(), queued.class.as_str()),
            ("tick", "batch")
        );
        let claimed = store
            .claim_async("gw", "batch", 1, (first, first + 1), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!(claimed[0].path_and_query, "/tick?n=1");
        assert_eq!(claimed[0].method, "POST");
        assert_eq!(claimed[0].headers[0].0, "x-turnpike-schedule");

        // Nine ticks missed: one invocation on recovery, the next tick after now.
        let late = first + 95_000;
        assert_eq!(
            store.fire_due_schedules(late, batch).await.unwrap().len(),
            1
        );
        let listed = store.schedules("acme").await.unwrap();
        assert_eq!(listed[0].next_ms, Some(first + 100_000));
        assert_eq!(listed[0].last_ms, Some(first + 10_000));

        // A redeploy keeps the schedule's runs; a bad expression is refused whole.
        store
            .deploy_app("acme", "jobs", &with_schedule)
            .await
            .unwrap();
        assert_eq!(
            store.schedules("acme").await.unwrap()[0].next_ms,
            Some(first + 100_000)
        );
        let mut bad = with_schedule.clone();
        bad.schedules[0].cron = "61 * * * *".into();
        match store.deploy_app("acme", "jobs", &bad).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains("schedules[0].cron"), "{m}"),
            other => panic!("a bad cron was not refused: {other:?}"),
        }
        let mut unknown = with_schedule.clone();
        unknown.schedules[0].function = "nope".into();
        match store.deploy_app("acme", "jobs", &unknown).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains("schedules[0].function"), "{m}"),
            other => panic!("an unknown function was not refused: {other:?}"),
        }
        assert_eq!(
            store.schedules("acme").await.unwrap()[0].next_ms,
            Some(first + 100_000)
        );
        // Deployed without it, or deleted with its app: gone.
        store
            .deploy_app("acme", "jobs", &spec(&[("tick", "aaaa")], &[]))
            .await
            .unwrap();
        assert!(store.schedules("acme").await.unwrap().is_empty());
        store
            .deploy_app("acme", "jobs", &with_schedule)
            .await
            .unwrap();
        assert!(store.delete_app("acme", "jobs").await.unwrap());
        assert!(store.schedules("acme").await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrency_limits_are_kept_with_functions_and_tenants_and_bad_ones_refused() {
    on_both("concurrency", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        store.put_component("acme", "aaaa", b"a").await.unwrap();
        let mut limited = spec(&[("resize", "aaaa"), ("home", "aaaa")], &[]);
        limited.concurrency_max.insert("resize".into(), 4);
        let app = store.deploy_app("acme", "shop", &limited).await.unwrap();
        assert_eq!(app.function("resize").unwrap().concurrency_max, Some(4));
        assert_eq!(app.function("home").unwrap().concurrency_max, None);

        // Bad limits: each refused with its field named, the deployed app unchanged.
        for (function, max, named) in [
            ("resize", -1, "concurrency_max.resize"),
            ("resize", 0, "concurrency_max.resize"),
            ("resize", 1 << 40, "concurrency_max.resize"),
            ("nope", 2, "no function `nope`"),
        ] {
            let mut bad = spec(&[("resize", "aaaa")], &[]);
            bad.concurrency_max.insert(function.into(), max);
            match store.deploy_app("acme", "shop", &bad).await {
                Err(StoreError::Invalid(message)) => {
                    assert!(message.contains(named), "{message}")
                }
                other => panic!("{function} = {max}: {other:?}"),
            }
        }
        assert_eq!(store.app("acme", "shop").await.unwrap(), Some(app));

        let v0 = store.routing_version().await.unwrap();
        assert!(store
            .set_tenant_concurrency_max("acme", Some(10))
            .await
            .unwrap());
        assert!(
            store.routing_version().await.unwrap() > v0,
            "gateways reload"
        );
        assert!(!store
            .set_tenant_concurrency_max("nobody", Some(1))
            .await
            .unwrap());
        let limits = store.tenant_concurrency_limits().await.unwrap();
        assert_eq!(
            limits.into_iter().collect::<Vec<_>>(),
            [("acme".to_string(), 10)]
        );
        assert_eq!(
            store.tenant("acme").await.unwrap().unwrap().concurrency_max,
            Some(10)
        );
        assert!(store
            .set_tenant_concurrency_max("acme", None)
            .await
            .unwrap());
        assert!(store.tenant_concurrency_limits().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_claim_skips_functions_and_apps_at_their_limit_and_an_unclaim_restores_the_row() {
    on_both("async_skip", |store| async move {
        store.create_tenant("acme", false).await.unwrap();
        let of = |id: &str, app: &str, function: &str, at| AsyncSubmission {
            app: app.into(),
            function: function.into(),
            ..submission(id, "acme", None, id, at)
        };
        for new in [
            of("r1", "shop", "resize", 1),
            of("c1", "shop", "crop", 2),
            of("b1", "blog", "resize", 3),
        ] {
            store.submit_async(&new, 10).await.unwrap();
        }
        let ids = |attempts: &[turnpike_store::AsyncAttempt]| {
            attempts.iter().map(|a| a.id.clone()).collect::<Vec<_>>()
        };
        let skip_resize = ClaimSkip {
            functions: vec![("shop".into(), "resize".into())],
            ..ClaimSkip::default()
        };
        let claimed = store
            .claim_async("gw", "batch", 1, (10, 10_010), &skip_resize)
            .await
            .unwrap();
        assert_eq!(
            ids(&claimed),
            ["c1"],
            "shop/resize is skipped, not blog/resize"
        );
        // Put back as it was: attempts uncounted, claimable again.
        assert!(store.unclaim_async("gw", "c1", 1, 10).await.unwrap());
        let row = store.async_invocation("acme", "c1").await.unwrap().unwrap();
        assert_eq!((row.state, row.attempts), (AsyncState::Queued, 0));
        let skip_shop = ClaimSkip {
            apps: vec!["shop".into()],
            functions: vec![("blog".into(), "nothing".into())],
        };
        let claimed = store
            .claim_async("gw", "batch", 8, (11, 10_011), &skip_shop)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["b1"]);
        let claimed = store
            .claim_async("gw", "batch", 8, (12, 10_012), &ClaimSkip::default())
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["r1", "c1"]);
        assert_eq!(
            claimed[1].attempt, 1,
            "the unclaimed attempt was not counted"
        );
    })
    .await;
}
