//! Turnpike's gateway: the cluster's HTTP edge. Each request is mapped to a function, a price
//! class and a paying tenant ([`routing`]), admitted against the tenant's budget and the call
//! chain's depth, sent to a scheduler shard, and answered with the function's response; its
//! cost goes to the usage ledger ([`billing`]). The developer API under `/v1` ([`api`])
//! manages tenants, keys, uploads, apps and budgets on the durable store (`turnpike-store`);
//! [`async_invocations`] queues requests there and runs them later.
//! Uploaded components are checked by a [`components::ComponentCheck`] the assembler gives,
//! so this crate links no wasm runtime.

pub mod api;
pub mod async_invocations;
pub mod billing;
pub mod body;
pub mod components;
pub mod dashboard;
mod edge;
pub mod gateway;
pub mod outbox;
pub mod refusal;
pub mod routing;

pub use components::{CheckError, ComponentCheck};
pub use gateway::{Gateway, GatewayConfig};
