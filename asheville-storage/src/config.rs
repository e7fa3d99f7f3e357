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
    /// Packs being filled, encoded and uploaded at once (default 3; bounds
    /// memory: about `packs_in_flight × pack_size`, times the redundancy's
    /// overhead where parity is not made as it is written).
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
/// Three: with the parity of `rs(k,m)` made as it is written (local
/// backends), a pack in flight holds only its data buffer, and a third
/// one lets the next pack fill while two upload. Puts of the peers set
/// (CLI, `rs(2,1)`, 6 alternating rounds): median 2.76 s at 88-95 MiB
/// peak RSS with two, 2.58 s at 105-107 MiB with three; the repo bench
/// set (`rs(4,2)`): 2.60 and 2.50 s. (With parity buffers, two took
/// 112-116 MiB and three 134-138.) Over backends that need parity buffers
/// each pack in flight costs `pack_size / k × m` more.
fn in_flight() -> usize {
    3
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
