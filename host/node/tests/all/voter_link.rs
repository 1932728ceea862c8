//! The host side of a passive voter's link, against a voter on a real TCP socket that
//! misbehaves as a serial line can: noise before an answer, a stale answer, a reset, silence.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use wraft_core::link::{self, Decoder};
use wraft_core::voter::{Envelope, PassiveVoter, Persisted, Request, Response, VoterStore};
use wraft_host::voter::{LinkAddr, VoterLink, VoterLinkError};

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

/// What the fake voter does with the n-th request it reads.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Answer with line noise and a stale answer (wrong sequence number) first.
    NoiseThenAnswer,
    /// Close the connection without answering.
    Reset,
    /// Never answer.
    Silence,
    /// Answer properly.
    Answer,
}

/// Serves `script` (one entry per request, over as many connections as it takes) and
/// returns how many connections it accepted.
fn fake_voter(script: Vec<Misbehave>) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let mut voter = PassiveVoter::new(Persisted::default(), Mem);
        let mut script = script.into_iter();
        let mut connections = 0;
        'accept: while let Ok((mut stream, _)) = listener.accept() {
            connections += 1;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut decoder = Decoder::new();
            let mut buf = [0u8; 64];
            loop {
                let Ok(n) = stream.read(&mut buf) else {
                    continue 'accept;
                };
                if n == 0 {
                    continue 'accept;
                }
                for &b in &buf[..n] {
                    let Some(Ok(body)) = decoder.feed(b) else {
                        continue;
                    };
                    let req: Envelope<Request> = link::decode(body).expect("request decodes");
                    let Some(step) = script.next() else {
                        return connections;
                    };
                    let answer = Envelope {
                        seq: req.seq,
                        body: voter.handle(0, &req.body),
                    };
                    let mut out = Vec::new();
                    match step {
                        Misbehave::NoiseThenAnswer => {
                            out.extend_from_slice(&[0x42, 0x00, 0x13, 0x37, 0x99]);
                            let stale = Envelope {
                                seq: req.seq.wrapping_sub(1),
                                body: Response::Snapshot {
                                    vote: Default::default(),
                                },
                            };
                            link::encode(&stale, &mut out);
                            link::encode(&answer, &mut out);
                        }
                        Misbehave::Answer => link::encode(&answer, &mut out),
                        Misbehave::Reset => continue 'accept,
                        Misbehave::Silence => {}
                    }
                    let _ = stream.write_all(&out);
                    if script.len() == 0 {
                        return connections;
                    }
                }
            }
        }
        connections
    });
    (port, handle)
}

fn status(r: Result<Response, VoterLinkError>) -> bool {
    matches!(r, Ok(Response::Status(_)))
}

#[test]
fn a_voter_link_skips_noise_and_stale_answers_and_reopens_after_a_reset_or_silence() {
    use Misbehave::*;
    let (port, server) = fake_voter(vec![NoiseThenAnswer, Reset, Answer, Silence, Answer]);
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ttl = Duration::from_millis(1500);
        assert!(status(link.call(Request::Status, ttl).await));
        // The voter resets: the call fails, the next one reconnects.
        let reset = link.call(Request::Status, ttl).await;
        assert!(matches!(reset, Err(VoterLinkError::Io { .. })), "{reset:?}");
        assert!(status(link.call(Request::Status, ttl).await));
        let silent = link.call(Request::Status, Duration::from_millis(300)).await;
        assert!(
            matches!(silent, Err(VoterLinkError::Timeout { .. })),
            "{silent:?}"
        );
        assert!(status(link.call(Request::Status, ttl).await));
    });
    drop(link);
    let connections = server.join().expect("server");
    assert_eq!(connections, 3, "one per failure, plus the first");
}

#[test]
fn a_voter_link_to_nothing_is_an_open_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(link.call(Request::Status, Duration::from_secs(2)));
    assert!(matches!(r, Err(VoterLinkError::Open { .. })), "{r:?}");
}
