//! Asynchronous invocations: fired now, run soon, their result kept for a while.
//!
//! - **Asking.** `Prefer: respond-async` on a direct invocation
//!   (`/v1/apps/{app}/functions/{function}/invoke...`), or any request to a route declared
//!   `async = true`. The gateway checks what it would check for a synchronous request (the
//!   caller's class and chain, the tenant's budget, the body's size), stores the request -
//!   method, path, headers, body - as a row of the store's queue
//!   (`turnpike_store::async_invocations`), and only then answers `202 Accepted` with
//!   `{"id": ...}` and `Location: /v1/invocations/{id}`. A queued invocation waits in the
//!   store, never in a process's memory; a tenant may have at most `async_queue_max` queued
//!   or running (more get 429 naming the bound), and a throttled tenant gets 429 as a
//!   synchronous request would.
//! - **Idempotency.** An `Idempotency-Key` header makes a repeated submission (same tenant,
//!   same key, same request) answer the first one's id instead of queueing another, for as
//!   long as the first is kept; the same key with another request is 422.
//! - **Running.** Every gateway runs the queue ([`Gateway::run_async_queue`]): it claims due
//!   rows under a lease (a compare and set in the store, so two gateways never hold one row
//!   at once), highest class first, and runs each through [`Gateway::run_settled`] exactly as
//!   a synchronous request - same shards, classes, preemption, deadline
//!   (`x-turnpike-deadline-ms`, per attempt) and billing. A class may take a runner slot only
//!   while fewer than its share are busy (class `c` of `n`: `(c + 1) / n` of
//!   `async_runs_max`), so lower classes queued in the store can never fill every slot.
//! - **At least once.** An attempt that the platform fails (no shard, no worker, a worker
//!   lost or killed, a bound reached, the runner itself gone: its lease lapses after
//!   [`ASYNC_LEASE`] and another runner takes the row) is retried after an exponential
//!   backoff ([`backoff`]), at most [`PLATFORM_RETRIES_MAX`] times. The function's own failure
//!   (a trap, a timeout, a 5xx response, a response over the limit) is retried only as many
//!   times as the route's `retries` or the call's `x-turnpike-retries` asks. An attempt
//!   refused for the tenant's budget goes back to the queue uncounted until the budget
//!   allows it.
//! - **Billed once per attempt.** Each attempt is an invocation with an id of its own, billed
//!   in the usage ledger as any other (one row per id). An attempt's row is committed before
//!   its result is written, so a `succeeded` invocation's last attempt is always billed; an
//!   attempt whose runner died before writing its result is run again (the earlier one was
//!   billed if it finished before the runner died, as any synchronous invocation would be).
//! - **Results.** `GET /v1/invocations/{id}` shows the state, attempts, timestamps, and once
//!   ended the response (status, headers, body up to [`RESULT_BYTES_MAX`], marked truncated
//!   beyond); ended rows are deleted after `async_retention`. `GET /v1/invocations` lists
//!   them. Another tenant's id is 404, as a missing one.
//!
//! - **Concurrency limits.** An invocation of a function at its concurrency limit waits in
//!   the store: a runner claims none of a key (a function, or a tenant's apps) while it runs
//!   as many of it as the key's limit, and puts back one it claimed in the same batch past
//!   that. Each runner counts its own runs, so with several gateways more than the limit may
//!   be claimed at once; the shard's gate (`turnpike_policy::concurrency`) holds the extra
//!   ones, each still under its runner's renewed lease.
//!
//! **Schedules** (`[[schedules]]` of an app; `turnpike_store::schedules`) are fired here too:
//! every [`SCHEDULE_CHECK`] the runner fires the due ones, each tick's invocation queued in
//! the same transaction that claims the tick, so each tick fires once in the cluster.
//!
//! Calls from functions may be asynchronous too: the caller's tenant pays and the class is
//! `max(caller, route)` as for a synchronous call, checked when the call is submitted; the
//! chain's depth is not carried into the run (the queue limit bounds a function that keeps
//! submitting itself).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use turnpike_policy::concurrency::Limit;
use turnpike_store::{
    AsyncAttempt, AsyncInvocation, AsyncResult, AsyncState, AsyncSubmission, ClaimSkip, StoreError,
    Submitted, RETRIES_MAX,
};
use turnpike_wire::chain;

use crate::billing::Admission;
use crate::gateway::{
    read_whole, Body, CallerBody, Gateway, BOUND_RETRY_AFTER_S, INVOCATION_HEADER,
};
use crate::refusal::{refuse, refuse_for, Refusal};
use crate::routing::Target;

/// The request header that carries preferences (RFC 7240).
pub const PREFER: &str = "prefer";
/// The `Prefer` token that asks for an asynchronous run (RFC 7240).
pub const RESPOND_ASYNC: &str = "respond-async";
/// The header that makes a repeated submission find the first one.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The header of a direct invocation asking for retries of the function's own failures.
pub const RETRIES_HEADER: &str = "x-turnpike-retries";
/// Longest idempotency key, bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Default `async_queue_max`: a tenant's asynchronous invocations queued or running.
pub const ASYNC_QUEUE_MAX_DEFAULT: u64 = 10_000;
/// Default `async_runs_max`: asynchronous attempts a gateway runs at once.
pub const ASYNC_RUNS_MAX_DEFAULT: usize = 128;
/// Default `async_retention`: how long an ended invocation (and its idempotency key) is kept.
pub const ASYNC_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// The most of a response body kept as an invocation's result.
pub const RESULT_BYTES_MAX: usize = 1 << 20;
/// How long a claimed row stays with its runner without a renewal. A runner renews its
/// leases every fifth of this, so a runner that died is replaced within this much.
pub const ASYNC_LEASE: Duration = Duration::from_secs(10);
/// How often an idle runner looks at the store (a submission to this gateway wakes it at
/// once).
pub const ASYNC_POLL: Duration = Duration::from_millis(100);
/// Retries after the platform's failures before an invocation is failed.
pub const PLATFORM_RETRIES_MAX: u32 = 8;
/// Rows a runner claims in one statement per class.
const CLAIM_BATCH: usize = 32;
/// How often a runner looks for due schedules: a tick fires within this of its time.
pub const SCHEDULE_CHECK: Duration = Duration::from_millis(250);
/// How often ended rows past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The wait before retry number `n` (from 1): 1 s, doubling, at most a minute.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Whether a request asks for an asynchronous run (`Prefer: respond-async`, among other
/// preferences or not).
pub fn wants_async(headers: &http::HeaderMap) -> bool {
    headers.get_all(PREFER).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(RESPOND_ASYNC)
            })
        })
    })
}

/// Now, Unix milliseconds.
fn now_ms() -> i64 {
    crate::gateway::unix_ms() as i64
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// The JSON of an invocation as the API shows it.
pub(crate) fn invocation_json(invocation: &AsyncInvocation) -> Value {
    let time = |ms: Option<i64>| ms.map(rfc3339_ms);
    let mut body = json!({
        "id": invocation.id,
        "app": invocation.app,
        "function": invocation.function,
        "class": invocation.class,
        "state": invocation.state,
        "attempts": invocation.attempts,
        "retries": invocation.retries,
        "created_at": rfc3339_ms(invocation.created_ms),
        "started_at": time(invocation.started_ms),
        "finished_at": time(invocation.finished_ms),
        "error": invocation.error,
    });
    if invocation.state == AsyncState::Queued && invocation.attempts > 0 {
        body["retry_at"] = json!(rfc3339_ms(invocation.not_before_ms));
    }
    if let Some(result) = &invocation.result {
        let headers: serde_json::Map<String, Value> = result
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), json!(String::from_utf8_lossy(value))))
            .collect();
        let mut shown = json!({
            "status": result.status,
            "headers": headers,
            "body_truncated": result.truncated,
            "invocation": result.invocation.map(|id| id as u64),
        });
        match std::str::from_utf8(&result.body) {
            Ok(text) => shown["body"] = json!(text),
            Err(_) => shown["body_base64"] = json!(base64(&result.body)),
        }
        body["result"] = shown;
    }
    body
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339_ms(ms: i64) -> String {
    let seconds = turnpike_store::calendar::rfc3339(ms.div_euclid(1000));
    // `...:SSZ` -> `...:SS.mmmZ`
    format!(
        "{}.{:03}Z",
        seconds.trim_end_matches('Z'),
        ms.rem_euclid(1000)
    )
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How one attempt ended, for the queue.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The function answered below 500.
    Succeeded,
    /// The function's own failure: retried as the invocation asks.
    Guest(String),
    /// The platform's: retried up to [`PLATFORM_RETRIES_MAX`].
    Platform(String),
    /// Not run: the tenant is over budget; back to the queue after this long, uncounted.
    OverBudget(Duration),
    /// Cannot run (the function was deleted, the request is refused): failed now.
    Refused(String),
}

/// What an attempt's answer means for the queue: the refusal case the gateway attached (see
/// [`crate::refusal`]), or the function's own status.
fn ending_of(
    refusal: Option<Refusal>,
    status: StatusCode,
    retry_after: Option<u64>,
    text: &str,
) -> Ending {
    let message = || {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| format!("HTTP {status}"))
    };
    match refusal {
        None if status.is_server_error() => {
            Ending::Guest(format!("the function answered {}", status.as_u16()))
        }
        None => Ending::Succeeded,
        Some(Refusal::FunctionFailed | Refusal::DeadlinePassed | Refusal::TooLarge) => {
            Ending::Guest(message())
        }
        Some(Refusal::OverBudget) => Ending::OverBudget(Duration::from_secs(
            retry_after.unwrap_or(BOUND_RETRY_AFTER_S),
        )),
        Some(
            Refusal::Unavailable | Refusal::Internal | Refusal::CallerGone | Refusal::TimedOut,
        ) => Ending::Platform(message()),
        Some(
            Refusal::NotFound
            | Refusal::Invalid
            | Refusal::Unauthenticated
            | Refusal::Forbidden
            | Refusal::Conflict
            | Refusal::Unprocessable
            | Refusal::ChainTooDeep,
        ) => Ending::Refused(message()),
    }
}

/// A fresh invocation id: 128 random bits in hex.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest that ties an idempotency key to one request: who runs, what, with which body.
fn request_digest(target: &Target, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [
        target.app.as_bytes(),
        target.function.as_bytes(),
        &[target.class.0],
        method.as_bytes(),
        path_and_query.as_bytes(),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Gateway {
    /// Stores a request as an asynchronous invocation of `target` and answers `202` with its
    /// id (or the refusal; nothing is stored then).
    pub(crate) async fn submit_async(
        &self,
        mut target: Target,
        parts: http::request::Parts,
        body: Incoming,
        path_and_query: String,
    ) -> http::Response<Body> {
        let span = tracing::info_span!(
            "submission",
            tenant = %target.tenant,
            app = %target.app,
            function = %target.function,
        );
        async move {
            if let Some(caller) = match self.chain_context(&parts.headers) {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            } {
                target.tenant = caller.tenant;
                target.class = target.class.max(caller.class);
            }
            if let Some(value) = parts.headers.get(RETRIES_HEADER) {
                match value.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok()) {
                    Some(n) if n <= RETRIES_MAX => target.retries = n,
                    _ => {
                        return refuse(
                            Refusal::Invalid,
                            format!(
                                "`{RETRIES_HEADER}` must be a whole number from 0 to {RETRIES_MAX}, not `{}`",
                                String::from_utf8_lossy(value.as_bytes())
                            ),
                        )
                    }
                }
            }
            let key = match parts.headers.get(IDEMPOTENCY_KEY_HEADER) {
                None => None,
                Some(value) => match value.to_str() {
                    Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX => {
                        Some(key.to_string())
                    }
                    _ => {
                        return refuse(
                            Refusal::Invalid,
                            format!("`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"),
                        )
                    }
                },
            };
            if let Err(refusal) = crate::gateway::deadline_after(&parts.headers) {
                return refusal;
            }
            match self.billing.admit(&target.tenant, target.class).await {
                Ok((Admission::Run(_), _)) => {}
                Ok((Admission::Throttle(wait), _)) => {
                    return crate::gateway::over_budget(&target.tenant, wait)
                }
                Err(e) => {
                    return refuse(Refusal::Unavailable, format!("the store is unavailable: {e}"))
                }
            }
            let (limit, timeout) = (self.config.max_request_bytes, self.config.body_read_timeout);
            let body = match read_whole(body, limit, timeout).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            // What the function will see: the caller's headers without the platform's, the
            // caller's credentials, and the preference it was asked with.
            let mut headers = parts.headers;
            for name in chain::PLATFORM_HEADERS {
                headers.remove(name);
            }
            headers.remove(http::header::AUTHORIZATION);
            headers.remove(PREFER);
            let method = parts.method.as_str().to_string();
            let class = self.config.classes.get(target.class);
            let submission = AsyncSubmission {
                id: new_id(),
                request_digest: request_digest(&target, &method, &path_and_query, &body),
                tenant: target.tenant.clone(),
                app: target.app.clone(),
                function: target.function.clone(),
                class: class.name.clone(),
                priority: target.class.0,
                method,
                path_and_query,
                headers: headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                    .collect(),
                body: body.to_vec(),
                retries: target.retries,
                idempotency_key: key,
                at_ms: now_ms(),
            };
            let (id, replayed) = match self
                .store()
                .submit_async(&submission, self.config.async_queue_max)
                .await
            {
                Ok(Submitted::New(id)) => (id, false),
                Ok(Submitted::Existing(id)) => (id, true),
                Err(StoreError::Full(message)) => {
                    return refuse_for(Refusal::OverBudget, message, Some(BOUND_RETRY_AFTER_S))
                }
                Err(StoreError::Unprocessable(message)) => {
                    return refuse(Refusal::Unprocessable, message)
                }
                Err(e) => {
                    return refuse(
                        Refusal::Unavailable,
                        format!("the store failed; nothing was queued: {e}"),
                    )
                }
            };
            if !replayed {
                tracing::debug!(id = %id, "asynchronous invocation queued");
                self.async_queue.notify_one();
            }
            let mut text = json!({ "id": id, "state": "queued" }).to_string();
            text.push('\n');
            let mut response = http::Response::new(Body::full(text));
            *response.status_mut() = StatusCode::ACCEPTED;
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Ok(location) = http::HeaderValue::from_str(&format!("/v1/invocations/{id}")) {
                headers.insert(http::header::LOCATION, location);
            }
            if replayed {
                headers.insert("idempotent-replayed", http::HeaderValue::from_static("true"));
            }
            response
        }
        .instrument(span)
        .await
    }

    /// Runs the store's queue of asynchronous invocations until the task is dropped: claims
    /// due rows (highest class first, each class within its share of `async_runs_max`),
    /// runs each on a task of its own, renews its leases, and deletes ended rows past their
    /// retention.
    pub(crate) async fn run_async_queue(self: Arc<Self>) {
        let runner = format!("{}-{}", std::process::id(), &new_id()[..12]);
        let classes: Vec<(turnpike_policy::ClassId, String)> = self
            .config
            .classes
            .iter()
            .map(|(id, c)| (id, c.name.clone()))
            .collect();
        let runs_max = self.config.async_runs_max.max(1);
        let mut renewed = std::time::Instant::now();
        let mut checked: Option<std::time::Instant> = None;
        let mut purged: Option<std::time::Instant> = None;
        loop {
            let now = now_ms();
            if renewed.elapsed() >= ASYNC_LEASE / 5 {
                renewed = std::time::Instant::now();
                if let Err(e) = self
                    .store()
                    .renew_async_leases(&runner, now + ms(ASYNC_LEASE))
                    .await
                {
                    tracing::warn!("renewing asynchronous invocations' leases: {e}");
                }
            }
            if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                purged = Some(std::time::Instant::now());
                let before = now - ms(self.config.async_retention);
                match self.store().purge_async(before).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!("deleted {n} asynchronous invocations past their retention")
                    }
                    Err(e) => tracing::warn!(
                        "deleting asynchronous invocations past their retention: {e}"
                    ),
                }
            }
            if checked.is_none_or(|at| at.elapsed() >= SCHEDULE_CHECK) {
                checked = Some(std::time::Instant::now());
                let classes = &self.config.classes;
                let priority = |name: &str| classes.by_name(name).map(|id| id.0);
                match self.store().fire_due_schedules(now, priority).await {
                    Ok(fired) => {
                        for id in fired {
                            tracing::debug!(id = %id, "a schedule fired");
                        }
                    }
                    Err(e) => tracing::warn!("firing due schedules: {e}"),
                }
            }
            let mut claimed_any = false;
            for (id, name) in classes.iter().rev() {
                let share = runs_max * (id.index() + 1) / classes.len();
                let busy = self.async_running.load(Ordering::Relaxed);
                let free = share.saturating_sub(busy).min(CLAIM_BATCH);
                if free == 0 {
                    continue;
                }
                let skip = self.async_skip();
                let attempts = match self
                    .store()
                    .claim_async(&runner, name, free, (now, now + ms(ASYNC_LEASE)), &skip)
                    .await
                {
                    Ok(attempts) => attempts,
                    Err(e) => {
                        tracing::warn!("claiming asynchronous invocations: {e}");
                        break;
                    }
                };
                claimed_any |= !attempts.is_empty();
                for attempt in attempts {
                    let Some(limits) = self.take_async_slots(&attempt) else {
                        // Claimed in the same batch as others of its key: it waits in the
                        // store until this runner has room for it.
                        if let Err(e) = self
                            .store()
                            .unclaim_async(&runner, &attempt.id, attempt.attempt, now)
                            .await
                        {
                            tracing::warn!(id = %attempt.id, "putting back an invocation past its concurrency limit: {e}");
                        }
                        continue;
                    };
                    self.async_running.fetch_add(1, Ordering::Relaxed);
                    let gateway = self.clone();
                    let runner = runner.clone();
                    tokio::spawn(async move {
                        let span = tracing::info_span!(
                            "async_invocation",
                            id = %attempt.id,
                            attempt = attempt.attempt,
                            tenant = %attempt.tenant,
                        );
                        gateway.run_attempt(&runner, attempt).instrument(span).await;
                        gateway.give_async_slots(&limits);
                        gateway.async_running.fetch_sub(1, Ordering::Relaxed);
                        gateway.async_queue.notify_one();
                    });
                }
            }
            if !claimed_any {
                let wait = ASYNC_POLL.min(SCHEDULE_CHECK);
                let _ = tokio::time::timeout(wait, self.async_queue.notified()).await;
            }
        }
    }

    /// What this runner's claims leave in the store: the functions, and tenants' apps, whose
    /// concurrency key it runs as many of as the key's limit.
    fn async_skip(&self) -> ClaimSkip {
        let limited = turnpike_wire::lock(&self.async_limited);
        let mut skip = ClaimSkip::default();
        let routing = self.routing();
        for (key, (running, max)) in limited.iter() {
            if running < max {
                continue;
            }
            if let Some(tenant) = key.strip_prefix("tenant:") {
                skip.apps.extend(routing.apps_of(tenant).map(String::from));
            } else if let Some((app, function)) = key
                .strip_prefix("function:")
                .and_then(|f| f.split_once('/'))
            {
                skip.functions.push((app.into(), function.into()));
            }
        }
        skip
    }

    /// Takes a slot of each of `attempt`'s concurrency keys for a run by this runner: its
    /// limits, or `None` (nothing taken) when one of them is at its limit here.
    fn take_async_slots(&self, attempt: &AsyncAttempt) -> Option<Vec<Limit>> {
        let limits = self
            .routing()
            .limits(&attempt.app, &attempt.function)
            .to_vec();
        let mut limited = turnpike_wire::lock(&self.async_limited);
        let full = limits.iter().any(|l| {
            limited
                .get(&l.key)
                .is_some_and(|(running, _)| *running >= l.max)
        });
        if full {
            return None;
        }
        for limit in &limits {
            let entry = limited.entry(limit.key.clone()).or_insert((0, limit.max));
            *entry = (entry.0 + 1, limit.max);
        }
        Some(limits)
    }

    /// Gives back the slots [`Gateway::take_async_slots`] took.
    fn give_async_slots(&self, limits: &[Limit]) {
        let mut limited = turnpike_wire::lock(&self.async_limited);
        for limit in limits {
            if let Some(entry) = limited.get_mut(&limit.key) {
                entry.0 = entry.0.saturating_sub(1);
                if entry.0 == 0 {
                    limited.remove(&limit.key);
                }
            }
        }
    }

    /// Runs one claimed attempt and ends it in the store: its result, or back to the queue
    /// for a retry.
    async fn run_attempt(&self, runner: &str, attempt: AsyncAttempt) {
        let ending = self.attempt(&attempt).await;
        let (ending, result) = match ending {
            Ok((ending, result)) => (ending, result),
            Err(message) => (Ending::Refused(message.clone()), failed(None, message)),
        };
        let now = now_ms();
        let written = match ending {
            Ending::Succeeded => {
                self.store()
                    .finish_async(runner, &attempt.id, attempt.attempt, &result, now)
                    .await
            }
            Ending::Refused(_) => {
                let result = AsyncResult {
                    state: AsyncState::Failed,
                    ..result
                };
                self.store()
                    .finish_async(runner, &attempt.id, attempt.attempt, &result, now)
                    .await
            }
            Ending::OverBudget(wait) => {
                self.store()
                    .retry_async(runner, &attempt.id, attempt.attempt, None, now + ms(wait))
                    .await
            }
            Ending::Guest(ref message) | Ending::Platform(ref message) => {
                let guest = matches!(ending, Ending::Guest(_));
                let (failures, allowed) = if guest {
                    (attempt.guest_failures, attempt.retries)
                } else {
                    (attempt.platform_failures, PLATFORM_RETRIES_MAX)
                };
                if failures < allowed {
                    let wait = backoff(failures + 1);
                    tracing::debug!("attempt failed ({message}); retried in {wait:?}");
                    self.store()
                        .retry_async(
                            runner,
                            &attempt.id,
                            attempt.attempt,
                            Some((guest, message)),
                            now + ms(wait),
                        )
                        .await
                } else {
                    let result = AsyncResult {
                        state: AsyncState::Failed,
                        error: Some(message.clone()),
                        ..result
                    };
                    self.store()
                        .finish_async(runner, &attempt.id, attempt.attempt, &result, now)
                        .await
                }
            }
        };
        match written {
            Ok(true) => {}
            // Logged here, once: the row is another runner's now (this one's lease lapsed).
            Ok(false) => tracing::warn!(
                "this attempt's lease lapsed and another runner took the invocation over: its result is dropped"
            ),
            Err(e) => tracing::warn!(
                "writing the attempt's end failed ({e}): its lease will lapse and it runs again"
            ),
        }
    }

    /// Runs an attempt: how it ended and its result; `Err` when it cannot run at all.
    async fn attempt(&self, attempt: &AsyncAttempt) -> Result<(Ending, AsyncResult), String> {
        // The function as deployed now: a deleted one is not run. One this gateway does not
        // know may have been deployed through another gateway since its last routing poll.
        let deployed = |gateway: &Self| {
            gateway
                .routing()
                .function(&attempt.tenant, &attempt.app, &attempt.function)
                .map(|f| (f.hash.clone(), f.limits.clone()))
        };
        let mut found = deployed(self);
        if found.is_none() {
            if let Err(e) = self.reload_routing().await {
                return Err(format!("reading the deployed functions: {e}"));
            }
            found = deployed(self);
        }
        let Some((hash, concurrency_limits)) = found else {
            return Err(format!(
                "the function `{}/{}` no longer exists",
                attempt.app, attempt.function
            ));
        };
        let Some(class) = self.config.classes.by_name(&attempt.class) else {
            return Err(format!(
                "the class `{}` is not one of this gateway's ({})",
                attempt.class,
                self.class_names()
            ));
        };
        let mut request = http::Request::builder()
            .method(attempt.method.as_str())
            .uri(attempt.path_and_query.as_str());
        for (name, value) in &attempt.headers {
            request = request.header(name.as_str(), value.as_slice());
        }
        let (parts, ()) = request
            .body(())
            .map_err(|e| format!("the stored request is malformed: {e}"))?
            .into_parts();
        let target = Target {
            tenant: attempt.tenant.clone(),
            app: attempt.app.clone(),
            function: attempt.function.clone(),
            hash,
            class,
            asynchronous: false,
            retries: attempt.retries,
            concurrency_limits,
        };
        let (settled, settling) = tokio::sync::oneshot::channel();
        let response = self
            .run_settled(
                target,
                parts,
                CallerBody::Stored(Bytes::from(attempt.body.clone())),
                attempt.path_and_query.clone(),
                Some(settled),
            )
            .await;
        let (parts, mut body) = response.into_parts();
        let invocation = parts
            .headers
            .get(INVOCATION_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(|id| id as i64);
        let mut kept = Vec::new();
        let (mut truncated, mut cut) = (false, None);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        let room = RESULT_BYTES_MAX - kept.len();
                        truncated |= data.len() > room;
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Err(e) => {
                    cut = Some(e.to_string());
                    break;
                }
            }
        }
        drop(body);
        // Its usage is with the ledger once the invocation settles; committed before the
        // result is written, so an ended invocation's last attempt is always billed.
        let _ = settling.await;
        self.billing.flush().await;
        let refusal = parts.extensions.get::<Refusal>().copied();
        let retry_after = parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let text = String::from_utf8_lossy(&kept);
        let ending = match cut {
            // The response broke after its head: over the limit where the function wrote it
            // (its own failure), or its worker lost (the platform's).
            Some(e) if e.contains("limit") => Ending::Guest(e),
            Some(e) => Ending::Platform(e),
            None => ending_of(refusal, parts.status, retry_after, &text),
        };
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| *name != INVOCATION_HEADER)
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect();
        let error = match &ending {
            Ending::Succeeded => None,
            Ending::Guest(m) | Ending::Platform(m) | Ending::Refused(m) => Some(m.clone()),
            Ending::OverBudget(wait) => Some(format!("over budget: waits {wait:?}")),
        };
        let result = AsyncResult {
            state: if ending == Ending::Succeeded {
                AsyncState::Succeeded
            } else {
                AsyncState::Failed
            },
            invocation,
            status: Some(parts.status.as_u16()),
            headers,
            body: kept,
            truncated,
            error,
        };
        Ok((ending, result))
    }
}

/// A failed result with no response.
fn failed(invocation: Option<i64>, error: String) -> AsyncResult {
    AsyncResult {
        state: AsyncState::Failed,
        invocation,
        status: None,
        headers: Vec::new(),
        body: Vec::new(),
        truncated: false,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_respond_async_is_found_among_other_preferences() {
        let mut headers = http::HeaderMap::new();
        assert!(!wants_async(&headers));
        headers.insert("prefer", http::HeaderValue::from_static("return=minimal"));
        assert!(!wants_async(&headers));
        headers.append(
            "prefer",
            http::HeaderValue::from_static("wait=5, Respond-Async"),
        );
        assert!(wants_async(&headers));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "prefer",
            http::HeaderValue::from_static("respond-async; x=1"),
        );
        assert!(wants_async(&headers));
        headers.insert(
            "prefer",
            http::HeaderValue::from_static("respond-asynchronously"),
        );
        assert!(!wants_async(&headers));
    }

    #[test]
    fn who_failed_decides_the_retry() {
        let ok = StatusCode::OK;
        assert_eq!(ending_of(None, ok, None, ""), Ending::Succeeded);
        assert_eq!(
            ending_of(None, StatusCode::NOT_FOUND, None, ""),
            Ending::Succeeded
        );
        assert!(matches!(
            ending_of(None, StatusCode::INTERNAL_SERVER_ERROR, None, ""),
            Ending::Guest(_)
        ));
        let refused = |case: Refusal, retry| {
            ending_of(Some(case), case.status(), retry, "{\"error\": \"why\"}")
        };
        assert_eq!(
            refused(Refusal::FunctionFailed, None),
            Ending::Guest("why".into())
        );
        assert_eq!(
            refused(Refusal::DeadlinePassed, None),
            Ending::Guest("why".into())
        );
        assert_eq!(
            refused(Refusal::Unavailable, Some(1)),
            Ending::Platform("why".into())
        );
        assert_eq!(
            refused(Refusal::OverBudget, Some(7)),
            Ending::OverBudget(Duration::from_secs(7))
        );
        assert_eq!(
            refused(Refusal::NotFound, None),
            Ending::Refused("why".into())
        );
    }

    #[test]
    fn backoff_doubles_from_a_second_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn times_and_bodies_are_shown_readably() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0x00, 0x10, 0x80]), "/wAQgA==");
    }

    #[test]
    fn a_request_digest_changes_with_each_part() {
        let target = Target {
            tenant: "acme".into(),
            app: "shop".into(),
            function: "resize".into(),
            hash: "h".into(),
            class: turnpike_policy::ClassId(1),
            asynchronous: true,
            retries: 0,
            concurrency_limits: Vec::new(),
        };
        let base = request_digest(&target, "POST", "/a", b"body");
        assert_eq!(base, request_digest(&target, "POST", "/a", b"body"));
        assert_ne!(base, request_digest(&target, "PUT", "/a", b"body"));
        assert_ne!(base, request_digest(&target, "POST", "/b", b"body"));
        assert_ne!(base, request_digest(&target, "POST", "/a", b"bodz"));
        let other = Target {
            function: "crop".into(),
            ..target.clone()
        };
        assert_ne!(base, request_digest(&other, "POST", "/a", b"body"));
    }
}
