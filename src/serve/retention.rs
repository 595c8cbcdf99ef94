//! The retention and erasure routes (with the `retention` feature, when the service is
//! given a catalog and policy): register uploads, carry out unsubscribe and erasure
//! requests, report status and plan, verify the audit log. Each is one call of
//! [`Retention`](crate::retention::Retention); it owns only the HTTP side (paths, bodies,
//! error codes), and answers in the same shape as `obscura retention … --json`.
//!
//! | route | scope |
//! |---|---|
//! | `POST /v1/uploads` (a JSON upload, or JSON lines of them, one transaction) | `retention` |
//! | `POST /v1/subjects/{id}/unsubscribe` | `retention` |
//! | `POST /v1/subjects/{id}/erase` | `retention` |
//! | `GET /v1/subjects/{id}/export` (a tar of the person's uploads and `manifest.json`) | `retention` |
//! | `DELETE /v1/uploads/{id}` | `retention` |
//! | `GET /v1/retention/status` | `retention` |
//! | `GET /v1/retention/plan?horizon=7d&limit=50` | `retention` |
//! | `GET /v1/audit/verify` | `admin` |
//!
//! An erasure answers when the objects are gone (or reports what is held or pending),
//! like the CLI. Subject ids are never logged.

use std::collections::HashMap;
use std::time::Instant;

use axum::{Json, Router};
use futures::StreamExt;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use super::api::{State, answer, authorize};
use super::auth::Scope;
use super::error::ApiError;
use crate::retention::{NewUpload, RetentionError};

/// The retention routes, merged into the API's router when a catalog is configured.
pub fn routes() -> Router<State> {
    Router::new()
        .route("/v1/uploads", post(register))
        .route("/v1/uploads/{id}", delete(erase_upload))
        .route("/v1/subjects/{id}/unsubscribe", post(unsubscribe))
        .route("/v1/subjects/{id}/erase", post(erase_subject))
        .route("/v1/subjects/{id}/export", get(export))
        .route("/v1/retention/status", get(status))
        .route("/v1/retention/plan", get(plan))
        .route("/v1/audit/verify", get(verify))
}

impl From<RetentionError> for ApiError {
    fn from(e: RetentionError) -> Self {
        let (status, code) = match &e {
            RetentionError::UnknownClass(_) | RetentionError::InvalidUpload { .. } | RetentionError::Config(_) => (StatusCode::BAD_REQUEST, "invalid_upload"),
            RetentionError::UnknownSubject(_) => (StatusCode::NOT_FOUND, "unknown_subject"),
            RetentionError::UnknownUpload(_) => (StatusCode::NOT_FOUND, "unknown_upload"),
            RetentionError::Duplicate { .. } => (StatusCode::CONFLICT, "duplicate_upload"),
            RetentionError::Unsubscribed(_) => (StatusCode::CONFLICT, "subject_unsubscribed"),
            RetentionError::Erased => (StatusCode::CONFLICT, "subject_erased"),
            RetentionError::ExportNotEmpty(_) => (StatusCode::CONFLICT, "export_not_empty"),
            RetentionError::Residency { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "residency"),
            RetentionError::Store(crate::store::StoreError::Link { .. }) => (StatusCode::CONFLICT, "symbolic_link"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "retention_failed"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Runs one retention call for `route`: authorises, counts, maps errors.
async fn call<F, T>(state: &State, route: &'static str, headers: &HeaderMap, scope: Scope, f: F) -> Response
where
    F: AsyncFnOnce(&crate::retention::Retention) -> Result<T, ApiError>,
    T: IntoResponse,
{
    let started = Instant::now();
    let result = match (authorize(state, headers, scope), state.retention()) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "this service has no retention catalog")),
        (Ok(()), Some(retention)) => f(retention).await.map(IntoResponse::into_response),
    };
    answer(state, route, started, result)
}

async fn register(Extract(state): Extract<State>, headers: HeaderMap, body: Bytes) -> Response {
    call(&state, "/v1/uploads", &headers, Scope::Retention, async |r| {
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_upload", "the body is not UTF-8 JSON"))?;
        let uploads: Vec<NewUpload> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(n, line)| serde_json::from_str(line).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_upload", format!("line {}: {e}", n + 1))))
            .collect::<Result<_, _>>()?;
        if uploads.is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_upload", "no upload in the body (a JSON object, or JSON lines)"));
        }
        // Only the configured stores: a token must not be able to have arbitrary files purged.
        let allowed = &state.settings().stores;
        if let Some(u) = uploads.iter().find(|u| !allowed.contains(&u.store)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "store_not_allowed",
                format!("upload {:?}: its store is not one this service registers uploads in (serve.stores / --allow-store)", u.id.chars().take(64).collect::<String>()),
            ));
        }
        r.register_many(&uploads).await?;
        Ok(Json(serde_json::json!({ "registered": uploads.len() })))
    })
    .await
}

async fn unsubscribe(Extract(state): Extract<State>, headers: HeaderMap, Path(subject): Path<String>) -> Response {
    call(&state, "/v1/subjects/{id}/unsubscribe", &headers, Scope::Retention, async |r| Ok(Json(r.unsubscribe(&subject).await?))).await
}

async fn erase_subject(Extract(state): Extract<State>, headers: HeaderMap, Path(subject): Path<String>) -> Response {
    call(&state, "/v1/subjects/{id}/erase", &headers, Scope::Retention, async |r| Ok(Json(r.erase_subject(&subject).await?))).await
}

async fn erase_upload(Extract(state): Extract<State>, headers: HeaderMap, Path(upload): Path<String>) -> Response {
    call(&state, "/v1/uploads/{id}", &headers, Scope::Retention, async |r| Ok(Json(r.erase_upload(&upload).await?))).await
}

/// Access request: the person's uploads and the export's `manifest.json` as a tar archive,
/// streamed: one upload is read at a time and goes out as it is read, so an export of any
/// size holds about one photo in memory, and none touches this machine's disk. Every
/// upload is checked before the answer starts, so an export refused (unknown subject, a
/// key that is a symbolic link) gets its error status; a store failing later cuts the
/// archive short (no end-of-archive blocks, the connection is reset), which every tar
/// reader reports.
async fn export(Extract(state): Extract<State>, headers: HeaderMap, Path(subject): Path<String>) -> Response {
    call(&state, "/v1/subjects/{id}/export", &headers, Scope::Retention, async |r| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, RetentionError>>(2);
        let retention = r.clone();
        tokio::spawn(async move {
            let mtime = (crate::retention::now_ms() / 1000).max(0) as u64;
            let result = retention
                .export_with(&subject, |file: String, bytes: Bytes| {
                    let tx = tx.clone();
                    async move {
                        // Header, data (not copied), padding: one photo in memory at a time.
                        let size = bytes.len() as u64;
                        let header = Bytes::from(super::tar::entry_header(&file, size, mtime));
                        for chunk in [header, bytes, Bytes::from_static(super::tar::padding(size))] {
                            tx.send(Ok(chunk)).await.map_err(|_| RetentionError::Io("the client stopped reading the export".into()))?;
                        }
                        Ok(())
                    }
                })
                .await;
            let last = result.map(|_| {
                let mut end = Vec::new();
                super::tar::finish(&mut end);
                Bytes::from(end)
            });
            let _ = tx.send(last).await;
        });
        let first = match rx.recv().await {
            Some(Ok(first)) => first,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "retention_failed", "the export stopped")),
        };
        let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let body = futures::stream::once(async { Ok(first) }).chain(rest).map(|item| item.map_err(std::io::Error::other));
        let headers = [
            (axum::http::header::CONTENT_TYPE, "application/x-tar"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"export.tar\""),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ];
        Ok((headers, axum::body::Body::from_stream(body)))
    })
    .await
}

async fn status(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    call(&state, "/v1/retention/status", &headers, Scope::Retention, async |r| Ok(Json(r.status().await?))).await
}

async fn plan(Extract(state): Extract<State>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    call(&state, "/v1/retention/plan", &headers, Scope::Retention, async |r| {
        let mut horizon = std::time::Duration::ZERO;
        let mut limit = 50;
        for (name, value) in &query {
            match name.as_str() {
                "horizon" => horizon = humantime::parse_duration(value).map_err(|e| ApiError::bad_option(format!("horizon={value:?}: {e}")))?,
                "limit" => limit = value.parse().map_err(|_| ApiError::bad_option(format!("limit={value:?}: expected a number")))?,
                _ => return Err(ApiError::bad_option(format!("unknown option {name:?}"))),
            }
        }
        Ok(Json(r.plan(horizon, limit).await?))
    })
    .await
}

async fn verify(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    call(&state, "/v1/audit/verify", &headers, Scope::Admin, async |r| {
        let verdict = r.verify_audit().await?;
        Ok(Json(serde_json::json!({ "intact": verdict.intact(), "records": verdict.records, "broken_at": verdict.broken_at, "problem": verdict.problem })))
    })
    .await
}
