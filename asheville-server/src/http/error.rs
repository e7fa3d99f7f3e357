//! The server's error: an HTTP status, a stable code a client can match on,
//! and a message for a person. Every error leaves the server as
//! `{"error":{"code":"...","message":"..."}}`.

use std::fmt;

use asheville_storage::ErrorKind;
use hyper::StatusCode;

/// An error answered to a request.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`not_found`, `forbidden`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait before retrying (`429`, `503`).
    pub retry_after: Option<u64>,
    /// The methods a `405` path allows (its `Allow` header).
    pub allow: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with a status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `401 unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// `413 payload_too_large`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than this route's limit of {limit} bytes"),
        )
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl From<asheville_storage::Error> for ApiError {
    fn from(e: asheville_storage::Error) -> Self {
        use StatusCode as S;
        let (status, code) = match e.kind() {
            ErrorKind::NotFound => (S::NOT_FOUND, "not_found"),
            ErrorKind::AlreadyExists => (S::CONFLICT, "already_exists"),
            ErrorKind::Precondition => (S::PRECONDITION_FAILED, "precondition_failed"),
            ErrorKind::Transient => (S::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::Insufficient => (S::SERVICE_UNAVAILABLE, "insufficient_backends"),
            ErrorKind::InvalidInput => (S::BAD_REQUEST, "invalid_input"),
            ErrorKind::Unsupported => (S::BAD_REQUEST, "unsupported"),
            ErrorKind::QuotaExceeded => (S::FORBIDDEN, "quota_exceeded"),
            ErrorKind::Unauthenticated => (S::UNAUTHORIZED, "unauthenticated"),
            ErrorKind::Forbidden => (S::FORBIDDEN, "forbidden"),
            ErrorKind::Integrity => (S::INTERNAL_SERVER_ERROR, "integrity"),
            ErrorKind::WrongKey => (S::INTERNAL_SERVER_ERROR, "wrong_key"),
            ErrorKind::Permission => (S::INTERNAL_SERVER_ERROR, "backend_permission"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if status == S::SERVICE_UNAVAILABLE {
            err.retry_after = Some(1);
        }
        err
    }
}

impl From<asheville_sync::Error> for ApiError {
    fn from(e: asheville_sync::Error) -> Self {
        use StatusCode as S;
        let (status, code) = match e.kind() {
            asheville_sync::ErrorKind::NotFound => (S::NOT_FOUND, "not_found"),
            asheville_sync::ErrorKind::InvalidInput => (S::BAD_REQUEST, "invalid_input"),
            asheville_sync::ErrorKind::AlreadyExists => (S::CONFLICT, "already_exists"),
            asheville_sync::ErrorKind::Conflict => (S::CONFLICT, "conflict"),
            asheville_sync::ErrorKind::Unsupported => (S::BAD_REQUEST, "unsupported"),
            asheville_sync::ErrorKind::Transient => (S::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<asheville_core::Error> for ApiError {
    fn from(e: asheville_core::Error) -> Self {
        ApiError::from(asheville_storage::Error::from(e))
    }
}

/// The result of a handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
