//! `/api/groups`: campaigns and the spreadsheet import that fills them (API.md §4).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    Envelope, PageParams, PageQuery, Pagination, clean, created, ok, paginated, validate_variables,
};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody, MSG_FORBIDDEN};
use crate::extract::{ApiJson, ApiQuery, AuthUser, PathIds};
use crate::import::{self, ImportOptions, ImportReport};
use crate::phone;
use crate::store::{
    ClientFeed, ClientFeedReceiver, ClientQuery, Group, GroupPatch, GroupQuery, NewClient,
    NewGroup, Scope, StoreError, User, no_clients,
};

pub const MSG_GROUP_NOT_FOUND: &str = "Grupo no encontrado";
const MSG_NAME_REQUIRED: &str = "El nombre del grupo es requerido";
const MSG_NAME_TOO_LONG: &str = "El nombre del grupo no puede superar 120 caracteres";
const MSG_NAME_TAKEN: &str = "Ya existe un grupo con este nombre";
const MSG_BAD_COLOR: &str = "Color inválido. Usa el formato #RRGGBB";
const MSG_BAD_TIMEZONE: &str = "Zona horaria inválida";
const MSG_BAD_LANGUAGE: &str = "Idioma inválido";
const MSG_BAD_OWNER: &str = "clientId inválido";
const MSG_FILE_ON_UPDATE: &str = "Para cargar un archivo usa POST /api/groups/:id/clients/import";
const MSG_RENUMBER: &str =
    "El cambio de prefijo dejaría números inválidos o duplicados en el grupo";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/groups", get(list_groups).post(create_group))
        .route(
            "/api/groups/{id}",
            get(get_group).put(update_group).delete(delete_group),
        )
}

const MSG_TOO_MANY_UPLOADS: &str =
    "Hay demasiadas cargas de archivos en curso. Inténtalo de nuevo en unos segundos.";

/// Lets at most `AppState::upload_slots` uploads (`POST /api/groups`, `POST
/// /api/groups/:id/clients/import`) in at once, before their bodies are read:
/// one that finds none free is a 503 with `Retry-After`, not another body of
/// up to ~51 MB held while it waits for an import slot.
pub async fn limit_uploads(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str());
    let upload = request.method() == axum::http::Method::POST
        && matches!(
            route,
            Some("/api/groups" | "/api/groups/{id}/clients/import")
        );
    if !upload {
        return next.run(request).await;
    }
    let Ok(_slot) = state.upload_slots.clone().try_acquire_owned() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, MSG_TOO_MANY_UPLOADS)
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            )
            .into_response();
    };
    next.run(request).await
}

/// Distinguishes a field that is absent (`None`) from one set to `null` (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateGroupRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub prompt: Option<String>,
    /// `#RRGGBB` (default `#3B82F6`).
    pub color: Option<String>,
    pub favorite: Option<bool>,
    /// Default `es`.
    pub idioma: Option<String>,
    /// Default dynamic variables (an object).
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
    /// `+` and 1–4 digits (default `+57`).
    pub prefix: Option<String>,
    /// ISO 3166 region (default `CO`).
    pub selected_country_code: Option<String>,
    pub first_message: Option<String>,
    pub phone_number_id: Option<String>,
    pub agent_id: Option<String>,
    /// IANA time zone (default `DEFAULT_TIMEZONE`).
    pub timezone: Option<String>,
    /// Owner: a `user` may only name itself; an admin any existing user.
    #[schema(value_type = Option<i64>)]
    pub client_id: Option<Value>,
    /// The spreadsheet, base64 (standard or URL-safe, `data:` prefix allowed).
    pub base64: Option<String>,
    #[serde(rename = "document_name")]
    pub document_name: Option<String>,
}

/// What the import did, beside the group (API.md §4).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileProcessing {
    pub processed: bool,
    pub total_rows: usize,
    pub total_clients_found: usize,
    pub clients_created: u64,
    pub duplicates: usize,
    pub invalid_rows: usize,
    /// The first 200 row errors.
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<import::RowError>,
}

impl FileProcessing {
    /// `found` is how many clients the file gave (`ImportReport::streamed`);
    /// `inserted` may be below it when a number reached the group between
    /// parsing and inserting: those count as duplicates.
    pub fn new(report: ImportReport, found: usize, inserted: u64) -> Self {
        let raced = found.saturating_sub(inserted as usize);
        FileProcessing {
            processed: true,
            total_rows: report.total_rows,
            total_clients_found: found + report.duplicates,
            clients_created: inserted,
            duplicates: report.duplicates + raced,
            invalid_rows: report.invalid_rows,
            errors: report.errors.into_iter().take(200).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupWithImport {
    #[serde(flatten)]
    pub group: Group,
    pub file_processing: Option<FileProcessing>,
}

/// Checks a group name: trimmed, 1..=120 characters.
fn validate_name(name: Option<String>) -> ApiResult<String> {
    let name = clean(name).ok_or_else(|| ApiError::bad_request(MSG_NAME_REQUIRED))?;
    if name.chars().count() > 120 {
        return Err(ApiError::bad_request(MSG_NAME_TOO_LONG));
    }
    Ok(name)
}

fn validate_color(color: &str) -> ApiResult<String> {
    let color = color.trim();
    let hex = color.strip_prefix('#').unwrap_or("");
    if matches!(hex.len(), 3 | 6) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(color.to_owned())
    } else {
        Err(ApiError::bad_request(MSG_BAD_COLOR))
    }
}

fn validate_timezone(tz: &str) -> ApiResult<String> {
    let tz = tz.trim();
    tz.parse::<chrono_tz::Tz>()
        .map(|_| tz.to_owned())
        .map_err(|_| ApiError::bad_request(MSG_BAD_TIMEZONE))
}

fn validate_language(idioma: &str) -> ApiResult<String> {
    let idioma = idioma.trim();
    if (2..=10).contains(&idioma.len())
        && idioma
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(idioma.to_owned())
    } else {
        Err(ApiError::bad_request(MSG_BAD_LANGUAGE))
    }
}

fn region_error() -> ApiError {
    ApiError::bad_request(phone::MSG_BAD_PREFIX)
}

/// An `agentId` must name an agent ElevenLabs knows (API.md §4): nothing is
/// written otherwise.
async fn verify_agent(state: &AppState, agent_id: Option<&str>) -> ApiResult<()> {
    let Some(agent_id) = agent_id else {
        return Ok(());
    };
    match super::agents::fetch_agent(state, agent_id).await {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.status(), Some(400 | 404 | 422)) => Err(ApiError::bad_request(
            "El agente especificado no existe o no es accesible",
        )
        .with_error(err.to_string())),
        Err(err) => Err(super::agents::upstream_error(
            "Error obteniendo agentes de ElevenLabs",
            &err,
        )),
    }
}

/// Decides who owns a new group from the optional `clientId`.
async fn resolve_owner(
    state: &AppState,
    caller: &User,
    client_id: Option<Value>,
) -> ApiResult<i64> {
    let id = match client_id {
        None | Some(Value::Null) => return Ok(caller.id),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => crate::extract::parse_id(s.trim()),
        Some(_) => None,
    }
    .filter(|id| *id > 0)
    .ok_or_else(|| ApiError::bad_request(MSG_BAD_OWNER))?;
    if id == caller.id {
        return Ok(id);
    }
    if !caller.is_admin() {
        return Err(ApiError::forbidden(MSG_FORBIDDEN));
    }
    match state.store.get_user(id).await? {
        Some(user) if user.is_active => Ok(id),
        _ => Err(ApiError::not_found("Usuario no encontrado")),
    }
}

/// Decodes and parses an uploaded spreadsheet on a blocking thread, handing
/// its clients to the returned feed in chunks as they are read (`End` only
/// once the whole file is good), so that the store can write them meanwhile.
/// The handle gives the file's verdict and report; a refused file closes the
/// feed without `End`, and the store keeps nothing.
pub(crate) fn parse_upload(
    state: &AppState,
    base64: String,
    document_name: Option<String>,
    region: &str,
    prefix: &str,
    existing: Vec<String>,
) -> (
    ClientFeedReceiver,
    tokio::task::JoinHandle<Result<ImportReport, import::ImportError>>,
) {
    let options = ImportOptions {
        region: region.to_owned(),
        prefix: prefix.to_owned(),
        max_rows: state.config.max_clients_per_group as usize,
        max_upload_mb: state.config.max_upload_mb,
        max_cells: state.config.max_import_cells as usize,
    };
    let name = document_name.unwrap_or_default();
    let (sender, feed) = tokio::sync::mpsc::channel(2);
    let slots = state.import_slots.clone();
    let parsing = tokio::spawn(async move {
        // One of the imports read at once: the file is decoded only once a
        // slot is free, and the slot is held until its verdict.
        let slot = slots.acquire_owned().await.map_err(|_| {
            import::ImportError::Unreadable("el servidor se está deteniendo".into())
        })?;
        let read = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read_upload(&base64, &name, &options, existing, sender)
        });
        read.await
            .unwrap_or_else(|_| Err(import::ImportError::Unreadable(import::PANIC_DETAIL.into())))
    });
    (feed, parsing)
}

/// Decodes and reads one upload (on a blocking thread), feeding its clients
/// to the store as they come.
fn read_upload(
    base64: &str,
    name: &str,
    options: &ImportOptions,
    existing: Vec<String>,
    sender: tokio::sync::mpsc::Sender<ClientFeed>,
) -> Result<ImportReport, import::ImportError> {
    {
        let bytes = import::decode_base64(base64)?;
        import::check_size(bytes.len(), options)?;
        let existing = existing.into_iter().collect();
        // A store that stopped listening (it failed) still lets the file be
        // read to its verdict, which answers first.
        let mut sink = |chunk: Vec<import::ParsedClient>| {
            let _ = sender.blocking_send(ClientFeed::Chunk(new_clients(chunk)));
        };
        let report = import::parse_clients_streamed(&bytes, name, options, &existing, &mut sink)?;
        let _ = sender.blocking_send(ClientFeed::End);
        Ok(report)
    }
}

/// The file's verdict: its report, or the contract's answer for a refused file.
pub(crate) async fn file_verdict(
    parsing: tokio::task::JoinHandle<Result<ImportReport, import::ImportError>>,
) -> ApiResult<ImportReport> {
    parsing
        .await
        .map_err(ApiError::internal)?
        .map_err(import_error)
}

pub(crate) fn import_error(err: import::ImportError) -> ApiError {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut api = ApiError::new(status, err.message());
    if let Some(detail) = err.detail() {
        api = api.with_error(detail);
    }
    api
}

/// Parsed clients as the store takes them (moved, not copied).
fn new_clients(parsed: Vec<import::ParsedClient>) -> Vec<NewClient> {
    parsed
        .into_iter()
        .map(|c| NewClient {
            external_id: c.external_id,
            name: c.name,
            phone: c.phone,
            phone_e164: c.phone_e164,
            email: c.email,
            address: c.address,
            category: c.category,
            variables: c.variables,
        })
        .collect()
}

/// Maps the store's refusals for a group write to the contract's answers.
pub(crate) fn group_write_error(err: StoreError, max_clients: u64) -> ApiError {
    match err {
        StoreError::UniqueViolation => ApiError::conflict(MSG_NAME_TAKEN),
        StoreError::TooManyClients { total } => ApiError::bad_request(format!(
            "El archivo tiene demasiadas filas ({total}). El máximo permitido es {max_clients} filas."
        )),
        StoreError::Renumbering {
            invalid,
            duplicated,
        } => ApiError::bad_request(MSG_RENUMBER).with_error(format!(
            "{} número(s) inválido(s) y {} duplicado(s) con el nuevo prefijo; clientes: {:?}",
            invalid.len(),
            duplicated.len(),
            invalid
                .iter()
                .chain(duplicated.iter())
                .take(50)
                .collect::<Vec<_>>()
        )),
        other => other.into(),
    }
}

#[utoipa::path(post, path = "/api/groups", tag = "groups", security(("bearer" = [])), request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "Grupo creado exitosamente", body = Envelope<GroupWithImport>),
        (status = 400, description = "Validación o archivo ilegible", body = ErrorBody),
        (status = 409, description = "Ya existe un grupo con este nombre", body = ErrorBody),
        (status = 413, description = "El archivo es demasiado grande", body = ErrorBody),
    ))]
pub async fn create_group(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ApiJson(body): ApiJson<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<Envelope<GroupWithImport>>)> {
    let name = validate_name(body.name)?;
    let color = body.color.as_deref().map(validate_color).transpose()?;
    let variables = body
        .variables
        .map(validate_variables)
        .transpose()?
        .unwrap_or_default();
    let idioma = body.idioma.as_deref().map(validate_language).transpose()?;
    let timezone = body
        .timezone
        .as_deref()
        .map(validate_timezone)
        .transpose()?;
    let (prefix, region) = phone::resolve_region(
        clean(body.prefix).as_deref(),
        clean(body.selected_country_code).as_deref(),
    )
    .ok_or_else(region_error)?;
    let created_by = resolve_owner(&state, &caller, body.client_id).await?;
    let agent_id = clean(body.agent_id);
    verify_agent(&state, agent_id.as_deref()).await?;

    let started = std::time::Instant::now();
    let timezone = match timezone {
        Some(tz) => tz,
        None => validate_timezone(&state.config.default_timezone)?,
    };
    // No early return from here until the store has the feed.
    let (feed, parsing) = match clean(body.base64) {
        Some(base64) => {
            let (feed, parsing) = parse_upload(
                &state,
                base64,
                body.document_name,
                &region,
                &prefix,
                Vec::new(),
            );
            (feed, Some(parsing))
        }
        None => (no_clients(), None),
    };
    let new = NewGroup {
        name,
        description: clean(body.description),
        prompt: clean(body.prompt),
        color: color.unwrap_or_else(|| "#3B82F6".into()),
        favorite: body.favorite.unwrap_or(false),
        idioma: idioma.unwrap_or_else(|| "es".into()),
        variables,
        prefix,
        selected_country_code: region,
        first_message: clean(body.first_message),
        phone_number_id: clean(body.phone_number_id),
        agent_id,
        timezone,
        created_by,
    };
    let max = state.config.max_clients_per_group;
    // The file is stored while it is read; its verdict answers first (a bad
    // file is a 400 even when the name is also taken).
    let stored = state.store.create_group(new, feed, max as i64).await;
    let report = match parsing {
        Some(parsing) => Some(file_verdict(parsing).await?),
        None => None,
    };
    let (group, inserted) = stored.map_err(|e| group_write_error(e, max))?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "create group: file read and stored"
    );
    let file_processing = report.map(|r| {
        let found = r.streamed;
        FileProcessing::new(r, found, inserted)
    });
    Ok(created(
        "Grupo creado exitosamente",
        GroupWithImport {
            group,
            file_processing,
        },
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct GroupListQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
    /// Matches name or description.
    pub search: Option<String>,
    pub favorite: Option<bool>,
    /// Admins only: the owner's user id.
    pub created_by: Option<i64>,
}

#[utoipa::path(get, path = "/api/groups", tag = "groups", security(("bearer" = [])), params(GroupListQuery),
    responses((status = 200, description = "Grupos obtenidos exitosamente", body = Envelope<Vec<Group>>)))]
pub async fn list_groups(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ApiQuery(q): ApiQuery<GroupListQuery>,
) -> ApiResult<Json<Envelope<Vec<Group>>>> {
    let page = PageParams::try_from(PageQuery {
        page: q.page,
        limit: q.limit,
    })?;
    let query = GroupQuery {
        page: page.page,
        limit: page.limit,
        search: clean(q.search),
        favorite: q.favorite,
        created_by: q.created_by.filter(|_| caller.is_admin()),
    };
    let (groups, total) = state.store.list_groups(Scope::of(&caller), &query).await?;
    Ok(paginated(
        "Grupos obtenidos exitosamente",
        groups,
        Pagination::new(page, total),
    ))
}

/// The group if the caller may see it, else 404 `Grupo no encontrado`.
pub(crate) async fn visible_group(state: &AppState, caller: &User, id: i64) -> ApiResult<Group> {
    state
        .store
        .get_group(id, Scope::of(caller))
        .await?
        .ok_or_else(|| ApiError::not_found(MSG_GROUP_NOT_FOUND))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupGetQuery {
    pub include_clients: Option<bool>,
    pub client_page: Option<i64>,
    pub client_limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), GroupGetQuery),
    responses(
        (status = 200, description = "Grupo obtenido exitosamente", body = Envelope<Group>),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn get_group(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(q): ApiQuery<GroupGetQuery>,
) -> ApiResult<Json<Envelope<Value>>> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let mut data = serde_json::to_value(&group).map_err(ApiError::internal)?;
    if q.include_clients == Some(true) {
        let page = PageParams::try_from(PageQuery {
            page: q.client_page,
            limit: q.client_limit,
        })?;
        let query = ClientQuery {
            page: page.page,
            limit: page.limit,
            ..ClientQuery::default()
        };
        let (clients, total) = state.store.list_clients(group.id, &query).await?;
        if let Value::Object(map) = &mut data {
            map.insert("clients".into(), json!(clients));
            map.insert(
                "clientsPagination".into(),
                json!(Pagination::new(page, total)),
            );
        }
    }
    Ok(ok("Grupo obtenido exitosamente", data))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateGroupRequest {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub prompt: Option<Option<String>>,
    pub color: Option<String>,
    pub favorite: Option<bool>,
    pub idioma: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
    pub prefix: Option<String>,
    pub selected_country_code: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub first_message: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub phone_number_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub agent_id: Option<Option<String>>,
    pub timezone: Option<String>,
    /// Not accepted here (use the import endpoint).
    pub base64: Option<String>,
}

fn clean_nullable(value: Option<Option<String>>) -> Option<Option<String>> {
    value.map(clean)
}

#[utoipa::path(put, path = "/api/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")), request_body = UpdateGroupRequest,
    responses(
        (status = 200, description = "Grupo actualizado exitosamente", body = Envelope<Group>),
        (status = 400, description = "Validación", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
        (status = 409, description = "Ya existe un grupo con este nombre", body = ErrorBody),
    ))]
pub async fn update_group(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiJson(body): ApiJson<UpdateGroupRequest>,
) -> ApiResult<Json<Envelope<Group>>> {
    let current = visible_group(&state, &caller, ids.first()).await?;
    if body.base64.is_some() {
        return Err(ApiError::bad_request(MSG_FILE_ON_UPDATE));
    }
    let new_prefix = clean(body.prefix);
    let new_region = clean(body.selected_country_code);
    let region_change = match (new_prefix.as_deref(), new_region.as_deref()) {
        (None, None) => None,
        (prefix, region) => {
            let (prefix, region) = phone::resolve_region_update(
                prefix,
                region,
                &current.prefix,
                &current.selected_country_code,
            )
            .ok_or_else(region_error)?;
            (prefix != current.prefix || region != current.selected_country_code)
                .then_some((prefix, region))
        }
    };
    let patch = GroupPatch {
        name: body.name.map(|n| validate_name(Some(n))).transpose()?,
        description: clean_nullable(body.description),
        prompt: clean_nullable(body.prompt),
        color: body.color.as_deref().map(validate_color).transpose()?,
        favorite: body.favorite,
        idioma: body.idioma.as_deref().map(validate_language).transpose()?,
        variables: body.variables.map(validate_variables).transpose()?,
        prefix: region_change.as_ref().map(|(p, _)| p.clone()),
        selected_country_code: region_change.as_ref().map(|(_, r)| r.clone()),
        first_message: clean_nullable(body.first_message),
        phone_number_id: clean_nullable(body.phone_number_id),
        agent_id: clean_nullable(body.agent_id),
        timezone: body
            .timezone
            .as_deref()
            .map(validate_timezone)
            .transpose()?,
    };
    if let Some(Some(agent_id)) = &patch.agent_id {
        verify_agent(&state, Some(agent_id)).await?;
    }
    let renumber = region_change
        .map(|(prefix, region)| move |raw: &str| import::normalize_phone(raw, &region, &prefix));
    let group = state
        .store
        .update_group(
            current.id,
            Scope::of(&caller),
            &patch,
            renumber.as_ref().map(|f| f as &crate::store::Renumber),
        )
        .await
        .map_err(|e| group_write_error(e, state.config.max_clients_per_group))?
        .ok_or_else(|| ApiError::not_found(MSG_GROUP_NOT_FOUND))?;
    Ok(ok("Grupo actualizado exitosamente", group))
}

#[utoipa::path(delete, path = "/api/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")),
    responses(
        (status = 200, description = "Grupo eliminado exitosamente"),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn delete_group(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
) -> ApiResult<Json<Envelope<Value>>> {
    let id = ids.first();
    if !state.store.delete_group(id, Scope::of(&caller)).await? {
        return Err(ApiError::not_found(MSG_GROUP_NOT_FOUND));
    }
    Ok(ok("Grupo eliminado exitosamente", json!({"id": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_are_hex_triplets_or_sextets() {
        assert!(validate_color("#3B82F6").is_ok());
        assert!(validate_color("#abc").is_ok());
        for bad in ["3B82F6", "#3B82F", "#GGGGGG", "red"] {
            assert!(validate_color(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            validate_name(Some("  Cobranza  ".into())).ok(),
            Some("Cobranza".into())
        );
        assert_eq!(
            validate_name(Some("   ".into())).unwrap_err().message,
            MSG_NAME_REQUIRED
        );
        assert_eq!(
            validate_name(Some("ñ".repeat(121))).unwrap_err().message,
            MSG_NAME_TOO_LONG
        );
        assert!(validate_name(Some("ñ".repeat(120))).is_ok());
    }

    #[test]
    fn time_zones_must_be_iana_names() {
        assert!(validate_timezone("America/Bogota").is_ok());
        assert!(validate_timezone("Mars/Olympus").is_err());
    }
}
