//! Invocations for an emulated worker (`turnpike_node::emulated`) and reading their
//! answers: what the link and in-process tests share.

use turnpike_policy::ClassId;
use turnpike_wire::invocation::{Invocation, Outcome, Request};

/// A top-class invocation whose query sets the emulation (`?ms=N&mb=M`).
pub fn invocation(query: &str) -> Invocation {
    Invocation {
        start_mb: 2,
        ..Invocation::new(0, "emulated", ClassId(3), Request::get(query))
    }
}

/// The response body of `outcome`; panics on a failure.
pub fn body(outcome: &Outcome) -> String {
    match &outcome.ending {
        Ok(r) => String::from_utf8_lossy(&r.body).into(),
        Err(failure) => panic!("not a response: {failure}"),
    }
}
