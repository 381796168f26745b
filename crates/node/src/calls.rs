//! A worker's link to the gateway for its guests' calls to other functions (call chains,
//! `turnpike_wire::chain`): each call becomes an HTTP request to the gateway carrying the
//! caller's class, the chain's depth and the cluster's chain token.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use turnpike_policy::ClassSet;
use turnpike_wire::chain::{
    ChainToken, CALLER_CLASS_HEADER, DEPTH_HEADER, PLATFORM_HEADERS, TOKEN_HEADER,
};
use turnpike_wire::rpc;
use turnpike_worker::calls::{CallError as HttpError, CallFuture, Caller, Platform, WasiBody};

/// A worker's link to the gateway: sends its guests' calls there as HTTP requests, on pooled
/// keep-alive connections.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    gateway: SocketAddr,
    token: ChainToken,
    classes: ClassSet,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayLink {
    pub fn new(gateway: SocketAddr, token: ChainToken, classes: ClassSet) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(rpc::CONNECT_TIMEOUT));
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
        headers.insert(TOKEN_HEADER, value(self.token.as_str().to_string())?);
        Ok(out)
    }
}

impl Platform for GatewayLink {
    fn call(&self, caller: Caller, request: http::Request<WasiBody>) -> CallFuture {
        let link = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = Limited::new(body, rpc::MAX_MESSAGE_BYTES)
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

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_policy::ClassId;

    #[test]
    fn a_guests_platform_headers_are_replaced_and_its_own_kept() {
        let classes = ClassSet::default_four();
        let token = ChainToken::random();
        let link = GatewayLink::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            token.clone(),
            classes.clone(),
        );
        let (parts, ()) = http::Request::get("http://turnpike/hello?x=1")
            .header("x-turnpike-caller-class", "critical")
            .header("x-turnpike-depth", "0")
            .header("x-turnpike-chain-token", "forged-by-the-guest")
            .header("host", "turnpike")
            .header("x-app", "kept")
            .body(())
            .unwrap()
            .into_parts();
        let caller = Caller {
            class: ClassId(0),
            depth: 3,
        };
        let out = link.to_gateway(caller, parts, Bytes::new()).unwrap();
        assert_eq!(out.uri().to_string(), "http://127.0.0.1:9/hello?x=1");
        let h = out.headers();
        let all =
            |name: &str| -> Vec<&[u8]> { h.get_all(name).iter().map(|v| v.as_bytes()).collect() };
        assert_eq!(all(CALLER_CLASS_HEADER), vec![b"batch".as_slice()]);
        assert_eq!(all(DEPTH_HEADER), vec![b"4".as_slice()]);
        assert_eq!(all(TOKEN_HEADER), vec![token.as_bytes()]);
        assert_eq!(all("x-app"), vec![b"kept".as_slice()]);
        assert!(h.get("host").is_none());
    }
}
