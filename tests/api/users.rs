//! API.md §2: user management by admins.

use serde_json::json;

use crate::helpers::{Backend, PASSWORD, both_backends, spawn_app};

both_backends!(
    only_admins_manage_users,
    admin_creates_users_with_a_role,
    create_user_validates_input_and_conflicts,
    users_are_listed_with_true_totals_and_search,
    unknown_user_is_not_found,
    admin_updates_and_resets_a_password,
    admin_cannot_lock_itself_out,
    user_management_is_audited,
);

async fn only_admins_manage_users(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, admin_id) = app.admin().await;
    let (token, _) = app.user(&admin, "maria").await;
    let forbidden = "No tienes permiso para realizar esta acción";
    app.get("/api/users", Some(&token))
        .await
        .assert_error(403, forbidden);
    app.get(&format!("/api/users/{admin_id}"), Some(&token))
        .await
        .assert_error(403, forbidden);
    app.post(
        "/api/users",
        Some(&token),
        json!({"username": "x1x", "email": "x@example.com", "password": PASSWORD}),
    )
    .await
    .assert_error(403, forbidden);
    app.put(
        &format!("/api/users/{admin_id}"),
        Some(&token),
        json!({"isActive": false}),
    )
    .await
    .assert_error(403, forbidden);
    app.delete(&format!("/api/users/{admin_id}"), Some(&token))
        .await
        .assert_error(403, forbidden);
    assert_eq!(
        app.db
            .scalar("SELECT COUNT(*) FROM users WHERE is_active = TRUE")
            .await,
        2
    );
}

async fn admin_creates_users_with_a_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let reply = app
        .post(
            "/api/users",
            Some(&admin),
            json!({"username": "jefe", "email": "jefe@example.com", "password": PASSWORD, "role": "admin",
                   "firstName": "José", "lastName": "Muñoz"}),
        )
        .await;
    reply.assert_ok(201, "Usuario creado exitosamente");
    assert_eq!(reply.body["data"]["role"], "admin");
    assert_eq!(reply.body["data"]["firstName"], "José");
    let default_role = app
        .post(
            "/api/users",
            Some(&admin),
            json!({"username": "ana", "email": "ana@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(default_role.body["data"]["role"], "user");
    app.login("jefe@example.com", PASSWORD)
        .await
        .assert_ok(200, "Login exitoso");
}

async fn create_user_validates_input_and_conflicts(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    app.post("/api/users", Some(&admin), json!({"username": "ana", "email": "ana@example.com", "password": PASSWORD, "role": "root"}))
        .await
        .assert_error(400, "Rol inválido. Usa admin o user");
    app.post("/api/users", Some(&admin), json!({"username": "ana"}))
        .await
        .assert_error(400, "Campos requeridos faltantes");
    app.post(
        "/api/users",
        Some(&admin),
        json!({"username": "admin", "email": "new@example.com", "password": PASSWORD}),
    )
    .await
    .assert_error(409, "El email o username ya está registrado");
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 1);
}

async fn users_are_listed_with_true_totals_and_search(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    for i in 0..4 {
        app.post("/api/users", Some(&admin), json!({"username": format!("op_{i}"), "email": format!("op{i}@example.com"), "password": PASSWORD}))
            .await
            .assert_ok(201, "Usuario creado exitosamente");
    }
    let page = app.get("/api/users?page=2&limit=2", Some(&admin)).await;
    page.assert_ok(200, "Usuarios obtenidos exitosamente");
    assert_eq!(page.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        page.body["pagination"],
        json!({"page": 2, "limit": 2, "total": 5, "totalPages": 3, "hasNextPage": true, "hasPrevPage": true})
    );
    let found = app.get("/api/users?search=OP_", Some(&admin)).await;
    assert_eq!(
        found.body["pagination"]["total"], 4,
        "an underscore matches literally: {}",
        found.text
    );
    let admins = app.get("/api/users?role=admin", Some(&admin)).await;
    assert_eq!(admins.body["pagination"]["total"], 1);
    app.get("/api/users?limit=abc", Some(&admin))
        .await
        .assert_error(400, "Parámetros de consulta inválidos");
}

async fn unknown_user_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    app.get("/api/users/999", Some(&admin))
        .await
        .assert_error(404, "Usuario no encontrado");
    app.put("/api/users/999", Some(&admin), json!({"firstName": "x"}))
        .await
        .assert_error(404, "Usuario no encontrado");
    app.delete("/api/users/999", Some(&admin))
        .await
        .assert_error(404, "Usuario no encontrado");
}

async fn admin_updates_and_resets_a_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    let (_, id) = app.user(&admin, "maria").await;
    let reply = app
        .put(
            &format!("/api/users/{id}"),
            Some(&admin),
            json!({"role": "admin", "password": "reset password 1", "lastName": "Gómez"}),
        )
        .await;
    reply.assert_ok(200, "Usuario actualizado exitosamente");
    assert_eq!(reply.body["data"]["role"], "admin");
    assert_eq!(reply.body["data"]["lastName"], "Gómez");
    app.login("maria@example.com", PASSWORD)
        .await
        .assert_error(401, "Credenciales inválidas");
    app.login("maria@example.com", "reset password 1")
        .await
        .assert_ok(200, "Login exitoso");
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"password": "short"}),
    )
    .await
    .assert_error(400, "La contraseña debe tener al menos 8 caracteres");
    let fetched = app.get(&format!("/api/users/{id}"), Some(&admin)).await;
    fetched.assert_ok(200, "Usuario obtenido exitosamente");
    assert_eq!(fetched.body["data"]["role"], "admin");
}

async fn admin_cannot_lock_itself_out(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, id) = app.admin().await;
    let message = "No puedes desactivar tu propia cuenta ni quitarte el rol de administrador";
    app.delete(&format!("/api/users/{id}"), Some(&admin))
        .await
        .assert_error(400, message);
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"isActive": false}),
    )
    .await
    .assert_error(400, message);
    app.put(
        &format!("/api/users/{id}"),
        Some(&admin),
        json!({"role": "user"}),
    )
    .await
    .assert_error(400, message);
    app.get("/api/auth/profile", Some(&admin))
        .await
        .assert_ok(200, "Perfil obtenido exitosamente");
}

async fn user_management_is_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, admin_id) = app.admin().await;
    let (_, id) = app.user(&admin, "maria").await;
    app.delete(&format!("/api/users/{id}"), Some(&admin))
        .await
        .assert_ok(200, "Usuario desactivado exitosamente");
    let trail = app
        .store()
        .list_audit("user", &id.to_string())
        .await
        .unwrap();
    let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.created", "user.deactivated"]);
    assert!(trail.iter().all(|e| e.user_id == Some(admin_id)));
}
