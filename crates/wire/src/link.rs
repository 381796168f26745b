//! Links: invocations multiplexed on one long-lived gRPC stream per pair of roles (gateway ->
//! shard, `Shard.Invoke`; shard -> worker, `Worker.Run`), each tagged and answered by tag in
//! the order they finish.
//!
//! Why streams and not a unary RPC per invocation: a unary call opens an HTTP/2 stream (a
//! HEADERS frame each way, a server task, trailers), and here that cost ~200 us at one at a
//! time and topped out near 14,600 calls/s on 2 cores, which bounded the whole path to a
//! fraction of `wasmtime serve` (docs/benchmarks.md). On a link an invocation is one
//! length-prefixed message each way, and messages that are ready together leave in one DATA
//! frame and one write.
//!
//! The client side, [`Link`], opens its stream on first use and again after it broke. When
//! a stream breaks (the peer died or restarted, or its connection stopped answering
//! keep-alive pings) every call in flight on it fails with the transport's status, exactly
//! as each unary call would have; callers decide about retrying. A link whose stream has had
//! nothing in flight for [`IDLE_CLOSE`] closes it, so that a shard's links to a thousand
//! idle workers do not keep a thousand connections pinging.
//!
//! The server side, [`serve`], answers each invocation of an incoming stream from its own
//! task, so a slow invocation never holds up the ones behind it.
//!
//! Cancellation: when an invocation's [`Cancellation`] fires at the caller, its link sends a
//! cancel frame naming its tag, and `serve` fires the copy it handed to the handler; the
//! answer still comes back, with what the invocation used. `serve` also fires it when the
//! invocation's deadline passes, and fires every one still in flight when its incoming stream
//! ends or breaks (the caller is gone). Dropping a call's future cancels nothing: callers that
//! may go away fire the cancellation instead, so that the usage still reaches them.
//!
//! A link to a role in the same process ([`Link::in_process`], see [`crate::directory`]) hands
//! each invocation to the role's handler on a task of its own, as `serve` would, without
//! encoding it or crossing a socket; the handler shares the caller's cancellation.
//!
//! Streamed responses ([`crate::body`]): an invocation whose caller gave it a responder is sent
//! marked `streamed`; `serve` gives the handler a responder of its own and relays what is
//! written into it as frames of the invocation's tag - the head, body chunks, the end - before
//! the outcome; the calling side writes them into the caller's responder as they come. Each
//! streamed invocation has a credit window of [`LINK_BODY_WINDOW_BYTES`]: `serve` sends no
//! more body than its caller has passed on plus the window (the caller grants credit with
//! `credit_bytes` frames as its own reader takes chunks), so a slow client holds up its own
//! invocation, never the others on the link, and each hop holds at most a window of its body.
//!
//! Streamed request bodies go the other way the same way: a call whose invocation carries a
//! request body takes its reader (once: a retry finds it taken and fails) and sends its parts
//! as `chunk`/`end` frames of its tag, within a window the server grants back (`credit_bytes`
//! on the outcome stream) as the handler's reader takes them; `serve` writes them into a body
//! of its own that the handler reads.
//!
//! Load reports: a worker serving a link with [`serve_reporting`] puts on every outcome frame
//! what it would answer a poll for each class right then; the calling link keeps the latest
//! ([`Link::load_report`]), so a shard can place with a report a moment old instead of
//! waiting a round trip for a poll (see `turnpike_scheduler::shard`).
//!
//! Both ends speak the roles' own types ([`crate::invocation`]); a streamed link encodes and
//! decodes them at the socket ([`crate::convert`]), and an invocation that arrives malformed is
//! answered with a `BadRequest` failure without reaching the handler.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::body::{self, BodyReader, BodyWriter, Part, RequestBody};
use crate::invocation::{
    answer_by, CallError, Cancellation, Failure, FailureKind, Invocation, Outcome,
};
use crate::proto;
use crate::proto::shard_client::ShardClient;
use crate::proto::worker_client::WorkerClient;

/// A stream with nothing in flight for this long is closed (opened again on the next call).
pub const IDLE_CLOSE: Duration = Duration::from_secs(2);

/// Body bytes of one streamed response a link's server may send beyond what its caller has
/// passed on.
pub const LINK_BODY_WINDOW_BYTES: usize = 256 << 10;

/// The outcomes a server sends back on a link.
pub type OutcomeStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::OutcomeFrame, Status>> + Send>>;

type Open = Box<
    dyn Fn(
            UnboundedReceiverStream<proto::InvocationFrame>,
        )
            -> Pin<Box<dyn Future<Output = Result<Streaming<proto::OutcomeFrame>, Status>> + Send>>
        + Send
        + Sync,
>;

/// What a worker answers a poll for each class, by class index, as [`serve_reporting`]
/// computes it for each outcome frame.
pub type Reporter = Arc<dyn Fn() -> Vec<proto::PollReply> + Send + Sync>;

/// The [`Reporter`] of a worker whose poll replies by class `replies` gives.
pub fn reporter<F>(replies: F) -> Reporter
where
    F: Fn() -> Vec<turnpike_policy::placement::PollReply> + Send + Sync + 'static,
{
    Arc::new(move || replies().into_iter().map(proto::PollReply::from).collect())
}

/// A worker's latest load report on a link: its poll replies by class, as of when its
/// outcome frame arrived.
#[derive(Debug)]
pub struct LoadReport {
    /// Counts the reports this link has received: a later report has a larger number.
    pub seq: u64,
    pub at: Instant,
    pub replies: Vec<proto::PollReply>,
}

/// A role's answer to one invocation, as [`serve`] and [`Link::in_process`] call it.
pub type Handler =
    Arc<dyn Fn(Invocation) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// The handler answering each invocation with `answer(service, invocation)` (on a clone of
/// `service`): how a role hands its answer to [`serve`] and [`Link::in_process`].
pub fn handler<S, F, Fut>(service: S, answer: F) -> Handler
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |invocation| Box::pin(answer(service.clone(), invocation)))
}

/// Calls to a shard or a worker: multiplexed on one stream, or handed to a role in this
/// process; cheap to share (`Arc`).
pub struct Link {
    route: Route,
}

enum Route {
    Stream(Streamed),
    InProcess(Handler),
}

struct Streamed {
    open: Open,
    current: Arc<Mutex<Option<Arc<Session>>>>,
    next_tag: AtomicU64,
    report: Arc<Mutex<Option<Arc<LoadReport>>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// One opened stream and the calls waiting on it.
struct Session {
    outbound: mpsc::UnboundedSender<proto::InvocationFrame>,
    calls: Mutex<Calls>,
    /// The link's (outlives the session).
    report: Arc<Mutex<Option<Arc<LoadReport>>>>,
}

struct Calls {
    /// Broken or closed: no call may be added (it would never be answered).
    ended: bool,
    waiting: HashMap<u64, Waiter>,
    /// When `waiting` last became empty.
    idle_since: Instant,
}

/// A call waiting for its outcome, and for the parts of its response if it is streamed.
struct Waiter {
    answer: oneshot::Sender<Result<Outcome, CallError>>,
    /// Where the parts go, to the call that relays them into its caller's responder.
    /// Unbounded in type, bounded in fact by the call's credit window.
    parts: Option<mpsc::UnboundedSender<Part>>,
    /// Request body bytes the call may still send (`None`: not streamed); closed with the
    /// waiter, which stops the upload.
    upload_credit: Option<CloseOnDrop>,
}

/// A credit semaphore closed when its holder goes.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Link {
    /// A link to the shard behind `client` (`Shard.Invoke`).
    pub fn to_shard(client: ShardClient<Channel>) -> Self {
        Self::new(Box::new(move |outbound| {
            let mut client = client.clone();
            Box::pin(async move { Ok(client.invoke(outbound).await?.into_inner()) })
        }))
    }

    /// A link to the worker behind `client` (`Worker.Run`).
    pub fn to_worker(client: WorkerClient<Channel>) -> Self {
        Self::new(Box::new(move |outbound| {
            let mut client = client.clone();
            Box::pin(async move { Ok(client.run(outbound).await?.into_inner()) })
        }))
    }

    /// A link to a role in this process: `handle` answers each invocation on a task of its
    /// own.
    pub fn in_process(handle: Handler) -> Self {
        Self {
            route: Route::InProcess(handle),
        }
    }

    fn new(open: Open) -> Self {
        Self {
            route: Route::Stream(Streamed {
                open,
                current: Arc::new(Mutex::new(None)),
                next_tag: AtomicU64::new(1),
                report: Arc::new(Mutex::new(None)),
            }),
        }
    }

    /// Sends `invocation` and waits for its outcome; an error is the transport's (the stream
    /// broke before the answer came: `CallError::Unavailable`).
    pub async fn call(&self, invocation: Invocation) -> Result<Outcome, CallError> {
        match &self.route {
            Route::Stream(streamed) => streamed.call(invocation).await,
            Route::InProcess(handle) => tokio::spawn(handle(invocation))
                .await
                .map_err(|e| CallError::Unavailable(format!("the invocation's task ended: {e}"))),
        }
    }

    /// The peer's latest load report (a worker serving with [`serve_reporting`]); `None`
    /// before the first, and always for a link in process. Shared, not copied: a shard reads
    /// it at every decision and every send.
    pub fn load_report(&self) -> Option<Arc<LoadReport>> {
        match &self.route {
            Route::Stream(streamed) => crate::lock(&streamed.report).clone(),
            Route::InProcess(_) => None,
        }
    }

    /// Whether a stream is open (or opening) now: false before the first call, after the
    /// stream broke, and after it was closed for idleness. A link in process is always open.
    pub fn is_open(&self) -> bool {
        match &self.route {
            Route::Stream(streamed) => crate::lock(&streamed.current).is_some(),
            Route::InProcess(_) => true,
        }
    }
}

impl Streamed {
    async fn call(&self, invocation: Invocation) -> Result<Outcome, CallError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let respond = invocation.respond.clone();
        let (parts, mut streamed) = match respond {
            Some(_) => {
                // Unbounded in type, bounded in fact: the server sends no more body than the
                // credit this call grants (`LINK_BODY_WINDOW_BYTES` ahead of what it passed on).
                let (parts, streamed) = mpsc::unbounded_channel();
                (Some(parts), Some(streamed))
            }
            None => (None, None),
        };
        let upload = match &invocation.request_body {
            None => None,
            Some(body) => match body.take() {
                Some(reader) => Some(reader),
                None => {
                    return Ok(Outcome::failure(
                        FailureKind::Unavailable,
                        "its streamed request body went to an earlier placement; it cannot be placed again",
                    ))
                }
            },
        };
        let upload_credit = upload
            .as_ref()
            .map(|_| Arc::new(Semaphore::new(LINK_BODY_WINDOW_BYTES)));
        let mut waiter = Some(Waiter {
            answer,
            parts,
            upload_credit: upload_credit.clone().map(CloseOnDrop),
        });
        let session = loop {
            let session = self.session();
            let mut calls = crate::lock(&session.calls);
            if calls.ended {
                drop(calls);
                forget(&self.current, &session);
                continue;
            }
            calls
                .waiting
                .insert(tag, waiter.take().expect("inserted once"));
            drop(calls);
            break session;
        };
        let cancel = invocation.cancel.clone();
        let mut message = proto::Invocation::from(invocation);
        message.request_streamed = upload.is_some();
        let frame = proto::InvocationFrame {
            tag,
            invocation: Some(message),
            ..Default::default()
        };
        // A failed send means the stream's driver is gone; it ends the call (below) when it
        // marks the session ended.
        let _ = session.outbound.send(frame);
        if let (Some(reader), Some(credit)) = (upload, upload_credit) {
            tokio::spawn(send_upload(tag, reader, credit, session.outbound.clone()));
        }
        let mut relay = Relay {
            tag,
            respond,
            session: &session,
        };
        let mut answered = std::pin::pin!(async {
            answered
                .await
                .unwrap_or_else(|_| Err(CallError::Unavailable("the link was dropped".into())))
        });
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                biased;
                Some(part) = next_part(&mut streamed) => relay.pass(part).await,
                result = &mut answered => {
                    // Every part came before the outcome, so they are all here now.
                    if let Some(streamed) = &mut streamed {
                        while let Ok(part) = streamed.try_recv() {
                            relay.pass(part).await;
                        }
                    }
                    return result;
                }
                () = cancel.cancelled(), if !cancel_sent => {
                    // The peer cancels it where it is and still answers (with what it used).
                    cancel_sent = true;
                    let _ = session.outbound.send(proto::InvocationFrame {
                        tag,
                        cancel: true,
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// The open session, or a new one (its stream opened by a driver task).
    fn session(&self) -> Arc<Session> {
        let mut current = crate::lock(&self.current);
        if let Some(session) = current.as_ref() {
            return session.clone();
        }
        // Unbounded in type, bounded in fact: it holds one frame per call in flight on this
        // link, and every invocation in flight anywhere was admitted under a gateway's
        // `gateway_in_flight_invocations_max` (a shard only sends what it accepted). A bounded
        // channel here would make a caller wait for a slot, a second queue to reason about.
        let (outbound, requests) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            outbound,
            calls: Mutex::new(Calls {
                ended: false,
                waiting: HashMap::new(),
                idle_since: Instant::now(),
            }),
            report: self.report.clone(),
        });
        *current = Some(session.clone());
        let opening = (self.open)(UnboundedReceiverStream::new(requests));
        tokio::spawn(drive(opening, session.clone(), self.current.clone()));
        session
    }
}

async fn next_part(streamed: &mut Option<mpsc::UnboundedReceiver<Part>>) -> Option<Part> {
    match streamed {
        Some(streamed) => streamed.recv().await,
        None => std::future::pending().await,
    }
}

/// Passes a streamed call's parts into its caller's responder, granting the server credit for
/// each chunk passed on.
struct Relay<'a> {
    tag: u64,
    respond: Option<BodyWriter>,
    session: &'a Session,
}

impl Relay<'_> {
    async fn pass(&mut self, part: Part) {
        let credit = match &part {
            Part::Chunk(bytes) => bytes.len(),
            _ => 0,
        };
        if let Some(respond) = &self.respond {
            if respond.send(part).await.is_err() {
                // Its reader is gone (and has cancelled it): what still comes is dropped,
                // and credited, so the server is not held up before it answers.
                self.respond = None;
            }
        }
        if credit > 0 {
            grant(self.session, self.tag, credit);
        }
    }
}

fn grant(session: &Session, tag: u64, credit: usize) {
    let _ = session.outbound.send(proto::InvocationFrame {
        tag,
        credit_bytes: credit as u64,
        ..Default::default()
    });
}

fn forget(current: &Mutex<Option<Arc<Session>>>, session: &Arc<Session>) {
    let mut current = crate::lock(current);
    if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
        *current = None;
    }
}

/// Opens the stream, hands each outcome to its caller, and ends the session when the stream
/// breaks or has been idle for [`IDLE_CLOSE`].
async fn drive(
    opening: impl Future<Output = Result<Streaming<proto::OutcomeFrame>, Status>>,
    session: Arc<Session>,
    current: Arc<Mutex<Option<Arc<Session>>>>,
) {
    let why = match opening.await {
        Err(status) => status,
        Ok(mut inbound) => {
            let mut tick = tokio::time::interval(IDLE_CLOSE / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(frame)) => deliver(&session, frame),
                        Ok(None) => break Status::unavailable("the peer ended the stream"),
                        Err(status) => break status,
                    },
                    _ = tick.tick() => {
                        let mut calls = crate::lock(&session.calls);
                        if calls.waiting.is_empty() && calls.idle_since.elapsed() >= IDLE_CLOSE {
                            calls.ended = true;
                            drop(calls);
                            forget(&current, &session);
                            return;
                        }
                    }
                }
            }
        }
    };
    let waiting = {
        let mut calls = crate::lock(&session.calls);
        calls.ended = true;
        std::mem::take(&mut calls.waiting)
    };
    forget(&current, &session);
    // Whatever the stream's status says, the calls on it are lost with it: the peer may be
    // down.
    let why = CallError::Unavailable(why.message().to_string());
    for (_, waiter) in waiting {
        let _ = waiter.answer.send(Err(why.clone()));
    }
}

/// Sends a streamed request body as frames of its call's tag, each chunk once the server has
/// credit for it; stops at the body's end, when it was cut (the server's reader then sees
/// no end: the caller cancels the invocation), or when the call is over (its credit closed).
async fn send_upload(
    tag: u64,
    mut reader: BodyReader,
    credit: Arc<Semaphore>,
    outbound: mpsc::UnboundedSender<proto::InvocationFrame>,
) {
    while let Some(part) = reader.next().await {
        let frame = match part {
            Part::Chunk(bytes) => {
                if !spend(&credit, bytes.len()).await {
                    return;
                }
                proto::InvocationFrame {
                    tag,
                    chunk: bytes,
                    ..Default::default()
                }
            }
            Part::End => proto::InvocationFrame {
                tag,
                end: true,
                ..Default::default()
            },
            Part::Head(_) => continue,
        };
        if outbound.send(frame).is_err() {
            return;
        }
    }
}

/// Waits until `credit` covers a chunk of `bytes` and spends it; false once the credit is
/// closed (the call or the stream is over). How both directions' body senders pace.
async fn spend(credit: &Semaphore, bytes: usize) -> bool {
    let needed = bytes.min(LINK_BODY_WINDOW_BYTES) as u32;
    match credit.acquire_many(needed).await {
        Ok(permits) => {
            permits.forget();
            true
        }
        Err(_) => false,
    }
}

fn deliver(session: &Session, frame: proto::OutcomeFrame) {
    if frame.credit_bytes > 0 {
        if let Some(waiter) = crate::lock(&session.calls).waiting.get(&frame.tag) {
            if let Some(credit) = &waiter.upload_credit {
                let bytes = frame.credit_bytes.min(LINK_BODY_WINDOW_BYTES as u64);
                credit.0.add_permits(bytes as usize);
            }
        }
        return;
    }
    if frame.outcome.is_none() {
        let part = if let Some(head) = frame.head {
            Part::Head(head.into())
        } else if frame.end {
            Part::End
        } else {
            Part::Chunk(frame.chunk)
        };
        let credit = match &part {
            Part::Chunk(bytes) => bytes.len(),
            _ => 0,
        };
        let passed = crate::lock(&session.calls)
            .waiting
            .get(&frame.tag)
            .and_then(|waiter| waiter.parts.as_ref())
            .is_some_and(|parts| parts.send(part).is_ok());
        // Its call gave up: credit the chunk here, so the server can still answer.
        if !passed && credit > 0 {
            grant(session, frame.tag, credit);
        }
        return;
    }
    if !frame.load.is_empty() {
        let mut report = crate::lock(&session.report);
        let seq = report.as_ref().map_or(1, |r| r.seq + 1);
        *report = Some(Arc::new(LoadReport {
            seq,
            at: Instant::now(),
            replies: frame.load,
        }));
    }
    let caller = {
        let mut calls = crate::lock(&session.calls);
        let caller = calls.waiting.remove(&frame.tag);
        if calls.waiting.is_empty() {
            calls.idle_since = Instant::now();
        }
        caller
    };
    // An unknown tag (its caller gave up) is dropped.
    if let Some(waiter) = caller {
        let outcome = Outcome::from(frame.outcome.unwrap_or_default());
        let _ = waiter.answer.send(Ok(outcome));
    }
}

/// Serves an incoming link (the whole answer of a `Shard.Invoke` or `Worker.Run` handler):
/// `handle` answers each invocation, from a task of its own, and the answers go back tagged
/// as they finish. The response stream ends once the incoming one has ended and every answer
/// is sent.
pub fn serve(
    request: tonic::Request<Streaming<proto::InvocationFrame>>,
    handle: Handler,
) -> Result<tonic::Response<OutcomeStream>, Status> {
    serve_reporting(request, handle, None)
}

/// [`serve`], with `report`'s load report on every outcome frame (a worker's).
pub fn serve_reporting(
    request: tonic::Request<Streaming<proto::InvocationFrame>>,
    handle: Handler,
    report: Option<Reporter>,
) -> Result<tonic::Response<OutcomeStream>, Status> {
    let mut inbound = request.into_inner();
    // One answer per invocation received on this stream, so bounded as the caller's link
    // is (see `Link::session`); and the parts of streamed responses, bounded by their credit
    // windows.
    let (answers, outbound) = mpsc::unbounded_channel();
    // The invocations of this stream not answered yet, by tag: what cancel and credit frames
    // name.
    let live: Arc<Mutex<HashMap<u64, Live>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = inbound.message().await {
            let tag = frame.tag;
            if frame.cancel || frame.credit_bytes > 0 || !frame.chunk.is_empty() || frame.end {
                // Unknown: already answered.
                if let Some(live) = crate::lock(&live).get(&tag) {
                    if frame.cancel {
                        live.cancel.cancel();
                    }
                    if let Some(upload) = &live.upload {
                        if frame.end {
                            let _ = upload.send(Part::End);
                        } else if !frame.chunk.is_empty() {
                            let _ = upload.send(Part::Chunk(frame.chunk));
                        }
                    }
                    if let Some(credit) = &live.credit {
                        let bytes = frame.credit_bytes.min(LINK_BODY_WINDOW_BYTES as u64);
                        credit.add_permits(bytes as usize);
                    }
                }
                continue;
            }
            let answers = answers.clone();
            let streamed = frame.invocation.as_ref().is_some_and(|i| i.streamed);
            let uploaded = frame
                .invocation
                .as_ref()
                .is_some_and(|i| i.request_streamed);
            let invocation = frame
                .invocation
                .ok_or_else(|| {
                    Failure::new(FailureKind::BadRequest, "a frame without an invocation")
                })
                .and_then(Invocation::try_from);
            let mut invocation = match invocation {
                Ok(invocation) => invocation,
                Err(failure) => {
                    let _ = answers.send(Ok(proto::OutcomeFrame {
                        tag,
                        outcome: Some(Outcome::from(failure).into()),
                        ..Default::default()
                    }));
                    continue;
                }
            };
            let (deadline, cancel) = (invocation.deadline, invocation.cancel.clone());
            let (pump, credit) = if streamed {
                let (responder, reception) = body::channel();
                invocation.respond = Some(responder);
                let credit = Arc::new(Semaphore::new(LINK_BODY_WINDOW_BYTES));
                let pump = tokio::spawn(pump(tag, reception, credit.clone(), answers.clone()));
                (Some(pump), Some(credit))
            } else {
                (None, None)
            };
            let upload = uploaded.then(|| {
                let (writer, reader) = body::channel();
                invocation.request_body = Some(RequestBody::new(reader));
                // Unbounded in type, bounded in fact: the caller sends no more body than the
                // credit `forward_upload` grants back (`LINK_BODY_WINDOW_BYTES` ahead).
                let (upload, queued) = mpsc::unbounded_channel();
                tokio::spawn(forward_upload(tag, queued, writer, answers.clone()));
                upload
            });
            crate::lock(&live).insert(
                tag,
                Live {
                    cancel: cancel.clone(),
                    credit,
                    upload,
                },
            );
            let answer = handle(invocation);
            let live = live.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let outcome = answer_by(answer, deadline, &cancel).await;
                // The outcome follows its response's parts.
                if let Some(pump) = pump {
                    let _ = pump.await;
                }
                crate::lock(&live).remove(&tag);
                let _ = answers.send(Ok(proto::OutcomeFrame {
                    tag,
                    outcome: Some(outcome.into()),
                    load: report.map(|report| report()).unwrap_or_default(),
                    ..Default::default()
                }));
            });
        }
        // The stream ended or broke: its caller is gone (a caller closes its stream only with
        // nothing in flight), so no answer still to come can reach anyone. Cancel them: a
        // gateway that lost its shard retries elsewhere, and the first attempt must not run on.
        // Their responses stop too: nobody grants credit any more.
        let orphans: Vec<Live> = crate::lock(&live).drain().map(|(_, l)| l).collect();
        for orphan in orphans {
            orphan.cancel.cancel();
            if let Some(credit) = orphan.credit {
                credit.close();
            }
        }
    });
    let outbound: OutcomeStream = Box::pin(UnboundedReceiverStream::new(outbound));
    Ok(tonic::Response::new(outbound))
}

/// An invocation in flight on a served stream.
struct Live {
    cancel: Cancellation,
    /// Body bytes its streamed response may still send (`None`: not streamed); closed when
    /// the stream ends.
    credit: Option<Arc<Semaphore>>,
    /// Where its streamed request body's parts go (`None`: not streamed). Unbounded in type,
    /// bounded in fact by the caller's credit window.
    upload: Option<mpsc::UnboundedSender<Part>>,
}

/// Writes a streamed request body's parts into the invocation's body as its reader takes
/// them, granting the caller credit for each chunk passed on. Ends when the invocation is
/// answered (its queue closes).
async fn forward_upload(
    tag: u64,
    mut queued: mpsc::UnboundedReceiver<Part>,
    writer: BodyWriter,
    answers: mpsc::UnboundedSender<Result<proto::OutcomeFrame, Status>>,
) {
    while let Some(part) = queued.recv().await {
        let credit = match &part {
            Part::Chunk(bytes) => bytes.len(),
            _ => 0,
        };
        // A reader gone (the guest is done with its body): the rest is dropped, still
        // credited so the caller is not held up.
        let _ = writer.send(part).await;
        if credit > 0 {
            let frame = proto::OutcomeFrame {
                tag,
                credit_bytes: credit as u64,
                ..Default::default()
            };
            if answers.send(Ok(frame)).is_err() {
                return;
            }
        }
    }
}

/// Sends what is written into a streamed invocation's responder as frames of its tag, each
/// body chunk once the caller has credit for it. Stops when the response ends or is cut, or
/// when the stream ends (its credit is closed): dropping the reception then tells the writer
/// its reader is gone.
async fn pump(
    tag: u64,
    mut reception: BodyReader,
    credit: Arc<Semaphore>,
    answers: mpsc::UnboundedSender<Result<proto::OutcomeFrame, Status>>,
) {
    while let Some(part) = reception.next().await {
        let frame = match part {
            Part::Head(head) => proto::OutcomeFrame {
                tag,
                head: Some(head.into()),
                ..Default::default()
            },
            Part::Chunk(bytes) => {
                if !spend(&credit, bytes.len()).await {
                    return;
                }
                proto::OutcomeFrame {
                    tag,
                    chunk: bytes,
                    ..Default::default()
                }
            }
            Part::End => proto::OutcomeFrame {
                tag,
                end: true,
                ..Default::default()
            },
        };
        if answers.send(Ok(frame)).is_err() {
            return;
        }
    }
}
