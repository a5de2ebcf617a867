//! `/api/auth/*`: registration, login, profile, password change (API.md §2).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{Envelope, clean, created, ok};
use crate::app::AppState;
use crate::auth::{hash_password, verify_password};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthUser};
use crate::store::{AuditEvent, NewUser, RolePolicy, StoreError, User, UserPatch};

pub const MSG_MISSING_FIELDS: &str = "Campos requeridos faltantes";
pub const MSG_BAD_EMAIL: &str = "Formato de email inválido";
pub const MSG_SHORT_PASSWORD: &str = "La contraseña debe tener al menos 8 caracteres";
pub const MSG_LONG_PASSWORD: &str = "La contraseña no puede superar 128 caracteres";
pub const MSG_SHORT_USERNAME: &str = "El username debe tener al menos 3 caracteres";
pub const MSG_BAD_USERNAME: &str =
    "El username solo puede tener hasta 50 letras, números, puntos, guiones o guiones bajos";
pub const MSG_TAKEN: &str = "El email o username ya está registrado";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/profile", get(profile).put(update_profile))
        .route("/api/auth/change-password", put(change_password))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub username: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthData {
    pub user: User,
    pub token: String,
}

/// Checks the fields every new account needs, in the contract's order.
pub fn validate_new_account(
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
) -> ApiResult<(String, String, String)> {
    let (Some(username), Some(email), Some(password)) = (
        clean(username),
        clean(email),
        password.filter(|p| !p.is_empty()),
    ) else {
        return Err(ApiError::bad_request(MSG_MISSING_FIELDS));
    };
    let email = validate_email(&email)?;
    validate_password(&password)?;
    let username = validate_username(&username)?;
    Ok((username, email, password))
}

pub fn validate_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(ApiError::bad_request(MSG_BAD_EMAIL))
    }
}

pub fn validate_password(password: &str) -> ApiResult<()> {
    let chars = password.chars().count();
    if chars < 8 {
        return Err(ApiError::bad_request(MSG_SHORT_PASSWORD));
    }
    if chars > 128 {
        return Err(ApiError::bad_request(MSG_LONG_PASSWORD));
    }
    Ok(())
}

pub fn validate_username(username: &str) -> ApiResult<String> {
    let username = username.trim();
    let chars = username.chars().count();
    if chars < 3 {
        return Err(ApiError::bad_request(MSG_SHORT_USERNAME));
    }
    if chars > 50
        || !username
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(ApiError::bad_request(MSG_BAD_USERNAME));
    }
    Ok(username.to_owned())
}

/// Maps the store's answer for a new or changed account to the contract's errors.
pub(crate) fn account_write_error(err: StoreError) -> ApiError {
    match err {
        StoreError::UniqueViolation => ApiError::conflict(MSG_TAKEN),
        StoreError::RegistrationClosed => {
            ApiError::forbidden("El registro público está deshabilitado")
        }
        other => other.into(),
    }
}

#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Usuario registrado exitosamente", body = Envelope<AuthData>),
        (status = 400, description = "Validación", body = ErrorBody),
        (status = 403, description = "El registro público está deshabilitado", body = ErrorBody),
        (status = 409, description = "El email o username ya está registrado", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<AuthData>>)> {
    let open = state.config.allow_registration;
    // Cheap refusal before any hashing; create_user decides again atomically.
    if !open && state.store.count_users().await? > 0 {
        return Err(account_write_error(StoreError::RegistrationClosed));
    }
    let (username, email, password) =
        validate_new_account(body.username, body.email, body.password)?;
    let new = NewUser {
        username,
        email,
        password_hash: hash_password(password).await?,
        first_name: clean(body.first_name),
        last_name: clean(body.last_name),
    };
    let audit = AuditEvent {
        user_id: None,
        action: "user.registered",
        entity_type: "user",
        entity_id: None,
        details: json!({"open": open}),
    };
    let user = state
        .store
        .create_user(new, RolePolicy::FirstIsAdmin { open }, Some(audit))
        .await
        .map_err(account_write_error)?;
    let token = state.jwt.issue(&user)?;
    Ok(created(
        "Usuario registrado exitosamente",
        AuthData { user, token },
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: Option<String>,
    pub password: Option<String>,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Login exitoso", body = Envelope<AuthData>),
        (status = 400, description = "Email y contraseña son requeridos", body = ErrorBody),
        (status = 401, description = "Credenciales inválidas", body = ErrorBody),
        (status = 403, description = "Cuenta desactivada", body = ErrorBody),
        (status = 429, description = "Demasiados intentos (con Retry-After)", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<Envelope<AuthData>>> {
    let (Some(email), Some(password)) =
        (clean(body.email), body.password.filter(|p| !p.is_empty()))
    else {
        return Err(ApiError::bad_request("Email y contraseña son requeridos"));
    };
    let email = email.to_lowercase();
    let ip = peer.ip().to_string();
    if let Some(wait) = state.login_limiter.retry_after(&ip, &email) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Demasiados intentos. Intenta de nuevo más tarde.",
        )
        .with_header(RETRY_AFTER, HeaderValue::from(wait)));
    }
    let found = state.store.find_credentials(&email).await?;
    let (user, stored_hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let valid = verify_password(password, stored_hash).await?;
    let user = match user {
        Some(user) if valid => user,
        _ => {
            state.login_limiter.record_failure(&ip, &email);
            tracing::info!(reason = "bad_credentials", "login refused");
            return Err(ApiError::unauthorized("Credenciales inválidas"));
        }
    };
    if !user.is_active {
        return Err(ApiError::forbidden("Cuenta desactivada"));
    }
    state.login_limiter.record_success(&email);
    let token = state.jwt.issue(&user)?;
    Ok(ok("Login exitoso", AuthData { user, token }))
}

#[utoipa::path(get, path = "/api/auth/profile", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Perfil obtenido exitosamente", body = Envelope<User>),
        (status = 401, description = "Sin token válido", body = ErrorBody),
    ))]
pub async fn profile(AuthUser(user): AuthUser) -> Json<Envelope<User>> {
    ok("Perfil obtenido exitosamente", user)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
}

#[utoipa::path(put, path = "/api/auth/profile", tag = "auth", security(("bearer" = [])), request_body = ProfileUpdate,
    responses(
        (status = 200, description = "Perfil actualizado exitosamente", body = Envelope<User>),
        (status = 400, description = "Formato de email inválido", body = ErrorBody),
        (status = 409, description = "El email o username ya está registrado", body = ErrorBody),
    ))]
pub async fn update_profile(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<ProfileUpdate>,
) -> ApiResult<Json<Envelope<User>>> {
    let patch = UserPatch {
        email: body.email.as_deref().map(validate_email).transpose()?,
        first_name: body.first_name.map(|v| clean(Some(v))),
        last_name: body.last_name.map(|v| clean(Some(v))),
        ..UserPatch::default()
    };
    let updated = state
        .store
        .update_user(user.id, &patch, None)
        .await
        .map_err(account_write_error)?
        .ok_or_else(|| ApiError::unauthorized("Usuario no encontrado o inactivo"))?;
    Ok(ok("Perfil actualizado exitosamente", updated))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    pub current_password: Option<String>,
    pub new_password: Option<String>,
}

#[utoipa::path(put, path = "/api/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Contraseña actualizada exitosamente: el usuario y un token nuevo (los anteriores quedan revocados)", body = Envelope<AuthData>),
        (status = 400, description = "Campos faltantes, contraseña corta o contraseña actual incorrecta", body = ErrorBody),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<Envelope<AuthData>>> {
    let (Some(current), Some(new)) = (
        body.current_password.filter(|p| !p.is_empty()),
        body.new_password.filter(|p| !p.is_empty()),
    ) else {
        return Err(ApiError::bad_request(MSG_MISSING_FIELDS));
    };
    validate_password(&new)?;
    let stored = state.store.password_hash(user.id).await?;
    if !verify_password(current, stored).await? {
        return Err(ApiError::bad_request("La contraseña actual es incorrecta"));
    }
    let patch = UserPatch {
        password_hash: Some(hash_password(new).await?),
        ..UserPatch::default()
    };
    let audit = AuditEvent {
        user_id: Some(user.id),
        action: "user.password_changed",
        entity_type: "user",
        entity_id: Some(user.id.to_string()),
        details: json!({}),
    };
    // The change revokes every older token, this request's included (the
    // store bumps the version with the hash); the caller gets one of the new
    // version, so only its other sessions have to log in again.
    let user = state
        .store
        .update_user(user.id, &patch, Some(audit))
        .await?
        .ok_or_else(|| ApiError::unauthorized("Usuario no encontrado o inactivo"))?;
    let token = state.jwt.issue(&user)?;
    Ok(ok(
        "Contraseña actualizada exitosamente",
        AuthData { user, token },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            validate_email(" Ana@Example.COM ").ok(),
            Some("ana@example.com".into())
        );
        for bad in [
            "ana", "ana@", "@x.co", "ana@x", "a b@x.co", "a@x..co", "a@@x.co", "a@.x.co",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_are_at_least_three_allowed_characters() {
        assert_eq!(
            validate_username("ana.maría_1").ok(),
            Some("ana.maría_1".into())
        );
        assert_eq!(
            validate_username("ab").unwrap_err().message,
            MSG_SHORT_USERNAME
        );
        assert_eq!(
            validate_username("ana maria").unwrap_err().message,
            MSG_BAD_USERNAME
        );
    }

    #[test]
    fn missing_fields_come_before_format_checks() {
        let err = validate_new_account(Some("ana".into()), Some("bad".into()), None).unwrap_err();
        assert_eq!(err.message, MSG_MISSING_FIELDS);
    }
}
