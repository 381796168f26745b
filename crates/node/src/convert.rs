//! Between the roles' invocation types (`turnpike_wire::invocation`) and the worker runtime's
//! own (`turnpike_worker`): moves, no parsing (the wire's decoding already checked the request).

use std::time::Duration;

use bytes::Bytes;
use turnpike_policy::MachineId;
use turnpike_wire::body::{BodyReader, BodyWriter, Head, Part};
use turnpike_wire::invocation::{self, Failure, FailureKind, Outcome, Usage};
use turnpike_worker::{BodySource, BodyStream, InvokeError, Request, ResponseWriter, WriteFuture};

/// The worker's request for an invocation's, its body streamed from `upload` if the
/// invocation's body is streamed.
pub fn to_worker_request(request: invocation::Request, upload: Option<BodyReader>) -> Request {
    let invocation::Request {
        method,
        path_and_query,
        headers,
        body,
    } = request;
    let mut worker_request = Request::new(method, path_and_query);
    worker_request.headers = headers;
    worker_request.body = body;
    worker_request.body_stream = upload.map(|reader| {
        BodyStream::new(Upload {
            reader,
            ended: false,
        })
    });
    worker_request
}

/// A streamed request body, as the worker runtime reads it into the guest.
struct Upload {
    reader: BodyReader,
    ended: bool,
}

impl BodySource for Upload {
    fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, String>>> {
        use std::task::Poll;
        loop {
            return match std::task::ready!(self.reader.poll_next(cx)) {
                Some(Part::Chunk(bytes)) => Poll::Ready(Some(Ok(bytes))),
                Some(Part::End) => {
                    self.ended = true;
                    Poll::Ready(None)
                }
                Some(Part::Head(_)) => continue,
                None if self.ended => Poll::Ready(None),
                None => Poll::Ready(Some(Err(
                    "the request body was cut before its end (its client went away, was too slow, or sent too much)".into(),
                ))),
            };
        }
    }
}

/// A streamed invocation's responder, as the worker runtime writes into it.
#[derive(Debug)]
pub struct Streamed(pub BodyWriter);

impl ResponseWriter for Streamed {
    fn head(&self, status: u16, headers: http::HeaderMap) -> WriteFuture<'_> {
        Box::pin(async move {
            let status =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            self.0
                .head(Head { status, headers })
                .await
                .map_err(|_| InvokeError::ReaderGone)
        })
    }

    fn chunk(&self, bytes: Bytes) -> WriteFuture<'_> {
        Box::pin(async move {
            self.0
                .chunk(bytes)
                .await
                .map_err(|_| InvokeError::ReaderGone)
        })
    }

    fn end(&self) -> WriteFuture<'_> {
        Box::pin(async move { self.0.end().await.map_err(|_| InvokeError::ReaderGone) })
    }
}

/// A worker's outcome as the shard and gateway see it (placed once, here). A status a guest
/// gave outside HTTP's range is answered as 502. An invocation cancelled before its guest
/// was first polled has no usage: it never ran.
pub fn from_worker_outcome(outcome: turnpike_worker::Outcome) -> Outcome {
    let u = &outcome.usage;
    let ran = !matches!(outcome.result, Err(InvokeError::Cancelled)) || u.on_core > Duration::ZERO;
    let usage = Usage {
        class: u.class,
        cpu: u.cpu,
        wall: u.wall,
        queued: u.queued,
        peak_memory_bytes: u.peak_memory_bytes,
        memory_mb_seconds: u.memory_mb_seconds,
        parks: u.parks,
        blocks: u.blocks,
        swap_outs: u.swap.swap_outs,
        swapped_out_bytes: u.swap.swapped_out_bytes,
    };
    let ending = match outcome.result {
        Ok(response) => Ok(invocation::Response {
            status: http::StatusCode::from_u16(response.status)
                .unwrap_or(http::StatusCode::BAD_GATEWAY),
            headers: response.headers,
            body: response.body,
        }),
        Err(error) => Err(Failure::new(failure_kind(&error), error.to_string())),
    };
    Outcome {
        ending,
        usage: ran.then_some(usage),
        worker: MachineId(0),
        attempts: 1,
    }
}

/// Whose fault a worker's failure is.
pub fn failure_kind(error: &InvokeError) -> FailureKind {
    match error {
        InvokeError::Killed => FailureKind::Killed,
        InvokeError::Shutdown => FailureKind::Unavailable,
        // Its reader went away: its caller hung up, which cancels it too.
        InvokeError::Cancelled | InvokeError::ReaderGone => FailureKind::Cancelled,
        InvokeError::ResponseTooLarge { .. } => FailureKind::TooLarge,
        InvokeError::BadRequest(_) | InvokeError::UnknownClass { .. } => FailureKind::BadRequest,
        _ => FailureKind::Guest,
    }
}
