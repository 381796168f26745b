//! A whole Turnpike cluster in one process: `turnpike up`'s gateway, shards and workers,
//! calling each other directly through the wire crate's directory ([`up`]); the same builders
//! start the clusters of the integration tests and the benchmarks (`tests/`, `benches/`),
//! and the binary's one-role commands ([`roles`]).

pub mod roles;
pub mod up;
