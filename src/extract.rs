//! Our own extractors, so that every bad input is answered with our envelope
//! (never axum's plain-text rejections), and the authenticated user.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::auth::TokenError;
use crate::error::{
    ApiError, MSG_BAD_ID, MSG_BAD_JSON, MSG_BAD_QUERY, MSG_CONTENT_TYPE, MSG_FORBIDDEN, MSG_NUL,
    MSG_TOO_LARGE,
};
use crate::store::User;

/// A JSON body: 415 without a JSON content type, 413 over the body limit,
/// 400 for anything that does not parse into `T`, and 400 [`MSG_NUL`] for a
/// string holding U+0000 (see [`has_escaped_nul`]).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                MSG_CONTENT_TYPE,
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, MSG_TOO_LARGE)
            } else {
                ApiError::bad_request(MSG_BAD_JSON)
                    .with_error("No se pudo leer el cuerpo de la petición")
            }
        })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(MSG_BAD_JSON).with_error(e.to_string()))?;
        if has_escaped_nul(&bytes) {
            return Err(ApiError::bad_request(MSG_NUL).with_error("en el cuerpo JSON"));
        }
        Ok(ApiJson(value))
    }
}

/// Whether a JSON text that has parsed holds U+0000 in a string (or a key).
///
/// PostgreSQL's `text` and `jsonb` cannot store that character, so it would
/// fail there (a 500) and be kept on SQLite; refusing it here, for every
/// body, gives one answer on both. JSON can only write it as the escape
/// `\u0000` (a raw control character in a string does not parse), and in
/// valid JSON every backslash is inside a string and starts an escape, so
/// looking at each escape in turn is exact: `"\\u0000"` is a backslash and
/// the text `u0000`, not a NUL.
fn has_escaped_nul(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"u0000") {
            return true;
        }
        // Skip the escaped character: a second backslash starts nothing.
        rest = escape.get(1..).unwrap_or_default();
    }
    false
}

fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Query parameters; a value of the wrong type is a 400 in our envelope, and
/// so is a parameter holding U+0000 (`%00`), for the reason given at
/// [`has_escaped_nul`].
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(MSG_BAD_QUERY).with_error(e.body_text()))?;
        if let Some(name) = parts.uri.query().and_then(param_with_nul) {
            return Err(
                ApiError::bad_request(MSG_NUL).with_error(format!("en el parámetro '{name}'"))
            );
        }
        Ok(value)
    }
}

/// The first query parameter (its name as written) whose name or value
/// decodes to a text holding U+0000. A URI cannot carry that byte itself, and
/// form decoding turns `%` and two hex digits into a byte, else keeps the `%`:
/// so a NUL comes only from `%00`, and every `%00` in the text is one (the `%`
/// of `%00` cannot be the digits of an earlier escape, and `%2500` holds no
/// `%00`).
fn param_with_nul(query: &str) -> Option<&str> {
    query
        .split('&')
        .find(|pair| pair.contains("%00"))
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
}

/// The path's ids, in order: each must be a positive integer, else 400 `"ID inválido"`.
pub struct PathIds(pub Vec<i64>);

impl PathIds {
    pub fn first(&self) -> i64 {
        self.0.first().copied().unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request(MSG_BAD_ID))?;
        params
            .iter()
            .map(|(_, value)| parse_id(value).ok_or_else(|| ApiError::bad_request(MSG_BAD_ID)))
            .collect::<Result<Vec<_>, _>>()
            .map(PathIds)
    }
}

/// A positive integer id, written in plain decimal digits.
pub fn parse_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

/// The caller, authenticated by a Bearer token and re-loaded from the database
/// on every request: a deactivated user's token stops working at once, and so
/// does a token issued before the user's last password change or loss of rights
/// (its version is older than the user's).
pub struct AuthUser(pub User);

pub const MSG_TOKEN_REVOKED: &str = "Token revocado. Inicia sesión de nuevo";

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("Token de autenticación requerido"))?;
        let invalid = || ApiError::unauthorized("Token inválido");
        let text = header.to_str().map_err(|_| invalid())?;
        let (scheme, token) = text.trim().split_once(' ').ok_or_else(invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(invalid());
        }
        let verified = state.jwt.verify(token.trim()).map_err(|e| match e {
            TokenError::Expired => ApiError::unauthorized("Token expirado"),
            TokenError::Invalid => invalid(),
        })?;
        match state.store.get_user(verified.user_id).await? {
            Some(user) if !user.is_active => {
                Err(ApiError::unauthorized("Usuario no encontrado o inactivo"))
            }
            Some(user) if user.token_version != verified.version => {
                Err(ApiError::unauthorized(MSG_TOKEN_REVOKED))
            }
            Some(user) => Ok(AuthUser(user)),
            None => Err(ApiError::unauthorized("Usuario no encontrado o inactivo")),
        }
    }
}

/// An authenticated admin; any other role gets 403.
pub struct AdminUser(pub User);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if user.is_admin() {
            Ok(AdminUser(user))
        } else {
            Err(ApiError::forbidden(MSG_FORBIDDEN))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{has_escaped_nul, param_with_nul, parse_id};

    #[test]
    fn a_nul_is_found_in_any_json_string_and_only_there() {
        for with in [
            r#"{"name": "a\u0000b"}"#,
            r#"{"k\u0000": 1}"#,
            r#"["\\\u0000"]"#,
            r#""\u0000""#,
        ] {
            assert!(has_escaped_nul(with.as_bytes()), "{with}");
        }
        for without in [
            r#"{"name": "a\\u0000b"}"#,
            r#"{"name": "\u0001\u0010"}"#,
            r#"{"n": 0}"#,
            r#""\\""#,
            r#""\"u0000""#,
        ] {
            assert!(!has_escaped_nul(without.as_bytes()), "{without}");
        }
    }

    #[test]
    fn a_nul_in_a_query_names_its_parameter() {
        assert_eq!(param_with_nul("page=1&search=a%00b"), Some("search"));
        assert_eq!(param_with_nul("se%00arch=x"), Some("se%00arch"));
        assert_eq!(param_with_nul("search=%%00"), Some("search"));
        assert_eq!(param_with_nul("flag%00"), Some("flag%00"));
        assert_eq!(param_with_nul("search=%2500&x=%0"), None);
    }

    #[test]
    fn ids_must_be_positive_decimal_integers() {
        assert_eq!(parse_id("18"), Some(18));
        for bad in [
            "0",
            "-1",
            "abc",
            "1.5",
            "",
            " 1",
            "+1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
