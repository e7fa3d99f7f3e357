//! Durable whole-object writes to a local directory that bypass the page
//! cache (`O_DIRECT`, Linux).
//!
//! A local backend with `fsync` on waits for every shard to reach the disk
//! anyway, so a buffered write only adds the kernel's copy into the page
//! cache and its write-back work. On this project's test VM (ext4, virtio)
//! writing 1.5 GB with `dd conv=fsync` took 1.6–3.6 s of system CPU buffered
//! and 0.3–0.5 s with `oflag=direct`.
//!
//! The write keeps `object_store`'s `LocalFileSystem` contract exactly: the
//! bytes go to a staged file `<dest>#<n>` (which `list` never shows), which
//! is synced, renamed over `<dest>`, and then the directory is synced; so a
//! reader sees the whole object or none of it, and a successful return is
//! durable. Shards of new packs (`Backend::put_unsynced`) skip both syncs
//! and are synced together, file by file and then each directory once, when
//! their batch commits ([`sync_blocking`]); until then a crash may leave
//! them partly written, which is harmless: nothing refers to them yet.
//! `O_DIRECT` needs buffers, offsets and lengths aligned to the
//! device's block; bytes that line up (see [`DirectFile`]) are written
//! straight from the caller's memory, the others are copied through an
//! aligned bounce buffer (a user space copy, ~10× cheaper than the
//! kernel's), the last block is padded with zeros and the file is cut back
//! to its length. A filesystem that
//! refuses `O_DIRECT` (`EINVAL`) gets the ordinary buffered write, and the
//! backend stops trying. A directory on tmpfs or ramfs is written buffered
//! from the start: there the page cache is the storage, and the bounce copy
//! would only add to it (a put of the 1 GiB bench set on tmpfs: 1.78 s
//! buffered, 1.88 s direct).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of buffers, offsets and lengths for `O_DIRECT`: 4 KiB covers
/// both 512-byte and 4 KiB logical blocks.
const ALIGN: usize = 4096;
/// Bytes per `O_DIRECT` write. One stream of 1 MiB writes reaches the
/// device's speed here (`dd oflag=direct`: 1.02 s for 1.5 GB at 1 MiB, 1.0 s
/// at 4 MiB, 1.4 s at 256 KiB); with four streams 512 KiB does as well
/// (CLI put of the 1 GiB bench set, rs(4,2), on ext4: medians 2.15 s at
/// 512 KiB, 2.18 s at 256 KiB, 2.2–2.5 s at 1 MiB) with 2 MiB less in
/// memory than 1 MiB buffers.
const BOUNCE: usize = 512 << 10;
/// `O_DIRECT` writes at once, process-wide, each with its bounce buffer;
/// the rest wait their turn without holding a blocking thread, so a put
/// with many shards in flight does not pay a buffer per shard in memory.
/// Eight let every shard of an `rs(4,2)` pack go at once, and the next
/// pack's begin before the last of these ends: with four, its last two
/// shards waited for the first four (7-9 ms a shard, summed 1.7-2.4 s over
/// a put of the repo bench set, 0.6-0.9 s with eight). CLI put of that set
/// (`rs(4,2)`, 10 alternating rounds on a noisy disk): median 3.05 s with
/// four, 2.96 s with eight; with three packs in flight, 2.76 and 2.67 s.
/// 2 MiB more of bounce buffers.
const TURNS: usize = 8;
static TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(TURNS);
static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Whether writing around the page cache can pay off in `dir`: not on
/// tmpfs or ramfs (where the page cache is the storage), nor where the
/// filesystem cannot be asked.
pub(crate) fn worth_it(dir: &Path) -> bool {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    // Magic numbers are 32 bits; `f_type` is 32 or 64 bits wide, signed.
    rustix::fs::statfs(dir)
        .map(|s| s.f_type as u32)
        .is_ok_and(|t| t != TMPFS_MAGIC && t != RAMFS_MAGIC)
}

/// Writes and reads objects of one local backend around the page cache.
#[derive(Debug, Default)]
pub(crate) struct DirectIo {
    /// Set the first time the filesystem refuses `O_DIRECT`.
    refused: AtomicBool,
}

/// A bounce buffer: `BOUNCE` bytes at an `ALIGN`ed address inside `buf`.
struct Bounce {
    buf: Vec<u8>,
    start: usize,
}

impl Bounce {
    /// An idle buffer, or a new one (`TURN` bounds how many exist).
    fn take() -> Bounce {
        let idle = IDLE.lock().ok().and_then(|mut v| v.pop());
        let buf = idle.unwrap_or_else(|| vec![0; BOUNCE + ALIGN]);
        // Arithmetic on the address; no pointer is dereferenced.
        let start = buf.as_ptr().align_offset(ALIGN);
        Bounce { buf, start }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + BOUNCE]
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        if let Ok(mut idle) = IDLE.lock()
            && idle.len() < TURNS
        {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

impl DirectIo {
    /// A writer for the directory `dir`, or `None` where writing around the
    /// page cache saves nothing (tmpfs, ramfs).
    pub(crate) fn for_dir(dir: &Path) -> Option<DirectIo> {
        worth_it(dir).then(DirectIo::default)
    }

    /// Writes `parts` as the file `dest` on tokio's blocking pool, once a
    /// turn is free; durable on return if `sync`, else once
    /// [`sync_blocking`] has synced it.
    pub(crate) async fn put(
        self: Arc<Self>,
        dest: PathBuf,
        parts: Vec<Bytes>,
        sync: bool,
    ) -> io::Result<()> {
        self.in_turn(move |w| w.put_blocking(&dest, &parts, sync))
            .await
    }

    /// Runs `write` on tokio's blocking pool once a turn is free (none is
    /// taken once this filesystem refused `O_DIRECT`). The turn moves into
    /// the task: a put given up half-way still holds it until its thread
    /// is done with the buffer.
    async fn in_turn(
        self: Arc<Self>,
        write: impl FnOnce(&DirectIo) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let turn = if self.refused.load(Ordering::Relaxed) {
            None
        } else {
            Some(TURN.acquire().await.map_err(io::Error::other)?)
        };
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            write(&self)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Writes the object `made` makes as the file `dest` on tokio's
    /// blocking pool once a turn is free, unsynced (durable once
    /// [`sync_blocking`] has synced it): its body made straight into the
    /// bounce buffer and written a buffer at a time, then its first block
    /// (the head and the body's first bytes) written last.
    pub(crate) async fn put_made(
        self: Arc<Self>,
        dest: PathBuf,
        made: Box<dyn super::MadeObject>,
    ) -> io::Result<()> {
        self.in_turn(move |w| w.put_made_blocking(&dest, made))
            .await
    }

    fn put_made_blocking(
        &self,
        dest: &Path,
        mut made: Box<dyn super::MadeObject>,
    ) -> io::Result<()> {
        let (file, staged) = create_staged(dest)?;
        let written = self.write_made(&file, &staged, &mut *made).and_then(|()| {
            drop(file);
            std::fs::rename(&staged, dest)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        written
    }

    fn write_made(
        &self,
        file: &File,
        staged: &Path,
        made: &mut dyn super::MadeObject,
    ) -> io::Result<()> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let made_err = |e: crate::error::Error| io::Error::other(e.to_string());
        let (head_len, body_len) = (made.head_len(), made.body_len());
        if head_len > ALIGN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a made object's head is longer than a block",
            ));
        }
        let total = head_len + body_len;
        // The body's bytes in the first block, which is written last.
        let in_first = body_len.min(ALIGN - head_len);
        let direct = if self.refused.load(Ordering::Relaxed) {
            None
        } else {
            match OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(staged)
            {
                Ok(f) => Some(f),
                Err(e) if is_inval(&e) => None,
                Err(e) => return Err(e),
            }
        };
        let mut bounce = Bounce::take();
        // A zero first block, to find out before anything is made whether
        // this filesystem takes our O_DIRECT writes.
        let direct = match direct {
            Some(d) => {
                bounce.bytes()[..ALIGN].fill(0);
                match d.write_all_at(&bounce.bytes()[..ALIGN], 0) {
                    Ok(()) => Some(d),
                    Err(e) if is_inval(&e) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        if direct.is_none() {
            self.refused.store(true, Ordering::Relaxed);
        }
        let mut first = vec![0u8; ALIGN];
        made.make(&mut first[head_len..head_len + in_first])
            .map_err(made_err)?;
        // The rest of the body, from the second block on.
        let mut at = ALIGN;
        let mut left = body_len - in_first;
        while left > 0 {
            let n = left.min(BOUNCE);
            let buf = bounce.bytes();
            made.make(&mut buf[..n]).map_err(made_err)?;
            match &direct {
                Some(d) => {
                    let padded = n.next_multiple_of(ALIGN);
                    buf[n..padded].fill(0);
                    d.write_all_at(&buf[..padded], at as u64)?;
                }
                None => file.write_all_at(&buf[..n], at as u64)?,
            }
            at += n;
            left -= n;
        }
        let head = made.head().map_err(made_err)?;
        if head.len() != head_len {
            return Err(io::Error::other(
                "a made object's head has the wrong length",
            ));
        }
        first[..head_len].copy_from_slice(&head);
        match &direct {
            Some(d) => {
                let buf = bounce.bytes();
                buf[..ALIGN].copy_from_slice(&first);
                d.write_all_at(&buf[..ALIGN], 0)?;
                if total % ALIGN != 0 {
                    file.set_len(total as u64)?;
                }
            }
            None => file.write_all_at(&first[..head_len + in_first], 0)?,
        }
        Ok(())
    }

    /// Writes `parts` as the file `dest`: staged, synced (if `sync`),
    /// renamed, and the directory synced (if `sync`).
    fn put_blocking(&self, dest: &Path, parts: &[Bytes], sync: bool) -> io::Result<()> {
        let (file, staged) = create_staged(dest)?;
        let written = self.write(&file, &staged, parts).and_then(|()| {
            if sync {
                file.sync_all()?;
            }
            drop(file);
            std::fs::rename(&staged, dest)?;
            if sync {
                sync_dir(dest.parent())?;
            }
            Ok(())
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        written
    }

    fn write(&self, file: &File, staged: &Path, parts: &[Bytes]) -> io::Result<()> {
        let direct = !self.refused.load(Ordering::Relaxed);
        let mut w = DirectFile::new(file.try_clone()?, staged, direct)?;
        for p in parts {
            w.write(p)?;
        }
        if w.finish()?.1 {
            // This filesystem (or its block size) does not take our
            // O_DIRECT writes: the rest of this backend's are buffered.
            self.refused.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A file written sequentially around the page cache where the filesystem
/// allows it: bytes are gathered in an aligned bounce buffer and written
/// with `O_DIRECT` a whole buffer at a time; the last block is padded with
/// zeros and the file cut back to its length. A filesystem that refuses
/// `O_DIRECT` (`EINVAL`, at open or at the first write) gets ordinary
/// buffered writes from where the direct ones stopped, so no byte is lost
/// or written twice.
///
/// Bytes whose address lines up with their place in the file (both at a
/// multiple of what `O_DIRECT` needs here, once the bytes before them
/// fill a block) skip the bounce buffer: only the partial blocks at either
/// end are copied. The write path lays out pack and parity buffers so
/// that shard payloads line up behind their headers
/// ([`asheville_core::redundancy::SHARD_HEADER_LEN`]); other bytes are
/// copied as before.
pub(crate) struct DirectFile {
    /// The file as opened by the caller (buffered); returned by `finish`.
    file: File,
    /// A second handle with `O_DIRECT`, and the bounce buffer, while direct
    /// writes work.
    direct: Option<(File, Bounce)>,
    /// Bytes in the bounce buffer.
    fill: usize,
    /// Bytes written so far (direct and buffered).
    len: u64,
    /// Direct writes were tried and refused.
    refused: bool,
    /// `O_DIRECT`'s alignment of memory and of file offsets here.
    dio: DioAlign,
    /// Whether bytes may still be written straight from the caller's
    /// memory (cleared if the kernel refuses such a write).
    straight: bool,
    /// Bytes copied through the bounce buffer (for tests).
    bounced: u64,
}

/// What `O_DIRECT` needs aligned: the address of the memory written from
/// and the file offset (and length) written at.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DioAlign {
    mem: usize,
    offset: usize,
}

impl DioAlign {
    /// The file's own (`statx`'s `STATX_DIOALIGN`, Linux 6.1 and later),
    /// if they divide [`ALIGN`] (which the bounce buffer and every flush
    /// keep); else [`ALIGN`] for both.
    fn of(file: &File) -> DioAlign {
        use rustix::fs::{AtFlags, StatxFlags, statx};
        let fallback = DioAlign {
            mem: ALIGN,
            offset: ALIGN,
        };
        let Ok(s) = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) else {
            return fallback;
        };
        let (mem, offset) = (
            s.stx_dio_mem_align as usize,
            s.stx_dio_offset_align as usize,
        );
        let divides = |a: usize| a.is_power_of_two() && ALIGN.is_multiple_of(a);
        if s.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && divides(mem) && divides(offset) {
            DioAlign { mem, offset }
        } else {
            fallback
        }
    }
}

impl DirectFile {
    /// Writes to `file`, an empty file open for writing at `path`; around
    /// the page cache if `direct`.
    pub(crate) fn new(file: File, path: &Path, direct: bool) -> io::Result<DirectFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut refused = false;
        let direct = if direct {
            match OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
            {
                Ok(f) => Some((f, Bounce::take())),
                Err(e) if is_inval(&e) => {
                    refused = true;
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let dio = match &direct {
            Some((f, _)) => DioAlign::of(f),
            None => DioAlign {
                mem: ALIGN,
                offset: ALIGN,
            },
        };
        Ok(DirectFile {
            file,
            direct,
            fill: 0,
            len: 0,
            refused,
            dio,
            straight: true,
            bounced: 0,
        })
    }

    /// Goes on writing `file` (open for writing at `path`, not
    /// appending), whose first `written` bytes are written (buffered),
    /// around the page cache from there: the direct writes start at the
    /// block `written` falls in, with the bytes of it already written read
    /// back into the bounce buffer. Where `O_DIRECT` is refused, the writes
    /// go on buffered.
    pub(crate) fn resume(file: File, path: &Path, written: u64) -> io::Result<DirectFile> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileExt;
        let mut w = DirectFile::new(file, path, true)?;
        w.len = written;
        w.file.seek(SeekFrom::Start(written))?;
        if let Some((f, bounce)) = &mut w.direct {
            let start = written - written % ALIGN as u64;
            let fill = (written - start) as usize;
            if fill > 0 {
                // `file` may be open for writing only.
                File::open(path)?.read_exact_at(&mut bounce.bytes()[..fill], start)?;
            }
            f.seek(SeekFrom::Start(start))?;
            w.len = start;
            w.fill = fill;
        }
        Ok(w)
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some((_, bounce)) = &mut self.direct else {
                self.file.write_all(data)?;
                self.len += data.len() as u64;
                return Ok(());
            };
            // `len` is block-aligned (every flush is), so the bounce buffer
            // always has room for `lead`: its free room and `lead` are
            // equal modulo the block, and the room is not zero.
            let DioAlign { mem, offset } = self.dio;
            let at = self.len as usize + self.fill;
            let lead = (offset - at % offset) % offset;
            let straight = self.straight
                && data.len() >= lead + offset
                && (data.as_ptr() as usize)
                    .wrapping_add(lead)
                    .is_multiple_of(mem);
            let n = if straight {
                lead
            } else {
                data.len().min(BOUNCE - self.fill)
            };
            bounce.bytes()[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            self.bounced += n as u64;
            data = &data[n..];
            if straight {
                if self.fill > 0 {
                    // A whole number of blocks now.
                    self.flush_bounce(self.fill)?;
                }
                let whole = data.len() - data.len() % offset;
                let n = self.write_straight(&data[..whole])?;
                data = &data[n..];
            } else if self.fill == BOUNCE {
                self.flush_bounce(BOUNCE)?;
            }
        }
        Ok(())
    }

    /// Writes `data` (whole blocks, at an address `O_DIRECT` takes, the
    /// bounce buffer empty) straight from the caller's memory; returns the
    /// bytes written: all of them, or fewer if the kernel refused
    /// (`EINVAL`), after which every byte goes through the bounce buffer.
    fn write_straight(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some((f, _)) = &mut self.direct else {
            return Ok(0);
        };
        let mut done = 0;
        while done < data.len() {
            // In requests of the bounce buffer's size, as the copies went.
            let upto = data.len().min(done + BOUNCE);
            match f.write(&data[done..upto]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    self.len += n as u64;
                    if done % self.dio.offset != 0 {
                        // Not seen with O_DIRECT: the next offset would not
                        // be aligned, so stop rather than go on unaligned.
                        return Err(io::Error::other("short O_DIRECT write"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_inval(&e) => {
                    self.straight = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes the bounce buffer's first `upto` bytes (a multiple of
    /// `ALIGN`) with `O_DIRECT`, or, if refused, its `fill` bytes buffered.
    fn flush_bounce(&mut self, upto: usize) -> io::Result<()> {
        let Some((f, bounce)) = &mut self.direct else {
            return Ok(());
        };
        match f.write_all(&bounce.bytes()[..upto]) {
            Ok(()) => {}
            Err(e) if is_inval(&e) => {
                use std::io::{Seek, SeekFrom};
                self.file.seek(SeekFrom::Start(self.len))?;
                self.file.write_all(&bounce.bytes()[..self.fill])?;
                self.direct = None;
                self.refused = true;
            }
            Err(e) => return Err(e),
        }
        self.len += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// Writes what is left and gives the file back, with whether direct
    /// writes were refused along the way.
    pub(crate) fn finish(mut self) -> io::Result<(File, bool)> {
        if self.fill > 0
            && let Some((_, bounce)) = &mut self.direct
        {
            let padded = self.fill.next_multiple_of(ALIGN);
            let fill = self.fill;
            bounce.bytes()[fill..padded].fill(0);
            self.flush_bounce(padded)?;
            if self.direct.is_some() && padded != fill {
                self.file.set_len(self.len)?;
            }
        }
        Ok((self.file, self.refused))
    }
}

fn is_inval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Creates `<dest>#<n>` for the first free `n` (the staging names
/// `object_store`'s `LocalFileSystem` uses and hides from `list`), making
/// and syncing missing parent directories.
fn create_staged(dest: &Path) -> io::Result<(File, PathBuf)> {
    let mut n = 1u32;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staged = PathBuf::from(name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(f) => return Ok((f, staged)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_parents(&staged)?,
            Err(e) => return Err(e),
        }
    }
}

/// Creates the missing directories above `path` and syncs each of them and
/// the first one that existed, so their new entries are durable.
fn create_parents(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    super::objstore::make_dirs(&[parent.to_path_buf()], true)?;
    sync_dir(Some(parent))
}

/// Makes files written by [`DirectIo::put`] without `sync` durable:
/// each file, then each of their directories once (their new names).
///
/// Syncing a batch's files together, after all of them were written, is
/// what makes deferring pay: a sync right after each write waits for the
/// device to flush, and the writes behind it wait too. 170 files of 7 MiB
/// in four streams (`O_DIRECT`, 512 KiB writes, ext4 on this project's
/// virtio disk), 3 alternating rounds: 2.32-2.75 s with each file and its
/// directory synced as written, 1.58-2.06 s with all synced at the end,
/// 1.65-1.93 s never synced. Syncing each file on another thread as soon
/// as it was written did not help (2.50-3.07 s).
pub(crate) fn sync_blocking(paths: &[PathBuf]) -> io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in paths {
        File::open(p)?.sync_all()?;
        dirs.insert(p.parent());
    }
    dirs.into_iter().try_for_each(sync_dir)
}

fn sync_dir(dir: Option<&Path>) -> io::Result<()> {
    match dir {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

impl DirectIo {
    /// Reads `range` of the file at `path` around the page cache
    /// ([`read_range`]); `None` where the filesystem refuses `O_DIRECT`
    /// (the caller reads it buffered, as it will the rest of this
    /// backend's).
    pub(crate) fn read(
        &self,
        path: &Path,
        range: std::ops::Range<u64>,
    ) -> io::Result<Option<Bytes>> {
        if self.refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match read_range(path, range) {
            Err(e) if is_inval(&e) => {
                self.refused.store(true, Ordering::Relaxed);
                Ok(None)
            }
            r => r.map(Some),
        }
    }
}

/// Reads `range` of the file at `path` around the page cache (`O_DIRECT`):
/// the aligned blocks covering it land in one buffer, of which the result
/// is a slice, uniquely owned (a caller can open blobs in place). The
/// result stops at the end of the file. `EINVAL` where the filesystem
/// refuses `O_DIRECT`.
///
/// Shards are read once per restore and checked by their own checksums,
/// and this backend writes them around the page cache, so a cached copy
/// is never there to be found, and reading one in only costs the kernel
/// the cache's work and, ahead of the range, reads that are dropped
/// before they are used. A cold restore of the peers set, 9 alternating
/// rounds: 1.19-1.32 s of system CPU and 1.10 GB read from the disk
/// with `O_DIRECT`, against 1.50-1.66 s and 1.19-1.21 GB buffered (with
/// the pages read dropped behind, which this did before).
pub(crate) fn read_range(path: &Path, range: std::ops::Range<u64>) -> io::Result<Bytes> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    // Cut at the end of the file before anything is allocated: a range
    // may come from a caller (a node serving its backends over HTTP).
    let end = range.end.min(file.metadata()?.len());
    if range.start >= end {
        return Ok(Bytes::new());
    }
    let align = ALIGN as u64;
    let lo = range.start - range.start % align;
    let hi = end.next_multiple_of(align);
    let want = usize::try_from(hi - lo).map_err(io::Error::other)?;
    let mut buf: Vec<u8> = Vec::with_capacity(want + ALIGN);
    // Arithmetic on the address; no pointer is dereferenced.
    let start = buf.as_ptr().align_offset(ALIGN);
    buf.resize(start, 0);
    // Read into the buffer's spare capacity, not zeroed first (zeroing
    // them cost ~0.1 s of user CPU a restore of the peers set).
    while buf.len() < start + want {
        let got = buf.len() - start;
        let spare = &mut buf.spare_capacity_mut()[..want - got];
        let n = rustix::io::pread(&file, spare, lo + got as u64)?.0.len();
        // SAFETY: `pread` initialized the first `n` bytes of the spare
        // capacity, which are what the new length takes in.
        #[allow(unsafe_code)]
        unsafe {
            buf.set_len(buf.len() + n)
        };
        // The end of the file: nothing more, or a short (unaligned) read.
        if n == 0 || n % ALIGN != 0 {
            break;
        }
    }
    let got = buf.len() - start;
    let skip = (range.start - lo) as usize;
    let end = (skip + (end - range.start) as usize).min(got);
    Ok(Bytes::from(buf).slice(start + skip.min(end)..start + end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(lens: &[usize]) -> Vec<Bytes> {
        let mut seed = 7u8;
        lens.iter()
            .map(|&n| {
                Bytes::from(
                    (0..n)
                        .map(|i| {
                            seed = seed.wrapping_mul(31).wrapping_add(i as u8);
                            seed
                        })
                        .collect::<Vec<u8>>(),
                )
            })
            .collect()
    }

    #[test]
    fn objects_of_every_awkward_length_read_back_whole_and_nothing_is_left_staged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = DirectIo::default();
        let cases: &[&[usize]] = &[
            &[],
            &[0],
            &[1],
            &[ALIGN - 1],
            &[ALIGN],
            &[ALIGN + 1],
            &[BOUNCE],
            &[BOUNCE - 3, 5, ALIGN * 3 + 17],
            &[BOUNCE + 1, BOUNCE * 2 + 100],
        ];
        for (i, lens) in cases.iter().enumerate() {
            let dest = dir.path().join(format!("a/b{i}/obj"));
            let p = parts(lens);
            w.put_blocking(&dest, &p, true).expect("put");
            let want: Vec<u8> = p.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(std::fs::read(&dest).expect("read"), want, "case {lens:?}");
            let names: Vec<_> = std::fs::read_dir(dest.parent().expect("parent"))
                .expect("dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("obj")]);
        }
        // Overwrite: the new bytes replace the old ones whole.
        let dest = dir.path().join("a/b8/obj");
        let p = parts(&[10]);
        w.put_blocking(&dest, &p, true).expect("overwrite");
        assert_eq!(std::fs::read(&dest).expect("read"), p[0].to_vec());
    }

    #[test]
    fn a_file_begun_buffered_and_resumed_around_the_page_cache_reads_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Switching at an aligned length, inside a block, and before any
        // byte; then pieces across the bounce buffer.
        for (i, first) in [0, 1, ALIGN, ALIGN + 5, BOUNCE + 3].into_iter().enumerate() {
            let path = dir.path().join(format!("r-{i}"));
            let p = parts(&[first, 7, BOUNCE, ALIGN - 1]);
            // Write-only, as a restore creates its files.
            let mut file = File::create(&path).expect("create");
            file.write_all(&p[0]).expect("buffered write");
            let mut w = DirectFile::resume(file, &path, first as u64).expect("resume");
            for piece in &p[1..] {
                w.write(piece).expect("write");
            }
            let (file, _refused) = w.finish().expect("finish");
            let want: Vec<u8> = p.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(file.metadata().expect("stat").len(), want.len() as u64);
            drop(file);
            assert_eq!(
                std::fs::read(&path).expect("read"),
                want,
                "switched at {first}"
            );
        }
    }

    #[test]
    fn made_objects_read_back_whole_and_a_failed_one_leaves_nothing() {
        use crate::conformance::Pattern;
        let dir = tempfile::tempdir().expect("temp dir");
        let bodies = [
            0,
            1,
            ALIGN - 57,
            ALIGN - 56,
            ALIGN - 55,
            BOUNCE,
            BOUNCE + ALIGN - 56,
            2 * BOUNCE + 5000,
        ];
        // Around the page cache, and buffered (as where O_DIRECT was
        // refused).
        for refused in [false, true] {
            let w = DirectIo {
                refused: AtomicBool::new(refused),
            };
            for (i, body) in bodies.into_iter().enumerate() {
                let dest = dir.path().join(format!("m/{refused}-{i}"));
                w.put_made_blocking(&dest, Box::new(Pattern::new(56, body)))
                    .expect("put made");
                assert_eq!(
                    std::fs::read(&dest).expect("read"),
                    Pattern::new(56, body).expected(),
                    "body of {body} bytes (refused: {refused})"
                );
            }
        }
        let w = DirectIo::default();
        // A maker that fails half-way: an error, and neither the object
        // nor its staged file is left.
        let mut failing = Pattern::new(56, 3 * BOUNCE);
        failing.fail_after = Some(BOUNCE + 10);
        let dest = dir.path().join("m/failed");
        assert!(w.put_made_blocking(&dest, Box::new(failing)).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("m"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("failed"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn bytes_that_line_up_with_the_file_skip_the_bounce_buffer() {
        let dir = tempfile::tempdir().expect("temp dir");
        const HEADER: usize = 56;
        let header: Vec<u8> = (0..HEADER as u8).collect();
        let mut buf: Vec<u8> = (0..3 * BOUNCE + 3 * ALIGN)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        // An address HEADER past a block boundary: the payload's blocks in
        // the file start HEADER bytes into it.
        let lined_up = buf.as_ptr().align_offset(ALIGN) + HEADER;
        // Lengths around the bounce buffer and the block; the last case is
        // one byte off, so nothing lines up.
        let cases = [
            (lined_up, 2 * BOUNCE + 1000),
            (lined_up, ALIGN + 3),
            (lined_up, BOUNCE),
            (lined_up, 100),
            (lined_up + 1, BOUNCE + 9),
        ];
        for (i, &(at, len)) in cases.iter().enumerate() {
            buf[at] = i as u8; // each file differs
            let payload = &buf[at..at + len];
            let path = dir.path().join(format!("s-{i}"));
            let file = File::create(&path).expect("create");
            let mut w = DirectFile::new(file, &path, true).expect("open");
            w.write(&header).expect("header");
            // In two pieces: a lined-up piece after one that was not.
            let cut = len / 3;
            w.write(&payload[..cut]).expect("payload");
            w.write(&payload[cut..]).expect("payload");
            let (bounced, dio) = (w.bounced, w.dio);
            let (file, refused) = w.finish().expect("finish");
            let mut want = header.clone();
            want.extend_from_slice(payload);
            assert_eq!(file.metadata().expect("stat").len(), want.len() as u64);
            drop(file);
            assert_eq!(std::fs::read(&path).expect("read"), want, "case {i}");
            if refused {
                continue; // no O_DIRECT here (tmpfs before Linux 6.6)
            }
            let whole = want.len() as u64;
            if at == lined_up && len >= 3 * dio.offset {
                // The header, the rest of its block, the tail, and the
                // partial blocks around the cut.
                assert!(
                    bounced < 4 * dio.offset as u64,
                    "case {i}: {bounced} of {whole} bytes bounced ({dio:?})"
                );
            } else if at != lined_up && dio.mem > 1 {
                assert_eq!(bounced, whole, "case {i}: nothing lines up");
            }
        }
    }

    #[test]
    fn a_file_written_piece_by_piece_reads_back_whole_at_its_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Pieces that straddle the bounce buffer and the alignment in every
        // way, written around the page cache and (as a filesystem that
        // refuses O_DIRECT would be) buffered.
        let cases: &[&[usize]] = &[
            &[],
            &[1],
            &[ALIGN, 1],
            &[BOUNCE - 1, 1, 1],
            &[3, BOUNCE, ALIGN - 3, 7],
            &[BOUNCE * 2, BOUNCE * 2 + ALIGN + 5],
        ];
        for direct in [true, false] {
            for (i, lens) in cases.iter().enumerate() {
                let path = dir.path().join(format!("f-{direct}-{i}"));
                let file = File::create(&path).expect("create");
                let mut w = DirectFile::new(file, &path, direct).expect("open");
                let p = parts(lens);
                for piece in &p {
                    w.write(piece).expect("write");
                }
                // Refused or not (tmpfs before Linux 6.6), the bytes are whole.
                let (file, _refused) = w.finish().expect("finish");
                let want: Vec<u8> = p.iter().flat_map(|b| b.iter().copied()).collect();
                assert_eq!(file.metadata().expect("stat").len(), want.len() as u64);
                drop(file);
                assert_eq!(std::fs::read(&path).expect("read"), want, "case {lens:?}");
            }
        }
    }

    #[test]
    fn ranges_read_around_the_page_cache_are_the_files_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let io = DirectIo::default();
        for len in [ALIGN * 3 + 100, (2 << 20) + 5] {
            let path = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = parts(&[len]).concat();
            std::fs::write(&path, &data).expect("write");
            let n = len as u64;
            let ranges = [
                0..1,
                5..ALIGN as u64 + 7,
                ALIGN as u64..2 * ALIGN as u64,
                0..n,
                n - 3..n,
                // Past the end: cut at the end, or nothing.
                n - 3..n + 10,
                n + 1..n + 5,
                // Nothing is allocated for what lies past the end.
                n - 1..u64::MAX,
            ];
            for r in ranges {
                let Some(got) = io.read(&path, r.clone()).expect("read") else {
                    // A filesystem that refuses O_DIRECT: nothing to check.
                    return;
                };
                let lo = (r.start as usize).min(len);
                let hi = (r.end as usize).min(len);
                assert_eq!(&got[..], &data[lo..hi], "{len}: {r:?}");
                // Owned by nobody else: blobs can be opened in place.
                assert!(
                    got.is_empty() || got.try_into_mut().is_ok(),
                    "{len}: {r:?} shared"
                );
            }
        }
    }
}
