//! Repository configuration.

use std::path::PathBuf;

use asheville_core::{ChunkerConfig, Compression, KdfParams, Redundancy};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{Error, ErrorKind, Result};

/// One backend of a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendConfig {
    /// Unique name. Shard locations are recorded by name.
    pub name: String,
    /// Share of new shards (0 = drained).
    #[serde(default = "one")]
    pub weight: f64,
    /// Failure domain (defaults to the name).
    #[serde(default)]
    pub domain: Option<String>,
    /// Where it stores objects.
    #[serde(flatten)]
    pub kind: BackendKind,
}

fn one() -> f64 {
    1.0
}

/// Everything a repository needs to know, stored in its catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// The backends.
    pub backends: Vec<BackendConfig>,
    /// Redundancy of every pack.
    pub redundancy: Redundancy,
    /// Chunk sizes.
    #[serde(default)]
    pub chunker: ChunkerConfig,
    /// Compression tried on every chunk (default zstd level 3: chunks that
    /// do not shrink are stored as they are, and large ones are sampled
    /// first, so incompressible data costs about 1% extra). Level 3 made
    /// the peers data set 1.5 MB (0.2%) smaller than level 1 at no
    /// measurable cost in put time (issue 9's note).
    #[serde(default = "compression")]
    pub compression: Compression,
    /// Target pack size in bytes (default 16 MiB).
    #[serde(default = "pack_size")]
    pub pack_size: usize,
    /// Packs being encoded and uploaded at once (default 2; bounds memory: about
    /// `packs_in_flight × pack_size × overhead`).
    #[serde(default = "in_flight")]
    pub packs_in_flight: usize,
    /// Read cache size in bytes (decoded packs and chunks).
    #[serde(default = "cache_bytes")]
    pub cache_bytes: usize,
    /// Argon2id parameters for new tenant key files.
    #[serde(default)]
    pub kdf: KdfParams,
}

/// The level restic's `auto` compression is closest to.
fn compression() -> Compression {
    Compression::Zstd { level: 3 }
}
fn pack_size() -> usize {
    16 << 20
}
/// Two keep both cores busy on a 2-core machine, as three did, with
/// ~28 MiB less peak RSS: puts of the peers set (CLI, `rs(2,1)`, 4
/// alternating rounds) took 2.80–3.44 s at 99–103 MiB with two and
/// 2.97–3.61 s at 125–132 MiB with three on a disk, 1.76–1.92 s and
/// 1.78–2.07 s on tmpfs (where the CPU is the limit); the repo bench
/// (`rs(4,2)`) put at 370 and 349 MB/s with two, 357 and 175 with three.
/// Four raised peak RSS by ~20 MiB more at no gain (issue 9's note).
fn in_flight() -> usize {
    2
}
fn cache_bytes() -> usize {
    64 << 20
}

impl RepoConfig {
    /// `n` local backends under `dir/backend-<i>`, each its own failure
    /// domain, with `redundancy` and defaults for the rest.
    pub fn local(dir: impl Into<PathBuf>, n: usize, redundancy: Redundancy) -> RepoConfig {
        let dir = dir.into();
        RepoConfig {
            backends: (0..n)
                .map(|i| BackendConfig {
                    name: format!("backend-{i}"),
                    weight: 1.0,
                    domain: None,
                    kind: BackendKind::Local {
                        path: dir.join(format!("backend-{i}")),
                        fsync: true,
                    },
                })
                .collect(),
            redundancy,
            chunker: ChunkerConfig::default(),
            compression: compression(),
            pack_size: pack_size(),
            packs_in_flight: in_flight(),
            cache_bytes: cache_bytes(),
            kdf: KdfParams::default(),
        }
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<()> {
        self.redundancy.validate()?;
        self.chunker.validate()?;
        let bad = |m: &'static str| Error::new(ErrorKind::InvalidInput, m);
        let usable = self.backends.iter().filter(|b| b.weight > 0.0).count();
        if usable < self.redundancy.total_shards() {
            return Err(bad("fewer usable backends than shards per pack")
                .with_context("backends", usable)
                .with_context("redundancy", self.redundancy));
        }
        if !(1 << 16..=1 << 30).contains(&self.pack_size) {
            return Err(bad("pack_size must be between 64 KiB and 1 GiB"));
        }
        if self.packs_in_flight == 0 {
            return Err(bad("packs_in_flight must be at least 1"));
        }
        Ok(())
    }
}
