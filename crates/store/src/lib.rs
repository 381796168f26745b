//! Turnpike's durable store: only what must survive a restart - tenants and their API keys,
//! components (by content hash), apps with their functions, function versions and routes,
//! budgets, the usage ledger, apps' schedules ([`schedules`]), and asynchronous invocations from their submission until their
//! retention ends (the queue they wait in is a table, [`async_invocations`]). Placement state (queues, idle lists) is soft and lives in
//! the control plane, never here.
//!
//! One implementation serves both databases through sqlx's `Any` driver: embedded SQLite
//! (WAL) by default, `sqlite://PATH`; PostgreSQL for a multi-machine deployment,
//! `postgres://...`. The queries and the migrations ([`migrations`]) are written in the
//! subset both understand: `$N` parameters, `BIGINT`/`DOUBLE PRECISION`/`TEXT`/`BYTEA`
//! columns (SQLite maps them to its own types), no auto-increment (every key is a name, a
//! hash or a given id), `ON CONFLICT DO NOTHING`, sums cast to `BIGINT` (PostgreSQL sums
//! `BIGINT`s as `NUMERIC`, which `Any` cannot read).
//!
//! Every change that touches more than one row runs in one transaction, so a failed request
//! leaves nothing half-written; each starts with a write, so that on SQLite it waits for the
//! write lock rather than failing when another writer went first.

pub mod async_invocations;
pub mod calendar;
pub mod cron;
mod migrations;
mod model;
pub mod schedules;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a store call waits for a database connection before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use async_invocations::{
    AsyncAttempt, AsyncInvocation, AsyncResult, AsyncState, AsyncSubmission, ClaimSkip, Submitted,
};
pub use calendar::Day;
pub use model::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// A name already used (a tenant, an app of another tenant).
    #[error("{0}")]
    Conflict(String),
    /// The request names something the store does not have or the tenant may not use.
    #[error("{0}")]
    Invalid(String),
    /// A bound was reached (a tenant's queue of asynchronous invocations).
    #[error("{0}")]
    Full(String),
    /// The request contradicts an earlier one (an idempotency key reused for another
    /// request).
    #[error("{0}")]
    Unprocessable(String),
    #[error("store URL `{0}`: use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    BadUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool to the store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The ledger's insert for each of [`USAGE_CHUNKS`]' sizes, in that order (made once).
    ledger_inserts: Arc<[String; USAGE_CHUNKS.len()]>,
}

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The SHA-256 of an API key as the store keeps it (lowercase hex).
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many hex digits of a key's hash name it ([`Store::keys`]): 64 bits, enough that two
/// keys of one tenant never share an id.
pub const KEY_ID_CHARS: usize = 16;

/// A key's id: the start of its hash.
pub fn key_id(hash: &str) -> String {
    hash.chars().take(KEY_ID_CHARS).collect()
}

/// A fresh API key: `tp_` and 32 random bytes in hex.
fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("tp_{hex}")
}

impl Store {
    /// The embedded store's URL for a data directory (`DIR/turnpike.db`).
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("turnpike.db").display()
        )
    }

    /// Connects and brings the schema up to date (every process may do this at once; one
    /// wins each migration, the others see it done).
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        if backend == Backend::Sqlite {
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .map(|p| p.split('?').next().unwrap_or(p))
            {
                if let Some(dir) = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Invalid(format!("data directory {}: {e}", dir.display()))
                    })?;
                }
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // A call fails after this instead of sqlx's 30 s while the database is down:
            // the gateway's ledger moves its rows to the outbox, and a request waiting on the
            // store gets its 503 while its client still waits.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: a commit survives a
                        // crash of the process (not of the machine's power) without an fsync.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Self {
            pool,
            backend,
            ledger_inserts: Arc::new(USAGE_CHUNKS.map(|rows| insert_usage_sql(backend, rows))),
        };
        migrations::run(&store.pool).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- Tenants and keys ---

    /// Creates a tenant and its first key (returned: the only time it exists in clear).
    pub async fn create_tenant(&self, name: &str, admin: bool) -> Result<(Tenant, String)> {
        check_name("tenant", name)?;
        let key = new_key();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (name, admin, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(i64::from(admin))
        .bind(unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a tenant named `{name}` exists already"
            )));
        }
        insert_key(&mut tx, name, &key).await?;
        tx.commit().await?;
        let tenant = Tenant {
            concurrency_max: None,
            name: name.to_string(),
            admin,
        };
        Ok((tenant, key))
    }

    /// A new key for an existing tenant.
    pub async fn create_key(&self, tenant: &str) -> Result<String> {
        let key = new_key();
        let mut tx = self.pool.begin().await?;
        insert_key(&mut tx, tenant, &key).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// `tenant`'s keys, oldest first: each by its id (the first [`KEY_ID_CHARS`] hex digits
    /// of its hash; the key itself is not kept) and creation time.
    pub async fn keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT hash, created_at FROM api_keys WHERE tenant = $1 ORDER BY created_at, hash",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    id: key_id(&r.try_get::<String, _>("hash")?),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Revokes `tenant`'s key `id` (as [`Store::keys`] names it): whether it had one. A
    /// tenant's last key is refused ([`StoreError::Conflict`]): it would lock itself out.
    pub async fn revoke_key(&self, tenant: &str, id: &str) -> Result<bool> {
        if id.len() != KEY_ID_CHARS || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        // A write first (see the module's note on SQLite's write lock): the delete, undone
        // below if it took the last key.
        let deleted = sqlx::query(&format!(
            "DELETE FROM api_keys WHERE tenant = $1 AND SUBSTR(hash, 1, {KEY_ID_CHARS}) = $2"
        ))
        .bind(tenant)
        .bind(id.to_ascii_lowercase())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        let left = sqlx::query("SELECT COUNT(*) AS n FROM api_keys WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("n")?;
        if left == 0 {
            return Err(StoreError::Conflict(format!(
                "key {id} is the last key of `{tenant}`: create another first (turnpike keys create)"
            )));
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The tenant a key belongs to.
    pub async fn tenant_by_key(&self, key: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT t.name, t.admin, t.concurrency_max FROM api_keys k JOIN tenants t ON t.name = k.tenant WHERE k.hash = $1",
        )
        .bind(key_hash(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| tenant_of(&r)).transpose()?)
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT name, admin, concurrency_max FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| tenant_of(&r)).transpose()?)
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT name, admin, concurrency_max FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(tenant_of).collect::<Result<_, _>>()?)
    }

    /// Sets (or with `None` lifts) `tenant`'s concurrency limit; whether the tenant exists.
    /// Gateways pick it up with their routing table (it changes the routing version).
    pub async fn set_tenant_concurrency_max(&self, tenant: &str, max: Option<u32>) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        bump_routing_version(&mut tx).await?;
        let updated = sqlx::query("UPDATE tenants SET concurrency_max = $1 WHERE name = $2")
            .bind(max.map(i64::from))
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every tenant's concurrency limit, of those that have one: what a gateway routes by.
    pub async fn tenant_concurrency_limits(&self) -> Result<BTreeMap<String, u32>> {
        let rows = sqlx::query(
            "SELECT name, concurrency_max FROM tenants WHERE concurrency_max IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    r.try_get::<i64, _>("concurrency_max")? as u32,
                ))
            })
            .collect()
    }

    /// Whether an admin tenant exists (`turnpike up` creates one on an empty store).
    pub async fn has_admin(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tenants WHERE admin = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    // --- Components ---

    /// Stores a component's bytes under its content hash and records that `tenant` may use
    /// it. Returns whether the bytes were new to the store.
    pub async fn put_component(&self, tenant: &str, hash: &str, bytes: &[u8]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "INSERT INTO components (hash, bytes, size, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(bytes.to_vec())
        .bind(bytes.len() as i64)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let owned = sqlx::query(
            "INSERT INTO component_owners (hash, tenant) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(new || owned)
    }

    /// A component's bytes by content hash.
    pub async fn component(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT bytes FROM components WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<Vec<u8>, _>("bytes")).transpose()?)
    }

    /// Whether `tenant` uploaded the component `hash`.
    pub async fn owns_component(&self, tenant: &str, hash: &str) -> Result<bool> {
        owns(&self.pool, tenant, hash).await
    }

    // --- Apps, functions, routes ---

    /// Creates or replaces `tenant`'s app `name` in one transaction: its functions (a new
    /// version for each whose hash changed) and its routes. Refused, with nothing written:
    /// an app name another tenant has, a hash the tenant has not uploaded, a route naming a
    /// function the app does not have, two routes with one method and path.
    pub async fn deploy_app(&self, tenant: &str, name: &str, spec: &AppSpec) -> Result<App> {
        check_name("app", name)?;
        spec.check()?;
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        bump_routing_version(&mut tx).await?;
        let owner = owner_of(&mut *tx, name).await?;
        match owner {
            Some(owner) if owner != tenant => {
                return Err(StoreError::Conflict(format!(
                    "the app name `{name}` is taken: choose another"
                )))
            }
            Some(_) => {
                sqlx::query("UPDATE apps SET deployed_at = $1 WHERE name = $2")
                    .bind(now)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query("INSERT INTO apps (name, tenant, deployed_at) VALUES ($1, $2, $3)")
                    .bind(name)
                    .bind(tenant)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let old: Vec<(String, String, i64)> =
            sqlx::query("SELECT name, hash, deployed_at FROM functions WHERE app = $1")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get("name")?,
                        r.try_get("hash")?,
                        r.try_get("deployed_at")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()?;
        sqlx::query("DELETE FROM functions WHERE app = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM routes WHERE app = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for (function, hash) in &spec.functions {
            if !owns(&mut *tx, tenant, hash).await? {
                return Err(StoreError::Invalid(format!(
                    "function `{function}`: no component {hash} was uploaded by this tenant (POST /v1/components first)"
                )));
            }
            let unchanged = old.iter().find(|(n, h, _)| n == function && h == hash);
            let deployed_at = unchanged.map_or(now, |(_, _, at)| *at);
            sqlx::query(
                "INSERT INTO functions (app, name, hash, deployed_at, concurrency_max) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(name)
            .bind(function)
            .bind(hash)
            .bind(deployed_at)
            .bind(spec.concurrency_max.get(function).copied())
            .execute(&mut *tx)
            .await?;
            if unchanged.is_none() {
                sqlx::query(
                    "INSERT INTO function_versions (app, name, hash, deployed_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(function)
                .bind(hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        schedules::replace(&mut tx, name, &spec.schedules, now * 1000).await?;
        for route in &spec.routes {
            sqlx::query(
                "INSERT INTO routes (app, method, path, function, class, asynchronous, retries) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(name)
            .bind(route.method.clone().unwrap_or_default())
            .bind(&route.path)
            .bind(&route.function)
            .bind(&route.class)
            .bind(i64::from(route.asynchronous))
            .bind(i64::from(route.retries))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.app(tenant, name)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("app `{name}` vanished after deploy")))
    }

    /// `tenant`'s app `name`; `None` if it does not exist or is another tenant's.
    pub async fn app(&self, tenant: &str, name: &str) -> Result<Option<App>> {
        Ok(self.load_apps(Some(tenant), Some(name)).await?.pop())
    }

    /// Every app of `tenant`, by name.
    pub async fn apps(&self, tenant: &str) -> Result<Vec<App>> {
        self.load_apps(Some(tenant), None).await
    }

    /// Every app of every tenant: what a gateway routes by.
    pub async fn all_apps(&self) -> Result<Vec<App>> {
        self.load_apps(None, None).await
    }

    /// Deletes `tenant`'s app; whether there was one. Its usage stays in the ledger.
    pub async fn delete_app(&self, tenant: &str, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        bump_routing_version(&mut tx).await?;
        if owner_of(&mut *tx, name).await?.as_deref() != Some(tenant) {
            return Ok(false);
        }
        for table in ["functions", "routes", "schedules"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE app = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM apps WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A number that changes whenever any app's routes or functions change: gateways poll
    /// it to know when to reload their routing table.
    pub async fn routing_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'routing'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("value"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Apps, by name - of `tenant` and named `name` when given: three queries, however
    /// many apps.
    async fn load_apps(&self, tenant: Option<&str>, name: Option<&str>) -> Result<Vec<App>> {
        let filters: Vec<(&str, &str)> = [("a.tenant", tenant), ("a.name", name)]
            .into_iter()
            .filter_map(|(column, value)| Some((column, value?)))
            .collect();
        let condition: Vec<String> = filters
            .iter()
            .enumerate()
            .map(|(i, (column, _))| format!("{column} = ${}", i + 1))
            .collect();
        let filter = if condition.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", condition.join(" AND "))
        };
        let values: Vec<&str> = filters.iter().map(|(_, value)| *value).collect();
        let values = &values;
        let fetch = |sql: String| async move {
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(*value);
            }
            query.fetch_all(&self.pool).await
        };
        let mut apps: BTreeMap<String, App> = BTreeMap::new();
        for r in fetch(format!("SELECT a.name, a.tenant FROM apps a{filter}")).await? {
            let name: String = r.try_get("name")?;
            let app = App {
                name: name.clone(),
                tenant: r.try_get("tenant")?,
                functions: Vec::new(),
                routes: Vec::new(),
            };
            apps.insert(name, app);
        }
        let functions = fetch(format!(
            "SELECT f.app, f.name, f.hash, f.deployed_at, f.concurrency_max FROM functions f \
             JOIN apps a ON a.name = f.app{filter} ORDER BY f.app, f.name"
        ))
        .await?;
        for r in functions {
            if let Some(app) = apps.get_mut(&r.try_get::<String, _>("app")?) {
                app.functions.push(Function {
                    name: r.try_get("name")?,
                    hash: r.try_get("hash")?,
                    deployed_at: r.try_get("deployed_at")?,
                    concurrency_max: r
                        .try_get::<Option<i64>, _>("concurrency_max")?
                        .map(|n| n as u32),
                });
            }
        }
        let routes = fetch(format!(
            "SELECT r.app, r.method, r.path, r.function, r.class, r.asynchronous, r.retries FROM routes r \
             JOIN apps a ON a.name = r.app{filter} ORDER BY r.app, r.path, r.method"
        ))
        .await?;
        for r in routes {
            if let Some(app) = apps.get_mut(&r.try_get::<String, _>("app")?) {
                let method: String = r.try_get("method")?;
                app.routes.push(RouteSpec {
                    method: (!method.is_empty()).then_some(method),
                    path: r.try_get("path")?,
                    function: r.try_get("function")?,
                    class: r.try_get("class")?,
                    asynchronous: r.try_get::<i64, _>("asynchronous")? != 0,
                    retries: r.try_get::<i64, _>("retries")? as u32,
                });
            }
        }
        Ok(apps.into_values().collect())
    }

    /// Every version a function of `tenant`'s app has had, oldest first: `(hash, deployed
    /// at)`.
    pub async fn function_versions(
        &self,
        tenant: &str,
        app: &str,
        function: &str,
    ) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT v.hash, v.deployed_at FROM function_versions v JOIN apps a ON a.name = v.app \
             WHERE v.app = $1 AND v.name = $2 AND a.tenant = $3 ORDER BY v.deployed_at, v.hash",
        )
        .bind(app)
        .bind(function)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("hash")?, r.try_get("deployed_at")?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    // --- Budgets ---

    pub async fn budget(&self, tenant: &str) -> Result<Option<Budget>> {
        let row = sqlx::query(
            "SELECT budget_monthly, budget_over, budget_headroom FROM tenants WHERE name = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let monthly: Option<f64> = row.try_get("budget_monthly")?;
        let over: String = row.try_get("budget_over")?;
        Ok(monthly.map(|monthly| Budget {
            monthly,
            over: OverBudget::parse(&over).unwrap_or(OverBudget::Throttle),
            headroom: row.try_get("budget_headroom").unwrap_or(DEFAULT_HEADROOM),
        }))
    }

    /// Sets (or with `None` removes) `tenant`'s monthly budget.
    pub async fn set_budget(&self, tenant: &str, budget: Option<&Budget>) -> Result<()> {
        if let Some(b) = budget {
            b.check()?;
        }
        sqlx::query(
            "UPDATE tenants SET budget_monthly = $1, budget_over = $2, budget_headroom = $3 WHERE name = $4",
        )
        .bind(budget.map(|b| b.monthly))
        .bind(budget.map_or(OverBudget::Throttle, |b| b.over).as_str())
        .bind(budget.map_or(DEFAULT_HEADROOM, |b| b.headroom))
        .bind(tenant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- The usage ledger ---

    /// Records invocations in one transaction. Idempotent by invocation id: an entry whose
    /// id is in the ledger already is skipped, so a retried write never counts twice. The
    /// new entries' costs are added to their tenants' daily spend (what
    /// [`Store::spent_since`] reads) in the same transaction. Returns how many were new.
    pub async fn record(&self, entries: &[UsageEntry]) -> Result<u64> {
        // Multi-row statements: a batch costs a few round trips to the database, not one per
        // row. They come in a few fixed sizes (see [`usage_chunks`]) so that every
        // connection's prepared-statement cache keeps them: with a statement per batch length,
        // re-parsing them was ~4% of the gateway's CPU at 6,000 invocations/s. Each returns
        // the rows it inserted (not those skipped), whose costs go to `spend`.
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        let mut spend: BTreeMap<(String, String), f64> = BTreeMap::new();
        for chunk in usage_chunks(entries) {
            let query = bind_usage(sqlx::query(self.ledger_insert(chunk.len())), chunk);
            for row in query.fetch_all(&mut *tx).await? {
                new += 1;
                let key = (row.try_get("tenant")?, row.try_get("day")?);
                *spend.entry(key).or_insert(0.0) += row.try_get::<f64, _>("cost")?;
            }
        }
        // In key order, so that gateways committing at once take the rows' locks in the same
        // order (PostgreSQL).
        for ((tenant, day), cost) in spend {
            sqlx::query(
                "INSERT INTO spend (tenant, day, cost) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, day) DO UPDATE SET cost = spend.cost + excluded.cost",
            )
            .bind(tenant)
            .bind(day)
            .bind(cost)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// The ledger's insert of `rows` rows, one of [`USAGE_CHUNKS`]' sizes.
    fn ledger_insert(&self, rows: usize) -> &str {
        let i = USAGE_CHUNKS
            .iter()
            .position(|&n| n == rows)
            .expect("ledger chunks come in USAGE_CHUNKS' sizes");
        &self.ledger_inserts[i]
    }

    /// `tenant`'s usage from `from` to `to` (both included), summed by the columns `by`, in
    /// their order.
    pub async fn usage(
        &self,
        tenant: &str,
        by: &[UsageKey],
        from: Day,
        to: Day,
    ) -> Result<Vec<UsageRow>> {
        let columns: Vec<&str> = by.iter().map(|k| k.column()).collect();
        let group = if columns.is_empty() {
            String::new()
        } else {
            format!(", {}", columns.join(", "))
        };
        let grouping = if columns.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {0} ORDER BY {0}", columns.join(", "))
        };
        let sql = format!(
            "SELECT COUNT(*) AS invocations, CAST(COALESCE(SUM(cpu_ns), 0) AS BIGINT) AS cpu_ns, \
             COALESCE(SUM(gb_seconds), 0.0) AS gb_seconds, COALESCE(SUM(cost), 0.0) AS cost{group} \
             FROM ledger WHERE tenant = $1 AND day >= $2 AND day <= $3{grouping}"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(from.to_string())
            .bind(to.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let keys = by
                    .iter()
                    .map(|k| Ok((*k, r.try_get::<String, _>(k.column())?)))
                    .collect::<Result<_, sqlx::Error>>()?;
                Ok(UsageRow {
                    keys,
                    totals: totals_of(r)?,
                })
            })
            .collect()
    }

    /// What `tenant` has spent from the first instant of `from` on (micro-cents): the sum of
    /// its daily spend, one row a day.
    pub async fn spent_since(&self, tenant: &str, from: Day) -> Result<f64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(cost), 0.0) AS cost FROM spend WHERE tenant = $1 AND day >= $2",
        )
        .bind(tenant)
        .bind(from.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("cost")?)
    }

    /// Entries in the ledger, all tenants.
    pub async fn ledger_len(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM ledger")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// `entries` in chunks of [`USAGE_CHUNKS`]' sizes, largest first.
fn usage_chunks(mut entries: &[UsageEntry]) -> Vec<&[UsageEntry]> {
    let mut chunks = Vec::new();
    for size in USAGE_CHUNKS {
        while entries.len() >= size {
            let (chunk, rest) = entries.split_at(size);
            chunks.push(chunk);
            entries = rest;
        }
    }
    chunks
}

/// Rows per ledger statement. Each size is one prepared statement per connection; the
/// largest keeps the parameters (11 a row) within both databases' limits.
const USAGE_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// The ledger's insert of `rows` rows in one statement, skipping ids already there and
/// returning each inserted row's tenant, day and cost. SQLite's parameters are anonymous
/// (`?`): sqlx looks each named one up by number, a linear search in SQLite that made
/// binding quadratic in the row count (9% of the gateway's CPU at 6,000 invocations/s).
/// PostgreSQL needs `$N`.
fn insert_usage_sql(backend: Backend, rows: usize) -> String {
    const COLUMNS: usize = 11;
    let mut sql = String::from(
        "INSERT INTO ledger (invocation, tenant, app, function, class, day, at, status, cpu_ns, gb_seconds, cost) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let first = row * COLUMNS + 1;
        let params: Vec<String> = (first..first + COLUMNS)
            .map(|p| match backend {
                Backend::Sqlite => "?".to_string(),
                Backend::Postgres => format!("${p}"),
            })
            .collect();
        sql.push('(');
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING tenant, day, cost");
    sql
}

/// Binds `entries` to [`insert_usage_sql`]'s statement.
fn bind_usage<'q>(mut query: AnyQuery<'q>, entries: &'q [UsageEntry]) -> AnyQuery<'q> {
    for e in entries {
        query = query
            .bind(e.invocation)
            .bind(&e.tenant)
            .bind(&e.app)
            .bind(&e.function)
            .bind(&e.class)
            .bind(Day::of_unix(e.at).to_string())
            .bind(e.at)
            .bind(i64::from(e.status))
            .bind(e.cpu_ns)
            .bind(e.gb_seconds)
            .bind(e.cost);
    }
    query
}

/// The tenant that has the app `name`, if any.
async fn owner_of<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    name: &str,
) -> Result<Option<String>> {
    let row = sqlx::query("SELECT tenant FROM apps WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| r.try_get::<String, _>("tenant")).transpose()?)
}

/// Whether `tenant` uploaded the component `hash`.
async fn owns<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    tenant: &str,
    hash: &str,
) -> Result<bool> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM component_owners WHERE hash = $1 AND tenant = $2")
            .bind(hash)
            .bind(tenant)
            .fetch_one(db)
            .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

fn tenant_of(row: &AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        name: row.try_get("name")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        concurrency_max: row
            .try_get::<Option<i64>, _>("concurrency_max")?
            .map(|n| n as u32),
    })
}

fn totals_of(row: &AnyRow) -> Result<UsageTotals, StoreError> {
    Ok(UsageTotals {
        invocations: row.try_get::<i64, _>("invocations")? as u64,
        cpu_seconds: row.try_get::<i64, _>("cpu_ns")? as f64 / 1e9,
        gb_seconds: row.try_get("gb_seconds")?,
        cost: row.try_get("cost")?,
    })
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    key: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO api_keys (hash, tenant, created_at) VALUES ($1, $2, $3)")
        .bind(key_hash(key))
        .bind(tenant)
        .bind(unix_now())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Bumps the routing version. A transaction that changes apps does this first: its first
/// statement is then a write, which on SQLite waits for the write lock (busy timeout) - a
/// transaction that read first and wrote later would fail at once with "database is locked"
/// when another writer had moved on meanwhile.
async fn bump_routing_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'routing'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}
