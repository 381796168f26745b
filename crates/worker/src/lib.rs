//! Turnpike's worker runtime: WebAssembly functions run under the policy core's preemptive
//! priority machine scheduler, with per-invocation limits and metering (issue 3, "Worker
//! runtime").
//!
//! A function is a WebAssembly component exporting `wasi:http/incoming-handler` (the contract of
//! `wasmtime serve` and Spin). This crate holds what one machine needs to run them:
//!
//! - [`runtime`]: one wasmtime engine (component model, async, epoch interruption with a
//!   ticker thread every `epoch_tick_ms`; swappable memories by default, wasmtime's pooling
//!   allocator as the faster option for workers that never swap) and [`Runtime::load`], which
//!   compiles a component once, keyed by its SHA-256, and caches the compiled artifact on disk
//!   ([`cache`]) so a restarted worker does not recompile. Bytes that are not a component, a
//!   component that is not a `wasi:http` proxy, or one that needs imports the worker does not
//!   provide are refused with the reason ([`LoadError`]).
//! - [`guest`]: one invocation: its own store and instance, WASI with no filesystem and no
//!   network (outgoing HTTP denied but for calls to the platform), a linear-memory cap enforced by a resource limiter, and
//!   the response collected while the guest runs ([`InvokeError`] says how one failed).
//! - [`calls`]: the one outgoing request a guest may make, a call to another function through
//!   the platform (`http://turnpike/...`), sent with the caller's class and chain depth.
//! - [`meter`]: what an invocation used ([`Usage`]): CPU time on a core, peak and time-integrated
//!   linear memory, times parked and blocked, its class.
//! - [`worker`]: the priority executor. A [`Worker`] has C core slots and asks
//!   `turnpike_policy::machine::Machine` (it does not re-implement the policy) which invocations
//!   hold them; a preempted guest stops at its next epoch yield and is not polled again until
//!   the machine resumes it; a guest blocked on I/O gives its slot back; timeouts are enforced
//!   there too. With a memory capacity, the machine's memory manager decides swap-outs,
//!   swap-ins and kills, and the worker carries them out.
//! - [`swap`]: guests' linear memories, allocated by the worker so a parked or blocked
//!   invocation's memory can be written to a swap file and its pages released, then read back
//!   before it runs again; [`stacks`]: recycled fiber stacks.
//! - [`config`]: the limits, with names, units and defaults.
//!
//! Benchmarks: `cargo bench -p turnpike-worker --bench worker` (after
//! `scripts/build-examples.sh`).
//!
//! Environment note: with `RUST_BACKTRACE=1` (set on these machines) every trap captures a
//! host backtrace, which makes a failing invocation's error path tens of times slower; unset
//! it when measuring error paths.

pub mod cache;
pub mod calls;
pub mod config;
pub mod error;
pub mod guest;
pub mod meter;
mod pagemap;
pub mod runtime;
pub mod stacks;
pub mod swap;
pub mod worker;

pub use calls::{Caller, Platform};
pub use config::{slot_runtime, RuntimeConfig, SlotThreads, WorkerConfig};
pub use error::{InvokeError, LoadError};
pub use guest::{
    BodySource, BodyStream, Request, Response, ResponseOut, ResponseWriter, WriteFuture,
};
pub use meter::Usage;
pub use runtime::{Function, Runtime, RuntimeStats, StartError};
pub use worker::{InvocationHandle, InvokeOptions, Outcome, Worker};
