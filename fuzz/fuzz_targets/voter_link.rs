//! The passive voter behind its sealed link, end to end: `VoterPort` (COBS `Decoder`,
//! `VoterAuth` sessions with HMAC tags, replay refusal) in front of a `PassiveVoter`.
//!
//! The input is a script of operations: raw bytes on the wire, hellos, calls from a
//! `HostSession`, calls sealed with the right session key around any message bytes, replays
//! of earlier frames, corrupted copies of them, and clock steps. A model of the port's
//! session (rebuilt from every welcome the voter sends) checks that every frame the voter
//! sends is genuine, that answers in a session come for strictly increasing sequence
//! numbers (a replayed call is never answered twice), that a sealed call is answered exactly
//! when it is fresh, and that the voter's vote and last log id are durable whenever it
//! answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::link::auth::{ClusterKey, FromVoter, Handshake, HostSession, ToVoter, VoterAuth};
use wraft_core::link::mac::{MacKey, TAG_LEN};
use wraft_core::link::{self, Decoder};
use wraft_core::voter::{Envelope, PassiveVoter, Persisted, Request, VoterPort};
use wraft_fuzz::Input;
use wraft_fuzz::voter::{MemStore, Wire};

const KEY: ClusterKey = ClusterKey::from_bytes([7; 32]);

/// The port's session as the voter's welcomes announced it.
struct Session {
    key: MacKey,
    voter_nonce: [u8; 8],
    /// Highest sequence number answered in it.
    answered: u32,
}

struct Rig {
    wire: Wire,
    port: VoterPort<Wire>,
    voter: PassiveVoter<MemStore>,
    auth: VoterAuth,
    now: u64,
    session: Option<Session>,
    host: Option<HostSession>,
    sent: Vec<Vec<u8>>,
}

fn session_key(host_nonce: &[u8; 16], voter_nonce: &[u8; 8]) -> MacKey {
    let cluster = MacKey::new(KEY.as_bytes());
    MacKey::new(&cluster.mac(&[b"wraft-voter-v1", host_nonce, voter_nonce]))
}

/// `msg` tagged with `key` under `label`, framed.
fn sealed(msg: &[u8], key: &MacKey, label: u8) -> Vec<u8> {
    let mut body = msg.to_vec();
    body.extend_from_slice(&key.tag(label, msg));
    let mut wire = Vec::new();
    link::frame(&body, &mut wire);
    wire
}

impl Rig {
    /// Sends `wire` to the voter; checks and returns the decoded frames it answered with.
    fn send(&mut self, wire: &[u8]) -> Vec<Vec<u8>> {
        self.sent.push(wire.to_vec());
        let (rejected, dropped) = (self.auth.rejected(), self.port.dropped());
        self.wire.0.borrow_mut().rx.extend(wire);
        let now = self.now;
        self.port
            .poll(&mut self.voter, &mut self.auth, &mut || now)
            .expect("an in-memory wire");
        assert!(self.auth.rejected() >= rejected && self.port.dropped() >= dropped);
        let durable = &self.voter.store().saved;
        assert_eq!(durable.vote, self.voter.state().vote, "an undurable vote");
        assert_eq!(
            durable.last(),
            self.voter.state().last(),
            "an undurable log"
        );
        let tx = std::mem::take(&mut self.wire.0.borrow_mut().tx);
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for &b in &tx {
            if let Some(frame) = decoder.feed(b) {
                let frame = frame.expect("the voter sends whole frames");
                self.check_sent(frame);
                out.push(frame.to_vec());
            }
        }
        out
    }

    /// Every frame the voter sends is genuine, and answers are fresh in their session.
    fn check_sent(&mut self, frame: &[u8]) {
        let body = link::unframe(frame).expect("a frame the voter sealed");
        let (msg, tag) = body.split_at(body.len() - TAG_LEN);
        match postcard::from_bytes::<FromVoter>(msg).expect("a message the voter encoded") {
            FromVoter::Welcome {
                host_nonce,
                voter_nonce,
                ..
            } => {
                assert!(MacKey::new(KEY.as_bytes()).verify(b'W', msg, tag));
                if let Some(s) = &self.session {
                    assert_ne!(s.voter_nonce, voter_nonce, "a voter nonce used twice");
                }
                self.session = Some(Session {
                    key: session_key(&host_nonce, &voter_nonce),
                    voter_nonce,
                    answered: 0,
                });
            }
            FromVoter::Answer(answer) => {
                let s = self.session.as_mut().expect("an answer without a session");
                assert!(
                    s.key.verify(b'A', msg, tag),
                    "an answer sealed outside the session"
                );
                assert!(
                    answer.seq > s.answered,
                    "call {} answered again",
                    answer.seq
                );
                s.answered = answer.seq;
            }
        }
    }

    /// The highest sequence number answered in the port's session, if there is one.
    fn answered(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.answered)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let boots = u32::from(input.byte());
    let wire = Wire::default();
    wire.0.borrow_mut().chunk = usize::from(input.byte() % 16) + 1;
    let mut rig = Rig {
        port: VoterPort::new(wire.clone()),
        wire,
        voter: PassiveVoter::new(Persisted::default(), MemStore::default()),
        auth: VoterAuth::new(&KEY, boots),
        now: 0,
        session: None,
        host: None,
        sent: Vec::new(),
    };
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.byte() % 7 {
            0 => {
                rig.send(input.short());
            }
            1 => {
                let mut nonce = [0u8; 16];
                nonce.copy_from_slice(&[input.take(16), &[0; 16]].concat()[..16]);
                let hs = Handshake::new(&KEY, nonce);
                let mut wire = Vec::new();
                hs.hello(&mut wire);
                let out = rig.send(&wire);
                assert_eq!(out.len(), 1, "a hello is welcomed");
                let host = hs.finish(&out[0]).expect("the welcome to this hello");
                let voter_nonce = rig.session.as_ref().map(|s| s.voter_nonce);
                assert_eq!(Some(host.voter_nonce()), voter_nonce);
                rig.host = Some(host);
            }
            2 => {
                let request = postcard::from_bytes(input.short()).unwrap_or(Request::Status);
                let Some(mut host) = rig.host.take() else {
                    continue;
                };
                let mut wire = Vec::new();
                let Ok(seq) = host.call(request, &mut wire) else {
                    continue;
                };
                let current =
                    rig.session.as_ref().map(|s| s.voter_nonce) == Some(host.voter_nonce());
                let fresh = current && rig.answered().is_some_and(|a| seq > a);
                let out = rig.send(&wire);
                assert_eq!(out.len(), usize::from(fresh), "call {seq} (fresh: {fresh})");
                if let Some(answer) = out.first() {
                    host.answer(answer, seq).expect("the answer to this call");
                }
                rig.host = Some(host);
            }
            3 => {
                // Any message bytes, sealed in the port's session: the tag holds, so the
                // voter decodes them and answers only a call with a fresh number.
                let msg = input.short();
                let Some(s) = &rig.session else { continue };
                let fresh = match postcard::from_bytes::<ToVoter>(msg) {
                    Ok(ToVoter::Call(Envelope { seq, .. })) => msg[0] == 1 && seq > s.answered,
                    _ => false,
                };
                let wire = sealed(msg, &s.key, b'Q');
                let out = rig.send(&wire);
                assert_eq!(
                    out.len(),
                    usize::from(fresh),
                    "sealed {msg:?} (fresh: {fresh})"
                );
            }
            4 => {
                if rig.sent.is_empty() {
                    continue;
                }
                let wire = rig.sent[usize::from(input.byte()) % rig.sent.len()].clone();
                rig.send(&wire);
            }
            5 => {
                if rig.sent.is_empty() {
                    continue;
                }
                let mut wire = rig.sent[usize::from(input.byte()) % rig.sent.len()].clone();
                let at = usize::from(input.u16()) % wire.len().max(1);
                let flip = input.byte().max(1);
                if let Some(b) = wire.get_mut(at) {
                    *b ^= flip;
                }
                rig.send(&wire);
            }
            _ => rig.now += u64::from(input.u16()),
        }
    }
});
