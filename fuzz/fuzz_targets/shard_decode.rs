//! Decoding arbitrary shards: an error, or data whose re-encoding verifies;
//! and a real shard set with input-chosen damage decodes to the original
//! whenever at most m shards are damaged.
#![no_main]
use asheville_core::{verify_shard, Codec, Redundancy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_shard(data);
    let Some((&sel, rest)) = data.split_first() else { return };
    let policy = match sel % 4 {
        0 => Redundancy::None,
        1 => Redundancy::Replicas(3),
        2 => Redundancy::ReedSolomon { data: 4, parity: 2 },
        _ => Redundancy::ReedSolomon { data: 3, parity: 1 },
    };
    let codec = Codec::new(policy).expect("codec");
    // Arbitrary slices as shards.
    let n = policy.total_shards();
    let parts: Vec<&[u8]> = rest.chunks(rest.len() / n + 1).collect();
    let slots: Vec<Option<&[u8]>> = (0..n).map(|i| parts.get(i).copied()).collect();
    let _ = codec.decode(&slots);
    // Real shards, damaged at input-chosen places in up to m shards.
    let mut shards = codec.encode(rest).expect("encode");
    let m = policy.tolerated_losses();
    for (j, &b) in rest.iter().take(m).enumerate() {
        let victim = (b as usize + j) % n;
        let len = shards[victim].len();
        shards[victim][(b as usize * 31 + j) % len] ^= 0x5a;
    }
    let slots: Vec<Option<&[u8]>> = shards.iter().map(|s| Some(&s[..])).collect();
    let decoded = codec.decode(&slots).expect("at most m shards damaged");
    assert_eq!(decoded.data, rest);
});
