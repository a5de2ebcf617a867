//! Following calls after a launch (API.md §6): the call history of a group (as
//! JSON pages or a CSV/XLSX download), its statistics, and one conversation.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::agents::upstream_error;
use super::groups::visible_group;
use super::{Envelope, PageParams, PageQuery, Pagination, clean, ok, paginated};
use crate::app::AppState;
use crate::elevenlabs::ElevenLabsError;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiQuery, AuthUser, PathIds};
use crate::store::history::{
    BatchSummaryRow, CallHistoryRow, ConversationFill, ConversationRecord, HistoryFilter,
    StatsBucket,
};
use crate::store::{Group, Scope, like_pattern};

const MSG_HISTORY: &str = "Historial de llamadas obtenido exitosamente";
const MSG_STATS: &str = "Estadísticas obtenidas exitosamente";
const MSG_CONVERSATION: &str = "Conversación obtenida exitosamente";
const MSG_CONVERSATION_NOT_FOUND: &str = "Conversación no encontrada";
const MSG_CONVERSATION_FAILED: &str = "No se pudo obtener la conversación de ElevenLabs";
const MSG_BAD_FROM: &str =
    "Fecha 'from' inválida. Usa YYYY-MM-DD o RFC 3339 (por ejemplo 2025-11-02T10:00:00Z)";
const MSG_BAD_TO: &str =
    "Fecha 'to' inválida. Usa YYYY-MM-DD o RFC 3339 (por ejemplo 2025-11-02T10:00:00Z)";
const MSG_BAD_RANGE: &str = "La fecha 'from' debe ser anterior a 'to'";
const MSG_BAD_STATUS: &str = "Estado inválido. Usa uno de: pending, dispatched, initiated, in_progress, completed, failed, cancelled, voicemail";
const MSG_BAD_OUTCOME: &str = "callSuccessful inválido. Usa success, failure o unknown";
const MSG_BAD_FORMAT: &str = "Formato inválido. Usa csv o xlsx";
const MSG_BAD_SEARCH: &str = "La búsqueda no puede superar 200 caracteres";
const MSG_BAD_BATCH: &str = "batchId inválido";
const MSG_TOO_MANY_ROWS: &str =
    "Demasiadas llamadas para un archivo XLSX (máximo 1.048.575); usa format=csv";

/// The statuses a call record can be filtered by (ElevenLabs' own).
const STATUSES: [&str; 8] = [
    "pending",
    "dispatched",
    "initiated",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
    "voicemail",
];
/// Rows an export reads from the database at a time.
const EXPORT_CHUNK: i64 = 2_000;
/// An xlsx sheet holds 1,048,576 rows, one of them the header.
const XLSX_MAX_ROWS: i64 = 1_048_575;
const XLSX_CONTENT_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/groups/{id}/call-history", get(call_history))
        .route("/api/groups/{id}/call-stats", get(call_stats))
        .route(
            "/api/conversations/{conversation_id}",
            get(get_conversation),
        )
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    pub page: Option<i64>,
    /// 1..=200, default 20.
    pub limit: Option<i64>,
    /// pending, dispatched, initiated, in_progress, completed, failed, cancelled, voicemail.
    pub status: Option<String>,
    /// ElevenLabs' batch id (`btcal_…`).
    pub batch_id: Option<String>,
    /// success, failure or unknown (unknown includes calls without an outcome yet).
    pub call_successful: Option<String>,
    /// From this instant (RFC 3339) or day (`YYYY-MM-DD`, the group's time zone), inclusive.
    pub from: Option<String>,
    /// Up to this instant (RFC 3339) or the end of this day (`YYYY-MM-DD`), inclusive.
    pub to: Option<String>,
    /// Part of the client's name, or at least 3 digits of the phone number.
    pub search: Option<String>,
    /// `csv` or `xlsx` downloads every matching call (all pages).
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// From this instant (RFC 3339) or day (`YYYY-MM-DD`, the group's time zone), inclusive.
    pub from: Option<String>,
    /// Up to this instant (RFC 3339) or the end of this day (`YYYY-MM-DD`), inclusive.
    pub to: Option<String>,
}

/// One call of the history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    pub id: i64,
    /// ElevenLabs' batch id (`btcal_…`); null while a submit's outcome is unknown.
    pub batch_id: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub phone_number: String,
    pub status: String,
    pub conversation_id: Option<String>,
    pub duration_secs: Option<i64>,
    /// success, failure, unknown (null: not known yet).
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// When the launch queued the call (the history's time axis).
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CallHistoryRow> for CallView {
    fn from(r: CallHistoryRow) -> Self {
        CallView {
            id: r.id,
            batch_id: r.batch_id,
            client_id: r.client_id,
            client_name: r.client_name,
            phone_number: r.phone_number,
            status: r.status,
            conversation_id: r.conversation_id,
            duration_secs: r.duration_secs,
            call_successful: r.call_successful,
            transcript_summary: r.transcript_summary,
            started_at: r.started_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A batch of the group with its calls counted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// Our row id.
    pub id: i64,
    /// ElevenLabs' batch id (`btcal_…`).
    pub batch_id: Option<String>,
    pub name: String,
    pub status: String,
    pub agent_id: String,
    pub phone_number_id: Option<String>,
    pub scheduled_time_unix: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub total_recipients: i64,
    pub completed_calls: i64,
    pub failed_calls: i64,
    pub voicemail_calls: i64,
    pub successful_calls: i64,
    /// successful / completed, percent, one decimal.
    pub success_rate: f64,
}

impl From<BatchSummaryRow> for BatchSummary {
    fn from(b: BatchSummaryRow) -> Self {
        BatchSummary {
            id: b.id,
            batch_id: b.batch_id,
            name: b.name,
            status: b.status,
            agent_id: b.agent_id,
            phone_number_id: b.phone_number_id,
            scheduled_time_unix: b.scheduled_time_unix,
            created_at: b.created_at,
            total_recipients: b.total_recipients,
            completed_calls: b.completed_calls,
            failed_calls: b.failed_calls,
            voicemail_calls: b.voicemail_calls,
            successful_calls: b.successful_calls,
            success_rate: percent(b.successful_calls, b.completed_calls),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallHistory {
    pub group: Group,
    pub calls: Vec<CallView>,
    pub batch_calls: Vec<BatchSummary>,
    pub pagination: Pagination,
}

/// A percentage with one decimal; 0 when the denominator is 0.
fn percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

fn one_decimal(sum: i64, count: i64) -> f64 {
    if count <= 0 {
        0.0
    } else {
        (sum as f64 * 10.0 / count as f64).round() / 10.0
    }
}

fn group_tz(group: &Group) -> Tz {
    group.timezone.parse().unwrap_or(Tz::UTC)
}

/// The first instant of `day` in `tz` (midnight, or the end of a DST gap).
fn start_of_day(day: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    (0..4).find_map(|hour| {
        day.and_hms_opt(hour, 0, 0)
            .and_then(|local| tz.from_local_datetime(&local).earliest())
            .map(|t| t.with_timezone(&Utc))
    })
}

/// `from` (inclusive) and the exclusive end of the period.
type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` (inclusive) and `to` (inclusive; returned as an exclusive bound).
fn parse_period(from: Option<String>, to: Option<String>, tz: Tz) -> ApiResult<Period> {
    let from = match clean(from) {
        None => None,
        Some(text) => Some(
            if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
                Some(t.with_timezone(&Utc))
            } else {
                NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| start_of_day(d, tz))
            }
            .ok_or_else(|| ApiError::bad_request(MSG_BAD_FROM))?,
        ),
    };
    let until = match clean(to) {
        None => None,
        Some(text) => Some(
            if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
                // Inclusive: PostgreSQL keeps microseconds, so "< to + 1 µs" is "<= to".
                t.with_timezone(&Utc)
                    .checked_add_signed(chrono::TimeDelta::microseconds(1))
            } else {
                NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.succ_opt())
                    .and_then(|d| start_of_day(d, tz))
            }
            .ok_or_else(|| ApiError::bad_request(MSG_BAD_TO))?,
        ),
    };
    if let (Some(from), Some(until)) = (from, until)
        && from >= until
    {
        return Err(ApiError::bad_request(MSG_BAD_RANGE));
    }
    Ok((from, until))
}

/// Output of the history: JSON pages or a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Xlsx,
}

/// Validates the query into a filter (the batch id still to be resolved).
async fn history_filter(
    state: &AppState,
    group: &Group,
    q: &mut HistoryQuery,
) -> ApiResult<HistoryFilter> {
    let (from, until) = parse_period(q.from.take(), q.to.take(), group_tz(group))?;
    let mut filter = HistoryFilter {
        from,
        until,
        ..HistoryFilter::default()
    };
    if let Some(status) = clean(q.status.take()) {
        let status = status.to_lowercase();
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_request(MSG_BAD_STATUS));
        }
        filter.status = Some(status);
    }
    if let Some(outcome) = clean(q.call_successful.take()) {
        let outcome = outcome.to_lowercase();
        if !matches!(outcome.as_str(), "success" | "failure" | "unknown") {
            return Err(ApiError::bad_request(MSG_BAD_OUTCOME));
        }
        filter.call_successful = Some(outcome);
    }
    if let Some(batch) = clean(q.batch_id.take()) {
        if batch.chars().count() > 200 {
            return Err(ApiError::bad_request(MSG_BAD_BATCH));
        }
        // An id this group does not have matches nothing (row ids start at 1).
        filter.batch_row_id = Some(
            state
                .store
                .batch_row_id(group.id, &batch)
                .await?
                .unwrap_or(0),
        );
    }
    if let Some(search) = clean(q.search.take()) {
        if search.chars().count() > 200 {
            return Err(ApiError::bad_request(MSG_BAD_SEARCH));
        }
        let digits: String = search.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 3 {
            filter.phone_pattern = Some(format!("%{digits}%"));
        }
        filter.name_pattern = Some(like_pattern(&search));
    }
    Ok(filter)
}

#[utoipa::path(get, path = "/api/groups/{id}/call-history", tag = "history", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), HistoryQuery),
    responses(
        (status = 200, description = "Historial de llamadas obtenido exitosamente (JSON; con format=csv|xlsx, el archivo)", body = Envelope<CallHistory>),
        (status = 400, description = "Parámetros inválidos", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn call_history(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(mut q): ApiQuery<HistoryQuery>,
) -> ApiResult<Response> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let format = match clean(q.format.take()).map(|f| f.to_lowercase()).as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("xlsx") => Format::Xlsx,
        Some(_) => return Err(ApiError::bad_request(MSG_BAD_FORMAT)),
    };
    let filter = history_filter(&state, &group, &mut q).await?;
    match format {
        Format::Json => {
            let page = PageParams::try_from(PageQuery {
                page: q.page,
                limit: q.limit,
            })?;
            let (calls, total) = state
                .store
                .call_history(group.id, &filter, page.page, page.limit)
                .await?;
            let batches = state.store.batch_summaries(group.id, None).await?;
            let pagination = Pagination::new(page, total);
            Ok(paginated(
                MSG_HISTORY,
                CallHistory {
                    group,
                    calls: calls.into_iter().map(CallView::from).collect(),
                    batch_calls: batches.into_iter().map(BatchSummary::from).collect(),
                    pagination,
                },
                pagination,
            )
            .into_response())
        }
        Format::Csv => export_csv(state, group, filter).await,
        Format::Xlsx => export_xlsx(state, group, filter).await,
    }
}

/// The columns of an export: the call's own, then the client's variables, then
/// the data collection (`dataCollection.<key>`).
struct ExportColumns {
    variables: Vec<String>,
    data: Vec<String>,
}

const FIXED_COLUMNS: [&str; 13] = [
    "id",
    "batchId",
    "clientId",
    "clientName",
    "phoneNumber",
    "status",
    "conversationId",
    "durationSecs",
    "callSuccessful",
    "transcriptSummary",
    "startedAt",
    "createdAt",
    "updatedAt",
];

impl ExportColumns {
    fn header(&self) -> Vec<String> {
        FIXED_COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .chain(self.variables.iter().cloned())
            .chain(self.data.iter().map(|k| format!("dataCollection.{k}")))
            .collect()
    }

    fn cells(&self, r: &CallHistoryRow) -> Vec<Cell> {
        let text = |v: &Option<String>| v.clone().map(Cell::Text).unwrap_or(Cell::Empty);
        let int = |v: Option<i64>| v.map(Cell::Int).unwrap_or(Cell::Empty);
        let time = |v: Option<DateTime<Utc>>| {
            v.map(|t| Cell::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                .unwrap_or(Cell::Empty)
        };
        let mut cells = vec![
            Cell::Int(r.id),
            text(&r.batch_id),
            int(r.client_id),
            text(&r.client_name),
            Cell::Text(r.phone_number.clone()),
            Cell::Text(r.status.clone()),
            text(&r.conversation_id),
            int(r.duration_secs),
            text(&r.call_successful),
            text(&r.transcript_summary),
            time(r.started_at),
            time(Some(r.created_at)),
            time(Some(r.updated_at)),
        ];
        for key in &self.variables {
            cells.push(json_cell(r.variables.as_ref().and_then(|v| v.get(key))));
        }
        for key in &self.data {
            // ElevenLabs' data_collection_results: {key: {value, rationale, …}}.
            let entry = r.data_collection.as_ref().and_then(|v| v.get(key));
            let value = match entry {
                Some(Value::Object(map)) if map.contains_key("value") => map.get("value"),
                other => other,
            };
            cells.push(json_cell(value));
        }
        cells
    }
}

enum Cell {
    Empty,
    Int(i64),
    Float(f64),
    Text(String),
}

fn json_cell(value: Option<&Value>) -> Cell {
    match value {
        None | Some(Value::Null) => Cell::Empty,
        Some(Value::String(s)) => Cell::Text(s.clone()),
        Some(Value::Bool(b)) => Cell::Text(b.to_string()),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Cell::Int(i),
            (None, Some(f)) => Cell::Float(f),
            _ => Cell::Text(n.to_string()),
        },
        Some(other) => Cell::Text(other.to_string()),
    }
}

impl Cell {
    /// The CSV text. Text that a spreadsheet would run as a formula is
    /// prefixed with `'` (numbers such as `+573001234567` are left alone).
    fn csv(&self) -> String {
        match self {
            Cell::Empty => String::new(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Text(s) => {
                let risky = match s.chars().next() {
                    Some('=' | '@' | '\t' | '\r') => true,
                    Some('+' | '-') => s[1..].parse::<f64>().is_err(),
                    _ => false,
                };
                if risky { format!("'{s}") } else { s.clone() }
            }
        }
    }
}

fn file_name(group: &Group, extension: &str) -> String {
    format!(
        "historial-llamadas-grupo-{}-{}.{extension}",
        group.id,
        Utc::now().format("%Y%m%d")
    )
}

fn download_headers(response: &mut Response, content_type: &str, name: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Where an export is in the history.
struct ExportCursor {
    state: AppState,
    group_id: i64,
    filter: HistoryFilter,
    columns: ExportColumns,
    after: Option<(DateTime<Utc>, i64)>,
    done: bool,
}

impl ExportCursor {
    async fn new(state: AppState, group_id: i64, filter: HistoryFilter) -> ApiResult<Self> {
        let (variables, data) = state.store.export_keys(group_id).await?;
        Ok(ExportCursor {
            state,
            group_id,
            filter,
            columns: ExportColumns { variables, data },
            after: None,
            done: false,
        })
    }

    /// The next chunk of rows, empty at the end.
    async fn next_rows(&mut self) -> ApiResult<Vec<CallHistoryRow>> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = self
            .state
            .store
            .call_history_chunk(self.group_id, &self.filter, self.after, EXPORT_CHUNK)
            .await?;
        if (rows.len() as i64) < EXPORT_CHUNK {
            self.done = true;
        }
        self.after = rows.last().map(|r| (r.created_at, r.id));
        Ok(rows)
    }

    fn csv_chunk(&self, rows: &[CallHistoryRow]) -> Result<Bytes, csv::Error> {
        let mut writer = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 160));
        for row in rows {
            writer.write_record(self.columns.cells(row).iter().map(Cell::csv))?;
        }
        writer
            .into_inner()
            .map(Bytes::from)
            .map_err(|e| csv::Error::from(e.into_error()))
    }
}

/// CSV with a UTF-8 BOM (so Excel reads accents), streamed a chunk of rows at
/// a time: memory stays bounded whatever the size of the history.
async fn export_csv(state: AppState, group: Group, filter: HistoryFilter) -> ApiResult<Response> {
    let mut cursor = ExportCursor::new(state, group.id, filter).await?;
    // The first chunk is read before answering, so that a failure is still a JSON error.
    let first = cursor.next_rows().await?;
    let mut head = csv::Writer::from_writer(b"\xEF\xBB\xBF".to_vec());
    head.write_record(cursor.columns.header())
        .map_err(ApiError::internal)?;
    let mut head = head
        .into_inner()
        .map_err(|e| ApiError::internal(e.into_error()))?;
    head.extend_from_slice(&cursor.csv_chunk(&first).map_err(ApiError::internal)?);
    let rest = futures_util::stream::unfold(cursor, |mut cursor| async move {
        match cursor.next_rows().await {
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => {
                let chunk = cursor
                    .csv_chunk(&rows)
                    .map_err(|e| std::io::Error::other(e.to_string()));
                Some((chunk, cursor))
            }
            Err(err) => {
                // Headers are gone: the only way to say it is to cut the download short.
                tracing::error!(message = %err.message, "call history export failed");
                cursor.done = true;
                Some((Err(std::io::Error::other("export failed")), cursor))
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) }).chain(rest);
    let mut response = Body::from_stream(body).into_response();
    download_headers(
        &mut response,
        "text/csv; charset=utf-8",
        &file_name(&group, "csv"),
    );
    Ok(response)
}

/// XLSX through rust_xlsxwriter's constant-memory mode (rows go to a temporary
/// file as they are written); the finished file is streamed from disk.
async fn export_xlsx(state: AppState, group: Group, filter: HistoryFilter) -> ApiResult<Response> {
    let (_, total) = state.store.call_history(group.id, &filter, 1, 1).await?;
    if total > XLSX_MAX_ROWS {
        return Err(ApiError::bad_request(MSG_TOO_MANY_ROWS));
    }
    let mut cursor = ExportCursor::new(state, group.id, filter).await?;
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let header = cursor.columns.header();
    {
        let sheet = workbook
            .add_worksheet_with_constant_memory()
            .map_err(ApiError::internal)?;
        sheet.set_name("Llamadas").map_err(ApiError::internal)?;
        let bold = rust_xlsxwriter::Format::new().set_bold();
        for (col, name) in header.iter().enumerate() {
            sheet
                .write_string_with_format(0, col as u16, name, &bold)
                .map_err(ApiError::internal)?;
        }
    }
    let mut row_index: u32 = 1;
    loop {
        let rows = cursor.next_rows().await?;
        if rows.is_empty() {
            break;
        }
        let sheet = workbook
            .worksheet_from_index(0)
            .map_err(ApiError::internal)?;
        for row in &rows {
            for (col, cell) in cursor.columns.cells(row).into_iter().enumerate() {
                let col = col as u16;
                let written = match cell {
                    Cell::Empty => continue,
                    Cell::Int(i) => sheet.write_number(row_index, col, i as f64).map(|_| ()),
                    Cell::Float(f) => sheet.write_number(row_index, col, f).map(|_| ()),
                    Cell::Text(s) => sheet.write_string(row_index, col, s).map(|_| ()),
                };
                written.map_err(ApiError::internal)?;
            }
            row_index += 1;
        }
    }
    let path = std::env::temp_dir().join(format!("marcador-export-{}.xlsx", uuid::Uuid::new_v4()));
    let saved = path.clone();
    tokio::task::spawn_blocking(move || workbook.save(&saved))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let file = tokio::fs::File::open(&path).await;
    // The open file stays readable after its name is gone.
    let _ = tokio::fs::remove_file(&path).await;
    let file = file.map_err(ApiError::internal)?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), file))
            }
            Err(err) => Some((Err(err), file)),
        }
    });
    let mut response = Body::from_stream(body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    download_headers(&mut response, XLSX_CONTENT_TYPE, &file_name(&group, "xlsx"));
    Ok(response)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsSummary {
    /// Batches submitted to ElevenLabs in the period.
    pub total_batch_calls: i64,
    /// Call records (one per recipient) in the period.
    pub total_recipients: i64,
    pub total_completed_calls: i64,
    pub total_failed_calls: i64,
    pub total_voicemail_calls: i64,
    /// completed + failed + voicemail: calls dialled to a final outcome.
    pub total_finished_calls: i64,
    /// Completed calls with callSuccessful = success / completed calls, percent.
    pub success_rate: f64,
    /// Completed (answered by a person) / finished, percent.
    pub answer_rate: f64,
    /// Voicemail / finished, percent.
    pub voicemail_rate: f64,
    /// Over calls with a known duration, one decimal.
    pub avg_duration_secs: f64,
    pub total_duration_secs: i64,
    /// Distinct clients with at least one completed call.
    pub unique_clients_reached: i64,
    /// The latest `startedAt`.
    pub last_call_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
    /// Null when no call of this status has a duration.
    pub avg_duration_secs: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeCount {
    pub call_successful: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DailyCount {
    /// `YYYY-MM-DD` in the group's time zone.
    pub date: String,
    pub calls: i64,
    pub completed: i64,
    pub successful: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsPeriod {
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
    /// The time zone of `daily` and of date-only `from`/`to`: the group's.
    pub timezone: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    pub group: Group,
    pub period: StatsPeriod,
    pub summary: StatsSummary,
    pub status_breakdown: Vec<StatusCount>,
    pub outcome_breakdown: Vec<OutcomeCount>,
    /// The five newest batches of the group.
    pub recent_batch_calls: Vec<BatchSummary>,
    pub daily: Vec<DailyCount>,
}

/// Folds the grouped rows the database returned (a few per hour, batch,
/// status and outcome) into the figures of the answer.
fn fold_stats(
    buckets: &[StatsBucket],
    tz: Tz,
) -> (
    StatsSummaryCounts,
    Vec<StatusCount>,
    Vec<OutcomeCount>,
    Vec<DailyCount>,
) {
    let mut c = StatsSummaryCounts::default();
    let mut statuses: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, i64> = BTreeMap::new();
    let mut daily: BTreeMap<NaiveDate, (i64, i64, i64)> = BTreeMap::new();
    for b in buckets {
        let completed = b.status == "completed";
        let successful = completed && b.outcome == "success";
        c.total += b.calls;
        c.duration_sum += b.duration_sum;
        c.duration_calls += b.duration_calls;
        match b.status.as_str() {
            "completed" => c.completed += b.calls,
            "failed" => c.failed += b.calls,
            "voicemail" => c.voicemail += b.calls,
            _ => {}
        }
        if successful {
            c.successful += b.calls;
        }
        let s = statuses.entry(&b.status).or_default();
        s.0 += b.calls;
        s.1 += b.duration_sum;
        s.2 += b.duration_calls;
        if !b.outcome.is_empty() {
            *outcomes.entry(&b.outcome).or_default() += b.calls;
        }
        if let Ok(hour) =
            NaiveDateTime::parse_from_str(&format!("{}:00:00", b.hour), "%Y-%m-%dT%H:%M:%S")
        {
            let day = Utc.from_utc_datetime(&hour).with_timezone(&tz).date_naive();
            let d = daily.entry(day).or_default();
            d.0 += b.calls;
            if completed {
                d.1 += b.calls;
            }
            if successful {
                d.2 += b.calls;
            }
        }
    }
    let mut status_breakdown: Vec<StatusCount> = statuses
        .into_iter()
        .filter(|(_, (count, _, _))| *count != 0)
        .map(|(status, (count, sum, n))| StatusCount {
            status: status.to_owned(),
            count,
            avg_duration_secs: (n > 0).then(|| one_decimal(sum, n)),
        })
        .collect();
    status_breakdown.sort_by(|a, b| b.count.cmp(&a.count).then(a.status.cmp(&b.status)));
    let mut outcome_breakdown: Vec<OutcomeCount> = outcomes
        .into_iter()
        .filter(|(_, count)| *count != 0)
        .map(|(outcome, count)| OutcomeCount {
            call_successful: outcome.to_owned(),
            count,
        })
        .collect();
    outcome_breakdown.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.call_successful.cmp(&b.call_successful))
    });
    let daily = daily
        .into_iter()
        .filter(|(_, (calls, _, _))| *calls != 0)
        .map(|(date, (calls, completed, successful))| DailyCount {
            date: date.format("%Y-%m-%d").to_string(),
            calls,
            completed,
            successful,
        })
        .collect();
    (c, status_breakdown, outcome_breakdown, daily)
}

#[derive(Debug, Default)]
struct StatsSummaryCounts {
    total: i64,
    completed: i64,
    failed: i64,
    voicemail: i64,
    successful: i64,
    duration_sum: i64,
    duration_calls: i64,
}

#[utoipa::path(get, path = "/api/groups/{id}/call-stats", tag = "history", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), StatsQuery),
    responses(
        (status = 200, description = "Estadísticas obtenidas exitosamente", body = Envelope<CallStats>),
        (status = 400, description = "Fechas inválidas", body = ErrorBody),
        (status = 404, description = "Grupo no encontrado", body = ErrorBody),
    ))]
pub async fn call_stats(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    ids: PathIds,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> ApiResult<Response> {
    let group = visible_group(&state, &caller, ids.first()).await?;
    let tz = group_tz(&group);
    let (from, until) = parse_period(q.from, q.to, tz)?;
    let filter = HistoryFilter {
        from,
        until,
        ..HistoryFilter::default()
    };
    let (buckets, extras, recent) = tokio::try_join!(
        state.store.stats_buckets(group.id, &filter),
        state.store.stats_extras(group.id, &filter),
        state.store.batch_summaries(group.id, Some(5)),
    )?;
    let (c, status_breakdown, outcome_breakdown, daily) = fold_stats(&buckets, tz);
    let finished = c.completed + c.failed + c.voicemail;
    let summary = StatsSummary {
        total_batch_calls: extras.total_batch_calls,
        total_recipients: c.total,
        total_completed_calls: c.completed,
        total_failed_calls: c.failed,
        total_voicemail_calls: c.voicemail,
        total_finished_calls: finished,
        success_rate: percent(c.successful, c.completed),
        answer_rate: percent(c.completed, finished),
        voicemail_rate: percent(c.voicemail, finished),
        avg_duration_secs: one_decimal(c.duration_sum, c.duration_calls),
        total_duration_secs: c.duration_sum,
        unique_clients_reached: extras.unique_clients_reached,
        last_call_at: extras.last_call_at,
    };
    let timezone = tz.name().to_owned();
    Ok(ok(
        MSG_STATS,
        CallStats {
            group,
            period: StatsPeriod {
                from,
                until,
                timezone,
            },
            summary,
            status_breakdown,
            outcome_breakdown,
            recent_batch_calls: recent.into_iter().map(BatchSummary::from).collect(),
            daily,
        },
    )
    .into_response())
}

/// A conversation of one of the caller's calls.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub conversation_id: String,
    /// The call record's id.
    pub call_id: i64,
    pub group_id: i64,
    pub batch_id: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub phone_number: String,
    pub status: String,
    pub duration_secs: Option<i64>,
    pub call_successful: Option<String>,
    pub transcript_summary: Option<String>,
    pub termination_reason: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data_collection: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub evaluation: Option<Value>,
    /// ElevenLabs' turns: `[{role, message, time_in_call_secs, …}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub transcript: Option<Value>,
    pub failure_reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When the transcript was fetched from ElevenLabs and kept.
    pub fetched_at: Option<DateTime<Utc>>,
}

impl From<ConversationRecord> for ConversationView {
    fn from(r: ConversationRecord) -> Self {
        ConversationView {
            conversation_id: r.conversation_id,
            call_id: r.call_id,
            group_id: r.group_id,
            batch_id: r.batch_id,
            client_id: r.client_id,
            client_name: r.client_name,
            phone_number: r.phone_number,
            status: r.status,
            duration_secs: r.duration_secs,
            call_successful: r.call_successful,
            transcript_summary: r.transcript_summary,
            termination_reason: r.termination_reason,
            data_collection: r.data_collection,
            evaluation: r.evaluation,
            transcript: r.transcript,
            failure_reason: r.failure_reason,
            started_at: r.started_at,
            ended_at: r.ended_at,
            fetched_at: r.fetched_at,
        }
    }
}

/// What an ElevenLabs conversation (`GET /v1/convai/conversations/:id`) adds.
fn conversation_fill(conv: &Value) -> ConversationFill {
    let text = |pointer: &str| {
        conv.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let object = |pointer: &str| conv.pointer(pointer).filter(|v| v.is_object()).cloned();
    ConversationFill {
        transcript: conv
            .get("transcript")
            .cloned()
            .unwrap_or(Value::Array(Vec::new())),
        duration_secs: conv
            .pointer("/metadata/call_duration_secs")
            .and_then(Value::as_i64),
        call_successful: text("/analysis/call_successful"),
        transcript_summary: text("/analysis/transcript_summary"),
        termination_reason: text("/metadata/termination_reason"),
        data_collection: object("/analysis/data_collection_results"),
        evaluation: object("/analysis/evaluation_criteria_results"),
        started_at: conv
            .pointer("/metadata/start_time_unix_secs")
            .and_then(Value::as_i64)
            .and_then(|s| DateTime::from_timestamp(s, 0)),
    }
}

/// A conversation id as ElevenLabs writes them; anything else cannot exist.
fn plausible_conversation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[utoipa::path(get, path = "/api/conversations/{conversationId}", tag = "history", security(("bearer" = [])),
    params(("conversationId" = String, Path, description = "ElevenLabs conversation id (conv_…)")),
    responses(
        (status = 200, description = "Conversación obtenida exitosamente", body = Envelope<ConversationView>),
        (status = 404, description = "Conversación no encontrada", body = ErrorBody),
        (status = 502, description = "ElevenLabs no respondió", body = ErrorBody),
        (status = 503, description = "ElevenLabs está ocupado", body = ErrorBody),
    ))]
pub async fn get_conversation(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(MSG_CONVERSATION_NOT_FOUND);
    let Ok(Path(id)) = path else {
        return Err(not_found());
    };
    if !plausible_conversation_id(&id) {
        return Err(not_found());
    }
    let mut record = state
        .store
        .find_conversation(&id, Scope::of(&caller))
        .await?
        .ok_or_else(not_found)?;
    if record.transcript.is_none() {
        let conv = state
            .elevenlabs
            .get_conversation(&id)
            .await
            .map_err(|err| match err {
                ElevenLabsError::Status { status: 404, .. } => {
                    not_found().with_error("ElevenLabs no tiene esta conversación")
                }
                other => upstream_error(MSG_CONVERSATION_FAILED, &other),
            })?;
        let fill = conversation_fill(&conv);
        // Only a finished conversation is final: one still in progress is
        // shown but fetched again next time.
        let finished = matches!(
            conv.get("status").and_then(Value::as_str),
            Some("done" | "failed")
        );
        if finished {
            state
                .store
                .store_conversation(record.call_id, &fill)
                .await?;
            record.fetched_at = Some(Utc::now());
        }
        record.duration_secs = record.duration_secs.or(fill.duration_secs);
        record.call_successful = record.call_successful.or(fill.call_successful);
        record.transcript_summary = record.transcript_summary.or(fill.transcript_summary);
        record.termination_reason = record.termination_reason.or(fill.termination_reason);
        record.data_collection = record.data_collection.or(fill.data_collection);
        record.evaluation = record.evaluation.or(fill.evaluation);
        record.started_at = record.started_at.or(fill.started_at);
        record.transcript = Some(fill.transcript);
    }
    Ok(ok(MSG_CONVERSATION, ConversationView::from(record)).into_response())
}
