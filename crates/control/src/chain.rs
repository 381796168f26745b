//! Call chains: a function calling another through the platform.
//!
//! A guest's outgoing request to `http://turnpike/PATH` (see `turnpike_worker::calls`) is sent
//! by its worker to the gateway as an ordinary HTTP request for `PATH`, with three headers
//! that say who is calling:
//!
//! - [`CALLER_CLASS_HEADER`]: the class the caller runs at (its name);
//! - [`DEPTH_HEADER`]: the callee's depth in the chain (the caller's + 1);
//! - [`TOKEN_HEADER`]: the cluster's chain token, a secret shared by the gateway and the
//!   workers (`turnpike up` makes a fresh one at every start), so that an outside client
//!   cannot claim a caller's class for itself. The gateway refuses caller headers without
//!   the right token (403), and strips all three before the callee sees the request.
//!
//! The gateway runs the callee at `max(caller class, the route's class)` and answers a request
//! deeper than its `max_chain_depth` with `508 Loop Detected` and the reason, which the
//! caller's guest sees as its call's response. The caller waits for its call blocked on I/O,
//! so it holds no core slot meanwhile (only its memory).
//!
//! Why through the gateway rather than straight to a shard: the callee is found by the same
//! routes as outside traffic (and, with tenants, authorized the same way), and every
//! invocation, chained or not, enters the platform at one place.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use turnpike_policy::ClassSet;
use turnpike_worker::calls::{CallError as HttpError, CallFuture, Caller, Platform, WasiBody};

use crate::wire;

/// The caller's class (by name), set by the worker for a call from a function.
pub const CALLER_CLASS_HEADER: &str = "x-turnpike-caller-class";
/// The callee's depth in the call chain.
pub const DEPTH_HEADER: &str = "x-turnpike-depth";
/// The cluster's chain token, proving the two headers above come from a worker.
pub const TOKEN_HEADER: &str = "x-turnpike-chain-token";
/// The headers only the platform may set on a request to the gateway.
pub const PLATFORM_HEADERS: [&str; 3] = [CALLER_CLASS_HEADER, DEPTH_HEADER, TOKEN_HEADER];

/// Default limit on a call chain's depth: a request at a deeper level is refused with 508.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 8;

/// A fresh random chain token (128 bits, hex).
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A worker's link to the gateway: sends its guests' calls there as HTTP requests, on pooled
/// keep-alive connections.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    gateway: SocketAddr,
    token: String,
    classes: ClassSet,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayLink {
    pub fn new(gateway: SocketAddr, token: String, classes: ClassSet) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(wire::CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Arc::new(Self {
            gateway,
            token,
            classes,
            client,
        })
    }

    /// The request the gateway gets for `request` from `caller`.
    fn to_gateway(
        &self,
        caller: Caller,
        request: http::request::Parts,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, HttpError> {
        let path = request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.gateway.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        if caller.class.index() >= self.classes.len() {
            return Err(HttpError::InternalError(Some(
                "caller's class unknown".into(),
            )));
        }
        let class = self.classes.get(caller.class).name.clone();
        let mut out = http::Request::builder()
            .method(request.method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
        let headers = out.headers_mut();
        for (name, value) in &request.headers {
            // What the guest wrote, except the platform's own headers and `host` (the
            // connection's).
            if name != http::header::HOST && !PLATFORM_HEADERS.contains(&name.as_str()) {
                headers.append(name, value.clone());
            }
        }
        let value = |s: String| {
            http::HeaderValue::try_from(s)
                .map_err(|e| HttpError::InternalError(Some(e.to_string())))
        };
        headers.insert(CALLER_CLASS_HEADER, value(class)?);
        headers.insert(
            DEPTH_HEADER,
            value(caller.depth.saturating_add(1).to_string())?,
        );
        headers.insert(TOKEN_HEADER, value(self.token.clone())?);
        Ok(out)
    }
}

impl Platform for GatewayLink {
    fn call(&self, caller: Caller, request: http::Request<WasiBody>) -> CallFuture {
        let link = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = Limited::new(body, wire::MAX_MESSAGE_BYTES)
                .collect()
                .await
                .map_err(|_| HttpError::HttpRequestBodySize(None))?
                .to_bytes();
            let request = link.to_gateway(caller, parts, body)?;
            let response = link.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::ConnectionRefused
                } else {
                    HttpError::InternalError(Some(format!("calling the gateway: {e}")))
                }
            })?;
            Ok(response.map(|b| b.map_err(HttpError::from).boxed_unsync()))
        })
    }
}
