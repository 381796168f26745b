//! The live dashboard: `GET /dashboard` is a page (embedded in the binary, no build step, no
//! CDN) that shows the cluster at work; `GET /dashboard/events` streams what it shows as
//! server-sent events, one `snapshot` a second.
//!
//! **Who sees what** (the developer API's key rules): the events need `Authorization: Bearer
//! KEY` (the page asks for the key once and keeps it in the tab's session storage; a
//! `#key=...` fragment, which never reaches a server, fills it in). An admin sees the whole
//! cluster: per class requests per second, p50 and p99 latency, queue depth at the shards,
//! preemptions, swap-outs and kills; per worker slots busy, memory and swap in use; every
//! app's traffic through this gateway. A tenant sees the traffic it paid for through this
//! gateway, by app and class. Both see their own spend this month against their budget.
//!
//! **Where the numbers come from.** The cluster's are the roles' own `/metrics` expositions:
//! this gateway's, and each shard's and its live workers' through `Shard.Metrics` (a worker
//! registered at several shards is counted once, by its address). So the page agrees with
//! `/metrics` by construction: its totals are the counters' values, its rates their change
//! between two snapshots, its percentiles those of the latency histogram's buckets over the
//! last [`PERCENTILE_WINDOW`] (interpolated within a bucket, as Prometheus'
//! `histogram_quantile` does). Per-app traffic is counted here, in the same buckets.
//!
//! **Bounds.** Snapshots are taken at most once per [`SNAPSHOT_EVERY`] whoever watches (one
//! round of `Shard.Metrics` for all viewers), and only while someone does; the last
//! [`HISTORY_POINTS`] are kept. Per-app counts are kept for at most [`APPS_MAX`] (tenant, app)
//! pairs; later ones are not shown. Each viewer's stream buffers at most
//! [`VIEWER_BUFFER_EVENTS`] events (a slow viewer waits, it does not grow a queue), ends
//! after [`STREAM_FOR`] (the page reconnects) and when the gateway stops.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use turnpike_policy::{ClassId, ClassSet};
use turnpike_store::Tenant;

use crate::gateway::{Body, Gateway};
use crate::refusal::{refuse, Refusal};

/// How often a snapshot is taken while someone watches.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Snapshots kept: five minutes at one a second.
pub const HISTORY_POINTS: usize = 300;
/// The window of the latency percentiles shown.
pub const PERCENTILE_WINDOW: Duration = Duration::from_secs(10);
/// (tenant, app) pairs whose traffic is counted.
pub const APPS_MAX: usize = 10_000;
/// Events waiting for one viewer.
pub const VIEWER_BUFFER_EVENTS: usize = 2;
/// How long one event stream lasts before the page reconnects.
pub const STREAM_FOR: Duration = Duration::from_secs(600);
/// How long a shard may take to answer `Shard.Metrics` before the snapshot goes without it.
const SHARD_METRICS_TIMEOUT: Duration = Duration::from_secs(1);

/// Upper bounds of the per-app latency buckets, seconds (the gateway's histogram's).
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// The page.
const PAGE: &str = include_str!("dashboard/index.html");

/// The dashboard's state in a gateway.
#[derive(Debug)]
pub struct Dashboard {
    classes: ClassSet,
    /// Traffic by paying tenant, then app.
    apps: RwLock<HashMap<String, HashMap<String, Arc<AppStats>>>>,
    app_count: AtomicU64,
    history: tokio::sync::Mutex<VecDeque<Arc<Point>>>,
    /// True once the gateway stops: event streams end.
    stopping: watch::Sender<bool>,
}

/// Requests of one (tenant, app) through this gateway: per class, latency bucket counts
/// (non-cumulative; the last is `+Inf`).
#[derive(Debug)]
pub struct AppStats {
    by_class: Vec<[AtomicU64; BUCKETS.len() + 1]>,
}

impl AppStats {
    pub fn observe(&self, class: ClassId, took: Duration) {
        let s = took.as_secs_f64();
        let at = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(buckets) = self.by_class.get(class.index()) {
            buckets[at].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Cumulative bucket counts per class, as `(le, count)`.
    fn cumulative(&self) -> Vec<Buckets> {
        self.by_class
            .iter()
            .map(|counts| {
                let mut total = 0;
                counts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        total += c.load(Ordering::Relaxed);
                        (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), total)
                    })
                    .collect()
            })
            .collect()
    }
}

/// A histogram's cumulative buckets, `(le, count)` by increasing `le`; the last is `+Inf`.
type Buckets = Vec<(f64, u64)>;

/// The cluster as one snapshot saw it: cumulative values, as the expositions gave them.
#[derive(Debug, Default)]
struct Point {
    at: Option<Instant>,
    unix_ms: u64,
    /// By class index.
    classes: Vec<ClassPoint>,
    workers: Vec<WorkerPoint>,
    /// `(tenant, app, buckets by class)`.
    apps: Vec<(String, String, Vec<Buckets>)>,
    /// Shards that did not answer.
    shards_missing: usize,
}

#[derive(Debug, Default, Clone)]
struct ClassPoint {
    /// The gateway's `turnpike_gateway_request_seconds` buckets.
    latency: Buckets,
    queued: f64,
    preempted: f64,
    swap_outs: f64,
    kills: f64,
}

#[derive(Debug, Default)]
struct WorkerPoint {
    address: String,
    slots: f64,
    slots_busy: f64,
    functions: f64,
    memory_used_mb: f64,
    swap_used_mb: f64,
}

impl Dashboard {
    pub fn new(classes: &ClassSet) -> Self {
        Self {
            classes: classes.clone(),
            apps: RwLock::default(),
            app_count: AtomicU64::new(0),
            history: tokio::sync::Mutex::default(),
            stopping: watch::Sender::new(false),
        }
    }

    /// The counts of `tenant`'s requests to `app`; `None` past [`APPS_MAX`] pairs.
    pub fn app(&self, tenant: &str, app: &str) -> Option<Arc<AppStats>> {
        if let Some(stats) = read(&self.apps).get(tenant).and_then(|apps| apps.get(app)) {
            return Some(stats.clone());
        }
        let mut apps = self
            .apps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(stats) = apps.get(tenant).and_then(|a| a.get(app)) {
            return Some(stats.clone());
        }
        if self.app_count.load(Ordering::Relaxed) >= APPS_MAX as u64 {
            return None;
        }
        self.app_count.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(AppStats {
            by_class: (0..self.classes.len())
                .map(|_| Default::default())
                .collect(),
        });
        apps.entry(tenant.to_string())
            .or_default()
            .insert(app.to_string(), stats.clone());
        Some(stats)
    }

    /// Ends every event stream (the gateway is stopping).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

/// Answers `GET /dashboard` and `GET /dashboard/events`.
pub async fn handle(gateway: &Gateway, parts: http::request::Parts) -> http::Response<Body> {
    if parts.method != http::Method::GET {
        return refuse(
            Refusal::Invalid,
            format!(
                "{} {}: the dashboard is read with GET",
                parts.method,
                parts.uri.path()
            ),
        );
    }
    match parts.uri.path() {
        "/dashboard" | "/dashboard/" => uncached(
            Body::full(Bytes::from_static(PAGE.as_bytes())),
            "text/html; charset=utf-8",
        ),
        "/dashboard/events" => match crate::api::authenticate(gateway, &parts.headers).await {
            Ok(tenant) => {
                let key = crate::api::bearer_key(&parts.headers).to_string();
                events(gateway, tenant, key)
            }
            Err(refusal) => refusal,
        },
        path => refuse(
            Refusal::NotFound,
            format!("no dashboard page {path}; the dashboard is at /dashboard"),
        ),
    }
}

/// A `text/event-stream` of `snapshot` events for `tenant`, one per [`SNAPSHOT_EVERY`]. The
/// key is checked again before each (as any request's is, through the gateway's key cache):
/// a revoked key's stream ends.
fn events(gateway: &Gateway, tenant: Tenant, key: String) -> http::Response<Body> {
    let Some(gateway) = gateway.me() else {
        return refuse(Refusal::Unavailable, "the gateway is shutting down");
    };
    let (sender, receiver) = mpsc::channel(VIEWER_BUFFER_EVENTS);
    let mut stopping = gateway.dashboard.stopping.subscribe();
    tokio::spawn(async move {
        let until = Instant::now() + STREAM_FOR;
        let mut ticks = tokio::time::interval(SNAPSHOT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        while Instant::now() < until && !*stopping.borrow() {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopping.changed() => break,
            }
            if sent > 0 && !matches!(gateway.tenant_of(&key).await, Ok(Some(_))) {
                break;
            }
            let history = snapshot(&gateway).await;
            let budget = budget_json(&gateway, &tenant).await;
            let view = view(&gateway.dashboard.classes, &history, &tenant, budget, sent);
            let event = format!("event: snapshot\ndata: {view}\n\n");
            tokio::select! {
                sent_ok = sender.send(Bytes::from(event)) => if sent_ok.is_err() { break },
                _ = stopping.changed() => break,
            }
            sent += 1;
        }
    });
    uncached(Body::Events(receiver), "text/event-stream")
}

/// A 200 of `body` as `content_type`, never cached (its data is live).
fn uncached(body: Body, content_type: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The history, with a new point if the last is older than [`SNAPSHOT_EVERY`] (less a
/// little, so viewers ticking a second apart share one).
async fn snapshot(gateway: &Gateway) -> Vec<Arc<Point>> {
    let mut history = gateway.dashboard.history.lock().await;
    let fresh = history
        .back()
        .and_then(|p| p.at)
        .is_some_and(|at| at.elapsed() < SNAPSHOT_EVERY.mul_f64(0.8));
    if !fresh {
        let point = take_point(gateway).await;
        if history.len() == HISTORY_POINTS {
            history.pop_front();
        }
        history.push_back(Arc::new(point));
    }
    history.iter().cloned().collect()
}

/// Reads every role's exposition and this gateway's per-app counts.
async fn take_point(gateway: &Gateway) -> Point {
    let classes = &gateway.dashboard.classes;
    let mut point = Point {
        at: Some(Instant::now()),
        unix_ms: crate::gateway::unix_ms(),
        classes: vec![ClassPoint::default(); classes.len()],
        ..Point::default()
    };
    let class_index: HashMap<&str, usize> = classes
        .iter()
        .map(|(id, c)| (c.name.as_str(), id.index()))
        .collect();
    let own = parse(&gateway.metrics());
    for sample in &own {
        if sample.name == "turnpike_gateway_request_seconds_bucket" {
            if let (Some(&c), Some(le)) = (
                sample.label("class").and_then(|c| class_index.get(c)),
                sample.label("le").and_then(parse_le),
            ) {
                point.classes[c].latency.push((le, sample.value as u64));
            }
        }
    }
    for class in &mut point.classes {
        class.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let asked = gateway.shard_addresses().into_iter().map(|address| {
        let peer = gateway.config.directory.shard(address);
        async move {
            tokio::time::timeout(SHARD_METRICS_TIMEOUT, peer.metrics())
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    let mut seen_workers = std::collections::HashSet::new();
    let mut answers = Vec::new();
    for ask in asked {
        answers.push(tokio::spawn(ask));
    }
    for answer in answers {
        let Some(roles) = answer.await.ok().flatten() else {
            point.shards_missing += 1;
            continue;
        };
        for role in roles {
            let samples = parse(&role.text);
            match role.role.as_str() {
                "shard" => {
                    for s in samples
                        .iter()
                        .filter(|s| s.name == "turnpike_shard_queue_length")
                    {
                        if let Some(&c) = s.label("class").and_then(|c| class_index.get(c)) {
                            point.classes[c].queued += s.value;
                        }
                    }
                }
                "worker" if seen_workers.insert(role.address.clone()) => {
                    let mut worker = WorkerPoint {
                        address: role.address.clone(),
                        ..WorkerPoint::default()
                    };
                    for s in &samples {
                        let class = s.label("class").and_then(|c| class_index.get(c)).copied();
                        match (s.name.as_str(), class) {
                            ("turnpike_worker_slots", _) => worker.slots = s.value,
                            ("turnpike_worker_slots_busy", _) => worker.slots_busy = s.value,
                            ("turnpike_worker_functions", _) => worker.functions = s.value,
                            ("turnpike_worker_memory_used_mb", _) => {
                                worker.memory_used_mb = s.value;
                            }
                            ("turnpike_worker_swap_used_mb", _) => worker.swap_used_mb = s.value,
                            ("turnpike_worker_preempted_total", Some(c)) => {
                                point.classes[c].preempted += s.value;
                            }
                            ("turnpike_worker_swap_outs_total", Some(c)) => {
                                point.classes[c].swap_outs += s.value;
                            }
                            ("turnpike_worker_kills_total", Some(c)) => {
                                point.classes[c].kills += s.value;
                            }
                            _ => {}
                        }
                    }
                    point.workers.push(worker);
                }
                _ => {}
            }
        }
    }
    point.workers.sort_by(|a, b| a.address.cmp(&b.address));
    let apps = read(&gateway.dashboard.apps);
    for (tenant, by_app) in apps.iter() {
        for (app, stats) in by_app {
            point
                .apps
                .push((tenant.clone(), app.clone(), stats.cumulative()));
        }
    }
    point.apps.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    point
}

async fn budget_json(gateway: &Gateway, tenant: &Tenant) -> Value {
    match gateway.billing.status(&tenant.name).await {
        Ok((budget, month, spent)) => json!({
            "month": month.month_label(),
            "spent": spent,
            "monthly": budget.map(|b| b.monthly),
        }),
        Err(e) => json!({ "error": format!("the store failed: {e}") }),
    }
}

/// What one viewer is shown: the newest point, with rates and percentiles against the
/// earlier ones, and a series of each class's requests per second and p99: over the whole
/// history in a viewer's first event (`seq` 0, `series_full`), then the newest point.
fn view(
    classes: &ClassSet,
    history: &[Arc<Point>],
    tenant: &Tenant,
    budget: Value,
    seq: u64,
) -> Value {
    let Some(now) = history.last() else {
        return json!({});
    };
    let before = history.len().checked_sub(2).map(|i| &history[i]);
    let window_start = window_start(history);
    let admin = tenant.admin;
    let apps: Vec<&(String, String, Vec<Buckets>)> = now
        .apps
        .iter()
        .filter(|(t, _, _)| admin || *t == tenant.name)
        .collect();
    let app_buckets = |point: &Point, tenant: &str, app: &str| -> Option<Vec<Buckets>> {
        point
            .apps
            .iter()
            .find(|(t, a, _)| t == tenant && a == app)
            .map(|(_, _, b)| b.clone())
    };
    // A tenant's classes are its apps' traffic summed; an admin's, the gateway's histogram.
    let class_latency = |point: &Point| -> Vec<Buckets> {
        if admin {
            point.classes.iter().map(|c| c.latency.clone()).collect()
        } else {
            let mut sum: Vec<Buckets> = vec![Vec::new(); classes.len()];
            for (t, _, by_class) in &point.apps {
                if *t == tenant.name {
                    for (c, b) in by_class.iter().enumerate() {
                        sum[c] = add_buckets(&sum[c], b);
                    }
                }
            }
            sum
        }
    };
    let latency_now = class_latency(now);
    let latency_before = before.map(|p| class_latency(p));
    let latency_window = window_start.map(&class_latency);
    // The first event carries the whole history's series, later ones only their newest
    // point (the page appends it): a viewer's event stays small, and cheap to make.
    let first_pair = if seq == 0 {
        0
    } else {
        history.len().saturating_sub(2)
    };
    let series: Vec<Vec<Value>> = history[first_pair..]
        .windows(2)
        .map(|pair| {
            let (a, b) = (class_latency(&pair[0]), class_latency(&pair[1]));
            let dt = seconds_between(&pair[0], &pair[1]);
            (0..classes.len())
                .map(|c| {
                    let diff = sub_buckets(&b[c], &a[c]);
                    let mut point = json!({
                        "t": pair[1].unix_ms,
                        "rps": rate(total(&b[c]), total(&a[c]), dt),
                        "p50_ms": quantile(&diff, 0.5).map(|s| s * 1e3),
                        "p99_ms": quantile(&diff, 0.99).map(|s| s * 1e3),
                    });
                    if admin {
                        point["queued"] = json!(pair[1].classes[c].queued);
                    }
                    point
                })
                .collect()
        })
        .collect();
    let class_rows: Vec<Value> = classes
        .iter()
        .map(|(id, class)| {
            let c = id.index();
            let windowed = latency_window.as_ref().map_or_else(
                || latency_now[c].clone(),
                |w| sub_buckets(&latency_now[c], &w[c]),
            );
            let mut row = json!({
                "name": class.name,
                "requests_total": total(&latency_now[c]),
                "rps": before.map(|b| rate(
                    total(&latency_now[c]),
                    latency_before.as_ref().map_or(0, |l| total(&l[c])),
                    seconds_between(b, now),
                )),
                "p50_ms": quantile(&windowed, 0.5).map(|s| s * 1e3),
                "p99_ms": quantile(&windowed, 0.99).map(|s| s * 1e3),
                "series": series.iter().map(|s| s[c].clone()).collect::<Vec<_>>(),
            });
            if admin {
                let p = &now.classes[c];
                row["queued"] = json!(p.queued);
                row["preempted_total"] = json!(p.preempted);
                row["swap_outs_total"] = json!(p.swap_outs);
                row["kills_total"] = json!(p.kills);
            }
            row
        })
        .collect();
    let app_rows: Vec<Value> = apps
        .iter()
        .map(|(t, app, by_class)| {
            let earlier = before.and_then(|b| app_buckets(b, t, app));
            let window = window_start.and_then(|w| app_buckets(w, t, app));
            let per_class: Vec<Value> = classes
                .iter()
                .filter(|(id, _)| total(&by_class[id.index()]) > 0)
                .map(|(id, class)| {
                    let c = id.index();
                    let windowed = window
                        .as_ref()
                        .map_or_else(|| by_class[c].clone(), |w| sub_buckets(&by_class[c], &w[c]));
                    json!({
                        "name": class.name,
                        "requests_total": total(&by_class[c]),
                        "rps": before.map(|b| rate(
                            total(&by_class[c]),
                            earlier.as_ref().map_or(0, |e| total(&e[c])),
                            seconds_between(b, now),
                        )),
                        "p50_ms": quantile(&windowed, 0.5).map(|s| s * 1e3),
                        "p99_ms": quantile(&windowed, 0.99).map(|s| s * 1e3),
                    })
                })
                .collect();
            json!({ "tenant": t, "app": app, "classes": per_class })
        })
        .collect();
    let workers: Vec<Value> = if admin {
        now.workers
            .iter()
            .map(|w| {
                json!({
                    "address": w.address,
                    "slots": w.slots,
                    "slots_busy": w.slots_busy,
                    "functions": w.functions,
                    "memory_used_mb": w.memory_used_mb,
                    "swap_used_mb": w.swap_used_mb,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "seq": seq,
        "series_full": seq == 0,
        "history_points": HISTORY_POINTS,
        "unix_ms": now.unix_ms,
        "scope": if admin { "cluster" } else { "tenant" },
        "tenant": tenant.name,
        "classes": class_rows,
        "workers": workers,
        "apps": app_rows,
        "budget": budget,
        "shards_missing": now.shards_missing,
        "percentile_window_s": PERCENTILE_WINDOW.as_secs(),
    })
}

/// The newest point at least [`PERCENTILE_WINDOW`] older than the last, else the oldest
/// (`None` with one point: percentiles are then over everything counted).
fn window_start(history: &[Arc<Point>]) -> Option<&Point> {
    let last = history.last()?.at?;
    if history.len() < 2 {
        return None;
    }
    history[..history.len() - 1]
        .iter()
        .rev()
        .find(|p| {
            p.at.is_some_and(|at| last.duration_since(at) >= PERCENTILE_WINDOW)
        })
        .or_else(|| history.first())
        .map(|p| &**p)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn seconds_between(a: &Point, b: &Point) -> f64 {
    match (a.at, b.at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / seconds
}

/// A histogram's count: its `+Inf` bucket.
fn total(buckets: &Buckets) -> u64 {
    buckets.last().map_or(0, |&(_, n)| n)
}

/// `a - b`, bucket by bucket (`b` empty: `a`).
fn sub_buckets(a: &Buckets, b: &Buckets) -> Buckets {
    a.iter()
        .map(|&(le, n)| {
            let earlier = b.iter().find(|(l, _)| *l == le).map_or(0, |&(_, m)| m);
            (le, n.saturating_sub(earlier))
        })
        .collect()
}

fn add_buckets(a: &Buckets, b: &Buckets) -> Buckets {
    if a.is_empty() {
        return b.clone();
    }
    a.iter()
        .map(|&(le, n)| {
            let more = b.iter().find(|(l, _)| *l == le).map_or(0, |&(_, m)| m);
            (le, n + more)
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, seconds, interpolated linearly within its bucket
/// as Prometheus' `histogram_quantile` does (one in the `+Inf` bucket: the largest finite
/// bound). `None` when the histogram is empty.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let count = total(buckets);
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(le, cumulative) in buckets {
        if cumulative as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = (cumulative - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * into);
        }
        lower = (le, cumulative);
    }
    Some(lower.0)
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus (or OpenMetrics) text exposition; comments and lines that do
/// not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], Vec::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values may escape `\"`, `\\` and `\n`).
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let text = "# HELP x y\n# TYPE x counter\nx_total 3\n\
                    h_bucket{class=\"premium\",le=\"0.005\"} 7\n\
                    q{class=\"a \\\"b\\\"\"} 1.5e3\n# EOF\nnot a sample\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("class"), Some("premium"));
        assert_eq!(samples[1].label("le"), Some("0.005"));
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].label("class"), Some("a \"b\""));
        assert_eq!(samples[2].value, 1500.0);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = vec![(0.001, 0), (0.002, 50), (0.005, 100), (f64::INFINITY, 100)];
        // Half are in (1 ms, 2 ms]: the median is that bucket's top.
        assert!((quantile(&buckets, 0.5).unwrap() - 0.002).abs() < 1e-12);
        // p99: 99 of 100, 49/50 of the way through (2 ms, 5 ms].
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - (0.002 + 0.003 * 49.0 / 50.0)).abs() < 1e-12, "{p99}");
        assert_eq!(quantile(&vec![(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        // Everything past the last bound: the last finite bound.
        let slow = vec![(0.001, 0), (30.0, 0), (f64::INFINITY, 4)];
        assert_eq!(quantile(&slow, 0.5), Some(30.0));
    }

    #[test]
    fn window_differences_count_only_new_requests() {
        let before = vec![(0.001, 10), (0.002, 10), (f64::INFINITY, 10)];
        let now = vec![(0.001, 10), (0.002, 30), (f64::INFINITY, 30)];
        let diff = sub_buckets(&now, &before);
        assert_eq!(diff, vec![(0.001, 0), (0.002, 20), (f64::INFINITY, 20)]);
        assert!(quantile(&diff, 0.5).unwrap() > 0.001);
        assert_eq!(total(&add_buckets(&now, &before)), 40);
    }

    fn buckets(counts: &[(f64, u64)]) -> Buckets {
        counts.to_vec()
    }

    /// Two snapshots a second apart: the cluster's gateway histogram, one worker, and two
    /// tenants' apps.
    fn history() -> Vec<Arc<Point>> {
        let start = Instant::now();
        let point = |at: Duration, n: u64| {
            let mut classes = vec![ClassPoint::default(); 4];
            classes[3].latency = buckets(&[(0.001, n), (0.01, 2 * n), (f64::INFINITY, 2 * n)]);
            classes[0].queued = 7.0;
            classes[0].preempted = 3.0;
            let by_class = |k: u64| {
                let mut b = vec![Vec::new(); 4];
                b[3] = buckets(&[(0.001, k), (f64::INFINITY, k)]);
                b
            };
            Arc::new(Point {
                at: Some(start + at),
                unix_ms: 1_000 + at.as_millis() as u64,
                classes,
                workers: vec![WorkerPoint {
                    address: "http://w".into(),
                    slots: 2.0,
                    ..WorkerPoint::default()
                }],
                apps: vec![
                    ("acme".into(), "shop".into(), by_class(n)),
                    ("zed".into(), "blog".into(), by_class(5)),
                ],
                shards_missing: 0,
            })
        };
        vec![
            point(Duration::ZERO, 10),
            point(Duration::from_secs(1), 110),
        ]
    }

    fn tenant(name: &str, admin: bool) -> Tenant {
        Tenant {
            name: name.into(),
            admin,
            concurrency_max: None,
        }
    }

    #[test]
    fn an_admin_sees_the_cluster_with_rates_and_percentiles() {
        let classes = ClassSet::default_four();
        let v = view(&classes, &history(), &tenant("root", true), json!({}), 0);
        assert_eq!(v["scope"], "cluster");
        let critical = &v["classes"][3];
        assert_eq!(critical["name"], "critical");
        assert_eq!(critical["requests_total"], 220);
        // 200 more requests in one second.
        assert_eq!(critical["rps"], 200.0);
        // Of the 200 new ones, half within 1 ms, half in (1 ms, 10 ms].
        let p50 = critical["p50_ms"].as_f64().unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        assert_eq!(v["classes"][0]["queued"], 7.0);
        assert_eq!(v["classes"][0]["preempted_total"], 3.0);
        assert_eq!(v["workers"][0]["slots"], 2.0);
        assert_eq!(v["apps"].as_array().unwrap().len(), 2);
        // The first event carries the whole series; a later one only its newest point.
        assert_eq!(v["series_full"], true);
        assert_eq!(critical["series"].as_array().unwrap().len(), 1);
        let later = view(&classes, &history(), &tenant("root", true), json!({}), 5);
        assert_eq!(later["series_full"], false);
    }

    #[test]
    fn a_tenant_sees_only_its_own_apps_and_no_cluster() {
        let classes = ClassSet::default_four();
        let v = view(&classes, &history(), &tenant("acme", false), json!({}), 0);
        assert_eq!(v["scope"], "tenant");
        assert_eq!(v["workers"], json!([]));
        let apps = v["apps"].as_array().unwrap();
        assert_eq!(apps.len(), 1, "{v}");
        assert_eq!(apps[0]["app"], "shop");
        // Its classes are its apps' traffic: 110 requests, 100 in the last second.
        let critical = &v["classes"][3];
        assert_eq!(critical["requests_total"], 110);
        assert_eq!(critical["rps"], 100.0);
        assert!(critical.get("queued").is_none(), "{v}");
    }

    #[test]
    fn app_stats_count_by_class_and_bucket() {
        let dashboard = Dashboard::new(&ClassSet::default_four());
        let stats = dashboard.app("acme", "shop").unwrap();
        stats.observe(ClassId(3), Duration::from_micros(1500));
        stats.observe(ClassId(3), Duration::from_secs(60));
        stats.observe(ClassId(0), Duration::from_millis(3));
        // The same pair is the same counts.
        let again = dashboard.app("acme", "shop").unwrap();
        let cumulative = again.cumulative();
        assert_eq!(total(&cumulative[3]), 2);
        assert_eq!(total(&cumulative[0]), 1);
        assert_eq!(cumulative[3][0], (0.001, 0));
        assert_eq!(cumulative[3][1], (0.002, 1));
        assert_eq!(total(&cumulative[1]), 0);
    }
}
