//! The service's errors as clients see them: an HTTP status, a stable machine-readable
//! code, and a message, as a JSON body `{"error": {"code": …, "message": …}}`. Never an
//! image, never the request's bytes. It owns the mapping from the library's errors to
//! codes; it does not decide when an error happens.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Error;
use crate::image_io::DecodeError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, documented (README, "obscura serve"), for clients to branch on.
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 503s a client should retry.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required (Authorization: Bearer TOKEN)")
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "this token's scopes do not include this route")
    }

    pub fn busy(retry_after: u32) -> Self {
        ApiError { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "the service is at capacity; retry later") }
    }

    pub fn timeout() -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request did not finish within the service's deadline; nothing was kept")
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is over the limit of {limit} bytes"))
    }

    pub fn bad_option(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_option", message)
    }

    /// The reason label metrics count failures by.
    pub fn reason(&self) -> &'static str {
        self.code
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if matches!(e, Error::Detect(_) | Error::Redact(_) | Error::Encode(_) | Error::Worker(_)) {
            // The client gets a generic message; the cause (model, device, encoder; never
            // image data) is logged here, the one place it is still known.
            tracing::error!("anonymisation failed: {e}");
        }
        let unprocessable = |code, e: &dyn std::fmt::Display| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string());
        match &e {
            Error::Decode(DecodeError::Empty) => ApiError::new(StatusCode::BAD_REQUEST, "empty_body", e.to_string()),
            Error::Decode(DecodeError::UnsupportedFormat) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image", e.to_string()),
            Error::Decode(DecodeError::TooLarge { .. }) => unprocessable("too_many_pixels", &e),
            Error::Decode(DecodeError::TooManyFrames { .. }) => unprocessable("too_many_frames", &e),
            Error::Decode(DecodeError::Corrupt { .. }) => unprocessable("corrupt_image", &e),
            Error::Decode(DecodeError::Animated { .. }) => unprocessable("animated_image", &e),
            Error::Decode(DecodeError::Unsupported { .. }) => unprocessable("unsupported_image", &e),
            // The server lacks libheif: its operator's problem, not the client's file.
            Error::Decode(DecodeError::CodecMissing { .. }) => ApiError::new(StatusCode::NOT_IMPLEMENTED, "format_unavailable", e.to_string()),
            Error::Config(c) => ApiError::bad_option(c.to_string()),
            Error::ShuttingDown => ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", e.to_string()) },
            // Ours: detection, redaction, encoding or a worker failed. Fail closed.
            Error::Detect(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "detection_failed", "detection failed; nothing was kept"),
            Error::Redact(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "redaction_failed", "redaction failed; nothing was kept"),
            Error::Encode(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding_failed", "encoding failed; nothing was kept"),
            Error::Worker(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred; nothing was kept"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
