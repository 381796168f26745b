//! Calls from a function to other functions through the platform (call chains).
//!
//! A guest calls another function with an ordinary outgoing `wasi:http` request whose
//! authority is [`PLATFORM_AUTHORITY`], e.g. `GET http://turnpike/hello`, or
//! `APP.`[`PLATFORM_AUTHORITY`] for another app (`http://shop.turnpike/cart`): the path is
//! routed exactly as an outside request to the gateway would be (routes, or
//! `/v1/invoke/<hash>`). Every other outgoing request is still denied
//! (`HttpRequestDenied`): guests have no network.
//!
//! The worker hands such a request to the [`Platform`] it was configured with, together with
//! the [`Caller`] - the class the calling invocation runs at, its call-chain depth and the
//! call token its gateway signed for it - which the guest cannot forge: the guest only writes
//! the request, the worker adds who is calling.
//! The platform (the control plane's gateway link) runs the callee at `max(caller class, the
//! callee's route class)` and refuses chains deeper than its limit. A worker without a
//! platform denies these requests too.
//!
//! Why outgoing `wasi:http` rather than a host import: it needs nothing Turnpike-specific in
//! the guest (any `wasi:http` component, from any language, can call `http://turnpike/...`),
//! and the callee is found by the same routes as outside traffic.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use turnpike_policy::ClassId;
/// The body of a call's request and response, and how a call fails, in `wasi:http`'s terms.
pub use wasmtime_wasi_http::{Error as CallError, WasiBody};

/// The authority (host, any port) that names the platform in a guest's outgoing request.
pub const PLATFORM_AUTHORITY: &str = "turnpike";

/// Who is calling: the calling invocation's class, its depth in the call chain (0 for an
/// invocation started by an outside request), and its call token (signed by the gateway that
/// dispatched it, see `turnpike_wire::chain`; `None`: it may not call), and its trace
/// context (a W3C `traceparent`, when traces are exported), which a call carries unless the
/// guest set its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub class: ClassId,
    pub depth: u32,
    pub token: Option<Arc<str>>,
    pub traceparent: Option<Arc<str>>,
}

/// A call's response, or why it failed (in `wasi:http`'s terms, which the guest sees).
pub type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, CallError>> + Send>>;

/// Where a worker sends its guests' calls to other functions.
pub trait Platform: Send + Sync + Debug {
    /// Sends `request` (its URI's authority is [`PLATFORM_AUTHORITY`]) on behalf of `caller`.
    fn call(&self, caller: Caller, request: http::Request<WasiBody>) -> CallFuture;
}

/// Whether an outgoing request is addressed to the platform: `turnpike` or `APP.turnpike`.
pub fn is_platform_call(uri: &http::Uri) -> bool {
    uri.host().is_some_and(|host| {
        let host = host.to_ascii_lowercase();
        host == PLATFORM_AUTHORITY
            || host
                .strip_suffix(PLATFORM_AUTHORITY)
                .and_then(|app| app.strip_suffix('.'))
                .is_some_and(|app| !app.is_empty() && !app.contains('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_platform_authority_is_a_platform_call() {
        for uri in [
            "http://turnpike/hello",
            "https://turnpike:8080/v1/invoke/ab",
            "http://TurnPike/x?y=1",
            "http://shop.turnpike/cart",
            "http://Shop.TurnPike:8080/",
        ] {
            assert!(is_platform_call(&uri.parse().unwrap()), "{uri}");
        }
        for uri in [
            "http://example.com/",
            "http://turnpike.example.com/",
            "http://a.b.turnpike/",
            "http://.turnpike/",
            "http://xturnpike/",
            "http://127.0.0.1:8080/hello",
            "/relative",
        ] {
            assert!(!is_platform_call(&uri.parse().unwrap()), "{uri}");
        }
    }
}
