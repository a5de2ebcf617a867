//! Storage: one [`Store`] trait, one implementation per backend.
//!
//! The backend is chosen once, from the URL scheme (`sqlite://` or `postgres://`).
//! Each backend embeds its own migrations. SQL that reads the same on both
//! backends lives once, in `common.rs`; what differs (locking, bulk loads) lives
//! in the backend's own file.

mod common;
pub mod history;
pub mod models;
pub mod outcome;
pub mod postgres;
pub mod sqlite;
pub mod sync;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use history::HistoryStore;
pub use models::*;
pub use outcome::{OutcomeStore, WebhookApplied};

/// What can go wrong in the store, by kind (never by constraint name: SQLite has none).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    UniqueViolation,
    #[error("public registration is closed")]
    RegistrationClosed,
    /// The group would hold more clients than allowed; `total` is how many it would have.
    #[error("too many clients in the group")]
    TooManyClients { total: i64 },
    /// Re-normalising the group's numbers would leave these clients invalid or duplicated.
    #[error("renumbering conflicts")]
    Renumbering {
        invalid: Vec<i64>,
        duplicated: Vec<i64>,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// An import's clients while its file is being read: chunks, then `End` once
/// the whole file turned out good. A feed that closes without `End` means the
/// file was refused, and nothing of it may be kept.
#[derive(Debug)]
pub enum ClientFeed {
    Chunk(Vec<NewClient>),
    End,
}

pub type ClientFeedReceiver = tokio::sync::mpsc::Receiver<ClientFeed>;

/// The feed of a group created without a file: its end, and nothing else.
pub fn no_clients() -> ClientFeedReceiver {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let _ = sender.try_send(ClientFeed::End);
    receiver
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::UniqueViolation,
            _ => StoreError::Other(err.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the service keeps. Both backends pass the same conformance suite
/// (`tests/api/store.rs`).
#[async_trait]
pub trait Store: OutcomeStore + sync::SyncStore + HistoryStore + Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Versions of the migrations applied, in order.
    async fn applied_migrations(&self) -> StoreResult<Vec<i64>>;
    /// The versions this binary embeds that the database has not recorded, in
    /// order: all of them when `_migrations` itself is missing (a database
    /// recreated empty under a running server). Reads only; for readiness.
    async fn missing_migrations(&self) -> StoreResult<Vec<i64>>;

    async fn count_users(&self) -> StoreResult<i64>;
    /// Creates a user. With [`RolePolicy::FirstIsAdmin`] the role is decided
    /// atomically: `admin` while the table is empty, else `user` if `open`, else
    /// [`StoreError::RegistrationClosed`]. The audit event (whose `entity_id`, if
    /// unset, becomes the new user's id) is written in the same transaction.
    async fn create_user(
        &self,
        new: NewUser,
        policy: RolePolicy,
        audit: Option<AuditEvent>,
    ) -> StoreResult<User>;
    async fn get_user(&self, id: i64) -> StoreResult<Option<User>>;
    /// Looks a user up by email (case-insensitive), with the password hash.
    async fn find_credentials(&self, email: &str) -> StoreResult<Option<(User, String)>>;
    async fn password_hash(&self, id: i64) -> StoreResult<Option<String>>;
    async fn list_users(&self, query: &UserQuery) -> StoreResult<(Vec<User>, i64)>;
    /// Applies the fields that are `Some`, and writes the audit event in the same
    /// transaction; returns the updated user, `None` if absent (nothing written).
    /// A new password, a demotion from admin or a deactivation bumps the user's
    /// `token_version` in the same statement, revoking every older token.
    async fn update_user(
        &self,
        id: i64,
        patch: &UserPatch,
        audit: Option<AuditEvent>,
    ) -> StoreResult<Option<User>>;
    async fn count_active_admins(&self) -> StoreResult<i64>;

    async fn record_audit(&self, event: &AuditEvent) -> StoreResult<()>;

    /// Creates the group and its clients in one transaction. Clients whose
    /// E.164 is already in the group are skipped; returns the group and how many
    /// clients were inserted. More than `max_clients` → [`StoreError::TooManyClients`].
    /// The clients come from a [`ClientFeed`] as the file is read; a feed
    /// that closes without `End` (the file was refused) stores nothing.
    async fn create_group(
        &self,
        new: NewGroup,
        clients: ClientFeedReceiver,
        max_clients: i64,
    ) -> StoreResult<(Group, u64)>;
    /// A live group the scope can see.
    async fn get_group(&self, id: i64, scope: Scope) -> StoreResult<Option<Group>>;
    /// Whether the group is live and within `scope`, without its counts (a
    /// stream asks every second).
    async fn group_is_visible(&self, id: i64, scope: Scope) -> StoreResult<bool>;
    async fn list_groups(&self, scope: Scope, query: &GroupQuery)
    -> StoreResult<(Vec<Group>, i64)>;
    /// Applies the patch; with `renumber`, every client's number is re-normalised
    /// from the number as given, in the same transaction (all or nothing).
    async fn update_group(
        &self,
        id: i64,
        scope: Scope,
        patch: &GroupPatch,
        renumber: Option<&Renumber>,
    ) -> StoreResult<Option<Group>>;
    /// Soft delete; `false` if the scope sees no such live group.
    async fn delete_group(&self, id: i64, scope: Scope) -> StoreResult<bool>;

    /// Appends clients (skipping numbers already in the group) in one
    /// transaction, from a [`ClientFeed`] as [`Store::create_group`] does.
    async fn import_clients(
        &self,
        group_id: i64,
        clients: ClientFeedReceiver,
        max_clients: i64,
    ) -> StoreResult<u64>;
    /// The E.164 numbers of the group's live clients.
    async fn group_numbers(&self, group_id: i64) -> StoreResult<Vec<String>>;
    async fn add_client(&self, group_id: i64, new: &NewClient) -> StoreResult<Client>;
    async fn get_client(&self, group_id: i64, client_id: i64) -> StoreResult<Option<Client>>;
    async fn list_clients(
        &self,
        group_id: i64,
        query: &ClientQuery,
    ) -> StoreResult<(Vec<Client>, i64)>;
    async fn update_client(
        &self,
        group_id: i64,
        client_id: i64,
        patch: &ClientPatch,
    ) -> StoreResult<Option<Client>>;
    /// Soft delete; `false` if absent.
    async fn delete_client(&self, group_id: i64, client_id: i64) -> StoreResult<bool>;
    /// Every live client of the group, as a launch needs them, in id order.
    async fn launch_clients(&self, group_id: i64) -> StoreResult<Vec<LaunchClient>>;
    /// The group's live clients that some batch already includes (they have a
    /// call record): the complement of `GET /api/groups/:id/uncalled-clients`.
    async fn called_client_ids(&self, group_id: i64)
    -> StoreResult<std::collections::HashSet<i64>>;
    async fn set_group_phone_number(&self, group_id: i64, phone_number_id: &str)
    -> StoreResult<()>;

    /// Takes the group's launch lock until `until` unless another launch holds it.
    async fn lock_launch(&self, group_id: i64, until: DateTime<Utc>) -> StoreResult<bool>;
    /// Whether a launch of the group holds its lock at `now`.
    async fn launch_in_progress(&self, group_id: i64, now: DateTime<Utc>) -> StoreResult<bool>;
    async fn unlock_launch(&self, group_id: i64) -> StoreResult<()>;
    /// The newest batch of the group created at or after `since`, or still being
    /// verified at ElevenLabs whatever its age (its ElevenLabs id, if known).
    async fn recent_batch(
        &self,
        group_id: i64,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<Option<String>>>;
    /// A launch's part, written before it is submitted (write-ahead): the batch
    /// row as an `unknown` attempt without an ElevenLabs id, which the sync
    /// leaves alone until `hold_until`, and one `pending` call record per
    /// recipient, in one transaction; returns the row id. Whatever happens
    /// next (a crash included), the attempt is confirmed, discarded, or
    /// reconciled by the sync: ElevenLabs never calls a batch we do not know.
    async fn prewrite_batch(
        &self,
        batch: &NewBatch,
        calls: &[NewCallRecord],
        hold_until: DateTime<Utc>,
    ) -> StoreResult<i64>;
    /// ElevenLabs accepted the part: its id and answer go on the row (unless
    /// something settled it already) and its `pending` clients become `contacted`.
    /// `UniqueViolation`: another batch row already has that ElevenLabs id
    /// (nothing is written).
    async fn confirm_batch(
        &self,
        batch_id: i64,
        accepted: &AcceptedBatch,
        calls: &[NewCallRecord],
    ) -> StoreResult<()>;
    /// ElevenLabs certainly did not take the part: the row and its call records
    /// go, as if never written.
    async fn discard_batch(&self, batch_id: i64) -> StoreResult<()>;
    /// The submit's outcome is unknown: the sync may reconcile the attempt from
    /// now on, and its clients count as contacted meanwhile.
    async fn release_unverified_batch(
        &self,
        batch_id: i64,
        calls: &[NewCallRecord],
    ) -> StoreResult<()>;

    async fn add_do_not_call(
        &self,
        phone_e164: &str,
        reason: Option<&str>,
        created_by: i64,
    ) -> StoreResult<DoNotCall>;
    async fn list_do_not_call(
        &self,
        page: i64,
        limit: i64,
        search: Option<&str>,
    ) -> StoreResult<(Vec<DoNotCall>, i64)>;
    async fn remove_do_not_call(&self, phone_e164: &str) -> StoreResult<bool>;
    /// Which of `numbers` are on the do-not-call list.
    async fn do_not_call_among(
        &self,
        numbers: &[String],
    ) -> StoreResult<std::collections::HashSet<String>>;

    /// Claims `key` for `user_id` and a request whose fingerprint is `request_hash`.
    async fn claim_idempotency_key(
        &self,
        user_id: i64,
        key: &str,
        request_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyClaim>;
    /// Keeps the answer of a claimed key for replays.
    async fn complete_idempotency_key(
        &self,
        user_id: i64,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()>;
    /// Frees a claimed key (the request failed: a retry with it runs again).
    async fn release_idempotency_key(&self, user_id: i64, key: &str) -> StoreResult<()>;
    async fn list_audit(&self, entity_type: &str, entity_id: &str) -> StoreResult<Vec<AuditEntry>>;
}

pub type DynStore = Arc<dyn Store>;

/// Turns a number as given into E.164 for the group's new region (`None`: invalid).
pub type Renumber = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Opens the database named by `url`, creating it (SQLite) and migrating it.
pub async fn connect(url: &str) -> anyhow::Result<DynStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://")
    }
}

/// Escapes `%`, `_` and `\` so user text matches literally inside `LIKE … ESCAPE '\'`.
pub(crate) fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_pattern_escapes_wildcards_and_lowercases() {
        assert_eq!(like_pattern("Ana_50%"), "%ana\\_50\\%%");
        assert_eq!(like_pattern("a\\b"), "%a\\\\b%");
    }
}
