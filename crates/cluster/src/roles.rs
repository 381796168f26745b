//! One builder per role, used both by `turnpike up` ([`crate::up`]) and by the binary's
//! one-role commands (`turnpike shard`, `turnpike gateway`; `turnpike worker` uses
//! `turnpike_node::node::start_node`), so a role is assembled the same way whether it runs
//! alone or beside the others.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use turnpike_gateway::billing::SystemClock;
use turnpike_gateway::{CheckError, ComponentCheck, GatewayConfig};
use turnpike_policy::ClassSet;
use turnpike_scheduler::{ShardConfig, ShardService};
use turnpike_store::Store;
use turnpike_wire::directory::Directory;
use turnpike_wire::{chain, rpc};
use turnpike_worker::{Runtime, RuntimeConfig};

/// The named bounds of the invocation path, one per queue or in-flight set, each with its
/// unit last. At a bound, new work is refused at once (503 with `Retry-After` and the bound's
/// name at the gateway) and nothing grows further. Each is a flag (and a `--config` key) of
/// the role commands and `turnpike up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Invocations between admission and response at a gateway.
    pub gateway_in_flight_invocations_max: u64,
    /// Usage rows waiting for their commit at a gateway.
    pub ledger_queue_rows_max: u64,
    /// Invocations waiting for placement at a shard.
    pub shard_queue_invocations_max: usize,
    /// Invocations accepted at once by a worker.
    pub worker_in_flight_invocations_max: u64,
    /// HTTP connections open at once at a gateway.
    pub gateway_connections_max: usize,
    /// Usage rows in a gateway's on-disk ledger outbox (the store is down).
    pub ledger_outbox_rows_max: u64,
    /// A tenant's asynchronous invocations queued or running (in the store).
    pub async_queue_invocations_max: u64,
    /// Asynchronous attempts a gateway runs at once.
    pub gateway_async_runs_max: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            gateway_in_flight_invocations_max:
                turnpike_gateway::gateway::GATEWAY_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT,
            ledger_queue_rows_max: turnpike_gateway::gateway::LEDGER_QUEUE_ROWS_MAX_DEFAULT,
            shard_queue_invocations_max:
                turnpike_scheduler::shard::SHARD_QUEUE_INVOCATIONS_MAX_DEFAULT,
            worker_in_flight_invocations_max:
                turnpike_node::node::WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT,
            gateway_connections_max: turnpike_wire::http_server::CONNECTIONS_MAX_DEFAULT,
            ledger_outbox_rows_max: turnpike_gateway::outbox::LEDGER_OUTBOX_ROWS_MAX_DEFAULT,
            async_queue_invocations_max:
                turnpike_gateway::async_invocations::ASYNC_QUEUE_MAX_DEFAULT,
            gateway_async_runs_max: turnpike_gateway::async_invocations::ASYNC_RUNS_MAX_DEFAULT,
        }
    }
}

/// Starts a shard, reachable in `directory` at `address` (replacing one that was there) and
/// serving its RPCs on `listener` until `shutdown` completes.
pub fn serve_shard(
    classes: &ClassSet,
    config: ShardConfig,
    directory: &Directory,
    (listener, address): (TcpListener, SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (ShardService, JoinHandle<()>) {
    let service = ShardService::start(classes.clone(), config, directory.clone());
    directory.add_shard(address, Arc::new(service.clone()));
    let router = rpc::server().add_service(service.clone().into_server());
    let task = rpc::spawn_server(router, listener, shutdown, format!("shard {}", config.id));
    (service, task)
}

/// A gateway's configuration with the defaults every gateway starts from: the embedded
/// component check ([`WasmComponents`], caching into `data_dir/cache`), the system clock,
/// 8 MiB bodies, 64 MiB uploads, the default chain depth, memory price and [`Bounds`], no
/// operator routes,
/// no chain key, and every shard called over RPC. Callers change what their flags say.
pub fn gateway_config(
    classes: ClassSet,
    store: Store,
    shards: Vec<SocketAddr>,
    data_dir: &Path,
) -> GatewayConfig {
    GatewayConfig {
        classes,
        routes: Vec::new(),
        store,
        domain: "localhost".into(),
        components: Arc::new(WasmComponents::new(data_dir.join("cache"))),
        max_component_bytes: 64 << 20,
        clock: Arc::new(SystemClock),
        shards,
        directory: Directory::rpc_only(),
        max_request_bytes: 8 << 20,
        max_response_bytes: 8 << 20,
        start_mb: turnpike_policy::memory::START_MB_DEFAULT,
        chain_key: None,
        max_chain_depth: chain::DEFAULT_MAX_CHAIN_DEPTH,
        memory_price: turnpike_policy::class::DEFAULT_MEMORY_PRICE,
        in_flight_invocations_max: Bounds::default().gateway_in_flight_invocations_max,
        ledger_queue_rows_max: Bounds::default().ledger_queue_rows_max,
        connections_max: Bounds::default().gateway_connections_max,
        ledger_outbox: data_dir.join("ledger-outbox.jsonl"),
        ledger_outbox_rows_max: Bounds::default().ledger_outbox_rows_max,
        header_read_timeout: turnpike_wire::http_server::HEADER_READ_TIMEOUT_DEFAULT,
        body_read_timeout: turnpike_gateway::gateway::BODY_READ_TIMEOUT_DEFAULT,
        async_queue_max: Bounds::default().async_queue_invocations_max,
        async_runs_max: Bounds::default().gateway_async_runs_max,
        async_retention: turnpike_gateway::async_invocations::ASYNC_RETENTION_DEFAULT,
        key_cache_for: turnpike_gateway::gateway::KEY_CACHE_FOR_DEFAULT,
    }
}

/// The gateway's upload check on the worker's wasm runtime: an upload is deployable when the
/// runtime loads it as a component, and the compiled code lands in the compile cache that
/// the workers of this machine share (so a component compiled at deploy is not compiled
/// again on first use). The runtime is made on the first upload: an engine has an epoch
/// ticker thread, which a gateway that never sees an upload need not run.
#[derive(Debug)]
pub struct WasmComponents {
    compile_cache: PathBuf,
    runtime: Mutex<Option<Arc<Runtime>>>,
}

impl WasmComponents {
    pub fn new(compile_cache: PathBuf) -> Self {
        Self {
            compile_cache,
            runtime: Mutex::new(None),
        }
    }

    fn runtime(&self) -> Result<Arc<Runtime>, CheckError> {
        let mut runtime = turnpike_wire::lock(&self.runtime);
        if let Some(runtime) = &*runtime {
            return Ok(runtime.clone());
        }
        let made = Runtime::new(RuntimeConfig::new(self.compile_cache.clone()))
            .map(Arc::new)
            .map_err(|e| CheckError::Unavailable(format!("component compiler: {e}")))?;
        *runtime = Some(made.clone());
        Ok(made)
    }
}

impl ComponentCheck for WasmComponents {
    fn check(&self, bytes: &[u8]) -> Result<String, CheckError> {
        let function = self
            .runtime()?
            .load(bytes)
            .map_err(|e| CheckError::NotDeployable(e.to_string()))?;
        Ok(function.hash().to_string())
    }
}
