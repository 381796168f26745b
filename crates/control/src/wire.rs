//! Between the RPC messages and the worker's and HTTP's own types, and how every connection
//! between roles is set up (timeouts, keep-alive).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use turnpike_worker::{Outcome, Request};

use crate::proto;
use crate::proto::shard_client::ShardClient;

/// Largest RPC message: request and response bodies travel inside them.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// `class` as a class of `classes`, or the RPC's error naming it.
pub fn known_class(
    class: u32,
    classes: &turnpike_policy::ClassSet,
) -> Result<turnpike_policy::ClassId, tonic::Status> {
    u8::try_from(class)
        .ok()
        .map(turnpike_policy::ClassId)
        .filter(|c| c.index() < classes.len())
        .ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "unknown class {class}: there are {} classes",
                classes.len()
            ))
        })
}

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

/// A lazily connecting client of the shard at `address` (reconnects by itself after the shard
/// restarts): what gateways and workers use.
pub fn shard_client(address: SocketAddr) -> ShardClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address makes a valid URI");
    ShardClient::new(channel(endpoint))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn failure(kind: proto::FailureKind, message: impl Into<String>) -> proto::Outcome {
    proto::Outcome {
        ending: Some(proto::outcome::Ending::Failure(proto::Failure {
            kind: kind as i32,
            message: message.into(),
        })),
        usage: None,
        worker: 0,
        attempts: 0,
    }
}

/// The worker's request for an invocation; a malformed method or header is the caller's
/// error.
pub fn to_worker_request(inv: &proto::Invocation) -> Result<Request, String> {
    let method = http::Method::from_bytes(inv.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", inv.method))?;
    let mut request = Request::new(method, inv.path_and_query.clone());
    for h in &inv.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        let value = http::HeaderValue::from_bytes(&h.value)
            .map_err(|_| format!("bad value of header {:?}", h.name))?;
        request.headers.append(name, value);
    }
    request.body = inv.body.clone();
    Ok(request)
}

pub fn headers_to_wire(headers: &http::HeaderMap) -> Vec<proto::Header> {
    headers
        .iter()
        .map(|(name, value)| proto::Header {
            name: name.as_str().to_string(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
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
            kind: crate::node::failure_kind(&error) as i32,
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
