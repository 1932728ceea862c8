//! The passive voter's flash (`FlashStore` records and the key record), read from any flash
//! image: opening never panics and always finds a state, that state survives reopening
//! (with one more boot), every acknowledged save is what the next open finds, and a save cut
//! by a power failure leaves either the state before it or the one it was writing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::voter::{
    FlashError, FlashStore, KEY_RECORD_LEN, MAX_RUNS, Persisted, VoterStore, key_record,
    parse_key_record,
};
use wraft_fuzz::Input;
use wraft_fuzz::voter::Nor;

const SECTORS: usize = 4;
/// Bytes of a key record up to its CRC's end: magic (4), version (1), key (32), CRC (4).
const KEY_RECORD_CHECKED: usize = 41;

fn open(flash: Nor) -> (FlashStore<Nor>, Persisted) {
    FlashStore::open(flash).expect("a whole flash opens whatever it holds")
}

fn without_boots(mut s: Persisted) -> Persisted {
    s.boots = 0;
    s
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let image = input.long();
    if let Some(record) = image.first_chunk::<KEY_RECORD_LEN>()
        && let Ok(key) = parse_key_record(record)
    {
        // Magic, version, key and CRC come back; the padding after them is not read.
        assert_eq!(
            key_record(&key)[..KEY_RECORD_CHECKED],
            record[..KEY_RECORD_CHECKED]
        );
    }
    let (store, state) = open(Nor::new(SECTORS, image));
    let (mut store, again) = open(store.into_inner());
    assert_eq!(again.boots, state.boots.wrapping_add(1));
    assert_eq!(without_boots(again.clone()), without_boots(state));
    let mut acknowledged = again;
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let cut = input.u16();
        let Ok((next, rest)) = postcard::take_from_bytes::<Persisted>(input.0) else {
            break;
        };
        input.0 = rest;
        if next.tail.len() > MAX_RUNS {
            // The voter never holds such a state, and opening skips one as foreign.
            continue;
        }
        if cut & 0x8000 != 0 {
            // The power fails after `cut % 4096` more bytes programmed or erased.
            let mut flash = store.into_inner();
            flash.budget = usize::from(cut & 0x0fff);
            let mut cut_store = match FlashStore::open(flash) {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            let saved = cut_store.save(&next);
            let mut flash = cut_store.into_inner();
            flash.budget = usize::MAX;
            let (reopened, found) = open(flash);
            let found = without_boots(found);
            if saved.is_ok() {
                assert_eq!(found, without_boots(next), "an acknowledged save was lost");
            } else {
                assert!(
                    found == without_boots(acknowledged.clone())
                        || found == without_boots(next.clone()),
                    "a cut save left neither the old state nor the new one: {found:?}"
                );
            }
            return drop(reopened);
        }
        match store.save(&next) {
            Ok(()) => acknowledged = next,
            Err(FlashError::TooLarge) => {}
            Err(e) => panic!("saving: {e}"),
        }
        let flash = store.into_inner();
        let (reopened, found) = open(flash);
        assert_eq!(
            without_boots(found.clone()),
            without_boots(acknowledged.clone())
        );
        acknowledged = found;
        store = reopened;
    }
});
