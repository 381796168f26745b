//! One invocation in-process: its own store and instance, the sandbox it gets (WASI with no
//! filesystem and no network, outgoing HTTP denied except calls to other functions through
//! the platform - see [`crate::calls`] - and a linear-memory cap), and its response.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::calls::{self, Caller, Platform};
use crate::error::InvokeError;
use crate::meter::MemoryMeter;

/// An HTTP request to a function.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: http::Method,
    /// Path and query, e.g. `/?ms=50`.
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    /// The whole body, unless it is streamed (`body_stream`).
    pub body: Bytes,
    /// The body as it arrives, read by the guest as it comes (a large upload).
    pub body_stream: Option<BodyStream>,
}

/// Where a streamed request body comes from: its chunks as the caller sends them.
pub trait BodySource: Send + 'static {
    /// The next chunk; `None` at the body's end; `Err` (why) if it was cut before its end:
    /// the guest's read then fails.
    fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Bytes, String>>>;
}

/// A streamed request body, taken by the one invocation that reads it.
#[derive(Clone)]
pub struct BodyStream(Arc<std::sync::Mutex<Option<Box<dyn BodySource>>>>);

impl BodyStream {
    pub fn new(source: impl BodySource) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Box::new(source)))))
    }

    fn take(&self) -> Option<Box<dyn BodySource>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream").finish_non_exhaustive()
    }
}

/// The body the guest reads: whole, or streamed from a [`BodySource`].
enum GuestBody {
    Whole(Option<Bytes>),
    Streamed(Box<dyn BodySource>),
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, ErrorCode>>> {
        match self.get_mut() {
            GuestBody::Whole(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(http_body::Frame::data(b))),
            ),
            GuestBody::Streamed(source) => source.poll_chunk(cx).map(|chunk| {
                chunk.map(|chunk| {
                    chunk
                        .map(http_body::Frame::data)
                        .map_err(|why| ErrorCode::InternalError(Some(why)))
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GuestBody::Whole(None))
    }
}

impl Request {
    pub fn new(method: http::Method, path_and_query: impl Into<String>) -> Self {
        Self {
            method,
            path_and_query: path_and_query.into(),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
            body_stream: None,
        }
    }

    pub fn get(path_and_query: impl Into<String>) -> Self {
        Self::new(http::Method::GET, path_and_query)
    }

    pub fn post(path_and_query: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::new(http::Method::POST, path_and_query)
        }
    }

    /// The request as wasmtime-wasi-http takes it. The guest sees scheme `http` and the
    /// request's `host` header as authority (`localhost` when there is none).
    fn into_http(self) -> Result<http::Request<GuestBody>, InvokeError> {
        let authority = match self.headers.get(http::header::HOST) {
            Some(host) => host
                .to_str()
                .map_err(|_| InvokeError::BadRequest("host header is not ASCII".into()))?
                .to_string(),
            None => "localhost".to_string(),
        };
        if !self.path_and_query.starts_with('/') {
            return Err(InvokeError::BadRequest(format!(
                "path must start with `/`, got {:?}",
                self.path_and_query
            )));
        }
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(self.path_and_query)
            .build()
            .map_err(|e| InvokeError::BadRequest(format!("bad URI: {e}")))?;
        let mut req = http::Request::builder()
            .method(self.method)
            .uri(uri)
            .body(match self.body_stream.as_ref().and_then(BodyStream::take) {
                Some(source) => GuestBody::Streamed(source),
                None => GuestBody::Whole(Some(self.body)),
            })
            .map_err(|e| InvokeError::BadRequest(e.to_string()))?;
        *req.headers_mut() = self.headers;
        Ok(req)
    }
}

/// Where a streamed response goes as the guest writes it: its head once the guest sets it,
/// then its body, chunk by chunk, then its end ([`ResponseOut`]). Each call may wait (the
/// reader is behind): the guest waits in its body write meanwhile. An error means the reader
/// is gone; the guest then sees its body stream closed.
pub trait ResponseWriter: Send + Sync + 'static {
    fn head(&self, status: u16, headers: http::HeaderMap) -> WriteFuture<'_>;
    fn chunk(&self, bytes: Bytes) -> WriteFuture<'_>;
    fn end(&self) -> WriteFuture<'_>;
}

/// The most of a streamed response's body sent whole in its outcome when the guest has
/// written all of it before its head would go.
pub const WHOLE_BYTES_MAX: usize = 64 << 10;

/// What a [`ResponseWriter`] call returns: `Err` when the reader is gone.
pub type WriteFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), crate::error::InvokeError>> + Send + 'a>>;

/// How an invocation hands back its response: collected whole into its [`Response`] (the
/// default), or streamed into a [`ResponseWriter`] as the guest writes it, the returned
/// `Response` then having an empty body - except a body of at most [`WHOLE_BYTES_MAX`] that
/// the guest had finished by the time its head was set, which comes whole in the `Response`
/// and nothing is written. Either way the body is held to `bytes_max`.
#[derive(Clone, Default)]
pub struct ResponseOut {
    pub writer: Option<Arc<dyn ResponseWriter>>,
    /// The largest body, bytes (`None`: no limit).
    pub bytes_max: Option<u64>,
}

impl std::fmt::Debug for ResponseOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseOut")
            .field("streamed", &self.writer.is_some())
            .field("bytes_max", &self.bytes_max)
            .finish()
    }
}

/// Two are equal when they stream into the same writer (or neither streams) with one limit.
impl PartialEq for ResponseOut {
    fn eq(&self, other: &Self) -> bool {
        let same_writer = match (&self.writer, &other.writer) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_writer && self.bytes_max == other.bytes_max
    }
}

impl Eq for ResponseOut {}

/// A function's HTTP response (its body empty when it was streamed: [`ResponseOut`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as text (lossy), for logs and tests.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The data of one invocation's store.
pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outgoing,
    limiter: MemoryLimiter,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Host {
    fn new(cap_bytes: u64, meter: Arc<MemoryMeter>, hooks: Outgoing) -> Self {
        // No preopened directories, no environment, no arguments, empty stdin, stdout and
        // stderr discarded; sockets denied (the default address check refuses every address,
        // and TCP, UDP and name lookup are switched off besides).
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            limiter: MemoryLimiter { cap_bytes, meter },
        }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// An invocation's outgoing `wasi:http` requests: those addressed to the platform go to its
/// [`Platform`] with the invocation as [`Caller`]; every other one is denied.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) platform: Option<Arc<dyn Platform>>,
    pub(crate) caller: Caller,
}

impl Outgoing {
    /// Denies every outgoing request.
    pub(crate) fn denied() -> Self {
        Self {
            platform: None,
            caller: Caller {
                class: turnpike_policy::ClassId(0),
                depth: 0,
                token: None,
                traceparent: None,
            },
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let platform = self
            .platform
            .clone()
            .filter(|_| calls::is_platform_call(request.uri()));
        let caller = self.caller.clone();
        Box::new(async move {
            let Some(platform) = platform else {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            };
            let response = platform.call(caller, request).await?;
            // The response's body streams on from the platform's connection; its errors reach
            // the guest through the body itself, so there is nothing more to report here.
            let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// Caps an invocation's linear memory (all its memories together) and meters every grow.
#[derive(Debug)]
struct MemoryLimiter {
    cap_bytes: u64,
    meter: Arc<MemoryMeter>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Over the memory's own declared maximum: `memory.grow` returns -1, as the spec
            // says; not a cap violation.
            return Ok(false);
        }
        let delta = (desired.saturating_sub(current)) as u64;
        let total = self.meter.bytes().saturating_add(delta);
        if total > self.cap_bytes {
            self.meter.cap_hit(self.cap_bytes, total);
            wasmtime::bail!(
                "memory cap exceeded: growing linear memory to {total} bytes, over the cap of {} bytes",
                self.cap_bytes
            );
        }
        self.meter.grew(delta, Instant::now());
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.meter.grow_failed(Instant::now());
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table sizes are bounded by the pooling allocator's `table_elements`.
        Ok(true)
    }
}

/// Failure of the guest half of an invocation, before it is classified.
enum GuestFailure {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

/// Runs one invocation of `function` directly on the calling task, outside any scheduler: no
/// slot, no preemption, no timeout, no calls to other functions (the guest still yields at
/// every epoch tick). For
/// benchmarks (the baseline the scheduler's overhead is measured against) and tools; a worker
/// runs invocations through [`crate::Worker::submit`].
pub async fn run_unscheduled(
    function: &crate::runtime::Function,
    request: Request,
    cap_bytes: u64,
) -> Result<Response, InvokeError> {
    let meter = Arc::new(MemoryMeter::new(Instant::now()));
    run(
        function.pre().clone(),
        request,
        cap_bytes,
        meter,
        Outgoing::denied(),
        ResponseOut::default(),
    )
    .await
}

/// Runs one invocation to its response: a new store and instance of `pre`, the request handed
/// to `wasi:http/incoming-handler.handle`, the response body collected or streamed (`out`)
/// while the guest runs. The instance yields to the executor at every epoch tick (see
/// [`crate::worker`]).
pub(crate) async fn run(
    pre: ProxyPre<Host>,
    request: Request,
    cap_bytes: u64,
    meter: Arc<MemoryMeter>,
    outgoing: Outgoing,
    out: ResponseOut,
) -> Result<Response, InvokeError> {
    let request = request.into_http()?;
    let mut store = Store::new(pre.engine(), Host::new(cap_bytes, meter.clone(), outgoing));
    store.limiter(|host| &mut host.limiter);
    store.set_epoch_deadline(1);
    let tick_meter = meter.clone();
    store.epoch_deadline_callback(move |_| {
        tick_meter.settled();
        Ok(UpdateDeadline::Yield(1))
    });

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let internal = |e: wasmtime::Error| InvokeError::Instantiate(format!("{e:#}"));
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(|e| InvokeError::BadRequest(format!("{e:#}")))?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(internal)?;

    // The store moves into the guest half and is dropped when the guest returns, which closes
    // the response channel and body if the guest left them open.
    let guest = pin!(async move {
        let proxy = pre
            .instantiate_async(&mut store)
            .await
            .map_err(GuestFailure::Instantiate)?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, outparam)
            .await
            .map_err(GuestFailure::Call)
    });
    let response = pin!(async move {
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(InvokeError::Guest(format!("{code:?}"))),
            Err(_) => return Err(InvokeError::NoResponse),
        };
        let (parts, body) = response.into_parts();
        let limit = out.bytes_max.unwrap_or(u64::MAX);
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(InvokeError::ResponseTooLarge {
                limit_bytes: limit,
                declared: true,
            });
        }
        let status = parts.status.as_u16();
        let Some(writer) = out.writer else {
            let body =
                http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                    .collect()
                    .await
                    .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                        Ok(_) => InvokeError::ResponseTooLarge {
                            limit_bytes: limit,
                            declared: false,
                        },
                        Err(e) => InvokeError::Guest(format!("response body: {e}")),
                    })?
                    .to_bytes();
            return Ok(Response {
                status,
                headers: parts.headers,
                body,
            });
        };
        // Dropping `body` (on any return below) closes the guest's body stream: its next
        // write fails.
        let mut body = body;
        let mut sent: u64 = 0;
        // What the guest has written already. A body complete by now (most are: the guest
        // wrote it and returned in one go) is answered whole, as one message with its length,
        // without the cost of streaming; the rest stream from here.
        let mut written: Vec<Bytes> = Vec::new();
        let mut written_bytes = 0;
        loop {
            let ready = std::future::poll_fn(|cx| {
                let mut next = body.frame();
                Poll::Ready(std::pin::Pin::new(&mut next).poll(cx))
            })
            .await;
            match ready {
                Poll::Ready(None) => {
                    // Most bodies are one write: passed on without a copy.
                    let body = if written.len() == 1 {
                        written.swap_remove(0)
                    } else {
                        let mut whole = bytes::BytesMut::with_capacity(written_bytes);
                        for bytes in written {
                            whole.extend_from_slice(&bytes);
                        }
                        whole.freeze()
                    };
                    return Ok(Response {
                        status,
                        headers: parts.headers,
                        body,
                    });
                }
                Poll::Ready(Some(frame)) => {
                    let frame =
                        frame.map_err(|e| InvokeError::Guest(format!("response body: {e}")))?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    sent = sent.saturating_add(data.len() as u64);
                    if sent > limit {
                        return Err(InvokeError::ResponseTooLarge {
                            limit_bytes: limit,
                            declared: false,
                        });
                    }
                    written_bytes += data.len();
                    written.push(data);
                    if written_bytes >= WHOLE_BYTES_MAX {
                        break;
                    }
                }
                Poll::Pending => break,
            }
        }
        writer.head(status, parts.headers.clone()).await?;
        for bytes in written {
            writer.chunk(bytes).await?;
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| InvokeError::Guest(format!("response body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // Trailers are not passed on.
            };
            sent = sent.saturating_add(data.len() as u64);
            if sent > limit {
                return Err(InvokeError::ResponseTooLarge {
                    limit_bytes: limit,
                    declared: false,
                });
            }
            writer.chunk(data).await?;
        }
        writer.end().await?;
        Ok(Response {
            status,
            headers: parts.headers,
            body: Bytes::new(),
        })
    });

    // Both halves run in this one future; the invocation ends when the guest has returned and
    // the response is complete, or as soon as the guest fails.
    let mut guest = guest;
    let mut response = response;
    let mut guest_result: Option<Result<(), GuestFailure>> = None;
    let mut response_result: Option<Result<Response, InvokeError>> = None;
    std::future::poll_fn(|cx| {
        if guest_result.is_none() {
            if let Poll::Ready(r) = guest.as_mut().poll(cx) {
                guest_result = Some(r);
            }
        }
        if matches!(guest_result, Some(Err(_))) {
            return Poll::Ready(());
        }
        if response_result.is_none() {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                response_result = Some(r);
            }
        }
        if guest_result.is_some() && response_result.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;

    match guest_result {
        Some(Err(failure)) => Err(classify(failure, &meter)),
        _ => response_result.unwrap_or(Err(InvokeError::NoResponse)),
    }
}

fn classify(failure: GuestFailure, meter: &MemoryMeter) -> InvokeError {
    if let Some((limit_bytes, requested_bytes)) = meter.cap_exceeded() {
        return InvokeError::MemoryCap {
            limit_bytes,
            requested_bytes,
        };
    }
    match failure {
        GuestFailure::Instantiate(e) => InvokeError::Instantiate(format!("{e:#}")),
        // A trap's `Display` is only "error while executing at wasm backtrace ..."; the root
        // cause says what happened (the trap code, or the host error that trapped).
        GuestFailure::Call(e) => InvokeError::Trap(e.root_cause().to_string()),
    }
}
