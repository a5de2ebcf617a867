//! Plain data the store reads and writes. Serialisation here is the API's
//! (camelCase); nothing secret is ever serialisable.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped when the password changes, the user loses the admin role or is
    /// deactivated: a token issued at an older version no longer works.
    #[serde(skip)]
    pub token_version: i64,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    /// Stored lower-cased: emails compare case-insensitively.
    pub email: String,
    pub password_hash: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

/// How [`super::Store::create_user`] picks the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolePolicy {
    /// Self-registration: the first user is `admin`; afterwards `user` if
    /// registration is open, else refused.
    FirstIsAdmin { open: bool },
    /// Created by an admin or the CLI.
    Fixed(Role),
}

#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    pub page: i64,
    pub limit: i64,
    pub search: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub username: Option<String>,
    pub email: Option<String>,
    /// `Some(None)` clears the field.
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        self.username.is_none()
            && self.email.is_none()
            && self.first_name.is_none()
            && self.last_name.is_none()
            && self.role.is_none()
            && self.is_active.is_none()
            && self.password_hash.is_none()
    }
}

/// Something a person did that an operator may need to trace later.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub user_id: Option<i64>,
    pub action: &'static str,
    pub entity_type: &'static str,
    pub entity_id: Option<String>,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub user_id: Option<i64>,
    pub action: String,
    pub entity_type: String,
    pub entity_id: Option<String>,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Which groups a caller may see: an admin sees all, a user only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Owner(i64),
}

impl Scope {
    pub fn of(user: &User) -> Scope {
        if user.is_admin() {
            Scope::All
        } else {
            Scope::Owner(user.id)
        }
    }

    /// The owner to filter on, if any.
    pub fn owner(self) -> Option<i64> {
        match self {
            Scope::All => None,
            Scope::Owner(id) => Some(id),
        }
    }
}

/// A summary of the group's latest batch (API.md §4).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchCallStats {
    pub has_been_called: bool,
    pub status: Option<String>,
    pub total_recipients: i64,
    pub completed_calls: i64,
    pub failed_calls: i64,
    /// Completed calls as a percentage of recipients, one decimal.
    pub success_rate: f64,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub prompt: Option<String>,
    pub color: String,
    pub favorite: bool,
    pub idioma: String,
    /// Default dynamic variables for every client of the group.
    #[schema(value_type = Object)]
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub prefix: String,
    pub selected_country_code: String,
    pub first_message: Option<String>,
    pub phone_number_id: Option<String>,
    pub agent_id: Option<String>,
    pub timezone: String,
    pub created_by: i64,
    pub clients_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub batch_call_stats: BatchCallStats,
}

#[derive(Debug, Clone)]
pub struct NewGroup {
    pub name: String,
    pub description: Option<String>,
    pub prompt: Option<String>,
    pub color: String,
    pub favorite: bool,
    pub idioma: String,
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub prefix: String,
    pub selected_country_code: String,
    pub first_message: Option<String>,
    pub phone_number_id: Option<String>,
    pub agent_id: Option<String>,
    pub timezone: String,
    pub created_by: i64,
}

/// Fields to change; `Some(None)` clears a nullable field.
#[derive(Debug, Clone, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub prompt: Option<Option<String>>,
    pub color: Option<String>,
    pub favorite: Option<bool>,
    pub idioma: Option<String>,
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    pub prefix: Option<String>,
    pub selected_country_code: Option<String>,
    pub first_message: Option<Option<String>>,
    pub phone_number_id: Option<Option<String>>,
    pub agent_id: Option<Option<String>>,
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GroupQuery {
    pub page: i64,
    pub limit: i64,
    pub search: Option<String>,
    pub favorite: Option<bool>,
    pub created_by: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    pub id: i64,
    pub group_id: i64,
    pub external_id: Option<String>,
    pub name: Option<String>,
    /// As given.
    pub phone: String,
    pub phone_e164: String,
    pub email: Option<String>,
    pub address: Option<String>,
    pub category: Option<String>,
    /// `pending`, `contacted`, `completed` or `cancelled`.
    pub status: String,
    /// Every other spreadsheet column.
    #[schema(value_type = Object)]
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub phone: String,
    pub phone_e164: String,
    pub email: Option<String>,
    pub address: Option<String>,
    pub category: Option<String>,
    pub variables: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct ClientPatch {
    pub name: Option<Option<String>>,
    /// The number as given and its E.164 form, changed together.
    pub phone: Option<(String, String)>,
    pub email: Option<Option<String>>,
    pub address: Option<Option<String>>,
    pub category: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
    pub status: Option<String>,
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default)]
pub struct ClientQuery {
    pub page: i64,
    pub limit: i64,
    pub search: Option<String>,
    pub status: Option<String>,
    /// Only clients never included in a batch.
    pub uncalled: bool,
}

/// A client's numbers, for re-normalising after a prefix change.
#[derive(Debug, Clone)]
pub struct ClientPhone {
    pub id: i64,
    pub phone: String,
    pub phone_e164: String,
}

/// A launch's part as it is written ahead of its submit (one per ElevenLabs
/// batch): an `unknown` attempt, without ElevenLabs' id or answer, which
/// [`AcceptedBatch`] brings once ElevenLabs has taken it.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub group_id: i64,
    pub created_by: i64,
    pub agent_id: String,
    pub phone_number_id: Option<String>,
    pub name: String,
    pub part_index: i64,
    pub part_count: i64,
    pub launch_key: Option<String>,
    pub scheduled_time_unix: Option<i64>,
    pub total_calls_scheduled: i64,
}

/// What ElevenLabs answered to an accepted submit.
#[derive(Debug, Clone)]
pub struct AcceptedBatch {
    pub elevenlabs_batch_id: String,
    pub status: String,
    pub created_at_unix: Option<i64>,
    pub raw: serde_json::Value,
}

/// One recipient of a batch.
#[derive(Debug, Clone)]
pub struct NewCallRecord {
    pub client_id: Option<i64>,
    pub recipient_id: Option<String>,
    pub phone_e164: String,
}

/// A number nobody may call.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DoNotCall {
    pub phone: String,
    pub reason: Option<String>,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// What an `Idempotency-Key` lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// The key is new and now held by this request.
    Claimed,
    /// Done before with the same request: replay this answer.
    Replay { status: u16, body: String },
    /// Used before with another request.
    Mismatch,
    /// Another request with this key is still running.
    InFlight,
}

/// What a launch needs of a client, and nothing more (a launch reads the
/// whole group, up to `MAX_CLIENTS_PER_GROUP` rows).
#[derive(Debug, Clone)]
pub struct LaunchClient {
    pub id: i64,
    pub name: Option<String>,
    pub phone_e164: String,
    pub email: Option<String>,
    pub variables: serde_json::Map<String, serde_json::Value>,
}
