//! `chain`: calls another function through the platform and reports what it answered - a
//! call chain.
//!
//! `GET /?to=PATH` sends `GET http://turnpike<PATH>` (`PATH` percent-decoded, e.g.
//! `to=/work/batch%3Fms%3D5`); `to=self` calls this very request's path and query again,
//! which recurses until the platform's chain-depth limit stops it. The answer has the
//! callee's status, and the body
//!
//! ```text
//! called PATH: STATUS, ran at CLASS
//! <the callee's body>
//! ```
//!
//! where `CLASS` is the callee's `x-turnpike-class` response header (the class the platform
//! ran it at) or `-`. `via=HOST` sends the request to `http://HOST<PATH>` instead (a guest
//! may only call the platform, so this shows the refusal). A missing or bad `to` gets `400`; a
//! call that failed gets `502` naming the error.

use std::io::Read as _;

use guest_util::BadRequest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, IncomingResponse, OutgoingBody, OutgoingRequest, ResponseOutparam,
    Scheme,
};

struct Chain;

/// The value of query parameter `name`, if present.
fn param<'q>(query: &'q str, name: &str) -> Result<Option<&'q str>, BadRequest> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(value) = pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            if found.is_some() {
                return Err(BadRequest(format!(
                    "query parameter `{name}` given more than once"
                )));
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// `to`'s value, percent-decoded; `self` becomes `own_path`.
fn target(query: &str, own_path: &str) -> Result<String, BadRequest> {
    let raw = param(query, "to")?.ok_or_else(|| {
        BadRequest("missing query parameter `to` (e.g. ?to=/hello, or ?to=self)".into())
    })?;
    if raw == "self" {
        return Ok(own_path.to_string());
    }
    let decoded = percent_decode(raw)?;
    if !decoded.starts_with('/') {
        return Err(BadRequest(format!(
            "`to` must be a path starting with `/`, got {decoded:?}"
        )));
    }
    Ok(decoded)
}

fn percent_decode(s: &str) -> Result<String, BadRequest> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BadRequest(format!("bad percent-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadRequest(format!("{s:?} is not UTF-8 once decoded")))
}

/// Sends `GET http://<authority><path>` and waits for the whole response.
fn call(authority: &str, path: &str) -> Result<(u16, String, Vec<u8>), String> {
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "bad scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority {authority:?}"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("bad path {path:?}"))?;
    let body = request.body().map_err(|()| "request body".to_string())?;
    OutgoingBody::finish(body, None).map_err(|e| format!("finishing the request: {e:?}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response: IncomingResponse = pending
        .get()
        .ok_or("no response after the wait")?
        .map_err(|()| "response taken twice".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let class = response
        .headers()
        .get("x-turnpike-class")
        .first()
        .map_or_else(|| "-".to_string(), |v| String::from_utf8_lossy(v).into_owned());
    let incoming = response.consume().map_err(|()| "response body".to_string())?;
    let mut stream = incoming.stream().map_err(|()| "response stream".to_string())?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the response: {e}"))?;
    Ok((status, class, bytes))
}

impl wasip2::exports::http::incoming_handler::Guest for Chain {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let own_path = request.path_with_query().unwrap_or_default();
        let query = guest_util::query_of(&request);
        let (path, authority) = match target(&query, &own_path)
            .and_then(|path| Ok((path, param(&query, "via")?.unwrap_or("turnpike"))))
        {
            Ok(found) => found,
            Err(bad) => return guest_util::respond_bad_request(out, bad),
        };
        match call(authority, &path) {
            Ok((status, class, body)) => {
                let mut text = format!("called {path}: {status}, ran at {class}\n").into_bytes();
                text.extend_from_slice(&body);
                guest_util::respond(
                    out,
                    status,
                    &[("content-type", b"text/plain; charset=utf-8")],
                    &text,
                );
            }
            Err(e) => guest_util::respond_text(out, 502, &format!("calling {path}: {e}\n")),
        }
    }
}

wasip2::http::proxy::export!(Chain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_target() {
        assert_eq!(target("to=/hello", "/c?to=/hello").unwrap(), "/hello");
        assert_eq!(
            target("x=1&to=/work/batch%3Fms%3D5", "/").unwrap(),
            "/work/batch?ms=5"
        );
        assert_eq!(target("to=self", "/c?to=self").unwrap(), "/c?to=self");
        for bad in ["", "to=hello", "to=%zz", "to=/a&to=/b", "to=%2", "tox=/a"] {
            assert!(target(bad, "/").is_err(), "{bad}");
        }
        assert_eq!(param("to=/a&via=example.com", "via").unwrap(), Some("example.com"));
        assert_eq!(param("to=/a", "via").unwrap(), None);
    }
}
