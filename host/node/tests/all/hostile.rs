//! Misbehaving FSMs are contained: each failure is a deterministic error recorded as the
//! entry's response, the failed entry leaves no writes, and the store keeps serving.

use probe::{Command as C, Output as O, Query as Q};
use wraft_core::{ApplyError, EntryResponse};

use crate::common::{Fixture, output};

/// Applies `cmd` and checks it failed as `expect` says, changed nothing, and that the FSM
/// still works afterwards.
fn contained(f: &Fixture, cmd: C, expect: impl Fn(&ApplyError) -> bool) {
    let before = f.hash("p");
    let index = f.applied_index();
    let r = f.apply("p", &cmd);
    match &r {
        EntryResponse::Failed(e) => {
            assert!(expect(e), "{cmd:?} failed with an unexpected error: {e:?}")
        }
        other => panic!("{cmd:?} should have failed, got {other:?}"),
    }
    assert_eq!(f.hash("p"), before, "{cmd:?} changed the state");
    assert_eq!(
        f.applied_index(),
        index + 1,
        "the failed entry still counts as applied"
    );
    assert_eq!(
        output(&f.apply(
            "p",
            &C::Incr {
                key: b"alive".to_vec()
            }
        )),
        O::Number(alive(f) as u64)
    );
}

fn alive(f: &Fixture) -> u8 {
    match f.query(
        "p",
        &Q::Get {
            key: b"alive".to_vec(),
        },
    ) {
        Ok(O::Bytes(b)) => b[0],
        _ => 0,
    }
}

fn kv(k: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), b"must not persist".to_vec())
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let f = Fixture::probe();
    contained(&f, C::Loop, |e| {
        matches!(e, ApplyError::OutOfFuel { limit: 20_000_000 })
    });
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let f = Fixture::probe();
    contained(&f, C::AllocBomb, |e| {
        matches!(e, ApplyError::MemoryLimit { pages: 64 })
    });
}

#[test]
fn trap_after_a_write_rolls_the_write_back() {
    let f = Fixture::probe();
    let (key, value) = kv("t");
    contained(
        &f,
        C::PutThenTrap { key, value },
        |e| matches!(e, ApplyError::Trap(m) if m.contains("unreachable")),
    );
}

#[test]
fn panic_after_a_write_reports_the_message() {
    let f = Fixture::probe();
    let (key, value) = kv("p");
    contained(
        &f,
        C::PutThenPanic { key, value },
        |e| matches!(e, ApplyError::Panicked(m) if m.contains("probe panicked on purpose")),
    );
}

#[test]
fn rejection_after_a_write_rolls_the_write_back() {
    let f = Fixture::probe();
    let (key, value) = kv("r");
    contained(&f, C::PutThenFail { key, value }, |e| {
        *e == ApplyError::Rejected("failed after writing".into())
    });
}

#[test]
fn oversized_output_is_refused() {
    let f = Fixture::probe();
    contained(
        &f,
        C::HugeOutput { len: 100 << 10 },
        |e| matches!(e, ApplyError::OutputTooLarge { limit, .. } if *limit == 64 << 10),
    );
    // Just under the limit is fine.
    assert!(matches!(
        f.apply("p", &C::HugeOutput { len: 60 << 10 }),
        EntryResponse::Output(_)
    ));
}

#[test]
fn oversized_keys_are_refused() {
    let f = Fixture::probe();
    let key = vec![1u8; wraft_core::abi::MAX_KEY_LEN + 1];
    contained(
        &f,
        C::Put { key, value: vec![] },
        |e| matches!(e, ApplyError::TooLarge { what, .. } if what == "key"),
    );
}

#[test]
fn globals_do_not_survive_between_calls() {
    let f = Fixture::probe();
    for _ in 0..5 {
        assert_eq!(output(&f.apply("p", &C::BumpGlobal)), O::Number(1));
    }
}

#[test]
fn queries_cannot_write_or_run_forever() {
    let f = Fixture::probe();
    let before = f.hash("p");
    assert_eq!(f.query("p", &Q::TryWrite), Err(ApplyError::ReadOnly));
    assert!(matches!(
        f.query("p", &Q::Loop),
        Err(ApplyError::OutOfFuel { .. })
    ));
    assert_eq!(f.hash("p"), before);
}

#[test]
fn garbage_command_bytes_are_a_bad_input_error() {
    let f = Fixture::probe();
    let cmd = wraft_core::Command::Apply(wraft_core::Apply {
        fsm: crate::common::name("p"),
        payload: vec![0xff, 0xff, 0xff, 0xff, 0xff],
    });
    let r = f.node.propose(cmd).expect("no fault");
    assert!(
        matches!(r, EntryResponse::Failed(ApplyError::BadInput(_))),
        "{r:?}"
    );
}

#[test]
fn a_failing_fsm_does_not_disturb_another() {
    let f = Fixture::probe();
    f.node
        .create(
            crate::common::name("q"),
            f.module,
            wraft_core::FsmLimits::default(),
        )
        .expect("no fault")
        .expect("create");
    f.apply(
        "q",
        &C::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    );
    let q_before = f.hash("q");
    for cmd in [
        C::Loop,
        C::AllocBomb,
        C::PutThenTrap {
            key: b"k".to_vec(),
            value: b"x".to_vec(),
        },
    ] {
        assert!(matches!(f.apply("p", &cmd), EntryResponse::Failed(_)));
    }
    assert_eq!(f.hash("q"), q_before);
    assert_eq!(
        f.query("q", &Q::Get { key: b"k".to_vec() }),
        Ok(O::Bytes(b"v".to_vec()))
    );
}

/// A value the FSM's `put_as` cannot encode is refused with the reason, and nothing is
/// stored (the SDK used to store an empty value).
#[test]
fn a_value_that_does_not_encode_is_refused_and_nothing_stored() {
    let f = Fixture::probe();
    contained(
        &f,
        C::PutUnencodable { key: b"u".to_vec() },
        |e| matches!(e, ApplyError::Rejected(m) if m.contains("does not encode")),
    );
    assert_eq!(
        f.query("p", &Q::Get { key: b"u".to_vec() }),
        Ok(O::None),
        "nothing was stored"
    );
}

/// An output the FSM cannot encode aborts the call with the reason (the SDK used to answer
/// OK with no output).
#[test]
fn an_output_that_does_not_encode_aborts_the_call() {
    let f = Fixture::probe();
    contained(
        &f,
        C::OutputUnencodable,
        |e| matches!(e, ApplyError::Panicked(m) if m.contains("output does not encode")),
    );
}
