//! `/api/users`: user management, admins only (API.md §2).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{
    account_write_error, validate_email, validate_new_account, validate_password, validate_username,
};
use super::{Envelope, PageParams, PageQuery, Pagination, clean, created, ok, paginated};
use crate::app::AppState;
use crate::auth::hash_password;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AdminUser, ApiJson, ApiQuery, PathIds};
use crate::store::{AuditEvent, NewUser, Role, RolePolicy, User, UserPatch, UserQuery};

const MSG_USER_NOT_FOUND: &str = "Usuario no encontrado";
const MSG_BAD_ROLE: &str = "Rol inválido. Usa admin o user";
const MSG_SELF: &str = "No puedes desactivar tu propia cuenta ni quitarte el rol de administrador";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list_users).post(create_user))
        .route(
            "/api/users/{id}",
            get(get_user).put(update_user).delete(deactivate_user),
        )
}

fn parse_role(text: Option<&str>) -> ApiResult<Option<Role>> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => Role::parse(&t.to_lowercase())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(MSG_BAD_ROLE)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
    /// Matches username, email or full name.
    pub search: Option<String>,
    pub role: Option<String>,
    pub is_active: Option<bool>,
}

#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearer" = [])), params(UserListQuery),
    responses(
        (status = 200, description = "Usuarios obtenidos exitosamente", body = Envelope<Vec<User>>),
        (status = 403, description = "No es administrador", body = ErrorBody),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    ApiQuery(q): ApiQuery<UserListQuery>,
) -> ApiResult<Json<Envelope<Vec<User>>>> {
    let page = PageParams::try_from(PageQuery {
        page: q.page,
        limit: q.limit,
    })?;
    let query = UserQuery {
        page: page.page,
        limit: page.limit,
        search: clean(q.search),
        role: parse_role(q.role.as_deref())?,
        is_active: q.is_active,
    };
    let (users, total) = state.store.list_users(&query).await?;
    Ok(paginated(
        "Usuarios obtenidos exitosamente",
        users,
        Pagination::new(page, total),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateUserRequest {
    pub username: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// `admin` or `user` (default).
    pub role: Option<String>,
}

#[utoipa::path(post, path = "/api/users", tag = "users", security(("bearer" = [])), request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Usuario creado exitosamente", body = Envelope<User>),
        (status = 400, description = "Validación", body = ErrorBody),
        (status = 409, description = "El email o username ya está registrado", body = ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<User>>)> {
    let (username, email, password) =
        validate_new_account(body.username, body.email, body.password)?;
    let role = parse_role(body.role.as_deref())?.unwrap_or(Role::User);
    let new = NewUser {
        username,
        email,
        password_hash: hash_password(password).await?,
        first_name: clean(body.first_name),
        last_name: clean(body.last_name),
    };
    let audit = audit_by(admin.id, "user.created", None, json!({"role": role}));
    let user = state
        .store
        .create_user(new, RolePolicy::Fixed(role), Some(audit))
        .await
        .map_err(account_write_error)?;
    Ok(created("Usuario creado exitosamente", user))
}

#[utoipa::path(get, path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "Usuario obtenido exitosamente", body = Envelope<User>),
        (status = 404, description = "Usuario no encontrado", body = ErrorBody),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    ids: PathIds,
) -> ApiResult<Json<Envelope<User>>> {
    let user = state
        .store
        .get_user(ids.first())
        .await?
        .ok_or_else(|| ApiError::not_found(MSG_USER_NOT_FOUND))?;
    Ok(ok("Usuario obtenido exitosamente", user))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    pub username: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub role: Option<String>,
    pub is_active: Option<bool>,
    /// A new password (reset by the admin).
    pub password: Option<String>,
}

#[utoipa::path(put, path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")), request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "Usuario actualizado exitosamente", body = Envelope<User>),
        (status = 400, description = "Validación", body = ErrorBody),
        (status = 404, description = "Usuario no encontrado", body = ErrorBody),
        (status = 409, description = "El email o username ya está registrado", body = ErrorBody),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ids: PathIds,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> ApiResult<Json<Envelope<User>>> {
    let id = ids.first();
    let role = parse_role(body.role.as_deref())?;
    if id == admin.id && (body.is_active == Some(false) || role == Some(Role::User)) {
        return Err(ApiError::bad_request(MSG_SELF));
    }
    let password_hash = match body.password {
        Some(password) => {
            validate_password(&password)?;
            Some(hash_password(password).await?)
        }
        None => None,
    };
    let patch = UserPatch {
        username: body
            .username
            .as_deref()
            .map(validate_username)
            .transpose()?,
        email: body.email.as_deref().map(validate_email).transpose()?,
        first_name: body.first_name.map(|v| clean(Some(v))),
        last_name: body.last_name.map(|v| clean(Some(v))),
        role,
        is_active: body.is_active,
        password_hash,
    };
    let details = json!({
        "role": patch.role,
        "isActive": patch.is_active,
        "passwordReset": patch.password_hash.is_some(),
    });
    let user = state
        .store
        .update_user(
            id,
            &patch,
            Some(audit_by(admin.id, "user.updated", Some(id), details)),
        )
        .await
        .map_err(account_write_error)?
        .ok_or_else(|| ApiError::not_found(MSG_USER_NOT_FOUND))?;
    Ok(ok("Usuario actualizado exitosamente", user))
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "Usuario desactivado exitosamente", body = Envelope<User>),
        (status = 400, description = "No puedes desactivar tu propia cuenta", body = ErrorBody),
        (status = 404, description = "Usuario no encontrado", body = ErrorBody),
    ))]
pub async fn deactivate_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ids: PathIds,
) -> ApiResult<Json<Envelope<User>>> {
    let id = ids.first();
    if id == admin.id {
        return Err(ApiError::bad_request(MSG_SELF));
    }
    let patch = UserPatch {
        is_active: Some(false),
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(
            id,
            &patch,
            Some(audit_by(admin.id, "user.deactivated", Some(id), json!({}))),
        )
        .await?
        .ok_or_else(|| ApiError::not_found(MSG_USER_NOT_FOUND))?;
    Ok(ok("Usuario desactivado exitosamente", user))
}

/// An audit event for an admin's action on a user (`None`: the user being created).
fn audit_by(
    actor: i64,
    action: &'static str,
    user_id: Option<i64>,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        user_id: Some(actor),
        action,
        entity_type: "user",
        entity_id: user_id.map(|id| id.to_string()),
        details,
    }
}
