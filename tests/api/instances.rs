//! Several instances of the service on one PostgreSQL, talking to one
//! ElevenLabs: how the service scales out (issue 10 item 11). Two servers
//! share the database and the simulator, and nothing else (each has its own
//! pool, ElevenLabs client, caches and sync worker); the launch lock, the
//! write-ahead and the sync's leases live in the database and must keep them
//! apart: one batch per launch whichever instance is asked, one instance at a
//! time on a batch, and no double dial when an instance dies mid-launch.
//!
//! PostgreSQL only: SQLite is one process's embedded file, and the scale-out
//! story is PostgreSQL (ARCHITECTURE.md, "Several instances on one
//! PostgreSQL"). The simulator is served here, on a port of its own, and both
//! instances are configured with its URL and key like a real deployment with
//! ElevenLabs' (an in-process simulator each would make "one batch" a
//! property of each simulator, not of the service).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marcador::Config;
use marcador::config::Secret;
use marcador::elevenlabs::simulator::{Fault, SIM_AGENT_COBRANZA, Simulator, SimulatorConfig};
use marcador::sync::{SyncReport, SyncWorker};
use serde_json::{Value, json};

use crate::calls::{long_group, submits};
use crate::groups::{b64, group_id};
use crate::helpers::{
    Backend, Reply, TestApp, TestDb, spawn_app_with, spawn_beside, spawn_killable, test_config,
};

const KEY: &str = "xi-key-of-the-shared-workspace";
const SUBMIT: &str = "/v1/convai/batch-calling/submit";
const MSG_DOUBLE: &str = "Ya se iniciaron llamadas para este grupo hace un momento";

/// The one ElevenLabs every instance talks to: a simulator served on a
/// loopback port; returns it and its URL. Like ElevenLabs, it carries out a
/// request it has received even if the caller hangs up or dies before the
/// answer (each request is handled as a task of its own, which the caller's
/// connection closing does not cancel).
async fn one_elevenlabs(step_ms: u64) -> (Simulator, String) {
    let simulator = Simulator::new(SimulatorConfig {
        api_key: Some(KEY.into()),
        step: Duration::from_millis(step_ms),
        webhook: None,
        capture_requests: true,
    });
    let router = simulator.router().layer(axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            tokio::spawn(next.run(request))
                .await
                .expect("the simulator answered")
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the simulator");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (simulator, url)
}

/// An instance's configuration for the shared ElevenLabs at `url`.
fn talking_to(url: &str) -> impl Fn(&mut Config) + '_ {
    move |config| {
        config.elevenlabs_api_key = Some(Secret::new(KEY));
        config.elevenlabs_base_url = url.to_owned();
    }
}

/// Two instances on one fresh database, both talking to the ElevenLabs at `url`.
async fn two_instances(url: &str) -> (TestApp, TestApp) {
    let a = spawn_app_with(Backend::Postgres, talking_to(url)).await;
    let b = spawn_beside(&a, talking_to(url)).await;
    (a, b)
}

/// Four clients, one of each outcome the simulator plays (last digit 1 and 2
/// complete, 8 reaches voicemail, 9 fails); numbers differ between groups.
fn four_clients(group: usize) -> String {
    let mut csv = String::from("nombre,telefono,monto\n");
    for digit in [1, 2, 8, 9] {
        csv.push_str(&format!("C{digit},31385{group:02}00{digit},{digit}00\n"));
    }
    csv
}

async fn group_of_four(app: &TestApp, token: &str, name: &str, n: usize) -> i64 {
    group_id(
        app,
        token,
        json!({"name": name, "agentId": SIM_AGENT_COBRANZA,
               "base64": b64(four_clients(n).as_bytes()), "document_name": "c.csv"}),
    )
    .await
}

/// The same group launched at once through both instances, twenty-four
/// times: eight requests without a key, eight with one key (the same on both
/// instances), eight with a key each; ElevenLabs takes 300 ms to answer the
/// submit, so the launches overlap. One batch in the database and at
/// ElevenLabs; every other answer is the 409, or (for the shared key) the
/// first answer replayed. The launch lock is a row in the database: an
/// in-process lock would let each instance launch once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_across_two_instances_create_one_batch() {
    let (sim, url) = one_elevenlabs(60_000).await;
    let (a, b) = two_instances(&url).await;
    let (token, id) = a.admin().await;
    // Created through B, launched through both: one database.
    let group = group_of_four(&b, &token, "Cobranza", 0).await;
    sim.inject(Fault::delay("POST", SUBMIT, 300));
    let path = format!("/api/groups/{group}/call");
    let mut launches = Vec::new();
    for (name, app) in [("a", &a), ("b", &b)] {
        for i in 0..12 {
            let mut request = app
                .client
                .post(app.url(&path))
                .bearer_auth(&token)
                .json(&json!({"userId": id}));
            match i % 3 {
                1 => request = request.header("idempotency-key", "shared"),
                2 => request = request.header("idempotency-key", format!("{name}-{i}")),
                _ => {}
            }
            launches.push(async move { (name, app.send(request).await) });
        }
    }
    let replies: Vec<(&str, Reply)> = futures::future::join_all(launches).await;

    let launched: Vec<&(&str, Reply)> = replies.iter().filter(|(_, r)| r.status == 200).collect();
    let (_, first) = launched.first().expect("one launch went through");
    first.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Cobranza\"",
    );
    assert_eq!(first.body["data"]["recipientsCount"], 4);
    let batch = first.body["data"]["batchId"].clone();
    assert!(batch.is_string(), "{}", first.text);
    let mut conflicts = HashMap::new();
    for (name, reply) in &replies {
        match reply.status.as_u16() {
            // Only the first answer, replayed for the shared key.
            200 => {
                assert_eq!(
                    reply.body["data"]["batchId"], batch,
                    "a second launch through {name}"
                );
                assert!(reply.body == first.body, "{name}: {}", reply.text);
            }
            409 => {
                reply.assert_error(409, MSG_DOUBLE);
                let named = &reply.body["data"]["batchId"];
                assert!(named.is_null() || *named == batch, "{name}: {}", reply.text);
                *conflicts.entry(*name).or_insert(0) += 1;
            }
            other => panic!("{name}: {other} {}", reply.text),
        }
    }
    // Of the sixteen requests without the shared key one at most launched:
    // each instance refused at least seven, whichever one launched.
    for name in ["a", "b"] {
        assert!(
            conflicts.get(name).is_some_and(|n| *n >= 7),
            "{conflicts:?}"
        );
    }

    assert_eq!(submits(&sim).len(), 1, "one submit reached ElevenLabs");
    assert_eq!(sim.batch_count(), 1);
    assert_eq!(a.db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    assert_eq!(a.db.scalar("SELECT COUNT(*) FROM call_records").await, 4);
    assert_eq!(
        a.db.scalar("SELECT COUNT(DISTINCT client_id) FROM call_records")
            .await,
        4
    );
    assert_eq!(
        a.db.scalar("SELECT COUNT(*) FROM groups WHERE launch_locked_until IS NOT NULL")
            .await,
        0,
        "the lock was let go"
    );
    // Either instance shows the batch, read live from the one ElevenLabs.
    for app in [&a, &b] {
        let status = app
            .get(&format!("/api/groups/{group}/batch-status"), Some(&token))
            .await;
        status.assert_ok(200, "Estado del batch call obtenido exitosamente");
        assert_eq!(status.body["data"]["batchCall"]["id"], batch);
    }
}

/// Logs every lease the sync takes on a batch (a trigger of the test's own):
/// who held it before, until when, who took it and when.
const LEASE_LOG: &str = "
    CREATE TABLE lease_log (batch_id BIGINT NOT NULL, from_owner TEXT, from_expires TIMESTAMPTZ,
                            to_owner TEXT NOT NULL, taken_at TIMESTAMPTZ NOT NULL);
    CREATE FUNCTION log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO lease_log VALUES (OLD.id, OLD.lease_owner, OLD.lease_expires_at, NEW.lease_owner, clock_timestamp());
        RETURN NEW;
    END $$;
    CREATE TRIGGER log_lease BEFORE UPDATE ON batches FOR EACH ROW
        WHEN (NEW.lease_owner IS NOT NULL AND NEW.lease_expires_at IS DISTINCT FROM OLD.lease_expires_at)
        EXECUTE FUNCTION log_lease();";

/// Ticks `worker` again and again until `batches` batches are final; returns
/// what its ticks did, added up.
async fn sync_until_final(worker: SyncWorker, db: Arc<TestDb>, batches: i64) -> SyncReport {
    let mut total = SyncReport::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = worker.tick().await;
        total.claimed += report.claimed;
        total.synced += report.synced;
        total.failed += report.failed;
        total.finalized += report.finalized;
        total.changed_calls += report.changed_calls;
        total.conversations += report.conversations;
        let done = db
            .scalar("SELECT COUNT(*) FROM batches WHERE is_final = TRUE")
            .await;
        if done == batches {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {done} of {batches} batches final",
            worker.owner()
        );
        // Due again at once: the test waits for the simulator's steps, not
        // for the sync's interval (a second at least). A part the launch has
        // written ahead and not confirmed yet keeps its hold: the sync leaves
        // it to the launch (taken earlier, the launch's confirmation would win
        // and this sync fail as "lease lost").
        db.execute(
            "UPDATE batches SET next_sync_at = NULL
             WHERE is_final = FALSE AND lease_owner IS NULL AND submit_state <> 'unknown'",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Six groups launched at once through both instances while a sync worker
/// of each ticks over and over as the simulator advances the calls (one step
/// every 100 ms): the leases let one instance at a time work on a batch (the
/// batches pass from one to the other between syncs, never while a lease
/// lives), no sync is thrown away, every conversation is read once, and
/// every call ends with its outcome, counted once in the statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_is_synced_by_one_instance_at_a_time() {
    let (sim, url) = one_elevenlabs(100).await;
    let (a, b) = two_instances(&url).await;
    let (token, id) = a.admin().await;
    let mut groups = Vec::new();
    for n in 0..6 {
        groups.push(group_of_four(&a, &token, &format!("Grupo {n}"), n).await);
    }
    a.db.execute(LEASE_LOG).await;
    let launches = groups.iter().enumerate().map(|(n, group)| {
        let app = if n % 2 == 0 { &a } else { &b };
        launch(app, &token, *group, json!({"userId": id}))
    });
    // Each tick syncs its batches as tasks of their own: the two workers run
    // side by side although this test polls both.
    let (replies, report_a, report_b) = tokio::join!(
        futures::future::join_all(launches),
        sync_until_final(SyncWorker::with_owner(&a.state, "a"), a.db.clone(), 6),
        sync_until_final(SyncWorker::with_owner(&b.state, "b"), b.db.clone(), 6),
    );
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let reports = [report_a, report_b];

    // One instance at a time: no lease was taken while another lived, both
    // instances took part, and some batch went from one to the other.
    assert_eq!(
        a.db
            .scalar("SELECT COUNT(*) FROM lease_log WHERE from_owner IS NOT NULL AND from_expires > taken_at")
            .await,
        0,
        "a lease taken from a live one"
    );
    assert_eq!(
        a.db.scalar("SELECT COUNT(DISTINCT to_owner) FROM lease_log")
            .await,
        2
    );
    assert!(
        a.db
            .scalar("SELECT COUNT(*) FROM (SELECT batch_id FROM lease_log GROUP BY batch_id HAVING COUNT(DISTINCT to_owner) = 2) AS shared")
            .await
            > 0,
        "no batch was synced by both instances in turn"
    );
    for (owner, report) in ["a", "b"].iter().zip(&reports) {
        assert!(report.synced > 0, "{owner}: {report:?}");
        assert_eq!(
            report.failed, 0,
            "{owner}: a sync lost its lease: {report:?}"
        );
    }
    assert_eq!(reports[0].finalized + reports[1].finalized, 6);
    assert_eq!(reports[0].conversations + reports[1].conversations, 24);

    // Nothing lost, nothing twice.
    assert_eq!(
        a.db
            .scalar("SELECT COUNT(*) FROM batches WHERE is_final = TRUE AND status = 'completed' AND submit_state = 'submitted' AND lease_owner IS NULL")
            .await,
        6
    );
    assert_eq!(a.db.scalar("SELECT COUNT(*) FROM call_records").await, 24);
    for (status, count) in [("completed", 12), ("voicemail", 6), ("failed", 6)] {
        let sql = format!(
            "SELECT COUNT(*) FROM call_records WHERE status = '{status}' AND conversation_fetched_at IS NOT NULL"
        );
        assert_eq!(a.db.scalar(&sql).await, count, "{status}");
        let rolled = format!(
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM call_stats_hourly WHERE status = '{status}'"
        );
        assert_eq!(a.db.scalar(&rolled).await, count, "{status} in the rollup");
    }
    assert_eq!(
        a.db.scalar("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM call_stats_hourly")
            .await,
        24,
        "each call counted once"
    );
    let requests = sim.requests();
    assert!(requests.len() < 500, "the simulator kept every request");
    let mut reads: HashMap<String, usize> = HashMap::new();
    for request in &requests {
        if request.method == "GET"
            && let Some(id) = request.path.strip_prefix("/v1/convai/conversations/")
        {
            *reads.entry(id.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(reads.len(), 24, "{reads:?}");
    assert!(reads.values().all(|n| *n == 1), "read twice: {reads:?}");
    // Either instance tells the same story.
    let stats = b
        .get(
            &format!("/api/groups/{}/call-stats", groups[0]),
            Some(&token),
        )
        .await;
    stats.assert_ok(200, "Estadísticas obtenidas exitosamente");
    assert_eq!(stats.body["data"]["summary"]["totalRecipients"], 4);
    assert_eq!(stats.body["data"]["summary"]["totalCompletedCalls"], 2);
}

/// Moves the group's launch and batches `minutes` into the past: the
/// launch lock, the batches' creation and their next sync (the write-ahead's
/// hold), as if that much time had passed.
async fn later(db: &TestDb, group: i64, minutes: i64) {
    db.execute(&format!(
        "UPDATE batches SET created_at = created_at - interval '{minutes} minutes',
                next_sync_at = next_sync_at - interval '{minutes} minutes'
         WHERE group_id = {group};
         UPDATE groups SET launch_locked_until = launch_locked_until - interval '{minutes} minutes'
         WHERE id = {group};"
    ))
    .await;
}

async fn launch(app: &TestApp, token: &str, group: i64, body: Value) -> Reply {
    app.post(&format!("/api/groups/{group}/call"), Some(token), body)
        .await
}

/// `onlyUncalled` finds nobody: `called` clients count as included in a batch.
async fn nobody_uncalled(app: &TestApp, token: &str, user: i64, group: i64, called: usize) {
    let reply = launch(
        app,
        token,
        group,
        json!({"userId": user, "onlyUncalled": true}),
    )
    .await;
    reply.assert_error(
        400,
        "No se encontraron clientes con números telefónicos válidos en el grupo",
    );
    assert_eq!(
        reply.body["error"],
        format!("{called} clientes ya fueron incluidos en una llamada (onlyUncalled)")
    );
}

/// Instance A launches 20,005 clients (three parts) and is killed while
/// ElevenLabs holds part 2's submit: part 1 is accepted and confirmed, part 2
/// written ahead and sent (ElevenLabs goes on and creates it, A never hears),
/// part 3 written ahead and never sent, and A's launch lock is left behind.
/// The kill drops A's runtime (see `spawn_killable`), as a SIGKILL or a
/// crash stops the process between two awaits: no answer, no unlock, no
/// confirmation, the request to ElevenLabs cut. Instance B then refuses to launch the group again, its
/// sync finds part 2 at ElevenLabs once the write-ahead's hold is over, gives
/// part 3 up after its fifteen minutes (the test moves the clock, `later`),
/// and `onlyUncalled` through B calls just part 3's five: every number
/// reached ElevenLabs once. (The calls are not followed to their end here:
/// twenty thousand conversations; the test above does that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_launch_leaves_no_double_dial() {
    let (sim, url) = one_elevenlabs(60_000).await;
    let b = spawn_app_with(Backend::Postgres, talking_to(&url)).await;
    let mut config = test_config(&b.db);
    talking_to(&url)(&mut config);
    let (a, switch) = spawn_killable(&b.db, config).await;
    let (token, id) = a.admin().await;
    let group = long_group(&a, &token, "Tres partes", 20_005).await;
    sim.inject(Fault::delay("POST", SUBMIT, 2_000).after(1).times(1));
    let request = a
        .client
        .post(a.url(&format!("/api/groups/{group}/call")))
        .bearer_auth(&token)
        .json(&json!({"userId": id}));
    let cut = tokio::spawn(request.send());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let written =
            b.db.scalar(&format!(
                "SELECT COUNT(*) FROM batches WHERE group_id = {group}"
            ))
            .await;
        let confirmed =
            b.db.scalar("SELECT COUNT(*) FROM batches WHERE submit_state = 'submitted'")
                .await;
        if written == 3 && confirmed == 1 && submits(&sim).len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "part 2 was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    switch.kill(&a).await;
    assert_eq!(
        sim.batch_count(),
        1,
        "killed before ElevenLabs answered part 2"
    );
    assert!(
        cut.await.expect("the request task").is_err(),
        "a killed server answers nothing"
    );
    // What A left: part 1 confirmed, parts 2 and 3 unverified, the lock held.
    let unverified = "SELECT COUNT(*) FROM batches WHERE submit_state = 'unknown' AND elevenlabs_batch_id IS NULL";
    assert_eq!(b.db.scalar(unverified).await, 2);
    assert_eq!(
        b.db.scalar("SELECT COUNT(*) FROM call_records").await,
        20_005
    );
    assert_eq!(
        b.db.scalar("SELECT COUNT(*) FROM groups WHERE launch_locked_until > now()")
            .await,
        1
    );

    // B at once: no second launch; and nobody is uncalled while parts 2 and
    // 3 are being verified (they may be dialling).
    launch(&b, &token, group, json!({"userId": id}))
        .await
        .assert_error(409, MSG_DOUBLE);
    nobody_uncalled(&b, &token, id, group, 20_005).await;
    assert_eq!(submits(&sim).len(), 2, "nothing sent again");

    // ElevenLabs finishes the submit A sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.batch_count() < 2 {
        assert!(Instant::now() < deadline, "ElevenLabs never created part 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B's sync: while the write-ahead's hold lasts, only part 1 is synced.
    let worker = SyncWorker::with_owner(&b.state, "b");
    let report = worker.tick().await;
    assert_eq!((report.synced, report.reconciled), (1, 0), "{report:?}");
    assert_eq!(b.db.scalar(unverified).await, 2);
    // Two minutes later the hold is over: part 2 is found at ElevenLabs by
    // its name and people; part 3 is not there, and is kept for now.
    later(&b.db, group, 2).await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(b.db.scalar(unverified).await, 1);
    let found = b
        .db
        .scalar("SELECT COUNT(*) FROM batches WHERE part_index = 2 AND submit_state = 'submitted' AND elevenlabs_batch_id IS NOT NULL")
        .await;
    assert_eq!(found, 1);
    launch(&b, &token, group, json!({"userId": id}))
        .await
        .assert_error(409, MSG_DOUBLE);
    nobody_uncalled(&b, &token, id, group, 20_005).await;
    // Sixteen minutes after the kill, part 3 was never seen at ElevenLabs: it
    // is given up, and A's launch lock has expired.
    later(&b.db, group, 14).await;
    let report = worker.tick().await;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(b.db.scalar(unverified).await, 0);
    assert_eq!(
        b.db
            .scalar("SELECT COUNT(*) FROM call_records r JOIN batches b ON b.id = r.batch_id WHERE b.submit_state = 'not_submitted' AND r.status = 'failed'")
            .await,
        5,
        "part 3's calls, never placed"
    );

    // The rest, through B: exactly the five no batch included.
    let rest = launch(
        &b,
        &token,
        group,
        json!({"userId": id, "onlyUncalled": true}),
    )
    .await;
    rest.assert_ok(
        200,
        "Llamadas iniciadas exitosamente para el grupo \"Tres partes\"",
    );
    assert_eq!(rest.body["data"]["recipientsCount"], 5);
    assert_eq!(rest.body["data"]["excluded"]["alreadyCalled"], 20_000);

    // Every number reached ElevenLabs once, in a batch it created.
    let sent = submits(&sim);
    assert_eq!(sent.len(), 3);
    assert_eq!(sim.batch_count(), 3);
    let numbers: Vec<&str> = sent
        .iter()
        .flat_map(|s| s["recipients"].as_array().expect("recipients"))
        .map(|r| r["phone_number"].as_str().expect("a number"))
        .collect();
    let distinct: HashSet<&str> = numbers.iter().copied().collect();
    assert_eq!(numbers.len(), 20_005, "nobody dialled twice");
    assert_eq!(distinct.len(), 20_005);
    // And every client is in exactly one batch that reached ElevenLabs.
    let placed = "FROM call_records r JOIN batches b ON b.id = r.batch_id WHERE b.submit_state = 'submitted'";
    assert_eq!(
        b.db.scalar(&format!("SELECT COUNT(*) {placed}")).await,
        20_005
    );
    assert_eq!(
        b.db.scalar(&format!("SELECT COUNT(DISTINCT r.client_id) {placed}"))
            .await,
        20_005
    );
}
