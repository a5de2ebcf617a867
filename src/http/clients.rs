//! `/api/groups/:id/clients…`: the people a group calls (API.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::auth::validate_email;
use super::groups::{
    FileProcessing, file_verdict, group_write_error, nullable, parse_upload, visible_group,
};
use super::{
    Envelope, PageParams, PageQuery, Pagination, bounded, clean, created, ok, paginated,
    validate_variables,
};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, AuthUser, PathIds};
use crate::import;
use crate::store::{Client, ClientPatch, ClientQuery, Group, NewClient, StoreError};

const MSG_CLIENT_NOT_FOUND: &str = "Cliente no está en el grupo";
const MSG_BAD_PHONE: &str = "Número de teléfono inválido";
const MSG_DUPLICATE: &str = "Cliente ya está en el grupo";
const MSG_NAME_AND_PHONE: &str = "El nombre y el teléfono del cliente son requeridos";
const MSG_BAD_STATUS: &str =
    "Estado de cliente inválido. Usa pending, contacted, completed o cancelled";
const MSG_FILE_REQUIRED: &str = "El archivo (base64 y document_name) es requerido";
const STATUSES: [&str; 4] = ["pending", "contacted", "completed", "cancelled"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/groups/{id}/clients",
            get(list_clients).post(add_client),
        )
        .route("/api/groups/{id}/clients/import", post(import_clients))
        .route(
            "/api/groups/{id}/clients/{clientId}",
            get(get_client).put(update_client).delete(delete_client),
        )
        .route("/api/groups/{id}/uncalled-clients", get(uncalled_clients))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientListQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
    /// Matches name, phone, email or external id.
    pub search: Option<String>,
    /// `pending`, `contacted`, `completed` or `cancelled`.
    pub status: Option<String>,
}

fn validate_status(status: &str) -> ApiResult<String> {
    let status = status.trim().to_ascii_lowercase();
    if STATUSES.contains(&status.as_str()) {
        Ok(status)
    } else {
        Err(ApiError::bad_request(MSG_BAD_STATUS))
    }
}

/// The new text of a nullable field in a patch, if it gets one.
fn new_text(field: &Option<Option<String>>) -> Option<&str> {
    field.as_ref().and_then(|v| v.as_deref())
}

/// A client's text fields within the import's bounds.
fn check_lengths(
    name: Option<&str>,
    phone: Option<&str>,
    email: Option<&str>,
    address: Option<&str>,
    category: Option<&str>,
    external_id: Option<&str>,
) -> ApiResult<()> {
    bounded("name", name, import::MAX_NAME_CHARS)?;
    bounded("phone", phone, import::MAX_PHONE_CHARS)?;
    bounded("email", email, import::MAX_EMAIL_CHARS)?;
    bounded("address", address, import::MAX_ADDRESS_CHARS)?;
    bounded("category", category, import::MAX_CODE_CHARS)?;
    bounded("externalId", external_id, import::MAX_CODE_CHARS)
}

fn client_write_error(err: StoreError) -> ApiError {
    match err {
        StoreError::UniqueViolation => ApiError::conflict(MSG_DUPLICATE),
        other => other.into(),
    }
}

fn normalize(group: &Group, raw: &str) -> ApiResult<String> {
    import::normalize_phone(raw, &group.selected_country_code, &group.prefix)
        .ok_or_else(|| ApiError::bad_request(MSG_BAD_PHONE))
}

#[utoipa::path(get, path = "/api/groups/{id}/clients", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ClientListQuery),
    responses(
        (status = 200, description = "Clientes obtenidos exitosamente", body = Envelope<Vec<Client>>),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn list_clients(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(q): ApiQuery<ClientListQuery>,
) -> ApiResult<Json<Envelope<Vec<Client>>>> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let page = PageParams::try_from(PageQuery {
        page: q.page,
        limit: q.limit,
    })?;
    let query = ClientQuery {
        page: page.page,
        limit: page.limit,
        search: clean(q.search),
        status: clean(q.status)
            .as_deref()
            .map(validate_status)
            .transpose()?,
        uncalled: false,
    };
    let (clients, total) = state.store.list_clients(group.id, &query).await?;
    Ok(paginated(
        "Clientes obtenidos exitosamente",
        clients,
        Pagination::new(page, total),
    ))
}

#[utoipa::path(get, path = "/api/groups/{id}/uncalled-clients", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), PageQuery),
    responses(
        (status = 200, description = "Clientes sin llamar obtenidos exitosamente", body = Envelope<Vec<Client>>),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn uncalled_clients(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<Client>>>> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let page = PageParams::try_from(q)?;
    let query = ClientQuery {
        page: page.page,
        limit: page.limit,
        uncalled: true,
        ..ClientQuery::default()
    };
    let (clients, total) = state.store.list_clients(group.id, &query).await?;
    Ok(paginated(
        "Clientes sin llamar obtenidos exitosamente",
        clients,
        Pagination::new(page, total),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewClientRequest {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
    pub category: Option<String>,
    pub external_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
}

#[utoipa::path(post, path = "/api/groups/{id}/clients", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")), request_body = NewClientRequest,
    responses(
        (status = 201, description = "Cliente agregado al grupo exitosamente", body = Envelope<Client>),
        (status = 400, description = "Número de teléfono inválido", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
        (status = 409, description = "Cliente ya está en el grupo", body = ErrorBody),
    ))]
pub async fn add_client(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiJson(body): ApiJson<NewClientRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<Client>>)> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let (Some(name), Some(phone)) = (clean(body.name), clean(body.phone)) else {
        return Err(ApiError::bad_request(MSG_NAME_AND_PHONE));
    };
    let (external_id, email, address, category) = (
        clean(body.external_id),
        clean(body.email),
        clean(body.address),
        clean(body.category),
    );
    check_lengths(
        Some(&name),
        Some(&phone),
        email.as_deref(),
        address.as_deref(),
        category.as_deref(),
        external_id.as_deref(),
    )?;
    let phone_e164 = normalize(&group, &phone)?;
    let max = state.config.max_clients_per_group;
    if group.clients_count as u64 >= max {
        return Err(ApiError::bad_request(format!(
            "El grupo ya tiene el máximo de clientes permitido ({max})"
        )));
    }
    let new = NewClient {
        external_id,
        name: Some(name),
        phone,
        phone_e164,
        email: email.as_deref().map(validate_email).transpose()?,
        address,
        category,
        variables: body
            .variables
            .map(validate_variables)
            .transpose()?
            .unwrap_or_default(),
    };
    let client = state
        .store
        .add_client(group.id, &new)
        .await
        .map_err(client_write_error)?;
    Ok(created("Cliente agregado al grupo exitosamente", client))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ImportRequest {
    pub base64: Option<String>,
    pub document_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    pub group_id: i64,
    pub clients_count: i64,
    pub file_processing: FileProcessing,
}

#[utoipa::path(post, path = "/api/groups/{id}/clients/import", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")), request_body = ImportRequest,
    responses(
        (status = 201, description = "Clientes importados exitosamente", body = Envelope<ImportResult>),
        (status = 400, description = "Archivo inválido", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
        (status = 413, description = "El archivo es demasiado grande", body = ErrorBody),
    ))]
pub async fn import_clients(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiJson(body): ApiJson<ImportRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<ImportResult>>)> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let Some(base64) = clean(body.base64) else {
        return Err(ApiError::bad_request(MSG_FILE_REQUIRED));
    };
    let existing = state.store.group_numbers(group.id).await?;
    let (feed, parsing) = parse_upload(
        &state,
        base64,
        body.document_name,
        &group.selected_country_code,
        &group.prefix,
        existing,
    );
    let max = state.config.max_clients_per_group;
    // Stored while it is read; the file's verdict answers first.
    let stored = state.store.import_clients(group.id, feed, max as i64).await;
    let report = file_verdict(parsing).await?;
    let inserted = stored.map_err(|e| group_write_error(e, max))?;
    let found = report.streamed;
    let clients_count = group.clients_count + inserted as i64;
    Ok(created(
        "Clientes importados exitosamente",
        ImportResult {
            group_id: group.id,
            clients_count,
            file_processing: FileProcessing::new(report, found, inserted),
        },
    ))
}

async fn client_in_group(state: &AppState, group_id: i64, client_id: i64) -> ApiResult<Client> {
    state
        .store
        .get_client(group_id, client_id)
        .await?
        .ok_or_else(|| ApiError::not_found(MSG_CLIENT_NOT_FOUND))
}

fn ids_pair(ids: &PathIds) -> (i64, i64) {
    (ids.first(), ids.0.get(1).copied().unwrap_or_default())
}

#[utoipa::path(get, path = "/api/groups/{id}/clients/{clientId}", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("clientId" = i64, Path, description = "Client id")),
    responses(
        (status = 200, description = "Cliente obtenido exitosamente", body = Envelope<Client>),
        (status = 404, description = "Grupo no encontrado / Cliente no está en el grupo", body = ErrorBody),
    ))]
pub async fn get_client(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
) -> ApiResult<Json<Envelope<Client>>> {
    let (group_id, client_id) = ids_pair(&ids);
    let group = visible_group(&state, &caller, group_id).await?;
    let client = client_in_group(&state, group.id, client_id).await?;
    Ok(ok("Cliente obtenido exitosamente", client))
}

/// Only these fields can change (an allow-list: unknown keys are ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateClientRequest {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    pub phone: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub address: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub category: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub external_id: Option<Option<String>>,
    pub status: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
}

#[utoipa::path(put, path = "/api/groups/{id}/clients/{clientId}", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("clientId" = i64, Path, description = "Client id")),
    request_body = UpdateClientRequest,
    responses(
        (status = 200, description = "Cliente actualizado exitosamente", body = Envelope<Client>),
        (status = 400, description = "Validación", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado / Cliente no está en el grupo", body = ErrorBody),
        (status = 409, description = "Cliente ya está en el grupo", body = ErrorBody),
    ))]
pub async fn update_client(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiJson(body): ApiJson<UpdateClientRequest>,
) -> ApiResult<Json<Envelope<Client>>> {
    let (group_id, client_id) = ids_pair(&ids);
    let group = visible_group(&state, &caller, group_id).await?;
    let (name, address, category, external_id) = (
        body.name.map(clean),
        body.address.map(clean),
        body.category.map(clean),
        body.external_id.map(clean),
    );
    check_lengths(
        new_text(&name),
        body.phone.as_deref().map(str::trim),
        body.email
            .as_ref()
            .and_then(|e| e.as_deref())
            .map(str::trim),
        new_text(&address),
        new_text(&category),
        new_text(&external_id),
    )?;
    let phone = match clean(body.phone) {
        Some(raw) => {
            let e164 = normalize(&group, &raw)?;
            Some((raw, e164))
        }
        None => None,
    };
    let email = match body.email.map(clean) {
        Some(Some(email)) => Some(Some(validate_email(&email)?)),
        other => other,
    };
    let patch = ClientPatch {
        name,
        phone,
        email,
        address,
        category,
        external_id,
        status: body.status.as_deref().map(validate_status).transpose()?,
        variables: body.variables.map(validate_variables).transpose()?,
    };
    let client = state
        .store
        .update_client(group.id, client_id, &patch)
        .await
        .map_err(client_write_error)?
        .ok_or_else(|| ApiError::not_found(MSG_CLIENT_NOT_FOUND))?;
    Ok(ok("Cliente actualizado exitosamente", client))
}

#[utoipa::path(delete, path = "/api/groups/{id}/clients/{clientId}", tag = "clients", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("clientId" = i64, Path, description = "Client id")),
    responses(
        (status = 200, description = "Cliente eliminado exitosamente"),
        (status = 404, description = "Grupo no encontrado / Cliente no está en el grupo", body = ErrorBody),
    ))]
pub async fn delete_client(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
) -> ApiResult<Json<Envelope<Value>>> {
    let (group_id, client_id) = ids_pair(&ids);
    let group = visible_group(&state, &caller, group_id).await?;
    if !state.store.delete_client(group.id, client_id).await? {
        return Err(ApiError::not_found(MSG_CLIENT_NOT_FOUND));
    }
    Ok(ok(
        "Cliente eliminado exitosamente",
        json!({"id": client_id}),
    ))
}
