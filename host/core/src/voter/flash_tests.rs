use super::*;
use crate::voter::{LeaderId, LogId, Run, Vote};
use alloc::vec;
use alloc::vec::Vec;
use embedded_storage::nor_flash::{ErrorType, ReadNorFlash};

const SECTOR: usize = 1024;

/// NOR flash in memory: programming only clears bits, erase sets a sector to 0xFF, and power
/// can fail after a budget of programmed/erased bytes (the op in progress is left half done,
/// later ops fail).
#[derive(Debug, Clone)]
struct Nor {
    bytes: Vec<u8>,
    budget: usize,
    erases: Vec<u32>,
}

impl Nor {
    fn new(sectors: usize) -> Self {
        Self {
            bytes: vec![0xFF; sectors * SECTOR],
            budget: usize::MAX,
            erases: vec![0; sectors],
        }
    }
    fn spend(&mut self, n: usize) -> Result<usize, NorFlashErrorKind> {
        if self.budget >= n {
            self.budget -= n;
            Ok(n)
        } else {
            Err(NorFlashErrorKind::Other)
        }
    }
}

impl ErrorType for Nor {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Nor {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        bytes.copy_from_slice(&self.bytes[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl NorFlash for Nor {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        assert!((from as usize).is_multiple_of(SECTOR) && (to as usize).is_multiple_of(SECTOR));
        let (from, to) = (from as usize, to as usize);
        let done = self.spend(to - from);
        let upto = if done.is_ok() {
            to
        } else {
            from + core::mem::take(&mut self.budget)
        };
        self.bytes[from..upto].fill(0xFF);
        self.erases[from / SECTOR] += 1;
        done.map(|_| ())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        assert!((offset as usize).is_multiple_of(4) && bytes.len().is_multiple_of(4));
        let o = offset as usize;
        let n = match self.spend(bytes.len()) {
            Ok(n) => n,
            Err(_) => core::mem::take(&mut self.budget),
        };
        for (dst, src) in self.bytes[o..o + n].iter_mut().zip(bytes) {
            *dst &= *src;
        }
        if n < bytes.len() {
            self.budget = 0;
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }
}

/// The k-th state of a script: each differs from the one before.
fn state(k: u64) -> Persisted {
    let leader = LeaderId {
        term: k / 3 + 1,
        node: k % 3,
    };
    Persisted {
        vote: Vote {
            leader,
            committed: k.is_multiple_of(2),
        },
        committed: Some(LogId {
            leader,
            index: k * 10,
        }),
        tail: (0..k % 5)
            .map(|i| Run {
                leader: LeaderId {
                    term: k + i,
                    node: 1,
                },
                count: (k as u32) + 1,
            })
            .collect(),
        boots: 0,
    }
}

fn without_boots(mut s: Persisted) -> Persisted {
    s.boots = 0;
    s
}

#[test]
fn state_survives_reopening_and_boots_are_counted() {
    let (mut store, s) = FlashStore::open(Nor::new(4)).expect("open");
    assert_eq!((s.boots, s.vote), (1, Vote::default()));
    for k in 0..300 {
        store.save(&state(k)).expect("save");
    }
    let (store, s) = FlashStore::open(store.into_inner()).expect("reopen");
    assert_eq!(without_boots(s.clone()), state(299));
    assert_eq!(
        s.boots, 1,
        "boots come from the saved state, which the script set to 0"
    );
    let (_, again) = FlashStore::open(store.into_inner()).expect("reopen");
    assert_eq!(again.boots, 2);
}

#[test]
fn a_power_cut_anywhere_keeps_the_last_acknowledged_state() {
    // Cut power after every possible number of programmed bytes across several laps of the
    // ring (every cut lands in some write or erase), then reopen on the surviving bytes.
    let mut cuts = 0;
    for budget in (0..26_000).step_by(13) {
        let mut nor = Nor::new(3);
        nor.budget = budget;
        let Ok((mut store, _)) = FlashStore::open(nor) else {
            continue;
        };
        let mut acked = None;
        let mut attempted = None;
        for k in 0..400 {
            attempted = Some(state(k));
            if store.save(&state(k)).is_err() {
                break;
            }
            acked = Some(state(k));
        }
        let mut nor = store.into_inner();
        if nor.budget > 0 {
            continue;
        }
        cuts += 1;
        nor.budget = usize::MAX;
        let (_, loaded) = FlashStore::open(nor).expect("reopen after the cut");
        let loaded = without_boots(loaded);
        let fine = Some(&loaded) == acked.as_ref()
            || Some(&loaded) == attempted.as_ref()
            || (acked.is_none() && loaded == Persisted::default());
        assert!(fine, "budget {budget}: loaded {loaded:?}, acked {acked:?}");
    }
    assert!(cuts > 1_500, "only {cuts} cuts landed");
}

#[test]
fn sectors_wear_evenly() {
    let (mut store, _) = FlashStore::open(Nor::new(8)).expect("open");
    for k in 0..20_000 {
        store.save(&state(k % 7)).expect("save");
    }
    let nor = store.into_inner();
    let (lo, hi) = (nor.erases.iter().min(), nor.erases.iter().max());
    assert!(
        hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
        "erases {:?}",
        nor.erases
    );
    assert!(lo.is_some_and(|l| *l > 10), "erases {:?}", nor.erases);
}

#[test]
fn blank_and_foreign_flash_start_from_the_default_state() {
    let mut nor = Nor::new(2);
    nor.bytes
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let (_, s) = FlashStore::open(nor).expect("open foreign");
    assert_eq!(without_boots(s), Persisted::default());
    assert!(matches!(
        FlashStore::open(Nor::new(1)),
        Err(FlashError::Layout)
    ));
}

/// Fails the writes whose (0-based) numbers are in `fail`, then works.
#[derive(Debug)]
struct Flaky {
    nor: Nor,
    writes: usize,
    fail: Vec<usize>,
    erases: usize,
    fail_erase: Vec<usize>,
}

impl ErrorType for Flaky {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Flaky {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.nor.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.nor.capacity()
    }
}

impl NorFlash for Flaky {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let n = self.erases;
        self.erases += 1;
        if self.fail_erase.contains(&n) {
            return Err(NorFlashErrorKind::Other);
        }
        self.nor.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let n = self.writes;
        self.writes += 1;
        if self.fail.contains(&n) {
            // Half the record lands, as when a program operation fails midway.
            let half = bytes.len() / 2 / 4 * 4;
            let _ = self.nor.write(offset, &bytes[..half]);
            return Err(NorFlashErrorKind::Other);
        }
        self.nor.write(offset, bytes)
    }
}

#[test]
fn saves_acknowledged_after_a_failed_one_survive_reopening() {
    // Write 0 is the boot record; write `fail_at` fails; then a few more saves, so the last
    // acknowledged one may sit right behind the failed one.
    for fail_at in 1..40 {
        for after in 1..4 {
            let flaky = Flaky {
                nor: Nor::new(4),
                writes: 0,
                fail: vec![fail_at],
                erases: 0,
                fail_erase: Vec::new(),
            };
            let (mut store, _) = FlashStore::open(flaky).expect("open");
            let mut acked = None;
            for k in 0..(fail_at + after) as u64 {
                if store.save(&state(k)).is_ok() {
                    acked = Some(state(k));
                }
            }
            let (_, loaded) = FlashStore::open(store.into_inner().nor).expect("reopen");
            assert_eq!(
                Some(without_boots(loaded)),
                acked,
                "write {fail_at} failed, then {after} more"
            );
        }
    }
}

#[test]
fn failing_saves_never_erase_the_last_good_record() {
    let flaky = Flaky {
        nor: Nor::new(3),
        writes: 0,
        fail: (3..10_000).collect(),
        erases: 0,
        fail_erase: Vec::new(),
    };
    let (mut store, _) = FlashStore::open(flaky).expect("open");
    store.save(&state(1)).expect("save 1");
    store.save(&state(2)).expect("save 2");
    let mut errors = Vec::new();
    for k in 3..20 {
        errors.push(store.save(&state(k)).expect_err("failing flash"));
    }
    assert!(errors.contains(&FlashError::Worn), "{errors:?}");
    let (_, loaded) = FlashStore::open(store.into_inner().nor).expect("reopen");
    assert_eq!(without_boots(loaded), state(2));
}

#[test]
fn a_sector_that_will_not_erase_or_program_is_skipped_at_boot_and_after() {
    // The boot's first erase and first write fail; later the third erase fails too.
    let flaky = Flaky {
        nor: Nor::new(4),
        writes: 0,
        fail: vec![0],
        erases: 0,
        fail_erase: vec![0, 3],
    };
    let (mut store, s) = FlashStore::open(flaky).expect("open skips the bad sectors");
    assert_eq!(s.boots, 1);
    let mut acked = None;
    for k in 0..100 {
        if store.save(&state(k)).is_ok() {
            acked = Some(state(k));
        }
    }
    let flaky = store.into_inner();
    assert!(
        flaky.erases > 4,
        "the ring went round: {} erases",
        flaky.erases
    );
    let (_, loaded) = FlashStore::open(flaky.nor).expect("reopen");
    assert_eq!(Some(without_boots(loaded)), acked);
}

/// The voter's nonce is its persisted boot count and its sessions this boot: a host's hello
/// replayed to a restarted voter opens a session under another key, so calls recorded before
/// the restart are refused by their tags.
#[test]
fn voter_nonces_differ_across_reboots() {
    use crate::link::auth::{ClusterKey, Handshake, PortSession, VoterAuth};
    let key = ClusterKey::from_bytes([3; 32]);
    let welcome_nonce = |boots: u32| {
        let mut auth = VoterAuth::new(&key, boots);
        // The same hello each boot: the host's nonce alone keeps nothing fresh.
        let hs = Handshake::new(&key, [1; 16]);
        let mut hello = Vec::new();
        hs.hello(&mut hello);
        let mut decoder = crate::link::Decoder::new();
        let frame = hello
            .iter()
            .find_map(|&b| decoder.feed(b).map(|f| f.map(<[u8]>::to_vec)))
            .expect("a frame")
            .expect("whole");
        let mut welcome = Vec::new();
        auth.receive(&mut PortSession::default(), &frame, &mut welcome)
            .expect("hello accepted");
        let frame = welcome
            .iter()
            .find_map(|&b| decoder.feed(b).map(|f| f.map(<[u8]>::to_vec)))
            .expect("a frame")
            .expect("whole");
        hs.finish(&frame).expect("welcome").voter_nonce()
    };
    let (store, first) = FlashStore::open(Nor::new(4)).expect("format");
    let (store, second) = FlashStore::open(store.into_inner()).expect("reboot");
    let (_, third) = FlashStore::open(store.into_inner()).expect("reboot");
    let nonces = [first.boots, second.boots, third.boots].map(welcome_nonce);
    assert_ne!(nonces[0], nonces[1]);
    assert_ne!(nonces[1], nonces[2]);
    assert_ne!(nonces[0], nonces[2]);
}

#[test]
fn the_key_loads_from_its_sector_or_is_missing() {
    use crate::link::auth::ClusterKey;
    use crate::voter::{KeyError, key_record, load_key};
    let mut nor = Nor::new(5);
    let key_at = 4 * SECTOR as u32;
    assert_eq!(load_key(&mut nor, key_at), Err(KeyError::Missing));
    let key = ClusterKey::from_bytes([9; 32]);
    nor.write(key_at, &key_record(&key)).expect("provision");
    assert_eq!(load_key(&mut nor, key_at), Ok(key));
}

/// Regression (fuzz target `voter_flash`): a record holding more runs than [`MAX_RUNS`]
/// (never written by the voter, but with a valid CRC) was loaded, and with one more boot no
/// longer fit a record, so every open failed with `TooLarge`. Such a record is foreign: the
/// newest state the voter wrote is loaded instead, and the largest state within the bounds
/// fits with any boot count.
#[test]
fn a_record_past_the_voter_bounds_is_skipped() {
    let (mut store, _) = FlashStore::open(Nor::new(4)).expect("blank");
    let good = state(1);
    store.save(&good).expect("save");
    let leader = LeaderId {
        term: u64::MAX,
        node: u64::MAX,
    };
    let mut foreign = good.clone();
    foreign.tail = vec![
        Run {
            leader,
            count: u32::MAX
        };
        MAX_RUNS + 2
    ];
    store
        .append(&foreign)
        .expect("fits a record, one boot short of not fitting");
    let (_, loaded) = FlashStore::open(store.into_inner()).expect("opens");
    assert_eq!(without_boots(loaded), without_boots(good));

    let mut largest = foreign;
    largest.tail.truncate(MAX_RUNS);
    largest.committed = Some(LogId {
        leader,
        index: u64::MAX,
    });
    largest.vote = Vote {
        leader,
        committed: true,
    };
    largest.boots = u32::MAX - 1;
    let (mut store, _) = FlashStore::open(Nor::new(4)).expect("blank");
    store.save(&largest).expect("the largest state fits");
    let (_, loaded) = FlashStore::open(store.into_inner()).expect("and one more boot");
    assert_eq!(without_boots(loaded), without_boots(largest));
}
