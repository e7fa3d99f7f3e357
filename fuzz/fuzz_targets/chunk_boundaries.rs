//! Our FastCDC scan (`asheville_core::Cutter`) against the `fastcdc`
//! crate's v2020 chunker: the same boundaries for any input. The input is
//! stretched (each byte repeated a input-chosen number of times) so that
//! small inputs reach past min_size and cover long runs without a cut.
#![no_main]
use asheville_core::{ChunkerConfig, chunk_slice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (min, avg, max) = [(64, 256, 1024), (256, 1024, 4096), (2048, 8192, 65536)][sel as usize % 3];
    let stretch = 1 + (sel as usize / 3) % 64;
    let input: Vec<u8> = rest
        .iter()
        .enumerate()
        .flat_map(|(i, &b)| (0..stretch).map(move |j| b ^ ((i * 31 + j) as u8 & (sel & 0x0f))))
        .collect();
    let cfg = ChunkerConfig::new(min, avg, max).expect("valid config");
    let ours = chunk_slice(&cfg, &input).expect("chunks");
    let theirs: Vec<_> = fastcdc::v2020::FastCDC::new(&input, min as usize, avg as usize, max as usize)
        .map(|c| c.offset..c.offset + c.length)
        .collect();
    assert_eq!(ours, theirs);
});
