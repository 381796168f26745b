//! Turnpike's control plane: the roles of a running cluster as network services, speaking
//! gRPC (tonic) to each other on TCP - or, between roles of one process (`turnpike up`),
//! calling each other directly ([`local`]).
//!
//! - [`gateway`]: HTTP in (HTTP/1.1 and HTTP/2), routes to a function and a price class, a
//!   shard chosen per invocation, the function's response out.
//! - [`routing`]: the gateway's routing table - apps by host name, the operator's routes.
//! - [`api`]: the developer API under `/v1/` (tenants, keys, uploads, apps, invocation,
//!   usage, budgets; `docs/api.md`), on the durable store (`turnpike-store`).
//! - [`billing`]: cost of each invocation, the group-committed usage ledger, budgets.
//! - [`shard`]: the policy core's shard (per-class queues, idle list, power-of-k) behind the
//!   `Shard` service, placing invocations on workers (real or emulated) and retrying lost ones.
//! - [`node`]: a worker (the `turnpike-worker` runtime) behind the `Worker` service, and its
//!   dispatcher keeping it registered with every shard and on one idle list.
//! - [`chain`]: call chains - a worker's link to the gateway for its guests' calls to other
//!   functions, and the headers that carry the caller's class and the chain's depth.
//! - [`link`]: invocations multiplexed on one long-lived stream per gateway-shard and
//!   shard-worker pair.
//! - [`local`]: roles of the same process (`turnpike up`) calling each other directly.
//! - [`emulated`]: workers that run no wasm but emulate invocations (runtime and memory from
//!   the request) under the same machine policy, a thousand to a process, for scale tests.
//! - [`up`]: `turnpike up`, a whole cluster in one process with the demo app deployed.
//! - [`metrics`]: Prometheus `/metrics` for every role.
//! - [`wire`]: conversions between the RPC messages and the worker's types, and the
//!   connection settings every role uses (timeouts, keep-alive).
//!
//! The RPCs are defined in `proto/turnpike.proto`. Placement state is soft and in memory:
//! workers re-register with a restarted shard and re-join its idle list.

pub mod api;
pub mod billing;
pub mod chain;
pub mod emulated;
pub mod gateway;
pub mod http_server;
pub mod link;
pub mod local;
pub mod metrics;
pub mod node;
pub mod routing;
pub mod shard;
pub mod up;
pub mod wire;

/// Locks `m`, also after a panic elsewhere poisoned it: every lock here guards plain data
/// that a panicking holder leaves consistent (counters, maps updated in one step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The generated RPC messages, clients and servers (`proto/turnpike.proto`).
#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("turnpike.v1");
}
