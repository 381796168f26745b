//! `turnpike worker`: one worker node, registering with the given shards, until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use turnpike_node::emulated::{EmulatedConfig, EmulatedFleet};
use turnpike_node::node::{self, NodeConfig};
use turnpike_policy::ClassSet;
use turnpike_wire::directory::Directory;
use turnpike_worker::SlotThreads;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: crate::config_file::ConfigFileArg,
    #[command(flatten)]
    internal: crate::certs::InternalArgs,
    /// Where the worker serves its RPCs (port 0: one chosen by the OS, printed). On several
    /// machines, `0.0.0.0:PORT`: every interface.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where shards reach it, `HOST` or `HOST:PORT` (printed; without a port, the one it
    /// listens on). Default: the listen address, or, when that is `0.0.0.0` or `::`, this
    /// machine's address on its route to the first shard.
    #[arg(long, value_parser = parse_advertise, value_name = "HOST[:PORT]")]
    advertise: Option<SocketAddr>,
    /// Where it serves Prometheus `/metrics` (port 0: chosen by the OS, printed); a wasm
    /// worker only.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// A shard to register with (repeat for each shard).
    #[arg(long = "shard", required = true)]
    shards: Vec<SocketAddr>,
    /// Core slots.
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// Memory for guests, MB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Compile cache and swap files.
    #[arg(long, default_value = "./.turnpike")]
    data_dir: PathBuf,
    /// A component to load at start (repeatable).
    #[arg(long = "load")]
    load: Vec<PathBuf>,
    /// The gateway that guests' calls to other functions (`http://turnpike/...`,
    /// `http://APP.turnpike/...`) go to; without it such calls are denied. Each call carries
    /// its invocation's token, signed by the gateway: the worker holds no secret.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// The store functions deployed through the API are fetched from on first use
    /// (`sqlite://PATH` - the gateway's file on this machine - or `postgres://...`); without
    /// it, only `--load`ed components run.
    #[arg(long)]
    store: Option<String>,
    /// Run N emulated workers in this process instead (no wasm; each invocation's runtime
    /// and memory from its query, `?ms=N&mb=M`), each on its own loopback port, with
    /// `--cores` and `--memory-mb` each; `--listen`'s port is ignored.
    #[arg(long, value_name = "N", conflicts_with_all = ["load", "gateway"])]
    emulate: Option<usize>,
    /// Scheduling policy of emulated workers: `turnpike`, or the `hermod` baseline
    /// (processor sharing).
    #[arg(long, value_enum, default_value = "turnpike", requires = "emulate")]
    policy: crate::PolicyArg,
    /// Invocations accepted at once; more are refused (the gateway answers 503 with
    /// `Retry-After`).
    #[arg(long, default_value_t = turnpike_node::node::WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT)]
    worker_in_flight_invocations_max: u64,
}

/// `--advertise`: `IP:PORT`, or an IP alone (port 0: the one the worker listens on).
fn parse_advertise(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 0))
        })
        .map_err(|_| format!("{text:?} is neither an IP address nor IP:PORT"))
}

pub fn main(args: WorkerArgs) -> ExitCode {
    if let Err(e) = args.internal.apply(turnpike_wire::tls::Role::Worker) {
        return crate::fail(e);
    }
    if let Some(n) = args.emulate {
        return crate::block_on(emulate(n, args));
    }
    // The guests run on this process's threads (`SlotThreads::Runtime`), `--cores` of them:
    // an invocation goes from its link to its slot without changing threads.
    crate::block_on_with(
        turnpike_worker::slot_runtime(args.cores.max(1)),
        async move {
            let mut components = Vec::new();
            for path in &args.load {
                match std::fs::read(path) {
                    Ok(bytes) => components.push((path.display().to_string(), bytes)),
                    Err(e) => return crate::fail(format!("cannot read {}: {e}", path.display())),
                }
            }
            let store = match &args.store {
                Some(url) => match turnpike_store::Store::open(url).await {
                    Ok(store) => Some(store),
                    Err(e) => return crate::fail(e),
                },
                None => None,
            };
            let config = NodeConfig {
                store,
                listen: args.listen,
                advertise: args.advertise,
                shards: args.shards,
                data_dir: args.data_dir,
                cores: args.cores.max(1),
                memory_mb: args.memory_mb,
                classes: ClassSet::default_four(),
                gateway: args.gateway,
                // Distinct per process, so workers started together choose shards differently.
                seed: u64::from(std::process::id()),
                directory: Directory::rpc_only(),
                in_flight_invocations_max: args.worker_in_flight_invocations_max,
                slot_threads: SlotThreads::Runtime(tokio::runtime::Handle::current()),
            };
            let node = match node::start_node(config, &components, std::future::pending()).await {
                Ok(node) => node,
                Err(e) => return crate::fail(e),
            };
            let rendered = node.service.clone();
            let render = std::sync::Arc::new(move || rendered.metrics());
            let metrics_addr = match crate::roles::serve_metrics(args.metrics, render).await {
                Ok(bound) => bound,
                Err(e) => return crate::fail(e),
            };
            println!("worker listening on {}", node.address);
            println!("metrics: http://{metrics_addr}/metrics");
            for hash in &node.loaded {
                println!("loaded {hash}");
            }
            crate::up::wait_for_signal().await;
            node.server.abort();
            node.dispatcher.abort();
            ExitCode::SUCCESS
        },
    )
}

async fn emulate(n: usize, args: WorkerArgs) -> ExitCode {
    let mut config = EmulatedConfig::new(ClassSet::default_four());
    config.cores = args.cores.max(1);
    config.memory_mb = args.memory_mb;
    config.policy = args.policy.into();
    config.in_flight_invocations_max = args.worker_in_flight_invocations_max;
    let fleet = match EmulatedFleet::start(
        n.max(1),
        &config,
        &args.shards,
        u64::from(std::process::id()),
        &Directory::rpc_only(),
    )
    .await
    {
        Ok(fleet) => fleet,
        Err(e) => return crate::fail(format!("cannot start the emulated workers: {e}")),
    };
    let first = fleet.workers.first().map(|(a, _)| *a);
    let last = fleet.workers.last().map(|(a, _)| *a);
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "{} emulated workers listening on {first} .. {last}",
            fleet.workers.len()
        );
    }
    crate::up::wait_for_signal().await;
    drop(fleet);
    ExitCode::SUCCESS
}
