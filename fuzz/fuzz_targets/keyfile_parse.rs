//! Parsing arbitrary bytes as a key file: an error or a key file that
//! serialises back to the same bytes; never a panic.
#![no_main]
use asheville_core::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = KeyFile::parse(data) {
        assert_eq!(&kf.to_bytes()[..], data);
        // Only run the KDF when the input asks for a cheap one.
        let p = kf.params();
        if p.memory_kib <= 64 && p.iterations <= 2 {
            assert!(kf.unwrap_key(b"fuzz").is_err());
        }
    }
});
