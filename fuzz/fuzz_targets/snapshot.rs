//! Snapshot files as a node receives them from a leader or finds them on disk: the trailer
//! (`sha256 | length | "WRAFTSN1"`) checked by `verify_snapshot_file`, and the postcard
//! `SnapshotMeta` beside it (`<name>.meta`, and the `Request::Snapshot` header).
//!
//! Any file verifies only if its trailer is right; a file sealed as a node seals it always
//! verifies, with its length; one changed byte anywhere makes it fail.
#![no_main]

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use wraft_core::raft::SnapshotMeta;
use wraft_fuzz::{Input, round_trip};
use wraft_host::raft::verify_snapshot_file;

const TRAILER_LEN: usize = 48;

/// One scratch file per process.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("wraft-fuzz-snapshot-{}.snap", std::process::id()))
    })
}

fn verify(bytes: &[u8]) -> std::io::Result<u64> {
    fs::write(scratch(), bytes).expect("the scratch file");
    let mut file = File::open(scratch()).expect("the scratch file");
    verify_snapshot_file(&mut file)
}

fn sealed(content: &[u8]) -> Vec<u8> {
    let mut file = content.to_vec();
    file.extend_from_slice(&Sha256::digest(content));
    file.extend_from_slice(&(content.len() as u64).to_le_bytes());
    file.extend_from_slice(b"WRAFTSN1");
    file
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    match input.byte() % 3 {
        0 => {
            let bytes = input.rest();
            if let Ok(len) = verify(bytes) {
                let content = bytes.len() - TRAILER_LEN;
                assert_eq!(len, content as u64);
                assert_eq!(sealed(&bytes[..content]), bytes, "verified a wrong trailer");
            }
        }
        1 => {
            let at = usize::from(input.u16());
            let flip = input.byte();
            let content = input.rest();
            let mut file = sealed(content);
            assert_eq!(verify(&file).ok(), Some(content.len() as u64));
            if flip != 0 {
                let at = at % file.len();
                file[at] ^= flip;
                assert!(
                    verify(&file).is_err(),
                    "byte {at} of {} changed",
                    file.len()
                );
            }
        }
        _ => {
            if let Some(meta) = round_trip::<SnapshotMeta>(input.rest()) {
                let again = postcard::to_allocvec(&meta).expect("encodes");
                let back: SnapshotMeta = postcard::from_bytes(&again).expect("decodes");
                assert_eq!(back, meta);
            }
        }
    }
});
