//! Client sessions and idempotency keys in the state machine: a retried write answers its
//! first response and applies once, acknowledged sequences are refused, bounds hold, and
//! expiry happens at the same entry on every replica (two stores fed the same log).

use probe::Command as C;
use wraft_core::session::{self, Sequence, SessionWrite};
use wraft_core::{Apply, ApplyError, Command, EntryResponse, LogEntry};
use wraft_host::state::{AppliedPosition, Committed, StateStore};

use crate::common::{Fixture, name, output, probe_counter, reopen};

/// Applies `command` at the next index with the leader's timestamp `ts`.
pub(crate) fn at(store: &StateStore, ts: u64, command: Command) -> EntryResponse {
    let index = store.applied().expect("applied").map_or(1, |a| a.index + 1);
    let entry = LogEntry::new(ts, command);
    let committed = Committed {
        position: AppliedPosition { index, term: 1 },
        entry: Some(&entry),
    };
    store
        .apply(&[committed], None)
        .expect("no node fault")
        .remove(0)
}

pub(crate) fn incr() -> Apply {
    Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(&C::Incr { key: b"n".to_vec() }).expect("encode"),
    }
}

pub(crate) fn on(session: u64, seq: u64, acked: u64, apply: Apply) -> Command {
    Command::SessionWrite {
        sequence: Sequence {
            session,
            seq,
            acked,
        },
        write: SessionWrite::Apply(apply),
    }
}

pub(crate) fn open(store: &StateStore, ts: u64, idle_timeout_ms: u64) -> u64 {
    match at(store, ts, Command::OpenSession { idle_timeout_ms }) {
        EntryResponse::SessionOpened(id) => id,
        other => panic!("expected a session, got {other:?}"),
    }
}

fn counted(r: &EntryResponse) -> u64 {
    match output(r) {
        probe::Output::Number(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

/// Later than any fixture's setup entries (stamped with the clock): FSM time never runs
/// backwards, so the entries here set it.
pub(crate) const T0: u64 = 4_000_000_000_000;

#[test]
fn a_retried_session_write_answers_its_first_response_and_applies_once() {
    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    assert_eq!(
        s,
        f.applied_index(),
        "a session's id is its opening entry's index"
    );
    let first = at(store, T0, on(s, 1, 0, incr()));
    assert_eq!(counted(&first), 1);
    for _ in 0..3 {
        assert_eq!(
            at(store, T0, on(s, 1, 0, incr())),
            first,
            "a retry's answer"
        );
    }
    assert_eq!(probe_counter(store), 1, "applied once");
    let second = at(store, T0, on(s, 2, 1, incr()));
    assert_eq!(counted(&second), 2);

    // A write that fails deterministically fails once; its retry gets the same failure and
    // its writes stay undone.
    let fail = Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(&C::PutThenFail {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
        })
        .expect("encode"),
    };
    let failed = at(store, T0, on(s, 3, 2, fail.clone()));
    assert!(
        matches!(failed, EntryResponse::Failed(ApplyError::Rejected(_))),
        "{failed:?}"
    );
    assert_eq!(at(store, T0, on(s, 3, 2, fail)), failed);
    assert_eq!(
        f.query("p", &probe::Query::Get { key: b"x".to_vec() }),
        Ok(probe::Output::None)
    );

    // A batch is one sequence.
    let batch = Command::SessionWrite {
        sequence: Sequence {
            session: s,
            seq: 4,
            acked: 3,
        },
        write: SessionWrite::Batch(vec![incr(), incr()]),
    };
    let outs = at(store, T0, batch.clone());
    assert!(matches!(&outs, EntryResponse::BatchOutputs(o) if o.len() == 2));
    assert_eq!(at(store, T0, batch.clone()), outs);
    assert_eq!(probe_counter(store), 4);

    // The kept responses survive a restart.
    let dir = f.dir.path().to_path_buf();
    let Fixture { dir: tmp, node, .. } = f;
    drop(node);
    let store = reopen(&dir);
    assert_eq!(at(&store, T0, batch), outs);
    assert!(
        matches!(
            at(&store, T0, on(s, 2, 1, incr())),
            EntryResponse::Failed(ApplyError::SequenceTooOld { .. })
        ),
        "sequence 2 was acknowledged by sequence 4"
    );
    assert_eq!(probe_counter(&store), 4);
    drop(tmp);
}

#[test]
fn acknowledged_and_unknown_sequences_are_refused_never_applied_again() {
    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    at(store, T0, on(s, 1, 0, incr()));
    at(store, T0, on(s, 2, 0, incr()));
    // Sequence 3 says the client has the answers up to 2: they are forgotten.
    at(store, T0, on(s, 3, 2, incr()));
    assert_eq!(probe_counter(store), 3);
    let again = at(store, T0, on(s, 1, 0, incr()));
    assert_eq!(
        again,
        EntryResponse::Failed(ApplyError::SequenceTooOld {
            session: s,
            seq: 1,
            acked: 2
        })
    );
    assert_eq!(probe_counter(store), 3, "not applied again");
    let unknown = at(store, T0, on(s + 100, 1, 0, incr()));
    assert_eq!(
        unknown,
        EntryResponse::Failed(ApplyError::UnknownSession { session: s + 100 })
    );
    assert_eq!(probe_counter(store), 3);
    // Idle timeouts outside the bounds are refused.
    for bad in [0, session::MAX_IDLE_TIMEOUT_MS + 1] {
        let r = at(
            store,
            T0,
            Command::OpenSession {
                idle_timeout_ms: bad,
            },
        );
        assert!(
            matches!(&r, EntryResponse::Failed(ApplyError::SessionLimit { what, .. }) if what.contains("idle timeout")),
            "{r:?}"
        );
    }
}

#[test]
fn a_session_keeps_a_bounded_number_of_unacknowledged_responses() {
    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    let nop = || Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(&C::Nop).expect("encode"),
    };
    let n = session::MAX_PENDING_RESPONSES;
    let entries: Vec<LogEntry> = (1..=n)
        .map(|seq| LogEntry::new(T0, on(s, seq, 0, nop())))
        .collect();
    let first = store.applied().expect("applied").expect("some").index + 1;
    let committed: Vec<Committed<'_>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Committed {
            position: AppliedPosition {
                index: first + i as u64,
                term: 1,
            },
            entry: Some(e),
        })
        .collect();
    let responses = store.apply(&committed, None).expect("no fault");
    assert!(
        responses
            .iter()
            .all(|r| matches!(r, EntryResponse::Output(_)))
    );
    let refused = at(store, T0, on(s, n + 1, 0, incr()));
    match &refused {
        EntryResponse::Failed(ApplyError::SessionLimit { what, limit }) => {
            assert_eq!(*limit, n);
            assert!(what.contains("acknowledge"), "{what}");
        }
        other => panic!("expected the session's bound, got {other:?}"),
    }
    assert_eq!(probe_counter(store), 0, "the refused write did not apply");
    // Acknowledging frees the room.
    assert_eq!(counted(&at(store, T0, on(s, n + 1, n, incr()))), 1);
}

#[test]
fn an_idempotency_key_answers_its_first_response_and_refuses_another_request() {
    let f = Fixture::probe();
    let store = f.node.store();
    let keyed = |key: &str, apply: Apply| Command::KeyedWrite {
        key: key.into(),
        write: SessionWrite::Apply(apply),
    };
    let first = at(store, T0, keyed("order-1", incr()));
    assert_eq!(counted(&first), 1);
    assert_eq!(at(store, T0 + 5, keyed("order-1", incr())), first);
    assert_eq!(probe_counter(store), 1);
    let other = Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(&C::Nop).expect("encode"),
    };
    assert_eq!(
        at(store, T0, keyed("order-1", other)),
        EntryResponse::Failed(ApplyError::IdempotencyKeyReused {
            key: "order-1".into()
        })
    );
    // A day later the key is forgotten, and the same key writes again.
    let later = T0 + session::IDEMPOTENCY_KEY_TTL_MS + 1;
    assert_eq!(counted(&at(store, later, keyed("order-1", incr()))), 2);
    assert_eq!(counts(store), (0, 1));
}

/// Two replicas fed the same log: sessions expire at the same entry on both (by the entries'
/// timestamps, not the clock), and their digests, which cover the session table, agree
/// before and after; a replica whose session table differs has a different digest.
#[test]
fn sessions_expire_at_the_same_entry_on_every_replica() {
    let a = Fixture::probe();
    let b = Fixture::probe();
    let log = |ts: u64, c: Command| {
        let ra = at(a.node.store(), ts, c.clone());
        let rb = at(b.node.store(), ts, c);
        assert_eq!(ra, rb, "replicas answer alike");
        ra
    };
    let EntryResponse::SessionOpened(short) = log(
        T0,
        Command::OpenSession {
            idle_timeout_ms: 1_000,
        },
    ) else {
        panic!("no session")
    };
    let EntryResponse::SessionOpened(long) = log(
        T0,
        Command::OpenSession {
            idle_timeout_ms: 60_000,
        },
    ) else {
        panic!("no session")
    };
    log(T0 + 500, on(short, 1, 0, incr()));
    log(T0 + 500, on(long, 1, 0, incr()));
    let digest = |f: &Fixture| {
        let mut d = f.node.store().digest().expect("digest");
        d.index = 0;
        d
    };
    assert_eq!(digest(&a), digest(&b));
    // 1 s after its last write (T0 + 500) the short session ends, at this entry.
    let nop = Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(&C::Nop).expect("encode"),
    };
    log(T0 + 1_499, Command::Apply(nop.clone()));
    assert_eq!(counts(a.node.store()), (2, 0));
    log(T0 + 1_500, Command::Apply(nop.clone()));
    assert_eq!(counts(a.node.store()), (1, 0));
    assert_eq!(counts(b.node.store()), (1, 0));
    assert_eq!(digest(&a), digest(&b));
    assert_eq!(
        log(T0 + 1_600, on(short, 2, 1, incr())),
        EntryResponse::Failed(ApplyError::UnknownSession { session: short })
    );
    assert_eq!(counted(&log(T0 + 1_600, on(long, 2, 1, incr()))), 3);

    // Only a: its session table now differs from b's, and so does its digest.
    at(
        a.node.store(),
        T0 + 1_700,
        Command::OpenSession {
            idle_timeout_ms: 60_000,
        },
    );
    at(b.node.store(), T0 + 1_700, Command::Apply(nop));
    let (da, db) = (digest(&a), digest(&b));
    assert_eq!(da.fsms, db.fsms, "the FSMs agree");
    assert_ne!(da.registry, db.registry, "the session tables differ");
}

/// A session's kept responses travel with the state: in a key/value snapshot, in an LMDB
/// copy (what a snapshot of an older node and a hot backup are), and through `wraft backup`
/// and `restore`. On each copy, a retry answers the first response and applies nothing.
#[test]
fn sessions_travel_in_snapshots_and_backups() {
    use wraft_host::ops::backup;

    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    let first = at(store, T0, on(s, 1, 0, incr()));
    assert_eq!(counted(&first), 1);
    let key = Command::KeyedWrite {
        key: "k-1".into(),
        write: SessionWrite::Apply(incr()),
    };
    let keyed = at(store, T0, key.clone());
    assert_eq!(counted(&keyed), 2);

    let work = tempfile::tempdir().expect("tmp");
    let pairs = work.path().join("snapshot.kv");
    store.export_to(&pairs).expect("export");
    let copy = work.path().join("snapshot.mdb");
    store.copy_to(&copy).expect("copy");
    let taken = backup::take(store, 1, f.dir.path()).expect("backup");
    let backup_dir = work.path().join("backup");
    std::fs::create_dir_all(&backup_dir).expect("dir");
    std::fs::rename(&taken.path, backup_dir.join(backup::STATE_FILE)).expect("move");
    backup::write_manifest(&backup_dir, &taken.manifest).expect("manifest");

    let check = |store: &StateStore, how: &str| {
        assert_eq!(counts(store), (1, 1), "{how}");
        assert_eq!(at(store, T0, on(s, 1, 0, incr())), first, "{how}");
        assert_eq!(at(store, T0, key.clone()), keyed, "{how}");
        assert_eq!(probe_counter(store), 2, "{how}: applied again");
    };
    for (how, path) in [("key/value snapshot", &pairs), ("LMDB copy", &copy)] {
        let target = tempfile::tempdir().expect("tmp");
        let other = reopen(target.path());
        other.import_from(path).expect("install");
        check(&other, how);
    }
    let restored = tempfile::tempdir().expect("tmp");
    backup::restore(&backup_dir, restored.path(), false).expect("restore");
    check(&reopen(restored.path()), "backup and restore");
}

/// A retry answered from a session changes no state: a late duplicate (its client gave up
/// and moved on) leaves a replica that applied it equal to one that did not.
#[test]
fn a_retry_answered_from_the_session_changes_no_state() {
    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    at(store, T0, on(s, 1, 0, incr()));
    at(store, T0 + 10, on(s, 2, 1, incr()));
    let before = store.digest().expect("digest");
    at(store, T0 + 5_000, on(s, 2, 1, incr()));
    let mut after = store.digest().expect("digest");
    after.index = before.index;
    assert_eq!(after, before);
}

/// Open sessions and kept idempotency keys.
fn counts(store: &StateStore) -> (u64, u64) {
    let (sessions, keys, _) = store.session_counts().expect("counts");
    (sessions, keys)
}

/// A write refused after its acknowledgement forgot kept responses still counts them gone:
/// the bytes the cluster keeps for retries go back to what is really kept, and the
/// session's room with them (a refusal once left the counts high for good).
#[test]
fn a_refused_write_keeps_what_its_acknowledgement_forgot() {
    let f = Fixture::probe();
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    for seq in 1..=3 {
        at(store, T0, on(s, seq, 0, incr()));
    }
    let kept = store.session_counts().expect("counts").2;
    assert!(kept > 0, "three responses kept");
    // Acknowledges 1-3, and is itself at or below what it acknowledges: refused.
    let refused = at(store, T0, on(s, 3, 3, incr()));
    assert!(
        matches!(
            refused,
            EntryResponse::Failed(ApplyError::SequenceTooOld { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        store.session_counts().expect("counts").2,
        0,
        "nothing is kept"
    );
    assert_eq!(counted(&at(store, T0, on(s, 4, 3, incr()))), 4);
    assert!(store.session_counts().expect("counts").2 > 0);
}

/// A write whose response is larger than a session keeps is undone and refused, so every
/// kept record fits in a snapshot record.
#[test]
fn a_response_too_large_to_keep_undoes_its_write() {
    let f = Fixture::new(
        wraft_fsm_artifacts::PROBE,
        "p",
        wraft_core::FsmLimits {
            fuel: 2_000_000_000,
            memory_pages: 2048,
            max_output_bytes: 64 << 20,
            ..wraft_core::FsmLimits::default()
        },
    );
    let store = f.node.store();
    let s = open(store, T0, 60_000);
    let cmd = |c: &C| Apply {
        fsm: name("p"),
        payload: postcard::to_allocvec(c).expect("encode"),
    };
    let put = cmd(&C::Put {
        key: b"x".to_vec(),
        value: b"1".to_vec(),
    });
    let huge = cmd(&C::HugeOutput {
        len: (session::MAX_KEPT_RESPONSE_BYTES + 1) as u32,
    });
    let batch = Command::SessionWrite {
        sequence: Sequence {
            session: s,
            seq: 1,
            acked: 0,
        },
        write: SessionWrite::Batch(vec![put.clone(), huge.clone()]),
    };
    match at(store, T0, batch) {
        EntryResponse::Failed(ApplyError::SessionLimit { what, limit }) => {
            assert_eq!(limit, session::MAX_KEPT_RESPONSE_BYTES);
            assert!(what.contains("without one"), "{what}");
        }
        other => panic!("expected the kept-response bound, got {other:?}"),
    }
    assert_eq!(
        f.query("p", &probe::Query::Get { key: b"x".to_vec() }),
        Ok(probe::Output::None),
        "the batch was undone"
    );
    // Without a session the same batch applies.
    let plain = at(store, T0, Command::Batch(vec![put, huge]));
    assert!(matches!(plain, EntryResponse::BatchOutputs(_)), "applied");
}
