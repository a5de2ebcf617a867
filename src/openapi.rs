//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the
//! Swagger UI that reads it (vendored into the binary: no CDN, no download).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "marcador",
        description = "Campañas de llamadas salientes con agentes de voz de ElevenLabs. Todas las respuestas usan el sobre {success, message, data} o {success: false, message, error?, errorCode?}."
    ),
    paths(
        http::auth::register,
        http::auth::login,
        http::auth::profile,
        http::auth::update_profile,
        http::auth::change_password,
        http::users::list_users,
        http::users::create_user,
        http::users::get_user,
        http::users::update_user,
        http::users::deactivate_user,
        http::groups::create_group,
        http::groups::list_groups,
        http::groups::get_group,
        http::groups::update_group,
        http::groups::delete_group,
        http::clients::list_clients,
        http::clients::add_client,
        http::clients::import_clients,
        http::clients::get_client,
        http::clients::update_client,
        http::clients::delete_client,
        http::clients::uncalled_clients,
        http::agents::list_agents,
        http::agents::get_agent,
        http::agents::list_phone_numbers,
        http::calls::start_calls,
        http::batches::group_batch_status,
        http::batches::one_batch_status,
        http::batches::batch_stream,
        http::batches::cancel_batch,
        http::batches::retry_batch,
        http::batches::alias_status,
        http::batches::alias_cancel,
        http::batches::alias_retry,
        http::history::call_history,
        http::history::call_stats,
        http::history::get_conversation,
        http::dnc::list,
        http::dnc::add,
        http::dnc::remove,
        http::webhooks::receive,
        http::webhooks::receive_alias,
        http::ops::health,
        http::ops::ready,
        http::ops::api_health,
        http::ops::metrics,
    ),
    components(schemas(crate::error::ErrorBody, http::Pagination)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registro, login y perfil"),
        (name = "users", description = "Gestión de usuarios (solo admin)"),
        (name = "groups", description = "Grupos (campañas) e importación de hojas de cálculo"),
        (name = "clients", description = "Clientes de un grupo"),
        (name = "agents", description = "Agentes y números de ElevenLabs"),
        (name = "calls", description = "Iniciar llamadas (batch calls)"),
        (name = "batches", description = "Seguimiento de batches: estado, stream, cancelar, reintentar"),
        (name = "history", description = "Historial, estadísticas y conversaciones de las llamadas"),
        (name = "do-not-call", description = "Lista de números que nunca se llaman"),
        (name = "webhooks", description = "Webhooks de ElevenLabs (firmados con HMAC, sin JWT)"),
        (name = "operations", description = "Salud, disponibilidad y métricas"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `/api/openapi.json` and the Swagger UI at `/docs`.
pub fn docs_router() -> Router {
    SwaggerUi::new("/docs")
        .url("/api/openapi.json", ApiDoc::openapi())
        .into()
}
