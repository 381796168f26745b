//! A scheduler shard as a service: the policy core's [`Shard`] (per-class multi-queue, idle
//! list, power-of-k) fed by invocations on gateways' links and idle-list RPCs from workers, with
//! one placement loop that asks real workers for their load and sends each placed invocation
//! to its worker.
//!
//! Data path: the invocation's payload travels through the shard (gateway -> shard -> worker
//! and back), one message each way per hop on long-lived streams ([`turnpike_wire::link`]), rather
//! than the shard answering with a placement and the gateway calling the worker. It keeps
//! the gateway simple and lets the shard retry on another worker without the gateway's help;
//! the extra hop's cost is measured in the control-plane benchmark. Workers of the shard's
//! own process (`turnpike up`) are polled and called directly instead ([`turnpike_wire::directory`]).
//!
//! Load reports: a worker puts its load report (what it would answer a poll, for every class)
//! on each outcome it sends back on its link ([`turnpike_wire::link::LoadReport`]). A
//! power-of-k decision takes a sampled worker's reply from its report, plus what this shard
//! has sent it since (each one more function, one more ahead of its class and lower ones, its
//! start memory less room), when the report is at most [`ShardConfig::report_fresh_for`] old;
//! only the others are polled. Under load, when outcomes flow, a decision then waits for no
//! round trip, and one shard places as fast as it decides. The price: a report does not show
//! what other shards placed there since it left the worker (a poll sent at the same moment
//! would not either, by the time its answer arrived), nor what this shard sent that had not
//! reached the worker when the report left it. A worker with no outcome within that time
//! (idle, or running long invocations) is polled as the paper's design says. Workers in this
//! process are always polled (a call, no round trip).
//!
//! Faults: a worker whose link fails at the transport level, whose polls go unanswered for
//! [`WORKER_SILENT_LOST_AFTER`], or whose registration's lease passes without a renewal (2 s
//! for a real worker: `turnpike_node::LEASE_PERIODS` of its 500 ms registrations; checked
//! every [`LEASE_CHECK_EVERY`]) is marked lost (left out of polling and removed from the idle
//! list until it registers again, and what it was running is placed again at once). So a
//! worker that dies, is cut off or moves to another address is marked lost within its lease
//! plus [`LEASE_CHECK_EVERY`] (and a poll's timeout, 250 ms, if the placement loop is waiting
//! on one), whether or not anything is sent to it: 2.35 s by default. An invocation killed to
//! free memory is placed again the same way as one whose worker was lost, both by
//! the policy core's one rule (`AfterReturn`: up to [`ShardConfig::requeue_max`] times, then
//! it fails) - unless its streamed response had started reaching the caller, or its streamed
//! request body went to the lost placement, which fails it instead (a second run would answer
//! twice, or have no body). Every accepted invocation is answered.
//!
//! Bounds: at most [`ShardConfig::queue_invocations_max`] invocations wait for placement
//! (`shard_queue_invocations_max`); more are refused at once with `FailureKind::Overloaded`.
//! The link to each worker carries only placed invocations, so it is bounded by what the
//! workers accept (`worker_in_flight_invocations_max`).
//!
//! Concurrency limits: an invocation that carries limits (`Invocation::concurrency_limits`)
//! first passes this shard's [`Gate`] (`turnpike_policy::concurrency`): while one of its keys
//! is at its limit it waits there, by class, and counts against
//! `shard_queue_invocations_max`; cancelled (its caller gone, its deadline passed) it leaves
//! unbilled. It holds its slots until its outcome is answered, across placements again. The
//! gateway sends every limited invocation of a key to the key's home shard, so this gate sees
//! them all.
//!
//! Logs: each invocation's events are in a span with its id (the gateway's), class and this
//! shard's id; a lost worker and a give-up are logged at `warn`, a placement again at
//! `info`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use turnpike_policy::concurrency::{Entry, Gate, GateId, Limit};
use turnpike_policy::placement::{PlacementRule, PollReply};
use turnpike_policy::shard::{
    self as policy, AfterReturn, Pending, Shard, ShardDecision, ShardStep, Via,
    REQUEUE_MAX_DEFAULT, TOP_CLASS_DEFERS_MAX_DEFAULT,
};
use turnpike_policy::{ClassId, ClassSet, InvocationId, MachineId};
use turnpike_wire::convert;
use turnpike_wire::directory::{Directory, LocalFuture, LocalShard, LocalWorker};
use turnpike_wire::invocation::{
    CallError, FailureKind, IdleReport, Invocation, Outcome, Registered, Registration,
};
use turnpike_wire::link::{self, Link};
use turnpike_wire::metrics::{self, ClassHistograms};
use turnpike_wire::proto;
use turnpike_wire::proto::shard_server::ShardServer;
use turnpike_wire::proto::worker_client::WorkerClient;
use turnpike_wire::rpc;
use turnpike_wire::telemetry;

/// Default of [`ShardConfig::queue_invocations_max`].
pub const SHARD_QUEUE_INVOCATIONS_MAX_DEFAULT: usize = 100_000;
/// Default of [`ShardConfig::report_fresh_for`]: a couple of loopback round trips on a busy
/// machine, so a report this old is about as fresh as a poll's answer would be when it
/// arrived. 2 ms measured the same hello throughput but let the top class collide more often
/// on 2-core workers under overload (`scale` part 3 over loopback gRPC: critical p99 slowdown
/// 1.62-1.65 against 1.43-1.47 with polls alone; 1.47 at 500 us): a report misses what other
/// shards placed since it left.
pub const REPORT_FRESH_FOR: Duration = Duration::from_micros(500);
/// The placement loop lets the other tasks on its thread run once every this many turns,
/// whether or not it waited on anything between them: decisions answered from load reports
/// wait on nothing, and a long queue would otherwise hold the thread.
const DECISIONS_BEFORE_YIELD: u32 = 64;
/// A poll that takes longer than this counts as no answer (default of
/// [`ShardConfig::poll_timeout`]).
pub const POLL_TIMEOUT: Duration = Duration::from_millis(250);
/// Once one sampled worker has answered, a decision waits for the others at most as long
/// again as that first answer took, and at least this: a slow or silent worker holds up a
/// decision by at most that, not by [`POLL_TIMEOUT`]. Its poll goes on without the decision,
/// and its answer (or its silence) still counts towards [`WORKER_SILENT_LOST_AFTER`].
pub const POLL_GRACE_MIN: Duration = Duration::from_millis(1);
/// A worker whose polls have gone unanswered (timed out or failed) for this long, with no
/// answer between, is marked lost: it is polled no more and leaves the idle list until it
/// registers again (a live worker's dispatcher registers every 500 ms, so a worker that was
/// only slow comes back at once). With [`POLL_TIMEOUT`], a worker that stops answering is
/// found lost at the first poll that fails at least this long after the first unanswered one:
/// within 2 s of its falling silent plus the gap between its samples.
pub const WORKER_SILENT_LOST_AFTER: Duration = Duration::from_secs(2);
/// A slot of a worker lost this long may be given to a worker registering from another
/// address (so a cluster whose workers come and go on new addresses keeps as many slots as
/// it has workers, plus those lost in the last minute). Its old idle-list reports are refused
/// by their token.
pub const SLOT_REUSE_AFTER: Duration = Duration::from_secs(60);
/// How often the placement loop looks for registrations whose lease has passed.
pub const LEASE_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Workers polled per power-of-k decision unless configured: `shared/DESIGN.md`'s default,
/// and the simulator presets' (`crates/sim/presets`).
pub const DEFAULT_K: usize = 3;
/// A blocked shard (no room anywhere it looked) retries after this, or at the next idle-list
/// join, whichever comes first.
/// How long a shard waits for a worker's metrics when asked for its workers' (the dashboard
/// asks about once a second).
pub const METRICS_TIMEOUT: Duration = Duration::from_millis(500);

const RETRY_DELAY: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug)]
pub struct ShardConfig {
    /// Workers polled per decision when the idle list cannot place (power-of-k). Default
    /// [`DEFAULT_K`].
    pub k: usize,
    pub use_idle_list: bool,
    /// One first-come-first-served queue for all classes, as the Hermod baseline has (with
    /// `use_idle_list` off); otherwise per-class queues with the core's head choice. (The
    /// queue-length metric then shows every waiting invocation under the bottom class; wait
    /// times are still by the invocation's own class.)
    pub fifo: bool,
    /// How workers are ranked (the policy core's; Hermod's least-loaded is `Paper`).
    pub placement: PlacementRule,
    /// Seeds the shard's sampling of workers.
    pub seed: u64,
    /// The shard's number in its cluster, for its logs.
    pub id: u32,
    /// Times an invocation that came back unanswered (killed, or its worker lost) is placed
    /// again before it fails (the policy core's rule, `turnpike_policy::shard::AfterReturn`).
    pub requeue_max: u32,
    /// A poll not answered within this counts as no answer. Default [`POLL_TIMEOUT`].
    pub poll_timeout: Duration,
    /// A worker's load report this old or younger stands in for a poll (see the module's
    /// docs); zero: always poll. Default [`REPORT_FRESH_FOR`].
    pub report_fresh_for: Duration,
    /// `shard_queue_invocations_max`: invocations waiting for placement at most. One more is
    /// refused at once (`FailureKind::Overloaded`, which the gateway answers with 503 and
    /// `Retry-After`); invocations placed again after a kill or a lost worker are let in over
    /// the limit (they were accepted already).
    pub queue_invocations_max: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            use_idle_list: true,
            fifo: false,
            placement: PlacementRule::ClassAware,
            seed: 1,
            id: 0,
            requeue_max: REQUEUE_MAX_DEFAULT,
            queue_invocations_max: SHARD_QUEUE_INVOCATIONS_MAX_DEFAULT,
            poll_timeout: POLL_TIMEOUT,
            report_fresh_for: REPORT_FRESH_FOR,
        }
    }
}

/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub placed_idle_list: u64,
    pub placed_polling: u64,
    pub replaced: u64,
    pub workers_lost: u64,
    /// Invocations cancelled while waiting in this shard's queue.
    pub cancelled_queued: u64,
}

#[derive(Clone, Debug)]
pub struct ShardService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Time from joining the queue to placement, by class.
    waits: ClassHistograms,
    wake: Notify,
    classes: ClassSet,
    /// See [`ShardConfig::fifo`].
    fifo: bool,
    started: Instant,
    next_id: AtomicU64,
    /// See [`ShardConfig`].
    id: u32,
    requeue_max: u32,
    queue_invocations_max: usize,
    poll_timeout: Duration,
    report_fresh_for: Duration,
    /// Workers in this process, reached without RPC.
    directory: Directory,
    /// Invocations with concurrency limits pass here before the queue.
    gate: Mutex<GateState>,
}

/// The concurrency gate and how to wake each invocation waiting at it.
#[derive(Debug, Default)]
struct GateState {
    gate: Gate,
    wakers: HashMap<GateId, oneshot::Sender<()>>,
}

impl GateState {
    fn wake(&mut self, passed: Vec<GateId>) {
        for id in passed {
            // A waiter gone without leaving (its task dropped) gives its slots back when its
            // `GatePass` drops, which finds it passed.
            if let Some(waker) = self.wakers.remove(&id) {
                let _ = waker.send(());
            }
        }
    }
}

/// An invocation's place at the gate, waiting or passed; dropped, it leaves the gate or
/// gives its slots back.
struct GatePass {
    inner: Arc<Inner>,
    id: GateId,
    limits: Vec<Limit>,
}

impl Drop for GatePass {
    fn drop(&mut self) {
        let mut gate = turnpike_wire::lock(&self.inner.gate);
        gate.wakers.remove(&self.id);
        if !gate.gate.handle_leave(self.id) {
            let passed = gate.gate.handle_finish(&self.limits);
            gate.wake(passed);
        }
    }
}

#[derive(Debug)]
struct State {
    shard: Shard,
    workers: Vec<WorkerSlot>,
    by_address: HashMap<String, u32>,
    /// The next registration token: from a random start, so that tokens of this shard
    /// process are none of its predecessor's.
    next_token: u64,
    waiting: HashMap<InvocationId, Waiting>,
    counters: ShardCounters,
}

#[derive(Debug)]
struct WorkerSlot {
    /// Where it serves its RPCs, as it registered.
    address: String,
    /// The worker process's, as it registered.
    incarnation: u64,
    /// Its registration's token: its idle-list reports must carry it.
    token: u64,
    /// Since when it is lost (`None` while alive).
    lost_at: Option<tokio::time::Instant>,
    /// For polls.
    poller: Poller,
    /// For placed invocations.
    link: Arc<Link>,
    alive: bool,
    /// Since when its polls have gone unanswered; `None` after an answer. Tokio's clock, so
    /// tests can advance it.
    silent_since: Option<tokio::time::Instant>,
    /// Cancelled when the worker is marked lost: the invocations sent to it and not yet
    /// answered are placed again at once, not left waiting on a worker that may never
    /// answer (one that fell silent with its connection open). A new one when it registers
    /// again.
    lost: CancellationToken,
    /// Its last registration and how long that holds (zero: for ever).
    renewed: tokio::time::Instant,
    lease: Duration,
    /// What this shard sent it since its link's latest load report.
    sent: SentSince,
}

/// Invocations a shard sent a worker since the worker's load report numbered `seq` (0: no
/// report yet), added to that report's replies when a decision uses it.
#[derive(Debug, Default)]
struct SentSince {
    seq: u64,
    /// By class index.
    by_class: Vec<u32>,
    start_mb: u64,
}

impl SentSince {
    /// Counts one invocation of `class` starting with `start_mb`, sent while the link's
    /// latest report was `seq`.
    fn add(&mut self, seq: u64, class: ClassId, start_mb: u64) {
        if seq != self.seq {
            *self = Self {
                seq,
                ..Self::default()
            };
        }
        let c = class.index();
        if self.by_class.len() <= c {
            self.by_class.resize(c + 1, 0);
        }
        self.by_class[c] += 1;
        self.start_mb = self.start_mb.saturating_add(start_mb);
    }

    /// `report`'s reply to a poll for `class` (report numbered `seq`), with what was sent
    /// since: each one more function, one more ahead of its own class and the lower ones,
    /// its start memory less room (unlimited room stays unlimited).
    fn apply(
        &self,
        seq: u64,
        machine: MachineId,
        class: ClassId,
        report: &proto::PollReply,
    ) -> PollReply {
        let mut reply = convert::poll_reply_from_wire(machine, *report);
        if seq != self.seq {
            return reply;
        }
        let sent: u32 = self.by_class.iter().sum();
        let ahead: u32 = self.by_class.iter().skip(class.index()).sum();
        reply.functions = reply.functions.saturating_add(sent);
        reply.ahead = reply.ahead.saturating_add(ahead);
        if reply.room_mb != u64::MAX {
            reply.room_mb = reply.room_mb.saturating_sub(self.start_mb);
        }
        reply
    }
}

/// How the shard asks a worker for its load.
#[derive(Clone, Debug)]
enum Poller {
    Rpc(WorkerClient<Channel>),
    InProcess(Arc<dyn LocalWorker>),
}

impl Poller {
    /// The worker's answer, or `None` when it gave none within `timeout`.
    async fn poll(
        self,
        machine: MachineId,
        class: ClassId,
        timeout: Duration,
    ) -> Option<PollReply> {
        match self {
            Self::Rpc(mut client) => {
                let request = proto::PollRequest {
                    class: u32::from(class.0),
                };
                let reply = tokio::time::timeout(timeout, client.poll(request))
                    .await
                    .ok()?
                    .ok()?
                    .into_inner();
                Some(convert::poll_reply_from_wire(machine, reply))
            }
            Self::InProcess(worker) => Some(PollReply {
                machine,
                ..worker.poll(class).ok()?
            }),
        }
    }

    /// The worker's metrics text, or `None` when it gave none within `timeout`.
    async fn metrics(self, timeout: Duration) -> Option<String> {
        match self {
            Self::Rpc(mut client) => {
                let reply = tokio::time::timeout(timeout, client.metrics(proto::Empty {}))
                    .await
                    .ok()?
                    .ok()?
                    .into_inner();
                reply.roles.into_iter().next().map(|r| r.text)
            }
            Self::InProcess(worker) => Some(worker.metrics_text()),
        }
    }
}

#[derive(Debug)]
struct Waiting {
    invocation: Invocation,
    reply: oneshot::Sender<Outcome>,
    /// Placements so far.
    attempts: u32,
    /// The invocation's span (its id, class and this shard), for what happens to it later.
    span: tracing::Span,
}

impl ShardService {
    /// A shard and its placement loop (a task on the current tokio runtime). Workers that
    /// register from this process (found in `directory`) are called without RPC.
    pub fn start(classes: ClassSet, config: ShardConfig, directory: Directory) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                shard: Shard::new(
                    &classes,
                    policy::ShardConfig {
                        machines: 1,
                        k: config.k,
                        use_idle_list: config.use_idle_list,
                        placement: config.placement,
                        top_class_defers_max: match config.placement {
                            PlacementRule::Paper => 0,
                            PlacementRule::ClassAware => TOP_CLASS_DEFERS_MAX_DEFAULT,
                        },
                    },
                ),
                workers: Vec::new(),
                by_address: HashMap::new(),
                next_token: rand::random(),
                waiting: HashMap::new(),
                counters: ShardCounters::default(),
            }),
            wake: Notify::new(),
            waits: ClassHistograms::new(&classes),
            classes,
            fifo: config.fifo,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            id: config.id,
            requeue_max: config.requeue_max,
            queue_invocations_max: config.queue_invocations_max,
            poll_timeout: config.poll_timeout,
            report_fresh_for: config.report_fresh_for,
            directory,
            gate: Mutex::new(GateState::default()),
        });
        tokio::spawn(place_forever(Arc::downgrade(&inner), config.seed));
        Self { inner }
    }

    pub fn into_server(self) -> ShardServer<Self> {
        ShardServer::new(self)
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES)
    }

    pub fn counters(&self) -> ShardCounters {
        self.inner.lock().counters
    }

    /// Workers registered and not lost.
    pub fn live_workers(&self) -> usize {
        self.inner.lock().workers.iter().filter(|w| w.alive).count()
    }

    pub fn idle_list_len(&self) -> usize {
        self.inner.lock().shard.idle_list().len()
    }

    pub fn queued(&self) -> usize {
        self.inner.lock().shard.queued()
    }

    /// Invocations waiting at the concurrency gate.
    pub fn gate_waiting(&self) -> usize {
        turnpike_wire::lock(&self.inner.gate).gate.waiting()
    }

    /// Invocations of concurrency key `key` past the gate and not answered.
    pub fn gate_in_flight(&self, key: &str) -> u32 {
        turnpike_wire::lock(&self.inner.gate).gate.in_flight(key)
    }

    /// This shard's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let inner = &self.inner;
        let (queues, idle, live, c) = {
            let state = inner.lock();
            let queues = metrics::by_class(&inner.classes, |id| state.shard.queued_of(id) as f64);
            let live = state.workers.iter().filter(|w| w.alive).count();
            (queues, state.shard.idle_list().len(), live, state.counters)
        };
        let (gate_waiting, gate_keys) = {
            let gate = turnpike_wire::lock(&inner.gate);
            (gate.gate.waiting(), gate.gate.keys())
        };
        let mut out = metrics::Exposition::new();
        metrics::family(
            &mut out,
            "turnpike_shard_concurrency_waiting",
            "gauge",
            "Invocations waiting at the concurrency gate (a key at its limit).",
            &metrics::single(gate_waiting as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_concurrency_keys",
            "gauge",
            "Concurrency keys with an invocation in flight or waiting here.",
            &metrics::single(gate_keys as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_queue_length",
            "gauge",
            "Invocations waiting for placement, by class.",
            &queues,
        );
        metrics::family(
            &mut out,
            "turnpike_shard_placements_total",
            "counter",
            "Placements by how the worker was found.",
            &[
                (
                    metrics::label("via", "idle_list"),
                    c.placed_idle_list as f64,
                ),
                (metrics::label("via", "power_of_k"), c.placed_polling as f64),
            ],
        );
        metrics::family(
            &mut out,
            "turnpike_shard_idle_list_size",
            "gauge",
            "Workers on this shard's idle list.",
            &metrics::single(idle as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_workers_live",
            "gauge",
            "Registered workers not lost.",
            &metrics::single(live as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_replaced_total",
            "counter",
            "Invocations placed again after a lost worker or a kill.",
            &metrics::single(c.replaced as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_cancelled_queued_total",
            "counter",
            "Invocations cancelled (caller gone, deadline passed) while waiting in the queue.",
            &metrics::single(c.cancelled_queued as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_shard_workers_lost_total",
            "counter",
            "Workers found lost.",
            &metrics::single(c.workers_lost as f64),
        );
        inner.waits.render(
            &mut out,
            "turnpike_shard_queue_wait_seconds",
            "Time from joining the queue to placement, by class.",
        );
        out.render()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock completes before release; the policy core asserts its
        // own invariants.
        turnpike_wire::lock(&self.state)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Queues a waiting invocation (again) and wakes the placement loop.
    fn enqueue(&self, id: InvocationId, waiting: Waiting) {
        let class = if self.fifo {
            ClassId(0)
        } else {
            waiting.invocation.class
        };
        let pending = Pending {
            id,
            class,
            start_mb: waiting.invocation.start_mb,
        };
        let now = self.now_ns();
        let mut state = self.lock();
        state.waiting.insert(id, waiting);
        state.shard.handle_invocation(now, pending);
        drop(state);
        self.wake.notify_one();
    }
}

impl Inner {
    /// Takes invocation `id` out of the queue if it is waiting there (not sent to a worker):
    /// its `Cancelled` outcome, to answer with.
    fn cancel_queued(&self, id: InvocationId) -> Option<Outcome> {
        let mut state = self.lock();
        let waiting = state.waiting.remove(&id)?;
        let class = if self.fifo {
            ClassId(0)
        } else {
            waiting.invocation.class
        };
        // Not found when its machines are being polled: its placement finds it gone.
        state.shard.handle_cancel(class, id);
        state.counters.cancelled_queued += 1;
        let mut outcome =
            Outcome::failure(FailureKind::Cancelled, "cancelled while queued at a shard");
        outcome.attempts = waiting.attempts;
        Some(outcome)
    }
}

/// The placement loop: one decision at a time, polling real workers when the idle list cannot
/// place. Ends when the shard is dropped.
async fn place_forever(inner: std::sync::Weak<Inner>, seed: u64) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut lease_checked = tokio::time::Instant::now();
    let mut turns = 0u32;
    loop {
        turns += 1;
        if turns == DECISIONS_BEFORE_YIELD {
            turns = 0;
            tokio::task::yield_now().await;
        }
        let Some(inner) = inner.upgrade() else { return };
        let step = {
            let mut state = inner.lock();
            let now = tokio::time::Instant::now();
            if now.duration_since(lease_checked) >= LEASE_CHECK_EVERY {
                lease_checked = now;
                expire_leases(&inner, &mut state, now);
            }
            if state.workers.iter().any(|w| w.alive) {
                Some(state.shard.begin_decision(inner.now_ns(), &mut rng))
            } else {
                None
            }
        };
        let decision = match step {
            None | Some(ShardStep::Decided(ShardDecision::Idle)) => {
                wait(&inner, Duration::from_millis(50)).await;
                continue;
            }
            Some(ShardStep::Decided(decision)) => decision,
            Some(ShardStep::Poll { machines, class }) => {
                let replies = poll_workers(&inner, &machines, class).await;
                inner.lock().shard.finish_decision(&replies)
            }
        };
        match decision {
            ShardDecision::Place {
                pending,
                machine,
                via,
                enqueued_ns,
            } => {
                let waited = inner.now_ns().saturating_sub(enqueued_ns);
                // The invocation's own class (a FIFO shard queues every class as one).
                let class = if inner.fifo {
                    inner
                        .lock()
                        .waiting
                        .get(&pending.id)
                        .map_or(0, |w| w.invocation.class.index())
                } else {
                    pending.class.index()
                };
                inner.waits.observe(class, Duration::from_nanos(waited));
                if telemetry::enabled() {
                    if let Some(w) = inner.lock().waiting.get(&pending.id) {
                        w.span.record("turnpike.queued_ms", waited as f64 / 1e6);
                    }
                }
                send(&inner, pending.id, machine, via);
            }
            ShardDecision::Blocked | ShardDecision::Idle => wait(&inner, RETRY_DELAY).await,
            // Decide again at once: the next decision polls more workers, or places a head
            // of another class.
            ShardDecision::Deferred | ShardDecision::PassedOver => {}
        }
    }
}

async fn wait(inner: &Inner, at_most: Duration) {
    let _ = tokio::time::timeout(at_most, inner.wake.notified()).await;
}

/// Asks `machines` for their load, concurrently: the answers that came within the grace
/// after the first ([`POLL_GRACE_MIN`]), or within the poll timeout if none came. Each poll
/// runs to its end on its own task: a worker that answers late is not silent; one that does
/// not answer at all is marked lost once it has been silent for [`WORKER_SILENT_LOST_AFTER`].
async fn poll_workers(
    inner: &Arc<Inner>,
    machines: &[MachineId],
    class: ClassId,
) -> Vec<PollReply> {
    let mut replies = Vec::with_capacity(machines.len());
    let pollers: Vec<(MachineId, Poller)> = {
        let state = inner.lock();
        let now = Instant::now();
        machines
            .iter()
            .filter_map(|&m| {
                let slot = state.workers.get(m.0 as usize)?;
                if !slot.alive {
                    return None;
                }
                // A fresh load report stands in for a poll (see the module's docs).
                if let Some(report) = slot.link.load_report() {
                    let fresh = now.saturating_duration_since(report.at) <= inner.report_fresh_for;
                    if let Some(reported) = report.replies.get(class.index()).filter(|_| fresh) {
                        replies.push(slot.sent.apply(report.seq, m, class, reported));
                        return None;
                    }
                }
                Some((m, slot.poller.clone()))
            })
            .collect()
    };
    let timeout = inner.poll_timeout;
    if pollers
        .iter()
        .all(|(_, p)| matches!(p, Poller::InProcess(_)))
    {
        // Nothing to wait for: no tasks.
        for (machine, poller) in pollers {
            let reply = poller.poll(machine, class, timeout).await;
            heard(inner, machine, reply.is_some());
            replies.extend(reply);
        }
    } else {
        // Bound: the sample. Each poll sends one answer, so no send ever waits.
        let polls = pollers.len();
        let (answers, mut answered) = tokio::sync::mpsc::channel(polls.max(1));
        let started = tokio::time::Instant::now();
        for (machine, poller) in pollers {
            let (inner, answers) = (inner.clone(), answers.clone());
            tokio::spawn(async move {
                let reply = poller.poll(machine, class, timeout).await;
                heard(&inner, machine, reply.is_some());
                let _ = answers.send(reply).await;
            });
        }
        drop(answers);
        let mut until: Option<tokio::time::Instant> = None;
        for _ in 0..polls {
            let next = match until {
                None => answered.recv().await,
                Some(until) => match tokio::time::timeout_at(until, answered.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some(reply) = next else { break };
            if let Some(reply) = reply {
                if until.is_none() {
                    let first = started.elapsed();
                    until = Some(tokio::time::Instant::now() + first.max(POLL_GRACE_MIN));
                }
                replies.push(reply);
            }
        }
    }
    // Keep the sample's order (ties go to the earlier machine in the core's rule).
    replies.sort_by_key(|r| machines.iter().position(|&m| m == r.machine));
    replies
}

/// Records whether `machine` answered a poll; one silent for [`WORKER_SILENT_LOST_AFTER`]
/// with no answer between is marked lost.
fn heard(inner: &Inner, machine: MachineId, answered: bool) {
    let now = tokio::time::Instant::now();
    let mut state = inner.lock();
    let Some(slot) = state.workers.get_mut(machine.0 as usize) else {
        return;
    };
    if answered {
        slot.silent_since = None;
        return;
    }
    let since = *slot.silent_since.get_or_insert(now);
    if now.duration_since(since) >= WORKER_SILENT_LOST_AFTER {
        let why = format!(
            "no answer to its polls for {} ms",
            now.duration_since(since).as_millis()
        );
        mark_lost(inner, &mut state, machine, &why);
    }
}

/// Marks lost the live workers whose registration's lease has passed.
fn expire_leases(inner: &Inner, state: &mut State, now: tokio::time::Instant) {
    let lapsed: Vec<(usize, Duration)> = state
        .workers
        .iter()
        .enumerate()
        .map(|(m, w)| (m, w, now.duration_since(w.renewed)))
        .filter(|(_, w, since)| w.alive && !w.lease.is_zero() && *since > w.lease)
        .map(|(m, _, since)| (m, since))
        .collect();
    for (machine, since) in lapsed {
        let why = format!("no registration for {} ms", since.as_millis());
        mark_lost(inner, state, MachineId(machine as u32), &why);
    }
}

/// Marks `machine` lost (once: logged and counted when it was alive) and takes it off the
/// idle list; it is polled and placed on no more until it registers again.
fn mark_lost(inner: &Inner, state: &mut State, machine: MachineId, why: &str) {
    if let Some(slot) = state.workers.get_mut(machine.0 as usize) {
        slot.silent_since = None;
        if slot.alive {
            slot.alive = false;
            slot.lost_at = Some(tokio::time::Instant::now());
            slot.lost.cancel();
            state.counters.workers_lost += 1;
            tracing::warn!(shard = inner.id, worker = machine.0, "worker lost: {why}");
        }
    }
    state.shard.handle_idle_leave(machine);
}

/// Sends a placed invocation to its worker; the answer goes to the caller, or the invocation
/// is placed again.
fn send(inner: &Arc<Inner>, id: InvocationId, machine: MachineId, via: Via) {
    let (mut waiting, link, lost) = {
        let mut state = inner.lock();
        let Some(waiting) = state.waiting.remove(&id) else {
            return;
        };
        match via {
            Via::IdleList => state.counters.placed_idle_list += 1,
            Via::Polling => state.counters.placed_polling += 1,
        }
        let slot = &mut state.workers[machine.0 as usize];
        let seq = slot.link.load_report().map_or(0, |r| r.seq);
        // 0: the worker's default (`WorkerConfig::start_mb`, this default unless configured).
        let start_mb = match waiting.invocation.start_mb {
            0 => turnpike_policy::memory::START_MB_DEFAULT,
            mb => mb,
        };
        slot.sent.add(seq, waiting.invocation.class, start_mb);
        (waiting, slot.link.clone(), slot.lost.clone())
    };
    waiting.attempts += 1;
    let inner = inner.clone();
    tokio::spawn(async move {
        // `None`: the worker was marked lost first (dropping the call cancels it there, if
        // the worker can still hear it).
        let result = tokio::select! {
            result = link.call(waiting.invocation.clone()) => Some(result),
            () = lost.cancelled() => None,
        };
        let retry = |inner: &Arc<Inner>, waiting: Waiting, why: String| {
            let _entered = waiting.span.clone().entered();
            if waiting.invocation.cancel.is_cancelled() {
                tracing::info!("cancelled, not placed again: {why}");
                let mut outcome = Outcome::failure(
                    FailureKind::Cancelled,
                    format!("cancelled after its placement failed: {why}"),
                );
                outcome.attempts = waiting.attempts;
                let _ = waiting.reply.send(outcome);
                return;
            }
            if waiting.invocation.placed_for_good() {
                // Part of its response has gone to the caller (another run would answer
                // twice), or its streamed request body went to this placement.
                tracing::warn!("its streamed body had started, not placed again: {why}");
                let mut outcome = Outcome::failure(
                    FailureKind::Unavailable,
                    format!("its streamed body had started, so it was not placed again: {why}"),
                );
                outcome.attempts = waiting.attempts;
                let _ = waiting.reply.send(outcome);
                return;
            }
            match AfterReturn::of(waiting.attempts - 1, inner.requeue_max) {
                AfterReturn::GiveUp => {
                    tracing::warn!(attempts = waiting.attempts, "gave up: {why}");
                    let mut outcome = Outcome::failure(
                        FailureKind::Unavailable,
                        format!("gave up after {} placements: {why}", waiting.attempts),
                    );
                    outcome.attempts = waiting.attempts;
                    let _ = waiting.reply.send(outcome);
                }
                AfterReturn::Requeue => {
                    tracing::info!(attempts = waiting.attempts, "placed again: {why}");
                    inner.lock().counters.replaced += 1;
                    inner.enqueue(id, waiting);
                }
            }
        };
        match result {
            None => retry(
                &inner,
                waiting,
                format!("worker {} lost before it answered", machine.0),
            ),
            Some(Ok(mut outcome)) => {
                if outcome.failure_kind() == Some(FailureKind::Killed) {
                    retry(
                        &inner,
                        waiting,
                        format!("killed on worker {} to free memory", machine.0),
                    );
                    return;
                }
                outcome.worker = machine;
                outcome.attempts = waiting.attempts;
                let _ = waiting.reply.send(outcome);
            }
            Some(Err(error)) => {
                mark_lost(&inner, &mut inner.lock(), machine, error.message());
                retry(
                    &inner,
                    waiting,
                    format!("worker {} lost: {}", machine.0, error.message()),
                );
            }
        }
    });
}

impl ShardService {
    /// Queues one invocation and waits for its outcome (placement, the worker's answer, any
    /// retries).
    pub(crate) async fn invoke_one(self, mut invocation: Invocation) -> Outcome {
        if invocation.class.index() >= self.inner.classes.len() {
            return Outcome::failure(
                FailureKind::BadRequest,
                format!(
                    "unknown class {}: this shard has {} classes",
                    invocation.class.0,
                    self.inner.classes.len()
                ),
            );
        }
        if let Some(zero) = invocation.concurrency_limits.iter().find(|l| l.max == 0) {
            return Outcome::failure(
                FailureKind::BadRequest,
                format!(
                    "concurrency limit `{}` is 0: nothing could ever run",
                    zero.key
                ),
            );
        }
        let span = tracing::info_span!(
            "invocation",
            invocation = invocation.id,
            class = invocation.class.0,
            shard = self.inner.id,
            otel.name = tracing::field::Empty,
            faas.invocation_id = tracing::field::Empty,
            turnpike.queued_ms = tracing::field::Empty,
        );
        if telemetry::enabled() {
            // The gateway's span is its parent; its own, the worker's.
            telemetry::set_parent(&span, invocation.traceparent.as_deref());
            span.record("otel.name", "shard");
            span.record("faas.invocation_id", invocation.id.to_string());
            invocation.traceparent = telemetry::traceparent(&span);
        }
        let queued =
            self.inner.lock().waiting.len() + turnpike_wire::lock(&self.inner.gate).gate.waiting();
        if queued >= self.inner.queue_invocations_max {
            let _entered = span.enter();
            let message = format!(
                "shard {} has {queued} invocations waiting, its shard_queue_invocations_max",
                self.inner.id
            );
            tracing::warn!("refused: {message}");
            return Outcome::failure(FailureKind::Overloaded, message);
        }
        let id = InvocationId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let cancel = invocation.cancel.clone();
        // Held until the outcome is answered.
        let _pass = if invocation.concurrency_limits.is_empty() {
            None
        } else {
            match self.pass_gate(id, &invocation).await {
                Some(pass) => Some(pass),
                None => {
                    let _entered = span.enter();
                    tracing::info!("cancelled while waiting at the concurrency gate");
                    self.inner.lock().counters.cancelled_queued += 1;
                    return Outcome::failure(
                        FailureKind::Cancelled,
                        "cancelled while waiting at a shard for a concurrency limit",
                    );
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        self.inner.enqueue(
            id,
            Waiting {
                invocation,
                reply,
                attempts: 0,
                span: span.clone(),
            },
        );
        let shutting_down =
            |_| Outcome::failure(FailureKind::Unavailable, "the shard is shutting down");
        let mut answer = std::pin::pin!(answer);
        tokio::select! {
            biased;
            outcome = &mut answer => return outcome.unwrap_or_else(shutting_down),
            () = cancel.cancelled() => {}
        }
        // Cancelled. Still queued here: it leaves the queue, unbilled. On a worker: its link
        // carries the cancellation there, and the answer (with its usage) comes as usual.
        if let Some(outcome) = self.inner.cancel_queued(id) {
            let _entered = span.enter();
            tracing::info!("cancelled while queued at the shard");
            return outcome;
        }
        answer.await.unwrap_or_else(shutting_down)
    }
}

impl ShardService {
    /// Waits at the concurrency gate until every one of `invocation`'s keys has room: its
    /// pass, or `None` when it was cancelled first (it then holds nothing).
    async fn pass_gate(&self, id: InvocationId, invocation: &Invocation) -> Option<GatePass> {
        let (waker, woken) = oneshot::channel();
        let pass = GatePass {
            inner: self.inner.clone(),
            id: id.0,
            limits: invocation.concurrency_limits.clone(),
        };
        {
            let mut gate = turnpike_wire::lock(&self.inner.gate);
            let (entry, passed) =
                gate.gate
                    .handle_arrival(id.0, invocation.class, &invocation.concurrency_limits);
            gate.wake(passed);
            if entry == Entry::Passed {
                return Some(pass);
            }
            gate.wakers.insert(id.0, waker);
        }
        tokio::select! {
            biased;
            _ = woken => Some(pass),
            // Dropping the pass leaves the gate (or gives back the slots it got meanwhile).
            () = invocation.cancel.cancelled() => None,
        }
    }
}

/// The `Shard` RPCs: each message converted (`turnpike_wire::convert`) and handed to the
/// same methods a role of this process calls ([`LocalShard`]).
#[tonic::async_trait]
impl proto::shard_server::Shard for ShardService {
    type InvokeStream = link::OutcomeStream;

    async fn invoke(
        &self,
        request: Request<Streaming<proto::InvocationFrame>>,
    ) -> Result<Response<Self::InvokeStream>, Status> {
        link::serve(request, link::handler(self.clone(), Self::invoke_one))
    }

    async fn register(
        &self,
        request: Request<proto::WorkerInfo>,
    ) -> Result<Response<proto::Registered>, Status> {
        let registered = LocalShard::register(self, request.into_inner().into())?;
        Ok(Response::new(registered.into()))
    }

    async fn idle_join(
        &self,
        request: Request<proto::IdleEntry>,
    ) -> Result<Response<proto::Empty>, Status> {
        LocalShard::idle_report(self, convert::idle_join_from_wire(&request.into_inner()))?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn idle_leave(
        &self,
        request: Request<proto::WorkerRef>,
    ) -> Result<Response<proto::Empty>, Status> {
        LocalShard::idle_report(self, convert::idle_leave_from_wire(&request.into_inner()))?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn idle_len(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::IdleLenReply>, Status> {
        let len = LocalShard::idle_len(self);
        Ok(Response::new(proto::IdleLenReply { len }))
    }

    async fn metrics(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::RoleMetrics>, Status> {
        let roles = LocalShard::metrics(self).await;
        Ok(Response::new(proto::RoleMetrics { roles }))
    }
}

/// The shard's answers to gateways and workers, of this process (`turnpike_wire::directory`)
/// or through the RPCs above.
impl LocalShard for ShardService {
    fn invoke(&self, invocation: Invocation) -> LocalFuture<Outcome> {
        Box::pin(self.clone().invoke_one(invocation))
    }

    /// Records the worker (again, after either side restarted), with a link to it: in
    /// process if it is in the directory, else over RPC. A new incarnation at a known
    /// address is a restarted worker: its predecessor is marked lost (what it ran is placed
    /// again) and forgotten. A new address takes the slot of a worker lost for
    /// [`SLOT_REUSE_AFTER`], if there is one.
    fn register(&self, registration: Registration) -> Result<Registered, CallError> {
        let Registration {
            address,
            lease,
            incarnation,
            ..
        } = registration;
        let now = tokio::time::Instant::now();
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| CallError::Refused(format!("worker address {address:?}: {e}")))?;
        let mut state = self.inner.lock();
        let state = &mut *state;
        let known = state.by_address.get(&address).copied();
        if let Some(id) = known {
            if state.workers[id as usize].incarnation != incarnation {
                mark_lost(
                    &self.inner,
                    state,
                    MachineId(id),
                    "it restarted (a new incarnation registered)",
                );
            }
        }
        let (worker, fresh) = match known {
            Some(id) if state.workers[id as usize].incarnation == incarnation => {
                let slot = &mut state.workers[id as usize];
                let revived = !slot.alive;
                if revived {
                    slot.alive = true;
                    slot.lost_at = None;
                    slot.lost = CancellationToken::new();
                }
                slot.silent_since = None;
                slot.renewed = now;
                slot.lease = lease;
                (id, revived)
            }
            _ => {
                let (poller, link) = match self.inner.directory.worker(&address) {
                    Some(worker) => (
                        Poller::InProcess(worker.clone()),
                        Link::in_process(worker.handler()),
                    ),
                    None => {
                        let client = WorkerClient::new(rpc::channel(endpoint))
                            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
                        (Poller::Rpc(client.clone()), Link::to_worker(client))
                    }
                };
                state.next_token = state.next_token.wrapping_add(1);
                let slot = WorkerSlot {
                    address: address.clone(),
                    incarnation,
                    token: state.next_token,
                    lost_at: None,
                    poller,
                    link: Arc::new(link),
                    alive: true,
                    silent_since: None,
                    lost: CancellationToken::new(),
                    renewed: now,
                    lease,
                    sent: SentSince::default(),
                };
                // The same address again (a restarted worker), or a slot long lost, or a
                // new one.
                let reuse = known.or_else(|| {
                    state
                        .workers
                        .iter()
                        .position(|w| {
                            w.lost_at
                                .is_some_and(|t| now.duration_since(t) >= SLOT_REUSE_AFTER)
                        })
                        .map(|i| i as u32)
                });
                let id = match reuse {
                    Some(id) => {
                        let old = std::mem::replace(&mut state.workers[id as usize], slot);
                        if old.address != address {
                            state.by_address.remove(&old.address);
                        }
                        state.shard.forget_machine(MachineId(id));
                        id
                    }
                    None => {
                        state.workers.push(slot);
                        let n = state.workers.len() as u32;
                        state.shard.set_machines(n);
                        n - 1
                    }
                };
                state.by_address.insert(address, id);
                (id, true)
            }
        };
        let token = state.workers[worker as usize].token;
        self.inner.wake.notify_one();
        Ok(Registered {
            worker: MachineId(worker),
            fresh,
            token,
        })
    }

    fn idle_report(&self, report: IdleReport) -> Result<(), CallError> {
        let mut state = self.inner.lock();
        let worker = report.worker;
        let Some(slot) = state.workers.get(worker.0 as usize) else {
            return Err(CallError::Refused(format!(
                "worker {} is not registered: register again",
                worker.0
            )));
        };
        if slot.token != report.token {
            return Err(CallError::Refused(format!(
                "worker {} is registered under another token (this shard restarted, or the id went to another worker): register again",
                worker.0
            )));
        }
        if !slot.alive {
            return Err(CallError::Refused(format!(
                "worker {} is marked lost: register again",
                worker.0
            )));
        }
        let taken = state
            .shard
            .handle_idle_report(worker, report.seq, report.entry);
        drop(state);
        if taken && report.entry.is_some() {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    fn idle_len(&self) -> u64 {
        self.inner.lock().shard.idle_list().len() as u64
    }

    /// Its own metrics first (its address left empty: the caller knows it), then each live
    /// worker's, all asked at once; a worker that gives none within [`METRICS_TIMEOUT`] is
    /// left out.
    fn metrics(&self) -> LocalFuture<Vec<proto::RoleText>> {
        let own = proto::RoleText {
            role: "shard".into(),
            address: String::new(),
            text: ShardService::metrics(self),
        };
        let workers: Vec<(String, Poller)> = self
            .inner
            .lock()
            .workers
            .iter()
            .filter(|w| w.alive)
            .map(|w| (w.address.clone(), w.poller.clone()))
            .collect();
        Box::pin(async move {
            let mut asked = tokio::task::JoinSet::new();
            for (i, (address, poller)) in workers.into_iter().enumerate() {
                asked.spawn(async move {
                    let text = poller.metrics(METRICS_TIMEOUT).await?;
                    Some((
                        i,
                        proto::RoleText {
                            role: "worker".into(),
                            address,
                            text,
                        },
                    ))
                });
            }
            let mut answered: Vec<(usize, proto::RoleText)> =
                asked.join_all().await.into_iter().flatten().collect();
            answered.sort_by_key(|(i, _)| *i);
            std::iter::once(own)
                .chain(answered.into_iter().map(|(_, r)| r))
                .collect()
        })
    }
}

/// The shard's service logic without sockets: workers are fakes in the directory, called in
/// process, and invocations enter through [`LocalShard`] as a gateway of the same process
/// sends them.
#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use turnpike_policy::idle_list::IdleEntry;
    use turnpike_wire::invocation::{Failure, Request, Response};

    /// A worker that answers every invocation with `ending` and counts its runs and polls;
    /// a `silent` one fails every poll, as one that stopped answering does.
    #[derive(Debug)]
    struct FakeWorker {
        ending: Ending,
        runs: Arc<AtomicU32>,
        polls: Arc<AtomicU32>,
        /// Its polls fail.
        silent: bool,
        /// Its runs never answer (a worker fallen silent with its connection open).
        hangs: bool,
    }

    /// Answers `200` with an empty body and answers its polls.
    impl Default for FakeWorker {
        fn default() -> Self {
            Self {
                ending: Ok(Response {
                    status: http::StatusCode::OK,
                    headers: http::HeaderMap::new(),
                    body: bytes::Bytes::new(),
                }),
                runs: Arc::default(),
                polls: Arc::default(),
                silent: false,
                hangs: false,
            }
        }
    }

    type Ending = Result<Response, Failure>;

    impl LocalWorker for FakeWorker {
        fn handler(&self) -> link::Handler {
            let (ending, runs, hangs) = (self.ending.clone(), self.runs.clone(), self.hangs);
            Arc::new(move |_invocation| {
                runs.fetch_add(1, Ordering::Relaxed);
                let ending = ending.clone();
                Box::pin(async move {
                    if hangs {
                        std::future::pending::<()>().await;
                    }
                    Outcome {
                        ending,
                        usage: None,
                        worker: MachineId(0),
                        attempts: 1,
                    }
                })
            })
        }

        fn metrics_text(&self) -> String {
            "fake_worker 1\n".into()
        }

        fn poll(&self, _class: ClassId) -> Result<PollReply, CallError> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.silent {
                return Err(CallError::Refused("no answer".into()));
            }
            Ok(PollReply {
                machine: MachineId(0),
                functions: 0,
                room_mb: 1024,
                ahead: 0,
                cores: 1,
            })
        }
    }

    fn invocation(id: u64, class: u8) -> Invocation {
        Invocation {
            start_mb: 2,
            ..Invocation::new(id, "f", ClassId(class), Request::get("/"))
        }
    }

    /// A shard with one fake worker answering `ending`: the shard and the worker's run count.
    async fn shard_with_worker(
        config: ShardConfig,
        ending: Ending,
    ) -> (ShardService, Arc<AtomicU32>) {
        let directory = Directory::new();
        let shard = ShardService::start(ClassSet::default_four(), config, directory.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let worker = FakeWorker {
            ending,
            runs: runs.clone(),
            ..FakeWorker::default()
        };
        directory.add_worker(address, Arc::new(worker));
        let registered = register_at(&shard, address.port(), 1, Duration::ZERO);
        assert_eq!((registered.worker, registered.fresh), (MachineId(0), true));
        (shard, runs)
    }

    #[tokio::test]
    async fn an_invocation_is_placed_on_a_polled_worker_and_answered() {
        let response = Ok(Response {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes_of("hi"),
        });
        let (shard, runs) = shard_with_worker(ShardConfig::default(), response.clone()).await;
        let outcome = LocalShard::invoke(&shard, invocation(7, 3)).await;
        assert_eq!(outcome.ending, response);
        assert_eq!((outcome.worker, outcome.attempts), (MachineId(0), 1));
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        let counters = shard.counters();
        assert_eq!(counters.placed_idle_list + counters.placed_polling, 1);
        assert_eq!(shard.queued(), 0);
    }

    /// A shard with the default config whose in-process workers are in `directory`.
    fn shard_in(directory: &Directory) -> ShardService {
        ShardService::start(
            ClassSet::default_four(),
            ShardConfig::default(),
            directory.clone(),
        )
    }

    /// Registers the worker at `127.0.0.1:port` (1024 MB, 1 core).
    fn register_at(
        shard: &ShardService,
        port: u16,
        incarnation: u64,
        lease: Duration,
    ) -> Registered {
        LocalShard::register(
            shard,
            Registration {
                address: format!("http://127.0.0.1:{port}"),
                memory_mb: 1024,
                cores: 1,
                lease,
                incarnation,
            },
        )
        .unwrap()
    }

    /// An idle machine's entry (1024 MB free, one idle core).
    const IDLE: IdleEntry = IdleEntry {
        free_mb: 1024,
        functions: 0,
        idle_cores: 1,
    };

    /// The idle-list join numbered `seq` under `registered`.
    fn join(registered: Registered, seq: u64) -> IdleReport {
        IdleReport {
            worker: registered.worker,
            token: registered.token,
            seq,
            entry: Some(IDLE),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_polls_go_unanswered_is_marked_lost_then_polled_no_more() {
        let directory = Directory::new();
        let shard = shard_in(&directory);
        let silent_polls = Arc::new(AtomicU32::new(0));
        let silent = FakeWorker {
            polls: silent_polls.clone(),
            silent: true,
            ..FakeWorker::default()
        };
        directory.add_worker(([127, 0, 0, 1], 1).into(), Arc::new(silent));
        directory.add_worker(([127, 0, 0, 1], 2).into(), Arc::new(FakeWorker::default()));
        for port in [1, 2] {
            register_at(&shard, port, 1, Duration::ZERO);
        }
        // One invocation every 100 ms: each is answered by the worker that answers polls.
        let start = tokio::time::Instant::now();
        let mut id = 0;
        while shard.counters().workers_lost == 0 {
            assert!(
                start.elapsed() < WORKER_SILENT_LOST_AFTER * 3,
                "not found lost in {:?}; polled {} times",
                start.elapsed(),
                silent_polls.load(Ordering::Relaxed)
            );
            id += 1;
            let outcome = LocalShard::invoke(&shard, invocation(id, 3)).await;
            assert_eq!(outcome.worker, MachineId(1), "{outcome:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Found lost no sooner than the bound says.
        assert!(
            start.elapsed() >= WORKER_SILENT_LOST_AFTER,
            "{:?}",
            start.elapsed()
        );
        assert_eq!(shard.live_workers(), 1);
        let polls = silent_polls.load(Ordering::Relaxed);
        assert!(polls >= 2, "{polls}");
        // Lost: not polled again, whatever is placed.
        for _ in 0..10 {
            id += 1;
            let outcome = LocalShard::invoke(&shard, invocation(id, 3)).await;
            assert_eq!(outcome.worker, MachineId(1), "{outcome:?}");
        }
        assert_eq!(silent_polls.load(Ordering::Relaxed), polls);
        // Until it registers again.
        let again = register_at(&shard, 1, 1, Duration::ZERO);
        assert_eq!((again.worker, again.fresh), (MachineId(0), true));
        assert_eq!(shard.live_workers(), 2);
    }

    /// An invocation sent to a worker that then falls silent (its runs and its polls go
    /// unanswered, its connection stays open) is placed again on another worker once the
    /// silent one is marked lost, instead of waiting for its caller to give up.
    #[tokio::test(start_paused = true)]
    async fn an_invocation_on_a_worker_marked_lost_is_placed_again() {
        let directory = Directory::new();
        let shard = shard_in(&directory);
        let silent = FakeWorker {
            silent: true,
            hangs: true,
            ..FakeWorker::default()
        };
        let hung_runs = silent.runs.clone();
        directory.add_worker(([127, 0, 0, 1], 1).into(), Arc::new(silent));
        directory.add_worker(([127, 0, 0, 1], 2).into(), Arc::new(FakeWorker::default()));
        let silent_registration = register_at(&shard, 1, 1, Duration::ZERO);
        register_at(&shard, 2, 1, Duration::ZERO);
        // The silent worker is on the idle list, so the first invocation goes to it unpolled.
        LocalShard::idle_report(&shard, join(silent_registration, 1)).unwrap();
        let first = tokio::spawn(LocalShard::invoke(&shard, invocation(1, 0)));
        while hung_runs.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Invocations every 100 ms poll both workers, until the silent one is found lost.
        let mut id = 1;
        while !first.is_finished() {
            assert!(id < 100, "the first invocation still waits after {id} more");
            id += 1;
            let outcome = LocalShard::invoke(&shard, invocation(id, 3)).await;
            assert_eq!(outcome.worker, MachineId(1), "{outcome:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let outcome = first.await.unwrap();
        assert!(outcome.ending.is_ok(), "{outcome:?}");
        assert_eq!((outcome.worker, outcome.attempts), (MachineId(1), 2));
        assert_eq!(shard.counters().workers_lost, 1);
        assert_eq!(shard.counters().replaced, 1);
    }

    /// A worker that stops registering (dead, cut off, moved to another address) is marked
    /// lost once its lease passes, though nothing polls it or is sent to it: what it was
    /// running is placed again at once, and it is back when it registers again. One that
    /// keeps registering is never lost, however long nothing is sent to it.
    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_registration_lapses_is_marked_lost_within_its_lease() {
        const LEASE: Duration = Duration::from_secs(2);
        let directory = Directory::new();
        let shard = shard_in(&directory);
        let gone = FakeWorker {
            hangs: true,
            ..FakeWorker::default()
        };
        let gone_runs = gone.runs.clone();
        directory.add_worker(([127, 0, 0, 1], 1).into(), Arc::new(gone));
        directory.add_worker(([127, 0, 0, 1], 2).into(), Arc::new(FakeWorker::default()));
        let register = |port: u16| register_at(&shard, port, 1, LEASE);
        let first_registration = register(1);
        register(2);
        // The first invocation goes to the worker that will stop registering, unpolled.
        LocalShard::idle_report(&shard, join(first_registration, 1)).unwrap();
        let first = tokio::spawn(LocalShard::invoke(&shard, invocation(1, 0)));
        while gone_runs.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // From now on only the second registers (every 500 ms, as a worker does).
        let stopped = tokio::time::Instant::now();
        while !first.is_finished() {
            assert!(
                stopped.elapsed() <= LEASE + LEASE_CHECK_EVERY + Duration::from_millis(50),
                "not found lost {:?} after its last registration",
                stopped.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            if stopped.elapsed().as_millis().is_multiple_of(500) {
                register(2);
            }
        }
        assert!(stopped.elapsed() >= LEASE, "lost before its lease passed");
        let outcome = first.await.unwrap();
        assert!(outcome.ending.is_ok(), "{outcome:?}");
        assert_eq!((outcome.worker, outcome.attempts), (MachineId(1), 2));
        assert_eq!(shard.counters().workers_lost, 1);
        assert_eq!(shard.live_workers(), 1);
        // The one that kept registering stays, with nothing sent to it for several leases.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            register(2);
        }
        assert_eq!(shard.live_workers(), 1);
        // Back when it registers again.
        let again = register(1);
        assert_eq!((again.worker, again.fresh), (MachineId(0), true));
        assert_eq!(shard.live_workers(), 2);
    }

    /// Idle-list reports must carry the registration's token: one from before the worker
    /// restarted, or for an id since given to another worker, is refused. A restarted
    /// worker (a new incarnation at the same address) is a new one: its predecessor lost,
    /// its entry forgotten. A slot lost for `SLOT_REUSE_AFTER` goes to the next new address.
    #[tokio::test(start_paused = true)]
    async fn stale_idle_reports_are_refused_and_registrations_are_pruned() {
        let directory = Directory::new();
        let shard = shard_in(&directory);
        for port in 1..=4 {
            directory.add_worker(
                ([127, 0, 0, 1], port).into(),
                Arc::new(FakeWorker::default()),
            );
        }
        let register = |port, incarnation, lease| register_at(&shard, port, incarnation, lease);
        let report = join;
        let a = register(1, 10, Duration::ZERO);
        LocalShard::idle_report(&shard, report(a, 1)).unwrap();
        assert_eq!(shard.idle_list_len(), 1);
        let forged = IdleReport {
            token: a.token.wrapping_add(1),
            ..report(a, 2)
        };
        let refused = LocalShard::idle_report(&shard, forged).unwrap_err();
        assert!(
            format!("{refused:?}").contains("another token"),
            "{refused:?}"
        );

        // A restarts: same address, new incarnation.
        let a2 = register(1, 11, Duration::ZERO);
        assert_eq!((a2.worker, a2.fresh), (a.worker, true));
        assert_ne!(a2.token, a.token);
        assert_eq!(shard.counters().workers_lost, 1, "its predecessor is lost");
        assert_eq!(shard.idle_list_len(), 0, "its predecessor's entry is gone");
        assert!(LocalShard::idle_report(&shard, report(a, 2)).is_err());
        // Renewing with the same incarnation keeps the token.
        assert_eq!(
            register(1, 11, Duration::ZERO),
            Registered { fresh: false, ..a2 }
        );
        // It numbers its reports from 1 again, and they are taken.
        LocalShard::idle_report(&shard, report(a2, 1)).unwrap();
        assert_eq!(shard.idle_list_len(), 1);

        // B's registration lapses; a minute later C, at a new address, takes its slot.
        let b = register(2, 20, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(shard.live_workers(), 1);
        let early = register(3, 30, Duration::ZERO);
        assert_eq!(
            early.worker,
            MachineId(2),
            "not reused before SLOT_REUSE_AFTER"
        );
        tokio::time::sleep(SLOT_REUSE_AFTER).await;
        let c = register(4, 40, Duration::ZERO);
        assert_eq!((c.worker, c.fresh), (b.worker, true));
        let refused = LocalShard::idle_report(&shard, report(b, 1)).unwrap_err();
        assert!(
            format!("{refused:?}").contains("another token"),
            "{refused:?}"
        );
        // B comes back: a slot of its own again.
        let b2 = register(2, 20, Duration::ZERO);
        assert_eq!(b2.worker, MachineId(3));
        assert_eq!(shard.live_workers(), 4);
    }

    /// A `Worker` service over RPC. It answers every run at once (`200`) with a load report
    /// (`functions` 5 for every class), and counts the polls it got; with `polls_hang` its
    /// polls never answer, and it counts those whose caller gave up on them (the call
    /// dropped).
    #[derive(Debug, Default)]
    struct RpcWorker {
        polls_hang: bool,
        polls: Arc<AtomicU32>,
        dropped: Arc<AtomicU32>,
    }

    struct CountDrop(Arc<AtomicU32>);

    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tonic::async_trait]
    impl proto::worker_server::Worker for RpcWorker {
        type RunStream = link::OutcomeStream;

        async fn run(
            &self,
            request: tonic::Request<Streaming<proto::InvocationFrame>>,
        ) -> Result<tonic::Response<Self::RunStream>, Status> {
            let report: link::Reporter = Arc::new(|| {
                let reply = proto::PollReply {
                    functions: 5,
                    room_mb: 1024,
                    ahead: 0,
                    cores: 1,
                };
                vec![reply; 4]
            });
            link::serve_reporting(request, FakeWorker::default().handler(), Some(report))
        }

        async fn load(
            &self,
            _request: tonic::Request<proto::Component>,
        ) -> Result<tonic::Response<proto::Loaded>, Status> {
            Err(Status::unimplemented("loads nothing"))
        }

        async fn metrics(
            &self,
            _request: tonic::Request<proto::Empty>,
        ) -> Result<tonic::Response<proto::RoleMetrics>, Status> {
            Err(Status::unimplemented("no metrics"))
        }

        async fn poll(
            &self,
            _request: tonic::Request<proto::PollRequest>,
        ) -> Result<tonic::Response<proto::PollReply>, Status> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.polls_hang {
                let _dropped = CountDrop(self.dropped.clone());
                std::future::pending::<()>().await;
            }
            Ok(tonic::Response::new(proto::PollReply {
                functions: 0,
                room_mb: 1024,
                ahead: 0,
                cores: 1,
            }))
        }
    }

    /// Serves `worker` on a loopback port: its address and the server's task.
    async fn serve_rpc_worker(
        worker: RpcWorker,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(proto::worker_server::WorkerServer::new(worker))
                .serve_with_incoming(rpc::incoming(listener))
                .await;
        });
        (address, server)
    }

    /// A worker whose polls hang does not hold up a decision that sampled it: once the
    /// other worker answers, the decision waits only its grace, not the poll timeout (30 s
    /// here: the invocation is answered while the hung poll is still waited on, by its own
    /// task, not by the decision).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_that_hangs_does_not_hold_up_the_decision() {
        let slow = RpcWorker {
            polls_hang: true,
            ..RpcWorker::default()
        };
        let (started, dropped) = (slow.polls.clone(), slow.dropped.clone());
        let (slow_address, _server) = serve_rpc_worker(slow).await;
        let directory = Directory::new();
        let shard = ShardService::start(
            ClassSet::default_four(),
            ShardConfig {
                poll_timeout: Duration::from_secs(30),
                ..ShardConfig::default()
            },
            directory.clone(),
        );
        directory.add_worker(([127, 0, 0, 1], 1).into(), Arc::new(FakeWorker::default()));
        register_at(&shard, 1, 1, Duration::ZERO);
        let registered = LocalShard::register(
            &shard,
            Registration {
                address: format!("http://{slow_address}"),
                memory_mb: 1024,
                cores: 1,
                lease: Duration::ZERO,
                incarnation: 1,
            },
        )
        .unwrap();
        assert_eq!(registered.worker, MachineId(1));
        // Both workers are sampled (k = 3 > 2): every decision polls the hung one.
        for id in 0..3 {
            let outcome = LocalShard::invoke(&shard, invocation(id, 3)).await;
            assert_eq!(outcome.worker, MachineId(0), "{outcome:?}");
        }
        assert!(
            started.load(Ordering::Relaxed) >= 1,
            "the hung worker was polled"
        );
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            0,
            "a decision waited for a hung poll until its timeout"
        );
    }

    /// Places `n` invocations one after another on a shard whose only worker is a
    /// [`RpcWorker`], with load reports standing in for polls for `report_fresh_for`: the
    /// polls the worker got.
    async fn polls_for(n: u64, report_fresh_for: Duration) -> u32 {
        let worker = RpcWorker::default();
        let polls = worker.polls.clone();
        let (address, server) = serve_rpc_worker(worker).await;
        let shard = ShardService::start(
            ClassSet::default_four(),
            ShardConfig {
                report_fresh_for,
                ..ShardConfig::default()
            },
            Directory::new(),
        );
        register_at(&shard, address.port(), 1, Duration::ZERO);
        for id in 0..n {
            let outcome = LocalShard::invoke(&shard, invocation(id, 3)).await;
            assert!(outcome.ending.is_ok(), "{outcome:?}");
        }
        // Not on the idle list (it never joined): every placement was a power-of-k decision.
        assert_eq!(shard.counters().placed_polling, n);
        server.abort();
        polls.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_fresh_load_report_stands_in_for_a_poll() {
        // The first decision polls (no report yet); every later one uses the report that came
        // with the previous outcome.
        assert_eq!(polls_for(5, Duration::from_secs(60)).await, 1);
        // Reports off: every decision polls.
        assert_eq!(polls_for(5, Duration::ZERO).await, 5);
    }

    #[test]
    fn a_report_counts_what_the_shard_sent_since() {
        let report = proto::PollReply {
            functions: 2,
            room_mb: 100,
            ahead: 1,
            cores: 2,
        };
        let machine = MachineId(4);
        let mut sent = SentSince::default();
        sent.add(7, ClassId(3), 10);
        sent.add(7, ClassId(0), 5);
        // For class 1: both are functions, the critical one is ahead, both took room.
        let reply = sent.apply(7, machine, ClassId(1), &report);
        assert_eq!(
            (
                reply.machine,
                reply.functions,
                reply.ahead,
                reply.room_mb,
                reply.cores
            ),
            (machine, 4, 2, 85, 2)
        );
        // For the bottom class both are ahead.
        assert_eq!(sent.apply(7, machine, ClassId(0), &report).ahead, 3);
        // A newer report already shows them: nothing is added.
        let newer = sent.apply(8, machine, ClassId(1), &report);
        assert_eq!((newer.functions, newer.ahead, newer.room_mb), (2, 1, 100));
        // Sending under the newer report starts the count again.
        sent.add(8, ClassId(2), 1);
        let again = sent.apply(8, machine, ClassId(0), &report);
        assert_eq!((again.functions, again.ahead, again.room_mb), (3, 2, 99));
        // Unlimited room stays unlimited.
        let unlimited = proto::PollReply {
            room_mb: u64::MAX,
            ..report
        };
        assert_eq!(
            sent.apply(8, machine, ClassId(0), &unlimited).room_mb,
            u64::MAX
        );
    }

    #[tokio::test]
    async fn a_killed_invocation_is_placed_again_up_to_the_requeue_limit_then_fails() {
        let killed = Err(Failure::new(FailureKind::Killed, "killed"));
        let config = ShardConfig {
            requeue_max: 2,
            ..ShardConfig::default()
        };
        let (shard, runs) = shard_with_worker(config, killed).await;
        let outcome = LocalShard::invoke(&shard, invocation(1, 0)).await;
        assert_eq!(outcome.failure_kind(), Some(FailureKind::Unavailable));
        assert_eq!(outcome.attempts, 3, "one placement and two again");
        assert_eq!(runs.load(Ordering::Relaxed), 3);
        assert_eq!(shard.counters().replaced, 2);
    }

    #[tokio::test]
    async fn past_its_queue_bound_a_shard_refuses_at_once_and_keeps_what_it_queued() {
        let config = ShardConfig {
            queue_invocations_max: 2,
            ..ShardConfig::default()
        };
        // No worker: whatever is accepted waits.
        let shard = ShardService::start(ClassSet::default_four(), config, Directory::new());
        let waiting: Vec<_> = (0..2)
            .map(|id| tokio::spawn(LocalShard::invoke(&shard, invocation(id, 0))))
            .collect();
        while shard.queued() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = LocalShard::invoke(&shard, invocation(9, 3)).await;
        assert_eq!(refused.failure_kind(), Some(FailureKind::Overloaded));
        assert!(format!("{refused:?}").contains("shard_queue_invocations_max"));
        assert_eq!(shard.queued(), 2);
        assert!(waiting.iter().all(|w| !w.is_finished()));
    }

    #[tokio::test]
    async fn past_a_concurrency_limit_invocations_wait_at_the_gate_and_pass_by_class() {
        // No worker: an invocation past the gate waits in the placement queue, holding its
        // slot until it is answered (here: cancelled).
        let shard = ShardService::start(
            ClassSet::default_four(),
            ShardConfig::default(),
            Directory::new(),
        );
        let limited = |id, class| Invocation {
            concurrency_limits: vec![Limit {
                key: "function:app/f".into(),
                max: 1,
            }],
            ..invocation(id, class)
        };
        let (first, low, high) = (limited(1, 0), limited(2, 0), limited(3, 3));
        let cancels = [
            first.cancel.clone(),
            low.cancel.clone(),
            high.cancel.clone(),
        ];
        let first = tokio::spawn(LocalShard::invoke(&shard, first));
        while shard.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let low = tokio::spawn(LocalShard::invoke(&shard, low));
        let high = tokio::spawn(LocalShard::invoke(&shard, high));
        while shard.gate_waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            shard.queued(),
            1,
            "the others wait at the gate, not in the queue"
        );
        assert_eq!(shard.gate_in_flight("function:app/f"), 1);
        // The first is answered: the higher class passes, the other keeps waiting.
        cancels[0].cancel();
        assert_eq!(
            first.await.unwrap().failure_kind(),
            Some(FailureKind::Cancelled)
        );
        while shard.gate_waiting() > 1 || shard.queued() < 1 {
            tokio::task::yield_now().await;
        }
        cancels[1].cancel();
        let outcome = low.await.unwrap();
        assert_eq!(outcome.failure_kind(), Some(FailureKind::Cancelled));
        assert!(
            format!("{outcome:?}").contains("concurrency limit"),
            "the low class was the one still waiting at the gate: {outcome:?}"
        );
        assert_eq!((shard.gate_waiting(), shard.queued()), (0, 1));
        assert_eq!(
            shard.gate_in_flight("function:app/f"),
            1,
            "the high class holds the slot"
        );
        assert!(!high.is_finished());
        cancels[2].cancel();
        assert_eq!(
            high.await.unwrap().failure_kind(),
            Some(FailureKind::Cancelled)
        );
        assert_eq!(shard.gate_in_flight("function:app/f"), 0);
        assert!(shard
            .metrics()
            .contains("turnpike_shard_concurrency_waiting 0"));
    }

    #[tokio::test]
    async fn a_cancelled_invocation_leaves_the_queue_unbilled_and_the_others_stay() {
        // No worker: whatever is accepted waits.
        let shard = ShardService::start(
            ClassSet::default_four(),
            ShardConfig::default(),
            Directory::new(),
        );
        let (kept, gone) = (invocation(1, 0), invocation(2, 0));
        let cancel = gone.cancel.clone();
        let kept = tokio::spawn(LocalShard::invoke(&shard, kept));
        let gone = tokio::spawn(LocalShard::invoke(&shard, gone));
        while shard.queued() < 2 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        let outcome = gone.await.unwrap();
        assert_eq!(outcome.failure_kind(), Some(FailureKind::Cancelled));
        assert_eq!(
            (&outcome.usage, outcome.attempts),
            (&None, 0),
            "it never ran"
        );
        assert_eq!(outcome.billable(), None);
        assert_eq!(shard.queued(), 1, "it left the placement queue too");
        assert_eq!(shard.counters().cancelled_queued, 1);
        assert!(!kept.is_finished());
    }

    #[tokio::test]
    async fn an_unknown_class_is_the_callers_error() {
        let shard = ShardService::start(
            ClassSet::default_four(),
            ShardConfig::default(),
            Directory::new(),
        );
        let outcome = LocalShard::invoke(&shard, invocation(1, 4)).await;
        assert_eq!(outcome.failure_kind(), Some(FailureKind::BadRequest));
    }

    fn bytes_of(text: &str) -> bytes::Bytes {
        bytes::Bytes::from(text.to_string())
    }
}
