//! Keeping data safe over time: `check` finds missing, corrupt and orphaned
//! shards; `repair` rebuilds missing and corrupt shards from the survivors.
//!
//! Both walk the catalog's packs in id order. `repair` is idempotent and
//! safe to interrupt: it only ever writes a shard whose bytes it rebuilt and
//! verified, at the location the catalog already records, so rerunning it
//! finishes what an interrupted run left.

use std::collections::{HashMap, HashSet};

use asheville_core::{Codec, PackId, Redundancy, redundancy::SHARD_HEADER_LEN, verify_shard};
use bytes::Bytes;

use crate::catalog::PackRecord;
use crate::error::{Error, ErrorKind, Result};
use crate::repository::{Repository, shard_key};
use crate::tree::Progress;

/// What is wrong with a shard or object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The catalog records a shard its backend does not have (or cannot serve).
    MissingShard,
    /// The shard is there but fails its checksum or header checks.
    CorruptShard,
    /// An object under `packs/` that no committed pack records at that place
    /// (left by an interrupted upload; `gc` removes them). Not data loss.
    OrphanObject,
    /// A pack has fewer good shards than it needs to be read.
    UnreadablePack,
    /// A blob's stored reference count differs from the count of versions
    /// that use it (gc could then delete data in use, or never reclaim it).
    RefcountMismatch,
    /// A file version uses a chunk the catalog has no blob for.
    DanglingReference,
}

/// One problem found by [`Repository::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What.
    pub kind: ProblemKind,
    /// Which pack.
    pub pack: Option<PackId>,
    /// Which shard of it.
    pub shard: Option<usize>,
    /// On which backend.
    pub backend: Option<String>,
    /// Object key, when known.
    pub key: Option<String>,
    /// Details for a person.
    pub detail: String,
}

/// What [`Repository::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Packs checked.
    pub packs: u64,
    /// Shards checked.
    pub shards: u64,
    /// Bytes downloaded (with `read_data`).
    pub bytes_read: u64,
    /// Problems, in pack order, then orphans.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True if nothing threatens data (orphans alone are harmless).
    pub fn is_healthy(&self) -> bool {
        self.problems
            .iter()
            .all(|p| p.kind == ProblemKind::OrphanObject)
    }
}

/// What [`Repository::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// Packs examined.
    pub packs: u64,
    /// Shards rewritten.
    pub shards_rewritten: u64,
    /// Packs that could not be repaired (fewer than `k` good shards, or a
    /// backend refused the write), with the reason.
    pub failed: Vec<(PackId, String)>,
}

/// What [`Repository::rebalance`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebalanceReport {
    /// Packs examined.
    pub packs: u64,
    /// Shards moved to the backend placement now chooses.
    pub shards_moved: u64,
    /// Shards that stayed where they were.
    pub shards_in_place: u64,
    /// Packs that could not be moved, with the reason.
    pub failed: Vec<(PackId, String)>,
}

/// Progress of check and repair: called once per pack.
pub trait PackProgress: Send + Sync {
    /// One more pack done.
    fn pack_done(&self) {}
}

impl<P: Progress + ?Sized> PackProgress for P {
    fn pack_done(&self) {
        self.file_done("", 1);
    }
}

impl Repository {
    fn pages(&self) -> impl futures::Stream<Item = Result<PackRecord>> + '_ {
        futures::stream::try_unfold(
            (None::<PackId>, Vec::<PackRecord>::new(), false),
            move |(mut after, mut buf, mut end)| async move {
                if buf.is_empty() && !end {
                    buf = self.catalog().packs(after.as_ref(), 1000)?;
                    end = buf.len() < 1000;
                    buf.reverse();
                }
                Ok(match buf.pop() {
                    Some(p) => {
                        after = Some(p.id);
                        Some((p, (after, buf, end)))
                    }
                    None => None,
                })
            },
        )
    }

    fn codec_for(
        &self,
        pack: &PackRecord,
        codecs: &mut HashMap<String, std::sync::Arc<Codec>>,
    ) -> Result<std::sync::Arc<Codec>> {
        if let Some(c) = codecs.get(&pack.redundancy) {
            return Ok(c.clone());
        }
        let policy: Redundancy = pack.redundancy.parse()?;
        let c = std::sync::Arc::new(Codec::new(policy)?);
        codecs.insert(pack.redundancy.clone(), c.clone());
        Ok(c)
    }

    fn backend_named(&self, name: &str) -> Option<&crate::backend::DynBackend> {
        self.backends().iter().find(|b| b.name() == name)
    }

    /// Checks every committed pack: each shard exists with the right size
    /// (or, with `read_data`, downloads it and verifies its checksum and
    /// header); recomputes every blob's reference count from the versions;
    /// and lists objects under `packs/` that no pack records.
    pub async fn check(&self, read_data: bool, progress: &dyn PackProgress) -> Result<CheckReport> {
        use futures::TryStreamExt;
        let mut report = CheckReport::default();
        let mut codecs = HashMap::new();
        let mut known: HashSet<(String, String)> = HashSet::new();
        let mut packs = std::pin::pin!(self.pages());
        while let Some(pack) = packs.try_next().await? {
            report.packs += 1;
            let codec = self.codec_for(&pack, &mut codecs)?;
            let expect_len = (SHARD_HEADER_LEN + codec.shard_len(pack.data_len)) as u64;
            let mut good = 0;
            for (i, name) in pack.shards.iter().enumerate() {
                report.shards += 1;
                let key = shard_key(&pack.id, i);
                known.insert((name.clone(), key.clone()));
                let problem = |kind, detail: String| Problem {
                    kind,
                    pack: Some(pack.id),
                    shard: Some(i),
                    backend: Some(name.clone()),
                    key: Some(key.clone()),
                    detail,
                };
                let Some(b) = self.backend_named(name) else {
                    report.problems.push(problem(
                        ProblemKind::MissingShard,
                        "backend is not configured".into(),
                    ));
                    continue;
                };
                let outcome: std::result::Result<(), (ProblemKind, String)> = if read_data {
                    match b.get(&key).await {
                        Err(e) => Err((ProblemKind::MissingShard, e.to_string())),
                        Ok(bytes) => {
                            report.bytes_read += bytes.len() as u64;
                            match verify_shard(&bytes) {
                                Ok(info)
                                    if info.index == i
                                        && info.policy == codec.policy()
                                        && info.data_len == pack.data_len =>
                                {
                                    Ok(())
                                }
                                Ok(_) => Err((
                                    ProblemKind::CorruptShard,
                                    "shard header does not match the catalog".into(),
                                )),
                                Err(e) => Err((ProblemKind::CorruptShard, e.to_string())),
                            }
                        }
                    }
                } else {
                    match b.head(&key).await {
                        Ok(info) if info.size == expect_len => Ok(()),
                        Ok(info) => Err((
                            ProblemKind::CorruptShard,
                            format!("size {} where {expect_len} was written", info.size),
                        )),
                        Err(e) => Err((ProblemKind::MissingShard, e.to_string())),
                    }
                };
                match outcome {
                    Ok(()) => good += 1,
                    Err((kind, detail)) => report.problems.push(problem(kind, detail)),
                }
            }
            if good < codec.policy().data_shards() {
                report.problems.push(Problem {
                    kind: ProblemKind::UnreadablePack,
                    pack: Some(pack.id),
                    shard: None,
                    backend: None,
                    key: None,
                    detail: format!(
                        "{good} good shards, {} needed",
                        codec.policy().data_shards()
                    ),
                });
            }
            progress.pack_done();
        }
        for r in self.catalog().audit_refs()? {
            let kind = if r.computed > 0 && !r.blob_exists {
                ProblemKind::DanglingReference
            } else {
                ProblemKind::RefcountMismatch
            };
            report.problems.push(Problem {
                kind,
                pack: None,
                shard: None,
                backend: None,
                key: None,
                detail: format!(
                    "tenant {} chunk {}: stored {} references, versions hold {}",
                    r.tenant, r.chunk, r.stored, r.computed
                ),
            });
        }
        for b in self.backends() {
            let mut after: Option<String> = None;
            loop {
                let page = b.list("packs/", after.as_deref(), 1000).await?;
                for o in &page.objects {
                    if !known.contains(&(b.name().to_owned(), o.key.clone())) {
                        report.problems.push(Problem {
                            kind: ProblemKind::OrphanObject,
                            pack: None,
                            shard: None,
                            backend: Some(b.name().to_owned()),
                            key: Some(o.key.clone()),
                            detail: "no committed pack records this object here".into(),
                        });
                    }
                }
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Moves every shard whose placement changed (a backend added,
    /// re-weighted, drained or removed) to the backend placement now
    /// chooses, and only those. Per pack: the shard is copied (or rebuilt
    /// from the survivors if its old copy is gone or bad), the pack record
    /// is updated, then the old copy is deleted. An interruption leaves at
    /// worst an extra copy (an orphan for `check` and `gc`); rerun to finish.
    pub async fn rebalance(&self, progress: &dyn PackProgress) -> Result<RebalanceReport> {
        use futures::TryStreamExt;
        let mut report = RebalanceReport::default();
        let mut codecs = HashMap::new();
        let mut packs = std::pin::pin!(self.pages());
        while let Some(pack) = packs.try_next().await? {
            report.packs += 1;
            let target = self.placement_of(&pack.id, pack.shards.len())?;
            let moves: Vec<usize> = (0..pack.shards.len())
                .filter(|&i| pack.shards[i] != target[i])
                .collect();
            report.shards_in_place += (pack.shards.len() - moves.len()) as u64;
            if moves.is_empty() {
                progress.pack_done();
                continue;
            }
            match self.move_shards(&pack, &target, &moves, &mut codecs).await {
                Ok(()) => report.shards_moved += moves.len() as u64,
                Err(e) => report.failed.push((pack.id, e.to_string())),
            }
            progress.pack_done();
        }
        Ok(report)
    }

    async fn move_shards(
        &self,
        pack: &PackRecord,
        target: &[String],
        moves: &[usize],
        codecs: &mut HashMap<String, std::sync::Arc<Codec>>,
    ) -> Result<()> {
        let codec = self.codec_for(pack, codecs)?;
        let mut rebuilt: Option<Vec<Vec<u8>>> = None;
        for &i in moves {
            let key = shard_key(&pack.id, i);
            let old = match self.backend_named(&pack.shards[i]) {
                Some(b) => b
                    .get(&key)
                    .await
                    .ok()
                    .filter(|bytes| verify_shard(bytes).is_ok_and(|s| s.index == i)),
                None => None,
            };
            let bytes = match old {
                Some(b) => b,
                None => {
                    if rebuilt.is_none() {
                        let shards: Vec<Option<Bytes>> = futures::future::join_all(
                            pack.shards.iter().enumerate().map(|(j, name)| async move {
                                self.backend_named(name)?
                                    .get(&shard_key(&pack.id, j))
                                    .await
                                    .ok()
                            }),
                        )
                        .await;
                        let slots: Vec<Option<&[u8]>> =
                            shards.iter().map(|s| s.as_deref()).collect();
                        rebuilt = Some(codec.encode(&codec.decode(&slots)?.data)?);
                    }
                    Bytes::from(rebuilt.as_ref().map(|r| r[i].clone()).unwrap_or_default())
                }
            };
            let to = self.backend_named(&target[i]).ok_or_else(|| {
                Error::new(ErrorKind::Insufficient, "target backend is not configured")
            })?;
            to.put(&key, vec![bytes]).await?;
        }
        let mut record = pack.clone();
        for &i in moves {
            record.shards[i] = target[i].clone();
        }
        self.catalog().commit_pack(&record, &[])?;
        self.uncache_pack(&pack.id);
        for &i in moves {
            if let Some(b) = self.backend_named(&pack.shards[i]) {
                // Best effort: a leftover copy is an orphan, not a problem.
                let _ = b.delete(&shard_key(&pack.id, i)).await;
            }
        }
        Ok(())
    }

    /// Rebuilds every missing or corrupt shard from the pack's good shards
    /// and writes it back where the catalog records it. Reads every shard
    /// (like `check --read-data`).
    pub async fn repair(&self, progress: &dyn PackProgress) -> Result<RepairReport> {
        use futures::TryStreamExt;
        let mut report = RepairReport::default();
        let mut codecs = HashMap::new();
        let mut packs = std::pin::pin!(self.pages());
        while let Some(pack) = packs.try_next().await? {
            report.packs += 1;
            let codec = self.codec_for(&pack, &mut codecs)?;
            let shards: Vec<Option<Bytes>> = futures::future::join_all(
                pack.shards.iter().enumerate().map(|(i, name)| async move {
                    let b = self.backend_named(name)?;
                    b.get(&shard_key(&pack.id, i)).await.ok()
                }),
            )
            .await;
            let slots: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
            let decoded = match codec.decode(&slots) {
                Ok(d) => d,
                Err(e) => {
                    report.failed.push((pack.id, e.to_string()));
                    progress.pack_done();
                    continue;
                }
            };
            let mut bad: Vec<usize> = decoded
                .corrupt
                .iter()
                .chain(&decoded.missing)
                .copied()
                .collect();
            bad.sort_unstable();
            if bad.is_empty() {
                progress.pack_done();
                continue;
            }
            if decoded.data.len() as u64 != pack.data_len {
                report.failed.push((
                    pack.id,
                    "decoded pack length differs from the catalog".into(),
                ));
                progress.pack_done();
                continue;
            }
            // The encoding is deterministic: re-encoding the data gives the
            // exact shards that were written.
            let encoded = codec.encode(&decoded.data)?;
            for i in bad {
                let name = &pack.shards[i];
                let result = match self.backend_named(name) {
                    None => Err(
                        Error::new(ErrorKind::Insufficient, "backend is not configured")
                            .with_context("backend", name),
                    ),
                    Some(b) => {
                        b.put(
                            &shard_key(&pack.id, i),
                            vec![Bytes::from(encoded[i].clone())],
                        )
                        .await
                    }
                };
                match result {
                    Ok(()) => report.shards_rewritten += 1,
                    Err(e) => report
                        .failed
                        .push((pack.id, format!("shard {i} on {name}: {e}"))),
                }
            }
            progress.pack_done();
        }
        Ok(report)
    }
}
