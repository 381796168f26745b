//! The developer API (`docs/api.md`) through `turnpike up` with real workers and the
//! embedded store: tenants and keys, uploads, deploys, public routes by host, direct
//! invocation, usage; tenant isolation on every endpoint; budgets on a clock the test moves;
//! the ledger across a restart mid-load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use turnpike_cluster::up::{self, UpConfig};
use turnpike_gateway::billing::ManualClock;
use turnpike_store::Day;

use crate::common::serial;

fn config(dir: &std::path::Path) -> UpConfig {
    let mut config = UpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.to_path_buf());
    config.workers = 1;
    config.cores_per_worker = 1;
    config.memory_mb_per_worker = 1024;
    config.max_component_bytes = 4 << 20;
    config
}

fn component(name: &str) -> Vec<u8> {
    let path = up::default_functions_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build with scripts/build-examples.sh)",
            path.display()
        )
    })
}

/// A response: status, lowercase head, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request on a new connection.
async fn call(
    gw: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    let (status, head, body) = crate::common::exchange(gw, &raw).await;
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// A tenant's view of the API.
struct Client {
    gw: SocketAddr,
    auth: String,
}

impl Client {
    fn new(gw: SocketAddr, key: &str) -> Self {
        Self {
            gw,
            auth: format!("Bearer {key}"),
        }
    }

    async fn send(&self, method: &str, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Answer {
        let mut headers = vec![("Authorization", self.auth.as_str())];
        headers.extend_from_slice(extra);
        call(self.gw, method, path, "localhost", &headers, body).await
    }

    async fn json(&self, method: &str, path: &str, body: &Value) -> Answer {
        let text = body.to_string();
        self.send(
            method,
            path,
            text.as_bytes(),
            &[("Content-Type", "application/json")],
        )
        .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, b"", &[]).await
    }

    async fn create_tenant(&self, name: &str) -> String {
        let a = self
            .json("POST", "/v1/tenants", &json!({ "name": name }))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["key"].as_str().expect("key").to_string()
    }

    async fn upload(&self, bytes: &[u8]) -> String {
        let a = self.send("POST", "/v1/components", bytes, &[]).await;
        assert!(a.status == 201 || a.status == 200, "{}", a.body);
        a.json()["hash"].as_str().expect("hash").to_string()
    }

    /// Uploads example `component` and deploys app `name` with it as its one function,
    /// routed at `/` in `class`.
    async fn deploy_one(&self, name: &str, component_name: &str, class: &str) {
        let hash = self.upload(&component(component_name)).await;
        let deployed = self
            .json(
                "PUT",
                &format!("/v1/apps/{name}"),
                &app(&[("f", &hash)], &[("/", "f", class)]),
            )
            .await;
        assert_eq!(deployed.status, 200, "{}", deployed.body);
    }
}

fn app(functions: &[(&str, &str)], routes: &[(&str, &str, &str)]) -> Value {
    let functions: serde_json::Map<String, Value> = functions
        .iter()
        .map(|(n, h)| (n.to_string(), json!(h)))
        .collect();
    let routes: Vec<Value> = routes
        .iter()
        .map(
            |(path, function, class)| json!({ "path": path, "function": function, "class": class }),
        )
        .collect();
    json!({ "functions": functions, "routes": routes })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_deploy_invoke_and_see_only_their_own() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = up::start(&config(dir.path())).await.expect("cluster");
    let gw = cluster.gateway;
    let admin = Client::new(gw, cluster.admin_key.as_deref().expect("admin key"));

    // Keys: none, wrong, a tenant's on an admin call.
    let none = call(gw, "GET", "/v1/apps", "localhost", &[], b"").await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.json()["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let wrong = Client::new(gw, "tp_0000").get("/v1/apps").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let acme = Client::new(gw, &admin.create_tenant("acme").await);
    let evil = Client::new(gw, &admin.create_tenant("evil").await);
    assert_eq!(
        acme.json("POST", "/v1/tenants", &json!({ "name": "x" }))
            .await
            .status,
        403
    );
    assert_eq!(
        admin
            .json("POST", "/v1/tenants", &json!({ "name": "acme" }))
            .await
            .status,
        409
    );
    assert_eq!(
        admin
            .json("POST", "/v1/tenants", &json!({ "name": "Not A Name" }))
            .await
            .status,
        400
    );
    let tenants = admin.get("/v1/tenants").await.json();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 3);

    // Uploads: a component is checked, stored once; anything else is refused with why.
    let hello = acme.upload(&component("hello")).await;
    assert_eq!(
        acme.send("POST", "/v1/components", &component("hello"), &[])
            .await
            .status,
        200
    );
    let echo = acme.upload(&component("echo")).await;
    let garbage = acme
        .send("POST", "/v1/components", b"not wasm at all", &[])
        .await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert!(
        garbage.body.contains("not a deployable component"),
        "{}",
        garbage.body
    );
    let core_module = acme
        .send("POST", "/v1/components", b"\0asm\x01\0\0\0", &[])
        .await;
    assert_eq!(core_module.status, 400, "{}", core_module.body);
    assert!(core_module.body.contains("core"), "{}", core_module.body);
    // A component that exports nothing: not a wasi:http proxy.
    let no_handler = acme
        .send("POST", "/v1/components", b"\0asm\x0d\0\x01\0", &[])
        .await;
    assert_eq!(no_handler.status, 400, "{}", no_handler.body);
    assert!(
        no_handler.body.contains("wasi:http/incoming-handler"),
        "{}",
        no_handler.body
    );
    let huge = vec![0u8; 5 << 20];
    assert_eq!(
        acme.send("POST", "/v1/components", &huge, &[]).await.status,
        413
    );

    // Deploy, then the public route answers at the app's host, with no key.
    let shop = acme
        .json(
            "PUT",
            "/v1/apps/shop",
            &app(&[("home", &hello)], &[("/", "home", "critical")]),
        )
        .await;
    assert_eq!(shop.status, 200, "{}", shop.body);
    assert_eq!(shop.json()["host"], "shop.localhost");
    let page = call(gw, "GET", "/", "shop.localhost:8080", &[], b"").await;
    assert_eq!(
        (page.status, page.body.trim()),
        (200, "hello from turnpike")
    );
    assert_eq!(page.header("x-turnpike-class").as_deref(), Some("critical"));
    let no_app = call(gw, "GET", "/", "nope.localhost", &[], b"").await;
    assert_eq!(no_app.status, 404, "{}", no_app.body);

    // Bad deploys say why and change nothing.
    let before = acme.get("/v1/apps/shop").await.body;
    let bad_class = acme
        .json(
            "PUT",
            "/v1/apps/shop",
            &app(&[("home", &echo)], &[("/", "home", "gold")]),
        )
        .await;
    assert_eq!(bad_class.status, 400);
    assert!(
        bad_class.body.contains("gold") && bad_class.body.contains("batch"),
        "{}",
        bad_class.body
    );
    let twice = acme
        .json(
            "PUT",
            "/v1/apps/shop",
            &app(
                &[("home", &echo)],
                &[("/a", "home", "batch"), ("/a", "home", "critical")],
            ),
        )
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    let unknown_field = acme
        .json("PUT", "/v1/apps/shop", &json!({ "functoins": {} }))
        .await;
    assert_eq!(unknown_field.status, 400);
    assert!(
        unknown_field.body.contains("functoins"),
        "{}",
        unknown_field.body
    );
    assert_eq!(acme.get("/v1/apps/shop").await.body, before);

    // Another tenant: 404 exactly as for a missing app, on every endpoint.
    let missing = evil.get("/v1/apps/nothing").await;
    let theirs = evil.get("/v1/apps/shop").await;
    assert_eq!((theirs.status, missing.status), (404, 404));
    assert_eq!(theirs.body.replace("shop", "nothing"), missing.body);
    assert_eq!(
        evil.send("DELETE", "/v1/apps/shop", b"", &[]).await.status,
        404
    );
    let invoke = "/v1/apps/shop/functions/home/invoke";
    assert_eq!(
        evil.send("POST", invoke, b"", &[("x-turnpike-class", "batch")])
            .await
            .status,
        404
    );
    let by_hash = format!("/v1/invoke/{hello}");
    assert_eq!(
        evil.send("GET", &by_hash, b"", &[("x-turnpike-class", "batch")])
            .await
            .status,
        404
    );
    assert_eq!(
        evil.get("/v1/functions").await.json()["functions"],
        json!([])
    );
    assert_eq!(evil.get("/v1/routes").await.json()["routes"], json!([]));
    assert_eq!(evil.get("/v1/apps").await.json()["apps"], json!([]));
    let taken = evil.json("PUT", "/v1/apps/shop", &app(&[], &[])).await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    let borrowed = evil
        .json("PUT", "/v1/apps/mine", &app(&[("f", &hello)], &[]))
        .await;
    assert_eq!(borrowed.status, 400, "{}", borrowed.body);

    // Direct invocation at a chosen class, by name and by hash.
    let direct = acme
        .send(
            "POST",
            &format!("{invoke}/x?y=1"),
            b"",
            &[("x-turnpike-class", "batch")],
        )
        .await;
    assert_eq!(direct.status, 200, "{}", direct.body);
    assert_eq!(direct.header("x-turnpike-class").as_deref(), Some("batch"));
    let no_class = acme.send("POST", invoke, b"", &[]).await;
    assert_eq!(no_class.status, 400);
    assert!(
        no_class.body.contains("x-turnpike-class"),
        "{}",
        no_class.body
    );
    assert_eq!(
        acme.send("GET", &by_hash, b"", &[("x-turnpike-class", "standard")])
            .await
            .status,
        200
    );

    // Redeploy: the route switches to the new version, the old one stays in the history.
    let v2 = acme
        .json(
            "PUT",
            "/v1/apps/shop",
            &app(&[("home", &echo)], &[("/", "home", "critical")]),
        )
        .await;
    assert_eq!(v2.status, 200, "{}", v2.body);
    let echoed = call(gw, "POST", "/", "shop.localhost", &[], b"ping").await;
    assert_eq!((echoed.status, echoed.body.as_str()), (200, "ping"));
    let functions = acme.get("/v1/functions").await.json();
    assert_eq!(functions["functions"][0]["hash"], json!(echo));

    // Usage: every invocation above, by function and class; cost = CPU x class price + memory.
    let usage = acme.get("/v1/usage?by=function,class").await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let usage = usage.json();
    assert_eq!(usage["total"]["invocations"], 4, "{usage:#}");
    let rows = usage["rows"].as_array().unwrap();
    let row = |function: &str, class: &str| {
        rows.iter()
            .find(|r| r["function"] == function && r["class"] == class)
            .map(|r| r["invocations"].as_u64().unwrap())
    };
    assert_eq!(row("home", "critical"), Some(2), "{usage:#}");
    assert_eq!(row("home", "batch"), Some(1), "{usage:#}");
    assert_eq!(row(&hello, "standard"), Some(1), "{usage:#}");
    let total = &usage["total"];
    assert!(total["cost"].as_f64().unwrap() > 0.0, "{usage:#}");
    assert!(total["cpu_seconds"].as_f64().unwrap() > 0.0, "{usage:#}");
    assert_eq!(
        evil.get("/v1/usage").await.json()["total"]["invocations"],
        0
    );
    assert_eq!(acme.get("/v1/usage?by=color").await.status, 400);
    assert_eq!(acme.get("/v1/usage?from=2026-02-30").await.status, 400);

    // The catalogue and the API description are public.
    assert_eq!(
        call(gw, "GET", "/v1/classes", "x", &[], b"").await.status,
        200
    );
    let openapi = call(gw, "GET", "/v1/openapi.json", "x", &[], b"").await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.json()["paths"]["/v1/apps/{app}"].is_object());

    // Delete: the route is gone, the usage stays.
    assert_eq!(
        acme.send("DELETE", "/v1/apps/shop", b"", &[]).await.status,
        204
    );
    assert_eq!(
        call(gw, "GET", "/", "shop.localhost", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        acme.get("/v1/usage").await.json()["total"]["invocations"],
        4
    );
    cluster.stop().await;
}

/// A function of one tenant calls another tenant's app by its platform name
/// (`http://APP.turnpike/`): the callee runs at `max(caller, route)` and is billed to the
/// caller's tenant, who made the call; the callee's owner pays nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_another_app_is_billed_to_the_callers_tenant() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = up::start(&config(dir.path())).await.expect("cluster");
    let gw = cluster.gateway;
    let admin = Client::new(gw, cluster.admin_key.as_deref().expect("admin key"));
    let acme = Client::new(gw, &admin.create_tenant("acme").await);
    let beta = Client::new(gw, &admin.create_tenant("beta").await);
    beta.deploy_one("store", "hello", "batch").await;
    acme.deploy_one("shop", "chain", "critical").await;

    let page = call(
        gw,
        "GET",
        "/?to=/&via=store.turnpike",
        "shop.localhost",
        &[],
        b"",
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("called /: 200, ran at critical"),
        "the batch route ran at its critical caller's class: {}",
        page.body
    );
    let by_app = |usage: Answer| -> Vec<(String, u64)> {
        let rows = usage.json()["rows"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|r| {
                (
                    r["app"].as_str().unwrap_or_default().to_string(),
                    r["invocations"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(
        by_app(acme.get("/v1/usage?by=app").await),
        vec![("shop".to_string(), 1), ("store".to_string(), 1)],
        "the caller's tenant pays for both"
    );
    assert_eq!(by_app(beta.get("/v1/usage?by=app").await), vec![]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_throttle_or_lower_on_the_clock() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mid_november = Day::parse("2026-11-16").unwrap().start_unix();
    let clock = ManualClock::at(mid_november);
    let mut config = config(dir.path());
    config.clock = clock.clone();
    let cluster = up::start(&config).await.expect("cluster");
    let gw = cluster.gateway;
    let admin = Client::new(gw, cluster.admin_key.as_deref().expect("admin key"));
    let acme = Client::new(gw, &admin.create_tenant("acme").await);
    acme.deploy_one("calc", "spin", "critical").await;
    let run = || call(gw, "GET", "/?ms=20", "calc.localhost", &[], b"");

    // A budget whose pro-rata allowance at mid-month is less than one 20 ms spin costs.
    let set = acme
        .json(
            "PUT",
            "/v1/budget",
            &json!({ "monthly": 0.02, "over": "throttle", "headroom": 0.0 }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.json()["state"], "ok");
    assert_eq!(run().await.status, 200);
    let throttled = run().await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    let wait: u64 = throttled
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(wait >= 1, "{wait}");
    let status = acme.get("/v1/budget").await.json();
    assert_eq!(status["state"], "throttled", "{status:#}");
    assert_eq!(status["month"], "2026-11");

    // `lower`: over budget, invocations run at the cheapest class instead.
    let set = acme
        .json(
            "PUT",
            "/v1/budget",
            &json!({ "monthly": 0.02, "over": "lower", "headroom": 0.0 }),
        )
        .await;
    assert_eq!(set.json()["state"], "lowered");
    let lowered = run().await;
    assert_eq!(lowered.status, 200, "{}", lowered.body);
    assert_eq!(lowered.header("x-turnpike-class").as_deref(), Some("batch"));

    // December: a new month, nothing spent yet.
    clock.set(Day::parse("2026-12-01").unwrap().start_unix() + 3600);
    let december = run().await;
    assert_eq!(december.status, 200);
    assert_eq!(
        december.header("x-turnpike-class").as_deref(),
        Some("critical")
    );

    // Bad budgets are refused and change nothing; `null` removes the budget.
    let bad = acme
        .json("PUT", "/v1/budget", &json!({ "monthly": -5 }))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad = acme
        .json(
            "PUT",
            "/v1/budget",
            &json!({ "monthly": 5, "over": "pray" }),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(acme.get("/v1/budget").await.json()["over"], "lower");
    let none = acme
        .json("PUT", "/v1/budget", &json!({ "monthly": null }))
        .await;
    assert_eq!(none.json()["monthly"], Value::Null);
    // The admin's demo routes are not acme's: acme's budget never touched them.
    assert_eq!(
        call(gw, "GET", "/hello", "localhost", &[], b"")
            .await
            .status,
        200
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_lets_requests_in_flight_finish_on_the_old_version() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = up::start(&config(dir.path())).await.expect("cluster");
    let gw = cluster.gateway;
    let admin = Client::new(gw, cluster.admin_key.as_deref().expect("admin key"));
    let acme = Client::new(gw, &admin.create_tenant("acme").await);
    let spin = acme.upload(&component("spin")).await;
    let echo = acme.upload(&component("echo")).await;
    let deploy = |hash: String| {
        let acme = &acme;
        async move {
            let body = app(&[("main", &hash)], &[("/", "main", "critical")]);
            let a = acme.json("PUT", "/v1/apps/calc", &body).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    };
    deploy(spin).await;
    // A 400 ms spin starts on version 1; version 2 goes live while it runs.
    let slow =
        tokio::spawn(async move { call(gw, "GET", "/?ms=400", "calc.localhost", &[], b"").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    deploy(echo).await;
    let new = call(gw, "POST", "/", "calc.localhost", &[], b"v2").await;
    assert_eq!((new.status, new.body.as_str()), (200, "v2"));
    let old = slow.await.expect("the slow request");
    assert_eq!(old.status, 200, "{}", old.body);
    assert!(
        old.body.contains("checksum="),
        "ran on the old version: {}",
        old.body
    );
    cluster.stop().await;
}

/// Load from `clients` keep-alive connections until `stop`; counts 200s.
async fn load(gw: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, clients: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, ok) = (stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            while !stop.load(Ordering::Relaxed) {
                let Ok(uri) = format!("http://{gw}/hello").parse::<http::Uri>() else {
                    return;
                };
                match client.get(uri).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt;
                        if r.into_body().collect().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    // The gateway is stopping or gone: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_counts_every_success_across_a_restart_mid_load() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let ok = Arc::new(AtomicU64::new(0));
    let mut seen = 0;
    for round in 0..2 {
        let c = up::start(&config).await.expect("cluster");
        assert_eq!(c.admin_key.is_some(), round == 0, "the admin is made once");
        let stop = Arc::new(AtomicBool::new(false));
        let generator = tokio::spawn(load(c.gateway, stop.clone(), ok.clone(), 4));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Stop the whole system while the load runs, then the load.
        c.stop().await;
        stop.store(true, Ordering::Relaxed);
        generator.await.expect("load");
        let now = ok.load(Ordering::Relaxed);
        assert!(now > seen, "round {round} saw no success");
        seen = now;
    }
    let store = turnpike_store::Store::open(&turnpike_store::Store::sqlite_url(dir.path()))
        .await
        .expect("store");
    assert_eq!(store.ledger_len().await.expect("ledger"), seen);
}
