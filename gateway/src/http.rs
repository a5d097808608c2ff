//! The HTTP surface: the original SDK's routes, health and metrics, error mapping, and the
//! per-request metrics and log line.

use crate::db::{self, DbError, Health};
use crate::metrics::{Metrics, PoolState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use dunetrace_core::sqlstate::ErrorClass;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tower_http::catch_panic::CatchPanicLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub retry_after_secs: u64,
    /// Largest body accepted (also enforced by `DefaultBodyLimit`), named in 413 answers.
    pub max_body_bytes: usize,
}

/// Builds the router with all routes and layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ingest", post(ingest))
        .route("/v1/policies", get(policies))
        .route("/v1/deploy", post(deploy))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

// ── Errors ──────────────────────────────────────────────────────────────────────────────────

/// Told to a client that sent content this server refuses.
pub const HASHED_ONLY_HINT: &str = "this server accepts hashed events only: prompts, completions, \
     tool arguments and user input must be hashed in the agent's process (the dunetrace Python \
     SDK 0.3.x does this); raw text is never accepted";

/// An answer other than success. Its body is `{"detail": …}` (as the original's FastAPI
/// server answered), plus the SQLSTATE when the database refused the request. The status comes
/// from the error's class, in the table shared with the Rust client
/// ([`dunetrace_core::sqlstate`]): 401 Auth, 403 Forbidden, 422 Invalid, 413 TooLarge,
/// 503 Transient (with `Retry-After`), 502 External, 500 Internal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    class: ErrorClass,
    /// Told to the client when the request is at fault; otherwise a generic text is.
    detail: String,
    sqlstate: Option<String>,
}

impl ApiError {
    /// The request is refused by the gateway itself (`class` says why); nothing was stored.
    pub fn refused(class: ErrorClass, detail: impl Into<String>) -> ApiError {
        ApiError {
            class,
            detail: detail.into(),
            sqlstate: None,
        }
    }

    /// 401: missing, malformed, unknown or revoked API key.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::refused(ErrorClass::Auth, detail)
    }

    /// 422: the request or a value in it breaks a rule.
    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::refused(ErrorClass::Invalid, detail)
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::refused(
            ErrorClass::TooLarge,
            format!(
                "request body too large: at most {limit} bytes are accepted; send smaller \
                 batches (nothing was stored)"
            ),
        )
    }

    /// The error's class in the shared table.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Whether the answer carries `Retry-After` (the same request may succeed later).
    pub fn retry_after(&self) -> bool {
        self.class.retryable()
    }

    /// The metrics label for events in a request refused this way.
    pub fn reason(&self) -> &'static str {
        reason(self.class)
    }

    /// The body sent to the client.
    pub fn body(&self) -> Value {
        let detail = match self.class {
            c if c.refuses_request() => self.detail.as_str(),
            ErrorClass::Transient => "the database is unavailable; nothing was stored, retry later",
            ErrorClass::External => "a service the database relies on failed; nothing was stored",
            _ => "internal error; nothing was stored",
        };
        match self
            .sqlstate
            .as_ref()
            .filter(|_| self.class.refuses_request())
        {
            Some(s) => json!({"detail": detail, "sqlstate": s}),
            None => json!({"detail": detail}),
        }
    }

    /// What goes into the log (may be more than the client hears).
    pub fn log_message(&self) -> String {
        match &self.sqlstate {
            Some(s) if !self.class.refuses_request() => format!("{s}: {}", self.detail),
            _ => self.detail.clone(),
        }
    }
}

/// The metrics label of a class (`reason` of `dunetrace_gateway_events_rejected_total`).
pub fn reason(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Auth => "unauthorized",
        ErrorClass::Forbidden => "forbidden",
        ErrorClass::Invalid => "invalid",
        ErrorClass::TooLarge => "too_large",
        ErrorClass::Transient => "unavailable",
        ErrorClass::External => "external",
        ErrorClass::Internal => "internal",
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        let refuses_content = e.class == ErrorClass::Invalid
            && e.message.starts_with("dunetrace.ingest:")
            && ["unknown key", "raw content", "free text"]
                .iter()
                .any(|m| e.message.contains(m));
        let detail = if refuses_content {
            format!("{}; {HASHED_ONLY_HINT}", e.message)
        } else {
            e.message
        };
        ApiError {
            class: e.class,
            detail,
            sqlstate: e.sqlstate,
        }
    }
}

/// Added to a response so that [`observe`] can log and count what the handler knew.
#[derive(Clone, Default, Debug)]
struct RequestInfo {
    events: Option<u64>,
    agent: Option<String>,
    key_prefix: Option<String>,
    batch_id: Option<String>,
    error: Option<(&'static str, String)>,
}

fn error_response(state: &AppState, e: ApiError, mut info: RequestInfo) -> Response {
    if let Some(n) = info.events {
        state.metrics.events_rejected(e.reason(), n);
    }
    info.error = Some((e.reason(), e.log_message()));
    let mut resp = (e.status(), Json(e.body())).into_response();
    if e.retry_after() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.retry_after_secs),
        );
    }
    resp.extensions_mut().insert(info);
    resp
}

// ── Request parsing ─────────────────────────────────────────────────────────────────────────

/// The top-level fields of a JSON object body, values kept as raw JSON text.
fn parse_object(body: &[u8]) -> Result<BTreeMap<String, &RawValue>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("request body is empty"));
    }
    serde_json::from_slice::<BTreeMap<String, &RawValue>>(body).map_err(|e| {
        let what = if e.is_data() {
            "request body must be a JSON object"
        } else {
            "request body is not valid JSON"
        };
        // serde_json's position only; never the text around it.
        ApiError::invalid(format!("{what} (line {}, column {})", e.line(), e.column()))
    })
}

/// An optional string field: absent and null are `None`.
fn opt_string(obj: &BTreeMap<String, &RawValue>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None => Ok(None),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => Ok(None),
            Ok(Value::String(s)) => Ok(Some(s)),
            _ => Err(ApiError::invalid(format!("{key} must be a string"))),
        },
    }
}

/// The API key from `Authorization: Bearer <key>` (or a bare key: the last
/// whitespace-separated token, as the original read it).
fn header_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.split_whitespace().last().map(str::to_string)
}

/// The key from the body (`api_key`) or the Authorization header; `""` when neither has one,
/// which the extension refuses as a missing key.
fn resolve_key(body_key: Option<String>, headers: &HeaderMap) -> Result<String, ApiError> {
    let body_key = body_key.filter(|k| !k.is_empty());
    let header_key = header_key(headers).filter(|k| !k.is_empty());
    match (body_key, header_key) {
        (Some(b), Some(h)) if b != h => Err(ApiError::unauthorized(
            "the api_key in the body and the key in the Authorization header differ",
        )),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Ok(String::new()),
    }
}

/// The first 12 characters of a key: the non-secret prefix the extension also stores.
fn key_prefix(key: &str) -> Option<String> {
    (key.starts_with("dt_") && key.len() > 12 && key.is_ascii()).then(|| key[..12].to_string())
}

/// How many events a raw `events` value holds (1 for a single object), if it can tell.
fn count_events(raw: &RawValue) -> Option<u64> {
    let text = raw.get().trim_start();
    if text.starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(raw.get())
            .ok()
            .map(|v| v.len() as u64)
    } else if text.starts_with('{') {
        Some(1)
    } else {
        None
    }
}

fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::invalid(format!("could not read the request body: {rej}"))
        }
    })
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ── Handlers ────────────────────────────────────────────────────────────────────────────────

/// `POST /v1/ingest` with `{"api_key", "agent_id", "events": [...]}`: answers 202 only after
/// `dunetrace.ingest()` has committed the batch.
async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.max_body_bytes;
    let mut info = RequestInfo {
        agent: headers
            .get("x-dunetrace-agent")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
    let result = async {
        let body = body_or_error(body, limit)?;
        let obj = parse_object(&body)?;
        let events = *obj.get("events").ok_or_else(|| {
            ApiError::invalid(
                "events is required: send {\"api_key\": …, \"agent_id\": …, \"events\": [...]}",
            )
        })?;
        info.events = count_events(events);
        if let Some(agent) = opt_string(&obj, "agent_id")?.filter(|a| !a.is_empty()) {
            info.agent = Some(agent);
        }
        let key = resolve_key(opt_string(&obj, "api_key")?, &headers)?;
        info.key_prefix = key_prefix(&key);
        let done = db::ingest(&state.pool, &key, events.get()).await?;
        Ok::<_, ApiError>(done)
    }
    .await;
    match result {
        Ok(done) => {
            state.metrics.events_accepted(done.accepted);
            info.events = Some(done.accepted);
            info.batch_id = Some(done.batch_id.clone());
            let mut resp = (
                StatusCode::ACCEPTED,
                Json(json!({
                    "accepted": done.accepted,
                    "batch_id": done.batch_id,
                    "queued_at": now_epoch(),
                })),
            )
                .into_response();
            resp.extensions_mut().insert(info);
            resp
        }
        Err(e) => error_response(&state, e, info),
    }
}

/// `GET /v1/policies?agent_id=…&api_key=…`: no server-side policies here, so always an empty
/// list (the SDK keeps its locally added policies).
async fn policies(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let info = RequestInfo {
        agent: q.get("agent_id").cloned(),
        ..Default::default()
    };
    let mut resp = Json(json!({"policies": []})).into_response();
    resp.extensions_mut().insert(info);
    resp
}

/// `POST /v1/deploy` with `{"api_key", "agent_id", "version", "meta"}`: stored with
/// `dunetrace.record_deploy()` when the extension has it, else accepted without storing.
async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.max_body_bytes;
    let mut info = RequestInfo::default();
    let result = async {
        let body = body_or_error(body, limit)?;
        let obj = parse_object(&body)?;
        let agent = opt_string(&obj, "agent_id")?.unwrap_or_default();
        info.agent = Some(agent.clone()).filter(|a| !a.is_empty());
        let version = opt_string(&obj, "version")?.unwrap_or_default();
        let meta = match obj.get("meta") {
            None => "{}",
            Some(raw) if raw.get().trim() == "null" => "{}",
            Some(raw) => raw.get(),
        };
        let key = resolve_key(opt_string(&obj, "api_key")?, &headers)?;
        info.key_prefix = key_prefix(&key);
        let stored = db::record_deploy(&state.pool, &key, &agent, &version, meta).await?;
        Ok::<_, ApiError>(stored)
    }
    .await;
    match result {
        Ok(stored) => {
            state.metrics.deploy(stored.is_some());
            let body = match stored {
                Some(id) => json!({"stored": true, "id": id}),
                None => json!({
                    "stored": false,
                    "detail": "accepted; this database has no dunetrace.record_deploy(), so \
                               deploy markers are not stored",
                }),
            };
            let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
            resp.extensions_mut().insert(info);
            resp
        }
        Err(e) => error_response(&state, e, info),
    }
}

/// `GET /health`: 200 when the database answers and has the extension, else 503.
async fn health(State(state): State<AppState>) -> Response {
    let (status, body) = match db::health(&state.pool).await {
        Ok(Health::Ok(version)) => (
            StatusCode::OK,
            json!({"status": "ok", "database": "ok", "extension": version}),
        ),
        Ok(Health::NoExtension) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "database": "ok", "extension": null,
                   "detail": "the dunetrace extension is not installed in this database"}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable", "database": "unavailable"}),
            )
        }
    };
    let mut resp = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.retry_after_secs),
        );
    }
    resp
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let s = state.pool.status();
    let text = state.metrics.render(PoolState {
        max_size: s.max_size,
        size: s.size,
        available: s.available,
        waiting: s.waiting,
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"detail": "internal error; nothing was stored"})),
    )
        .into_response()
}

// ── Metrics and the log line ────────────────────────────────────────────────────────────────

/// Counts every request and writes one log line for it: method, route, status, latency and
/// what the handler knew (event count, agent, key prefix, batch id, error). Never a payload,
/// a query string (it may hold an API key) or a whole key.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status();
    state.metrics.request(&route, status.as_u16(), elapsed);
    let info = resp
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_default();
    let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    let (reason, error) = match &info.error {
        Some((r, m)) => (Some(*r), Some(m.as_str())),
        None => (None, None),
    };
    macro_rules! line {
        ($lvl:ident) => {
            tracing::$lvl!(
                method = %method,
                route = %route,
                status = status.as_u16(),
                latency_ms,
                events = info.events,
                agent_id = info.agent.as_deref(),
                key_prefix = info.key_prefix.as_deref(),
                batch_id = info.batch_id.as_deref(),
                reason,
                error,
                "request"
            )
        };
    }
    if status.is_server_error() {
        line!(error);
    } else if status.is_client_error() {
        line!(warn);
    } else {
        line!(info);
    }
    resp
}

/// Runs one request through the app (for tests without a socket).
#[cfg(test)]
pub async fn call(
    app: Router,
    req: axum::http::Request<axum::body::Body>,
) -> (StatusCode, HeaderMap, Value) {
    use tower::ServiceExt;
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use clap::Parser;

    /// An app whose database cannot be reached (nothing listens on port 1).
    fn app_without_db(max_body: usize) -> (Router, AppState) {
        let cfg = Config::try_parse_from([
            "gw",
            "--database-url",
            "host=127.0.0.1 port=1 user=nobody dbname=none",
            "--pool-timeout-ms",
            "2000",
            "--max-body-bytes",
            &max_body.to_string(),
            "--retry-after-secs",
            "7",
        ])
        .unwrap();
        crate::app(&cfg).unwrap()
    }

    fn post(path: &str, body: &str) -> HttpRequest<Body> {
        HttpRequest::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn oversize_body_is_413_json() {
        let (app, _) = app_without_db(64);
        let body = format!(
            r#"{{"api_key": "dt_x", "events": ["{}"]}}"#,
            "a".repeat(100)
        );
        let (status, _, v) = call(app, post("/v1/ingest", &body)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(v["detail"].as_str().unwrap().contains("at most 64 bytes"));
    }

    #[tokio::test]
    async fn malformed_requests_are_422_without_echo() {
        let cases = [
            ("", "empty"),
            ("{not json secret-text", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
            (r#"{"api_key": "dt_x"}"#, "events is required"),
            (
                r#"{"api_key": 5, "events": []}"#,
                "api_key must be a string",
            ),
            (
                r#"{"agent_id": ["x"], "events": []}"#,
                "agent_id must be a string",
            ),
        ];
        for (body, want) in cases {
            let (app, _) = app_without_db(1 << 20);
            let (status, _, v) = call(app, post("/v1/ingest", body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.contains(want), "{body}: {detail}");
            assert!(!detail.contains("secret-text"), "{detail}");
        }
    }

    #[tokio::test]
    async fn conflicting_keys_are_401() {
        let (app, _) = app_without_db(1 << 20);
        let req = HttpRequest::post("/v1/ingest")
            .header("authorization", "Bearer dt_aaaaaaaaaaaaaaaa")
            .body(Body::from(
                r#"{"api_key": "dt_bbbbbbbbbbbbbbbb", "events": []}"#,
            ))
            .unwrap();
        let (status, _, v) = call(app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(v["detail"].as_str().unwrap().contains("differ"));
    }

    #[tokio::test]
    async fn database_down_is_503_with_retry_after() {
        let (app, state) = app_without_db(1 << 20);
        let body = r#"{"api_key": "dt_aaaaaaaaaaaaaaaa", "agent_id": "a",
                       "events": [{"event_type": "run.started"}, {"event_type": "x"}]}"#;
        let (status, headers, v) = call(app.clone(), post("/v1/ingest", body)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert!(v["detail"].as_str().unwrap().contains("retry later"));
        let text = state.metrics.render(Default::default());
        assert!(text.contains("dunetrace_gateway_events_rejected_total{reason=\"unavailable\"} 2"));
        assert!(text.contains(
            "dunetrace_gateway_http_requests_total{route=\"/v1/ingest\",status=\"503\"} 1"
        ));

        let req = HttpRequest::get("/health").body(Body::empty()).unwrap();
        let (status, headers, v) = call(app, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(v["database"], "unavailable");
    }

    #[tokio::test]
    async fn policies_are_empty_and_unknown_routes_404() {
        let (app, _) = app_without_db(1 << 20);
        let req = HttpRequest::get("/v1/policies?agent_id=a&api_key=dt_x")
            .body(Body::empty())
            .unwrap();
        let (status, _, v) = call(app.clone(), req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v, json!({"policies": []}));
        let req = HttpRequest::get("/nope").body(Body::empty()).unwrap();
        let (status, _, v) = call(app.clone(), req).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["detail"], "Not Found");
        let req = HttpRequest::get("/metrics").body(Body::empty()).unwrap();
        let (status, headers, v) = call(app, req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = v.as_str().unwrap();
        assert!(text.contains(
            "dunetrace_gateway_http_requests_total{route=\"/v1/policies\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "dunetrace_gateway_http_requests_total{route=\"unmatched\",status=\"404\"} 1"
        ));
    }

    #[test]
    fn keys_from_body_or_header() {
        let mut h = HeaderMap::new();
        assert_eq!(resolve_key(None, &h).unwrap(), "");
        assert_eq!(resolve_key(Some("".into()), &h).unwrap(), "");
        assert_eq!(resolve_key(Some("dt_b".into()), &h).unwrap(), "dt_b");
        h.insert(header::AUTHORIZATION, "Bearer dt_h".parse().unwrap());
        assert_eq!(resolve_key(None, &h).unwrap(), "dt_h");
        assert_eq!(resolve_key(Some("".into()), &h).unwrap(), "dt_h");
        assert_eq!(resolve_key(Some("dt_h".into()), &h).unwrap(), "dt_h");
        assert!(resolve_key(Some("dt_b".into()), &h).is_err());
        h.insert(header::AUTHORIZATION, "dt_bare".parse().unwrap());
        assert_eq!(resolve_key(None, &h).unwrap(), "dt_bare");
    }

    #[test]
    fn key_prefix_is_the_stored_twelve() {
        assert_eq!(
            key_prefix("dt_abcdefghijklmnop").as_deref(),
            Some("dt_abcdefghi")
        );
        assert_eq!(key_prefix("sk-abcdefghijklmnop"), None);
        assert_eq!(key_prefix("dt_short"), None);
    }

    #[test]
    fn events_are_counted() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        assert_eq!(count_events(&raw("[{}, {}, 3]")), Some(3));
        assert_eq!(count_events(&raw(" {\"a\": 1}")), Some(1));
        assert_eq!(count_events(&raw("\"x\"")), None);
    }

    #[test]
    fn database_refusals_map_to_statuses() {
        let rej = |s: &str, m: &str| ApiError::from(DbError::raised(s, m));
        assert_eq!(
            rej("28000", "dunetrace.ingest: invalid API key").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            rej("42501", "dunetrace.ingest: batch rejected").status(),
            StatusCode::FORBIDDEN
        );
        let e = rej(
            "22023",
            "dunetrace.ingest: batch rejected, nothing stored: event 1: payload.input_text: \
             unknown key; accepted keys here: input_hash",
        );
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = e.body();
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("this server accepts hashed events only"));
        assert_eq!(body["sqlstate"], "22023");
        let e = rej(
            "22023",
            "dunetrace.ingest: a batch holds at most 1000 events",
        );
        assert!(!e.body()["detail"].as_str().unwrap().contains("hashed"));
        assert_eq!(
            rej("22P02", "dunetrace.ingest: wrong type").status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let e = ApiError::from(DbError::internal("database error XX000: secret detail"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body().to_string().contains("secret"));
        let e = rej(
            "XX000",
            "dunetrace.ingest: could not store the batch: secret detail",
        );
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body().to_string().contains("secret"));
        assert!(!e.body().to_string().contains("XX000"));
        assert!(e.log_message().contains("XX000") && e.log_message().contains("secret"));
        assert!(!e.retry_after());
        let e = ApiError::from(DbError::unavailable("08006 connection lost"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.body().to_string().contains("08006"));
        assert!(e.retry_after());
        let e = rej(
            "57P01",
            "terminating connection due to administrator command",
        );
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.retry_after());
        assert_eq!(e.reason(), "unavailable");

        // A run past dunetrace.max_events_per_run: 413 with the extension's message.
        let e = rej(
            "54000",
            "dunetrace.ingest: batch rejected, nothing stored: event 0: its run would hold \
             10001 events, more than dunetrace.max_events_per_run (10000)",
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.body()["sqlstate"], "54000");
        assert!(e.body()["detail"]
            .as_str()
            .unwrap()
            .contains("max_events_per_run"));
        assert_eq!(e.reason(), "too_large");
        // An external service: 502, no details.
        let e = rej("38000", "apply_fix: Langfuse prompt fetch failed: HTTP 500");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(!e.body().to_string().contains("Langfuse"));
        assert_eq!(e.reason(), "external");
        // PostgreSQL (not the extension) refusing the gateway's role: a deployment problem.
        let e = rej("42501", "permission denied for function ingest");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body().to_string().contains("permission"));
        // The extension missing: 503, retry later.
        let e = ApiError::from(db::classify_raised("42883", "function does not exist"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_class_has_its_status_from_the_shared_table() {
        for class in ErrorClass::ALL {
            let e = ApiError::from(DbError::new(class, "m"));
            assert_eq!(e.status().as_u16(), class.http_status(), "{class}");
            assert_eq!(e.retry_after(), class.retryable(), "{class}");
            assert!(
                crate::metrics::REJECTION_REASONS.contains(&e.reason()),
                "{class}"
            );
        }
    }
}
