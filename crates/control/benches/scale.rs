//! The control plane at cluster scale, with emulated workers (no wasm: each invocation's
//! runtime comes from its query): `cargo bench -p turnpike-control --bench scale`.
//!
//! 1. Placements per second of one shard with 1,000 emulated workers: 64 concurrent `Invoke`
//!    RPCs straight to the shard, each a zero-length invocation it must place on a worker and
//!    answer. Baseline in the same run: the rate of a bare unary RPC (`Poll` on the emulated
//!    workers, round robin) at the same concurrency - the floor any RPC-driven placement pays.
//! 2. Invocations per second of the whole path (HTTP to the gateway, 4 shards, 1,000 emulated
//!    workers), 64 keep-alive clients. Goal: >= 20,000/s on 2 cores.
//! 3. Priority enforcement, Turnpike vs the Hermod baseline on the same services: Poisson
//!    arrivals of 20 ms invocations at 2x the CPU of 10 one-core emulated workers for 3 s,
//!    classes uniform; per-class p50/p99 slowdown. Goal: Turnpike's top-class p99 slowdown
//!    <= 1.5 and >= 5x better than Hermod's.
//!
//! `PART=1|2|3` runs one part. Everything runs on this machine's cores: the load generator
//! shares them with the services.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use turnpike_control::emulated::{EmulatedConfig, MachinePolicy};
use turnpike_control::proto;
use turnpike_control::proto::worker_client::WorkerClient;
use turnpike_control::up::{self, Cluster, UpConfig};
use turnpike_policy::ClassSet;

const CONCURRENCY: usize = 64;
const RUN: Duration = Duration::from_secs(3);

async fn emulated_cluster(shards: usize, workers: usize, policy: MachinePolicy) -> Cluster {
    let dir = std::env::temp_dir().join(format!("turnpike-bench-scale-{}", std::process::id()));
    let mut config = UpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
    config.shards = shards;
    config.workers = workers;
    let mut emulated = EmulatedConfig::new(ClassSet::default_four());
    emulated.policy = policy;
    config.emulated = Some(emulated);
    let cluster = up::start(&config).await.expect("cluster starts");
    let live = cluster.shard(0).live_workers();
    assert_eq!(live, workers, "every emulated worker registered");
    cluster
}

/// Runs `one` from `CONCURRENCY` tasks for `RUN`; returns completions per second.
async fn for_a_while<F, Fut>(one: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|c| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while t0.elapsed() < RUN {
                    one(c * 1_000_003 + n).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

async fn shard_placements() {
    let cluster = emulated_cluster(1, 1000, MachinePolicy::Turnpike).await;
    let workers: Vec<WorkerClient<_>> = cluster
        .workers
        .iter()
        .map(|a| {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("endpoint");
            WorkerClient::new(turnpike_control::wire::channel(endpoint))
        })
        .collect();
    let bare = {
        let workers = workers.clone();
        for_a_while(move |i| {
            let mut client = workers[i % workers.len()].clone();
            async move {
                client
                    .poll(proto::PollRequest { class: 0 })
                    .await
                    .expect("poll");
            }
        })
        .await
    };
    let shard = turnpike_control::wire::shard_client(cluster.shards[0]);
    let before = cluster.shard(0).counters();
    let placed = for_a_while(move |i| {
        let mut shard = shard.clone();
        async move {
            let outcome = shard
                .invoke(proto::Invocation {
                    id: i as u64,
                    function: "emulated".into(),
                    class: (i % 4) as u32,
                    method: "GET".into(),
                    path_and_query: "/?ms=0".into(),
                    start_mb: 2,
                    ..proto::Invocation::default()
                })
                .await
                .expect("invoke")
                .into_inner();
            assert!(
                matches!(outcome.ending, Some(proto::outcome::Ending::Response(_))),
                "{outcome:?}"
            );
        }
    })
    .await;
    let after = cluster.shard(0).counters();
    println!(
        "one shard, 1000 emulated workers, {CONCURRENCY} concurrent Invoke RPCs: {placed:>8.0} placements/s (idle list {}, polling {})",
        after.placed_idle_list - before.placed_idle_list,
        after.placed_polling - before.placed_polling
    );
    println!("  bare unary RPC (Poll) at the same concurrency: {bare:>8.0} RPCs/s");
    println!(
        "  placements / bare RPCs: {:.2} (each placement is two RPCs: gateway->shard, shard->worker)",
        placed / bare
    );
    cluster.stop().await;
}

async fn whole_path() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let cluster = emulated_cluster(
        env("SHARDS", 4),
        env("WORKERS", 1000),
        MachinePolicy::Turnpike,
    )
    .await;
    let client = http_client();
    let url = format!("http://{}/hello", cluster.gateway);
    for _ in 0..200 {
        assert_eq!(get(&client, &url).await.0, 200);
    }
    let rate = for_a_while(move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            assert_eq!(get(&client, &url).await.0, 200);
        }
    })
    .await;
    println!(
        "whole path (HTTP, gateway, 4 shards, 1000 emulated workers), {CONCURRENCY} clients: {rate:>8.0} inv/s; goal 20000: {:.2}x",
        rate / 20_000.0
    );
    cluster.stop().await;
}

/// Per-class (p50, p99) slowdowns of one policy at 2x capacity.
async fn priority_run(policy: MachinePolicy) -> Vec<(f64, f64)> {
    const WORKERS: usize = 10;
    const RUN_MS: u64 = 20;
    let cluster = emulated_cluster(4, WORKERS, policy).await;
    let rate = 2.0 * WORKERS as f64 * 1000.0 / RUN_MS as f64;
    let url = format!("http://{}/v1/invoke/emulated?ms={RUN_MS}", cluster.gateway);
    let by_class = poisson_by_class(&url, rate, RUN).await;
    cluster.stop().await;
    println!(
        "{policy:?}: {rate:.0} invocations/s of {RUN_MS} ms on {WORKERS} one-core emulated workers (2x capacity) for {RUN:?}, classes uniform:"
    );
    print_slowdowns(&by_class, RUN_MS)
}

async fn priorities() {
    let turnpike = priority_run(MachinePolicy::Turnpike).await;
    let hermod = priority_run(MachinePolicy::Hermod).await;
    let top = |v: &[(f64, f64)]| v.last().map_or(f64::NAN, |t| t.1);
    println!(
        "  top class p99 slowdown: Turnpike {:.2} vs Hermod {:.2}: {:.1}x better (goal <= 1.5 and >= 5x)",
        top(&turnpike),
        top(&hermod),
        top(&hermod) / top(&turnpike)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let part = std::env::var("PART").ok();
    let run = |p: &str| part.as_deref().is_none_or(|x| x == p);
    runtime.block_on(async {
        if run("1") {
            shard_placements().await;
        }
        if run("2") {
            whole_path().await;
        }
        if run("3") {
            priorities().await;
        }
    });
}
