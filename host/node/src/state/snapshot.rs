//! Snapshots of the state env and their installation, which replaces a group's state in one
//! transaction (a crash mid-install leaves the old state intact).
//!
//! A snapshot is a stream of the group's key/value pairs, not an LMDB file: LMDB's page
//! layout depends on the word size, so a copy made on x86_64 cannot be opened on armv7.
//!
//! ```text
//! "WRAFTKV1" | records | 0xFF          record: table (u8, 0..4) | varint len | key
//!                                              | varint len | value
//! ```
//! Tables are `meta`, `fsms`, `modules`, `data`, each in key order; the snapshot file adds a
//! sha256 trailer (`raft/snapshot.rs`). Snapshots written as LMDB copies by earlier wraft
//! versions are still installed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::ops::Bound;
use std::path::Path;

use heed::types::Bytes;
use heed::{CompactionOption, Database, Env, MdbError, PutFlags, WithoutTls};

use super::keys::{self, MetaTag};
use super::{StateError, StateStore};
use crate::runtime::prefix_successor;

const DB_NAMES: [&str; 4] = ["meta", "fsms", "modules", "data"];
/// The first bytes of a key/value snapshot.
const MAGIC: &[u8; 8] = b"WRAFTKV1";
/// The table byte that ends the records.
const END: u8 = 0xFF;
/// Longest key or value a snapshot record may announce: past the largest module (32 MiB)
/// and value (16 MiB) with room to spare, so a damaged length never allocates without bound.
const MAX_RECORD_LEN: u64 = 64 << 20;

impl StateStore {
    /// Writes this group's state (every table, in key order) to `path` as a key/value
    /// snapshot, from one read transaction (applies may continue meanwhile), synced before
    /// returning. Returns the raft state it holds.
    pub fn export_to(&self, path: &Path) -> Result<Option<Vec<u8>>, StateError> {
        let io = heed::Error::Io;
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(MAGIC).map_err(io)?;
        let rtxn = self.env.read_txn()?;
        let group = self.group.to_be_bytes();
        let dbs = [
            self.dbs().meta,
            self.dbs().fsms,
            self.dbs().modules,
            self.dbs().data,
        ];
        for (table, db) in dbs.iter().enumerate() {
            for item in db.prefix_iter(&rtxn, &group)? {
                let (k, v) = item?;
                out.write_all(&[table as u8]).map_err(io)?;
                for part in [k, v] {
                    write_varint(&mut out, part.len() as u64).map_err(io)?;
                    out.write_all(part).map_err(io)?;
                }
            }
        }
        out.write_all(&[END]).map_err(io)?;
        let raft_state = self
            .dbs()
            .meta
            .get(&rtxn, &keys::meta(self.group, MetaTag::RaftState))?
            .map(<[u8]>::to_vec);
        // The transaction ends before the flush: a growth of the map waits for open
        // transactions, and the flush needs none.
        drop(rtxn);
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(raft_state)
    }

    /// Writes a consistent, compacted copy of the whole state env to the file `path`
    /// (synced before returning). Applies may continue meanwhile.
    pub fn copy_to(&self, path: &Path) -> Result<(), StateError> {
        let mut file = File::create(path).map_err(heed::Error::Io)?;
        self.env
            .with_env(|env| env.copy_to_file(&mut file, CompactionOption::Enabled))?;
        file.sync_all().map_err(heed::Error::Io)?;
        Ok(())
    }

    /// Replaces this group's entire state (FSM data, registry, modules, applied position,
    /// raft state) by the one in the LMDB copy at `path`, in one write transaction.
    pub fn import_from(&self, path: &Path) -> Result<(), StateError> {
        // The state takes at least the snapshot's bytes: a full map grows to that at once.
        let len = std::fs::metadata(path).map_err(heed::Error::Io)?.len();
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let result = if is_key_value(path)? {
            self.growing(len, || self.import_pairs(path))
        } else {
            let src = open_copy(path)?;
            let result = self.growing(len, || self.import_env(&src));
            src.prepare_for_closing().wait();
            result
        };
        if result.is_ok() {
            self.publish_divergence()?;
        }
        result
    }

    /// Reads a whole snapshot without writing anything: whether [`Self::import_from`] can
    /// install it (every record well formed and of this group; an LMDB copy with every
    /// table). Checked before a snapshot is published, so a sealed but unreadable snapshot
    /// never becomes the one a restart installs.
    pub fn check_snapshot(&self, path: &Path) -> Result<(), StateError> {
        if is_key_value(path)? {
            return self.read_pairs(path, |_, _, _| Ok(()));
        }
        let src = open_copy(path)?;
        let result = (|| {
            let rtxn = src.read_txn()?;
            for name in DB_NAMES {
                let db: Option<Database<Bytes, Bytes>> = src.open_database(&rtxn, Some(name))?;
                if db.is_none() {
                    return Err(StateError::Snapshot {
                        id: path_name(&src),
                        detail: format!("the copy has no {name} database"),
                    });
                }
            }
            Ok(())
        })();
        src.prepare_for_closing().wait();
        result
    }

    /// Empties this group's range of every table in `wtxn`; returns the tables in snapshot
    /// order (`DB_NAMES`).
    fn cleared_tables(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
    ) -> Result<[Database<Bytes, Bytes>; 4], StateError> {
        let group = self.group.to_be_bytes();
        let end = prefix_successor(&group).unwrap_or_default();
        let range = (Bound::Included(&group[..]), Bound::Excluded(&end[..]));
        let tables = [
            self.dbs().meta,
            self.dbs().fsms,
            self.dbs().modules,
            self.dbs().data,
        ];
        for table in tables {
            table.delete_range(wtxn, &range)?;
        }
        Ok(tables)
    }

    /// Replaces this group's state with the pairs of a key/value snapshot.
    fn import_pairs(&self, path: &Path) -> Result<(), StateError> {
        let mut wtxn = self.env.write_txn()?;
        let dsts = self.cleared_tables(&mut wtxn)?;
        self.read_pairs(path, |table, key, value| {
            let dst = dsts[table];
            // Keys arrive sorted into an emptied range: append them (full pages, no tree
            // search), unless a key of a later group sorts after them.
            match dst.put_with_flags(&mut wtxn, PutFlags::APPEND, key, value) {
                Err(heed::Error::Mdb(MdbError::KeyExist)) => dst.put(&mut wtxn, key, value)?,
                other => other?,
            }
            Ok(())
        })?;
        wtxn.commit()?;
        Ok(())
    }

    /// Calls `each(table, key, value)` for every record of a key/value snapshot, in order;
    /// an error for a malformed record, a table out of range or a key of another group.
    fn read_pairs(
        &self,
        path: &Path,
        mut each: impl FnMut(usize, &[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let bad = |detail: String| StateError::Snapshot {
            id: path.display().to_string(),
            detail,
        };
        let io = heed::Error::Io;
        let mut input = BufReader::new(File::open(path).map_err(io)?);
        let mut magic = [0u8; MAGIC.len()];
        input.read_exact(&mut magic).map_err(io)?;
        let group = self.group.to_be_bytes();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        loop {
            let mut table = [0u8];
            input
                .read_exact(&mut table)
                .map_err(|e| bad(format!("cut short: {e}")))?;
            if table[0] == END {
                return Ok(());
            }
            let table = usize::from(table[0]);
            if table >= DB_NAMES.len() {
                return Err(bad(format!("unknown table {table}")));
            }
            for part in [&mut key, &mut value] {
                let len = read_varint(&mut input).map_err(&bad)?;
                if len > MAX_RECORD_LEN {
                    return Err(bad(format!("a record of {len} bytes")));
                }
                part.resize(len as usize, 0);
                input
                    .read_exact(part)
                    .map_err(|e| bad(format!("cut short: {e}")))?;
            }
            if !key.starts_with(&group) {
                return Err(bad("a key of another raft group".into()));
            }
            each(table, &key, &value)?;
        }
    }

    fn import_env(&self, src: &Env<WithoutTls>) -> Result<(), StateError> {
        let rtxn = src.read_txn()?;
        let mut wtxn = self.env.write_txn()?;
        let dsts = self.cleared_tables(&mut wtxn)?;
        for (name, dst) in DB_NAMES.iter().zip(dsts) {
            let src_db: Database<Bytes, Bytes> =
                src.open_database(&rtxn, Some(name))?
                    .ok_or_else(|| StateError::Snapshot {
                        id: path_name(src),
                        detail: format!("the copy has no {name} database"),
                    })?;
            for item in src_db.prefix_iter(&rtxn, &self.group.to_be_bytes())? {
                let (k, v) = item?;
                // Keys arrive sorted into an emptied range: append them (full pages, no
                // tree search), unless a key of a later group sorts after them.
                match dst.put_with_flags(&mut wtxn, PutFlags::APPEND, k, v) {
                    Err(heed::Error::Mdb(MdbError::KeyExist)) => dst.put(&mut wtxn, k, v)?,
                    other => other?,
                }
            }
        }
        wtxn.commit()?;
        Ok(())
    }
}

fn path_name(env: &Env<WithoutTls>) -> String {
    env.path().display().to_string()
}

/// Opens an LMDB copy (a single file) read-only.
fn open_copy(path: &Path) -> Result<Env<WithoutTls>, StateError> {
    super::offline::open_env(path, true).map(|(env, _)| env)
}

/// Whether `path` holds a key/value snapshot (else: an LMDB copy).
fn is_key_value(path: &Path) -> Result<bool, StateError> {
    let mut head = [0u8; MAGIC.len()];
    let mut file = File::open(path).map_err(heed::Error::Io)?;
    Ok(file.read_exact(&mut head).is_ok() && &head == MAGIC)
}

fn write_varint(out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n >= 0x80 {
        out.write_all(&[(n as u8) | 0x80])?;
        n >>= 7;
    }
    out.write_all(&[n as u8])
}

fn read_varint(input: &mut impl BufRead) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        input
            .read_exact(&mut b)
            .map_err(|e| format!("cut short: {e}"))?;
        n |= u64::from(b[0] & 0x7f) << shift;
        if b[0] < 0x80 {
            return Ok(n);
        }
    }
    Err("a length longer than 64 bits".into())
}
