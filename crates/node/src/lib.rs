//! Turnpike's worker node: a wasm worker (the `turnpike-worker` runtime) behind the `Worker`
//! service, and its dispatcher keeping it registered with every shard and on one idle list
//! ([`node`]); the worker's link to the gateway for its guests' calls ([`calls`]); the
//! conversions between the RPC messages and the runtime's types ([`convert`]); and workers
//! that run no wasm but emulate invocations under the same machine policy, a thousand to a
//! process, for scale tests ([`emulated`]).

pub mod calls;
pub mod convert;
pub mod emulated;
pub mod in_flight;
pub mod node;

pub use node::{NodeConfig, NodeService};
