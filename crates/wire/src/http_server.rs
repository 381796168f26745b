//! The HTTP server loop the gateway and every role's `/metrics` use: HTTP/1.1 and HTTP/2 on
//! one listener, a task per connection, until shutdown; then open connections finish the
//! requests they have (for at most [`DRAIN_FOR`]) and close.
//!
//! Against clients that hold resources without using them ([`EdgeLimits`]):
//! - at most `connections_max` connections are open at once. One more is answered `503` with
//!   `Retry-After` (the body from the caller's `over_limit`, naming the bound) and closed; those
//!   refusals are bounded too ([`REFUSALS_IN_FLIGHT_MAX`], each at most [`REFUSAL_FOR`]), and
//!   past that a connection is closed unanswered;
//! - a new connection must send its first byte within `header_read_timeout`, and an HTTP/1.1
//!   client each request's head within `header_read_timeout` of that head's first byte (so a
//!   connection opened and left silent, or one trickling a header a byte at a time, is
//!   closed): a slowloris holds a slot for at most that long. A slow *body* is the handler's
//!   to time out (the gateway's `body_read_timeout`). A keep-alive connection answering no
//!   request for `header_read_timeout` (checked every that long, so closed within twice it)
//!   is closed too: hyper starts no timer between requests;
//! - a failed `accept` (out of file descriptors, most often) is retried after a pause that
//!   doubles up to [`ACCEPT_BACKOFF_MAX`], and logged once per run of failures, instead of a
//!   busy loop.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

/// How long open connections get to finish their requests when a server stops.
pub const DRAIN_FOR: Duration = Duration::from_secs(10);
/// Connections past `connections_max` being answered at once; more are closed unanswered.
pub const REFUSALS_IN_FLIGHT_MAX: usize = 256;
/// The longest a refused connection is kept to read its request and send the refusal.
pub const REFUSAL_FOR: Duration = Duration::from_secs(1);
/// The first pause after a failed `accept`, and the longest.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Default of [`EdgeLimits::connections_max`]: below this machine's default limit of open
/// files (20,000), leaving room for the role's RPC connections and its store.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Default of [`EdgeLimits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// What one server lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Connections open at once (`gateway_connections_max` at the gateway).
    pub connections_max: usize,
    /// Time an HTTP/1.1 client has to send a request's head.
    pub header_read_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains: every open
/// connection answers the requests it has and closes (HTTP/1.1 after the response in
/// progress, HTTP/2 with GOAWAY), so every accepted request is answered. A connection past
/// `limits.connections_max` gets `over_limit(open connections)` as the answer to its first
/// request, and is closed.
///
/// A response's body may stream (`B`): its request counts as being answered until the body
/// is done, so a long stream is neither idle nor cut by the keep-alive timeout.
pub async fn serve<H, F, R, B>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    limits: EdgeLimits,
    over_limit: R,
) where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<B>> + Send + 'static,
    R: Fn(usize) -> http::Response<B> + Clone + Send + Sync + 'static,
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut refusals = tokio::task::JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !failing {
                        tracing::warn!("accepting a connection failed: {e}; retrying with backoff");
                        failing = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if failing {
            tracing::info!("accepting connections again");
            failing = false;
        }
        backoff = ACCEPT_BACKOFF_MIN;
        while connections.try_join_next().is_some() {}
        while refusals.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let open = connections.len();
        if open >= limits.connections_max {
            if refusals.len() < REFUSALS_IN_FLIGHT_MAX {
                refusals.spawn(refuse(stream, builder.clone(), over_limit.clone(), open));
            }
            // Else dropped: closed unanswered.
            continue;
        }
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop = stopping.subscribe();
        let idle_max = limits.header_read_timeout;
        connections.spawn(async move {
            // hyper's header timer starts with a request's first byte: a connection that
            // never sends one is closed here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(idle_max, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let activity = Arc::new(Activity::new());
            let counted = activity.clone();
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                let held = counted.begin();
                async move {
                    let response = response.await;
                    Ok::<_, Infallible>(response.map(|body| Held { body, _held: held }))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = builder.serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async {
                    while !*stop.borrow_and_update() {
                        if stop.changed().await.is_err() {
                            break;
                        }
                    }
                } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                () = activity.idle_for(idle_max) => {
                    // Between requests: closes at once (HTTP/1.1) or with GOAWAY (HTTP/2).
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_FOR, connection).await;
                }
            }
        });
    }
    drop(listener);
    refusals.abort_all();
    let _ = stopping.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_FOR, drained).await;
}

/// The requests a connection is answering, and when it last finished one: a keep-alive
/// connection with none for `header_read_timeout` is closed.
struct Activity {
    answering: AtomicUsize,
    /// When the connection last had nothing to answer (its start, or the last answer).
    idle_since: Mutex<Instant>,
}

/// One request being answered, while it lives.
struct Answering(Arc<Activity>);

/// A response body that keeps its request counted as being answered until it is done.
struct Held<B> {
    body: B,
    _held: Answering,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.0.answering.fetch_sub(1, Ordering::Relaxed) == 1 {
            *crate::lock(&self.0.idle_since) = Instant::now();
        }
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            answering: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::Relaxed);
        Answering(self.clone())
    }

    /// Returns once the connection has answered nothing for `max` (checked at least every
    /// `max`: a connection is closed between `max` and twice `max` after its last answer).
    async fn idle_for(&self, max: Duration) {
        loop {
            tokio::time::sleep(max).await;
            if self.answering.load(Ordering::Relaxed) == 0
                && crate::lock(&self.idle_since).elapsed() >= max
            {
                return;
            }
        }
    }
}

/// Answers the first request on a connection past the limit with `over_limit(open)`, then
/// closes it (HTTP/1.1 `Connection: close`; HTTP/2 GOAWAY), within [`REFUSAL_FOR`].
async fn refuse<R, B>(
    stream: TcpStream,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    over_limit: R,
    open: usize,
) where
    R: Fn(usize) -> http::Response<B> + Send + Sync + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |_request| {
        let mut response = over_limit(open);
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        async move { Ok::<_, Infallible>(response) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    // A client that sends nothing in time is dropped with its connection.
    let _ = tokio::time::timeout(REFUSAL_FOR, builder.serve_connection(io, service)).await;
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering every request 200 "ok", with `limits`; its address.
    async fn server(limits: EdgeLimits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let handler = |_request| async { http::Response::new(Full::new(Bytes::from("ok"))) };
        let over_limit = |open| {
            let mut response = http::Response::new(Full::new(Bytes::from(format!("{open} open"))));
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            response
        };
        tokio::spawn(serve(
            listener,
            handler,
            std::future::pending(),
            limits,
            over_limit,
        ));
        address
    }

    /// What the server sent on `stream` until it closed it; `None` if it was still open
    /// after a long while.
    async fn until_closed(stream: &mut TcpStream) -> Option<String> {
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test]
    async fn a_silent_connection_and_a_trickled_header_are_closed_after_the_timeout() {
        let address = server(EdgeLimits {
            connections_max: 10,
            header_read_timeout: Duration::from_millis(200),
        })
        .await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        assert!(until_closed(&mut silent).await.is_some(), "still open");
        let mut partial = TcpStream::connect(address).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        assert!(until_closed(&mut partial).await.is_some(), "still open");
    }

    #[tokio::test]
    async fn a_keep_alive_connection_answering_nothing_is_closed_after_the_timeout() {
        let address = server(EdgeLimits {
            connections_max: 10,
            header_read_timeout: Duration::from_millis(200),
        })
        .await;
        let mut kept = TcpStream::connect(address).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut kept)
            .await
            .expect("closed after its answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn past_the_connection_bound_a_request_is_refused_and_its_connection_closed() {
        let address = server(EdgeLimits {
            connections_max: 1,
            header_read_timeout: Duration::from_secs(10),
        })
        .await;
        let mut held = TcpStream::connect(address).await.unwrap();
        held.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = held.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let mut refused = TcpStream::connect(address).await.unwrap();
        refused
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut refused).await.expect("closed");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with("1 open"), "{answer}");
    }
}
