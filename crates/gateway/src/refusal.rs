//! Every answer the gateway gives instead of a function's response, decided in one place:
//! the case ([`Refusal`]) sets the HTTP status, and every route - function routes, `/v1`
//! invocations and the rest of the API - writes the same JSON body, `{"error": "..."}`
//! (with `Retry-After` where waiting helps). A function's own responses, errors included, are
//! passed through untouched; a function that *failed* (trapped, timed out, was killed and
//! found no other worker) gets this body.
//!
//! Each refusal is logged once, here, inside the request's span: the platform's own failures
//! (5xx) at `warn`, the caller's (4xx) at `debug` (they are the caller's to see, and a
//! throttled tenant could otherwise fill the log).

use http::StatusCode;

pub use crate::body::Body;

/// Why a request gets no function response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such app, route, function, component or API path (404).
    NotFound,
    /// The request is malformed or names something unknown (400).
    Invalid,
    /// No key, or a key that is not valid (401).
    Unauthenticated,
    /// A key that may not do this, or platform headers from outside (403).
    Forbidden,
    /// The thing exists already (409).
    Conflict,
    /// The request contradicts an earlier one: an idempotency key reused for another request
    /// (422).
    Unprocessable,
    /// The client did not send its request in time (408).
    TimedOut,
    /// A body over its limit: the request's, an upload's, or the function's response (413).
    TooLarge,
    /// The tenant is over a throttling budget (429, with `Retry-After`).
    OverBudget,
    /// A call chain deeper than the limit (508).
    ChainTooDeep,
    /// The function failed: it trapped, timed out or answered nothing (502).
    FunctionFailed,
    /// The request's deadline passed before the function answered; it was cancelled (504).
    DeadlinePassed,
    /// The client went away before the answer and the invocation was cancelled: nobody
    /// receives this, but its usage row records the status (499, nginx's "client closed
    /// request").
    CallerGone,
    /// Something of the platform is down or full: the store, every shard, a worker, or a
    /// named bound was reached (503; with `Retry-After` when waiting helps).
    Unavailable,
    /// The gateway itself failed (500).
    Internal,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Invalid => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TimedOut => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::OverBudget => StatusCode::TOO_MANY_REQUESTS,
            Self::ChainTooDeep => StatusCode::LOOP_DETECTED,
            Self::FunctionFailed => StatusCode::BAD_GATEWAY,
            Self::DeadlinePassed => StatusCode::GATEWAY_TIMEOUT,
            Self::CallerGone => StatusCode::from_u16(499).expect("499 is in HTTP's range"),
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The response refusing a request: `{"error": message}` with the case's status.
pub fn refuse(case: Refusal, message: impl Into<String>) -> http::Response<Body> {
    refuse_for(case, message, None)
}

/// [`refuse`], telling the client to retry after `retry_after_s` seconds (`Retry-After`).
pub fn refuse_for(
    case: Refusal,
    message: impl Into<String>,
    retry_after_s: Option<u64>,
) -> http::Response<Body> {
    let message = message.into();
    let status = case.status();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), "{message}");
    } else {
        tracing::debug!(status = status.as_u16(), "{message}");
    }
    let mut text = serde_json::json!({ "error": message }).to_string();
    text.push('\n');
    let mut response = http::Response::new(Body::full(text));
    *response.status_mut() = status;
    // For callers in this process (the asynchronous runner): which case it was.
    response.extensions_mut().insert(case);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after_s {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_refusal_is_json_with_its_status_and_retry_after() {
        let response = refuse_for(Refusal::Unavailable, "full \"queue\"", Some(3));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"], "full \"queue\"");
        let response = refuse(Refusal::NotFound, "no route");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().get(http::header::RETRY_AFTER).is_none());
        assert_eq!(
            response.extensions().get::<Refusal>(),
            Some(&Refusal::NotFound)
        );
    }
}
