//! The paper's comparison points (section 4.2), in the core so that both drivers can run them.
//!
//! - [`hermod`]: no classes; power-of-k least-loaded placement (see [`crate::placement`]),
//!   early binding, processor sharing on each machine.
//! - [`edf`]: one centralized machine with all the cores, preemptive earliest deadline first
//!   with `deadline = arrival + runtime x max_price / price` (an oracle: it knows runtimes).

pub mod edf;
pub mod hermod;
