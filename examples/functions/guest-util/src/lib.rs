//! Shared helpers for the Turnpike example functions (not a function itself): strict parsing of
//! numeric query parameters, plain-text responses, and the wasi monotonic clock.
//!
//! Every function answers a bad query with `400` and a one-line `bad request: ...` body instead
//! of trapping; [`respond`] is the only place that builds a response.

use std::io::Write as _;

use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// A bad request: becomes a `400` whose body is `bad request: <message>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// The query string of a request (the part after `?`), or `""` if there is none.
pub fn query_of(request: &IncomingRequest) -> String {
    let path = request.path_with_query().unwrap_or_default();
    match path.split_once('?') {
        Some((_, query)) => query.to_string(),
        None => String::new(),
    }
}

/// Looks up the unsigned integer parameter `name` in `query` (`a=1&b=2`).
///
/// Returns `Ok(None)` when it is absent. Unknown parameters are ignored; a parameter given twice,
/// an empty value, anything but decimal digits, or a value above `max` is a [`BadRequest`].
pub fn u64_param(query: &str, name: &str, max: u64) -> Result<Option<u64>, BadRequest> {
    let mut found: Option<&str> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err(BadRequest(format!(
                "query parameter `{name}` given more than once"
            )));
        }
        found = Some(value);
    }
    let Some(value) = found else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRequest(format!(
            "query parameter `{name}` must be a non-negative decimal integer, got {value:?}"
        )));
    }
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(BadRequest(format!(
            "query parameter `{name}` must be at most {max}, got {value}"
        ))),
    }
}

/// Like [`u64_param`], but an absent parameter is a [`BadRequest`] too.
pub fn required_u64_param(query: &str, name: &str, max: u64) -> Result<u64, BadRequest> {
    u64_param(query, name, max)?.ok_or_else(|| {
        BadRequest(format!(
            "missing query parameter `{name}` (e.g. ?{name}=10)"
        ))
    })
}

/// Sends a complete response: `status`, the given headers, then `body`.
///
/// Errors after the response head is out (e.g. the client went away) are ignored: there is
/// nobody left to tell, and a guest trap would only add noise to the host's logs.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_vec()))
        .collect();
    let fields = Fields::from_list(&entries).expect("example functions send only valid headers");
    let response = OutgoingResponse::new(fields);
    response
        .set_status_code(status)
        .expect("example functions send only valid status codes");
    let outgoing = response
        .body()
        .expect("first call to OutgoingResponse::body");
    ResponseOutparam::set(out, Ok(response));

    if let Ok(mut stream) = outgoing.write() {
        // `write_all` (std::io::Write) honours the host's `check-write` budget and waits when
        // it is zero; `blocking_flush` waits until the host has taken all of it.
        if stream.write_all(body).is_ok() {
            let _ = stream.blocking_flush();
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// A `text/plain` response.
pub fn respond_text(out: ResponseOutparam, status: u16, text: &str) {
    respond(
        out,
        status,
        &[("content-type", b"text/plain; charset=utf-8")],
        text.as_bytes(),
    );
}

/// The `400` for a [`BadRequest`]: body `bad request: <message>\n`.
pub fn respond_bad_request(out: ResponseOutparam, bad: BadRequest) {
    respond_text(out, 400, &format!("bad request: {}\n", bad.0));
}

/// Sends `Ok(text)` as a `200` and `Err(bad)` as a `400`.
pub fn respond_result(out: ResponseOutparam, result: Result<String, BadRequest>) {
    match result {
        Ok(text) => respond_text(out, 200, &text),
        Err(bad) => respond_bad_request(out, bad),
    }
}

/// Nanoseconds in a millisecond.
pub const NS_PER_MS: u64 = 1_000_000;

/// The wasi monotonic clock, in nanoseconds.
pub fn now_ns() -> u64 {
    monotonic_clock::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_present_absent_and_unknown_parameters() {
        assert_eq!(u64_param("ms=50", "ms", 100), Ok(Some(50)));
        assert_eq!(u64_param("a=x&ms=0&b", "ms", 100), Ok(Some(0)));
        assert_eq!(u64_param("", "ms", 100), Ok(None));
        assert_eq!(u64_param("&&other=1", "ms", 100), Ok(None));
        assert_eq!(u64_param("ms=100", "ms", 100), Ok(Some(100)));
    }

    #[test]
    fn rejects_bad_values() {
        for query in [
            "ms=",
            "ms",
            "ms=-1",
            "ms=+1",
            "ms=1.5",
            "ms=abc",
            "ms=%31",
            "ms=1&ms=2",
        ] {
            assert!(u64_param(query, "ms", 100).is_err(), "{query}");
        }
        assert!(u64_param("ms=101", "ms", 100).is_err());
        assert!(u64_param("ms=99999999999999999999999", "ms", u64::MAX).is_err());
        assert!(required_u64_param("", "ms", 100).is_err());
    }
}
