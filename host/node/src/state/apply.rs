//! Applying committed log entries: one LMDB write transaction for a run of entries, a nested
//! transaction per entry so a failed entry's writes vanish while the applied marker still
//! moves past it.

use heed::RwTxn;
use wraft_core::abi::EntryContext;
use wraft_core::session::{self, SessionWrite};
use wraft_core::{
    Apply, ApplyError, BATCH_FUEL_FACTOR, Command, EntryResponse, Format, FsmLimits, FsmName,
    GroupedWrite, LogEntry, ModuleId,
};

use super::keys::{self, MetaTag};
use super::session::Admission;
use super::{AppliedPosition, Compile, FsmRecord, StateError, StateStore, encode};
use crate::runtime::{
    CallEnv, EntryPoint, KvTarget, LoadedModule, MAX_MEMORY_PAGES, Usage, prefix_successor,
};

/// One committed entry to apply.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    /// Its log position.
    pub position: AppliedPosition,
    /// The entry; `None` for raft-internal entries (blank, membership) that only move the
    /// applied marker.
    pub entry: Option<&'a LogEntry>,
}

/// Outcome of one entry inside its nested transaction.
type Outcome = Result<EntryResponse, ApplyError>;

/// How the calls of one entry run: the context they see, and the rules they are metered
/// under (the entry's format).
#[derive(Debug, Clone, Copy)]
struct EntryCall {
    ctx: EntryContext,
    format: Format,
}

impl EntryCall {
    /// The same call at `position` of its entry.
    fn at(self, position: u32) -> Self {
        Self {
            ctx: EntryContext {
                position,
                ..self.ctx
            },
            ..self
        }
    }
}

/// What one call did: its result and the fuel it used.
type Ran = (Result<Vec<u8>, ApplyError>, u64);

impl StateStore {
    /// Applies `entries` (consecutive, in log order) in one transaction and returns one
    /// response per entry. Entries at or below the applied index are skipped with
    /// `EntryResponse::Internal`, so re-delivering an applied entry never applies it twice.
    ///
    /// `raft_state`, if given, is stored in the same transaction (the raft layer's last applied
    /// log id and membership), so it can never disagree with the applied entries.
    pub fn apply(
        &self,
        entries: &[Committed<'_>],
        raft_state: Option<&[u8]>,
    ) -> Result<Vec<EntryResponse>, StateError> {
        self.growing(0, || self.apply_inner(entries, raft_state))
    }

    fn apply_inner(
        &self,
        entries: &[Committed<'_>],
        raft_state: Option<&[u8]>,
    ) -> Result<Vec<EntryResponse>, StateError> {
        let mut wtxn = self.env.write_txn()?;
        let mut applied = self.applied_in(&wtxn)?;
        let mut last_ts = self.u64_meta(&wtxn, MetaTag::LastTimestamp)?;
        let mut responses = Vec::with_capacity(entries.len());
        for c in entries {
            if applied.is_some_and(|a| c.position.index <= a.index) {
                responses.push(EntryResponse::Internal);
                continue;
            }
            let response = match c.entry {
                None => EntryResponse::Internal,
                Some(entry) => {
                    last_ts = last_ts.max(entry.timestamp_ms());
                    let ctx = EntryContext {
                        index: c.position.index,
                        term: c.position.term,
                        timestamp_ms: last_ts,
                        position: 0,
                        is_query: false,
                    };
                    let call = EntryCall {
                        ctx,
                        format: entry.format(),
                    };
                    let writes = match entry.command() {
                        Command::Group(writes) => writes.len(),
                        _ => 1,
                    };
                    self.expire_sessions(&mut wtxn, last_ts, writes)?;
                    self.apply_entry(&mut wtxn, entry.command(), call)?
                }
            };
            responses.push(response);
            applied = Some(c.position);
        }
        if let Some(a) = applied {
            self.dbs().meta.put(
                &mut wtxn,
                &keys::meta(self.group, MetaTag::Applied),
                &encode(&a),
            )?;
            self.dbs().meta.put(
                &mut wtxn,
                &keys::meta(self.group, MetaTag::LastTimestamp),
                &last_ts.to_le_bytes(),
            )?;
        }
        if let Some(raft) = raft_state {
            self.dbs()
                .meta
                .put(&mut wtxn, &keys::meta(self.group, MetaTag::RaftState), raft)?;
        }
        wtxn.commit()?;
        Ok(responses)
    }

    /// One entry's command in the run's transaction `wtxn`: a session or keyed write as
    /// [`Self::write_once`] applies it; a group write by write, each as it would apply in an
    /// entry of its own, at its own positions; anything else in a nested transaction.
    fn apply_entry(
        &self,
        wtxn: &mut RwTxn<'_>,
        command: &Command,
        call: EntryCall,
    ) -> Result<EntryResponse, StateError> {
        match command {
            Command::SessionWrite { sequence, write } => {
                let admission = self.admit_session_write(wtxn, *sequence, call.ctx.timestamp_ms)?;
                self.write_once(wtxn, admission, write, call)
            }
            Command::KeyedWrite { key, write } => {
                let admission = self.admit_keyed_write(wtxn, key, write)?;
                self.write_once(wtxn, admission, write, call)
            }
            Command::Group(writes) => {
                let mut responses = Vec::with_capacity(writes.len());
                let mut position = call.ctx.position;
                for w in writes {
                    let call = call.at(position);
                    let taken = u32::try_from(w.commands()).unwrap_or(u32::MAX);
                    position = position.saturating_add(taken);
                    responses.push(match w {
                        GroupedWrite::Apply(a) => self.isolated(wtxn, |txn| {
                            Ok(self
                                .apply_one(txn, a, call, None)?
                                .0
                                .map(EntryResponse::Output))
                        })?,
                        GroupedWrite::Batch(b) => {
                            self.isolated(wtxn, |txn| self.apply_batch(txn, b, call))?
                        }
                        GroupedWrite::Session { sequence, write } => {
                            let admission =
                                self.admit_session_write(wtxn, *sequence, call.ctx.timestamp_ms)?;
                            self.write_once(wtxn, admission, write, call)?
                        }
                        GroupedWrite::Keyed { key, write } => {
                            let admission = self.admit_keyed_write(wtxn, key, write)?;
                            self.write_once(wtxn, admission, write, call)?
                        }
                    });
                }
                Ok(EntryResponse::Group(responses))
            }
            command => self.isolated(wtxn, |txn| self.apply_command(txn, command, call)),
        }
    }

    /// `f` in a nested transaction of `wtxn`, kept if it succeeds; a failure's writes vanish
    /// and it becomes the response.
    fn isolated(
        &self,
        wtxn: &mut RwTxn<'_>,
        f: impl FnOnce(&mut RwTxn<'_>) -> Result<Outcome, StateError>,
    ) -> Result<EntryResponse, StateError> {
        let mut child = self.env.nested_write_txn(wtxn)?;
        match f(&mut child)? {
            Ok(r) => {
                child.commit()?;
                Ok(r)
            }
            Err(e) => {
                child.abort();
                Ok(EntryResponse::Failed(e))
            }
        }
    }

    fn apply_command(
        &self,
        txn: &mut RwTxn<'_>,
        command: &Command,
        call: EntryCall,
    ) -> Result<Outcome, StateError> {
        let ctx = call.ctx;
        match command {
            Command::Apply(a) => Ok(self
                .apply_one(txn, a, call, None)?
                .0
                .map(EntryResponse::Output)),
            Command::Batch(cmds) => self.apply_batch(txn, cmds, call),
            Command::DeployModule { module_id, bytes } => self.deploy(txn, *module_id, bytes),
            Command::CreateFsm {
                fsm,
                module_id,
                limits,
            } => self.create(txn, fsm, *module_id, *limits, call),
            Command::UpgradeFsm { fsm, module_id } => self.upgrade(txn, fsm, *module_id, call),
            Command::DropFsm { fsm } => self.drop_fsm(txn, fsm),
            Command::DropModule { module_id } => self.drop_module(txn, module_id),
            Command::SetLimits { fsm, limits } => self.set_limits(txn, fsm, *limits),
            Command::Checkpoint { leader } => {
                Ok(Ok(self.checkpoint(txn, leader.as_ref(), ctx.index)?))
            }
            Command::OpenSession { idle_timeout_ms } => {
                self.open_session(txn, ctx.index, *idle_timeout_ms, ctx.timestamp_ms)
            }
            Command::SessionWrite { .. } | Command::KeyedWrite { .. } | Command::Group(_) => {
                unreachable!("apply_entry applies session and keyed writes and groups itself")
            }
        }
    }

    /// A session or keyed write, in the run's transaction `txn`: answered from what it did
    /// before, refused, or applied in a nested transaction of its own (the only one, as for
    /// any other entry: LMDB allocates megabytes per nested transaction) whose outcome,
    /// success or deterministic failure, is kept beside it, so a failed write is not re-run
    /// by its retry either. What the admission wrote (the acknowledged responses forgotten,
    /// the session's last write) stays even when the write is refused.
    fn write_once(
        &self,
        txn: &mut RwTxn<'_>,
        admission: Admission,
        write: &SessionWrite,
        call: EntryCall,
    ) -> Result<EntryResponse, StateError> {
        let pending = match admission {
            Admission::Answered(r) => return Ok(r),
            Admission::Refused(e) => return Ok(EntryResponse::Failed(e)),
            Admission::Apply(pending) => pending,
        };
        let mut child = self.env.nested_write_txn(txn)?;
        let applied = match write {
            SessionWrite::Apply(a) => self
                .apply_one(&mut child, a, call, None)?
                .0
                .map(EntryResponse::Output),
            SessionWrite::Batch(cmds) => self.apply_batch(&mut child, cmds, call)?,
        };
        let kept = match &applied {
            Ok(r) => postcard::serialize_with_flavor(r, postcard::ser_flavors::Size::default())
                .expect("a response is plain data, which always encodes")
                as u64,
            Err(_) => 0,
        };
        let response = match (applied, kept) {
            (Ok(_), len) if len > session::MAX_KEPT_RESPONSE_BYTES => {
                child.abort();
                EntryResponse::Failed(ApplyError::SessionLimit {
                    what: format!(
                        "the write's response of {len} bytes is larger than a session or \
                         idempotency key keeps, so it was not applied; send it without one, \
                         or split it"
                    ),
                    limit: session::MAX_KEPT_RESPONSE_BYTES,
                })
            }
            (Ok(r), _) => {
                child.commit()?;
                r
            }
            (Err(e), _) => {
                child.abort();
                EntryResponse::Failed(e)
            }
        };
        self.record_response(txn, pending, &response, call.ctx.timestamp_ms)?;
        Ok(response)
    }

    /// A batch's commands in order, each in the batch's transaction; the first failure fails
    /// them all. From format V2 on, the batch as a whole may spend [`BATCH_FUEL_FACTOR`] times
    /// the largest per-call fuel of its FSMs, and no more.
    fn apply_batch(
        &self,
        txn: &mut RwTxn<'_>,
        cmds: &[Apply],
        call: EntryCall,
    ) -> Result<Outcome, StateError> {
        let mut budget = None;
        if call.format >= Format::V2 {
            let mut largest = 0u64;
            for a in cmds {
                if let Some(rec) = self.record_in(txn, &a.fsm)? {
                    largest = largest.max(rec.limits.fuel);
                }
            }
            budget = Some(largest.saturating_mul(BATCH_FUEL_FACTOR));
        }
        let total = budget;
        let mut outputs = Vec::with_capacity(cmds.len());
        for (i, a) in cmds.iter().enumerate() {
            let call = call.at(call.ctx.position.saturating_add(i as u32));
            let (result, used) = self.apply_one(txn, a, call, budget)?;
            budget = budget.map(|b| b.saturating_sub(used));
            let error = match result {
                Ok(out) => {
                    outputs.push(out);
                    continue;
                }
                // The batch's budget, not the FSM's own fuel, ran out.
                Err(ApplyError::OutOfFuel { limit })
                    if total.is_some() && budget == Some(0) && used < limit =>
                {
                    ApplyError::BatchOutOfFuel {
                        budget: total.unwrap_or(0),
                    }
                }
                Err(e) => e,
            };
            return Ok(Err(ApplyError::BatchFailed {
                position: i as u32,
                error: Box::new(error),
            }));
        }
        Ok(Ok(EntryResponse::BatchOutputs(outputs)))
    }

    /// One command, with at most `cap` fuel if its batch has less left than the FSM's own.
    fn apply_one(
        &self,
        txn: &mut RwTxn<'_>,
        a: &Apply,
        call: EntryCall,
        cap: Option<u64>,
    ) -> Result<Ran, StateError> {
        let (mut rec, module) = match self.fsm_and_module(txn, &a.fsm, Compile::IfNeeded)? {
            Ok(found) => found,
            Err(e) => return Ok((Err(e), 0)),
        };
        if let Some(cap) = cap {
            rec.limits.fuel = rec.limits.fuel.min(cap);
        }
        self.run(
            txn,
            &a.fsm,
            &rec,
            &module,
            EntryPoint::Apply,
            &a.payload,
            call,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        txn: &mut RwTxn<'_>,
        fsm: &FsmName,
        rec: &FsmRecord,
        module: &LoadedModule,
        entry: EntryPoint,
        input: &[u8],
        call: EntryCall,
    ) -> Result<Ran, StateError> {
        let usage = Usage {
            bytes: self.usage_in(txn, rec)?,
            quota: (call.format >= Format::V2).then_some(rec.limits.storage_bytes),
        };
        let kv = KvTarget::Write {
            txn: &mut *txn,
            db: self.dbs().data,
            prefix: keys::data_prefix(self.group, rec.id),
            usage,
        };
        let env = CallEnv {
            kv,
            ctx: call.ctx,
            limits: rec.limits,
            fsm: fsm.as_str(),
            metering: call.format,
        };
        let started = std::time::Instant::now();
        let outcome = self.runtime.call(module, entry, input, env)?;
        if entry == EntryPoint::Apply {
            crate::metrics::seconds(crate::metrics::names::FSM_APPLY, started.elapsed());
            metrics::histogram!(crate::metrics::names::FSM_FUEL_USED)
                .record(outcome.fuel_used as f64);
        }
        if let Some(bytes) = outcome.usage {
            self.dbs()
                .meta
                .put(txn, &keys::usage(self.group, rec.id), &bytes.to_le_bytes())?;
        }
        Ok((outcome.result, outcome.fuel_used))
    }

    fn deploy(
        &self,
        txn: &mut RwTxn<'_>,
        id: ModuleId,
        bytes: &[u8],
    ) -> Result<Outcome, StateError> {
        let actual = super::module_id(bytes);
        if actual != id {
            return Ok(Err(ApplyError::InvalidModule(format!(
                "sha256 of the bytes is {actual}, not the announced {id}"
            ))));
        }
        if let Err(e) = self.runtime.load(id, || Ok(bytes.to_vec()))? {
            return Ok(Err(ApplyError::InvalidModule(e.to_string())));
        }
        self.runtime.deployed(&id);
        self.dbs()
            .modules
            .put(txn, &keys::module(self.group, &id), bytes)?;
        Ok(Ok(EntryResponse::Done))
    }

    fn create(
        &self,
        txn: &mut RwTxn<'_>,
        fsm: &FsmName,
        module_id: ModuleId,
        limits: FsmLimits,
        call: EntryCall,
    ) -> Result<Outcome, StateError> {
        let ctx = call.ctx;
        if self.record_in(txn, fsm)?.is_some() {
            return Ok(Err(ApplyError::FsmExists(fsm.to_string())));
        }
        let module = match self.loaded(txn, &module_id, Compile::IfNeeded)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let id = self.u64_meta(txn, MetaTag::NextFsmId)?.max(1);
        self.dbs().meta.put(
            txn,
            &keys::meta(self.group, MetaTag::NextFsmId),
            &(id + 1).to_le_bytes(),
        )?;
        let limits = FsmLimits {
            memory_pages: limits.memory_pages.min(MAX_MEMORY_PAGES),
            ..limits
        };
        let rec = FsmRecord {
            id,
            module_id,
            limits,
            fsm_version: module.fsm_version,
            created_index: ctx.index,
        };
        self.dbs()
            .fsms
            .put(txn, &keys::fsm(self.group, fsm.as_str()), &encode(&rec))?;
        self.dbs()
            .meta
            .put(txn, &keys::usage(self.group, id), &0u64.to_le_bytes())?;
        if module.capabilities.init
            && let (Err(e), _) = self.run(txn, fsm, &rec, &module, EntryPoint::Init, &[], call)?
        {
            return Ok(Err(e));
        }
        Ok(Ok(EntryResponse::Done))
    }

    fn upgrade(
        &self,
        txn: &mut RwTxn<'_>,
        fsm: &FsmName,
        module_id: ModuleId,
        call: EntryCall,
    ) -> Result<Outcome, StateError> {
        let Some(rec) = self.record_in(txn, fsm)? else {
            return Ok(Err(ApplyError::UnknownFsm(fsm.to_string())));
        };
        let module = match self.loaded(txn, &module_id, Compile::IfNeeded)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if module.capabilities.migrate {
            tracing::info!(
                "upgrading fsm {fsm} to module {module_id}: migrating its state from version {} \
                 to {}",
                rec.fsm_version,
                module.fsm_version
            );
            let migrate = EntryPoint::Migrate(rec.fsm_version);
            if let (Err(e), _) = self.run(txn, fsm, &rec, &module, migrate, &[], call)? {
                tracing::warn!("upgrade of fsm {fsm} to module {module_id} refused: {e}");
                return Ok(Err(e));
            }
        }
        let rec = FsmRecord {
            module_id,
            fsm_version: module.fsm_version,
            ..rec
        };
        self.dbs()
            .fsms
            .put(txn, &keys::fsm(self.group, fsm.as_str()), &encode(&rec))?;
        // The batch's transaction commits after this line: a crash before then undoes it all.
        tracing::info!(
            "upgraded fsm {fsm} to module {module_id} (version {})",
            rec.fsm_version
        );
        Ok(Ok(EntryResponse::Done))
    }

    fn set_limits(
        &self,
        txn: &mut RwTxn<'_>,
        fsm: &FsmName,
        limits: FsmLimits,
    ) -> Result<Outcome, StateError> {
        let Some(rec) = self.record_in(txn, fsm)? else {
            return Ok(Err(ApplyError::UnknownFsm(fsm.to_string())));
        };
        let rec = FsmRecord {
            limits: FsmLimits {
                memory_pages: limits.memory_pages.min(MAX_MEMORY_PAGES),
                ..limits
            },
            ..rec
        };
        self.dbs()
            .fsms
            .put(txn, &keys::fsm(self.group, fsm.as_str()), &encode(&rec))?;
        Ok(Ok(EntryResponse::Done))
    }

    fn drop_fsm(&self, txn: &mut RwTxn<'_>, fsm: &FsmName) -> Result<Outcome, StateError> {
        let Some(rec) = self.record_in(txn, fsm)? else {
            return Ok(Err(ApplyError::UnknownFsm(fsm.to_string())));
        };
        let lo = keys::data_prefix(self.group, rec.id);
        let hi = prefix_successor(&lo).unwrap_or_default();
        let range = (
            std::ops::Bound::Included(&lo[..]),
            std::ops::Bound::Excluded(&hi[..]),
        );
        self.dbs().data.delete_range(txn, &range)?;
        self.dbs()
            .fsms
            .delete(txn, &keys::fsm(self.group, fsm.as_str()))?;
        self.dbs()
            .meta
            .delete(txn, &keys::usage(self.group, rec.id))?;
        Ok(Ok(EntryResponse::Done))
    }

    fn drop_module(&self, txn: &mut RwTxn<'_>, id: &ModuleId) -> Result<Outcome, StateError> {
        if self
            .dbs()
            .modules
            .get(txn, &keys::module(self.group, id))?
            .is_none()
        {
            return Ok(Err(ApplyError::UnknownModule(*id)));
        }
        for item in self
            .dbs()
            .fsms
            .prefix_iter(txn, &self.group.to_be_bytes())?
        {
            let (k, v) = item?;
            let rec = FsmRecord::decode("fsm", v)?;
            if rec.module_id == *id {
                let fsm = String::from_utf8_lossy(&k[8..]).into_owned();
                return Ok(Err(ApplyError::ModuleInUse { module: *id, fsm }));
            }
        }
        self.dbs()
            .modules
            .delete(txn, &keys::module(self.group, id))?;
        self.runtime.evict(id)?;
        Ok(Ok(EntryResponse::Done))
    }
}
