//! AES-256-GCM behind one small trait, with two implementations.
//!
//! AES-256-GCM is one standard, so every implementation must produce the
//! same bytes for the same key, nonce, associated data and plaintext (a test
//! checks it). We keep:
//!
//! | implementation | when | measured on this project's CI CPU (1 thread) |
//! |---|---|---|
//! | [`RingAesGcm`] (`ring` 0.17, feature `ring`, on by default) | default | ~8.5 GB/s |
//! | [`RustCryptoAesGcm`] (`aes-gcm` 0.11) | always built; portable fallback | ~2.9 GB/s |
//!
//! [`fastest`] returns the fastest one this build has.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};

use crate::error::{Error, ErrorKind, Result};

/// Key length of AES-256-GCM in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM implementation. Detached-tag, in-place API: the caller owns
/// the buffer, so sealing a blob needs no extra copy.
pub trait AesGcm: Send + Sync + 'static {
    /// A short name for reports and benchmarks.
    fn name(&self) -> &'static str;

    /// Encrypts `buf` in place and returns the tag.
    fn seal_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]>;

    /// Checks `tag` and decrypts `buf` in place. On failure `buf`'s contents
    /// are unspecified and must not be used.
    fn open_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()>;
}

fn auth_failed() -> Error {
    Error::new(
        ErrorKind::Integrity,
        "authentication failed: the data was modified, truncated, or sealed under another key",
    )
}

/// The RustCrypto `aes-gcm` crate: pure Rust, portable, uses AES-NI/CLMUL
/// when the CPU has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCryptoAesGcm;

impl AesGcm for RustCryptoAesGcm {
    fn name(&self) -> &'static str {
        "aes-gcm"
    }

    fn seal_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let cipher = Aes256Gcm::new(key.into());
        let tag = cipher
            .encrypt_inout_detached(nonce.into(), aad, buf.into())
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "plaintext too long for AES-GCM"))?;
        Ok(tag.into())
    }

    fn open_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let cipher = Aes256Gcm::new(key.into());
        cipher
            .decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into())
            .map_err(|_| auth_failed())
    }
}

/// `ring`'s AES-256-GCM (BoringSSL assembly; VAES/AVX-512 where present).
#[cfg(feature = "ring")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RingAesGcm;

#[cfg(feature = "ring")]
impl RingAesGcm {
    fn key(key: &[u8; KEY_LEN]) -> Result<ring::aead::LessSafeKey> {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "bad AES-256 key length"))?;
        Ok(ring::aead::LessSafeKey::new(unbound))
    }
}

#[cfg(feature = "ring")]
impl AesGcm for RingAesGcm {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn seal_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        // The nonce uniqueness argument for blobs is in `seal`'s module docs;
        // key files use a fresh random nonce every time they are written.
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = Self::key(key)?
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "plaintext too long for AES-GCM"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open_in_place(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = ring::aead::Tag::from(*tag);
        Self::key(key)?
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, buf, 0..)
            .map(|_| ())
            .map_err(|_| auth_failed())
    }
}

/// The fastest implementation in this build (`ring` when its feature is on).
pub fn fastest() -> &'static dyn AesGcm {
    #[cfg(feature = "ring")]
    {
        &RingAesGcm
    }
    #[cfg(not(feature = "ring"))]
    {
        &RustCryptoAesGcm
    }
}

/// Every implementation in this build, fastest first.
pub fn all() -> Vec<&'static dyn AesGcm> {
    vec![
        #[cfg(feature = "ring")]
        &RingAesGcm,
        &RustCryptoAesGcm,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn implementations_agree_and_round_trip(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut outputs = Vec::new();
            for imp in all() {
                let mut buf = data.clone();
                let tag = imp.seal_in_place(&key, &nonce, &aad, &mut buf).unwrap();
                outputs.push((buf.clone(), tag));
                // Every implementation opens what every other one sealed.
                for other in all() {
                    let mut b = buf.clone();
                    other.open_in_place(&key, &nonce, &aad, &mut b, &tag).unwrap();
                    prop_assert_eq!(&b, &data);
                }
            }
            for w in outputs.windows(2) {
                prop_assert_eq!(&w[0], &w[1]);
            }
        }
    }

    #[test]
    fn tampering_is_detected_by_every_implementation() {
        for imp in all() {
            let key = [7u8; 32];
            let nonce = [9u8; 12];
            let mut buf = b"hello world".to_vec();
            let tag = imp.seal_in_place(&key, &nonce, b"ad", &mut buf).unwrap();
            let mut flipped = buf.clone();
            flipped[3] ^= 1;
            let e = imp
                .open_in_place(&key, &nonce, b"ad", &mut flipped, &tag)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{}", imp.name());
            let mut b = buf.clone();
            assert!(
                imp.open_in_place(&key, &nonce, b"AD", &mut b, &tag)
                    .is_err()
            );
            let mut b = buf.clone();
            assert!(
                imp.open_in_place(&[8u8; 32], &nonce, b"ad", &mut b, &tag)
                    .is_err()
            );
        }
    }
}
