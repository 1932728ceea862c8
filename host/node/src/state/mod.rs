//! The state env (`<data>/state`): FSM keyspaces, the FSM registry, the module table and the
//! last-applied position, all in one LMDB environment so that applying an entry and moving
//! the applied marker commit together.

mod apply;
mod compact;
mod digest;
mod offline;
mod session;
pub(crate) use offline::live_map_size;
mod snapshot;
pub use apply::Committed;
pub use compact::{COPY_FILE, Compaction};
mod keys;
mod map;
pub mod unflushed;
pub use map::DEFAULT_MAP_START;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions, RoTxn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wraft_core::abi::EntryContext;
use wraft_core::{ApplyError, Format, FsmLimits, FsmName, ModuleId};

use crate::runtime::{
    CallEnv, EntryPoint, FsmRuntime, KvTarget, LoadedModule, ModuleError, RuntimeError,
};

pub use digest::Divergence;
pub use keys::GroupId;

/// Fuel a JSON codec call gets per byte of its input, beyond the FSM's `query_fuel`: parsing
/// costs in proportion to the text (latest-payload spends ~53 per byte of a hex block), and
/// the caller pays for the bytes it sends.
pub const CODEC_FUEL_PER_BYTE: u64 = 128;

/// Format version of the state env's layout.
pub const STATE_FORMAT: u32 = 1;

/// Default ceiling of the state env (LMDB map size): 64 GiB of address space.
#[cfg(target_pointer_width = "64")]
pub const DEFAULT_MAX_STATE_BYTES: usize = 64 << 30;
/// Default ceiling of the state env on 32-bit hosts, whose whole address space is 4 GiB.
#[cfg(not(target_pointer_width = "64"))]
pub const DEFAULT_MAX_STATE_BYTES: usize = 1 << 30;

/// Errors of the state layer. All are node faults: nothing here is a replicated outcome.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating the directory or opening the env failed.
    #[error("cannot open the state env at {path}: {source}")]
    Open {
        /// The env directory.
        path: PathBuf,
        /// Why.
        source: heed::Error,
    },
    /// An LMDB operation failed.
    #[error("state storage error: {0}")]
    Storage(#[from] heed::Error),
    /// A stored record does not decode: the env is damaged or from an incompatible version.
    #[error("corrupt state record {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decode error.
        detail: String,
    },
    /// The env was written by a newer wraft.
    #[error("state env format {found} is newer than this wraft supports ({STATE_FORMAT})")]
    Format {
        /// The stored format.
        found: u32,
    },
    /// The env was open, unflushed, when the machine went down: it may be torn.
    #[error(
        "the state env at {path} was open when the machine went down (boot {boot}) and may be \
         torn: start the node, which rebuilds it from its newest snapshot and raft log"
    )]
    Unflushed {
        /// The env's directory.
        path: PathBuf,
        /// The boot it was open in.
        boot: String,
    },
    /// The wasm runtime faulted.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The env reached its configured size ceiling. Reads keep working; writes fail until
    /// space is reclaimed or the ceiling raised.
    #[error(
        "the state env is full: it reached its size ceiling of {ceiling} bytes \
         (raise it with --max-state-bytes, or reclaim space)"
    )]
    Full {
        /// The ceiling.
        ceiling: usize,
    },
    /// A checkpoint found this node's state different from the leader's: it serves no reads
    /// until repaired.
    #[error(
        "this node's {0}; it serves no reads until it is repaired \
         (restore a healthy node's backup: see docs/operations.md)"
    )]
    Diverged(Divergence),
    /// LMDB's lock file does not follow the data file (see `disk::lock_file_in_step`).
    #[error(
        "the state env at {0} does not match its lock file (lock.mdb): another process had \
         the env open while its file was replaced; stop that process (a `wraft init info` or \
         `verify`?) and start the node again"
    )]
    LockFileStale(PathBuf),
    /// An online compaction did not replace the env (which is as it was).
    #[error("compaction of the state env: {0}")]
    Compaction(String),
    /// A call made with [`Compile::Never`] found its module not compiled in memory: run it
    /// again where it may compile.
    #[error("module {0} is not compiled in memory (a call that may not compile asked for it)")]
    NotInMemory(ModuleId),
    /// A snapshot file is not what its id says.
    #[error("snapshot {id}: {detail}")]
    Snapshot {
        /// The snapshot id.
        id: String,
        /// What is wrong.
        detail: String,
    },
}

impl StateError {
    /// LMDB's MDB_MAP_FULL, wherever it surfaced.
    fn is_map_full(&self) -> bool {
        matches!(
            self,
            StateError::Storage(heed::Error::Mdb(heed::MdbError::MapFull))
                | StateError::Runtime(RuntimeError::Storage(heed::Error::Mdb(
                    heed::MdbError::MapFull
                )))
        )
    }
}

/// Options of the state env.
#[derive(Debug, Clone, Copy)]
pub struct StateOptions {
    /// Largest size the env may reach, in bytes: LMDB's map size at most. The file itself
    /// only grows as data is written; this bounds it.
    pub max_bytes: usize,
    /// The map's size when the env opens (at least the data file's), in bytes: it doubles,
    /// up to `max_bytes`, when a write finds it full (`state/map.rs`). [`DEFAULT_MAP_START`]: the
    /// whole ceiling on 64-bit hosts, 64 MiB on 32-bit ones.
    pub map_start: usize,
    /// Commits are not flushed: the env sits behind a raft log that holds every entry after
    /// the newest snapshot, and is discarded after a power loss ([`unflushed`]). Without
    /// this (a store of its own, like `wraft local`'s), each apply flushes its pages.
    pub behind_log: bool,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_STATE_BYTES,
            map_start: DEFAULT_MAP_START,
            behind_log: false,
        }
    }
}

/// One FSM instance's registry record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmRecord {
    /// Internal id: the key prefix of its data.
    pub id: u64,
    /// The module it runs.
    pub module_id: ModuleId,
    /// Its limits.
    pub limits: FsmLimits,
    /// The module's `wraft_fsm_version` when it was created or last upgraded.
    pub fsm_version: u32,
    /// Log index of the entry that created it.
    pub created_index: u64,
}

/// [`FsmRecord`] as written before FSM limits had a query fuel and a storage quota.
#[derive(Deserialize)]
struct FsmRecordV1 {
    id: u64,
    module_id: ModuleId,
    fuel: u64,
    memory_pages: u32,
    max_output_bytes: u32,
    fsm_version: u32,
    created_index: u64,
}

impl FsmRecord {
    /// Decodes a record, also one written before limits had five fields (its queries keep
    /// running on the apply fuel and its keyspace has no quota, as they did then). Records
    /// are not rewritten: every replica hashes the bytes it applied.
    pub fn decode(what: &str, bytes: &[u8]) -> Result<Self, StateError> {
        match postcard::from_bytes::<Self>(bytes) {
            Ok(rec) => Ok(rec),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                let old: FsmRecordV1 = decode(what, bytes)?;
                Ok(Self {
                    id: old.id,
                    module_id: old.module_id,
                    limits: FsmLimits {
                        fuel: old.fuel,
                        memory_pages: old.memory_pages,
                        max_output_bytes: old.max_output_bytes,
                        query_fuel: old.fuel,
                        storage_bytes: u64::MAX,
                    },
                    fsm_version: old.fsm_version,
                    created_index: old.created_index,
                })
            }
            Err(e) => Err(StateError::Corrupt {
                what: what.into(),
                detail: e.to_string(),
            }),
        }
    }
}

/// A log position: index and term of the last applied entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPosition {
    /// Log index.
    pub index: u64,
    /// Term.
    pub term: u64,
}

#[derive(Debug, Clone, Copy)]
struct Dbs {
    meta: Database<Bytes, Bytes>,
    fsms: Database<Bytes, Bytes>,
    modules: Database<Bytes, Bytes>,
    data: Database<Bytes, Bytes>,
}

impl Dbs {
    /// The env's tables, each opened (created if missing) by `create` from its name.
    fn create(
        mut create: impl FnMut(&str) -> heed::Result<Database<Bytes, Bytes>>,
    ) -> heed::Result<Self> {
        Ok(Self {
            meta: create("meta")?,
            fsms: create("fsms")?,
            modules: create("modules")?,
            data: create("data")?,
        })
    }
}

/// The state env of one node.
#[derive(Debug)]
pub struct StateStore {
    env: map::GrowingEnv,
    /// The env's tables: heed's handles belong to one env, so an online compaction, which
    /// opens the env again, replaces them while no transaction is live.
    tables: std::sync::RwLock<Dbs>,
    runtime: Arc<FsmRuntime>,
    group: GroupId,
    /// Set while an env behind the log is open; cleared when it closes flushed.
    unflushed: Option<unflushed::Mark>,
}

impl Drop for StateStore {
    fn drop(&mut self) {
        let Some(mark) = &self.unflushed else {
            return;
        };
        // Nothing writes any more. Flushed, the env needs no rebuild after a power loss; if
        // either step fails, the mark stays and a restart in another boot rebuilds it.
        let closed = self
            .env
            .with_env(|env| env.force_sync())
            .map_err(io::Error::other)
            .and_then(|()| mark.clear());
        if let Err(e) = closed {
            tracing::warn!(
                "the state env at {} was not closed flushed: {e}",
                self.path().display()
            );
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("the state's records are plain data, which always encodes")
}

impl StateStore {
    /// Opens (creating if needed) `<data_dir>/state` with default options.
    pub fn open(data_dir: &Path, runtime: Arc<FsmRuntime>) -> Result<Self, StateError> {
        Self::open_with(data_dir, runtime, StateOptions::default())
    }

    /// Opens (creating if needed) `<data_dir>/state`.
    pub fn open_with(
        data_dir: &Path,
        runtime: Arc<FsmRuntime>,
        options: StateOptions,
    ) -> Result<Self, StateError> {
        let path = data_dir.join("state");
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(|e| open_err(heed::Error::Io(e)))?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        // LMDB counts sizes in pages: the start is rounded down to a multiple of 64 KiB (a
        // multiple of any page size), at least one.
        let start = (options.map_start.min(options.max_bytes) >> 16).max(1) << 16;
        opts.map_size(start).max_dbs(8);
        let unflushed = if options.behind_log {
            let (mark, found) =
                unflushed::Mark::set(&path).map_err(|e| open_err(heed::Error::Io(e)))?;
            if let unflushed::Found::Discarded { boot } = found {
                tracing::warn!(
                    "the state env at {} was open when the machine went down (boot {boot}): \
                     discarded; the newest snapshot and the raft log rebuild it",
                    path.display()
                );
            }
            // No device flush per apply: see `unflushed`.
            // SAFETY: NO_SYNC is a documented LMDB flag; the env is discarded when a power
            // loss may have left it torn (the mark above).
            unsafe { opts.flags(heed::EnvFlags::NO_SYNC) };
            Some(mark)
        } else {
            // One device flush per apply instead of two: LMDB still syncs a transaction's
            // pages before writing its meta page (so a crash never corrupts the env), but
            // leaves that meta page to the next commit's flush; a power loss can undo the
            // last apply.
            // SAFETY: NO_META_SYNC is a documented LMDB flag.
            unsafe { opts.flags(heed::EnvFlags::NO_META_SYNC) };
            None
        };
        // An interrupted online compaction's files: the env's own file is whole.
        compact::remove_leftovers(&path)?;
        // SAFETY: the directory is wraft's own, and LMDB's rule that one process must not
        // open an env twice is enforced by heed.
        let env =
            unsafe { map::GrowingEnv::open(opts, &path, options.max_bytes) }.map_err(open_err)?;
        // Before anything is written: a write through a stale lock file lands on the wrong
        // meta page and loses the env.
        if !env.with_env(crate::disk::lock_file_in_step)? {
            return Err(StateError::LockFileStale(path));
        }
        let mut wtxn = env.write_txn()?;
        let dbs = Dbs::create(|name| env.create_database(&mut wtxn, name))?;
        let group = 0;
        let format_key = keys::meta(group, keys::MetaTag::Format);
        match dbs.meta.get(&wtxn, &format_key)? {
            Some(b) => {
                let found = u32::from_le_bytes(b.try_into().map_err(|_| StateError::Corrupt {
                    what: "format".into(),
                    detail: "not 4 bytes".into(),
                })?);
                if found > STATE_FORMAT {
                    return Err(StateError::Format { found });
                }
            }
            None => dbs
                .meta
                .put(&mut wtxn, &format_key, &STATE_FORMAT.to_le_bytes())?,
        }
        wtxn.commit()?;
        let store = Self {
            env,
            tables: std::sync::RwLock::new(dbs),
            runtime,
            group,
            unflushed,
        };
        store.runtime.keep_only_on_disk(&store.deployed_modules()?);
        Ok(store)
    }

    /// The ids of the modules deployed in every group of this state env.
    fn deployed_modules(&self) -> Result<std::collections::HashSet<ModuleId>, StateError> {
        let rtxn = self.env.read_txn()?;
        let mut ids = std::collections::HashSet::new();
        for item in self.dbs().modules.iter(&rtxn)? {
            let (k, _) = item?;
            let id: [u8; 32] = k
                .get(8..40)
                .and_then(|id| id.try_into().ok())
                .ok_or_else(|| StateError::Corrupt {
                    what: "module key".into(),
                    detail: format!("{} bytes, not a group and a module id", k.len()),
                })?;
            ids.insert(ModuleId(id));
        }
        Ok(ids)
    }

    /// Runs `write` (one write transaction, which leaves nothing behind when it fails) and,
    /// each time it finds the map full, grows the map and runs it again; at the ceiling, the
    /// error is [`StateError::Full`]. At most log2(ceiling / start) runs. `at_least` is a
    /// size the write is known to need (a snapshot's length), so its first growth reaches
    /// it at once instead of one doubling per run.
    fn growing<T>(
        &self,
        at_least: usize,
        write: impl Fn() -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        loop {
            let seen = self.env.map_size();
            match write() {
                Err(e) if e.is_map_full() => {
                    if self.env.grow(seen, at_least)?.is_none() {
                        return Err(StateError::Full {
                            ceiling: self.env.ceiling(),
                        });
                    }
                }
                done => return done,
            }
        }
    }

    /// The env's tables. Used with a live transaction of the env (a compaction replaces them
    /// only while none is), so they always belong to that transaction's env.
    fn dbs(&self) -> Dbs {
        *self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The raft layer's applied state, as last stored by [`StateStore::apply`].
    pub fn raft_state(&self) -> Result<Option<Vec<u8>>, StateError> {
        let rtxn = self.env.read_txn()?;
        let key = keys::meta(self.group, keys::MetaTag::RaftState);
        Ok(self.dbs().meta.get(&rtxn, &key)?.map(<[u8]>::to_vec))
    }

    /// Flushes every committed apply to disk (applies behind the log flush nothing; others
    /// leave their meta page to the next commit). Called after a snapshot import, before the
    /// raft log may be purged.
    pub fn sync(&self) -> Result<(), StateError> {
        Ok(self.env.with_env(|env| env.force_sync())?)
    }

    /// The env's directory (`<data>/state`).
    pub fn path(&self) -> &std::path::Path {
        self.env.path()
    }

    /// The state env's map size now, in bytes ([`StateOptions::map_start`], grown since).
    pub fn map_bytes(&self) -> usize {
        self.env.map_size()
    }

    /// The runtime this store runs modules in.
    pub fn runtime(&self) -> &Arc<FsmRuntime> {
        &self.runtime
    }

    /// The last applied log position (`None` before the first entry).
    pub fn applied(&self) -> Result<Option<AppliedPosition>, StateError> {
        let rtxn = self.env.read_txn()?;
        self.applied_in(&rtxn)
    }

    fn applied_in(&self, txn: &RoTxn<'_>) -> Result<Option<AppliedPosition>, StateError> {
        match self
            .dbs()
            .meta
            .get(txn, &keys::meta(self.group, keys::MetaTag::Applied))?
        {
            Some(b) => Ok(Some(decode("applied position", b)?)),
            None => Ok(None),
        }
    }

    fn u64_meta(&self, txn: &RoTxn<'_>, tag: keys::MetaTag) -> Result<u64, StateError> {
        match self.dbs().meta.get(txn, &keys::meta(self.group, tag))? {
            Some(b) => Ok(u64::from_le_bytes(b.try_into().map_err(|_| {
                StateError::Corrupt {
                    what: format!("{tag:?}"),
                    detail: "not 8 bytes".into(),
                }
            })?)),
            None => Ok(0),
        }
    }

    fn record_in(&self, txn: &RoTxn<'_>, name: &FsmName) -> Result<Option<FsmRecord>, StateError> {
        match self
            .dbs()
            .fsms
            .get(txn, &keys::fsm(self.group, name.as_str()))?
        {
            Some(b) => Ok(Some(FsmRecord::decode(&format!("fsm {name}"), b)?)),
            None => Ok(None),
        }
    }

    /// The bytes an FSM's keyspace holds (keys and values). Kept in `meta` by every write;
    /// for an FSM created before that was so, counted from its keyspace at its first write
    /// (the same on every replica, which all hold the same keyspace then).
    fn usage_in(&self, txn: &RoTxn<'_>, rec: &FsmRecord) -> Result<u64, StateError> {
        if let Some(b) = self.dbs().meta.get(txn, &keys::usage(self.group, rec.id))? {
            let b: [u8; 8] = b.try_into().map_err(|_| StateError::Corrupt {
                what: format!("storage use of fsm id {}", rec.id),
                detail: "not 8 bytes".into(),
            })?;
            return Ok(u64::from_le_bytes(b));
        }
        let prefix = keys::data_prefix(self.group, rec.id);
        let mut bytes = 0u64;
        for item in self.dbs().data.prefix_iter(txn, &prefix)? {
            let (k, v) = item?;
            bytes += (k.len() - prefix.len() + v.len()) as u64;
        }
        Ok(bytes)
    }

    /// The bytes `fsm`'s keyspace holds, as its storage quota counts them.
    pub fn usage(&self, fsm: &FsmName) -> Result<Option<u64>, StateError> {
        let rtxn = self.env.read_txn()?;
        match self.record_in(&rtxn, fsm)? {
            Some(rec) => Ok(Some(self.usage_in(&rtxn, &rec)?)),
            None => Ok(None),
        }
    }

    /// The registry record of `name`.
    pub fn fsm(&self, name: &FsmName) -> Result<Option<FsmRecord>, StateError> {
        let rtxn = self.env.read_txn()?;
        self.record_in(&rtxn, name)
    }

    /// Every FSM instance, by name.
    pub fn fsms(&self) -> Result<Vec<(String, FsmRecord)>, StateError> {
        let rtxn = self.env.read_txn()?;
        let prefix = self.group.to_be_bytes();
        let mut out = Vec::new();
        for item in self.dbs().fsms.prefix_iter(&rtxn, &prefix)? {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            let rec = FsmRecord::decode(&format!("fsm {name}"), v)?;
            out.push((name, rec));
        }
        Ok(out)
    }

    /// Every deployed module with its size in bytes.
    pub fn modules(&self) -> Result<Vec<(ModuleId, usize)>, StateError> {
        let rtxn = self.env.read_txn()?;
        let prefix = self.group.to_be_bytes();
        let mut out = Vec::new();
        for item in self.dbs().modules.prefix_iter(&rtxn, &prefix)? {
            let (k, v) = item?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&k[8..40]);
            out.push((ModuleId(id), v.len()));
        }
        Ok(out)
    }

    /// A module's bytes.
    pub fn module_bytes(&self, id: &ModuleId) -> Result<Option<Vec<u8>>, StateError> {
        let rtxn = self.env.read_txn()?;
        Ok(self
            .dbs()
            .modules
            .get(&rtxn, &keys::module(self.group, id))?
            .map(<[u8]>::to_vec))
    }

    fn loaded(
        &self,
        txn: &RoTxn<'_>,
        id: &ModuleId,
        compile: Compile,
    ) -> Result<Result<Arc<LoadedModule>, ApplyError>, StateError> {
        let Some(bytes) = self.dbs().modules.get(txn, &keys::module(self.group, id))? else {
            return Ok(Err(ApplyError::UnknownModule(*id)));
        };
        if compile == Compile::Never {
            return match self.runtime.in_memory(id) {
                Some(m) => Ok(Ok(m)),
                None => Err(StateError::NotInMemory(*id)),
            };
        }
        let loaded = self.runtime.load(*id, || Ok(bytes.to_vec()))?;
        Ok(loaded.map_err(|e| ApplyError::InvalidModule(e.to_string())))
    }

    /// The registry record of `fsm` and its loaded module, or the deterministic reason there
    /// is none.
    fn fsm_and_module(
        &self,
        txn: &RoTxn<'_>,
        fsm: &FsmName,
        compile: Compile,
    ) -> Result<Result<(FsmRecord, Arc<LoadedModule>), ApplyError>, StateError> {
        let Some(rec) = self.record_in(txn, fsm)? else {
            return Ok(Err(ApplyError::UnknownFsm(fsm.to_string())));
        };
        Ok(self.loaded(txn, &rec.module_id, compile)?.map(|m| (rec, m)))
    }

    /// Validates and compiles `bytes` before they are proposed, under their real id, so that
    /// applying the deploy entry on this node reuses the compiled module instead of compiling
    /// it a second time. Returns the module id, or why the module is refused.
    pub fn prepare_module(
        &self,
        bytes: &[u8],
    ) -> Result<Result<ModuleId, ModuleError>, StateError> {
        let id = module_id(bytes);
        Ok(self.runtime.prepare(id, bytes)?.map(|_| id))
    }

    /// Runs a read-only query against `fsm` at the applied index.
    pub fn query(
        &self,
        fsm: &FsmName,
        input: &[u8],
        compile: Compile,
    ) -> Result<Result<Vec<u8>, ApplyError>, StateError> {
        let rtxn = self.env.read_txn()?;
        if let Some(d) = self.divergence_in(&rtxn)? {
            return Err(StateError::Diverged(d));
        }
        let (rec, module) = match self.fsm_and_module(&rtxn, fsm, compile)? {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let applied = self.applied_in(&rtxn)?.unwrap_or_default();
        let ctx = EntryContext {
            index: applied.index,
            term: applied.term,
            timestamp_ms: self.u64_meta(&rtxn, keys::MetaTag::LastTimestamp)?,
            position: 0,
            is_query: true,
        };
        let kv = KvTarget::Read {
            txn: &rtxn,
            db: self.dbs().data,
            prefix: keys::data_prefix(self.group, rec.id),
        };
        let limits = FsmLimits {
            fuel: rec.limits.query_fuel,
            ..rec.limits
        };
        let env = CallEnv {
            kv,
            ctx,
            limits,
            fsm: fsm.as_str(),
            metering: Format::V2,
        };
        Ok(self
            .runtime
            .call(&module, EntryPoint::Query, input, env)?
            .result)
    }

    /// Runs one of `fsm`'s JSON codecs (no keyspace access), producing at most `max_output`
    /// bytes (a node's setting: codecs run at the edge, never in the log).
    pub fn codec(
        &self,
        fsm: &FsmName,
        entry: EntryPoint,
        input: &[u8],
        max_output: usize,
        compile: Compile,
    ) -> Result<Result<Vec<u8>, ApplyError>, StateError> {
        let rtxn = self.env.read_txn()?;
        let (rec, module) = match self.fsm_and_module(&rtxn, fsm, compile)? {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        drop(rtxn);
        let per_byte = CODEC_FUEL_PER_BYTE.saturating_mul(input.len() as u64);
        let limits = FsmLimits {
            fuel: rec.limits.query_fuel.saturating_add(per_byte),
            max_output_bytes: u32::try_from(max_output).unwrap_or(u32::MAX),
            ..rec.limits
        };
        let env = CallEnv {
            kv: KvTarget::None,
            ctx: EntryContext::default(),
            limits,
            fsm: fsm.as_str(),
            metering: Format::V2,
        };
        Ok(self.runtime.call(&module, entry, input, env)?.result)
    }

    /// sha256 over the FSM's keyspace (each key and value length-prefixed, in key order):
    /// equal on every replica at the same applied index.
    pub fn fsm_hash(&self, fsm: &FsmName) -> Result<Option<[u8; 32]>, StateError> {
        let rtxn = self.env.read_txn()?;
        let Some(rec) = self.record_in(&rtxn, fsm)? else {
            return Ok(None);
        };
        self.fsm_hash_in(&rtxn, &rec).map(Some)
    }
}

/// Whether a call may compile its FSM's module when it is not in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compile {
    /// Compile it (wasmtime compiles in parallel on rayon's threads).
    IfNeeded,
    /// Answer [`StateError::NotInMemory`] instead: for calls on a rayon thread, where a
    /// compile's parallel work would let the waiting thread run other queued calls on its own
    /// stack, and one for the same module would wait for the compile gate that thread holds.
    Never,
}

/// sha256 of a module's bytes: its id.
pub fn module_id(bytes: &[u8]) -> ModuleId {
    ModuleId(Sha256::digest(bytes).into())
}
