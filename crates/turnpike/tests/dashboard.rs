//! The live dashboard (`/dashboard`, crates/gateway/src/dashboard.rs) in a real browser:
//! headless Chromium, driven over the DevTools protocol, loads the page of a `turnpike up`
//! cluster while a load runs; the test checks that the page updates, that the numbers it
//! shows are those of the roles' `/metrics`, and saves a screenshot
//! (`target/tmp/dashboard.png`, or `TURNPIKE_DASHBOARD_SCREENSHOT`). Also: who may see
//! what, and bad requests.
//!
//! The browser is `TURNPIKE_BROWSER`, else `chromium` on the path (`scripts/install-browser.sh`
//! installs it; `scripts/test.sh` runs that).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// A request on its own connection: the status, the headers' text and the body.
fn request(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    // To the end, or to its `Content-Length` (DevTools' server keeps the connection open).
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = stream.read(&mut buffer).expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (common::status_of(head), head.to_string(), body.to_string())
}

/// Samples of the Prometheus text at `url` (`http://HOST:PORT/metrics`), as `name{labels}` to value.
fn scrape(url: &str) -> HashMap<String, f64> {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let (status, _, body) = request(
        host.parse().expect("an address"),
        "GET",
        &format!("/{path}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Headless Chromium, killed when dropped.
struct Browser {
    _process: common::Child,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start() -> Self {
        let binary = std::env::var("TURNPIKE_BROWSER").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().expect("a profile dir");
        let process = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the browser {binary:?} ({e}): install it with scripts/install-browser.sh, or name it in TURNPIKE_BROWSER")
            });
        let process = common::Child(process);
        // It writes its DevTools port to the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the browser wrote no DevTools port in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let page = loop {
            let (_, _, body) = request(devtools, "GET", "/json/list", None);
            let targets: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
            if let Some(url) = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no page target: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let (socket, _) = tungstenite::connect(page.as_str()).expect("the DevTools socket");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
        }
        Self {
            _process: process,
            _profile: profile,
            socket,
            next_id: 1,
        }
    }

    /// Sends a DevTools command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .expect("send to the browser");
        loop {
            let message = self.socket.read().expect("the browser answers");
            let tungstenite::Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("JSON from the browser");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The page's shown values: every `data-k` element's text, by its key.
    fn shown(&mut self) -> HashMap<String, String> {
        let expression = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-k]')].map(e => [e.dataset.k, e.textContent])))";
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        let text = result["result"]["value"].as_str().unwrap_or("{}");
        serde_json::from_str(text).expect("the page's values")
    }
}

fn number(shown: &HashMap<String, String>, key: &str) -> Option<f64> {
    shown.get(key)?.trim().parse().ok()
}

/// Runs requests on `threads` threads until `stop`, counting answers.
fn load(
    gateway: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    [
        "/hello",
        "/work/critical?ms=20",
        "/work/batch?ms=60",
        "/work/batch?ms=60",
    ]
    .into_iter()
    .map(|path| {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let (status, _, body) = request(gateway, "GET", path, None);
                assert_eq!(status, 200, "{path}: {body}");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    })
    .collect()
}

#[test]
fn the_dashboard_shows_the_cluster_live_and_agrees_with_metrics() {
    let data = tempfile::tempdir().expect("a data dir");
    let (_up, gateway, admin, printed) = common::up_printing(data.path(), &[]);
    let admin = admin.expect("a fresh data dir prints the admin key");
    let metrics = common::metrics_urls(&printed);
    assert!(
        printed
            .iter()
            .any(|l| l.trim() == format!("dashboard: http://{gateway}/dashboard#key={admin}")),
        "`turnpike up` prints the dashboard's URL: {printed:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let threads = load(gateway, stop.clone(), answered.clone());

    let mut browser = Browser::start();
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({ "url": format!("http://{gateway}/dashboard#key={admin}") }),
    );
    // The page shows numbers once the first event is in and traffic has been counted.
    let started = Instant::now();
    let first = loop {
        let shown = browser.shown();
        if number(&shown, "class.critical.requests_total").is_some_and(|n| n > 0.0)
            && number(&shown, "class.critical.rps").is_some_and(|r| r > 0.0)
        {
            break shown;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page showed no traffic in 60 s: {shown:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // It updates while the load runs: a later event, more requests.
    std::thread::sleep(Duration::from_millis(2500));
    // A longer load first, for a screenshot with some history (docs/dashboard.png was taken
    // with 60).
    let load_secs: u64 = std::env::var("TURNPIKE_DASHBOARD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(load_secs.min(100)));
    let later = browser.shown();
    let seq = |s: &HashMap<String, String>| number(s, "seq").expect("an update number");
    assert!(
        seq(&later) > seq(&first),
        "no update in 2.5 s: {first:?} then {later:?}"
    );
    assert!(
        number(&later, "class.critical.requests_total")
            > number(&first, "class.critical.requests_total"),
        "{first:?} then {later:?}"
    );
    let screenshot = browser.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot["data"].as_str().expect("PNG data"))
        .expect("base64 PNG");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::env::var_os("TURNPIKE_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    std::fs::write(&path, &png).expect("the screenshot is written");
    eprintln!("dashboard screenshot: {}", path.display());

    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a load thread");
    }
    assert!(answered.load(Ordering::Relaxed) > 0);

    // Now that nothing changes, the page must show exactly what /metrics says.
    let url = |role: &str| {
        metrics
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| panic!("no metrics of {role} in {metrics:?}"))
    };
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let gateway_metrics = scrape(&url("gateway"));
        let worker_metrics = scrape(&url("worker 0"));
        let shard_metrics: Vec<HashMap<String, f64>> = metrics
            .iter()
            .filter(|(r, _)| r.starts_with("shard "))
            .map(|(_, u)| scrape(u))
            .collect();
        let shown = browser.shown();
        let mut expected: Vec<(String, f64)> = Vec::new();
        for class in ["batch", "standard", "interactive", "critical"] {
            let label = format!("{{class=\"{class}\"}}");
            expected.push((
                format!("class.{class}.requests_total"),
                gateway_metrics[&format!("turnpike_gateway_request_seconds_count{label}")],
            ));
            expected.push((
                format!("class.{class}.preempted_total"),
                worker_metrics[&format!("turnpike_worker_preempted_total{label}")],
            ));
            expected.push((
                format!("class.{class}.kills_total"),
                worker_metrics[&format!("turnpike_worker_kills_total{label}")],
            ));
            expected.push((
                format!("class.{class}.queued"),
                shard_metrics
                    .iter()
                    .map(|m| m[&format!("turnpike_shard_queue_length{label}")])
                    .sum(),
            ));
        }
        let worker_key = |field: &str| {
            shown
                .keys()
                .find(|k| k.starts_with("worker.") && k.ends_with(field))
                .cloned()
                .unwrap_or_else(|| panic!("no worker {field} on the page: {shown:?}"))
        };
        expected.push((
            worker_key(".memory_used_mb"),
            worker_metrics["turnpike_worker_memory_used_mb"],
        ));
        expected.push((
            worker_key(".functions"),
            worker_metrics["turnpike_worker_functions"],
        ));
        let mismatches: Vec<String> = expected
            .iter()
            .filter(|(key, value)| number(&shown, key) != Some(*value))
            .map(|(key, value)| format!("{key}: page {:?}, /metrics {value}", shown.get(key)))
            .collect();
        let slots = format!(
            "{} / {}",
            worker_metrics["turnpike_worker_slots_busy"], worker_metrics["turnpike_worker_slots"]
        );
        let shown_slots = &shown[&worker_key(".slots_busy")];
        if mismatches.is_empty() && *shown_slots == slots {
            // The load was built to preempt: batch work on both slots while critical work
            // arrives. The page must show it (the same count /metrics has, checked above).
            assert!(
                number(&shown, "class.batch.preempted_total").is_some_and(|n| n > 0.0),
                "no batch preemption shown: {shown:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the page disagrees with /metrics after 30 s: {mismatches:?}, slots {shown_slots} vs {slots}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_its_own_traffic_and_no_cluster() {
    let data = tempfile::tempdir().expect("a data dir");
    let (_up, gateway, admin) = common::up(data.path());
    let viewer = common::create_tenant(gateway, &admin, "viewer");
    for _ in 0..5 {
        let (status, _, body) = request(gateway, "GET", "/hello", None);
        assert_eq!(status, 200, "{body}");
    }
    let cluster = common::dashboard_event(gateway, &admin).await;
    assert_eq!(cluster["scope"], "cluster", "{cluster}");
    assert_eq!(cluster["tenant"], "admin");
    assert!(
        !cluster["workers"].as_array().expect("workers").is_empty(),
        "{cluster}"
    );
    let demo = cluster["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["app"] == "demo")
        .unwrap_or_else(|| panic!("the admin sees the demo app's traffic: {cluster}"));
    assert_eq!(demo["classes"][0]["requests_total"], 5, "{demo}");

    let own = common::dashboard_event(gateway, &viewer).await;
    assert_eq!(own["scope"], "tenant", "{own}");
    assert_eq!(own["tenant"], "viewer");
    assert_eq!(own["workers"], json!([]), "a tenant sees no workers: {own}");
    assert_eq!(
        own["apps"],
        json!([]),
        "a tenant sees no other tenant's apps: {own}"
    );
    for class in own["classes"].as_array().expect("classes") {
        assert_eq!(class["requests_total"], 0, "{own}");
        assert!(
            class.get("queued").is_none(),
            "a tenant sees no queues: {own}"
        );
    }
    assert!(own["budget"]["spent"].is_number(), "{own}");

    // A stream whose key is revoked ends (the key is checked before each event).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gateway)
        .await
        .expect("connect");
    let opening = format!(
        "GET /dashboard/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {viewer}\r\n\r\n"
    );
    stream.write_all(opening.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    // A tenant's last key cannot be revoked: another first.
    let (status, _, body) = request(gateway, "POST", "/v1/keys", Some(&viewer));
    assert_eq!(status, 201, "{body}");
    let id = turnpike_store::key_id(&turnpike_store::key_hash(&viewer));
    let (status, _, body) = request(gateway, "DELETE", &format!("/v1/keys/{id}"), Some(&viewer));
    assert_eq!(status, 204, "{body}");
    let ended = async {
        loop {
            let n = stream.read(&mut buffer).await.expect("read");
            seen.extend_from_slice(&buffer[..n]);
            // The chunked body's last chunk, or the connection closed.
            if n == 0 || seen.ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the revoked key's stream ends within 10 s");
}

#[test]
fn bad_dashboard_requests_get_clear_errors() {
    let data = tempfile::tempdir().expect("a data dir");
    let (_up, gateway, _admin) = common::up(data.path());
    let (status, head, page) = request(gateway, "GET", "/dashboard", None);
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("<title>Turnpike dashboard</title>"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let (status, _, body) = request(gateway, "GET", "/dashboard/events", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("API key"), "{body}");
    let (status, _, body) = request(gateway, "GET", "/dashboard/events", Some("tp_not-a-key"));
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = request(gateway, "POST", "/dashboard", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("GET"), "{body}");
    let (status, _, body) = request(gateway, "GET", "/dashboard/nothing", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/dashboard"), "{body}");
}
