//! `echo`: answers `200` with the request body, byte for byte, and the request method in the
//! `x-echo-method` header (e.g. `POST`); `x-echo-bytes` carries the body length. The response
//! `content-type` is the request's, or `application/octet-stream` if it had none.
//!
//! Bodies over 64 MiB get `413`; a body that cannot be read gets `400`.
//!
//! With `?progress=1` it holds nothing: it answers `200` at once and, for each piece of body
//! it reads, writes a line with the bytes read so far (flushed at once), then `done N` at the
//! end, or `cut after N: <why>` if the body could not be read to its end. A client can see
//! its upload reach the function while it is still sending it.

use wasip2::http::types::{IncomingBody, IncomingRequest, Method, ResponseOutparam};
use wasip2::io::streams::StreamError;

/// The largest body echoed back.
const BODY_BYTES_MAX: usize = 64 << 20;
/// Bytes asked for per read.
const READ_BYTES_MAX: u64 = 64 << 10;

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// Why the body could not be echoed.
enum BodyError {
    TooLarge,
    Unreadable(String),
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, BodyError> {
    let unreadable = |what: &str| BodyError::Unreadable(what.to_string());
    let body = request
        .consume()
        .map_err(|()| unreadable("request body already consumed"))?;
    let stream = body
        .stream()
        .map_err(|()| unreadable("request body stream unavailable"))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(READ_BYTES_MAX) {
            Ok(chunk) => {
                if data.len() + chunk.len() > BODY_BYTES_MAX {
                    return Err(BodyError::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(BodyError::Unreadable(format!(
                    "error reading request body: {}",
                    e.to_debug_string()
                )))
            }
        }
    }
    drop(stream);
    // Trailers, if any, are not echoed.
    drop(IncomingBody::finish(body));
    Ok(data)
}

struct Echo;

/// `?progress=1`: reports each read as it happens, holding no body.
fn progress(request: &IncomingRequest, out: ResponseOutparam) {
    use std::io::Write as _;
    use wasip2::http::types::{Fields, OutgoingBody, OutgoingResponse};
    let fields = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("valid headers");
    let response = OutgoingResponse::new(fields);
    let outgoing = response.body().expect("first call to OutgoingResponse::body");
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut writer) = outgoing.write() else {
        return;
    };
    let mut say = |line: String| {
        writer.write_all(line.as_bytes()).is_ok() && writer.blocking_flush().is_ok()
    };
    let Ok(body) = request.consume() else {
        say("cut after 0: request body already consumed\n".into());
        return;
    };
    let mut total = 0u64;
    let end = match body.stream() {
        Err(()) => "cut after 0: request body stream unavailable\n".to_string(),
        Ok(stream) => loop {
            match stream.blocking_read(READ_BYTES_MAX) {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    if !chunk.is_empty() && !say(format!("{total}\n")) {
                        return;
                    }
                }
                Err(StreamError::Closed) => break format!("done {total}\n"),
                Err(StreamError::LastOperationFailed(e)) => {
                    break format!("cut after {total}: {}\n", e.to_debug_string())
                }
            }
        },
    };
    say(end);
    drop(writer);
    let _ = OutgoingBody::finish(outgoing, None);
}

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = guest_util::query_of(&request);
        if guest_util::u64_param(&query, "progress", 1) == Ok(Some(1)) {
            return progress(&request, out);
        }
        let method = request.method();
        let content_type = request
            .headers()
            .get("content-type")
            .into_iter()
            .next()
            .unwrap_or_else(|| b"application/octet-stream".to_vec());
        match read_body(&request) {
            Ok(body) => {
                let len = body.len().to_string();
                guest_util::respond(
                    out,
                    200,
                    &[
                        ("content-type", &content_type),
                        ("x-echo-method", method_name(&method).as_bytes()),
                        ("x-echo-bytes", len.as_bytes()),
                    ],
                    &body,
                );
            }
            Err(BodyError::TooLarge) => guest_util::respond_text(
                out,
                413,
                &format!("request body larger than {BODY_BYTES_MAX} bytes\n"),
            ),
            Err(BodyError::Unreadable(message)) => {
                guest_util::respond_bad_request(out, guest_util::BadRequest(message))
            }
        }
    }
}

wasip2::http::proxy::export!(Echo);
