//! The accept loop: raft RPC from verified peers, client API requests to the node's handler.

use std::fs::File;
use std::path::{Path, PathBuf};

use openraft::Raft;
use openraft::storage::RaftStateMachine;
use tokio::io::AsyncWriteExt;
use wraft_core::raft::{NodeId, Snapshot, TypeConfig};

use std::sync::Arc;

use crate::api::{self, ApiError, ApiHandler, ApiRequest, ApiResult, Caller};
use crate::wire::{self, Chunk, Reply, Request, WireError};
use crate::{ALPN_CLIENT, ALPN_RAFT, TransportError, identity};

/// Accepts connections on `endpoint` until it is closed: raft RPC from verified peers goes
/// to `raft` (received snapshots are spooled under `spool_dir` before installation); client
/// API requests go to `api`.
pub async fn serve<SM, H>(
    endpoint: quinn::Endpoint,
    raft: Raft<TypeConfig, SM>,
    spool_dir: PathBuf,
    api: Arc<H>,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
    H: ApiHandler,
{
    while let Some(incoming) = endpoint.accept().await {
        let (raft, dir, api) = (raft.clone(), spool_dir.clone(), api.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%remote, "handshake failed: {e}");
                    return;
                }
            };
            let result = match alpn(&conn).as_deref() {
                Some(ALPN_RAFT) => serve_raft_connection(conn, raft, dir).await,
                Some(ALPN_CLIENT) => serve_api_connection(conn, api).await,
                _ => Err(TransportError::Peer("no known ALPN".into())),
            };
            if let Err(e) = result {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

async fn serve_api_connection<H: ApiHandler>(
    conn: quinn::Connection,
    api: Arc<H>,
) -> Result<(), TransportError> {
    let caller = Caller {
        role: identity::client_role(&conn),
        connection: conn.clone(),
    };
    loop {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| TransportError::Peer(e.to_string()))?;
        let (api, caller) = (api.clone(), caller.clone());
        tokio::spawn(async move {
            let result: ApiResult = match wire::recv::<ApiRequest>(&mut recv).await {
                Ok(ApiRequest::Upload { len }) => {
                    match api::receive_upload(&mut recv, caller.role, len).await {
                        Ok(bytes) => api.handle(caller, ApiRequest::Deploy { bytes }).await,
                        Err(e) => Err(e),
                    }
                }
                Ok(ApiRequest::Backup) => {
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
                Ok(request) => api.handle(caller, request).await,
                Err(e) => Err(ApiError::BadRequest(e.to_string())),
            };
            if wire::send(&mut send, &result).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

async fn serve_raft_connection<SM>(
    conn: quinn::Connection,
    raft: Raft<TypeConfig, SM>,
    dir: PathBuf,
) -> Result<(), TransportError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
{
    // The first stream introduces the peer; its certificate must be that node's.
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| TransportError::Peer(e.to_string()))?;
    let from = match wire::recv::<Request>(&mut recv).await? {
        Request::Hello { from } if identity::is_node(&conn, from) => {
            wire::send(&mut send, &Reply::Hello(Ok(()))).await?;
            send.finish().map_err(WireError::from)?;
            from
        }
        Request::Hello { from } => {
            let why = format!("the certificate presented is not node {from}'s");
            wire::send(&mut send, &Reply::Hello(Err(why.clone()))).await?;
            let _ = send.finish();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            conn.close(2u32.into(), why.as_bytes());
            return Err(TransportError::Peer(why));
        }
        other => {
            return Err(TransportError::Peer(format!(
                "expected hello, got {other:?}"
            )));
        }
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(TransportError::Peer(e.to_string())),
        };
        let (raft, dir) = (raft.clone(), dir.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(from, send, recv, raft, &dir).await {
                tracing::debug!(from, "raft rpc failed: {e}");
            }
        });
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn serve_stream<SM>(
    from: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    raft: Raft<TypeConfig, SM>,
    dir: &Path,
) -> Result<(), TransportError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = File>,
{
    // A node may only speak for itself: the leader or candidate in a request must be the
    // node whose certificate opened the connection.
    let impersonation = |claimed: NodeId| format!("node {from} may not act for node {claimed}");
    let reply = match wire::recv::<Request>(&mut recv).await? {
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
            Reply::TransferLeader(raft.handle_transfer_leader(req).await.map_err(text))
        }
        Request::Snapshot { vote, meta, len } => {
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
    tokio::fs::create_dir_all(dir).await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("receive-{nanos}.tmp"));
    let mut file = tokio::fs::File::create(&path).await?;
    let mut got = 0u64;
    while got < len {
        let Chunk(bytes) = wire::recv(recv).await?;
        got += bytes.len() as u64;
        if got > len {
            return Err(TransportError::Peer(format!(
                "snapshot longer than the announced {len} bytes"
            )));
        }
        file.write_all(&bytes).await?;
    }
    // tokio's File writes in the background and keeps a failed write's error for the next
    // write or flush; `sync_all` alone would drop it (a full disk would then hand raft a
    // short file, refused as a corrupt snapshot, which stops the node).
    file.flush().await?;
    file.sync_all().await?;
    Ok(path)
}
