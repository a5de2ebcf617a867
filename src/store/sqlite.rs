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
    (
        7,
        "launch_rows",
        include_str!("../../migrations/sqlite/0007_launch_rows.sql"),
    ),
    (
        8,
        "webhook_lookups",
        include_str!("../../migrations/sqlite/0008_webhook_lookups.sql"),
    ),
    (
        10,
        "token_version",
        include_str!("../../migrations/sqlite/0010_token_version.sql"),
    ),
    (
        13,
        "clients_count",
        include_str!("../../migrations/sqlite/0013_clients_count.sql"),
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
        store.run_migrations(Self::MIGRATIONS).await?;
        Ok(store)
    }

    const MIGRATIONS: &'static [Migration] = SQLITE_MIGRATIONS;
    const HAS_MIGRATIONS_TABLE: &'static str =
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations')";

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

    /// The write lock of [`Self::begin_write`] already keeps every other
    /// writer out of the group's count.
    async fn lock_group(
        _conn: &mut sqlx::SqliteConnection,
        _group_id: i64,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Imports take turns at the write lock anyway, after reading their file.
    async fn import_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        None
    }

    /// Clients per `INSERT` statement: 1,000 rows of 12 values stays under
    /// SQLite's limit of 32,766 bound parameters.
    const CLIENT_INSERT_CHUNK: usize = super::common::INSERT_CHUNK;
    /// The whole file is received (chunk by chunk, not one growing list)
    /// before the transaction starts: SQLite has one writer, and holding its
    /// lock while a file is parsed would hold up every other write (webhooks,
    /// the sync) for that long.
    const STREAM_CLIENTS: bool = false;

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

    /// One `INSERT … SELECT FROM json_each(?)` per batch: the rows travel as a
    /// single JSON text that SQLite unpacks itself, instead of 80,000 values
    /// bound one by one through the driver.
    async fn insert_call_records(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: i64,
        group_id: i64,
        now: chrono::DateTime<chrono::Utc>,
        calls: &[crate::store::NewCallRecord],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<(Option<i64>, Option<&str>, &str)> = calls
            .iter()
            .map(|c| {
                (
                    c.client_id,
                    c.recipient_id.as_deref(),
                    c.phone_e164.as_str(),
                )
            })
            .collect();
        let rows = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO call_records (batch_id, group_id, client_id, recipient_id, phone_e164, status, created_at, updated_at)
             SELECT $1, $2, value ->> 0, value ->> 1, value ->> 2, 'pending', $3, $3
             FROM json_each($4) ORDER BY key",
        )
        .bind(batch_id)
        .bind(group_id)
        .bind(now)
        .bind(rows)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The clients of the batch's call records just inserted.
    async fn mark_contacted(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: i64,
        now: chrono::DateTime<chrono::Utc>,
        _calls: &[crate::store::NewCallRecord],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(super::common::CONTACT_BATCH_CLIENTS)
            .bind(batch_id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A group's live clients in pages of 10,000, each page one row holding a
    /// JSON array built by SQLite: decoding 100,000 rows one by one through the
    /// driver's worker thread cost about twice as much as parsing the arrays.
    async fn load_launch_clients(
        pool: &SqlitePool,
        group_id: i64,
    ) -> Result<Vec<crate::store::LaunchClient>, sqlx::Error> {
        const PAGE: i64 = 10_000;
        let mut clients = Vec::new();
        let mut after = 0_i64;
        // One read transaction: all pages see the same clients.
        let mut tx = pool.begin().await?;
        loop {
            let page: Option<String> = sqlx::query_scalar(
                "SELECT json_group_array(json_array(id, name, phone_e164, email, json(variables)))
                 FROM (SELECT id, name, phone_e164, email, variables FROM clients
                       WHERE group_id = $1 AND deleted_at IS NULL AND id > $2 ORDER BY id LIMIT $3)",
            )
            .bind(group_id)
            .bind(after)
            .bind(PAGE)
            .fetch_one(&mut *tx)
            .await?;
            let rows = launch_page(page.as_deref()).map_err(|e| sqlx::Error::Decode(e.into()))?;
            let Some(last) = rows.last().map(|c| c.id) else {
                break;
            };
            let full = rows.len() as i64 == PAGE;
            clients.extend(rows);
            if !full {
                break;
            }
            after = last;
        }
        tx.rollback().await?;
        Ok(clients)
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

/// One page of SQLite's launch query: `[[id, name, phone_e164, email, variables], …]`
/// (SQL `NULL` when the page is empty), sorted by id (the aggregate's order is
/// not promised; the launch's is by id).
fn launch_page(page: Option<&str>) -> anyhow::Result<Vec<crate::store::LaunchClient>> {
    type Row = (
        i64,
        Option<String>,
        String,
        Option<String>,
        serde_json::Map<String, serde_json::Value>,
    );
    let mut rows: Vec<Row> = serde_json::from_str(page.unwrap_or("[]"))?;
    rows.sort_unstable_by_key(|row| row.0);
    Ok(rows
        .into_iter()
        .map(
            |(id, name, phone_e164, email, variables)| crate::store::LaunchClient {
                id,
                name,
                phone_e164,
                email,
                variables,
            },
        )
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_page_is_sorted_by_id_and_an_empty_page_is_null() {
        assert!(launch_page(None).unwrap().is_empty());
        let page = r#"[[9,"Ana","+573001234567",null,{"monto":"1"}],[3,null,"+573001234568","b@x.co",{}]]"#;
        let clients = launch_page(Some(page)).unwrap();
        assert_eq!(clients.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 9]);
        assert_eq!(clients[1].name.as_deref(), Some("Ana"));
        assert_eq!(clients[0].email.as_deref(), Some("b@x.co"));
        assert_eq!(clients[1].variables["monto"], "1");
        assert!(launch_page(Some("[[1]]")).is_err());
    }

    /// Migration 7 rebuilds call_records without its foreign keys: rows, ids,
    /// indexes and the rollup triggers must come through unchanged.
    #[tokio::test]
    async fn the_call_records_rebuild_keeps_rows_ids_indexes_and_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.path().join("m.db").display()
        ))
        .unwrap()
        .create_if_missing(true)
        // The rows below have no parents: what matters is what survives.
        .foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let store = SqliteStore { pool };
        let before: Vec<Migration> = SQLITE_MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version < 7)
            .copied()
            .collect();
        store.run_migrations(&before).await.unwrap();
        for (id, status) in [
            (5, "completed"),
            (6, "pending"),
            (40, "failed"),
            (41, "failed"),
        ] {
            sqlx::query(
                "INSERT INTO call_records (id, batch_id, group_id, client_id, recipient_id, phone_e164, status, created_at, updated_at)
                 VALUES ($1, 1, 1, $1, 'r', '+573001234567', $2, '2026-11-30T05:00:00Z', '2026-11-30T05:00:00Z')",
            )
            .bind(id)
            .bind(status)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        // The newest record deleted: its id must not come back.
        sqlx::query("DELETE FROM call_records WHERE id = 41")
            .execute(&store.pool)
            .await
            .unwrap();
        let rollup = |store: &SqliteStore| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_as::<_, (String, i64)>(
                    "SELECT status, calls FROM call_stats_hourly WHERE calls <> 0 ORDER BY status",
                )
                .fetch_all(&pool)
                .await
                .unwrap()
            }
        };
        let rolled = rollup(&store).await;
        assert_eq!(rolled.len(), 3);
        let through_seven: Vec<Migration> = SQLITE_MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version <= 7)
            .copied()
            .collect();
        store.run_migrations(&through_seven).await.unwrap();

        let fks: Vec<(i64,)> =
            sqlx::query_as("SELECT id FROM pragma_foreign_key_list('call_records')")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert!(fks.is_empty());
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM call_records ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert_eq!(ids, [5, 6, 40]);
        assert_eq!(
            rollup(&store).await,
            rolled,
            "the copy and the drop left the rollup alone"
        );
        let schema: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE tbl_name = 'call_records' AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(schema.len(), 11, "{schema:?}");
        // The triggers work on the rebuilt table, and ids go on after the largest.
        sqlx::query("UPDATE call_records SET status = 'completed' WHERE id = 6")
            .execute(&store.pool)
            .await
            .unwrap();
        let new_id: i64 = sqlx::query_scalar(
            "INSERT INTO call_records (batch_id, group_id, phone_e164, status, created_at, updated_at)
             VALUES (1, 1, '+573001234569', 'pending', '2026-11-30T05:00:00Z', '2026-11-30T05:00:00Z') RETURNING id",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(new_id, 42);
        assert_eq!(
            rollup(&store).await,
            [
                ("completed".to_owned(), 2),
                ("failed".to_owned(), 1),
                ("pending".to_owned(), 1)
            ]
        );
    }
}
