//! Apps' schedules as the store keeps them: one row per schedule with its next tick.
//!
//! - **Deploy** ([`replace`], called in the deploy's transaction): a schedule the app keeps
//!   (same [`ScheduleSpec::key`]) keeps its next and last run; a new one starts at its first
//!   tick after the deploy; one no longer in the manifest is gone.
//! - **Firing** ([`Store::fire_due_schedules`]): any gateway, at any time, takes each due row
//!   by a compare and set on its `next_at` and, in the same transaction, queues its tick's
//!   asynchronous invocation (an id derived from the app, schedule and tick, so even two
//!   transactions racing on one tick could not queue it twice). However many gateways look,
//!   each tick fires once in the whole cluster, and once fired it is durable: it runs at
//!   least once through the asynchronous queue.
//! - **Missed ticks** (nothing ran at the time: every gateway was down) fire once on
//!   recovery, not once per tick missed: the row's next tick becomes the first one after now.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::async_invocations::{self, AsyncSubmission};
use crate::cron::Cron;
use crate::{Result, Schedule, ScheduleSpec, Store, StoreError};

/// The header a scheduled invocation carries: its schedule's cron expression.
pub const SCHEDULE_HEADER: &str = "x-turnpike-schedule";

/// Replaces `app`'s schedules with `specs` inside a deploy's transaction, keeping the runs of
/// those it keeps.
pub(crate) async fn replace(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    app: &str,
    specs: &[ScheduleSpec],
    now_ms: i64,
) -> Result<()> {
    // Each kept schedule's key, next and last tick, and last invocation.
    type Runs = (String, Option<i64>, Option<i64>, Option<String>);
    let kept: Vec<Runs> =
        sqlx::query("SELECT key, next_at, last_at, last_invocation FROM schedules WHERE app = $1")
            .bind(app)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("key")?,
                    r.try_get("next_at")?,
                    r.try_get("last_at")?,
                    r.try_get("last_invocation")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
    sqlx::query("DELETE FROM schedules WHERE app = $1")
        .bind(app)
        .execute(&mut **tx)
        .await?;
    for spec in specs {
        let key = spec.key();
        let cron = Cron::parse(&spec.cron)
            .map_err(|e| StoreError::Invalid(format!("schedule `{}`: {e}", spec.cron)))?;
        let (next, last, invocation) = match kept.iter().find(|(k, ..)| *k == key) {
            Some((_, next, last, invocation)) => (*next, *last, invocation.clone()),
            None => (cron.next_after(now_ms), None, None),
        };
        sqlx::query(
            "INSERT INTO schedules (app, key, cron, function, path, method, class, next_at, last_at, last_invocation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(app)
        .bind(&key)
        .bind(&spec.cron)
        .bind(&spec.function)
        .bind(&spec.path)
        .bind(&spec.method)
        .bind(&spec.class)
        .bind(next)
        .bind(last)
        .bind(invocation)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The id of the invocation a schedule's tick queues.
fn tick_id(app: &str, key: &str, tick_ms: i64) -> String {
    let mut hash = Sha256::new();
    for part in [app.as_bytes(), key.as_bytes(), &tick_ms.to_le_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Fires every schedule due at `now_ms` that no other caller fired first: its tick's
    /// asynchronous invocation queued, its next tick set (the first after `now_ms`). A class
    /// this caller does not know (`priority_of` says `None`) leaves the row for a gateway that
    /// does. The ids queued.
    pub async fn fire_due_schedules(
        &self,
        now_ms: i64,
        priority_of: impl Fn(&str) -> Option<u8>,
    ) -> Result<Vec<String>> {
        let due = sqlx::query(
            "SELECT s.app, s.key, s.cron, s.function, s.path, s.method, s.class, s.next_at, a.tenant \
             FROM schedules s JOIN apps a ON a.name = s.app WHERE s.next_at <= $1",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut fired = Vec::new();
        for row in due {
            let (app, key, cron_text, class): (String, String, String, String) = (
                row.try_get("app")?,
                row.try_get("key")?,
                row.try_get("cron")?,
                row.try_get("class")?,
            );
            let tick: i64 = row.try_get("next_at")?;
            let Some(priority) = priority_of(&class) else {
                continue;
            };
            let next = Cron::parse(&cron_text)
                .map_err(|e| StoreError::Invalid(format!("stored schedule `{cron_text}`: {e}")))?
                .next_after(now_ms);
            let id = tick_id(&app, &key, tick);
            let mut tx = self.pool.begin().await?;
            let taken = sqlx::query(
                "UPDATE schedules SET next_at = $1, last_at = $2, last_invocation = $3 \
                 WHERE app = $4 AND key = $5 AND next_at = $2",
            )
            .bind(next)
            .bind(tick)
            .bind(&id)
            .bind(&app)
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken != 1 {
                // Another gateway fired this tick.
                continue;
            }
            let method: String = row.try_get("method")?;
            let path: String = row.try_get("path")?;
            let submission = AsyncSubmission {
                id: id.clone(),
                tenant: row.try_get("tenant")?,
                app,
                function: row.try_get("function")?,
                class,
                priority,
                request_digest: id.clone(),
                method,
                path_and_query: path,
                headers: vec![(SCHEDULE_HEADER.to_string(), cron_text.into_bytes())],
                body: Vec::new(),
                retries: 0,
                idempotency_key: None,
                at_ms: now_ms,
            };
            async_invocations::insert(&mut *tx, &submission).await?;
            tx.commit().await?;
            fired.push(id);
        }
        Ok(fired)
    }

    /// `tenant`'s schedules, by app and cron expression.
    pub async fn schedules(&self, tenant: &str) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(
            "SELECT s.app, s.cron, s.function, s.path, s.method, s.class, s.next_at, s.last_at, \
             s.last_invocation FROM schedules s JOIN apps a ON a.name = s.app \
             WHERE a.tenant = $1 ORDER BY s.app, s.key",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Schedule {
                    app: r.try_get("app")?,
                    spec: ScheduleSpec {
                        cron: r.try_get("cron")?,
                        function: r.try_get("function")?,
                        path: r.try_get("path")?,
                        method: r.try_get("method")?,
                        class: r.try_get("class")?,
                    },
                    next_ms: r.try_get("next_at")?,
                    last_ms: r.try_get("last_at")?,
                    last_invocation: r.try_get("last_invocation")?,
                })
            })
            .collect()
    }
}
