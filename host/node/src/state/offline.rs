//! The state env without a running node: read-only opening (of a data directory, or of a
//! single-file LMDB copy such as a backup) and the checks behind `wraft init verify`.

use std::path::Path;
use std::sync::Arc;

use heed::{Env, EnvFlags, EnvOpenOptions, WithoutTls};

use super::{Dbs, FsmRecord, StateError, StateStore, module_id};
use crate::runtime::FsmRuntime;

/// The map size for reading a live env whose data file is `len` bytes: room for what a
/// running node may write during an inspection (256 MiB), without asking for the node's whole
/// ceiling (which a 32-bit host or qemu-user may not be able to map). For the state and the
/// raft env alike.
pub(crate) fn live_map_size(len: usize) -> usize {
    len.saturating_add(256 << 20).next_multiple_of(1 << 16)
}

/// Opens an LMDB env read-only: an env directory (safe beside a running node, whose file
/// may grow while it is read: see [`live_map_size`]) or a single-file copy (private: no lock
/// file). Returns the env and its data file's length.
pub(super) fn open_env(
    path: &Path,
    single_file: bool,
) -> Result<(Env<WithoutTls>, usize), StateError> {
    let open_err = |source| StateError::Open {
        path: path.into(),
        source,
    };
    let file = if single_file {
        path.to_path_buf()
    } else {
        path.join("data.mdb")
    };
    let len = std::fs::metadata(&file)
        .map_err(|e| open_err(heed::Error::Io(e)))?
        .len() as usize;
    let copy_map = (len + (1 << 20)).next_multiple_of(1 << 16);
    let mut opts = EnvOpenOptions::new().read_txn_without_tls();
    let flags = if single_file {
        opts.map_size(copy_map);
        EnvFlags::READ_ONLY | EnvFlags::NO_SUB_DIR | EnvFlags::NO_LOCK
    } else {
        opts.map_size(live_map_size(len));
        EnvFlags::READ_ONLY
    };
    opts.max_dbs(8);
    // SAFETY: read-only. A copy file is private (no lock file needed); an env directory
    // is coordinated with a node that may have it open through LMDB's lock file.
    unsafe { opts.flags(flags) };
    // SAFETY: as above; heed refuses a second open of the same env in this process.
    let env = unsafe { opts.open(path) }.map_err(open_err)?;
    Ok((env, len))
}

impl StateStore {
    /// Opens an existing state env read-only: `path` is an env directory (`<data>/state`, safe
    /// beside a running node) or, with `single_file`, an LMDB copy file (a backup's
    /// `state.mdb`). Fails if it holds no wraft state.
    pub fn open_read_only(path: &Path, single_file: bool) -> Result<Self, StateError> {
        if !single_file
            && let Some(boot) =
                super::unflushed::left_by_another_boot(path).map_err(|e| StateError::Open {
                    path: path.into(),
                    source: heed::Error::Io(e),
                })?
        {
            return Err(StateError::Unflushed {
                path: path.into(),
                boot,
            });
        }
        let (env, len) = open_env(path, single_file)?;
        let rtxn = env.read_txn()?;
        let open = |name: &str| {
            env.open_database(&rtxn, Some(name))?
                .ok_or_else(|| StateError::Corrupt {
                    what: format!("state env {}", path.display()),
                    detail: format!("it has no {name} table"),
                })
        };
        let dbs = Dbs {
            meta: open("meta")?,
            fsms: open("fsms")?,
            modules: open("modules")?,
            data: open("data")?,
        };
        // The handles become shared with the env only when the opening txn commits.
        rtxn.commit()?;
        Ok(Self {
            // Read-only: nothing here writes, so its map never grows.
            env: super::map::GrowingEnv::new(env, len),
            tables: std::sync::RwLock::new(dbs),
            runtime: Arc::new(FsmRuntime::new()?),
            group: 0,
            unflushed: None,
        })
    }

    /// Size of the env's data file in bytes.
    pub fn file_bytes(&self) -> Result<u64, StateError> {
        Ok(self.env.with_env(|env| env.real_disk_size())?)
    }

    /// Bytes a compacting copy would give back: the file size minus the pages in use.
    pub fn reclaimable_bytes(&self) -> Result<u64, StateError> {
        let rtxn = self.env.read_txn()?;
        let d = &self.dbs();
        Ok(crate::disk::reclaimable(
            rtxn.env(),
            &rtxn,
            &[&d.meta, &d.fsms, &d.modules, &d.data],
        )?)
    }

    /// Checks every record a node relies on: each module's bytes hash to its id, each FSM
    /// record decodes and names a stored module, the applied position and raft state decode.
    /// Returns one precise sentence per problem.
    pub fn check(&self) -> Result<Vec<String>, StateError> {
        let rtxn = self.env.read_txn()?;
        let mut problems = Vec::new();
        let prefix = self.group.to_be_bytes();
        let mut modules = Vec::new();
        for item in self.dbs().modules.prefix_iter(&rtxn, &prefix)? {
            let (k, v) = item?;
            let Ok(id) = <[u8; 32]>::try_from(&k[8..]) else {
                problems.push(format!("module key of {} bytes is malformed", k.len()));
                continue;
            };
            let id = wraft_core::ModuleId(id);
            let actual = module_id(v);
            if actual != id {
                problems.push(format!(
                    "module {id}: its {} stored bytes hash to {actual}",
                    v.len()
                ));
            }
            modules.push(id);
        }
        for item in self.dbs().fsms.prefix_iter(&rtxn, &prefix)? {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            match FsmRecord::decode(&format!("fsm {name}"), v) {
                Ok(rec) if !modules.contains(&rec.module_id) => problems.push(format!(
                    "fsm {name} runs module {}, which is not stored",
                    rec.module_id
                )),
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Err(e) = self.applied_in(&rtxn) {
            problems.push(e.to_string());
        }
        // The raft layer's blob is checked by the raft layer's readers (ops::inspect): the
        // state layer keeps it opaque.
        Ok(problems)
    }
}
