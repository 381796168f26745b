//! A worker's link to the gateway for its guests' calls to other functions (call chains,
//! `turnpike_wire::chain`): each call becomes an HTTP request to the gateway carrying the
//! calling invocation's call token (signed by the gateway that dispatched it: the worker
//! holds no secret), and, for `http://APP.turnpike/...`, `Host: APP.turnpike`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use turnpike_wire::chain::{PLATFORM_HEADERS, TOKEN_HEADER};
use turnpike_wire::rpc;
use turnpike_wire::telemetry::TRACEPARENT;
use turnpike_worker::calls::{
    CallError as HttpError, CallFuture, Caller, Platform, WasiBody, PLATFORM_AUTHORITY,
};

/// A worker's link to the gateway: sends its guests' calls there as HTTP requests, on pooled
/// keep-alive connections.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    gateway: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayLink {
    pub fn new(gateway: SocketAddr) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(rpc::CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Arc::new(Self { gateway, client })
    }

    /// The request the gateway gets for `request` from `caller`; denied when the calling
    /// invocation has no call token (its gateway has no chain key).
    fn to_gateway(
        &self,
        caller: &Caller,
        request: http::request::Parts,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, HttpError> {
        let Some(token) = &caller.token else {
            return Err(HttpError::HttpRequestDenied);
        };
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
        let value = |s: &str| {
            http::HeaderValue::try_from(s)
                .map_err(|e| HttpError::InternalError(Some(e.to_string())))
        };
        // `APP.turnpike` names an app, which the gateway routes by host; plain `turnpike`
        // the gateway's default app (the connection's host).
        if let Some(host) = request.uri.host() {
            if !host.eq_ignore_ascii_case(PLATFORM_AUTHORITY) {
                headers.insert(http::header::HOST, value(host)?);
            }
        }
        headers.insert(TOKEN_HEADER, value(token)?);
        // The calling invocation's trace, unless the guest carries its own.
        if let Some(traceparent) = &caller.traceparent {
            if !headers.contains_key(TRACEPARENT) {
                headers.insert(TRACEPARENT, value(traceparent)?);
            }
        }
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
            let request = link.to_gateway(&caller, parts, body)?;
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
    use turnpike_wire::chain::{CALLER_CLASS_HEADER, DEPTH_HEADER};

    fn caller(token: Option<&str>) -> Caller {
        Caller {
            class: ClassId(0),
            depth: 3,
            token: token.map(Arc::from),
            traceparent: None,
        }
    }

    fn parts(uri: &str) -> http::request::Parts {
        http::Request::get(uri)
            .header("x-turnpike-caller-class", "critical")
            .header("x-turnpike-depth", "0")
            .header("x-turnpike-chain-token", "forged-by-the-guest")
            .header("host", "turnpike")
            .header("x-app", "kept")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_guests_platform_headers_are_replaced_by_its_invocations_token() {
        let link = GatewayLink::new(SocketAddr::from(([127, 0, 0, 1], 9)));
        let out = link
            .to_gateway(
                &caller(Some("v1.signed.token")),
                parts("http://turnpike/hello?x=1"),
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(out.uri().to_string(), "http://127.0.0.1:9/hello?x=1");
        let h = out.headers();
        let all =
            |name: &str| -> Vec<&[u8]> { h.get_all(name).iter().map(|v| v.as_bytes()).collect() };
        assert_eq!(all(TOKEN_HEADER), vec![b"v1.signed.token".as_slice()]);
        assert!(all(CALLER_CLASS_HEADER).is_empty() && all(DEPTH_HEADER).is_empty());
        assert_eq!(all("x-app"), vec![b"kept".as_slice()]);
        assert!(h.get("host").is_none());
    }

    #[test]
    fn a_call_to_another_app_names_it_by_host_and_one_without_a_token_is_denied() {
        let link = GatewayLink::new(SocketAddr::from(([127, 0, 0, 1], 9)));
        let out = link
            .to_gateway(
                &caller(Some("t")),
                parts("http://shop.turnpike/cart"),
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(out.headers()["host"], "shop.turnpike");
        assert_eq!(out.uri().path(), "/cart");
        let denied = link.to_gateway(&caller(None), parts("http://turnpike/x"), Bytes::new());
        assert!(
            matches!(denied, Err(HttpError::HttpRequestDenied)),
            "{denied:?}"
        );
    }

    #[test]
    fn a_call_carries_the_invocations_trace_unless_the_guest_set_its_own() {
        let link = GatewayLink::new(SocketAddr::from(([127, 0, 0, 1], 9)));
        let ours = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let traced = Caller {
            traceparent: Some(Arc::from(ours)),
            ..caller(Some("t"))
        };
        let out = link
            .to_gateway(&traced, parts("http://turnpike/x"), Bytes::new())
            .unwrap();
        assert_eq!(out.headers()[TRACEPARENT], ours);
        let guests = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut own = parts("http://turnpike/x");
        own.headers.insert(TRACEPARENT, guests.parse().unwrap());
        let out = link.to_gateway(&traced, own, Bytes::new()).unwrap();
        let values: Vec<_> = out.headers().get_all(TRACEPARENT).iter().collect();
        assert_eq!(values, vec![guests]);
        let untraced = link
            .to_gateway(&caller(Some("t")), parts("http://turnpike/x"), Bytes::new())
            .unwrap();
        assert!(untraced.headers().get(TRACEPARENT).is_none());
    }
}
