//! Turnpike's scheduler shard as a service: a thin driver of the policy core's `Shard`
//! (per-class queues, idle list, power of k; `turnpike_policy::shard`). Invocations arrive on
//! gateways' links, workers register and join its idle list by RPC, and one placement loop
//! polls workers and sends each placed invocation to its worker ([`shard`]).

pub mod shard;

pub use shard::{ShardConfig, ShardService};
