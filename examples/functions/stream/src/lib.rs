//! `stream`: answers `200` with `?chunks=N` chunks of `?bytes=B` bytes each, flushed one at a
//! time, `?every_ms=M` milliseconds apart (a real block on the monotonic clock, as `sleep`):
//! progress output, server-sent events, a large download. Chunk `i` (from 0) is `B` copies of
//! the letter `a + i mod 26`, so a client can check order and completeness.
//!
//! Headers: `content-type: application/octet-stream` and `x-stream-bytes: N*B`; with
//! `?declare=1` also `content-length: N*B`, so a host can refuse an over-long body before its
//! head. `chunks` at most 10^6, `bytes` at most 1 MiB, `every_ms` at most 60000 (default 0);
//! a missing or bad value gets `400`. If the host closes the body (its client went away, or
//! the body went over the host's limit) the function stops writing and returns.

use std::io::Write as _;

use guest_util::{required_u64_param, u64_param, BadRequest, NS_PER_MS};
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::poll;

const CHUNKS_MAX: u64 = 1_000_000;
const CHUNK_BYTES_MAX: u64 = 1 << 20;
const EVERY_MS_MAX: u64 = 60_000;

struct Plan {
    chunks: u64,
    bytes: u64,
    every_ms: u64,
    declare: bool,
}

fn plan(query: &str) -> Result<Plan, BadRequest> {
    Ok(Plan {
        chunks: required_u64_param(query, "chunks", CHUNKS_MAX)?,
        bytes: required_u64_param(query, "bytes", CHUNK_BYTES_MAX)?,
        every_ms: u64_param(query, "every_ms", EVERY_MS_MAX)?.unwrap_or(0),
        declare: u64_param(query, "declare", 1)? == Some(1),
    })
}

fn stream(out: ResponseOutparam, plan: Plan) {
    let total = (plan.chunks * plan.bytes).to_string();
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("content-type".into(), b"application/octet-stream".to_vec()),
        ("x-stream-bytes".into(), total.clone().into_bytes()),
    ];
    if plan.declare {
        headers.push(("content-length".into(), total.into_bytes()));
    }
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    let body = response.body().expect("first call to OutgoingResponse::body");
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut writer) = body.write() else {
        return;
    };
    let mut chunk = vec![0u8; plan.bytes as usize];
    for i in 0..plan.chunks {
        if i > 0 && plan.every_ms > 0 {
            let pollable = monotonic_clock::subscribe_duration(plan.every_ms * NS_PER_MS);
            poll::poll(&[&pollable]);
        }
        chunk.fill(b'a' + (i % 26) as u8);
        // `write_all` waits for the host's write budget; `blocking_flush` until it has taken
        // the chunk, so each one leaves now. Either fails once the host closed the body.
        if writer.write_all(&chunk).is_err() || writer.blocking_flush().is_err() {
            return;
        }
    }
    drop(writer);
    let _ = OutgoingBody::finish(body, None);
}

struct Stream;

impl wasip2::exports::http::incoming_handler::Guest for Stream {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        match plan(&query) {
            Ok(plan) => stream(out, plan),
            Err(bad) => guest_util::respond_bad_request(out, bad),
        }
    }
}

wasip2::http::proxy::export!(Stream);
