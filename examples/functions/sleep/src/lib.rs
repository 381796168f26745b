//! `sleep`: waits `?ms=N` milliseconds, then answers `200` with `slept N ms\n`.
//!
//! The wait is a real block on I/O, not a busy loop: it subscribes to the wasi monotonic
//! clock (`subscribe-duration`) and blocks in `wasi:io/poll.poll` on that pollable, so the host
//! sees an idle guest it can park or run something else beside. `ms` is required, at most
//! 600000 (10 minutes); a missing or bad value gets `400`. With `&stamp=1` it also says when
//! it started and ended, in wall-clock microseconds: `slept N ms from START to END\n` (tests
//! count how many ran at once).

use guest_util::{required_u64_param, u64_param, BadRequest, NS_PER_MS};
use wasip2::clocks::{monotonic_clock, wall_clock};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};
use wasip2::io::poll;

/// The longest accepted sleep.
const SLEEP_MS_MAX: u64 = 600_000;

struct Sleep;

fn run(query: &str) -> Result<String, BadRequest> {
    let ms = required_u64_param(query, "ms", SLEEP_MS_MAX)?;
    let stamp = u64_param(query, "stamp", 1)? == Some(1);
    let start = micros(wall_clock::now());
    let pollable = monotonic_clock::subscribe_duration(ms * NS_PER_MS);
    // One pollable: `poll` returns once it is ready, i.e. when the duration has elapsed.
    poll::poll(&[&pollable]);
    if stamp {
        let end = micros(wall_clock::now());
        Ok(format!("slept {ms} ms from {start} to {end}\n"))
    } else {
        Ok(format!("slept {ms} ms\n"))
    }
}

fn micros(time: wall_clock::Datetime) -> u64 {
    time.seconds * 1_000_000 + u64::from(time.nanoseconds / 1_000)
}

impl wasip2::exports::http::incoming_handler::Guest for Sleep {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        guest_util::respond_result(out, run(&query));
    }
}

wasip2::http::proxy::export!(Sleep);
