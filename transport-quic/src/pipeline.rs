//! Pipelined client calls: many calls on one stream, each answered as it completes, instead
//! of a stream (and a task on the node) per call.
//!
//! ```text
//! client -> ApiCall::Pipeline               opens the pipeline (no request)
//! client -> ApiCall, ApiCall, ...           call 0, call 1, ...: their place on the stream
//! server -> PipelinedReply { call, result } as each call completes, in any order
//! client -> finish                          no more calls
//! server -> finish                          every call it read is answered
//! ```
//!
//! A call the node cannot read whole (larger than the caller's limit, more than the node's
//! byte budget, too slow to arrive, undecodable) is answered with its error and ends the
//! pipeline: the node reads nothing after it, answers the calls it read, and finishes. So a
//! call that a finished pipeline left unanswered was never read, and may be sent again
//! ([`PipelineError::NotSent`]). Uploads and backups stream their own bytes: they are
//! refused on a pipeline and take a stream of their own ([`crate::api`]).
//!
//! On the node, calls in flight on one connection, pipelined or not, are bounded by
//! `ServerLimits::streams_per_connection`: past it the node reads no further call, and the
//! client's writes wait on QUIC's flow control. A node older than pipelines refuses the
//! opening frame; [`PipelineError::Refused`] says so, and the caller uses a stream per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use wraft_api::{ApiCallRef, ApiResult, MAX_REPLY, PipelinedReply};
use wraft_core::frame;

use crate::wire::{self, WireError};

/// Why a pipelined call has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The node never read the call (the pipeline had ended): it may be sent again.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The node does not take pipelined calls (a build older than them); the call was not
    /// read. Send calls on a stream each ([`crate::api::call`]).
    #[error("the node does not take pipelined calls: {0}")]
    Refused(String),
    /// The call was sent and the stream or connection broke before its answer came: it
    /// may have been applied.
    #[error("sent, then the pipeline broke: {0}")]
    Lost(String),
}

/// The client end of a pipeline on one connection. Clones share it; it ends when the last
/// clone is dropped (the node then answers what it has and finishes).
#[derive(Debug, Clone)]
pub struct Pipeline {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// The place the next call takes on the stream.
    next: u64,
    calls: HashMap<u64, oneshot::Sender<ApiResult>>,
    /// Why the pipeline ended, once it has.
    ended: Option<PipelineError>,
}

impl Pipeline {
    /// Opens a pipeline on `conn`.
    pub async fn open(conn: &quinn::Connection) -> Result<Self, WireError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
        let (outgoing, queue) = mpsc::unbounded_channel();
        let mut opening = Vec::new();
        frame::encode_frame(&ApiCallRef::Pipeline, &mut opening);
        outgoing
            .send(opening)
            .expect("the writer's receiver is held until it is spawned below");
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_calls(send, queue));
        tokio::spawn(read_replies(recv, waiting.clone()));
        Ok(Self { outgoing, waiting })
    }

    /// Whether calls may still be sent on it.
    pub fn is_open(&self) -> bool {
        lock(&self.waiting).ended.is_none()
    }

    /// Why it ended, if it has.
    pub fn ended(&self) -> Option<PipelineError> {
        lock(&self.waiting).ended.clone()
    }

    /// Sends `call` and waits for its answer. Dropping the future forgets the answer; the
    /// call may still be sent and applied.
    pub async fn call(&self, call: ApiCallRef<'_>) -> Result<ApiResult, PipelineError> {
        let mut bytes = Vec::new();
        frame::encode_frame(&call, &mut bytes);
        let (tx, rx) = oneshot::channel();
        let place = {
            let mut waiting = lock(&self.waiting);
            if let Some(ended) = &waiting.ended {
                return Err(not_sent(ended));
            }
            // Taken and queued under the lock: the writer sends calls in their places' order.
            let place = waiting.next;
            waiting.next += 1;
            if self.outgoing.send(bytes).is_err() {
                return Err(PipelineError::NotSent(
                    "the pipeline's writer stopped".into(),
                ));
            }
            waiting.calls.insert(place, tx);
            place
        };
        let forget = Forget {
            place,
            waiting: &self.waiting,
        };
        let answer = rx.await;
        drop(forget);
        answer.map_err(|_| {
            lock(&self.waiting)
                .ended
                .clone()
                .unwrap_or_else(|| PipelineError::Lost("the pipeline's reader stopped".into()))
        })
    }
}

/// What a call the pipeline had not read yet when it ended hears.
fn not_sent(ended: &PipelineError) -> PipelineError {
    match ended {
        PipelineError::Lost(why) => PipelineError::NotSent(why.clone()),
        other => other.clone(),
    }
}

/// Removes a call's place from the waiting list when its caller stops waiting.
struct Forget<'a> {
    place: u64,
    waiting: &'a Mutex<Waiting>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.waiting).calls.remove(&self.place);
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // Nothing panics while holding it (map and option updates only).
    waiting
        .lock()
        .expect("the pipeline's waiting list is never poisoned")
}

/// Ends the pipeline: every caller still waiting hears `why`.
fn end(waiting: &Mutex<Waiting>, why: PipelineError) {
    let mut waiting = lock(waiting);
    waiting.ended.get_or_insert(why);
    waiting.calls.clear();
}

/// Writes queued calls in order, as many as are queued in one write; finishes the stream
/// when every [`Pipeline`] clone is gone.
async fn write_calls(mut send: quinn::SendStream, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) {
    /// Calls gathered into one write stop growing it past this.
    const WRITE_AT_ONCE: usize = 64 << 10;
    while let Some(mut bytes) = queue.recv().await {
        while bytes.len() < WRITE_AT_ONCE {
            match queue.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if send.write_all(&bytes).await.is_err() {
            // The node stopped reading (it ended the pipeline, and finishes its side once
            // it has answered what it read) or the connection broke: the reader hears which.
            return;
        }
    }
    let _ = send.finish();
}

/// Hands each answer to its caller; ends the pipeline when the node finishes it or the
/// stream breaks.
async fn read_replies(mut recv: quinn::RecvStream, waiting: Arc<Mutex<Waiting>>) {
    let mut answered_any = false;
    let why = loop {
        match wire::recv::<PipelinedReply>(&mut recv, MAX_REPLY).await {
            Ok(PipelinedReply { call, result }) => {
                answered_any = true;
                if let Some(caller) = lock(&waiting).calls.remove(&call) {
                    let _ = caller.send(result);
                }
            }
            // The node finished: every call it read is answered, the rest it never read.
            Err(WireError::Read(quinn::ReadExactError::FinishedEarly(0))) => {
                break PipelineError::NotSent("the node ended the pipeline".into());
            }
            // A node older than pipelines answers the opening frame as a bad request (an
            // `ApiResult`, not a `PipelinedReply`) and reads nothing more.
            Err(WireError::Frame(e)) if !answered_any => {
                break PipelineError::Refused(format!(
                    "its answer to the opening was not one: {e}"
                ));
            }
            Err(e) => break PipelineError::Lost(e.to_string()),
        }
    };
    end(&waiting, why);
}
