//! The node's end of a pipeline ([`crate::pipeline`] describes the exchange): one reader
//! that takes calls off the stream while the connection has a call slot free, a task per
//! call, and one writer that sends answers as they come, several to a write.

use std::fs::File;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use wraft_api::{ApiCall, ApiError, ApiRequest, ApiResponse, ApiResult, PipelinedReply};
use wraft_core::frame;
use wraft_core::raft::TypeConfig;

use super::{CallError, Shared, receive_call};
use crate::api::{ApiHandler, Caller};
use crate::pipeline::gather;
use crate::wire;

/// QUIC error code of a pipeline the node stopped without finishing it.
const ABANDONED: u32 = 4;

/// An answer on its way to the writer, with the call's slot among the connection's calls in
/// flight, held until the answer is written: a client that does not read its answers so
/// stops the node reading its calls. (The call's bytes of the node's budget are given back
/// when its handler returns, as on a stream of its own.)
struct Answer {
    reply: PipelinedReply,
    slot: OwnedSemaphorePermit,
}

/// The pipeline's send side: finished once every call read is answered, reset otherwise (the
/// task serving it panicked or was dropped), so that the client never takes an abandoned
/// pipeline for a finished one and resends calls the node may have applied.
struct AnswerStream {
    send: quinn::SendStream,
    finished: bool,
}

impl Drop for AnswerStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(ABANDONED.into());
        }
    }
}

/// Serves the pipeline whose opening frame was read from `recv`: accepts it, then reads,
/// runs and answers its calls.
pub(super) async fn serve<SM, H>(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    caller: Caller,
    shared: Arc<Shared<SM, H>>,
    calls: Arc<Semaphore>,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    let mut send = AnswerStream {
        send,
        finished: false,
    };
    let accepted: ApiResult = Ok(ApiResponse::Done);
    if let Err(e) = wire::send(&mut send.send, &accepted).await {
        tracing::debug!("pipeline not accepted: {e}");
        return;
    }
    let (answers, mut answered) = mpsc::unbounded_channel();
    let reading = read_calls(&mut recv, caller, shared, calls, answers);
    let writing = write_answers(&mut send, &mut answered);
    tokio::pin!(reading, writing);
    tokio::select! {
        // The reader is done (the client finished, or a call ended the pipeline): its
        // sender is dropped, and the writer ends once every call it spawned is answered.
        () = &mut reading => {
            if let Err(e) = writing.await {
                tracing::debug!("pipeline answers not delivered: {e}");
            }
        }
        // The writer stops early only when the client's stream broke: read no more.
        Err(e) = &mut writing => tracing::debug!("pipeline answers not delivered: {e}"),
    }
}

/// Reads calls in order until the client finishes or a call ends the pipeline; spawns a
/// task for each.
async fn read_calls<SM, H>(
    recv: &mut quinn::RecvStream,
    caller: Caller,
    shared: Arc<Shared<SM, H>>,
    calls: Arc<Semaphore>,
    answers: mpsc::UnboundedSender<Answer>,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    for call in 0u64.. {
        let slot = calls.clone().acquire_owned().await;
        let slot = slot.expect("the connection's call semaphore is never closed");
        let (bytes, request) = match receive_call(recv, &caller, &shared).await {
            Ok(received) => received,
            Err(CallError::Ended) => return,
            Err(CallError::Refused(error)) => {
                let reply = PipelinedReply {
                    call,
                    result: Err(error),
                    last: true,
                };
                let _ = answers.send(Answer { reply, slot });
                return;
            }
        };
        if let Some(why) = not_pipelined(&request) {
            let reply = PipelinedReply {
                call,
                result: Err(ApiError::BadRequest(why.into())),
                last: false,
            };
            let _ = answers.send(Answer { reply, slot });
            continue;
        }
        let (shared, caller) = (shared.clone(), caller.clone());
        let pending = Pending {
            call,
            answers: answers.clone(),
            slot: Some(slot),
        };
        tokio::spawn(async move {
            let result = shared.api.handle(caller, request).await;
            drop(bytes);
            pending.answer(result);
        });
    }
}

/// Why `request` cannot be a pipelined call, if it cannot.
fn not_pipelined(request: &ApiCall) -> Option<&'static str> {
    match request {
        ApiCall::Pipeline => Some("a pipeline cannot open inside a pipeline"),
        ApiCall::Direct(ApiRequest::Upload { .. } | ApiRequest::Backup) => Some(
            "uploads and backups stream their own bytes: send them on a stream of their own, \
             not on a pipeline",
        ),
        _ => None,
    }
}

/// A call being handled. If its task ends without answering (a panic in the handler), it
/// answers that the outcome is unknown: a call the pipeline read is always answered, which
/// is what lets the client resend what a finished pipeline left unanswered.
struct Pending {
    call: u64,
    answers: mpsc::UnboundedSender<Answer>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Pending {
    fn answer(mut self, result: ApiResult) {
        self.send(result);
    }

    fn send(&mut self, result: ApiResult) {
        if let Some(slot) = self.slot.take() {
            let reply = PipelinedReply {
                call: self.call,
                result,
                last: false,
            };
            let _ = self.answers.send(Answer { reply, slot });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.send(Err(ApiError::OutcomeUnknown(
                "the node failed while handling the call; it may have applied".into(),
            )));
        }
    }
}

/// Writes answers as they come, all that are ready in one write; finishes the stream once
/// every call read is answered.
async fn write_answers(
    send: &mut AnswerStream,
    answered: &mut mpsc::UnboundedReceiver<Answer>,
) -> Result<(), quinn::WriteError> {
    let mut bytes = Vec::new();
    let mut written = Vec::new();
    while let Some(first) = answered.recv().await {
        bytes.clear();
        gather(first, answered, &mut bytes, |answer, bytes| {
            frame::encode_frame(&answer.reply, bytes);
            // Its slot is held until written.
            written.push(answer.slot);
        });
        send.send.write_all(&bytes).await?;
        written.clear();
    }
    // The client may have gone: nothing is left to tell it.
    let _ = send.send.finish();
    send.finished = true;
    Ok(())
}
