//! A single-node driver for the state store: it plays the part raft will play (assigning
//! log positions and leader timestamps), so FSMs can be deployed, applied and queried on one
//! machine. Also converts JSON at the edge through the module's codecs.

use std::path::Path;
use std::sync::Arc;

use wraft_core::{
    Apply, ApplyError, Command, EntryResponse, FsmLimits, FsmName, LogEntry, ModuleId,
};

use crate::runtime::{EntryPoint, FsmRuntime};
use crate::state::{AppliedPosition, Committed, Compile, StateError, StateOptions, StateStore};

/// Example modules built into this binary (from fsm-examples).
pub const EXAMPLES: &[(&str, &[u8])] = &[
    ("latest-payload", wraft_fsm_artifacts::LATEST_PAYLOAD),
    ("file-manifest", wraft_fsm_artifacts::FILE_MANIFEST),
    ("airspace-store", wraft_fsm_artifacts::AIRSPACE_STORE),
];

/// One node without raft.
#[derive(Debug)]
pub struct LocalNode {
    store: StateStore,
    _lock: crate::ops::DataDirLock,
}

/// Largest output of a JSON codec run by the single-node driver: the entry limit a node
/// admits by default.
const CODEC_OUTPUT: usize = crate::limits::DEFAULT_MAX_ENTRY_BYTES;

impl LocalNode {
    /// Opens the state env under `data_dir` with default options.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        Self::open_with(data_dir, StateOptions::default())
    }

    /// Opens the state env under `data_dir`.
    pub fn open_with(data_dir: &Path, options: StateOptions) -> Result<Self, StateError> {
        let lock = crate::ops::DataDirLock::acquire(data_dir).map_err(|e| StateError::Open {
            path: data_dir.into(),
            source: heed::Error::Io(e),
        })?;
        let runtime = Arc::new(FsmRuntime::with_cache(&data_dir.join("cache"))?);
        Ok(Self {
            store: StateStore::open_with(data_dir, runtime, options)?,
            _lock: lock,
        })
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Appends `command` as the next entry and applies it.
    pub fn propose(&self, command: Command) -> Result<EntryResponse, StateError> {
        self.propose_many(vec![command]).map(|mut r| r.remove(0))
    }

    /// Appends `commands` as consecutive entries applied in one transaction.
    pub fn propose_many(&self, commands: Vec<Command>) -> Result<Vec<EntryResponse>, StateError> {
        let next = self.store.applied()?.map_or(1, |a| a.index + 1);
        let ts = crate::clock::now_ms();
        let entries: Vec<LogEntry> = commands.into_iter().map(|c| LogEntry::new(ts, c)).collect();
        let committed: Vec<Committed<'_>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Committed {
                position: AppliedPosition {
                    index: next + i as u64,
                    term: 1,
                },
                entry: Some(e),
            })
            .collect();
        self.store.apply(&committed, None)
    }

    /// Deploys `bytes` (validated first, so an invalid module never reaches the log).
    pub fn deploy(&self, bytes: Vec<u8>) -> Result<Result<ModuleId, ApplyError>, StateError> {
        let id = match self.store.prepare_module(&bytes)? {
            Ok(id) => id,
            Err(e) => return Ok(Err(ApplyError::InvalidModule(e.to_string()))),
        };
        Ok(
            match self.propose(Command::DeployModule {
                module_id: id,
                bytes,
            })? {
                EntryResponse::Failed(e) => Err(e),
                _ => Ok(id),
            },
        )
    }

    /// Creates an FSM instance.
    pub fn create(
        &self,
        fsm: FsmName,
        module_id: ModuleId,
        limits: FsmLimits,
    ) -> Result<Result<(), ApplyError>, StateError> {
        Ok(
            match self.propose(Command::CreateFsm {
                fsm,
                module_id,
                limits,
            })? {
                EntryResponse::Failed(e) => Err(e),
                _ => Ok(()),
            },
        )
    }

    /// Applies a JSON command through the FSM's codecs; returns its JSON output.
    pub fn apply_json(
        &self,
        fsm: &FsmName,
        json: &str,
    ) -> Result<Result<String, ApplyError>, StateError> {
        let payload = match self.store.codec(
            fsm,
            EntryPoint::CommandFromJson,
            json.as_bytes(),
            CODEC_OUTPUT,
            Compile::IfNeeded,
        )? {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let apply = Apply {
            fsm: fsm.clone(),
            payload,
        };
        match self.propose(Command::Apply(apply))? {
            EntryResponse::Output(out) => self.to_json(fsm, EntryPoint::OutputToJson, &out),
            EntryResponse::Failed(e) => Ok(Err(e)),
            other => Ok(Err(ApplyError::AbiViolation(format!(
                "unexpected response {other:?}"
            )))),
        }
    }

    /// Runs a JSON query through the FSM's codecs; returns its JSON output.
    pub fn query_json(
        &self,
        fsm: &FsmName,
        json: &str,
    ) -> Result<Result<String, ApplyError>, StateError> {
        let query = match self.store.codec(
            fsm,
            EntryPoint::QueryFromJson,
            json.as_bytes(),
            CODEC_OUTPUT,
            Compile::IfNeeded,
        )? {
            Ok(q) => q,
            Err(e) => return Ok(Err(e)),
        };
        match self.store.query(fsm, &query, Compile::IfNeeded)? {
            Ok(out) => self.to_json(fsm, EntryPoint::QueryOutputToJson, &out),
            Err(e) => Ok(Err(e)),
        }
    }

    fn to_json(
        &self,
        fsm: &FsmName,
        codec: EntryPoint,
        bytes: &[u8],
    ) -> Result<Result<String, ApplyError>, StateError> {
        Ok(self
            .store
            .codec(fsm, codec, bytes, CODEC_OUTPUT, Compile::IfNeeded)?
            .map(|json| String::from_utf8_lossy(&json).into_owned()))
    }
}
