//! A body streamed between roles as it is written: a function's response, from the worker to
//! the client as the guest writes it, and a large request body, from the client to the guest
//! as it arrives ([`RequestBody`]).
//!
//! The caller of an invocation (the gateway) makes a [`channel`]: it keeps the [`BodyReader`]
//! and puts the [`BodyWriter`] into the invocation (`Invocation::respond`). Whoever runs the
//! invocation writes the response into the writer - its [`Head`] once the guest sets it,
//! then its body in chunks of at most [`CHUNK_BYTES_MAX`], then the end - and the caller reads
//! them in that order from the reader. A link between two processes carries the parts as
//! frames (`crate::link`), with a credit window per invocation; within one process the
//! writer itself travels with the invocation.
//!
//! Back-pressure: the channel holds at most [`BODY_CHUNKS_BUFFERED_MAX`] parts, so a writer
//! waits while its reader is slow, and the guest behind it waits in its body write. Memory per
//! streamed body is therefore bounded at every hop, whatever the body's size: no role holds a
//! whole body.
//!
//! Ending: a body is complete only when [`BodyWriter::end`] was called. A reader whose
//! writers are all dropped without it was *cut* (the worker failed or was lost, the response
//! went over its limit, the invocation was cancelled): [`Part`]s stop and
//! [`BodyReader::next`] says so, and a reader must not present what it got as the whole body.
//! An invocation whose outcome comes without a head was not streamed (it failed before it
//! answered, or its runner sent the body whole): its response is in its outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Largest body chunk a part carries (a larger write is split).
pub const CHUNK_BYTES_MAX: usize = 64 << 10;

/// Parts a response channel holds before its writer waits: with [`CHUNK_BYTES_MAX`], at most
/// 256 KiB of body per hop.
pub const BODY_CHUNKS_BUFFERED_MAX: usize = 4;

/// A response's status and headers, sent before its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
}

impl Head {
    /// `status` without headers.
    pub fn new(status: http::StatusCode) -> Self {
        Self {
            status,
            headers: http::HeaderMap::new(),
        }
    }
}

/// One piece of a streamed response, in the order they are written: one head, chunks, end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Head(Head),
    Chunk(Bytes),
    End,
}

/// The reader of a streamed response went away (its client hung up, or it was cut on the
/// way): nothing more is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the response's reader went away")]
pub struct ReaderGone;

/// The writing end of a response channel; every clone writes into the same one.
#[derive(Clone)]
pub struct BodyWriter {
    parts: mpsc::Sender<Part>,
    started: Arc<AtomicBool>,
}

impl std::fmt::Debug for BodyWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyWriter")
            .field("started", &self.started())
            .finish_non_exhaustive()
    }
}

/// Two responders are equal when they write into the same channel.
impl PartialEq for BodyWriter {
    fn eq(&self, other: &Self) -> bool {
        self.parts.same_channel(&other.parts)
    }
}

impl BodyWriter {
    /// Sends the head. Once it is sent the invocation cannot be placed again (its reader has
    /// started answering): see [`BodyWriter::started`].
    pub async fn head(&self, head: Head) -> Result<(), ReaderGone> {
        self.started.store(true, Ordering::Release);
        self.send(Part::Head(head)).await
    }

    /// Sends body bytes, split into chunks of at most [`CHUNK_BYTES_MAX`]; waits while the
    /// reader is behind.
    pub async fn chunk(&self, mut bytes: Bytes) -> Result<(), ReaderGone> {
        while bytes.len() > CHUNK_BYTES_MAX {
            let rest = bytes.split_off(CHUNK_BYTES_MAX);
            self.send(Part::Chunk(bytes)).await?;
            bytes = rest;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.send(Part::Chunk(bytes)).await
    }

    /// Says the body is complete.
    pub async fn end(&self) -> Result<(), ReaderGone> {
        self.send(Part::End).await
    }

    /// Sends a part as it came (a link relays them).
    pub async fn send(&self, part: Part) -> Result<(), ReaderGone> {
        if matches!(part, Part::Head(_)) {
            self.started.store(true, Ordering::Release);
        }
        self.parts.send(part).await.map_err(|_| ReaderGone)
    }

    /// Whether the head was sent: the reader may have started answering, so the invocation
    /// must not be retried elsewhere.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether the reader is gone.
    pub fn is_gone(&self) -> bool {
        self.parts.is_closed()
    }
}

/// The reading end of a response channel.
#[derive(Debug)]
pub struct BodyReader {
    parts: mpsc::Receiver<Part>,
}

impl BodyReader {
    /// The next part; `None` once every responder is dropped. After [`Part::End`] there is
    /// nothing more; `None` before it means the body was cut.
    pub async fn next(&mut self) -> Option<Part> {
        self.parts.recv().await
    }

    /// The next part if one is waiting (`None` if none is, or the channel is closed).
    pub fn try_next(&mut self) -> Option<Part> {
        self.parts.try_recv().ok()
    }

    /// [`BodyReader::next`] for a poll-based reader (an HTTP body).
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Part>> {
        self.parts.poll_recv(cx)
    }
}

/// A request body streamed to whoever runs the invocation, read once: the first runner takes
/// it ([`RequestBody::take`]; the gateway writes into the channel's writer as the client
/// sends), and an invocation whose body was taken cannot be placed again (nobody has the
/// bytes already read). Every clone of the invocation shares it.
#[derive(Clone)]
pub struct RequestBody(Arc<std::sync::Mutex<Option<BodyReader>>>);

impl RequestBody {
    pub fn new(reader: BodyReader) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(reader))))
    }

    /// The reader, to the first caller only.
    pub fn take(&self) -> Option<BodyReader> {
        crate::lock(&self.0).take()
    }

    /// Whether it was taken: a placement has read or is reading it.
    pub fn taken(&self) -> bool {
        crate::lock(&self.0).is_none()
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("taken", &self.taken())
            .finish()
    }
}

/// Two are equal when they are the same body.
impl PartialEq for RequestBody {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A new body channel.
pub fn channel() -> (BodyWriter, BodyReader) {
    let (parts, received) = mpsc::channel(BODY_CHUNKS_BUFFERED_MAX);
    (
        BodyWriter {
            parts,
            started: Arc::default(),
        },
        BodyReader { parts: received },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head::new(http::StatusCode::OK)
    }

    #[tokio::test]
    async fn parts_arrive_in_order_and_large_writes_are_split() {
        let (responder, mut reception) = channel();
        assert!(!responder.started());
        let writer = tokio::spawn({
            let responder = responder.clone();
            async move {
                responder.head(head()).await.unwrap();
                responder
                    .chunk(Bytes::from(vec![7u8; CHUNK_BYTES_MAX * 2 + 1]))
                    .await
                    .unwrap();
                responder.chunk(Bytes::new()).await.unwrap();
                responder.end().await.unwrap();
            }
        });
        drop(responder);
        assert_eq!(reception.next().await, Some(Part::Head(head())));
        let mut sizes = Vec::new();
        while let Some(Part::Chunk(bytes)) = reception.next().await {
            sizes.push(bytes.len());
        }
        assert_eq!(sizes, [CHUNK_BYTES_MAX, CHUNK_BYTES_MAX, 1]);
        // `End` was consumed by the loop above; then the channel closes.
        assert_eq!(reception.next().await, None);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_writer_waits_for_a_slow_reader() {
        let (responder, mut reception) = channel();
        for _ in 0..BODY_CHUNKS_BUFFERED_MAX {
            responder.chunk(Bytes::from_static(b"x")).await.unwrap();
        }
        let mut blocked = Box::pin(responder.chunk(Bytes::from_static(b"y")));
        assert!(
            futures_poll_once(&mut blocked).is_none(),
            "the channel is full"
        );
        assert!(matches!(reception.next().await, Some(Part::Chunk(_))));
        assert_eq!(futures_poll_once(&mut blocked), Some(Ok(())));
    }

    #[tokio::test]
    async fn a_gone_reader_is_reported_and_a_dropped_writer_cuts_the_body() {
        let (responder, reception) = channel();
        drop(reception);
        assert!(responder.is_gone());
        assert_eq!(responder.head(head()).await, Err(ReaderGone));
        assert!(responder.started());

        let (responder, mut reception) = channel();
        responder.head(head()).await.unwrap();
        responder
            .chunk(Bytes::from_static(b"partial"))
            .await
            .unwrap();
        drop(responder);
        assert!(matches!(reception.next().await, Some(Part::Head(_))));
        assert!(matches!(reception.next().await, Some(Part::Chunk(_))));
        assert_eq!(
            reception.next().await,
            None,
            "cut: no `End` before the close"
        );
    }

    fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
