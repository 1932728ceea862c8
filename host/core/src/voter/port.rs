//! Serving a [`PassiveVoter`] on any `embedded-io` byte stream: link frames in, answers out.

use alloc::vec::Vec;
use embedded_io::{Read, ReadReady, Write};

use super::{Envelope, PassiveVoter, Request, VoterStore};
use crate::link::{self, Decoder};

/// One byte stream to the voter (a UART wired to one host), with its frame decoder.
#[derive(Debug)]
pub struct VoterPort<P> {
    port: P,
    decoder: Decoder,
    out: Vec<u8>,
    dropped: u32,
}

impl<P: Read + Write + ReadReady> VoterPort<P> {
    /// Serves requests arriving on `port`.
    pub fn new(port: P) -> Self {
        Self {
            port,
            decoder: Decoder::new(),
            out: Vec::new(),
            dropped: 0,
        }
    }

    /// Frames dropped so far (noise, corruption, resets mid-frame, undecodable requests).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Reads what has arrived (without blocking) and answers every whole request in it.
    /// `now_ms` is read as each request is handled (a lease starts when its request is
    /// handled, never earlier: flash writes for earlier requests take time). Returns whether
    /// any byte arrived.
    pub fn poll<S: VoterStore>(
        &mut self,
        voter: &mut PassiveVoter<S>,
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
                let request = match self.decoder.feed(byte) {
                    None => continue,
                    Some(frame) => frame.and_then(link::decode::<Envelope<Request>>),
                };
                let Ok(Envelope { seq, body }) = request else {
                    // The bridge times out and resends; nothing to answer a garbled frame with.
                    self.dropped = self.dropped.wrapping_add(1);
                    continue;
                };
                let body = voter.handle(now_ms(), &body);
                self.out.clear();
                link::encode(&Envelope { seq, body }, &mut self.out);
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
    use crate::voter::{Persisted, Response, Vote};
    use alloc::collections::VecDeque;
    use core::convert::Infallible;

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

    #[test]
    fn answers_each_request_with_its_sequence_number_and_skips_garbage() {
        let mut wire = Wire::default();
        wire.rx.extend([0x13, 0x37, 0xFF, 1, 2]);
        let mut good = Vec::new();
        link::encode(
            &Envelope {
                seq: 7,
                body: Request::Status,
            },
            &mut good,
        );
        let mut bad = good.clone();
        bad[3] ^= 0x01;
        wire.rx.extend(bad);
        wire.rx.extend(good);
        let mut port = VoterPort::new(wire);
        let mut voter = PassiveVoter::new(Persisted::default(), Mem);
        assert_eq!(port.poll(&mut voter, &mut || 0), Ok(true));
        assert_eq!(port.dropped(), 2, "the noise and the corrupted copy");
        let mut d = Decoder::new();
        let answers: Vec<Envelope<Response>> = port
            .port
            .tx
            .iter()
            .filter_map(|&b| d.feed(b).map(|f| f.and_then(link::decode)))
            .collect::<Result<_, _>>()
            .expect("answers decode");
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].seq, 7);
        assert!(matches!(&answers[0].body, Response::Status(s) if s.vote == Vote::default()));
        assert_eq!(port.poll(&mut voter, &mut || 0), Ok(false));
    }
}
