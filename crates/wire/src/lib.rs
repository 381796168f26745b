//! What every role of a Turnpike cluster shares to talk to the others: an invocation and its
//! outcome as the roles handle them ([`invocation`]), and a response streamed back as it is
//! written ([`body`]); the RPC definitions
//! (`proto/turnpike.proto`, generated into [`proto`]), the conversions between them and the
//! roles' types ([`convert`]) and the connection settings every role uses ([`rpc`]) with mutual TLS and per-RPC roles ([`tls`]); links that multiplex invocations on one stream per pair of roles
//! ([`link`]); the directory of roles in the same process, called without RPC
//! ([`directory`]); the call-chain headers and token ([`chain`]); the HTTP serving loop
//! ([`http_server`]), the Prometheus metrics registry ([`metrics`]) and OpenTelemetry traces
//! across roles ([`telemetry`]). It depends on no role:
//! the gateway (`turnpike-gateway`), the scheduler shards (`turnpike-scheduler`) and the worker
//! nodes (`turnpike-node`) all depend on it.

pub mod body;
pub mod chain;
pub mod convert;
pub mod directory;
pub mod http_server;
pub mod invocation;
pub mod link;
pub mod metrics;
pub mod rpc;
pub mod telemetry;
pub mod tls;

/// Locks `m`, also after a panic elsewhere poisoned it: every lock here guards plain data
/// that a panicking holder leaves consistent (counters, maps updated in one step).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The generated RPC messages, clients and servers (`proto/turnpike.proto`).
#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("turnpike.v1");
}
