//! Invocations for an emulated worker (`turnpike_node::emulated`) and reading their
//! answers: what the link and in-process tests share.

use turnpike_policy::ClassId;
use turnpike_wire::invocation::{Invocation, Outcome, Request};

/// A top-class invocation whose query sets the emulation (`?ms=N&mb=M`).
pub fn invocation(query: &str) -> Invocation {
    Invocation {
        id: 0,
        function: "emulated".into(),
        class: ClassId(3),
        request: Request {
            method: http::Method::GET,
            path_and_query: query.into(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        },
        depth: 0,
        start_mb: 2,
        deadline: None,
        cancel: Default::default(),
        call_token: None,
    }
}

/// The response body of `outcome`; panics on a failure.
pub fn body(outcome: &Outcome) -> String {
    match &outcome.ending {
        Ok(r) => String::from_utf8_lossy(&r.body).into(),
        Err(failure) => panic!("not a response: {failure}"),
    }
}
