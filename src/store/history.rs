//! Call history, statistics and conversations (API.md §6, issue 5).
//!
//! A trait of its own ([`HistoryStore`], a supertrait of `Store`), written once
//! as the macro [`history_store_impl!`] and expanded in `sqlite.rs` and
//! `postgres.rs`. The only SQL that differs between the backends is passed in:
//! how to take the UTC hour key (`'YYYY-MM-DDTHH'`) of a call record's
//! `created_at`, and how to list the keys of a JSON object column.
//!
//! Statistics read the rollup `call_stats_hourly` (kept by triggers, see
//! `migrations/*/0003_history.sql`) when the period is whole UTC hours, and
//! otherwise group `call_records` into the same shape on the fly; either way the
//! database returns a few hundred grouped rows, never the calls themselves.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Scope, StoreResult};

/// Which call records a history page, an export or the statistics look at.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub status: Option<String>,
    /// The batch's row id (the handler resolves ElevenLabs' `btcal_…` id first).
    pub batch_row_id: Option<i64>,
    /// `success`, `failure` or `unknown`.
    pub call_successful: Option<String>,
    /// `created_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `created_at < until` (exclusive).
    pub until: Option<DateTime<Utc>>,
    /// Lower-cased `LIKE` pattern for the client's name.
    pub name_pattern: Option<String>,
    /// `LIKE` pattern of digits for the phone number.
    pub phone_pattern: Option<String>,
}

impl HistoryFilter {
    /// Both ends of the period fall on whole UTC hours (or are absent): the
    /// hourly rollup answers exactly.
    pub fn hour_aligned(&self) -> bool {
        use chrono::Timelike;
        let aligned = |t: &Option<DateTime<Utc>>| {
            t.is_none_or(|t| t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0)
        };
        aligned(&self.from) && aligned(&self.until)
    }

    fn searching(&self) -> bool {
        self.name_pattern.is_some() || self.phone_pattern.is_some()
    }

    /// The rollup can count these records (no text search, whole hours).
    pub fn countable_from_rollup(&self) -> bool {
        !self.searching() && self.hour_aligned()
    }
}

/// One line of the history.
#[derive(Debug, Clone)]
pub struct CallHistoryRow {
    pub id: i64,
    pub batch_id: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub phone_number: String,
    pub status: String,
    pub conversation_id: Option<String>,
    pub duration_secs: Option<i64>,
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only filled for exports.
    pub variables: Option<serde_json::Value>,
    /// Only filled for exports.
    pub data_collection: Option<serde_json::Value>,
}

/// A batch of the group with its calls counted by the rollup.
#[derive(Debug, Clone)]
pub struct BatchSummaryRow {
    pub id: i64,
    pub batch_id: Option<String>,
    pub name: String,
    pub status: String,
    pub agent_id: String,
    pub phone_number_id: Option<String>,
    pub scheduled_time_unix: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub total_recipients: i64,
    pub completed_calls: i64,
    pub failed_calls: i64,
    pub voicemail_calls: i64,
    pub successful_calls: i64,
}

/// Call records grouped by UTC hour, batch, status and outcome.
#[derive(Debug, Clone)]
pub struct StatsBucket {
    /// `YYYY-MM-DDTHH`, UTC.
    pub hour: String,
    pub batch_id: i64,
    pub status: String,
    /// `call_successful`, `""` while unknown.
    pub outcome: String,
    pub calls: i64,
    pub duration_sum: i64,
    pub duration_calls: i64,
}

/// What cannot be summed from buckets.
#[derive(Debug, Clone, Default)]
pub struct StatsExtras {
    pub total_batch_calls: i64,
    pub unique_clients_reached: i64,
    pub last_call_at: Option<DateTime<Utc>>,
}

/// A call record with a conversation, as `GET /api/conversations/:id` shows it.
#[derive(Debug, Clone)]
pub struct ConversationRecord {
    pub call_id: i64,
    pub group_id: i64,
    pub batch_id: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub phone_number: String,
    pub status: String,
    pub conversation_id: String,
    pub duration_secs: Option<i64>,
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub termination_reason: Option<String>,
    pub data_collection: Option<serde_json::Value>,
    pub evaluation: Option<serde_json::Value>,
    pub transcript: Option<serde_json::Value>,
    pub failure_reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub fetched_at: Option<DateTime<Utc>>,
}

/// What a conversation fetched from ElevenLabs adds to its call record. The
/// transcript is always written; the other fields only where still empty (the
/// sync or the webhook may have filled them already).
#[derive(Debug, Clone, Default)]
pub struct ConversationFill {
    pub transcript: serde_json::Value,
    pub duration_secs: Option<i64>,
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub termination_reason: Option<String>,
    pub data_collection: Option<serde_json::Value>,
    pub evaluation: Option<serde_json::Value>,
    pub started_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// The row id of the group's batch whose ElevenLabs id is `elevenlabs_id`.
    async fn batch_row_id(&self, group_id: i64, elevenlabs_id: &str) -> StoreResult<Option<i64>>;
    /// One page of the group's calls, newest first, and the true total.
    async fn call_history(
        &self,
        group_id: i64,
        filter: &HistoryFilter,
        page: i64,
        limit: i64,
    ) -> StoreResult<(Vec<CallHistoryRow>, i64)>;
    /// Up to `limit` calls older than `after` (`created_at`, `id`), newest
    /// first, with the client's variables and the data collection: an export
    /// reads the whole history this way, one bounded chunk at a time.
    async fn call_history_chunk(
        &self,
        group_id: i64,
        filter: &HistoryFilter,
        after: Option<(DateTime<Utc>, i64)>,
        limit: i64,
    ) -> StoreResult<Vec<CallHistoryRow>>;
    /// The keys of the group's clients' variables and of its calls' data
    /// collection, sorted: the extra columns of an export.
    async fn export_keys(&self, group_id: i64) -> StoreResult<(Vec<String>, Vec<String>)>;
    /// The group's batches, newest first (`limit`: at most that many).
    async fn batch_summaries(
        &self,
        group_id: i64,
        limit: Option<i64>,
    ) -> StoreResult<Vec<BatchSummaryRow>>;
    /// The group's calls in the filter's period grouped into [`StatsBucket`]s.
    async fn stats_buckets(
        &self,
        group_id: i64,
        filter: &HistoryFilter,
    ) -> StoreResult<Vec<StatsBucket>>;
    async fn stats_extras(&self, group_id: i64, filter: &HistoryFilter)
    -> StoreResult<StatsExtras>;
    /// The call record of `conversation_id` in a live group the scope can see.
    async fn find_conversation(
        &self,
        conversation_id: &str,
        scope: Scope,
    ) -> StoreResult<Option<ConversationRecord>>;
    /// Keeps a fetched conversation on its call record.
    async fn store_conversation(&self, call_id: i64, fill: &ConversationFill) -> StoreResult<()>;
}

/// Appends the filter's conditions on `r`, the call record of group
/// `$group_id`, to a query that already has a `WHERE`.
macro_rules! push_history_filter {
    ($qb:expr, $filter:expr, $group_id:expr) => {{
        let f: &$crate::store::history::HistoryFilter = $filter;
        if let Some(status) = &f.status {
            $qb.push(" AND r.status = ").push_bind(status.clone());
        }
        if let Some(batch) = f.batch_row_id {
            $qb.push(" AND r.batch_id = ").push_bind(batch);
        }
        match f.call_successful.as_deref() {
            // `unknown` also covers calls whose outcome is not known yet.
            Some("unknown") => {
                $qb.push(" AND (r.call_successful IS NULL OR r.call_successful = 'unknown')");
            }
            Some(outcome) => {
                $qb.push(" AND r.call_successful = ")
                    .push_bind(outcome.to_owned());
            }
            None => {}
        }
        if let Some(from) = f.from {
            $qb.push(" AND r.created_at >= ").push_bind(from);
        }
        if let Some(until) = f.until {
            $qb.push(" AND r.created_at < ").push_bind(until);
        }
        // Searched among the group's clients first (a few ids), then their
        // calls by client: never a LIKE over every call of the group.
        if f.name_pattern.is_some() || f.phone_pattern.is_some() {
            $qb.push(" AND r.client_id IN (SELECT sc.id FROM clients sc WHERE sc.group_id = ")
                .push_bind($group_id)
                .push(" AND (");
            if let Some(name) = &f.name_pattern {
                $qb.push("lower(sc.name) LIKE ")
                    .push_bind(name.clone())
                    .push(" ESCAPE '\\'");
            }
            if let Some(phone) = &f.phone_pattern {
                if f.name_pattern.is_some() {
                    $qb.push(" OR ");
                }
                $qb.push("sc.phone_e164 LIKE ").push_bind(phone.clone());
            }
            $qb.push("))");
        }
    }};
}
pub(crate) use push_history_filter;

/// The same conditions on the rollup `s` (only for [`HistoryFilter::countable_from_rollup`]).
macro_rules! push_rollup_filter {
    ($qb:expr, $filter:expr) => {{
        let f: &$crate::store::history::HistoryFilter = $filter;
        if let Some(status) = &f.status {
            $qb.push(" AND s.status = ").push_bind(status.clone());
        }
        if let Some(batch) = f.batch_row_id {
            $qb.push(" AND s.batch_id = ").push_bind(batch);
        }
        match f.call_successful.as_deref() {
            Some("unknown") => {
                $qb.push(" AND s.outcome IN ('', 'unknown')");
            }
            Some(outcome) => {
                $qb.push(" AND s.outcome = ").push_bind(outcome.to_owned());
            }
            None => {}
        }
        if let Some(from) = f.from {
            $qb.push(" AND s.hour >= ")
                .push_bind(from.format("%Y-%m-%dT%H").to_string());
        }
        if let Some(until) = f.until {
            $qb.push(" AND s.hour < ")
                .push_bind(until.format("%Y-%m-%dT%H").to_string());
        }
    }};
}
pub(crate) use push_rollup_filter;

/// From this offset on, a history page is sought through the hourly rollup.
pub(crate) const SEEK_MIN_OFFSET: i64 = 1_000;

/// `hours`: the rollup's `(hour key, calls)` newest first. Returns the end of
/// the hour the `offset`th call falls in (`created_at < end`) and the offset
/// left within it; `(None, offset)` when nothing can be skipped.
pub(crate) fn seek_hour(hours: &[(String, i64)], offset: i64) -> (Option<DateTime<Utc>>, i64) {
    let mut skipped = 0i64;
    for (hour, calls) in hours {
        if skipped + calls > offset {
            if skipped == 0 {
                break;
            }
            let start = chrono::NaiveDateTime::parse_from_str(
                &format!("{hour}:00:00"),
                "%Y-%m-%dT%H:%M:%S",
            );
            return match start {
                Ok(start) => (
                    Some(start.and_utc() + chrono::Duration::hours(1)),
                    offset - skipped,
                ),
                Err(_) => (None, offset),
            };
        }
        skipped += calls;
    }
    (None, offset)
}

pub(crate) const HISTORY_COLUMNS: &str = "r.id, b.elevenlabs_batch_id, r.client_id, c.name AS client_name,
    r.phone_e164, r.status, r.conversation_id, r.duration_secs, r.call_successful, r.transcript_summary,
    r.started_at, r.created_at, r.updated_at";

/// `$hour_sql`: the UTC hour key of `r.created_at` as `'YYYY-MM-DDTHH'` text;
/// `$variable_keys_sql` / `$data_keys_sql`: the distinct keys of the group's
/// clients' `variables` / its calls' `data_collection` (`$1` = group id).
macro_rules! history_store_impl {
    ($store:ident, $db:ty, $hour_sql:literal, $variable_keys_sql:literal, $data_keys_sql:literal) => {
        mod history_impl {
            use super::$store;
            use chrono::{DateTime, Utc};
            use sqlx::Row;
            use sqlx::types::Json;
            use $crate::store::history::{
                BatchSummaryRow, CallHistoryRow, ConversationFill, ConversationRecord,
                HISTORY_COLUMNS, HistoryFilter, HistoryStore, SEEK_MIN_OFFSET, StatsBucket,
                StatsExtras, push_history_filter, push_rollup_filter, seek_hour,
            };
            use $crate::store::{Scope, StoreResult};

            type DbRow = <$db as sqlx::Database>::Row;

            fn history_row(row: &DbRow, export: bool) -> Result<CallHistoryRow, sqlx::Error> {
                let (variables, data_collection) = if export {
                    let variables: Option<Json<serde_json::Value>> = row.try_get("variables")?;
                    let data: Option<Json<serde_json::Value>> = row.try_get("data_collection")?;
                    (variables.map(|j| j.0), data.map(|j| j.0))
                } else {
                    (None, None)
                };
                Ok(CallHistoryRow {
                    id: row.try_get("id")?,
                    batch_id: row.try_get("elevenlabs_batch_id")?,
                    client_id: row.try_get("client_id")?,
                    client_name: row.try_get("client_name")?,
                    phone_number: row.try_get("phone_e164")?,
                    status: row.try_get("status")?,
                    conversation_id: row.try_get("conversation_id")?,
                    duration_secs: row.try_get("duration_secs")?,
                    call_successful: row.try_get("call_successful")?,
                    transcript_summary: row.try_get("transcript_summary")?,
                    started_at: row.try_get("started_at")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    variables,
                    data_collection,
                })
            }

            #[async_trait::async_trait]
            impl HistoryStore for $store {
                async fn batch_row_id(&self, group_id: i64, elevenlabs_id: &str) -> StoreResult<Option<i64>> {
                    Ok(sqlx::query_scalar("SELECT id FROM batches WHERE group_id = $1 AND elevenlabs_batch_id = $2")
                        .bind(group_id)
                        .bind(elevenlabs_id)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn call_history(
                    &self,
                    group_id: i64,
                    filter: &HistoryFilter,
                    page: i64,
                    limit: i64,
                ) -> StoreResult<(Vec<CallHistoryRow>, i64)> {
                    let total: i64 = if filter.countable_from_rollup() {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) FROM call_stats_hourly s WHERE s.group_id = ",
                        );
                        qb.push_bind(group_id);
                        push_rollup_filter!(qb, filter);
                        qb.build_query_scalar().fetch_one(&self.pool).await?
                    } else {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT COUNT(*) FROM call_records r WHERE r.group_id = ",
                        );
                        qb.push_bind(group_id);
                        push_history_filter!(qb, filter, group_id);
                        qb.build_query_scalar().fetch_one(&self.pool).await?
                    };
                    let offset = (page - 1).saturating_mul(limit);
                    if total == 0 || offset >= total {
                        return Ok((Vec::new(), total));
                    }
                    // A deep page starts from the hour it falls in: the rollup counts
                    // the newer hours, so the index walk skips at most one hour's calls.
                    let (before, offset) = if filter.countable_from_rollup() && offset >= SEEK_MIN_OFFSET {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT s.hour, CAST(SUM(s.calls) AS BIGINT) FROM call_stats_hourly s WHERE s.group_id = ",
                        );
                        qb.push_bind(group_id);
                        push_rollup_filter!(qb, filter);
                        qb.push(" GROUP BY s.hour ORDER BY s.hour DESC");
                        let hours: Vec<(String, i64)> = qb.build_query_as().fetch_all(&self.pool).await?;
                        seek_hour(&hours, offset)
                    } else {
                        (None, offset)
                    };
                    // The page's ids first (read in order from an index, the skipped
                    // rows never leave it), then only those rows in full.
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {HISTORY_COLUMNS} FROM (SELECT r.id FROM call_records r"
                    ));
                    qb.push(" WHERE r.group_id = ").push_bind(group_id);
                    push_history_filter!(qb, filter, group_id);
                    if let Some(before) = before {
                        qb.push(" AND r.created_at < ").push_bind(before);
                    }
                    qb.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
                        .push_bind(limit)
                        .push(" OFFSET ")
                        .push_bind(offset)
                        .push(
                            ") p JOIN call_records r ON r.id = p.id JOIN batches b ON b.id = r.batch_id
                             LEFT JOIN clients c ON c.id = r.client_id ORDER BY r.created_at DESC, r.id DESC",
                        );
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    let calls = rows
                        .iter()
                        .map(|row| history_row(row, false))
                        .collect::<Result<Vec<_>, sqlx::Error>>()?;
                    Ok((calls, total))
                }

                async fn call_history_chunk(
                    &self,
                    group_id: i64,
                    filter: &HistoryFilter,
                    after: Option<(DateTime<Utc>, i64)>,
                    limit: i64,
                ) -> StoreResult<Vec<CallHistoryRow>> {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {HISTORY_COLUMNS}, c.variables, r.data_collection FROM call_records r
                         JOIN batches b ON b.id = r.batch_id LEFT JOIN clients c ON c.id = r.client_id
                         WHERE r.group_id = "
                    ));
                    qb.push_bind(group_id);
                    push_history_filter!(qb, filter, group_id);
                    if let Some((created_at, id)) = after {
                        qb.push(" AND (r.created_at < ")
                            .push_bind(created_at)
                            .push(" OR (r.created_at = ")
                            .push_bind(created_at)
                            .push(" AND r.id < ")
                            .push_bind(id)
                            .push("))");
                    }
                    qb.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    rows.iter()
                        .map(|row| history_row(row, true))
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(Into::into)
                }

                async fn export_keys(&self, group_id: i64) -> StoreResult<(Vec<String>, Vec<String>)> {
                    let mut variables: Vec<String> = sqlx::query_scalar($variable_keys_sql)
                        .bind(group_id)
                        .fetch_all(&self.pool)
                        .await?;
                    let mut data: Vec<String> = sqlx::query_scalar($data_keys_sql)
                        .bind(group_id)
                        .fetch_all(&self.pool)
                        .await?;
                    variables.sort();
                    variables.dedup();
                    data.sort();
                    data.dedup();
                    Ok((variables, data))
                }

                async fn batch_summaries(&self, group_id: i64, limit: Option<i64>) -> StoreResult<Vec<BatchSummaryRow>> {
                    let rows = sqlx::query(
                        "SELECT b.id, b.elevenlabs_batch_id, b.name, b.status, b.agent_id, b.phone_number_id,
                                b.scheduled_time_unix, b.created_at,
                                CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) AS total,
                                CAST(COALESCE(SUM(CASE WHEN s.status = 'completed' THEN s.calls END), 0) AS BIGINT) AS completed,
                                CAST(COALESCE(SUM(CASE WHEN s.status = 'failed' THEN s.calls END), 0) AS BIGINT) AS failed,
                                CAST(COALESCE(SUM(CASE WHEN s.status = 'voicemail' THEN s.calls END), 0) AS BIGINT) AS voicemail,
                                CAST(COALESCE(SUM(CASE WHEN s.status = 'completed' AND s.outcome = 'success' THEN s.calls END), 0) AS BIGINT) AS successful
                         FROM (SELECT * FROM batches WHERE group_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) b
                         LEFT JOIN call_stats_hourly s ON s.batch_id = b.id
                         GROUP BY b.id, b.elevenlabs_batch_id, b.name, b.status, b.agent_id, b.phone_number_id,
                                  b.scheduled_time_unix, b.created_at
                         ORDER BY b.created_at DESC, b.id DESC",
                    )
                    .bind(group_id)
                    .bind(limit.unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(BatchSummaryRow {
                                id: row.try_get("id")?,
                                batch_id: row.try_get("elevenlabs_batch_id")?,
                                name: row.try_get("name")?,
                                status: row.try_get("status")?,
                                agent_id: row.try_get("agent_id")?,
                                phone_number_id: row.try_get("phone_number_id")?,
                                scheduled_time_unix: row.try_get("scheduled_time_unix")?,
                                created_at: row.try_get("created_at")?,
                                total_recipients: row.try_get("total")?,
                                completed_calls: row.try_get("completed")?,
                                failed_calls: row.try_get("failed")?,
                                voicemail_calls: row.try_get("voicemail")?,
                                successful_calls: row.try_get("successful")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(Into::into)
                }

                async fn stats_buckets(&self, group_id: i64, filter: &HistoryFilter) -> StoreResult<Vec<StatsBucket>> {
                    let rows = if filter.countable_from_rollup() {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT s.hour, s.batch_id, s.status, s.outcome,
                                    CAST(SUM(s.calls) AS BIGINT) AS calls,
                                    CAST(SUM(s.duration_sum) AS BIGINT) AS duration_sum,
                                    CAST(SUM(s.duration_calls) AS BIGINT) AS duration_calls
                             FROM call_stats_hourly s WHERE s.group_id = ",
                        );
                        qb.push_bind(group_id);
                        push_rollup_filter!(qb, filter);
                        qb.push(" GROUP BY s.hour, s.batch_id, s.status, s.outcome HAVING SUM(s.calls) <> 0");
                        qb.build().fetch_all(&self.pool).await?
                    } else {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(concat!(
                            "SELECT ", $hour_sql, " AS hour, r.batch_id, r.status, COALESCE(r.call_successful, '') AS outcome,
                                    CAST(COUNT(*) AS BIGINT) AS calls,
                                    CAST(COALESCE(SUM(r.duration_secs), 0) AS BIGINT) AS duration_sum,
                                    CAST(COUNT(r.duration_secs) AS BIGINT) AS duration_calls
                             FROM call_records r WHERE r.group_id = "
                        ));
                        qb.push_bind(group_id);
                        push_history_filter!(qb, filter, group_id);
                        qb.push(" GROUP BY 1, 2, 3, 4");
                        qb.build().fetch_all(&self.pool).await?
                    };
                    rows.iter()
                        .map(|row| {
                            Ok(StatsBucket {
                                hour: row.try_get("hour")?,
                                batch_id: row.try_get("batch_id")?,
                                status: row.try_get("status")?,
                                outcome: row.try_get("outcome")?,
                                calls: row.try_get("calls")?,
                                duration_sum: row.try_get("duration_sum")?,
                                duration_calls: row.try_get("duration_calls")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(Into::into)
                }

                async fn stats_extras(&self, group_id: i64, filter: &HistoryFilter) -> StoreResult<StatsExtras> {
                    let period = HistoryFilter { from: filter.from, until: filter.until, ..HistoryFilter::default() };
                    let whole_history = filter.from.is_none() && filter.until.is_none();
                    let batches = async {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted' AND group_id = ",
                        );
                        qb.push_bind(group_id);
                        if let Some(from) = period.from {
                            qb.push(" AND created_at >= ").push_bind(from);
                        }
                        if let Some(until) = period.until {
                            qb.push(" AND created_at < ").push_bind(until);
                        }
                        qb.build_query_scalar::<i64>().fetch_one(&self.pool).await
                    };
                    let unique = async {
                        if whole_history {
                            return sqlx::query_scalar::<_, i64>(
                                "SELECT COUNT(*) FROM call_reached_clients WHERE group_id = $1 AND calls > 0",
                            )
                            .bind(group_id)
                            .fetch_one(&self.pool)
                            .await;
                        }
                        // An index-only scan of (group_id, status, created_at, client_id).
                        // PostgreSQL hashes a GROUP BY twice as fast as COUNT(DISTINCT)
                        // sorts; SQLite would answer that GROUP BY from its client_id
                        // index over the whole table, so it keeps COUNT(DISTINCT).
                        let grouped = <$db as sqlx::Database>::NAME == "PostgreSQL";
                        let mut qb = sqlx::QueryBuilder::<$db>::new(if grouped {
                            "SELECT COUNT(*) FROM (SELECT r.client_id FROM call_records r
                             WHERE r.status = 'completed' AND r.client_id IS NOT NULL AND r.group_id = "
                        } else {
                            "SELECT COUNT(DISTINCT r.client_id) FROM call_records r
                             WHERE r.status = 'completed' AND r.group_id = "
                        });
                        qb.push_bind(group_id);
                        push_history_filter!(qb, &period, group_id);
                        if grouped {
                            qb.push(" GROUP BY r.client_id) reached");
                        }
                        qb.build_query_scalar::<i64>().fetch_one(&self.pool).await
                    };
                    let last = async {
                        // Whole history: the end of the (group_id, started_at) index.
                        // A period: COALESCE keeps the planner from walking that index
                        // backwards past later calls, and reads (group_id, created_at, started_at).
                        let column = if whole_history { "r.started_at" } else { "COALESCE(r.started_at, r.started_at)" };
                        let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                            "SELECT MAX({column}) FROM call_records r WHERE r.group_id = "
                        ));
                        qb.push_bind(group_id);
                        if whole_history {
                            // What lets SQLite read the partial index.
                            qb.push(" AND r.started_at IS NOT NULL");
                        }
                        push_history_filter!(qb, &period, group_id);
                        qb.build_query_scalar::<Option<DateTime<Utc>>>().fetch_one(&self.pool).await
                    };
                    let (total_batch_calls, unique_clients_reached, last_call_at) =
                        tokio::try_join!(batches, unique, last)?;
                    Ok(StatsExtras { total_batch_calls, unique_clients_reached, last_call_at })
                }

                async fn find_conversation(&self, conversation_id: &str, scope: Scope) -> StoreResult<Option<ConversationRecord>> {
                    let row = sqlx::query(
                        "SELECT r.id, r.group_id, b.elevenlabs_batch_id, r.client_id, c.name AS client_name, r.phone_e164,
                                r.status, r.conversation_id, r.duration_secs, r.call_successful, r.transcript_summary,
                                r.termination_reason, r.data_collection, r.evaluation, r.transcript, r.failure_reason,
                                r.started_at, r.ended_at, r.conversation_fetched_at
                         FROM call_records r
                         JOIN groups g ON g.id = r.group_id
                         JOIN batches b ON b.id = r.batch_id
                         LEFT JOIN clients c ON c.id = r.client_id
                         WHERE r.conversation_id = $1 AND g.deleted_at IS NULL AND ($2 IS NULL OR g.created_by = $2)
                         ORDER BY r.id DESC LIMIT 1",
                    )
                    .bind(conversation_id)
                    .bind(scope.owner())
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let json = |name: &str| -> Result<Option<serde_json::Value>, sqlx::Error> {
                        let value: Option<Json<serde_json::Value>> = row.try_get(name)?;
                        Ok(value.map(|j| j.0))
                    };
                    Ok(Some(ConversationRecord {
                        call_id: row.try_get("id")?,
                        group_id: row.try_get("group_id")?,
                        batch_id: row.try_get("elevenlabs_batch_id")?,
                        client_id: row.try_get("client_id")?,
                        client_name: row.try_get("client_name")?,
                        phone_number: row.try_get("phone_e164")?,
                        status: row.try_get("status")?,
                        conversation_id: row.try_get("conversation_id")?,
                        duration_secs: row.try_get("duration_secs")?,
                        call_successful: row.try_get("call_successful")?,
                        transcript_summary: row.try_get("transcript_summary")?,
                        termination_reason: row.try_get("termination_reason")?,
                        data_collection: json("data_collection")?,
                        evaluation: json("evaluation")?,
                        transcript: json("transcript")?,
                        failure_reason: row.try_get("failure_reason")?,
                        started_at: row.try_get("started_at")?,
                        ended_at: row.try_get("ended_at")?,
                        fetched_at: row.try_get("conversation_fetched_at")?,
                    }))
                }

                async fn store_conversation(&self, call_id: i64, fill: &ConversationFill) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE call_records SET transcript = $2, conversation_fetched_at = $3,
                            duration_secs = COALESCE(duration_secs, $4),
                            call_successful = COALESCE(call_successful, $5),
                            transcript_summary = COALESCE(transcript_summary, $6),
                            termination_reason = COALESCE(termination_reason, $7),
                            data_collection = COALESCE(data_collection, $8),
                            evaluation = COALESCE(evaluation, $9),
                            started_at = COALESCE(started_at, $10)
                         WHERE id = $1",
                    )
                    .bind(call_id)
                    .bind(Json(&fill.transcript))
                    .bind(Utc::now())
                    .bind(fill.duration_secs)
                    .bind(&fill.call_successful)
                    .bind(&fill.transcript_summary)
                    .bind(&fill.termination_reason)
                    .bind(fill.data_collection.as_ref().map(Json))
                    .bind(fill.evaluation.as_ref().map(Json))
                    .bind(fill.started_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        }
    };
}
pub(crate) use history_store_impl;

#[cfg(test)]
mod tests {
    use super::seek_hour;
    use chrono::{TimeZone, Utc};

    fn hours() -> Vec<(String, i64)> {
        vec![
            ("2026-03-02T10".into(), 100),
            ("2026-03-02T09".into(), 0),
            ("2026-03-01T23".into(), 50),
            ("2026-02-28T00".into(), 7),
        ]
    }

    #[test]
    fn offsets_in_the_newest_hour_skip_nothing() {
        assert_eq!(seek_hour(&hours(), 0), (None, 0));
        assert_eq!(seek_hour(&hours(), 99), (None, 99));
    }

    #[test]
    fn deeper_offsets_start_at_the_end_of_their_hour() {
        let end = |d, h| Some(Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap());
        // 100 newer calls skipped; the empty hour in between changes nothing.
        assert_eq!(seek_hour(&hours(), 100), (end(2, 0), 0));
        assert_eq!(seek_hour(&hours(), 149), (end(2, 0), 49));
        assert_eq!(
            seek_hour(&hours(), 150),
            (Some(Utc.with_ymd_and_hms(2026, 2, 28, 1, 0, 0).unwrap()), 0)
        );
    }

    #[test]
    fn past_the_end_or_unreadable_keys_fall_back_to_the_plain_offset() {
        assert_eq!(seek_hour(&hours(), 157), (None, 157));
        let bad = vec![("x".to_string(), 1), ("nonsense".to_string(), 5)];
        assert_eq!(seek_hour(&bad, 3), (None, 3));
    }
}
