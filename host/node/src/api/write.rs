//! The path of a write, top to bottom: forwarded unless this node leads; a slot of the
//! proposal queue; the request made a log command (JSON through the FSM's codec, a module
//! validated and compiled); the entry's size checked; proposed; its response made the
//! caller's answer.

use wraft_api::Role;
use wraft_api::{ApiError, ApiRequest, ApiResponse, ApiResult, Once};
use wraft_core::session::{self, SessionWrite};
use wraft_core::{Apply, Command, EntryResponse, LogEntry};

use crate::clock::now_ms;
use crate::runtime::EntryPoint;
use crate::state::module_id;

use super::propose::NotApplied;
use super::{NodeApi, outcome_unknown, unavailable};

impl NodeApi {
    pub(super) async fn write(&self, role: Role, request: ApiRequest) -> ApiResult {
        if !self.is_leader() {
            return self.forward(role, request).await;
        }
        let Ok(slot) = self.queue.clone().try_acquire_owned() else {
            crate::metrics::rejected("queue_full");
            return Err(ApiError::QueueFull {
                node: self.id,
                capacity: self.capacity,
            });
        };
        let marshal = std::time::Instant::now();
        let command = self.command(&request).await.inspect_err(|e| {
            if matches!(e, ApiError::BadRequest(_)) {
                crate::metrics::rejected("invalid");
            }
        })?;
        crate::metrics::seconds(crate::metrics::names::COMMIT_MARSHAL, marshal.elapsed());
        let len = LogEntry::encoded_len_of(now_ms(), &command);
        if len > self.limits.max_entry_bytes {
            crate::metrics::rejected("too_large");
            return Err(ApiError::BadRequest(format!(
                "the entry would be {len} bytes once encoded; node {} admits entries of at \
                 most {} bytes (--max-entry-bytes)",
                self.id, self.limits.max_entry_bytes
            )));
        }
        if let Some(size) = payload_bytes(&command) {
            metrics::histogram!(crate::metrics::names::COMMIT_PAYLOAD_SIZE).record(size as f64);
        }
        let replicate = std::time::Instant::now();
        let written = self.proposer.propose(command, len, slot).await;
        crate::metrics::seconds(
            crate::metrics::names::COMMIT_RAFT_APPLY,
            replicate.elapsed(),
        );
        let response = match written {
            Ok(r) => r,
            // Refused before it was appended: the leader (if any) can take it.
            Err(NotApplied::NotLeader) => return self.forward(role, request).await,
            // Appended, then replaced when this node adopted another leader's log: the next
            // leader may have committed it. Forwarding it again could apply it twice (the
            // fault suite caught exactly that, seed 5002): the caller must find out first.
            Err(NotApplied::Discarded(to)) => {
                tracing::warn!("a proposal's entry was discarded on a leader change: {to}");
                return Err(outcome_unknown(format!(
                    "node {} lost leadership before its entry committed; it may still have \
                     been committed by the next leader",
                    self.id
                )));
            }
            // Raft stopped (shutdown, a storage fault) with the proposal in flight: it may
            // have been appended and may yet commit elsewhere.
            Err(NotApplied::Stopped(e)) => {
                return Err(outcome_unknown(format!(
                    "node {} stopped with the write in flight: {e}",
                    self.id
                )));
            }
            // Applied, with a response this node cannot make its answer (a defect).
            Err(NotApplied::Unanswerable(e)) => return Err(outcome_unknown(e)),
            Err(NotApplied::Refused(e)) => return Err(unavailable(e)),
        };
        match (response, &request) {
            (EntryResponse::Failed(e), _) => Err(ApiError::Failed(e)),
            (EntryResponse::Output(out), ApiRequest::Apply { fsm, command, .. }) => {
                let out = self
                    .decode(fsm, command, out, EntryPoint::OutputToJson)
                    .await?;
                Ok(ApiResponse::Output(out))
            }
            (EntryResponse::BatchOutputs(outs), ApiRequest::Batch { commands, .. }) => {
                let mut decoded = Vec::with_capacity(outs.len());
                for (out, (fsm, c)) in outs.into_iter().zip(commands) {
                    decoded.push(self.decode(fsm, c, out, EntryPoint::OutputToJson).await?);
                }
                Ok(ApiResponse::BatchOutputs(decoded))
            }
            (EntryResponse::Done, ApiRequest::Deploy { bytes }) => {
                Ok(ApiResponse::Deployed(module_id(bytes)))
            }
            (EntryResponse::SessionOpened(id), ApiRequest::OpenSession { .. }) => {
                Ok(ApiResponse::Session(id))
            }
            (EntryResponse::Done, _) => Ok(ApiResponse::Done),
            // Applied, with a response of another request's shape (a defect): retrying
            // could apply it twice.
            (other, _) => Err(outcome_unknown(format!(
                "the write applied, but its response was {other:?}"
            ))),
        }
    }

    /// The log command for a write request (JSON converted by the FSM's codec; a module
    /// validated before it may enter the log).
    pub(super) async fn command(&self, request: &ApiRequest) -> Result<Command, ApiError> {
        Ok(match request {
            ApiRequest::Apply { fsm, command, once } => {
                let apply = Apply {
                    fsm: fsm.clone(),
                    payload: self
                        .encode(fsm, command, EntryPoint::CommandFromJson)
                        .await?,
                };
                once_command(once, SessionWrite::Apply(apply))?
            }
            ApiRequest::Batch { commands, once } => {
                let max = self.limits.max_batch_commands;
                if commands.len() > max {
                    return Err(ApiError::BadRequest(format!(
                        "a batch of {} commands; node {} admits at most {max} per batch \
                         (--max-batch-commands)",
                        commands.len(),
                        self.id
                    )));
                }
                let mut applies = Vec::with_capacity(commands.len());
                let mut bytes = 0;
                for (fsm, c) in commands {
                    let payload = self.encode(fsm, c, EntryPoint::CommandFromJson).await?;
                    // Stop encoding once the entry cannot fit (a codec may turn a few bytes
                    // of JSON into much more): the exact check follows on the whole entry.
                    bytes += payload.len();
                    if bytes > self.limits.max_entry_bytes {
                        return Err(ApiError::BadRequest(format!(
                            "the batch's commands encode to more than {} bytes by command {} \
                             of {}; node {} admits entries of at most that (--max-entry-bytes)",
                            self.limits.max_entry_bytes,
                            applies.len() + 1,
                            commands.len(),
                            self.id
                        )));
                    }
                    applies.push(Apply {
                        fsm: fsm.clone(),
                        payload,
                    });
                }
                once_command(once, SessionWrite::Batch(applies))?
            }
            ApiRequest::OpenSession { idle_timeout_ms } => Command::OpenSession {
                idle_timeout_ms: *idle_timeout_ms,
            },
            ApiRequest::Deploy { bytes } => {
                let command = Command::DeployModule {
                    module_id: module_id(bytes),
                    bytes: bytes.clone(),
                };
                // The members compile it while this node does, so the entry applies from
                // their caches: only a module whose entry this node would propose.
                if LogEntry::encoded_len_of(now_ms(), &command) <= self.limits.max_entry_bytes
                    && crate::runtime::looks_like_wasm(bytes)
                {
                    self.send_ahead(bytes);
                }
                // Refuse an invalid module before it enters the log; compiling takes a
                // thread of its own, never an async worker.
                let (store, module) = (self.store.clone(), bytes.clone());
                tokio::task::spawn_blocking(move || store.prepare_module(&module))
                    .await
                    .map_err(|e| unavailable(format!("compiling the module: {e}")))?
                    .map_err(unavailable)?
                    .map_err(|e| ApiError::BadRequest(format!("invalid module: {e}")))?;
                command
            }
            ApiRequest::CreateFsm {
                fsm,
                module_id,
                limits,
            } => Command::CreateFsm {
                fsm: fsm.clone(),
                module_id: *module_id,
                limits: *limits,
            },
            ApiRequest::SetLimits { fsm, limits } => Command::SetLimits {
                fsm: fsm.clone(),
                limits: *limits,
            },
            ApiRequest::UpgradeFsm { fsm, module_id } => Command::UpgradeFsm {
                fsm: fsm.clone(),
                module_id: *module_id,
            },
            ApiRequest::DropFsm { fsm } => Command::DropFsm { fsm: fsm.clone() },
            ApiRequest::DropModule { module_id } => Command::DropModule {
                module_id: *module_id,
            },
            _ => return Err(ApiError::BadRequest("not a write".into())),
        })
    }
}

/// The log command of a write, made once-only as the caller asked.
fn once_command(once: &Option<Once>, write: SessionWrite) -> Result<Command, ApiError> {
    Ok(match (once, write) {
        (None, SessionWrite::Apply(a)) => Command::Apply(a),
        (None, SessionWrite::Batch(b)) => Command::Batch(b),
        (Some(Once::Session(sequence)), write) => Command::SessionWrite {
            sequence: *sequence,
            write,
        },
        (Some(Once::Key(key)), write) => {
            session::check_idempotency_key(key).map_err(ApiError::BadRequest)?;
            Command::KeyedWrite {
                key: key.clone(),
                write,
            }
        }
    })
}

/// The FSM payload bytes an entry carries, for the payload-size histogram.
fn payload_bytes(command: &Command) -> Option<usize> {
    let sum = |b: &[Apply]| b.iter().map(|a| a.payload.len()).sum();
    match command {
        Command::Apply(a) => Some(a.payload.len()),
        Command::Batch(b) => Some(sum(b)),
        Command::SessionWrite { write, .. } | Command::KeyedWrite { write, .. } => match write {
            SessionWrite::Apply(a) => Some(a.payload.len()),
            SessionWrite::Batch(b) => Some(sum(b)),
        },
        _ => None,
    }
}
