//! The routes: what each accepts, which scope it needs, what it returns. It owns request
//! parsing (query options, body limits, deadlines) and responses; it does not own
//! anonymisation, tokens or the metric names.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process is up |
//! | `GET /readyz` | none | models loaded and accepting requests (503 while shutting down, while the catalog is unreachable, or while the scheduler `--scheduler` asked for is not running) |
//! | `GET /openapi.json` | none | this table and the options, as OpenAPI 3.1 |
//! | `POST /v1/anonymise` | `anonymise` | body: an image; returns it anonymised, same format (HEIC and AVIF as JPEG; or `?format=`), or with `?report=json` the report instead |
//! | `POST /v1/detect` | `anonymise` | body: an image; returns the detections and regions as JSON (and per frame, for an animation), no pixels |
//!
//! Query options, with the CLI's names: `style`, `person_style` (`keep` too), `text_style`, `shape`,
//! `padding`, `targets` (a subset of the service's), `threshold` (at least the
//! service's), `format` (`jpeg`, `png`, `webp`, `gif`, `tiff`), `report=json`. An unknown option is an
//! error, not ignored: a typo must not silently weaken the redaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use super::ServeSettings;
use super::auth::{Scope, Tokens, Verdict};
use super::error::ApiError;
use super::metrics::Metrics;
use crate::config::Choice;
use crate::detect::Class;
use crate::image_io::Format;
use crate::redact::{Shape, Style};
use crate::{Anonymized, Anonymizer, Options};

/// The API's description (OpenAPI 3.1), served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler shares.
#[derive(Clone)]
pub struct State(Arc<Inner>);

struct Inner {
    anonymizer: Anonymizer,
    tokens: Tokens,
    #[cfg(feature = "retention")]
    retention: Option<crate::retention::Retention>,
    #[cfg(feature = "retention")]
    scheduler: Option<Arc<super::scheduler::SchedulerHealth>>,
    settings: ServeSettings,
    metrics: Arc<Metrics>,
    /// Admission: workers plus queue; a request that gets no slot is refused at once.
    slots: Arc<Semaphore>,
    workers: usize,
    accepting: AtomicBool,
}

impl State {
    pub fn new(backends: super::Backends, settings: ServeSettings, metrics: Arc<Metrics>) -> State {
        let workers = settings.workers();
        let slots = Arc::new(Semaphore::new(workers + settings.queue_depth()));
        let super::Backends { anonymizer, tokens, #[cfg(feature = "retention")] retention, #[cfg(feature = "retention")] scheduler } = backends;
        State(Arc::new(Inner {
            anonymizer,
            tokens,
            #[cfg(feature = "retention")]
            retention,
            #[cfg(feature = "retention")]
            scheduler,
            settings,
            metrics,
            slots,
            workers,
            accepting: AtomicBool::new(true),
        }))
    }

    /// The retention catalog, when the service has one.
    #[cfg(feature = "retention")]
    pub(crate) fn retention(&self) -> Option<&crate::retention::Retention> {
        self.0.retention.as_ref()
    }

    #[cfg(feature = "retention")]
    pub(crate) fn settings(&self) -> &ServeSettings {
        &self.0.settings
    }

    /// From now on `/readyz` says 503, so load balancers stop sending requests.
    pub fn stop_accepting(&self) {
        self.0.accepting.store(false, Ordering::SeqCst);
    }

    fn admitted(&self) -> usize {
        self.0.workers + self.0.settings.queue_depth() - self.0.slots.available_permits()
    }
}

/// The API's routes.
pub fn router(state: State) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/anonymise", post(anonymise))
        .route("/v1/anonymize", post(anonymise))
        .route("/v1/detect", post(detect));
    #[cfg(feature = "retention")]
    let router = if state.0.retention.is_some() { router.merge(super::retention::routes()) } else { router };
    let limit = state.0.settings.max_body_bytes;
    router
        // Extractors that read bodies (JSON lines, forms) get the service's limit, not axum's 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method") })
        .with_state(state)
}

/// The metrics listener's one route.
pub fn metrics_router(state: State) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(state): axum::extract::State<State>| async move {
                let admitted = state.admitted() as i64;
                let workers = state.0.workers as i64;
                state.0.metrics.in_flight.store(admitted.min(workers), Ordering::Relaxed);
                state.0.metrics.queued.store((admitted - workers).max(0), Ordering::Relaxed);
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.0.metrics.render())
            }),
        )
        .with_state(state)
}

async fn readyz(axum::extract::State(state): axum::extract::State<State>) -> Response {
    if !state.0.accepting.load(Ordering::SeqCst) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the service is shutting down").into_response();
    }
    #[cfg(feature = "retention")]
    if let Some(retention) = &state.0.retention {
        if let Err(e) = retention.ping().await {
            tracing::warn!("readyz: the retention catalog is unreachable: {e}");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "catalog_unreachable", "the retention catalog is unreachable").into_response();
        }
    }
    #[cfg(feature = "retention")]
    if let Some(why) = state.0.scheduler.as_ref().and_then(|s| s.not_running()) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "scheduler_not_running", format!("the retention scheduler is not running: {why}")).into_response();
    }
    "ready\n".into_response()
}

async fn anonymise(state: axum::extract::State<State>, query: Query<Vec<(String, String)>>, request: Request) -> Response {
    image_route(state.0, "/v1/anonymise", query.0, request, true).await
}

async fn detect(state: axum::extract::State<State>, query: Query<Vec<(String, String)>>, request: Request) -> Response {
    image_route(state.0, "/v1/detect", query.0, request, false).await
}

/// Authenticates, parses the options, admits, reads the body, anonymises, and counts.
async fn image_route(state: State, route: &'static str, query: Vec<(String, String)>, request: Request, pixels: bool) -> Response {
    let started = Instant::now();
    let result = image_request(&state, query, request, pixels).await;
    answer(&state, route, started, result)
}

/// Every route's last step: the response, or the error as its JSON body; both counted in
/// the metrics, and our own failures logged by route and code (not by message: a message
/// may quote a client's input; the library error behind a 5xx is logged where it is
/// mapped, see `error.rs`).
pub(crate) fn answer(state: &State, route: &'static str, started: Instant, result: Result<Response, ApiError>) -> Response {
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            state.0.metrics.failure(e.reason());
            if e.status.is_server_error() && !matches!(e.code, "busy" | "timeout" | "shutting_down") {
                tracing::error!(route, code = e.code, "request failed");
            }
            e.into_response()
        }
    };
    state.0.metrics.request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn image_request(state: &State, query: Vec<(String, String)>, request: Request, pixels: bool) -> Result<Response, ApiError> {
    // Anonymous callers learn nothing and send nothing more: no body is read for them.
    authorize(state, request.headers(), Scope::Anonymise)?;
    let limit = state.0.settings.max_body_bytes;
    if content_length(request.headers()).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let admitted = parse_options(state, &query, pixels)
        .and_then(|options| state.0.slots.clone().try_acquire_owned().map(|slot| (options, slot)).map_err(|_| ApiError::busy(1)));
    let ((options, report_only), slot) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // Refused before the body was read: read and drop it (within the limit, for a
            // few seconds at most) so the client gets this answer, not a reset connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), axum::body::to_bytes(request.into_body(), limit)).await;
            return Err(e);
        }
    };
    let deadline = Duration::from_secs_f64(state.0.settings.request_timeout_secs);
    let state_for_work = state.clone();
    // The work runs as a task that holds the admission slot until the image is really
    // done: a request past its deadline is answered at once, but the CPU it started keeps
    // its slot (and shows in the metrics) until it ends, so timed-out work cannot pile up
    // behind the queue's back.
    let work = tokio::spawn(async move {
        let _slot = slot;
        let state = state_for_work;
        let (parts, body) = request.into_parts();
        // Reading the body stops at the deadline too (a client that never finishes must
        // not keep the slot); only the image's processing, once started, runs to its end.
        let body = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await.map_err(|_| ApiError::timeout())?.map_err(|e| {
            if over_limit(&e) {
                ApiError::too_large(limit)
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "body_read_failed", format!("reading the request body: {e}"))
            }
        })?;
        let image = if is_multipart(&parts.headers) { file_part(parts, body).await? } else { body.to_vec() };
        Ok::<_, ApiError>(state.0.anonymizer.anonymize_with_async(image, options).await?)
    });
    let out = tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| ApiError::timeout())?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("worker task: {e}")))??;
    record(state, &out);
    Ok(if !pixels {
        let r = &out.report;
        axum::Json(Detected { width: r.width, height: r.height, orientation: r.orientation, detections: &r.detections, regions: &r.regions, frames: &r.frames, models: &r.models })
            .into_response()
    } else if report_only {
        axum::Json(&out.report).into_response()
    } else {
        image_response(out)
    })
}

/// What `POST /v1/detect` returns: the report without timings, and no pixels.
#[derive(serde::Serialize)]
struct Detected<'a> {
    width: u32,
    height: u32,
    orientation: u8,
    detections: &'a [crate::detect::Detection],
    regions: &'a [crate::redact::Region],
    /// Each frame's, for an animation or a multi-page TIFF.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    frames: &'a [crate::pipeline::FrameReport],
    models: &'a [crate::detect::ModelInfo],
}

/// The anonymised image, with what was done in headers.
fn image_response(out: Anonymized) -> Response {
    let models: Vec<String> = out.report.models.iter().map(|m| format!("{}@{}", m.name, &m.sha256[..m.sha256.len().min(12)])).collect();
    let mut response = Response::new(Body::from(out.bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(out.format.mime()));
    headers.insert("x-obscura-regions", HeaderValue::from(out.report.regions.len()));
    if let Ok(v) = HeaderValue::from_str(&models.join(", ")) {
        headers.insert("x-obscura-models", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn record(state: &State, out: &Anonymized) {
    let m = &state.0.metrics;
    let t = &out.report.timings_ms;
    for (stage, ms) in [("decode", t.decode), ("detect", t.detect), ("redact", t.redact), ("encode", t.encode)] {
        m.stage(stage, ms);
    }
    for &class in Class::ALL {
        let n = out.report.regions.iter().filter(|r| r.class == class).count() as u64;
        if n > 0 {
            m.regions(&class.name(), n);
        }
    }
}

pub(crate) fn authorize(state: &State, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    match state.0.tokens.check(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes), scope) {
        Verdict::Allowed => Ok(()),
        Verdict::Unauthenticated => Err(ApiError::unauthorized()),
        Verdict::Forbidden => Err(ApiError::forbidden()),
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// The one file of a `multipart/form-data` body (browsers and HTML forms), already read
/// within the body limit. Any other field is refused (options go in the query string,
/// where they are checked), and so are two files (one image per request, so that no
/// upload is silently left out).
async fn file_part(parts: axum::http::request::Parts, body: axum::body::Bytes) -> Result<Vec<u8>, ApiError> {
    use axum::extract::FromRequest;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", message);
    // The router's `DefaultBodyLimit` (set to `max_body_bytes`) travels in `parts`.
    let request = Request::from_parts(parts, Body::from(body));
    let mut multipart = axum::extract::Multipart::from_request(request, &()).await.map_err(|e| bad(e.body_text()))?;
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(|e| bad(e.body_text()))? {
        if field.file_name().is_none() {
            // An option sent as a form field would be silently ignored: refuse it.
            let name = field.name().unwrap_or_default().chars().take(64).collect::<String>();
            return Err(bad(format!("form field {name:?} is not a file; options go in the query string (e.g. ?style=fill)")));
        }
        if file.is_some() {
            return Err(bad("more than one file part: send one image per request".into()));
        }
        file = Some(field.bytes().await.map_err(|e| bad(e.body_text()))?.to_vec());
    }
    file.ok_or_else(|| bad("no file part (a field with a filename) in the form".into()))
}

/// Whether reading a body failed on the size limit (a body without a length, streamed).
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The query options as library [`Options`], and whether only the report is wanted.
fn parse_options(state: &State, query: &[(String, String)], pixels: bool) -> Result<(Options, bool), ApiError> {
    let configured = state.0.anonymizer.config();
    let mut options = Options::default();
    let mut redact = configured.redact.clone();
    let mut redact_changed = false;
    let mut report_only = false;
    let choice = |name: &str, value: &str, allowed: &[String]| ApiError::bad_option(format!("{name}={:?}: expected one of {}", shorten(value), allowed.join(", ")));
    let mut seen = std::collections::HashSet::new();
    for (name, value) in query {
        // Twice the same option: which one a proxy checked and which one applies could differ.
        if !seen.insert(name.as_str()) {
            return Err(ApiError::bad_option(format!("option {:?} is given twice", shorten(name))));
        }
        match name.as_str() {
            "style" => {
                redact.style = Style::of_kind(value).ok_or_else(|| choice(name, value, &kinds()))?;
                redact_changed = true;
            }
            "person_style" => {
                redact.person_style = match value.as_str() {
                    "keep" => None,
                    other => Some(Style::of_kind(other).ok_or_else(|| choice(name, value, &[kinds(), vec!["keep".into()]].concat()))?),
                };
                redact_changed = true;
            }
            "text_style" => {
                redact.text_style = Style::of_kind(value).ok_or_else(|| choice(name, value, &kinds()))?;
                redact_changed = true;
            }
            "shape" => {
                redact.shape = Shape::from_name(value).ok_or_else(|| choice(name, value, &names::<Shape>()))?;
                redact_changed = true;
            }
            "padding" => {
                redact.padding = value.parse().map_err(|_| ApiError::bad_option(format!("padding={value:?}: expected a number")))?;
                redact_changed = true;
            }
            "targets" => {
                let targets = value.split(',').map(|t| Class::from_name(t.trim()).ok_or_else(|| choice(name, t, &names::<Class>()))).collect::<Result<Vec<_>, _>>()?;
                options.targets = Some(targets);
            }
            "threshold" => {
                options.threshold = Some(value.parse().map_err(|_| ApiError::bad_option(format!("threshold={value:?}: expected a number")))?);
            }
            "format" if pixels => {
                // Only the formats Obscura writes (a HEIC or AVIF input comes out as JPEG).
                let names: Vec<String> = Format::ALL.iter().filter(|f| f.writable()).map(|f| f.name().to_ascii_lowercase()).collect();
                options.format = Some(Format::from_extension(value).filter(|f| f.writable()).ok_or_else(|| choice(name, value, &names))?);
            }
            "report" if pixels => match value.as_str() {
                "json" => report_only = true,
                _ => return Err(choice(name, value, &["json".into()])),
            },
            _ => return Err(ApiError::bad_option(format!("unknown option {:?}", shorten(name)))),
        }
    }
    if redact_changed {
        options.redact = Some(redact);
    }
    state.0.anonymizer.check(&options).map_err(|e| ApiError::bad_option(e.to_string()))?;
    Ok((options, report_only))
}

/// A client's value as error messages quote it: at most 64 characters.
fn shorten(value: &str) -> String {
    let mut s: String = value.chars().take(64).collect();
    if s.len() < value.len() {
        s.push('…');
    }
    s
}

fn kinds() -> Vec<String> {
    Style::DEFAULTS.iter().map(|s| s.kind().to_string()).collect()
}

fn names<T: Choice>() -> Vec<String> {
    T::ALL.iter().map(|v| v.name()).collect()
}
