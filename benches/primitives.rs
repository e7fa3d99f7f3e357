//! Criterion benchmarks of every primitive of the write and read paths.
//!
//! `cargo bench -p asheville-benches --bench primitives`
//! Data size: `ASHEVILLE_BENCH_MB` (default 256) MiB of random data.

use std::hint::black_box;
use std::time::Duration;

use asheville_benches::{random_data, text_data};
use asheville_core::{
    ChunkerConfig, Codec, Compression, MasterKey, Redundancy, Sealer, TenantKeys, aead, chunk_slice,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn size() -> usize {
    std::env::var("ASHEVILLE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
        << 20
}

fn benches(c: &mut Criterion) {
    let n = size();
    let data = random_data(n, 1);
    let text = text_data(n.min(64 << 20), 2);
    let keys = TenantKeys::new(&MasterKey::from_bytes([7; 32]));
    let mib_chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();

    let mut g = c.benchmark_group("primitives");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(n as u64));

    // Same boundaries; ours hashes four stretches at once.
    g.bench_function("fastcdc_v2020_ours_4_lanes", |b| {
        b.iter(|| chunk_slice(&ChunkerConfig::default(), black_box(&data)).map(|v| v.len()))
    });
    g.bench_function("fastcdc_v2020_crate", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(black_box(&data), 256 << 10, 1 << 20, 4 << 20).count()
        })
    });
    g.bench_function("blake3_keyed_1MiB", |b| {
        b.iter(|| {
            mib_chunks
                .iter()
                .map(|c| keys.chunk_id(c).as_bytes()[0] as usize)
                .sum::<usize>()
        })
    });
    for imp in aead::all() {
        let mut buf = data.clone();
        g.bench_function(format!("aes256gcm_{}_1MiB", imp.name()), |b| {
            b.iter(|| {
                for c in buf.chunks_mut(1 << 20) {
                    black_box(imp.seal_in_place(&[1; 32], &[2; 12], b"", c).ok());
                }
            })
        });
    }
    let id = keys.chunk_id(b"x");
    for imp in aead::all() {
        let s = Sealer::new(keys.seal_key().clone(), Compression::None, imp).expect("sealer");
        let mut out = Vec::with_capacity(2 << 20);
        g.bench_function(format!("seal_blob_{}_1MiB", imp.name()), |b| {
            b.iter(|| {
                for c in &mib_chunks {
                    out.clear();
                    black_box(s.seal_into(&id, c, &mut out).ok());
                }
            })
        });
    }
    // Small files: 8 KiB chunks sealed with the default compression, random
    // (stored as they are) and text (compressed), 16 MiB of each.
    {
        let s = Sealer::new(
            keys.seal_key().clone(),
            Compression::Zstd { level: 3 },
            aead::fastest(),
        )
        .expect("sealer");
        let mut out = Vec::with_capacity(16 << 10);
        let small = 16 << 20;
        g.throughput(Throughput::Bytes(small as u64));
        for (name, from) in [("random", &data), ("text", &text)] {
            g.bench_function(format!("seal_small_8KiB_zstd3_{name}"), |b| {
                b.iter(|| {
                    for c in from[..small].chunks(8 << 10) {
                        out.clear();
                        black_box(s.seal_into(&id, c, &mut out).ok());
                    }
                })
            });
        }
        g.throughput(Throughput::Bytes(n as u64));
    }
    let packs: Vec<&[u8]> = data.chunks(16 << 20).collect();
    for policy in ["rs(4,2)", "replicas(3)"] {
        let codec = Codec::new(policy.parse::<Redundancy>().expect("policy")).expect("codec");
        let mut bufs: Vec<Vec<u8>> = packs.iter().map(|p| p.to_vec()).collect();
        g.bench_function(
            format!("codec_encode_pack_{policy}_16MiB_with_checksums"),
            |b| {
                b.iter(|| {
                    for buf in bufs.iter_mut() {
                        let enc = codec.encode_pack(std::mem::take(buf)).expect("encode");
                        black_box(enc.header(0));
                        *buf = enc.into_buffers().0;
                    }
                })
            },
        );
    }
    // Raw Reed-Solomon kernels, for the crate choice.
    {
        let (k, m) = (4usize, 2usize);
        let shard = 4 << 20;
        let rse = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).expect("rs");
        let mut shards: Vec<Vec<u8>> = (0..k + m)
            .map(|i| data[i * shard % (n - shard)..][..shard].to_vec())
            .collect();
        let per_iter = packs.len();
        g.bench_function("rs_4_2_encode_reed_solomon_erasure", |b| {
            b.iter(|| {
                for _ in 0..per_iter {
                    black_box(rse.encode(&mut shards).ok());
                }
            })
        });
        g.bench_function("rs_4_2_reconstruct2_reed_solomon_erasure", |b| {
            b.iter(|| {
                for _ in 0..per_iter {
                    // Shards 0 and 1 marked missing: rebuilt in place, no copies.
                    let mut work: Vec<(&mut [u8], bool)> = shards
                        .iter_mut()
                        .enumerate()
                        .map(|(i, s)| (&mut s[..], i >= 2))
                        .collect();
                    black_box(rse.reconstruct_data(&mut work).ok());
                }
            })
        });
        let originals: Vec<&[u8]> = shards[..k].iter().map(|s| &s[..]).collect();
        g.bench_function("rs_4_2_encode_reed_solomon_simd", |b| {
            b.iter(|| {
                for _ in 0..per_iter {
                    black_box(reed_solomon_simd::encode(k, m, &originals).ok());
                }
            })
        });
    }
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("zstd_level1_text", |b| {
        b.iter(|| zstd::bulk::compress(&text, 1).map(|v| v.len()))
    });
    let tdata = &data[..text.len()];
    g.bench_function("zstd_level1_random", |b| {
        b.iter(|| zstd::bulk::compress(tdata, 1).map(|v| v.len()))
    });
    g.finish();
}

criterion_group!(primitives, benches);
criterion_main!(primitives);
