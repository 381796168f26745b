//! Between the roles' own types ([`crate::invocation`], the policy core's `IdleEntry` and
//! `PollReply`) and the RPC messages ([`crate::proto`]): the only place that knows both.
//!
//! Encoding never fails. Decoding what came off a socket can: a request whose method, header
//! or class cannot be what the gateway sent is the sender's error, and becomes a
//! `FailureKind::BadRequest` [`Failure`] that the receiving role answers with, without running
//! anything. An outcome always decodes (it is what a caller waits for): an outcome message
//! without an ending becomes an `Unavailable` failure, a failure kind this build does not know
//! becomes `Unavailable` too (nothing says it ran, so it is not billed), a status outside HTTP's
//! range becomes 502, and a response header that does not parse is dropped.

use std::time::{Duration, Instant};

use turnpike_policy::concurrency::Limit;
use turnpike_policy::idle_list::IdleEntry;
use turnpike_policy::placement::PollReply;
use turnpike_policy::{ClassId, MachineId};

use crate::body::Head;
use crate::invocation::{
    CallError, Cancellation, Failure, FailureKind, IdleReport, Invocation, Outcome, Registered,
    Registration, Request, Response, Usage,
};
use crate::proto;

impl From<Invocation> for proto::Invocation {
    fn from(invocation: Invocation) -> Self {
        let Invocation {
            id,
            function,
            class,
            request,
            depth,
            start_mb,
            deadline,
            cancel: _,
            call_token,
            respond,
            response_bytes_max,
            // The link sending it marks `request_streamed` when it takes the body to send.
            request_body: _,
            concurrency_limits,
            traceparent,
        } = invocation;
        Self {
            id,
            function,
            class: u32::from(class.0),
            method: request.method.as_str().to_string(),
            path_and_query: request.path_and_query,
            headers: headers_to_wire(&request.headers),
            body: request.body,
            depth,
            start_mb,
            deadline_ms_left: deadline.map_or(0, deadline_ms_left),
            call_token: call_token.unwrap_or_default(),
            streamed: respond.is_some(),
            response_bytes_max: response_bytes_max.unwrap_or(0),
            request_streamed: false,
            concurrency_limits: concurrency_limits
                .into_iter()
                .map(|l| proto::ConcurrencyLimit {
                    key: l.key,
                    max: l.max,
                })
                .collect(),
            traceparent: traceparent.unwrap_or_default(),
        }
    }
}

/// Milliseconds until `deadline`, rounded up so that the next hop never cancels before the
/// caller does (the caller tells a passed deadline from a hang-up by its own clock), and at
/// least 1 (0 on the wire means no deadline): a deadline already past still cancels there.
fn deadline_ms_left(deadline: Instant) -> u64 {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_nanos();
    u64::try_from(left.div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl TryFrom<proto::Invocation> for Invocation {
    type Error = Failure;

    fn try_from(message: proto::Invocation) -> Result<Self, Failure> {
        let class = u8::try_from(message.class)
            .map(ClassId)
            .map_err(|_| bad_request(format!("unknown class {}", message.class)))?;
        let method = http::Method::from_bytes(message.method.as_bytes())
            .map_err(|_| bad_request(format!("bad method {:?}", message.method)))?;
        let headers = headers_from_wire(message.headers)?;
        Ok(Self {
            id: message.id,
            function: message.function,
            class,
            request: Request {
                method,
                path_and_query: message.path_and_query,
                headers,
                body: message.body,
            },
            depth: message.depth,
            start_mb: message.start_mb,
            deadline: (message.deadline_ms_left > 0)
                .then(|| Instant::now() + Duration::from_millis(message.deadline_ms_left)),
            cancel: Cancellation::new(),
            call_token: (!message.call_token.is_empty()).then_some(message.call_token),
            // The receiving link makes one when `message.streamed` (`crate::link::serve`).
            respond: None,
            response_bytes_max: (message.response_bytes_max > 0)
                .then_some(message.response_bytes_max),
            // The receiving link makes one when `message.request_streamed`.
            request_body: None,
            concurrency_limits: message
                .concurrency_limits
                .into_iter()
                .map(|l| Limit {
                    key: l.key,
                    max: l.max,
                })
                .collect(),
            traceparent: (!message.traceparent.is_empty()).then_some(message.traceparent),
        })
    }
}

impl From<Outcome> for proto::Outcome {
    fn from(outcome: Outcome) -> Self {
        let ending = match outcome.ending {
            Ok(response) => proto::outcome::Ending::Response(proto::Response {
                status: u32::from(response.status.as_u16()),
                headers: headers_to_wire(&response.headers),
                body: response.body,
            }),
            Err(failure) => proto::outcome::Ending::Failure(proto::Failure {
                kind: proto::FailureKind::from(failure.kind) as i32,
                message: failure.message,
            }),
        };
        Self {
            ending: Some(ending),
            usage: outcome.usage.map(proto::Usage::from),
            worker: outcome.worker.0,
            attempts: outcome.attempts,
        }
    }
}

impl From<Head> for proto::Response {
    fn from(head: Head) -> Self {
        Self {
            status: u32::from(head.status.as_u16()),
            headers: headers_to_wire(&head.headers),
            body: bytes::Bytes::new(),
        }
    }
}

/// A streamed response's head as it came off a socket: decoded as an outcome's response is
/// (a status outside HTTP's range becomes 502, a header that does not parse is dropped).
impl From<proto::Response> for Head {
    fn from(message: proto::Response) -> Self {
        Self {
            status: status_from_wire(message.status),
            headers: headers_from_wire_lossy(message.headers),
        }
    }
}

fn status_from_wire(status: u32) -> http::StatusCode {
    u16::try_from(status)
        .ok()
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::BAD_GATEWAY)
}

impl From<proto::Outcome> for Outcome {
    fn from(message: proto::Outcome) -> Self {
        let ending = match message.ending {
            Some(proto::outcome::Ending::Response(r)) => Ok(Response {
                status: status_from_wire(r.status),
                headers: headers_from_wire_lossy(r.headers),
                body: r.body,
            }),
            Some(proto::outcome::Ending::Failure(f)) => {
                Err(match proto::FailureKind::try_from(f.kind) {
                    Ok(kind) => match FailureKind::try_from(kind) {
                        Ok(kind) => Failure::new(kind, f.message),
                        Err(()) => unknown_kind(f.kind, f.message),
                    },
                    Err(_) => unknown_kind(f.kind, f.message),
                })
            }
            None => Err(Failure::new(
                FailureKind::Unavailable,
                "an outcome without an ending",
            )),
        };
        Self {
            ending,
            usage: message.usage.map(Usage::from),
            worker: MachineId(message.worker),
            attempts: message.attempts,
        }
    }
}

fn unknown_kind(kind: i32, message: String) -> Failure {
    Failure::new(
        FailureKind::Unavailable,
        format!("a failure of unknown kind {kind}: {message}"),
    )
}

fn bad_request(message: String) -> Failure {
    Failure::new(FailureKind::BadRequest, message)
}

impl From<FailureKind> for proto::FailureKind {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Guest => Self::Guest,
            FailureKind::Killed => Self::Killed,
            FailureKind::UnknownFunction => Self::UnknownFunction,
            FailureKind::Unavailable => Self::Unavailable,
            FailureKind::BadRequest => Self::BadRequest,
            FailureKind::Overloaded => Self::Overloaded,
            FailureKind::Cancelled => Self::Cancelled,
            FailureKind::TooLarge => Self::TooLarge,
        }
    }
}

impl TryFrom<proto::FailureKind> for FailureKind {
    /// `FAILURE_KIND_UNSPECIFIED`: a sender that set no kind.
    type Error = ();

    fn try_from(kind: proto::FailureKind) -> Result<Self, ()> {
        Ok(match kind {
            proto::FailureKind::Unspecified => return Err(()),
            proto::FailureKind::Guest => Self::Guest,
            proto::FailureKind::Killed => Self::Killed,
            proto::FailureKind::UnknownFunction => Self::UnknownFunction,
            proto::FailureKind::Unavailable => Self::Unavailable,
            proto::FailureKind::BadRequest => Self::BadRequest,
            proto::FailureKind::Overloaded => Self::Overloaded,
            proto::FailureKind::Cancelled => Self::Cancelled,
            proto::FailureKind::TooLarge => Self::TooLarge,
        })
    }
}

impl From<Usage> for proto::Usage {
    fn from(u: Usage) -> Self {
        Self {
            class: u32::from(u.class.0),
            cpu_ns: duration_ns(u.cpu),
            wall_ns: duration_ns(u.wall),
            queued_ns: duration_ns(u.queued),
            peak_memory_bytes: u.peak_memory_bytes,
            memory_mb_seconds: u.memory_mb_seconds,
            parks: u.parks,
            blocks: u.blocks,
            swap_outs: u.swap_outs,
            swapped_out_bytes: u.swapped_out_bytes,
        }
    }
}

impl From<proto::Usage> for Usage {
    fn from(u: proto::Usage) -> Self {
        Self {
            // Saturated: no worker of this build sends a class past 255.
            class: ClassId(u8::try_from(u.class).unwrap_or(u8::MAX)),
            cpu: Duration::from_nanos(u.cpu_ns),
            wall: Duration::from_nanos(u.wall_ns),
            queued: Duration::from_nanos(u.queued_ns),
            peak_memory_bytes: u.peak_memory_bytes,
            memory_mb_seconds: u.memory_mb_seconds,
            parks: u.parks,
            blocks: u.blocks,
            swap_outs: u.swap_outs,
            swapped_out_bytes: u.swapped_out_bytes,
        }
    }
}

/// Nanoseconds, saturating (585 years).
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn headers_to_wire(headers: &http::HeaderMap) -> Vec<proto::Header> {
    headers
        .iter()
        .map(|(name, value)| proto::Header {
            name: name.as_str().to_string(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// The headers of a request; one that does not parse is the sender's error.
fn headers_from_wire(headers: Vec<proto::Header>) -> Result<http::HeaderMap, Failure> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad_request(format!("bad header name {:?}", h.name)))?;
        let value = http::HeaderValue::from_bytes(&h.value)
            .map_err(|_| bad_request(format!("bad value of header {:?}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The headers of a response; one that does not parse is dropped (the response still
/// reaches its caller).
fn headers_from_wire_lossy(headers: Vec<proto::Header>) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(&h.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl From<Registration> for proto::WorkerInfo {
    fn from(r: Registration) -> Self {
        Self {
            address: r.address,
            memory_mb: r.memory_mb,
            cores: r.cores,
            lease_ms: duration_ms(r.lease),
            incarnation: r.incarnation,
        }
    }
}

impl From<proto::WorkerInfo> for Registration {
    fn from(info: proto::WorkerInfo) -> Self {
        Self {
            address: info.address,
            memory_mb: info.memory_mb,
            cores: info.cores,
            lease: Duration::from_millis(info.lease_ms),
            incarnation: info.incarnation,
        }
    }
}

impl From<Registered> for proto::Registered {
    fn from(r: Registered) -> Self {
        Self {
            worker: r.worker.0,
            fresh: r.fresh,
            token: r.token,
        }
    }
}

impl From<proto::Registered> for Registered {
    fn from(r: proto::Registered) -> Self {
        Self {
            worker: MachineId(r.worker),
            fresh: r.fresh,
            token: r.token,
        }
    }
}

/// A worker's idle-list join or update at a shard, as `Shard.IdleJoin` carries it.
pub fn idle_join_to_wire(report: &IdleReport, entry: IdleEntry) -> proto::IdleEntry {
    proto::IdleEntry {
        worker: report.worker.0,
        free_mb: entry.free_mb,
        functions: entry.functions,
        idle_cores: entry.idle_cores,
        token: report.token,
        seq: report.seq,
    }
}

pub fn idle_join_from_wire(e: &proto::IdleEntry) -> IdleReport {
    IdleReport {
        worker: MachineId(e.worker),
        token: e.token,
        seq: e.seq,
        entry: Some(IdleEntry {
            free_mb: e.free_mb,
            functions: e.functions,
            idle_cores: e.idle_cores,
        }),
    }
}

/// A worker's idle-list leave, as `Shard.IdleLeave` carries it.
pub fn idle_leave_to_wire(report: &IdleReport) -> proto::WorkerRef {
    proto::WorkerRef {
        worker: report.worker.0,
        token: report.token,
        seq: report.seq,
    }
}

pub fn idle_leave_from_wire(r: &proto::WorkerRef) -> IdleReport {
    IdleReport {
        worker: MachineId(r.worker),
        token: r.token,
        seq: r.seq,
        entry: None,
    }
}

impl From<PollReply> for proto::PollReply {
    fn from(r: PollReply) -> Self {
        Self {
            functions: r.functions,
            room_mb: r.room_mb,
            ahead: r.ahead,
            cores: r.cores,
        }
    }
}

/// The reply of the worker the shard knows as `machine` (a worker does not know its id at
/// each shard; the message does not carry it).
pub fn poll_reply_from_wire(machine: MachineId, r: proto::PollReply) -> PollReply {
    PollReply {
        machine,
        functions: r.functions,
        room_mb: r.room_mb,
        ahead: r.ahead,
        cores: r.cores,
    }
}

/// An RPC's error as a role sees it: the caller's mistakes (`InvalidArgument`, `NotFound`,
/// `FailedPrecondition`, `OutOfRange`) are refusals; everything else (a transport failure, a
/// timeout, a peer shutting down) means the peer may be down.
impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange => Self::Refused(message),
            _ => Self::Unavailable(message),
        }
    }
}

impl From<CallError> for tonic::Status {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Unavailable(m) => Self::unavailable(m),
            CallError::Refused(m) => Self::invalid_argument(m),
        }
    }
}

/// A worker's answer to `Worker.Metrics`: its exposition, as the one entry.
pub fn worker_metrics_reply(text: String) -> proto::RoleMetrics {
    proto::RoleMetrics {
        roles: vec![proto::RoleText {
            role: "worker".into(),
            address: String::new(),
            text,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation() -> Invocation {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", http::HeaderValue::from_static("1"));
        headers.append("x-a", http::HeaderValue::from_static("2"));
        let request = Request {
            method: http::Method::PATCH,
            path_and_query: "/p?q=1".into(),
            headers,
            body: bytes::Bytes::from_static(b"body"),
        };
        Invocation {
            depth: 2,
            start_mb: 5,
            call_token: Some("v1.payload.signature".into()),
            response_bytes_max: Some(1 << 20),
            concurrency_limits: vec![
                Limit {
                    key: "tenant:t".into(),
                    max: 10,
                },
                Limit {
                    key: "function:shop/f".into(),
                    max: 2,
                },
            ],
            ..Invocation::new(7, "ab".repeat(32), ClassId(3), request)
        }
    }

    #[test]
    fn an_invocation_survives_the_wire() {
        let sent = invocation();
        let received = Invocation::try_from(proto::Invocation::from(sent.clone())).unwrap();
        assert_eq!(received, sent);
    }

    #[test]
    fn a_deadline_travels_as_time_left_never_earlier_and_a_passed_one_still_cancels() {
        let mut sent = invocation();
        let before = Instant::now();
        sent.deadline = Some(before + Duration::from_millis(500));
        let message = proto::Invocation::from(sent.clone());
        assert!((1..=500).contains(&message.deadline_ms_left), "{message:?}");
        let received = Invocation::try_from(message).unwrap();
        let deadline = received.deadline.expect("a deadline");
        // Rounded up: the receiver's deadline is never before the sender's.
        assert!(deadline >= sent.deadline.unwrap(), "{deadline:?}");
        assert!(deadline <= Instant::now() + Duration::from_millis(501));
        assert!(!received.cancel.is_cancelled(), "a fresh cancellation");

        sent.deadline = Some(before.checked_sub(Duration::from_secs(1)).unwrap_or(before));
        let message = proto::Invocation::from(sent);
        assert_eq!(message.deadline_ms_left, 1, "past, but still a deadline");
        assert_eq!(proto::Invocation::from(invocation()).deadline_ms_left, 0);
    }

    #[test]
    fn a_malformed_invocation_is_a_bad_request_naming_the_field() {
        let mut message = proto::Invocation::from(invocation());
        message.headers.push(proto::Header {
            name: "bad name".into(),
            value: b"v".to_vec(),
        });
        let failure = Invocation::try_from(message.clone()).unwrap_err();
        assert_eq!(failure.kind, FailureKind::BadRequest);
        assert!(failure.message.contains("bad name"), "{failure}");

        message.headers.clear();
        message.class = 300;
        let failure = Invocation::try_from(message.clone()).unwrap_err();
        assert!(failure.message.contains("class 300"), "{failure}");

        message.class = 0;
        message.method = "GE T".into();
        let failure = Invocation::try_from(message).unwrap_err();
        assert!(failure.message.contains("method"), "{failure}");
    }

    #[test]
    fn outcomes_survive_the_wire_and_every_failure_kind_keeps_its_kind() {
        let mut usage = Usage::of_class(ClassId(2));
        usage.cpu = Duration::from_micros(1500);
        usage.memory_mb_seconds = 0.25;
        let answered = Outcome {
            ending: Ok(Response {
                status: http::StatusCode::IM_A_TEAPOT,
                headers: invocation().request.headers,
                body: bytes::Bytes::from_static(b"tea"),
            }),
            usage: Some(usage),
            worker: MachineId(4),
            attempts: 2,
        };
        assert_eq!(
            Outcome::from(proto::Outcome::from(answered.clone())),
            answered
        );
        for kind in [
            FailureKind::Guest,
            FailureKind::Killed,
            FailureKind::UnknownFunction,
            FailureKind::Unavailable,
            FailureKind::BadRequest,
            FailureKind::Overloaded,
            FailureKind::Cancelled,
            FailureKind::TooLarge,
        ] {
            let failed = Outcome::failure(kind, "why");
            assert_eq!(Outcome::from(proto::Outcome::from(failed.clone())), failed);
        }
    }

    #[test]
    fn a_strange_outcome_decodes_to_an_unbilled_failure_or_a_502() {
        let empty = Outcome::from(proto::Outcome::default());
        assert_eq!(empty.failure_kind(), Some(FailureKind::Unavailable));
        let unknown = Outcome::from(proto::Outcome {
            ending: Some(proto::outcome::Ending::Failure(proto::Failure {
                kind: 99,
                message: "new".into(),
            })),
            usage: Some(proto::Usage::default()),
            ..proto::Outcome::default()
        });
        assert_eq!(unknown.failure_kind(), Some(FailureKind::Unavailable));
        assert_eq!(unknown.billable(), None, "nothing says it ran");
        let odd_status = Outcome::from(proto::Outcome {
            ending: Some(proto::outcome::Ending::Response(proto::Response {
                status: 70_000,
                ..proto::Response::default()
            })),
            ..proto::Outcome::default()
        });
        assert_eq!(
            odd_status.ending.unwrap().status,
            http::StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn only_an_answer_the_guests_own_failure_or_a_cancelled_run_is_billed() {
        let mut usage = Usage::of_class(ClassId(0));
        usage.cpu = Duration::from_millis(3);
        let with_usage = |ending| Outcome {
            ending,
            usage: Some(usage.clone()),
            worker: MachineId(0),
            attempts: 1,
        };
        let response = Response {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        assert_eq!(
            with_usage(Ok(response)).billable(),
            Some((Duration::from_millis(3), 0.0))
        );
        let guest = with_usage(Err(Failure::new(FailureKind::Guest, "trap")));
        assert!(guest.billable().is_some());
        let killed = with_usage(Err(Failure::new(FailureKind::Killed, "freed")));
        assert_eq!(killed.billable(), None);
        let cancelled_running = with_usage(Err(Failure::new(FailureKind::Cancelled, "gone")));
        assert_eq!(
            cancelled_running.billable(),
            Some((Duration::from_millis(3), 0.0))
        );
        // Cancelled before it ran: no usage, nothing billed.
        assert_eq!(
            Outcome::failure(FailureKind::Cancelled, "gone while queued").billable(),
            None
        );
        assert_eq!(
            Outcome::failure(FailureKind::Guest, "no usage").billable(),
            None
        );
    }

    #[test]
    fn rpc_status_codes_split_into_refusals_and_unavailability() {
        let refused = CallError::from(tonic::Status::not_found("worker 3 is not registered"));
        assert_eq!(
            refused,
            CallError::Refused("worker 3 is not registered".into())
        );
        let down = CallError::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(down, CallError::Unavailable("connection refused".into()));
        let back = tonic::Status::from(refused);
        assert_eq!(back.code(), tonic::Code::InvalidArgument);
    }
}
