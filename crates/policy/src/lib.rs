//! Turnpike's scheduling policies, as one pure and deterministic library.
//!
//! This crate is the heart of Turnpike (the system of `seeds/003` and `DESIGN.md`). It holds
//! every decision the paper describes and nothing else: no I/O, no clock, no randomness of its
//! own. Each entry point takes the current time (`now_ns`, nanoseconds on the caller's clock)
//! and, where it needs one, a caller-seeded RNG; it returns decisions. Two drivers run exactly
//! this code: the discrete-event simulator (`turnpike-sim`) and the real services.
//!
//! Where each concept lives:
//! - [`class`]: the fixed, published set of price classes.
//! - [`multi_queue`]: a scheduler shard's per-class FIFOs and the head-choice score.
//! - [`idle_list`]: a shard's list of machines with significant free memory.
//! - [`placement`]: power-of-k machine polling (used when the idle list is empty).
//! - [`shard`]: one scheduler shard: multi-queue, idle list and placement together, and the
//!   requeue rule for invocations that came back unanswered.
//! - [`shard_choice`]: the gateway's choice of a shard for each invocation.
//! - [`concurrency`]: concurrency limits, the gate a shard keeps in front of its queues.
//! - [`dispatcher`]: a machine's decisions about idle-list membership.
//! - [`machine`]: the preemptive priority machine scheduler, with its [`memory`] manager.
//! - [`baseline`]: Hermod (processor sharing) and EDF, the paper's comparison points.
//!
//! Inputs are named `handle_*`, outputs `poll_*`.

pub mod baseline;
pub mod class;
pub mod concurrency;
pub mod dispatcher;
pub mod idle_list;
pub mod machine;
pub mod memory;
pub mod multi_queue;
pub mod placement;
pub mod shard;
pub mod shard_choice;

pub use class::{ClassError, ClassId, ClassSet, PriceClass};

/// Identifies one invocation for its whole life, across requeues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InvocationId(pub u64);

/// Identifies one machine (a worker) of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(pub u32);

/// Identifies one scheduler shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

/// Nanoseconds per millisecond, for callers that convert.
pub const NS_PER_MS: u64 = 1_000_000;
