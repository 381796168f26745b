//! The HTTP server loop the gateway and every role's `/metrics` use: HTTP/1.1 and HTTP/2 on
//! one listener, a task per connection, until shutdown; then open connections finish the
//! requests they have (for at most [`DRAIN_FOR`]) and close.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

/// How long open connections get to finish their requests when a server stops.
pub const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `handler` on `listener` until `shutdown` completes, then drains: every open
/// connection answers the requests it has and closes (HTTP/1.1 after the response in
/// progress, HTTP/2 with GOAWAY), so every accepted request is answered.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop = stopping.subscribe();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
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
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_FOR, drained).await;
}
