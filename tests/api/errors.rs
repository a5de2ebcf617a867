//! API.md §1: every failure, including the framework's own, is the JSON envelope.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, both_backends, spawn_app, spawn_app_with};

both_backends!(
    unknown_route_is_a_json_404,
    wrong_method_is_a_json_405,
    malformed_json_is_a_json_400,
    json_of_the_wrong_shape_is_a_json_400,
    wrong_content_type_is_a_json_415,
    oversized_body_is_a_json_413,
    non_numeric_or_non_positive_ids_are_a_json_400,
    internal_errors_never_leak_details,
);

async fn unknown_route_is_a_json_404(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/nope", "/api/nope", "/api/users/1/extra"] {
        let reply = app.get(path, None).await;
        reply.assert_error(404, "Ruta no encontrada");
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
}

async fn wrong_method_is_a_json_405(backend: Backend) {
    let app = spawn_app(backend).await;
    app.call(Method::DELETE, "/api/auth/login", None, None)
        .await
        .assert_error(405, "Método no permitido");
    app.call(Method::PATCH, "/health", None, None)
        .await
        .assert_error(405, "Método no permitido");
}

async fn malformed_json_is_a_json_400(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in ["{\"email\": ", "not json", ""] {
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/auth/login"))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        reply.assert_error(400, "JSON inválido en el cuerpo de la petición");
    }
}

async fn json_of_the_wrong_shape_is_a_json_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": 5, "password": ["x"]}),
        )
        .await;
    reply.assert_error(400, "JSON inválido en el cuerpo de la petición");
    assert!(reply.body["error"].is_string());
}

async fn wrong_content_type_is_a_json_415(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("content-type", "text/plain")
                .body("{\"email\":\"a@b.co\",\"password\":\"x\"}"),
        )
        .await;
    reply.assert_error(415, "El tipo de contenido debe ser application/json");
    let without = app
        .send(app.client.post(app.url("/api/auth/register")).body("{}"))
        .await;
    without.assert_error(415, "El tipo de contenido debe ser application/json");
}

async fn oversized_body_is_a_json_413(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 1 MB files: the body limit is the base64 of 1.5 MB plus 1 MiB (3 MiB).
    let app = spawn_app_with(backend, |c| c.max_upload_mb = 1).await;
    let body = format!(
        "{{\"email\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(5 * 1024 * 1024)
    );
    // Raw TCP: the server may answer and close before the whole body is sent,
    // so the body is written on one half while the answer is read on the other.
    let address = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(body.as_bytes()).await;
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read.read_to_end(&mut answer),
    )
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|_| panic!("JSON body in {text}"));
    assert_eq!(
        json,
        json!({"success": false, "message": "El cuerpo de la petición es demasiado grande"})
    );
    assert_eq!(app.db.scalar("SELECT COUNT(*) FROM users").await, 0);
}

async fn non_numeric_or_non_positive_ids_are_a_json_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, _) = app.admin().await;
    for id in ["abc", "0", "-1", "1.5", "99999999999999999999999"] {
        app.get(&format!("/api/users/{id}"), Some(&admin))
            .await
            .assert_error(400, "ID inválido");
    }
}

async fn internal_errors_never_leak_details(backend: Backend) {
    let app = spawn_app(backend).await;
    app.admin().await;
    app.db.execute("DROP TABLE audit_events").await;
    // Login needs only `users`; changing a password writes an audit event and so fails.
    let login = app
        .login("admin@example.com", crate::helpers::PASSWORD)
        .await;
    let (token, _) = crate::helpers::token_and_id(&login);
    let reply = app
        .put(
            "/api/auth/change-password",
            Some(&token),
            json!({"currentPassword": crate::helpers::PASSWORD, "newPassword": "another password"}),
        )
        .await;
    reply.assert_error(500, "Error interno del servidor");
    assert_eq!(
        reply.body.as_object().unwrap().len(),
        2,
        "only success and message: {}",
        reply.text
    );
    assert!(
        !reply.text.to_lowercase().contains("audit"),
        "{}",
        reply.text
    );
    // The failed request changed nothing: the old password still works.
    app.login("admin@example.com", crate::helpers::PASSWORD)
        .await
        .assert_ok(200, "Login exitoso");
}
