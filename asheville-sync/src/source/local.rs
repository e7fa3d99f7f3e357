//! A local directory as a source.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{Change, Cursor, Fetched, Source, Stamp, WHOLE_ITEM_LIMIT, diff};
use crate::error::{Error, ErrorKind, Result};

/// A local directory, walked recursively. Items are regular files (symbolic
/// links are not followed); keys are '/'-separated paths relative to the
/// root; stamps are size and mtime. Names that are not UTF-8 are skipped.
#[derive(Debug, Clone)]
pub struct LocalDirSource {
    root: PathBuf,
}

impl LocalDirSource {
    /// A source over `root`.
    pub fn new(root: PathBuf) -> Self {
        LocalDirSource { root }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let mut p = self.root.clone();
        for seg in key.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(Error::new(ErrorKind::InvalidInput, "bad item key")
                    .with_context("key", key.escape_debug()));
            }
            p.push(seg);
        }
        Ok(p)
    }
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    let meta = asheville_storage::repository::local_meta(m);
    Stamp {
        size: m.len(),
        mtime_ns: meta.mtime_ns,
        tag: String::new(),
    }
}

fn walk(root: &Path, rel: &str, out: &mut Vec<(String, Stamp)>) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        Error::io("cannot list a source directory", e).with_context("dir", dir.display())
    })?;
    for entry in rd {
        let entry = entry.map_err(|e| {
            Error::io("cannot list a source directory", e).with_context("dir", dir.display())
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().map_err(|e| Error::io("cannot stat", e))?;
        if ft.is_dir() {
            walk(root, &key, out)?;
        } else if ft.is_file() {
            // A file that vanished between readdir and stat is simply gone.
            match entry.metadata() {
                Ok(m) => out.push((key, stamp_of(&m))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io("cannot stat a source file", e).with_context("key", key));
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Source for LocalDirSource {
    async fn changes(&self, since: &Cursor) -> Result<Vec<Change>> {
        let root = self.root.clone();
        let listing = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, "", &mut out).map(|()| out)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, "a listing task failed").set_source(e))??;
        Ok(diff(listing, since))
    }

    async fn fetch(&self, key: &str, _stamp: &Stamp) -> Result<Fetched> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let err = |e: std::io::Error| Error::io("cannot read a source file", e);
            let mut f = std::fs::File::open(&path).map_err(err)?;
            let len = f.metadata().map_err(err)?.len();
            if len <= WHOLE_ITEM_LIMIT {
                let mut buf = Vec::with_capacity(len as usize);
                f.read_to_end(&mut buf).map_err(err)?;
                Ok(Fetched::Bytes(buf))
            } else {
                Ok(Fetched::Stream(Box::new(
                    tokio::io::BufReader::with_capacity(1 << 20, tokio::fs::File::from_std(f)),
                )))
            }
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, "a read task failed").set_source(e))?
        .map_err(|e: Error| e.with_context("key", key))
    }
}
