//! Configuration of the runtime (engine, pool, cache) and of the worker (slots, limits).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use turnpike_policy::ClassSet;

use crate::calls::Platform;

/// The wasmtime engine and its compile cache. Limits have names and units.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached, one file per content hash. Created if missing.
    /// Its files are loaded as executable code (after a digest check), so it must be writable
    /// only by the worker.
    pub cache_dir: PathBuf,
    /// How often the ticker thread bumps the engine epoch; a running guest yields to the
    /// executor at every tick, so this bounds how long a preemption or a timeout can wait.
    pub epoch_tick_ms: u64,
    /// Instances held at once (running, parked and blocked invocations together) by the
    /// pooling allocator; with swappable memory, the linear-memory reservations kept for reuse.
    /// Each reserves address space (about 4 GiB per linear memory), not memory.
    pub instances_max: u32,
    /// Largest linear memory any invocation may have; per-invocation caps must not exceed it.
    pub memory_max_mb: u64,
    /// When a pool slot is reused (or, with swappable memory, a linear-memory reservation),
    /// this much of its linear memory (and with the pooling allocator its async stack and
    /// tables) is reset in place (only the pages the last invocation dirtied, found with the
    /// kernel's `PAGEMAP_SCAN`) instead of being released to the kernel and faulted back in,
    /// so small invocations start without page faults or TLB shootdowns. Applies only where
    /// the kernel has `PAGEMAP_SCAN` (Linux 6.7+) and `pagemap_scan` is on: without it every
    /// reuse would clear the whole kept region, which measured slower than releasing it.
    pub keep_resident_kb: u64,
    /// Use `PAGEMAP_SCAN` when the kernel has it (see `keep_resident_kb`).
    pub pagemap_scan: bool,
    /// With swappable memory and `PAGEMAP_SCAN`: up to `warm_memories_max` free linear-memory
    /// reservations keep this much resident instead of `keep_resident_kb`, so a Python or
    /// JavaScript component's initialized image (tens of MB, copied into every new instance)
    /// lands in resident pages rather than being faulted in page by page. Costs up to
    /// `warm_memories_max * warm_memory_keep_resident_mb` of resident memory while idle.
    pub warm_memory_keep_resident_mb: u64,
    /// See `warm_memory_keep_resident_mb`.
    pub warm_memories_max: u32,
    /// Compile epoch checks into guest code. Always on for a worker (it is how guests are
    /// preempted and timed out; [`crate::Worker::new`] refuses a runtime without it); off
    /// only to measure what the checks cost.
    pub epoch_interruption: bool,
    /// Allocate guests' linear memories so the worker can swap them out (see [`crate::swap`]),
    /// with wasmtime's on-demand instance allocator. Off: wasmtime's pooling allocator, which
    /// instantiates faster (`cargo bench -p turnpike-worker` prints both) but whose memories
    /// cannot be reached to swap, so a worker with a memory capacity refuses such a runtime.
    pub swappable_memory: bool,
}

impl RuntimeConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            epoch_tick_ms: 1,
            instances_max: 256,
            memory_max_mb: 4096,
            keep_resident_kb: 2048,
            pagemap_scan: true,
            warm_memory_keep_resident_mb: 64,
            warm_memories_max: 4,
            epoch_interruption: true,
            swappable_memory: true,
        }
    }
}

/// One worker: its core slots, its classes and the default limits of an invocation.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Core slots: at most this many invocations run at once. Default: the machine's cores.
    pub cores: u32,
    /// The published price classes; an invocation's class indexes this set.
    pub classes: ClassSet,
    /// Default cap on an invocation's linear memory (all its memories together).
    pub memory_cap_mb: u64,
    /// Default wall-clock limit of an invocation, counted from when it first gets a slot.
    pub timeout_ms: u64,
    /// Memory an invocation is assumed to start with, for the machine scheduler's ledger
    /// (memory is measured once it runs).
    pub start_mb: u64,
    /// The worker's memory capacity for guests' linear memories, MB. Above 90% of it the
    /// policy core's memory manager swaps parked and blocked invocations out, lowest class
    /// first, down to 80%; when swap is full it kills by the core's rule. `None`: unlimited
    /// (no swapping, no kills).
    pub memory_mb: Option<u64>,
    /// Swap space, MB (with `memory_mb`).
    pub swap_mb: u64,
    /// Where swap files go; the worker makes its own directory inside and removes it when it
    /// is dropped. Default: the system's temporary directory.
    pub swap_dir: PathBuf,
    /// Where guests' calls to other functions go (`http://turnpike/...`, see
    /// [`crate::calls`]). `None`: such calls are denied like any other outgoing request.
    pub platform: Option<Arc<dyn Platform>>,
    /// Which threads run the slots (see [`SlotThreads`]).
    pub slot_threads: SlotThreads,
}

/// Which threads run a worker's invocations.
///
/// An invocation submitted from a thread that is not a slot thread is handed over to one:
/// a wake-up of a sleeping thread on the way in and another on the way out, which on this
/// project's 2-vCPU machines cost more than instantiating and running a small guest
/// (`cargo bench -p turnpike-worker --bench worker`: hello through a 1-slot worker 89-106 us
/// on its own threads against 16 us on the caller's runtime, the direct call 17-20 us).
#[derive(Clone, Debug, Default)]
pub enum SlotThreads {
    /// A runtime of the worker's own with `cores` threads ([`slot_runtime`]): the worker
    /// shares no thread with anything else in the process. The default, for a worker that is
    /// one part of a larger process (`turnpike up`, tests).
    #[default]
    Own,
    /// The runtime behind this handle, which should be built by [`slot_runtime`] for the
    /// worker's `cores`: a process that exists to run this worker (`turnpike worker`) receives
    /// invocations on the same threads that run them, so nothing crosses threads between the
    /// link and the guest. Guests then share those threads with the process's I/O, which is
    /// served whenever a guest yields (at every epoch tick, `RuntimeConfig::epoch_tick_ms`).
    /// Dropping the worker leaves its tasks to the runtime's own shutdown.
    Runtime(tokio::runtime::Handle),
}

/// The runtime configuration for `cores` slot threads: a running guest returns to the
/// scheduler at every epoch tick, and checking timers, I/O and newly spawned tasks at every
/// scheduler tick (instead of every 61st / 31st) keeps a sleeping guest's wake-up, a new
/// arrival or an I/O event from waiting tens of ticks behind it.
pub fn slot_runtime(cores: u32) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(cores.max(1) as usize)
        .event_interval(1)
        .global_queue_interval(1)
        .thread_name("turnpike-slot")
        .enable_all();
    builder
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            cores: u32::try_from(cores).unwrap_or(u32::MAX),
            classes: ClassSet::default_four(),
            memory_cap_mb: 1024,
            timeout_ms: 60_000,
            start_mb: turnpike_policy::memory::START_MB_DEFAULT,
            memory_mb: None,
            swap_mb: 8192,
            swap_dir: std::env::temp_dir(),
            platform: None,
            slot_threads: SlotThreads::Own,
        }
    }
}

impl WorkerConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
