//! One byte stream to a passive voter: a session opened with the cluster key when the stream
//! opens (`wraft_core::link::auth`), then a request and its answer, one at a time. Only the
//! sealed answer to the outstanding request is taken; line noise, stale answers and forged
//! frames are skipped.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use wraft_core::link::Decoder;
use wraft_core::link::auth::{AuthError, ClusterKey, Handshake, HostNonce, HostSession};
use wraft_core::voter::{Request, Response};

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
    /// No welcome to this host's hello in time: the voter is down, or holds another cluster
    /// key (it drops hellos it cannot verify, unanswered).
    #[error("voter link {addr}: no session within {ttl:?} (voter down, or another cluster key?)")]
    Handshake {
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
    session: HostSession,
}

/// Fresh random bytes from the OS for a hello.
fn host_nonce() -> std::io::Result<HostNonce> {
    let mut nonce = HostNonce::default();
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut nonce)?;
    Ok(nonce)
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

/// The stream to one voter; reopened (with a new session) after any failure.
pub struct VoterLink {
    addr: LinkAddr,
    key: ClusterKey,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for VoterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoterLink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl VoterLink {
    /// A link to `addr` for a voter holding `key`, opened on first use.
    pub fn new(addr: LinkAddr, key: ClusterKey) -> Self {
        Self {
            addr,
            key,
            conn: Mutex::new(None),
        }
    }

    /// Where it goes.
    pub fn addr(&self) -> &LinkAddr {
        &self.addr
    }

    /// Opens the stream and a session on it: a hello with a fresh nonce, then the voter's
    /// welcome to it (anything else that arrives first is skipped).
    async fn open(&self) -> Result<Conn, VoterLinkError> {
        let open_err = |source| VoterLinkError::Open {
            addr: self.addr.to_string(),
            source,
        };
        let io_err = |source| VoterLinkError::Io {
            addr: self.addr.to_string(),
            source,
        };
        let mut stream: Box<dyn Stream> = match &self.addr {
            LinkAddr::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await.map_err(open_err)?;
                s.set_nodelay(true).map_err(open_err)?;
                Box::new(s)
            }
            LinkAddr::Device(p) => Box::new(open_device(p).map_err(open_err)?),
        };
        let handshake = Handshake::new(&self.key, host_nonce().map_err(open_err)?);
        let mut out = Vec::new();
        handshake.hello(&mut out);
        stream.write_all(&out).await.map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;
        let mut decoder = Box::new(Decoder::new());
        let mut buf = [0u8; 256];
        loop {
            let n = stream.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            for &byte in &buf[..n] {
                let Some(frame) = decoder.feed(byte) else {
                    continue;
                };
                match frame
                    .map_err(AuthError::from)
                    .and_then(|f| handshake.finish(f))
                {
                    Ok(session) => {
                        return Ok(Conn {
                            stream,
                            decoder,
                            session,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(link = %self.addr, "skipped a frame before the welcome: {e}")
                    }
                }
            }
        }
    }

    /// Sends `body` and waits up to `ttl` for its answer (including opening the stream and
    /// its session). Any failure drops the stream; the next call reopens it.
    pub async fn call(&self, body: Request, ttl: Duration) -> Result<Response, VoterLinkError> {
        let started = std::time::Instant::now();
        let kind = match &body {
            Request::Append { runs, .. } if runs.is_empty() => "heartbeat",
            Request::Append { .. } => "append",
            Request::Vote { .. } | Request::PreVote { .. } => "vote",
            Request::Snapshot { .. } => "snapshot",
            Request::Status => "status",
        };
        let opening = AtomicBool::new(false);
        // Waiting for the link (another call in flight) counts against the deadline too.
        let exchange = async {
            let mut conn = self.conn.lock().await;
            if conn.as_ref().is_some_and(|c| c.session.exhausted()) {
                *conn = None;
            }
            let c = match &mut *conn {
                Some(c) => c,
                None => {
                    opening.store(true, Ordering::Relaxed);
                    let opened = self.open().await?;
                    opening.store(false, Ordering::Relaxed);
                    conn.insert(opened)
                }
            };
            let answer = self.exchange(c, body).await;
            if answer.is_err() {
                *conn = None;
            }
            answer
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // Reopen next time (unless another call holds the link: stale answers and
                // half-sent frames are harmless, the sequence numbers, the tags and the
                // framing see to that).
                if let Ok(mut conn) = self.conn.try_lock() {
                    *conn = None;
                }
                let addr = self.addr.to_string();
                Err(if opening.load(Ordering::Relaxed) {
                    VoterLinkError::Handshake { addr, ttl }
                } else {
                    VoterLinkError::Timeout { addr, ttl }
                })
            }
        };
        tracing::debug!(link = %self.addr, kind, ok = result.is_ok(), took = ?started.elapsed(), "voter call");
        result
    }

    async fn exchange(&self, c: &mut Conn, body: Request) -> Result<Response, VoterLinkError> {
        let io_err = |source| VoterLinkError::Io {
            addr: self.addr.to_string(),
            source,
        };
        let mut out = Vec::new();
        let seq = c
            .session
            .call(body, &mut out)
            .map_err(|e| io_err(std::io::Error::other(e)))?;
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
                match frame
                    .map_err(AuthError::from)
                    .and_then(|f| c.session.answer(f, seq))
                {
                    Ok(answer) => return Ok(answer),
                    Err(AuthError::Stale(stale)) => {
                        tracing::debug!(seq = stale, "stale answer from voter");
                    }
                    // Debug, not warn: whoever can write to the line could flood the log.
                    Err(e) => {
                        tracing::debug!(link = %self.addr, "dropped a frame from the voter: {e}")
                    }
                }
            }
        }
    }
}
