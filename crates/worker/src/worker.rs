//! The priority executor: C core slots, handed out by the policy core's machine scheduler.
//!
//! Every invocation runs as one tokio task on a multi-thread runtime with C threads
//! ([`SlotThreads`]). Its future is wrapped in a gate that polls the guest only while the
//! [`Machine`] says the invocation holds a slot:
//!
//! - arrival: `Machine::handle_arrival`; then the machine's actions are applied in order.
//!   `Start`/`Resume` mark the invocation running and wake its task; `Preempt` marks it waiting
//!   and bumps the engine epoch at once, so the running guest reaches an epoch check and yields
//!   within microseconds instead of waiting for the next tick. A yielded guest's task is polled
//!   again, finds its gate closed and stays parked (its fiber and memory untouched) until a
//!   `Resume` wakes it.
//! - a running guest yields at every epoch tick (`UpdateDeadline::Yield`), which wakes its own
//!   task; that wake is how the gate tells "yielded, still runnable" from "blocked". A guest
//!   whose poll returned `Pending` without any wake during that poll is waiting on I/O (a
//!   sleep, a body read): it gives its slot back at once (`Machine::handle_blocked`; it keeps
//!   its memory and its arrival order), and comes back when its I/O wakes it
//!   (`Machine::handle_ready`), to run when the machine says so.
//! - end (response, error, timeout, [`InvocationHandle::cancel`], or the caller dropping the
//!   handle): `handle_completion`.
//!
//! One `std::sync::Mutex` guards the machine and the per-invocation gate states together, so a
//! wake, a poll's end and a machine decision are never interleaved; it is held for a few
//! microseconds at a time, never across a guest poll.
//!
//! Why one multi-thread runtime with C threads rather than one current-thread runtime per
//! slot: the machine decides how many invocations run, not where; with a runtime per slot, an
//! invocation would be pinned to the thread it started on and could not use whichever slot
//! frees up next. With C threads and at most C gates open, each running guest has a thread.
//! That runtime is the worker's own, or the process's when the process exists to run the
//! worker ([`SlotThreads::Runtime`]: the invocation then reaches its gate without a hop
//! between threads).
//!
//! Timeouts are counted from the first time an invocation gets a slot (queueing behind higher
//! classes does not count; later parked and blocked time does), and are enforced by the gate
//! itself, so a parked or blocked invocation times out too.
//!
//! Memory (with `WorkerConfig::memory_mb`): the gate reports each invocation's measured
//! linear memory to the machine after every poll, and carries out its memory decisions:
//! `SwapOut` goes to the worker's swap thread, `SwapIn` is done by the gate right before the
//! guest's next poll, and `Kill` ends the invocation with [`InvokeError::Killed`] so the
//! caller can requeue it (see [`crate::swap`]).
//!
//! Memory billing ([`Usage::memory_mb_seconds`]): an invocation's linear memory accrues
//! MB-seconds only while it is running on a slot or blocked on its own I/O, the time it would
//! also have spent holding that memory on an idle machine. Time the worker made it wait is
//! not billed: queued before its first run, parked by a preemption (whether or not its memory
//! was swapped out meanwhile), woken from its I/O but not yet given a slot back, killed and
//! not yet ended, and the swap-in on its slot before it runs again. Blocked time is billed
//! even if the machine swapped the blocked invocation out meanwhile, since its own I/O, not
//! the swap, kept it waiting. The gate's phase says which (`Phase::billed`), applied to the
//! invocation's [`MemoryMeter`] at every phase change under the scheduler lock
//! (`GateState::set_phase`), and around every swap-in. So a batch invocation starved for
//! minutes by critical work is billed about the MB-seconds of the same invocation run alone,
//! as its CPU time ([`Usage::cpu`], which leaves out swap-ins too) already was; only its
//! [`Usage::wall`] grows.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use turnpike_policy::machine::{Machine, MachineAction, MachineConfig};
use turnpike_policy::memory::{MemoryConfig, MemoryStats};
use turnpike_policy::{ClassId, InvocationId};
use wasmtime::Engine;

use crate::calls::Caller;
use crate::config::{SlotThreads, WorkerConfig};
use crate::error::InvokeError;
use crate::guest::{self, Outgoing, Request, Response, ResponseOut, ResponseWriter};
use crate::meter::{thread_cpu_time, MemoryMeter, Usage, BYTES_PER_MB};
use crate::runtime::{Function, Runtime, StartError};
use crate::swap::{InvocationMemory, SwapTotals};

/// How one invocation should run; unset limits take the worker's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvokeOptions {
    pub class: ClassId,
    pub memory_cap_mb: Option<u64>,
    pub timeout: Option<Duration>,
    /// Its depth in a call chain: 0 for an outside request, the caller's depth + 1 for a call
    /// from another function (see [`crate::calls`]).
    pub depth: u32,
    /// Memory it is charged when it arrives, MB, until it reports its real use: what the
    /// shard placed it by (the gateway's `start_mb`). `None`: the worker's own
    /// [`WorkerConfig::start_mb`](crate::WorkerConfig).
    pub start_mb: Option<u64>,
    /// The call token its guest's calls to other functions carry ([`Caller::token`]);
    /// `None`: they are refused.
    pub call_token: Option<Arc<str>>,
    /// Its trace context (W3C `traceparent`), which its guest's calls carry unless the guest
    /// set its own ([`Caller::traceparent`]).
    pub traceparent: Option<Arc<str>>,
    /// Where its response goes (collected into the outcome by default) and its body's limit.
    pub response: ResponseOut,
}

impl InvokeOptions {
    pub fn class(class: ClassId) -> Self {
        Self {
            class,
            memory_cap_mb: None,
            timeout: None,
            depth: 0,
            start_mb: None,
            call_token: None,
            traceparent: None,
            response: ResponseOut::default(),
        }
    }

    pub fn traceparent(mut self, traceparent: Arc<str>) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// Streams the response into `writer` as the guest writes it.
    pub fn stream_to(mut self, writer: Arc<dyn ResponseWriter>) -> Self {
        self.response.writer = Some(writer);
        self
    }

    /// Holds the response body to `bytes` (cut there, or refused before its head when its
    /// `content-length` says more).
    pub fn response_bytes_max(mut self, bytes: u64) -> Self {
        self.response.bytes_max = Some(bytes);
        self
    }

    pub fn call_token(mut self, token: Arc<str>) -> Self {
        self.call_token = Some(token);
        self
    }

    pub fn start_mb(mut self, mb: u64) -> Self {
        self.start_mb = Some(mb);
        self
    }

    pub fn depth(mut self, depth: u32) -> Self {
        self.depth = depth;
        self
    }

    pub fn memory_cap_mb(mut self, mb: u64) -> Self {
        self.memory_cap_mb = Some(mb);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How an invocation ended, with what it used either way.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: InvocationId,
    pub result: Result<Response, InvokeError>,
    pub usage: Usage,
}

/// Where a worker's gates run ([`SlotThreads`]).
enum Executor {
    Own(tokio::runtime::Runtime),
    Shared(tokio::runtime::Handle),
}

impl Executor {
    fn spawn(&self, gate: Gate) -> tokio::task::JoinHandle<Outcome> {
        match self {
            Self::Own(runtime) => runtime.spawn(gate),
            Self::Shared(handle) => handle.spawn(gate),
        }
    }
}

/// A worker: a [`Runtime`] and C core slots scheduled by the policy core's [`Machine`].
pub struct Worker {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    config: WorkerConfig,
    executor: Option<Executor>,
    next_id: AtomicU64,
    /// This worker's own directory of swap files (inside `config.swap_dir`).
    swap_dir: PathBuf,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    sched: Mutex<Sched>,
    engine: Engine,
    /// Swap-outs that failed (the memory stayed resident), for operators and tests.
    swap_failures: AtomicU64,
}

struct Sched {
    machine: Machine,
    invocations: HashMap<InvocationId, GateState>,
    /// Swap-outs for the swap thread.
    swap_jobs: mpsc::Sender<Arc<InvocationMemory>>,
    /// Preemptions so far, by the preempted invocation's class.
    preemptions: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started yet, preempted (swapped out or not), or woken from I/O and not yet given a
    /// slot back: the gate is closed. Its memory is not billed.
    Waiting,
    /// Holds a slot: the gate is open. Its memory is billed.
    Running,
    /// Waiting on its own I/O: holds no slot until it is woken. Its memory is billed.
    Blocked,
    /// Killed by the machine to free memory; its gate ends it at the next poll. Its memory is
    /// not billed.
    Killed,
}

impl Phase {
    /// Whether the invocation's memory accrues MB-seconds in this phase (see the module docs).
    fn billed(self) -> bool {
        matches!(self, Phase::Running | Phase::Blocked)
    }
}

#[derive(Debug)]
struct GateState {
    /// Changed only through [`GateState::set_phase`], which keeps `meter` billing in step.
    phase: Phase,
    /// The task's waker, to wake it on `Start`/`Resume`.
    task: Option<Waker>,
    /// Whether the guest asked to be polled again since its last poll began.
    woken: bool,
    /// Memory last reported to the machine, MB.
    mem_mb: u64,
    /// Its memory meter, told at every phase change whether its memory is billed.
    meter: Arc<MemoryMeter>,
    memory: Arc<InvocationMemory>,
    class: ClassId,
    parks: u32,
    blocks: u32,
    /// [`InvocationHandle::cancel`] was called: its gate ends it at the next poll, whatever
    /// its phase.
    cancelled: bool,
}

impl GateState {
    /// Moves the invocation to `phase` at `now` and starts or stops billing its memory
    /// accordingly ([`Phase::billed`]). Every phase change goes through here, under the
    /// scheduler lock, so billing follows the phases exactly.
    fn set_phase(&mut self, phase: Phase, now: Instant) {
        if phase.billed() != self.phase.billed() {
            self.meter.set_billed(phase.billed(), now);
        }
        self.phase = phase;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        // Every update under this lock is completed before it is released and none of them
        // can panic half-way except on a broken invariant, which `Machine` asserts anyway.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sched {
    /// Carries out the machine's decisions in order; returns whether a running guest must be
    /// made to yield now (a preemption).
    #[must_use]
    fn apply(&mut self) -> bool {
        let mut bump = false;
        while let Some(action) = self.machine.poll_action() {
            let now = Instant::now();
            match action {
                MachineAction::Start(id) | MachineAction::Resume(id) => {
                    if let Some(g) = self.invocations.get_mut(&id) {
                        debug_assert_ne!(g.phase, Phase::Blocked);
                        g.set_phase(Phase::Running, now);
                        if let Some(task) = &g.task {
                            task.wake_by_ref();
                        }
                    }
                }
                MachineAction::Preempt(id) => {
                    if let Some(g) = self.invocations.get_mut(&id) {
                        if let Some(n) = self.preemptions.get_mut(g.class.index()) {
                            *n += 1;
                        }
                        g.set_phase(Phase::Waiting, now);
                        g.parks += 1;
                        bump = true;
                    }
                }
                MachineAction::SwapOut { id, .. } => {
                    if let Some(g) = self.invocations.get(&id) {
                        g.memory.request_out();
                        // The swap thread lives as long as this sender; a send cannot fail
                        // before the worker is gone.
                        let _ = self.swap_jobs.send(g.memory.clone());
                    }
                }
                MachineAction::SwapIn { id, .. } => {
                    if let Some(g) = self.invocations.get(&id) {
                        g.memory.request_in();
                    }
                }
                MachineAction::Kill(id) => {
                    if let Some(g) = self.invocations.get_mut(&id) {
                        // A running one stops at its next epoch check.
                        bump |= g.phase == Phase::Running;
                        g.set_phase(Phase::Killed, now);
                        if let Some(task) = &g.task {
                            task.wake_by_ref();
                        }
                    }
                }
            }
        }
        bump
    }

    /// Settles after a change; bumps the epoch if a guest was preempted.
    fn settle(&mut self, engine: &Engine) {
        if self.apply() {
            engine.increment_epoch();
        }
    }
}

impl Worker {
    pub fn new(runtime: Arc<Runtime>, config: WorkerConfig) -> Result<Self, StartError> {
        assert!(config.cores > 0, "a worker needs at least one core slot");
        if !runtime.config().epoch_interruption {
            return Err(StartError::NoEpochInterruption);
        }
        let memory = match config.memory_mb {
            None => None,
            Some(capacity_mb) => {
                if !runtime.config().swappable_memory {
                    return Err(StartError::NotSwappable);
                }
                let memory = MemoryConfig::new(capacity_mb, config.swap_mb);
                memory.validate().map_err(StartError::Memory)?;
                Some(memory)
            }
        };
        let machine = Machine::new(
            MachineConfig {
                cores: config.cores,
                memory,
            },
            config.classes.len(),
        );
        static WORKERS: AtomicU64 = AtomicU64::new(0);
        let swap_dir = config.swap_dir.join(format!(
            "turnpike-swap-{}-{}",
            std::process::id(),
            WORKERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&swap_dir).map_err(|source| StartError::SwapDir {
            path: swap_dir.clone(),
            source,
        })?;
        let executor = match &config.slot_threads {
            SlotThreads::Own => Executor::Own(
                crate::config::slot_runtime(config.cores)
                    .build()
                    .map_err(|e| StartError::Engine(format!("executor threads: {e}")))?,
            ),
            SlotThreads::Runtime(handle) => Executor::Shared(handle.clone()),
        };
        let (swap_jobs, swap_queue) = mpsc::channel::<Arc<InvocationMemory>>();
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched {
                machine,
                invocations: HashMap::new(),
                swap_jobs,
                preemptions: vec![0; config.classes.len()],
            }),
            engine: runtime.engine().clone(),
            swap_failures: AtomicU64::new(0),
        });
        // Swap-outs write hundreds of MB; they run here, off the slots and off the lock. The
        // thread ends when the last sender (inside `shared`) is gone.
        let swapper = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("turnpike-swap".into())
            .spawn(move || {
                for memory in swap_queue {
                    if memory.swap_out().is_err() {
                        if let Some(shared) = swapper.upgrade() {
                            shared.swap_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .map_err(|e| StartError::Engine(format!("swap thread: {e}")))?;
        Ok(Self {
            shared,
            runtime,
            config,
            executor: Some(executor),
            next_id: AtomicU64::new(1),
            swap_dir,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Invocations on this worker (running, parked, blocked on I/O, or not started).
    pub fn functions(&self) -> u32 {
        self.shared.lock().machine.functions()
    }

    /// Linear memory of the invocations the machine holds, as last measured, MB (what the
    /// dispatcher will report to its shard). Not-yet-started ones count their start memory.
    pub fn used_mb(&self) -> u64 {
        self.shared.lock().machine.used_mb()
    }

    /// Invocations currently holding a slot.
    pub fn running(&self) -> Vec<InvocationId> {
        self.shared.lock().machine.running().to_vec()
    }

    /// Memory an invocation of `class` could get here now, MB: free memory plus what lower
    /// classes hold and swap could take (`u64::MAX` without a memory capacity). What a shard's
    /// power-of-k poll asks.
    pub fn room_for(&self, class: ClassId) -> u64 {
        self.shared.lock().machine.room_for(class)
    }

    /// What the machine answers a shard polling it for an invocation of `class`
    /// (`Machine::poll_reply`), in one look.
    pub fn poll_reply(&self, class: ClassId) -> turnpike_policy::placement::PollReply {
        let machine = turnpike_policy::MachineId(0);
        self.shared.lock().machine.poll_reply(machine, class)
    }

    /// [`Worker::poll_reply`] for every class, by class index, in one look: the load report a
    /// worker sends with each outcome.
    pub fn poll_replies(&self) -> Vec<turnpike_policy::placement::PollReply> {
        let machine = turnpike_policy::MachineId(0);
        let sched = self.shared.lock();
        (0..self.config.classes.len())
            .map(|c| sched.machine.poll_reply(machine, ClassId(c as u8)))
            .collect()
    }

    /// Cores no invocation holds or waits for (`Machine::idle_cores`).
    pub fn idle_cores(&self) -> u32 {
        self.shared.lock().machine.idle_cores()
    }

    /// Swap space in use, MB, by the machine's ledger.
    pub fn swap_used_mb(&self) -> u64 {
        self.shared.lock().machine.swap_used_mb()
    }

    /// Swap-outs, swapped MB, swap-ins and kills by class.
    pub fn memory_stats(&self) -> MemoryStats {
        self.shared.lock().machine.memory_stats().clone()
    }

    /// Preemptions by the machine scheduler so far.
    pub fn preemptions(&self) -> u64 {
        self.shared.lock().preemptions.iter().sum()
    }

    /// Preemptions so far by the preempted invocation's class, lowest class first.
    pub fn preemptions_by_class(&self) -> Vec<u64> {
        self.shared.lock().preemptions.clone()
    }

    /// Swap-outs that failed (disk full, say); the memory stayed resident.
    pub fn swap_failures(&self) -> u64 {
        self.shared.swap_failures.load(Ordering::Relaxed)
    }

    /// This worker's swap directory.
    pub fn swap_dir(&self) -> &std::path::Path {
        &self.swap_dir
    }

    /// Places an invocation on this worker now (its arrival order is fixed when this returns)
    /// and returns a handle that resolves to its outcome. Dropping the handle cancels it.
    pub fn submit(
        &self,
        function: &Arc<Function>,
        request: Request,
        options: InvokeOptions,
    ) -> InvocationHandle {
        let id = InvocationId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let submitted = Instant::now();
        let class = options.class;
        let start_mb = options.start_mb.unwrap_or(self.config.start_mb);
        let refuse = |error| InvocationHandle::ready(id, class, error);
        if class.index() >= self.config.classes.len() {
            return refuse(InvokeError::UnknownClass {
                class: class.0,
                classes: self.config.classes.len(),
            });
        }
        let cap_mb = options.memory_cap_mb.unwrap_or(self.config.memory_cap_mb);
        let max_mb = self.runtime.config().memory_max_mb;
        if cap_mb > max_mb {
            return refuse(InvokeError::CapTooLarge { cap_mb, max_mb });
        }
        let Some(executor) = &self.executor else {
            return refuse(InvokeError::Shutdown);
        };

        // Waiting for a slot until the machine starts it: unbilled.
        let meter = Arc::new(MemoryMeter::unbilled(submitted));
        let memory = InvocationMemory::new(self.swap_dir.join(format!("{}.swap", id.0)));
        let inner = Box::pin(guest::run(
            function.pre().clone(),
            request,
            cap_mb.saturating_mul(BYTES_PER_MB),
            meter.clone(),
            Outgoing {
                platform: self.config.platform.clone(),
                caller: Caller {
                    class,
                    depth: options.depth,
                    token: options.call_token.clone(),
                    traceparent: options.traceparent.clone(),
                },
            },
            options.response,
        ));
        {
            let mut sched = self.shared.lock();
            sched.invocations.insert(
                id,
                GateState {
                    phase: Phase::Waiting,
                    task: None,
                    woken: false,
                    mem_mb: start_mb,
                    meter: meter.clone(),
                    memory: memory.clone(),
                    class,
                    parks: 0,
                    blocks: 0,
                    cancelled: false,
                },
            );
            sched
                .machine
                .handle_arrival(id, class, start_mb)
                .expect("invocation ids are fresh");
            sched.settle(&self.shared.engine);
        }
        let gate = Gate {
            id,
            class,
            shared: self.shared.clone(),
            inner: Some(inner),
            waker: Waker::from(Arc::new(GateWaker {
                id,
                shared: self.shared.clone(),
            })),
            meter,
            memory,
            timeout: options.timeout.unwrap_or_else(|| self.config.timeout()),
            deadline: None,
            submitted,
            first_run: None,
            cpu: Duration::ZERO,
            on_core: Duration::ZERO,
            finished: false,
        };
        InvocationHandle {
            id,
            class,
            state: HandleState::Running {
                join: executor.spawn(gate),
                shared: self.shared.clone(),
            },
        }
    }

    /// [`Worker::submit`] and wait for the outcome.
    pub async fn invoke(
        &self,
        function: &Arc<Function>,
        request: Request,
        options: InvokeOptions,
    ) -> Outcome {
        self.submit(function, request, options).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, and a worker may be dropped inside async code.
        if let Some(Executor::Own(executor)) = self.executor.take() {
            executor.shutdown_background();
        }
        // Swap files of invocations still alive are removed with them; this takes the rest.
        let _ = std::fs::remove_dir_all(&self.swap_dir);
    }
}

/// The outcome of a submitted invocation, once it ends. Dropping it cancels the invocation.
#[derive(Debug)]
pub struct InvocationHandle {
    id: InvocationId,
    class: ClassId,
    state: HandleState,
}

enum HandleState {
    Ready(Option<InvokeError>),
    Running {
        join: tokio::task::JoinHandle<Outcome>,
        shared: Arc<Shared>,
    },
}

impl std::fmt::Debug for HandleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(error) => f.debug_tuple("Ready").field(error).finish(),
            Self::Running { join, .. } => f.debug_tuple("Running").field(join).finish(),
        }
    }
}

impl InvocationHandle {
    fn ready(id: InvocationId, class: ClassId, error: InvokeError) -> Self {
        Self {
            id,
            class,
            state: HandleState::Ready(Some(error)),
        }
    }

    pub fn id(&self) -> InvocationId {
        self.id
    }

    /// Ends the invocation wherever it is (queued, running, parked, swapped out or waiting on
    /// I/O) with [`InvokeError::Cancelled`] and what it used so far; the handle still resolves
    /// to that outcome. A running guest is made to yield at once (the engine's epoch is bumped,
    /// as for a preemption), so it stops within microseconds, at most one epoch tick. No
    /// effect once it has ended.
    pub fn cancel(&self) {
        let HandleState::Running { shared, .. } = &self.state else {
            return;
        };
        let task = {
            let mut sched = shared.lock();
            let Some(g) = sched.invocations.get_mut(&self.id) else {
                return;
            };
            g.cancelled = true;
            if g.phase == Phase::Running {
                shared.engine.increment_epoch();
            }
            g.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Future for InvocationHandle {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let (id, class) = (self.id, self.class);
        match &mut self.state {
            HandleState::Ready(error) => {
                let error = error.take().unwrap_or(InvokeError::Shutdown);
                Poll::Ready(Outcome {
                    id,
                    result: Err(error),
                    usage: unused(class),
                })
            }
            HandleState::Running { join, .. } => match Pin::new(join).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
                Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the worker shut down.
                Poll::Ready(Err(_)) => Poll::Ready(Outcome {
                    id,
                    result: Err(InvokeError::Shutdown),
                    usage: unused(class),
                }),
            },
        }
    }
}

impl Drop for InvocationHandle {
    fn drop(&mut self) {
        if let HandleState::Running { join, .. } = &self.state {
            join.abort();
        }
    }
}

fn unused(class: ClassId) -> Usage {
    Usage {
        class,
        cpu: Duration::ZERO,
        on_core: Duration::ZERO,
        wall: Duration::ZERO,
        queued: Duration::ZERO,
        peak_memory_bytes: 0,
        memory_mb_seconds: 0.0,
        parks: 0,
        blocks: 0,
        swap: SwapTotals::default(),
    }
}

type GuestFuture = Pin<Box<dyn Future<Output = Result<Response, InvokeError>> + Send>>;

/// Polls an invocation's guest only while the machine lets it hold a slot, meters the time
/// spent in those polls, and enforces the timeout.
struct Gate {
    id: InvocationId,
    class: ClassId,
    shared: Arc<Shared>,
    /// `None` once finished: the store is dropped as soon as the outcome is known.
    inner: Option<GuestFuture>,
    /// Passed to the guest instead of the task's waker (see [`GateWaker`]).
    waker: Waker,
    meter: Arc<MemoryMeter>,
    memory: Arc<InvocationMemory>,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    submitted: Instant,
    first_run: Option<Instant>,
    cpu: Duration,
    on_core: Duration,
    finished: bool,
}

impl Future for Gate {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let limit_ms = u64::try_from(this.timeout.as_millis()).unwrap_or(u64::MAX);
                return Poll::Ready(this.finish(Err(InvokeError::Timeout { limit_ms })));
            }
        }
        {
            let mut sched = this.shared.lock();
            let g = sched
                .invocations
                .get_mut(&this.id)
                .expect("an invocation stays registered until its gate finishes");
            debug_assert_eq!(g.meter.billed(), g.phase.billed(), "{:?}", g.phase);
            if !g.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                g.task = Some(cx.waker().clone());
            }
            if g.cancelled {
                drop(sched);
                return Poll::Ready(this.finish(Err(InvokeError::Cancelled)));
            }
            match g.phase {
                Phase::Running => g.woken = false,
                Phase::Killed => {
                    drop(sched);
                    return Poll::Ready(this.finish(Err(InvokeError::Killed)));
                }
                Phase::Waiting | Phase::Blocked => return Poll::Pending,
            }
        }
        if this.first_run.is_none() {
            this.first_run = Some(Instant::now());
            let mut deadline = Box::pin(tokio::time::sleep(this.timeout));
            if deadline.as_mut().poll(cx).is_ready() {
                let limit_ms = u64::try_from(this.timeout.as_millis()).unwrap_or(u64::MAX);
                return Poll::Ready(this.finish(Err(InvokeError::Timeout { limit_ms })));
            }
            this.deadline = Some(deadline);
        }

        let inner = this
            .inner
            .as_mut()
            .expect("a finished gate is not polled again");
        // Swap-in (if it was swapped out) counts as this invocation's time on the core, but
        // neither its memory nor its CPU is billed meanwhile: the swap was the platform's doing.
        let wall_before = Instant::now();
        this.meter.set_restoring(true, wall_before);
        let running = match this.memory.enter() {
            Ok(running) => running,
            Err(e) => return Poll::Ready(this.finish(Err(InvokeError::SwapIn(e.to_string())))),
        };
        this.meter.set_restoring(false, Instant::now());
        let cpu_before = thread_cpu_time();
        let poll = inner.as_mut().poll(&mut Context::from_waker(&this.waker));
        drop(running);
        this.cpu += thread_cpu_time().saturating_sub(cpu_before);
        this.on_core += wall_before.elapsed();

        match poll {
            Poll::Ready(result) => Poll::Ready(this.finish(result)),
            Poll::Pending => {
                let mb = this.meter.bytes().div_ceil(BYTES_PER_MB);
                let mut sched = this.shared.lock();
                let Sched {
                    machine,
                    invocations,
                    ..
                } = &mut *sched;
                let g = invocations
                    .get_mut(&this.id)
                    .expect("an invocation stays registered until its gate finishes");
                let mut changed = false;
                if g.mem_mb != mb {
                    g.mem_mb = mb;
                    machine.handle_memory(this.id, mb);
                    changed = true;
                }
                if !g.woken && matches!(g.phase, Phase::Running | Phase::Waiting) {
                    // Pending with no wake during the poll: waiting on I/O, not on the CPU.
                    g.set_phase(Phase::Blocked, Instant::now());
                    g.blocks += 1;
                    machine.handle_blocked(this.id);
                    changed = true;
                }
                if changed {
                    sched.settle(&this.shared.engine);
                }
                Poll::Pending
            }
        }
    }
}

impl Gate {
    fn finish(&mut self, result: Result<Response, InvokeError>) -> Outcome {
        // Drop the store (and a still-running guest with it) before taking the lock: dropping
        // it can wake things.
        self.inner = None;
        self.deadline = None;
        let now = Instant::now();
        let (peak_memory_bytes, memory_mb_seconds) = self.meter.totals(now);
        let (parks, blocks) = self.unregister();
        let swap = self.memory.totals();
        Outcome {
            id: self.id,
            result,
            usage: Usage {
                class: self.class,
                cpu: self.cpu,
                on_core: self.on_core,
                wall: now.saturating_duration_since(self.submitted),
                queued: self.first_run.map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(self.submitted)
                }),
                peak_memory_bytes,
                memory_mb_seconds,
                parks,
                blocks,
                swap,
            },
        }
    }

    /// Removes the invocation from the machine and the gate table; returns (parks, blocks).
    fn unregister(&mut self) -> (u32, u32) {
        self.finished = true;
        let mut sched = self.shared.lock();
        let Some(g) = sched.invocations.remove(&self.id) else {
            return (0, 0);
        };
        sched.machine.handle_completion(self.id);
        sched.settle(&self.shared.engine);
        (g.parks, g.blocks)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if !self.finished {
            // Cancelled (handle dropped, or the worker shut down).
            self.inner = None;
            self.unregister();
        }
    }
}

/// The waker a guest sees. A wake marks the invocation as wanting the CPU; a blocked one is
/// reported ready to the machine; then the task is woken (its gate decides whether to poll).
struct GateWaker {
    id: InvocationId,
    shared: Arc<Shared>,
}

impl Wake for GateWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = {
            let mut sched = self.shared.lock();
            let Sched {
                machine,
                invocations,
                ..
            } = &mut *sched;
            let Some(g) = invocations.get_mut(&self.id) else {
                return;
            };
            g.woken = true;
            let task = g.task.clone();
            if g.phase == Phase::Blocked {
                g.set_phase(Phase::Waiting, Instant::now());
                machine.handle_ready(self.id);
                sched.settle(&self.shared.engine);
            }
            task
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}
