//! `turnpike up`: a whole cluster in this process, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use turnpike_cluster::roles::Bounds;
use turnpike_cluster::up::{self, UpConfig};
use turnpike_node::emulated::EmulatedConfig;
use turnpike_policy::ClassSet;

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    config: crate::config_file::ConfigFileArg,
    #[command(flatten)]
    internal: crate::certs::InternalArgs,
    /// Where the gateway listens for HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The embedded store (tenants, apps, the usage ledger), compile cache and swap files.
    #[arg(long, default_value = "./.turnpike")]
    data_dir: PathBuf,
    /// The store, if not the embedded SQLite file in `--data-dir`: `postgres://USER@HOST/DB`
    /// (or `sqlite://PATH`).
    #[arg(long)]
    store: Option<String>,
    /// Apps answer at `APP.<domain>` (e.g. `curl shop.localhost:8080/`).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Scheduler shards.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Workers (default: one, with a slot per core of this machine; more workers split the
    /// cores between them).
    #[arg(long)]
    workers: Option<usize>,
    /// Memory of each worker for guests, MB (default: 1024 per slot).
    #[arg(long)]
    worker_memory_mb: Option<u64>,
    /// Directory with the demo app's components (hello.wasm, spin.wasm, chain.wasm).
    #[arg(long)]
    functions: Option<PathBuf>,
    /// Largest request and response body through the gateway, bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Run N emulated workers instead of real ones: no wasm, each invocation's runtime and
    /// memory taken from its query (`?ms=N&mb=M`), for cluster-scale runs on one machine.
    #[arg(long, value_name = "N")]
    emulate: Option<usize>,
    /// Scheduling policy of emulated workers and the shards: `turnpike`, or the `hermod`
    /// baseline (processor sharing, one FIFO queue, no idle list).
    #[arg(long, value_enum, default_value = "turnpike", requires = "emulate")]
    policy: crate::PolicyArg,
    /// The roles call each other over loopback gRPC, as separate processes on this machine
    /// would, instead of directly (every role still listens for RPCs from other processes).
    #[arg(long)]
    loopback_rpc: bool,
    /// Invocations between admission and response at the gateway; more get 503 with
    /// `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().gateway_in_flight_invocations_max)]
    gateway_in_flight_invocations_max: u64,
    /// Usage rows waiting for the store at the gateway; while this many wait, new
    /// invocations get 503 with `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().ledger_queue_rows_max)]
    ledger_queue_rows_max: u64,
    /// HTTP connections open at once at the gateway; one more is answered 503 and closed.
    #[arg(long, default_value_t = Bounds::default().gateway_connections_max)]
    gateway_connections_max: usize,
    /// Usage rows kept on disk while the store is down; at this many, new invocations get 503.
    #[arg(long, default_value_t = Bounds::default().ledger_outbox_rows_max)]
    ledger_outbox_rows_max: u64,
    /// A tenant's asynchronous invocations queued or running (kept in the store); one more
    /// submission gets 429.
    #[arg(long, default_value_t = Bounds::default().async_queue_invocations_max)]
    async_queue_invocations_max: u64,
    /// Asynchronous attempts the gateway runs at once (claimed from the store's queue).
    #[arg(long, default_value_t = Bounds::default().gateway_async_runs_max)]
    gateway_async_runs_max: usize,
    /// Invocations waiting for placement at each shard; more get 503 with `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().shard_queue_invocations_max)]
    shard_queue_invocations_max: usize,
    /// Invocations each worker accepts at once; more get 503 with `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().worker_in_flight_invocations_max)]
    worker_in_flight_invocations_max: u64,
}

pub fn main(args: UpArgs) -> ExitCode {
    if let Err(e) = args.internal.apply_up(&args.data_dir) {
        return crate::fail(e);
    }
    crate::block_on(run(args))
}

async fn run(args: UpArgs) -> ExitCode {
    let args_tls_dir = args.internal.tls_dir.clone();
    let mut config = UpConfig::new(args.listen, args.data_dir);
    config.shards = args.shards.max(1);
    config.store_url = args.store;
    config.domain = args.domain;
    if let Some(workers) = args.workers {
        let cores = config.cores_per_worker * config.workers as u32;
        config.workers = workers.max(1);
        config.cores_per_worker = (cores / config.workers as u32).max(1);
        config.memory_mb_per_worker = 1024 * u64::from(config.cores_per_worker);
    }
    if let Some(mb) = args.worker_memory_mb {
        config.memory_mb_per_worker = mb;
    }
    config.max_request_bytes = args.max_body_bytes;
    config.loopback_rpc = args.loopback_rpc;
    config.bounds = Bounds {
        gateway_in_flight_invocations_max: args.gateway_in_flight_invocations_max,
        ledger_queue_rows_max: args.ledger_queue_rows_max,
        shard_queue_invocations_max: args.shard_queue_invocations_max,
        worker_in_flight_invocations_max: args.worker_in_flight_invocations_max,
        gateway_connections_max: args.gateway_connections_max,
        ledger_outbox_rows_max: args.ledger_outbox_rows_max,
        async_queue_invocations_max: args.async_queue_invocations_max,
        gateway_async_runs_max: args.gateway_async_runs_max,
    };
    config.max_response_bytes = args.max_body_bytes;
    if let Some(dir) = args.functions {
        config.functions_dir = dir;
    }
    if let Some(n) = args.emulate {
        config.workers = n.max(1);
        let mut emulated = EmulatedConfig::new(ClassSet::default_four());
        emulated.memory_mb = args.worker_memory_mb.unwrap_or(1024);
        emulated.policy = args.policy.into();
        config.emulated = Some(emulated);
    }
    let cluster = match up::start(&config).await {
        Ok(cluster) => cluster,
        Err(e) => return crate::fail(e),
    };
    let url = format!("http://{}", cluster.gateway);
    println!("Turnpike is up: gateway {url}");
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "  {} on {}; {} on {}; data in {}",
        plural(cluster.shards.len(), "shard", "shards"),
        list(&cluster.shards),
        plural(cluster.workers.len(), "worker", "workers"),
        list(&cluster.workers),
        config.data_dir.display()
    );
    if let Some(key) = &cluster.admin_key {
        println!("  admin key: {key}");
        println!("    (shown once: keep it. `TURNPIKE_KEY=<key> turnpike tenants create NAME` makes a tenant;");
        println!("     a tenant deploys with `turnpike deploy` - see docs/api.md)");
        // The key travels in the fragment, which the browser keeps to itself.
        println!("  dashboard: {url}/dashboard#key={key}");
    } else {
        println!("  dashboard: {url}/dashboard (it asks for an API key)");
    }
    for (role, addr) in &cluster.metrics {
        println!("  metrics of {role}: http://{addr}/metrics");
    }
    match (&args_tls_dir, turnpike_wire::tls::process_tls()) {
        (None, Some(_)) => println!(
            "  internal RPC: mutual TLS; a separate worker joins with --tls-dir {}",
            config.data_dir.join("tls").display()
        ),
        (Some(dir), Some(_)) => println!("  internal RPC: mutual TLS with {}", dir.display()),
        (_, None) => println!("  internal RPC: plain text (--insecure-internal)"),
    }
    if config.emulated.is_some() {
        println!("Workers are emulated: `?ms=N&mb=M` on any route sets an invocation's runtime and memory.");
    }
    println!("Try the demo app (price classes at work):");
    println!("  curl {url}/hello                      # top class");
    println!("  curl '{url}/work/critical?ms=100'     # 100 ms of CPU, top class");
    println!("  curl '{url}/work/batch?ms=100'        # 100 ms of CPU, bottom class");
    println!("  curl '{url}/chain?to=/hello'          # a batch function calls hello, which runs at critical");
    println!("  curl -N '{url}/stream?chunks=20&bytes=1&every_ms=100'  # streamed as written");
    println!("  curl {url}/v1/classes                 # the published prices");
    println!("Ctrl-C stops it.");
    wait_for_signal().await;
    println!("stopping");
    cluster.stop().await;
    ExitCode::SUCCESS
}

fn list(addrs: &[SocketAddr]) -> String {
    if let [first, .., last] = addrs {
        if addrs.len() > 8 {
            return format!("{first} .. {last}");
        }
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
