//! Keys: the tenant master key, the keys derived from it, and the key file
//! that stores the master key wrapped under a passphrase.
//!
//! # Derivation
//!
//! ```text
//! master key (32 random bytes, per tenant)
//!  ├─ id key   = BLAKE3 derive_key("asheville 2026-11 chunk id key v1", master)
//!  └─ seal key = BLAKE3 derive_key("asheville 2026-11 blob seal key v1", master)
//!       └─ chunk key(id) = BLAKE3 keyed_hash(seal key, chunk id)
//! ```
//!
//! The id key makes chunk ids a keyed hash (a PRF): without it, an id says
//! nothing about the data. The chunk key is a PRF of the chunk id under the
//! seal key, so every chunk is sealed under its own AES-256 key.
//!
//! # Key file format (version 1), 100 bytes
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `ASHVKEY\0` |
//! | 8 | 1 | format version = 1 |
//! | 9 | 1 | KDF = 1 (Argon2id, version 0x13) |
//! | 10 | 2 | reserved, zero |
//! | 12 | 4 | Argon2 memory cost in KiB, little endian |
//! | 16 | 4 | Argon2 time cost (iterations), LE |
//! | 20 | 4 | Argon2 parallelism (lanes), LE |
//! | 24 | 16 | salt (random per write) |
//! | 40 | 12 | AES-GCM nonce (random per write) |
//! | 52 | 32 | master key encrypted with AES-256-GCM under the Argon2id output |
//! | 84 | 16 | GCM tag; associated data = bytes 0..52 |
//!
//! ## Invariants
//! - Every field that changes the meaning of the file (version, KDF, costs,
//!   salt, nonce) is authenticated as associated data, so editing any byte
//!   makes unwrapping fail.
//! - Salt and nonce are fresh random bytes on every wrap, so a (KEK, nonce)
//!   pair never encrypts twice.
//! - Parsing bounds the KDF costs before any work is done, so a hostile file
//!   cannot make us allocate gigabytes or loop for hours.

use std::fmt;

use rayon::iter::{IntoParallelIterator, ParallelExtend, ParallelIterator};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::aead;
use crate::error::{Error, ErrorKind, Result};
use crate::id::ChunkId;

const CTX_ID: &str = "asheville 2026-11 chunk id key v1";
const CTX_SEAL: &str = "asheville 2026-11 blob seal key v1";

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::new(ErrorKind::Io, "the operating system's random source failed")
            .with_context("detail", e)
    })
}

macro_rules! secret_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw key bytes (for applications that manage keys themselves).
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// The raw key bytes. Handle with care: never log or store them unwrapped.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// A tenant's master key: 32 random bytes from which every other key of
    /// the tenant is derived. Zeroized on drop; `Debug` prints `<redacted>`.
    MasterKey
);
secret_key!(
    /// The key of the keyed hash that makes chunk ids.
    IdKey
);
secret_key!(
    /// The root of the per-chunk sealing keys.
    SealKey
);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<MasterKey> {
        let mut b = [0u8; 32];
        fill_random(&mut b)?;
        let k = MasterKey(b);
        b.zeroize();
        Ok(k)
    }

    /// The id key derived from this master key.
    pub fn id_key(&self) -> IdKey {
        IdKey(blake3::derive_key(CTX_ID, &self.0))
    }

    /// The sealing root key derived from this master key.
    pub fn seal_key(&self) -> SealKey {
        SealKey(blake3::derive_key(CTX_SEAL, &self.0))
    }
}

impl SealKey {
    /// The AES-256 key for one chunk.
    pub fn chunk_key(&self, id: &ChunkId) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*blake3::keyed_hash(&self.0, id.as_bytes()).as_bytes())
    }
}

/// The keys a tenant uses on the hot path, derived once from the master key.
#[derive(Clone)]
pub struct TenantKeys {
    id: IdKey,
    seal: SealKey,
}

impl TenantKeys {
    /// Derives the working keys from a master key.
    pub fn new(master: &MasterKey) -> TenantKeys {
        TenantKeys {
            id: master.id_key(),
            seal: master.seal_key(),
        }
    }

    /// The id key.
    pub fn id_key(&self) -> &IdKey {
        &self.id
    }

    /// The sealing root key.
    pub fn seal_key(&self) -> &SealKey {
        &self.seal
    }

    /// The chunk id of `plaintext`.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId::compute(&self.id, plaintext)
    }
}

impl fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantKeys(<redacted>)")
    }
}

/// Argon2id cost parameters, stored in the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 iterations, 4 lanes: the second recommended option of
    /// RFC 9106 §4. The lanes are filled in parallel on the cores there
    /// are (about 0.1 s on two cores of a current server CPU, 0.2 s on
    /// one); the memory an attacker needs per guess stays 64 MiB.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

impl KdfParams {
    /// Cheapest parameters allowed; for tests only, never for real keys.
    pub const INSECURE_FAST_FOR_TESTS: KdfParams = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };

    /// Upper bounds accepted when reading a file: 4 GiB, 64 passes, 64 lanes.
    pub const MAX: KdfParams = KdfParams {
        memory_kib: 4 * 1024 * 1024,
        iterations: 64,
        parallelism: 64,
    };

    /// Checks the parameters against Argon2's rules and our upper bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid Argon2id parameters: {what}"),
            )
            .with_context("memory_kib", self.memory_kib)
            .with_context("iterations", self.iterations)
            .with_context("parallelism", self.parallelism)
        };
        if self.parallelism == 0 || self.parallelism > Self::MAX.parallelism {
            return Err(bad("parallelism must be 1..=64"));
        }
        if self.iterations == 0 || self.iterations > Self::MAX.iterations {
            return Err(bad("iterations must be 1..=64"));
        }
        if self.memory_kib < 8 * self.parallelism || self.memory_kib > Self::MAX.memory_kib {
            return Err(bad(
                "memory must be at least 8 KiB per lane and at most 4 GiB",
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>> {
        self.validate()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| {
                    Error::new(ErrorKind::InvalidConfig, "invalid Argon2id parameters")
                        .with_context("detail", e)
                })?;
        let blocks = params.block_count();
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        // The memory, zeroed by every core at once. `hash_password_into`
        // allocates it zeroed, which for its 64-byte-aligned blocks means
        // one thread writing zeros over fresh pages before the lanes are
        // filled in parallel (64 MiB, 16,384 page faults). `asheville ls`
        // of the peers repository on two cores, which is mostly the
        // unlock: 109 -> 86 ms and 104 -> 78 ms (hyperfine, two runs, means
        // of 30).
        // Reserved first so that memory a key file asks for and the machine
        // lacks is an error, not an abort.
        let mut memory: Vec<argon2::Block> = Vec::new();
        memory.try_reserve_exact(blocks).map_err(|_| {
            Error::new(ErrorKind::InvalidInput, "not enough memory for Argon2id")
                .with_context("memory_kib", self.memory_kib)
        })?;
        memory.par_extend(
            (0..blocks)
                .into_par_iter()
                .map(|_| argon2::Block::default()),
        );
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into_with_memory(passphrase, salt, out.as_mut(), &mut memory[..])
            .map_err(|e| {
                Error::new(ErrorKind::InvalidInput, "Argon2id failed").with_context("detail", e)
            })?;
        // Unmapped on the pool behind the caller, who has waited long
        // enough: 16,384 pages took 6 ms to free, after a cold unlock of
        // 90-100 ms that `asheville get` waits for.
        rayon::spawn(move || drop(memory));
        Ok(out)
    }
}

/// A master key wrapped under a passphrase (see the module docs for the
/// byte layout). Safe to store anywhere: without the passphrase it reveals
/// nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    params: KdfParams,
    salt: [u8; 16],
    nonce: [u8; 12],
    wrapped: [u8; 32],
    tag: [u8; 16],
}

const MAGIC: &[u8; 8] = b"ASHVKEY\0";
const VERSION: u8 = 1;
const KDF_ARGON2ID: u8 = 1;
/// Size of a version-1 key file.
pub const KEY_FILE_LEN: usize = 100;

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl KeyFile {
    /// Wraps `master` under `passphrase` with fresh salt and nonce.
    pub fn wrap(master: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<KeyFile> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        fill_random(&mut salt)?;
        fill_random(&mut nonce)?;
        let kek = params.derive(passphrase, &salt)?;
        let mut kf = KeyFile {
            params,
            salt,
            nonce,
            wrapped: *master.as_bytes(),
            tag: [0; 16],
        };
        let aad = kf.header();
        kf.tag = aead::fastest().seal_in_place(&kek, &nonce, &aad, &mut kf.wrapped)?;
        Ok(kf)
    }

    /// The Argon2id parameters stored in the file.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// Recovers the master key. A wrong passphrase, or any modified byte,
    /// gives [`ErrorKind::WrongKey`].
    pub fn unwrap_key(&self, passphrase: &[u8]) -> Result<MasterKey> {
        let kek = self.params.derive(passphrase, &self.salt)?;
        let mut buf = Zeroizing::new(self.wrapped);
        aead::fastest()
            .open_in_place(&kek, &self.nonce, &self.header(), buf.as_mut(), &self.tag)
            .map_err(|_| {
                Error::new(
                    ErrorKind::WrongKey,
                    "the passphrase is wrong or the key file was modified",
                )
            })?;
        Ok(MasterKey::from_bytes(*buf))
    }

    /// Unwraps with `old` and wraps the same master key under `new` (with
    /// new salt, nonce and `params`). The master key, and so all data,
    /// stays the same.
    pub fn rewrap(&self, old: &[u8], new: &[u8], params: KdfParams) -> Result<KeyFile> {
        let master = self.unwrap_key(old)?;
        KeyFile::wrap(&master, new, params)
    }

    fn header(&self) -> [u8; 52] {
        let mut h = [0u8; 52];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = VERSION;
        h[9] = KDF_ARGON2ID;
        h[12..16].copy_from_slice(&self.params.memory_kib.to_le_bytes());
        h[16..20].copy_from_slice(&self.params.iterations.to_le_bytes());
        h[20..24].copy_from_slice(&self.params.parallelism.to_le_bytes());
        h[24..40].copy_from_slice(&self.salt);
        h[40..52].copy_from_slice(&self.nonce);
        h
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> [u8; KEY_FILE_LEN] {
        let mut out = [0u8; KEY_FILE_LEN];
        out[..52].copy_from_slice(&self.header());
        out[52..84].copy_from_slice(&self.wrapped);
        out[84..100].copy_from_slice(&self.tag);
        out
    }

    /// Parses a key file. Cheap: no KDF runs until [`KeyFile::unwrap_key`].
    pub fn parse(bytes: &[u8]) -> Result<KeyFile> {
        let bad = |msg: &'static str| Error::new(ErrorKind::InvalidInput, msg);
        if bytes.len() < 9 || &bytes[0..8] != MAGIC {
            return Err(bad("not an Asheville key file (bad magic)"));
        }
        if bytes[8] != VERSION {
            return Err(
                Error::new(ErrorKind::Unsupported, "unknown key file version")
                    .with_context("version", bytes[8]),
            );
        }
        if bytes.len() != KEY_FILE_LEN {
            return Err(bad("key file has the wrong length").with_context("len", bytes.len()));
        }
        if bytes[9] != KDF_ARGON2ID {
            return Err(
                Error::new(ErrorKind::Unsupported, "unknown key derivation function")
                    .with_context("kdf", bytes[9]),
            );
        }
        if bytes[10..12] != [0, 0] {
            return Err(bad("reserved bytes of the key file are not zero"));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let params = KdfParams {
            memory_kib: u32_at(12),
            iterations: u32_at(16),
            parallelism: u32_at(20),
        };
        params.validate()?;
        let mut kf = KeyFile {
            params,
            salt: [0; 16],
            nonce: [0; 12],
            wrapped: [0; 32],
            tag: [0; 16],
        };
        kf.salt.copy_from_slice(&bytes[24..40]);
        kf.nonce.copy_from_slice(&bytes[40..52]);
        kf.wrapped.copy_from_slice(&bytes[52..84]);
        kf.tag.copy_from_slice(&bytes[84..100]);
        Ok(kf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams::INSECURE_FAST_FOR_TESTS;

    /// The key derived with memory we zero ourselves is the key argon2
    /// derives with memory it allocates: key files written before keep
    /// opening. Lanes 1 and 4 (filled in parallel), passes 1 and 3.
    #[test]
    fn derive_gives_the_key_argon2_gives() {
        let salt = [7u8; 16];
        for (memory_kib, iterations, parallelism) in [(64, 1, 1), (1024, 3, 4), (4096, 1, 4)] {
            let kdf = KdfParams {
                memory_kib,
                iterations,
                parallelism,
            };
            let ours = kdf.derive(b"correct horse", &salt).unwrap();
            let params =
                argon2::Params::new(memory_kib, iterations, parallelism, Some(32)).unwrap();
            let mut theirs = [0u8; 32];
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(b"correct horse", &salt, &mut theirs)
                .unwrap();
            assert_eq!(*ours, theirs, "{kdf:?}");
        }
    }

    #[test]
    fn wrap_unwrap_rewrap() {
        let master = MasterKey::generate().unwrap();
        let kf = KeyFile::wrap(&master, b"correct horse", FAST).unwrap();
        let bytes = kf.to_bytes();
        let parsed = KeyFile::parse(&bytes).unwrap();
        assert_eq!(parsed, kf);
        assert_eq!(parsed.unwrap_key(b"correct horse").unwrap(), master);
        let e = parsed.unwrap_key(b"wrong").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongKey);

        let re = parsed
            .rewrap(b"correct horse", b"battery staple", FAST)
            .unwrap();
        assert_ne!(re.to_bytes(), bytes, "fresh salt and nonce");
        assert_eq!(re.unwrap_key(b"battery staple").unwrap(), master);
        assert!(re.unwrap_key(b"correct horse").is_err());
        assert!(parsed.rewrap(b"nope", b"x", FAST).is_err());
    }

    #[test]
    fn every_byte_is_authenticated() {
        let master = MasterKey::from_bytes([5; 32]);
        let bytes = KeyFile::wrap(&master, b"pw", FAST).unwrap().to_bytes();
        for i in 0..KEY_FILE_LEN {
            let mut b = bytes;
            b[i] ^= 0x01;
            // Either the parse refuses it, or unwrapping does; never a wrong key.
            if let Ok(kf) = KeyFile::parse(&b) {
                // A flipped cost byte can make a valid but different (and for
                // memory, larger) KDF; it must still fail.
                let e = kf.unwrap_key(b"pw").unwrap_err();
                assert_eq!(e.kind(), ErrorKind::WrongKey, "byte {i}");
            }
        }
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(
            KeyFile::parse(b"").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let master = MasterKey::from_bytes([5; 32]);
        let bytes = KeyFile::wrap(&master, b"pw", FAST).unwrap().to_bytes();
        assert_eq!(
            KeyFile::parse(&bytes[..99]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let mut v2 = bytes;
        v2[8] = 2;
        assert_eq!(
            KeyFile::parse(&v2).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let mut huge = bytes;
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            KeyFile::parse(&huge).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let m = MasterKey::from_bytes([0xab; 32]);
        let s = format!("{m:?} {:?} {:?}", m.id_key(), TenantKeys::new(&m));
        assert!(!s.contains("ab, ") && !s.contains("171"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn derived_keys_differ() {
        let m = MasterKey::from_bytes([1; 32]);
        assert_ne!(m.id_key().as_bytes(), m.seal_key().as_bytes());
        assert_ne!(m.id_key().as_bytes(), m.as_bytes());
        let a = ChunkId::from_bytes([1; 32]);
        let b = ChunkId::from_bytes([2; 32]);
        assert_ne!(*m.seal_key().chunk_key(&a), *m.seal_key().chunk_key(&b));
    }

    #[test]
    fn key_files_of_one_and_of_several_lanes_both_open() {
        // Repositories made before the default became 4 lanes hold 1-lane
        // key files: the lane count is read from the file, not assumed.
        let master = MasterKey::generate().unwrap();
        for parallelism in [1, 4] {
            let params = KdfParams {
                memory_kib: 256,
                iterations: 1,
                parallelism,
            };
            let kf = KeyFile::wrap(&master, b"pw", params).unwrap();
            let parsed = KeyFile::parse(&kf.to_bytes()).unwrap();
            assert_eq!(parsed.params(), params);
            assert_eq!(parsed.unwrap_key(b"pw").unwrap(), master);
        }
    }

    #[test]
    fn default_params_are_valid() {
        KdfParams::default().validate().unwrap();
        FAST.validate().unwrap();
    }
}
