//! SQLite backend: the zero-setup default. One file, WAL journal, foreign keys on.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::common::shared_store_impl;
use super::outcome::outcome_store_impl;

const SQLITE_MIGRATIONS: &[Migration] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        3,
        "history",
        include_str!("../../migrations/sqlite/0003_history.sql"),
    ),
    (
        4,
        "webhooks",
        include_str!("../../migrations/sqlite/0004_webhooks.sql"),
    ),
    (
        5,
        "indexes",
        include_str!("../../migrations/sqlite/0005_indexes.sql"),
    ),
    (
        6,
        "launch_writes",
        include_str!("../../migrations/sqlite/0006_launch_writes.sql"),
    ),
];

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let store = SqliteStore { pool };
        store.run_migrations(SQLITE_MIGRATIONS).await?;
        Ok(store)
    }

    /// A single `INSERT … SELECT` holds SQLite's write lock for its whole run,
    /// which already serialises first-user decisions.
    async fn lock_first_user(_tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// `BEGIN IMMEDIATE` takes the write lock at once (waiting up to the busy
    /// timeout), instead of failing when a read later turns into a write.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Multi-row `INSERT`s of 1,000 rows (8,000 parameters, under SQLite's limit).
    /// Clients per `INSERT` statement: 1,000 rows of 12 values stays under
    /// SQLite's limit of 32,766 bound parameters.
    const CLIENT_INSERT_CHUNK: usize = super::common::INSERT_CHUNK;

    /// One multi-row `INSERT` that skips numbers already live in the group.
    async fn insert_client_rows(
        conn: &mut sqlx::SqliteConnection,
        group_id: i64,
        now: chrono::DateTime<chrono::Utc>,
        chunk: &[crate::store::NewClient],
    ) -> Result<u64, sqlx::Error> {
        let mut qb = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO clients (group_id, external_id, name, phone, phone_e164, email, address, category, status, variables, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, c| {
            b.push_bind(group_id)
                .push_bind(&c.external_id)
                .push_bind(&c.name)
                .push_bind(&c.phone)
                .push_bind(&c.phone_e164)
                .push_bind(&c.email)
                .push_bind(&c.address)
                .push_bind(&c.category)
                .push_bind("pending")
                .push_bind(sqlx::types::Json(&c.variables))
                .push_bind(now)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT (group_id, phone_e164) WHERE deleted_at IS NULL DO NOTHING");
        Ok(qb.build().execute(&mut *conn).await?.rows_affected())
    }

    async fn insert_call_records(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: i64,
        group_id: i64,
        now: chrono::DateTime<chrono::Utc>,
        calls: &[crate::store::NewCallRecord],
    ) -> Result<(), sqlx::Error> {
        for chunk in calls.chunks(super::common::INSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO call_records (batch_id, group_id, client_id, recipient_id, phone_e164, status, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, c| {
                b.push_bind(batch_id)
                    .push_bind(group_id)
                    .push_bind(c.client_id)
                    .push_bind(&c.recipient_id)
                    .push_bind(&c.phone_e164)
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// One prepared `UPDATE` per changed call, inside the caller's transaction
    /// (SQLite runs in-process: no round trips to save).
    async fn update_call_statuses(
        tx: &mut Transaction<'_, Sqlite>,
        now: chrono::DateTime<chrono::Utc>,
        changes: &[crate::store::sync::StatusChange],
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "UPDATE call_records SET {} WHERE id = $1",
            super::common::status_change_set("$2", "$3", "$4", "$5", "$6", "$7", "$8", "")
        );
        for change in changes {
            sqlx::query(&sql)
                .bind(change.record_id)
                .bind(&change.recipient_id)
                .bind(&change.status)
                .bind(&change.conversation_id)
                .bind(now)
                .bind(change.reopened)
                .bind(change.started_at)
                .bind(change.ended_at)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The write lock of [`Self::begin_write`] already keeps other writers out.
    async fn lock_migrations(_tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

shared_store_impl!(SqliteStore, Sqlite, "sqlite");
super::sync::sync_store_impl!(SqliteStore, sqlx::Sqlite);
outcome_store_impl!(SqliteStore, Sqlite);
super::history::history_store_impl!(
    SqliteStore,
    sqlx::Sqlite,
    "substr(r.created_at, 1, 13)",
    "SELECT DISTINCT j.key FROM clients c, json_each(CASE WHEN json_valid(c.variables) AND json_type(c.variables) = 'object' THEN c.variables ELSE '{}' END) j WHERE c.group_id = $1",
    "SELECT DISTINCT j.key FROM call_records r, json_each(CASE WHEN json_valid(r.data_collection) AND json_type(r.data_collection) = 'object' THEN r.data_collection ELSE '{}' END) j WHERE r.group_id = $1 AND r.data_collection IS NOT NULL"
);
