//! The host side of a passive voter's link, against a voter on a real TCP socket that
//! misbehaves as a serial line can (noise before an answer, a stale answer, a reset,
//! silence) and as a forger on the line would (an answer with the right number and a bad
//! tag), and against a voter holding another cluster key.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use wraft_core::link::auth::{ClusterKey, FromVoter, Handshake, Inbound, PortSession, VoterAuth};
use wraft_core::link::{self, Decoder};
use wraft_core::voter::{
    Envelope, PassiveVoter, Persisted, Refusal, Request, Response, VoterStore,
};
use wraft_host::voter::{LinkAddr, VoterLink, VoterLinkError};

const KEY: ClusterKey = ClusterKey::from_bytes([0x5A; 32]);

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

/// What the fake voter does with the n-th call it reads (hellos are always welcomed).
#[derive(Clone, Copy)]
enum Misbehave {
    /// Answer with line noise and a stale answer (wrong sequence number) first.
    NoiseThenAnswer,
    /// Answer first with frames a forger on the line could send: the right sequence number
    /// and a refusal, under a tag of zeros, and the same sealed in another session.
    ForgedThenAnswer,
    /// Close the connection without answering.
    Reset,
    /// Never answer.
    Silence,
    /// Answer properly.
    Answer,
}

/// `msg` as a frame with a tag of zeros.
fn forged(msg: &FromVoter, out: &mut Vec<u8>) {
    let mut body = postcard::to_allocvec(msg).expect("encode");
    body.extend_from_slice(&[0; 16]);
    link::frame(&body, out);
}

/// The first decoded frame in `wire`.
fn first_frame(wire: &[u8]) -> Vec<u8> {
    let mut decoder = Decoder::new();
    for &b in wire {
        if let Some(Ok(body)) = decoder.feed(b) {
            return body.to_vec();
        }
    }
    panic!("no frame")
}

/// `answer` sealed in a session of another connection, with its sequence number: what a
/// forger who recorded an earlier session could replay.
fn in_another_session(answer: Envelope<Response>) -> Vec<u8> {
    let mut auth = VoterAuth::new(&KEY, 9);
    let mut port = PortSession::default();
    let handshake = Handshake::new(&KEY, [3; 16]);
    let (mut hello, mut welcome) = (Vec::new(), Vec::new());
    handshake.hello(&mut hello);
    let _ = auth.receive(&mut port, &first_frame(&hello), &mut welcome);
    let mut session = handshake.finish(&first_frame(&welcome)).expect("welcome");
    let mut call = Vec::new();
    loop {
        call.clear();
        if session.call(Request::Status, &mut call).expect("seq") == answer.seq {
            break;
        }
    }
    let mut wire = Vec::new();
    match auth.receive(&mut port, &first_frame(&call), &mut Vec::new()) {
        Ok(Inbound::Call(c, sealer)) if c.seq == answer.seq => sealer.seal(answer, &mut wire),
        other => panic!("{other:?}"),
    }
    wire
}

/// Serves `script` (one entry per call, over as many connections and sessions as it takes)
/// and returns how many connections it accepted.
fn fake_voter(script: Vec<Misbehave>) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let mut voter = PassiveVoter::new(Persisted::default(), Mem);
        let mut auth = VoterAuth::new(&KEY, 1);
        let mut script = script.into_iter();
        let mut connections = 0;
        'accept: while let Ok((mut stream, _)) = listener.accept() {
            connections += 1;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut decoder = Decoder::new();
            let mut session = PortSession::default();
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
                    let mut out = Vec::new();
                    let inbound = auth.receive(&mut session, body, &mut out);
                    let (call, sealer) = match inbound.expect("a genuine frame") {
                        Inbound::Welcomed => {
                            stream.write_all(&out).expect("welcome");
                            continue;
                        }
                        Inbound::Call(call, sealer) => (call, sealer),
                    };
                    let Some(step) = script.next() else {
                        return connections;
                    };
                    let seq = call.seq;
                    let answer = voter.handle(0, &call.body);
                    match step {
                        Misbehave::NoiseThenAnswer => {
                            out.extend_from_slice(&[0x42, 0x00, 0x13, 0x37, 0x99]);
                            let stale = Response::Snapshot {
                                vote: Default::default(),
                            };
                            sealer.seal(
                                Envelope {
                                    seq: seq - 1,
                                    body: stale,
                                },
                                &mut out,
                            );
                            sealer.seal(Envelope { seq, body: answer }, &mut out);
                        }
                        Misbehave::ForgedThenAnswer => {
                            let refusal = Envelope {
                                seq,
                                body: Response::Refused(Refusal::Invalid),
                            };
                            forged(&FromVoter::Answer(refusal.clone()), &mut out);
                            out.extend(in_another_session(refusal));
                            sealer.seal(Envelope { seq, body: answer }, &mut out);
                        }
                        Misbehave::Answer => sealer.seal(Envelope { seq, body: answer }, &mut out),
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
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")), KEY);
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
fn a_forged_answer_with_the_right_number_is_skipped() {
    use Misbehave::*;
    let (port, server) = fake_voter(vec![Answer, ForgedThenAnswer, ForgedThenAnswer]);
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")), KEY);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ttl = Duration::from_millis(1500);
        for _ in 0..3 {
            // The forged refusals come first; the genuine status after them is the answer.
            let r = link.call(Request::Status, ttl).await;
            assert!(status(r), "a forged answer was taken");
        }
    });
    drop(link);
    assert_eq!(
        server.join().expect("server"),
        1,
        "nothing broke the session"
    );
}

#[test]
fn a_voter_with_another_key_never_opens_a_session() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let voter = std::thread::spawn(move || {
        let mut auth = VoterAuth::new(&KEY, 1);
        let (mut stream, _) = listener.accept().expect("accept");
        let (mut decoder, mut session, mut buf) =
            (Decoder::new(), PortSession::default(), [0u8; 64]);
        let mut answered = 0;
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            for &b in &buf[..n] {
                if let Some(Ok(body)) = decoder.feed(b) {
                    let mut out = Vec::new();
                    if auth.receive(&mut session, body, &mut out).is_ok() {
                        answered += 1;
                    }
                    assert!(out.is_empty(), "nothing is sent to a stranger");
                }
            }
        }
        (auth.rejected(), answered)
    });
    let other = ClusterKey::from_bytes([0xA5; 32]);
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")), other);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(link.call(Request::Status, Duration::from_millis(500)));
    assert!(matches!(r, Err(VoterLinkError::Handshake { .. })), "{r:?}");
    drop(link);
    let (rejected, answered) = voter.join().expect("voter");
    assert_eq!((rejected, answered), (1, 0), "its hello was refused");
}

#[test]
fn a_voter_link_to_nothing_is_an_open_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let link = VoterLink::new(LinkAddr::Tcp(format!("127.0.0.1:{port}")), KEY);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(link.call(Request::Status, Duration::from_secs(2)));
    assert!(matches!(r, Err(VoterLinkError::Open { .. })), "{r:?}");
}

/// A pseudo-terminal in raw mode: (master, path of the slave device, the slave fd kept open
/// so the line does not hang up between the link's opens).
fn raw_pty() -> (std::fs::File, std::path::PathBuf, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the locals; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `slave` is an open terminal fd and `t` a valid termios.
    unsafe {
        assert_eq!(libc::tcgetattr(slave, &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0);
    }
    // ttyname_r, not ttyname: tests run in parallel and ttyname shares one buffer.
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `slave` is an open terminal fd; `name` is writable for its length.
    let rc = unsafe { libc::ttyname_r(slave, name.as_mut_ptr(), name.len()) };
    assert_eq!(rc, 0, "ttyname_r");
    // SAFETY: ttyname_r wrote a NUL-terminated name into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: both fds were just opened by openpty and are owned by nothing else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    (master, path.into(), slave)
}

/// A voter on the master side of a pty: reads `calls` calls (hellos are always welcomed),
/// answers all but the first `silent` of them, then hands back its state and the master
/// (closing the master at once would hang up the line before the last answer is read).
fn pty_voter(
    mut master: std::fs::File,
    calls: usize,
    silent: usize,
) -> std::thread::JoinHandle<(Persisted, std::fs::File)> {
    std::thread::spawn(move || {
        let mut voter = PassiveVoter::new(Persisted::default(), Mem);
        let mut auth = VoterAuth::new(&KEY, 1);
        let mut session = PortSession::default();
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 64];
        let mut seen = 0;
        while seen < calls {
            let n = master.read(&mut buf).expect("read the line");
            for &b in &buf[..n] {
                let Some(Ok(body)) = decoder.feed(b) else {
                    continue;
                };
                let mut out = Vec::new();
                match auth.receive(&mut session, body, &mut out).expect("genuine") {
                    Inbound::Welcomed => {}
                    Inbound::Call(call, sealer) => {
                        seen += 1;
                        if seen <= silent {
                            continue;
                        }
                        let body = voter.handle(0, &call.body);
                        sealer.seal(
                            Envelope {
                                seq: call.seq,
                                body,
                            },
                            &mut out,
                        );
                    }
                }
                master.write_all(&out).expect("answer");
            }
        }
        (voter.state().clone(), master)
    })
}

#[test]
fn a_voter_link_over_a_serial_device() {
    use wraft_core::voter::{AppendOutcome, LeaderId, Run, Vote};
    let (master, path, _slave) = raw_pty();
    let voter = pty_voter(master, 3, 0);
    let link = VoterLink::new(LinkAddr::Device(path), KEY);
    let leader = LeaderId { term: 3, node: 1 };
    let vote = Vote {
        leader,
        committed: true,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ttl = Duration::from_secs(5);
        assert!(status(link.call(Request::Status, ttl).await));
        // Bytes a terminal would translate (CR, NL, XON/XOFF, 0x00, 0xFF) pass unchanged in
        // raw mode: a run count of 0x0D0A and a term of 0x11_13_FF.
        let append = Request::Append {
            vote,
            prev: None,
            runs: vec![Run {
                leader,
                count: 0x0D0A,
            }],
            commit: None,
            lease_ms: 0x11_13_FF,
        };
        let r = link.call(append, ttl).await;
        assert!(
            matches!(r, Ok(Response::Append(AppendOutcome::Success))),
            "{r:?}"
        );
        assert!(status(link.call(Request::Status, ttl).await));
    });
    let (state, _master) = voter.join().expect("voter");
    assert_eq!(state.vote, vote);
    assert_eq!(state.last().map(|l| l.index), Some(0x0D0A - 1));
}

#[test]
fn a_silent_voter_on_a_serial_device_costs_one_call_not_the_next() {
    let (master, path, _slave) = raw_pty();
    let voter = pty_voter(master, 3, 1);
    let link = VoterLink::new(LinkAddr::Device(path), KEY);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let silent = link.call(Request::Status, Duration::from_millis(300)).await;
        assert!(
            matches!(silent, Err(VoterLinkError::Timeout { .. })),
            "{silent:?}"
        );
        for _ in 0..2 {
            let r = link.call(Request::Status, Duration::from_secs(5)).await;
            assert!(matches!(r, Ok(Response::Status(_))), "{r:?}");
        }
    });
    drop(voter.join().expect("voter"));
}

#[test]
fn a_node_with_a_voter_link_but_no_key_refuses_to_start() {
    use wraft_host::cluster::{ClusterNode, NodeConfig, NodeError};
    let dir = tempfile::tempdir().expect("tmp");
    let certs = crate::processes::certs_for(dir.path(), &[1]).expect("certs");
    let mut config = NodeConfig::new(
        1,
        dir.path().join("node-1"),
        "127.0.0.1:0".parse().expect("addr"),
        crate::processes::identity(&certs, "node-1"),
    );
    config
        .voter_links
        .insert(3, LinkAddr::Tcp("127.0.0.1:9".into()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let started = rt.block_on(ClusterNode::start(config));
    assert!(
        matches!(started, Err(NodeError::NoVoterKey)),
        "{:?}",
        started.err()
    );
}
