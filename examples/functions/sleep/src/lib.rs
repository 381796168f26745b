//! `sleep`: waits `?ms=N` milliseconds, then answers `200` with `slept N ms\n`.
//!
//! The wait is a real block on I/O, not a busy loop: it subscribes to the wasi monotonic
//! clock (`subscribe-duration`) and blocks in `wasi:io/poll.poll` on that pollable, so the host
//! sees an idle guest it can park or run something else beside. `ms` is required, at most
//! 600000 (10 minutes); a missing or bad value gets `400`.

use guest_util::{required_u64_param, BadRequest, NS_PER_MS};
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};
use wasip2::io::poll;

/// The longest accepted sleep.
const SLEEP_MS_MAX: u64 = 600_000;

struct Sleep;

fn run(query: &str) -> Result<String, BadRequest> {
    let ms = required_u64_param(query, "ms", SLEEP_MS_MAX)?;
    let pollable = monotonic_clock::subscribe_duration(ms * NS_PER_MS);
    // One pollable: `poll` returns once it is ready, i.e. when the duration has elapsed.
    poll::poll(&[&pollable]);
    Ok(format!("slept {ms} ms\n"))
}

impl wasip2::exports::http::incoming_handler::Guest for Sleep {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        guest_util::respond_result(out, run(&query));
    }
}

wasip2::http::proxy::export!(Sleep);
