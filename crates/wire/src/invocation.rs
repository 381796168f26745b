//! An invocation and its outcome as every role handles them: the gateway builds an
//! [`Invocation`] from an HTTP request, a shard queues and places it, a worker runs it and
//! answers with an [`Outcome`], which the gateway turns back into HTTP and bills.
//!
//! These are the roles' own types, not the RPC messages: the request's method and headers
//! are already parsed, the class is a [`ClassId`], a failure is a typed [`Failure`], and an
//! outcome either has a response or a failure, never neither. The protobuf messages
//! (`proto::Invocation`, `proto::Outcome`) exist only on a socket; [`crate::convert`] turns
//! one into the other at the link's two ends, and a role in the same process
//! ([`crate::directory`]) never sees them.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use turnpike_policy::concurrency::Limit;
use turnpike_policy::{ClassId, ClassSet, MachineId};

use crate::body::{BodyWriter, RequestBody};

/// One call of a function, as a shard queues it and a worker runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    /// Unique per gateway request; the same id when it is placed again.
    pub id: u64,
    /// The function's content hash (lowercase hex SHA-256).
    pub function: String,
    pub class: ClassId,
    /// The HTTP request the function answers.
    pub request: Request,
    /// Call-chain depth (0 for an outside request).
    pub depth: u32,
    /// Memory it is assumed to start with, MB (`turnpike_policy::memory::START_MB_DEFAULT`
    /// unless configured).
    pub start_mb: u64,
    /// When it is no longer wanted: the caller's deadline, counted from the gateway's receipt
    /// (queueing counts). Every hop cancels it then ([`answer_by`]); on the wire it travels as
    /// the milliseconds left, so hosts' clocks need not agree.
    pub deadline: Option<Instant>,
    /// Fired when its caller goes away or its deadline passes; shared by every copy of it in
    /// this process, and carried to the next role by its link (a cancel frame).
    pub cancel: Cancellation,
    /// The token its guest's calls to other functions carry (`crate::chain::CallToken`,
    /// signed by the gateway); `None`: such calls are refused.
    pub call_token: Option<String>,
    /// Where its response is streamed as the guest writes it ([`crate::body`]); `None`: the
    /// whole response comes in its outcome.
    pub respond: Option<BodyWriter>,
    /// The largest response body its caller takes, bytes: a body over it is cut where it is
    /// written, or refused before its head when its length is declared
    /// ([`FailureKind::TooLarge`]). `None`: no limit but the worker's.
    pub response_bytes_max: Option<u64>,
    /// Its request body, streamed as the client sends it (`request.body` is then empty);
    /// `None`: the body is whole in `request.body`.
    pub request_body: Option<RequestBody>,
    /// Its concurrency limits (its function's and its tenant's, when they have one): the
    /// shard holds it at its gate until every key has room (`turnpike_policy::concurrency`);
    /// the gateway sends it to the home shard of its first key.
    pub concurrency_limits: Vec<Limit>,
    /// The trace context of the span that sent it (W3C `traceparent`), when traces are
    /// exported (`crate::telemetry`): the receiving role's span is its child.
    pub traceparent: Option<String>,
}

impl Invocation {
    /// A call of `function` at `class` answering `request`, with nothing else set: depth 0,
    /// `start_mb` 0 (the worker's default), no deadline, call token, streaming or limit.
    pub fn new(id: u64, function: impl Into<String>, class: ClassId, request: Request) -> Self {
        Self {
            id,
            function: function.into(),
            class,
            request,
            depth: 0,
            start_mb: 0,
            deadline: None,
            cancel: Cancellation::new(),
            call_token: None,
            respond: None,
            response_bytes_max: None,
            request_body: None,
            concurrency_limits: Vec::new(),
            traceparent: None,
        }
    }

    /// Whether its response has started reaching its caller (a streamed head was sent): it
    /// must not be placed again.
    pub fn answering(&self) -> bool {
        self.respond.as_ref().is_some_and(BodyWriter::started)
    }

    /// Whether it cannot be placed again: its response has started reaching its caller, or
    /// a placement took its streamed request body.
    pub fn placed_for_good(&self) -> bool {
        self.answering() || self.request_body.as_ref().is_some_and(RequestBody::taken)
    }
}

/// Whether an invocation is still wanted: one flag shared by every clone, fired once.
///
/// Where it is when fired decides what happens ([`FailureKind::Cancelled`]): waiting at a
/// shard, it leaves the queue unbilled; on a worker (queued, running, parked or waiting on
/// I/O) its guest is stopped within one epoch tick, and what it used until then is billed.
/// Two are equal when both are, or both are not, fired (an invocation's identity is its id).
#[derive(Clone, Debug, Default)]
pub struct Cancellation(CancellationToken);

impl Cancellation {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once it is fired.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }
}

impl PartialEq for Cancellation {
    fn eq(&self, other: &Self) -> bool {
        self.is_cancelled() == other.is_cancelled()
    }
}

/// `answer`'s outcome, having fired `cancel` if `deadline` passed first (and still waited for
/// the answer: a cancelled invocation answers with what it used). How each hop honours a
/// deadline.
pub async fn answer_by(
    answer: impl Future<Output = Outcome>,
    deadline: Option<Instant>,
    cancel: &Cancellation,
) -> Outcome {
    let Some(deadline) = deadline else {
        return answer.await;
    };
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        outcome = &mut answer => outcome,
        () = tokio::time::sleep_until(deadline.into()) => {
            cancel.cancel();
            answer.await
        }
    }
}

/// The HTTP request handed to a function: the platform's own headers are already removed by
/// the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A `GET` of `path_and_query` without headers or body.
    pub fn get(path_and_query: impl Into<String>) -> Self {
        Self {
            method: http::Method::GET,
            path_and_query: path_and_query.into(),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// A function's HTTP response, passed to the caller untouched. The body is empty when it was
/// streamed ([`Invocation::respond`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// How an invocation ended, what it used, and where it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The function's response, or why there is none.
    pub ending: Result<Response, Failure>,
    /// What it used; `None` when it never ran.
    pub usage: Option<Usage>,
    /// The worker that ran it (its id at the answering shard).
    pub worker: MachineId,
    /// Placements it took (more than one after a lost worker or a kill; 0 if never placed).
    pub attempts: u32,
}

impl Outcome {
    /// An outcome without a response, usage or placement: refused, or failed before it ran.
    pub fn failure(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure::new(kind, message).into()
    }

    /// The failure's kind, if it failed.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        self.ending.as_ref().err().map(|f| f.kind)
    }

    /// CPU time and memory MB-seconds to bill: an invocation that answered, whose guest
    /// failed (a trap, a timeout), or that was cancelled after it started running, is billed;
    /// one that never ran, or was killed to free memory (the platform's choice) and then found
    /// no other worker, is not.
    pub fn billable(&self) -> Option<(Duration, f64)> {
        let usage = self.usage.as_ref()?;
        let ran = match &self.ending {
            Ok(_) => true,
            Err(failure) => matches!(
                failure.kind,
                FailureKind::Guest | FailureKind::Cancelled | FailureKind::TooLarge
            ),
        };
        ran.then_some((usage.cpu, usage.memory_mb_seconds))
    }
}

/// An outcome without a response, usage or placement.
impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        Self {
            ending: Err(failure),
            usage: None,
            worker: MachineId(0),
            attempts: 0,
        }
    }
}

/// Why an invocation has no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The cases a caller tells apart: whose fault it is, whether it may be retried, whether it
/// is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest failed (trap, cap, timeout, no response): the function owner's problem; it
    /// ran and is billed.
    Guest,
    /// Killed to free memory: a shard places it again elsewhere.
    Killed,
    /// The worker does not have the function loaded.
    UnknownFunction,
    /// No worker could take it, or its worker was lost and the retries ran out.
    Unavailable,
    /// Malformed invocation (unknown class, bad method or header): the caller's error.
    BadRequest,
    /// Refused at a named bound (a shard's queue, a worker's in-flight set is full): nothing
    /// ran; the caller may retry soon. The message names the bound.
    Overloaded,
    /// Its caller went away or its deadline passed ([`Cancellation`]): billed for what it
    /// used if it had started (its outcome then has usage), not otherwise.
    Cancelled,
    /// Its response body went over [`Invocation::response_bytes_max`]: refused before its
    /// head (413) when its length was declared, else cut there. It ran and is billed.
    TooLarge,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Guest => "the function failed",
            Self::Killed => "killed to free memory",
            Self::UnknownFunction => "unknown function",
            Self::Unavailable => "unavailable",
            Self::BadRequest => "bad request",
            Self::Overloaded => "overloaded",
            Self::Cancelled => "cancelled",
            Self::TooLarge => "response too large",
        })
    }
}

/// What an invocation used, as its worker measured it.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub class: ClassId,
    pub cpu: Duration,
    pub wall: Duration,
    /// Time on the worker before it first ran.
    pub queued: Duration,
    pub peak_memory_bytes: u64,
    /// Linear memory integrated over the time it ran or waited on its own I/O (not while the
    /// platform queued, parked or swapped it), MB-seconds: what its memory is billed for.
    pub memory_mb_seconds: f64,
    /// Times it was parked (preempted) for a higher class.
    pub parks: u32,
    /// Times it waited for memory.
    pub blocks: u32,
    pub swap_outs: u32,
    pub swapped_out_bytes: u64,
}

impl Usage {
    /// Nothing used yet, by an invocation of `class`.
    pub fn of_class(class: ClassId) -> Self {
        Self {
            class,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
            queued: Duration::ZERO,
            peak_memory_bytes: 0,
            memory_mb_seconds: 0.0,
            parks: 0,
            blocks: 0,
            swap_outs: 0,
            swapped_out_bytes: 0,
        }
    }
}

/// A worker announcing itself to a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Where the worker serves its RPCs (`http://HOST:PORT`).
    pub address: String,
    /// Memory for guests, MB (0: unlimited).
    pub memory_mb: u64,
    pub cores: u32,
    /// How long the registration holds: the shard marks the worker lost when that long passes
    /// without another registration from it (it registers again several times within it).
    /// Zero: it never lapses.
    pub lease: Duration,
    /// The worker process's incarnation, random at its start: a registration from the same
    /// address with another one is a restarted worker (its predecessor's idle-list entry and
    /// unanswered invocations are gone with it).
    pub incarnation: u64,
}

/// A shard's answer to a [`Registration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The worker's id at this shard.
    pub worker: MachineId,
    /// This registration created the entry: the shard had not known the worker (it restarted,
    /// or this is the first time), so the worker must re-join its idle list if it was on it.
    pub fresh: bool,
    /// Names this registration in the worker's idle-list reports ([`IdleReport::token`]).
    pub token: u64,
}

/// A worker's idle-list message to one shard (`Shard.IdleJoin` with an entry,
/// `Shard.IdleLeave` without).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleReport {
    /// Its id at the shard.
    pub worker: MachineId,
    /// The token of the registration that gave it the id: a report with another (from
    /// before the shard restarted, or for an id since given to another worker) is refused,
    /// and the worker registers again.
    pub token: u64,
    /// Above every earlier report's of this worker process: the shard takes none older than
    /// one it took (`turnpike_policy::idle_list::IdleList::handle_report`).
    pub seq: u64,
    /// Its entry (it joins or updates), or `None` (it leaves).
    pub entry: Option<turnpike_policy::idle_list::IdleEntry>,
}

/// Why a call to another role failed (an invocation's own failures are in its [`Outcome`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The role could not be reached, or the connection broke before it answered: it may be
    /// down. The caller may try another.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The role refused the call as malformed (an unknown class, an unregistered worker, a bad
    /// address): trying again will not help.
    #[error("refused: {0}")]
    Refused(String),
}

impl CallError {
    pub fn message(&self) -> &str {
        match self {
            Self::Unavailable(m) | Self::Refused(m) => m,
        }
    }
}

/// `class` as a class of `classes`, or the error naming it.
pub fn known_class(class: u32, classes: &ClassSet) -> Result<ClassId, UnknownClass> {
    u8::try_from(class)
        .ok()
        .map(ClassId)
        .filter(|c| c.index() < classes.len())
        .ok_or(UnknownClass {
            class,
            classes: classes.len(),
        })
}

/// A class index past the configured classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown class {class}: there are {classes} classes")]
pub struct UnknownClass {
    pub class: u32,
    pub classes: usize,
}

impl From<UnknownClass> for Failure {
    fn from(e: UnknownClass) -> Self {
        Failure::new(FailureKind::BadRequest, e.to_string())
    }
}

impl From<UnknownClass> for CallError {
    fn from(e: UnknownClass) -> Self {
        CallError::Refused(e.to_string())
    }
}
