//! Between the RPC messages and the worker runtime's own types (`turnpike_worker`).

use std::time::Duration;

use turnpike_wire::proto;
use turnpike_wire::rpc::headers_to_wire;
use turnpike_worker::{InvokeError, Outcome, Request};

/// Why an invocation's request cannot be handed to the worker (the caller's error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("bad method {0:?}")]
    Method(String),
    #[error("bad header name {0:?}")]
    HeaderName(String),
    #[error("bad value of header {0:?}")]
    HeaderValue(String),
}

/// The worker's request for an invocation; a malformed method or header is the caller's
/// error.
pub fn to_worker_request(inv: &proto::Invocation) -> Result<Request, BadRequest> {
    let method = http::Method::from_bytes(inv.method.as_bytes())
        .map_err(|_| BadRequest::Method(inv.method.clone()))?;
    let mut request = Request::new(method, inv.path_and_query.clone());
    for h in &inv.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| BadRequest::HeaderName(h.name.clone()))?;
        let value = http::HeaderValue::from_bytes(&h.value)
            .map_err(|_| BadRequest::HeaderValue(h.name.clone()))?;
        request.headers.append(name, value);
    }
    request.body = inv.body.clone();
    Ok(request)
}

pub fn from_worker_outcome(outcome: Outcome) -> proto::Outcome {
    let u = &outcome.usage;
    let usage = proto::Usage {
        class: u32::from(u.class.0),
        cpu_ns: duration_ns(u.cpu),
        wall_ns: duration_ns(u.wall),
        queued_ns: duration_ns(u.queued),
        peak_memory_bytes: u.peak_memory_bytes,
        memory_mb_seconds: u.memory_mb_seconds,
        parks: u.parks,
        blocks: u.blocks,
        swap_outs: u.swap.swap_outs,
        swapped_out_bytes: u.swap.swapped_out_bytes,
    };
    let ending = match outcome.result {
        Ok(response) => proto::outcome::Ending::Response(proto::Response {
            status: u32::from(response.status),
            headers: headers_to_wire(&response.headers),
            body: response.body,
        }),
        Err(error) => proto::outcome::Ending::Failure(proto::Failure {
            kind: failure_kind(&error) as i32,
            message: error.to_string(),
        }),
    };
    proto::Outcome {
        ending: Some(ending),
        usage: Some(usage),
        worker: 0,
        attempts: 1,
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Maps a worker's failure to the wire.
pub fn failure_kind(error: &InvokeError) -> proto::FailureKind {
    match error {
        InvokeError::Killed => proto::FailureKind::Killed,
        InvokeError::Shutdown => proto::FailureKind::Unavailable,
        InvokeError::BadRequest(_) | InvokeError::UnknownClass { .. } => {
            proto::FailureKind::BadRequest
        }
        _ => proto::FailureKind::Guest,
    }
}
