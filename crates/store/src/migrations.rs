//! The schema, as numbered migrations run in order at every [`crate::Store::open`]. One set
//! for SQLite and PostgreSQL: column types both accept (SQLite gives `BIGINT` integer
//! affinity, `DOUBLE PRECISION` real, `BYTEA` keeps blobs as they are), no auto-increment.
//!
//! Append a migration to change the schema; never edit one that has shipped.

use std::collections::BTreeSet;

use sqlx::{AnyPool, Row};

/// `(version, statements)`.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE tenants (
            name TEXT PRIMARY KEY,
            admin BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            budget_monthly DOUBLE PRECISION,
            budget_over TEXT NOT NULL DEFAULT 'throttle',
            budget_headroom DOUBLE PRECISION NOT NULL DEFAULT 0.05)",
            // Only the SHA-256 of a key is kept.
            "CREATE TABLE api_keys (
            hash TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants (name),
            created_at BIGINT NOT NULL)",
            // Content-addressed: one copy of each component, whoever uploaded it.
            "CREATE TABLE components (
            hash TEXT PRIMARY KEY,
            bytes BYTEA NOT NULL,
            size BIGINT NOT NULL,
            created_at BIGINT NOT NULL)",
            "CREATE TABLE component_owners (
            hash TEXT NOT NULL REFERENCES components (hash),
            tenant TEXT NOT NULL REFERENCES tenants (name),
            PRIMARY KEY (hash, tenant))",
            "CREATE TABLE apps (
            name TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants (name),
            deployed_at BIGINT NOT NULL)",
            "CREATE TABLE functions (
            app TEXT NOT NULL REFERENCES apps (name),
            name TEXT NOT NULL,
            hash TEXT NOT NULL REFERENCES components (hash),
            deployed_at BIGINT NOT NULL,
            PRIMARY KEY (app, name))",
            "CREATE TABLE function_versions (
            app TEXT NOT NULL,
            name TEXT NOT NULL,
            hash TEXT NOT NULL REFERENCES components (hash),
            deployed_at BIGINT NOT NULL,
            PRIMARY KEY (app, name, hash, deployed_at))",
            // `method` is '' for every method.
            "CREATE TABLE routes (
            app TEXT NOT NULL REFERENCES apps (name),
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            function TEXT NOT NULL,
            class TEXT NOT NULL,
            PRIMARY KEY (app, method, path))",
            // One row per invocation, by its id: written idempotently. No foreign keys: usage
            // outlives the app it was spent on.
            "CREATE TABLE ledger (
            invocation BIGINT PRIMARY KEY,
            tenant TEXT NOT NULL,
            app TEXT NOT NULL,
            function TEXT NOT NULL,
            class TEXT NOT NULL,
            day TEXT NOT NULL,
            at BIGINT NOT NULL,
            status BIGINT NOT NULL,
            cpu_ns BIGINT NOT NULL,
            gb_seconds DOUBLE PRECISION NOT NULL,
            cost DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX ledger_by_tenant_day ON ledger (tenant, day)",
            // Counters gateways poll (`routing`: bumped by every deploy and delete).
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO counters (name, value) VALUES ('routing', 0)",
        ],
    ),
    (
        2,
        &[
            // Each tenant's spend by day, kept with the ledger in the same transaction, so a
            // budget check sums at most a month of rows rather than every invocation of the
            // month (it scanned the ledger: ~1 s of CPU at 250,000 rows).
            "CREATE TABLE spend (
                tenant TEXT NOT NULL,
                day TEXT NOT NULL,
                cost DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (tenant, day))",
            "INSERT INTO spend (tenant, day, cost)
                SELECT tenant, day, SUM(cost) FROM ledger GROUP BY tenant, day",
        ],
    ),
    (
        3,
        &[
            // Routes may be asynchronous (every request answered 202 and run from the
            // queue below) and retry the function's own failures.
            "ALTER TABLE routes ADD COLUMN asynchronous BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE routes ADD COLUMN retries BIGINT NOT NULL DEFAULT 0",
            // Asynchronous invocations (see `crate::async_invocations`): the queue itself.
            // Times are Unix milliseconds.
            "CREATE TABLE async_invocations (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                app TEXT NOT NULL,
                function TEXT NOT NULL,
                class TEXT NOT NULL,
                priority BIGINT NOT NULL,
                method TEXT NOT NULL,
                path TEXT NOT NULL,
                headers TEXT NOT NULL,
                body BYTEA NOT NULL,
                retries BIGINT NOT NULL,
                idempotency_key TEXT,
                request_digest TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts BIGINT NOT NULL,
                guest_failures BIGINT NOT NULL,
                platform_failures BIGINT NOT NULL,
                not_before BIGINT NOT NULL,
                lease_owner TEXT,
                lease_until BIGINT,
                created_at BIGINT NOT NULL,
                started_at BIGINT,
                finished_at BIGINT,
                invocation BIGINT,
                status BIGINT,
                result_headers TEXT,
                result_body BYTEA,
                result_truncated BIGINT NOT NULL,
                error TEXT)",
            "CREATE UNIQUE INDEX async_by_key ON async_invocations (tenant, idempotency_key)",
            "CREATE INDEX async_due ON async_invocations (class, state, not_before)",
            "CREATE INDEX async_by_tenant ON async_invocations (tenant, state, created_at)",
            "CREATE INDEX async_by_lease ON async_invocations (lease_owner)",
        ],
    ),
    (
        4,
        &[
            // Apps' schedules (see `crate::schedules`): `next_at` is the compare-and-set
            // that makes one gateway fire each tick. Unix milliseconds.
            "CREATE TABLE schedules (
                app TEXT NOT NULL REFERENCES apps (name),
                key TEXT NOT NULL,
                cron TEXT NOT NULL,
                function TEXT NOT NULL,
                path TEXT NOT NULL,
                method TEXT NOT NULL,
                class TEXT NOT NULL,
                next_at BIGINT,
                last_at BIGINT,
                last_invocation TEXT,
                PRIMARY KEY (app, key))",
            "CREATE INDEX schedules_due ON schedules (next_at)",
        ],
    ),
    (
        5,
        &[
            // Concurrency limits (`turnpike_policy::concurrency`): NULL for none.
            "ALTER TABLE functions ADD COLUMN concurrency_max BIGINT",
            "ALTER TABLE tenants ADD COLUMN concurrency_max BIGINT",
        ],
    ),
];

/// Runs the migrations the store has not had yet, each in its own transaction.
pub(crate) async fn run(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    for (version, statements) in MIGRATIONS {
        if applied(pool).await?.contains(version) {
            continue;
        }
        let result = async {
            let mut tx = pool.begin().await?;
            for statement in *statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::unix_now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        // Another process may have run it at the same moment: then it is there now.
        if let Err(e) = result {
            if !applied(pool).await?.contains(version) {
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn applied(pool: &AnyPool) -> Result<BTreeSet<i64>, sqlx::Error> {
    sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("version"))
        .collect()
}
