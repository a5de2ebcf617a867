//! The parts of the store whose SQL reads the same on SQLite and PostgreSQL.
//!
//! Both backends accept `$N` placeholders, `RETURNING`, `TRUE`/`FALSE`, partial
//! indexes and `lower(x) LIKE … ESCAPE '\'`, so one text serves both. Rust's
//! sqlx types are concrete per backend, so the shared code is written once here
//! as a macro and expanded in `sqlite.rs` and `postgres.rs`, each of which
//! supplies the few hooks whose SQL differs:
//!
//! - `async fn begin_write(&self)`: a transaction that will write (SQLite takes
//!   the write lock up front, so a read-then-write transaction never fails with
//!   "database is locked" half-way);
//! - `async fn lock_first_user(tx)`: serialise "is this the first user?" decisions;
//! - `async fn lock_migrations(tx)`: keep other instances out while migrating;
//! - `async fn insert_call_records(tx, …)`: the bulk load of a batch's recipients;
//! - `async fn mark_contacted(tx, …)`: their `pending` clients become `contacted`;
//! - `async fn load_launch_clients(pool, group_id)`: a group's live clients, for a launch;
//! - `async fn import_turn(&self)`: a turn among imports whose transaction is open;
//! - `async fn lock_group(conn, group_id)`: the group's count, locked before its clients are written;
//! - `const MIGRATIONS`: the embedded migrations; `const HAS_MIGRATIONS_TABLE`:
//!   a query answering whether `_migrations` exists (each catalogue differs).

/// A client (`clients`) some batch has included: it has a call record in a
/// batch that reached ElevenLabs (a timed-out submit that was given up, being
/// `not_submitted`, called nobody). A macro so that `concat!` can use it.
macro_rules! called_client {
    () => {
        "EXISTS (SELECT 1 FROM call_records r JOIN batches b ON b.id = r.batch_id
                 WHERE r.client_id = clients.id AND b.submit_state <> 'not_submitted')"
    };
}
pub(crate) use called_client as CALLED;

/// The `pending` clients of batch `$1` become `contacted` at `$2` (API.md §4
/// client status): they are in a batch.
pub(crate) const CONTACT_BATCH_CLIENTS: &str =
    "UPDATE clients SET status = 'contacted', updated_at = $2
     WHERE status = 'pending' AND id IN (SELECT client_id FROM call_records WHERE batch_id = $1)";

pub(crate) const USER_COLUMNS: &str = "id, username, email, first_name, last_name, role, is_active, created_at, updated_at, token_version";

pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

pub(crate) const CLIENT_COLUMNS: &str = "id, group_id, external_id, name, phone, phone_e164, email, address, category, status, variables, created_at, updated_at";

/// A group with its live client count and a summary of its latest batch. The
/// count is the one the triggers of migration 13 keep in `group_counts`:
/// counting the clients here made every read cost as much as the group is large.
pub(crate) const GROUP_SELECT: &str = "SELECT g.id, g.name, g.description, g.prompt, g.color, g.favorite, g.idioma,
        g.variables, g.prefix, g.selected_country_code, g.first_message, g.phone_number_id, g.agent_id,
        g.timezone, g.created_by, g.created_at, g.updated_at,
        COALESCE(n.clients, 0) AS clients_count,
        lb.id AS lb_id, lb.status AS lb_status, lb.is_final AS lb_final,
        lb.created_at AS lb_created_at, lb.updated_at AS lb_updated_at,
        (SELECT CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) FROM call_stats_hourly s WHERE s.batch_id = lb.id) AS lb_total,
        (SELECT CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) FROM call_stats_hourly s
         WHERE s.batch_id = lb.id AND s.status = 'completed') AS lb_completed,
        (SELECT CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) FROM call_stats_hourly s
         WHERE s.batch_id = lb.id AND s.status = 'failed') AS lb_failed
    FROM groups g
    LEFT JOIN group_counts n ON n.group_id = g.id
    LEFT JOIN batches lb ON lb.id = (SELECT b.id FROM batches b WHERE b.group_id = g.id AND b.submit_state = 'submitted'
                                     ORDER BY b.created_at DESC, b.id DESC LIMIT 1)";

/// Rows per multi-row INSERT: 12 parameters a row stays under SQLite's and PostgreSQL's limits.
pub(crate) const INSERT_CHUNK: usize = 1000;

/// The `SET` clause that applies a [`crate::store::sync::StatusChange`], given
/// the SQL expressions of its fields (`old` prefixes the row's own columns).
/// A reopened call (a retry) starts from a clean outcome.
#[allow(clippy::too_many_arguments)]
pub(crate) fn status_change_set(
    rid: &str,
    status: &str,
    conv: &str,
    now: &str,
    reopened: &str,
    started: &str,
    ended: &str,
    old: &str,
) -> String {
    let clear =
        |column: &str| format!("{column} = CASE WHEN {reopened} THEN NULL ELSE {old}{column} END");
    [
        format!("recipient_id = {rid}"),
        format!("status = {status}"),
        format!("conversation_id = {conv}"),
        format!("updated_at = {now}"),
        format!("started_at = CASE WHEN {reopened} THEN {started} ELSE COALESCE({old}started_at, {started}) END"),
        format!("ended_at = CASE WHEN {reopened} THEN {ended} ELSE COALESCE({old}ended_at, {ended}) END"),
        clear("conversation_fetched_at"),
        clear("duration_secs"),
        clear("call_successful"),
        clear("transcript_summary"),
        clear("termination_reason"),
        clear("failure_reason"),
        clear("data_collection"),
        clear("evaluation"),
        clear("transcript"),
    ]
    .join(", ")
}

/// One embedded migration: version, name, SQL.
pub(crate) type Migration = (i64, &'static str, &'static str);

macro_rules! shared_store_impl {
    ($store:ident, $db:ty, $backend:literal) => {
        use $crate::store::common::{Migration, MIGRATIONS_TABLE, USER_COLUMNS};
        use $crate::store::{
            AuditEntry, AuditEvent, NewUser, Role, RolePolicy, Store, StoreError, StoreResult,
            User, UserPatch, UserQuery,
        };
        use sqlx::types::Json;
        use sqlx::Row;
        use $crate::store::common::{CLIENT_COLUMNS, GROUP_SELECT};
        use $crate::store::{
            BatchCallStats, Client, ClientPatch, ClientQuery, DoNotCall, Group, GroupPatch, GroupQuery,
            IdempotencyClaim, NewBatch, NewCallRecord, NewClient, NewGroup, Renumber, Scope,
        };
        use chrono::{DateTime, Utc};

        type JsonMap = serde_json::Map<String, serde_json::Value>;

        fn group_from_row(row: &DbRow) -> Result<Group, sqlx::Error> {
            let Json(variables): Json<JsonMap> = row.try_get("variables")?;
            let batch_id: Option<i64> = row.try_get("lb_id")?;
            let total: i64 = row.try_get("lb_total")?;
            let completed: i64 = row.try_get("lb_completed")?;
            let is_final: Option<bool> = row.try_get("lb_final")?;
            let batch_call_stats = BatchCallStats {
                has_been_called: batch_id.is_some(),
                status: row.try_get("lb_status")?,
                total_recipients: total,
                completed_calls: completed,
                failed_calls: row.try_get("lb_failed")?,
                success_rate: if total > 0 {
                    (completed as f64 * 1000.0 / total as f64).round() / 10.0
                } else {
                    0.0
                },
                started_at: row.try_get("lb_created_at")?,
                completed_at: if is_final == Some(true) { row.try_get("lb_updated_at")? } else { None },
            };
            Ok(Group {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                description: row.try_get("description")?,
                prompt: row.try_get("prompt")?,
                color: row.try_get("color")?,
                favorite: row.try_get("favorite")?,
                idioma: row.try_get("idioma")?,
                variables,
                prefix: row.try_get("prefix")?,
                selected_country_code: row.try_get("selected_country_code")?,
                first_message: row.try_get("first_message")?,
                phone_number_id: row.try_get("phone_number_id")?,
                agent_id: row.try_get("agent_id")?,
                timezone: row.try_get("timezone")?,
                created_by: row.try_get("created_by")?,
                clients_count: row.try_get("clients_count")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                batch_call_stats,
            })
        }

        fn client_from_row(row: &DbRow) -> Result<Client, sqlx::Error> {
            let Json(variables): Json<JsonMap> = row.try_get("variables")?;
            Ok(Client {
                id: row.try_get("id")?,
                group_id: row.try_get("group_id")?,
                external_id: row.try_get("external_id")?,
                name: row.try_get("name")?,
                phone: row.try_get("phone")?,
                phone_e164: row.try_get("phone_e164")?,
                email: row.try_get("email")?,
                address: row.try_get("address")?,
                category: row.try_get("category")?,
                status: row.try_get("status")?,
                variables,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        /// What a feed gave before the transaction starts: everything up to its
        /// end on a backend that would hold its one writer's lock while the file
        /// is read, else its first item (a file refused before any client was
        /// read then never touches the database). A feed closed early: refused.
        async fn receive_ahead(
            feed: &mut $crate::store::ClientFeedReceiver,
        ) -> StoreResult<Vec<$crate::store::ClientFeed>> {
            let mut items = Vec::new();
            loop {
                match feed.recv().await {
                    Some(item) => {
                        let end = matches!(item, $crate::store::ClientFeed::End);
                        items.push(item);
                        if end || $store::STREAM_CLIENTS {
                            return Ok(items);
                        }
                    }
                    None => return Err(file_refused()),
                }
            }
        }

        fn file_refused() -> StoreError {
            StoreError::Other(anyhow::anyhow!("the file was refused while it was being read"))
        }

        /// Inserts the clients received ahead, then the rest of the feed as it
        /// comes, in multi-row statements, skipping numbers already live in the
        /// group; then checks the group's size. Returns how many were inserted.
        async fn insert_clients(
            conn: &mut <$db as sqlx::Database>::Connection,
            group_id: i64,
            ahead: Vec<$crate::store::ClientFeed>,
            feed: &mut $crate::store::ClientFeedReceiver,
            max_clients: i64,
        ) -> StoreResult<u64> {
            let now = chrono::Utc::now();
            let mut inserted = 0;
            let mut ahead = ahead.into_iter();
            loop {
                let item = match ahead.next() {
                    Some(item) => Some(item),
                    None => feed.recv().await,
                };
                match item {
                    Some($crate::store::ClientFeed::Chunk(clients)) => {
                        for chunk in clients.chunks($store::CLIENT_INSERT_CHUNK) {
                            inserted += $store::insert_client_rows(&mut *conn, group_id, now, chunk).await?;
                        }
                    }
                    Some($crate::store::ClientFeed::End) => break,
                    None => return Err(file_refused()),
                }
            }
            // Kept by the triggers, this transaction's inserts included.
            let total: i64 = sqlx::query_scalar("SELECT clients FROM group_counts WHERE group_id = $1")
                .bind(group_id)
                .fetch_one(&mut *conn)
                .await?;
            if total > max_clients {
                return Err(StoreError::TooManyClients { total });
            }
            Ok(inserted)
        }

        async fn fetch_group(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: i64,
            scope: Scope,
        ) -> Result<Option<Group>, sqlx::Error> {
            let row = sqlx::query(&format!(
                "{GROUP_SELECT} WHERE g.id = $1 AND g.deleted_at IS NULL AND ($2 IS NULL OR g.created_by = $2)"
            ))
            .bind(id)
            .bind(scope.owner())
            .fetch_optional(conn)
            .await?;
            row.as_ref().map(group_from_row).transpose()
        }

        /// Re-normalises every live client's number; all or nothing.
        async fn renumber_clients(
            conn: &mut <$db as sqlx::Database>::Connection,
            group_id: i64,
            renumber: &Renumber,
        ) -> StoreResult<()> {
            let rows = sqlx::query("SELECT id, phone, phone_e164 FROM clients WHERE group_id = $1 AND deleted_at IS NULL ORDER BY id")
                .bind(group_id)
                .fetch_all(&mut *conn)
                .await?;
            let mut invalid = Vec::new();
            let mut duplicated = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut changes = Vec::new();
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                let phone: String = row.try_get("phone")?;
                let old: String = row.try_get("phone_e164")?;
                match renumber(&phone) {
                    None => invalid.push(id),
                    Some(new) => {
                        if !seen.insert(new.clone()) {
                            duplicated.push(id);
                        } else if new != old {
                            changes.push((id, new));
                        }
                    }
                }
            }
            if !invalid.is_empty() || !duplicated.is_empty() {
                return Err(StoreError::Renumbering { invalid, duplicated });
            }
            let now = chrono::Utc::now();
            // Two passes, so that swapping two numbers never trips the unique index.
            for (id, _) in &changes {
                sqlx::query("UPDATE clients SET phone_e164 = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("renumbering:{id}"))
                    .execute(&mut *conn)
                    .await?;
            }
            for (id, new) in &changes {
                sqlx::query("UPDATE clients SET phone_e164 = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(new)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        type DbRow = <$db as sqlx::Database>::Row;

        fn user_from_row(row: &DbRow) -> Result<User, sqlx::Error> {
            let role: String = row.try_get("role")?;
            Ok(User {
                id: row.try_get("id")?,
                username: row.try_get("username")?,
                email: row.try_get("email")?,
                first_name: row.try_get("first_name")?,
                last_name: row.try_get("last_name")?,
                role: Role::parse(&role).ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "role".into(),
                    source: format!("unknown role {role:?}").into(),
                })?,
                is_active: row.try_get("is_active")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                token_version: row.try_get("token_version")?,
            })
        }

        async fn insert_audit(
            conn: &mut <$db as sqlx::Database>::Connection,
            event: &AuditEvent,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO audit_events (user_id, action, entity_type, entity_id, details, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(event.user_id)
            .bind(event.action)
            .bind(event.entity_type)
            .bind(&event.entity_id)
            .bind(Json(&event.details))
            .bind(chrono::Utc::now())
            .execute(conn)
            .await?;
            Ok(())
        }

        impl $store {
            /// Applies the embedded migrations that this database has not seen yet,
            /// all in one transaction that excludes other instances doing the same.
            pub(crate) async fn run_migrations(&self, migrations: &[Migration]) -> anyhow::Result<()> {
                let mut tx = self.begin_write().await?;
                Self::lock_migrations(&mut tx).await?;
                sqlx::query(MIGRATIONS_TABLE).execute(&mut *tx).await?;
                let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _migrations")
                    .fetch_all(&mut *tx)
                    .await?;
                for (version, name, sql) in migrations {
                    if applied.contains(version) {
                        continue;
                    }
                    sqlx::raw_sql(sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO _migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                        .bind(version)
                        .bind(name)
                        .bind(chrono::Utc::now().to_rfc3339())
                        .execute(&mut *tx)
                        .await?;
                    tracing::info!(version, name, "migration applied");
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn applied_migrations(&self) -> StoreResult<Vec<i64>> {
                Ok(sqlx::query_scalar("SELECT version FROM _migrations ORDER BY version")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn missing_migrations(&self) -> StoreResult<Vec<i64>> {
                // The table is looked for first: reading a missing one is an
                // error, which would look like a database that does not answer.
                let exists: bool = sqlx::query_scalar(Self::HAS_MIGRATIONS_TABLE)
                    .fetch_one(&self.pool)
                    .await?;
                let applied = if exists { self.applied_migrations().await? } else { Vec::new() };
                Ok(Self::MIGRATIONS
                    .iter()
                    .map(|(version, _, _)| *version)
                    .filter(|version| !applied.contains(version))
                    .collect())
            }

            async fn count_users(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?)
            }

            async fn create_user(&self, new: NewUser, policy: RolePolicy, audit: Option<AuditEvent>) -> StoreResult<User> {
                let now = chrono::Utc::now();
                let mut tx = self.begin_write().await?;
                let row = match policy {
                    RolePolicy::Fixed(role) => {
                        sqlx::query(&format!(
                            "INSERT INTO users (username, email, password_hash, first_name, last_name, role, is_active, created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7) RETURNING {USER_COLUMNS}"
                        ))
                        .bind(&new.username)
                        .bind(&new.email)
                        .bind(&new.password_hash)
                        .bind(&new.first_name)
                        .bind(&new.last_name)
                        .bind(role.as_str())
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                    RolePolicy::FirstIsAdmin { open } => {
                        Self::lock_first_user(&mut tx).await?;
                        // One statement decides and inserts, so two first sign-ups
                        // cannot both become admin.
                        sqlx::query(&format!(
                            "INSERT INTO users (username, email, password_hash, first_name, last_name, role, is_active, created_at, updated_at)
                             SELECT $1, $2, $3, $4, $5,
                                    CASE WHEN EXISTS (SELECT 1 FROM users) THEN 'user' ELSE 'admin' END,
                                    TRUE, $6, $6
                             WHERE $7 OR NOT EXISTS (SELECT 1 FROM users)
                             RETURNING {USER_COLUMNS}"
                        ))
                        .bind(&new.username)
                        .bind(&new.email)
                        .bind(&new.password_hash)
                        .bind(&new.first_name)
                        .bind(&new.last_name)
                        .bind(now)
                        .bind(open)
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                let Some(row) = row else {
                    return Err(StoreError::RegistrationClosed);
                };
                let user = user_from_row(&row)?;
                if let Some(mut event) = audit {
                    event.entity_id.get_or_insert_with(|| user.id.to_string());
                    insert_audit(&mut *tx, &event).await?;
                }
                tx.commit().await?;
                Ok(user)
            }

            async fn get_user(&self, id: i64) -> StoreResult<Option<User>> {
                let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.as_ref().map(user_from_row).transpose()?)
            }

            async fn find_credentials(&self, email: &str) -> StoreResult<Option<(User, String)>> {
                let row = sqlx::query(&format!(
                    "SELECT {USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower($1)"
                ))
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?))),
                    None => Ok(None),
                }
            }

            async fn password_hash(&self, id: i64) -> StoreResult<Option<String>> {
                Ok(sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_users(&self, query: &UserQuery) -> StoreResult<(Vec<User>, i64)> {
                let pattern = query.search.as_deref().map($crate::store::like_pattern);
                let role = query.role.map(Role::as_str);
                const FILTER: &str = "($1 IS NULL OR lower(username) LIKE $1 ESCAPE '\\'
                                         OR lower(email) LIKE $1 ESCAPE '\\'
                                         OR lower(COALESCE(first_name, '') || ' ' || COALESCE(last_name, '')) LIKE $1 ESCAPE '\\')
                                      AND ($2 IS NULL OR role = $2)
                                      AND ($3 IS NULL OR is_active = $3)";
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM users WHERE {FILTER}"))
                    .bind(&pattern)
                    .bind(role)
                    .bind(query.is_active)
                    .fetch_one(&self.pool)
                    .await?;
                let rows = sqlx::query(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE {FILTER} ORDER BY id LIMIT $4 OFFSET $5"
                ))
                .bind(&pattern)
                .bind(role)
                .bind(query.is_active)
                .bind(query.limit)
                .bind((query.page - 1) * query.limit)
                .fetch_all(&self.pool)
                .await?;
                let users = rows.iter().map(user_from_row).collect::<Result<Vec<_>, _>>()?;
                Ok((users, total))
            }

            async fn update_user(&self, id: i64, patch: &UserPatch, audit: Option<AuditEvent>) -> StoreResult<Option<User>> {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE users SET
                        username = COALESCE($2, username),
                        email = COALESCE($3, email),
                        first_name = CASE WHEN $4 THEN $5 ELSE first_name END,
                        last_name = CASE WHEN $6 THEN $7 ELSE last_name END,
                        role = COALESCE($8, role),
                        is_active = COALESCE($9, is_active),
                        password_hash = COALESCE($10, password_hash),
                        updated_at = $11,
                        -- Older tokens stop working when the password changes or
                        -- rights go (admin to user, deactivation); the right-hand
                        -- side reads the row as it was.
                        token_version = token_version + CASE
                            WHEN $10 IS NOT NULL
                              OR (role = 'admin' AND $8 = 'user')
                              OR (is_active = TRUE AND $9 = FALSE) THEN 1 ELSE 0 END
                     WHERE id = $1
                     RETURNING {USER_COLUMNS}"
                ))
                .bind(id)
                .bind(&patch.username)
                .bind(&patch.email)
                .bind(patch.first_name.is_some())
                .bind(patch.first_name.clone().flatten())
                .bind(patch.last_name.is_some())
                .bind(patch.last_name.clone().flatten())
                .bind(patch.role.map(Role::as_str))
                .bind(patch.is_active)
                .bind(&patch.password_hash)
                .bind(chrono::Utc::now())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let user = user_from_row(&row)?;
                if let Some(event) = audit {
                    insert_audit(&mut *tx, &event).await?;
                }
                tx.commit().await?;
                Ok(Some(user))
            }

            async fn count_active_admins(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND is_active = TRUE")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn record_audit(&self, event: &AuditEvent) -> StoreResult<()> {
                let mut conn = self.pool.acquire().await?;
                insert_audit(&mut *conn, event).await
            }

            async fn create_group(&self, new: NewGroup, mut clients: $crate::store::ClientFeedReceiver, max_clients: i64) -> StoreResult<(Group, u64)> {
                let ahead = receive_ahead(&mut clients).await?;
                let _turn = self.import_turn().await;
                let now = chrono::Utc::now();
                let mut tx = self.begin_write().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO groups (name, description, prompt, color, favorite, idioma, variables, prefix,
                        selected_country_code, first_message, phone_number_id, agent_id, timezone, created_by,
                        created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
                     RETURNING id",
                )
                .bind(&new.name)
                .bind(&new.description)
                .bind(&new.prompt)
                .bind(&new.color)
                .bind(new.favorite)
                .bind(&new.idioma)
                .bind(Json(&new.variables))
                .bind(&new.prefix)
                .bind(&new.selected_country_code)
                .bind(&new.first_message)
                .bind(&new.phone_number_id)
                .bind(&new.agent_id)
                .bind(&new.timezone)
                .bind(new.created_by)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let inserted = insert_clients(&mut *tx, id, ahead, &mut clients, max_clients).await?;
                let group = fetch_group(&mut *tx, id, Scope::All)
                    .await?
                    .ok_or_else(|| StoreError::Other(anyhow::anyhow!("group {id} vanished inside its transaction")))?;
                tx.commit().await?;
                Ok((group, inserted))
            }

            async fn group_is_visible(&self, id: i64, scope: Scope) -> StoreResult<bool> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM groups WHERE id = $1 AND deleted_at IS NULL AND ($2 IS NULL OR created_by = $2)",
                )
                .bind(id)
                .bind(scope.owner())
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }

            async fn get_group(&self, id: i64, scope: Scope) -> StoreResult<Option<Group>> {
                let mut conn = self.pool.acquire().await?;
                Ok(fetch_group(&mut *conn, id, scope).await?)
            }

            async fn list_groups(&self, scope: Scope, query: &GroupQuery) -> StoreResult<(Vec<Group>, i64)> {
                let pattern = query.search.as_deref().map($crate::store::like_pattern);
                const FILTER: &str = "g.deleted_at IS NULL
                    AND ($1 IS NULL OR g.created_by = $1)
                    AND ($2 IS NULL OR g.created_by = $2)
                    AND ($3 IS NULL OR g.favorite = $3)
                    AND ($4 IS NULL OR lower(g.name) LIKE $4 ESCAPE '\\'
                         OR lower(COALESCE(g.description, '')) LIKE $4 ESCAPE '\\')";
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM groups g WHERE {FILTER}"))
                    .bind(scope.owner())
                    .bind(query.created_by)
                    .bind(query.favorite)
                    .bind(&pattern)
                    .fetch_one(&self.pool)
                    .await?;
                let rows = sqlx::query(&format!(
                    "{GROUP_SELECT} WHERE {FILTER} ORDER BY g.created_at DESC, g.id DESC LIMIT $5 OFFSET $6"
                ))
                .bind(scope.owner())
                .bind(query.created_by)
                .bind(query.favorite)
                .bind(&pattern)
                .bind(query.limit)
                .bind((query.page - 1) * query.limit)
                .fetch_all(&self.pool)
                .await?;
                let groups = rows.iter().map(group_from_row).collect::<Result<Vec<_>, _>>()?;
                Ok((groups, total))
            }

            async fn update_group(
                &self,
                id: i64,
                scope: Scope,
                patch: &GroupPatch,
                renumber: Option<&Renumber>,
            ) -> StoreResult<Option<Group>> {
                let mut tx = self.begin_write().await?;
                let updated = sqlx::query(
                    "UPDATE groups SET
                        name = COALESCE($3, name),
                        description = CASE WHEN $4 THEN $5 ELSE description END,
                        prompt = CASE WHEN $6 THEN $7 ELSE prompt END,
                        color = COALESCE($8, color),
                        favorite = COALESCE($9, favorite),
                        idioma = COALESCE($10, idioma),
                        variables = COALESCE($11, variables),
                        prefix = COALESCE($12, prefix),
                        selected_country_code = COALESCE($13, selected_country_code),
                        first_message = CASE WHEN $14 THEN $15 ELSE first_message END,
                        phone_number_id = CASE WHEN $16 THEN $17 ELSE phone_number_id END,
                        agent_id = CASE WHEN $18 THEN $19 ELSE agent_id END,
                        timezone = COALESCE($20, timezone),
                        updated_at = $21
                     WHERE id = $1 AND deleted_at IS NULL AND ($2 IS NULL OR created_by = $2)",
                )
                .bind(id)
                .bind(scope.owner())
                .bind(&patch.name)
                .bind(patch.description.is_some())
                .bind(patch.description.clone().flatten())
                .bind(patch.prompt.is_some())
                .bind(patch.prompt.clone().flatten())
                .bind(&patch.color)
                .bind(patch.favorite)
                .bind(&patch.idioma)
                .bind(patch.variables.as_ref().map(Json))
                .bind(&patch.prefix)
                .bind(&patch.selected_country_code)
                .bind(patch.first_message.is_some())
                .bind(patch.first_message.clone().flatten())
                .bind(patch.phone_number_id.is_some())
                .bind(patch.phone_number_id.clone().flatten())
                .bind(patch.agent_id.is_some())
                .bind(patch.agent_id.clone().flatten())
                .bind(&patch.timezone)
                .bind(chrono::Utc::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Ok(None);
                }
                if let Some(renumber) = renumber {
                    renumber_clients(&mut *tx, id, renumber).await?;
                }
                let group = fetch_group(&mut *tx, id, Scope::All).await?;
                tx.commit().await?;
                Ok(group)
            }

            async fn delete_group(&self, id: i64, scope: Scope) -> StoreResult<bool> {
                let now = chrono::Utc::now();
                let done = sqlx::query(
                    "UPDATE groups SET deleted_at = $3, updated_at = $3
                     WHERE id = $1 AND deleted_at IS NULL AND ($2 IS NULL OR created_by = $2)",
                )
                .bind(id)
                .bind(scope.owner())
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn import_clients(&self, group_id: i64, mut clients: $crate::store::ClientFeedReceiver, max_clients: i64) -> StoreResult<u64> {
                let ahead = receive_ahead(&mut clients).await?;
                let _turn = self.import_turn().await;
                let mut tx = self.begin_write().await?;
                Self::lock_group(&mut *tx, group_id).await?;
                let inserted = insert_clients(&mut *tx, group_id, ahead, &mut clients, max_clients).await?;
                sqlx::query("UPDATE groups SET updated_at = $2 WHERE id = $1")
                    .bind(group_id)
                    .bind(chrono::Utc::now())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(inserted)
            }

            async fn group_numbers(&self, group_id: i64) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar("SELECT phone_e164 FROM clients WHERE group_id = $1 AND deleted_at IS NULL")
                    .bind(group_id)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn add_client(&self, group_id: i64, new: &NewClient) -> StoreResult<Client> {
                let now = chrono::Utc::now();
                let mut tx = self.begin_write().await?;
                Self::lock_group(&mut *tx, group_id).await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO clients (group_id, external_id, name, phone, phone_e164, email, address, category, status, variables, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $10)
                     RETURNING {CLIENT_COLUMNS}"
                ))
                .bind(group_id)
                .bind(&new.external_id)
                .bind(&new.name)
                .bind(&new.phone)
                .bind(&new.phone_e164)
                .bind(&new.email)
                .bind(&new.address)
                .bind(&new.category)
                .bind(Json(&new.variables))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(client_from_row(&row)?)
            }

            async fn get_client(&self, group_id: i64, client_id: i64) -> StoreResult<Option<Client>> {
                let row = sqlx::query(&format!(
                    "SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1 AND group_id = $2 AND deleted_at IS NULL"
                ))
                .bind(client_id)
                .bind(group_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(client_from_row).transpose()?)
            }

            async fn list_clients(&self, group_id: i64, query: &ClientQuery) -> StoreResult<(Vec<Client>, i64)> {
                let pattern = query.search.as_deref().map($crate::store::like_pattern);
                const FILTER: &str = concat!("group_id = $1 AND deleted_at IS NULL
                    AND ($2 IS NULL OR lower(COALESCE(name, '')) LIKE $2 ESCAPE '\\'
                         OR phone_e164 LIKE $2 ESCAPE '\\' OR lower(phone) LIKE $2 ESCAPE '\\'
                         OR lower(COALESCE(email, '')) LIKE $2 ESCAPE '\\'
                         OR lower(COALESCE(external_id, '')) LIKE $2 ESCAPE '\\')
                    AND ($3 IS NULL OR status = $3)
                    AND ($4 = FALSE OR NOT ", $crate::store::common::CALLED!(), ")");
                // Unfiltered, the total is the group's kept count; a filter's
                // total counts its matches (as its page reads through them).
                let unfiltered = pattern.is_none() && query.status.is_none() && !query.uncalled;
                let total: i64 = if unfiltered {
                    sqlx::query_scalar("SELECT clients FROM group_counts WHERE group_id = $1")
                        .bind(group_id)
                        .fetch_optional(&self.pool)
                        .await?
                        .unwrap_or(0)
                } else {
                    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM clients WHERE {FILTER}"))
                        .bind(group_id)
                        .bind(&pattern)
                        .bind(&query.status)
                        .bind(query.uncalled)
                        .fetch_one(&self.pool)
                        .await?
                };
                let rows = sqlx::query(&format!(
                    "SELECT {CLIENT_COLUMNS} FROM clients WHERE {FILTER} ORDER BY id LIMIT $5 OFFSET $6"
                ))
                .bind(group_id)
                .bind(&pattern)
                .bind(&query.status)
                .bind(query.uncalled)
                .bind(query.limit)
                .bind((query.page - 1) * query.limit)
                .fetch_all(&self.pool)
                .await?;
                let clients = rows.iter().map(client_from_row).collect::<Result<Vec<_>, _>>()?;
                Ok((clients, total))
            }

            async fn update_client(&self, group_id: i64, client_id: i64, patch: &ClientPatch) -> StoreResult<Option<Client>> {
                let (phone, phone_e164) = match &patch.phone {
                    Some((phone, e164)) => (Some(phone), Some(e164)),
                    None => (None, None),
                };
                let row = sqlx::query(&format!(
                    "UPDATE clients SET
                        name = CASE WHEN $3 THEN $4 ELSE name END,
                        phone = COALESCE($5, phone),
                        phone_e164 = COALESCE($6, phone_e164),
                        email = CASE WHEN $7 THEN $8 ELSE email END,
                        address = CASE WHEN $9 THEN $10 ELSE address END,
                        category = CASE WHEN $11 THEN $12 ELSE category END,
                        external_id = CASE WHEN $13 THEN $14 ELSE external_id END,
                        status = COALESCE($15, status),
                        variables = COALESCE($16, variables),
                        updated_at = $17
                     WHERE id = $1 AND group_id = $2 AND deleted_at IS NULL
                     RETURNING {CLIENT_COLUMNS}"
                ))
                .bind(client_id)
                .bind(group_id)
                .bind(patch.name.is_some())
                .bind(patch.name.clone().flatten())
                .bind(phone)
                .bind(phone_e164)
                .bind(patch.email.is_some())
                .bind(patch.email.clone().flatten())
                .bind(patch.address.is_some())
                .bind(patch.address.clone().flatten())
                .bind(patch.category.is_some())
                .bind(patch.category.clone().flatten())
                .bind(patch.external_id.is_some())
                .bind(patch.external_id.clone().flatten())
                .bind(&patch.status)
                .bind(patch.variables.as_ref().map(Json))
                .bind(chrono::Utc::now())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(client_from_row).transpose()?)
            }

            async fn delete_client(&self, group_id: i64, client_id: i64) -> StoreResult<bool> {
                let now = chrono::Utc::now();
                let mut tx = self.begin_write().await?;
                Self::lock_group(&mut *tx, group_id).await?;
                let done = sqlx::query(
                    "UPDATE clients SET deleted_at = $3, updated_at = $3
                     WHERE id = $1 AND group_id = $2 AND deleted_at IS NULL",
                )
                .bind(client_id)
                .bind(group_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn launch_clients(&self, group_id: i64) -> StoreResult<Vec<$crate::store::LaunchClient>> {
                Ok(Self::load_launch_clients(&self.pool, group_id).await?)
            }

            async fn called_client_ids(&self, group_id: i64) -> StoreResult<std::collections::HashSet<i64>> {
                let ids: Vec<i64> = sqlx::query_scalar(concat!(
                    "SELECT id FROM clients WHERE group_id = $1 AND deleted_at IS NULL AND ",
                    $crate::store::common::CALLED!()
                ))
                .bind(group_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(ids.into_iter().collect())
            }

            async fn set_group_phone_number(&self, group_id: i64, phone_number_id: &str) -> StoreResult<()> {
                sqlx::query("UPDATE groups SET phone_number_id = $2, updated_at = $3 WHERE id = $1")
                    .bind(group_id)
                    .bind(phone_number_id)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn lock_launch(&self, group_id: i64, until: DateTime<Utc>) -> StoreResult<bool> {
                // One conditional UPDATE: of two simultaneous launches only one sees the lock free.
                let taken = sqlx::query(
                    "UPDATE groups SET launch_locked_until = $2
                     WHERE id = $1 AND (launch_locked_until IS NULL OR launch_locked_until < $3)",
                )
                .bind(group_id)
                .bind(until)
                .bind(Utc::now())
                .execute(&self.pool)
                .await?;
                Ok(taken.rows_affected() == 1)
            }

            async fn launch_in_progress(&self, group_id: i64, now: DateTime<Utc>) -> StoreResult<bool> {
                let held: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM groups WHERE id = $1 AND launch_locked_until >= $2",
                )
                .bind(group_id)
                .bind(now)
                .fetch_one(&self.pool)
                .await?;
                Ok(held > 0)
            }

            async fn unlock_launch(&self, group_id: i64) -> StoreResult<()> {
                sqlx::query("UPDATE groups SET launch_locked_until = NULL WHERE id = $1")
                    .bind(group_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn recent_batch(&self, group_id: i64, since: DateTime<Utc>) -> StoreResult<Option<Option<String>>> {
                let row = sqlx::query(
                    "SELECT elevenlabs_batch_id FROM batches
                     WHERE group_id = $1 AND (created_at >= $2 OR (submit_state = 'unknown' AND is_final = FALSE))
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                )
                .bind(group_id)
                .bind(since)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => Ok(Some(row.try_get("elevenlabs_batch_id")?)),
                    None => Ok(None),
                }
            }

            async fn prewrite_batch(
                &self,
                batch: &NewBatch,
                calls: &[NewCallRecord],
                hold_until: DateTime<Utc>,
            ) -> StoreResult<i64> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO batches (elevenlabs_batch_id, group_id, created_by, agent_id, phone_number_id, name,
                        status, submit_state, part_index, part_count, launch_key, scheduled_time_unix, created_at_unix,
                        last_updated_at_unix, total_calls_scheduled, raw, next_sync_at, created_at, updated_at)
                     VALUES (NULL, $1, $2, $3, $4, $5, 'unknown', 'unknown', $6, $7, $8, $9, NULL, NULL, $10, $11, $12, $13, $13)
                     RETURNING id",
                )
                .bind(batch.group_id)
                .bind(batch.created_by)
                .bind(&batch.agent_id)
                .bind(&batch.phone_number_id)
                .bind(&batch.name)
                .bind(batch.part_index)
                .bind(batch.part_count)
                .bind(&batch.launch_key)
                .bind(batch.scheduled_time_unix)
                .bind(batch.total_calls_scheduled)
                .bind(Json(&serde_json::Value::Null))
                .bind(hold_until)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                Self::insert_call_records(&mut tx, id, batch.group_id, now, calls).await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn confirm_batch(
                &self,
                batch_id: i64,
                accepted: &$crate::store::AcceptedBatch,
                calls: &[NewCallRecord],
            ) -> StoreResult<()> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                // Only an attempt nobody settled yet (the sync leaves it alone
                // until its hold ends, and would have set the same id).
                let confirmed = sqlx::query(
                    "UPDATE batches SET elevenlabs_batch_id = $2, status = $3, submit_state = 'submitted',
                        created_at_unix = $4, last_updated_at_unix = $4, raw = $5, next_sync_at = $6, updated_at = $6
                     WHERE id = $1 AND submit_state = 'unknown' AND elevenlabs_batch_id IS NULL",
                )
                .bind(batch_id)
                .bind(&accepted.elevenlabs_batch_id)
                .bind(&accepted.status)
                .bind(accepted.created_at_unix)
                .bind(Json(&accepted.raw))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if confirmed.rows_affected() == 0 {
                    let id: Option<Option<String>> =
                        sqlx::query_scalar("SELECT elevenlabs_batch_id FROM batches WHERE id = $1")
                            .bind(batch_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if id.flatten().as_deref() != Some(accepted.elevenlabs_batch_id.as_str()) {
                        // Given up (or gone) although ElevenLabs took it: only
                        // possible when the confirmation came over 15 minutes late.
                        tracing::error!(
                            batch = batch_id,
                            "launch: an accepted part was settled otherwise before its confirmation"
                        );
                    }
                }
                // The people in a batch have been contacted (API.md §4 client status).
                Self::mark_contacted(&mut tx, batch_id, now, calls).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn discard_batch(&self, batch_id: i64) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let gone = sqlx::query(
                    "DELETE FROM batches WHERE id = $1 AND submit_state = 'unknown' AND elevenlabs_batch_id IS NULL",
                )
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
                if gone.rows_affected() == 1 {
                    sqlx::query("DELETE FROM call_records WHERE batch_id = $1")
                        .bind(batch_id)
                        .execute(&mut *tx)
                        .await?;
                    // The rollup's rows for the batch are all zero now: gone too,
                    // so a refused launch leaves the statistics as they were.
                    sqlx::query("DELETE FROM call_stats_hourly WHERE batch_id = $1")
                        .bind(batch_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn release_unverified_batch(&self, batch_id: i64, calls: &[NewCallRecord]) -> StoreResult<()> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE batches SET next_sync_at = $2, updated_at = $2
                     WHERE id = $1 AND submit_state = 'unknown'",
                )
                .bind(batch_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // Perhaps dialled: never offered as uncalled until the sync gives it up.
                Self::mark_contacted(&mut tx, batch_id, now, calls).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_do_not_call(&self, phone_e164: &str, reason: Option<&str>, created_by: i64) -> StoreResult<DoNotCall> {
                let row = sqlx::query(
                    "INSERT INTO do_not_call (phone_e164, reason, created_by, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING phone_e164, reason, created_by, created_at",
                )
                .bind(phone_e164)
                .bind(reason)
                .bind(created_by)
                .bind(Utc::now())
                .fetch_one(&self.pool)
                .await?;
                Ok(DoNotCall {
                    phone: row.try_get("phone_e164")?,
                    reason: row.try_get("reason")?,
                    created_by: row.try_get("created_by")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            async fn list_do_not_call(&self, page: i64, limit: i64, search: Option<&str>) -> StoreResult<(Vec<DoNotCall>, i64)> {
                let pattern = search.map($crate::store::like_pattern);
                const FILTER: &str = "($1 IS NULL OR phone_e164 LIKE $1 ESCAPE '\\' OR lower(COALESCE(reason, '')) LIKE $1 ESCAPE '\\')";
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM do_not_call WHERE {FILTER}"))
                    .bind(&pattern)
                    .fetch_one(&self.pool)
                    .await?;
                let rows = sqlx::query(&format!(
                    "SELECT phone_e164, reason, created_by, created_at FROM do_not_call WHERE {FILTER}
                     ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
                ))
                .bind(&pattern)
                .bind(limit)
                .bind((page - 1) * limit)
                .fetch_all(&self.pool)
                .await?;
                let list = rows
                    .iter()
                    .map(|row| {
                        Ok(DoNotCall {
                            phone: row.try_get("phone_e164")?,
                            reason: row.try_get("reason")?,
                            created_by: row.try_get("created_by")?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                Ok((list, total))
            }

            async fn remove_do_not_call(&self, phone_e164: &str) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM do_not_call WHERE phone_e164 = $1")
                    .bind(phone_e164)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn do_not_call_among(&self, numbers: &[String]) -> StoreResult<std::collections::HashSet<String>> {
                // The list is small next to a campaign: read it whole and intersect.
                let all: Vec<String> = sqlx::query_scalar("SELECT phone_e164 FROM do_not_call")
                    .fetch_all(&self.pool)
                    .await?;
                let wanted: std::collections::HashSet<&str> = numbers.iter().map(String::as_str).collect();
                Ok(all.into_iter().filter(|n| wanted.contains(n.as_str())).collect())
            }

            async fn claim_idempotency_key(
                &self,
                user_id: i64,
                key: &str,
                request_hash: &str,
                expires_at: DateTime<Utc>,
            ) -> StoreResult<IdempotencyClaim> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND expires_at < $3")
                    .bind(user_id)
                    .bind(key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // A key found taken is read next. On PostgreSQL the request
                // holding it may give it back in between (finding it took no
                // lock): then it is free, and claimed again. Should others keep
                // taking and giving it back, it counts as in flight (a 409).
                let mut claim = IdempotencyClaim::InFlight;
                for _ in 0..3 {
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at, expires_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, key) DO NOTHING",
                    )
                    .bind(user_id)
                    .bind(key)
                    .bind(request_hash)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        claim = IdempotencyClaim::Claimed;
                        break;
                    }
                    let row = sqlx::query(
                        "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
                    )
                    .bind(user_id)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else {
                        continue;
                    };
                    let hash: String = row.try_get("request_hash")?;
                    let status: Option<i64> = row.try_get("status_code")?;
                    let body: Option<String> = row.try_get("response_body")?;
                    claim = match (hash == request_hash, status, body) {
                        (false, _, _) => IdempotencyClaim::Mismatch,
                        (true, Some(status), Some(body)) => IdempotencyClaim::Replay { status: status as u16, body },
                        (true, _, _) => IdempotencyClaim::InFlight,
                    };
                    break;
                }
                tx.commit().await?;
                Ok(claim)
            }

            async fn complete_idempotency_key(&self, user_id: i64, key: &str, status: u16, body: &str) -> StoreResult<()> {
                sqlx::query("UPDATE idempotency_keys SET status_code = $3, response_body = $4 WHERE user_id = $1 AND key = $2")
                    .bind(user_id)
                    .bind(key)
                    .bind(i64::from(status))
                    .bind(body)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn release_idempotency_key(&self, user_id: i64, key: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status_code IS NULL")
                    .bind(user_id)
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn list_audit(&self, entity_type: &str, entity_id: &str) -> StoreResult<Vec<AuditEntry>> {
                let rows = sqlx::query(
                    "SELECT id, user_id, action, entity_type, entity_id, details, created_at
                     FROM audit_events WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
                )
                .bind(entity_type)
                .bind(entity_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let Json(details): Json<serde_json::Value> = row.try_get("details")?;
                        Ok(AuditEntry {
                            id: row.try_get("id")?,
                            user_id: row.try_get("user_id")?,
                            action: row.try_get("action")?,
                            entity_type: row.try_get("entity_type")?,
                            entity_id: row.try_get("entity_id")?,
                            details,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(StoreError::from)
            }
        }
    };
}

pub(crate) use shared_store_impl;
