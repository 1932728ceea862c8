//! Sealed link frames: who may talk to a passive voter, and no frame heard twice.
//!
//! ```text
//! body: postcard(message) | tag[16] | crc32   (framed by link::frame: 0x00 | COBS | 0x00)
//! ```
//! Every cluster has a 32-byte key `K` ([`ClusterKey`]), on the voter's flash and in a file
//! on each host. When a host opens its link it sends `Hello {host_nonce}` (16 random bytes);
//! the voter answers `Welcome {host_nonce, voter_nonce}`, its nonce being its boot count
//! (persisted before it serves) and a count of sessions this boot. Both are tagged with `K`
//! under labels of their own (`H`, `W`). Both sides then key the session with
//! `Ks = HMAC(K, "wraft-voter-v1" | host_nonce | voter_nonce)`: calls are tagged
//! `HMAC(Ks, 'Q' | message)`, answers `HMAC(Ks, 'A' | message)`, truncated to 16 bytes.
//!
//! The voter keeps one session per port (a new hello replaces it) and accepts a call only if
//! its sequence number is above the last one it accepted in that session: a call replayed in
//! its session is refused by number, in another session (after a restart of either side) by
//! its tag. The host accepts only the welcome for its own nonce and the answer to the call it
//! has outstanding. The tag is checked before a message is decoded; the CRC stays, so line
//! noise (counted as dropped) is told apart from forgery (counted as rejected).
//!
//! Which key and label check a frame follows from its first byte, postcard's variant index
//! of [`ToVoter`] or [`FromVoter`] (one byte for either variant).

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::mac::{MacKey, TAG_LEN};
use super::{LinkError, unframe};
use crate::voter::{Envelope, Request, Response};

/// Protocol version carried by hellos and welcomes.
pub const VERSION: u8 = 1;
/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// A host's nonce: random for every link it opens.
pub type HostNonce = [u8; 16];
/// A voter's nonce: its boot count and its session count this boot (little endian).
pub type VoterNonce = [u8; 8];

const SESSION_LABEL: &[u8] = b"wraft-voter-v1";
const HELLO: u8 = b'H';
const WELCOME: u8 = b'W';
const CALL: u8 = b'Q';
const ANSWER: u8 = b'A';
/// Postcard's variant indexes: the first byte of an encoded message.
const FIRST_VARIANT: u8 = 0;
const SECOND_VARIANT: u8 = 1;

/// A cluster's voter key. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// A key from its bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key's bytes (to store it).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn mac_key(&self) -> MacKey {
        MacKey::new(&self.0)
    }
}

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// A message from a host to the voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToVoter {
    /// Opens a session; tagged with the cluster key.
    Hello {
        /// [`VERSION`].
        ver: u8,
        /// Fresh random bytes.
        host_nonce: HostNonce,
    },
    /// A request in the session; tagged with the session key.
    Call(Envelope<Request>),
}

/// A message from the voter to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromVoter {
    /// Accepts a hello; tagged with the cluster key.
    Welcome {
        /// [`VERSION`].
        ver: u8,
        /// The hello's nonce.
        host_nonce: HostNonce,
        /// Never the same twice for one voter.
        voter_nonce: VoterNonce,
    },
    /// The answer to a call; tagged with the session key.
    Answer(Envelope<Response>),
}

/// Why a frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The frame was damaged (line noise, a cut), or its tagged message does not decode.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The tag does not match: forged, or sealed under another key or session.
    #[error("frame tag mismatch (forged, or another key or session)")]
    BadTag,
    /// A call on a port where no hello opened a session.
    #[error("call before any hello")]
    NoSession,
    /// A call whose sequence number is not above the last one accepted in its session.
    #[error("call {seq} replayed (last accepted {last})")]
    Replayed {
        /// The call's sequence number.
        seq: u32,
        /// The last one accepted.
        last: u32,
    },
    /// A hello or welcome of another protocol version.
    #[error("link protocol version {0} (this side speaks {VERSION})")]
    Version(u8),
    /// A welcome for another hello (not this link's nonce): an old one, replayed.
    #[error("welcome for another hello")]
    OtherNonce,
    /// A genuine message of a kind not expected now (an answer while handshaking).
    #[error("unexpected message")]
    Unexpected,
    /// An answer to another call than the outstanding one.
    #[error("answer to call {0}, not the outstanding one")]
    Stale(u32),
    /// Sequence numbers (host) or voter nonces are used up: open a new session (or reboot).
    #[error("session numbers exhausted")]
    Exhausted,
}

impl AuthError {
    /// Whether the frame was whole but not genuine or not fresh: forged, replayed, or under
    /// another key. The voter counts these as `rejected`, apart from line noise.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::BadTag | Self::NoSession | Self::Replayed { .. } | Self::OtherNonce
        )
    }
}

/// Appends `msg` sealed with `key` under `label` to `out` as one frame.
fn seal<T: Serialize>(msg: &T, key: &MacKey, label: u8, out: &mut Vec<u8>) {
    let mut body = postcard::to_allocvec(msg).expect("plain data serializes into a Vec");
    let tag = key.tag(label, &body);
    body.extend_from_slice(&tag);
    super::frame(&body, out);
}

/// The tagged message of a decoded frame, and its tag, once its CRC holds.
fn split(decoded: &[u8]) -> Result<(&[u8], &[u8]), AuthError> {
    let body = unframe(decoded)?;
    let at = body.len().checked_sub(TAG_LEN).ok_or(AuthError::BadTag)?;
    let (msg, tag) = body.split_at(at);
    if msg.is_empty() {
        return Err(AuthError::BadTag);
    }
    Ok((msg, tag))
}

/// Checks `tag` over `msg`, then decodes it.
fn open<T: serde::de::DeserializeOwned>(
    msg: &[u8],
    tag: &[u8],
    key: &MacKey,
    label: u8,
) -> Result<T, AuthError> {
    if !key.verify(label, msg, tag) {
        return Err(AuthError::BadTag);
    }
    postcard::from_bytes(msg).map_err(|e| LinkError::Decode(e).into())
}

fn session_key(key: &MacKey, host: &HostNonce, voter: &VoterNonce) -> MacKey {
    MacKey::new(&key.mac(&[SESSION_LABEL, host, voter]))
}

/// The voter's side, shared by its ports: the cluster key, the nonce counter and the count
/// of rejected frames.
#[derive(Debug)]
pub struct VoterAuth {
    key: MacKey,
    boots: u32,
    sessions: u32,
    rejected: u32,
}

/// One port's session on the voter (none until a hello).
#[derive(Debug, Default)]
pub struct PortSession(Option<Session>);

#[derive(Debug)]
struct Session {
    key: MacKey,
    last_seq: u32,
}

/// What a frame from a host asks of the voter.
#[derive(Debug)]
pub enum Inbound<'p> {
    /// A hello: the welcome is in `out`, send it.
    Welcomed,
    /// A genuine, fresh call: hand it to the voter and seal its answer with the sealer.
    Call(Envelope<Request>, AnswerSealer<'p>),
}

/// Seals answers in the session a call came in.
#[derive(Debug)]
pub struct AnswerSealer<'p>(&'p MacKey);

impl AnswerSealer<'_> {
    /// Appends `answer` as a sealed frame to `out`.
    pub fn seal(&self, answer: Envelope<Response>, out: &mut Vec<u8>) {
        seal(&FromVoter::Answer(answer), self.0, ANSWER, out);
    }
}

impl VoterAuth {
    /// The voter's side for this boot: `boots` must be persisted before the voter serves
    /// (it is half of every voter nonce).
    pub fn new(key: &ClusterKey, boots: u32) -> Self {
        Self {
            key: key.mac_key(),
            boots,
            sessions: 0,
            rejected: 0,
        }
    }

    /// Frames dropped as forged, replayed or under another key, since boot.
    pub fn rejected(&self) -> u32 {
        self.rejected
    }

    /// Handles a decoded frame from the host on `port`. A hello (re)opens the port's session
    /// and writes the welcome to `out`; a call is returned if genuine and fresh. Anything
    /// else is dropped (and counted if [`AuthError::is_rejection`]).
    pub fn receive<'p>(
        &mut self,
        port: &'p mut PortSession,
        decoded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Inbound<'p>, AuthError> {
        let result = self.receive_checked(port, decoded, out);
        if let Err(e) = &result
            && e.is_rejection()
        {
            self.rejected = self.rejected.saturating_add(1);
        }
        result
    }

    fn receive_checked<'p>(
        &mut self,
        port: &'p mut PortSession,
        decoded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Inbound<'p>, AuthError> {
        let (msg, tag) = split(decoded)?;
        match msg[0] {
            FIRST_VARIANT => {
                let ToVoter::Hello { ver, host_nonce } = open(msg, tag, &self.key, HELLO)? else {
                    return Err(AuthError::Unexpected);
                };
                if ver != VERSION {
                    return Err(AuthError::Version(ver));
                }
                let sessions = self.sessions.checked_add(1).ok_or(AuthError::Exhausted)?;
                self.sessions = sessions;
                let mut voter_nonce = [0u8; 8];
                voter_nonce[..4].copy_from_slice(&self.boots.to_le_bytes());
                voter_nonce[4..].copy_from_slice(&sessions.to_le_bytes());
                port.0 = Some(Session {
                    key: session_key(&self.key, &host_nonce, &voter_nonce),
                    last_seq: 0,
                });
                let welcome = FromVoter::Welcome {
                    ver: VERSION,
                    host_nonce,
                    voter_nonce,
                };
                seal(&welcome, &self.key, WELCOME, out);
                Ok(Inbound::Welcomed)
            }
            SECOND_VARIANT => {
                let session = port.0.as_mut().ok_or(AuthError::NoSession)?;
                let ToVoter::Call(call) = open(msg, tag, &session.key, CALL)? else {
                    return Err(AuthError::Unexpected);
                };
                if call.seq <= session.last_seq {
                    return Err(AuthError::Replayed {
                        seq: call.seq,
                        last: session.last_seq,
                    });
                }
                session.last_seq = call.seq;
                Ok(Inbound::Call(call, AnswerSealer(&session.key)))
            }
            _ => Err(AuthError::BadTag),
        }
    }
}

/// The host's side of opening a session.
#[derive(Debug)]
pub struct Handshake {
    key: MacKey,
    host_nonce: HostNonce,
}

impl Handshake {
    /// A handshake under `key`; `host_nonce` must be fresh random bytes.
    pub fn new(key: &ClusterKey, host_nonce: HostNonce) -> Self {
        Self {
            key: key.mac_key(),
            host_nonce,
        }
    }

    /// Appends the sealed hello to `out`.
    pub fn hello(&self, out: &mut Vec<u8>) {
        let hello = ToVoter::Hello {
            ver: VERSION,
            host_nonce: self.host_nonce,
        };
        seal(&hello, &self.key, HELLO, out);
    }

    /// The session, if `decoded` is the voter's welcome to this hello.
    pub fn finish(&self, decoded: &[u8]) -> Result<HostSession, AuthError> {
        let (msg, tag) = split(decoded)?;
        if msg[0] != FIRST_VARIANT {
            return Err(AuthError::Unexpected);
        }
        let FromVoter::Welcome {
            ver,
            host_nonce,
            voter_nonce,
        } = open(msg, tag, &self.key, WELCOME)?
        else {
            return Err(AuthError::Unexpected);
        };
        if ver != VERSION {
            return Err(AuthError::Version(ver));
        }
        if host_nonce != self.host_nonce {
            return Err(AuthError::OtherNonce);
        }
        Ok(HostSession {
            key: session_key(&self.key, &host_nonce, &voter_nonce),
            seq: 0,
            voter_nonce,
        })
    }
}

/// The host's side of a session: numbers and seals calls, checks answers.
#[derive(Debug)]
pub struct HostSession {
    key: MacKey,
    seq: u32,
    voter_nonce: VoterNonce,
}

impl HostSession {
    /// Whether every sequence number was used: the next call needs a new session.
    pub fn exhausted(&self) -> bool {
        self.seq == u32::MAX
    }

    /// The voter's nonce for this session.
    pub fn voter_nonce(&self) -> VoterNonce {
        self.voter_nonce
    }

    /// Appends `request` as the session's next sealed call to `out`; returns its sequence
    /// number, or [`AuthError::Exhausted`] once every number was used (open a new session).
    pub fn call(&mut self, request: Request, out: &mut Vec<u8>) -> Result<u32, AuthError> {
        let seq = self.seq.checked_add(1).ok_or(AuthError::Exhausted)?;
        self.seq = seq;
        seal(
            &ToVoter::Call(Envelope { seq, body: request }),
            &self.key,
            CALL,
            out,
        );
        Ok(seq)
    }

    /// The answer in `decoded`, if it is genuine, in this session, and to call `seq`.
    pub fn answer(&self, decoded: &[u8], seq: u32) -> Result<Response, AuthError> {
        let (msg, tag) = split(decoded)?;
        if msg[0] != SECOND_VARIANT {
            return Err(AuthError::Unexpected);
        }
        let FromVoter::Answer(answer) = open(msg, tag, &self.key, ANSWER)? else {
            return Err(AuthError::Unexpected);
        };
        if answer.seq != seq {
            return Err(AuthError::Stale(answer.seq));
        }
        Ok(answer.body)
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
