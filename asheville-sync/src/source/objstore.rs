//! An object_store bucket (local directory, memory, S3) as a source.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as OsPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{Change, Cursor, Fetched, Source, Stamp, WHOLE_ITEM_LIMIT, diff};
use crate::error::{Error, ErrorKind, Result};

/// Every object under a prefix of a store. Keys are object paths relative
/// to the prefix; stamps are size, last-modified time and ETag.
#[derive(Debug, Clone)]
pub struct ObjectStoreSource {
    store: Arc<dyn ObjectStore>,
    prefix: Option<OsPath>,
}

fn os_err(what: &'static str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Source,
    };
    Error::new(kind, what).set_source(e)
}

impl ObjectStoreSource {
    /// A source over `store`, under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Self {
        ObjectStoreSource {
            store,
            prefix: prefix.filter(|p| !p.is_empty()).map(OsPath::from),
        }
    }

    /// Builds the store a backend description names (local directory or
    /// S3; a `Memory` kind would be a new, empty store).
    pub fn open(kind: &asheville_storage::BackendKind, prefix: Option<&str>) -> Result<Self> {
        let b = asheville_storage::ObjectStoreBackend::open("source", kind)?;
        let mut parts: Vec<object_store::path::PathPart<'static>> = Vec::new();
        if let Some(p) = b.key_prefix() {
            parts.extend(p.parts().map(|x| x.as_ref().to_owned().into()));
        }
        if let Some(p) = prefix {
            parts.extend(
                OsPath::from(p)
                    .parts()
                    .map(|x| x.as_ref().to_owned().into()),
            );
        }
        let prefix = (!parts.is_empty()).then(|| parts.into_iter().collect());
        Ok(ObjectStoreSource {
            store: b.object_store(),
            prefix,
        })
    }

    fn location(&self, key: &str) -> Result<OsPath> {
        let rel = OsPath::parse(key).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "bad item key")
                .with_context("key", key.escape_debug())
                .set_source(e)
        })?;
        Ok(match &self.prefix {
            Some(p) => p.parts().chain(rel.parts()).collect(),
            None => rel,
        })
    }
}

#[async_trait]
impl Source for ObjectStoreSource {
    async fn changes(&self, since: &Cursor) -> Result<Vec<Change>> {
        let skip = self.prefix.as_ref().map_or(0, |p| p.parts().count());
        let listing: Vec<(String, Stamp)> = self
            .store
            .list(self.prefix.as_ref())
            .map_err(|e| os_err("cannot list the source bucket", e))
            .map_ok(|m| {
                let key = m
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let stamp = Stamp {
                    size: m.size,
                    mtime_ns: m.last_modified.timestamp_nanos_opt().unwrap_or(0),
                    tag: m.e_tag.unwrap_or_default(),
                };
                (key, stamp)
            })
            .try_collect()
            .await?;
        Ok(diff(listing, since))
    }

    async fn fetch(&self, key: &str, _stamp: &Stamp) -> Result<Fetched> {
        let loc = self.location(key)?;
        let r = self
            .store
            .get(&loc)
            .await
            .map_err(|e| os_err("cannot read a source object", e).with_context("key", key))?;
        if r.meta.size <= WHOLE_ITEM_LIMIT {
            let b = r
                .bytes()
                .await
                .map_err(|e| os_err("cannot read a source object", e).with_context("key", key))?;
            return Ok(Fetched::Bytes(b.to_vec()));
        }
        let stream = r
            .into_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed();
        Ok(Fetched::Stream(Box::new(
            tokio_util::io::StreamReader::new(stream),
        )))
    }
}
