//! The one error type of `asheville-core`.
//!
//! Rules (borrowed from OpenDAL and rustic_core):
//! - every failure is an [`Error`] with a [`ErrorKind`] a caller can `match` on;
//! - the message says what went wrong in words a person can act on, and
//!   [`Error::with_context`] adds the facts (which chunk, which shard, which
//!   parameter) as key/value pairs;
//! - nothing that input can reach panics: bad bytes, bad configs and bad
//!   passphrases all come back as errors;
//! - secrets never appear in a message or in context.

use std::borrow::Cow;
use std::fmt;

/// What kind of failure happened. Small, `Copy`, and meant to be matched on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A configuration value or combination is not allowed (chunk sizes,
    /// redundancy policy, placement weights, KDF parameters).
    InvalidConfig,
    /// Input bytes or text could not be parsed (an id, a header, a key file).
    InvalidInput,
    /// Data failed an integrity check: tampered, truncated, corrupted, or
    /// sealed for another chunk id.
    Integrity,
    /// A key or passphrase was rejected (the data itself may be intact).
    WrongKey,
    /// Not enough healthy shards or backends to do what was asked.
    Insufficient,
    /// The input uses a format version or feature this build does not know.
    Unsupported,
    /// Reading from a caller-supplied stream failed.
    Io,
    /// A write would pass a tenant's quota.
    QuotaExceeded,
    /// No valid credentials (unknown, expired or revoked token).
    Unauthenticated,
    /// Valid credentials without the needed permission.
    Forbidden,
}

impl ErrorKind {
    /// A stable, lowercase name for the kind (used in logs, JSON and bindings).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Integrity => "integrity",
            ErrorKind::WrongKey => "wrong_key",
            ErrorKind::Insufficient => "insufficient",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from `asheville-core`: a kind, a message, context and a source.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Adds a `key = value` fact to the error.
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Sets the underlying cause.
    #[must_use]
    pub fn set_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `key = value` facts attached to the error.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Takes the underlying cause out (for wrapping this error into another
    /// crate's error without printing the message twice).
    pub fn take_source(&mut self) -> Option<Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.source.take()
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
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug shows the same text as Display: it is what `unwrap` and
        // `main() -> Result` print, and it must be readable.
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

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_message_context_and_source() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::Io, "reading the input failed")
            .with_context("offset", 42)
            .with_context("chunk", "abc")
            .set_source(io);
        assert_eq!(
            e.to_string(),
            "io: reading the input failed (offset: 42, chunk: abc): disk on fire"
        );
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(std::error::Error::source(&e).is_some());
    }
}
