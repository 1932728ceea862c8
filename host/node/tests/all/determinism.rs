//! Two independent stores applying the same log reach the same state hash, including FSMs
//! that use the entry context and the PRNG, and failures in the middle; Cranelift and Pulley
//! give the same answers, fuel exhaustion and NaN bits.

use probe::Command as C;
use wraft_core::{Command, EntryResponse, FsmLimits, LogEntry};
use wraft_host::runtime::{Backend, FsmRuntime};
use wraft_host::state::Compile;
use wraft_host::state::{AppliedPosition, Committed, StateStore, module_id};

use crate::common::{name, probe_apply, runtime};
use crate::nan_model;

fn log() -> Vec<LogEntry> {
    let bytes = wraft_fsm_artifacts::PROBE.to_vec();
    let id = module_id(&bytes);
    let mut log = vec![
        LogEntry::new(
            1_000,
            Command::DeployModule {
                module_id: id,
                bytes,
            },
        ),
        LogEntry::new(
            1_001,
            Command::CreateFsm {
                fsm: name("p"),
                module_id: id,
                limits: FsmLimits {
                    fuel: 5_000_000,
                    memory_pages: 32,
                    max_output_bytes: 4096,
                    query_fuel: 5_000_000,
                    ..FsmLimits::default()
                },
            },
        ),
    ];
    for i in 0..300u64 {
        let cmd = match i % 6 {
            0 => C::Context,
            1 => C::Incr {
                key: vec![(i % 5) as u8],
            },
            2 => C::Put {
                key: i.to_be_bytes().to_vec(),
                value: vec![i as u8; (i % 50) as usize],
            },
            3 if i % 12 == 3 => C::Loop,
            3 => C::AllocBomb,
            4 => C::PutThenTrap {
                key: b"t".to_vec(),
                value: b"x".to_vec(),
            },
            _ => C::Delete {
                key: (i - 3).to_be_bytes().to_vec(),
            },
        };
        // Leader clocks that jump around: the FSM must still see the same time everywhere.
        log.push(LogEntry::new(
            1_000 + (i * 7919) % 1000,
            probe_apply("p", &cmd),
        ));
    }
    log
}

fn replay(
    dir: &std::path::Path,
    log: &[LogEntry],
    chunk: usize,
) -> (StateStore, Vec<EntryResponse>) {
    replay_on(dir, log, chunk, runtime())
}

fn replay_on(
    dir: &std::path::Path,
    log: &[LogEntry],
    chunk: usize,
    runtime: std::sync::Arc<FsmRuntime>,
) -> (StateStore, Vec<EntryResponse>) {
    let store = StateStore::open(dir, runtime).expect("open");
    let mut responses = Vec::new();
    let committed: Vec<Committed<'_>> = log
        .iter()
        .enumerate()
        .map(|(i, e)| Committed {
            position: AppliedPosition {
                index: i as u64 + 1,
                term: 1,
            },
            entry: Some(e),
        })
        .collect();
    for c in committed.chunks(chunk) {
        responses.extend(store.apply(c, None).expect("no fault"));
    }
    (store, responses)
}

#[test]
fn replicas_reach_identical_state_and_responses() {
    let log = log();
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    // Different transaction groupings must not change the outcome.
    let (a, ra) = replay(a_dir.path(), &log, 1);
    let (b, rb) = replay(b_dir.path(), &log, 37);
    assert_eq!(ra, rb, "responses differ between replicas");
    assert!(
        ra.iter().any(|r| matches!(r, EntryResponse::Failed(_))),
        "the log exercises failures"
    );
    let ha = a.fsm_hash(&name("p")).expect("hash");
    assert!(ha.is_some());
    assert_eq!(ha, b.fsm_hash(&name("p")).expect("hash"));
    assert_eq!(a.applied().expect("a"), b.applied().expect("b"));
}

/// The backend is not part of the answer: Cranelift's machine code and the Pulley interpreter
/// (what armv7 boards run) give the same responses, fail with the same fuel exhaustion at the
/// same entries and leave the same state.
#[test]
fn cranelift_and_pulley_give_the_same_outputs_and_state() {
    let mut log = log();
    // Floating point work that runs out of fuel past some number of rounds.
    for i in 0..120u64 {
        let cmd = C::Spin {
            key: format!("spin{i}").into_bytes(),
            rounds: i * 2_500,
        };
        log.push(LogEntry::new(2_000 + i, probe_apply("p", &cmd)));
    }
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let native = FsmRuntime::with_backend(Backend::Native).expect("cranelift");
    let pulley = FsmRuntime::with_backend(Backend::Pulley).expect("pulley");
    let (a, ra) = replay_on(a_dir.path(), &log, 16, native.into());
    let (b, rb) = replay_on(b_dir.path(), &log, 16, pulley.into());
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert_eq!(x, y, "entry {} answered differently", i + 1);
    }
    assert_eq!(ra.len(), rb.len());
    let spins = &ra[ra.len() - 120..];
    let out_of_fuel = |r: &EntryResponse| {
        matches!(
            r,
            EntryResponse::Failed(wraft_core::ApplyError::OutOfFuel { .. })
        )
    };
    let exhausted = spins.iter().filter(|r| out_of_fuel(r)).count();
    assert!(
        exhausted > 0 && exhausted < spins.len(),
        "the spins straddle the fuel limit ({exhausted} of {} ran out)",
        spins.len()
    );
    let (da, db) = (a.digest().expect("digest"), b.digest().expect("digest"));
    assert!(da.differences(&db).is_empty(), "{:?}", da.differences(&db));
    assert_eq!(da.fsms, db.fsms);
}

/// NaNs: the nan-bits guest makes them every way it can (`nan_model::commands`: `0/0`,
/// `inf - inf`, `sqrt(-1)`, arithmetic on signalling and payload-carrying NaNs; f32, f64,
/// scalar and SIMD) under Cranelift and under Pulley. Both must store the same bytes (so reach
/// the same state hash), and those must be the model's: the canonical NaN (`0x7fc00000`,
/// `0x7ff8000000000000`) wherever arithmetic made a NaN, the operand's own bits where wasm
/// only moves a sign or selects. Without canonicalization an x86 host stores `0xffc00000` for
/// `0/0` and passes payloads on, on both backends alike: only the model catches that.
#[test]
pub(crate) fn nan_bits() {
    let bytes = wraft_fsm_artifacts::NAN_BITS.to_vec();
    let instructions = nan_model::instructions(&bytes);
    let id = module_id(&bytes);
    let commands = nan_model::commands();
    let mut log = vec![
        LogEntry::new(
            1_000,
            Command::DeployModule {
                module_id: id,
                bytes,
            },
        ),
        LogEntry::new(
            1_001,
            Command::CreateFsm {
                fsm: name("nan"),
                module_id: id,
                limits: FsmLimits::default(),
            },
        ),
    ];
    for (prefix, operands) in &commands {
        let cmd = nan_bits::Command::Compute {
            prefix: prefix.as_bytes().to_vec(),
            operands: *operands,
        };
        let payload = postcard::to_allocvec(&cmd).expect("encode");
        log.push(LogEntry::new(
            1_002,
            Command::Apply(wraft_core::Apply {
                fsm: name("nan"),
                payload,
            }),
        ));
    }
    let mut runs = Vec::new();
    for backend in [Backend::Native, Backend::Pulley] {
        let dir = tempfile::tempdir().expect("tmp");
        let runtime = FsmRuntime::with_backend(backend).expect("runtime");
        let (store, responses) = replay_on(dir.path(), &log, 3, runtime.into());
        for r in &responses[2..] {
            assert!(matches!(r, EntryResponse::Output(_)), "{backend:?}: {r:?}");
        }
        let stored: Vec<Vec<(Vec<u8>, Vec<u8>)>> = commands
            .iter()
            .map(|(prefix, _)| {
                let q = nan_bits::Query::Results {
                    prefix: prefix.as_bytes().to_vec(),
                };
                let q = postcard::to_allocvec(&q).expect("encode");
                let out = store
                    .query(&name("nan"), &q, Compile::IfNeeded)
                    .expect("no fault")
                    .expect("query");
                postcard::from_bytes(&out).expect("decode")
            })
            .collect();
        let hash = store.fsm_hash(&name("nan")).expect("hash").expect("fsm");
        runs.push((stored, hash));
    }
    let [(native, native_hash), (pulley, pulley_hash)] = <[_; 2]>::try_from(runs).expect("two");
    let missing: Vec<&str> = native[0]
        .iter()
        .map(|(op, _)| std::str::from_utf8(op).expect("an instruction name"))
        .filter(|op| {
            !nan_model::made_by(op)
                .iter()
                .all(|i| instructions.contains(i))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the guest's code lacks {missing:?}: the compiler folded or replaced them"
    );
    let (mut made, mut passed) = (0, 0);
    for (((prefix, operands), native), pulley) in commands.iter().zip(&native).zip(&pulley) {
        assert_eq!(native.len(), pulley.len(), "{prefix}: results stored");
        assert_eq!(native.len(), nan_model::RESULTS, "{prefix}: results stored");
        for ((key, bits), (pulley_key, pulley_bits)) in native.iter().zip(pulley) {
            let op = std::str::from_utf8(key).expect("an instruction name");
            assert_eq!(key, pulley_key, "{prefix}: keys");
            let show = |b: &[u8]| nan_model::show(op, b);
            assert_eq!(
                bits,
                pulley_bits,
                "{prefix}{op}: Cranelift stored {}, Pulley {}",
                show(bits),
                show(pulley_bits)
            );
            let expected = nan_model::expected(op, operands);
            assert_eq!(
                bits,
                &expected,
                "{prefix}{op} of {operands:x?}: stored {}, the model says {}",
                show(bits),
                show(&expected)
            );
            let (nans, canonical) = nan_model::nans(op, bits);
            if nan_model::canonicalizes(op) {
                made += nans;
            } else {
                passed += nans - canonical;
            }
        }
    }
    assert_eq!(native_hash, pulley_hash, "state hashes");
    // Enough NaNs were made, and enough non-canonical ones passed through, to mean something.
    assert!(made >= 150, "{made} NaNs made by arithmetic");
    assert!(passed >= 20, "{passed} non-canonical NaNs passed through");
}
