//! `turnpike up`: a whole cluster in one process - a gateway, scheduler shards and workers
//! sharing this machine's cores and memory - with the demo app deployed.
//!
//! Each role listens on its own loopback port, so separate `turnpike worker`s and gateways
//! can join the cluster over RPC. Between the roles of this process, calls skip the socket
//! and go straight to the role that answers them (`turnpike_wire::directory`), unless
//! [`UpConfig::loopback_rpc`] asks for loopback gRPC between them too, as separate processes
//! on one machine would have.
//!
//! The demo app: `GET /hello` (top class), and the `spin` example at `/work/critical?ms=N`
//! (top class) and `/work/batch?ms=N` (bottom class), so price classes can be seen at work
//! with `curl` at once; and the `chain` example at `/chain?to=PATH` (bottom class), which
//! calls `PATH` through the platform and shows the class the callee ran at
//! (`max(caller, route)`: `/chain?to=/hello` runs hello at the top class); and the `stream`
//! example at `/stream?chunks=N&bytes=B&every_ms=M` (top class), whose response reaches the
//! client chunk by chunk as it is written (`curl -N`); and the `echo` example at `/echo`
//! (top class), which answers with the request's body, or with `?progress=1` reports it
//! arriving as it is uploaded (`curl -N -T FILE`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use turnpike_policy::placement::PlacementRule;
use turnpike_policy::{ClassId, ClassSet};
use turnpike_store::Store;
use turnpike_wire::chain;
use turnpike_wire::directory::Directory;
use turnpike_wire::lock;
use turnpike_wire::metrics;

use turnpike_gateway::billing::{Clock, SystemClock};
use turnpike_gateway::routing::{Route, Target, OPERATOR};
use turnpike_gateway::{Gateway, GatewayConfig};
use turnpike_node::emulated::{EmulatedConfig, EmulatedFleet, MachinePolicy};
use turnpike_node::node::{self, NodeConfig};
use turnpike_scheduler::{ShardConfig, ShardService};
use turnpike_worker::SlotThreads;

use crate::roles;

#[derive(Clone, Debug)]
pub struct UpConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub workers: usize,
    pub cores_per_worker: u32,
    pub memory_mb_per_worker: u64,
    /// Where the demo app's components are (`hello.wasm`, `spin.wasm`, `chain.wasm`,
    /// `stream.wasm`, `echo.wasm`).
    pub functions_dir: PathBuf,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// The store: `None` for the embedded SQLite file in `data_dir`, or a
    /// `sqlite://` / `postgres://` URL.
    pub store_url: Option<String>,
    /// Apps answer at `APP.<domain>`.
    pub domain: String,
    /// Largest component upload, bytes.
    pub max_component_bytes: usize,
    /// The clock of the gateway's budget rule (tests move it).
    pub clock: Arc<dyn Clock>,
    /// Emulated workers instead of real ones (`workers` of them; see [`crate::emulated`]):
    /// no wasm runs, each invocation's runtime and memory come from its query (`?ms=N&mb=M`).
    /// Their cores and memory are this config's, not `cores_per_worker` and
    /// `memory_mb_per_worker`.
    /// With [`MachinePolicy::Hermod`] the shards are Hermod's too (one FIFO queue, no idle
    /// list), so a run compares the baseline policy on the same services.
    pub emulated: Option<EmulatedConfig>,
    /// Roles of this process call each other over loopback gRPC instead of directly (to
    /// measure or test the RPC path on one machine).
    pub loopback_rpc: bool,
    /// The named bounds of every role.
    pub bounds: roles::Bounds,
    /// The price classes (default: the published four). Emulated workers must have the same
    /// (`EmulatedConfig::classes`).
    pub classes: ClassSet,
    /// Workers each shard polls per decision (power of k).
    pub shard_k: usize,
    /// Whether shards keep idle lists (`false`: they place by polling only, as the paper's
    /// figure 4 runs).
    pub idle_list: bool,
    /// Time a client has to send an HTTP/1.1 request's head to the gateway.
    pub header_read_timeout: std::time::Duration,
    /// Time a client has to send a request's body to the gateway (then 408).
    pub body_read_timeout: std::time::Duration,
}

impl UpConfig {
    /// Defaults: 4 shards, one worker with a slot per core of this machine (its machine
    /// scheduler then orders every invocation on the box by class: one-slot workers let two
    /// top-class invocations meet on one slot while another runs low-class work), 1 GiB of
    /// memory per slot, the example functions built by `scripts/build-examples.sh`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            listen,
            data_dir,
            shards: 4,
            workers: 1,
            cores_per_worker: u32::try_from(cores).unwrap_or(1),
            memory_mb_per_worker: 1024 * cores as u64,
            functions_dir: default_functions_dir(),
            max_request_bytes: 8 << 20,
            max_response_bytes: 8 << 20,
            store_url: None,
            domain: "localhost".into(),
            max_component_bytes: 64 << 20,
            clock: Arc::new(SystemClock),
            emulated: None,
            loopback_rpc: false,
            bounds: roles::Bounds::default(),
            classes: ClassSet::default_four(),
            shard_k: turnpike_scheduler::shard::DEFAULT_K,
            idle_list: true,
            header_read_timeout: turnpike_wire::http_server::HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: turnpike_gateway::gateway::BODY_READ_TIMEOUT_DEFAULT,
        }
    }

    /// Shard `i`'s configuration.
    fn shard_config(&self, i: usize) -> ShardConfig {
        let hermod = self
            .emulated
            .as_ref()
            .is_some_and(|e| e.policy == MachinePolicy::Hermod);
        ShardConfig {
            seed: i as u64 + 1,
            id: i as u32,
            queue_invocations_max: self.bounds.shard_queue_invocations_max,
            k: self.shard_k.max(1),
            use_idle_list: self.idle_list && !hermod,
            fifo: hermod,
            placement: if hermod {
                PlacementRule::Paper
            } else {
                PlacementRule::ClassAware
            },
            ..ShardConfig::default()
        }
    }
}

/// `examples/functions/dist` of this source tree.
pub fn default_functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/functions/dist")
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo app's component {path} is missing ({source}); build the example functions with scripts/build-examples.sh")]
    DemoMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker: {0}")]
    Worker(#[from] turnpike_node::node::NodeError),
    #[error("emulated workers: {0}")]
    Emulated(#[source] std::io::Error),
    #[error("store: {0}")]
    Store(#[from] turnpike_store::StoreError),
    #[error("gateway: reading the routes: {0}")]
    Gateway(#[source] turnpike_gateway::gateway::GatewayError),
}

/// A running cluster. Dropping it (or [`Cluster::stop`]) stops every role.
#[derive(Debug)]
pub struct Cluster {
    pub gateway: SocketAddr,
    pub shards: Vec<SocketAddr>,
    pub workers: Vec<SocketAddr>,
    /// `(role, address)` of every role's `/metrics`.
    pub metrics: Vec<(String, SocketAddr)>,
    /// The demo app's components: `(name, content hash)`, for `/v1/invoke/<hash>`.
    pub demo_functions: Vec<(String, String)>,
    /// Shared with the shards' metrics servers, which follow a restart.
    shard_services: Arc<Mutex<Vec<ShardService>>>,
    /// The emulated workers, when there are no real ones.
    pub fleet: Option<EmulatedFleet>,
    /// The store the gateway and workers use.
    pub store: Store,
    /// The admin tenant's key, when this start created it (a fresh store): shown once.
    pub admin_key: Option<String>,
    /// Stops the gateway alone (it drains before the other roles stop).
    gateway_stop: watch::Sender<bool>,
    shard_config: ShardConfig,
    /// The roles of this process that call each other directly (empty with
    /// [`UpConfig::loopback_rpc`]).
    directory: Directory,
    classes: ClassSet,
    stop: watch::Sender<bool>,
    gateway_task: JoinHandle<()>,
    shard_tasks: Vec<JoinHandle<()>>,
    /// Per worker: its RPC server and its dispatcher.
    worker_tasks: Vec<[JoinHandle<()>; 2]>,
    metrics_tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// The roles of this process that call each other directly (empty with
    /// [`UpConfig::loopback_rpc`]): how a caller in this process reaches them as they do.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn shard(&self, i: usize) -> ShardService {
        lock(&self.shard_services)[i].clone()
    }

    /// Replaces shard `i` with a new one on the same address, with empty queues, idle list
    /// and worker table (what a restarted shard process has).
    pub async fn restart_shard(&mut self, i: usize) -> Result<(), UpError> {
        self.shard_tasks[i].abort();
        let _ = (&mut self.shard_tasks[i]).await;
        let (listener, address) = bind(self.shards[i]).await?;
        let config = ShardConfig {
            seed: i as u64 + 101,
            id: i as u32,
            ..self.shard_config
        };
        let (service, task) = roles::serve_shard(
            &self.classes,
            config,
            &self.directory,
            (listener, address),
            stopped(self.stop.subscribe()),
        );
        self.shard_tasks[i] = task;
        lock(&self.shard_services)[i] = service;
        Ok(())
    }

    /// Stops every role: first the gateway, which answers the requests it has (for at most
    /// [`turnpike_gateway::gateway::DRAIN_FOR`]) while the shards and workers still run them, then the
    /// rest.
    pub async fn stop(mut self) {
        let _ = self.gateway_stop.send(true);
        let _ = (&mut self.gateway_task).await;
        let _ = self.stop.send(true);
        for task in self.tasks() {
            task.abort();
        }
    }

    fn tasks(&self) -> impl Iterator<Item = &JoinHandle<()>> {
        std::iter::once(&self.gateway_task)
            .chain(&self.shard_tasks)
            .chain(self.worker_tasks.iter().flatten())
            .chain(&self.metrics_tasks)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks() {
            task.abort();
        }
    }
}

/// Serves a role's `/metrics` on a loopback port chosen by the OS.
async fn spawn_metrics(
    role: String,
    render: metrics::Render,
    stop: watch::Receiver<bool>,
    metrics: &mut Vec<(String, SocketAddr)>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), UpError> {
    let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    tasks.push(tokio::spawn(metrics::serve(
        listener,
        render,
        stopped(stop),
    )));
    metrics.push((role, addr));
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), UpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| UpError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| UpError::Listen { addr, source })?;
    Ok((listener, bound))
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// Starts the cluster and returns once every role is listening and the demo app is loaded.
pub async fn start(config: &UpConfig) -> Result<Cluster, UpError> {
    let classes = config.classes.clone();
    let (stop, stop_rx) = watch::channel(false);
    let store_url = config
        .store_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir));
    let store = Store::open(&store_url).await?;
    let admin_key = turnpike_gateway::api::bootstrap_admin(&store).await?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let directory = if config.loopback_rpc {
        Directory::rpc_only()
    } else {
        Directory::new()
    };

    let mut shards = Vec::new();
    let shard_services = Arc::new(Mutex::new(Vec::new()));
    let mut shard_tasks = Vec::new();
    let (mut metrics, mut metrics_tasks) = (Vec::new(), Vec::new());
    for s in 0..config.shards {
        let (listener, addr) = bind(loopback).await?;
        let (service, task) = roles::serve_shard(
            &classes,
            config.shard_config(s),
            &directory,
            (listener, addr),
            stopped(stop_rx.clone()),
        );
        lock(&shard_services).push(service);
        let services = shard_services.clone();
        spawn_metrics(
            format!("shard {s}"),
            Arc::new(move || lock(&services)[s].metrics()),
            stop_rx.clone(),
            &mut metrics,
            &mut metrics_tasks,
        )
        .await?;
        shard_tasks.push(task);
        shards.push(addr);
    }

    // The gateway's address comes first: workers send their guests' calls there.
    let (gateway_listener, gateway_addr) = bind(config.listen).await?;
    let chain_key = chain::ChainKey::random();

    let mut workers = Vec::new();
    let mut worker_tasks = Vec::new();
    let (fleet, hashes) = if let Some(emulated) = &config.emulated {
        let emulated = EmulatedConfig {
            in_flight_invocations_max: config.bounds.worker_in_flight_invocations_max,
            ..emulated.clone()
        };
        let fleet = EmulatedFleet::start(config.workers, &emulated, &shards, 1, &directory)
            .await
            .map_err(UpError::Emulated)?;
        workers.extend(fleet.workers.iter().map(|(a, _)| *a));
        // Emulated workers run any function; the routes still name one each.
        let hashes = DEMO_FUNCTIONS
            .iter()
            .map(|n| format!("emulated-{n}"))
            .collect();
        (Some(fleet), hashes)
    } else {
        let mut components = Vec::new();
        for name in DEMO_FUNCTIONS {
            components.push((name.to_string(), read_demo(&config.functions_dir, name)?));
        }
        let mut hashes = Vec::new();
        for w in 0..config.workers {
            let node = node::start_node(
                NodeConfig {
                    listen: loopback,
                    advertise: None,
                    shards: shards.clone(),
                    data_dir: config.data_dir.clone(),
                    cores: config.cores_per_worker,
                    memory_mb: config.memory_mb_per_worker,
                    classes: classes.clone(),
                    gateway: Some(gateway_addr),
                    seed: w as u64 + 1,
                    store: Some(store.clone()),
                    directory: directory.clone(),
                    in_flight_invocations_max: config.bounds.worker_in_flight_invocations_max,
                    // The other roles share this process's threads: the guests get their own.
                    slot_threads: SlotThreads::Own,
                },
                &components,
                stopped(stop_rx.clone()),
            )
            .await?;
            let rendered = node.service.clone();
            spawn_metrics(
                format!("worker {w}"),
                Arc::new(move || rendered.metrics()),
                stop_rx.clone(),
                &mut metrics,
                &mut metrics_tasks,
            )
            .await?;
            hashes = node.loaded;
            worker_tasks.push([node.server, node.dispatcher]);
            workers.push(node.address);
        }
        (None, hashes)
    };
    let demo_functions: Vec<(String, String)> = DEMO_FUNCTIONS
        .iter()
        .map(|n| n.to_string())
        .zip(hashes)
        .collect();
    let top = classes.top();
    let bottom = ClassId(0);
    let routes = vec![
        demo_route("/hello", &demo_functions, "hello", top),
        demo_route("/work/critical", &demo_functions, "spin", top),
        demo_route("/work/batch", &demo_functions, "spin", bottom),
        demo_route("/chain", &demo_functions, "chain", bottom),
        demo_route("/stream", &demo_functions, "stream", top),
        Route {
            // Any method: an upload is a `POST` or `PUT`.
            method: None,
            ..demo_route("/echo", &demo_functions, "echo", top)
        },
    ];
    let gateway = Gateway::new(GatewayConfig {
        routes,
        domain: config.domain.clone(),
        max_component_bytes: config.max_component_bytes,
        clock: config.clock.clone(),
        directory: directory.clone(),
        max_request_bytes: config.max_request_bytes,
        max_response_bytes: config.max_response_bytes,
        chain_key: Some(chain_key),
        in_flight_invocations_max: config.bounds.gateway_in_flight_invocations_max,
        ledger_queue_rows_max: config.bounds.ledger_queue_rows_max,
        connections_max: config.bounds.gateway_connections_max,
        ledger_outbox_rows_max: config.bounds.ledger_outbox_rows_max,
        async_queue_max: config.bounds.async_queue_invocations_max,
        async_runs_max: config.bounds.gateway_async_runs_max,
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        ..roles::gateway_config(
            classes.clone(),
            store.clone(),
            shards.clone(),
            &config.data_dir,
        )
    })
    .await
    .map_err(UpError::Gateway)?;
    let rendered = gateway.clone();
    spawn_metrics(
        "gateway".into(),
        Arc::new(move || rendered.metrics()),
        stop_rx.clone(),
        &mut metrics,
        &mut metrics_tasks,
    )
    .await?;
    let (gateway_stop, gateway_stop_rx) = watch::channel(false);
    let gateway_task = tokio::spawn(gateway.serve(gateway_listener, stopped(gateway_stop_rx)));

    // Ready when every shard knows every worker (a thousand emulated ones take a while).
    for _ in 0..2000 {
        if lock(&shard_services)
            .iter()
            .all(|s| s.live_workers() == config.workers)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(Cluster {
        gateway: gateway_addr,
        shards,
        workers,
        metrics,
        demo_functions,
        shard_services,
        fleet,
        store,
        admin_key,
        gateway_stop,
        shard_config: config.shard_config(0),
        directory,
        classes,
        stop,
        gateway_task,
        shard_tasks,
        worker_tasks,
        metrics_tasks,
    })
}

/// The demo app's components, by file name in `functions_dir`.
const DEMO_FUNCTIONS: [&str; 5] = ["hello", "spin", "chain", "stream", "echo"];

/// A demo route: an operator route (any host that names no app), paid by the admin.
fn demo_route(prefix: &str, functions: &[(String, String)], name: &str, class: ClassId) -> Route {
    let hash = functions
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(String::new, |(_, h)| h.clone());
    Route {
        method: Some(http::Method::GET),
        prefix: prefix.into(),
        target: Target {
            tenant: OPERATOR.into(),
            app: "demo".into(),
            function: name.into(),
            hash,
            class,
            asynchronous: false,
            retries: 0,
            concurrency_limits: Vec::new(),
        },
    }
}

fn read_demo(dir: &Path, name: &str) -> Result<Vec<u8>, UpError> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|source| UpError::DemoMissing { path, source })
}
