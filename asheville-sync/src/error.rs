//! The one error type of `asheville-sync`.
//!
//! Same shape as the other crates: a small `Copy` [`ErrorKind`] to match on,
//! a message a person can act on, `key: value` context (which job, which
//! source, which item) and the source error.

use std::borrow::Cow;
use std::fmt;

/// What kind of failure happened.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The job, source or tenant does not exist.
    NotFound,
    /// It exists already (a source registered twice).
    AlreadyExists,
    /// The caller passed something invalid (a name, a duration, a payload).
    InvalidInput,
    /// The job is not in a state that allows the operation (restarting a
    /// running job, acknowledging a job that is not running).
    Conflict,
    /// The worker's lease on the job expired or was taken over; the worker
    /// must stop working on it.
    LeaseLost,
    /// A payload version or source kind this build does not know.
    Unsupported,
    /// The job was cancelled while running.
    Cancelled,
    /// Worth retrying: a source or backend was unreachable for a moment.
    Transient,
    /// A source failed (listing, reading an item).
    Source,
    /// The repository failed (see the source error for its kind).
    Storage,
    /// The queue database or anything else.
    Other,
}

impl ErrorKind {
    /// A stable lowercase name (for JSON, logs, bindings).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Transient => "transient",
            ErrorKind::Source => "source",
            ErrorKind::Storage => "storage",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from `asheville-sync`.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

    /// Adds a `key: value` pair of context.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Sets the underlying error.
    pub fn set_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The value of one context key.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether running the same work again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Transient | ErrorKind::Source | ErrorKind::Other => true,
            ErrorKind::Storage => self
                .source
                .as_deref()
                .and_then(|s| s.downcast_ref::<asheville_storage::Error>())
                .is_none_or(|e| {
                    matches!(
                        e.kind(),
                        asheville_storage::ErrorKind::Transient
                            | asheville_storage::ErrorKind::Insufficient
                            | asheville_storage::ErrorKind::Other
                    )
                }),
            _ => false,
        }
    }

    pub(crate) fn db(
        what: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::new(ErrorKind::Other, what).set_source(e)
    }

    pub(crate) fn io(what: &'static str, e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Source,
        };
        Error::new(kind, what).set_source(e)
    }
}

impl From<asheville_storage::Error> for Error {
    fn from(e: asheville_storage::Error) -> Self {
        let kind = match e.kind() {
            asheville_storage::ErrorKind::NotFound => ErrorKind::NotFound,
            asheville_storage::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            asheville_storage::ErrorKind::Transient => ErrorKind::Transient,
            _ => ErrorKind::Storage,
        };
        Error::new(kind, "the repository failed").set_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for (k, v) in &self.context {
            write!(f, ", {k}: {v}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {self}", self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
