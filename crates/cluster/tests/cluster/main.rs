//! The whole-cluster tests of `turnpike-cluster`, in one test binary: every test binary links
//! the whole stack (wasmtime included), so one binary instead of five saves CI the four
//! other links. Each module was a binary of its own and says what it covers; every test holds
//! [`common::serial`] while it runs, as each binary's tests did among themselves and as the
//! binaries did by running one after another.

mod api;
mod bounds;
mod cancel;
mod common;
mod edge;
mod emulated;
mod fuzz;
mod link;
mod local;
mod outage;
mod stream;
mod tls;
mod up;
