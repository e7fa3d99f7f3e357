//! One file through Asheville's core write path and back, with two of six
//! shards lost on the way.
//!
//! `cargo run -p asheville-examples --example seal_and_protect [FILE]`
//! (without FILE it uses 8 MiB of generated data).

use asheville_core::{
    ChunkerConfig, Codec, Compression, MasterKey, Placement, Redundancy, Sealer, Slot, TenantKeys,
    aead, chunk_slice,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    };
    let keys = TenantKeys::new(&MasterKey::generate()?);
    let sealer = Sealer::new(
        keys.seal_key().clone(),
        Compression::Zstd { level: 3 },
        aead::fastest(),
    )?;
    let codec = Codec::new("rs(4,2)".parse::<Redundancy>()?)?;
    let placement = Placement::new((0..6).map(|i| Slot::new(format!("disk{i}"))).collect())?;

    let mut restored = Vec::with_capacity(data.len());
    let ranges = chunk_slice(&ChunkerConfig::default(), &data)?;
    let mut stored = 0usize;
    for r in &ranges {
        let chunk = &data[r.clone()];
        let id = keys.chunk_id(chunk);
        let shards = codec.encode(&sealer.seal(&id, chunk)?)?;
        stored += shards.iter().map(Vec::len).sum::<usize>();
        let disks = placement.place(id.as_bytes(), shards.len())?;
        // Lose the shards on disk0 and disk1, wherever they were placed.
        let slots: Vec<Option<&[u8]>> = shards
            .iter()
            .zip(&disks)
            .map(|(s, &d)| (d >= 2).then_some(&s[..]))
            .collect();
        let blob = codec.decode(&slots)?.data;
        restored.extend_from_slice(&sealer.open(&id, &blob)?);
    }
    assert_eq!(restored, data);
    println!(
        "{} bytes in {} chunks -> {} bytes of shards on 6 disks; read back identical with disk0 and disk1 lost",
        data.len(),
        ranges.len(),
        stored
    );
    Ok(())
}
