//! `rebuild-catalog`: a new catalog from the backends alone. Deletes
//! nothing. Reads, per pack, one shard header and the pack's tail (trailer)
//! — whole shards only when the tail cannot be read directly — then
//! replays each tenant's journal.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use asheville_core::{Codec, PackId, parse_shard_header, redundancy::SHARD_HEADER_LEN};
use bytes::Bytes;

use crate::catalog::{NewVersion, PackRecord};
use crate::config::RepoConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::journal::{self, JournalOp};
use crate::pack;
use crate::path::RepoPath;
use crate::repository::{Repository, Tenant, TenantKey};

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// Packs found on the backends.
    pub packs_found: u64,
    /// Packs recorded (of the given tenants).
    pub packs_recorded: u64,
    /// Blobs recorded.
    pub blobs: u64,
    /// Journal records replayed.
    pub journal_records: u64,
    /// File versions recreated.
    pub versions: u64,
    /// Deletes replayed.
    pub deletes: u64,
    /// Versions forgotten by replayed retention.
    pub forgotten: u64,
    /// Packs skipped: another tenant's, or unreadable (with the reason).
    pub skipped: Vec<(PackId, String)>,
}

fn parse_shard_key(key: &str) -> Option<(PackId, usize)> {
    let name = key.strip_prefix("packs/")?.split('/').nth(1)?;
    let (hex, idx) = name.split_once('.')?;
    Some((PackId::from_hex(hex).ok()?, idx.parse().ok()?))
}

/// Builds a new catalog at `catalog` for `config`'s backends, adopting
/// `tenants` (their keys are needed to read trailers and journals).
/// Fails if a catalog already exists there.
pub async fn rebuild_catalog(
    catalog: &Path,
    config: RepoConfig,
    tenants: Vec<(String, TenantKey)>,
) -> Result<(Repository, RebuildReport)> {
    rebuild_catalog_with_progress(catalog, config, tenants, &crate::tree::NoProgress).await
}

/// [`rebuild_catalog`], reporting each pack it records.
pub async fn rebuild_catalog_with_progress(
    catalog: &Path,
    config: RepoConfig,
    tenants: Vec<(String, TenantKey)>,
    progress: &dyn crate::maintenance::PackProgress,
) -> Result<(Repository, RebuildReport)> {
    if catalog.exists() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "a catalog exists; rebuild writes a new one and deletes nothing",
        )
        .with_context("catalog", catalog.display()));
    }
    let repo = Repository::create(catalog, config).await?;
    let mut opened: HashMap<String, Tenant> = HashMap::new();
    for (name, key) in tenants {
        let t = repo.adopt_tenant(&name, key).await?;
        opened.insert(name, t);
    }
    let mut report = RebuildReport::default();

    // Where every shard object is.
    let mut shards: BTreeMap<PackId, BTreeMap<usize, String>> = BTreeMap::new();
    for b in repo.backends() {
        let mut after = None;
        loop {
            let page = b.list("packs/", after.as_deref(), 1000).await?;
            for o in &page.objects {
                if let Some((id, i)) = parse_shard_key(&o.key) {
                    shards.entry(id).or_default().insert(i, b.name().to_owned());
                }
            }
            after = page.next;
            if after.is_none() {
                break;
            }
        }
    }

    for (id, located) in &shards {
        report.packs_found += 1;
        progress.pack_done();
        match rebuild_pack(&repo, &opened, id, located).await {
            Ok(Some(n)) => {
                report.packs_recorded += 1;
                report.blobs += n;
            }
            Ok(None) => report
                .skipped
                .push((*id, "belongs to a tenant not given".into())),
            Err(e) => report.skipped.push((*id, e.to_string())),
        }
    }

    for (name, t) in &opened {
        let mut keys: Vec<String> = Vec::new();
        for b in repo.backends() {
            let mut after = None;
            loop {
                let page = b
                    .list(&format!("journal/{name}/"), after.as_deref(), 1000)
                    .await?;
                keys.extend(page.objects.into_iter().map(|o| o.key));
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
        }
        keys.sort();
        keys.dedup();
        let seal = Repository::tenant_seal_key(t);
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            let mut record = None;
            for b in repo.backends() {
                if let Ok(bytes) = b.get(&key).await
                    && let Ok(r) = journal::open(seal, &key, &bytes)
                {
                    record = Some(r);
                    break;
                }
            }
            let record = record.ok_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    "a journal record is unreadable on every backend",
                )
                .with_context("key", &key)
            })?;
            records.push(record);
        }
        report.journal_records += records.len() as u64;
        // Pass 1: number every put as the catalog did, and find the versions
        // a later record forgets. Their chunks may be gone (gc), so they are
        // never recreated.
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut numbered: Vec<Vec<u64>> = Vec::with_capacity(records.len());
        let mut forgotten: std::collections::HashSet<(String, u64)> =
            std::collections::HashSet::new();
        for record in &records {
            let mut nums = Vec::new();
            for op in &record.ops {
                match op {
                    JournalOp::Put { path, .. } => {
                        let n = next.entry(path.clone()).or_insert(0);
                        *n += 1;
                        nums.push(*n);
                    }
                    JournalOp::Forget { path, version } => {
                        forgotten.insert((path.clone(), *version));
                    }
                    JournalOp::Delete { .. } => {}
                }
            }
            numbered.push(nums);
        }
        report.forgotten += forgotten.len() as u64;
        // Pass 2: replay what survives, in order, with the original numbers.
        for (record, nums) in records.into_iter().zip(numbered) {
            let mut nums = nums.into_iter();
            let mut puts = Vec::new();
            for op in record.ops {
                match op {
                    JournalOp::Put {
                        path,
                        size,
                        meta,
                        chunks,
                    } => {
                        let version = nums.next().unwrap_or(0);
                        if !forgotten.contains(&(path.clone(), version)) {
                            puts.push(NewVersion {
                                path: RepoPath::parse(&path)?,
                                size,
                                meta,
                                chunks,
                                created_ns: record.created_ns,
                                version,
                            });
                        }
                    }
                    JournalOp::Forget { .. } => {}
                    JournalOp::Delete { path } => {
                        // Puts before it in the same record commit first.
                        if !puts.is_empty() {
                            report.versions += puts.len() as u64;
                            repo.catalog()
                                .commit_versions(name, std::mem::take(&mut puts))?;
                        }
                        report.deletes += 1;
                        match repo.catalog().delete(name, &RepoPath::parse(&path)?) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            if !puts.is_empty() {
                report.versions += puts.len() as u64;
                repo.catalog().commit_versions(name, puts)?;
            }
        }
    }
    Ok((repo, report))
}

/// Records one pack; `None` if it belongs to a tenant not given.
async fn rebuild_pack(
    repo: &Repository,
    tenants: &HashMap<String, Tenant>,
    id: &PackId,
    located: &BTreeMap<usize, String>,
) -> Result<Option<u64>> {
    let backend = |name: &str| repo.backends().iter().find(|b| b.name() == name).cloned();
    // The pack's shape, from the first shard header that reads.
    let mut info = None;
    for (i, name) in located {
        if let Some(b) = backend(name)
            && let Ok(h) = b
                .get_range(
                    &crate::repository::shard_key(id, *i),
                    0..SHARD_HEADER_LEN as u64,
                )
                .await
            && let Ok(parsed) = parse_shard_header(&h)
        {
            info = Some(parsed);
            break;
        }
    }
    let info = info.ok_or_else(|| Error::new(ErrorKind::Integrity, "no readable shard header"))?;
    let codec = Codec::new(info.policy)?;
    let data_len = info.data_len;
    let read = |range: std::ops::Range<u64>| {
        let codec = &codec;
        async move {
            let mut out = Vec::new();
            for part in codec.locate(data_len, range)? {
                let name = located
                    .get(&part.shard)
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "data shard missing"))?;
                let b = backend(name)
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "backend missing"))?;
                let lo = (SHARD_HEADER_LEN + part.range.start) as u64;
                let hi = (SHARD_HEADER_LEN + part.range.end) as u64;
                out.extend_from_slice(
                    &b.get_range(&crate::repository::shard_key(id, part.shard), lo..hi)
                        .await?,
                );
            }
            Ok::<_, Error>(out)
        }
    };
    let direct = async {
        let footer = read(data_len - pack::FOOTER_LEN as u64..data_len).await?;
        let tail_len = pack::tail_len(&footer)? as u64;
        read(data_len.saturating_sub(tail_len)..data_len).await
    };
    let tail = match direct.await {
        Ok(t) => t,
        Err(_) => {
            // A data shard is missing or bad: decode the whole pack.
            let all: Vec<Option<Bytes>> =
                futures::future::join_all((0..info.policy.total_shards()).map(|i| {
                    let b = located.get(&i).and_then(|n| backend(n));
                    async move { b?.get(&crate::repository::shard_key(id, i)).await.ok() }
                }))
                .await;
            let slots: Vec<Option<&[u8]>> = all.iter().map(|s| s.as_deref()).collect();
            codec.decode(&slots)?.data
        }
    };
    let tenant = pack::tenant_of(&tail)?;
    let Some(t) = tenants.get(&tenant) else {
        return Ok(None);
    };
    let entries =
        pack::read_trailer_from_tail(&tail, data_len, id, &tenant, Repository::tenant_seal_key(t))?;
    // Shards not found anywhere go where placement puts them; `repair`
    // rebuilds them there.
    let placed = repo.placement_of(id, info.policy.total_shards())?;
    let record = PackRecord {
        id: *id,
        tenant: tenant.clone(),
        data_len,
        redundancy: info.policy.to_string(),
        shards: (0..info.policy.total_shards())
            .map(|i| {
                located
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| placed[i].clone())
            })
            .collect(),
    };
    let blobs: Vec<_> = entries.iter().map(|e| (e.id, e.loc(*id))).collect();
    repo.catalog().commit_pack(&record, &blobs)?;
    Ok(Some(blobs.len() as u64))
}
