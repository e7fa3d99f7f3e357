//! # asheville-core
//!
//! The pure, synchronous heart of Asheville: no I/O, no async runtime.
//! Everything the write path does to bytes before they leave the process,
//! and everything the read path does after they come back, lives here:
//!
//! | step | module |
//! |---|---|
//! | split a stream into content-defined chunks | [`chunker`] |
//! | name a chunk: keyed BLAKE3 | [`id`], [`keys`] |
//! | seal it: zstd (optional) + AES-256-GCM | [`seal`], [`aead`] |
//! | protect a pack: `rs(k,m)`, `replicas(n)`, `none` | [`redundancy`] |
//! | pick a backend for every shard | [`placement`] |
//!
//! ## Feature flags
//!
//! | flag | default | what it does |
//! |---|---|---|
//! | `simd` | on | SIMD Reed-Solomon kernels (C, built with the system compiler). Off: pure Rust, ~5× slower. |
//! | `ring` | on | AES-256-GCM from `ring` (~3× faster here). `aes-gcm` is always built as the fallback; both give identical bytes. |
//!
//! ## Example: one chunk through the whole write path and back
//!
//! ```
//! use asheville_core::{aead, Codec, Compression, MasterKey, Placement, Redundancy, Sealer, Slot, TenantKeys};
//!
//! # fn main() -> asheville_core::Result<()> {
//! let master = MasterKey::generate()?;
//! let keys = TenantKeys::new(&master);
//! let sealer = Sealer::new(keys.seal_key().clone(), Compression::Zstd { level: 3 }, aead::fastest())?;
//!
//! let chunk = b"hello, asheville".repeat(1000);
//! let id = keys.chunk_id(&chunk);
//! let blob = sealer.seal(&id, &chunk)?;
//!
//! let codec = Codec::new("rs(4,2)".parse::<Redundancy>()?)?;
//! let shards = codec.encode(&blob)?;
//! let placement = Placement::new((0..6).map(|i| Slot::new(format!("disk{i}"))).collect())?;
//! let backends = placement.place(id.as_bytes(), shards.len())?;
//! assert_eq!(backends.len(), 6);
//!
//! // Lose two shards: the blob still decodes, and opens to the chunk.
//! let slots: Vec<Option<&[u8]>> =
//!     shards.iter().enumerate().map(|(i, s)| (i >= 2).then_some(&s[..])).collect();
//! let decoded = codec.decode(&slots)?;
//! assert_eq!(sealer.open(&id, &decoded.data)?, chunk);
//! # Ok(())
//! # }
//! ```

pub mod aead;
pub mod auth;
pub mod chunker;
pub mod error;
pub mod id;
pub mod keys;
pub mod metering;
pub mod placement;
pub mod redundancy;
pub mod seal;

pub use chunker::{ChunkerConfig, Cutter, StreamChunker, chunk_slice};
pub use error::{Error, ErrorKind, Result};
pub use id::{ChunkId, PackId};
pub use keys::{IdKey, KdfParams, KeyFile, MasterKey, SealKey, TenantKeys};
pub use placement::{Placement, Slot};
pub use redundancy::{
    Codec, Decoded, EncodedPack, ParityShard, Redundancy, ShardInfo, ShardRange,
    parse_shard_header, verify_shard,
};
pub use seal::{BlobHeader, Compression, Opened, Sealer};
