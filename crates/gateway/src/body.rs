//! The gateway's HTTP response bodies: whole (its own answers, and a function's response that
//! came whole in its outcome) or a function's response streamed to the client as the worker
//! sends it ([`Streamed`]).
//!
//! A streamed body is held to the gateway's `max_response_bytes` as its bytes pass (the worker
//! holds it to the same limit where the guest writes, so this is the second check, not the
//! first), and ends cleanly only when the function's body did: a body that was cut on the way
//! (the function went over the limit, its worker was lost) ends with an error, which hyper
//! turns into an aborted response (HTTP/1.1: the connection closes before the last chunk), so
//! a client never takes a truncated body for a whole one. A client that goes away mid-body
//! drops it, which cancels the invocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use turnpike_wire::body::{BodyReader, Part};
use turnpike_wire::invocation::Cancellation;

/// The gateway's HTTP body type.
#[derive(Debug)]
pub enum Body {
    Full(Full<Bytes>),
    Streamed(Streamed),
    /// Server-sent events, as their writer sends them (the dashboard's); ends when the
    /// writer is gone.
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Body {
    /// A whole body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Full::new(bytes.into()))
    }
}

/// Why a streamed body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the function's response was cut before its end")]
    Cut,
    #[error("the function's response went over the limit of {limit_bytes} bytes; cut there")]
    TooLarge { limit_bytes: u64 },
}

/// A function's response body, as its parts arrive.
#[derive(Debug)]
pub struct Streamed {
    reception: BodyReader,
    /// Fired if the client goes away before the end.
    cancel: Cancellation,
    sent_bytes: u64,
    limit_bytes: u64,
    done: bool,
}

impl Streamed {
    pub fn new(reception: BodyReader, cancel: Cancellation, limit_bytes: u64) -> Self {
        Self {
            reception,
            cancel,
            sent_bytes: 0,
            limit_bytes,
            done: false,
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Body::Streamed(streamed) => streamed.poll_part(cx),
            Body::Events(events) => events.poll_recv(cx).map(|e| e.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Streamed(streamed) => streamed.done,
            Body::Events(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Streamed(_) | Body::Events(_) => SizeHint::default(),
        }
    }
}

impl Streamed {
    fn poll_part(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match std::task::ready!(self.reception.poll_next(cx)) {
                Some(Part::Chunk(bytes)) => {
                    self.sent_bytes = self.sent_bytes.saturating_add(bytes.len() as u64);
                    if self.sent_bytes > self.limit_bytes {
                        // Dropped with `done` unset: the invocation is cancelled.
                        return Poll::Ready(Some(Err(BodyError::TooLarge {
                            limit_bytes: self.limit_bytes,
                        })));
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                Some(Part::End) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                // A second head is not sent; nothing to pass on.
                Some(Part::Head(_)) => continue,
                None => {
                    // Every writer is gone (the invocation is over): nothing to cancel.
                    self.done = true;
                    Poll::Ready(Some(Err(BodyError::Cut)))
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use turnpike_wire::body::{channel, Head};

    use super::*;

    fn head() -> Head {
        Head::new(http::StatusCode::OK)
    }

    #[tokio::test]
    async fn a_whole_stream_is_passed_on_and_a_cut_one_ends_in_an_error() {
        let (responder, reception) = channel();
        let cancel = Cancellation::new();
        let body = Body::Streamed(Streamed::new(reception, cancel.clone(), 100));
        let writer = tokio::spawn(async move {
            responder.head(head()).await.unwrap();
            responder.chunk(Bytes::from_static(b"ab")).await.unwrap();
            responder.chunk(Bytes::from_static(b"cd")).await.unwrap();
            responder.end().await.unwrap();
        });
        // The head is the gateway's to read first; here it is skipped.
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        writer.await.unwrap();
        assert!(
            !cancel.is_cancelled(),
            "a body read to its end cancels nothing"
        );

        let (responder, reception) = channel();
        let cancel = Cancellation::new();
        let body = Body::Streamed(Streamed::new(reception, cancel.clone(), 100));
        responder.chunk(Bytes::from_static(b"ab")).await.unwrap();
        drop(responder);
        let error = body.collect().await.unwrap_err();
        assert!(matches!(error, BodyError::Cut), "{error}");
    }

    #[tokio::test]
    async fn over_the_limit_it_is_cut_and_a_dropped_body_cancels_the_invocation() {
        let (responder, reception) = channel();
        let cancel = Cancellation::new();
        let body = Body::Streamed(Streamed::new(reception, cancel.clone(), 3));
        responder.chunk(Bytes::from_static(b"ab")).await.unwrap();
        responder.chunk(Bytes::from_static(b"cd")).await.unwrap();
        let error = body.collect().await.unwrap_err();
        assert!(
            matches!(error, BodyError::TooLarge { limit_bytes: 3 }),
            "{error}"
        );
        assert!(cancel.is_cancelled());

        let (_responder, reception) = channel();
        let cancel = Cancellation::new();
        drop(Body::Streamed(Streamed::new(reception, cancel.clone(), 3)));
        assert!(cancel.is_cancelled(), "the client went away mid-body");
    }
}
