use super::*;
use crate::link::{Decoder, frame};
use crate::voter::{Status, Vote};
use alloc::vec;
use proptest::prelude::*;

const K: ClusterKey = ClusterKey::from_bytes([7; KEY_LEN]);
const OTHER: ClusterKey = ClusterKey::from_bytes([8; KEY_LEN]);

/// The decoded frames (COBS undone, CRC still on) in `wire`.
fn frames(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for &b in wire {
        if let Some(f) = d.feed(b) {
            got.push(f.expect("whole frame").to_vec());
        }
    }
    got
}

fn one(wire: &[u8]) -> Vec<u8> {
    let mut f = frames(wire);
    assert_eq!(f.len(), 1, "one frame");
    f.remove(0)
}

/// Re-frames a decoded frame after `change` edits its tagged body (message and tag), with
/// a fresh CRC: what a forger who knows the format but not the key can send.
fn tamper(decoded: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = unframe(decoded).expect("crc").to_vec();
    change(&mut body);
    let mut wire = Vec::new();
    frame(&body, &mut wire);
    one(&wire)
}

/// A message with a tag of zeros, as a forger without the key seals it.
fn forged<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut body = postcard::to_allocvec(msg).expect("encode");
    body.extend_from_slice(&[0; TAG_LEN]);
    let mut wire = Vec::new();
    frame(&body, &mut wire);
    one(&wire)
}

/// A host and a voter port with a session between them.
struct Pair {
    voter: VoterAuth,
    port: PortSession,
    host: HostSession,
}

fn handshake(voter: &mut VoterAuth, port: &mut PortSession, key: &ClusterKey) -> HostSession {
    let hs = Handshake::new(key, [0x11; 16]);
    let mut hello = Vec::new();
    hs.hello(&mut hello);
    let mut welcome = Vec::new();
    let inbound = voter.receive(port, &one(&hello), &mut welcome);
    assert!(matches!(inbound, Ok(Inbound::Welcomed)), "{inbound:?}");
    hs.finish(&one(&welcome)).expect("welcome")
}

fn pair() -> Pair {
    let mut voter = VoterAuth::new(&K, 3);
    let mut port = PortSession::default();
    let host = handshake(&mut voter, &mut port, &K);
    Pair { voter, port, host }
}

impl Pair {
    /// A sealed call (decoded frame) and its sequence number.
    fn call(&mut self, request: Request) -> (Vec<u8>, u32) {
        let mut wire = Vec::new();
        let seq = self.host.call(request, &mut wire).expect("seq");
        (one(&wire), seq)
    }

    /// What the voter makes of `decoded`; a call is answered with a `Status`.
    fn deliver(&mut self, decoded: &[u8]) -> Result<(Envelope<Request>, Vec<u8>), AuthError> {
        let mut out = Vec::new();
        match self.voter.receive(&mut self.port, decoded, &mut out)? {
            Inbound::Call(call, sealer) => {
                let body = Response::Status(status());
                sealer.seal(
                    Envelope {
                        seq: call.seq,
                        body,
                    },
                    &mut out,
                );
                Ok((call, one(&out)))
            }
            Inbound::Welcomed => panic!("a welcome"),
        }
    }
}

fn status() -> Status {
    Status {
        vote: Vote::default(),
        last: None,
        committed: None,
        tail_runs: 0,
        boots: 3,
        writes: 9,
        rejected: 0,
    }
}

#[test]
fn a_sealed_call_and_its_answer_round_trip() {
    let mut p = pair();
    for _ in 0..3 {
        let (call, seq) = p.call(Request::Status);
        let (got, answer) = p.deliver(&call).expect("call accepted");
        assert_eq!(got.seq, seq);
        assert_eq!(got.body, Request::Status);
        assert_eq!(p.host.answer(&answer, seq), Ok(Response::Status(status())));
        // An answer is only the answer to its own call.
        assert_eq!(p.host.answer(&answer, seq + 1), Err(AuthError::Stale(seq)));
    }
    assert_eq!(p.voter.rejected(), 0);
}

#[test]
fn a_bit_flip_in_tag_or_body_is_refused() {
    let mut p = pair();
    let (call, seq) = p.call(Request::Status);
    let len = unframe(&call).expect("crc").len();
    for at in 0..len {
        for bit in [0x01, 0x80] {
            let bad = tamper(&call, |b| b[at] ^= bit);
            assert_eq!(p.deliver(&bad).err(), Some(AuthError::BadTag), "byte {at}");
        }
    }
    assert_eq!(p.voter.rejected(), 2 * len as u32);
    // The genuine call still goes through: nothing was consumed by the forgeries.
    let (_, answer) = p.deliver(&call).expect("genuine call");
    let bad = tamper(&answer, |b| b[0] ^= 1);
    assert_eq!(p.host.answer(&bad, seq), Err(AuthError::Unexpected));
    let bad = tamper(&answer, |b| *b.last_mut().expect("tag") ^= 1);
    assert_eq!(p.host.answer(&bad, seq), Err(AuthError::BadTag));
    assert!(p.host.answer(&answer, seq).is_ok());
    // Line noise is a CRC failure, not a rejection.
    let mut noisy = call.clone();
    noisy[2] ^= 4;
    assert!(matches!(p.deliver(&noisy), Err(AuthError::Link(_))));
    assert_eq!(p.voter.rejected(), 2 * len as u32);
}

#[test]
fn a_zero_tag_or_another_key_is_refused() {
    let mut voter = VoterAuth::new(&K, 1);
    let mut port = PortSession::default();
    let hs = Handshake::new(&OTHER, [1; 16]);
    let mut hello = Vec::new();
    hs.hello(&mut hello);
    let mut out = Vec::new();
    let got = voter.receive(&mut port, &one(&hello), &mut out);
    assert_eq!(got.err(), Some(AuthError::BadTag));
    let zero = forged(&ToVoter::Hello {
        ver: VERSION,
        host_nonce: [1; 16],
    });
    let got = voter.receive(&mut port, &zero, &mut out);
    assert_eq!(got.err(), Some(AuthError::BadTag));
    assert!(out.is_empty(), "no welcome");
    assert_eq!(voter.rejected(), 2);
    // A welcome under another key is refused by the host too.
    let mut hello = Vec::new();
    Handshake::new(&K, [1; 16]).hello(&mut hello);
    let mut welcome = Vec::new();
    let mut real = PortSession::default();
    let got = voter.receive(&mut real, &one(&hello), &mut welcome);
    assert!(got.is_ok());
    assert_eq!(hs.finish(&one(&welcome)).err(), Some(AuthError::BadTag));
}

#[test]
fn a_call_before_any_hello_is_dropped() {
    let mut p = pair();
    let (call, _) = p.call(Request::Status);
    let mut fresh = PortSession::default();
    let mut out = Vec::new();
    let got = p.voter.receive(&mut fresh, &call, &mut out);
    assert_eq!(got.err(), Some(AuthError::NoSession));
    let zero = forged(&ToVoter::Call(Envelope {
        seq: 1,
        body: Request::Status,
    }));
    let got = p.voter.receive(&mut fresh, &zero, &mut out);
    assert_eq!(got.err(), Some(AuthError::NoSession));
    assert!(out.is_empty());
    assert_eq!(p.voter.rejected(), 2);
}

#[test]
fn a_replayed_call_is_dropped_in_its_session() {
    let mut p = pair();
    let (first, _) = p.call(Request::Status);
    let (second, _) = p.call(Request::Status);
    p.deliver(&first).expect("first");
    p.deliver(&second).expect("second");
    assert_eq!(
        p.deliver(&second).err(),
        Some(AuthError::Replayed { seq: 2, last: 2 })
    );
    assert_eq!(
        p.deliver(&first).err(),
        Some(AuthError::Replayed { seq: 1, last: 2 })
    );
    assert_eq!(p.voter.rejected(), 2);
}

#[test]
fn a_call_from_an_earlier_session_is_dropped_after_a_new_hello() {
    let mut p = pair();
    let (old, _) = p.call(Request::Status);
    let (unsent, _) = p.call(Request::Status);
    p.deliver(&old).expect("in its session");
    let mut host = handshake(&mut p.voter, &mut p.port, &K);
    assert_ne!(host.voter_nonce(), p.host.voter_nonce());
    // Numbers start again in the new session, but the old calls' tags are the old session's.
    assert_eq!(p.deliver(&old).err(), Some(AuthError::BadTag));
    assert_eq!(p.deliver(&unsent).err(), Some(AuthError::BadTag));
    let mut wire = Vec::new();
    let seq = host.call(Request::Status, &mut wire).expect("seq");
    assert_eq!(seq, 1);
    p.deliver(&one(&wire)).expect("the new session's call");
}

#[test]
fn the_host_takes_only_the_welcome_to_its_own_hello() {
    let mut voter = VoterAuth::new(&K, 1);
    let mut port = PortSession::default();
    let (mine, theirs) = (Handshake::new(&K, [1; 16]), Handshake::new(&K, [2; 16]));
    let mut hello = Vec::new();
    theirs.hello(&mut hello);
    let mut welcome = Vec::new();
    assert!(voter.receive(&mut port, &one(&hello), &mut welcome).is_ok());
    let welcome = one(&welcome);
    assert_eq!(mine.finish(&welcome).err(), Some(AuthError::OtherNonce));
    assert!(theirs.finish(&welcome).is_ok());
    // An answer is not a welcome.
    let mut p = pair();
    let (call, _) = p.call(Request::Status);
    let (_, answer) = p.deliver(&call).expect("call");
    assert_eq!(mine.finish(&answer).err(), Some(AuthError::Unexpected));
}

#[test]
fn another_version_is_refused_by_both_sides() {
    let mut voter = VoterAuth::new(&K, 1);
    let key = K.mac_key();
    let mut wire = Vec::new();
    seal(
        &ToVoter::Hello {
            ver: VERSION + 1,
            host_nonce: [0; 16],
        },
        &key,
        HELLO,
        &mut wire,
    );
    let mut out = Vec::new();
    let mut port = PortSession::default();
    let got = voter.receive(&mut port, &one(&wire), &mut out);
    assert_eq!(got.err(), Some(AuthError::Version(VERSION + 1)));
    assert_eq!(voter.rejected(), 0, "genuine, only another version");
}

#[test]
fn voter_nonces_count_sessions_this_boot() {
    let mut voter = VoterAuth::new(&K, 0x0102_0304);
    let mut port = PortSession::default();
    let a = handshake(&mut voter, &mut port, &K).voter_nonce();
    let b = handshake(&mut voter, &mut PortSession::default(), &K).voter_nonce();
    assert_eq!(a, [4, 3, 2, 1, 1, 0, 0, 0]);
    assert_eq!(b, [4, 3, 2, 1, 2, 0, 0, 0]);
}

#[test]
fn the_host_opens_a_new_session_when_numbers_run_out() {
    let mut p = pair();
    p.host.seq = u32::MAX - 1;
    let (call, seq) = p.call(Request::Status);
    assert_eq!(seq, u32::MAX);
    assert!(p.host.exhausted());
    p.deliver(&call).expect("the last number");
    let mut out = Vec::new();
    assert_eq!(
        p.host.call(Request::Status, &mut out),
        Err(AuthError::Exhausted)
    );
    assert!(out.is_empty());
}

#[test]
fn the_key_does_not_show_in_debug_output() {
    let shown = alloc::format!("{K:?} {:?}", VoterAuth::new(&K, 1));
    assert!(!shown.contains('7'), "{shown}");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_sealed_decoders(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut p = pair();
        let hs = Handshake::new(&K, [0x11; 16]);
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in bytes {
            if let Some(Ok(body)) = d.feed(b) {
                prop_assert!(p.voter.receive(&mut p.port, body, &mut out).is_err());
                prop_assert!(hs.finish(body).is_err());
                prop_assert!(p.host.answer(body, 1).is_err());
            }
        }
    }

    #[test]
    fn arbitrary_bodies_with_a_valid_crc_are_refused_not_misread(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        first in 0u8..3,
    ) {
        let mut p = pair();
        let mut body = body;
        if let Some(b) = body.first_mut() {
            *b = first;
        }
        let mut wire = Vec::new();
        frame(&body, &mut wire);
        let decoded = one(&wire);
        let mut out = Vec::new();
        let got = p.voter.receive(&mut p.port, &decoded, &mut out).err();
        prop_assert!(matches!(got, Some(AuthError::BadTag)), "{:?}", got);
        prop_assert!(p.host.answer(&decoded, 1).is_err());
    }

    #[test]
    fn a_sealed_call_survives_garbage_before_it(
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut p = pair();
        let mut wire = garbage;
        let seq = p.host.call(Request::Status, &mut wire).expect("seq");
        let mut d = Decoder::new();
        let mut calls = vec![];
        for &b in &wire {
            if let Some(Ok(body)) = d.feed(b) {
                let body = body.to_vec();
                if let Ok((call, _)) = p.deliver(&body) {
                    calls.push(call.seq);
                }
            }
        }
        prop_assert_eq!(calls, vec![seq]);
    }
}
