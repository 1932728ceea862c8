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

/// Largest frame accepted (a batch of appended entries, or one snapshot chunk).
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes of snapshot per chunk frame.
pub const CHUNK: usize = 1 << 20;

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
    /// The frame was oversized, corrupted or undecodable.
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

/// Receives one message.
pub async fn recv<T: DeserializeOwned>(stream: &mut quinn::RecvStream) -> Result<T, WireError> {
    let mut buf = vec![0u8; HEADER_LEN];
    stream.read_exact(&mut buf).await?;
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::Frame(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    buf.resize(HEADER_LEN + len, 0);
    stream.read_exact(&mut buf[HEADER_LEN..]).await?;
    match frame::decode_frame(&buf, MAX_FRAME) {
        Ok(Some((msg, _))) => Ok(msg),
        Ok(None) => Err(WireError::Frame("incomplete frame".into())),
        Err(e) => Err(WireError::Frame(e.to_string())),
    }
}
