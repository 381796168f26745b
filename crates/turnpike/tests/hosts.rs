//! Turnpike across hosts, end to end: `scripts/netns-cluster.sh` builds a cluster where every
//! host is its own network namespace (PostgreSQL, 2 gateways, 2 shards, 3 workers, the internal
//! plane on mutual TLS), and this test, from the cluster's client host, creates a tenant and
//! deploys through one gateway and invokes through the other, follows a call chain across
//! hosts, holds the top class's tail under a mix of classes at twice the cluster's CPU, and
//! reads the same usage through either gateway, equal to what both served.
//!
//! It needs root (network namespaces). Without root or iproute2 it is skipped with a note,
//! unless `TURNPIKE_REQUIRE_NETNS=1` (set by `scripts/test.sh`, so CI runs it), which makes
//! a missing prerequisite a failure.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{status_of, BIN};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/netns-cluster.sh"
);
const FUNCTIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/functions/dist");

/// This test's cluster: its own namespace prefix and subnet, so that a cluster made by hand
/// (`tpc`, 10.213.7) can run beside it.
const NAME: &str = "tpt";
const SUBNET: &str = "10.213.9";

/// The cluster, taken down (processes, namespaces, state) on drop, also when the test fails.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn script(&self) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(SCRIPT)
            .env("TURNPIKE_NETNS_NAME", NAME)
            .env("TURNPIKE_NETNS_SUBNET", SUBNET)
            .env("TURNPIKE_NETNS_DIR", &self.dir)
            .env("TURNPIKE_BIN", BIN);
        command
    }

    fn gateway(&self, n: u8) -> SocketAddr {
        format!("{SUBNET}.{}:8080", 10 + n)
            .parse()
            .expect("an address")
    }

    fn admin_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-key"))
            .expect("the admin key the first gateway printed")
            .trim()
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script().arg("down").status();
    }
}

/// Whether this machine can make network namespaces (root and iproute2); if not, a note,
/// or a failure when CI asked for them (`TURNPIKE_REQUIRE_NETNS`).
fn namespaces_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && ip) {
        let why = if root { "no iproute2" } else { "not root" };
        assert!(
            std::env::var_os("TURNPIKE_REQUIRE_NETNS").is_none(),
            "TURNPIKE_REQUIRE_NETNS is set, but {why}: cannot make network namespaces"
        );
        eprintln!("skipped: {why}, so no network namespaces (TURNPIKE_REQUIRE_NETNS=1 makes this a failure)");
    }
    root && ip
}

/// Namespaces named `NAME-...` in `ip netns list`.
fn namespaces_named(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{name}-")))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names `dir` (the roles read their configs from it).
fn processes_of(dir: &Path) -> String {
    let out = Command::new("pgrep")
        .args(["-af", &dir.display().to_string()])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster, up; `None` (with a note) where this machine cannot make namespaces and CI
/// did not ask for them.
fn cluster(dir: &Path) -> Option<Cluster> {
    if !namespaces_available() {
        return None;
    }
    let cluster = Cluster {
        dir: dir.join("cluster"),
    };
    // A cluster left by a killed run of this test.
    let _ = cluster.script().arg("down").status();
    let up = cluster.script().arg("up").output().expect("bash runs");
    assert!(
        up.status.success(),
        "netns-cluster.sh up failed:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&up.stdout));
    Some(cluster)
}

/// Moves this thread into the network namespace `ns` (`ip netns` names it in /run/netns).
/// Threads and processes it starts from now on are there too.
fn enter_namespace(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

/// An HTTP/1.0 request (so the answer's body is not chunked) on its own connection: the
/// status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut text = format!("{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        text.push_str("Host: t\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status_of(&answer), body)
}

/// `turnpike ARGS` against `gateway` with `key`: its stdout, or a failure naming its stderr.
fn turnpike(gateway: SocketAddr, key: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("TURNPIKE_GATEWAY", format!("http://{gateway}"))
        .env("TURNPIKE_KEY", key)
        .output()
        .expect("turnpike runs");
    assert!(
        out.status.success(),
        "turnpike {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CLASSES: [&str; 4] = ["critical", "interactive", "standard", "batch"];

/// The app: hello at the top class, a chain, and spin at every class.
fn manifest(dir: &Path) -> PathBuf {
    let mut text = format!(
        "app = \"shop\"\n[functions]\nhome = \"{FUNCTIONS}/hello.wasm\"\n\
         chain = \"{FUNCTIONS}/chain.wasm\"\nspin = \"{FUNCTIONS}/spin.wasm\"\n\
         [[routes]]\npath = \"/\"\nfunction = \"home\"\nclass = \"critical\"\n\
         [[routes]]\npath = \"/chain\"\nfunction = \"chain\"\nclass = \"batch\"\n"
    );
    for class in CLASSES {
        text.push_str(&format!(
            "[[routes]]\npath = \"/spin/{class}\"\nfunction = \"spin\"\nclass = \"{class}\"\n"
        ));
    }
    let path = dir.join("turnpike.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// The `p`-quantile (nearest rank) of `values`, sorted here.
fn quantile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The `total.invocations` of `GET /v1/usage` through `gateway`.
async fn invocations_billed(gateway: SocketAddr, key: &str) -> u64 {
    let bearer = format!("Bearer {key}");
    let (status, body) = request(gateway, "GET", "/v1/usage", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).expect("usage is JSON");
    usage["total"]["invocations"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total.invocations in {body}"))
}

/// Whether every worker's `/metrics` counts an invocation run.
async fn every_worker_ran_one() -> bool {
    for n in 1..=3 {
        let metrics: SocketAddr = format!("{SUBNET}.{}:9100", 30 + n)
            .parse()
            .expect("an address");
        let (status, body) = request(metrics, "GET", "/metrics", &[]).await;
        assert_eq!(status, 200, "{body}");
        let ran: f64 = body
            .lines()
            .filter(|l| l.starts_with("turnpike_worker_invocation_seconds_count"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum();
        if ran < 1.0 {
            return false;
        }
    }
    true
}

/// Spin's runtime in the load, and the load: twice the cluster's CPU (3 workers of 1 core)
/// for `LOAD_SECONDS`, a quarter of it at each class, so the top class alone is half the
/// cluster's CPU.
const RUN_MS: u64 = 100;
const LOAD_PER_SECOND: u64 = 2 * 3 * 1000 / RUN_MS;
const LOAD_SECONDS: u64 = 10;
/// Load before the measured seconds: from idle to overloaded (a cold cluster's first few
/// hundred milliseconds of overload are slower for the top class; docs/failures.md).
const RAMP_SECONDS: u64 = 1;

#[test]
fn across_hosts_deploy_chain_priorities_and_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(cluster) = cluster(dir.path()) else {
        return;
    };
    let manifest = manifest(dir.path());
    let (gw1, gw2) = (cluster.gateway(1), cluster.gateway(2));
    let admin = cluster.admin_key();
    // From here on this thread, its runtime and the commands it runs are on the client host.
    enter_namespace(&format!("{NAME}-client"));

    // A tenant made and an app deployed through the first gateway...
    let created = turnpike(gw1, &admin, &["tenants", "create", "acme"]);
    let acme = created
        .split_whitespace()
        .find(|w| w.starts_with("tp_"))
        .unwrap_or_else(|| panic!("no key in {created:?}"))
        .to_string();
    let manifest = manifest.display().to_string();
    turnpike(gw1, &acme, &["deploy", "--manifest", &manifest]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let shop = [("Host", "shop.localhost")];
        // ...answers through the second, once it has seen the deploy (it asks the store
        // every second).
        let started = Instant::now();
        let mut served = 0u64;
        loop {
            let (status, body) = request(gw2, "GET", "/", &shop).await;
            if status == 200 {
                assert_eq!(body.trim(), "hello from turnpike");
                served += 1;
                break;
            }
            assert_eq!(status, 404, "{body}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the second gateway still does not serve the app: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A call chain across hosts: chain runs on a worker host, calls the app through a
        // gateway host, which has hello run on a worker host. Through both gateways.
        for gateway in [gw1, gw2] {
            let (status, body) =
                request(gateway, "GET", "/chain?to=/&via=shop.turnpike", &shop).await;
            assert_eq!(status, 200, "{body}");
            assert!(
                body.starts_with("called /: 200, ran at critical\nhello from turnpike"),
                "{body}"
            );
            served += 2;
        }

        // Every worker compiles spin before the load (each compiles a function on its first
        // invocation there): as many at once as the cluster has cores, until every worker has
        // run one.
        let mut rounds = 0;
        while !every_worker_ran_one().await {
            rounds += 1;
            assert!(
                rounds <= 20,
                "a worker still has run nothing after {rounds} rounds"
            );
            let warm: Vec<_> = (0..3)
                .map(|i| {
                    let gateway = if i % 2 == 0 { gw1 } else { gw2 };
                    tokio::spawn(async move {
                        request(gateway, "GET", "/spin/critical?ms=50", &shop).await
                    })
                })
                .collect();
            for task in warm {
                let (status, body) = task.await.expect("a warm-up task");
                assert_eq!(status, 200, "{body}");
                served += 1;
            }
        }

        // A mix of classes at twice the cluster's CPU, through both gateways in turn. The
        // first second is a ramp: served and billed, left out of the slowdowns.
        let ramp = LOAD_PER_SECOND * RAMP_SECONDS;
        let total = ramp + LOAD_PER_SECOND * LOAD_SECONDS;
        let every = Duration::from_secs(1) / LOAD_PER_SECOND as u32;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..total {
            tokio::time::sleep_until(start + every * i as u32).await;
            let class = CLASSES[i as usize % CLASSES.len()];
            let gateway = if i % 2 == 0 { gw1 } else { gw2 };
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let path = format!("/spin/{class}?ms={RUN_MS}");
                let (status, body) = request(gateway, "GET", &path, &shop).await;
                (i, class, status, body, sent.elapsed())
            }));
        }
        let mut slowdowns: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        // The top class's slowest: (slowdown, ms into the load it was sent at).
        let mut slowest: Vec<(f64, u64)> = Vec::new();
        let mut failures = Vec::new();
        for task in tasks {
            let (i, class, status, body, latency) = task.await.expect("a request task");
            if status != 200 {
                failures.push(format!("{class}: {status} {}", body.trim()));
                continue;
            }
            served += 1;
            if i >= ramp {
                let slowdown = latency.as_secs_f64() * 1000.0 / RUN_MS as f64;
                slowdowns.entry(class).or_default().push(slowdown);
                if class == CLASSES[0] {
                    slowest.push((slowdown, i * 1000 / LOAD_PER_SECOND));
                }
            }
        }
        for (class, values) in &mut slowdowns {
            let n = values.len();
            let (p50, p99) = (quantile(values, 0.5), quantile(values, 0.99));
            eprintln!("{class:>11}: {n} answered, slowdown p50 {p50:.2}, p99 {p99:.2}");
        }
        assert!(
            failures.is_empty(),
            "{} of {total} requests failed: {failures:?}",
            failures.len()
        );
        let top = quantile(
            slowdowns.get_mut("critical").expect("critical answers"),
            0.99,
        );
        assert!(
            top <= 1.5,
            "the top class's p99 slowdown is {top:.2} at twice the cluster's CPU (at most 1.5)"
        );

        // The same usage through either gateway: every invocation both served, once.
        let started = Instant::now();
        loop {
            let one = invocations_billed(gw1, &acme).await;
            let two = invocations_billed(gw2, &acme).await;
            if one == served && two == served {
                break;
            }
            assert!(
                one <= served && two <= served,
                "billed more than served: {one} through gw1, {two} through gw2, {served} served"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{one} invocations billed through gw1, {two} through gw2, {served} served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // `down` leaves nothing behind: no namespace, no process.
    let state = cluster.dir.clone();
    drop(cluster);
    assert_eq!(namespaces_named(NAME), Vec::<String>::new());
    assert_eq!(processes_of(&state), "");
}

/// An `up` that fails part way (here: the binary cannot make certificates, after the network
/// is made) takes down what it made and says why.
#[test]
fn a_failed_up_leaves_nothing_behind() {
    if !namespaces_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let name = "tpf";
    let out = Command::new("bash")
        .arg(SCRIPT)
        .arg("up")
        .env("TURNPIKE_NETNS_NAME", name)
        .env("TURNPIKE_NETNS_SUBNET", "10.213.10")
        .env("TURNPIKE_NETNS_DIR", dir.path().join("cluster"))
        .env("TURNPIKE_BIN", "/bin/false")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("taking down what was made"), "{stderr}");
    assert_eq!(namespaces_named(name), Vec::<String>::new());
    assert!(!dir.path().join("cluster").exists());
}
