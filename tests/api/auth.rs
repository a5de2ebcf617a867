//! API.md §2: registration, login, tokens, profile.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    Backend, JWT_SECRET, PASSWORD, both_backends, spawn_app, spawn_app_with, token_and_id,
};

both_backends!(
    first_user_becomes_admin_and_gets_a_working_token,
    registration_is_closed_after_the_first_user,
    open_registration_creates_plain_users,
    concurrent_first_registrations_make_one_admin,
    registration_validates_each_field,
    duplicate_email_or_username_is_a_conflict_and_writes_nothing,
    login_succeeds_with_the_right_password_and_any_email_case,
    login_failures_look_the_same_for_unknown_email_and_wrong_password,
    login_requires_email_and_password,
    deactivated_account_cannot_log_in,
    repeated_login_failures_are_rate_limited_per_email,
    repeated_login_failures_are_rate_limited_per_ip,
    missing_token_is_rejected,
    malformed_or_foreign_tokens_are_invalid,
    expired_token_is_rejected,
    token_of_a_deactivated_user_stops_working_at_once,
    token_of_a_deleted_user_stops_working,
    profile_can_be_read_and_updated,
    profile_update_rejects_a_taken_or_bad_email,
    password_change_needs_the_current_password,
    a_password_change_revokes_older_tokens_and_answers_a_new_one,
    an_admin_password_reset_revokes_the_users_tokens_only,
    a_demoted_admin_loses_its_older_tokens,
    a_reactivated_user_needs_a_new_token,
);

async fn first_user_becomes_admin_and_gets_a_working_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.register("ana", "Ana@Example.com").await;
    reply.assert_ok(201, "Usuario registrado exitosamente");
    let user = &reply.body["data"]["user"];
    assert_eq!(user["role"], "admin");
    assert_eq!(user["email"], "ana@example.com");
    assert_eq!(user["isActive"], true);
    assert!(user.get("passwordHash").is_none() && user.get("password_hash").is_none());
    assert!(!reply.text.contains("argon2"), "no hash in {}", reply.text);

    let (token, id) = token_and_id(&reply);
    let profile = app.get("/api/auth/profile", Some(&token)).await;
    profile.assert_ok(200, "Perfil obtenido exitosamente");
    assert_eq!(profile.body["data"]["id"], id);
    assert_eq!(profile.body["data"]["username"], "ana");
}

async fn registration_is_closed_after_the_first_user(backend: Backend) {
    let app = spawn_app(backend).await;
    app.admin().await;
    let reply = app.register("second", "second@example.com").await;
    reply.assert_error(403, "El registro público está deshabilitado");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 1);
}

async fn open_registration_creates_plain_users(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.allow_registration = true).await;
    app.admin().await;
    let reply = app.register("second", "second@example.com").await;
    reply.assert_ok(201, "Usuario registrado exitosamente");
    assert_eq!(reply.body["data"]["user"]["role"], "user");
}

async fn concurrent_first_registrations_make_one_admin(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.allow_registration = true).await;
    let replies = futures::future::join_all((0..6).map(|i| {
        let app = &app;
        async move {
            app.register(&format!("user{i}"), &format!("user{i}@example.com"))
                .await
        }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 201));
    let admins = replies
        .iter()
        .filter(|r| r.body["data"]["user"]["role"] == "admin")
        .count();
    assert_eq!(admins, 1);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .await,
        1
    );
}

async fn registration_validates_each_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (
            json!({"email": "a@example.com", "password": PASSWORD}),
            "Campos requeridos faltantes",
        ),
        (
            json!({"username": "ana", "password": PASSWORD}),
            "Campos requeridos faltantes",
        ),
        (
            json!({"username": "ana", "email": "a@example.com"}),
            "Campos requeridos faltantes",
        ),
        (
            json!({"username": "ana", "email": "not-an-email", "password": PASSWORD}),
            "Formato de email inválido",
        ),
        (
            json!({"username": "ana", "email": "a@example.com", "password": "short"}),
            "La contraseña debe tener al menos 8 caracteres",
        ),
        (
            json!({"username": "an", "email": "a@example.com", "password": PASSWORD}),
            "El username debe tener al menos 3 caracteres",
        ),
    ];
    for (body, message) in cases {
        app.post("/api/auth/register", None, body)
            .await
            .assert_error(400, message);
    }
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 0);
}

async fn duplicate_email_or_username_is_a_conflict_and_writes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.allow_registration = true).await;
    app.admin().await;
    app.register("admin2", "ADMIN@example.com")
        .await
        .assert_error(409, "El email o username ya está registrado");
    app.register("Admin", "other@example.com")
        .await
        .assert_error(409, "El email o username ya está registrado");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 1);
}

async fn login_succeeds_with_the_right_password_and_any_email_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, id) = app.admin().await;
    let reply = app.login("ADMIN@Example.com", PASSWORD).await;
    reply.assert_ok(200, "Login exitoso");
    let (token, login_id) = token_and_id(&reply);
    assert_eq!(login_id, id);
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn login_failures_look_the_same_for_unknown_email_and_wrong_password(backend: Backend) {
    let app = spawn_app(backend).await;
    app.admin().await;
    let wrong = app.login("admin@example.com", "wrong password").await;
    let unknown = app.login("nobody@example.com", PASSWORD).await;
    wrong.assert_error(401, "Credenciales inválidas");
    assert_eq!(wrong.text, unknown.text);
    assert_eq!(wrong.status, unknown.status);
}

async fn login_requires_email_and_password(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in [
        json!({}),
        json!({"email": "a@example.com"}),
        json!({"password": PASSWORD}),
        json!({"email": " ", "password": ""}),
    ] {
        app.post("/api/auth/login", None, body)
            .await
            .assert_error(400, "Email y contraseña son requeridos");
    }
}

async fn deactivated_account_cannot_log_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (_, id) = app.user(&admin, "maria").await;
    app.delete(&format!("/api/users/{id}"), Some(&admin))
        .await
        .assert_ok(200, "Usuario desactivado exitosamente");
    app.login("maria@example.com", PASSWORD)
        .await
        .assert_error(403, "Cuenta desactivada");
    // A wrong password still says nothing about the account.
    app.login("maria@example.com", "wrong password")
        .await
        .assert_error(401, "Credenciales inválidas");
}

async fn repeated_login_failures_are_rate_limited_per_email(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.login_max_attempts = 3).await;
    app.admin().await;
    for _ in 0..3 {
        app.login("admin@example.com", "wrong password")
            .await
            .assert_error(401, "Credenciales inválidas");
    }
    // Locked now, even with the right password.
    let locked = app.login("admin@example.com", PASSWORD).await;
    locked.assert_error(429, "Demasiados intentos. Intenta de nuevo más tarde.");
    let retry: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 900, "Retry-After {retry}");
}

async fn repeated_login_failures_are_rate_limited_per_ip(backend: Backend) {
    // Per IP the limit is four times the per-email one: 4 failures with max 1.
    let app = spawn_app_with(backend, |c| c.login_max_attempts = 1).await;
    app.admin().await;
    for i in 0..4 {
        app.login(&format!("nobody{i}@example.com"), "wrong password")
            .await
            .assert_error(401, "Credenciales inválidas");
    }
    app.login("admin@example.com", PASSWORD)
        .await
        .assert_error(429, "Demasiados intentos. Intenta de nuevo más tarde.");
}

async fn missing_token_is_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/api/auth/profile", "/api/users"] {
        app.get(path, None)
            .await
            .assert_error(401, "Token de autenticación requerido");
    }
    app.put("/api/auth/change-password", None, json!({}))
        .await
        .assert_error(401, "Token de autenticación requerido");
}

fn claims(id: i64, exp_offset: i64, iss: &str) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": id.to_string(), "id": id, "username": "admin", "email": "admin@example.com",
           "role": "admin", "iat": now, "exp": now + exp_offset, "iss": iss})
}

fn sign(alg: Algorithm, key: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

async fn malformed_or_foreign_tokens_are_invalid(backend: Backend) {
    use base64::Engine;
    let app = spawn_app(backend).await;
    let (token, id) = app.admin().await;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(id, 3600, "marcador"))
    );
    let tokens = [
        "garbage".to_owned(),
        format!("{token}x"),
        sign(
            Algorithm::HS256,
            "another-secret-that-is-also-long-enough-000",
            &claims(id, 3600, "marcador"),
        ),
        sign(Algorithm::HS512, JWT_SECRET, &claims(id, 3600, "marcador")),
        sign(
            Algorithm::HS256,
            JWT_SECRET,
            &claims(id, 3600, "someone-else"),
        ),
        alg_none,
    ];
    for bad in &tokens {
        app.get("/api/auth/profile", Some(bad))
            .await
            .assert_error(401, "Token inválido");
    }
    // Not a Bearer token at all.
    let basic = app
        .send(
            app.client
                .get(app.url("/api/auth/profile"))
                .header("authorization", format!("Basic {token}")),
        )
        .await;
    basic.assert_error(401, "Token inválido");
    // The genuine token still works, so the cases above failed for their own reason.
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn expired_token_is_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, id) = app.admin().await;
    let expired = sign(Algorithm::HS256, JWT_SECRET, &claims(id, -120, "marcador"));
    app.get("/api/auth/profile", Some(&expired))
        .await
        .assert_error(401, "Token expirado");
    let fresh = sign(Algorithm::HS256, JWT_SECRET, &claims(id, 120, "marcador"));
    app.get("/api/auth/profile", Some(&fresh))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn token_of_a_deactivated_user_stops_working_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (token, id) = app.user(&admin, "maria").await;
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"isActive": false}),
    )
    .await
    .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_error(401, "Usuario no encontrado o inactivo");
}

async fn token_of_a_deleted_user_stops_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (token, id) = app.user(&admin, "maria").await;
    app.db
        .execute(&format!(
            "DELETE FROM audit_events WHERE user_id = {id}; DELETE FROM users WHERE id = {id}"
        ))
        .await;
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_error(401, "Usuario no encontrado o inactivo");
}

async fn profile_can_be_read_and_updated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let reply = app
        .put(
            "/api/auth/profile",
            Some(&token),
            json!({"firstName": " Ana ", "lastName": "Pérez", "email": "Ana.Perez@Example.com", "role": "user"}),
        )
        .await;
    reply.assert_ok(200, "Perfil actualizado exitosamente");
    let user = &reply.body["data"];
    assert_eq!(user["firstName"], "Ana");
    assert_eq!(user["lastName"], "Pérez");
    assert_eq!(user["email"], "ana.perez@example.com");
    assert_eq!(user["role"], "admin", "the profile cannot change the role");
    app.login("ana.perez@example.com", PASSWORD)
        .await
        .assert_ok(200, "Login exitoso");
}

async fn profile_update_rejects_a_taken_or_bad_email(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (token, _) = app.user(&admin, "maria").await;
    app.put(
        "/api/auth/profile",
        Some(&token),
        json!({"email": "admin@example.com"}),
    )
    .await
    .assert_error(409, "El email o username ya está registrado");
    app.put("/api/auth/profile", Some(&token), json!({"email": "nope"}))
        .await
        .assert_error(400, "Formato de email inválido");
    let profile = app.get("/api/auth/profile", Some(&token)).await;
    assert_eq!(profile.body["data"]["email"], "maria@example.com");
}

async fn password_change_needs_the_current_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let path = "/api/auth/change-password";
    app.call(
        Method::PUT,
        path,
        Some(&token),
        Some(json!({"newPassword": "new password 1"})),
    )
    .await
    .assert_error(400, "Campos requeridos faltantes");
    app.put(
        path,
        Some(&token),
        json!({"currentPassword": PASSWORD, "newPassword": "short"}),
    )
    .await
    .assert_error(400, "La contraseña debe tener al menos 8 caracteres");
    app.put(
        path,
        Some(&token),
        json!({"currentPassword": "wrong password", "newPassword": "new password 1"}),
    )
    .await
    .assert_error(400, "La contraseña actual es incorrecta");
    app.login("admin@example.com", PASSWORD)
        .await
        .assert_ok(200, "Login exitoso");

    app.put(
        path,
        Some(&token),
        json!({"currentPassword": PASSWORD, "newPassword": "new password 1"}),
    )
    .await
    .assert_ok(200, "Contraseña actualizada exitosamente");
    app.login("admin@example.com", PASSWORD)
        .await
        .assert_error(401, "Credenciales inválidas");
    app.login("admin@example.com", "new password 1")
        .await
        .assert_ok(200, "Login exitoso");
}

const REVOKED: &str = "Token revocado. Inicia sesión de nuevo";

async fn a_password_change_revokes_older_tokens_and_answers_a_new_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (other, _) = app.user(&admin, "luis").await;
    // Two sessions of maria: a phone and a laptop.
    let (phone, id) = app.user(&admin, "maria").await;
    let (laptop, _) = token_and_id(&app.login("maria@example.com", PASSWORD).await);
    let reply = app
        .put(
            "/api/auth/change-password",
            Some(&phone),
            json!({"currentPassword": PASSWORD, "newPassword": "new password 1"}),
        )
        .await;
    reply.assert_ok(200, "Contraseña actualizada exitosamente");
    for old in [&phone, &laptop] {
        app.get("/api/auth/profile", Some(old))
            .await
            .assert_error(401, REVOKED);
    }
    // The answer's token, a new login and other users' tokens work.
    let (fresh, fresh_id) = token_and_id(&reply);
    assert_eq!(fresh_id, id);
    assert_eq!(reply.body["data"]["user"]["email"], "maria@example.com");
    app.get("/api/auth/profile", Some(&fresh))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
    let login = app.login("maria@example.com", "new password 1").await;
    login.assert_ok(200, "Login exitoso");
    app.get("/api/auth/profile", Some(&token_and_id(&login).0))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
    for token in [&admin, &other] {
        app.get("/api/auth/profile", Some(token))
            .await
            .assert_ok(200, "Perfil obtenido exitosamente");
    }
}

async fn an_admin_password_reset_revokes_the_users_tokens_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (other, _) = app.user(&admin, "luis").await;
    let (token, id) = app.user(&admin, "maria").await;
    // A change that touches neither password nor rights keeps the tokens.
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"firstName": "María"}),
    )
    .await
    .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"password": "reset password 1"}),
    )
    .await
    .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_error(401, REVOKED);
    app.get("/api/groups", Some(&token))
        .await
        .assert_error(401, REVOKED);
    for token in [&admin, &other] {
        app.get("/api/auth/profile", Some(token))
            .await
            .assert_ok(200, "Perfil obtenido exitosamente");
    }
    let login = app.login("maria@example.com", "reset password 1").await;
    login.assert_ok(200, "Login exitoso");
    app.get("/api/auth/profile", Some(&token_and_id(&login).0))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn a_demoted_admin_loses_its_older_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let created = app
        .post(
            "/api/users",
            Some(&admin),
            json!({"username": "jefa", "email": "jefa@example.com", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    created.assert_ok(201, "Usuario creado exitosamente");
    let id = created.body["data"]["id"].as_i64().unwrap();
    let (token, _) = token_and_id(&app.login("jefa@example.com", PASSWORD).await);
    app.get("/api/users", Some(&token))
        .await
        .assert_ok(200, "Usuarios obtenidos exitosamente");
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"role": "user"}),
    )
    .await
    .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/users", Some(&token))
        .await
        .assert_error(401, REVOKED);
    app.post(
        "/api/users",
        Some(&token),
        json!({"username": "intruso", "email": "intruso@example.com", "password": PASSWORD, "role": "admin"}),
    )
    .await
    .assert_error(401, REVOKED);
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 2);
    // A new login works, as a user; the other admin's token is untouched.
    let (fresh, _) = token_and_id(&app.login("jefa@example.com", PASSWORD).await);
    let profile = app.get("/api/auth/profile", Some(&fresh)).await;
    profile.assert_ok(200, "Perfil obtenido exitosamente");
    assert_eq!(profile.body["data"]["role"], "user");
    app.get("/api/users", Some(&fresh))
        .await
        .assert_error(403, "No tienes permiso para realizar esta acción");
    app.get("/api/users", Some(&admin))
        .await
        .assert_ok(200, "Usuarios obtenidos exitosamente");
    // Made admin again, the revoked token stays revoked.
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"role": "admin"}),
    )
    .await
    .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/users", Some(&token))
        .await
        .assert_error(401, REVOKED);
}

async fn a_reactivated_user_needs_a_new_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (token, id) = app.user(&admin, "maria").await;
    let path = format!("/api/users/{id}");
    app.delete(&path, Some(&admin))
        .await
        .assert_ok(200, "Usuario desactivado exitosamente");
    app.put(&path, Some(&admin), json!({"isActive": true}))
        .await
        .assert_ok(200, "Usuario actualizado exitosamente");
    app.get("/api/auth/profile", Some(&token))
        .await
        .assert_error(401, REVOKED);
    let (fresh, _) = token_and_id(&app.login("maria@example.com", PASSWORD).await);
    app.get("/api/auth/profile", Some(&fresh))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}
