//! Paths in a tenant's namespace.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// A normalised path inside one tenant's namespace.
///
/// Invariants (as object_store's `Path`): `/`-delimited; no leading or
/// trailing `/`; no empty, `.` or `..` segments; no NUL or control
/// characters; at most 4096 bytes. The root is the empty path. A path can
/// never name anything outside its tenant: there is no syntax for it.
/// Input is normalised: `"/a//b/"` becomes `a/b`; `..` is rejected rather
/// than resolved, so a path never silently means something else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RepoPath(String);

impl RepoPath {
    /// Longest path in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<RepoPath> {
        let bad = |why: &str| {
            Error::new(ErrorKind::InvalidInput, format!("invalid path: {why}"))
                .with_context("path", s.escape_debug())
        };
        let mut out = String::with_capacity(s.len());
        for seg in s.split('/') {
            match seg {
                "" => continue,
                "." | ".." => return Err(bad("`.` and `..` segments are not allowed")),
                _ => {}
            }
            if seg.chars().any(|c| c.is_control()) {
                return Err(bad("control characters are not allowed"));
            }
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(seg);
        }
        if out.len() > Self::MAX_LEN {
            return Err(bad("longer than 4096 bytes"));
        }
        Ok(RepoPath(out))
    }

    /// The root.
    pub fn root() -> RepoPath {
        RepoPath(String::new())
    }

    /// The path as a string (no leading `/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.matches('/').count() + 1
        }
    }

    /// `self/child` for an already-normalised relative `child`.
    pub fn join(&self, child: &str) -> Result<RepoPath> {
        RepoPath::parse(&format!("{}/{}", self.0, child))
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl std::str::FromStr for RepoPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RepoPath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(RepoPath::parse("/a//b/").unwrap().as_str(), "a/b");
        assert_eq!(RepoPath::parse("").unwrap(), RepoPath::root());
        assert_eq!(RepoPath::parse("/").unwrap().depth(), 0);
        assert_eq!(RepoPath::parse("a/b/c").unwrap().depth(), 3);
        for bad in ["a/../b", "..", "./a", "a\0b", "a\nb"] {
            assert_eq!(
                RepoPath::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert!(RepoPath::parse(&"x".repeat(5000)).is_err());
    }
}
