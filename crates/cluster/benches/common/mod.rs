//! The load generator shared by the control plane's benchmarks: an HTTP/1.1 keep-alive
//! client, closed and open loops, percentiles.
#![allow(dead_code)] // each benchmark uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn get(client: &HttpClient, url: &str) -> (u16, Bytes) {
    get_as(client, url, None).await
}

/// GET; a direct invocation names its class and carries an API key: `(class, key)`.
pub async fn get_as(client: &HttpClient, url: &str, direct: Option<(&str, &str)>) -> (u16, Bytes) {
    let mut request = http::Request::get(url);
    if let Some((class, key)) = direct {
        request = request
            .header(turnpike_gateway::gateway::CLASS_HEADER, class)
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request.body(Empty::new()).expect("request");
    let response = client.request(request).await.expect("request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Closed loop: `clients` tasks each sending `per_client` requests; (requests/s, sorted
/// latencies).
pub async fn closed_loop<F, Fut>(clients: usize, per_client: usize, one: F) -> (f64, Vec<Duration>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    one().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// The default four classes, bottom first.
pub const CLASS_NAMES: [&str; 4] = ["batch", "standard", "interactive", "critical"];

/// Requests this generator keeps in flight at most: each holds a connection, two descriptors
/// with the gateway in this process, under this machine's limit of 20,000.
pub const IN_FLIGHT_MAX: usize = 6_000;

/// Open loop: Poisson arrivals at `rate` per second for `run` (seed 7), each a GET of `url`
/// (a direct invocation with API key `key`) at a class drawn uniformly; every answer must be
/// 200. Latencies by class, sorted.
///
/// Beyond the cluster's capacity the starved lower classes pile up in flight (about 30,000
/// after a minute at twice the capacity). While [`IN_FLIGHT_MAX`] are in flight, an arrival
/// below the top class is not sent (counted and printed); the top class is always sent. The
/// backlog the services hold stays thousands deep, so the overload is sustained all the
/// same: lower classes only ever run when the top class leaves a core free.
pub async fn poisson_by_class(
    url: &str,
    key: &str,
    rate: f64,
    run: Duration,
) -> Vec<Vec<Duration>> {
    use rand::{Rng, SeedableRng};
    // HTTP/1.1: a connection per request in flight. (Over HTTP/2 the server's limit on
    // concurrent streams queues the overload in the client, first come first served, and
    // hides the platform's priorities.)
    let client = http_client();
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
    let t0 = Instant::now();
    let mut next = Duration::ZERO;
    let mut tasks = Vec::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut not_sent = [0u64; CLASS_NAMES.len()];
    let top = CLASS_NAMES.len() - 1;
    while next < run {
        tokio::time::sleep_until((t0 + next).into()).await;
        let class = rng.random_range(0..CLASS_NAMES.len());
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        next += Duration::from_secs_f64(-u.ln() / rate);
        if class < top && in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
            not_sent[class] += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, url, key) = (client.clone(), url.to_string(), key.to_string());
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let (status, _) = get_as(&client, &url, Some((CLASS_NAMES[class], &key))).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (class, status, t.elapsed())
        }));
    }
    if not_sent.iter().any(|&n| n > 0) {
        println!(
            "  not sent while {IN_FLIGHT_MAX} were in flight, by class (bottom first): {not_sent:?}"
        );
    }
    let mut by_class: Vec<Vec<Duration>> = vec![Vec::new(); CLASS_NAMES.len()];
    for t in tasks {
        let (class, status, latency) = t.await.expect("request task");
        assert_eq!(status, 200);
        by_class[class].push(latency);
    }
    for lat in &mut by_class {
        lat.sort();
    }
    by_class
}

/// Prints per-class p50/p99 slowdown (latency over `runtime_ms`); returns `(p50, p99)` by
/// class.
pub fn print_slowdowns(by_class: &[Vec<Duration>], runtime_ms: u64) -> Vec<(f64, f64)> {
    let slow = |d: Duration| d.as_secs_f64() * 1000.0 / runtime_ms as f64;
    let mut out = Vec::new();
    for (class, lat) in by_class.iter().enumerate() {
        if lat.is_empty() {
            out.push((f64::NAN, f64::NAN));
            continue;
        }
        let (p50, p99) = (slow(percentile(lat, 0.5)), slow(percentile(lat, 0.99)));
        println!(
            "  {:<12} n={:<5} slowdown p50 {p50:>7.2}  p99 {p99:>7.2}",
            CLASS_NAMES[class],
            lat.len()
        );
        out.push((p50, p99));
    }
    out
}

/// What `wrk` reported for one run.
#[derive(Clone, Copy, Debug)]
pub struct WrkRun {
    /// Responses per second.
    pub rate: f64,
    pub requests: u64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

/// Runs `wrk` (one thread, `connections` keep-alive connections, `run` long) against `url`;
/// `None` when wrk is not installed (`scripts/install-wrk.sh`). wrk is the load generator
/// `shared/notes/benchmarking.md` uses on these machines: it needs several times less CPU
/// per request than the hyper client above, so more of the two cores are left to the
/// server.
pub fn wrk(url: &str, connections: usize, run: Duration) -> Option<WrkRun> {
    let output = std::process::Command::new("wrk")
        .args([
            "-t1".to_string(),
            format!("-c{connections}"),
            format!("-d{}s", run.as_secs().max(1)),
            url.to_string(),
        ])
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(parse_wrk(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads wrk's report: `N requests in ...`, `Requests/sec: R`, and the optional lines
/// `Non-2xx or 3xx responses: N` and `Socket errors: connect A, read B, write C, timeout D`.
fn parse_wrk(report: &str) -> WrkRun {
    let number = |text: &str| -> u64 {
        text.trim()
            .trim_end_matches(',')
            .parse()
            .unwrap_or_else(|_| {
                panic!("wrk's report has {text:?} where a number belongs:\n{report}")
            })
    };
    let mut run = WrkRun {
        rate: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: 0,
    };
    for line in report.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            run.rate = rate.trim().parse().expect("wrk's Requests/sec");
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = number(n);
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            run.socket_errors = errors
                .split(',')
                .map(|e| number(e.split_whitespace().last().unwrap_or("")))
                .sum();
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            run.requests = number(n);
        }
    }
    assert!(
        run.rate.is_finite(),
        "no Requests/sec in wrk's report:\n{report}"
    );
    run
}
