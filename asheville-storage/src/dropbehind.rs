//! Restored files written without filling the page cache ("drop-behind"),
//! [`dont_need`], which local backends also use to drop shard pages they
//! have read, and [`will_need`], with which the catalog is read ahead.
//!
//! A restore writes each file once and does not read it back. Kept in the
//! page cache, its pages push out what the machine was caching, and each
//! page the cache takes anew has to be found (reclaimed), and on a host
//! that hands idle memory back to the hypervisor (as this project's test
//! VM does) faulted in again. Written back and dropped behind the writer,
//! the same few pages are used over and over: `dd bs=4M` of 1 GiB on that
//! VM took 5.1–5.8 s buffered and 0.8 s written back and dropped 32 MiB
//! behind (0.7–1.0 s with `O_DIRECT`).
//!
//! [`WriteBehind`] starts the write-back of every `WINDOW` bytes as soon as
//! they are written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and queues
//! them, over all files; past `BUDGET` bytes (or `MAX_FILES` ranges) in the
//! queue, the oldest are waited for (`SYNC_FILE_RANGE_WAIT_AFTER`) and
//! dropped (`POSIX_FADV_DONTNEED`). Both are advice: where they are
//! refused, the pages stay cached as with an ordinary write.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Bytes whose write-back starts at once.
const WINDOW: u64 = 8 << 20;
/// Bytes (over all files) whose write-back was started but not yet waited
/// for; past it, the oldest are waited for and dropped.
const BUDGET: u64 = 32 << 20;
/// Ranges waiting at most (each holds its file open).
const MAX_FILES: usize = 64;

/// Ranges whose write-back was started, oldest first, over all files.
static BEHIND: Mutex<Behind> = Mutex::new(Behind {
    ranges: VecDeque::new(),
    bytes: 0,
});

struct Behind {
    ranges: VecDeque<(Arc<File>, u64, u64)>,
    bytes: u64,
}

/// Starts the write-back of `len` bytes at `offset` of `file`, then waits
/// for and drops the oldest ranges of any file while too many wait.
fn behind(file: &Arc<File>, offset: u64, len: u64) {
    start_writeback(file, offset, len);
    let Ok(mut q) = BEHIND.lock() else { return };
    q.ranges.push_back((file.clone(), offset, len));
    q.bytes += len;
    while q.bytes > BUDGET || q.ranges.len() > MAX_FILES {
        let Some((f, off, n)) = q.ranges.pop_front() else {
            break;
        };
        q.bytes -= n;
        // Waited for outside the lock, so other writers go on.
        drop(q);
        wait_and_drop(&f, off, n);
        let Ok(again) = BEHIND.lock() else { return };
        q = again;
    }
}

/// Lets go of every queued range without waiting for it: pages already
/// written back are dropped, the rest stay cached, and the files are
/// closed. Called when a restore ends, so an idle process holds no file.
pub(crate) fn release() {
    let ranges = match BEHIND.lock() {
        Ok(mut q) => {
            q.bytes = 0;
            std::mem::take(&mut q.ranges)
        }
        Err(_) => return,
    };
    for (f, off, n) in ranges {
        dont_need(&f, off, n);
    }
}

/// A file written front to back; with drop-behind on, its pages are
/// written back and dropped from the page cache behind the writer (see
/// the module docs), otherwise an ordinary buffered writer.
pub(crate) struct WriteBehind {
    file: Arc<File>,
    on: bool,
    /// Bytes written.
    written: u64,
    /// Bytes whose write-back has been started.
    started: u64,
}

impl WriteBehind {
    pub(crate) fn new(file: File, on: bool) -> WriteBehind {
        WriteBehind {
            file: Arc::new(file),
            on,
            written: 0,
            started: 0,
        }
    }

    /// Writes all of `buf` after what was written.
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        (&*self.file).write_all(buf)?;
        self.written += buf.len() as u64;
        while self.on && self.written - self.started >= WINDOW {
            behind(&self.file, self.started, WINDOW);
            self.started += WINDOW;
        }
        Ok(())
    }

    /// Bytes written.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The file being written.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The file, with the write-back of its tail started.
    pub(crate) fn finish(self) -> Arc<File> {
        if self.on && self.written > self.started {
            behind(&self.file, self.started, self.written - self.started);
        }
        self.file
    }
}

#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range takes a file descriptor, which `file` keeps
    // open for the call, and integers; it touches no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts writing back `len` bytes at `offset`.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    let _ = sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Waits until `len` bytes at `offset` are written back, then drops them
/// from the page cache.
fn wait_and_drop(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ = sync_range(
            file,
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        dont_need(file, offset, len);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Drops the clean pages of `len` bytes at `offset` from the page cache
/// (advice: if it is refused, they stay).
pub(crate) fn dont_need(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    advise(file, offset, len, rustix::fs::Advice::DontNeed);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Asks the kernel to read `len` bytes at `offset` into the page cache
/// ahead of use, in large requests (advice: if it is refused, nothing
/// happens).
pub(crate) fn will_need(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    advise(file, offset, len, rustix::fs::Advice::WillNeed);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// `posix_fadvise` over `len` bytes at `offset`; a refusal changes nothing.
#[cfg(target_os = "linux")]
fn advise(file: &File, offset: u64, len: u64, advice: rustix::fs::Advice) {
    let _ = rustix::fs::fadvise(file, offset, std::num::NonZeroU64::new(len), advice);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_behind_reads_back_whole_whether_dropped_or_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Lengths around the write-back window.
        let w = WINDOW as usize;
        let lens = [0, 1, w - 1, 1, w, 3 * w + 123, 7];
        for on in [false, true] {
            let path = dir.path().join(format!("f-{on}"));
            let mut w = WriteBehind::new(File::create(&path).expect("create"), on);
            let mut want = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let part: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
                w.write_all(&part).expect("write");
                want.extend_from_slice(&part);
            }
            drop(w.finish());
            release();
            assert_eq!(
                std::fs::read(&path).expect("read"),
                want,
                "drop-behind {on}"
            );
        }
    }
}
