//! The client API over QUIC (ALPN `wraft-client/1`): one bidirectional stream per call, one
//! [`ApiCall`] frame in, one `Result<ApiResponse, ApiError>` frame out; module uploads and
//! backups stream their bytes as chunks on the same stream. The messages themselves are the
//! protocol crate's (`wraft-api`).

use wraft_api::{
    ApiCall, ApiCallRef, ApiError, ApiRequest, ApiResponse, ApiResult, BackupFile, BackupManifest,
    MAX_REPLY, MAX_UPLOAD_BYTES, Role, UPLOAD_CHUNK,
};
use wraft_core::NodeId;

use crate::wire::{self, WireError};

/// Who sent a request, as their certificate says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client role in the certificate, if it is a client certificate.
    pub role: Option<Role>,
    /// The connection (to check node identities).
    pub connection: quinn::Connection,
}

/// Serves client API requests (implemented by the node).
pub trait ApiHandler: Send + Sync + 'static {
    /// Answers one call.
    fn handle(&self, caller: Caller, call: ApiCall) -> impl Future<Output = ApiResult> + Send;

    /// Whether node `id` may send this node raft RPCs: `Err` says why not (it was removed
    /// from the cluster). Asked when a peer introduces itself and for every RPC after.
    fn admits_peer(&self, id: NodeId) -> Result<(), String>;

    /// Takes a consistent copy of the node's state for [`ApiRequest::Backup`] (the caller's
    /// role is checked before).
    fn backup(&self) -> impl Future<Output = Result<BackupFile, ApiError>> + Send;
}

/// Streams a backup to the caller: the manifest frame, then the file as chunks.
pub async fn send_backup(
    send: &mut quinn::SendStream,
    backup: &BackupFile,
) -> Result<(), WireError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(&backup.path)
        .await
        .map_err(|e| WireError::Frame(format!("backup file: {e}")))?;
    let answer: ApiResult = Ok(ApiResponse::Backup(backup.manifest.clone()));
    wire::send(send, &answer).await?;
    let mut left = backup.manifest.file_bytes;
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want])
            .await
            .map_err(|e| WireError::Frame(format!("backup file: {e}")))?;
        wire::send(send, &wire::Chunk(buf[..want].to_vec())).await?;
        left -= want as u64;
    }
    send.finish()?;
    Ok(())
}

/// Asks the node at the other end of `conn` for a backup; writes its bytes to `out` and
/// calls `progress(received, total)` after each chunk. Returns the manifest; the caller
/// checks the bytes against it.
pub async fn receive_backup(
    conn: &quinn::Connection,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut progress: impl FnMut(u64, u64),
) -> Result<Result<BackupManifest, ApiError>, WireError> {
    use tokio::io::AsyncWriteExt;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    wire::send(&mut send, &ApiCallRef::Direct(&ApiRequest::Backup)).await?;
    send.finish()?;
    let manifest = match wire::recv::<ApiResult>(&mut recv, MAX_REPLY).await? {
        Ok(ApiResponse::Backup(m)) => m,
        Ok(other) => return Err(WireError::Frame(format!("unexpected answer {other:?}"))),
        Err(e) => return Ok(Err(e)),
    };
    let mut received = 0u64;
    while received < manifest.file_bytes {
        let wire::Chunk(chunk) = wire::recv(&mut recv, wire::MAX_CHUNK_FRAME).await?;
        received += chunk.len() as u64;
        if received > manifest.file_bytes {
            return Err(WireError::Frame("backup longer than announced".into()));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| WireError::Frame(format!("writing the backup: {e}")))?;
        progress(received, manifest.file_bytes);
    }
    out.flush()
        .await
        .map_err(|e| WireError::Frame(format!("writing the backup: {e}")))?;
    Ok(Ok(manifest))
}

/// Uploads `bytes` as a module on a new stream of `conn`, calling `progress(sent, total)`
/// after each chunk, and reads the answer (the deployed module's id).
pub async fn upload(
    conn: &quinn::Connection,
    bytes: &[u8],
    mut progress: impl FnMut(u64, u64),
) -> Result<ApiResult, WireError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    let total = bytes.len() as u64;
    let sending = async {
        let request = ApiRequest::Upload { len: total };
        wire::send(&mut send, &ApiCallRef::Direct(&request)).await?;
        let mut sent = 0u64;
        for chunk in bytes.chunks(UPLOAD_CHUNK) {
            wire::send(&mut send, &wire::Chunk(chunk.to_vec())).await?;
            sent += chunk.len() as u64;
            progress(sent, total);
        }
        send.finish()?;
        Ok::<_, WireError>(())
    };
    let sent = sending.await;
    // A refusal (role, size) arrives before the server reads the chunks and stops the
    // stream; its answer says why, so read it even when sending failed.
    match (wire::recv(&mut recv, MAX_REPLY).await, sent) {
        (Ok(answer), _) => Ok(answer),
        (Err(_), Err(e)) | (Err(e), Ok(())) => Err(e),
    }
}

/// Reads the chunks of an [`ApiRequest::Upload`] of `len` bytes by a caller with `role`.
pub async fn receive_upload(
    recv: &mut quinn::RecvStream,
    role: Option<Role>,
    len: u64,
) -> Result<Vec<u8>, ApiError> {
    ApiRequest::Upload { len }.authorize(role)?;
    if len > MAX_UPLOAD_BYTES {
        return Err(ApiError::BadRequest(format!(
            "invalid module: {len} bytes; the limit is {MAX_UPLOAD_BYTES}"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        let wire::Chunk(chunk) = wire::recv(recv, wire::MAX_CHUNK_FRAME)
            .await
            .map_err(|e| ApiError::BadRequest(format!("upload cut short: {e}")))?;
        if bytes.len() as u64 + chunk.len() as u64 > len {
            return Err(ApiError::BadRequest("upload longer than announced".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Sends one request on a new stream of `conn` and reads its answer.
pub async fn call(conn: &quinn::Connection, request: &ApiRequest) -> Result<ApiResult, WireError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Frame(format!("open stream: {e}")))?;
    exchange(send, recv, ApiCallRef::Direct(request)).await
}

/// Sends one call on a stream the caller opened (so it knows nothing was sent if that
/// failed) and reads its answer.
pub async fn exchange(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    call: ApiCallRef<'_>,
) -> Result<ApiResult, WireError> {
    wire::send(&mut send, &call).await?;
    send.finish()?;
    wire::recv(&mut recv, MAX_REPLY).await
}
