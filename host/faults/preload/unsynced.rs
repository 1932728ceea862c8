//! `libwraft_unsynced.so`: an LD_PRELOAD library that makes a later "power loss" possible.
//!
//! Before a write reaches a regular file under `$WRAFT_UNSYNCED_ROOT`, it appends the bytes
//! the write is about to overwrite (and the file's size) to a journal for that file under
//! `$WRAFT_UNSYNCED_JOURNAL`, named `<dev>-<inode>`. A successful `fsync`/`fdatasync` of
//! the file deletes its journal: what was synced survives. After the process is killed,
//! `wraft_faults::unsynced::lose_unsynced_writes` undoes every journal, newest first, and
//! truncates each file back to its size at its last sync: the files are left as a power
//! loss could leave them (what Jepsen's lazyfs does with a FUSE filesystem).
//!
//! It also fills the disk on demand: while the file `$WRAFT_DISK_FULL` exists, a write that
//! would make a file under the root larger fails with ENOSPC, as on a full filesystem
//! (overwrites within a file still succeed; they need no new blocks).
//!
//! Built by wraft-faults' build script with plain `rustc` (no dependencies). Interposed:
//! write, pwrite(64), writev, pwritev(64), ftruncate(64), fsync, fdatasync, sync, syncfs,
//! unlink, unlinkat, rename, renameat, renameat2. Writes on an `O_DSYNC`/`O_SYNC`
//! descriptor are durable when they return and are not journaled. Not modeled: writes
//! through shared mappings, fallocate, copy_file_range, and directory entries (a rename or
//! a new file's name is taken to be durable at once). If journaling fails, the process
//! aborts: a run that cannot lose writes faithfully must not pass.

#![allow(clippy::missing_safety_doc)]

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;
const F_GETFL: c_int = 3;
const O_APPEND: c_int = 0o2000;
const O_DSYNC: c_int = 0o10000;
const SEEK_CUR: c_int = 1;
const AT_FDCWD: c_int = -100;

#[repr(C)]
pub struct IoVec {
    pub base: *const c_void,
    pub len: usize,
}

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    fn lseek64(fd: c_int, offset: i64, whence: c_int) -> i64;
    fn __errno_location() -> *mut c_int;
}

const ENOSPC: c_int = 28;

/// A write refused for want of room: -1 with errno ENOSPC.
fn no_space() -> isize {
    // SAFETY: glibc's errno of this thread.
    unsafe { *__errno_location() = ENOSPC };
    -1
}

/// The next definition of `$name` (libc's), as a function of type `$ty`.
macro_rules! real {
    ($name:literal: $ty:ty) => {{
        static NEXT: OnceLock<usize> = OnceLock::new();
        let p = *NEXT.get_or_init(|| {
            // SAFETY: dlsym with a NUL-terminated name.
            unsafe { dlsym(RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) as usize }
        });
        if p == 0 {
            fail(concat!("no next definition of ", $name));
        }
        // SAFETY: libc's symbol of that name has this signature. The pointer is typed as a
        // safe fn because it is only ever called with the arguments our own caller passed
        // to the same function, under that caller's obligations.
        unsafe { std::mem::transmute::<usize, $ty>(p) }
    }};
}

struct Config {
    root: PathBuf,
    journal: PathBuf,
    disk_full: Option<PathBuf>,
}

fn config() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Some(Config {
                root: std::env::var_os("WRAFT_UNSYNCED_ROOT")?.into(),
                journal: std::env::var_os("WRAFT_UNSYNCED_JOURNAL")?.into(),
                disk_full: std::env::var_os("WRAFT_DISK_FULL").map(Into::into),
            })
        })
        .as_ref()
}

thread_local! {
    /// Set while the shim itself does I/O: its own calls go straight through.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` unless this thread is already inside the shim.
fn guarded(f: impl FnOnce(&'static Config)) {
    let Some(cfg) = config() else { return };
    if BUSY.try_with(|b| b.replace(true)).unwrap_or(true) {
        return;
    }
    f(cfg);
    let _ = BUSY.try_with(|b| b.set(false));
}

fn fail(what: &str) -> ! {
    let _ = std::io::stderr().write_all(format!("wraft-unsynced: {what}\n").as_bytes());
    std::process::abort()
}

/// A regular file under the root that `fd` writes to without O_DSYNC: its path and file.
fn tracked(cfg: &Config, fd: c_int) -> Option<(PathBuf, std::fs::Metadata)> {
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    if !path.starts_with(&cfg.root) {
        return None;
    }
    // SAFETY: fcntl(F_GETFL) on a descriptor the caller is about to write to.
    let flags = unsafe { fcntl(fd, F_GETFL) };
    if flags < 0 || flags & O_DSYNC != 0 {
        return None;
    }
    // SAFETY: borrowed only for fstat; ManuallyDrop keeps the caller's descriptor open.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((path, meta))
}

fn journal_of(cfg: &Config, meta: &std::fs::Metadata) -> PathBuf {
    cfg.journal.join(format!("{}-{}", meta.dev(), meta.ino()))
}

/// Journals the bytes `[offset, offset + len)` of the file behind `fd` before they change,
/// or refuses the write (false) if it would grow the file while the disk is full. `offset`
/// is None for a write at the descriptor's position.
fn before_write(fd: c_int, offset: Option<i64>, len: u64) -> bool {
    let mut allowed = true;
    guarded(|cfg| {
        let Some((path, meta)) = tracked(cfg, fd) else {
            return;
        };
        let size = meta.len();
        let at = match offset {
            Some(o) => o.max(0) as u64,
            // SAFETY: fcntl/lseek on the caller's descriptor; neither changes it.
            None if unsafe { fcntl(fd, F_GETFL) } & O_APPEND != 0 => size,
            None => unsafe { lseek64(fd, 0, SEEK_CUR) }.max(0) as u64,
        };
        if at.saturating_add(len) > size && cfg.disk_full.as_ref().is_some_and(|f| f.exists()) {
            allowed = false;
            return;
        }
        let old_len = size.saturating_sub(at).min(len);
        let mut old = vec![0u8; old_len as usize];
        if old_len > 0 {
            let read = File::open(&path).and_then(|f| f.read_exact_at(&mut old, at));
            if let Err(e) = read {
                fail(&format!("reading {} before a write: {e}", path.display()));
            }
        }
        let mut record = Vec::with_capacity(28 + old.len());
        record.extend_from_slice(&at.to_le_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&size.to_le_bytes());
        record.extend_from_slice(&(old_len as u32).to_le_bytes());
        record.extend_from_slice(&old);
        let journal = journal_of(cfg, &meta);
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .and_then(|mut j| j.write_all(&record));
        if let Err(e) = written {
            fail(&format!("journaling to {}: {e}", journal.display()));
        }
    });
    allowed
}

/// After a successful sync of `fd`: its journal is durable history, not undo.
fn after_sync(fd: c_int) {
    guarded(|cfg| {
        if let Some((_, meta)) = tracked(cfg, fd) {
            forget(&journal_of(cfg, &meta));
        }
    });
}

fn forget(journal: &Path) {
    match std::fs::remove_file(journal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => fail(&format!("removing {}: {e}", journal.display())),
    }
}

/// The journal of the file at `dirfd`/`path` (before it is unlinked or replaced).
fn journal_at(cfg: &Config, dirfd: c_int, path: *const c_char) -> Option<PathBuf> {
    if path.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated path, as the libc function requires.
    let rel = Path::new(std::ffi::OsStr::from_bytes(
        unsafe { CStr::from_ptr(path) }.to_bytes(),
    ));
    let full = if rel.is_absolute() || dirfd == AT_FDCWD {
        std::path::absolute(rel).ok()?
    } else {
        std::fs::read_link(format!("/proc/self/fd/{dirfd}"))
            .ok()?
            .join(rel)
    };
    if !full.starts_with(&cfg.root) {
        return None;
    }
    let meta = std::fs::symlink_metadata(&full).ok()?;
    meta.is_file().then(|| journal_of(cfg, &meta))
}

/// Runs `op` (an unlink or rename replacing `dirfd`/`path`); on success the old file's
/// journal goes with it (its inode may be reused).
fn replacing(dirfd: c_int, path: *const c_char, op: impl FnOnce() -> c_int) -> c_int {
    let mut journal = None;
    guarded(|cfg| journal = journal_at(cfg, dirfd, path));
    let ret = op();
    if ret == 0
        && let Some(j) = journal
    {
        guarded(|_| forget(&j));
    }
    ret
}

fn iov_len(iov: *const IoVec, n: c_int) -> u64 {
    if iov.is_null() || n <= 0 {
        return 0;
    }
    // SAFETY: the caller passes `n` iovecs, as the libc function requires.
    unsafe { std::slice::from_raw_parts(iov, n as usize) }
        .iter()
        .map(|v| v.len as u64)
        .sum()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: usize) -> isize {
    if !before_write(fd, None, n as u64) {
        return no_space();
    }
    real!("write": extern "C" fn(c_int, *const c_void, usize) -> isize)(fd, buf, n)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize {
    if !before_write(fd, Some(off), n as u64) {
        return no_space();
    }
    real!("pwrite": extern "C" fn(c_int, *const c_void, usize, i64) -> isize)(fd, buf, n, off)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize {
    if !before_write(fd, Some(off), n as u64) {
        return no_space();
    }
    real!("pwrite64": extern "C" fn(c_int, *const c_void, usize, i64) -> isize)(fd, buf, n, off)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const IoVec, n: c_int) -> isize {
    if !before_write(fd, None, iov_len(iov, n)) {
        return no_space();
    }
    real!("writev": extern "C" fn(c_int, *const IoVec, c_int) -> isize)(fd, iov, n)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const IoVec, n: c_int, off: i64) -> isize {
    if !before_write(fd, Some(off), iov_len(iov, n)) {
        return no_space();
    }
    real!("pwritev": extern "C" fn(c_int, *const IoVec, c_int, i64) -> isize)(fd, iov, n, off)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64(fd: c_int, iov: *const IoVec, n: c_int, off: i64) -> isize {
    if !before_write(fd, Some(off), iov_len(iov, n)) {
        return no_space();
    }
    real!("pwritev64": extern "C" fn(c_int, *const IoVec, c_int, i64) -> isize)(fd, iov, n, off)
}

/// A resize journals the bytes it cuts off (and the old size, which undo restores).
fn before_truncate(fd: c_int, len: i64) {
    let size = config()
        .and_then(|cfg| tracked(cfg, fd))
        .map_or(0, |(_, m)| m.len() as i64);
    let (at, n) = (len.min(size), (size - len).unsigned_abs());
    // Growing by ftruncate makes a sparse file: it needs no room, so it is never refused.
    let _ = before_write(fd, Some(at.min(size)), if len > size { 0 } else { n });
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: i64) -> c_int {
    before_truncate(fd, len);
    real!("ftruncate": extern "C" fn(c_int, i64) -> c_int)(fd, len)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: i64) -> c_int {
    before_truncate(fd, len);
    real!("ftruncate64": extern "C" fn(c_int, i64) -> c_int)(fd, len)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let ret = real!("fsync": extern "C" fn(c_int) -> c_int)(fd);
    if ret == 0 {
        after_sync(fd);
    }
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let ret = real!("fdatasync": extern "C" fn(c_int) -> c_int)(fd);
    if ret == 0 {
        after_sync(fd);
    }
    ret
}

/// `sync`/`syncfs`: every journal is history.
fn forget_all() {
    guarded(|cfg| {
        if let Ok(entries) = std::fs::read_dir(&cfg.journal) {
            for e in entries.flatten() {
                forget(&e.path());
            }
        }
    });
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sync() {
    real!("sync": extern "C" fn())();
    forget_all();
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn syncfs(fd: c_int) -> c_int {
    let ret = real!("syncfs": extern "C" fn(c_int) -> c_int)(fd);
    if ret == 0 {
        forget_all();
    }
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    replacing(AT_FDCWD, path, || {
        real!("unlink": extern "C" fn(*const c_char) -> c_int)(path)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    replacing(dirfd, path, || {
        real!("unlinkat": extern "C" fn(c_int, *const c_char, c_int) -> c_int)(dirfd, path, flags)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    replacing(AT_FDCWD, to, || {
        real!("rename": extern "C" fn(*const c_char, *const c_char) -> c_int)(from, to)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(
    fromfd: c_int,
    from: *const c_char,
    tofd: c_int,
    to: *const c_char,
) -> c_int {
    replacing(tofd, to, || {
        real!("renameat": extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int)(
            fromfd, from, tofd, to,
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    fromfd: c_int,
    from: *const c_char,
    tofd: c_int,
    to: *const c_char,
    flags: c_uint,
) -> c_int {
    replacing(tofd, to, || {
        real!(
            "renameat2": extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int
        )(fromfd, from, tofd, to, flags)
    })
}
