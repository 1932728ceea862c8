//! Pipelined client calls: many calls on one stream, each answered as it completes, instead
//! of a stream (and a task on the node) per call.
//!
//! ```text
//! client -> ApiCall::Pipeline               opens the pipeline (no request)
//! server -> ApiResult Ok(Done)              accepted (a node older than pipelines answers
//!                                           Err(BadRequest) and reads nothing more)
//! client -> ApiCall, ApiCall, ...           call 0, call 1, ...: their place on the stream
//! server -> PipelinedReply { call, result, last }
//!                                           as each call completes, in any order
//! client -> finish                          no more calls
//! server -> finish                          every call it read is answered
//! ```
//!
//! A call the node cannot read whole (larger than the caller's limit, more than the node's
//! byte budget, too slow to arrive, undecodable) is answered with its error, marked `last`,
//! and ends the pipeline: the node reads nothing after it, answers the calls it read, and
//! finishes. So a call placed after the `last` one, or left unanswered when the node
//! finishes, was never read, and may be sent again ([`PipelineError::NotSent`]). Uploads and
//! backups stream their own bytes: they are refused on a pipeline and take a stream of their
//! own ([`crate::api`]).
//!
//! On the node, calls in flight on one connection, pipelined or not, are bounded by
//! `ServerLimits::streams_per_connection`: past it the node reads no further call, and the
//! client's writes wait on QUIC's flow control. A node older than pipelines refuses the
//! opening ([`PipelineError::Refused`]); the caller then uses a stream per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use wraft_api::{ApiCallRef, ApiError, ApiResult, MAX_REPLY, PipelinedReply};
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

/// How calls go on one connection: on a pipeline once the node has accepted one, or on a
/// stream each if it takes none (a build older than pipelines). Kept with the connection by
/// whoever sends calls on it (`wraft-client`, a node forwarding to its leader).
#[derive(Debug, Default)]
pub enum Calls {
    /// On a pipeline, opened with the next call.
    #[default]
    Opening,
    /// On this pipeline (while it is open; then on a new one).
    Pipelined(Pipeline),
    /// A stream each: the node takes no pipelines.
    StreamEach,
}

impl Calls {
    /// The pipeline to send the next call on, opened on `conn` if there is none open (the
    /// node's acceptance awaited at most `limit`: a node whose call slots are all held is not
    /// waited for longer), or `None` for a stream of its own. `Err`: no pipeline could be
    /// opened now; nothing was sent.
    pub async fn route(
        &mut self,
        conn: &quinn::Connection,
        limit: std::time::Duration,
    ) -> Result<Option<Pipeline>, PipelineError> {
        match self {
            Calls::Pipelined(p) if p.is_open() => return Ok(Some(p.clone())),
            Calls::StreamEach => return Ok(None),
            Calls::Pipelined(_) | Calls::Opening => {}
        }
        let opened = tokio::time::timeout(limit, Pipeline::open(conn))
            .await
            .unwrap_or_else(|_| {
                Err(PipelineError::NotSent(format!(
                    "the node did not accept a pipeline within {limit:?}"
                )))
            });
        match opened {
            Ok(p) => {
                *self = Calls::Pipelined(p.clone());
                Ok(Some(p))
            }
            Err(PipelineError::Refused(_)) => {
                *self = Calls::StreamEach;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
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
    calls: HashMap<u64, oneshot::Sender<Result<ApiResult, PipelineError>>>,
    /// The place of the call the node marked `last`: it reads nothing after it.
    last: Option<u64>,
    /// Why the pipeline ended, once it has.
    ended: Option<PipelineError>,
}

impl Pipeline {
    /// Opens a pipeline on `conn` and waits for the node to accept it. `Refused`: the node
    /// does not take pipelines; `NotSent`: it could not open one now (no stream, or `Busy`).
    pub async fn open(conn: &quinn::Connection) -> Result<Self, PipelineError> {
        let failed = |e: &dyn std::fmt::Display| PipelineError::NotSent(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
        wire::send(&mut send, &ApiCallRef::Pipeline)
            .await
            .map_err(|e| failed(&e))?;
        match wire::recv::<ApiResult>(&mut recv, MAX_REPLY).await {
            Ok(Ok(_)) => {}
            // What a node older than pipelines answers an opening it cannot decode.
            Ok(Err(ApiError::BadRequest(why))) => return Err(PipelineError::Refused(why)),
            Ok(Err(e)) => return Err(failed(&e)),
            Err(e) => return Err(failed(&e)),
        }
        let (outgoing, queue) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_calls(send, queue));
        tokio::spawn(read_replies(recv, waiting.clone()));
        Ok(Self { outgoing, waiting })
    }

    /// Whether calls may still be sent on it.
    pub fn is_open(&self) -> bool {
        let waiting = lock(&self.waiting);
        waiting.ended.is_none() && waiting.last.is_none()
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
            if let Some(last) = waiting.last {
                return Err(after_last(last));
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
        answer.unwrap_or_else(|_| {
            Err(lock(&self.waiting)
                .ended
                .clone()
                .unwrap_or_else(|| PipelineError::Lost("the pipeline's reader stopped".into())))
        })
    }
}

/// What a call placed after the node's `last` one hears.
fn after_last(last: u64) -> PipelineError {
    PipelineError::NotSent(format!(
        "the node ended the pipeline at call {last} and read nothing after it"
    ))
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
    let why = waiting.ended.get_or_insert(why).clone();
    for (_, caller) in waiting.calls.drain() {
        let _ = caller.send(Err(why.clone()));
    }
}

/// Writes queued calls in order, as many as are queued in one write; finishes the stream
/// when every [`Pipeline`] clone is gone.
async fn write_calls(mut send: quinn::SendStream, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut bytes = Vec::new();
    while let Some(first) = queue.recv().await {
        bytes.clear();
        gather(first, &mut queue, &mut bytes, |call, bytes| {
            bytes.extend_from_slice(&call);
        });
        if send.write_all(&bytes).await.is_err() {
            // The node stopped reading (it ended the pipeline, and finishes its side once
            // it has answered what it read) or the connection broke: the reader hears which.
            return;
        }
    }
    let _ = send.finish();
}

/// Frames gathered into one write of a pipeline's stream (calls, or answers) stop growing
/// it past this.
const WRITE_AT_ONCE: usize = 64 << 10;

/// Adds `first`, then whatever else is queued already (without waiting), to `bytes` through
/// `add`, until `bytes` holds [`WRITE_AT_ONCE`]: one stream write for what is ready, on
/// either end of a pipeline.
pub(crate) fn gather<T>(
    first: T,
    queue: &mut mpsc::UnboundedReceiver<T>,
    bytes: &mut Vec<u8>,
    mut add: impl FnMut(T, &mut Vec<u8>),
) {
    let mut next = Some(first);
    while let Some(item) = next.take() {
        add(item, bytes);
        if bytes.len() < WRITE_AT_ONCE {
            next = queue.try_recv().ok();
        }
    }
}

/// Hands each answer to its caller; ends the pipeline when the node finishes it or the
/// stream breaks.
async fn read_replies(mut recv: quinn::RecvStream, waiting: Arc<Mutex<Waiting>>) {
    let why = loop {
        match wire::recv::<PipelinedReply>(&mut recv, MAX_REPLY).await {
            Ok(PipelinedReply { call, result, last }) => {
                let mut waiting = lock(&waiting);
                if let Some(caller) = waiting.calls.remove(&call) {
                    let _ = caller.send(Ok(result));
                }
                if last {
                    // The node reads nothing after this call: the calls placed after it
                    // were never read, and hear so now, not when the node finishes.
                    waiting.last = Some(call);
                    for (_, caller) in waiting.calls.extract_if(|place, _| *place > call) {
                        let _ = caller.send(Err(after_last(call)));
                    }
                }
            }
            // The node finished: every call it read is answered, the rest it never read.
            Err(WireError::Read(quinn::ReadExactError::FinishedEarly(0))) => {
                break PipelineError::NotSent("the node ended the pipeline".into());
            }
            Err(e) => break PipelineError::Lost(e.to_string()),
        }
    };
    end(&waiting, why);
}
