//! Snapshots of the state env: consistent LMDB copies taken while writers run, and their
//! installation, which replaces a group's state in one transaction (a crash mid-install
//! leaves the old state intact).

use std::fs::File;
use std::ops::Bound;
use std::path::Path;

use heed::types::Bytes;
use heed::{CompactionOption, Database, Env, MdbError, PutFlags, WithoutTls};

use super::keys::{self, MetaTag};
use super::{StateError, StateStore};
use crate::runtime::prefix_successor;

const DB_NAMES: [&str; 4] = ["meta", "fsms", "modules", "data"];

impl StateStore {
    /// Writes a consistent, compacted copy of the whole state env to the file `path`
    /// (synced before returning). Applies may continue meanwhile.
    pub fn copy_to(&self, path: &Path) -> Result<(), StateError> {
        let mut file = File::create(path).map_err(heed::Error::Io)?;
        self.env
            .copy_to_file(&mut file, CompactionOption::Enabled)?;
        file.sync_all().map_err(heed::Error::Io)?;
        Ok(())
    }

    /// Replaces this group's entire state (FSM data, registry, modules, applied position,
    /// raft state) by the one in the LMDB copy at `path`, in one write transaction.
    pub fn import_from(&self, path: &Path) -> Result<(), StateError> {
        let src = open_copy(path)?;
        let result = self.import_env(&src);
        src.prepare_for_closing().wait();
        if result.is_ok() {
            // The imported state carries its own divergence record (normally none).
            let diverged = self.divergence()?.is_some();
            metrics::gauge!("state_diverged").set(if diverged { 1.0 } else { 0.0 });
        }
        result
    }

    fn import_env(&self, src: &Env<WithoutTls>) -> Result<(), StateError> {
        let rtxn = src.read_txn()?;
        let mut wtxn = self.env.write_txn()?;
        let group = self.group.to_be_bytes();
        let end = prefix_successor(&group).unwrap_or_default();
        let range = (Bound::Included(&group[..]), Bound::Excluded(&end[..]));
        let dsts = [
            self.dbs.meta,
            self.dbs.fsms,
            self.dbs.modules,
            self.dbs.data,
        ];
        for (name, dst) in DB_NAMES.iter().zip(dsts) {
            let src_db: Database<Bytes, Bytes> =
                src.open_database(&rtxn, Some(name))?
                    .ok_or_else(|| StateError::Snapshot {
                        id: path_name(src),
                        detail: format!("the copy has no {name} database"),
                    })?;
            dst.delete_range(&mut wtxn, &range)?;
            for item in src_db.prefix_iter(&rtxn, &group)? {
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

/// The raft state stored in an LMDB copy of a state env (group 0).
pub fn copy_raft_state(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let env = open_copy(path)?;
    let result = (|| {
        let rtxn = env.read_txn()?;
        let Some(meta): Option<Database<Bytes, Bytes>> = env.open_database(&rtxn, Some("meta"))?
        else {
            return Ok(None);
        };
        Ok(meta
            .get(&rtxn, &keys::meta(0, MetaTag::RaftState))?
            .map(<[u8]>::to_vec))
    })();
    env.prepare_for_closing().wait();
    result
}
