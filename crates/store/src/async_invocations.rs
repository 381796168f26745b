//! Asynchronous invocations as the store keeps them: each one a row of `async_invocations`
//! from its submission until its retention ends. The row *is* the queue - nothing of a queued
//! invocation is held in a process's memory - and it carries who may run it now.
//!
//! - **Submission** ([`Store::submit_async`]): one row, `queued`, written before the caller
//!   hears `202`. With an idempotency key, a second submission of the same request by the
//!   same tenant finds the first row instead (the key is unique per tenant while the row is
//!   kept); the same key with a different request is refused.
//! - **Claiming** ([`Store::claim_async`]): a runner (a gateway) takes due rows by a compare
//!   and set on their state - `queued` and due, or `running` under a lease that lapsed (its
//!   runner died) - giving each a lease of its own name until a time, and counting the attempt.
//!   Two runners can never hold the same row at once: the update only matches a row no one
//!   holds. A runner renews its leases while its attempts run ([`Store::renew_async_leases`]).
//! - **Ending an attempt** ([`Store::finish_async`], [`Store::retry_async`]): only the holder
//!   of the attempt (runner and attempt number) may, so a runner that lost its lease (paused
//!   past it while another took over) cannot overwrite the newer attempt's result.
//! - **Retention** ([`Store::purge_async`]): ended rows are deleted once they are older than
//!   the retention period; then their idempotency keys may be used again.
//!
//! Times are Unix milliseconds, given by the caller (the gateway's clock).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// Where an asynchronous invocation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AsyncState {
    /// Waiting in the store for a runner (new, or after a failed attempt, until `not_before`).
    Queued,
    /// An attempt holds it (under a lease).
    Running,
    /// Its last attempt ran the function to a response below 500.
    Succeeded,
    /// Its last attempt failed and no retry was left, or it could not run at all.
    Failed,
}

impl AsyncState {
    pub const ALL: [AsyncState; 4] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A new asynchronous invocation, as the gateway accepted it.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncSubmission {
    /// Its id (random, chosen by the gateway).
    pub id: String,
    /// Who pays.
    pub tenant: String,
    pub app: String,
    pub function: String,
    /// The class it runs at (by name) and that class's priority: runners take higher ones
    /// first.
    pub class: String,
    pub priority: u8,
    /// The request the function sees.
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// How often the function's own failure is retried (platform failures always are).
    pub retries: u32,
    pub idempotency_key: Option<String>,
    /// A digest of the request (method, path, headers that matter, body): a reused
    /// idempotency key must come with the same one.
    pub request_digest: String,
    /// Unix ms.
    pub at_ms: i64,
}

/// What a submission did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// A new row, queued.
    New(String),
    /// The idempotency key names an earlier submission of the same request: its id.
    Existing(String),
}

/// A claimed attempt: the request to run and what the runner must quote to end it.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncAttempt {
    pub id: String,
    pub tenant: String,
    pub app: String,
    pub function: String,
    pub class: String,
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub retries: u32,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Failed attempts so far: the function's own, and the platform's (a lapsed lease
    /// counts as one).
    pub guest_failures: u32,
    pub platform_failures: u32,
}

/// How an attempt ended, to be kept as the invocation's result.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncResult {
    pub state: AsyncState,
    /// The attempt's invocation id (its ledger row), if it ran.
    pub invocation: Option<i64>,
    pub status: Option<u16>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body was longer than what is kept.
    pub truncated: bool,
    pub error: Option<String>,
}

/// An asynchronous invocation as `GET /v1/invocations/{id}` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncInvocation {
    pub id: String,
    pub app: String,
    pub function: String,
    pub class: String,
    pub state: AsyncState,
    pub attempts: u32,
    pub retries: u32,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Unix ms before which a queued one will not start (a retry's backoff).
    pub not_before_ms: i64,
    /// The result, once ended (the last failed attempt's error while queued for a retry).
    pub result: Option<AsyncResult>,
    /// The last attempt's error, if any.
    pub error: Option<String>,
}

/// Headers as kept: a JSON array of `[name, value]` with values as byte arrays would bloat;
/// values that are UTF-8 (nearly all) are kept as strings, others hex with a `hex:` mark.
fn encode_headers(headers: &[(String, Vec<u8>)]) -> String {
    let pairs: Vec<[String; 2]> = headers
        .iter()
        .map(|(name, value)| {
            let value = match std::str::from_utf8(value) {
                Ok(text) if !text.starts_with("hex:") => text.to_string(),
                _ => format!(
                    "hex:{}",
                    value.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            };
            [name.clone(), value]
        })
        .collect();
    serde_json::to_string(&pairs).expect("strings serialize")
}

fn decode_headers(text: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let pairs: Vec<[String; 2]> = serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("stored headers unreadable: {e}")))?;
    pairs
        .into_iter()
        .map(|[name, value]| {
            let bytes = match value.strip_prefix("hex:") {
                Some(hex) => (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|e| StoreError::Invalid(format!("stored header unreadable: {e}")))?,
                None => value.into_bytes(),
            };
            Ok((name, bytes))
        })
        .collect()
}

/// Inserts a queued row for `new` unless its id (or its tenant's idempotency key) is there
/// already; how many rows it inserted.
pub(crate) async fn insert<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    new: &AsyncSubmission,
) -> Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO async_invocations (id, tenant, app, function, class, priority, method, path, \
         headers, body, retries, idempotency_key, request_digest, state, attempts, \
         guest_failures, platform_failures, not_before, created_at, result_truncated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'queued', 0, 0, 0, $14, $15, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&new.id)
    .bind(&new.tenant)
    .bind(&new.app)
    .bind(&new.function)
    .bind(&new.class)
    .bind(i64::from(new.priority))
    .bind(&new.method)
    .bind(&new.path_and_query)
    .bind(encode_headers(&new.headers))
    .bind(new.body.clone())
    .bind(i64::from(new.retries))
    .bind(new.idempotency_key.clone())
    .bind(&new.request_digest)
    .bind(new.at_ms)
    .bind(new.at_ms)
    .execute(db)
    .await?
    .rows_affected())
}

/// The columns [`attempt_of`] reads.
const ATTEMPT_COLUMNS: &str = "id, tenant, app, function, class, method, path, headers, body, \
     retries, attempts, guest_failures, platform_failures";

fn attempt_of(row: &AnyRow) -> Result<AsyncAttempt> {
    Ok(AsyncAttempt {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        app: row.try_get("app")?,
        function: row.try_get("function")?,
        class: row.try_get("class")?,
        method: row.try_get("method")?,
        path_and_query: row.try_get("path")?,
        headers: decode_headers(&row.try_get::<String, _>("headers")?)?,
        body: row.try_get("body")?,
        retries: row.try_get::<i64, _>("retries")? as u32,
        attempt: row.try_get::<i64, _>("attempts")? as u32,
        guest_failures: row.try_get::<i64, _>("guest_failures")? as u32,
        platform_failures: row.try_get::<i64, _>("platform_failures")? as u32,
    })
}

/// The columns [`invocation_of`] reads.
const INVOCATION_COLUMNS: &str = "id, app, function, class, state, attempts, retries, created_at, \
     started_at, finished_at, not_before, invocation, status, result_headers, result_body, \
     result_truncated, error";

fn invocation_of(row: &AnyRow) -> Result<AsyncInvocation> {
    let state: String = row.try_get("state")?;
    let state = AsyncState::parse(&state)
        .ok_or_else(|| StoreError::Invalid(format!("stored state `{state}` unknown")))?;
    let error: Option<String> = row.try_get("error")?;
    let ended = matches!(state, AsyncState::Succeeded | AsyncState::Failed);
    let result = if ended {
        let headers: Option<String> = row.try_get("result_headers")?;
        Some(AsyncResult {
            state,
            invocation: row.try_get("invocation")?,
            status: row.try_get::<Option<i64>, _>("status")?.map(|s| s as u16),
            headers: headers
                .as_deref()
                .map(decode_headers)
                .transpose()?
                .unwrap_or_default(),
            body: row
                .try_get::<Option<Vec<u8>>, _>("result_body")?
                .unwrap_or_default(),
            truncated: row.try_get::<i64, _>("result_truncated")? != 0,
            error: error.clone(),
        })
    } else {
        None
    };
    Ok(AsyncInvocation {
        id: row.try_get("id")?,
        app: row.try_get("app")?,
        function: row.try_get("function")?,
        class: row.try_get("class")?,
        state,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        retries: row.try_get::<i64, _>("retries")? as u32,
        created_ms: row.try_get("created_at")?,
        started_ms: row.try_get("started_at")?,
        finished_ms: row.try_get("finished_at")?,
        not_before_ms: row.try_get("not_before")?,
        result,
        error,
    })
}

/// What a claim leaves in the queue ([`Store::claim_async`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimSkip {
    /// Every invocation of these apps.
    pub apps: Vec<String>,
    /// Invocations of these `(app, function)`s.
    pub functions: Vec<(String, String)>,
}

impl Store {
    /// Queues an asynchronous invocation, unless `tenant` has `queue_max` or more queued or
    /// running already ([`StoreError::Full`]). The count and the insert are not one atomic
    /// step: gateways submitting for one tenant at the same instant can each pass the check,
    /// so the queue can go over `queue_max` by at most the submissions in flight at once.
    pub async fn submit_async(&self, new: &AsyncSubmission, queue_max: u64) -> Result<Submitted> {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.by_idempotency_key(&new.tenant, key, new).await? {
                return Ok(Submitted::Existing(existing));
            }
        }
        let waiting = self.async_waiting(&new.tenant).await?;
        if waiting >= queue_max {
            return Err(StoreError::Full(format!(
                "tenant `{}` has {waiting} asynchronous invocations queued or running, its async_queue_max of {queue_max}: retry when some have run",
                new.tenant
            )));
        }
        let inserted = insert(&self.pool, new).await?;
        if inserted == 1 {
            return Ok(Submitted::New(new.id.clone()));
        }
        // The idempotency key was taken between the check and the insert.
        match &new.idempotency_key {
            Some(key) => match self.by_idempotency_key(&new.tenant, key, new).await? {
                Some(existing) => Ok(Submitted::Existing(existing)),
                None => Err(StoreError::Conflict(format!(
                    "asynchronous invocation {} could not be stored: retry",
                    new.id
                ))),
            },
            None => Err(StoreError::Conflict(format!(
                "asynchronous invocation id {} is taken: retry",
                new.id
            ))),
        }
    }

    /// The id of `tenant`'s invocation submitted with `key`, if it is kept; refused if that
    /// one was another request.
    async fn by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        new: &AsyncSubmission,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT id, request_digest FROM async_invocations WHERE tenant = $1 AND idempotency_key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let digest: String = row.try_get("request_digest")?;
        if digest != new.request_digest {
            return Err(StoreError::Unprocessable(format!(
                "`Idempotency-Key` `{key}` was used for another request (invocation {}): a key names one request; use a new key for a new request",
                row.try_get::<String, _>("id")?
            )));
        }
        Ok(Some(row.try_get("id")?))
    }

    /// `tenant`'s asynchronous invocations queued or running.
    pub async fn async_waiting(&self, tenant: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM async_invocations WHERE tenant = $1 AND state IN ('queued', 'running')",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }

    /// Claims at most `limit` due invocations of `class` for `runner` until `lease_until_ms`:
    /// queued ones whose `not_before` has come, oldest first, then running ones whose lease
    /// lapsed before `now_ms` (their runner is gone; that counts as a platform failure).
    ///
    /// `skip` leaves out the invocations of some apps (every function) or functions: those
    /// at their concurrency limit, which wait here rather than in a runner's memory.
    pub async fn claim_async(
        &self,
        runner: &str,
        class: &str,
        limit: usize,
        (now_ms, lease_until_ms): (i64, i64),
        skip: &ClaimSkip,
    ) -> Result<Vec<AsyncAttempt>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT id FROM async_invocations WHERE class = $1 AND \
             ((state = 'queued' AND not_before <= $2) OR (state = 'running' AND lease_until < $2))",
        );
        let mut values: Vec<&str> = Vec::new();
        for app in &skip.apps {
            values.push(app);
            sql.push_str(&format!(" AND app <> ${}", values.len() + 3));
        }
        for (app, function) in &skip.functions {
            values.push(app);
            values.push(function);
            let n = values.len() + 3;
            sql.push_str(&format!(" AND NOT (app = ${} AND function = ${n})", n - 1));
        }
        sql.push_str(" ORDER BY not_before, created_at LIMIT $3");
        let mut query = sqlx::query(&sql)
            .bind(class)
            .bind(now_ms)
            .bind(limit as i64);
        for value in values {
            query = query.bind(value);
        }
        let candidates: Vec<String> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut claimed = Vec::new();
        for id in candidates {
            // The compare and set: it matches only while no one holds the row.
            let row = sqlx::query(&format!(
                "UPDATE async_invocations SET \
                 platform_failures = platform_failures + CASE WHEN state = 'running' THEN 1 ELSE 0 END, \
                 state = 'running', attempts = attempts + 1, lease_owner = $2, lease_until = $3, \
                 started_at = COALESCE(started_at, $4) \
                 WHERE id = $1 AND ((state = 'queued' AND not_before <= $4) OR (state = 'running' AND lease_until < $4)) \
                 RETURNING {ATTEMPT_COLUMNS}"
            ))
            .bind(&id)
            .bind(runner)
            .bind(lease_until_ms)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                claimed.push(attempt_of(&row)?);
            }
        }
        Ok(claimed)
    }

    /// Puts attempt `attempt` of `id`, just claimed by `runner` and not started, back in the
    /// queue as it was (its attempt uncounted): a runner that claimed more of a function than
    /// its concurrency limit lets run. Whether it still held it.
    pub async fn unclaim_async(
        &self,
        runner: &str,
        id: &str,
        attempt: u32,
        now_ms: i64,
    ) -> Result<bool> {
        self.retry_async(runner, id, attempt, None, now_ms).await
    }

    /// Extends every lease `runner` holds to `lease_until_ms`; how many it holds.
    pub async fn renew_async_leases(&self, runner: &str, lease_until_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE async_invocations SET lease_until = $1 WHERE lease_owner = $2 AND state = 'running'",
        )
        .bind(lease_until_ms)
        .bind(runner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Ends attempt `attempt` of `id`, held by `runner`, with `result` (its state succeeded or
    /// failed). Whether it still held it: `false` means another runner took the row over after
    /// this one's lease lapsed, and nothing was written.
    pub async fn finish_async(
        &self,
        runner: &str,
        id: &str,
        attempt: u32,
        result: &AsyncResult,
        now_ms: i64,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE async_invocations SET state = $1, invocation = $2, status = $3, \
             result_headers = $4, result_body = $5, result_truncated = $6, error = $7, \
             finished_at = $8, lease_owner = NULL, lease_until = NULL \
             WHERE id = $9 AND lease_owner = $10 AND attempts = $11 AND state = 'running'",
        )
        .bind(result.state.as_str())
        .bind(result.invocation)
        .bind(result.status.map(i64::from))
        .bind(encode_headers(&result.headers))
        .bind(result.body.clone())
        .bind(i64::from(result.truncated))
        .bind(result.error.clone())
        .bind(now_ms)
        .bind(id)
        .bind(runner)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Puts attempt `attempt` of `id`, held by `runner`, back in the queue until
    /// `not_before_ms`: after a failure (`guest` says whose), or without counting the attempt
    /// when it did not start (`failure` `None`: its tenant was over budget). Whether it still
    /// held it.
    pub async fn retry_async(
        &self,
        runner: &str,
        id: &str,
        attempt: u32,
        failure: Option<(bool, &str)>,
        not_before_ms: i64,
    ) -> Result<bool> {
        let (guest, platform, uncount, error) = match failure {
            Some((true, error)) => (1, 0, 0, Some(error)),
            Some((false, error)) => (0, 1, 0, Some(error)),
            None => (0, 0, 1, None),
        };
        Ok(sqlx::query(
            "UPDATE async_invocations SET state = 'queued', not_before = $1, \
             guest_failures = guest_failures + $2, platform_failures = platform_failures + $3, \
             attempts = attempts - $4, error = COALESCE($5, error), lease_owner = NULL, lease_until = NULL \
             WHERE id = $6 AND lease_owner = $7 AND attempts = $8 AND state = 'running'",
        )
        .bind(not_before_ms)
        .bind(guest)
        .bind(platform)
        .bind(uncount)
        .bind(error)
        .bind(id)
        .bind(runner)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// `tenant`'s asynchronous invocation `id`; `None` if there is none (or it is another
    /// tenant's).
    pub async fn async_invocation(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<AsyncInvocation>> {
        let row = sqlx::query(&format!(
            "SELECT {INVOCATION_COLUMNS} FROM async_invocations WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| invocation_of(&r)).transpose()
    }

    /// `tenant`'s asynchronous invocations, newest first, at most `limit`: those in `state`
    /// and of `function` (`APP/NAME` or `NAME`) when given.
    pub async fn async_invocations(
        &self,
        tenant: &str,
        state: Option<AsyncState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AsyncInvocation>> {
        let mut sql =
            format!("SELECT {INVOCATION_COLUMNS} FROM async_invocations WHERE tenant = $1");
        let mut values: Vec<String> = vec![tenant.to_string()];
        if let Some(state) = state {
            values.push(state.as_str().to_string());
            sql.push_str(&format!(" AND state = ${}", values.len()));
        }
        if let Some(function) = function {
            match function.split_once('/') {
                Some((app, name)) => {
                    values.push(app.to_string());
                    sql.push_str(&format!(" AND app = ${}", values.len()));
                    values.push(name.to_string());
                    sql.push_str(&format!(" AND function = ${}", values.len()));
                }
                None => {
                    values.push(function.to_string());
                    sql.push_str(&format!(" AND function = ${}", values.len()));
                }
            }
        }
        sql.push_str(&format!(" ORDER BY created_at DESC, id LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        for value in &values {
            query = query.bind(value);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(invocation_of)
            .collect()
    }

    /// Deletes ended invocations that ended before `before_ms`; how many.
    pub async fn purge_async(&self, before_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM async_invocations WHERE state IN ('succeeded', 'failed') AND finished_at < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_store_whatever_their_bytes() {
        let headers = vec![
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("x-odd".to_string(), vec![0xff, 0x00, b'a']),
            ("x-looks-marked".to_string(), b"hex:41".to_vec()),
        ];
        let text = encode_headers(&headers);
        assert_eq!(decode_headers(&text).unwrap(), headers);
        assert!(decode_headers("not json").is_err());
        assert!(decode_headers("[[\"a\", \"hex:zz\"]]").is_err());
    }
}
