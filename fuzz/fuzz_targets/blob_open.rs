//! Opening arbitrary bytes as a blob must return an error or the exact
//! plaintext that was sealed; never panic, never garbage.
#![no_main]
use asheville_core::{aead, BlobHeader, Compression, MasterKey, Sealer, TenantKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = TenantKeys::new(&MasterKey::from_bytes([9; 32]));
    let sealer = Sealer::new(keys.seal_key().clone(), Compression::Zstd { level: 1 }, aead::fastest())
        .expect("valid sealer");
    // 1. Arbitrary bytes as a blob: must not open (the tag cannot verify).
    let id = keys.chunk_id(b"fixed");
    let _ = BlobHeader::parse(data);
    assert!(sealer.open(&id, data).is_err());
    // 2. A real blob of the input with one byte changed by the input: must
    //    fail, and the untouched blob must open to the input.
    let id = keys.chunk_id(data);
    let blob = sealer.seal(&id, data).expect("seal");
    assert_eq!(sealer.open(&id, &blob).expect("open"), data);
    if let Some((&pos, _)) = data.split_first() {
        let mut bad = blob.clone();
        let i = pos as usize % bad.len();
        bad[i] ^= 0x80;
        assert!(sealer.open(&id, &bad).is_err());
    }
});
