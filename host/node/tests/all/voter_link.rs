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

/// A voter on the master side of a pty: reads `requests` requests, answers all but the first
/// `silent` of them, then hands back its state and the master (closing the master at once
/// would hang up the line before the last answer is read).
fn pty_voter(
    mut master: std::fs::File,
    requests: usize,
    silent: usize,
) -> std::thread::JoinHandle<(Persisted, std::fs::File)> {
    std::thread::spawn(move || {
        let mut voter = PassiveVoter::new(Persisted::default(), Mem);
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 64];
        let mut seen = 0;
        while seen < requests {
            let n = master.read(&mut buf).expect("read the line");
            for &b in &buf[..n] {
                let Some(Ok(body)) = decoder.feed(b) else {
                    continue;
                };
                seen += 1;
                if seen <= silent {
                    continue;
                }
                let req: Envelope<Request> = link::decode(body).expect("request");
                let answer = Envelope {
                    seq: req.seq,
                    body: voter.handle(0, &req.body),
                };
                let mut out = Vec::new();
                link::encode(&answer, &mut out);
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
    let link = VoterLink::new(LinkAddr::Device(path));
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
    let link = VoterLink::new(LinkAddr::Device(path));
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
