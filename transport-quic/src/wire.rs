//! The raft RPC wire protocol: each RPC is one bidirectional QUIC stream carrying
//! [`wraft_core::frame`] frames (`len | crc32 | postcard`).
//!
//! ```text
//! connection start:  client -> Hello { from }         server -> Reply::Hello(Ok | Err)
//! append / vote:     client -> Request                server -> Reply
//! snapshot:          client -> Request::Snapshot { vote, meta, len }
//!                    client -> Chunk(bytes) ... (1 MiB each, `len` bytes in all)
//!                    client -> finish              server -> Reply::Snapshot
//! ```

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use wraft_core::frame::{self, HEADER_LEN};
use wraft_core::raft::{NodeId, SnapshotMeta, TypeConfig, Vote};

/// Bytes of snapshot per chunk frame.
pub const CHUNK: usize = 1 << 20;
/// Largest frame of a chunk (snapshot, upload or backup) with its encoding overhead.
pub const MAX_CHUNK_FRAME: usize = CHUNK + 64;
/// Largest `Hello`: a node id, read before the peer's identity is checked.
pub const MAX_HELLO: usize = 1 << 10;
/// Bytes read from the stream at a time while a frame arrives: the buffer grows with the
/// bytes that really came, never with what the header announced.
const READ_STEP: usize = 64 << 10;

/// A request on the raft ALPN.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// First stream of a connection: the sender's node id, checked against its certificate.
    Hello {
        /// The id the peer claims.
        from: NodeId,
    },
    /// openraft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// openraft RequestVote.
    Vote(VoteRequest<TypeConfig>),
    /// openraft pre-vote.
    PreVote(VoteRequest<TypeConfig>),
    /// A full snapshot follows in chunks.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// Its metadata.
        meta: SnapshotMeta,
        /// Total bytes that follow.
        len: u64,
    },
    /// openraft TransferLeader.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

/// A snapshot chunk.
#[derive(Debug, Serialize, Deserialize)]
pub struct Chunk(pub Vec<u8>);

/// A response. `Err` carries the remote's error text.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To `Hello`.
    Hello(Result<(), String>),
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, String>),
    /// To `Vote` and `PreVote`.
    Vote(Result<VoteResponse<TypeConfig>, String>),
    /// To `Snapshot`.
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    /// To `TransferLeader`.
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Writing to the stream failed.
    #[error("send: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream could not be finished.
    #[error("finish: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// Reading from the stream failed or it ended early.
    #[error("receive: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The frame announces more bytes than this kind of message may have.
    #[error("frame of {len} bytes exceeds the limit of {max} for this message")]
    TooLarge {
        /// Announced payload bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame was corrupted or undecodable.
    #[error("frame: {0}")]
    Frame(String),
}

/// Sends one message as a frame.
pub async fn send<T: Serialize>(stream: &mut quinn::SendStream, msg: &T) -> Result<(), WireError> {
    let mut buf = Vec::new();
    frame::encode_frame(msg, &mut buf);
    stream.write_all(&buf).await?;
    Ok(())
}

/// Reads a frame's header: the payload length it announces (checked against `max`).
pub async fn recv_header(stream: &mut quinn::RecvStream, max: usize) -> Result<Header, WireError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(Header { bytes: header, len })
}

/// A frame header read by [`recv_header`]; [`recv_body`] reads the rest.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; HEADER_LEN],
    /// Payload bytes the frame announces.
    pub len: usize,
}

/// Reads the payload announced by `header` and decodes it. The buffer grows as bytes arrive
/// (at most twice what arrived), so a peer that announces much and sends little costs little.
pub async fn recv_body<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    header: Header,
) -> Result<T, WireError> {
    let total = HEADER_LEN + header.len;
    let mut buf = Vec::with_capacity(total.min(HEADER_LEN + READ_STEP));
    buf.extend_from_slice(&header.bytes);
    while buf.len() < total {
        let want = (total - buf.len()).min(READ_STEP);
        match stream.read_chunk(want, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(WireError::Frame("stream ended inside a frame".into())),
            Err(e) => return Err(WireError::Read(quinn::ReadExactError::ReadError(e))),
        }
    }
    match frame::decode_frame(&buf, header.len) {
        Ok(Some((msg, _))) => Ok(msg),
        Ok(None) => Err(WireError::Frame("incomplete frame".into())),
        Err(e) => Err(WireError::Frame(e.to_string())),
    }
}

/// Receives one message of at most `max` payload bytes.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, WireError> {
    let header = recv_header(stream, max).await?;
    recv_body(stream, header).await
}
