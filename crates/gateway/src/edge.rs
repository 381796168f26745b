//! The gateway's HTTP edge: serving, and sending each request to the developer API
//! ([`crate::api`], under `/v1`) or to the function its route names ([`Gateway::run`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use tokio::net::TcpListener;

use turnpike_wire::http_server::{EdgeLimits, DRAIN_FOR};

use crate::gateway::{Body, CallerBody, Gateway, BOUND_RETRY_AFTER_S};
use crate::refusal::{refuse, refuse_for, Refusal};
use crate::routing::Lookup;

impl Gateway {
    /// Serves HTTP on `listener` until `shutdown` completes; then answers the requests
    /// already accepted and commits their ledger rows.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let follower = tokio::spawn(self.clone().follow_store());
        let async_runner = tokio::spawn(self.clone().run_async_queue());
        let serving = self.clone();
        let handler = move |request| {
            let gateway = serving.clone();
            async move { gateway.handle(request).await }
        };
        let limits = EdgeLimits {
            connections_max: self.config.connections_max,
            header_read_timeout: self.config.header_read_timeout,
        };
        let over_limit = |open| {
            refuse_for(
                Refusal::Unavailable,
                format!(
                    "the gateway has {open} connections open, its gateway_connections_max: retry soon"
                ),
                Some(BOUND_RETRY_AFTER_S),
            )
        };
        // Dashboard streams never end by themselves: they end when the gateway stops, so
        // the drain does not wait on them.
        let stopping = self.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.dashboard.stop();
        };
        turnpike_wire::http_server::serve(listener, handler, shutdown, limits, over_limit).await;
        follower.abort();
        // No more asynchronous attempts start; those running end and write their results
        // (one that does not within the drain runs again elsewhere when its lease lapses).
        async_runner.abort();
        // Invocations whose clients hung up run on apart from any connection (cancelled, so
        // briefly): their rows too.
        let until = std::time::Instant::now() + DRAIN_FOR;
        while (self.in_flight() > 0 || self.async_running.load(Ordering::Relaxed) > 0)
            && std::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Every answered request's row, in the store before the gateway is gone.
        self.billing.flush().await;
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, request: http::Request<Incoming>) -> http::Response<Body> {
        let response = self.route(request).await;
        let at = usize::from(response.status().as_u16() / 100).clamp(2, 5) - 2;
        self.responses[at].fetch_add(1, Ordering::Relaxed);
        response
    }

    async fn route(&self, request: http::Request<Incoming>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        if path == "/v1" || path.starts_with("/v1/") {
            return crate::api::handle(self, parts, body).await;
        }
        if path == "/dashboard" || path.starts_with("/dashboard/") {
            return crate::dashboard::handle(self, parts).await;
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let table = self.routing();
        let target = match table.lookup(&self.config.domain, host, &parts.method, path) {
            Lookup::Found(target) => target.clone(),
            Lookup::NoApp(app) => {
                return refuse(Refusal::NotFound, format!("no app named `{app}`"))
            }
            Lookup::NoRoute => {
                return refuse(
                    Refusal::NotFound,
                    format!("no route for {} {path}", parts.method),
                )
            }
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| path.to_string(), |p| p.as_str().to_string());
        if target.asynchronous {
            return self.submit_async(target, parts, body, path_and_query).await;
        }
        if crate::async_invocations::wants_async(&parts.headers) {
            return refuse(
                Refusal::Invalid,
                format!(
                    "`Prefer: respond-async` on {} {path}: this route is not declared `async = true` in its app's manifest; ask for an asynchronous run with a direct invocation (/v1/apps/{{app}}/functions/{{function}}/invoke) or declare the route async",
                    parts.method
                ),
            );
        }
        self.run(target, parts, CallerBody::Http(body), path_and_query)
            .await
    }
}
