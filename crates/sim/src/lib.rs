//! Turnpike's discrete-event cluster simulator: it drives the very policy code of
//! `turnpike-policy` over simulated machines to reproduce and extend the paper's evaluation.
//!
//! - [`config`]: an experiment as a TOML file, and the built-in presets.
//! - [`workload`]: synthetic workloads (paper 4.1) and [`trace`] replay (Azure Functions 2019).
//! - [`engine`]: the event loop for one scheduler at one load, on the [`queue`] of events.
//! - [`experiment`]: sweeps, summaries, CSV and the [`plot`]s, written into an output directory.
//! - [`sweep`]: one experiment repeated over cluster shapes (the `overload` preset).
//! - [`stats`]: percentiles and other summaries; [`sketch`]: the quantile sketch that keeps a
//!   run's latencies and slowdowns in memory that does not grow with its invocations.

pub mod config;
pub mod engine;
pub mod experiment;
pub mod plot;
pub mod queue;
pub mod sketch;
pub mod stats;
pub mod sweep;
pub mod trace;
pub mod workload;
