//! `turnpike shard` and `turnpike gateway`: the control plane's other roles, one per process.
//! (`turnpike worker` is in `worker.rs`; `turnpike up` runs all of them in one process.)

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio::net::TcpListener;
use turnpike_cluster::roles::{self, Bounds};
use turnpike_gateway::routing::{Route, Target, OPERATOR};
use turnpike_gateway::{Gateway, GatewayConfig};
use turnpike_policy::ClassSet;
use turnpike_scheduler::ShardConfig;
use turnpike_wire::chain::ChainKey;
use turnpike_wire::directory::Directory;
use turnpike_wire::metrics;

/// `--threads`, for a role whose async runtime is its own (the shard, the gateway).
#[derive(Args, Debug)]
pub struct ThreadsArg {
    /// Threads of the role's async runtime (default: the CPUs this process may use). Roles
    /// that share a host do better with fewer each: on 2 cores, a gateway and a shard with
    /// one thread each beside a worker served hello 12.2k req/s against 10.6k with the
    /// default (docs/benchmarks.md, issue 18); every extra thread that wakes for a message
    /// is a context switch the other processes pay for.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ShardArgs {
    #[command(flatten)]
    config: crate::config_file::ConfigFileArg,
    #[command(flatten)]
    internal: crate::certs::InternalArgs,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Where the shard serves its RPCs (port 0: chosen by the OS, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where it serves Prometheus `/metrics` (port 0: chosen by the OS, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// Workers polled per decision when the idle list cannot place.
    #[arg(long, default_value_t = turnpike_scheduler::shard::DEFAULT_K)]
    k: usize,
    /// Seed of the shard's random sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The shard's number in its cluster, for its logs.
    #[arg(long, default_value_t = 0)]
    id: u32,
    /// Invocations waiting for placement; more are refused (the gateway answers 503 with
    /// `Retry-After`).
    #[arg(long, default_value_t = Bounds::default().shard_queue_invocations_max)]
    shard_queue_invocations_max: usize,
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    config: crate::config_file::ConfigFileArg,
    #[command(flatten)]
    internal: crate::certs::InternalArgs,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Where the gateway serves HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where it serves Prometheus `/metrics` (port 0: chosen by the OS, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// A shard to send invocations to (repeat for each shard).
    #[arg(long = "shard", required = true)]
    shards: Vec<SocketAddr>,
    /// An operator route: `PREFIX=FUNCTION_HASH@CLASS`, e.g. `/hello=ab12...@critical`
    /// (repeatable); it answers every host that names no app, billed to the admin.
    #[arg(long = "route")]
    routes: Vec<String>,
    /// The store: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (default: the embedded
    /// SQLite file in `--data-dir`).
    #[arg(long)]
    store: Option<String>,
    /// The embedded store and the compile cache.
    #[arg(long, default_value = "./.turnpike")]
    data_dir: std::path::PathBuf,
    /// Apps answer at `APP.<domain>`.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Largest component upload, bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_component_bytes: usize,
    /// Largest request and response body, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// The cluster's chain key, at least 16 characters, the same on every gateway: the secret
    /// a gateway signs each invocation's call token with, and verifies calls from functions
    /// against (better given in the environment than on the command line; workers never
    /// hold it). Without it, calls from functions are refused.
    #[arg(long, env = "TURNPIKE_CHAIN_TOKEN", hide_env_values = true)]
    chain_token: Option<String>,
    /// Deepest call chain served (a function calling a function ...); deeper gets 508.
    #[arg(long, default_value_t = turnpike_wire::chain::DEFAULT_MAX_CHAIN_DEPTH)]
    max_chain_depth: u32,
    /// Invocations between admission and response; more get 503 with `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().gateway_in_flight_invocations_max)]
    gateway_in_flight_invocations_max: u64,
    /// Usage rows waiting for the store; while this many wait, new invocations get 503 with
    /// `Retry-After`.
    #[arg(long, default_value_t = Bounds::default().ledger_queue_rows_max)]
    ledger_queue_rows_max: u64,
    /// HTTP connections open at once; one more is answered 503 and closed.
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
}

async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, bound))
}

/// Serves `render` as Prometheus `/metrics` on `addr` for as long as the process lives;
/// returns the address bound.
pub(crate) async fn serve_metrics(
    addr: SocketAddr,
    render: metrics::Render,
) -> Result<SocketAddr, String> {
    let (listener, bound) = listen(addr).await?;
    tokio::spawn(metrics::serve(listener, render, std::future::pending()));
    Ok(bound)
}

/// How long a stopping shard waits for its open calls (invocations it queued or placed)
/// before it exits anyway.
const SHARD_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub fn shard(args: ShardArgs) -> ExitCode {
    if let Err(e) = args.internal.apply(turnpike_wire::tls::Role::Shard) {
        return crate::fail(e);
    }
    crate::block_on_threads(args.threads.threads, async move {
        let config = ShardConfig {
            k: args.k.max(1),
            seed: args.seed,
            id: args.id,
            queue_invocations_max: args.shard_queue_invocations_max,
            ..ShardConfig::default()
        };
        let (listener, rpc_addr) = match listen(args.listen).await {
            Ok(bound) => bound,
            Err(e) => return crate::fail(e),
        };
        let (service, server) = roles::serve_shard(
            &ClassSet::default_four(),
            config,
            &Directory::rpc_only(),
            (listener, rpc_addr),
            crate::up::wait_for_signal(),
        );
        let rendered = service.clone();
        let render = Arc::new(move || rendered.metrics());
        let metrics_addr = match serve_metrics(args.metrics, render).await {
            Ok(bound) => bound,
            Err(e) => return crate::fail(e),
        };
        println!("shard listening on {rpc_addr}");
        println!("metrics: http://{metrics_addr}/metrics");
        // After the signal the RPC server waits for its calls to end; an `Invoke` whose
        // invocation waits for a worker that never comes would hold it forever.
        let grace_over = async {
            crate::up::wait_for_signal().await;
            tokio::time::sleep(SHARD_STOP_GRACE).await;
        };
        tokio::select! {
            served = server => match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => crate::fail(e),
            },
            () = grace_over => {
                tracing::warn!(
                    "calls still open {} s after the signal to stop; stopping without them \
                     (their gateways place them elsewhere)",
                    SHARD_STOP_GRACE.as_secs()
                );
                ExitCode::SUCCESS
            }
        }
    })
}

/// Parses `PREFIX=HASH@CLASS`.
fn parse_route(text: &str, classes: &ClassSet) -> Result<Route, String> {
    let (prefix, target) = text
        .split_once('=')
        .ok_or_else(|| format!("route `{text}`: expected PREFIX=FUNCTION_HASH@CLASS"))?;
    let (function, class) = target
        .split_once('@')
        .ok_or_else(|| format!("route `{text}`: expected PREFIX=FUNCTION_HASH@CLASS"))?;
    let class_id = classes.by_name(class).ok_or_else(|| {
        let names: Vec<_> = classes.iter().map(|(_, c)| c.name.as_str()).collect();
        format!(
            "route `{text}`: unknown class `{class}`; classes: {}",
            names.join(", ")
        )
    })?;
    if !prefix.starts_with('/') {
        return Err(format!("route `{text}`: the prefix must start with `/`"));
    }
    Ok(Route {
        method: None,
        prefix: prefix.to_string(),
        target: Target {
            tenant: OPERATOR.into(),
            app: "-".into(),
            function: function.to_string(),
            hash: function.to_string(),
            class: class_id,
            asynchronous: false,
            retries: 0,
            concurrency_limits: Vec::new(),
        },
    })
}

pub fn gateway(args: GatewayArgs) -> ExitCode {
    if let Err(e) = args.internal.apply(turnpike_wire::tls::Role::Gateway) {
        return crate::fail(e);
    }
    let classes = ClassSet::default_four();
    let routes: Result<Vec<Route>, String> = args
        .routes
        .iter()
        .map(|r| parse_route(r, &classes))
        .collect();
    let routes = match routes {
        Ok(routes) => routes,
        Err(e) => return crate::fail(e),
    };
    let chain_key = match args.chain_token.map(ChainKey::new).transpose() {
        Ok(key) => key,
        Err(e) => return crate::fail(e),
    };
    crate::block_on_threads(args.threads.threads, async move {
        let url = args
            .store
            .clone()
            .unwrap_or_else(|| turnpike_store::Store::sqlite_url(&args.data_dir));
        let store = match turnpike_store::Store::open(&url).await {
            Ok(store) => store,
            Err(e) => return crate::fail(e),
        };
        let admin_key = match turnpike_gateway::api::bootstrap_admin(&store).await {
            Ok(key) => key,
            Err(e) => return crate::fail(e),
        };
        let gateway = Gateway::new(GatewayConfig {
            routes,
            domain: args.domain,
            max_component_bytes: args.max_component_bytes,
            max_request_bytes: args.max_body_bytes,
            max_response_bytes: args.max_body_bytes,
            chain_key,
            max_chain_depth: args.max_chain_depth,
            in_flight_invocations_max: args.gateway_in_flight_invocations_max,
            ledger_queue_rows_max: args.ledger_queue_rows_max,
            connections_max: args.gateway_connections_max,
            ledger_outbox_rows_max: args.ledger_outbox_rows_max,
            async_queue_max: args.async_queue_invocations_max,
            async_runs_max: args.gateway_async_runs_max,
            ..roles::gateway_config(classes, store, args.shards, &args.data_dir)
        })
        .await;
        let gateway = match gateway {
            Ok(gateway) => gateway,
            Err(e) => return crate::fail(e),
        };
        let (http, http_addr) = match listen(args.listen).await {
            Ok(bound) => bound,
            Err(e) => return crate::fail(e),
        };
        let rendered = gateway.clone();
        let metrics_addr =
            match serve_metrics(args.metrics, Arc::new(move || rendered.metrics())).await {
                Ok(bound) => bound,
                Err(e) => return crate::fail(e),
            };
        println!("gateway listening on http://{http_addr}");
        if let Some(key) = admin_key {
            println!("  admin key: {key}   (shown once: keep it; `turnpike tenants create NAME` makes tenants)");
        }
        println!("metrics: http://{metrics_addr}/metrics");
        gateway.serve(http, crate::up::wait_for_signal()).await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_bad_ones_say_why() {
        let classes = ClassSet::default_four();
        let r = parse_route("/api=abc@critical", &classes).unwrap();
        assert_eq!((r.prefix.as_str(), r.target.hash.as_str()), ("/api", "abc"));
        assert_eq!(r.target.class, classes.top());
        let e = parse_route("/api=abc@gold", &classes).unwrap_err();
        assert!(e.contains("gold") && e.contains("batch"), "{e}");
        assert!(parse_route("/api", &classes)
            .unwrap_err()
            .contains("PREFIX="));
        assert!(parse_route("api=abc@batch", &classes)
            .unwrap_err()
            .contains("start with"));
    }
}
