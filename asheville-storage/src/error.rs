//! The one error type of `asheville-storage`.
//!
//! Same rules as `asheville-core`: a small `Copy` [`ErrorKind`] to match
//! on, a message a person can act on, `key: value` context (which backend,
//! which object, which path), and the source. Core errors convert with
//! their kind mapped; backend errors keep the backend's name.

use std::borrow::Cow;
use std::fmt;

/// What kind of failure happened.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object, file, version or tenant does not exist.
    NotFound,
    /// It exists already (create-only writes, a tenant created twice).
    AlreadyExists,
    /// A conditional request's precondition failed.
    Precondition,
    /// Worth retrying: timeouts, connection resets, 5xx, throttling.
    Transient,
    /// The backend refused our credentials or permissions.
    Permission,
    /// The caller passed something invalid (a path, a range, a config).
    InvalidInput,
    /// Stored data failed verification and could not be recovered.
    Integrity,
    /// Not enough healthy backends or shards for the operation.
    Insufficient,
    /// Wrong key or passphrase.
    WrongKey,
    /// The operation or format is not supported.
    Unsupported,
    /// A write would pass a tenant's quota (nothing was written).
    QuotaExceeded,
    /// No valid credentials (unknown, expired or revoked token).
    Unauthenticated,
    /// Valid credentials without the needed permission.
    Forbidden,
    /// Anything else (local I/O, catalog database).
    Other,
}

impl ErrorKind {
    /// A stable lowercase name (for JSON, logs, bindings).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Precondition => "precondition",
            ErrorKind::Transient => "transient",
            ErrorKind::Permission => "permission",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Insufficient => "insufficient",
            ErrorKind::WrongKey => "wrong_key",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from `asheville-storage`.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Adds a `key: value` fact.
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Sets the cause.
    #[must_use]
    pub fn set_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The value of context `key`, if present.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Wraps a local I/O error.
    pub fn io(what: &'static str, e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Permission,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Other,
        };
        Error::new(kind, what).set_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<asheville_core::Error> for Error {
    fn from(mut e: asheville_core::Error) -> Self {
        use asheville_core::ErrorKind as K;
        let kind = match e.kind() {
            K::InvalidConfig | K::InvalidInput => ErrorKind::InvalidInput,
            K::Integrity => ErrorKind::Integrity,
            K::WrongKey => ErrorKind::WrongKey,
            K::Insufficient => ErrorKind::Insufficient,
            K::Unsupported => ErrorKind::Unsupported,
            K::QuotaExceeded => ErrorKind::QuotaExceeded,
            K::Unauthenticated => ErrorKind::Unauthenticated,
            K::Forbidden => ErrorKind::Forbidden,
            _ => ErrorKind::Other,
        };
        let mut out = Error::new(kind, e.message().to_owned());
        out.context = e.context().to_vec();
        out.source = e.take_source();
        out
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::new(ErrorKind::Other, "catalog database error").set_source(e)
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
