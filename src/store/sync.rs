//! What the background sync and the batch-status endpoints keep and read
//! (API.md §6): leases on batches, ElevenLabs' snapshots applied to the call
//! records, and the batch views.
//!
//! A batch is synced only by the instance holding its lease
//! (`lease_owner`, `lease_expires_at`): a claim is one conditional `UPDATE`, so
//! of two instances racing for a batch only one wins, and a crashed instance's
//! lease simply expires. Every write made under a lease checks the lease again,
//! so an instance that lost it (it stalled past the expiry) writes nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::StoreResult;

/// A batch as the sync sees it.
#[derive(Debug, Clone)]
pub struct SyncBatch {
    pub id: i64,
    pub elevenlabs_batch_id: Option<String>,
    pub group_id: i64,
    pub agent_id: String,
    pub name: String,
    pub status: String,
    /// `submitted`, `unknown` (the submit timed out) or `not_submitted`.
    pub submit_state: String,
    pub created_at: DateTime<Utc>,
    pub sync_failures: i64,
}

/// A stored batch, for the status endpoints.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: i64,
    pub elevenlabs_batch_id: Option<String>,
    pub group_id: i64,
    pub agent_id: String,
    pub phone_number_id: Option<String>,
    pub name: String,
    pub status: String,
    pub submit_state: String,
    pub part_index: i64,
    pub part_count: i64,
    pub scheduled_time_unix: Option<i64>,
    pub created_at_unix: Option<i64>,
    pub last_updated_at_unix: Option<i64>,
    pub total_calls_scheduled: i64,
    pub total_calls_dispatched: i64,
    pub total_calls_finished: i64,
    pub raw: Value,
    pub is_final: bool,
    pub sync_failures: i64,
    pub last_synced_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One call of a batch, joined to its client.
#[derive(Debug, Clone)]
pub struct RecipientRow {
    pub id: i64,
    pub recipient_id: Option<String>,
    pub phone_e164: String,
    pub status: String,
    pub conversation_id: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub duration_secs: Option<i64>,
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One recipient as ElevenLabs reports it.
#[derive(Debug, Clone)]
pub struct RecipientSnapshot {
    pub id: String,
    pub phone_number: Option<String>,
    pub status: String,
    pub conversation_id: Option<String>,
    pub updated_at_unix: Option<i64>,
}

/// A batch as ElevenLabs reports it.
#[derive(Debug, Clone)]
pub struct BatchSnapshot {
    pub status: String,
    pub total_calls_scheduled: i64,
    pub total_calls_dispatched: i64,
    pub total_calls_finished: i64,
    pub last_updated_at_unix: Option<i64>,
    pub scheduled_time_unix: Option<i64>,
    /// Everything ElevenLabs returned, recipients left out.
    pub raw: Value,
    pub recipients: Vec<RecipientSnapshot>,
}

/// A call record whose change a snapshot brings.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub record_id: i64,
    pub recipient_id: String,
    pub status: String,
    pub conversation_id: Option<String>,
    /// A new attempt (a retry): the previous outcome is cleared.
    pub reopened: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What applying a snapshot changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotApplied {
    pub changed: usize,
    pub unmatched: usize,
}

/// A call record as a snapshot is compared with it.
#[derive(Debug, Clone)]
pub struct CurrentCall {
    pub id: i64,
    pub recipient_id: Option<String>,
    pub phone_e164: String,
    pub status: String,
    pub conversation_id: Option<String>,
}

/// Statuses after which a call does not change any more (unless retried).
pub const FINAL_CALL_STATUSES: [&str; 4] = ["completed", "failed", "cancelled", "voicemail"];

pub fn is_final_call_status(status: &str) -> bool {
    FINAL_CALL_STATUSES.contains(&status)
}

pub fn is_final_batch_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

fn unix(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
}

/// The changes a snapshot brings to a batch's records. Recipients are matched by
/// their id, else by phone number; a final status is not moved back to a
/// running one for the same conversation (a webhook may be ahead of the
/// batch's own view), but a new attempt (retry) reopens the call.
pub fn diff_recipients(
    current: &[CurrentCall],
    recipients: &[RecipientSnapshot],
    now: DateTime<Utc>,
) -> (Vec<StatusChange>, usize) {
    use std::collections::HashMap;
    let by_recipient: HashMap<&str, usize> = current
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.recipient_id.as_deref().map(|r| (r, i)))
        .collect();
    let by_phone: HashMap<&str, usize> = current
        .iter()
        .enumerate()
        .map(|(i, c)| (c.phone_e164.as_str(), i))
        .collect();
    let mut changes = Vec::new();
    let mut unmatched = 0;
    let mut taken = vec![false; current.len()];
    for snapshot in recipients {
        let index = by_recipient
            .get(snapshot.id.as_str())
            .or_else(|| {
                snapshot
                    .phone_number
                    .as_deref()
                    .and_then(|p| by_phone.get(p))
            })
            .copied()
            .filter(|i| !taken[*i]);
        let Some(index) = index else {
            unmatched += 1;
            continue;
        };
        taken[index] = true;
        let CurrentCall {
            id: record_id,
            recipient_id,
            status,
            conversation_id,
            ..
        } = &current[index];
        let same_attempt = snapshot.conversation_id.is_none()
            || snapshot.conversation_id.as_deref() == conversation_id.as_deref();
        let was_final = is_final_call_status(status);
        let now_final = is_final_call_status(&snapshot.status);
        if was_final && !now_final && same_attempt && snapshot.status != "pending" {
            // The batch's view lags behind what a webhook already told us.
            continue;
        }
        let new_conversation = snapshot.conversation_id.clone().or_else(|| {
            if was_final && !now_final {
                None
            } else {
                conversation_id.clone()
            }
        });
        if snapshot.status == *status
            && new_conversation == *conversation_id
            && recipient_id.as_deref() == Some(snapshot.id.as_str())
        {
            continue;
        }
        let at = unix(snapshot.updated_at_unix).unwrap_or(now);
        let reopened = was_final && !now_final;
        changes.push(StatusChange {
            record_id: *record_id,
            recipient_id: snapshot.id.clone(),
            status: snapshot.status.clone(),
            conversation_id: new_conversation,
            reopened,
            started_at: matches!(
                snapshot.status.as_str(),
                "initiated" | "in_progress" | "completed" | "voicemail"
            )
            .then_some(at),
            ended_at: now_final.then_some(at),
        });
    }
    (changes, unmatched)
}

#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Takes the lease of up to `limit` batches that are due: not final, their
    /// `next_sync_at` passed, and no live lease held by anyone.
    async fn claim_batches(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<SyncBatch>>;

    /// Applies ElevenLabs' view of a batch. `None`: the lease was lost, nothing written.
    async fn apply_batch_snapshot(
        &self,
        owner: &str,
        batch_id: i64,
        snapshot: &BatchSnapshot,
    ) -> StoreResult<Option<SnapshotApplied>>;

    /// Ends a sync: releases the lease, schedules the next one, marks the batch
    /// final or counts a failure.
    async fn finish_batch_sync(
        &self,
        owner: &str,
        batch_id: i64,
        is_final: bool,
        failed: bool,
        next_sync_at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// An unverified submit (timed out, or written ahead and never confirmed)
    /// found at ElevenLabs (`Some`), or given up (`None`:
    /// the batch and its calls become `failed`, `not_submitted`).
    async fn resolve_unknown_submit(
        &self,
        owner: &str,
        batch_id: i64,
        found: Option<(&str, &BatchSnapshot)>,
    ) -> StoreResult<bool>;

    /// Finished calls of a batch whose conversation was not read yet (nor
    /// brought by a webhook).
    async fn calls_needing_conversation(
        &self,
        batch_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, String)>>;

    /// The conversation of this call was read (or cannot be).
    async fn mark_conversation_fetched(&self, record_id: i64) -> StoreResult<()>;

    /// Every batch of a group, newest first.
    async fn group_batches(&self, group_id: i64) -> StoreResult<Vec<BatchRow>>;

    /// A batch by ElevenLabs id (or by our numeric id when `id` is digits).
    async fn find_batch(&self, id: &str) -> StoreResult<Option<BatchRow>>;

    /// A page of a batch's calls joined to their clients, and the total.
    async fn batch_recipients(
        &self,
        batch_id: i64,
        page: i64,
        limit: i64,
    ) -> StoreResult<(Vec<RecipientRow>, i64)>;

    /// How many calls of the batch are in each status.
    async fn batch_status_counts(&self, batch_id: i64) -> StoreResult<Vec<(String, i64)>>;

    /// After ElevenLabs cancelled the batch: the batch and its unfinished calls become `cancelled`.
    async fn mark_batch_cancelled(&self, batch_id: i64, raw: &Value) -> StoreResult<()>;

    /// After ElevenLabs accepted a retry: the batch runs again and is synced at once.
    async fn mark_batch_retried(&self, batch_id: i64, status: &str, raw: &Value)
    -> StoreResult<()>;
}

macro_rules! sync_store_impl {
    ($store:ident, $db:ty) => {
        mod sync_impl {
            use super::$store;
            use chrono::{DateTime, Utc};
            use serde_json::Value;
            use sqlx::Row;
            use sqlx::types::Json;
            use $crate::store::StoreResult;
            use $crate::store::sync::*;

            type DbRow = <$db as sqlx::Database>::Row;

            const BATCH_COLUMNS: &str = "id, elevenlabs_batch_id, group_id, agent_id, phone_number_id, name, status,
                submit_state, part_index, part_count, scheduled_time_unix, created_at_unix, last_updated_at_unix,
                total_calls_scheduled, total_calls_dispatched, total_calls_finished, raw, is_final, sync_failures,
                last_synced_at, created_at, updated_at";

            fn batch_from_row(row: &DbRow) -> Result<BatchRow, sqlx::Error> {
                let Json(raw): Json<Value> = row.try_get("raw")?;
                Ok(BatchRow {
                    id: row.try_get("id")?,
                    elevenlabs_batch_id: row.try_get("elevenlabs_batch_id")?,
                    group_id: row.try_get("group_id")?,
                    agent_id: row.try_get("agent_id")?,
                    phone_number_id: row.try_get("phone_number_id")?,
                    name: row.try_get("name")?,
                    status: row.try_get("status")?,
                    submit_state: row.try_get("submit_state")?,
                    part_index: row.try_get("part_index")?,
                    part_count: row.try_get("part_count")?,
                    scheduled_time_unix: row.try_get("scheduled_time_unix")?,
                    created_at_unix: row.try_get("created_at_unix")?,
                    last_updated_at_unix: row.try_get("last_updated_at_unix")?,
                    total_calls_scheduled: row.try_get("total_calls_scheduled")?,
                    total_calls_dispatched: row.try_get("total_calls_dispatched")?,
                    total_calls_finished: row.try_get("total_calls_finished")?,
                    raw,
                    is_final: row.try_get("is_final")?,
                    sync_failures: row.try_get("sync_failures")?,
                    last_synced_at: row.try_get("last_synced_at")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            /// Clients whose call completed are `completed`.
            const COMPLETE_CLIENTS: &str = "UPDATE clients SET status = 'completed', updated_at = $2
                WHERE status NOT IN ('completed', 'cancelled')
                  AND id IN (SELECT client_id FROM call_records WHERE batch_id = $1 AND status = 'completed')";

            #[async_trait::async_trait]
            impl SyncStore for $store {
                async fn claim_batches(&self, owner: &str, lease_until: DateTime<Utc>, limit: i64) -> StoreResult<Vec<SyncBatch>> {
                    let now = Utc::now();
                    // The lease condition is checked again by the outer UPDATE, so
                    // of two racing instances only one takes a given batch.
                    let rows = sqlx::query(
                        "UPDATE batches SET lease_owner = $1, lease_expires_at = $2
                         WHERE id IN (SELECT id FROM batches
                                      WHERE is_final = FALSE
                                        AND (next_sync_at IS NULL OR next_sync_at <= $3)
                                        AND (lease_expires_at IS NULL OR lease_expires_at < $3)
                                      ORDER BY next_sync_at, id LIMIT $4)
                           AND is_final = FALSE
                           AND (lease_expires_at IS NULL OR lease_expires_at < $3)
                         RETURNING id, elevenlabs_batch_id, group_id, agent_id, name, status, submit_state,
                                   created_at, sync_failures",
                    )
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut batches = rows
                        .iter()
                        .map(|row| {
                            Ok(SyncBatch {
                                id: row.try_get("id")?,
                                elevenlabs_batch_id: row.try_get("elevenlabs_batch_id")?,
                                group_id: row.try_get("group_id")?,
                                agent_id: row.try_get("agent_id")?,
                                name: row.try_get("name")?,
                                status: row.try_get("status")?,
                                submit_state: row.try_get("submit_state")?,
                                created_at: row.try_get("created_at")?,
                                sync_failures: row.try_get("sync_failures")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?;
                    batches.sort_by_key(|b| b.id);
                    Ok(batches)
                }

                async fn apply_batch_snapshot(&self, owner: &str, batch_id: i64, snapshot: &BatchSnapshot) -> StoreResult<Option<SnapshotApplied>> {
                    let now = Utc::now();
                    let mut tx = self.begin_write().await?;
                    let updated = sqlx::query(
                        "UPDATE batches SET status = $3, total_calls_scheduled = $4, total_calls_dispatched = $5,
                            total_calls_finished = $6, last_updated_at_unix = COALESCE($7, last_updated_at_unix),
                            scheduled_time_unix = COALESCE($8, scheduled_time_unix), raw = $9, last_synced_at = $10,
                            updated_at = $10
                         WHERE id = $1 AND lease_owner = $2",
                    )
                    .bind(batch_id)
                    .bind(owner)
                    .bind(&snapshot.status)
                    .bind(snapshot.total_calls_scheduled)
                    .bind(snapshot.total_calls_dispatched)
                    .bind(snapshot.total_calls_finished)
                    .bind(snapshot.last_updated_at_unix)
                    .bind(snapshot.scheduled_time_unix)
                    .bind(Json(&snapshot.raw))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() == 0 {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    let read = |rows: Vec<<$db as sqlx::Database>::Row>| {
                        rows.iter()
                            .map(|row| {
                                Ok(CurrentCall {
                                    id: row.try_get("id")?,
                                    recipient_id: row.try_get("recipient_id")?,
                                    phone_e164: row.try_get("phone_e164")?,
                                    status: row.try_get("status")?,
                                    conversation_id: row.try_get("conversation_id")?,
                                })
                            })
                            .collect::<Result<Vec<_>, sqlx::Error>>()
                    };
                    const COLUMNS: &str = "SELECT id, recipient_id, phone_e164, status, conversation_id FROM call_records";
                    let mut current = read(
                        sqlx::query(&format!("{COLUMNS} WHERE batch_id = $1 ORDER BY id"))
                            .bind(batch_id)
                            .fetch_all(&mut *tx)
                            .await?,
                    )?;
                    let (mut changes, mut unmatched) = diff_recipients(&current, &snapshot.recipients, now);
                    if <$db as sqlx::Database>::NAME == "PostgreSQL" && !changes.is_empty() {
                        // A webhook may be merging an outcome into one of these
                        // records right now (it locks its record). Lock the records
                        // about to change, read them again and compare again: a
                        // merge is then either seen here or applied after, never
                        // overwritten by the older reading. (SQLite's write
                        // transaction already keeps webhooks out.)
                        let ids = changes
                            .iter()
                            .map(|c| c.record_id.to_string())
                            .collect::<Vec<_>>()
                            .join(",");
                        let fresh = read(
                            sqlx::query(&format!("{COLUMNS} WHERE id IN ({ids}) ORDER BY id FOR UPDATE"))
                                .fetch_all(&mut *tx)
                                .await?,
                        )?;
                        let at: std::collections::HashMap<i64, usize> =
                            current.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
                        for row in fresh {
                            if let Some(&i) = at.get(&row.id) {
                                current[i] = row;
                            }
                        }
                        (changes, unmatched) = diff_recipients(&current, &snapshot.recipients, now);
                    }
                    if !changes.is_empty() {
                        Self::update_call_statuses(&mut tx, now, &changes).await?;
                        sqlx::query(COMPLETE_CLIENTS)
                            .bind(batch_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(Some(SnapshotApplied { changed: changes.len(), unmatched }))
                }

                async fn finish_batch_sync(&self, owner: &str, batch_id: i64, is_final: bool, failed: bool, next_sync_at: DateTime<Utc>) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE batches SET lease_owner = NULL, lease_expires_at = NULL, next_sync_at = $3,
                            is_final = (is_final OR $4),
                            sync_failures = CASE WHEN $5 THEN sync_failures + 1 ELSE 0 END
                         WHERE id = $1 AND lease_owner = $2",
                    )
                    .bind(batch_id)
                    .bind(owner)
                    .bind(next_sync_at)
                    .bind(is_final)
                    .bind(failed)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn resolve_unknown_submit(&self, owner: &str, batch_id: i64, found: Option<(&str, &BatchSnapshot)>) -> StoreResult<bool> {
                    let now = Utc::now();
                    let mut tx = self.begin_write().await?;
                    let updated = match found {
                        Some((elevenlabs_id, snapshot)) => {
                            let updated = sqlx::query(
                                "UPDATE batches SET elevenlabs_batch_id = $3, submit_state = 'submitted', status = $4,
                                    total_calls_scheduled = $5, raw = $6, updated_at = $7
                                 WHERE id = $1 AND lease_owner = $2 AND submit_state = 'unknown'",
                            )
                            .bind(batch_id)
                            .bind(owner)
                            .bind(elevenlabs_id)
                            .bind(&snapshot.status)
                            .bind(snapshot.total_calls_scheduled)
                            .bind(Json(&snapshot.raw))
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            // They are in a batch: contacted (a part whose launch never
                            // confirmed it has them still `pending`).
                            sqlx::query($crate::store::common::CONTACT_BATCH_CLIENTS)
                            .bind(batch_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            updated
                        }
                        None => {
                            let updated = sqlx::query(
                                "UPDATE batches SET submit_state = 'not_submitted', status = 'failed', is_final = TRUE,
                                    updated_at = $3
                                 WHERE id = $1 AND lease_owner = $2 AND submit_state = 'unknown'",
                            )
                            .bind(batch_id)
                            .bind(owner)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "UPDATE call_records SET status = 'failed', updated_at = $2,
                                    failure_reason = 'ElevenLabs no confirmó el envío del batch'
                                 WHERE batch_id = $1",
                            )
                            .bind(batch_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            // Nobody was called: the launch's `contacted` is undone for
                            // clients no other batch has included.
                            sqlx::query(concat!(
                                "UPDATE clients SET status = 'pending', updated_at = $2
                                 WHERE status = 'contacted'
                                   AND id IN (SELECT client_id FROM call_records WHERE batch_id = $1)
                                   AND NOT ",
                                $crate::store::common::CALLED!()
                            ))
                            .bind(batch_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            updated
                        }
                    };
                    if updated.rows_affected() == 0 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                async fn calls_needing_conversation(&self, batch_id: i64, limit: i64) -> StoreResult<Vec<(i64, String)>> {
                    let rows = sqlx::query(
                        "SELECT id, conversation_id FROM call_records
                         WHERE batch_id = $1 AND conversation_id IS NOT NULL AND conversation_fetched_at IS NULL
                           AND transcript IS NULL
                           AND status IN ('completed', 'failed', 'voicemail', 'cancelled')
                         ORDER BY id LIMIT $2",
                    )
                    .bind(batch_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows
                        .iter()
                        .map(|row| Ok((row.try_get("id")?, row.try_get("conversation_id")?)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()?)
                }

                async fn mark_conversation_fetched(&self, record_id: i64) -> StoreResult<()> {
                    sqlx::query("UPDATE call_records SET conversation_fetched_at = $2 WHERE id = $1")
                        .bind(record_id)
                        .bind(Utc::now())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn group_batches(&self, group_id: i64) -> StoreResult<Vec<BatchRow>> {
                    let rows = sqlx::query(&format!(
                        "SELECT {BATCH_COLUMNS} FROM batches WHERE group_id = $1 ORDER BY created_at DESC, id DESC"
                    ))
                    .bind(group_id)
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.iter().map(batch_from_row).collect::<Result<Vec<_>, _>>()?)
                }

                async fn find_batch(&self, id: &str) -> StoreResult<Option<BatchRow>> {
                    let numeric = $crate::extract::parse_id(id);
                    let row = sqlx::query(&format!(
                        "SELECT {BATCH_COLUMNS} FROM batches WHERE elevenlabs_batch_id = $1 OR id = $2"
                    ))
                    .bind(id)
                    .bind(numeric.unwrap_or(-1))
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.as_ref().map(batch_from_row).transpose()?)
                }

                async fn batch_recipients(&self, batch_id: i64, page: i64, limit: i64) -> StoreResult<(Vec<RecipientRow>, i64)> {
                    // From the rollup its triggers keep (migration 3): a few rows
                    // per batch however many calls it has, where COUNT(*) read them all.
                    let total: i64 = sqlx::query_scalar(
                        "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM call_stats_hourly WHERE batch_id = $1",
                    )
                        .bind(batch_id)
                        .fetch_one(&self.pool)
                        .await?;
                    let rows = sqlx::query(
                        "SELECT r.id, r.recipient_id, r.phone_e164, r.status, r.conversation_id, r.client_id,
                                c.name AS client_name, r.duration_secs, r.call_successful, r.transcript_summary,
                                r.failure_reason, r.created_at, r.updated_at
                         FROM call_records r LEFT JOIN clients c ON c.id = r.client_id
                         WHERE r.batch_id = $1 ORDER BY r.id LIMIT $2 OFFSET $3",
                    )
                    .bind(batch_id)
                    .bind(limit)
                    .bind((page - 1) * limit)
                    .fetch_all(&self.pool)
                    .await?;
                    let recipients = rows
                        .iter()
                        .map(|row| {
                            Ok(RecipientRow {
                                id: row.try_get("id")?,
                                recipient_id: row.try_get("recipient_id")?,
                                phone_e164: row.try_get("phone_e164")?,
                                status: row.try_get("status")?,
                                conversation_id: row.try_get("conversation_id")?,
                                client_id: row.try_get("client_id")?,
                                client_name: row.try_get("client_name")?,
                                duration_secs: row.try_get("duration_secs")?,
                                call_successful: row.try_get("call_successful")?,
                                transcript_summary: row.try_get("transcript_summary")?,
                                failure_reason: row.try_get("failure_reason")?,
                                created_at: row.try_get("created_at")?,
                                updated_at: row.try_get("updated_at")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?;
                    Ok((recipients, total))
                }

                async fn batch_status_counts(&self, batch_id: i64) -> StoreResult<Vec<(String, i64)>> {
                    let rows = sqlx::query(
                        "SELECT status, CAST(SUM(calls) AS BIGINT) AS n FROM call_stats_hourly WHERE batch_id = $1
                         GROUP BY status HAVING SUM(calls) > 0 ORDER BY status",
                    )
                    .bind(batch_id)
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows
                        .iter()
                        .map(|row| Ok((row.try_get("status")?, row.try_get("n")?)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()?)
                }

                async fn mark_batch_cancelled(&self, batch_id: i64, raw: &Value) -> StoreResult<()> {
                    let now = Utc::now();
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "UPDATE batches SET status = 'cancelled', is_final = TRUE, raw = $2, updated_at = $3,
                            last_updated_at_unix = $4
                         WHERE id = $1",
                    )
                    .bind(batch_id)
                    .bind(Json(raw))
                    .bind(now)
                    .bind(now.timestamp())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE call_records SET status = 'cancelled', updated_at = $2, ended_at = COALESCE(ended_at, $2)
                         WHERE batch_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled', 'voicemail')",
                    )
                    .bind(batch_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn mark_batch_retried(&self, batch_id: i64, status: &str, raw: &Value) -> StoreResult<()> {
                    let now = Utc::now();
                    sqlx::query(
                        "UPDATE batches SET status = $2, is_final = FALSE, raw = $3, updated_at = $4, next_sync_at = $4,
                            sync_failures = 0
                         WHERE id = $1",
                    )
                    .bind(batch_id)
                    .bind(status)
                    .bind(Json(raw))
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use sync_store_impl;

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, phone: &str, status: &str, conv: Option<&str>) -> RecipientSnapshot {
        RecipientSnapshot {
            id: id.into(),
            phone_number: Some(phone.into()),
            status: status.into(),
            conversation_id: conv.map(str::to_owned),
            updated_at_unix: Some(1_760_000_000),
        }
    }

    fn row(id: i64, rid: &str, phone: &str, status: &str, conv: Option<&str>) -> CurrentCall {
        CurrentCall {
            id,
            recipient_id: Some(rid.into()),
            phone_e164: phone.into(),
            status: status.into(),
            conversation_id: conv.map(str::to_owned),
        }
    }

    #[test]
    fn unchanged_recipients_bring_no_change() {
        let current = vec![row(1, "10", "+573000000001", "pending", None)];
        let (changes, unmatched) = diff_recipients(
            &current,
            &[snap("10", "+573000000001", "pending", None)],
            Utc::now(),
        );
        assert!(changes.is_empty());
        assert_eq!(unmatched, 0);
    }

    #[test]
    fn progress_is_recorded_with_times() {
        let current = vec![
            row(1, "10", "+573000000001", "pending", None),
            row(2, "11", "+573000000002", "in_progress", Some("conv_a")),
        ];
        let (changes, _) = diff_recipients(
            &current,
            &[
                snap("10", "+573000000001", "initiated", Some("conv_b")),
                snap("11", "+573000000002", "completed", Some("conv_a")),
            ],
            Utc::now(),
        );
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].status, "initiated");
        assert_eq!(changes[0].conversation_id.as_deref(), Some("conv_b"));
        assert!(changes[0].started_at.is_some() && changes[0].ended_at.is_none());
        assert_eq!(changes[1].status, "completed");
        assert!(changes[1].ended_at.is_some());
        assert!(!changes[1].reopened);
    }

    #[test]
    fn elevenlabs_own_recipient_ids_are_matched_by_phone_and_kept() {
        let current = vec![row(1, "10", "+573000000001", "pending", None)];
        let (changes, unmatched) = diff_recipients(
            &current,
            &[snap("rcp_x", "+573000000001", "dispatched", None)],
            Utc::now(),
        );
        assert_eq!(unmatched, 0);
        assert_eq!(changes[0].recipient_id, "rcp_x");
        let (_, unmatched) = diff_recipients(
            &current,
            &[snap("rcp_y", "+573000000999", "dispatched", None)],
            Utc::now(),
        );
        assert_eq!(unmatched, 1);
    }

    #[test]
    fn a_final_call_is_not_moved_back_by_a_lagging_view_but_a_retry_reopens_it() {
        let current = vec![row(1, "10", "+573000000001", "completed", Some("conv_a"))];
        let (changes, _) = diff_recipients(
            &current,
            &[snap("10", "+573000000001", "in_progress", Some("conv_a"))],
            Utc::now(),
        );
        assert!(changes.is_empty(), "lagging view ignored");
        let (changes, _) = diff_recipients(
            &current,
            &[snap("10", "+573000000001", "pending", None)],
            Utc::now(),
        );
        assert_eq!(changes.len(), 1);
        assert!(changes[0].reopened);
        assert_eq!(changes[0].conversation_id, None);
        let (changes, _) = diff_recipients(
            &current,
            &[snap("10", "+573000000001", "initiated", Some("conv_b"))],
            Utc::now(),
        );
        assert!(changes[0].reopened);
        assert_eq!(changes[0].conversation_id.as_deref(), Some("conv_b"));
    }
}
