//! The gateway: HTTP/1.1 and HTTP/2 in, each request mapped to a function, a price class and
//! a paying tenant and sent to a shard, the function's response out.
//!
//! - Routing ([`crate::routing`]): apps' routes by host name (`APP.<domain>`), the
//!   operator's routes for every other host; a path prefix matches whole segments and the
//!   longest wins. The developer API under `/v1/` ([`crate::api`]) deploys apps and invokes
//!   functions directly (`x-turnpike-class` names the class).
//! - Billing ([`crate::billing`]): before an invocation, the paying tenant's budget (429 or
//!   the cheapest class when over it); after, its cost in the usage ledger (committed in
//!   batches; all of them before the gateway stops).
//! - Choosing a shard: every shard holds the same kind of per-class queues and places over
//!   all workers, so any shard may take any invocation. The gateway takes the one with fewer
//!   invocations in flight from two chosen at random (power of two choices), which spreads
//!   load as evenly as asking all of them at the cost of two counter reads, and skips a shard
//!   that failed at the transport level for [`SHARD_DOWN_FOR`]; the request that met the
//!   failure is tried once on another shard.
//! - Concurrency limits: an invocation of a function with a limit (its own, or its tenant's)
//!   goes instead to the home shard of its first key (`turnpike_policy::shard_choice::home_shard`,
//!   rendezvous hashing over the shards' addresses among those not marked down), whose gate
//!   holds it while the key is at its limit. Gateways configured with the same shards agree
//!   on every key's home, so one gate sees all of a key's invocations and the limit is exact.
//!   While they disagree - a shard marked down at one gateway and not at another, for at most
//!   [`SHARD_DOWN_FOR`] after the failure one of them saw - a key can have two homes, each
//!   admitting up to the limit: at most twice the limit in flight, and only then.
//! - Calls from functions (see [`crate::chain`]) carry the caller's class and the chain's
//!   depth in headers vouched for by a call token signed with the cluster's chain key: the
//!   callee runs at `max(caller class, route class)`; a chain deeper than `max_chain_depth`
//!   gets 508. Every function's response says the class it ran at in [`CLASS_HEADER`], and
//!   every answer to an invocation its id in [`INVOCATION_HEADER`].
//! - Answers: unknown route or app 404; unknown class 400 naming the known ones; a request
//!   body over the limit 413; a response body over the limit 413 too (it says which); a
//!   function that failed 502 with the reason; no shard or worker available 503 with the
//!   reason; over a throttling budget 429 with `Retry-After`; at a named bound
//!   (`gateway_in_flight_invocations_max`, `ledger_queue_rows_max`, a shard's or a worker's)
//!   503 with `Retry-After` and the bound's name. Every such answer has the same JSON body,
//!   `{"error": "..."}`, decided in one place ([`crate::refusal`]); a function's own
//!   responses pass untouched.
//! - Stopping: the listener closes, open connections finish their requests (at most
//!   [`DRAIN_FOR`]), and the ledger is flushed, so every accepted request is answered and
//!   billed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tracing::Instrument;
use turnpike_policy::shard_choice::{choose_shard, home_shard};
use turnpike_policy::ClassSet;
use turnpike_store::{Store, StoreError, Tenant, UsageEntry};
use turnpike_wire::body::{self as streaming, Head, Part, RequestBody};
use turnpike_wire::chain::{self, CallToken, CALL_TOKEN_TTL};
use turnpike_wire::invocation::{Cancellation, FailureKind, Invocation, Outcome, Request};
use turnpike_wire::link::Link;
use turnpike_wire::metrics::{self, ClassHistograms};
use turnpike_wire::telemetry;

use crate::billing::{Admission, Billing, Clock};
use crate::body::Streamed;
use crate::components::ComponentCheck;
use crate::outbox::{Outbox, OutboxError};
use crate::refusal::{refuse, refuse_for, Refusal};
use crate::routing::{RoutingTable, Target};

pub use crate::routing::Route;

/// A shard that failed at the transport level is skipped for this long.
pub const SHARD_DOWN_FOR: Duration = Duration::from_secs(2);
/// The header naming the class of a direct invocation.
pub const CLASS_HEADER: &str = "x-turnpike-class";
/// A request's deadline, in milliseconds after the gateway receives it: when it passes, the
/// invocation is cancelled wherever it is (queued, running or parked), the client gets 504,
/// and what it used until then is billed. Queueing counts. Not passed to the function.
pub const DEADLINE_HEADER: &str = "x-turnpike-deadline-ms";
/// The header on every answer to an invocation (the function's response or a refusal made
/// after the request became one) carrying its id: the id in the usage ledger and in every
/// log line about it, for a user to quote or a tool to match answers with the ledger.
pub const INVOCATION_HEADER: &str = "x-turnpike-invocation";
/// How often the gateway asks the store whether any app changed (another gateway deployed).
pub const ROUTING_POLL: Duration = Duration::from_secs(1);
/// How long open connections get to finish their requests when the gateway stops.
pub use turnpike_wire::http_server::DRAIN_FOR;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub classes: ClassSet,
    /// The operator's routes (see [`crate::routing`]): every host that names no app.
    pub routes: Vec<Route>,
    /// Tenants, keys, apps, budgets and the ledger.
    pub store: Store,
    /// Apps answer at `APP.<domain>`.
    pub domain: String,
    /// Checks (and precompiles) uploaded components: given by whoever assembles the gateway,
    /// so that the gateway links no wasm runtime (see [`crate::components`]).
    pub components: Arc<dyn ComponentCheck>,
    /// Largest component upload, bytes.
    pub max_component_bytes: usize,
    /// The budget rule's clock.
    pub clock: Arc<dyn Clock>,
    pub shards: Vec<SocketAddr>,
    /// Shards of this process, called without RPC (see [`crate::local`]); empty in a
    /// gateway process of its own.
    pub directory: turnpike_wire::directory::Directory,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Memory an invocation is assumed to start with, MB (for placement).
    pub start_mb: u64,
    /// The cluster's chain key, which signs and verifies call tokens (see
    /// `turnpike_wire::chain`); `None`: calls from functions are refused.
    pub chain_key: Option<chain::ChainKey>,
    /// Deepest call chain served; deeper requests get 508.
    pub max_chain_depth: u32,
    /// Micro-cents per GB-second of memory used, published at `GET /v1/classes`.
    pub memory_price: f64,
    /// `gateway_in_flight_invocations_max`: invocations between admission and response at
    /// once; one more gets 503 with `Retry-After` (default
    /// [`GATEWAY_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT`]). This also bounds what the links to
    /// the shards carry.
    pub in_flight_invocations_max: u64,
    /// `ledger_queue_rows_max`: usage rows waiting for their commit; while this many wait
    /// (the store is slow or down), new invocations get 503 with `Retry-After` rather than
    /// run unbilled or grow the queue (default [`LEDGER_QUEUE_ROWS_MAX_DEFAULT`]). Rows of
    /// invocations already running are still queued, so the queue holds at most this plus
    /// `in_flight_invocations_max`.
    pub ledger_queue_rows_max: u64,
    /// The ledger's outbox file (see [`crate::outbox`]): one per gateway.
    pub ledger_outbox: std::path::PathBuf,
    /// `ledger_outbox_rows_max`: while the outbox holds this many rows (the store has been
    /// down a while), new invocations get 503 with `Retry-After` rather than risk a row
    /// (default [`crate::outbox::LEDGER_OUTBOX_ROWS_MAX_DEFAULT`]).
    pub ledger_outbox_rows_max: u64,
    /// `gateway_connections_max`: HTTP connections open at once; one more is answered 503
    /// with `Retry-After` and closed (default
    /// `turnpike_wire::http_server::CONNECTIONS_MAX_DEFAULT`).
    pub connections_max: usize,
    /// Time a client has to send an HTTP/1.1 request's head (a slowloris is closed after it).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body; a slower one gets 408.
    pub body_read_timeout: Duration,
    /// `async_queue_invocations_max`: a tenant's asynchronous invocations queued or running
    /// at once; one more submission gets 429 (default
    /// [`crate::async_invocations::ASYNC_QUEUE_MAX_DEFAULT`]).
    pub async_queue_max: u64,
    /// `gateway_async_runs_max`: asynchronous attempts this gateway runs at once (default
    /// [`crate::async_invocations::ASYNC_RUNS_MAX_DEFAULT`]).
    pub async_runs_max: usize,
    /// How long an ended asynchronous invocation's result (and idempotency key) is kept.
    pub async_retention: Duration,
    /// How long a key's tenant is kept once looked up (default [`KEY_CACHE_FOR_DEFAULT`]): a
    /// key revoked at another gateway works here at most this long after; at this one, not
    /// at all.
    pub key_cache_for: Duration,
}

/// Default of [`GatewayConfig::key_cache_for`].
pub const KEY_CACHE_FOR_DEFAULT: Duration = Duration::from_secs(5);

/// Default of [`GatewayConfig::body_read_timeout`]: the default 8 MiB body at 300 KB/s.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Default of [`GatewayConfig::in_flight_invocations_max`].
pub const GATEWAY_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT: u64 = 10_000;
/// Default of [`GatewayConfig::ledger_queue_rows_max`].
pub const LEDGER_QUEUE_ROWS_MAX_DEFAULT: u64 = 100_000;
/// What a refusal at a bound tells the client to wait, seconds.
pub const BOUND_RETRY_AFTER_S: u64 = 1;

#[derive(Debug)]
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    shards: Vec<ShardHandle>,
    /// Invocation ids: from a random start, so that ids from gateways (and restarts) do
    /// not meet in the ledger.
    next_id: AtomicU64,
    pub(crate) billing: Billing,
    routing: RwLock<Arc<RoutingTable>>,
    /// Tenants by key hash, as looked up and when: kept for `key_cache_for`, so a key revoked
    /// at another gateway stops working here within that.
    keys: Mutex<HashMap<String, (Tenant, Instant)>>,
    /// Request to response, by class (routed and direct invocations).
    latency: ClassHistograms,
    /// The live dashboard's state: per-app traffic, snapshots while someone watches.
    pub(crate) dashboard: crate::dashboard::Dashboard,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub(crate) responses: [AtomicU64; 4],
    /// Invocations sent to a second shard after the first failed: the first attempt's
    /// stream broke, so its worker cancels it (it is not billed; the retry is).
    shard_retries: AtomicU64,
    /// Invocations that ended cancelled (client gone or deadline passed).
    cancelled: AtomicU64,
    /// Invocations between admission and response (see
    /// [`GatewayConfig::in_flight_invocations_max`]).
    in_flight: AtomicU64,
    /// Each class's name as a [`CLASS_HEADER`] value, made once (class names are ASCII-checked
    /// here, not per response).
    class_values: Vec<Option<http::HeaderValue>>,
    /// Itself, for the tasks that run an invocation apart from its client's connection.
    me: Weak<Gateway>,
    /// Wakes the asynchronous runner: a submission arrived, or an attempt ended.
    pub(crate) async_queue: tokio::sync::Notify,
    /// Asynchronous attempts running now (at most `async_runs_max`).
    pub(crate) async_running: AtomicUsize,
    /// This gateway's asynchronous runs in flight by concurrency key, with the key's limit:
    /// a key at its limit is left in the store's queue (`crate::async_invocations`).
    pub(crate) async_limited: Mutex<HashMap<String, (u32, u32)>>,
}

/// One invocation counted in [`Gateway::in_flight`] while this lives: from admission until
/// it is answered and billed, also when its client hung up before.
struct Admitted(Arc<Gateway>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Fires an invocation's cancellation when dropped: when the client's connection is gone,
/// the hyper service future answering it is dropped, and this tells the invocation wherever
/// it is. Disarmed once the answer is in.
struct CancelOnHangup(Option<Cancellation>);

/// Default of the largest request body read whole before the invocation is sent: a body with
/// a declared length up to this is; larger or unknown ones stream to the guest as they come.
pub const WHOLE_REQUEST_BYTES_MAX: usize = 64 << 10;

/// A request's body as the gateway has it: arriving from the client, or already whole (an
/// asynchronous invocation's, read back from the store).
#[derive(Debug)]
pub(crate) enum CallerBody {
    Http(Incoming),
    Stored(bytes::Bytes),
}

/// Dropped once an invocation is over and its usage handed to the ledger (or known to have
/// none): its receiver then learns that the invocation is settled.
pub(crate) type Settled = tokio::sync::oneshot::Sender<()>;

/// Why a streamed request body failed on its way in, if it did: the answer to give instead.
type UploadRefusal = Arc<Mutex<Option<(Refusal, String)>>>;

/// Reads a streamed request body from the client into the invocation's, held to `limit`
/// bytes and to `timeout` spent waiting on the client (not on the guest, whose reading is its
/// own pace). If the body fails on the way (over the limit, too slow, the connection broken),
/// it records why in `refused` and cancels the invocation: the guest's read fails (the body
/// is cut) and the client gets the refusal.
async fn upload_body(
    mut body: Incoming,
    writer: streaming::BodyWriter,
    (limit, timeout): (usize, Duration),
    refused: UploadRefusal,
    cancel: Cancellation,
) {
    let mut waited = Duration::ZERO;
    let mut read = 0usize;
    let why = loop {
        let asked = Instant::now();
        let left = timeout.saturating_sub(waited);
        let Ok(frame) = tokio::time::timeout(left, body.frame()).await else {
            break (
                Refusal::TimedOut,
                format!("the request body did not arrive within {timeout:?}"),
            );
        };
        waited += asked.elapsed();
        match frame {
            None => {
                let _ = writer.end().await;
                return;
            }
            Some(Err(e)) => {
                break (
                    Refusal::CallerGone,
                    format!("the client's connection broke while it sent the body: {e}"),
                )
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                read += data.len();
                if read > limit {
                    break (
                        Refusal::TooLarge,
                        format!("request body over the limit of {limit} bytes"),
                    );
                }
                if writer.chunk(data).await.is_err() {
                    // The guest is done with its body (or the invocation with it).
                    return;
                }
            }
        }
    };
    *turnpike_wire::lock(&refused) = Some(why);
    cancel.cancel();
}

/// A client's request body as an invocation takes it: read whole when it is known to be small
/// (the invocation can then be placed again after a lost worker), otherwise left to stream to
/// the guest as it arrives; the answer to give when it is over `limit` bytes, too slow, or
/// broken.
async fn take_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<(bytes::Bytes, Option<Incoming>), http::Response<Body>> {
    let declared = hyper::body::Body::size_hint(&body);
    if declared.lower() > limit as u64 {
        return Err(refuse(
            Refusal::TooLarge,
            format!("request body over the limit of {limit} bytes"),
        ));
    }
    if declared
        .exact()
        .is_none_or(|n| n > WHOLE_REQUEST_BYTES_MAX as u64)
    {
        return Ok((bytes::Bytes::new(), Some(body)));
    }
    Ok((read_whole(body, limit, timeout).await?, None))
}

/// A request body read whole: at most `limit` bytes (413 beyond), within `timeout` (408).
#[allow(clippy::result_large_err)]
pub(crate) async fn read_whole(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, http::Response<Body>> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(collected) = collected else {
        return Err(refuse(
            Refusal::TimedOut,
            format!("the request body did not arrive within {timeout:?}"),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            Refusal::TooLarge,
            format!("request body over the limit of {limit} bytes"),
        )),
        Err(e) => Err(refuse(Refusal::Invalid, format!("reading the body: {e}"))),
    }
}

/// The answer to a new invocation of `tenant` while it is over a throttling budget: 429,
/// retry after `wait` seconds.
pub(crate) fn over_budget(tenant: &str, wait: u64) -> http::Response<Body> {
    refuse_for(
        Refusal::OverBudget,
        format!(
            "over the monthly budget of `{tenant}`: retry in {wait} s, or raise the budget (turnpike budget)"
        ),
        Some(wait),
    )
}

/// What an invocation's caller learns first: its streamed head (and how it ended, if that is
/// known already), or (not streamed) how it ended.
enum First {
    Head(Head, Option<Result<Outcome, http::Response<Body>>>),
    Done(Result<Outcome, http::Response<Body>>),
}

impl Drop for CancelOnHangup {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

#[derive(Debug)]
struct ShardHandle {
    /// Its address as configured: the name concurrency keys' homes are hashed with.
    name: String,
    link: Link,
    in_flight: AtomicU64,
    down_until: Mutex<Option<Instant>>,
}

impl ShardHandle {
    fn is_down(&self) -> bool {
        let until = *turnpike_wire::lock(&self.down_until);
        until.is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *turnpike_wire::lock(&self.down_until) = Some(Instant::now() + SHARD_DOWN_FOR);
    }
}

pub use crate::refusal::Body;

/// Now, in Unix milliseconds (call tokens' expiry, the asynchronous queue's times).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest [`DEADLINE_HEADER`] accepted: a day.
const DEADLINE_MAX: Duration = Duration::from_secs(24 * 3600);

/// The request's [`DEADLINE_HEADER`], if it has one; the answer to give if it is malformed.
#[allow(clippy::result_large_err)]
pub(crate) fn deadline_after(
    headers: &http::HeaderMap,
) -> Result<Option<Duration>, http::Response<Body>> {
    let Some(value) = headers.get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    let ms = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0 && Duration::from_millis(ms) <= DEADLINE_MAX);
    match ms {
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
        None => Err(refuse(
            Refusal::Invalid,
            format!(
                "bad `{DEADLINE_HEADER}`: {value:?}; it is a whole number of milliseconds from 1 to {}",
                DEADLINE_MAX.as_millis()
            ),
        )),
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("reading the routes: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl Gateway {
    /// A gateway with its routing table read from the store. Starts the ledger writer on the
    /// current runtime.
    pub async fn new(config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        let outbox = Outbox::open(&config.ledger_outbox)?;
        let billing = Billing::new(
            config.store.clone(),
            config.classes.clone(),
            config.memory_price,
            config.clock.clone(),
            outbox,
        );
        let shards = config
            .shards
            .iter()
            .map(|a| ShardHandle {
                name: a.to_string(),
                link: config.directory.shard_link(*a),
                in_flight: AtomicU64::new(0),
                down_until: Mutex::new(None),
            })
            .collect();
        let latency = ClassHistograms::new(&config.classes);
        let dashboard = crate::dashboard::Dashboard::new(&config.classes);
        let class_values = config
            .classes
            .iter()
            .map(|(_, c)| http::HeaderValue::from_str(&c.name).ok())
            .collect();
        let gateway = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            shards,
            next_id: AtomicU64::new(rand::random()),
            billing,
            routing: RwLock::new(Arc::new(RoutingTable::default())),
            keys: Mutex::new(HashMap::new()),
            dashboard,
            latency,
            responses: Default::default(),
            in_flight: AtomicU64::new(0),
            shard_retries: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            class_values,
            async_queue: tokio::sync::Notify::new(),
            async_running: AtomicUsize::new(0),
            async_limited: Mutex::new(HashMap::new()),
        });
        gateway.reload_routing().await?;
        Ok(gateway)
    }

    /// Invocations admitted and not yet answered and billed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.config.store
    }

    /// The routing table now.
    pub(crate) fn routing(&self) -> Arc<RoutingTable> {
        self.routing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds the routing table from the store (after a deploy, or when another gateway
    /// changed it).
    pub(crate) async fn reload_routing(&self) -> Result<(), StoreError> {
        let store = &self.config.store;
        let version = store.routing_version().await?;
        let apps = store.all_apps().await?;
        let tenant_limits = store.tenant_concurrency_limits().await?;
        let table = RoutingTable::new(
            version,
            &apps,
            &tenant_limits,
            &self.config.classes,
            self.config.routes.clone(),
        );
        *self
            .routing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
        Ok(())
    }

    /// Reloads the routing table whenever the store's routing version moves.
    pub(crate) async fn follow_store(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROUTING_POLL).await;
            let Ok(version) = self.config.store.routing_version().await else {
                continue;
            };
            if version != self.routing().version {
                if let Err(e) = self.reload_routing().await {
                    tracing::warn!("reloading the routes from the store: {e}");
                }
            }
        }
    }

    /// The tenant a request's `Authorization: Bearer KEY` names.
    /// Kept for [`GatewayConfig::key_cache_for`]; when that has passed and the store cannot
    /// be read, the kept tenant serves on (the store being down must not lock every caller
    /// out) and the failure is logged.
    pub(crate) async fn tenant_of(&self, key: &str) -> Result<Option<Tenant>, StoreError> {
        let hash = turnpike_store::key_hash(key);
        let kept = turnpike_wire::lock(&self.keys).get(&hash).cloned();
        if let Some((tenant, at)) = &kept {
            if at.elapsed() < self.config.key_cache_for {
                return Ok(Some(tenant.clone()));
            }
        }
        let tenant = match self.config.store.tenant_by_key(key).await {
            Ok(tenant) => tenant,
            Err(e) => match kept {
                Some((tenant, _)) => {
                    tracing::warn!("checking a key again: {e}; the tenant it named serves on");
                    return Ok(Some(tenant));
                }
                None => return Err(e),
            },
        };
        let mut keys = turnpike_wire::lock(&self.keys);
        match &tenant {
            Some(t) => {
                keys.insert(hash, (t.clone(), Instant::now()));
            }
            None => {
                keys.remove(&hash);
            }
        }
        Ok(tenant)
    }

    /// Itself, shared (`None` once it is being dropped).
    pub(crate) fn me(&self) -> Option<Arc<Gateway>> {
        self.me.upgrade()
    }

    /// The shards' addresses, as configured.
    pub(crate) fn shard_addresses(&self) -> Vec<SocketAddr> {
        self.config.shards.clone()
    }

    /// Forgets the keys whose hashes start with `id` (a key revoked here stops at once).
    pub(crate) fn forget_key(&self, id: &str) {
        turnpike_wire::lock(&self.keys).retain(|hash, _| !hash.starts_with(id));
    }

    /// The gateway's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut out = metrics::Exposition::new();
        let responses: metrics::Samples = ["2xx", "3xx", "4xx", "5xx"]
            .iter()
            .zip(&self.responses)
            .map(|(code, n)| {
                (
                    metrics::label("code", code),
                    n.load(Ordering::Relaxed) as f64,
                )
            })
            .collect();
        metrics::family(
            &mut out,
            "turnpike_gateway_responses_total",
            "counter",
            "Responses by status class.",
            &responses,
        );
        let in_flight: metrics::Samples = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    metrics::label("shard", &i.to_string()),
                    s.in_flight.load(Ordering::Relaxed) as f64,
                )
            })
            .collect();
        metrics::family(
            &mut out,
            "turnpike_gateway_in_flight",
            "gauge",
            "Invocations in flight, by shard.",
            &in_flight,
        );
        metrics::family(
            &mut out,
            "turnpike_gateway_ledger_rows_total",
            "counter",
            "Invocations written to the usage ledger.",
            &metrics::single(self.billing.recorded() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_gateway_ledger_failures_total",
            "counter",
            "Invocations the ledger could not record (the store and the outbox failed).",
            &metrics::single(self.billing.failures() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_gateway_ledger_outbox_rows",
            "gauge",
            "Usage rows waiting on disk for the store.",
            &metrics::single(self.billing.outbox_rows() as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_gateway_shard_retries_total",
            "counter",
            "Invocations sent to another shard after theirs failed (the first attempt is cancelled where it ran, unbilled).",
            &metrics::single(self.shard_retries.load(Ordering::Relaxed) as f64),
        );
        metrics::family(
            &mut out,
            "turnpike_gateway_cancelled_total",
            "counter",
            "Invocations cancelled because the client went away or the deadline passed.",
            &metrics::single(self.cancelled.load(Ordering::Relaxed) as f64),
        );
        self.latency.render(
            &mut out,
            "turnpike_gateway_request_seconds",
            "Request to response through the platform, by class.",
        );
        out.render()
    }

    /// Runs `target` for a request: the caller's class if it is a call from a function, the
    /// paying tenant's budget, the body within its limit; then the invocation, its ledger
    /// row, and the function's response.
    ///
    /// Everything it logs, here and in the shard and the worker, is inside the invocation's
    /// span, which carries its id (the same in every role's span: a log collector or a
    /// tracing exporter follows one invocation across roles by it), tenant, app, function and
    /// class.
    pub(crate) async fn run(
        &self,
        target: Target,
        parts: http::request::Parts,
        body: CallerBody,
        path_and_query: String,
    ) -> http::Response<Body> {
        self.run_settled(target, parts, body, path_and_query, None)
            .await
    }

    /// [`Gateway::run`], dropping `settled` once the invocation's usage is with the ledger.
    pub(crate) async fn run_settled(
        &self,
        target: Target,
        parts: http::request::Parts,
        body: CallerBody,
        path_and_query: String,
        settled: Option<Settled>,
    ) -> http::Response<Body> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "invocation",
            invocation = id,
            tenant = %target.tenant,
            app = %target.app,
            function = %target.function,
            class = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            faas.invocation_id = tracing::field::Empty,
            faas.trigger = tracing::field::Empty,
            faas.invoked_name = tracing::field::Empty,
        );
        if telemetry::enabled() {
            // Its parent: the caller's trace (a client's, or a function's call).
            let parent = parts.headers.get(telemetry::TRACEPARENT);
            telemetry::set_parent(&span, parent.and_then(|v| v.to_str().ok()));
            span.record("otel.name", "gateway");
            span.record("otel.kind", "server");
            span.record("faas.invocation_id", id.to_string());
            // Run from the store's queue (submitted, or fired by a schedule): a message.
            span.record(
                "faas.trigger",
                if settled.is_some() { "pubsub" } else { "http" },
            );
            span.record(
                "faas.invoked_name",
                format!("{}/{}", target.app, target.function),
            );
        }
        let mut response = self
            .run_invocation(id, target, parts, body, path_and_query, settled)
            .instrument(span)
            .await;
        response
            .headers_mut()
            .insert(INVOCATION_HEADER, http::HeaderValue::from(id));
        response
    }

    async fn run_invocation(
        &self,
        id: u64,
        target: Target,
        parts: http::request::Parts,
        body: CallerBody,
        path_and_query: String,
        settled: Option<Settled>,
    ) -> http::Response<Body> {
        let Some(me) = self.me.upgrade() else {
            return refuse(Refusal::Unavailable, "the gateway is shutting down");
        };
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(me);
        if in_flight >= self.config.in_flight_invocations_max {
            refuse_for(
                Refusal::Unavailable,
                format!(
                    "the gateway has {in_flight} invocations in flight, its gateway_in_flight_invocations_max: retry soon"
                ),
                Some(BOUND_RETRY_AFTER_S),
            )
        } else if let Some(queued) = self.billing.ledger_full(self.config.ledger_queue_rows_max) {
            refuse_for(
                Refusal::Unavailable,
                format!(
                    "the usage ledger has {queued} rows waiting for the store, its ledger_queue_rows_max: retry soon"
                ),
                Some(BOUND_RETRY_AFTER_S),
            )
        } else if let Some(rows) = self.billing.outbox_full(self.config.ledger_outbox_rows_max) {
            refuse_for(
                Refusal::Unavailable,
                format!(
                    "the store has been unavailable for a while: {rows} usage rows wait in the outbox, its ledger_outbox_rows_max: retry later"
                ),
                Some(BOUND_RETRY_AFTER_S),
            )
        } else {
            self.run_admitted(admitted, id, target, parts, body, path_and_query, settled)
                .await
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_admitted(
        &self,
        admitted: Admitted,
        id: u64,
        target: Target,
        parts: http::request::Parts,
        body: CallerBody,
        path_and_query: String,
        settled: Option<Settled>,
    ) -> http::Response<Body> {
        let started = Instant::now();
        let mut target = target;
        // A call from a function runs at `max(caller, route)`, one level deeper, billed to
        // the caller's tenant.
        let (class, depth) = match self.chain_context(&parts.headers) {
            Ok(None) => (target.class, 0),
            Ok(Some(caller)) => {
                target.tenant = caller.tenant;
                (target.class.max(caller.class), caller.depth + 1)
            }
            Err(refusal) => return refusal,
        };
        let deadline = match deadline_after(&parts.headers) {
            Ok(after) => after.map(|after| started + after),
            Err(refusal) => return refusal,
        };
        let (class, hold) = match self.billing.admit(&target.tenant, class).await {
            Ok((Admission::Run(class), hold)) => (class, hold),
            Ok((Admission::Throttle(wait), _)) => return over_budget(&target.tenant, wait),
            Err(e) => {
                return refuse(
                    Refusal::Unavailable,
                    format!("the store is unavailable: {e}"),
                )
            }
        };
        tracing::Span::current().record("class", self.config.classes.get(class).name.as_str());
        let limit = self.config.max_request_bytes;
        let timeout = self.config.body_read_timeout;
        let (body, upload) = match body {
            CallerBody::Stored(bytes) => (bytes, None),
            CallerBody::Http(body) => match take_body(body, limit, timeout).await {
                Ok(taken) => taken,
                Err(refusal) => return refusal,
            },
        };
        // The function sees the caller's headers without the platform's own and without the
        // caller's credentials.
        let mut headers = parts.headers;
        for name in chain::PLATFORM_HEADERS {
            headers.remove(name);
        }
        headers.remove(DEADLINE_HEADER);
        headers.remove(http::header::AUTHORIZATION);
        let invocation = Invocation {
            depth,
            start_mb: self.config.start_mb,
            deadline,
            call_token: self.config.chain_key.as_ref().map(|key| {
                key.sign(&CallToken {
                    tenant: target.tenant.clone(),
                    class,
                    depth,
                    invocation: id,
                    expires_ms: unix_ms().saturating_add(CALL_TOKEN_TTL.as_millis() as u64),
                })
            }),
            response_bytes_max: Some(self.config.max_response_bytes as u64),
            concurrency_limits: std::mem::take(&mut target.concurrency_limits),
            traceparent: telemetry::enabled()
                .then(|| telemetry::traceparent(&tracing::Span::current()))
                .flatten(),
            ..Invocation::new(
                id,
                target.hash.clone(),
                class,
                Request {
                    method: parts.method,
                    path_and_query,
                    headers,
                    body,
                },
            )
        };
        // It runs and is billed on a task of its own, which hands the response over as soon
        // as it has one (a streamed response's head) and bills when the invocation is over:
        // a client that hangs up cancels it (`CancelOnHangup`, then its streamed body's drop)
        // but does not stop its billing.
        let mut invocation = invocation;
        let upload = upload.map(|incoming| {
            let (writer, reader) = streaming::channel();
            invocation.request_body = Some(RequestBody::new(reader));
            let refused = Arc::new(Mutex::new(None));
            tokio::spawn(
                upload_body(
                    incoming,
                    writer,
                    (limit, timeout),
                    refused.clone(),
                    invocation.cancel.clone(),
                )
                .in_current_span(),
            );
            refused
        });
        let app_stats = self.dashboard.app(&target.tenant, &target.app);
        let mut hangup = CancelOnHangup(Some(invocation.cancel.clone()));
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(
            async move {
                let gateway = admitted.0.clone();
                gateway
                    .invoke_and_bill(invocation, target, upload, answer)
                    .await;
                // Its cost is in the tenant's spend now (if it ran): no longer expected.
                drop(hold);
                drop(admitted);
                drop(settled);
            }
            .in_current_span(),
        );
        let mut response = answered.await.unwrap_or_else(|_| {
            refuse(
                Refusal::Internal,
                "the invocation's task ended without an answer",
            )
        });
        hangup.0 = None;
        let took = started.elapsed();
        self.latency.observe(class.index(), took);
        if let Some(stats) = app_stats {
            stats.observe(class, took);
        }
        if let Some(value) = &self.class_values[class.index()] {
            response.headers_mut().insert(CLASS_HEADER, value.clone());
        }
        response
    }

    /// Sends the invocation to a shard with a responder for its response, cancels it if its
    /// deadline passes first, hands the response to `answer` as soon as there is one (a
    /// streamed head, or the whole outcome), and bills what it used once it is over (whether
    /// or not anyone still waits for the answer).
    async fn invoke_and_bill(
        &self,
        mut invocation: Invocation,
        target: Target,
        upload: Option<UploadRefusal>,
        answer: tokio::sync::oneshot::Sender<http::Response<Body>>,
    ) {
        let (id, class) = (invocation.id, invocation.class);
        let (deadline, cancel) = (invocation.deadline, invocation.cancel.clone());
        let (responder, mut reception) = streaming::channel();
        invocation.respond = Some(responder);
        let invoked = async {
            let mut invoked = std::pin::pin!(self.invoke(invocation));
            match deadline {
                None => invoked.await,
                Some(deadline) => tokio::select! {
                    result = &mut invoked => result,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        cancel.cancel();
                        invoked.await
                    }
                },
            }
        };
        let mut invoked = std::pin::pin!(invoked);
        // A streamed head comes before the outcome (which then waits for the body to be
        // taken); an outcome without one has the whole response.
        let mut unstreamed = false;
        let first = loop {
            tokio::select! {
                biased;
                part = reception.next(), if !unstreamed => match part {
                    Some(Part::Head(head)) => break First::Head(head, None),
                    // Nothing is sent before a head.
                    Some(_) => {}
                    None => unstreamed = true,
                },
                result = &mut invoked => {
                    // The same poll may have streamed the whole response and then returned
                    // the outcome: its parts wait here.
                    match reception.try_next() {
                        Some(Part::Head(head)) => break First::Head(head, Some(result)),
                        _ => break First::Done(result),
                    }
                }
            }
        };
        // A whole answer is sent after its usage is recorded, so the tenant's next request
        // is admitted against a spend that counts it; a streamed one had to go first.
        let (usage, failure, status, answer) = match first {
            First::Head(head, done) => {
                let status = head.status;
                let limit = self.config.max_response_bytes as u64;
                let body = Body::Streamed(Streamed::new(reception, cancel.clone(), limit));
                let mut response = http::Response::new(body);
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                let _ = answer.send(response);
                let result = match done {
                    Some(result) => result,
                    None => invoked.await,
                };
                let outcome = match result {
                    Ok(outcome) => outcome,
                    // Logged where it was made; nothing is known of what it used.
                    Err(_cut) => return,
                };
                if let Err(failure) = &outcome.ending {
                    // The platform's failures at `warn`; the function's own (over the limit)
                    // and its caller's (gone) are theirs to see.
                    let message =
                        format!("the function's response was cut after its head: {failure}");
                    match failure.kind {
                        FailureKind::TooLarge | FailureKind::Cancelled | FailureKind::Guest => {
                            tracing::debug!("{message}")
                        }
                        _ => tracing::warn!("{message}"),
                    }
                }
                (outcome.billable(), outcome.failure_kind(), status, None)
            }
            First::Done(Err(refusal)) => {
                let _ = answer.send(refusal);
                return;
            }
            First::Done(Ok(outcome)) => {
                let (usage, failure) = (outcome.billable(), outcome.failure_kind());
                let refused = upload.and_then(|refused| turnpike_wire::lock(&refused).take());
                let response = if let Some((case, message)) = refused {
                    // Its body failed on the way in (too slow, too large, the client gone):
                    // that is the answer, whatever the function made of the cut body.
                    refuse(case, message)
                } else if failure == Some(FailureKind::Cancelled) {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        refuse(Refusal::DeadlinePassed,
                            format!("the invocation's deadline (`{DEADLINE_HEADER}`) passed before it finished; it was cancelled"),
                        )
                    } else {
                        refuse(
                            Refusal::CallerGone,
                            "the caller went away; the invocation was cancelled",
                        )
                    }
                } else {
                    self.respond(outcome)
                };
                let status = response.status();
                (usage, failure, status, Some((answer, response)))
            }
        };
        if failure == Some(FailureKind::Cancelled) && status.is_success() {
            // Streamed, and its client went away mid-body.
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((cpu, mb_seconds)) = usage {
            let cpu_ns = turnpike_wire::convert::duration_ns(cpu);
            self.billing.record(UsageEntry {
                invocation: id as i64,
                tenant: target.tenant,
                app: target.app,
                function: target.function,
                class: self.config.classes.get(class).name.clone(),
                at: self.billing.clock().now(),
                status: status.as_u16(),
                cpu_ns: cpu_ns as i64,
                gb_seconds: mb_seconds / 1024.0,
                cost: self.billing.cost(class, cpu_ns, mb_seconds),
            });
        }
        if let Some((answer, response)) = answer {
            let _ = answer.send(response);
        }
    }

    /// Who is calling, for a call from a function (its verified [`CallToken`]; the callee
    /// runs one level deeper); `None` for an outside request; an answer to send instead when
    /// the call may not go on.
    #[allow(clippy::result_large_err)]
    pub(crate) fn chain_context(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<CallToken>, http::Response<Body>> {
        if !chain::PLATFORM_HEADERS
            .iter()
            .any(|h| headers.contains_key(*h))
        {
            return Ok(None);
        }
        let (Some(key), Some(given)) = (&self.config.chain_key, headers.get(chain::TOKEN_HEADER))
        else {
            return Err(refuse(Refusal::Forbidden,
                format!(
                    "`{}`, `{}` and `{}` are set by the platform on calls between functions; a request from outside must not send them",
                    chain::CALLER_CLASS_HEADER,
                    chain::DEPTH_HEADER,
                    chain::TOKEN_HEADER
                ),
            ));
        };
        let caller = match key.verify(given.as_bytes(), unix_ms()) {
            Ok(caller) => caller,
            Err(e) => {
                return Err(refuse(
                    Refusal::Forbidden,
                    format!("a call between functions refused: {e}"),
                ))
            }
        };
        if caller.class.index() >= self.config.classes.len() {
            return Err(refuse(
                Refusal::Invalid,
                format!(
                    "the caller's class {} is unknown; classes: {}",
                    caller.class.0,
                    self.class_names()
                ),
            ));
        }
        let depth = caller.depth.saturating_add(1);
        let max = self.config.max_chain_depth;
        if depth > max {
            return Err(refuse(Refusal::ChainTooDeep,
                format!(
                    "call chain depth {depth} is over the limit of {max}: a function called another {depth} deep (is one calling itself without end?)"
                ),
            ));
        }
        Ok(Some(caller))
    }

    pub(crate) fn class_names(&self) -> String {
        self.config
            .classes
            .iter()
            .map(|(_, c)| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The shard for the next invocation among those not marked down and not in `tried`:
    /// the policy core's rule (`turnpike_policy::shard_choice`), or for an invocation with
    /// concurrency limits the home shard of its first key.
    fn pick_shard(&self, invocation: &Invocation, tried: &[usize]) -> Option<usize> {
        let usable = |i: &usize| !tried.contains(i) && !self.shards[*i].is_down();
        if let Some(limit) = invocation.concurrency_limits.first() {
            let candidates: Vec<(usize, &str)> = (0..self.shards.len())
                .filter(usable)
                .map(|i| (i, self.shards[i].name.as_str()))
                .collect();
            return home_shard(&limit.key, &candidates);
        }
        let candidates: Vec<(usize, u64)> = (0..self.shards.len())
            .filter(usable)
            .map(|i| (i, self.shards[i].in_flight.load(Ordering::Relaxed)))
            .collect();
        choose_shard(&candidates, &mut rand::rng())
    }

    /// Sends an invocation to a shard (another one if that one is down); its outcome, or the
    /// answer to give when no shard could take it.
    #[allow(clippy::result_large_err)]
    async fn invoke(&self, invocation: Invocation) -> Result<Outcome, http::Response<Body>> {
        let mut tried = Vec::new();
        for _ in 0..2 {
            if invocation.cancel.is_cancelled() {
                return Ok(Outcome::failure(
                    FailureKind::Cancelled,
                    "cancelled before a shard answered",
                ));
            }
            let Some(s) = self.pick_shard(&invocation, &tried) else {
                break;
            };
            if !tried.is_empty() {
                self.shard_retries.fetch_add(1, Ordering::Relaxed);
            }
            tried.push(s);
            let shard = &self.shards[s];
            shard.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = shard.link.call(invocation.clone()).await;
            shard.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(error) if invocation.placed_for_good() => {
                    // Its streamed response had started (another run would answer twice) or
                    // its streamed request body went with the lost attempt.
                    shard.mark_down();
                    return Err(refuse(
                        Refusal::Unavailable,
                        format!(
                            "shard lost while the invocation's body streamed, so it was not sent again: {}",
                            error.message()
                        ),
                    ));
                }
                Err(error) => {
                    tracing::warn!(
                        shard = s,
                        "shard failed: {}; skipped for {SHARD_DOWN_FOR:?}",
                        error.message()
                    );
                    shard.mark_down();
                    if tried.len() == 2 {
                        return Err(refuse(
                            Refusal::Unavailable,
                            format!("shard unavailable: {}", error.message()),
                        ));
                    }
                }
            }
        }
        Err(refuse(Refusal::Unavailable, "no shard is available"))
    }

    fn respond(&self, outcome: Outcome) -> http::Response<Body> {
        match outcome.ending {
            Ok(r) => {
                if r.body.len() > self.config.max_response_bytes {
                    return refuse(Refusal::TooLarge,
                        format!(
                            "the function's response body of {} bytes is over the limit of {} bytes",
                            r.body.len(),
                            self.config.max_response_bytes
                        ),
                    );
                }
                let mut response = http::Response::new(Body::full(r.body));
                *response.status_mut() = r.status;
                *response.headers_mut() = r.headers;
                response
            }
            Err(f) => {
                let (case, retry_after) = match f.kind {
                    FailureKind::BadRequest => (Refusal::Invalid, None),
                    FailureKind::Cancelled => (Refusal::CallerGone, None),
                    FailureKind::Unavailable | FailureKind::Killed => (Refusal::Unavailable, None),
                    FailureKind::Overloaded => (Refusal::Unavailable, Some(BOUND_RETRY_AFTER_S)),
                    FailureKind::TooLarge => (Refusal::TooLarge, None),
                    FailureKind::Guest | FailureKind::UnknownFunction => {
                        (Refusal::FunctionFailed, None)
                    }
                };
                refuse_for(case, f.message, retry_after)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use turnpike_policy::ClassId;
    use turnpike_wire::chain::{ChainKey, CALLER_CLASS_HEADER, DEPTH_HEADER, TOKEN_HEADER};

    async fn gateway(token: Option<ChainKey>) -> (Arc<Gateway>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        let gateway = Gateway::new(GatewayConfig {
            classes: ClassSet::default_four(),
            routes: Vec::new(),
            store,
            domain: "localhost".into(),
            components: Arc::new(crate::components::AcceptAll),
            max_component_bytes: 1024,
            clock: Arc::new(crate::billing::SystemClock),
            shards: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            directory: turnpike_wire::directory::Directory::rpc_only(),
            max_request_bytes: 1024,
            max_response_bytes: 1024,
            start_mb: turnpike_policy::memory::START_MB_DEFAULT,
            chain_key: token,
            max_chain_depth: 8,
            memory_price: 1.0,
            in_flight_invocations_max: GATEWAY_IN_FLIGHT_INVOCATIONS_MAX_DEFAULT,
            ledger_queue_rows_max: LEDGER_QUEUE_ROWS_MAX_DEFAULT,
            ledger_outbox: dir.path().join("ledger-outbox.jsonl"),
            ledger_outbox_rows_max: crate::outbox::LEDGER_OUTBOX_ROWS_MAX_DEFAULT,
            connections_max: turnpike_wire::http_server::CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: turnpike_wire::http_server::HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            async_queue_max: crate::async_invocations::ASYNC_QUEUE_MAX_DEFAULT,
            async_runs_max: crate::async_invocations::ASYNC_RUNS_MAX_DEFAULT,
            async_retention: crate::async_invocations::ASYNC_RETENTION_DEFAULT,
            key_cache_for: KEY_CACHE_FOR_DEFAULT,
        })
        .await
        .unwrap();
        (gateway, dir)
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    async fn refusal(g: &Gateway, pairs: &[(&str, &str)]) -> (StatusCode, String) {
        let response = g.chain_context(&headers(pairs)).unwrap_err();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn caller(class: u8, depth: u32, expires_ms: u64) -> CallToken {
        CallToken {
            tenant: "acme".into(),
            class: ClassId(class),
            depth,
            invocation: 5,
            expires_ms,
        }
    }

    #[tokio::test]
    async fn calls_from_functions_are_checked() {
        let key = ChainKey::new("0123456789abcdef".into()).unwrap();
        let (g, _dir) = gateway(Some(key.clone())).await;
        let later = unix_ms() + 60_000;
        assert_eq!(g.chain_context(&headers(&[])).unwrap(), None);
        let good = key.sign(&caller(2, 3, later));
        assert_eq!(
            g.chain_context(&headers(&[(TOKEN_HEADER, &good)])).unwrap(),
            Some(caller(2, 3, later))
        );
        // Class and depth come from the token alone: headers claiming others change nothing.
        assert_eq!(
            g.chain_context(&headers(&[
                (CALLER_CLASS_HEADER, "critical"),
                (DEPTH_HEADER, "0"),
                (TOKEN_HEADER, &good),
            ]))
            .unwrap(),
            Some(caller(2, 3, later))
        );
        // An unknown class, a chain too deep.
        let (status, body) = refusal(&g, &[(TOKEN_HEADER, &key.sign(&caller(9, 1, later)))]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("class 9") && body.contains("batch"), "{body}");
        let (status, body) = refusal(&g, &[(TOKEN_HEADER, &key.sign(&caller(0, 8, later)))]).await;
        assert_eq!(status, StatusCode::LOOP_DETECTED);
        assert!(body.contains("depth 9 is over the limit of 8"), "{body}");
        // Expired: a token seen on the wire is no use later.
        let expired = key.sign(&caller(3, 1, unix_ms() - 1_000));
        let (status, body) = refusal(&g, &[(TOKEN_HEADER, &expired)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("expired"), "{body}");
        // Signed by another key, or altered to a higher class.
        let foreign = ChainKey::random().sign(&caller(3, 1, later));
        let (status, body) = refusal(&g, &[(TOKEN_HEADER, &foreign)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("signature"), "{body}");
        let higher = key.sign(&caller(3, 3, later));
        let altered = format!(
            "v1.{}.{}",
            higher.split('.').nth(1).unwrap(),
            good.split('.').nth(2).unwrap()
        );
        let (status, _) = refusal(&g, &[(TOKEN_HEADER, &altered)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // The old cluster-wide secret itself is no token.
        let (status, _) = refusal(&g, &[(TOKEN_HEADER, "0123456789abcdef")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Any platform header without a token is refused.
        let (status, _) = refusal(&g, &[(DEPTH_HEADER, "0")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_key_revoked_at_one_gateway_stops_at_another_within_its_cache_time() {
        let (here, dir) = gateway(None).await;
        let cache_for = Duration::from_millis(200);
        let there = Gateway::new(GatewayConfig {
            key_cache_for: cache_for,
            ledger_outbox: dir.path().join("there-outbox.jsonl"),
            ..here.config.clone()
        })
        .await
        .unwrap();
        let store = here.store().clone();
        let (_, kept) = store.create_tenant("acme", false).await.unwrap();
        let revoked = store.create_key("acme").await.unwrap();
        for gateway in [&here, &there] {
            assert!(gateway.tenant_of(&revoked).await.unwrap().is_some());
        }
        let id = turnpike_store::key_id(&turnpike_store::key_hash(&revoked));
        assert!(store.revoke_key("acme", &id).await.unwrap());
        here.forget_key(&id);
        assert!(
            here.tenant_of(&revoked).await.unwrap().is_none(),
            "where it was revoked: at once"
        );
        tokio::time::sleep(cache_for + Duration::from_millis(50)).await;
        assert!(
            there.tenant_of(&revoked).await.unwrap().is_none(),
            "elsewhere: once its cache time passed"
        );
        assert!(there.tenant_of(&kept).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn without_a_token_every_call_from_a_function_is_refused() {
        let (g, _dir) = gateway(None).await;
        let (status, body) = refusal(
            &g,
            &[
                (CALLER_CLASS_HEADER, "batch"),
                (DEPTH_HEADER, "1"),
                (TOKEN_HEADER, ""),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("set by the platform"), "{body}");
    }
}
