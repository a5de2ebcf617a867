//! Writing call outcomes (from webhooks or the sync) onto call records.
//!
//! The SQL is the same on both backends, so it is written once, in the macro
//! `outcome_store_impl!`, expanded in `sqlite.rs` and `postgres.rs` (it uses
//! their `begin_write` hook).
//!
//! **Finding the call record**, first match wins:
//! 1. the batch (`batches.elevenlabs_batch_id` = `batch_call_id`) and the
//!    recipient id (we send our client id as the recipient `id`);
//! 2. the conversation id;
//! 3. the batch and our `client_id` dynamic variable (ElevenLabs names its
//!    recipients with ids of its own, which the sync stores in place of ours
//!    once it has seen them; the call record's `client_id` never changes);
//! 4. the batch and the number called (read through the batch's own rows: no
//!    index of its own, as every launch would pay for it and a webhook almost
//!    never gets this far);
//! 5. without a batch (a `call_initiation_failure` carries none): the call
//!    record of that client id *and* number that is not final yet, one being
//!    dialled first, then the newest; never one of a batch scheduled for later.
//!
//! **Merging**, field by field: a value given replaces the stored one, `None`
//! keeps it. A non-final status never replaces a final one (`completed`,
//! `failed`, `cancelled`, `voicemail`); a final one may replace another final
//! one (a retried call that failed and then completed), unless it comes from
//! an earlier attempt than the stored end ([`is_stale`]): then the whole
//! outcome is ignored, so a late event never rewinds a finished call.
//!
//! **The client's status** follows the call: a `completed` call makes the
//! client `completed`; a `voicemail` makes a `pending` client `contacted`; a
//! `cancelled` client stays cancelled (someone decided so by hand).

use async_trait::async_trait;

use super::StoreResult;
use crate::elevenlabs::outcome::CallOutcome;

/// What storing a webhook's outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookApplied {
    /// The event key was seen before: nothing changed.
    Duplicate,
    /// The call record with this id was updated and the key recorded.
    Applied(i64),
    /// No call record matches: nothing was written (not even the key, so a
    /// redelivery after the record exists can still apply).
    UnknownCall,
}

#[async_trait]
pub trait OutcomeStore: Send + Sync {
    /// Finds the call record the outcome belongs to and merges the outcome into
    /// it (rules in the module docs), in one transaction; returns its id, or
    /// `None` when no record matches (nothing written).
    async fn apply_call_outcome(&self, outcome: &CallOutcome) -> StoreResult<Option<i64>>;

    /// Records a webhook delivery; `false` if `key` was already recorded.
    async fn record_webhook_event(&self, key: &str, event_type: &str) -> StoreResult<bool>;

    /// [`Self::record_webhook_event`] and [`Self::apply_call_outcome`] in ONE
    /// transaction, so that a replayed event changes nothing and an event is
    /// never marked seen without its outcome stored.
    async fn apply_webhook_outcome(
        &self,
        key: &str,
        event_type: &str,
        outcome: &CallOutcome,
    ) -> StoreResult<WebhookApplied>;

    /// Conversations the sync read: each outcome is merged into its call
    /// record (known by id) like a webhook's, and the record is marked read;
    /// all in one transaction (one commit for hundreds of calls).
    async fn apply_conversation_outcomes(&self, outcomes: &[(i64, CallOutcome)])
    -> StoreResult<()>;
}

/// What a call record holds when an outcome arrives for it.
pub(crate) struct StoredCall {
    pub status: String,
    pub conversation_id: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "voicemail")
}

/// An outcome from an earlier attempt than the one the record already ended
/// with (a retried call: events and syncs may arrive in any order). A final
/// status only replaces another final one when it is not older: it started
/// later or at the same time, or it is about the same conversation, or the
/// record has no conversation yet.
pub(crate) fn is_stale(stored: &StoredCall, incoming: &CallOutcome) -> bool {
    if !is_final(&stored.status) || !incoming.status.as_deref().is_some_and(is_final) {
        return false;
    }
    let same_conversation =
        incoming.conversation_id.is_some() && incoming.conversation_id == stored.conversation_id;
    if same_conversation {
        return false;
    }
    match (incoming.started_at, stored.started_at) {
        (Some(new), Some(old)) => new < old,
        // Timeless (an initiation failure) after a call that did start.
        (None, Some(_)) => stored.conversation_id.is_some(),
        _ => false,
    }
}

macro_rules! outcome_store_impl {
    ($store:ident, $db:ty) => {
        // A block of its own: the names it imports cannot clash with the
        // shared store's imports in the same module.
        const _: () = {
            use sqlx::Row;
            use sqlx::types::Json;
            use $crate::elevenlabs::outcome::CallOutcome;
            use $crate::store::StoreResult;
            use $crate::store::outcome::{OutcomeStore, WebhookApplied};

            type Conn = <$db as sqlx::Database>::Connection;

            const FINALS: &str = "('completed', 'failed', 'cancelled', 'voicemail')";

            async fn first_id(
                conn: &mut Conn,
                sql: &str,
                a: &str,
                b: Option<&str>,
            ) -> Result<Option<i64>, sqlx::Error> {
                let mut query = sqlx::query_scalar::<_, i64>(sql).bind(a.to_owned());
                if let Some(b) = b {
                    query = query.bind(b.to_owned());
                }
                query.fetch_optional(&mut *conn).await
            }

            /// The call record an outcome belongs to (order in the module docs).
            async fn find_call(
                conn: &mut Conn,
                o: &CallOutcome,
            ) -> Result<Option<i64>, sqlx::Error> {
                const IN_BATCH: &str = "SELECT r.id FROM call_records r JOIN batches b ON b.id = r.batch_id
                     WHERE b.elevenlabs_batch_id = $1 AND ";
                let batch = o.batch_call_id.as_deref();
                if let (Some(batch), Some(recipient)) = (batch, o.recipient_id.as_deref()) {
                    let sql = format!("{IN_BATCH} r.recipient_id = $2 ORDER BY r.id LIMIT 1");
                    if let Some(id) = first_id(conn, &sql, batch, Some(recipient)).await? {
                        return Ok(Some(id));
                    }
                }
                if let Some(conversation) = o.conversation_id.as_deref() {
                    let sql = "SELECT id FROM call_records WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1";
                    if let Some(id) = first_id(conn, sql, conversation, None).await? {
                        return Ok(Some(id));
                    }
                }
                // Our client id, as we sent it; anything else names no client of ours.
                let client = o.client_id.as_deref().and_then(|c| c.trim().parse::<i64>().ok());
                if let Some(batch) = batch {
                    if let Some(client) = client {
                        let sql = format!("{IN_BATCH} r.client_id = $2 ORDER BY r.id LIMIT 1");
                        let found = sqlx::query_scalar::<_, i64>(&sql)
                            .bind(batch.to_owned())
                            .bind(client)
                            .fetch_optional(&mut *conn)
                            .await?;
                        if let Some(id) = found {
                            return Ok(Some(id));
                        }
                    }
                    if let Some(phone) = o.phone_number.as_deref() {
                        let sql = format!("{IN_BATCH} r.phone_e164 = $2 ORDER BY r.id LIMIT 1");
                        if let Some(id) = first_id(conn, &sql, batch, Some(phone)).await? {
                            return Ok(Some(id));
                        }
                    }
                    return Ok(None);
                }
                if let (Some(client), Some(phone)) = (client, o.phone_number.as_deref()) {
                    // A call being dialled first; never one of a batch scheduled
                    // for later (it has not been dialled yet).
                    let soon = chrono::Utc::now().timestamp() + 60;
                    let sql = format!(
                        "SELECT r.id FROM call_records r JOIN batches b ON b.id = r.batch_id
                         WHERE r.client_id = $1 AND r.phone_e164 = $2 AND r.status NOT IN {FINALS}
                           AND (b.scheduled_time_unix IS NULL OR b.scheduled_time_unix <= {soon})
                         ORDER BY CASE WHEN r.status IN ('dispatched', 'initiated', 'in_progress') THEN 0 ELSE 1 END,
                                  r.id DESC
                         LIMIT 1"
                    );
                    return sqlx::query_scalar::<_, i64>(&sql)
                        .bind(client)
                        .bind(phone.to_owned())
                        .fetch_optional(&mut *conn)
                        .await;
                }
                Ok(None)
            }

            /// Merges the outcome into the record `id` and moves its client on.
            async fn merge(conn: &mut Conn, id: i64, o: &CallOutcome) -> Result<(), sqlx::Error> {
                let now = chrono::Utc::now();
                let lock = if <$db as sqlx::Database>::NAME == "PostgreSQL" { " FOR UPDATE" } else { "" };
                let stored = sqlx::query(&format!(
                    "SELECT status, conversation_id, started_at FROM call_records WHERE id = $1{lock}"
                ))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(stored) = stored {
                    let current = $crate::store::outcome::StoredCall {
                        status: stored.try_get("status")?,
                        conversation_id: stored.try_get("conversation_id")?,
                        started_at: stored.try_get("started_at")?,
                    };
                    if $crate::store::outcome::is_stale(&current, o) {
                        tracing::debug!(call = id, "outcome of an earlier attempt ignored");
                        return Ok(());
                    }
                }
                let row = sqlx::query(&format!(
                    "UPDATE call_records SET
                        status = CASE
                            WHEN $2 IS NULL THEN status
                            WHEN status IN {FINALS} AND $2 NOT IN {FINALS} THEN status
                            ELSE $2 END,
                        conversation_id = COALESCE($3, conversation_id),
                        duration_secs = COALESCE($4, duration_secs),
                        call_successful = COALESCE($5, call_successful),
                        transcript_summary = COALESCE($6, transcript_summary),
                        termination_reason = COALESCE($7, termination_reason),
                        data_collection = COALESCE($8, data_collection),
                        evaluation = COALESCE($9, evaluation),
                        transcript = COALESCE($10, transcript),
                        failure_reason = COALESCE($11, failure_reason),
                        started_at = COALESCE($12, started_at),
                        ended_at = COALESCE($13, ended_at),
                        updated_at = $14
                     WHERE id = $1
                     RETURNING status, client_id"
                ))
                .bind(id)
                .bind(o.status.clone())
                .bind(o.conversation_id.clone())
                .bind(o.duration_secs)
                .bind(o.call_successful.clone())
                .bind(o.transcript_summary.clone())
                .bind(o.termination_reason.clone())
                .bind(o.data_collection.clone().map(Json))
                .bind(o.evaluation.clone().map(Json))
                .bind(o.transcript.clone().map(Json))
                .bind(o.failure_reason.clone())
                .bind(o.started_at)
                .bind(o.ended_at)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
                let status: String = row.try_get("status")?;
                let client: Option<i64> = row.try_get("client_id")?;
                let Some(client) = client else {
                    return Ok(());
                };
                let sql = match status.as_str() {
                    "completed" => {
                        "UPDATE clients SET status = 'completed', updated_at = $2
                         WHERE id = $1 AND status NOT IN ('completed', 'cancelled')"
                    }
                    "voicemail" => {
                        "UPDATE clients SET status = 'contacted', updated_at = $2
                         WHERE id = $1 AND status = 'pending'"
                    }
                    _ => return Ok(()),
                };
                sqlx::query(sql).bind(client).bind(now).execute(&mut *conn).await?;
                Ok(())
            }

            async fn insert_event(
                conn: &mut Conn,
                key: &str,
                event_type: &str,
            ) -> Result<bool, sqlx::Error> {
                let inserted = sqlx::query(
                    "INSERT INTO webhook_events (event_key, event_type, received_at) VALUES ($1, $2, $3)
                     ON CONFLICT (event_key) DO NOTHING",
                )
                .bind(key)
                .bind(event_type)
                .bind(chrono::Utc::now())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(inserted == 1)
            }

            #[async_trait::async_trait]
            impl OutcomeStore for $store {
                async fn apply_call_outcome(&self, outcome: &CallOutcome) -> StoreResult<Option<i64>> {
                    let mut tx = self.begin_write().await?;
                    let Some(id) = find_call(&mut tx, outcome).await? else {
                        tx.rollback().await?;
                        return Ok(None);
                    };
                    merge(&mut tx, id, outcome).await?;
                    tx.commit().await?;
                    Ok(Some(id))
                }

                async fn record_webhook_event(&self, key: &str, event_type: &str) -> StoreResult<bool> {
                    let mut tx = self.begin_write().await?;
                    let fresh = insert_event(&mut tx, key, event_type).await?;
                    tx.commit().await?;
                    Ok(fresh)
                }

                async fn apply_webhook_outcome(
                    &self,
                    key: &str,
                    event_type: &str,
                    outcome: &CallOutcome,
                ) -> StoreResult<WebhookApplied> {
                    let mut tx = self.begin_write().await?;
                    // The key first: a concurrent delivery of the same event waits
                    // on the unique index here, then finds it taken.
                    if !insert_event(&mut tx, key, event_type).await? {
                        tx.rollback().await?;
                        return Ok(WebhookApplied::Duplicate);
                    }
                    let Some(id) = find_call(&mut tx, outcome).await? else {
                        tx.rollback().await?;
                        return Ok(WebhookApplied::UnknownCall);
                    };
                    merge(&mut tx, id, outcome).await?;
                    tx.commit().await?;
                    Ok(WebhookApplied::Applied(id))
                }

                async fn apply_conversation_outcomes(&self, outcomes: &[(i64, CallOutcome)]) -> StoreResult<()> {
                    let now = chrono::Utc::now();
                    let mut tx = self.begin_write().await?;
                    // Every call record first, in id order, before any rollup
                    // row: a webhook locks its call record and then its rollup
                    // row, so one transaction holding a rollup row while it
                    // waits for a call record would deadlock with it.
                    if <$db as sqlx::Database>::NAME == "PostgreSQL" {
                        let mut ids: Vec<i64> = outcomes.iter().map(|(id, _)| *id).collect();
                        ids.sort_unstable();
                        for chunk in ids.chunks(1_000) {
                            let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                            sqlx::query(&format!(
                                "SELECT id FROM call_records WHERE id IN ({list}) ORDER BY id FOR UPDATE"
                            ))
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    for (id, outcome) in outcomes {
                        merge(&mut tx, *id, outcome).await?;
                        sqlx::query("UPDATE call_records SET conversation_fetched_at = $2 WHERE id = $1")
                            .bind(*id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }
            }
        };
    };
}
pub(crate) use outcome_store_impl;

#[cfg(test)]
mod tests {
    use super::{StoredCall, is_stale};
    use crate::elevenlabs::outcome::CallOutcome;
    use chrono::{TimeZone, Utc};

    fn stored(status: &str, conversation: Option<&str>, started: Option<i64>) -> StoredCall {
        StoredCall {
            status: status.into(),
            conversation_id: conversation.map(str::to_owned),
            started_at: started.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        }
    }

    fn incoming(status: &str, conversation: Option<&str>, started: Option<i64>) -> CallOutcome {
        CallOutcome {
            status: Some(status.into()),
            conversation_id: conversation.map(str::to_owned),
            started_at: started.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
            ..CallOutcome::default()
        }
    }

    #[test]
    fn an_earlier_attempt_never_overwrites_a_later_end() {
        let done = stored("completed", Some("conv_2"), Some(2_000));
        assert!(is_stale(
            &done,
            &incoming("failed", Some("conv_1"), Some(1_000))
        ));
        assert!(is_stale(&done, &incoming("failed", None, None)));
    }

    #[test]
    fn later_attempts_the_same_conversation_and_open_calls_apply() {
        let failed = stored("failed", Some("conv_1"), Some(1_000));
        assert!(!is_stale(
            &failed,
            &incoming("completed", Some("conv_2"), Some(2_000))
        ));
        let done = stored("completed", Some("conv_2"), Some(2_000));
        assert!(!is_stale(
            &done,
            &incoming("completed", Some("conv_2"), None)
        ));
        let failed_early = stored("failed", None, None);
        assert!(!is_stale(
            &failed_early,
            &incoming("completed", Some("conv_2"), Some(2_000))
        ));
        let running = stored("in_progress", Some("conv_2"), Some(2_000));
        assert!(!is_stale(
            &running,
            &incoming("failed", Some("conv_1"), Some(1_000))
        ));
        // A non-final outcome is handled by the status rule, not here.
        assert!(!is_stale(
            &done,
            &incoming("in_progress", Some("conv_1"), Some(1_000))
        ));
    }
}
