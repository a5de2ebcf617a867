//! The background sync (API.md §6): every `SYNC_INTERVAL_SECS` it takes the
//! lease of the batches that are due, reads each from ElevenLabs, applies the
//! snapshot to the call records, reads the conversations of finished calls
//! once, and marks batches final. Submits that timed out are looked up by name
//! in the workspace list. ElevenLabs failing only delays a batch (exponential
//! back-off); a batch is never dropped.
//!
//! Several instances on one PostgreSQL each run a worker: leases keep them off
//! each other's batches, and a crashed instance's lease expires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::app::AppState;
use crate::elevenlabs::ElevenLabs;
use crate::elevenlabs::outcome::CallOutcome;
use crate::elevenlabs::types::BatchCall;
use crate::store::DynStore;
use crate::store::sync::{BatchSnapshot, RecipientSnapshot, SyncBatch, is_final_batch_status};

/// Batches claimed at once (each synced concurrently).
const CLAIM_SIZE: i64 = 8;
/// Claims per tick at most, so a tick ends even with thousands of batches due.
const MAX_ROUNDS: usize = 25;
/// An unverified submit (timed out, or written ahead by a launch that never
/// confirmed it) not found at ElevenLabs after this long never happened.
const UNKNOWN_SUBMIT_GIVE_UP_SECS: i64 = 15 * 60;
/// Pages of the workspace batch list read when looking for an unverified submit.
const RECONCILE_PAGES: usize = 5;
/// Conversations read per batch and tick at most, and at once.
const CONVERSATIONS_PER_TICK: i64 = 500;
const CONVERSATION_CONCURRENCY: usize = 8;
/// The longest wait between two syncs of a failing batch.
const MAX_BACKOFF_SECS: i64 = 600;

/// What one tick did, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub claimed: usize,
    pub synced: usize,
    pub failed: usize,
    pub finalized: usize,
    pub changed_calls: usize,
    pub reconciled: usize,
    pub conversations: usize,
}

#[derive(Clone)]
pub struct SyncWorker {
    store: DynStore,
    elevenlabs: ElevenLabs,
    owner: Arc<str>,
    interval: Duration,
    lease: Duration,
}

/// How one batch's sync ended.
#[derive(Debug, Default)]
struct Outcome {
    synced: bool,
    failed: bool,
    finalized: bool,
    changed: usize,
    reconciled: bool,
    conversations: usize,
}

impl SyncWorker {
    pub fn new(state: &AppState) -> SyncWorker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "marcador".into());
        let owner = format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4());
        SyncWorker::with_owner(state, &owner)
    }

    /// A worker with a chosen lease owner name (tests run several).
    pub fn with_owner(state: &AppState, owner: &str) -> SyncWorker {
        let interval = Duration::from_secs(state.config.sync_interval_secs.max(1));
        SyncWorker {
            store: state.store.clone(),
            elevenlabs: state.elevenlabs.clone(),
            owner: owner.into(),
            interval,
            // Long enough for a slow ElevenLabs, short enough for a quick takeover.
            lease: (interval * 4).max(Duration::from_secs(60)),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Ticks every interval until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tracing::info!(
            interval_secs = self.interval.as_secs(),
            "sync worker started"
        );
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {
                    let report = self.tick().await;
                    if report.claimed > 0 {
                        tracing::info!(?report, "sync tick");
                    }
                }
            }
        }
        tracing::info!("sync worker stopped");
    }

    /// Syncs every batch that is due now. Errors are logged and leave the
    /// batch for a later tick.
    pub async fn tick(&self) -> SyncReport {
        let mut report = SyncReport::default();
        for _ in 0..MAX_ROUNDS {
            let lease_until =
                Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or_default();
            let batches = match self
                .store
                .claim_batches(&self.owner, lease_until, CLAIM_SIZE)
                .await
            {
                Ok(batches) => batches,
                Err(err) => {
                    tracing::error!(error = %err, "sync: claiming batches failed");
                    break;
                }
            };
            if batches.is_empty() {
                break;
            }
            report.claimed += batches.len();
            let mut tasks = JoinSet::new();
            for batch in batches {
                let worker = self.clone();
                tasks.spawn(async move { worker.sync_batch(batch).await });
            }
            while let Some(done) = tasks.join_next().await {
                let outcome = done.unwrap_or_else(|err| {
                    tracing::error!(error = %err, "sync: a batch task ended abnormally");
                    Outcome {
                        failed: true,
                        ..Outcome::default()
                    }
                });
                report.synced += usize::from(outcome.synced);
                report.failed += usize::from(outcome.failed);
                report.finalized += usize::from(outcome.finalized);
                report.changed_calls += outcome.changed;
                report.reconciled += usize::from(outcome.reconciled);
                report.conversations += outcome.conversations;
            }
        }
        report
    }

    async fn sync_batch(&self, batch: SyncBatch) -> Outcome {
        let result = self.try_sync_batch(&batch).await;
        let now = Utc::now();
        match result {
            Ok((mut outcome, next)) => {
                if let Err(err) = self
                    .store
                    .finish_batch_sync(&self.owner, batch.id, outcome.finalized, false, next)
                    .await
                {
                    tracing::error!(batch = batch.id, error = %err, "sync: releasing the lease failed");
                    outcome.finalized = false;
                }
                metrics::counter!("sync_batches_total", "outcome" => "ok").increment(1);
                outcome
            }
            Err(err) => {
                let next = now + backoff(self.interval, batch.sync_failures + 1);
                tracing::warn!(batch = batch.id, error = %err, retry_at = %next, "sync: batch not synced");
                metrics::counter!("sync_batches_total", "outcome" => "error").increment(1);
                if let Err(err) = self
                    .store
                    .finish_batch_sync(&self.owner, batch.id, false, true, next)
                    .await
                {
                    tracing::error!(batch = batch.id, error = %err, "sync: releasing the lease failed");
                }
                Outcome {
                    failed: true,
                    ..Outcome::default()
                }
            }
        }
    }

    /// The sync of one leased batch; returns what happened and when to look again.
    async fn try_sync_batch(&self, batch: &SyncBatch) -> anyhow::Result<(Outcome, DateTime<Utc>)> {
        let mut outcome = Outcome::default();
        let now = Utc::now();
        let interval = chrono::Duration::from_std(self.interval).unwrap_or_default();
        let elevenlabs_id = match (&batch.elevenlabs_batch_id, batch.submit_state.as_str()) {
            (Some(id), _) => id.clone(),
            (None, "unknown") => match self.reconcile(batch).await? {
                Reconciled::Found(id) => {
                    outcome.reconciled = true;
                    id
                }
                Reconciled::Lookalike => {
                    // A batch of that name, agent and time calls other people:
                    // perhaps ours, seen differently. Never given up on (that
                    // would allow a relaunch while it may be dialling).
                    tracing::warn!(
                        batch = batch.id,
                        "sync: an unverified submit has a lookalike at ElevenLabs with other recipients; kept unverified"
                    );
                    return Ok((outcome, now + interval));
                }
                Reconciled::NotFound => {
                    if (now - batch.created_at).num_seconds() > UNKNOWN_SUBMIT_GIVE_UP_SECS {
                        self.store
                            .resolve_unknown_submit(&self.owner, batch.id, None)
                            .await?;
                        tracing::warn!(
                            batch = batch.id,
                            "sync: an unverified submit never reached ElevenLabs; batch marked failed"
                        );
                        outcome.finalized = true;
                        outcome.reconciled = true;
                    }
                    return Ok((outcome, now + interval));
                }
            },
            // Nothing to ask ElevenLabs about: close it.
            (None, _) => {
                outcome.finalized = true;
                return Ok((outcome, now + interval));
            }
        };
        let remote = self.elevenlabs.get_batch(&elevenlabs_id).await?;
        let snapshot = snapshot_of(&remote);
        let Some(applied) = self
            .store
            .apply_batch_snapshot(&self.owner, batch.id, &snapshot)
            .await?
        else {
            anyhow::bail!("lease lost");
        };
        outcome.synced = true;
        outcome.changed = applied.changed;
        if applied.unmatched > 0 {
            tracing::warn!(
                batch = batch.id,
                unmatched = applied.unmatched,
                "sync: ElevenLabs lists recipients we did not send"
            );
        }
        let (read, complete) = self.read_conversations(batch.id).await?;
        outcome.conversations = read;
        // Final once ElevenLabs says so and every finished call's conversation is kept.
        outcome.finalized = is_final_batch_status(&snapshot.status) && complete;
        // A batch scheduled for later is looked at again shortly before it starts.
        // Counted from the end of this sync, so one tick never takes a batch twice.
        let mut next = Utc::now() + interval;
        if snapshot.status == "pending"
            && let Some(at) = snapshot
                .scheduled_time_unix
                .and_then(|s| DateTime::<Utc>::from_timestamp(s - 5, 0))
            && at > next
        {
            next = at;
        }
        Ok((outcome, next))
    }

    /// Reads the conversations of the batch's finished calls (once each) and
    /// keeps their outcome: duration, success, summary, data collection,
    /// evaluation, transcript. Returns how many were read and whether none is
    /// left. A conversation ElevenLabs does not have is not asked for again;
    /// any other failure leaves the rest for the next tick.
    async fn read_conversations(&self, batch_id: i64) -> anyhow::Result<(usize, bool)> {
        let pending = self
            .store
            .calls_needing_conversation(batch_id, CONVERSATIONS_PER_TICK)
            .await?;
        if pending.is_empty() {
            return Ok((0, true));
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        let mut failed = false;
        let mut tasks = JoinSet::new();
        let mut queue = pending.into_iter();
        loop {
            while tasks.len() < CONVERSATION_CONCURRENCY {
                let Some((record_id, conversation_id)) = queue.next() else {
                    break;
                };
                let elevenlabs = self.elevenlabs.clone();
                tasks.spawn(async move {
                    (
                        record_id,
                        elevenlabs.get_conversation(&conversation_id).await,
                    )
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let Ok((record_id, result)) = done else {
                failed = true;
                continue;
            };
            match result {
                Ok(conversation) => {
                    let mut outcome = CallOutcome::from_conversation(&conversation);
                    // The batch's own recipient status stays the reference.
                    outcome.status = None;
                    outcomes.push((record_id, outcome));
                }
                // ElevenLabs does not have it: kept as read, with nothing to add.
                Err(err) if err.status() == Some(404) => {
                    outcomes.push((record_id, CallOutcome::default()));
                }
                Err(err) => {
                    tracing::warn!(batch = batch_id, error = %err, "sync: conversation not read");
                    failed = true;
                    // Stop asking; what is in flight finishes.
                    queue = Vec::new().into_iter();
                }
            }
        }
        // What was read is kept even when the rest failed.
        let read = outcomes.len();
        self.store.apply_conversation_outcomes(&outcomes).await?;
        metrics::counter!("sync_conversations_total").increment(read as u64);
        let left = !failed
            && self
                .store
                .calls_needing_conversation(batch_id, 1)
                .await?
                .is_empty();
        Ok((read, left))
    }

    /// Looks an unverified submit up by its name in the workspace list. Found:
    /// the batch is recorded as submitted and its id returned.
    async fn reconcile(&self, batch: &SyncBatch) -> anyhow::Result<Reconciled> {
        let created = batch.created_at.timestamp();
        let mut last_doc: Option<String> = None;
        let mut lookalike = false;
        for _ in 0..RECONCILE_PAGES {
            let page = self
                .elevenlabs
                .list_batches(100, last_doc.as_deref())
                .await?;
            for candidate in &page.batch_calls {
                let plausible = candidate.name == batch.name
                    && candidate.agent_id == batch.agent_id
                    && candidate
                        .created_at_unix
                        .is_none_or(|at| at >= created - 300);
                if !plausible || self.store.find_batch(&candidate.id).await?.is_some() {
                    continue;
                }
                let full = self.elevenlabs.get_batch(&candidate.id).await?;
                if !self.same_people(batch.id, &full).await? {
                    // Another group's launch of the same name, agent and day?
                    lookalike = true;
                    continue;
                }
                let snapshot = snapshot_of(&full);
                if self
                    .store
                    .resolve_unknown_submit(&self.owner, batch.id, Some((&candidate.id, &snapshot)))
                    .await?
                {
                    tracing::info!(
                        batch = batch.id,
                        "sync: unverified submit found at ElevenLabs"
                    );
                    return Ok(Reconciled::Found(candidate.id.clone()));
                }
                anyhow::bail!("lease lost");
            }
            match page.next_doc {
                Some(doc) if page.has_more => last_doc = Some(doc),
                _ => break,
            }
        }
        Ok(if lookalike {
            Reconciled::Lookalike
        } else {
            Reconciled::NotFound
        })
    }
}

impl SyncWorker {
    /// Whether ElevenLabs' batch calls exactly the people of our unverified
    /// attempt: the same set of numbers (or, with no list to compare, as many).
    /// A name is only `Llamada <group> - <date>`, which two groups may share.
    async fn same_people(&self, batch_id: i64, remote: &BatchCall) -> anyhow::Result<bool> {
        use std::collections::HashSet;
        let (ours, total) = self
            .store
            .batch_recipients(
                batch_id,
                1,
                crate::http::calls::MAX_RECIPIENTS_PER_BATCH as i64,
            )
            .await?;
        let Some(theirs) = &remote.recipients else {
            return Ok(remote.total_calls_scheduled == total);
        };
        let ours: HashSet<&str> = ours.iter().map(|r| r.phone_e164.as_str()).collect();
        let theirs: HashSet<&str> = theirs
            .iter()
            .filter_map(|r| r.phone_number.as_deref())
            .collect();
        Ok(ours == theirs)
    }
}

/// What a look-up of an unverified submit found.
enum Reconciled {
    /// Our batch, now recorded as submitted.
    Found(String),
    /// Only batches of the same name, agent and time that call other people.
    Lookalike,
    NotFound,
}

/// `interval × 2^failures`, at most ten minutes.
pub fn backoff(interval: Duration, failures: i64) -> chrono::Duration {
    let base = interval.as_secs().max(1) as i64;
    let factor = 1i64 << failures.clamp(0, 10);
    chrono::Duration::seconds((base * factor).min(MAX_BACKOFF_SECS))
}

/// ElevenLabs' batch as the store keeps it.
pub fn snapshot_of(batch: &BatchCall) -> BatchSnapshot {
    let mut raw = serde_json::to_value(batch).unwrap_or(Value::Null);
    if let Some(object) = raw.as_object_mut() {
        object.remove("recipients");
    }
    BatchSnapshot {
        status: batch.status.clone(),
        total_calls_scheduled: batch.total_calls_scheduled,
        total_calls_dispatched: batch.total_calls_dispatched,
        total_calls_finished: batch.total_calls_finished,
        last_updated_at_unix: batch.last_updated_at_unix,
        scheduled_time_unix: batch.scheduled_time_unix,
        raw,
        recipients: batch
            .recipients
            .iter()
            .flatten()
            .map(|r| RecipientSnapshot {
                id: r.id.clone(),
                phone_number: r.phone_number.clone(),
                status: r.status.clone(),
                conversation_id: r.conversation_id.clone(),
                updated_at_unix: r.updated_at_unix,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        let interval = Duration::from_secs(15);
        assert_eq!(backoff(interval, 0).num_seconds(), 15);
        assert_eq!(backoff(interval, 1).num_seconds(), 30);
        assert_eq!(backoff(interval, 3).num_seconds(), 120);
        assert_eq!(backoff(interval, 6).num_seconds(), 600);
        assert_eq!(backoff(interval, 60).num_seconds(), 600);
    }
}
