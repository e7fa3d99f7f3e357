use std::time::Instant;
fn main() {
    let mut rnd = Vec::new();
    let mut txt = Vec::new();
    for e in std::fs::read_dir("/tmp/asheville-peers/data/small").unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for e2 in std::fs::read_dir(&p).unwrap() {
                let q = e2.unwrap().path();
                let d = std::fs::read(&q).unwrap();
                if d.iter().take(200).all(|b| b.is_ascii()) {
                    txt.push(d)
                } else {
                    rnd.push(d)
                }
            }
        } else {
            let d = std::fs::read(&p).unwrap();
            if d.iter().take(200).all(|b| b.is_ascii()) {
                txt.push(d)
            } else {
                rnd.push(d)
            }
        }
    }
    println!(
        "rnd {} files {} MB, txt {} files {} MB",
        rnd.len(),
        rnd.iter().map(|d| d.len()).sum::<usize>() >> 20,
        txt.len(),
        txt.iter().map(|d| d.len()).sum::<usize>() >> 20
    );
    let mut out = Vec::with_capacity(1 << 20);
    let all: Vec<u8> = txt.concat();
    for lvl in [3, 1] {
        let t = Instant::now();
        let c = zstd::bulk::compress(&all, lvl).unwrap();
        println!("concat L{lvl} {:?} {}", t.elapsed(), c.len());
    }
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    let t = Instant::now();
    let mut st = 0;
    for d in all.chunks(64 << 10) {
        out.clear();
        st += z.compress_to_buffer(d, &mut out).unwrap();
    }
    println!("64K pieces {:?} {st}", t.elapsed());
    let t = Instant::now();
    let mut st = 0;
    for d in all.chunks(8 << 10) {
        out.clear();
        st += z.compress_to_buffer(d, &mut out).unwrap();
    }
    println!("8K pieces {:?} {st}", t.elapsed());
    for lvl in [3, 1, 2, -1, 3, 1, 2, -1] {
        let mut z = zstd::bulk::Compressor::new(lvl).unwrap();
        for (name, set) in [("rnd", &rnd), ("txt", &txt)] {
            print!("L{lvl} ");
            let t = Instant::now();
            let mut stored = 0;
            for d in set.iter() {
                out.clear();
                stored += z.compress_to_buffer(&d[..], &mut out).unwrap();
            }
            println!("{name}: {:?} stored {}", t.elapsed(), stored);
            let t = Instant::now();
            let mut hi = 0;
            for d in set.iter() {
                let mut h = [0u32; 256];
                for &b in d.iter() {
                    h[b as usize] += 1;
                }
                let n = d.len() as f64;
                let e: f64 = h
                    .iter()
                    .filter(|&&c| c > 0)
                    .map(|&c| {
                        let p = c as f64 / n;
                        -p * p.log2()
                    })
                    .sum();
                if e > 7.0 {
                    hi += 1
                }
            }
            println!("{name} hist: {:?} high-entropy {hi}", t.elapsed());
        }
    }
}
#[allow(dead_code)]
fn x() {}
