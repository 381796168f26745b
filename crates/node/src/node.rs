//! A worker node: the worker runtime behind the `Worker` RPC service, plus its dispatcher,
//! which keeps the machine registered with every shard and on at most one shard's idle list
//! (the policy core's [`Dispatcher`] decides when to join, update and leave).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, which the waits below use too.
use tokio::time::Instant;
use tracing::Instrument;

use rand::{Rng, SeedableRng};
use tonic::{Request, Response, Status, Streaming};
use turnpike_policy::dispatcher::{Dispatcher, DispatcherConfig, DispatcherOutput, IdleListAction};
use turnpike_policy::idle_list::IdleEntry;
use turnpike_policy::placement::PollReply;
use turnpike_policy::{ClassId, ClassSet, ShardId};
use turnpike_store::{Store, StoreError};
use turnpike_wire::directory::{Directory, LocalWorker, ShardPeer};
use turnpike_wire::invocation::{
    known_class, CallError, FailureKind, IdleReport, Invocation, Outcome, Registered, Registration,
};
use turnpike_wire::link;
use turnpike_wire::metrics::{self, ClassHistograms};
use turnpike_wire::proto;
use turnpike_wire::proto::worker_server::WorkerServer;
use turnpike_wire::rpc;
use turnpike_wire::telemetry;
use turnpike_worker::{
    Function, InvokeError, InvokeOptions, LoadError, Platform, Runtime, RuntimeConfig, SlotThreads,
    StartError, Worker, WorkerConfig,
};

use crate::calls::GatewayLink;
use crate::convert;
use crate::in_flight::InFlight;

/// How often the dispatcher looks at a real worker's memory and load.
const DISPATCH_TICK: Duration = Duration::from_millis(5);
/// How often a worker registers with every shard again by default (how soon a restarted
/// shard knows it). The cost is workers x shards RPCs per period: a thousand emulated workers
/// use a longer period ([`crate::emulated::EmulatedFleet`]).
pub const REGISTER_EVERY: Duration = Duration::from_millis(500);
/// How often a worker no shard has answered yet tries to register again.
pub const UNREGISTERED_RETRY: Duration = Duration::from_millis(100);
/// A registration's lease, in registration periods: a shard marks a worker lost when this
/// many periods pass without a registration from it (2 s at [`REGISTER_EVERY`]). Missing
/// one or two (a slow shard, a lost packet) is not enough.
pub const LEASE_PERIODS: u32 = 4;
/// Idle-list refreshes per registration period: a member of an idle list sends its entry
/// every `register_every / REFRESHES_PER_REGISTRATION` (100 ms at [`REGISTER_EVERY`]),
/// changed or not, so the shard's copy (which it changes on each placement) is the truth
/// again within that (`turnpike_policy::dispatcher`).
pub const REFRESHES_PER_REGISTRATION: u32 = 5;

/// The `Worker` service over a [`Worker`].
///
/// A function is loaded at start (`turnpike worker --load`), by a `Load` RPC, or on its
/// first invocation from the store (content-addressed, so a redeployed function is a new
/// hash and invocations still running on the old one finish on it).
#[derive(Debug, Clone)]
pub struct NodeService {
    worker: Arc<Worker>,
    functions: Arc<Mutex<HashMap<String, Arc<Function>>>>,
    /// Where functions not loaded yet come from.
    store: Option<Store>,
    /// Held while fetching and compiling a function from the store, so that concurrent
    /// first invocations compile it once.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// Wall time of invocations by class, submit to end on this worker.
    latency: Arc<ClassHistograms>,
    failures: Arc<AtomicU64>,
    /// Invocations cancelled here (their caller went away, their deadline passed, or the
    /// stream they came on broke).
    cancelled: Arc<AtomicU64>,
    /// How this worker is named in logs (its address once it listens).
    label: Arc<str>,
    /// Invocations accepted and not answered, and their bound
    /// (`worker_in_flight_invocations_max`).
    in_flight: Arc<InFlight>,
    /// Functions invoked here so far, when traces are exported: an invocation of one not
    /// among them is a cold start (`faas.coldstart`).
    invoked: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Why a worker node could not start or load a function.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("not a loadable component: {0}")]
    Load(#[from] LoadError),
    #[error("compiling the component: {0}")]
    CompileTask(#[from] tokio::task::JoinError),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("the store's component {hash} hashes to {loaded}")]
    WrongHash { hash: String, loaded: String },
    #[error("{label}: {source}")]
    Component {
        label: String,
        #[source]
        source: Box<NodeError>,
    },
}

/// Default of [`NodeConfig::in_flight_invocations_max`].
pub const WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT: u64 = 10_000;

impl NodeService {
    /// The service over `worker`, loading functions it lacks from `store` if given.
    pub fn new(worker: Arc<Worker>, store: Option<Store>) -> Self {
        let latency = Arc::new(ClassHistograms::new(&worker.config().classes));
        Self {
            worker,
            functions: Arc::new(Mutex::new(HashMap::new())),
            store,
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            latency,
            failures: Arc::new(AtomicU64::new(0)),
            cancelled: Arc::new(AtomicU64::new(0)),
            label: Arc::from("worker"),
            in_flight: Arc::new(InFlight::new(WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT)),
            invoked: Arc::default(),
        }
    }

    /// Names this worker `label` in its logs.
    pub fn labelled(mut self, label: impl Into<Arc<str>>) -> Self {
        self.label = label.into();
        self
    }

    /// Accepts at most `max` invocations at once (`worker_in_flight_invocations_max`); one
    /// more is answered `FailureKind::Overloaded` at once.
    pub fn in_flight_max(mut self, max: u64) -> Self {
        self.in_flight = Arc::new(InFlight::new(max));
        self
    }

    /// This worker's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let w = &self.worker;
        let classes = &w.config().classes;
        let stats = w.memory_stats();
        let by_class = |values: &[u64]| {
            metrics::by_class(classes, |id| {
                values.get(id.index()).copied().unwrap_or(0) as f64
            })
        };
        let mut out = metrics::Exposition::new();
        metrics::family(
            &mut out,
            "turnpike_worker_functions",
            "gauge",
            "Invocations on the worker (running, parked, blocked, not started).",
            &metrics::single(f64::from(w.functions())),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_memory_used_mb",
            "gauge",
            "Guests' resident linear memory, MB.",
            &metrics::single(w.used_mb() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_swap_used_mb",
            "gauge",
            "Swap space in use, MB.",
            &metrics::single(w.swap_used_mb() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_preemptions_total",
            "counter",
            "Preemptions by the machine scheduler.",
            &metrics::single(w.preemptions() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_preempted_total",
            "counter",
            "Preemptions by the preempted invocation's class.",
            &by_class(&w.preemptions_by_class()),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_slots",
            "gauge",
            "Core slots for guests.",
            &metrics::single(f64::from(w.config().cores)),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_slots_busy",
            "gauge",
            "Slots an invocation holds now.",
            &metrics::single(w.running().len() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_swap_outs_total",
            "counter",
            "Swap-outs by class.",
            &by_class(&stats.swap_outs),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_kills_total",
            "counter",
            "Invocations killed to free memory, by class.",
            &by_class(&stats.kills),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_failures_total",
            "counter",
            "Invocations that ended without a response.",
            &metrics::single(self.failures.load(Ordering::Relaxed) as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_worker_cancelled_total",
            "counter",
            "Invocations cancelled here: caller gone, deadline passed, or the stream they came on broke (a shard lost).",
            &metrics::single(self.cancelled.load(Ordering::Relaxed) as f64),
        );
        self.latency.render(
            &mut out,
            "turnpike_worker_invocation_seconds",
            "Invocation wall time on the worker, by class.",
        );
        out.render()
    }

    pub fn into_server(self) -> WorkerServer<Self> {
        WorkerServer::new(self)
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES)
    }

    fn function(&self, hash: &str) -> Option<Arc<Function>> {
        turnpike_wire::lock(&self.functions).get(hash).cloned()
    }

    /// The function `hash`, loaded from the store if it is not loaded yet: `Ok(None)` if
    /// there is no store or the store does not have it.
    async fn function_or_fetch(&self, hash: &str) -> Result<Option<Arc<Function>>, NodeError> {
        if let Some(function) = self.function(hash) {
            return Ok(Some(function));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let _fetching = self.fetching.lock().await;
        if let Some(function) = self.function(hash) {
            return Ok(Some(function));
        }
        let Some(bytes) = store.component(hash).await? else {
            return Ok(None);
        };
        let loaded = self.load(bytes).await?;
        if loaded != hash {
            return Err(NodeError::WrongHash {
                hash: hash.to_string(),
                loaded,
            });
        }
        Ok(self.function(hash))
    }

    /// Loads a component (compiling it off the async threads); returns its hash.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<String, NodeError> {
        let runtime = self.worker.runtime().clone();
        let function = tokio::task::spawn_blocking(move || runtime.load(&bytes)).await??;
        let hash = function.hash().to_string();
        turnpike_wire::lock(&self.functions).insert(hash.clone(), function);
        Ok(hash)
    }
}

impl NodeService {
    /// Runs one invocation placed here, in its span (the invocation's id, class and this
    /// worker), within `worker_in_flight_invocations_max`.
    async fn run_one(self, inv: Invocation) -> Outcome {
        let span = tracing::info_span!(
            "invocation",
            invocation = inv.id,
            class = inv.class.0,
            worker = %self.label,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            faas.invocation_id = tracing::field::Empty,
            faas.coldstart = tracing::field::Empty,
            turnpike.queued_ms = tracing::field::Empty,
            turnpike.parks = tracing::field::Empty,
            turnpike.parked_ms = tracing::field::Empty,
            turnpike.swap_outs = tracing::field::Empty,
            turnpike.swapped_ms = tracing::field::Empty,
        );
        if telemetry::enabled() {
            // The shard's span is its parent.
            telemetry::set_parent(&span, inv.traceparent.as_deref());
            span.record("otel.name", "worker");
            span.record("otel.kind", "server");
            span.record("faas.invocation_id", inv.id.to_string());
            let cold = turnpike_wire::lock(&self.invoked).insert(inv.function.clone());
            span.record("faas.coldstart", cold);
        }
        let in_flight = self.in_flight.clone();
        let label = self.label.clone();
        in_flight
            .run(&label, self.run_admitted(inv))
            .instrument(span)
            .await
    }

    async fn run_admitted(self, inv: Invocation) -> Outcome {
        let function = match self.function_or_fetch(&inv.function).await {
            Ok(Some(function)) => function,
            Ok(None) => {
                return Outcome::failure(
                    FailureKind::UnknownFunction,
                    format!("function {} is not loaded on this worker", inv.function),
                )
            }
            Err(e) => {
                let message = format!("loading function {} from the store: {e}", inv.function);
                tracing::warn!("{message}");
                return Outcome::failure(FailureKind::Unavailable, message);
            }
        };
        let class = match known_class(u32::from(inv.class.0), &self.worker.config().classes) {
            Ok(class) => class,
            Err(e) => return Outcome::from(turnpike_wire::invocation::Failure::from(e)),
        };
        let upload = inv.request_body.as_ref().and_then(|body| body.take());
        if inv.request_body.is_some() && upload.is_none() {
            return Outcome::failure(
                FailureKind::Unavailable,
                "its streamed request body went to an earlier placement; it cannot run again",
            );
        }
        let mut request = inv.request;
        let mut options = InvokeOptions::class(class)
            .depth(inv.depth)
            .start_mb(inv.start_mb);
        if telemetry::enabled() {
            // The guest sees this span's context, and its calls carry it.
            if let Some(traceparent) = telemetry::traceparent(&tracing::Span::current()) {
                if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                    request.headers.insert(telemetry::TRACEPARENT, value);
                }
                options = options.traceparent(traceparent.into());
            }
        }
        let request = convert::to_worker_request(request, upload);
        if let Some(token) = inv.call_token {
            options = options.call_token(token.into());
        }
        if let Some(respond) = inv.respond {
            options = options.stream_to(Arc::new(convert::Streamed(respond)));
        }
        if let Some(bytes) = inv.response_bytes_max {
            options = options.response_bytes_max(bytes);
        }
        let mut running = self.worker.submit(&function, request, options);
        let outcome = tokio::select! {
            biased;
            outcome = &mut running => outcome,
            () = inv.cancel.cancelled() => {
                running.cancel();
                running.await
            }
        };
        self.latency.observe(class.index(), outcome.usage.wall);
        if telemetry::enabled() {
            let usage = &outcome.usage;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let span = tracing::Span::current();
            span.record("turnpike.queued_ms", ms(usage.queued));
            span.record("turnpike.parks", usage.parks);
            // After its first slot, time without one: preempted, or waiting on its own I/O.
            let off_core = usage.wall.saturating_sub(usage.on_core + usage.queued);
            span.record("turnpike.parked_ms", ms(off_core));
            span.record("turnpike.swap_outs", usage.swap.swap_outs);
            span.record("turnpike.swapped_ms", ms(usage.swap.swap_in_time));
        }
        if let Err(e) = &outcome.result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            // The guest's failure is the function's owner's to see (in the response); the
            // platform's own are worth an operator's look.
            match e {
                InvokeError::Killed => tracing::info!("killed to free memory"),
                InvokeError::Cancelled => {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("cancelled");
                }
                InvokeError::Shutdown => tracing::warn!("the worker is shutting down"),
                e => tracing::debug!("the invocation failed: {e}"),
            }
        }
        convert::from_worker_outcome(outcome)
    }
}

#[tonic::async_trait]
impl proto::worker_server::Worker for NodeService {
    type RunStream = link::OutcomeStream;

    async fn run(
        &self,
        request: Request<Streaming<proto::InvocationFrame>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let worker = self.worker.clone();
        let report = link::reporter(move || worker.poll_replies());
        link::serve_reporting(request, self.handler(), Some(report))
    }

    async fn load(
        &self,
        request: Request<proto::Component>,
    ) -> Result<Response<proto::Loaded>, Status> {
        let bytes = request.into_inner().bytes;
        match NodeService::load(self, bytes).await {
            Ok(hash) => Ok(Response::new(proto::Loaded { hash })),
            Err(reason) => Err(Status::invalid_argument(reason.to_string())),
        }
    }

    async fn metrics(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::RoleMetrics>, Status> {
        Ok(Response::new(turnpike_wire::convert::worker_metrics_reply(
            LocalWorker::metrics_text(self),
        )))
    }

    async fn poll(
        &self,
        request: Request<proto::PollRequest>,
    ) -> Result<Response<proto::PollReply>, Status> {
        let class = known_class(request.into_inner().class, &self.worker.config().classes)
            .map_err(CallError::from)?;
        let reply = LocalWorker::poll(self, class)?;
        Ok(Response::new(reply.into()))
    }
}

impl LocalWorker for NodeService {
    fn handler(&self) -> link::Handler {
        link::handler(self.clone(), Self::run_one)
    }

    fn metrics_text(&self) -> String {
        NodeService::metrics(self)
    }

    fn poll(&self, class: ClassId) -> Result<PollReply, CallError> {
        let class = known_class(u32::from(class.0), &self.worker.config().classes)?;
        Ok(self.worker.poll_reply(class))
    }
}

/// What a worker's dispatcher needs to know about its machine: a real [`Worker`], or an
/// emulated one ([`crate::emulated`]).
pub trait NodeLoad: Send + Sync + 'static {
    /// Memory for guests, MB; `None`: unlimited (idleness is then an idle core alone; see
    /// `turnpike_policy::dispatcher`).
    fn capacity_mb(&self) -> Option<u64>;
    /// Whether the machine joins idle lists at all (a Hermod baseline's shards have none).
    fn joins_idle_lists(&self) -> bool {
        true
    }
    /// Cores no invocation holds or waits for.
    fn idle_cores(&self) -> u32;
    fn cores(&self) -> u32;
    fn used_mb(&self) -> u64;
    /// Invocations on the machine (running, parked, blocked, not started).
    fn functions(&self) -> u32;
    /// Returns when memory or the function count may have changed, or after `at_most`.
    fn changed(&self, at_most: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl NodeLoad for Worker {
    fn capacity_mb(&self) -> Option<u64> {
        self.config().memory_mb
    }

    fn cores(&self) -> u32 {
        self.config().cores
    }

    fn used_mb(&self) -> u64 {
        Worker::used_mb(self)
    }

    fn functions(&self) -> u32 {
        Worker::functions(self)
    }

    fn idle_cores(&self) -> u32 {
        Worker::idle_cores(self)
    }

    /// The worker's memory moves as guests grow, without an event: look every tick.
    fn changed(&self, at_most: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(at_most.min(DISPATCH_TICK)))
    }
}

/// How a worker's dispatcher runs.
#[derive(Clone, Copy, Debug)]
pub struct DispatchConfig {
    /// The idle-list rules (the policy core's).
    pub idle_list: DispatcherConfig,
    /// How often it registers with every shard again. It registers at once when it starts,
    /// the second time after a random fraction of this (so workers started together do not
    /// register in step), and every [`UNREGISTERED_RETRY`] while no shard has answered.
    pub register_every: Duration,
    /// Seeds its random choices.
    pub seed: u64,
}

impl DispatchConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            idle_list: DispatcherConfig::default(),
            register_every: REGISTER_EVERY,
            seed,
        }
    }
}

/// Keeps a worker registered with every shard and on at most one idle list. Runs until the
/// task is dropped. Shards in `directory` are called in process.
pub async fn dispatch(
    node: Arc<dyn NodeLoad>,
    address: SocketAddr,
    shards: Vec<SocketAddr>,
    options: DispatchConfig,
    directory: Directory,
) {
    let (config, register_every) = (options.idle_list, options.register_every);
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(options.seed);
    if !node.joins_idle_lists() {
        // Shards find the worker by polling only.
        return register_forever(node.cores(), address, shards, register_every, directory).await;
    }
    let memory_mb = node.capacity_mb();
    // Unlimited memory is never short: the dispatcher's fractions of `u64::MAX`.
    let capacity_mb = memory_mb.unwrap_or(u64::MAX);
    let clients: Vec<ShardPeer> = shards.iter().map(|&a| directory.shard(a)).collect();
    let info = Registration {
        address: format!("http://{address}"),
        memory_mb: memory_mb.unwrap_or(0),
        cores: node.cores(),
        lease: register_every * LEASE_PERIODS,
        // Not from the seeded generator: a restarted worker must differ from its predecessor.
        incarnation: rand::random(),
    };
    let mut ids: Vec<Option<Registered>> = vec![None; clients.len()];
    let mut dispatcher = Dispatcher::new(config);
    // The first registration is immediate, the second after a random fraction of the
    // period, then one per period; while no shard answers, one per UNREGISTERED_RETRY.
    let mut last_register: Option<Instant> = None;
    let mut period = register_every.mul_f64(rng.random_range(0.0..1.0));
    let refresh_every = register_every / REFRESHES_PER_REGISTRATION;
    let mut last_refresh = Instant::now();
    loop {
        let due = registration_due(&ids, period);
        if last_register.is_none_or(|t| t.elapsed() >= due) {
            if last_register.is_some() {
                period = register_every;
            }
            last_register = Some(Instant::now());
            let replies = register_with_all(&clients, &info, register_every).await;
            for (s, reply) in replies.into_iter().enumerate() {
                if let Some(reply) = reply {
                    if reply.fresh && dispatcher.member_of() == Some(ShardId(s as u32)) {
                        // The shard restarted and lost its idle list: join again.
                        dispatcher.handle_shard_lost();
                    }
                }
                ids[s] = reply;
            }
        }
        let entry = IdleEntry {
            free_mb: capacity_mb.saturating_sub(node.used_mb()),
            functions: node.functions(),
            idle_cores: node.idle_cores(),
        };
        dispatcher.handle_load(entry, capacity_mb, clients.len() as u32, &mut rng);
        carry_out(&mut dispatcher, &clients, &mut ids).await;
        if last_refresh.elapsed() >= refresh_every {
            last_refresh = Instant::now();
            dispatcher.handle_refresh(&mut rng);
            carry_out(&mut dispatcher, &clients, &mut ids).await;
        }
        // Until the next registration or refresh is due, or something changed on the machine.
        let due = registration_due(&ids, period);
        let since = last_register.map_or(Duration::ZERO, |t| t.elapsed());
        let refresh_in = refresh_every.saturating_sub(last_refresh.elapsed());
        node.changed(due.saturating_sub(since).min(refresh_in))
            .await;
    }
}

/// Carries out the dispatcher's outputs: asks the sampled shards for their idle lists'
/// lengths, sends its reports (a shard not registered with, or not answering, or refusing:
/// the dispatcher is told, and the worker registers with it again at the next period).
async fn carry_out(
    dispatcher: &mut Dispatcher,
    clients: &[ShardPeer],
    ids: &mut [Option<Registered>],
) {
    while let Some(output) = dispatcher.poll_output() {
        match output {
            // Only the sampled shards are asked; one not registered with, or not
            // answering, counts as longest.
            DispatcherOutput::AskLengths(sampled) => {
                let mut lengths = Vec::with_capacity(sampled.len());
                for shard in sampled {
                    let s = shard.0 as usize;
                    let len = match ids[s] {
                        Some(_) => clients[s].idle_len().await.ok(),
                        None => None,
                    };
                    lengths
                        .push(len.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)));
                }
                dispatcher.handle_lengths(&lengths);
            }
            DispatcherOutput::Send { action, seq } => {
                let (shard, entry) = match action {
                    IdleListAction::Join { shard, entry }
                    | IdleListAction::Update { shard, entry } => (shard, Some(entry)),
                    IdleListAction::Leave { shard } => (shard, None),
                };
                let s = shard.0 as usize;
                let sent = match ids[s] {
                    Some(registered) => {
                        let report = IdleReport {
                            worker: registered.worker,
                            token: registered.token,
                            seq,
                            entry,
                        };
                        clients[s].idle_report(report).await.is_ok()
                    }
                    None => false,
                };
                if !sent {
                    dispatcher.handle_send_failed(action);
                    ids[s] = None;
                }
            }
        }
    }
}

/// How long after the last registration the next is due: `period`, or sooner while no shard
/// has answered (`ids`: the worker's id at each shard, if registered).
fn registration_due(ids: &[Option<Registered>], period: Duration) -> Duration {
    if ids.iter().all(Option::is_none) {
        UNREGISTERED_RETRY.min(period)
    } else {
        period
    }
}

/// Registers `info` with every shard at once, each given at most `within` to answer (one
/// shard that does not answer must not hold up the others' renewals): each shard's answer,
/// or `None`.
async fn register_with_all(
    clients: &[ShardPeer],
    info: &Registration,
    within: Duration,
) -> Vec<Option<Registered>> {
    let mut calls = tokio::task::JoinSet::new();
    for (s, client) in clients.iter().enumerate() {
        let (client, info) = (client.clone(), info.clone());
        calls.spawn(async move {
            let reply = tokio::time::timeout(within, client.register(info)).await;
            (s, reply.ok().and_then(Result::ok))
        });
    }
    let mut replies = vec![None; clients.len()];
    while let Some(joined) = calls.join_next().await {
        if let Ok((s, reply)) = joined {
            replies[s] = reply;
        }
    }
    replies
}

async fn register_forever(
    cores: u32,
    address: SocketAddr,
    shards: Vec<SocketAddr>,
    register_every: Duration,
    directory: Directory,
) {
    let info = Registration {
        address: format!("http://{address}"),
        memory_mb: 0,
        cores,
        lease: register_every * LEASE_PERIODS,
        incarnation: rand::random(),
    };
    let clients: Vec<_> = shards.iter().map(|&a| directory.shard(a)).collect();
    loop {
        register_with_all(&clients, &info, register_every).await;
        tokio::time::sleep(register_every).await;
    }
}

/// A worker node: what `turnpike worker` runs, and each worker of `turnpike up`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// Where shards reach this worker: what it registers. `None`: the bound address, or, when
    /// `listen` is an unspecified address (`0.0.0.0`, `::`), this host's address on its route
    /// to the first shard ([`advertised_address`]). A port 0 stands for the bound port.
    pub advertise: Option<SocketAddr>,
    pub shards: Vec<SocketAddr>,
    /// Compiled components go to `cache/` inside, swap files to `swap/` (created if missing;
    /// several nodes may share one data directory).
    pub data_dir: PathBuf,
    pub cores: u32,
    pub memory_mb: u64,
    pub classes: ClassSet,
    /// Where guests' calls to other functions go: the gateway (each call carries its
    /// invocation's token, see `turnpike_wire::chain`). `None`: such calls are denied.
    pub gateway: Option<SocketAddr>,
    /// Seed of the dispatcher's random choices.
    pub seed: u64,
    /// Where functions not loaded at start come from (deployed through the API).
    pub store: Option<Store>,
    /// `worker_in_flight_invocations_max`: invocations accepted at once; one more is refused
    /// (default [`WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT`]).
    pub in_flight_invocations_max: u64,
    /// Roles of this process: the node adds itself, and calls the shards found there without
    /// RPC (see `turnpike_wire::directory`). Empty in a process of its own.
    pub directory: Directory,
    /// Which threads run the guests: the worker's own, or (in a process of its own, whose
    /// runtime `turnpike_worker::slot_runtime` built) the process's, so that an invocation
    /// goes from its link to its slot without changing threads.
    pub slot_threads: SlotThreads,
}

/// The address a worker bound to `bound` registers with its shards: `advertise` if given (its
/// port 0 standing for the bound port); else `bound`, unless that is an unspecified address
/// (`0.0.0.0`, `::`: every interface), which no peer can dial. Then it is the local address
/// this host would use to reach the first shard (a UDP socket's route lookup; nothing is
/// sent): the interface facing the shards, so the default works across hosts as on one.
/// Without shards, or without a route, the loopback address.
pub fn advertised_address(
    bound: SocketAddr,
    advertise: Option<SocketAddr>,
    shards: &[SocketAddr],
) -> SocketAddr {
    if let Some(mut advertise) = advertise {
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        return advertise;
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let route_to = |shard: &SocketAddr| {
        let any = SocketAddr::new(bound.ip(), 0);
        let socket = std::net::UdpSocket::bind(any).ok()?;
        socket.connect(shard).ok()?;
        socket.local_addr().ok().map(|local| local.ip())
    };
    let ip = shards
        .first()
        .and_then(route_to)
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(if bound.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    SocketAddr::new(ip, bound.port())
}

/// A started node. Its tasks run until `shutdown` (the server) or until aborted (both).
#[derive(Debug)]
pub struct RunningNode {
    pub address: SocketAddr,
    pub service: NodeService,
    /// Content hashes of the components loaded at start, in order.
    pub loaded: Vec<String>,
    pub server: tokio::task::JoinHandle<()>,
    pub dispatcher: tokio::task::JoinHandle<()>,
}

/// Starts a worker node: runtime, worker, `components` loaded (`(label for errors, bytes)`),
/// then the RPC server and the dispatcher, which registers it with the shards - so no shard
/// places an invocation here before its functions are loaded.
pub async fn start_node(
    config: NodeConfig,
    components: &[(String, Vec<u8>)],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningNode, NodeError> {
    let cache_dir = config.data_dir.join("cache");
    let swap_dir = config.data_dir.join("swap");
    for dir in [&cache_dir, &swap_dir] {
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let runtime = Runtime::new(RuntimeConfig::new(cache_dir))?;
    let platform = config
        .gateway
        .map(|gateway| GatewayLink::new(gateway) as Arc<dyn Platform>);
    let worker = Arc::new(Worker::new(
        Arc::new(runtime),
        WorkerConfig {
            cores: config.cores,
            classes: config.classes,
            memory_mb: Some(config.memory_mb),
            swap_dir,
            platform,
            slot_threads: config.slot_threads,
            ..WorkerConfig::default()
        },
    )?);
    let listen_error = |source| NodeError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let address = advertised_address(bound, config.advertise, &config.shards);
    let service = NodeService::new(worker.clone(), config.store)
        .labelled(address.to_string())
        .in_flight_max(config.in_flight_invocations_max);
    let mut loaded = Vec::new();
    for (label, bytes) in components {
        let hash = service
            .load(bytes.clone())
            .await
            .map_err(|e| NodeError::Component {
                label: label.clone(),
                source: Box::new(e),
            })?;
        loaded.push(hash);
    }
    let router = rpc::server().add_service(service.clone().into_server());
    let server = rpc::spawn_server(router, listener, shutdown, format!("worker {address}"));
    // In the directory before the dispatcher registers it, so in-process shards find it.
    config
        .directory
        .add_worker(address, Arc::new(service.clone()));
    let dispatcher = tokio::spawn(dispatch(
        worker as Arc<dyn NodeLoad>,
        address,
        config.shards,
        DispatchConfig::new(config.seed),
        config.directory,
    ));
    Ok(RunningNode {
        address,
        service,
        loaded,
        server,
        dispatcher,
    })
}

#[cfg(test)]
mod tests {
    use super::advertised_address;
    use std::net::SocketAddr;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_worker_advertises_what_it_is_told_or_where_it_listens() {
        let shards = [addr("127.0.0.1:7000")];
        // Given: as is, or with the bound port for port 0.
        let given = Some(addr("10.0.0.2:9000"));
        assert_eq!(
            advertised_address(addr("0.0.0.0:7001"), given, &shards),
            addr("10.0.0.2:9000")
        );
        let given = Some(addr("10.0.0.2:0"));
        assert_eq!(
            advertised_address(addr("0.0.0.0:7001"), given, &shards),
            addr("10.0.0.2:7001")
        );
        // A specific listen address is dialable as it is.
        assert_eq!(
            advertised_address(addr("127.0.0.7:7001"), None, &shards),
            addr("127.0.0.7:7001")
        );
    }

    #[test]
    fn a_worker_on_every_interface_advertises_its_address_toward_the_shards() {
        // The route to a loopback shard leaves from loopback: never 0.0.0.0.
        let shards = [addr("127.0.0.1:7000")];
        assert_eq!(
            advertised_address(addr("0.0.0.0:7001"), None, &shards),
            addr("127.0.0.1:7001")
        );
        assert_eq!(
            advertised_address(addr("[::]:7001"), None, &[addr("[::1]:7000")]),
            addr("[::1]:7001")
        );
        // No shard to route toward: loopback rather than an address nobody can dial.
        assert_eq!(
            advertised_address(addr("0.0.0.0:7001"), None, &[]),
            addr("127.0.0.1:7001")
        );
    }
}
