//! Sources: where a sync pulls data from.
//!
//! A [`Source`] lists what changed since a [`Cursor`] and fetches an item
//! as a stream. The cursor is a map from item key to a [`Stamp`] (size,
//! modification time and, where the source has one, an ETag): the sync
//! layer applies each change that was stored successfully to the cursor and
//! persists it, so an item that failed is listed again by the next sync,
//! and a sync moves only what changed.

mod local;
mod objstore;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

pub use local::LocalDirSource;
pub use objstore::ObjectStoreSource;

use crate::error::{Error, ErrorKind, Result};
use crate::job::validate_name;

/// What a source knows about one item's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time (ns since the Unix epoch).
    pub mtime_ns: i64,
    /// An opaque version tag (an ETag), empty when the source has none.
    pub tag: String,
}

/// Where the last sync of a source stopped: every item it stored, with its
/// stamp.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Item key → stamp.
    pub items: BTreeMap<String, Stamp>,
}

impl Cursor {
    /// Compact binary form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| Error::db("a cursor does not encode", e))
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(b: &[u8]) -> Result<Self> {
        postcard::from_bytes(b).map_err(|e| Error::db("a stored cursor does not decode", e))
    }

    /// Records a change as done.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Upsert { key, stamp } => {
                self.items.insert(key.clone(), stamp.clone());
            }
            Change::Delete { key } => {
                self.items.remove(key);
            }
        }
    }
}

/// One change of a source since a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// The item is new or changed.
    Upsert {
        /// Key ('/'-separated, relative).
        key: String,
        /// Its current stamp.
        stamp: Stamp,
    },
    /// The item is gone.
    Delete {
        /// Key.
        key: String,
    },
}

impl Change {
    /// The item's key.
    pub fn key(&self) -> &str {
        match self {
            Change::Upsert { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// Compares a full listing with a cursor: items that are new or whose stamp
/// differs are upserts, cursor items not in the listing are deletes.
/// Upserts come in key order, then deletes.
pub fn diff(listing: impl IntoIterator<Item = (String, Stamp)>, since: &Cursor) -> Vec<Change> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut listing: Vec<_> = listing.into_iter().collect();
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, stamp) in listing {
        if since.items.get(&key) != Some(&stamp) {
            out.push(Change::Upsert {
                key: key.clone(),
                stamp,
            });
        }
        seen.insert(key);
    }
    for key in since.items.keys() {
        if !seen.contains(key) {
            out.push(Change::Delete { key: key.clone() });
        }
    }
    out
}

/// An item's bytes.
pub enum Fetched {
    /// Small items, read whole.
    Bytes(Vec<u8>),
    /// Anything else, as a stream.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetched::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Fetched::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Items up to this size are fetched whole (one read, no stream).
pub const WHOLE_ITEM_LIMIT: u64 = 1 << 20;

/// Where a sync pulls data from.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// What changed since `since` (a full listing diffed against it, or a
    /// source's own change feed).
    async fn changes(&self, since: &Cursor) -> Result<Vec<Change>>;

    /// The item `key` as it is now. A source may return an error for one
    /// item; the sync retries it, then reports it, and goes on.
    async fn fetch(&self, key: &str, stamp: &Stamp) -> Result<Fetched>;
}

/// How to build a source.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceKind {
    /// A local directory, walked recursively (regular files only).
    LocalDir {
        /// The directory.
        path: PathBuf,
    },
    /// An object store bucket (a local directory served as one, or S3),
    /// optionally under a prefix.
    Bucket {
        /// The store.
        store: asheville_storage::BackendKind,
        /// Only keys under this prefix (which is not part of item keys).
        #[serde(default)]
        prefix: Option<String>,
    },
    /// A source object registered at run time with
    /// [`crate::SyncRunner::register_source`] (for example an in-memory
    /// bucket, or an application's own connector).
    Registered {
        /// The name it was registered under.
        id: String,
    },
}

impl std::fmt::Debug for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKind::LocalDir { path } => write!(f, "LocalDir({})", path.display()),
            // BackendKind's Debug redacts secrets.
            SourceKind::Bucket { store, prefix } => write!(f, "Bucket({store:?}, {prefix:?})"),
            SourceKind::Registered { id } => write!(f, "Registered({id})"),
        }
    }
}

/// A user's source: what it is, where its items go, how often it syncs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// Tenant.
    pub tenant: String,
    /// User.
    pub user: String,
    /// Name, unique per user.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
    /// Repository directory its items go under; default
    /// `/sync/<user>/<name>`.
    #[serde(default)]
    pub target: Option<String>,
    /// Sync every this often (the scheduler); `None`: only on demand.
    #[serde(default, with = "opt_duration_ms")]
    pub every: Option<Duration>,
}

impl SourceSpec {
    /// A source with the default target and no schedule.
    pub fn new(tenant: &str, user: &str, name: &str, kind: SourceKind) -> Self {
        SourceSpec {
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            kind,
            target: None,
            every: None,
        }
    }

    /// Checks names, target and schedule.
    pub fn validate(&self) -> Result<()> {
        validate_name("tenant", &self.tenant)?;
        validate_name("user", &self.user)?;
        validate_name("source", &self.name)?;
        asheville_storage::RepoPath::parse(&self.target())?;
        if let Some(e) = self.every
            && e < Duration::from_secs(1)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a schedule period is at least one second",
            ));
        }
        if let SourceKind::Registered { id } = &self.kind {
            validate_name("registered source", id)?;
        }
        Ok(())
    }

    /// The repository directory items go under.
    pub fn target(&self) -> String {
        self.target
            .clone()
            .unwrap_or_else(|| format!("/sync/{}/{}", self.user, self.name))
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Parses "15m", "30s", "2h", "1d" or a number of seconds.
pub fn parse_period(s: &str) -> Result<Duration> {
    let s = s.trim();
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            "a period is a number with s, m, h or d (like 15m)",
        )
        .with_context("period", s)
    };
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

/// Builds the source a [`SourceKind`] describes (not `Registered`).
pub fn open_source(kind: &SourceKind) -> Result<std::sync::Arc<dyn Source>> {
    match kind {
        SourceKind::LocalDir { path } => Ok(std::sync::Arc::new(LocalDirSource::new(path.clone()))),
        SourceKind::Bucket { store, prefix } => Ok(std::sync::Arc::new(ObjectStoreSource::open(
            store,
            prefix.as_deref(),
        )?)),
        SourceKind::Registered { id } => Err(Error::new(
            ErrorKind::NotFound,
            "no source is registered under this id in this process",
        )
        .with_context("id", id)),
    }
}
