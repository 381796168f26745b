//! Emulated workers: the `Worker` service without WebAssembly, so one machine can host a
//! thousand of them and drive the real gateway and shards at cluster scale (issue 4,
//! "Emulated workers for scale").
//!
//! An emulated invocation takes its runtime and memory from its request's query:
//! `?ms=N` milliseconds of CPU (default 0, at most a day) and `mb=M` of memory (default: the
//! invocation's start memory; at most the worker's memory and swap), which it holds from the
//! time it first runs. Each emulated worker schedules them with a machine policy over its core
//! slots, on virtual execution driven by timers (tokio's: millisecond resolution):
//!
//! - [`MachinePolicy::Turnpike`]: the policy core's [`Machine`] (preemptive priority by class,
//!   memory ledger, swap and kill decisions), exactly as a real worker runs it: a preempted
//!   invocation stops consuming its runtime until resumed; a swap costs nothing; a kill
//!   answers `KILLED` so the shard places it again.
//! - [`MachinePolicy::Hermod`]: the Hermod baseline's processor sharing ([`PsMachine`]), for
//!   comparing policies on the same gateway, shards and RPCs. Like the paper's Hermod runs,
//!   it models no memory (it reports none used, and all of it free).
//!
//! Functions need not be loaded: any function hash runs. The answer is `200` with
//! `emulated ms=N mb=M`. Usage reports CPU (the runtime it consumed), wall time, and memory
//! as the billing rule counts it for a real worker: its `mb` over the time it ran (MB-seconds
//! = mb x CPU seconds; time parked or queued is not billed). A cancelled invocation
//! (`Cancellation`) ends at once under the Turnpike machine, with the runtime it consumed as
//! its CPU; Hermod's processor sharing models no cancellation and runs it to its end.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
// Tokio's clock, so tests can run the emulation on paused time.
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use turnpike_policy::baseline::hermod::PsMachine;
use turnpike_policy::machine::{Machine, MachineAction, MachineConfig};
use turnpike_policy::memory::MemoryConfig;
use turnpike_policy::placement::PollReply;
use turnpike_policy::{ClassId, ClassSet, InvocationId, MachineId};
use turnpike_wire::convert;
use turnpike_wire::directory::{Directory, LocalWorker};
use turnpike_wire::invocation::{
    self, known_class, CallError, Cancellation, Failure, FailureKind, Invocation, Outcome, Usage,
};
use turnpike_wire::link;
use turnpike_wire::proto;
use turnpike_wire::proto::worker_server::WorkerServer;
use turnpike_wire::rpc;

use crate::in_flight::InFlight;
use crate::node::{self, DispatchConfig, NodeLoad};

/// How an emulated worker schedules its invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachinePolicy {
    /// The policy core's preemptive priority machine scheduler.
    Turnpike,
    /// Hermod's processor sharing (the baseline).
    Hermod,
}

#[derive(Clone, Debug)]
pub struct EmulatedConfig {
    pub cores: u32,
    pub memory_mb: u64,
    pub swap_mb: u64,
    pub classes: ClassSet,
    pub policy: MachinePolicy,
    /// `worker_in_flight_invocations_max`, as for a real worker: one more invocation is
    /// answered `FailureKind::Overloaded` at once.
    pub in_flight_invocations_max: u64,
}

impl EmulatedConfig {
    pub fn new(classes: ClassSet) -> Self {
        Self {
            cores: 1,
            memory_mb: 1024,
            swap_mb: 8192,
            classes,
            policy: MachinePolicy::Turnpike,
            in_flight_invocations_max: node::WORKER_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT,
        }
    }
}

/// One emulated worker (cheap to clone: a handle).
#[derive(Clone, Debug)]
pub struct EmulatedWorker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EmulatedConfig,
    state: Mutex<State>,
    /// Woken when the function count or memory may have changed (the dispatcher waits on it).
    changed: Notify,
    epoch: Instant,
    /// Invocations accepted and not answered, within the configured bound.
    in_flight: InFlight,
}

#[derive(Debug)]
enum Sched {
    Priority(Box<Machine>),
    /// Processor sharing, and the version of its pending completion timer.
    Sharing(PsMachine, u64),
}

#[derive(Debug)]
struct State {
    sched: Sched,
    invocations: HashMap<InvocationId, Emulation>,
    next_id: u64,
    /// Invocations killed by the machine's memory decisions.
    kills: u64,
}

#[derive(Debug)]
struct Emulation {
    /// Its whole runtime.
    runtime: Duration,
    /// Runtime not yet consumed.
    remaining: Duration,
    mb: u64,
    /// When it last got a slot, while it holds one.
    running_since: Option<Instant>,
    /// Bumped at every start, resume and preemption: a timer set before is stale.
    generation: u64,
    done: Option<oneshot::Sender<Ending>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Done,
    Killed,
    /// Cancelled after running this long.
    Cancelled(Duration),
}

impl EmulatedWorker {
    pub fn new(config: EmulatedConfig) -> Self {
        let in_flight_max = config.in_flight_invocations_max;
        let sched = match config.policy {
            MachinePolicy::Turnpike => Sched::Priority(Box::new(Machine::new(
                MachineConfig {
                    cores: config.cores,
                    memory: Some(MemoryConfig::new(config.memory_mb, config.swap_mb)),
                },
                config.classes.len(),
            ))),
            MachinePolicy::Hermod => Sched::Sharing(PsMachine::new(config.cores), 0),
        };
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    sched,
                    invocations: HashMap::new(),
                    next_id: 1,
                    kills: 0,
                }),
                changed: Notify::new(),
                epoch: Instant::now(),
                in_flight: InFlight::new(in_flight_max),
            }),
        }
    }

    pub fn into_server(self) -> WorkerServer<Self> {
        WorkerServer::new(self)
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES)
    }

    /// Invocations killed to free memory so far.
    pub fn kills(&self) -> u64 {
        self.inner.lock().kills
    }

    /// Runs one emulated invocation to its end, or until `cancel` fires.
    async fn run(
        &self,
        class: ClassId,
        start_mb: u64,
        runtime: Duration,
        mb: u64,
        cancel: &Cancellation,
    ) -> Ending {
        let (done, ended) = oneshot::channel();
        let id = {
            let mut state = self.inner.lock();
            let id = InvocationId(state.next_id);
            state.next_id += 1;
            state.invocations.insert(
                id,
                Emulation {
                    runtime,
                    remaining: runtime,
                    mb,
                    running_since: None,
                    generation: 0,
                    done: Some(done),
                },
            );
            let now = Instant::now();
            match &mut state.sched {
                Sched::Priority(machine) => machine
                    .handle_arrival(id, class, start_mb)
                    .expect("invocation ids are fresh"),
                Sched::Sharing(ps, _) => {
                    let ns = self.inner.ns(now);
                    ps.handle_arrival(ns, id, duration_ns(runtime));
                }
            }
            self.inner.settle(&mut state, now);
            id
        };
        self.inner.changed.notify_one();
        let mut ended = std::pin::pin!(ended);
        let ending = tokio::select! {
            biased;
            ending = &mut ended => ending.unwrap_or(Ending::Killed),
            () = cancel.cancelled() => match self.inner.cancel(id) {
                Some(ending) => ending,
                // Processor sharing models no cancellation: it runs to its end.
                None => ended.await.unwrap_or(Ending::Killed),
            },
        };
        self.inner.changed.notify_one();
        ending
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        turnpike_wire::lock(&self.state)
    }

    fn ns(&self, at: Instant) -> u64 {
        duration_ns(at.saturating_duration_since(self.epoch))
    }

    /// Ends invocation `id` now, wherever it is (queued, running, parked): how long it ran.
    /// `None` under processor sharing, which models no cancellation, or if it has ended.
    fn cancel(self: &Arc<Self>, id: InvocationId) -> Option<Ending> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Sched::Priority(machine) = &mut state.sched else {
            return None;
        };
        let e = state.invocations.get(&id)?;
        let now = Instant::now();
        let ran_before = e.runtime.saturating_sub(e.remaining);
        let ran = ran_before + e.running_since.map_or(Duration::ZERO, |since| now - since);
        machine.handle_completion(id);
        state.invocations.remove(&id);
        self.settle(state, now);
        Some(Ending::Cancelled(ran))
    }

    /// Carries out the scheduler's decisions; sets the timers they need.
    fn settle(self: &Arc<Self>, state: &mut State, now: Instant) {
        match &mut state.sched {
            Sched::Priority(machine) => {
                while let Some(action) = machine.poll_action() {
                    match action {
                        MachineAction::Start(id) | MachineAction::Resume(id) => {
                            let Some(e) = state.invocations.get_mut(&id) else {
                                continue;
                            };
                            e.running_since = Some(now);
                            e.generation += 1;
                            let (generation, remaining, mb) = (e.generation, e.remaining, e.mb);
                            machine.handle_memory(id, mb);
                            self.timer(now + remaining, Timer::Finish { id, generation });
                        }
                        MachineAction::Preempt(id) => {
                            if let Some(e) = state.invocations.get_mut(&id) {
                                if let Some(since) = e.running_since.take() {
                                    e.remaining = e.remaining.saturating_sub(now - since);
                                }
                                e.generation += 1;
                            }
                        }
                        // Swapping is instantaneous here; the machine's ledger is the state.
                        MachineAction::SwapOut { .. } | MachineAction::SwapIn { .. } => {}
                        MachineAction::Kill(id) => {
                            machine.handle_completion(id);
                            state.kills += 1;
                            if let Some(mut e) = state.invocations.remove(&id) {
                                if let Some(done) = e.done.take() {
                                    let _ = done.send(Ending::Killed);
                                }
                            }
                        }
                    }
                }
            }
            Sched::Sharing(ps, version) => {
                let ns = self.ns(now);
                while let Some(id) = ps.poll_completion(ns) {
                    if let Some(mut e) = state.invocations.remove(&id) {
                        if let Some(done) = e.done.take() {
                            let _ = done.send(Ending::Done);
                        }
                    }
                }
                *version += 1;
                if let Some(at) = ps.next_completion_ns() {
                    let at = self.epoch + Duration::from_nanos(at);
                    self.timer(at, Timer::Share { version: *version });
                }
            }
        }
    }

    /// Fires `timer` at `at`, on its own task (the caller holds the state's lock). Tokio's
    /// timers have millisecond resolution, so a timer due now is not given to them: a
    /// zero-length invocation would otherwise take a millisecond.
    fn timer(self: &Arc<Self>, at: Instant, timer: Timer) {
        let inner = self.clone();
        tokio::spawn(async move {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            inner.fire(timer);
        });
    }

    fn fire(self: &Arc<Self>, timer: Timer) {
        let mut state = self.lock();
        // Read under the lock: an arrival that took the lock first must not be later than
        // `now` (processor sharing's clock only moves forward).
        let now = Instant::now();
        match timer {
            Timer::Finish { id, generation } => {
                let current = state
                    .invocations
                    .get(&id)
                    .is_some_and(|e| e.generation == generation && e.running_since.is_some());
                if !current {
                    return;
                }
                if let Some(mut e) = state.invocations.remove(&id) {
                    if let Some(done) = e.done.take() {
                        let _ = done.send(Ending::Done);
                    }
                }
                if let Sched::Priority(machine) = &mut state.sched {
                    machine.handle_completion(id);
                }
            }
            Timer::Share { version } => {
                if !matches!(state.sched, Sched::Sharing(_, v) if v == version) {
                    return;
                }
            }
        }
        self.settle(&mut state, now);
    }
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    /// A running invocation's runtime is used up (unless it was preempted since).
    Finish { id: InvocationId, generation: u64 },
    /// Processor sharing's next completion is due (unless the set changed since).
    Share { version: u64 },
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Longest emulated runtime, ms (a day).
const MAX_MS: u64 = 86_400_000;

/// Why an emulated invocation's `?ms=N&mb=M` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct BadEmulation(String);

/// `?ms=N&mb=M` of an emulated invocation's path; `mb` at most `max_mb`.
fn emulation_of(
    path_and_query: &str,
    start_mb: u64,
    max_mb: u64,
) -> Result<(Duration, u64), BadEmulation> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    let (mut ms, mut mb) = (0u64, start_mb);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match key {
            "ms" => &mut ms,
            "mb" => &mut mb,
            _ => continue,
        };
        *target = value.parse().map_err(|_| {
            BadEmulation(format!(
                "`{key}` must be a non-negative integer, got {value:?}"
            ))
        })?;
    }
    if ms > MAX_MS {
        return Err(BadEmulation(format!(
            "`ms` must be at most {MAX_MS} (a day), got {ms}"
        )));
    }
    if mb > max_mb {
        return Err(BadEmulation(format!(
            "`mb` must be at most {max_mb} (the worker's memory and swap), got {mb}"
        )));
    }
    Ok((Duration::from_millis(ms), mb))
}

impl EmulatedWorker {
    /// Emulates one invocation placed here, within `worker_in_flight_invocations_max`.
    async fn run_one(self, inv: Invocation) -> Outcome {
        let span = tracing::info_span!(
            "invocation",
            invocation = inv.id,
            class = inv.class.0,
            worker = "emulated",
        );
        let inner = self.inner.clone();
        inner
            .in_flight
            .run("emulated", self.run_admitted(inv))
            .instrument(span)
            .await
    }

    async fn run_admitted(self, inv: Invocation) -> Outcome {
        let config = &self.inner.config;
        let class = match known_class(u32::from(inv.class.0), &config.classes) {
            Ok(class) => class,
            Err(e) => return Outcome::from(Failure::from(e)),
        };
        let max_mb = config.memory_mb.saturating_add(config.swap_mb);
        let path = &inv.request.path_and_query;
        let (runtime, mb) = match emulation_of(path, inv.start_mb, max_mb) {
            Ok(e) => e,
            Err(e) => return Outcome::failure(FailureKind::BadRequest, e.0),
        };
        let started = Instant::now();
        let ending = self
            .run(class, inv.start_mb, runtime, mb, &inv.cancel)
            .await;
        let cpu = match ending {
            Ending::Cancelled(ran) => ran,
            Ending::Done | Ending::Killed => runtime,
        };
        let usage = Usage {
            cpu,
            wall: started.elapsed(),
            peak_memory_bytes: mb << 20,
            memory_mb_seconds: mb as f64 * cpu.as_secs_f64(),
            ..Usage::of_class(class)
        };
        // Cancelled before it first ran: it used nothing (an emulation that ran 0 ms is
        // indistinguishable, and costs nothing either way).
        let ran = !matches!(ending, Ending::Cancelled(ran) if ran.is_zero());
        let ending = match ending {
            Ending::Done => Ok(invocation::Response {
                status: http::StatusCode::OK,
                headers: http::HeaderMap::new(),
                body: format!("emulated ms={} mb={mb}\n", runtime.as_millis()).into(),
            }),
            Ending::Killed => Err(Failure::new(
                FailureKind::Killed,
                "killed to free memory (emulated)",
            )),
            Ending::Cancelled(_) => Err(Failure::new(
                FailureKind::Cancelled,
                "cancelled: its caller went away or its deadline passed (emulated)",
            )),
        };
        Outcome {
            ending,
            usage: ran.then_some(usage),
            worker: MachineId(0),
            attempts: 1,
        }
    }
}

#[tonic::async_trait]
impl proto::worker_server::Worker for EmulatedWorker {
    type RunStream = link::OutcomeStream;

    async fn run(
        &self,
        request: Request<Streaming<proto::InvocationFrame>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        // Load reports as a real worker sends them (`NodeService`).
        let worker = self.clone();
        let report = link::reporter(move || worker.poll_replies());
        link::serve_reporting(request, self.handler(), Some(report))
    }

    async fn load(
        &self,
        request: Request<proto::Component>,
    ) -> Result<Response<proto::Loaded>, Status> {
        // Nothing is compiled; the hash is what a real worker would answer.
        let bytes = request.into_inner().bytes;
        Ok(Response::new(proto::Loaded {
            hash: turnpike_worker::cache::sha256_hex(&bytes),
        }))
    }

    async fn metrics(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::RoleMetrics>, Status> {
        Ok(Response::new(convert::worker_metrics_reply(
            LocalWorker::metrics_text(self),
        )))
    }

    async fn poll(
        &self,
        request: Request<proto::PollRequest>,
    ) -> Result<Response<proto::PollReply>, Status> {
        let class = known_class(request.into_inner().class, &self.inner.config.classes)
            .map_err(CallError::from)?;
        let reply = LocalWorker::poll(self, class)?;
        Ok(Response::new(reply.into()))
    }
}

impl LocalWorker for EmulatedWorker {
    fn handler(&self) -> link::Handler {
        link::handler(self.clone(), Self::run_one)
    }

    /// An emulated worker keeps no metrics (it stands in for a machine in placement
    /// benchmarks): an empty exposition.
    fn metrics_text(&self) -> String {
        String::new()
    }

    fn poll(&self, class: ClassId) -> Result<PollReply, CallError> {
        let class = known_class(u32::from(class.0), &self.inner.config.classes)?;
        Ok(self.poll_reply(&self.inner.lock(), class))
    }
}

impl EmulatedWorker {
    /// What the machine in `state` answers a poll for `class`.
    fn poll_reply(&self, state: &State, class: ClassId) -> PollReply {
        match &state.sched {
            Sched::Priority(machine) => machine.poll_reply(turnpike_policy::MachineId(0), class),
            Sched::Sharing(ps, _) => PollReply {
                machine: turnpike_policy::MachineId(0),
                functions: ps.functions(),
                room_mb: self.inner.config.memory_mb,
                ahead: ps.functions(),
                cores: self.inner.config.cores,
            },
        }
    }

    /// Its poll reply for every class, by class index, in one look (its load report).
    fn poll_replies(&self) -> Vec<PollReply> {
        let state = self.inner.lock();
        (0..self.inner.config.classes.len())
            .map(|c| self.poll_reply(&state, ClassId(c as u8)))
            .collect()
    }
}

impl NodeLoad for EmulatedWorker {
    fn capacity_mb(&self) -> Option<u64> {
        Some(self.inner.config.memory_mb)
    }

    /// Hermod models no memory and its shards have no idle list: its workers only register.
    fn joins_idle_lists(&self) -> bool {
        self.inner.config.policy == MachinePolicy::Turnpike
    }

    fn idle_cores(&self) -> u32 {
        match &self.inner.lock().sched {
            Sched::Priority(machine) => machine.idle_cores(),
            Sched::Sharing(ps, _) => self.inner.config.cores.saturating_sub(ps.functions()),
        }
    }

    fn cores(&self) -> u32 {
        self.inner.config.cores
    }

    fn used_mb(&self) -> u64 {
        match &self.inner.lock().sched {
            Sched::Priority(machine) => machine.used_mb(),
            Sched::Sharing(..) => 0,
        }
    }

    fn functions(&self) -> u32 {
        match &self.inner.lock().sched {
            Sched::Priority(machine) => machine.functions(),
            Sched::Sharing(ps, _) => ps.functions(),
        }
    }

    fn changed(&self, at_most: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = tokio::time::timeout(at_most, self.inner.changed.notified()).await;
        })
    }
}

/// How often an emulated worker registers with every shard again: a thousand of them at the
/// real workers' 500 ms ([`node::REGISTER_EVERY`]) would be 2,000 RPCs per second per shard.
pub const EMULATED_REGISTER_EVERY: Duration = Duration::from_secs(5);

/// A set of emulated workers in this process, each with its own RPC server on a loopback
/// port chosen by the OS and its own dispatcher.
#[derive(Debug)]
pub struct EmulatedFleet {
    pub workers: Vec<(SocketAddr, EmulatedWorker)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EmulatedFleet {
    /// Starts `n` emulated workers registering with `shards`; they add themselves to
    /// `directory` and call the shards found there without RPC ([`crate::local`]).
    pub async fn start(
        n: usize,
        config: &EmulatedConfig,
        shards: &[SocketAddr],
        seed: u64,
        directory: &Directory,
    ) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(2 * n);
        for i in 0..n {
            let worker = EmulatedWorker::new(config.clone());
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let address = listener.local_addr()?;
            let router = rpc::server().add_service(worker.clone().into_server());
            tasks.push(rpc::spawn_server(
                router,
                listener,
                std::future::pending(),
                format!("emulated worker {address}"),
            ));
            directory.add_worker(address, Arc::new(worker.clone()));
            tasks.push(tokio::spawn(node::dispatch(
                Arc::new(worker.clone()),
                address,
                shards.to_vec(),
                DispatchConfig {
                    register_every: EMULATED_REGISTER_EVERY,
                    ..DispatchConfig::new(seed.wrapping_add(i as u64))
                },
                directory.clone(),
            )));
            workers.push((address, worker));
        }
        Ok(Self { workers, tasks })
    }
}

impl Drop for EmulatedFleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulation_comes_from_the_query() {
        assert_eq!(
            emulation_of("/x?ms=15&mb=64", 2, 100).unwrap(),
            (Duration::from_millis(15), 64)
        );
        assert_eq!(emulation_of("/x", 2, 100).unwrap(), (Duration::ZERO, 2));
        assert_eq!(
            emulation_of("/x?other=1&ms=3", 2, 100).unwrap(),
            (Duration::from_millis(3), 2)
        );
        assert!(emulation_of("/x?ms=-1", 2, 100)
            .unwrap_err()
            .0
            .contains("ms"));
        assert!(emulation_of("/x?mb=lots", 2, 100)
            .unwrap_err()
            .0
            .contains("mb"));
        // Values that would overflow the schedulers' arithmetic are refused.
        assert!(emulation_of("/x?ms=10000000000000", 2, 100)
            .unwrap_err()
            .0
            .contains("a day"));
        assert!(emulation_of("/x?mb=101", 2, 100)
            .unwrap_err()
            .0
            .contains("at most 100"));
        assert!(emulation_of("/x?mb=18446744073709551615", 2, 100).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn usage_bills_the_memory_held_while_running_not_while_parked() {
        let classes = ClassSet::default_four();
        let worker = EmulatedWorker::new(EmulatedConfig::new(classes.clone()));
        let invocation = |id, class, query: &str| {
            Invocation::new(
                id,
                "f",
                class,
                invocation::Request::get(format!("/?{query}")),
            )
        };
        let low = tokio::spawn(
            worker
                .clone()
                .run_one(invocation(1, ClassId(0), "ms=200&mb=64")),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A top-class invocation parks the low one for 100 ms (the worker has one slot).
        let high = worker
            .clone()
            .run_one(invocation(2, classes.top(), "ms=100&mb=8"))
            .await;
        let usage = high.usage.expect("usage");
        assert!(
            (usage.memory_mb_seconds - 8.0 * 0.1).abs() < 1e-9,
            "{usage:?}"
        );
        let low = low.await.expect("the low one ends");
        assert!(low.ending.is_ok(), "{:?}", low.ending);
        // 64 MB for its 200 ms of running: 12.8 MB-s, not 64 x its 300 ms of wall time.
        let usage = low.usage.expect("usage");
        assert_eq!(usage.cpu, Duration::from_millis(200));
        assert!(usage.wall >= Duration::from_millis(300), "{usage:?}");
        assert!((usage.memory_mb_seconds - 12.8).abs() < 1e-9, "{usage:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_class_preempts_and_the_preempted_one_finishes_later() {
        let classes = ClassSet::default_four();
        let worker = EmulatedWorker::new(EmulatedConfig::new(classes.clone()));
        let start = tokio::time::Instant::now();
        let low = {
            let w = worker.clone();
            tokio::spawn(async move {
                let e = w
                    .run(
                        ClassId(0),
                        2,
                        Duration::from_millis(100),
                        2,
                        &Cancellation::new(),
                    )
                    .await;
                (e, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let high = worker
            .run(
                classes.top(),
                2,
                Duration::from_millis(50),
                2,
                &Cancellation::new(),
            )
            .await;
        assert_eq!(high, Ending::Done);
        let high_at = start.elapsed();
        let (low_ending, low_at) = low.await.unwrap();
        assert_eq!(low_ending, Ending::Done);
        // The high one ran at once (10 + 50 ms); the low one's 100 ms were cut by 50.
        assert!(
            high_at >= Duration::from_millis(60) && high_at < Duration::from_millis(62),
            "{high_at:?}"
        );
        assert!(
            low_at >= Duration::from_millis(150) && low_at < Duration::from_millis(152),
            "{low_at:?}"
        );
        assert_eq!(worker.functions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_parked_invocation_ends_at_once_with_the_runtime_it_consumed() {
        let classes = ClassSet::default_four();
        let worker = EmulatedWorker::new(EmulatedConfig::new(classes.clone()));
        let cancel = Cancellation::new();
        let low = {
            let (w, cancel) = (worker.clone(), cancel.clone());
            tokio::spawn(async move {
                w.run(ClassId(0), 2, Duration::from_millis(100), 2, &cancel)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let high = {
            let w = worker.clone();
            let top = classes.top();
            tokio::spawn(async move {
                w.run(top, 2, Duration::from_millis(50), 2, &Cancellation::new())
                    .await
            })
        };
        // 20 ms into the top class's run: the low one is parked after its first 10 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        let low = low.await.unwrap();
        assert_eq!(low, Ending::Cancelled(Duration::from_millis(10)));
        assert_eq!(high.await.unwrap(), Ending::Done);
        assert_eq!(worker.functions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn processor_sharing_slows_both() {
        let classes = ClassSet::default_four();
        let mut config = EmulatedConfig::new(classes.clone());
        config.policy = MachinePolicy::Hermod;
        let worker = EmulatedWorker::new(config);
        let start = tokio::time::Instant::now();
        let a = {
            let w = worker.clone();
            tokio::spawn(async move {
                w.run(
                    ClassId(0),
                    2,
                    Duration::from_millis(100),
                    2,
                    &Cancellation::new(),
                )
                .await;
                start.elapsed()
            })
        };
        let b = worker
            .run(
                classes.top(),
                2,
                Duration::from_millis(100),
                2,
                &Cancellation::new(),
            )
            .await;
        assert_eq!(b, Ending::Done);
        let a_at = a.await.unwrap();
        // Two sharing one core: both finish at ~200 ms, whatever their classes.
        let b_at = start.elapsed();
        for at in [a_at, b_at] {
            assert!(
                at >= Duration::from_millis(199) && at < Duration::from_millis(203),
                "{at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_pressure_kills_the_lowest_class_when_swap_is_full() {
        let classes = ClassSet::default_four();
        let mut config = EmulatedConfig::new(classes.clone());
        config.memory_mb = 100;
        config.swap_mb = 0;
        let worker = EmulatedWorker::new(config);
        let low = {
            let w = worker.clone();
            tokio::spawn(async move {
                w.run(
                    ClassId(0),
                    2,
                    Duration::from_millis(100),
                    80,
                    &Cancellation::new(),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let high = worker
            .run(
                classes.top(),
                2,
                Duration::from_millis(10),
                80,
                &Cancellation::new(),
            )
            .await;
        assert_eq!(high, Ending::Done);
        assert_eq!(low.await.unwrap(), Ending::Killed);
        assert_eq!(worker.kills(), 1);
    }
}
