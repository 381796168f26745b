//! Chaos under load across hosts: on a cluster of network namespaces
//! (`scripts/netns-cluster.sh`: PostgreSQL, 2 gateways, 2 shards, 3 workers, mutual TLS), a
//! mixed-class load through both gateways meets one fault at a time:
//!
//! | fault               | what is done                                   | repaired by              |
//! |---------------------|------------------------------------------------|--------------------------|
//! | `kill worker`       | SIGKILL w1                                     | starting it, 5 s later   |
//! | `kill shard`        | SIGKILL sh1                                    | starting it, 5 s later   |
//! | `kill gateway`      | SIGKILL gw1                                    | starting it, 5 s later   |
//! | `cut worker`        | w2 unplugged from the bridge (all packets lost) | plugging it in, 5 s later |
//! | `stop store`        | PostgreSQL stopped (fast shutdown)             | starting it, 10 s later  |
//! | `worker new port`   | SIGKILL w3                                     | starting it at once on port 7101 |
//!
//! Each fault gets a tenant and app of its own, so its ledger rows are its own. Afterwards:
//!
//! - **Answered**: every request gets an answer within its deadline (`x-turnpike-deadline-ms`,
//!   [`DEADLINE_MS`]) plus [`ANSWER_GRACE`]: the function's result, or a refusal (429/5xx)
//!   whose body gives the reason. The client is what a load balancer in front of the gateways
//!   would be: a request that cannot connect to its gateway goes to the other one. The one
//!   exception is the killed gateway's own requests, in flight when it died: their
//!   connections break (`reset`), which a client sees at once.
//! - **Lost**: a request with no answer in time, or a result whose invocation (its
//!   `x-turnpike-invocation` header) is not in the ledger once the ledger has settled. 0.
//! - **Billed twice**: a ledger row that matches no answer, beyond the `reset` requests (a
//!   killed gateway's invocation that ran and was billed but whose answer was lost with the
//!   connection), or an invocation with two rows. 0.
//! - **Memory**: every role process's peak RSS, sampled every [`RSS_EVERY`], within its
//!   bound ([`RSS_BOUND_MB`]).
//! - **Detection**: a worker killed, cut off or moved is counted lost by a shard within
//!   [`DETECTION_BOUND`] of the fault (the registration lease, 2 s, plus the shard's check
//!   period and a poll; the metric is read every 50 ms).
//! - **Recovery**: from the repair (the process listening again, the link up, the store
//!   started) to the last request that did not get a result, at most [`RECOVERY_BOUND`];
//!   and every shard counts all 3 workers live again within it.
//!
//! It prints a table, one row a fault, and `N passed, N failed`. The load runs
//! `TURNPIKE_CHAOS_SECONDS` a fault (60 in `scripts/chaos.sh`); unset, a short run for CI (the
//! fault 3 s in, the load ending [`SHORT_AFTER`] after the repair). `TURNPIKE_CHAOS_FAULTS`
//! (a comma list of fault names) runs some of them.
//!
//! It needs root (network namespaces): see `common::netns`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use common::netns::{enter_namespace, exchange, Cluster, Unanswered};
use common::{create_tenant, turnpike};

const FUNCTIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/functions/dist");

/// This test's cluster: its own namespace prefix and subnet.
const NAME: &str = "tpx";
const SUBNET: &str = "10.213.11";

const CLASSES: [&str; 4] = ["critical", "interactive", "standard", "batch"];
/// Requests a second through both gateways, a quarter at each class, each spinning
/// [`RUN_MS`]: half the cluster's CPU (3 workers of 1 core), three quarters with a worker
/// gone.
const RATE: u64 = 30;
const RUN_MS: u64 = 50;
/// Every request's deadline.
const DEADLINE_MS: u64 = 5000;
/// How long after its deadline an answer may take to arrive (the network, the gateway's
/// answer to the cancellation).
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// From a worker's fault to a shard counting it lost.
const DETECTION_BOUND: Duration = Duration::from_millis(2500);
/// From a repair to normal service.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// In a short run: the fault's start, and how long the load goes on after the repair.
const SHORT_AT: Duration = Duration::from_secs(3);
const SHORT_AFTER: Duration = Duration::from_secs(8);
/// How long the ledger may take to hold every result (the store's outbox is replayed every
/// second once the store is back).
const LEDGER_SETTLE: Duration = Duration::from_secs(20);
const RSS_EVERY: Duration = Duration::from_millis(200);
/// Peak RSS bounds by role, MiB. A worker's guests have 1024 MB (`memory-mb`); this load
/// uses a few of them.
const RSS_BOUND_MB: [(&str, u64); 3] = [("gateway", 512), ("shard", 256), ("worker", 1536)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillWorker,
    KillShard,
    KillGateway,
    CutWorker,
    StopStore,
    WorkerNewPort,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillWorker,
        Fault::KillShard,
        Fault::KillGateway,
        Fault::CutWorker,
        Fault::StopStore,
        Fault::WorkerNewPort,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillWorker => "kill worker",
            Fault::KillShard => "kill shard",
            Fault::KillGateway => "kill gateway",
            Fault::CutWorker => "cut worker",
            Fault::StopStore => "stop store",
            Fault::WorkerNewPort => "worker new port",
        }
    }

    /// From the fault to its repair.
    fn outage(self) -> Duration {
        match self {
            Fault::StopStore => Duration::from_secs(10),
            Fault::WorkerNewPort => Duration::ZERO,
            _ => Duration::from_secs(5),
        }
    }

    fn inject(self, cluster: &Cluster) {
        match self {
            Fault::KillWorker => cluster.run(&["stop", "w1", "KILL"]),
            Fault::KillShard => cluster.run(&["stop", "sh1", "KILL"]),
            Fault::KillGateway => cluster.run(&["stop", "gw1", "KILL"]),
            Fault::CutWorker => cluster.run(&["cut", "w2"]),
            Fault::StopStore => cluster.run(&["stop", "pg"]),
            Fault::WorkerNewPort => cluster.run(&["stop", "w3", "KILL"]),
        }
    }

    fn repair(self, cluster: &Cluster) {
        match self {
            Fault::KillWorker => cluster.run(&["start", "w1"]),
            Fault::KillShard => cluster.run(&["start", "sh1"]),
            Fault::KillGateway => cluster.run(&["start", "gw1"]),
            Fault::CutWorker => cluster.run(&["heal", "w2"]),
            Fault::StopStore => cluster.run(&["start", "pg"]),
            Fault::WorkerNewPort => cluster.run(&["start", "w3", "--listen", "0.0.0.0:7101"]),
        }
    }
}

/// How one request went.
#[derive(Debug)]
enum Outcome {
    Answered {
        status: u16,
        /// Its `x-turnpike-invocation`.
        invocation: Option<u64>,
        /// Whether a refusal says why (`{"error": "..."}`).
        reasoned: bool,
    },
    /// Its connection broke before a whole answer.
    Reset,
    /// Neither gateway took the connection.
    NoConnection,
    /// No answer by its deadline and the grace.
    TimedOut,
}

#[derive(Debug)]
struct Sent {
    /// When it was sent, from the load's start.
    at: Duration,
    outcome: Outcome,
}

/// A fault's row in the table.
#[derive(Debug, Default)]
struct Row {
    requests: usize,
    answered: usize,
    results: usize,
    errors: BTreeMap<String, usize>,
    lost: usize,
    billed_twice: usize,
    recovery: Duration,
    /// From the fault to a shard counting a worker lost, if one did.
    detected: Option<Duration>,
    healthy: bool,
    rss_mb: BTreeMap<&'static str, u64>,
    problems: Vec<String>,
}

impl Row {
    fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The app of fault `n`: spin at every class.
fn manifest(dir: &Path, n: usize) -> String {
    let mut text = format!("app = \"chaos{n}\"\n[functions]\nspin = \"{FUNCTIONS}/spin.wasm\"\n");
    for class in CLASSES {
        text.push_str(&format!(
            "[[routes]]\npath = \"/spin/{class}\"\nfunction = \"spin\"\nclass = \"{class}\"\n"
        ));
    }
    let path = dir.join(format!("chaos{n}.toml"));
    std::fs::write(&path, text).expect("write the manifest");
    path.display().to_string()
}

/// One request through `gateway` (the other if `gateway` takes no connection).
async fn send(gateways: [SocketAddr; 2], first: usize, path: &str, host: &str) -> Outcome {
    let deadline = DEADLINE_MS.to_string();
    let headers = [
        ("Host", host),
        ("x-turnpike-deadline-ms", deadline.as_str()),
    ];
    let wait = Duration::from_millis(DEADLINE_MS) + ANSWER_GRACE;
    let attempt = async {
        for gateway in [gateways[first], gateways[1 - first]] {
            match exchange(gateway, "GET", path, &headers).await {
                Ok(answer) => {
                    let invocation = answer
                        .header("x-turnpike-invocation")
                        .and_then(|v| v.parse().ok());
                    let reasoned = answer.status == 200
                        || serde_json::from_str::<serde_json::Value>(&answer.body)
                            .is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()));
                    return Outcome::Answered {
                        status: answer.status,
                        invocation,
                        reasoned,
                    };
                }
                Err(Unanswered::Broken(_)) => return Outcome::Reset,
                Err(Unanswered::Connect(_)) => continue,
            }
        }
        Outcome::NoConnection
    };
    tokio::time::timeout(wait, attempt)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// The peak RSS of each role's processes (MiB) while `running`, sampled every [`RSS_EVERY`]
/// (the pid files are read each time: a process restarted is followed).
fn sample_rss(cluster_dir: &Path, running: &AtomicBool) -> BTreeMap<&'static str, u64> {
    let hosts = [
        ("gw1", "gateway"),
        ("gw2", "gateway"),
        ("sh1", "shard"),
        ("sh2", "shard"),
        ("w1", "worker"),
        ("w2", "worker"),
        ("w3", "worker"),
    ];
    let mut peak: BTreeMap<&'static str, u64> = BTreeMap::new();
    while running.load(Ordering::Relaxed) {
        for (host, role) in hosts {
            let pid = std::fs::read_to_string(cluster_dir.join("hosts").join(host).join("pid"));
            let Ok(pid) = pid else { continue };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())) else {
                continue;
            };
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let mb = peak.entry(role).or_default();
            *mb = (*mb).max(kb / 1024);
        }
        std::thread::sleep(RSS_EVERY);
    }
    peak
}

/// The invocation ids in the ledger for `tenant`, with how many rows each has; `None`
/// while the store does not answer.
async fn ledger_of(store_url: &str, tenant: &str) -> Option<HashMap<u64, usize>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(store_url)
        .await
        .ok()?;
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT invocation FROM ledger WHERE tenant = $1")
        .bind(tenant)
        .fetch_all(&pool)
        .await
        .ok()?;
    pool.close().await;
    let mut ids = HashMap::new();
    for (id,) in rows {
        *ids.entry(id as u64).or_default() += 1;
    }
    Some(ids)
}

/// Metric `name` on shard host `n`'s `/metrics`, if it answers.
async fn shard_metric(cluster: &Cluster, n: u8, name: &str) -> Option<f64> {
    let answer = exchange(cluster.address(n, 9100), "GET", "/metrics", &[])
        .await
        .ok()?;
    answer
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Shard host `n`'s `turnpike_shard_workers_lost_total`, if it answers.
async fn lost_total(cluster: &Cluster, n: u8) -> Option<f64> {
    shard_metric(cluster, n, "turnpike_shard_workers_lost_total").await
}

/// Whether every shard counts all 3 workers live (from its `/metrics`).
async fn all_workers_live(cluster: &Cluster) -> bool {
    for n in [21, 22] {
        if shard_metric(cluster, n, "turnpike_shard_workers_live").await != Some(3.0) {
            return false;
        }
    }
    true
}

/// Waits until both gateways serve app `chaos{n}` at every class: the invocations of the
/// answers on the way.
async fn wait_served(gateways: [SocketAddr; 2], n: usize) -> HashSet<u64> {
    let host = format!("chaos{n}.localhost");
    let start = Instant::now();
    let mut ids = HashSet::new();
    for gateway in gateways {
        for class in CLASSES {
            let path = format!("/spin/{class}?ms=1");
            loop {
                let answer = exchange(gateway, "GET", &path, &[("Host", &host)]).await;
                if let Some(id) = answer.as_ref().ok().and_then(|a| {
                    a.header("x-turnpike-invocation")
                        .and_then(|v| v.parse().ok())
                }) {
                    ids.insert(id);
                }
                if answer.as_ref().is_ok_and(|a| a.status == 200) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{gateway} does not serve chaos{n}: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ids
}

/// Runs `fault` under load (`load` long, the fault at `at`): its row.
async fn run_fault(
    cluster: Arc<Cluster>,
    admin: &str,
    n: usize,
    fault: Fault,
    at: Duration,
    load: Duration,
) -> Row {
    let gateways = [cluster.gateway(1), cluster.gateway(2)];
    let tenant = format!("chaos-{n}");
    let key = create_tenant(gateways[1], admin, &tenant);
    let manifest = manifest(cluster.dir.parent().expect("the test's directory"), n);
    turnpike(gateways[1], &key, &["deploy", "--manifest", &manifest]);
    let served = wait_served(gateways, n).await;

    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (dir, running) = (cluster.dir.clone(), running.clone());
        std::thread::spawn(move || sample_rss(&dir, &running))
    };
    let start = Instant::now();
    // The fault and its repair, beside the load: when the repair was done.
    let repaired = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + at).await;
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || fault.inject(&c))
                .await
                .expect("the fault");
            let injected = start.elapsed();
            tokio::time::sleep(fault.outage()).await;
            tokio::task::spawn_blocking(move || fault.repair(&cluster))
                .await
                .expect("the repair");
            (injected, start.elapsed())
        })
    };
    // When a shard first counts a worker lost (`turnpike_shard_workers_lost_total` above
    // where it was before the load), from the load's start.
    let detected = {
        let (cluster, running) = (cluster.clone(), running.clone());
        tokio::spawn(async move {
            let before = [
                lost_total(&cluster, 21).await,
                lost_total(&cluster, 22).await,
            ];
            while running.load(Ordering::Relaxed) {
                for (i, n) in [21, 22].into_iter().enumerate() {
                    if let (Some(now), Some(before)) = (lost_total(&cluster, n).await, before[i]) {
                        if now > before {
                            return Some(start.elapsed());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        })
    };
    let host = format!("chaos{n}.localhost");
    let every = Duration::from_secs(1) / RATE as u32;
    let total = (load.as_secs_f64() * RATE as f64) as u64;
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let class = CLASSES[i as usize % CLASSES.len()];
        let path = format!("/spin/{class}?ms={RUN_MS}");
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let at = start.elapsed();
            let outcome = send(gateways, (i % 2) as usize, &path, &host).await;
            Sent { at, outcome }
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await.expect("a request task"));
    }
    let (injected, repaired) = repaired.await.expect("the fault's task");
    running.store(false, Ordering::Relaxed);
    let rss_mb = sampler.join().expect("the RSS sampler");
    let detected = detected
        .await
        .expect("the watcher")
        .map(|at| at.saturating_sub(injected));

    let mut row = Row {
        requests: sent.len(),
        rss_mb,
        detected,
        ..Row::default()
    };
    let mut results = HashSet::new();
    let mut answered_ids = served;
    let mut resets = 0;
    let mut last_failure = None;
    for s in &sent {
        let kind = match &s.outcome {
            Outcome::Answered {
                status,
                invocation,
                reasoned,
            } => {
                row.answered += 1;
                if let Some(id) = invocation {
                    answered_ids.insert(*id);
                }
                if *status == 200 {
                    row.results += 1;
                    match invocation {
                        Some(id) => {
                            results.insert(*id);
                        }
                        None => row
                            .problems
                            .push("a result without x-turnpike-invocation".into()),
                    }
                    None
                } else if *reasoned {
                    Some(status.to_string())
                } else {
                    Some(format!("{status} without a reason"))
                }
            }
            Outcome::Reset => {
                resets += 1;
                Some("reset".to_string())
            }
            Outcome::NoConnection => Some("no connection".to_string()),
            Outcome::TimedOut => {
                row.lost += 1;
                Some("timed out".to_string())
            }
        };
        if let Some(kind) = kind {
            if s.at >= repaired {
                last_failure = Some(s.at);
            }
            *row.errors.entry(kind).or_default() += 1;
        }
    }
    for kind in row.errors.keys() {
        let allowed = kind.parse::<u16>().is_ok_and(|s| s == 429 || s >= 500)
            || (fault == Fault::KillGateway && kind == "reset")
            || kind == "timed out"; // counted as lost
        if !allowed {
            row.problems.push(format!("answers of kind `{kind}`"));
        }
    }
    if matches!(
        fault,
        Fault::KillWorker | Fault::CutWorker | Fault::WorkerNewPort
    ) && row.detected.is_none_or(|d| d > DETECTION_BOUND)
    {
        row.problems.push(format!(
            "the worker was counted lost after {:?} (bound {DETECTION_BOUND:?})",
            row.detected
        ));
    }
    row.recovery = last_failure.map_or(Duration::ZERO, |t| t.saturating_sub(repaired));
    if row.recovery > RECOVERY_BOUND {
        row.problems.push(format!(
            "a request failed {:.1} s after the repair",
            row.recovery.as_secs_f64()
        ));
    }
    // Every shard has every worker again (the load has run `load - repaired` since the
    // repair: at least SHORT_AFTER).
    let since = start.elapsed().saturating_sub(repaired);
    let wait_until = Instant::now() + RECOVERY_BOUND.saturating_sub(since);
    row.healthy = loop {
        if all_workers_live(&cluster).await {
            break true;
        }
        if Instant::now() >= wait_until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !row.healthy {
        row.problems
            .push("a shard does not count 3 live workers".into());
    }

    // The ledger, once it holds every result (or LEDGER_SETTLE passed).
    let store_url = cluster.store_url();
    let settle = Instant::now();
    let ledger = loop {
        let ledger = ledger_of(&store_url, &tenant).await;
        if let Some(ledger) = &ledger {
            if results.iter().all(|id| ledger.contains_key(id)) {
                // A moment more for rows of answers that were not results.
                tokio::time::sleep(Duration::from_secs(1)).await;
                break ledger_of(&store_url, &tenant).await.unwrap_or_default();
            }
        }
        if settle.elapsed() >= LEDGER_SETTLE {
            break ledger.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    row.lost += results.iter().filter(|id| !ledger.contains_key(id)).count();
    let twice = ledger.values().filter(|&&rows| rows > 1).count();
    let unmatched = ledger
        .keys()
        .filter(|id| !answered_ids.contains(id))
        .count();
    row.billed_twice = twice + unmatched.saturating_sub(resets);
    if row.lost > 0 {
        row.problems.push(format!("{} lost", row.lost));
    }
    if row.billed_twice > 0 {
        row.problems.push(format!(
            "{} billed twice ({twice} invocations with two rows, {unmatched} rows matching no answer, {resets} resets)",
            row.billed_twice
        ));
    }
    for (role, bound) in RSS_BOUND_MB {
        let peak = row.rss_mb.get(role).copied().unwrap_or(0);
        if peak > bound {
            row.problems
                .push(format!("a {role}'s RSS reached {peak} MiB (bound {bound})"));
        }
    }
    row
}

fn print_table(rows: &[(Fault, Row)]) {
    eprintln!(
        "\n{:<16} {:>8} {:>8} {:>7}  {:<34} {:>4} {:>12} {:>9} {:>9}  {:<18} result",
        "fault",
        "requests",
        "answered",
        "results",
        "errors by kind",
        "lost",
        "billed twice",
        "lost seen",
        "recovery",
        "peak RSS MiB g/s/w",
    );
    for (fault, row) in rows {
        let errors = if row.errors.is_empty() {
            "-".to_string()
        } else {
            row.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rss = ["gateway", "shard", "worker"]
            .map(|r| row.rss_mb.get(r).copied().unwrap_or(0).to_string())
            .join("/");
        let result = if row.passed() {
            "passed".to_string()
        } else {
            format!("FAILED: {}", row.problems.join("; "))
        };
        eprintln!(
            "{:<16} {:>8} {:>8} {:>7}  {:<34} {:>4} {:>12} {:>9} {:>8.1}s  {:<18} {result}",
            fault.name(),
            row.requests,
            row.answered,
            row.results,
            errors,
            row.lost,
            row.billed_twice,
            row.detected
                .map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64())),
            row.recovery.as_secs_f64(),
            rss,
        );
    }
    let passed = rows.iter().filter(|(_, r)| r.passed()).count();
    eprintln!("{passed} passed, {} failed", rows.len() - passed);
}

#[test]
fn chaos_under_load_across_hosts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(cluster) = Cluster::up(NAME, SUBNET, dir.path()) else {
        return;
    };
    let cluster = Arc::new(cluster);
    let admin = cluster.admin_key();
    let seconds: Option<u64> = std::env::var("TURNPIKE_CHAOS_SECONDS").ok().map(|s| {
        s.parse()
            .expect("TURNPIKE_CHAOS_SECONDS is a number of seconds")
    });
    let chosen: Vec<Fault> = match std::env::var("TURNPIKE_CHAOS_FAULTS") {
        Ok(names) => names
            .split(',')
            .map(|name| {
                *Fault::ALL
                    .iter()
                    .find(|f| f.name() == name.trim())
                    .unwrap_or_else(|| {
                        panic!(
                            "no fault {name:?}; faults: {:?}",
                            Fault::ALL.map(Fault::name)
                        )
                    })
            })
            .collect(),
        Err(_) => Fault::ALL.to_vec(),
    };
    enter_namespace(&format!("{NAME}-client"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for (n, fault) in chosen.into_iter().enumerate() {
            let (at, load) = match seconds {
                Some(s) => (Duration::from_secs(s) / 3, Duration::from_secs(s)),
                None => (SHORT_AT, SHORT_AT + fault.outage() + SHORT_AFTER),
            };
            eprintln!(
                "{}: {:.0} s of load, the fault at {:.0} s",
                fault.name(),
                load.as_secs_f64(),
                at.as_secs_f64()
            );
            let row = run_fault(cluster.clone(), &admin, n + 1, fault, at, load).await;
            rows.push((fault, row));
        }
        rows
    });
    print_table(&rows);
    let failed: Vec<_> = rows
        .iter()
        .filter(|(_, r)| !r.passed())
        .map(|(f, r)| format!("{}: {}", f.name(), r.problems.join("; ")))
        .collect();
    assert!(failed.is_empty(), "faults failed: {failed:#?}");
}
