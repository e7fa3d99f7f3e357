//! Auth models: namespaced permissions with a trailing wildcard, and API
//! tokens (256-bit random secrets, shown once, stored only as a hash).
//!
//! A token looks like `ash_<id>_<secret>`: `id` (16 hex digits) finds the
//! stored record, `secret` (64 hex digits, 256 bits from the OS) is checked
//! against the stored BLAKE3 hash in constant time (`blake3::Hash`'s
//! equality is constant-time). A fast hash is right here: the secret has
//! 256 bits of entropy, so there is nothing to brute-force that a slow KDF
//! would protect.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A permission `service.action` (`storage.write`), or a grant with a
/// trailing wildcard (`storage.*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Permission(String);

impl Permission {
    /// Parses a permission or wildcard grant.
    pub fn parse(s: &str) -> Result<Permission> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidInput,
                "a permission is `service.action` (lowercase, digits, `_`), `service.*` or `*`",
            )
            .with_context("permission", s.escape_debug())
        };
        if s == "*" {
            return Ok(Permission(s.to_owned()));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() < 2 || s.len() > 64 {
            return Err(bad());
        }
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let word = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !(word || (last && *p == "*")) {
                return Err(bad());
            }
        }
        Ok(Permission(s.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this grant allows `wanted` (which must not be a wildcard).
    pub fn allows(&self, wanted: &Permission) -> bool {
        if wanted.0.ends_with('*') {
            return false;
        }
        match self.0.strip_suffix('*') {
            Some(prefix) => wanted.0.starts_with(prefix),
            None => self.0 == wanted.0,
        }
    }
}

impl TryFrom<String> for Permission {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Permission::parse(&s)
    }
}

impl From<Permission> for String {
    fn from(p: Permission) -> String {
        p.0
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The permissions the system knows (grants may use wildcards over them).
pub const KNOWN: &[&str] = &[
    "storage.read",
    "storage.write",
    "storage.delete",
    "sync.manage",
    "sync.read",
    "usage.read",
    "admin.tenants",
    "admin.tokens",
    "node.objects",
];

/// Whether any of `grants` allows `wanted`.
pub fn allowed(grants: &[Permission], wanted: &Permission) -> bool {
    grants.iter().any(|g| g.allows(wanted))
}

/// A token's public id (finds its record; not secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId(pub u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A token as the user holds it. Shown once; `Debug` hides the secret.
pub struct TokenSecret {
    id: TokenId,
    secret: [u8; 32],
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSecret({}, <redacted>)", self.id)
    }
}

impl Drop for TokenSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl TokenSecret {
    /// A new random token.
    pub fn generate() -> Result<TokenSecret> {
        let mut b = [0u8; 40];
        getrandom::fill(&mut b)
            .map_err(|e| Error::new(ErrorKind::Io, format!("the OS random source failed: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&b[8..]);
        zeroize::Zeroize::zeroize(&mut b);
        Ok(TokenSecret {
            id: TokenId(u64::from_be_bytes(id)),
            secret,
        })
    }

    /// Parses `ash_<id>_<secret>`.
    pub fn parse(s: &str) -> Result<TokenSecret> {
        let bad = || Error::new(ErrorKind::Unauthenticated, "malformed token");
        let rest = s.strip_prefix("ash_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id.len() != 16 || secret.len() != 64 {
            return Err(bad());
        }
        let id = u64::from_str_radix(id, 16).map_err(|_| bad())?;
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(secret.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(TokenSecret {
            id: TokenId(id),
            secret: out,
        })
    }

    /// The id.
    pub fn id(&self) -> TokenId {
        self.id
    }

    /// The text to give the user (once).
    pub fn reveal(&self) -> String {
        let mut s = format!("ash_{}_", self.id);
        for b in self.secret {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The hash to store.
    pub fn hash(&self) -> TokenHash {
        let mut h = blake3::Hasher::new_derive_key("asheville token v1");
        h.update(&self.id.0.to_be_bytes());
        h.update(&self.secret);
        TokenHash(*h.finalize().as_bytes())
    }

    /// Whether this token matches a stored hash, in constant time.
    pub fn matches(&self, stored: &TokenHash) -> bool {
        blake3::Hash::from_bytes(self.hash().0) == blake3::Hash::from_bytes(stored.0)
    }
}

/// The stored form of a token.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}
