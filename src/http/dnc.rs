//! `/api/do-not-call`: numbers that are never sent to ElevenLabs (API.md §8).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Envelope, PageParams, PageQuery, Pagination, clean, created, ok, paginated};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AdminUser, ApiJson, ApiQuery, AuthUser};
use crate::store::{DoNotCall, StoreError};

const MSG_BAD_PHONE: &str = "Número de teléfono inválido";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/do-not-call", get(list).post(add))
        .route("/api/do-not-call/{phone}", delete(remove))
}

/// A number in any accepted form → E.164 (national forms read as Colombian,
/// the default region; write `+…` for others).
fn normalize(raw: &str) -> ApiResult<String> {
    crate::import::normalize_phone(
        raw,
        crate::phone::DEFAULT_REGION,
        crate::phone::DEFAULT_PREFIX,
    )
    .ok_or_else(|| ApiError::bad_request(MSG_BAD_PHONE))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DncQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
    pub search: Option<String>,
}

#[utoipa::path(get, path = "/api/do-not-call", tag = "do-not-call", security(("bearer" = [])), params(DncQuery),
    responses((status = 200, description = "Lista de no llamar obtenida exitosamente", body = Envelope<Vec<DoNotCall>>)))]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
    ApiQuery(q): ApiQuery<DncQuery>,
) -> ApiResult<Json<Envelope<Vec<DoNotCall>>>> {
    let page = PageParams::try_from(PageQuery {
        page: q.page,
        limit: q.limit,
    })?;
    let search = clean(q.search);
    let (list, total) = state
        .store
        .list_do_not_call(page.page, page.limit, search.as_deref())
        .await?;
    Ok(paginated(
        "Lista de no llamar obtenida exitosamente",
        list,
        Pagination::new(page, total),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DncRequest {
    pub phone: Option<String>,
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/api/do-not-call", tag = "do-not-call", security(("bearer" = [])), request_body = DncRequest,
    responses(
        (status = 201, description = "Número agregado a la lista de no llamar", body = Envelope<DoNotCall>),
        (status = 400, description = "Número de teléfono inválido", body = ErrorBody),
        (status = 403, description = "Solo administradores", body = ErrorBody),
        (status = 409, description = "El número ya está en la lista de no llamar", body = ErrorBody),
    ))]
pub async fn add(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<DncRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<DoNotCall>>)> {
    let phone =
        clean(body.phone).ok_or_else(|| ApiError::bad_request("El teléfono es requerido"))?;
    let e164 = normalize(&phone)?;
    let reason = clean(body.reason);
    let entry = state
        .store
        .add_do_not_call(&e164, reason.as_deref(), admin.id)
        .await
        .map_err(|e| match e {
            StoreError::UniqueViolation => {
                ApiError::conflict("El número ya está en la lista de no llamar")
            }
            other => other.into(),
        })?;
    Ok(created("Número agregado a la lista de no llamar", entry))
}

#[utoipa::path(delete, path = "/api/do-not-call/{phone}", tag = "do-not-call", security(("bearer" = [])),
    params(("phone" = String, Path, description = "The number, E.164 or as written (URL-encoded)")),
    responses(
        (status = 200, description = "Número eliminado de la lista de no llamar"),
        (status = 404, description = "El número no está en la lista de no llamar", body = ErrorBody),
    ))]
pub async fn remove(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Envelope<Value>>> {
    let Ok(Path(phone)) = path else {
        return Err(ApiError::bad_request(MSG_BAD_PHONE));
    };
    let e164 = normalize(&phone)?;
    if !state.store.remove_do_not_call(&e164).await? {
        return Err(ApiError::not_found(
            "El número no está en la lista de no llamar",
        ));
    }
    Ok(ok(
        "Número eliminado de la lista de no llamar",
        json!({"phone": e164}),
    ))
}
