//! The state env's memory map, which grows while the node runs.
//!
//! An LMDB env maps its whole ceiling of address space up front. On a 64-bit host that is
//! free (64 GiB of a 128 TiB address space), so the map starts at the ceiling and never
//! grows. A 32-bit board has 3-4 GiB of address space for everything (wasm instances,
//! threads' stacks, the raft env), so there the map starts small and doubles, up to the
//! ceiling, when a write finds it full.
//!
//! LMDB resizes a map (`mdb_env_set_mapsize`) only while no transaction of the process is
//! live: the resize unmaps the file, and a live reader would read unmapped memory. So every
//! transaction holds the gate shared, and a resize holds it alone. The raw env is reachable
//! only through a live transaction ([`ReadTxn::env`]) or [`GrowingEnv::with_env`], which
//! hold the gate too.
//!
//! The same gate lets a running node swap the env's file for a compacting copy
//! ([`GrowingEnv::replace_file`], `wraft compact` online): LMDB cannot shrink a mapped file,
//! so the env is closed, the copy renamed over its file and the env opened again, all while
//! no transaction of the process is live.
//!
//! A thread must never take the gate twice: with a resize waiting between the two, the
//! second would wait for the resize and the resize for the first (std's lock lets a waiting
//! writer in before new readers). Debug builds check it.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use heed::{Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

/// Where the state env's map starts, in bytes, when the options do not say: the whole
/// ceiling at once on 64-bit hosts.
#[cfg(target_pointer_width = "64")]
pub const DEFAULT_MAP_START: usize = usize::MAX;
/// Where the state env's map starts on 32-bit hosts: 64 MiB, doubled as the data needs.
#[cfg(not(target_pointer_width = "64"))]
pub const DEFAULT_MAP_START: usize = 64 << 20;

/// An LMDB env whose map may grow to a ceiling, and the gate that makes that safe.
#[derive(Debug)]
pub(super) struct GrowingEnv {
    /// The env. Read only under a hold of the gate (shared or alone); taken out and replaced
    /// only under the gate held alone ([`GrowingEnv::replace_file`]). Never cloned, so closing
    /// it closes LMDB's env.
    env: UnsafeCell<Option<Env<WithoutTls>>>,
    /// Held shared by every transaction, alone by a resize or a replacement.
    gate: RwLock<()>,
    /// The largest map, in bytes.
    ceiling: usize,
    /// The env's directory (kept here: reading it needs no hold).
    path: PathBuf,
    /// How the env was opened, to open it again after a replacement; none for the offline
    /// tools' read-only envs, which are never replaced.
    options: Option<EnvOpenOptions<WithoutTls>>,
}

// SAFETY: the only field that is not `Sync` by itself is the env's cell, and it is read only
// under a hold of the gate and written only under the gate held alone (see `env_in`,
// `replace_file`): the `RwLock` orders every access.
unsafe impl Sync for GrowingEnv {}

/// A read transaction and its hold on the gate (dropped after the transaction).
pub(super) struct ReadTxn<'e> {
    txn: RoTxn<'e, WithoutTls>,
    env: &'e Env<WithoutTls>,
    _gate: Held<RwLockReadGuard<'e, ()>>,
}

/// A write transaction and its hold on the gate (dropped after the transaction).
pub(super) struct WriteTxn<'e> {
    txn: RwTxn<'e>,
    _gate: Held<RwLockReadGuard<'e, ()>>,
}

impl GrowingEnv {
    /// Wraps `env`, whose map may grow to `ceiling` bytes; it is never replaced.
    pub(super) fn new(env: Env<WithoutTls>, ceiling: usize) -> Self {
        Self {
            path: env.path().to_path_buf(),
            env: UnsafeCell::new(Some(env)),
            gate: RwLock::new(()),
            ceiling,
            options: None,
        }
    }

    /// Opens the env at `path` with `options`, whose map may grow to `ceiling` bytes and
    /// whose file may be replaced by a compacting copy ([`GrowingEnv::replace_file`]).
    ///
    /// # Safety
    ///
    /// As [`EnvOpenOptions::open`]: the env must not be opened twice in one process, nor be
    /// written by another process in a way its flags do not allow.
    pub(super) unsafe fn open(
        options: EnvOpenOptions<WithoutTls>,
        path: &Path,
        ceiling: usize,
    ) -> heed::Result<Self> {
        // SAFETY: the caller's promise.
        let env = unsafe { options.open(path) }?;
        Ok(Self {
            options: Some(options),
            ..Self::new(env, ceiling)
        })
    }

    /// The env, for the length of `_held`, a hold of this env's gate.
    fn env_in<'h, G>(&'h self, _held: &'h Held<G>) -> &'h Env<WithoutTls> {
        // SAFETY: the cell is written only under the gate held alone, which cannot be taken
        // while the caller's hold lives.
        unsafe { (*self.env.get()).as_ref() }
            .expect("the env is out of its cell only inside a replacement, under the gate alone")
    }

    /// The env while a transaction of this env (which holds the gate shared) is live.
    ///
    /// # Safety
    ///
    /// The caller holds a live [`WriteTxn`] or [`ReadTxn`] of this env for as long as it uses
    /// the reference.
    unsafe fn env_under_txn(&self) -> &Env<WithoutTls> {
        // SAFETY: the caller's transaction holds the gate shared: see `env_in`.
        unsafe { (*self.env.get()).as_ref() }
            .expect("the env is out of its cell only inside a replacement, under the gate alone")
    }

    /// A read transaction.
    pub(super) fn read_txn(&self) -> heed::Result<ReadTxn<'_>> {
        let gate = Held::shared(self);
        // SAFETY: the reference outlives its borrow of `gate` only inside the transaction,
        // which keeps `gate` and declares it after (drops it after) the two uses of the env.
        let env: &Env<WithoutTls> = unsafe { &*std::ptr::from_ref(self.env_in(&gate)) };
        Ok(ReadTxn {
            txn: env.read_txn()?,
            env,
            _gate: gate,
        })
    }

    /// The write transaction (LMDB has one at a time per env).
    pub(super) fn write_txn(&self) -> heed::Result<WriteTxn<'_>> {
        let gate = Held::shared(self);
        // SAFETY: as in `read_txn`.
        let env: &Env<WithoutTls> = unsafe { &*std::ptr::from_ref(self.env_in(&gate)) };
        Ok(WriteTxn {
            txn: env.write_txn()?,
            _gate: gate,
        })
    }

    /// A transaction nested in `parent`. It needs no hold of its own: `parent` is a
    /// [`WriteTxn`]'s (the raw env, the only other source of one, is never handed out
    /// outside a hold), and it outlives this one.
    pub(super) fn nested_write_txn<'p>(
        &'p self,
        parent: &'p mut RwTxn<'_>,
    ) -> heed::Result<RwTxn<'p>> {
        // SAFETY: `parent` is a live transaction of this env (see above), and the child
        // borrows it, so it ends first.
        unsafe { self.env_under_txn() }.nested_write_txn(parent)
    }

    /// Opens (creating if needed) the database `name` in `wtxn` (a [`WriteTxn`]'s, which
    /// holds the gate).
    pub(super) fn create_database(
        &self,
        wtxn: &mut RwTxn<'_>,
        name: &str,
    ) -> heed::Result<heed::Database<heed::types::Bytes, heed::types::Bytes>> {
        // SAFETY: `wtxn` is a live [`WriteTxn`]'s.
        unsafe { self.env_under_txn() }.create_database(wtxn, Some(name))
    }

    /// The env's directory.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Runs `f` on the raw env while holding the gate: for the calls that read the map
    /// outside a transaction of ours (a copy, a sync, the env's statistics).
    pub(super) fn with_env<R>(&self, f: impl FnOnce(&Env<WithoutTls>) -> R) -> R {
        let gate = Held::shared(self);
        f(self.env_in(&gate))
    }

    /// Replaces the env's data file by `copy`, a complete and synced LMDB file of this env
    /// (a compacting copy), while no transaction of the process is live: closes the env,
    /// renames `copy` over its `data.mdb`, opens it again with the same options and map size,
    /// and runs `reopened` on it (the caller opens its databases there: heed's handles belong
    /// to one env). First `unchanged` looks at the old env: when it says the env was written
    /// since the copy was taken, nothing is replaced.
    ///
    /// It waits at most `patience` for the live transactions to end, without making new
    /// ones wait meanwhile (a long one, a backup's or a snapshot build's copy, must not stall
    /// every read of the node behind it): when they have not, nothing is replaced.
    ///
    /// Another process with the env open (`wraft init info` reads it beside a running node)
    /// would keep LMDB's lock file at the old file's transaction id, and a reopened env
    /// would then read and write the copy through the wrong meta page (losing it whole): the
    /// reopened env is checked (`disk::lock_file_in_step`) and, if it is out of step, the old
    /// file (kept by a hard link until the end) is put back.
    ///
    /// Once the old env is closed, a failure to rename leaves the old file and opens it
    /// again. A failure to open an env again stops the process: with no env it cannot serve,
    /// and a restart opens whichever file is in place (both are whole).
    pub(super) fn replace_file(
        &self,
        copy: &Path,
        patience: Duration,
        unchanged: impl FnOnce(&Env<WithoutTls>) -> bool,
        reopened: impl FnOnce(&Env<WithoutTls>) -> heed::Result<()>,
    ) -> Result<Replaced, heed::Error> {
        let Some(options) = &self.options else {
            return Err(heed::Error::Io(std::io::Error::other(
                "a read-only env is never replaced",
            )));
        };
        let Some(alone) = Held::alone_within(self, patience) else {
            return Ok(Replaced::ReadersStayed);
        };
        let env = self.env_in(&alone);
        if !unchanged(env) {
            return Ok(Replaced::WrittenSince);
        }
        let mut options = options.clone();
        options.map_size(env.info().map_size);
        let file = self.path.join("data.mdb");
        let kept = self.path.join(KEPT_FILE);
        crate::disk::remove_if_present(&kept)?;
        std::fs::hard_link(&file, &kept)?;
        // SAFETY: `alone` holds the gate exclusively, so no transaction and no other
        // reference to the env lives: the cell may be written.
        let cell = unsafe { &mut *self.env.get() };
        let old = cell
            .take()
            .expect("the env is in its cell outside a replacement");
        // The only handle: dropping it closes LMDB's env (heed's registry forgets the path).
        old.prepare_for_closing().wait();
        let open = || match unsafe {
            // SAFETY: the env was opened with these options before; its old handle is closed.
            options.open(&self.path)
        } {
            Ok(env) => env,
            Err(e) => reopen_failed(&self.path, &e),
        };
        let mut outcome = Replaced::Done;
        let env = match std::fs::rename(copy, &file) {
            Err(e) => {
                tracing::warn!("the compacted copy could not replace the state env: {e}");
                outcome = Replaced::NotRenamed(e);
                open()
            }
            Ok(()) => {
                let env = open();
                if in_step(&env) {
                    env
                } else {
                    env.prepare_for_closing().wait();
                    if let Err(e) = std::fs::rename(&kept, &file) {
                        reopen_failed(&self.path, &heed::Error::Io(e));
                    }
                    outcome = Replaced::OpenElsewhere;
                    let env = open();
                    // In step with the old file, unless a third process opened the copy alone
                    // meanwhile: then nothing may be written, and a restart refuses to start
                    // until the other processes are gone.
                    if !in_step(&env) {
                        reopen_failed(
                            &self.path,
                            &heed::Error::Io(std::io::Error::other(
                                "the lock file follows neither the copy nor the old file",
                            )),
                        );
                    }
                    env
                }
            }
        };
        // The rename's durability: a power loss discards this env anyway (it is behind the
        // raft log, `unflushed`), so a failed directory sync costs nothing but a warning.
        if let Err(e) = crate::disk::sync_dir(&self.path) {
            tracing::warn!("syncing {} after the compaction: {e}", self.path.display());
        }
        if let Err(e) = reopened(&env) {
            reopen_failed(&self.path, &e);
        }
        *cell = Some(env);
        drop(alone);
        if let Err(e) = crate::disk::remove_if_present(&kept) {
            tracing::warn!("{} stays (the next start removes it): {e}", kept.display());
        }
        Ok(outcome)
    }

    /// The env's current map size in bytes.
    pub(super) fn map_size(&self) -> usize {
        self.with_env(|env| env.info().map_size)
    }

    /// The ceiling the map may grow to.
    pub(super) fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Grows the map from `seen` (its size when the caller's write found it full): doubles
    /// it, and keeps doubling until it holds `at_least` bytes, at most to the ceiling.
    /// Returns the map's size when it is now larger than `seen` (grown here, or already by
    /// another writer that found it full too), or `None` when it is at the ceiling. Waits for
    /// every live transaction of the process to end, so the caller must hold none (a write
    /// that found the map full aborts its transaction first).
    pub(super) fn grow(&self, seen: usize, at_least: usize) -> heed::Result<Option<usize>> {
        let alone = Held::alone(self);
        let env = self.env_in(&alone);
        let now = env.info().map_size;
        if now > seen {
            return Ok(Some(now));
        }
        let page = page_size();
        // The largest multiple of a page within the ceiling: LMDB's sizes are in pages.
        let ceiling = (self.ceiling / page) * page;
        let mut want = now.saturating_mul(2);
        while want < at_least && want < ceiling {
            want = want.saturating_mul(2);
        }
        let next = (want.min(ceiling) / page) * page;
        if next <= now {
            return Ok(None);
        }
        // SAFETY: `alone` holds the gate exclusively, and every transaction of this
        // process holds it shared while it lives, so none is live: LMDB's condition for
        // resizing an open env.
        if let Err(e) = unsafe { env.resize(next) } {
            // LMDB unmaps the old map before it maps the new one: when that mmap fails (no
            // address space left, on a 32-bit board) the env is left with no map and
            // pointers into the old one, and the API cannot recover it. Any later read
            // would touch unmapped memory, so the process stops here, gate held. A restart
            // maps what the file needs; raise --max-state-bytes only if the board has room.
            tracing::error!(
                "the state env's map could not grow from {} to {} MiB ({e}): the process \
                 has no address space left for it and stops; lower other reservations \
                 (--max-log-bytes) or --max-state-bytes",
                now >> 20,
                next >> 20
            );
            eprintln!("wraft: the state env's map could not grow ({e}); stopping");
            std::process::abort();
        }
        tracing::info!(
            "the state env's map grew from {} to {} MiB (ceiling {} MiB, --max-state-bytes)",
            now >> 20,
            next >> 20,
            self.ceiling >> 20
        );
        Ok(Some(next))
    }
}

/// The old file's name while [`GrowingEnv::replace_file`] may still put it back (a hard
/// link: no copy); a crash leaves it behind, and the next start or compaction removes it.
pub(super) const KEPT_FILE: &str = "data.mdb.replaced";

/// What [`GrowingEnv::replace_file`] did.
#[derive(Debug)]
pub(super) enum Replaced {
    /// The copy is the env's file now.
    Done,
    /// Nothing: the env was written since the copy was taken.
    WrittenSince,
    /// Nothing: transactions stayed live for the whole patience.
    ReadersStayed,
    /// Nothing: another process has the env open (its lock file stayed at the old file).
    OpenElsewhere,
    /// Nothing: the copy could not be renamed over the file.
    NotRenamed(std::io::Error),
}

/// [`crate::disk::lock_file_in_step`], an error to read counting as out of step (nothing is
/// written then).
fn in_step(env: &Env<WithoutTls>) -> bool {
    crate::disk::lock_file_in_step(env).unwrap_or_else(|e| {
        tracing::warn!("checking the state env against its lock file: {e}");
        false
    })
}

/// An env that was closed to replace its file could not be opened again: the process stops
/// (see [`GrowingEnv::replace_file`]).
fn reopen_failed(path: &Path, e: &heed::Error) -> ! {
    tracing::error!(
        "the state env at {} could not be opened again after its file was replaced ({e}): \
         the process stops; a restart opens the file in place",
        path.display()
    );
    eprintln!("wraft: the state env could not be opened again ({e}); stopping");
    std::process::abort();
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .expect("every unix host reports its page size")
}

impl ReadTxn<'_> {
    /// The raw env, for statistics that pair with this transaction: valid while it lives.
    pub(super) fn env(&self) -> &Env<WithoutTls> {
        self.env
    }
}

impl<'e> Deref for ReadTxn<'e> {
    type Target = RoTxn<'e, WithoutTls>;
    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl WriteTxn<'_> {
    /// Commits the transaction, then lets go of the gate.
    pub(super) fn commit(self) -> heed::Result<()> {
        self.txn.commit()
    }
}

impl<'e> Deref for WriteTxn<'e> {
    type Target = RwTxn<'e>;
    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl DerefMut for WriteTxn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.txn
    }
}

/// A hold on a [`GrowingEnv`]'s gate: its guard (shared or alone) and the debug builds'
/// record of it. Declared after the transaction in [`ReadTxn`] and [`WriteTxn`], so it is
/// dropped after it.
#[derive(Debug)]
struct Held<G> {
    _guard: G,
    _nesting: Nesting,
}

impl<'e> Held<RwLockReadGuard<'e, ()>> {
    fn shared(env: &'e GrowingEnv) -> Self {
        let _nesting = Nesting::enter(env);
        // Poisoning needs a panic while holding the unit guard, and a panic is no reason to
        // stop the rest of the node from reading: the lock guards no data.
        let _guard = env.gate.read().unwrap_or_else(|e| e.into_inner());
        Self { _guard, _nesting }
    }
}

impl<'e> Held<RwLockWriteGuard<'e, ()>> {
    fn alone(env: &'e GrowingEnv) -> Self {
        let _nesting = Nesting::enter(env);
        let _guard = env.gate.write().unwrap_or_else(|e| e.into_inner());
        Self { _guard, _nesting }
    }

    /// The gate alone once no transaction holds it, asked for every 200 µs for at most
    /// `patience`: unlike [`Held::alone`], nothing queues behind the request meanwhile.
    fn alone_within(env: &'e GrowingEnv, patience: Duration) -> Option<Self> {
        let _nesting = Nesting::enter(env);
        let deadline = Instant::now() + patience;
        loop {
            match env.gate.try_write() {
                Ok(_guard) => return Some(Self { _guard, _nesting }),
                Err(TryLockError::Poisoned(p)) => {
                    return Some(Self {
                        _guard: p.into_inner(),
                        _nesting,
                    });
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(TryLockError::WouldBlock) => return None,
            }
        }
    }
}

/// Debug builds: which gates this thread holds, to catch a second hold of the same one.
#[derive(Debug)]
struct Nesting {
    #[cfg(debug_assertions)]
    gate: usize,
}

#[cfg(debug_assertions)]
thread_local! {
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Nesting {
    #[cfg(debug_assertions)]
    fn enter(env: &GrowingEnv) -> Self {
        let gate = std::ptr::from_ref(&env.gate) as usize;
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            assert!(
                !held.contains(&gate),
                "a thread took the state env's gate twice (a transaction opened while it held \
                 another): a map growth waiting between the two would deadlock"
            );
            held.push(gate);
        });
        Self { gate }
    }

    #[cfg(not(debug_assertions))]
    fn enter(_env: &GrowingEnv) -> Self {
        Self {}
    }
}

#[cfg(debug_assertions)]
impl Drop for Nesting {
    fn drop(&mut self) {
        HELD.with(|held| held.borrow_mut().retain(|g| *g != self.gate));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, start: usize, ceiling: usize) -> GrowingEnv {
        let mut opts = heed::EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(start);
        // SAFETY: a fresh directory of this test's own.
        let env = unsafe { opts.open(dir) }.expect("open");
        GrowingEnv::new(env, ceiling)
    }

    #[test]
    fn the_map_doubles_up_to_the_ceiling_and_no_further() {
        let dir = tempfile::tempdir().expect("tmp");
        let env = open(dir.path(), 1 << 20, 3 << 20);
        assert_eq!(env.map_size(), 1 << 20);
        assert_eq!(env.grow(1 << 20, 0).expect("grow"), Some(2 << 20));
        assert_eq!(
            env.grow(2 << 20, 0).expect("grow"),
            Some(3 << 20),
            "capped at the ceiling"
        );
        assert_eq!(env.grow(3 << 20, 0).expect("grow"), None);
        assert_eq!(env.map_size(), 3 << 20);
    }

    #[test]
    fn a_second_writer_that_found_the_same_map_full_does_not_grow_it_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let env = open(dir.path(), 1 << 20, 64 << 20);
        assert_eq!(env.grow(1 << 20, 0).expect("first"), Some(2 << 20));
        assert_eq!(
            env.grow(1 << 20, 0).expect("second, same fill"),
            Some(2 << 20),
            "already grown past what the second writer saw"
        );
        assert_eq!(env.map_size(), 2 << 20);
    }

    #[test]
    fn a_growth_for_a_known_size_doubles_until_it_fits_in_one_step() {
        let dir = tempfile::tempdir().expect("tmp");
        let env = open(dir.path(), 1 << 20, 64 << 20);
        assert_eq!(env.grow(1 << 20, 5 << 20).expect("grow"), Some(8 << 20));
        assert_eq!(
            env.grow(8 << 20, 1 << 30).expect("grow"),
            Some(64 << 20),
            "capped at the ceiling"
        );
    }

    #[test]
    fn a_ceiling_off_the_page_grid_stops_at_the_page_below_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let page = page_size();
        let env = open(dir.path(), 16 * page, 32 * page + page / 2);
        assert_eq!(env.grow(16 * page, 0).expect("grow"), Some(32 * page));
        assert_eq!(env.grow(32 * page, 0).expect("grow"), None);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "took the state env's gate twice")]
    fn a_second_transaction_on_one_thread_is_caught_in_debug_builds() {
        let dir = tempfile::tempdir().expect("tmp");
        let env = open(dir.path(), 1 << 20, 1 << 20);
        let _first = env.read_txn().expect("read");
        let _second = env.read_txn();
    }

    #[test]
    fn transactions_one_after_another_and_on_two_envs_are_not_nesting() {
        let (a, b) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (a, b) = (
            open(a.path(), 1 << 20, 1 << 20),
            open(b.path(), 1 << 20, 1 << 20),
        );
        drop(a.read_txn().expect("read"));
        let wtxn = a.write_txn().expect("write");
        let _other = b.read_txn().expect("another env's");
        wtxn.commit().expect("commit");
        let _again = a.read_txn().expect("read after the commit");
    }
}
