//! `spin`: burns CPU in a loop of real integer work and reports a checksum of that work.
//!
//! - `?iters=N` does exactly N iterations and answers `checksum=<16 hex digits> iters=N\n`:
//!   deterministic, so a test can compare it with [`spin_checksum`] computed natively.
//! - `?ms=M` iterates until M ms of wasi monotonic time have passed (checking the clock every
//!   [`BATCH_ITERS`] iterations) and answers `checksum=<hex> iters=N elapsed_us=U\n`, where N is the
//!   number of iterations done (a multiple of `BATCH_ITERS`; the checksum is again exactly
//!   `spin_checksum(N)`) and U the monotonic microseconds the loop took. Monotonic time is wall
//!   time: while the host has the guest parked the clock runs on, so a parked `?ms=` run does
//!   fewer iterations than an unparked one.
//!
//! Exactly one of `iters` (at most 10^12) or `ms` (at most 600000) is required; anything else
//! gets `400`.
//!
//! One iteration (all arithmetic wrapping, on u64; `x` starts at [`SEED`], `h` at the FNV-1a 64
//! offset basis `0xcbf29ce484222325`):
//! ```text
//! x ^= x << 13; x ^= x >> 7; x ^= x << 17;   // xorshift64
//! h = (h ^ x) * 0x100000001b3;               // FNV-1a 64 step over the whole word
//! ```
//! The checksum is the final `h`. Known values: `iters=0` -> `cbf29ce484222325`,
//! `iters=1` -> `73e957b260ded118`, `iters=1000` -> `ae72ef9c1ff16ad3`,
//! `iters=1000000` -> `1be2e50bb97a4403`.

use guest_util::{u64_param, BadRequest, NS_PER_MS};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// Initial xorshift state.
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// FNV-1a 64 offset basis: the initial checksum.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Iterations between two reads of the clock in `?ms=` mode.
pub const BATCH_ITERS: u64 = 1024;

const ITERS_MAX: u64 = 1_000_000_000_000;
const SPIN_MS_MAX: u64 = 600_000;

/// The loop state: xorshift64 state, running checksum, and iterations done.
#[derive(Debug, Clone, Copy)]
struct Mixer {
    x: u64,
    h: u64,
    iters: u64,
}

impl Mixer {
    fn new() -> Self {
        Self {
            x: SEED,
            h: FNV_OFFSET,
            iters: 0,
        }
    }

    #[inline(always)]
    fn run(&mut self, n: u64) {
        let (mut x, mut h) = (self.x, self.h);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            h = (h ^ x).wrapping_mul(FNV_PRIME);
        }
        self.x = x;
        self.h = h;
        self.iters += n;
    }
}

/// The checksum after exactly `iters` iterations.
pub fn spin_checksum(iters: u64) -> u64 {
    let mut mixer = Mixer::new();
    mixer.run(iters);
    mixer.h
}

fn run(query: &str) -> Result<String, BadRequest> {
    let iters = u64_param(query, "iters", ITERS_MAX)?;
    let ms = u64_param(query, "ms", SPIN_MS_MAX)?;
    match (iters, ms) {
        (Some(iters), None) => {
            let checksum = spin_checksum(std::hint::black_box(iters));
            Ok(format!("checksum={checksum:016x} iters={iters}\n"))
        }
        (None, Some(ms)) => {
            let start = guest_util::now_ns();
            let deadline = start + ms * NS_PER_MS;
            let mut mixer = Mixer::new();
            let mut now = start;
            while now < deadline {
                mixer.run(BATCH_ITERS);
                now = guest_util::now_ns();
            }
            let elapsed_us = (now - start) / 1_000;
            Ok(format!(
                "checksum={:016x} iters={} elapsed_us={elapsed_us}\n",
                mixer.h, mixer.iters
            ))
        }
        _ => Err(BadRequest(
            "give exactly one of `iters` (e.g. ?iters=1000000) or `ms` (e.g. ?ms=100)".to_string(),
        )),
    }
}

struct Spin;

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        guest_util::respond_result(out, run(&query));
    }
}

wasip2::http::proxy::export!(Spin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_deterministic_and_composes() {
        assert_eq!(spin_checksum(0), FNV_OFFSET);
        assert_eq!(spin_checksum(1), 0x73e9_57b2_60de_d118);
        assert_eq!(spin_checksum(1000), 0xae72_ef9c_1ff1_6ad3);
        assert_eq!(spin_checksum(1_000_000), 0x1be2_e50b_b97a_4403);
        let mut mixer = Mixer::new();
        mixer.run(BATCH_ITERS);
        mixer.run(BATCH_ITERS);
        assert_eq!(mixer.h, spin_checksum(2 * BATCH_ITERS));
        assert_eq!(mixer.iters, 2 * BATCH_ITERS);
    }

    #[test]
    fn iters_mode_format() {
        let body = run("iters=0").unwrap();
        assert_eq!(body, "checksum=cbf29ce484222325 iters=0\n");
        let body = run("iters=1000000").unwrap();
        assert_eq!(
            body,
            format!("checksum={:016x} iters=1000000\n", spin_checksum(1_000_000))
        );
    }

    #[test]
    fn needs_exactly_one_mode() {
        assert!(run("").is_err());
        assert!(run("iters=1&ms=1").is_err());
        assert!(run("ms=600001").is_err());
    }
}
