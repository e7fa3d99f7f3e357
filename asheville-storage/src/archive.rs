//! `export` / `import`: one tenant's files, every version, as one portable
//! archive stream, and back.
//!
//! # Archive format (version 1)
//!
//! | part | size | |
//! |---|---|---|
//! | magic | 8 | `ASHVEXP1` |
//! | entries | | each: tag `1`, header length (u32 LE), postcard [`EntryHeader`], then `size` content bytes |
//! | end | 33 | tag `2`, then BLAKE3 of every byte before the tag |
//!
//! Entries come in path order, each path's versions oldest first. The
//! archive is *not* encrypted: it is the tenant's plaintext, for moving
//! data between repositories (or out of Asheville); protect it as such.
//!
//! Import adds everything to one batch and commits only after the
//! checksum verified: a truncated or altered archive imports nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::catalog::FileMeta;
use crate::error::{Error, ErrorKind, Result};
use crate::path::RepoPath;
use crate::repository::Tenant;

const MAGIC: &[u8; 8] = b"ASHVEXP1";
const TAG_ENTRY: u8 = 1;
const TAG_END: u8 = 2;
const MAX_HEADER: u32 = 64 << 10;

/// The header of one file version in an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// Path.
    pub path: String,
    /// Version number in the exporting repository.
    pub version: u64,
    /// Content length.
    pub size: u64,
    /// Metadata.
    pub meta: FileMeta,
    /// Commit time in the exporting repository.
    pub created_ns: i64,
    /// The file was deleted after this, its last version.
    pub deleted_after: bool,
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    /// Paths.
    pub paths: u64,
    /// File versions.
    pub versions: u64,
    /// Content bytes.
    pub bytes: u64,
}

struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Hashing<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            me.hasher.update(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            me.hasher.update(&buf.filled()[before..]);
        }
        r
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Writes every version of every file of `t` (live and deleted) to `out`.
pub async fn export<W: AsyncWrite + Unpin>(t: &Tenant, out: W) -> Result<ArchiveReport> {
    let mut w = Hashing {
        inner: out,
        hasher: blake3::Hasher::new(),
    };
    let mut report = ArchiveReport::default();
    w.write_all(MAGIC)
        .await
        .map_err(io("writing the archive failed"))?;
    let mut after: Option<String> = None;
    loop {
        let page = t.all_paths(after.as_deref(), 1000)?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        for p in page {
            let versions = t.versions(&p)?;
            let live = t.stat(&p).is_ok();
            report.paths += 1;
            let n = versions.len();
            for (i, v) in versions.into_iter().enumerate() {
                let header = EntryHeader {
                    path: v.path.clone(),
                    version: v.version,
                    size: v.size,
                    meta: v.meta,
                    created_ns: v.created_ns,
                    deleted_after: !live && i + 1 == n,
                };
                let h = postcard::to_stdvec(&header)
                    .map_err(|e| Error::new(ErrorKind::Other, "encode").set_source(e))?;
                w.write_all(&[TAG_ENTRY])
                    .await
                    .map_err(io("writing the archive failed"))?;
                w.write_all(&(h.len() as u32).to_le_bytes())
                    .await
                    .map_err(io("writing the archive failed"))?;
                w.write_all(&h)
                    .await
                    .map_err(io("writing the archive failed"))?;
                t.get_version(&v.path, v.version, &mut w).await?;
                report.versions += 1;
                report.bytes += v.size;
            }
        }
        after = Some(last);
    }
    let sum = w.hasher.finalize();
    w.inner
        .write_all(&[TAG_END])
        .await
        .map_err(io("writing the archive failed"))?;
    w.inner
        .write_all(sum.as_bytes())
        .await
        .map_err(io("writing the archive failed"))?;
    w.inner
        .flush()
        .await
        .map_err(io("writing the archive failed"))?;
    Ok(report)
}

/// Reads an archive into `t`: each version becomes a new version of its
/// path (in the archive's order), deleted files are deleted again. Nothing
/// is committed unless the whole archive verifies.
pub async fn import<R: AsyncRead + Unpin>(t: &Tenant, input: R) -> Result<ArchiveReport> {
    let bad = |m: &'static str| Error::new(ErrorKind::Integrity, m);
    let mut r = Hashing {
        inner: input,
        hasher: blake3::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .await
        .map_err(|_| bad("not an Asheville archive (too short)"))?;
    if &magic != MAGIC {
        return Err(bad("not an Asheville archive (bad magic)"));
    }
    let mut report = ArchiveReport::default();
    let mut batch = t.batch();
    let mut deletes = Vec::new();
    let mut last_path: Option<String> = None;
    loop {
        // The end tag is not part of the checksum: read it from the inner stream.
        let mut tag = [0u8; 1];
        r.inner
            .read_exact(&mut tag)
            .await
            .map_err(|_| bad("archive truncated"))?;
        match tag[0] {
            TAG_END => break,
            TAG_ENTRY => {
                r.hasher.update(&tag);
            }
            _ => return Err(bad("archive is corrupt (unknown tag)")),
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .await
            .map_err(|_| bad("archive truncated"))?;
        let len = u32::from_le_bytes(len);
        if len > MAX_HEADER {
            return Err(bad("archive entry header too large"));
        }
        let mut h = vec![0u8; len as usize];
        r.read_exact(&mut h)
            .await
            .map_err(|_| bad("archive truncated"))?;
        let header: EntryHeader = postcard::from_bytes(&h)
            .map_err(|e| bad("archive entry header does not parse").set_source(e))?;
        RepoPath::parse(&header.path)?;
        let mut content = (&mut r).take(header.size);
        batch.add(&header.path, &mut content, header.meta).await?;
        if content.limit() != 0 {
            return Err(bad("archive truncated inside a file"));
        }
        if last_path.as_deref() != Some(header.path.as_str()) {
            report.paths += 1;
            last_path = Some(header.path.clone());
        }
        report.versions += 1;
        report.bytes += header.size;
        if header.deleted_after {
            deletes.push(header.path);
        }
    }
    let mut sum = [0u8; 32];
    r.inner
        .read_exact(&mut sum)
        .await
        .map_err(|_| bad("archive truncated (no checksum)"))?;
    if r.hasher.finalize() != blake3::Hash::from_bytes(sum) {
        return Err(bad(
            "archive checksum mismatch: it was altered or damaged; nothing imported",
        ));
    }
    batch.commit().await?;
    for p in deletes {
        t.delete(&p).await?;
    }
    Ok(report)
}
