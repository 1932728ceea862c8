//! Guest calls made for callers: queries and the JSON codecs at the edge, on threads of their
//! own (the guest pool), never on the async workers that carry raft's heartbeats.

use openraft::ReadPolicy;
use wraft_api::{ApiError, ApiResponse, ApiResult, Payload};
use wraft_core::{ApplyError, FsmName};

use crate::runtime::EntryPoint;
use crate::state::{Compile, StateError, StateStore};

use super::{NodeApi, unavailable};

/// A lane of the guest pool.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lane {
    Read = 0,
    Write = 1,
}

impl NodeApi {
    /// Runs `call` (a guest call made for a caller: a query or a JSON codec) on a thread of
    /// the guest pool, so wasm never holds the async workers that carry raft's heartbeats;
    /// at most `guest_threads` (reads) or `codec_threads` (writes' codecs) run at once and
    /// the rest wait their turn.
    ///
    /// The pool is rayon's, and a call on it must never compile: wasmtime compiles in
    /// parallel on rayon, and a rayon thread waiting for that work runs other queued jobs on
    /// its own stack — a guest call for the same module would then wait for the compile gate
    /// its own thread holds. So `call` runs first with [`Compile::Never`]; one whose module is
    /// not in memory (the first call for a module since the node started: modules load on
    /// first use, from `<data>/cache` or, after an engine upgrade, by compiling) runs again
    /// with [`Compile::IfNeeded`] on tokio's blocking pool.
    pub(super) async fn on_guest_thread<T: Send + 'static>(
        &self,
        lane: Lane,
        call: impl Fn(&StateStore, Compile) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let turn = self.guests[lane as usize]
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the node is shutting down"))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let store = self.store.clone();
        let blocking = tokio::runtime::Handle::current();
        // The turn moves with the call and is held until it is done, even if its caller
        // stopped waiting: calls nobody waits for do not pile up beyond the lane's turns.
        self.guest_pool
            .spawn(move || match call(&store, Compile::Never) {
                Err(StateError::NotInMemory(_)) => {
                    blocking.spawn_blocking(move || {
                        let _turn = turn;
                        let _ = answer.send(call(&store, Compile::IfNeeded));
                    });
                }
                done => {
                    drop(turn);
                    let _ = answer.send(done);
                }
            });
        // A call that panicked dropped its answer's sender.
        answered
            .await
            .map_err(|_| unavailable("the guest call failed (see the node's log)"))?
            .map_err(unavailable)
    }

    /// Runs one of `fsm`'s JSON codecs on `input` on the guest pool.
    pub(super) async fn codec(
        &self,
        fsm: &FsmName,
        codec: EntryPoint,
        input: Vec<u8>,
    ) -> Result<Result<Vec<u8>, ApplyError>, ApiError> {
        let (fsm, max_output) = (fsm.clone(), self.codec_output_limit(codec));
        let lane = match codec {
            EntryPoint::QueryFromJson | EntryPoint::QueryOutputToJson => Lane::Read,
            _ => Lane::Write,
        };
        self.on_guest_thread(lane, move |store, compile| {
            store.codec(&fsm, codec, &input, max_output, compile)
        })
        .await
    }

    /// The largest output a codec may produce: a command or query headed for the log is
    /// bounded by the entry limit; JSON rendered from an output (hex and quoting at most
    /// double raw bytes, plus field names) by twice that.
    pub(super) fn codec_output_limit(&self, codec: EntryPoint) -> usize {
        match codec {
            EntryPoint::CommandFromJson | EntryPoint::QueryFromJson => self.limits.max_entry_bytes,
            _ => 2 * self.limits.max_entry_bytes + (64 << 10),
        }
    }

    /// JSON → postcard through the FSM's codec. A new leader may not have applied the entry
    /// that created the FSM yet: if the codec cannot find it, catch up to the read index
    /// (every committed entry) and try once more before calling the request bad.
    pub(super) async fn encode(
        &self,
        fsm: &FsmName,
        payload: &Payload,
        codec: EntryPoint,
    ) -> Result<Vec<u8>, ApiError> {
        let json = match payload {
            Payload::Postcard(b) => return Ok(b.clone()),
            Payload::Json(j) => j.as_bytes(),
        };
        let mut caught_up = false;
        loop {
            match self.codec(fsm, codec, json.to_vec()).await? {
                Ok(bytes) => return Ok(bytes),
                Err(ApplyError::UnknownFsm(_) | ApplyError::UnknownModule(_))
                    if !caught_up && self.is_leader() =>
                {
                    self.raft
                        .ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .map_err(unavailable)?;
                    caught_up = true;
                }
                Err(e @ ApplyError::UnknownFsm(_)) => return Err(ApiError::Failed(e)),
                Err(e) => return Err(ApiError::BadRequest(format!("{fsm}: {e}"))),
            }
        }
    }

    /// postcard → the request's encoding.
    pub(super) async fn decode(
        &self,
        fsm: &FsmName,
        like: &Payload,
        bytes: Vec<u8>,
        codec: EntryPoint,
    ) -> Result<Payload, ApiError> {
        match like {
            Payload::Postcard(_) => Ok(Payload::Postcard(bytes)),
            Payload::Json(_) => match self.codec(fsm, codec, bytes).await? {
                Ok(json) => Ok(Payload::Json(String::from_utf8_lossy(&json).into_owned())),
                Err(e) => Err(ApiError::BadRequest(format!("{fsm}: output codec: {e}"))),
            },
        }
    }

    pub(super) async fn query(&self, fsm: &FsmName, query: &Payload) -> ApiResult {
        let bytes = self.encode(fsm, query, EntryPoint::QueryFromJson).await?;
        let name = fsm.clone();
        let answer = self
            .on_guest_thread(Lane::Read, move |store, compile| {
                store.query(&name, &bytes, compile)
            })
            .await?;
        match answer {
            Ok(out) => Ok(ApiResponse::Output(
                self.decode(fsm, query, out, EntryPoint::QueryOutputToJson)
                    .await?,
            )),
            Err(e) => Err(ApiError::Failed(e)),
        }
    }
}
