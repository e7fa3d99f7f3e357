//! The durable side of auth: tenants, users and API tokens in a redb file,
//! and [`AuthStore::authorize`], the one call every API request makes.
//!
//! Tokens are stored only as hashes (see `asheville_core::auth`); the
//! secret is returned once, by [`AuthStore::create_token`]. A token carries
//! grants, each a permission (wildcards allowed) within one tenant, or
//! within every tenant (`"*"`, for operators).

use std::path::Path;

use asheville_core::auth::{Permission, TokenHash, TokenId, TokenSecret, allowed};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

const TENANTS: TableDefinition<&str, i64> = TableDefinition::new("tenants");
/// tenant \0 user -> created
const USERS: TableDefinition<&str, i64> = TableDefinition::new("users");
/// id -> TokenRecord (JSON)
const TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("tokens");

/// A permission within a tenant (`"*"`: every tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Tenant name, or `"*"`.
    pub tenant: String,
    /// Permission or wildcard.
    pub permission: Permission,
}

impl Grant {
    /// A grant in one tenant.
    pub fn new(tenant: &str, permission: &str) -> Result<Grant> {
        Ok(Grant {
            tenant: tenant.to_owned(),
            permission: Permission::parse(permission)?,
        })
    }
}

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Id.
    pub id: TokenId,
    /// The tenant the token belongs to.
    pub tenant: String,
    /// The user it acts as.
    pub user: String,
    /// A label.
    pub name: String,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// Created (ns).
    pub created_ns: i64,
    /// Expires (ns), if ever.
    pub expires_ns: Option<i64>,
    /// Revoked (ns), if so.
    pub revoked_ns: Option<i64>,
    hash: TokenHash,
}

/// Who a request is, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's tenant.
    pub tenant: String,
    /// The token's user.
    pub user: String,
    /// The token.
    pub token: TokenId,
}

/// Tenants, users and tokens.
#[derive(Debug)]
pub struct AuthStore {
    db: Database,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::new(ErrorKind::Other, "auth encode").set_source(e))
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| {
        Error::new(ErrorKind::Integrity, "an auth record does not decode").set_source(e)
    })
}

fn check_name(what: &'static str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("a {what} name is 1-64 of A-Z a-z 0-9 - _ . @"),
        )
        .with_context(what, s.escape_debug()))
    }
}

impl AuthStore {
    /// Opens (or creates) the store.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| {
            Error::new(ErrorKind::Other, "cannot open the auth store")
                .with_context("file", path.display())
                .set_source(e)
        })?;
        let w = db.begin_write()?;
        w.open_table(TENANTS)?;
        w.open_table(USERS)?;
        w.open_table(TOKENS)?;
        w.commit()?;
        Ok(AuthStore { db })
    }

    /// Adds a tenant.
    pub fn create_tenant(&self, name: &str, now: i64) -> Result<()> {
        check_name("tenant", name)?;
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(TENANTS)?;
            if t.get(name)?.is_some() {
                return Err(Error::new(ErrorKind::AlreadyExists, "the tenant exists")
                    .with_context("tenant", name));
            }
            t.insert(name, now)?;
        }
        w.commit()?;
        Ok(())
    }

    /// Whether the tenant exists (one lookup).
    pub fn has_tenant(&self, name: &str) -> Result<bool> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(TENANTS)?.get(name)?.is_some())
    }

    /// Tenant names in order.
    pub fn tenants(&self) -> Result<Vec<String>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TENANTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(item?.0.value().to_owned());
        }
        Ok(out)
    }

    /// Adds a user to a tenant (idempotent).
    pub fn create_user(&self, tenant: &str, user: &str, now: i64) -> Result<()> {
        check_name("user", user)?;
        let w = self.db.begin_write()?;
        {
            if w.open_table(TENANTS)?.get(tenant)?.is_none() {
                return Err(Error::new(ErrorKind::NotFound, "no such tenant")
                    .with_context("tenant", tenant));
            }
            let mut u = w.open_table(USERS)?;
            let k = format!("{tenant}\0{user}");
            if u.get(k.as_str())?.is_none() {
                u.insert(k.as_str(), now)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Makes a token for `user` of `tenant`. The secret is in the returned
    /// [`TokenSecret`] only; show it once.
    pub fn create_token(
        &self,
        tenant: &str,
        user: &str,
        name: &str,
        grants: Vec<Grant>,
        expires_ns: Option<i64>,
        now: i64,
    ) -> Result<(TokenSecret, TokenRecord)> {
        let secret = TokenSecret::generate()?;
        let rec = TokenRecord {
            id: secret.id(),
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            grants,
            created_ns: now,
            expires_ns,
            revoked_ns: None,
            hash: secret.hash(),
        };
        let w = self.db.begin_write()?;
        {
            if w.open_table(USERS)?
                .get(format!("{tenant}\0{user}").as_str())?
                .is_none()
            {
                return Err(
                    Error::new(ErrorKind::NotFound, "no such user in the tenant")
                        .with_context("tenant", tenant)
                        .with_context("user", user),
                );
            }
            let mut t = w.open_table(TOKENS)?;
            if t.get(rec.id.0)?.is_some() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "token id collision; retry",
                ));
            }
            t.insert(rec.id.0, enc(&rec)?.as_slice())?;
        }
        w.commit()?;
        Ok((secret, rec))
    }

    /// A tenant's tokens.
    pub fn tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let rec: TokenRecord = dec(item?.1.value())?;
            if rec.tenant == tenant {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Revokes a token of `tenant`.
    pub fn revoke(&self, tenant: &str, id: TokenId, now: i64) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(TOKENS)?;
            let mut rec: TokenRecord = match t.get(id.0)? {
                Some(v) => dec(v.value())?,
                None => return Err(Error::new(ErrorKind::NotFound, "no such token")),
            };
            if rec.tenant != tenant {
                return Err(Error::new(ErrorKind::NotFound, "no such token"));
            }
            rec.revoked_ns.get_or_insert(now);
            t.insert(id.0, enc(&rec)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Checks a token: known, matching its hash (constant time), not
    /// expired, not revoked. Every failure is the same `Unauthenticated`
    /// error, so a caller learns nothing about which check failed.
    pub fn authenticate(&self, token: &str, now: i64) -> Result<(Principal, Vec<Grant>)> {
        let denied = || {
            Error::new(
                ErrorKind::Unauthenticated,
                "invalid, expired or revoked token",
            )
        };
        let secret = TokenSecret::parse(token).map_err(|_| denied())?;
        let r = self.db.begin_read()?;
        let t = r.open_table(TOKENS)?;
        let rec: TokenRecord = match t.get(secret.id().0)? {
            Some(v) => dec(v.value())?,
            None => return Err(denied()),
        };
        let ok = secret.matches(&rec.hash)
            && rec.revoked_ns.is_none()
            && rec.expires_ns.is_none_or(|e| now < e);
        if !ok {
            return Err(denied());
        }
        Ok((
            Principal {
                tenant: rec.tenant,
                user: rec.user,
                token: rec.id,
            },
            rec.grants,
        ))
    }

    /// The one check of every API call: does `token` allow `permission`
    /// (`"storage.write"`) within `tenant`?
    pub fn authorize(
        &self,
        token: &str,
        tenant: &str,
        permission: &str,
        now: i64,
    ) -> Result<Principal> {
        let wanted = Permission::parse(permission)?;
        let (who, grants) = self.authenticate(token, now)?;
        let in_tenant: Vec<Permission> = grants
            .into_iter()
            .filter(|g| g.tenant == tenant || g.tenant == "*")
            .map(|g| g.permission)
            .collect();
        if allowed(&in_tenant, &wanted) {
            Ok(who)
        } else {
            Err(Error::new(
                ErrorKind::Forbidden,
                "the token lacks this permission in this tenant",
            )
            .with_context("tenant", tenant)
            .with_context("permission", permission))
        }
    }
}
