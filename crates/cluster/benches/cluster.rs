//! Control-plane figures through a real `turnpike up` cluster on this machine (gateway, 4
//! shards, one worker with a slot per core, all on loopback): `cargo bench -p turnpike-cluster
//! --bench cluster` (after `scripts/build-examples.sh`).
//!
//! 1. `hello` throughput and latency through the gateway (HTTP/1.1 keep-alive, 16 concurrent
//!    clients, closed loop) of `turnpike up` as shipped (its roles calling each other in
//!    process) and of `turnpike up --loopback-rpc` (the same roles over loopback gRPC, as
//!    separate processes on one machine would be), against `wasmtime serve` running the same component on this
//!    machine with the same load generator (issue 4's benchmark 1: goal >= 1.0x throughput,
//!    platform overhead p99 < 1 ms), and against the component on an in-process worker with
//!    the same concurrency (what the platform's path - HTTP, gateway, shard, worker RPCs,
//!    placement - costs over the runtime itself). `wasmtime` is taken from `$WASMTIME`, else
//!    `.tools/wasmtime/bin/wasmtime` (`scripts/install-wasmtime.sh`), else `PATH`; without it
//!    that comparison is skipped with a note.
//! 2. Priority enforcement: Poisson arrivals of 10 ms `spin`s at 2x the cluster's CPU
//!    capacity for 3 s, classes drawn uniformly; per-class p50/p99 slowdown (latency over the
//!    spin's own 10 ms).
//!
//! `HELLO_ONLY=1` runs only the first (for profiling). `TLS=1` gives the process the
//! certificates `turnpike up` makes (`turnpike_wire::tls::ensure_up`), so the loopback gRPC
//! between roles is mutual TLS, as between role processes run with `--tls-dir`: run once
//! with and once without it to price TLS on the distributed path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The allocator the `turnpike` binary ships (its roles run in this process here).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::*;
use turnpike_cluster::up::{self, UpConfig};
use turnpike_policy::ClassId;
use turnpike_worker::{InvokeOptions, Request, Runtime, RuntimeConfig, Worker, WorkerConfig};

const CLIENTS: usize = 16;

/// `hello` through the gateway at `gateway`: throughput and latencies, after a warm-up.
async fn hello_through(gateway: SocketAddr) -> (f64, Vec<Duration>) {
    let client = http_client();
    let url = format!("http://{gateway}/hello");
    // Warm up connections and caches.
    for _ in 0..200 {
        assert_eq!(get(&client, &url).await.0, 200);
    }
    closed_loop(CLIENTS, 500, move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            assert_eq!(get(&client, &url).await.0, 200);
        }
    })
    .await
}

/// Prints the hello figures: through `turnpike up` (its roles calling each other in process,
/// as shipped), through `turnpike up --loopback-rpc` (`loopback`: the same roles over loopback
/// gRPC, as separate processes would be), and the baselines.
async fn hello_figures(
    (platform_rate, platform): (f64, Vec<Duration>),
    (loopback_rate, loopback): (f64, Vec<Duration>),
    dir: &std::path::Path,
    functions: &std::path::Path,
) {
    let client = http_client();

    // Baseline: the same component on an in-process worker with as many slots as the
    // cluster has in total, same concurrency.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let runtime =
        Arc::new(Runtime::new(RuntimeConfig::new(dir.join("baseline"))).expect("runtime"));
    let worker = Arc::new(
        Worker::new(
            runtime.clone(),
            WorkerConfig {
                cores,
                ..WorkerConfig::default()
            },
        )
        .expect("worker"),
    );
    let hello = runtime
        .load(&std::fs::read(functions.join("hello.wasm")).expect("hello.wasm"))
        .expect("hello loads");
    let (direct_rate, direct) = closed_loop(CLIENTS, 500, move || {
        let (worker, hello) = (worker.clone(), hello.clone());
        async move {
            let o = worker
                .invoke(&hello, Request::get("/"), InvokeOptions::class(ClassId(3)))
                .await;
            assert!(o.result.is_ok());
        }
    })
    .await;
    match wasmtime_serve(functions).await {
        Some((mut server, addr)) => {
            let url = format!("http://{addr}/");
            for _ in 0..200 {
                assert_eq!(get(&client, &url).await.0, 200);
            }
            let (rate, lat) = {
                let client = client.clone();
                closed_loop(CLIENTS, 500, move || {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        assert_eq!(get(&client, &url).await.0, 200);
                    }
                })
                .await
            };
            let _ = server.kill();
            let _ = server.wait();
            println!(
                "hello through wasmtime serve {CLIENTS} clients: {rate:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
                us(percentile(&lat, 0.5)),
                us(percentile(&lat, 0.99))
            );
            for (label, r, l) in [
                ("turnpike up", platform_rate, &platform),
                ("turnpike up --loopback-rpc", loopback_rate, &loopback),
            ] {
                println!(
                    "  {label} / wasmtime serve: throughput {:.2}x (goal >= 1.0), p50 {:+.0} us, p99 {:+.0} us (goal p99 overhead < 1000 us)",
                    r / rate,
                    signed_us(percentile(l, 0.5), percentile(&lat, 0.5)),
                    signed_us(percentile(l, 0.99), percentile(&lat, 0.99)),
                );
            }
        }
        None => println!(
            "wasmtime serve: no `wasmtime` binary (set WASMTIME, or run scripts/install-wasmtime.sh); comparison skipped"
        ),
    }
    println!(
        "hello through turnpike up   {CLIENTS} clients: {platform_rate:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
        us(percentile(&platform, 0.5)),
        us(percentile(&platform, 0.99))
    );
    println!(
        "hello through turnpike up --loopback-rpc {CLIENTS} clients: {loopback_rate:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
        us(percentile(&loopback, 0.5)),
        us(percentile(&loopback, 0.99))
    );
    println!(
        "hello on an in-process worker {CLIENTS} in flight: {direct_rate:>6.0} inv/s  p50 {:>7.0} us  p99 {:>7.0} us",
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99))
    );
    println!(
        "  platform/in-process: throughput {:.2}, p50 +{:.0} us, p99 +{:.0} us",
        platform_rate / direct_rate,
        us(percentile(&platform, 0.5).saturating_sub(percentile(&direct, 0.5))),
        us(percentile(&platform, 0.99).saturating_sub(percentile(&direct, 0.99)))
    );
}

/// Starts `wasmtime serve` on `hello.wasm` on a loopback port chosen by the OS; the process
/// and the address it printed.
async fn wasmtime_serve(functions: &std::path::Path) -> Option<(std::process::Child, String)> {
    use std::io::BufRead;
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/wasmtime/bin/wasmtime");
    let binary = std::env::var_os("WASMTIME")
        .map(std::path::PathBuf::from)
        .or_else(|| local.exists().then_some(local))
        .unwrap_or_else(|| "wasmtime".into());
    let mut child = std::process::Command::new(&binary)
        .args(["serve", "-Scli", "--addr", "127.0.0.1:0"])
        .arg(functions.join("hello.wasm"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let stderr = child.stderr.take()?;
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let line = lines.next()?.ok()?;
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(line)
    })
    .await
    .ok()
    .flatten();
    let addr = line
        .as_deref()
        .and_then(|l| l.strip_prefix("Serving HTTP on http://"));
    match addr {
        Some(addr) => Some((child, addr.trim_end_matches('/').to_string())),
        None => {
            eprintln!("wasmtime serve did not start as expected: {line:?}");
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

async fn priority_figures(gateway: SocketAddr, key: &str, cores: usize, spin_hash: String) {
    const SPIN_MS: u64 = 10;
    // 2x capacity: each core serves 1000/SPIN_MS spins per second.
    let rate = 2.0 * cores as f64 * 1000.0 / SPIN_MS as f64;
    let url = format!("http://{gateway}/v1/invoke/{spin_hash}?ms={SPIN_MS}");
    let by_class = poisson_by_class(&url, key, rate, Duration::from_secs(3)).await;
    println!(
        "priority at 2x CPU capacity ({rate:.0} spins/s of {SPIN_MS} ms for 3 s, classes uniform):"
    );
    print_slowdowns(&by_class, SPIN_MS);
}

/// `a - b` in microseconds, negative when `a` is shorter.
fn signed_us(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir =
            std::env::temp_dir().join(format!("turnpike-bench-cluster-{}", std::process::id()));
        let config = UpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.clone());
        if std::env::var_os("TLS").is_some() {
            let tls = turnpike_wire::tls::ensure_up(&dir.join("tls")).expect("certificates");
            turnpike_wire::tls::set_process_tls(tls).expect("set once");
            println!("internal RPC: mutual TLS");
        }
        let loopback_config = UpConfig {
            loopback_rpc: true,
            ..UpConfig::new(config.listen, dir.join("loopback"))
        };
        let loopback = up::start(&loopback_config).await.expect("cluster starts");
        let through_loopback = hello_through(loopback.gateway).await;
        loopback.stop().await;
        let cluster = up::start(&config).await.expect("cluster starts");
        let through_up = hello_through(cluster.gateway).await;
        hello_figures(through_up, through_loopback, &dir, &config.functions_dir).await;
        if std::env::var_os("HELLO_ONLY").is_none() {
            let spin = cluster
                .demo_functions
                .iter()
                .find(|(name, _)| name == "spin")
                .map(|(_, hash)| hash.clone())
                .expect("the demo app has spin");
            let cores = config.workers * config.cores_per_worker as usize;
            priority_figures(
                cluster.gateway,
                cluster.admin_key.as_deref().expect("a fresh store"),
                cores,
                spin,
            )
            .await;
        }
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
