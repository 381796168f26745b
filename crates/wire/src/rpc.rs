//! How every connection between roles is set up (timeouts, keep-alive, message sizes).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::shard_client::ShardClient;
use crate::tls::{self, Role};

/// Largest RPC message: request and response bodies travel inside them.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long connecting to another role may take before it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connecting channel with the timeouts every role uses: connecting must not take
/// long (a dead peer is noticed), and HTTP/2 keep-alive pings notice a peer that vanished
/// without closing its connections while a call is waiting on it. Idle connections are not
/// pinged: a shard holds one to every worker, and a thousand workers' pings every second were
/// a measurable share of a shard's CPU.
///
/// The peer is a worker (shards reach shards through [`shard_client`]): with the process's
/// TLS identity set ([`tls::set_process_tls`]) the channel uses mutual TLS and requires the
/// peer's certificate to name the worker role.
pub fn channel(endpoint: Endpoint) -> Channel {
    channel_to(endpoint, Role::Worker, tls::process_tls())
}

/// [`channel`] to a `peer` of the given role, with mutual TLS if `tls` is given.
pub fn channel_to(endpoint: Endpoint, peer: Role, tls: Option<&tls::InternalTls>) -> Channel {
    let endpoint = match tls {
        Some(tls) => {
            let authority = endpoint
                .uri()
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default();
            Endpoint::from_shared(format!("https://{authority}"))
                .and_then(|e| e.tls_config(tls.client(peer)))
                .expect(
                    "an endpoint's authority makes a valid URI; the TLS config was checked at load",
                )
        }
        None => endpoint,
    };
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

/// The layers of every role's RPC server: [`tls::authorize`] checks each RPC's caller.
pub type Layers = tower::layer::util::Stack<
    tower::filter::FilterLayer<tls::Authorize>,
    tower::layer::util::Identity,
>;

/// The server builder every role starts from: with the process's TLS identity set, it requires
/// a client certificate signed by the cluster CA and allows each RPC only to the roles that
/// need it ([`tls::allowed_roles`]).
pub fn server() -> tonic::transport::Server<Layers> {
    server_with(tls::process_tls())
}

/// [`server`] with mutual TLS if `tls` is given, whatever the process's identity.
pub fn server_with(tls: Option<&tls::InternalTls>) -> tonic::transport::Server<Layers> {
    let builder = match tls {
        Some(tls) => tonic::transport::Server::builder()
            .tls_config(tls.server())
            .expect("the TLS config was checked when it was loaded"),
        None => tonic::transport::Server::builder(),
    };
    builder.layer(tower::filter::FilterLayer::new(
        tls::authorize as tls::Authorize,
    ))
}

/// Serves `router`'s RPCs on `listener` (through [`incoming`]) from a task of its own, until
/// `shutdown` completes. A server that stops with an error logs it once, naming `role` (as
/// `shard 2`, `worker 127.0.0.1:7001`): every role's RPC server starts here.
pub fn spawn_server(
    router: tonic::transport::server::Router<Layers>,
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
    shard_client_with(address, tls::process_tls())
}

/// [`shard_client`] with mutual TLS if `tls` is given, whatever the process's identity.
pub fn shard_client_with(
    address: SocketAddr,
    tls: Option<&tls::InternalTls>,
) -> ShardClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address makes a valid URI");
    ShardClient::new(channel_to(endpoint, Role::Shard, tls))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
