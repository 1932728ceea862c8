use super::*;
use alloc::vec;

#[derive(Debug, Default)]
struct Mem {
    saved: Vec<Persisted>,
    fail: bool,
}

impl VoterStore for Mem {
    type Error = ();
    fn save(&mut self, state: &Persisted) -> Result<(), ()> {
        if self.fail {
            return Err(());
        }
        self.saved.push(state.clone());
        Ok(())
    }
    fn writes(&self) -> u32 {
        self.saved.len() as u32
    }
}

fn leader(term: u64, node: u64) -> LeaderId {
    LeaderId { term, node }
}
fn id(term: u64, node: u64, index: u64) -> LogId {
    LogId {
        leader: leader(term, node),
        index,
    }
}
fn vote(term: u64, node: u64, committed: bool) -> Vote {
    Vote {
        leader: leader(term, node),
        committed,
    }
}
fn voter() -> PassiveVoter<Mem> {
    PassiveVoter::new(Persisted::default(), Mem::default())
}
fn append(
    v: &mut PassiveVoter<Mem>,
    now: u64,
    by: Vote,
    prev: Option<LogId>,
    runs: &[(u64, u64, u32)],
    commit: Option<LogId>,
) -> Response {
    let runs = runs
        .iter()
        .map(|&(t, n, count)| Run {
            leader: leader(t, n),
            count,
        })
        .collect();
    v.handle(
        now,
        &Request::Append {
            vote: by,
            prev,
            runs,
            commit,
            lease_ms: 600,
        },
    )
}
fn ask(v: &mut PassiveVoter<Mem>, now: u64, by: Vote, last: Option<LogId>) -> bool {
    match v.handle(
        now,
        &Request::Vote {
            vote: by,
            last,
            transfer: false,
        },
    ) {
        Response::Vote { granted, .. } => granted,
        other => panic!("{other:?}"),
    }
}

const OK: Response = Response::Append(AppendOutcome::Success);

#[test]
fn grants_one_vote_per_term_to_an_up_to_date_candidate_and_persists_it_first() {
    let mut v = voter();
    assert!(ask(&mut v, 0, vote(1, 1, false), None));
    assert_eq!(
        v.store().saved.last().map(|s| s.vote),
        Some(vote(1, 1, false))
    );
    // Another candidate in the same term: (1, 2) > (1, 1) in openraft's advanced order, and
    // openraft grants it too; a lower term never.
    assert!(!ask(&mut v, 0, vote(0, 9, false), None));
    // Log before the vote: a candidate with less log is refused even in a higher term.
    assert_eq!(
        append(&mut v, 0, vote(1, 1, true), None, &[(1, 1, 3)], None),
        OK
    );
    assert!(!ask(&mut v, 10_000, vote(2, 2, false), Some(id(1, 1, 1))));
    assert!(ask(&mut v, 10_000, vote(2, 2, false), Some(id(1, 1, 2))));
    assert_eq!(v.state().vote, vote(2, 2, false));
}

#[test]
fn a_leader_lease_refuses_candidates_until_it_expires_unless_the_leader_hands_over() {
    let mut v = voter();
    assert_eq!(
        append(&mut v, 1_000, vote(1, 1, true), None, &[(1, 1, 1)], None),
        OK
    );
    let last = Some(id(1, 1, 0));
    assert!(!ask(&mut v, 1_599, vote(2, 2, false), last));
    let transfer = v.handle(
        1_599,
        &Request::Vote {
            vote: vote(2, 2, false),
            last,
            transfer: true,
        },
    );
    assert!(matches!(transfer, Response::Vote { granted: true, .. }));
    let mut v = voter();
    append(&mut v, 1_000, vote(1, 1, true), None, &[(1, 1, 1)], None);
    assert!(ask(&mut v, 1_600, vote(2, 2, false), last));
}

#[test]
fn pre_votes_change_nothing() {
    let mut v = voter();
    let r = v.handle(
        0,
        &Request::PreVote {
            vote: vote(5, 2, false),
            last: None,
        },
    );
    assert!(matches!(r, Response::Vote { granted: true, .. }));
    assert_eq!(v.state().vote, Vote::default());
    assert!(v.store().saved.is_empty());
}

#[test]
fn appends_are_durable_before_acknowledged_and_heartbeats_write_nothing() {
    let mut v = voter();
    let l = vote(1, 1, true);
    assert_eq!(append(&mut v, 0, l, None, &[(1, 1, 5)], None), OK);
    let writes = v.store().writes();
    assert_eq!(
        v.store().saved.last().and_then(Persisted::last),
        Some(id(1, 1, 4))
    );
    // Heartbeats, with and without a new commit point.
    assert_eq!(append(&mut v, 1, l, Some(id(1, 1, 4)), &[], None), OK);
    assert_eq!(
        append(&mut v, 2, l, Some(id(1, 1, 4)), &[], Some(id(1, 1, 3))),
        OK
    );
    assert_eq!(v.store().writes(), writes);
    assert_eq!(v.state().committed, Some(id(1, 1, 3)));
    assert_eq!(
        v.state().tail,
        vec![Run {
            leader: leader(1, 1),
            count: 1
        }]
    );
    // A resent, already held batch is acknowledged without a write.
    assert_eq!(
        append(&mut v, 3, l, Some(id(1, 1, 1)), &[(1, 1, 2)], None),
        OK
    );
    assert_eq!(v.store().writes(), writes);
    assert_eq!(v.state().last(), Some(id(1, 1, 4)));
}

#[test]
fn a_missing_prev_is_a_conflict_and_a_new_leader_overwrites_the_uncommitted_tail() {
    let mut v = voter();
    let first = vote(1, 1, true);
    append(&mut v, 0, first, None, &[(1, 1, 3)], Some(id(1, 1, 0)));
    assert_eq!(
        append(&mut v, 0, first, Some(id(1, 1, 7)), &[(1, 1, 1)], None),
        Response::Append(AppendOutcome::Conflict)
    );
    // Leader 2 never had 1-1's entries 1 and 2: its entry 1 is its own. Probing with it
    // conflicts and drops the voter's tail from there.
    let second = vote(2, 2, true);
    assert_eq!(
        append(&mut v, 10_000, second, Some(id(2, 2, 1)), &[], None),
        Response::Append(AppendOutcome::Conflict)
    );
    assert_eq!(v.state().last(), Some(id(1, 1, 0)));
    assert_eq!(
        append(
            &mut v,
            10_000,
            second,
            Some(id(1, 1, 0)),
            &[(2, 2, 2)],
            None
        ),
        OK
    );
    assert_eq!(v.state().last(), Some(id(2, 2, 2)));
    assert!(!v.state().has(&id(1, 1, 1)));
    assert!(v.state().has(&id(2, 2, 1)));
    // The old leader is told it was deposed.
    assert_eq!(
        append(&mut v, 10_000, first, Some(id(1, 1, 0)), &[], None),
        Response::Append(AppendOutcome::HigherVote(second))
    );
}

#[test]
fn committed_ids_are_forgotten_and_match_anything() {
    let mut v = voter();
    let l = vote(3, 1, true);
    append(&mut v, 0, l, None, &[(3, 1, 100)], Some(id(3, 1, 99)));
    assert!(v.state().tail.is_empty());
    assert_eq!(v.state().committed, Some(id(3, 1, 99)));
    // Below the commit point every prev matches, as in openraft's `has_log_id`.
    assert_eq!(
        append(&mut v, 0, l, Some(id(3, 1, 42)), &[(3, 1, 57)], None),
        OK
    );
    assert_eq!(v.state().last(), Some(id(3, 1, 99)));
}

#[test]
fn a_snapshot_moves_the_commit_point_and_keeps_a_matching_tail_only() {
    let mut v = voter();
    let l = vote(1, 1, true);
    append(&mut v, 0, l, None, &[(1, 1, 10)], None);
    let keep = v.handle(
        0,
        &Request::Snapshot {
            vote: l,
            last: id(1, 1, 4),
            lease_ms: 0,
        },
    );
    assert_eq!(keep, Response::Snapshot { vote: l });
    assert_eq!(v.state().last(), Some(id(1, 1, 9)));
    assert_eq!(v.state().committed, Some(id(1, 1, 4)));
    let l2 = vote(2, 2, true);
    v.handle(
        0,
        &Request::Snapshot {
            vote: l2,
            last: id(2, 2, 20),
            lease_ms: 0,
        },
    );
    assert_eq!(v.state().last(), Some(id(2, 2, 20)));
    assert!(v.state().tail.is_empty());
}

#[test]
fn a_failed_save_grants_and_acknowledges_nothing() {
    let mut v = voter();
    v.store.fail = true;
    assert!(matches!(
        v.handle(
            0,
            &Request::Vote {
                vote: vote(1, 1, false),
                last: None,
                transfer: false
            }
        ),
        Response::Refused(Refusal::Storage)
    ));
    assert_eq!(
        append(&mut v, 0, vote(1, 1, true), None, &[(1, 1, 1)], None),
        Response::Refused(Refusal::Storage)
    );
    assert_eq!(v.state(), &Persisted::default());
}

#[test]
fn the_tail_is_bounded_in_runs() {
    let mut v = voter();
    let mut prev = None;
    for term in 1..=MAX_RUNS as u64 {
        let r = append(&mut v, 0, vote(term, 1, true), prev, &[(term, 1, 1)], None);
        assert_eq!(r, OK);
        prev = v.state().last();
    }
    let over = MAX_RUNS as u64 + 1;
    let r = append(&mut v, 0, vote(over, 1, true), prev, &[(over, 1, 1)], None);
    assert_eq!(r, Response::Refused(Refusal::TailFull));
    assert_eq!(v.state().last(), prev);
    // The same append with a commit point (this node's entries are committed: the leader
    // got its majority elsewhere) makes room first.
    assert_eq!(
        append(&mut v, 0, vote(over, 1, true), prev, &[(over, 1, 1)], prev),
        OK
    );
    assert_eq!(v.state().tail.len(), 1);
}

#[test]
fn out_of_bounds_requests_are_refused_and_change_nothing() {
    let mut v = voter();
    let l = vote(1, 1, true);
    let huge = append(&mut v, 0, l, None, &[(1, 1, u32::MAX)], None);
    assert_eq!(huge, Response::Refused(Refusal::Invalid));
    let far = v.handle(
        0,
        &Request::Snapshot {
            vote: l,
            last: id(1, 1, u64::MAX),
            lease_ms: 0,
        },
    );
    assert_eq!(far, Response::Refused(Refusal::Invalid));
    let far_vote = v.handle(
        0,
        &Request::Vote {
            vote: vote(2, 2, false),
            last: Some(id(2, 2, u64::MAX - 1)),
            transfer: false,
        },
    );
    assert_eq!(far_vote, Response::Refused(Refusal::Invalid));
    assert_eq!(v.state(), &Persisted::default());
    assert!(v.store().saved.is_empty());
}

#[test]
fn more_runs_than_the_bound_do_not_decode() {
    let runs = |n: usize| Request::Append {
        vote: vote(1, 1, true),
        prev: None,
        runs: (0..n)
            .map(|i| Run {
                leader: leader(i as u64 + 1, 1),
                count: 1,
            })
            .collect(),
        commit: None,
        lease_ms: 0,
    };
    let ok = postcard::to_allocvec(&runs(MAX_RUNS)).expect("encode");
    assert_eq!(
        postcard::from_bytes::<Request>(&ok).ok(),
        Some(runs(MAX_RUNS))
    );
    let over = postcard::to_allocvec(&runs(MAX_RUNS + 1)).expect("encode");
    assert!(postcard::from_bytes::<Request>(&over).is_err());
    // A length prefix claiming a million runs is refused before anything is allocated.
    let mut forged = over.clone();
    let at = forged
        .iter()
        .position(|&b| b == (MAX_RUNS + 1) as u8)
        .expect("length");
    forged.splice(at..=at, [0xC0, 0x84, 0x3D]);
    assert!(postcard::from_bytes::<Request>(&forged).is_err());
}
