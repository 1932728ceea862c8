//! The node's end of a pipeline ([`crate::pipeline`] describes the exchange): one reader
//! that takes calls off the stream while the connection has a call slot free, a task per
//! call, and one writer that sends answers as they come, several to a write.

use std::fs::File;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use wraft_api::{ApiCall, ApiError, ApiRequest, ApiResult, PipelinedReply};
use wraft_core::frame;
use wraft_core::raft::TypeConfig;

use super::{CallError, Shared, receive_call};
use crate::api::{ApiHandler, Caller};

/// An answer on its way to the writer, with what the call holds until it is written: its
/// slot among the connection's calls in flight and its bytes of the node's budget. A client
/// that does not read its answers so stops the node reading its calls.
struct Answer {
    call: u64,
    result: ApiResult,
    held: Held,
}

struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Serves the pipeline whose opening frame was read from `recv`.
pub(super) async fn serve<SM, H>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    caller: Caller,
    shared: Arc<Shared<SM, H>>,
    calls: Arc<Semaphore>,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
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
                let held = Held {
                    _slot: slot,
                    _bytes: None,
                };
                let _ = answers.send(Answer {
                    call,
                    result: Err(error),
                    held,
                });
                return;
            }
        };
        let held = Held {
            _slot: slot,
            _bytes: Some(bytes),
        };
        if let Some(why) = not_pipelined(&request) {
            let _ = answers.send(Answer {
                call,
                result: Err(ApiError::BadRequest(why.into())),
                held,
            });
            continue;
        }
        let (shared, caller) = (shared.clone(), caller.clone());
        let answer = Pending {
            call,
            answers: answers.clone(),
            held: Some(held),
        };
        tokio::spawn(async move {
            let result = shared.api.handle(caller, request).await;
            answer.send(result);
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
    held: Option<Held>,
}

impl Pending {
    fn send(mut self, result: ApiResult) {
        self.answer(result);
    }

    fn answer(&mut self, result: ApiResult) {
        if let Some(held) = self.held.take() {
            let _ = self.answers.send(Answer {
                call: self.call,
                result,
                held,
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.held.is_none() {
            return;
        }
        self.answer(Err(ApiError::OutcomeUnknown(
            "the node failed while handling the call; it may have applied".into(),
        )));
    }
}

/// Writes answers as they come, all that are ready in one write; finishes the stream once
/// every call read is answered.
async fn write_answers(
    send: &mut quinn::SendStream,
    answered: &mut mpsc::UnboundedReceiver<Answer>,
) -> Result<(), quinn::WriteError> {
    /// Answers gathered into one write stop growing it past this.
    const WRITE_AT_ONCE: usize = 64 << 10;
    let mut bytes = Vec::new();
    let mut written = Vec::new();
    while let Some(first) = answered.recv().await {
        bytes.clear();
        let mut next = Some(first);
        while let Some(answer) = next.take() {
            let reply = PipelinedReply {
                call: answer.call,
                result: answer.result,
            };
            frame::encode_frame(&reply, &mut bytes);
            // Held until written.
            written.push(answer.held);
            if bytes.len() < WRITE_AT_ONCE {
                next = answered.try_recv().ok();
            }
        }
        send.write_all(&bytes).await?;
        written.clear();
    }
    // The client may have gone: nothing is left to tell it.
    let _ = send.finish();
    Ok(())
}
