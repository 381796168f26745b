//! `hello`: the smallest Turnpike function. Any request gets `200` with the body
//! `hello from turnpike\n`; it ignores the method, path, query and body.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        guest_util::respond_text(out, 200, "hello from turnpike\n");
    }
}

wasip2::http::proxy::export!(Hello);
