//! `echo`: answers `200` with the request body, byte for byte, and the request method in the
//! `x-echo-method` header (e.g. `POST`); `x-echo-bytes` carries the body length. The response
//! `content-type` is the request's, or `application/octet-stream` if it had none.
//!
//! Bodies over 64 MiB get `413`; a body that cannot be read gets `400`.

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

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
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
