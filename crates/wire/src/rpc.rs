//! How every connection between roles is set up (timeouts, keep-alive, message sizes).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::shard_client::ShardClient;

/// Largest RPC message: request and response bodies travel inside them.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long connecting to another role may take before it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connecting channel with the timeouts every role uses: connecting must not take
/// long (a dead peer is noticed), and HTTP/2 keep-alive pings notice a peer that vanished
/// without closing its connections while a call is waiting on it. Idle connections are not
/// pinged: a shard holds one to every worker, and a thousand workers' pings every second were
/// a measurable share of a shard's CPU.
pub fn channel(endpoint: Endpoint) -> Channel {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(false)
        .connect_lazy()
}

/// The connections accepted on `listener`, with Nagle's algorithm off: an RPC answer is
/// small and must not wait for the peer's delayed ACK (without this, p99 latency through the
/// cluster was ~100 ms and throughput a tenth).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Serves `router`'s RPCs on `listener` (through [`incoming`]) from a task of its own, until
/// `shutdown` completes. A server that stops with an error logs it once, naming `role` (as
/// `shard 2`, `worker 127.0.0.1:7001`): every role's RPC server starts here.
pub fn spawn_server(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    role: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await
        {
            tracing::error!("the RPC server of {role} stopped: {e}");
        }
    })
}

/// A lazily connecting client of the shard at `address` (reconnects by itself after the shard
/// restarts): what gateways and workers use.
pub fn shard_client(address: SocketAddr) -> ShardClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address makes a valid URI");
    ShardClient::new(channel(endpoint))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
