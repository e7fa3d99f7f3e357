//! Where a restore writes its large files: through the page cache, or,
//! once the page cache turns out dearer than the disk, around it.
//!
//! A restore writes through the page cache, as cp, tar and restic do: it
//! returns once the bytes are cached, and the kernel writes them back
//! behind it. That is the quickest way where the page cache takes memory
//! cheaply. It is not on a VM whose balloon hands the memory the guest
//! freed a while ago back to the host (free page reporting, as on this
//! project's test VMs): there each page the cache takes from that memory
//! faults on the host first, and `write` spends 2-3.5 ns of system CPU
//! per byte instead of ~0.3 (`dd` of 1 GiB in 1 MiB writes: 1.9-3.5 s
//! against 0.27-0.33 s right after `drop_caches`), slower than the disk
//! takes the same bytes around the cache (`O_DIRECT`: ~1 ns per byte at
//! 1 GB/s, mostly waiting, which other files' work overlaps).
//!
//! So every restore measures what its buffered writes of large files cost
//! (the writing thread's CPU time, which the host's faults land in), and
//! once a window of [`WINDOW`] bytes cost more than [`SLOW_NS_PER_BYTE`]
//! (and [`SLOW_COPIES`] in-memory copies of it),
//! its large files go on with `O_DIRECT`
//! ([`DirectFile`](crate::backend::direct::DirectFile)), those being
//! written included, from the block they had reached; small files stay
//! buffered (each is one small write, and a synchronous one per file
//! would cost more). Windows measured on the test VM: 0.23-0.28 ns per
//! byte right after `drop_caches` (a restore as `benches/peers` runs it,
//! which so stays buffered), 3.8-4.1 ns 10 s after the last restore.
//! Where `O_DIRECT` cannot pay off (tmpfs, ramfs; not Linux) or with
//! drop-behind on ([`crate::tree::RestorePlan::drop_behind`], which reuses
//! the same few cached pages), every file stays buffered.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::dropbehind::WriteBehind;

/// Bytes of buffered writes over which their cost is judged.
const WINDOW: u64 = 32 << 20;
/// System CPU per byte past which the page cache is judged dearer than
/// the disk, at least: ~4x what a cached write costs here where memory is
/// at hand, a quarter of what it costs on memory the host took back.
const SLOW_NS_PER_BYTE: f64 = 1.0;
/// ...and at least this many times what copying a byte in memory costs
/// the machine ([`copy_ns_per_byte`]): a slow CPU, whose cached writes
/// cost more than 1 ns per byte where memory is at hand, keeps them
/// (a cached write costs a few copies: the copy itself and the page
/// cache's bookkeeping per folio).
const SLOW_COPIES: f64 = 20.0;

/// Files a restore writes around the page cache at once, at most, each
/// with a 512 KiB bounce buffer: the four large files it streams, and
/// copies of them (a file whose content the tree holds many times is
/// written to every copy at once); the rest stay buffered.
const MAX_DIRECT: usize = 8;

/// How one restore writes its large files, and what buffered writes have
/// cost it so far.
#[derive(Debug)]
pub(crate) struct WriteMode {
    drop_behind: bool,
    /// Whether `O_DIRECT` may be used under the restore's directory.
    direct_ok: bool,
    /// CPU per byte of buffered writes past which they are judged dear.
    slow_ns_per_byte: f64,
    /// Set once buffered writes were found dear: new large files go
    /// around the page cache.
    direct: AtomicBool,
    /// CPU nanoseconds and bytes of the buffered writes of the window
    /// being measured.
    window: Mutex<(u64, u64)>,
    /// Files being written around the page cache.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    direct_files: AtomicUsize,
}

impl WriteMode {
    /// The mode of a restore into `dir` (which exists), with drop-behind
    /// on or off.
    pub(crate) fn new(dir: &Path, drop_behind: bool) -> Arc<WriteMode> {
        let direct_ok = !drop_behind && direct_helps(dir);
        let slow_ns_per_byte = match direct_ok {
            true => SLOW_NS_PER_BYTE.max(SLOW_COPIES * copy_ns_per_byte()),
            false => f64::INFINITY,
        };
        Arc::new(WriteMode {
            drop_behind,
            direct_ok,
            slow_ns_per_byte,
            direct: AtomicBool::new(false),
            window: Mutex::new((0, 0)),
            direct_files: AtomicUsize::new(0),
        })
    }

    /// A place among the [`MAX_DIRECT`] files written around the page
    /// cache, if the page cache was found dear and one is free.
    #[cfg(target_os = "linux")]
    fn direct_slot(self: &Arc<Self>) -> Option<DirectSlot> {
        if !self.direct_ok || !self.goes_direct() {
            return None;
        }
        self.direct_files
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_DIRECT).then_some(n + 1)
            })
            .ok()
            .map(|_| DirectSlot(self.clone()))
    }

    /// Counts a buffered write of `bytes` that took `cpu_ns` of the
    /// writing thread's CPU time.
    fn measured(&self, cpu_ns: u64, bytes: u64) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.0 += cpu_ns;
        w.1 += bytes;
        if w.1 >= WINDOW {
            if w.0 as f64 > w.1 as f64 * self.slow_ns_per_byte {
                self.direct.store(true, Ordering::Relaxed);
            }
            *w = (0, 0);
        }
    }

    /// Whether large files started now go around the page cache.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn goes_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }
}

/// One of a restore's [`MAX_DIRECT`] places, given back when dropped.
#[cfg(target_os = "linux")]
struct DirectSlot(Arc<WriteMode>);

#[cfg(target_os = "linux")]
impl Drop for DirectSlot {
    fn drop(&mut self) {
        self.0.direct_files.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A large restored file while it is written, front to back.
pub(crate) struct Sink {
    /// Where the file is (a direct handle is opened by name).
    #[cfg(target_os = "linux")]
    path: std::path::PathBuf,
    to: To,
}

enum To {
    /// Through the page cache (dropped behind the writer with drop-behind).
    Cached(WriteBehind),
    /// Around it, holding one of the restore's places.
    #[cfg(target_os = "linux")]
    Direct(
        crate::backend::direct::DirectFile,
        #[allow(dead_code)] DirectSlot,
    ),
}

impl Sink {
    /// Writes to `file`, an empty file open for writing at `path`, as
    /// `mode` says for a file started now.
    pub(crate) fn new(file: File, path: &Path, mode: &Arc<WriteMode>) -> io::Result<Sink> {
        #[cfg(target_os = "linux")]
        let to = match mode.direct_slot() {
            Some(slot) => To::Direct(
                crate::backend::direct::DirectFile::new(file, path, true)?,
                slot,
            ),
            None => To::Cached(WriteBehind::new(file, mode.drop_behind)),
        };
        #[cfg(not(target_os = "linux"))]
        let to = {
            let _ = path;
            To::Cached(WriteBehind::new(file, mode.drop_behind))
        };
        Ok(Sink {
            #[cfg(target_os = "linux")]
            path: path.to_path_buf(),
            to,
        })
    }

    /// Appends `buf`. A buffered write's cost counts towards `mode`, and a
    /// file written buffered goes on around the page cache once `mode`
    /// says so: the files streaming when the page cache is found dear are
    /// the largest ones.
    pub(crate) fn write_all(&mut self, buf: &[u8], mode: &Arc<WriteMode>) -> io::Result<()> {
        match &mut self.to {
            To::Cached(w) => {
                if !mode.direct_ok {
                    return w.write_all(buf);
                }
                let before = thread_cpu_ns();
                w.write_all(buf)?;
                if let (Some(a), Some(b)) = (before, thread_cpu_ns()) {
                    mode.measured(b.saturating_sub(a), buf.len() as u64);
                }
                #[cfg(target_os = "linux")]
                if let Some(slot) = mode.direct_slot() {
                    // Only a way to write faster: a file that cannot go
                    // around the page cache (say it cannot be opened again
                    // to read back its last block) goes on buffered, from
                    // the same offset, and gives its place back.
                    let _ = self.go_direct(slot);
                }
                Ok(())
            }
            #[cfg(target_os = "linux")]
            To::Direct(d, _) => d.write(buf),
        }
    }

    /// Goes on around the page cache from what is written; on an error,
    /// the sink is as it was (`resume` only moves its own handle, a clone
    /// sharing the file offset, to where the writes are anyway).
    #[cfg(target_os = "linux")]
    fn go_direct(&mut self, slot: DirectSlot) -> io::Result<()> {
        use crate::backend::direct::DirectFile;
        let To::Cached(w) = &self.to else {
            return Ok(());
        };
        let written = w.written();
        let file = w.file().try_clone()?;
        self.to = To::Direct(DirectFile::resume(file, &self.path, written)?, slot);
        Ok(())
    }

    /// The written file.
    pub(crate) fn finish(self) -> io::Result<Arc<File>> {
        match self.to {
            To::Cached(w) => Ok(w.finish()),
            #[cfg(target_os = "linux")]
            To::Direct(d, _slot) => Ok(Arc::new(d.finish()?.0)),
        }
    }
}

/// What copying a byte within memory costs this machine, in ns: the best
/// of a few copies of a warm 256 KiB buffer (~0.5 ms in all).
fn copy_ns_per_byte() -> f64 {
    const LEN: usize = 256 << 10;
    let src = vec![1u8; LEN];
    let mut dst = vec![0u8; LEN];
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let t = std::time::Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_nanos() as f64 / LEN as f64);
    }
    best
}

/// Whether writing around the page cache can pay off under `dir`.
#[cfg(target_os = "linux")]
fn direct_helps(dir: &Path) -> bool {
    crate::backend::direct::worth_it(dir)
}

#[cfg(not(target_os = "linux"))]
fn direct_helps(_dir: &Path) -> bool {
    false
}

/// CPU time of the calling thread, in nanoseconds.
#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(u64::try_from(t.tv_sec).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec).ok()?)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn a_file_that_switches_to_direct_writes_mid_way_reads_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mode = WriteMode::new(dir.path(), false);
        let path = dir.path().join("f");
        let mut sink = Sink::new(File::create(&path).expect("create"), &path, &mode).expect("sink");
        assert!(
            matches!(sink.to, To::Cached(_)),
            "a restore starts buffered"
        );
        let parts = [
            bytes(5000, 1),
            bytes(70_001, 2),
            bytes(1 << 20, 3),
            bytes(3, 4),
        ];
        sink.write_all(&parts[0], &mode).expect("write");
        // A window of writes that cost 1,000 ns per byte: dear anywhere.
        mode.measured(1000 * WINDOW, WINDOW);
        assert_eq!(mode.goes_direct(), mode.direct_ok);
        for p in &parts[1..] {
            sink.write_all(p, &mode).expect("write");
        }
        #[cfg(target_os = "linux")]
        assert_eq!(
            matches!(sink.to, To::Direct(..)),
            mode.direct_ok,
            "switched mid-file"
        );
        let file = sink.finish().expect("finish");
        let want = parts.concat();
        assert_eq!(file.metadata().expect("stat").len(), want.len() as u64);
        assert_eq!(std::fs::read(&path).expect("read"), want);
        // A file started now goes around the page cache from its start.
        let path2 = dir.path().join("g");
        let sink = Sink::new(File::create(&path2).expect("create"), &path2, &mode).expect("sink");
        assert_eq!(matches!(sink.to, To::Cached(_)), !mode.direct_ok);
        // At most MAX_DIRECT at once ("g" holds one); a place is free
        // again once a file is finished.
        let mut more = Vec::new();
        for i in 0..MAX_DIRECT {
            let p = dir.path().join(format!("h{i}"));
            more.push(Sink::new(File::create(&p).expect("create"), &p, &mode).expect("sink"));
        }
        let direct = |v: &[Sink]| v.iter().filter(|s| !matches!(s.to, To::Cached(_))).count();
        if mode.direct_ok {
            assert_eq!(direct(&more), MAX_DIRECT - 1);
            drop(sink.finish().expect("finish"));
            let p = dir.path().join("last");
            more.push(Sink::new(File::create(&p).expect("create"), &p, &mode).expect("sink"));
            assert_eq!(direct(&more), MAX_DIRECT);
        }
    }

    #[test]
    fn cheap_buffered_writes_keep_the_page_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mode = WriteMode::new(dir.path(), false);
        // 0.3 ns per byte, as where memory is at hand.
        mode.measured(3 * WINDOW / 10, WINDOW);
        assert!(!mode.goes_direct());
        assert!(mode.slow_ns_per_byte >= SLOW_NS_PER_BYTE);
        // Drop-behind never writes around the page cache.
        let behind = WriteMode::new(dir.path(), true);
        behind.measured(10 * WINDOW, WINDOW);
        assert!(!behind.direct_ok);
    }
}
