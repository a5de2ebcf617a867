//! The one place where failures become HTTP responses: the JSON envelope of
//! API.md §1, `{"success": false, "message", "error"?, "errorCode"?}`.
//! Internal details go to the log, never to the client.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

pub const MSG_INTERNAL: &str = "Error interno del servidor";
pub const MSG_NOT_FOUND_ROUTE: &str = "Ruta no encontrada";
pub const MSG_METHOD: &str = "Método no permitido";
pub const MSG_BAD_JSON: &str = "JSON inválido en el cuerpo de la petición";
pub const MSG_CONTENT_TYPE: &str = "El tipo de contenido debe ser application/json";
pub const MSG_TOO_LARGE: &str = "El cuerpo de la petición es demasiado grande";
pub const MSG_BAD_ID: &str = "ID inválido";
pub const MSG_BAD_QUERY: &str = "Parámetros de consulta inválidos";
pub const MSG_FORBIDDEN: &str = "No tienes permiso para realizar esta acción";
pub const MSG_NUL: &str = "Los textos no pueden contener el carácter nulo (U+0000)";

/// The failure envelope, as documented in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// Spanish, for a person.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// A failure on its way to the client. Boxed: it travels through every `Result`.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorParts>);

#[derive(Debug)]
pub struct ApiErrorParts {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    pub error: Option<String>,
    pub error_code: Option<&'static str>,
    pub data: Option<serde_json::Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl std::ops::Deref for ApiError {
    type Target = ApiErrorParts;
    fn deref(&self) -> &ApiErrorParts {
        &self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError(Box::new(ApiErrorParts {
            status,
            message: message.into(),
            error: None,
            error_code: None,
            data: None,
            headers: Vec::new(),
        }))
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// The body this error is sent with, as JSON text (kept to replay it).
    pub fn body_json(&self) -> String {
        let body = ErrorBody {
            success: false,
            message: self.message.to_string(),
            error: self.error.clone(),
            error_code: self.error_code.map(str::to_owned),
            data: self.data.clone(),
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// A 500 whose cause is logged here, once, and never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, MSG_INTERNAL)
    }

    pub fn with_error(mut self, detail: impl Into<String>) -> Self {
        self.0.error = Some(detail.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.0.error_code = Some(code);
        self
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.0.data = Some(data);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let parts = *self.0;
        let body = ErrorBody {
            success: false,
            message: parts.message.into_owned(),
            error: parts.error,
            error_code: parts.error_code.map(str::to_owned),
            data: parts.data,
        };
        let mut response = (parts.status, Json(body)).into_response();
        for (name, value) in parts.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::internal(err)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::internal(format!("{err:#}"))
    }
}

/// Body of a response to a panic caught by the panic layer.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, MSG_INTERNAL).into_response()
}
