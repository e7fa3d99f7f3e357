//! 32-byte identifiers: [`ChunkId`] (keyed BLAKE3 of a chunk's plaintext)
//! and [`PackId`] (names a pack of sealed blobs).
//!
//! Both have a binary form (32 bytes) and a text form (64 lowercase hex
//! digits). Parsing accepts upper- or lowercase hex and rejects anything
//! else with [`ErrorKind::InvalidInput`].

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::IdKey;

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Length of the binary form in bytes.
            pub const LEN: usize = 32;

            /// Wraps 32 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// Parses the binary form; the slice must be exactly 32 bytes.
            pub fn try_from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        concat!("a ", $what, " is 32 bytes"),
                    )
                    .with_context("got_bytes", bytes.len())
                })?;
                Ok($name(arr))
            }

            /// The binary form.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The text form: 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity(64);
                for b in self.0 {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 0xf) as usize] as char);
                }
                s
            }

            /// Parses the text form (64 hex digits, either case).
            pub fn from_hex(s: &str) -> Result<Self> {
                parse_hex32(s).map($name).map_err(|e| {
                    Error::new(ErrorKind::InvalidInput, concat!("not a valid ", $what))
                        .with_context("reason", e)
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), &self.to_hex()[..16])
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::from_hex(s)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        /// Text formats (JSON) carry the 64 hex digits; binary ones
        /// (postcard: catalog records, pack trailers, journals) the 32
        /// bytes, and also read the hex form that binary records held
        /// before 2026-12.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    Self::from_hex(&s).map_err(serde::de::Error::custom)
                } else {
                    d.deserialize_bytes(IdVisitor).map($name)
                }
            }
        }
    };
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// An id in a binary format: 32 bytes, or the 64 hex digits of older
/// records (postcard writes strings and bytes alike: length, then bytes).
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 bytes or 64 hex digits")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<[u8; 32], E> {
        match v.len() {
            32 => Ok(v.try_into().map_err(E::custom)?),
            64 => {
                let s = std::str::from_utf8(v).map_err(E::custom)?;
                parse_hex32(s).map_err(E::custom)
            }
            n => Err(E::invalid_length(n, &self)),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<[u8; 32], E> {
        self.visit_bytes(v.as_bytes())
    }
}

fn parse_hex32(s: &str) -> std::result::Result<[u8; 32], String> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(format!(
            "expected 64 hex digits, got {} characters",
            s.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi =
            hex_val(pair[0]).ok_or_else(|| format!("non-hex character at position {}", 2 * i))?;
        let lo = hex_val(pair[1])
            .ok_or_else(|| format!("non-hex character at position {}", 2 * i + 1))?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

define_id!(
    /// Identifies a chunk: `BLAKE3-keyed(tenant id key, plaintext)`.
    ///
    /// Keyed, so an id reveals nothing about the data to someone without the
    /// tenant's key; per tenant, so deduplication never crosses tenants.
    ChunkId,
    "chunk id"
);

define_id!(
    /// Identifies a pack of sealed blobs (chosen by the storage layer).
    PackId,
    "pack id"
);

impl ChunkId {
    /// Computes the id of `plaintext` under a tenant's id key.
    pub fn compute(key: &IdKey, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(key.as_bytes(), plaintext).as_bytes())
    }
}

impl PackId {
    /// A fresh random pack id.
    pub fn random() -> Result<PackId> {
        let mut b = [0u8; 32];
        crate::keys::fill_random(&mut b)?;
        Ok(PackId(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    #[test]
    fn ids_are_bytes_in_binary_records_hex_in_json_and_old_hex_records_still_read() {
        let id = ChunkId::from_bytes(*blake3::hash(b"x").as_bytes());
        let bin = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bin.len(), 33, "a length byte and the 32 bytes");
        assert_eq!(&bin[1..], id.as_bytes());
        assert_eq!(postcard::from_bytes::<ChunkId>(&bin).unwrap(), id);
        // Records written before held the hex digits, also inside larger
        // records (a catalog record has fields after its ids).
        let old = postcard::to_stdvec(&(id.to_hex(), 7u64)).unwrap();
        assert_eq!(
            postcard::from_bytes::<(ChunkId, u64)>(&old).unwrap(),
            (id, 7)
        );
        let pack = PackId::from_bytes([9; 32]);
        let old = postcard::to_stdvec(&pack.to_hex()).unwrap();
        assert_eq!(postcard::from_bytes::<PackId>(&old).unwrap(), pack);
        // Other lengths, and 64 bytes that are not hex, are refused.
        for bad in [vec![1u8; 31], vec![1u8; 33], vec![b'g'; 64]] {
            let enc = postcard::to_stdvec(&bad).unwrap();
            assert!(postcard::from_bytes::<ChunkId>(&enc).is_err(), "{bad:?}");
        }
        // JSON keeps the hex form.
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
    }

    #[test]
    fn hex_errors_are_clear() {
        let e = ChunkId::from_hex("abc").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("expected 64 hex digits"), "{e}");
        let bad = "g".repeat(64);
        let e = ChunkId::from_hex(&bad).unwrap_err();
        assert!(e.to_string().contains("position 0"), "{e}");
        assert!(ChunkId::try_from_slice(&[0u8; 31]).is_err());
    }

    #[test]
    fn id_depends_on_key_and_data() {
        let a = MasterKey::from_bytes([1; 32]).id_key();
        let b = MasterKey::from_bytes([2; 32]).id_key();
        assert_ne!(ChunkId::compute(&a, b"x"), ChunkId::compute(&b, b"x"));
        assert_ne!(ChunkId::compute(&a, b"x"), ChunkId::compute(&a, b"y"));
        assert_eq!(ChunkId::compute(&a, b"x"), ChunkId::compute(&a, b"x"));
        // The id is not the unkeyed hash.
        assert_ne!(
            ChunkId::compute(&a, b"x").as_bytes(),
            blake3::hash(b"x").as_bytes()
        );
    }

    proptest! {
        #[test]
        fn hex_and_binary_round_trip(bytes in any::<[u8; 32]>()) {
            let id = ChunkId::from_bytes(bytes);
            prop_assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
            prop_assert_eq!(ChunkId::from_hex(&id.to_hex().to_uppercase()).unwrap(), id);
            prop_assert_eq!(ChunkId::try_from_slice(id.as_bytes()).unwrap(), id);
            prop_assert_eq!(*PackId::from_hex(&id.to_hex()).unwrap().as_bytes(), bytes);
        }
    }
}
