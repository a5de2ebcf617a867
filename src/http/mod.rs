//! HTTP resources: each module owns its `router()`, request/response types and handlers.

pub mod agents;
pub mod auth;
pub mod batches;
pub mod calls;
pub mod clients;
pub mod dnc;
pub mod groups;
pub mod history;
pub mod ops;
pub mod users;
pub mod webhooks;

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// The success envelope of API.md §1.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true`.
    pub success: bool,
    pub message: Cow<'static, str>,
    pub data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
}

pub fn ok<T: Serialize>(message: impl Into<Cow<'static, str>>, data: T) -> Json<Envelope<T>> {
    Json(Envelope {
        success: true,
        message: message.into(),
        data,
        pagination: None,
    })
}

pub fn created<T: Serialize>(
    message: impl Into<Cow<'static, str>>,
    data: T,
) -> (StatusCode, Json<Envelope<T>>) {
    (StatusCode::CREATED, ok(message, data))
}

pub fn paginated<T: Serialize>(
    message: impl Into<Cow<'static, str>>,
    data: T,
    pagination: Pagination,
) -> Json<Envelope<T>> {
    Json(Envelope {
        success: true,
        message: message.into(),
        data,
        pagination: Some(pagination),
    })
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: i64,
    pub limit: i64,
    pub total: i64,
    pub total_pages: i64,
    pub has_next_page: bool,
    pub has_prev_page: bool,
}

impl Pagination {
    pub fn new(page: PageParams, total: i64) -> Self {
        let total_pages = if total == 0 {
            0
        } else {
            (total + page.limit - 1) / page.limit
        };
        Pagination {
            page: page.page,
            limit: page.limit,
            total,
            total_pages,
            has_next_page: page.page < total_pages,
            has_prev_page: page.page > 1,
        }
    }
}

/// `?page=1&limit=20`: page from 1, limit clamped to 1..=200, and the page's
/// first row at most [`MAX_OFFSET`] rows in.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub struct PageParams {
    pub page: i64,
    pub limit: i64,
}

/// Rows a page may skip, `(page - 1) × limit` (API.md §1). Past it a page is
/// refused rather than read: the database would step over every skipped row
/// (reading that deep is an export's job: the history's CSV reads every
/// call), and an unbounded `page` overflowed the offset into a negative
/// number (PostgreSQL: a 500) or wrapped it round to the first page (SQLite).
pub const MAX_OFFSET: i64 = 10_000_000;

pub const MSG_BAD_PAGE: &str = "Parámetro page inválido";

impl TryFrom<PageQuery> for PageParams {
    type Error = ApiError;

    /// 400 [`MSG_BAD_PAGE`] when the page starts past [`MAX_OFFSET`].
    fn try_from(q: PageQuery) -> Result<Self, ApiError> {
        let page = q.page.unwrap_or(1).max(1);
        let limit = q.limit.unwrap_or(20).clamp(1, 200);
        match (page - 1).checked_mul(limit) {
            Some(offset) if offset <= MAX_OFFSET => Ok(PageParams { page, limit }),
            _ => Err(ApiError::bad_request(MSG_BAD_PAGE)
                .with_error(format!("(page - 1) × limit no puede superar {MAX_OFFSET}"))),
        }
    }
}

/// Trims a text field; empty means absent.
pub fn clean(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

const MSG_BAD_VARIABLES: &str = "Las variables deben ser un objeto JSON";

/// Bytes a `variables` object (a client's, or a group's defaults) may take
/// as JSON: the import's bound.
pub const MAX_VARIABLES_BYTES: usize = crate::import::MAX_VARIABLES_BYTES;

/// A `variables` value: an object (`null` is none), at most
/// [`MAX_VARIABLES_BYTES`] as JSON.
pub fn validate_variables(
    value: serde_json::Value,
) -> crate::error::ApiResult<serde_json::Map<String, serde_json::Value>> {
    let map = match value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => return Err(crate::error::ApiError::bad_request(MSG_BAD_VARIABLES)),
    };
    let size = serde_json::to_vec(&map).map_or(usize::MAX, |json| json.len());
    if size > MAX_VARIABLES_BYTES {
        return Err(crate::error::ApiError::bad_request(format!(
            "Las variables son demasiado grandes ({size} bytes). El máximo permitido es {MAX_VARIABLES_BYTES} bytes."
        )));
    }
    Ok(map)
}

/// Refuses a text field longer than `max` characters, naming it (`label`).
/// The bounds are the import's (`import::MAX_NAME_CHARS`…), so a client
/// holds the same whether it came in a file or in a request.
pub fn bounded(label: &str, value: Option<&str>, max: usize) -> crate::error::ApiResult<()> {
    let chars = value.map_or(0, |v| v.chars().count());
    if chars > max {
        return Err(crate::error::ApiError::bad_request(format!(
            "El campo {label} es demasiado largo ({chars} caracteres). El máximo permitido es {max} caracteres."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_counts_pages_from_the_true_total() {
        let p = Pagination::new(PageParams { page: 2, limit: 20 }, 41);
        assert_eq!(
            (p.total_pages, p.has_next_page, p.has_prev_page),
            (3, true, true)
        );
        let empty = Pagination::new(PageParams { page: 1, limit: 20 }, 0);
        assert_eq!(
            (empty.total_pages, empty.has_next_page, empty.has_prev_page),
            (0, false, false)
        );
    }

    #[test]
    fn page_params_are_clamped() {
        let p = PageParams::try_from(PageQuery {
            page: Some(0),
            limit: Some(1000),
        })
        .expect("clamped");
        assert_eq!((p.page, p.limit), (1, 200));
    }

    #[test]
    fn pages_past_the_offset_bound_are_refused_never_wrapped() {
        let page = |page, limit| {
            PageParams::try_from(PageQuery {
                page: Some(page),
                limit: Some(limit),
            })
        };
        let last = page(MAX_OFFSET / 200 + 1, 200).expect("the last page allowed");
        assert_eq!(last.page, 50_001);
        for (p, l) in [
            (50_002, 200),
            (MAX_OFFSET + 2, 1),
            (i64::MAX, 200),
            (i64::MAX, 1),
        ] {
            let err = page(p, l).expect_err("past the bound");
            assert_eq!((err.status.as_u16(), &*err.message), (400, MSG_BAD_PAGE));
        }
    }
}
