//! The write pipeline against the limit its own primitives set, measured
//! side by side in one run, printed as one markdown table.
//!
//! `cargo bench -p asheville-benches --bench pipeline`
//!
//! Env: `ASHEVILLE_BENCH_MB` (default 256) MiB of random data,
//! `ASHEVILLE_BENCH_RUNS` (default 5) runs per figure; medians are printed.
//!
//! The serial limit is `1 / Σ (1 / speed_i)` over the primitives the
//! pipeline runs on every byte (chunking, keyed BLAKE3, sealing, and the
//! redundancy codec with its shard checksums), each measured here in the
//! same shape the pipeline uses it.

use std::time::Instant;

use asheville_benches::{mb_per_s, pipeline, random_data, split, text_data};
use asheville_core::{
    ChunkerConfig, Codec, Compression, MasterKey, Redundancy, Sealer, TenantKeys, aead, chunk_slice,
};

fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> asheville_core::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // we need. Either way, run.
    let n = env("ASHEVILLE_BENCH_MB", 256) << 20;
    let runs = env("ASHEVILLE_BENCH_RUNS", 5);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let data = random_data(n, 42);
    let keys = TenantKeys::new(&MasterKey::from_bytes([3; 32]));
    let cfg = ChunkerConfig::default();
    let pack_target = 16 << 20;
    let policy: Redundancy = "rs(4,2)".parse()?;
    let codec = Codec::new(policy)?;
    let sealer = Sealer::new(keys.seal_key().clone(), Compression::None, aead::fastest())?;

    let ranges = chunk_slice(&cfg, &data)?;
    let chunks: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
    let ids: Vec<_> = chunks.iter().map(|c| keys.chunk_id(c)).collect();
    let mut sealed = Vec::with_capacity(n + chunks.len() * 64);
    for (c, id) in chunks.iter().zip(&ids) {
        sealer.seal_into(id, c, &mut sealed)?;
    }
    let packs: Vec<&[u8]> = sealed.chunks(pack_target).collect();

    let mut rows: Vec<(String, f64)> = Vec::new();
    let t = median_secs(runs, || {
        std::hint::black_box(chunk_slice(&cfg, &data).map(|v| v.len()).ok());
    });
    rows.push((
        "FastCDC 2020 (ours, 4 lanes), avg 1 MiB".into(),
        mb_per_s(n, t),
    ));
    let t = median_secs(runs, || {
        for c in &chunks {
            std::hint::black_box(keys.chunk_id(c));
        }
    });
    rows.push(("chunk id: keyed BLAKE3 per chunk".into(), mb_per_s(n, t)));
    let mut out = Vec::with_capacity(5 << 20);
    let t = median_secs(runs, || {
        for (c, id) in chunks.iter().zip(&ids) {
            out.clear();
            sealer.seal_into(id, c, &mut out).ok();
        }
    });
    rows.push((
        format!("seal: AES-256-GCM ({}) per chunk", aead::fastest().name()),
        mb_per_s(n, t),
    ));
    // Packs are handed to the codec by value (as the pipeline does); the
    // copies that make them are outside the timed part.
    let mut times: Vec<f64> = (0..=runs)
        .map(|_| {
            let owned: Vec<Vec<u8>> = packs.iter().map(|p| p.to_vec()).collect();
            let s = Instant::now();
            for p in owned {
                std::hint::black_box(codec.encode_pack(p).ok());
            }
            s.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    rows.push((
        format!("protect: {policy} encode + shard BLAKE3, 16 MiB packs"),
        mb_per_s(n, t),
    ));

    let limit = 1.0 / rows.iter().map(|(_, s)| 1.0 / s).sum::<f64>();

    let t1 = median_secs(runs, || {
        pipeline(&data, &cfg, &keys, &sealer, &codec, pack_target).ok();
    });
    let single = mb_per_s(n, t1);
    let parts = split(n, threads);
    let tn = median_secs(runs, || {
        std::thread::scope(|s| {
            for r in &parts {
                let (data, cfg, keys, sealer, codec) =
                    (&data[r.clone()], &cfg, &keys, &sealer, &codec);
                s.spawn(move || pipeline(data, cfg, keys, sealer, codec, pack_target).ok());
            }
        });
    });
    let multi = mb_per_s(n, tn);

    // Compression on, over text, for reference (zstd dominates).
    let text = text_data(n.min(64 << 20), 9);
    let zsealer = Sealer::new(
        keys.seal_key().clone(),
        Compression::Zstd { level: 1 },
        aead::fastest(),
    )?;
    let tz = median_secs(runs.min(3), || {
        pipeline(&text, &cfg, &keys, &zsealer, &codec, pack_target).ok();
    });
    let zstd_text = mb_per_s(text.len(), tz);

    println!();
    println!(
        "Asheville write pipeline, {} MiB random data, median of {runs} runs, {threads} threads available",
        n >> 20
    );
    println!();
    println!("| step | MB/s |");
    println!("|---|---:|");
    for (name, s) in &rows {
        println!("| {name} | {s:.0} |");
    }
    println!("| **serial limit** 1/Σ(1/speed) | **{limit:.0}** |");
    println!(
        "| pipeline, 1 thread, compression off | {single:.0} ({:.0}% of limit) |",
        100.0 * single / limit
    );
    println!(
        "| pipeline, {threads} threads, compression off | {multi:.0} ({:.2}× one thread) |",
        multi / single
    );
    println!("| pipeline, 1 thread, zstd level 1, text data | {zstd_text:.0} |");
    println!();
    Ok(())
}
