//! Serving a [`PassiveVoter`] on any `embedded-io` byte stream: sealed link frames in,
//! sealed answers out.

use alloc::vec::Vec;
use embedded_io::{Read, ReadReady, Write};

use super::{Envelope, PassiveVoter, Response, VoterStore};
use crate::link::Decoder;
use crate::link::auth::{AuthError, Inbound, PortSession, VoterAuth};

/// One byte stream to the voter (a UART wired to one host), with its frame decoder and the
/// session its host opened.
#[derive(Debug)]
pub struct VoterPort<P> {
    port: P,
    decoder: Decoder,
    session: PortSession,
    out: Vec<u8>,
    dropped: u32,
}

impl<P: Read + Write + ReadReady> VoterPort<P> {
    /// Serves requests arriving on `port`.
    pub fn new(port: P) -> Self {
        Self {
            port,
            decoder: Decoder::new(),
            session: PortSession::default(),
            out: Vec::new(),
            dropped: 0,
        }
    }

    /// Frames dropped so far as damaged (noise, corruption, resets mid-frame) or
    /// undecodable; forged and replayed ones are counted by [`VoterAuth::rejected`].
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Reads what has arrived (without blocking) and answers every whole, genuine and fresh
    /// request in it (and every hello, with a welcome). `now_ms` is read as each request is
    /// handled (a lease starts when its request is handled, never earlier: flash writes for
    /// earlier requests take time). Returns whether any byte arrived.
    pub fn poll<S: VoterStore>(
        &mut self,
        voter: &mut PassiveVoter<S>,
        auth: &mut VoterAuth,
        now_ms: &mut impl FnMut() -> u64,
    ) -> Result<bool, P::Error> {
        let mut any = false;
        let mut buf = [0u8; 64];
        while self.port.read_ready()? {
            let n = self.port.read(&mut buf)?;
            if n == 0 {
                break;
            }
            any = true;
            for &byte in &buf[..n] {
                let Some(frame) = self.decoder.feed(byte) else {
                    continue;
                };
                self.out.clear();
                let inbound = frame
                    .map_err(AuthError::from)
                    .and_then(|f| auth.receive(&mut self.session, f, &mut self.out));
                match inbound {
                    Ok(Inbound::Welcomed) => {}
                    Ok(Inbound::Call(Envelope { seq, body }, sealer)) => {
                        let mut body = voter.handle(now_ms(), &body);
                        if let Response::Status(status) = &mut body {
                            status.rejected = auth.rejected();
                        }
                        sealer.seal(Envelope { seq, body }, &mut self.out);
                    }
                    Err(e) => {
                        // Nothing to answer: the bridge times out and opens a new session.
                        if !e.is_rejection() {
                            self.dropped = self.dropped.wrapping_add(1);
                        }
                        continue;
                    }
                }
                self.port.write_all(&self.out)?;
                self.port.flush()?;
            }
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::auth::{ClusterKey, Handshake, HostSession};
    use crate::voter::{AppendOutcome, LeaderId, Persisted, Request, Vote};
    use alloc::collections::VecDeque;
    use core::convert::Infallible;

    const K: ClusterKey = ClusterKey::from_bytes([5; 32]);

    #[derive(Default)]
    struct Wire {
        rx: VecDeque<u8>,
        tx: Vec<u8>,
    }
    impl embedded_io::ErrorType for Wire {
        type Error = Infallible;
    }
    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.rx.len()).min(5);
            for b in &mut buf[..n] {
                *b = self.rx.pop_front().unwrap_or(0);
            }
            Ok(n)
        }
    }
    impl ReadReady for Wire {
        fn read_ready(&mut self) -> Result<bool, Infallible> {
            Ok(!self.rx.is_empty())
        }
    }
    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.tx.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    struct Mem;
    impl VoterStore for Mem {
        type Error = ();
        fn save(&mut self, _: &Persisted) -> Result<(), ()> {
            Ok(())
        }
        fn writes(&self) -> u32 {
            0
        }
    }

    /// A voter on one port, a host with a session to it, and the voter's clock.
    struct Rig {
        port: VoterPort<Wire>,
        voter: PassiveVoter<Mem>,
        auth: VoterAuth,
        host: HostSession,
        now: u64,
    }

    /// Feeds `wire` to the voter on `port`; returns the decoded frames it answered with.
    fn exchange(
        port: &mut VoterPort<Wire>,
        voter: &mut PassiveVoter<Mem>,
        auth: &mut VoterAuth,
        now: u64,
        wire: &[u8],
    ) -> Vec<Vec<u8>> {
        port.port.rx.extend(wire);
        assert_eq!(port.poll(voter, auth, &mut || now), Ok(true));
        frames(&core::mem::take(&mut port.port.tx))
    }

    fn handshake(
        port: &mut VoterPort<Wire>,
        voter: &mut PassiveVoter<Mem>,
        auth: &mut VoterAuth,
    ) -> HostSession {
        let hs = Handshake::new(&K, [9; 16]);
        let mut hello = Vec::new();
        hs.hello(&mut hello);
        let welcome = exchange(port, voter, auth, 0, &hello).pop();
        hs.finish(&welcome.expect("a welcome")).expect("welcome")
    }

    impl Rig {
        fn new() -> Self {
            let mut port = VoterPort::new(Wire::default());
            let mut voter = PassiveVoter::new(Persisted::default(), Mem);
            let mut auth = VoterAuth::new(&K, 1);
            let host = handshake(&mut port, &mut voter, &mut auth);
            Self {
                port,
                voter,
                auth,
                host,
                now: 0,
            }
        }

        fn reconnect(&mut self) {
            self.host = handshake(&mut self.port, &mut self.voter, &mut self.auth);
        }

        fn send(&mut self, wire: &[u8]) -> Vec<Vec<u8>> {
            exchange(
                &mut self.port,
                &mut self.voter,
                &mut self.auth,
                self.now,
                wire,
            )
        }

        /// A sealed call and its sequence number.
        fn seal(&mut self, request: Request) -> (Vec<u8>, u32) {
            let mut wire = Vec::new();
            let seq = self.host.call(request, &mut wire).expect("seq");
            (wire, seq)
        }

        fn call(&mut self, request: Request) -> Response {
            let (wire, seq) = self.seal(request);
            let answer = self.send(&wire).pop().expect("an answer");
            self.host.answer(&answer, seq).expect("genuine answer")
        }
    }

    fn frames(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut d = crate::link::Decoder::new();
        let mut got = Vec::new();
        for &b in wire {
            if let Some(Ok(f)) = d.feed(b) {
                got.push(f.to_vec());
            }
        }
        got
    }

    fn committed(term: u64) -> Vote {
        Vote {
            leader: LeaderId { term, node: 1 },
            committed: true,
        }
    }

    fn heartbeat(vote: Vote, lease_ms: u32) -> Request {
        Request::Append {
            vote,
            prev: None,
            runs: Vec::new(),
            commit: None,
            lease_ms,
        }
    }

    fn candidate(term: u64) -> Request {
        Request::Vote {
            vote: Vote {
                leader: LeaderId { term, node: 2 },
                committed: false,
            },
            last: None,
            transfer: false,
        }
    }

    #[test]
    fn answers_sealed_requests_and_skips_garbage() {
        let mut rig = Rig::new();
        let (good, seq) = rig.seal(Request::Status);
        let mut wire = vec![0x13, 0x37, 0xFF, 1, 2];
        let mut bad = good.clone();
        bad[3] ^= 0x01;
        wire.extend(bad);
        wire.extend(good);
        let answers = rig.send(&wire);
        // The noise, and the corrupted copy (one frame, or two if the flip hit a COBS code).
        assert!(rig.port.dropped() >= 2, "{}", rig.port.dropped());
        assert_eq!(rig.auth.rejected(), 0, "damage is not forgery");
        assert_eq!(answers.len(), 1);
        let status = rig.host.answer(&answers[0], seq).expect("answer");
        assert!(matches!(status, Response::Status(s) if s.vote == Vote::default()));
        let now = rig.now;
        let polled = rig.port.poll(&mut rig.voter, &mut rig.auth, &mut || now);
        assert_eq!(polled, Ok(false));
    }

    #[test]
    fn a_replayed_call_changes_neither_vote_nor_lease() {
        let mut rig = Rig::new();
        // The leader of term 2 takes a 1 s lease at t=0: a captured heartbeat.
        let (captured, _) = rig.seal(heartbeat(committed(2), 1000));
        assert_eq!(rig.send(&captured).len(), 1);
        // Term 3's candidate asks once the lease ran out and is granted.
        rig.now = 2000;
        let granted = rig.call(candidate(3));
        assert!(
            matches!(granted, Response::Vote { granted: true, .. }),
            "{granted:?}"
        );
        let before = rig.voter.state().clone();
        // The heartbeat replayed (same number, then a lower one among a newer call's) would
        // restart term 2's lease and be answered HigherVote; it is dropped unanswered.
        assert!(rig.send(&captured).is_empty());
        let (newer, _) = rig.seal(Request::Status);
        rig.send(&newer);
        assert!(rig.send(&captured).is_empty());
        assert_eq!(rig.voter.state(), &before);
        // No lease was restarted: another candidate of a higher term still gets the vote.
        let granted = rig.call(candidate(4));
        assert!(
            matches!(granted, Response::Vote { granted: true, .. }),
            "{granted:?}"
        );
        let Response::Status(status) = rig.call(Request::Status) else {
            panic!("status")
        };
        assert_eq!(status.rejected, 2);
        assert_eq!(rig.port.dropped(), 0);
    }

    #[test]
    fn a_forged_append_with_a_higher_vote_changes_nothing() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.call(heartbeat(committed(2), 0)),
            Response::Append(AppendOutcome::Success)
        );
        let before = rig.voter.state().clone();
        let forged = crate::link::auth::ToVoter::Call(Envelope {
            seq: 1000,
            body: heartbeat(committed(9), 0),
        });
        let mut body = postcard::to_allocvec(&forged).expect("encode");
        body.extend_from_slice(&[0; 16]);
        let mut wire = Vec::new();
        crate::link::frame(&body, &mut wire);
        assert!(rig.send(&wire).is_empty());
        assert_eq!(rig.voter.state(), &before);
        assert_eq!(rig.auth.rejected(), 1);
        // A new session on the same port (a host reconnecting) works as before.
        rig.reconnect();
        assert_eq!(
            rig.call(heartbeat(committed(2), 0)),
            Response::Append(AppendOutcome::Success)
        );
    }
}
