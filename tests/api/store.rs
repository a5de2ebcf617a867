//! The store conformance suite: the same expectations of the `Store` trait on
//! SQLite and PostgreSQL, without HTTP in between.

use marcador::store::{
    self, AuditEvent, NewUser, Role, RolePolicy, StoreError, UserPatch, UserQuery,
};
use serde_json::json;

use crate::helpers::{Backend, TestDb, both_backends};

both_backends!(
    migrations_are_applied_once_and_reopening_is_harmless,
    concurrent_openings_migrate_once,
    first_is_admin_policy_decides_roles,
    unique_violations_are_reported_by_kind,
    emails_are_unique_case_insensitively,
    list_users_filters_and_counts,
    patch_sets_clears_and_leaves_fields,
    update_of_a_missing_user_writes_nothing,
    audit_events_are_written_with_the_change,
    clients_keep_their_group_foreign_key_only_on_sqlite,
    migration_13_counts_the_clients_already_there,
);

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: name.into(),
        email: format!("{name}@example.com"),
        password_hash: "hash".into(),
        first_name: Some("Ana".into()),
        last_name: None,
    }
}

/// The versions of a backend's migration files
/// (`migrations/{sqlite,postgres}/NNNN_name.sql`), in order: every one of them
/// is embedded and applied.
pub fn migration_versions(backend: Backend) -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        });
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .expect("migrations directory")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

async fn migrations_are_applied_once_and_reopening_is_harmless(backend: Backend) {
    let db = TestDb::new(backend).await;
    let versions = migration_versions(backend);
    let first = store::connect(&db.url).await.unwrap();
    assert_eq!(first.applied_migrations().await.unwrap(), versions);
    first
        .create_user(new_user("ana"), RolePolicy::Fixed(Role::User), None)
        .await
        .unwrap();
    let again = store::connect(&db.url).await.unwrap();
    assert_eq!(again.applied_migrations().await.unwrap(), versions);
    assert_eq!(again.count_users().await.unwrap(), 1);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM _migrations").await,
        versions.len() as i64
    );
}

async fn concurrent_openings_migrate_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (a, b) = tokio::join!(store::connect(&db.url), store::connect(&db.url));
    let versions = a.unwrap().applied_migrations().await.unwrap();
    b.unwrap();
    assert_eq!(versions, migration_versions(backend));
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM _migrations").await,
        migration_versions(backend).len() as i64
    );
}

async fn first_is_admin_policy_decides_roles(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    let closed = RolePolicy::FirstIsAdmin { open: false };
    let first = store
        .create_user(new_user("first"), closed, None)
        .await
        .unwrap();
    assert_eq!(first.role, Role::Admin);
    let refused = store.create_user(new_user("second"), closed, None).await;
    assert!(matches!(refused, Err(StoreError::RegistrationClosed)));
    let open = store
        .create_user(
            new_user("third"),
            RolePolicy::FirstIsAdmin { open: true },
            None,
        )
        .await
        .unwrap();
    assert_eq!(open.role, Role::User);
    assert_eq!(store.count_users().await.unwrap(), 2);
    assert_eq!(store.count_active_admins().await.unwrap(), 1);
}

async fn unique_violations_are_reported_by_kind(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    store
        .create_user(new_user("ana"), RolePolicy::Fixed(Role::User), None)
        .await
        .unwrap();
    let mut same_name = new_user("ANA");
    same_name.email = "other@example.com".into();
    let err = store
        .create_user(same_name, RolePolicy::Fixed(Role::User), None)
        .await;
    assert!(matches!(err, Err(StoreError::UniqueViolation)), "{err:?}");
}

async fn emails_are_unique_case_insensitively(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    store
        .create_user(new_user("ana"), RolePolicy::Fixed(Role::User), None)
        .await
        .unwrap();
    let mut shouting = new_user("ana2");
    shouting.email = "ANA@EXAMPLE.COM".into();
    let err = store
        .create_user(shouting, RolePolicy::Fixed(Role::User), None)
        .await;
    assert!(matches!(err, Err(StoreError::UniqueViolation)));
    let (user, hash) = store
        .find_credentials("Ana@Example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((user.username.as_str(), hash.as_str()), ("ana", "hash"));
}

async fn list_users_filters_and_counts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    for name in ["ana_1", "ana%2", "bob", "carla"] {
        store
            .create_user(new_user(name), RolePolicy::Fixed(Role::User), None)
            .await
            .unwrap();
    }
    let query = |search: Option<&str>, page: i64, limit: i64| UserQuery {
        page,
        limit,
        search: search.map(str::to_owned),
        ..UserQuery::default()
    };
    let (users, total) = store.list_users(&query(None, 2, 3)).await.unwrap();
    assert_eq!((users.len(), total), (1, 4));
    assert_eq!(users[0].username, "carla");
    let (users, total) = store.list_users(&query(Some("A_"), 1, 10)).await.unwrap();
    assert_eq!(total, 1, "`_` is literal");
    assert_eq!(users[0].username, "ana_1");
    let (_, total) = store.list_users(&query(Some("%"), 1, 10)).await.unwrap();
    assert_eq!(total, 1, "`%` is literal");
    let (_, total) = store
        .list_users(&query(Some("ana bob"), 1, 10))
        .await
        .unwrap();
    assert_eq!(total, 0);
    let inactive = UserQuery {
        is_active: Some(false),
        ..query(None, 1, 10)
    };
    assert_eq!(store.list_users(&inactive).await.unwrap().1, 0);
}

async fn patch_sets_clears_and_leaves_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    let user = store
        .create_user(new_user("ana"), RolePolicy::Fixed(Role::User), None)
        .await
        .unwrap();
    let patch = UserPatch {
        first_name: Some(None),
        last_name: Some(Some("Pérez".into())),
        role: Some(Role::Admin),
        is_active: Some(false),
        ..UserPatch::default()
    };
    let updated = store
        .update_user(user.id, &patch, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.first_name, None);
    assert_eq!(updated.last_name.as_deref(), Some("Pérez"));
    assert_eq!((updated.role, updated.is_active), (Role::Admin, false));
    assert_eq!(updated.email, "ana@example.com");
    assert!(updated.updated_at >= user.updated_at);
    assert_eq!(
        store.password_hash(user.id).await.unwrap().as_deref(),
        Some("hash")
    );
}

async fn update_of_a_missing_user_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    let audit = AuditEvent {
        user_id: None,
        action: "user.updated",
        entity_type: "user",
        entity_id: Some("42".into()),
        details: json!({}),
    };
    let patch = UserPatch {
        is_active: Some(false),
        ..UserPatch::default()
    };
    assert!(
        store
            .update_user(42, &patch, Some(audit))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM audit_events").await, 0);
}

async fn audit_events_are_written_with_the_change(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url).await.unwrap();
    let audit = AuditEvent {
        user_id: None,
        action: "user.registered",
        entity_type: "user",
        entity_id: None,
        details: json!({"open": true, "note": "ñandú"}),
    };
    let user = store
        .create_user(new_user("ana"), RolePolicy::Fixed(Role::User), Some(audit))
        .await
        .unwrap();
    let trail = store
        .list_audit("user", &user.id.to_string())
        .await
        .unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].action, "user.registered");
    assert_eq!(trail[0].details, json!({"open": true, "note": "ñandú"}));
}

/// Migration 9 (PostgreSQL): an import pays no referential check per client;
/// SQLite keeps the check (dropping it would mean rebuilding the table).
async fn clients_keep_their_group_foreign_key_only_on_sqlite(backend: Backend) {
    let db = TestDb::new(backend).await;
    store::connect(&db.url).await.unwrap();
    let keys = db
        .scalar(match backend {
            Backend::Sqlite => "SELECT COUNT(*) FROM pragma_foreign_key_list('clients')",
            Backend::Postgres => {
                "SELECT COUNT(*) FROM pg_constraint WHERE conrelid = 'clients'::regclass AND contype = 'f'"
            }
        })
        .await;
    assert_eq!(keys, if backend == Backend::Sqlite { 1 } else { 0 });
}

/// A database upgraded to migration 13 starts with every group's live
/// clients counted (deleted ones and other groups' not), and keeps counting.
async fn migration_13_counts_the_clients_already_there(backend: Backend) {
    let db = TestDb::new(backend).await;
    store::connect(&db.url).await.unwrap();
    // Back to the schema before migration 13.
    db.execute(match backend {
        Backend::Sqlite => {
            "DROP TRIGGER group_counts_new_group; DROP TRIGGER group_counts_insert;
             DROP TRIGGER group_counts_update; DROP TRIGGER group_counts_delete;
             DROP TABLE group_counts; DELETE FROM _migrations WHERE version = 13"
        }
        Backend::Postgres => {
            "DROP FUNCTION group_counts_new_group, group_counts_statement, group_counts_row CASCADE;
             DROP TABLE group_counts; DELETE FROM _migrations WHERE version = 13"
        }
    })
    .await;
    let at = "'2026-12-01T00:00:00Z'";
    db.execute(&format!(
        "INSERT INTO users (username, email, password_hash, role, created_at, updated_at)
         VALUES ('ana', 'ana@example.com', 'x', 'admin', {at}, {at});
         INSERT INTO groups (name, created_by, created_at, updated_at) VALUES ('uno', 1, {at}, {at}), ('dos', 1, {at}, {at});
         INSERT INTO clients (group_id, phone, phone_e164, deleted_at, created_at, updated_at) VALUES
             (1, '1', '+571', NULL, {at}, {at}), (1, '2', '+572', NULL, {at}, {at}),
             (1, '3', '+573', {at}, {at}, {at}), (1, '3', '+573', NULL, {at}, {at})"
    ))
    .await;
    let upgraded = store::connect(&db.url).await.unwrap();
    assert_eq!(
        upgraded.applied_migrations().await.unwrap(),
        migration_versions(backend)
    );
    let count = |group: i64| {
        let sql =
            format!("SELECT CAST(clients AS BIGINT) FROM group_counts WHERE group_id = {group}");
        let db = &db;
        async move { db.scalar(&sql).await }
    };
    assert_eq!((count(1).await, count(2).await), (3, 0));
    db.execute(&format!(
        "INSERT INTO clients (group_id, phone, phone_e164, created_at, updated_at) VALUES (2, '4', '+574', {at}, {at})"
    ))
    .await;
    assert_eq!((count(1).await, count(2).await), (3, 1));
}
