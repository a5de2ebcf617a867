//! The `marcador` command line: `migrate`, `create-user`, JSON logs.

use std::process::Command;

use crate::helpers::{Backend, TestDb, both_backends, start, test_config};

both_backends!(migrate_then_create_user_from_the_command_line,);

fn marcador(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_marcador"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", db.dir().join("data"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .current_dir(db.dir())
        .output()
        .expect("marcador runs")
}

async fn migrate_then_create_user_from_the_command_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let migrate = marcador(&db, &["migrate"]);
    let stdout = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        migrate.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let applied = format!(
        "migrations applied: {:?}",
        crate::store::migration_versions(backend)
    );
    assert!(stdout.contains(&applied), "{stdout}");
    let log_line = stdout
        .lines()
        .find(|l| l.contains("migration applied"))
        .expect("a log line for the migration");
    let log: serde_json::Value =
        serde_json::from_str(log_line).expect("LOG_FORMAT=json writes JSON lines");
    assert_eq!(log["fields"]["version"], 1);

    let secret_password = "cli password 123";
    let created = marcador(
        &db,
        &[
            "create-user",
            "--email",
            "Boss@Example.com",
            "--username",
            "boss",
            "--password",
            secret_password,
            "--role",
            "admin",
        ],
    );
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(created.status.success(), "{stdout}");
    assert!(!stdout.contains(secret_password) && !stdout.contains("argon2"));
    let user: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .filter(|l| !l.starts_with("{\"timestamp"))
            .collect::<Vec<_>>()
            .join("\n")
            .trim(),
    )
    .expect("the new user as JSON");
    assert_eq!(user["role"], "admin");
    assert_eq!(user["email"], "boss@example.com");

    let again = marcador(
        &db,
        &[
            "create-user",
            "--email",
            "boss@example.com",
            "--username",
            "boss2",
            "--password",
            secret_password,
        ],
    );
    assert!(!again.status.success(), "a taken email is refused");

    let config = test_config(&db);
    let app = start(db, config, std::future::pending()).await;
    app.login("boss@example.com", secret_password)
        .await
        .assert_ok(200, "Login exitoso");
}
