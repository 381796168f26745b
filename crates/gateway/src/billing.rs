//! Metering, the usage ledger and budgets, at the gateway.
//!
//! - **Cost.** Every invocation that ran comes back from its worker with its CPU time (time
//!   on a core; parked and blocked time excluded) and the memory it actually used, integrated
//!   over the time it ran or waited on its own I/O (not while the platform queued, parked or
//!   swapped it: `turnpike_worker::worker`'s "Memory billing"). It costs `cpu_seconds x price(class it ran at) + gb_seconds x memory
//!   price` ([`turnpike_policy::class::cost`]). Invocations that never ran (no worker, shard
//!   down) cost nothing; one the guest failed (a trap, a timeout) is billed for what it used.
//! - **The ledger.** Each billed invocation is one row keyed by its invocation id, written
//!   idempotently ([`Store::record`]). A writer task commits the rows that arrived in the
//!   last [`LEDGER_FLUSH`] as one transaction: the response does not wait for it (a commit
//!   per invocation, or a response waiting for one, measured at 40% of the gateway's hello
//!   throughput; `docs/benchmarks.md`). When the gateway stops it drains its connections and
//!   then [`Billing::flush`]es, so a restart loses no row and every success a client saw is
//!   in the ledger; a crash of the process (SIGKILL, power) loses at most the rows of the last
//!   [`LEDGER_FLUSH`] - unbilled, never billed twice. `GET /v1/usage` flushes first, so a
//!   tenant reads its own invocations at once. A commit that keeps failing (the database is
//!   down) moves its rows to the on-disk outbox ([`crate::outbox`]), replayed until the store
//!   takes them: a store outage neither takes the functions down nor loses a row, and while
//!   the outbox is at its bound (`ledger_outbox_rows_max`) new invocations are refused. Only a
//!   row the outbox could not write either (the disk failed too) is lost, counted in
//!   `turnpike_gateway_ledger_failures_total` and logged with its invocation id.
//! - **Budgets.** A tenant's monthly budget (UTC calendar months) is checked before each
//!   invocation it pays for. At fraction `t` of the month, it is over budget when
//!   `spent > monthly x t + headroom x monthly`: spend may run ahead of the pro-rata budget
//!   by the headroom (small overruns are tolerated, as the paper says) and never past
//!   `monthly x (1 + headroom)` in a month. Over budget, `throttle` refuses new invocations
//!   (429, `Retry-After`: when the pro-rata allowance catches up, at least 1 s) and `lower`
//!   runs them at the cheapest class. Spend is read from the store (its daily spend table,
//!   kept with the ledger) at most every [`BOOK_REFRESH`] per tenant, by one request while
//!   the others go on with what was read before, and kept up to date in between with this
//!   gateway's own commits; with several gateways, another's spend shows within that period.
//! - **In flight counts.** Spend is known only when an invocation ends, so a burst admitted
//!   at once would all see the same spend and could overrun by the whole burst. Each
//!   invocation admitted for a tenant with a budget is therefore counted at its *expected*
//!   cost until its row is recorded ([`Hold`]): the check is `spent + in_flight x expected`
//!   against the allowance. The expected cost is a moving average of the tenant's recorded
//!   costs ([`EXPECTED_COST_WEIGHT`]), seeded with this month's mean from the ledger. So
//!   with a gateway, spend passes the allowance by at most the in-flight invocations' costs
//!   above their expectation; a tenant with no invocation yet this month has no expectation,
//!   and its first burst is admitted as before.
//! - **The clock** is a [`Clock`], so tests move through a month at will.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use turnpike_policy::{ClassId, ClassSet};
use turnpike_store::calendar::{month_fraction, month_instant};
use turnpike_store::{Budget, Day, OverBudget, Store, StoreError, UsageEntry};

use crate::outbox::{Outbox, REPLAY_EVERY};

/// How long a tenant's budget and spend are taken from memory before being read again.
pub const BOOK_REFRESH: Duration = Duration::from_secs(5);
/// Ledger rows per transaction, at most.
const MAX_BATCH: usize = 512;
/// How long the ledger writer gathers rows before committing them.
pub const LEDGER_FLUSH: Duration = Duration::from_millis(10);
/// Tries of a failing ledger commit.
const COMMIT_TRIES: u32 = 3;
/// Weight of the newest recorded cost in a tenant's expected cost per invocation (an
/// exponential moving average over about its last 16 invocations).
pub const EXPECTED_COST_WEIGHT: f64 = 1.0 / 16.0;

/// Wall-clock time as the budget rule sees it: Unix seconds.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        turnpike_store::unix_now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(secs: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(secs)))
    }

    pub fn set(&self, secs: i64) {
        self.0.store(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a tenant with `budget` may have spent this month by `now`: the pro-rata budget plus
/// the headroom.
pub fn allowance(budget: &Budget, now: i64) -> f64 {
    budget.monthly * month_fraction(now) + budget.headroom * budget.monthly
}

/// Whether a tenant with `budget` that has spent `spent` this month may run more at `now`:
/// `None` if so, else the seconds until it may (its pro-rata allowance catches up).
pub fn over_budget(budget: &Budget, spent: f64, now: i64) -> Option<u64> {
    if spent <= allowance(budget, now) {
        return None;
    }
    // The moment the allowance reaches the spend: `monthly x t + headroom = spent`.
    let headroom = budget.headroom * budget.monthly;
    let t = if budget.monthly > 0.0 {
        (spent - headroom) / budget.monthly
    } else {
        f64::INFINITY
    };
    let when = if t >= 1.0 {
        Day::of_unix(now).next_month_start().start_unix()
    } else {
        month_instant(now, t)
    };
    Some((when - now).max(1) as u64)
}

/// What the gateway does with a new invocation of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Run it at this class (the asked one, or the cheapest when over a `lower` budget).
    Run(ClassId),
    /// 429: over a `throttle` budget; may retry after this many seconds.
    Throttle(u64),
}

/// A tenant's budget and this month's spend, as last read.
#[derive(Debug, Clone)]
struct Book {
    budget: Option<Budget>,
    month: Day,
    spent: f64,
    /// This month's mean cost per invocation in the ledger (`None`: none yet), to seed the
    /// expected cost of the tenant's invocations in flight.
    mean_cost: Option<f64>,
    read_at: Instant,
}

/// What this gateway has admitted and not yet recorded for a tenant with a budget, and what
/// its invocations are expected to cost.
#[derive(Debug, Default)]
struct InFlight {
    invocations: u64,
    /// Moving average of its recorded costs; `None` until one is known.
    expected_cost: Option<f64>,
}

type InFlightByTenant = Arc<Mutex<HashMap<String, InFlight>>>;

/// One admitted invocation counted in its tenant's spend at its expected cost while this
/// lives: drop it after the invocation's row is recorded (or once it is known that none
/// will be).
#[derive(Debug)]
pub struct Hold {
    in_flight: InFlightByTenant,
    tenant: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut in_flight = turnpike_wire::lock(&self.in_flight);
        if let Some(tenant) = in_flight.get_mut(&self.tenant) {
            tenant.invocations = tenant.invocations.saturating_sub(1);
        }
    }
}

/// What the ledger writer is sent.
#[derive(Debug)]
enum Write {
    Row(UsageEntry),
    /// Commit what has arrived now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The gateway's meter: costs, the ledger writer, budget checks.
#[derive(Debug)]
pub struct Billing {
    store: Store,
    classes: ClassSet,
    memory_price: f64,
    clock: Arc<dyn Clock>,
    books: Arc<Mutex<HashMap<String, Book>>>,
    in_flight: InFlightByTenant,
    writer: mpsc::UnboundedSender<Write>,
    failures: Arc<AtomicU64>,
    recorded: Arc<AtomicU64>,
    /// Rows sent to the writer and not yet committed (or failed): the ledger queue's
    /// length, which the gateway bounds by refusing new invocations
    /// (`ledger_queue_rows_max`, [`Billing::ledger_full`]). The channel is unbounded so that
    /// a row of an invocation that ran is never dropped.
    queued: Arc<AtomicU64>,
    /// Rows in the outbox, waiting for the store to be back.
    outbox_rows: Arc<AtomicU64>,
}

impl Billing {
    /// Starts the ledger writer (a task on the current runtime; it ends with the last
    /// [`Billing`]), which owns `outbox` and replays what it holds.
    pub fn new(
        store: Store,
        classes: ClassSet,
        memory_price: f64,
        clock: Arc<dyn Clock>,
        outbox: Outbox,
    ) -> Self {
        // Bounded by the gateway, not the channel: new invocations are refused while
        // `ledger_queue_rows_max` rows wait ([`Billing::ledger_full`]), so it holds at most that
        // plus the invocations in flight; a row of an invocation that ran is never dropped.
        let (writer, entries) = mpsc::unbounded_channel();
        let failures = Arc::new(AtomicU64::new(0));
        let recorded = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let outbox_rows = Arc::new(AtomicU64::new(outbox.rows()));
        tokio::spawn(write_ledger(
            Ledger {
                store: store.clone(),
                failures: failures.clone(),
                recorded: recorded.clone(),
                outbox,
                outbox_rows: outbox_rows.clone(),
            },
            entries,
            queued.clone(),
        ));
        Self {
            store,
            classes,
            memory_price,
            clock,
            books: Arc::default(),
            in_flight: Arc::default(),
            writer,
            failures,
            recorded,
            queued,
            outbox_rows,
        }
    }

    /// The outbox's rows if it holds `max` or more: new invocations wait.
    pub fn outbox_full(&self, max: u64) -> Option<u64> {
        let rows = self.outbox_rows.load(Ordering::Relaxed);
        (rows >= max).then_some(rows)
    }

    /// Rows waiting in the outbox for the store.
    pub fn outbox_rows(&self) -> u64 {
        self.outbox_rows.load(Ordering::Relaxed)
    }

    /// The ledger queue's length if it is at `max` rows or over: new invocations wait.
    pub fn ledger_full(&self, max: u64) -> Option<u64> {
        let queued = self.queued.load(Ordering::Relaxed);
        (queued >= max).then_some(queued)
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Ledger rows lost: their commit failed and the outbox could not keep them.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Ledger rows this gateway committed.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// What an invocation costs, micro-cents.
    pub fn cost(&self, class: ClassId, cpu_ns: u64, memory_mb_seconds: f64) -> f64 {
        turnpike_policy::class::cost(
            &self.classes,
            class,
            cpu_ns as f64 / 1e9,
            memory_mb_seconds / 1024.0,
            self.memory_price,
        )
    }

    /// Decides a new invocation of `tenant`'s asked to run at `class`. When it may run and
    /// the tenant has a budget, the [`Hold`] counts it in flight until dropped.
    pub async fn admit(
        &self,
        tenant: &str,
        class: ClassId,
    ) -> Result<(Admission, Option<Hold>), StoreError> {
        let book = self.book(tenant).await?;
        let Some(budget) = book.budget else {
            return Ok((Admission::Run(class), None));
        };
        let mut in_flight = turnpike_wire::lock(&self.in_flight);
        let pending = in_flight.entry(tenant.to_string()).or_default();
        if pending.expected_cost.is_none() {
            pending.expected_cost = book.mean_cost;
        }
        let reserved = pending.invocations as f64 * pending.expected_cost.unwrap_or(0.0);
        let admission = match over_budget(&budget, book.spent + reserved, self.clock.now()) {
            None => Admission::Run(class),
            Some(wait) => match budget.over {
                OverBudget::Throttle => Admission::Throttle(wait),
                OverBudget::Lower => Admission::Run(ClassId(0)),
            },
        };
        let hold = matches!(admission, Admission::Run(_)).then(|| {
            pending.invocations += 1;
            Hold {
                in_flight: self.in_flight.clone(),
                tenant: tenant.to_string(),
            }
        });
        Ok((admission, hold))
    }

    /// Invocations of `tenant` admitted and not yet recorded (those of a tenant with a
    /// budget).
    pub fn in_flight(&self, tenant: &str) -> u64 {
        turnpike_wire::lock(&self.in_flight)
            .get(tenant)
            .map_or(0, |t| t.invocations)
    }

    /// `tenant`'s budget and spend this month, for `GET /v1/budget`.
    pub async fn status(&self, tenant: &str) -> Result<(Option<Budget>, Day, f64), StoreError> {
        let book = self.book(tenant).await?;
        Ok((book.budget, book.month, book.spent))
    }

    /// Forgets `tenant`'s book, so the next check reads the store (after `PUT /v1/budget`).
    pub fn forget(&self, tenant: &str) {
        turnpike_wire::lock(&self.books).remove(tenant);
    }

    /// `tenant`'s book: as kept, or read again when older than [`BOOK_REFRESH`]. Only a
    /// tenant's first book of the month is read while its caller waits. A kept book that is
    /// due is read again in the background by one caller's task, while every invocation goes
    /// on using the kept one: an admission never waits on the store for a refresh (which
    /// first commits the ledger's queue, and could take seconds while the store is slow).
    /// If that read fails, the old book stays in use for another period.
    async fn book(&self, tenant: &str) -> Result<Book, StoreError> {
        let month = Day::of_unix(self.clock.now()).month_start();
        {
            let mut books = turnpike_wire::lock(&self.books);
            if let Some(book) = books.get_mut(tenant).filter(|b| b.month == month) {
                if book.read_at.elapsed() >= BOOK_REFRESH {
                    // Claimed: the others see a fresh book until this read is done.
                    book.read_at = Instant::now();
                    let claimed = book.read_at;
                    let reader = self.reader();
                    let tenant = tenant.to_string();
                    tokio::spawn(async move { reader.refresh(&tenant, month, claimed).await });
                }
                return Ok(book.clone());
            }
        }
        let book = self.reader().read(tenant, month).await?;
        turnpike_wire::lock(&self.books).insert(tenant.to_string(), book.clone());
        Ok(book)
    }

    fn reader(&self) -> BookReader {
        BookReader {
            store: self.store.clone(),
            writer: self.writer.clone(),
            books: self.books.clone(),
        }
    }

    /// Returns once every row recorded before the call is committed, or in the outbox while
    /// the store is down (and the outbox replayed, if the store is back).
    pub async fn flush(&self) {
        flush(&self.writer).await;
    }

    /// Hands `entry` to the ledger writer (committed within [`LEDGER_FLUSH`]) and counts its
    /// cost in the tenant's spend at once.
    pub fn record(&self, entry: UsageEntry) {
        let (tenant, cost) = (entry.tenant.clone(), entry.cost);
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.writer.send(Write::Row(entry)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the ledger writer is gone: an invocation is not billed");
            return;
        }
        if let Some(book) = turnpike_wire::lock(&self.books).get_mut(&tenant) {
            book.spent += cost;
        }
        if let Some(pending) = turnpike_wire::lock(&self.in_flight).get_mut(&tenant) {
            pending.expected_cost = Some(match pending.expected_cost {
                Some(expected) => expected + (cost - expected) * EXPECTED_COST_WEIGHT,
                None => cost,
            });
        }
    }
}

/// Returns once every row sent to `writer` before the call is committed (or in the outbox).
async fn flush(writer: &mpsc::UnboundedSender<Write>) {
    let (done, flushed) = oneshot::channel();
    if writer.send(Write::Flush(done)).is_ok() {
        let _ = flushed.await;
    }
}

/// Reads tenants' books from the store, for [`Billing::book`].
struct BookReader {
    store: Store,
    writer: mpsc::UnboundedSender<Write>,
    books: Arc<Mutex<HashMap<String, Book>>>,
}

impl BookReader {
    /// Reads `tenant`'s book again and keeps it, unless it was forgotten or read anew since
    /// the refresh was `claimed` (a budget changed meanwhile: this read may predate it).
    async fn refresh(&self, tenant: &str, month: Day, claimed: Instant) {
        match self.read(tenant, month).await {
            Ok(book) => {
                let mut books = turnpike_wire::lock(&self.books);
                if books.get(tenant).is_some_and(|b| b.read_at == claimed) {
                    books.insert(tenant.to_string(), book);
                }
            }
            Err(e) => tracing::warn!(
                tenant,
                "reading the budget again failed, using the last one read: {e}"
            ),
        }
    }

    async fn read(&self, tenant: &str, month: Day) -> Result<Book, StoreError> {
        // The store's sum must include what this gateway recorded (at most every
        // `BOOK_REFRESH` per tenant, and after a budget change).
        flush(&self.writer).await;
        let budget = self.store.budget(tenant).await?;
        let spent = self.store.spent_since(tenant, month).await?;
        // Only a budget needs the mean (an aggregate over the month's ledger rows).
        let mean_cost = match budget {
            Some(_) => {
                let rows = self
                    .store
                    .usage(tenant, &[], month, month.next_month_start())
                    .await?;
                let (n, cost) = rows.iter().fold((0, 0.0), |(n, c), r| {
                    (n + r.totals.invocations, c + r.totals.cost)
                });
                (n > 0).then(|| cost / n as f64)
            }
            None => None,
        };
        Ok(Book {
            budget,
            month,
            spent,
            mean_cost,
            read_at: Instant::now(),
        })
    }
}

/// What the ledger writer writes to, and its counters.
struct Ledger {
    store: Store,
    failures: Arc<AtomicU64>,
    recorded: Arc<AtomicU64>,
    outbox: Outbox,
    outbox_rows: Arc<AtomicU64>,
}

/// The ledger writer: gathers rows for [`LEDGER_FLUSH`] (or until a flush is asked for, or
/// [`MAX_BATCH`] rows), commits them in one transaction, and answers the flushes. While the
/// outbox holds rows it is replayed at start, every [`REPLAY_EVERY`] however busy the
/// writer is, and before a flush is answered.
async fn write_ledger(
    mut ledger: Ledger,
    mut writes: mpsc::UnboundedReceiver<Write>,
    queued: Arc<AtomicU64>,
) {
    let mut rows: Vec<UsageEntry> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    let mut next_replay = tokio::time::Instant::now();
    while open {
        if ledger.outbox.rows() > 0 && tokio::time::Instant::now() >= next_replay {
            ledger.replay().await;
            next_replay = tokio::time::Instant::now() + REPLAY_EVERY;
        }
        // Wait for the first write (or, with rows in the outbox, the next replay); then
        // gather until the deadline.
        let first = if ledger.outbox.rows() > 0 {
            match tokio::time::timeout_at(next_replay, writes.recv()).await {
                Ok(write) => write,
                Err(_) => continue,
            }
        } else {
            writes.recv().await
        };
        match first {
            Some(Write::Row(row)) => rows.push(row),
            Some(Write::Flush(done)) => flushes.push(done),
            None => open = false,
        }
        let deadline = tokio::time::Instant::now() + LEDGER_FLUSH;
        while open && flushes.is_empty() && rows.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, writes.recv()).await {
                Ok(Some(Write::Row(row))) => rows.push(row),
                Ok(Some(Write::Flush(done))) => flushes.push(done),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        if !rows.is_empty() {
            ledger.commit(&rows).await;
            queued.fetch_sub(rows.len() as u64, Ordering::Relaxed);
            rows.clear();
        }
        if !flushes.is_empty() {
            // A flush (the gateway stopping, a budget read) also takes what waits in the
            // outbox to the store, if it is back.
            ledger.replay().await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

impl Ledger {
    /// Commits `rows`, trying again a little later; if the store keeps failing they go to
    /// the outbox. While the outbox holds rows the store is known to be failing, so one try
    /// is made, not [`COMMIT_TRIES`] (each batch would otherwise hold the writer up).
    async fn commit(&mut self, rows: &[UsageEntry]) {
        let tries = if self.outbox.rows() > 0 {
            1
        } else {
            COMMIT_TRIES
        };
        let mut last_error = None;
        for attempt in 0..tries {
            match self.store.record(rows).await {
                Ok(_) => {
                    self.recorded
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::debug!(rows = rows.len(), attempt, "ledger commit failed: {e}");
                    last_error = Some(e);
                    if attempt + 1 < tries {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
        }
        let why = last_error.map_or_else(String::new, |e| e.to_string());
        match self.outbox.append(rows) {
            Ok(()) => {
                self.outbox_rows
                    .store(self.outbox.rows(), Ordering::Relaxed);
                tracing::warn!(
                    rows = rows.len(),
                    outbox_rows = self.outbox.rows(),
                    "the ledger commit failed; the rows wait in the outbox: {why}"
                );
            }
            Err(e) => {
                self.failures
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                let ids: Vec<i64> = rows.iter().map(|r| r.invocation).collect();
                tracing::error!(
                    rows = rows.len(),
                    invocations = ?ids,
                    "the ledger commit failed ({why}) and so did the outbox ({e}): these invocations are not billed"
                );
            }
        }
    }

    /// Commits what the outbox holds, in batches, and empties it once all are in; stops at
    /// the first failure (the store is still down), to try again in [`REPLAY_EVERY`].
    async fn replay(&mut self) {
        if self.outbox.rows() == 0 {
            return;
        }
        let rows = match self.outbox.read() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("reading the ledger outbox failed: {e}");
                return;
            }
        };
        for batch in rows.chunks(MAX_BATCH) {
            if let Err(e) = self.store.record(batch).await {
                tracing::debug!(rows = rows.len(), "replaying the ledger outbox failed: {e}");
                return;
            }
        }
        match self.outbox.clear() {
            Ok(()) => {
                // Replayed rows were counted neither as recorded nor as failed.
                self.recorded
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.outbox_rows.store(0, Ordering::Relaxed);
                tracing::info!(rows = rows.len(), "the ledger outbox is replayed");
            }
            // Replayed again later: idempotent by invocation id.
            Err(e) => tracing::error!("emptying the replayed ledger outbox failed: {e}"),
        }
    }
}

/// A ledger row of tenant `acme`'s critical `shop/home` that answered 200, using no memory
/// (for this crate's tests).
#[cfg(test)]
pub(crate) fn acme_critical(invocation: i64, at: i64, cpu_ns: i64, cost: f64) -> UsageEntry {
    UsageEntry {
        invocation,
        tenant: "acme".into(),
        app: "shop".into(),
        function: "home".into(),
        class: "critical".into(),
        at,
        status: 200,
        cpu_ns,
        gb_seconds: 0.0,
        cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn outbox(dir: &tempfile::TempDir) -> Outbox {
        Outbox::open(&dir.path().join("ledger-outbox.jsonl")).unwrap()
    }

    /// Billing on `store` at the default classes, its clock on 1 November, its outbox in `dir`.
    fn on_nov_1(store: &Store, dir: &tempfile::TempDir) -> Billing {
        Billing::new(
            store.clone(),
            ClassSet::default_four(),
            1.0,
            ManualClock::at(nov(1)),
            outbox(dir),
        )
    }

    /// Makes `tenant`'s kept book due for its refresh.
    fn make_due(billing: &Billing, tenant: &str) {
        turnpike_wire::lock(&billing.books)
            .get_mut(tenant)
            .unwrap()
            .read_at = Instant::now()
            .checked_sub(BOOK_REFRESH + Duration::from_secs(1))
            .unwrap();
    }

    fn nov(day: i64) -> i64 {
        Day::parse("2026-11-01").unwrap().start_unix() + (day - 1) * DAY
    }

    #[test]
    fn the_budget_rule_allows_pro_rata_spend_plus_headroom() {
        let budget = Budget {
            monthly: 3000.0,
            over: OverBudget::Throttle,
            headroom: 0.1,
        };
        // November has 30 days: 100 a day, plus 300 of headroom.
        assert_eq!(over_budget(&budget, 300.0, nov(1)), None);
        assert_eq!(over_budget(&budget, 301.0, nov(1)), Some(864)); // 1/100 of a day
        assert_eq!(over_budget(&budget, 1800.0, nov(16)), None);
        // 1801 is reached 1/100 of a day after the 16th begins... from the 16th's start.
        assert_eq!(over_budget(&budget, 1801.0, nov(16)), Some(864));
        // On the 30th, 29 days' worth plus the headroom.
        assert_eq!(over_budget(&budget, 3200.0, nov(30)), None);
        assert_eq!(over_budget(&budget, 3201.0, nov(30)), Some(864));
        // Past the whole month and the headroom: wait for December.
        let december = Day::parse("2026-12-01").unwrap().start_unix();
        assert_eq!(
            over_budget(&budget, 3300.5, nov(30)),
            Some((december - nov(30)) as u64)
        );
        // A zero budget allows nothing (but the headroom, which is zero too).
        let zero = Budget {
            monthly: 0.0,
            ..budget
        };
        assert_eq!(over_budget(&zero, 0.0, nov(5)), None);
        assert!(over_budget(&zero, 0.001, nov(5)).is_some());
    }

    /// A burst admitted at once counts its invocations in flight at their expected cost, so
    /// the tenant's spend passes its allowance by at most one invocation's cost, not by the
    /// burst.
    #[tokio::test]
    async fn a_burst_is_admitted_only_up_to_the_allowance_counting_invocations_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        store.create_tenant("acme", false).await.unwrap();
        let budget = Budget {
            monthly: 30.0,
            over: OverBudget::Throttle,
            headroom: 0.0,
        };
        store.set_budget("acme", Some(&budget)).await.unwrap();
        // The 11th of November: an allowance of 10 (1 a day).
        let clock = ManualClock::at(nov(11));
        let classes = ClassSet::default_four();
        let billing = Billing::new(store, classes.clone(), 1.0, clock.clone(), outbox(&dir));
        let top = classes.top();
        let entry = |id: i64| {
            acme_critical(
                id,
                clock.now(),
                500_000_000,
                billing.cost(top, 500_000_000, 0.0),
            )
        };
        let cost = entry(0).cost;
        assert_eq!(cost, 1.0);
        // One invocation earlier this month: spent 1, and what one costs is known.
        billing.record(entry(1));
        billing.flush().await;
        billing.forget("acme");
        // A burst of 50 at once, none finished yet.
        let mut holds = Vec::new();
        let mut throttled = 0;
        for _ in 0..50 {
            match billing.admit("acme", top).await.unwrap() {
                (Admission::Run(_), hold) => holds.push(hold.expect("a budget: held")),
                (Admission::Throttle(_), hold) => {
                    assert!(hold.is_none());
                    throttled += 1;
                }
            }
        }
        assert_eq!(
            holds.len(),
            10,
            "1 spent + 10 in flight reach the allowance"
        );
        assert_eq!((throttled, billing.in_flight("acme")), (40, 10));
        // They finish: each recorded, then no longer in flight.
        for (i, hold) in holds.into_iter().enumerate() {
            billing.record(entry(2 + i as i64));
            drop(hold);
        }
        assert_eq!(billing.in_flight("acme"), 0);
        let (_, _, spent) = billing.status("acme").await.unwrap();
        assert!(
            spent <= allowance(&budget, clock.now()) + cost,
            "spent {spent}: at most one invocation past the allowance"
        );
        // Invocations that end unbilled (never ran) give their place back.
        clock.set(nov(13));
        let (admission, hold) = billing.admit("acme", top).await.unwrap();
        assert_eq!(admission, Admission::Run(top));
        drop(hold);
        assert_eq!(billing.in_flight("acme"), 0);
    }

    #[tokio::test]
    async fn admission_follows_the_tenants_policy_and_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        store.create_tenant("acme", false).await.unwrap();
        let clock = ManualClock::at(nov(1));
        let classes = ClassSet::default_four();
        let billing = Billing::new(
            store.clone(),
            classes.clone(),
            1.0,
            clock.clone(),
            outbox(&dir),
        );
        let top = classes.top();
        assert_eq!(
            billing.admit("acme", top).await.unwrap().0,
            Admission::Run(top)
        );
        store
            .set_budget(
                "acme",
                Some(&Budget {
                    monthly: 30.0,
                    over: OverBudget::Throttle,
                    headroom: 0.0,
                }),
            )
            .await
            .unwrap();
        billing.forget("acme");
        // Spend 10 on November 1st: a third of the month's budget, far ahead of pro rata.
        let spend = |id: i64| {
            acme_critical(
                id,
                clock.now(),
                5_000_000_000,
                billing.cost(top, 5_000_000_000, 0.0),
            )
        };
        billing.record(spend(1));
        billing.flush().await;
        assert_eq!(billing.recorded(), 1);
        let Admission::Throttle(wait) = billing.admit("acme", top).await.unwrap().0 else {
            panic!("not throttled")
        };
        // The allowance reaches 10 on the 11th (1 a day).
        assert_eq!(wait, 10 * DAY as u64);
        clock.set(nov(11));
        assert_eq!(
            billing.admit("acme", top).await.unwrap().0,
            Admission::Run(top)
        );
        // `lower`: over budget, the cheapest class.
        store
            .set_budget(
                "acme",
                Some(&Budget {
                    monthly: 30.0,
                    over: OverBudget::Lower,
                    headroom: 0.0,
                }),
            )
            .await
            .unwrap();
        billing.forget("acme");
        billing.record(spend(2));
        billing.flush().await;
        assert_eq!(
            billing.admit("acme", top).await.unwrap().0,
            Admission::Run(ClassId(0))
        );
        // A new month starts from nothing.
        clock.set(Day::parse("2026-12-01").unwrap().start_unix());
        assert_eq!(
            billing.admit("acme", top).await.unwrap().0,
            Admission::Run(top)
        );
        // The same invocation recorded again is not spent again.
        clock.set(nov(11));
        billing.forget("acme");
        billing.record(spend(2));
        billing.flush().await;
        assert_eq!(store.ledger_len().await.unwrap(), 2);
        let (_, _, spent) = billing.status("acme").await.unwrap();
        assert_eq!(spent, 20.0);
    }

    /// A due refresh first commits the ledger's queue; while the store cannot commit, the
    /// admission that found the book due still answers at once from the kept book.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_due_budget_refresh_never_makes_an_admission_wait_for_the_store() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().unwrap();
        let url = Store::sqlite_url(dir.path());
        let store = Store::open(&url).await.unwrap();
        store.create_tenant("acme", false).await.unwrap();
        let classes = ClassSet::default_four();
        let billing = on_nov_1(&store, &dir);
        let top = classes.top();
        billing.admit("acme", top).await.unwrap();
        // Another connection holds the database's write lock: the ledger writer's commit of
        // this row waits for it.
        let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .unwrap();
        billing.record(acme_critical(1, nov(1), 1_000_000, 1.0));
        make_due(&billing, "acme");
        let (admission, _) = billing.admit("acme", top).await.unwrap();
        assert!(matches!(admission, Admission::Run(c) if c == top));
        // Answered with the row still queued: a refresh on the admission's path would have
        // waited for its commit (or its move to the outbox) first.
        assert_eq!((billing.recorded(), billing.outbox_rows()), (0, 0));
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        billing.flush().await;
        assert_eq!(billing.recorded(), 1);
    }

    /// A book past its refresh is read again by one caller; when that read fails, the book
    /// it had stays in use, and a tenant without one gets the store's error.
    #[tokio::test]
    async fn a_failed_refresh_keeps_the_book_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        store.create_tenant("acme", false).await.unwrap();
        let budget = Budget {
            monthly: 30.0,
            over: OverBudget::Throttle,
            headroom: 0.0,
        };
        store.set_budget("acme", Some(&budget)).await.unwrap();
        let classes = ClassSet::default_four();
        let billing = on_nov_1(&store, &dir);
        let top = classes.top();
        billing.record(acme_critical(1, nov(1), 5_000_000_000, 10.0));
        billing.flush().await;
        assert!(matches!(
            billing.admit("acme", top).await.unwrap().0,
            Admission::Throttle(_)
        ));
        store.close().await;
        // Past its refresh.
        make_due(&billing, "acme");
        assert!(
            matches!(
                billing.admit("acme", top).await.unwrap().0,
                Admission::Throttle(_)
            ),
            "the book read before, still over budget"
        );
        // The failed read claimed the refresh: the next one is due a whole period later.
        let read_at = turnpike_wire::lock(&billing.books)["acme"].read_at;
        assert!(read_at.elapsed() < BOOK_REFRESH);
        billing.forget("acme");
        let error = billing.admit("acme", top).await.unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("closed"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn while_the_store_is_down_the_ledger_bounds_refuse_and_the_outbox_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        let billing = on_nov_1(&store, &dir);
        let row = |invocation| acme_critical(invocation, nov(1), 1_000, 1.0);
        billing.record(row(1));
        billing.flush().await;
        assert_eq!(
            billing.ledger_full(1),
            None,
            "committed: the queue is empty"
        );
        // The store stops answering: the rows wait (the writer tries again) and the bound
        // holds new invocations back until they are done with.
        store.close().await;
        billing.record(row(2));
        billing.record(row(3));
        assert_eq!(billing.ledger_full(2), Some(2));
        assert_eq!(billing.ledger_full(3), None, "under a larger bound");
        billing.flush().await;
        assert_eq!(billing.ledger_full(1), None, "done with: in the outbox");
        assert_eq!(billing.failures(), 0, "nothing lost");
        assert_eq!(billing.outbox_rows(), 2);
        assert_eq!(billing.outbox_full(2), Some(2), "the outbox bound refuses");
        assert_eq!(billing.outbox_full(3), None);
        assert_eq!(billing.recorded(), 1);
        drop(billing);
        // The store is back (a gateway restarted on it): the outbox is replayed into it.
        let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
        let billing = on_nov_1(&store, &dir);
        billing.flush().await;
        assert_eq!(billing.outbox_rows(), 0);
        assert_eq!(billing.recorded(), 2);
        let spent = store
            .spent_since("acme", Day::of_unix(nov(1)).month_start())
            .await
            .unwrap();
        assert_eq!(spent, 3.0, "rows 1, 2 and 3, each once");
    }
}
