//! The accept loop: raft RPC from verified peers, client API requests to the node's handler,
//! each within the bounds of [`ServerLimits`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::Raft;
use openraft::storage::RaftStateMachine;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use wraft_core::raft::{NodeId, Snapshot, TypeConfig};

use wraft_api::{ApiCall, ApiError, ApiRequest};

use crate::api::{self, ApiHandler, Caller};
use crate::limits::{ByteBudget, ConnectionSlot, Connections, ServerLimits};
use crate::wire::{self, Chunk, Reply, Request, WireError};
use crate::{ALPN_CLIENT, ALPN_RAFT, TransportError, identity};

mod pipeline;

/// QUIC application error code of a connection refused by a limit.
const REFUSED: u32 = 3;

struct Shared<SM: RaftStateMachine<TypeConfig>, H> {
    raft: Raft<TypeConfig, SM>,
    spool_dir: PathBuf,
    api: Arc<H>,
    limits: ServerLimits,
    budget: ByteBudget,
    connections: Connections,
}

/// Accepts connections on `endpoint` until it is closed: raft RPC from verified peers goes
/// to `raft` (received snapshots are spooled under `spool_dir` before installation); client
/// API requests go to `api`. Everything a peer sends is bounded by `limits`.
pub async fn serve<SM, H>(
    endpoint: quinn::Endpoint,
    raft: Raft<TypeConfig, SM>,
    spool_dir: PathBuf,
    api: Arc<H>,
    limits: ServerLimits,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    let shared = Arc::new(Shared {
        raft,
        spool_dir,
        api,
        budget: ByteBudget::new(limits.in_flight_bytes),
        limits,
        connections: Connections::default(),
    });
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%remote, "handshake failed: {e}");
                    return;
                }
            };
            let slot = match admit(&conn, &shared) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::warn!(%remote, "connection refused: {why}");
                    conn.close(REFUSED.into(), why.as_bytes());
                    return;
                }
            };
            let result = match alpn(&conn).as_deref() {
                Some(ALPN_RAFT) => serve_raft_connection(conn, &shared).await,
                Some(ALPN_CLIENT) => serve_api_connection(conn, &shared).await,
                _ => Err(TransportError::Peer("no known ALPN".into())),
            };
            drop(slot);
            if let Err(e) = result {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
}

fn admit<SM: RaftStateMachine<TypeConfig>, H>(
    conn: &quinn::Connection,
    shared: &Shared<SM, H>,
) -> Result<ConnectionSlot, String> {
    let identity = identity::fingerprint(conn).ok_or("no client certificate")?;
    shared.connections.admit(identity, &shared.limits)
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

async fn serve_api_connection<SM, H>(
    conn: quinn::Connection,
    shared: &Arc<Shared<SM, H>>,
) -> Result<(), TransportError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    let most = shared.limits.streams_per_connection;
    conn.set_max_concurrent_bi_streams(most.into());
    // Calls in flight on this connection, a stream each or pipelined.
    let calls = Arc::new(Semaphore::new(most as usize));
    let caller = Caller {
        role: identity::client_role(&conn),
        connection: conn.clone(),
    };
    loop {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| TransportError::Peer(e.to_string()))?;
        let (shared, caller, calls) = (shared.clone(), caller.clone(), calls.clone());
        tokio::spawn(async move {
            let slot = calls.clone().acquire_owned().await;
            let slot = slot.expect("the connection's call semaphore is never closed");
            let result = match receive_call(&mut recv, &caller, &shared).await {
                Ok((_permit, ApiCall::Pipeline)) => {
                    drop(slot);
                    return pipeline::serve(send, recv, caller, shared, calls).await;
                }
                Ok((_permit, ApiCall::Direct(ApiRequest::Upload { len }))) => {
                    match api::receive_upload(&mut recv, caller.role, len).await {
                        Ok(bytes) => {
                            let deploy = ApiCall::Direct(ApiRequest::Deploy { bytes });
                            shared.api.handle(caller, deploy).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok((_permit, ApiCall::Direct(ApiRequest::Backup))) => {
                    let api = &shared.api;
                    let taken = async {
                        ApiRequest::Backup.authorize(caller.role)?;
                        api.backup().await
                    };
                    match taken.await {
                        Ok(backup) => {
                            if let Err(e) = api::send_backup(&mut send, &backup).await {
                                tracing::warn!("backup not delivered: {e}");
                            }
                            let _ = tokio::fs::remove_file(&backup.path).await;
                            return;
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok((_permit, call)) => shared.api.handle(caller, call).await,
                Err(CallError::Ended) => Err(ApiError::BadRequest(
                    "the stream ended before its call".into(),
                )),
                Err(CallError::Refused(e)) => Err(e),
            };
            if wire::send(&mut send, &result).await.is_ok() {
                let _ = send.finish();
            }
            drop(slot);
        });
    }
}

/// Why no call could be read from a stream.
enum CallError {
    /// The stream ended where a call would begin.
    Ended,
    /// The call was refused (too large, over the byte budget, too slow, undecodable): its
    /// bytes were not all read, so nothing after it on the stream can be.
    Refused(ApiError),
}

/// Reads a call: its size checked against the caller's limit and taken from the node's
/// byte budget before any of it is read, and its bytes awaited no longer than their size
/// allows. The permit holds the bytes until the call is answered.
async fn receive_call<SM: RaftStateMachine<TypeConfig>, H>(
    recv: &mut quinn::RecvStream,
    caller: &Caller,
    shared: &Shared<SM, H>,
) -> Result<(tokio::sync::OwnedSemaphorePermit, ApiCall), CallError> {
    let limits = &shared.limits;
    let max = limits.request_bytes(caller.role);
    let refused = |e: ApiError| CallError::Refused(e);
    let header = wire::recv_header(recv, max).await.map_err(|e| match e {
        WireError::Read(quinn::ReadExactError::FinishedEarly(0)) => CallError::Ended,
        WireError::TooLarge { len, max } => refused(ApiError::BadRequest(format!(
            "a request of {len} bytes exceeds the limit of {max} for a {} caller \
             (--max-entry-bytes for writes, --max-read-request-bytes for reads)",
            caller
                .role
                .map_or("node".into(), |r| format!("{r:?}").to_lowercase())
        ))),
        e => refused(ApiError::BadRequest(e.to_string())),
    })?;
    let permit = shared
        .budget
        .take(header.len)
        .map_err(|e| refused(ApiError::Busy(e)))?;
    let deadline = limits.receive_deadline(header.len);
    let call = tokio::time::timeout(deadline, wire::recv_body(recv, header))
        .await
        .map_err(|_| {
            refused(ApiError::BadRequest(format!(
                "the request's {} bytes did not arrive within {deadline:?}",
                header.len
            )))
        })?
        .map_err(|e| refused(ApiError::BadRequest(e.to_string())))?;
    Ok((permit, call))
}

async fn serve_raft_connection<SM, H>(
    conn: quinn::Connection,
    shared: &Arc<Shared<SM, H>>,
) -> Result<(), TransportError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    conn.set_max_concurrent_bi_streams(shared.limits.streams_per_peer.into());
    // The first stream introduces the peer; its certificate must be that node's, and the
    // node must not have been removed from the cluster.
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| TransportError::Peer(e.to_string()))?;
    let hello = tokio::time::timeout(
        shared.limits.receive_grace,
        wire::recv::<Request>(&mut recv, wire::MAX_HELLO),
    )
    .await
    .map_err(|_| TransportError::Peer("no hello in time".into()))??;
    let refusal = match hello {
        Request::Hello { from } if !identity::is_node(&conn, from) => Err((
            from,
            format!("the certificate presented is not node {from}'s"),
        )),
        Request::Hello { from } => shared.api.admits_peer(from).map_err(|why| (from, why)),
        other => {
            return Err(TransportError::Peer(format!(
                "expected hello, got {other:?}"
            )));
        }
    };
    let from = match refusal {
        Ok(()) => {
            let Request::Hello { from } = hello else {
                unreachable!("matched above")
            };
            wire::send(&mut send, &Reply::Hello(Ok(()))).await?;
            send.finish().map_err(WireError::from)?;
            from
        }
        Err((from, why)) => {
            tracing::warn!("node {from} refused: {why}");
            wire::send(&mut send, &Reply::Hello(Err(why.clone()))).await?;
            let _ = send.finish();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            conn.close(2u32.into(), why.as_bytes());
            return Err(TransportError::Peer(why));
        }
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(TransportError::Peer(e.to_string())),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(from, send, recv, &shared).await {
                tracing::debug!(from, "raft rpc failed: {e}");
            }
        });
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn serve_stream<SM, H>(
    from: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Shared<SM, H>,
) -> Result<(), TransportError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    let raft = &shared.raft;
    let request = wire::recv::<Request>(&mut recv, shared.limits.max_raft_frame_bytes).await?;
    // A node removed since it connected is heard no more.
    if let Err(why) = shared.api.admits_peer(from) {
        tracing::warn!("node {from} refused: {why}");
        return Err(TransportError::Peer(why));
    }
    // A node may only speak for itself: the leader or candidate in a request must be the
    // node whose certificate opened the connection.
    let impersonation = |claimed: NodeId| format!("node {from} may not act for node {claimed}");
    let reply = match request {
        Request::Hello { .. } => Reply::Hello(Err("already introduced".into())),
        Request::AppendEntries(rpc) => Reply::AppendEntries(match rpc.vote.leader_id.node_id {
            id if id == from => raft.append_entries(rpc).await.map_err(text),
            id => Err(impersonation(id)),
        }),
        Request::Vote(rpc) => Reply::Vote(match rpc.vote.leader_id.node_id {
            id if id == from => raft.vote(rpc).await.map_err(text),
            id => Err(impersonation(id)),
        }),
        Request::PreVote(rpc) => Reply::Vote(match rpc.vote.leader_id.node_id {
            id if id == from => raft.pre_vote(rpc).await.map_err(text),
            id => Err(impersonation(id)),
        }),
        Request::TransferLeader(req) => {
            Reply::TransferLeader(match req.from_leader().leader_id.node_id {
                id if id == from => raft.handle_transfer_leader(req).await.map_err(text),
                id => Err(impersonation(id)),
            })
        }
        Request::Snapshot { vote, .. } if vote.leader_id.node_id != from => {
            Reply::Snapshot(Err(impersonation(vote.leader_id.node_id)))
        }
        Request::Snapshot { len, .. } if len > shared.limits.max_snapshot_bytes => {
            Reply::Snapshot(Err(format!(
                "a snapshot of {len} bytes exceeds this node's limit of {} \
                 (--max-state-bytes)",
                shared.limits.max_snapshot_bytes
            )))
        }
        Request::Snapshot { vote, meta, len } => {
            let dir = &shared.spool_dir;
            Reply::Snapshot(match receive_snapshot(&mut recv, dir, len).await {
                Ok(path) => {
                    let file = File::open(&path).map_err(text);
                    let result = match file {
                        Ok(file) => raft
                            .install_full_snapshot(
                                vote,
                                Snapshot {
                                    meta,
                                    snapshot: file,
                                },
                            )
                            .await
                            .map_err(text),
                        Err(e) => Err(e),
                    };
                    let _ = std::fs::remove_file(&path);
                    result
                }
                Err(e) => Err(e.to_string()),
            })
        }
    };
    wire::send(&mut send, &reply).await?;
    send.finish().map_err(WireError::from)?;
    Ok(())
}

/// Spools `len` bytes of snapshot chunks to a file under `dir`.
async fn receive_snapshot(
    recv: &mut quinn::RecvStream,
    dir: &Path,
    len: u64,
) -> Result<PathBuf, TransportError> {
    let mut spool = Spool::create(dir, len).await?;
    let path = spool.path.clone();
    let received = async {
        while !spool.complete() {
            let Chunk(bytes) = wire::recv(recv, wire::MAX_CHUNK_FRAME).await?;
            spool.push(&bytes).await?;
        }
        spool.finish().await
    };
    let result = received.await;
    if result.is_err() {
        // A failed transfer leaves nothing behind to fill the disk.
        let _ = tokio::fs::remove_file(&path).await;
    }
    result
}

/// A snapshot being received into `receive-<nanos>.tmp` under the spool directory.
struct Spool {
    file: tokio::fs::File,
    path: PathBuf,
    got: u64,
    len: u64,
}

impl Spool {
    async fn create(dir: &Path, len: u64) -> Result<Self, TransportError> {
        tokio::fs::create_dir_all(dir).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("receive-{nanos}.tmp"));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self {
            file,
            path,
            got: 0,
            len,
        })
    }

    fn complete(&self) -> bool {
        self.got >= self.len
    }

    async fn push(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.got += bytes.len() as u64;
        if self.got > self.len {
            return Err(TransportError::Peer(format!(
                "snapshot longer than the announced {} bytes",
                self.len
            )));
        }
        self.file.write_all(bytes).await?;
        Ok(())
    }

    /// The spooled file, once every byte is on disk.
    async fn finish(mut self) -> Result<PathBuf, TransportError> {
        // tokio's File writes in the background and keeps a failed write's error for the
        // next write or flush; `sync_all` alone would drop it (a full disk would then hand
        // raft a short file, refused as a corrupt snapshot, which stops the node).
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "WRAFT_SPOOL_TEST_DIR";
    const CHUNK_LEN: usize = 64 << 10;

    /// Run in a child whose files may not grow past one chunk (RLIMIT_FSIZE, with SIGXFSZ
    /// ignored so the write fails with EFBIG instead of killing it): the second and last
    /// chunk's write fails in tokio's background, and only a flush reports it.
    fn spool_past_the_limit(dir: &Path) {
        // SAFETY: plain libc calls on this (single-purpose child) process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: CHUNK_LEN as libc::rlim_t,
                rlim_max: CHUNK_LEN as libc::rlim_t,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "setrlimit");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut spool = Spool::create(dir, 2 * CHUNK_LEN as u64)
                .await
                .expect("create");
            let chunk = vec![7u8; CHUNK_LEN];
            spool.push(&chunk).await.expect("the first chunk fits");
            spool
                .push(&chunk)
                .await
                .expect("the second is written in the background");
            assert!(spool.complete());
            match spool.finish().await {
                Err(e) => eprintln!("refused as it should be: {e}"),
                Ok(path) => panic!(
                    "a spool file cut short was accepted: {} bytes",
                    std::fs::metadata(path).map_or(0, |m| m.len())
                ),
            }
        });
    }

    #[test]
    fn a_snapshot_spool_that_cannot_be_written_fails_instead_of_coming_back_short() {
        if let Some(dir) = std::env::var_os(CHILD) {
            spool_past_the_limit(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "server::tests::a_snapshot_spool_that_cannot_be_written_fails_instead_of_coming_back_short",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .output()
            .expect("child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("refused as it should be"), "{stderr}");
    }
}
