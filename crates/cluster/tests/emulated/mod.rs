//! Invocations for an emulated worker (`turnpike_node::emulated`) and reading their
//! answers: what the link and in-process tests share.

use turnpike_wire::proto;

/// A top-class invocation whose query sets the emulation (`?ms=N&mb=M`).
pub fn invocation(query: &str) -> proto::Invocation {
    proto::Invocation {
        function: "emulated".into(),
        class: 3,
        method: "GET".into(),
        path_and_query: query.into(),
        start_mb: 2,
        ..proto::Invocation::default()
    }
}

/// The response body of `outcome`; panics on a failure.
pub fn body(outcome: &proto::Outcome) -> String {
    match &outcome.ending {
        Some(proto::outcome::Ending::Response(r)) => String::from_utf8_lossy(&r.body).into(),
        other => panic!("not a response: {other:?}"),
    }
}
