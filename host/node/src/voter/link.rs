//! One byte stream to a passive voter: a request, then its answer (matched by sequence
//! number; stale answers and line noise are skipped), one at a time.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use wraft_core::link::{self, Decoder};
use wraft_core::voter::{Envelope, Request, Response};

/// Where a voter's stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddr {
    /// A TCP socket carrying the raw UART bytes (QEMU's `-serial tcp:`, ser2net, a
    /// microcontroller with Ethernet).
    Tcp(String),
    /// A serial device, already configured raw at the voter's speed (`stty -F`).
    Device(PathBuf),
}

impl FromStr for LinkAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(hostport) = s.strip_prefix("tcp:") {
            return Ok(Self::Tcp(hostport.to_string()));
        }
        if s.starts_with('/') {
            return Ok(Self::Device(PathBuf::from(s)));
        }
        Err(format!(
            "voter link {s:?} is neither tcp:HOST:PORT nor /dev/PATH"
        ))
    }
}

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Device(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a call to a voter failed.
#[derive(Debug, thiserror::Error)]
pub enum VoterLinkError {
    /// The stream could not be opened.
    #[error("cannot open voter link {addr}: {source}")]
    Open {
        /// The link.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing failed, or the stream ended.
    #[error("voter link {addr}: {source}")]
    Io {
        /// The link.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time (the voter is down, slow, or the frame was lost).
    #[error("voter link {addr}: no answer within {ttl:?}")]
    Timeout {
        /// The link.
        addr: String,
        /// How long it waited.
        ttl: Duration,
    },
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    decoder: Box<Decoder>,
}

/// A serial device as a non-blocking stream on the reactor: a call that times out leaves no
/// read behind (a blocking read would keep the fd and eat the next answer, and one per
/// timeout would fill tokio's blocking pool). The device must not become the node's
/// controlling terminal.
#[cfg(unix)]
fn open_device(path: &std::path::Path) -> std::io::Result<impl Stream + use<>> {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::net::unix::pipe;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let writer = pipe::Sender::from_file_unchecked(file.try_clone()?)?;
    let reader = pipe::Receiver::from_file_unchecked(file)?;
    Ok(tokio::io::join(reader, writer))
}

#[cfg(not(unix))]
fn open_device(path: &std::path::Path) -> std::io::Result<tokio::net::TcpStream> {
    Err(std::io::Error::other(format!(
        "serial devices ({}) are supported on unix hosts only",
        path.display()
    )))
}

/// The stream to one voter; reopened after any failure.
pub struct VoterLink {
    addr: LinkAddr,
    conn: Mutex<(u32, Option<Conn>)>,
}

impl std::fmt::Debug for VoterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoterLink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl VoterLink {
    /// A link to `addr`, opened on first use.
    pub fn new(addr: LinkAddr) -> Self {
        // Sequence numbers start somewhere new in every process, so an answer still buffered
        // in a serial bridge from a previous run cannot pass for an answer to this one.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().rotate_left(16);
        Self {
            addr,
            conn: Mutex::new((seed, None)),
        }
    }

    /// Where it goes.
    pub fn addr(&self) -> &LinkAddr {
        &self.addr
    }

    async fn open(&self) -> Result<Conn, VoterLinkError> {
        let open_err = |source| VoterLinkError::Open {
            addr: self.addr.to_string(),
            source,
        };
        let stream: Box<dyn Stream> = match &self.addr {
            LinkAddr::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await.map_err(open_err)?;
                s.set_nodelay(true).map_err(open_err)?;
                Box::new(s)
            }
            LinkAddr::Device(p) => Box::new(open_device(p).map_err(open_err)?),
        };
        Ok(Conn {
            stream,
            decoder: Box::new(Decoder::new()),
        })
    }

    /// Sends `body` and waits up to `ttl` for its answer (including opening the stream).
    /// Any failure drops the stream; the next call reopens it.
    pub async fn call(&self, body: Request, ttl: Duration) -> Result<Response, VoterLinkError> {
        let started = std::time::Instant::now();
        let kind = match &body {
            Request::Append { runs, .. } if runs.is_empty() => "heartbeat",
            Request::Append { .. } => "append",
            Request::Vote { .. } | Request::PreVote { .. } => "vote",
            Request::Snapshot { .. } => "snapshot",
            Request::Status => "status",
        };
        // Waiting for the link (another call in flight) counts against the deadline too.
        let exchange = async {
            let mut guard = self.conn.lock().await;
            let (seq, conn) = &mut *guard;
            *seq = seq.wrapping_add(1);
            let envelope = Envelope { seq: *seq, body };
            let c = match conn {
                Some(c) => c,
                None => conn.insert(self.open().await?),
            };
            let answer = self.exchange(c, &envelope).await;
            if answer.is_err() {
                *conn = None;
            }
            answer
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // Reopen next time (unless another call holds the link: stale answers and
                // half-sent frames are harmless, the sequence numbers and the framing see
                // to that).
                if let Ok(mut guard) = self.conn.try_lock() {
                    guard.1 = None;
                }
                Err(VoterLinkError::Timeout {
                    addr: self.addr.to_string(),
                    ttl,
                })
            }
        };
        tracing::debug!(link = %self.addr, kind, ok = result.is_ok(), took = ?started.elapsed(), "voter call");
        result
    }

    async fn exchange(
        &self,
        c: &mut Conn,
        envelope: &Envelope<Request>,
    ) -> Result<Response, VoterLinkError> {
        let io_err = |source| VoterLinkError::Io {
            addr: self.addr.to_string(),
            source,
        };
        let mut out = Vec::new();
        link::encode(envelope, &mut out);
        c.stream.write_all(&out).await.map_err(io_err)?;
        c.stream.flush().await.map_err(io_err)?;
        let mut buf = [0u8; 256];
        loop {
            let n = c.stream.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            for &byte in &buf[..n] {
                let Some(frame) = c.decoder.feed(byte) else {
                    continue;
                };
                match frame.and_then(link::decode::<Envelope<Response>>) {
                    Ok(answer) if answer.seq == envelope.seq => return Ok(answer.body),
                    Ok(stale) => tracing::debug!(seq = stale.seq, "stale answer from voter"),
                    Err(e) => tracing::debug!("dropped a frame from the voter: {e}"),
                }
            }
        }
    }
}
