//! The passive voter's state machine (`PassiveVoter::handle`) under any sequence of decoded
//! requests, clock steps and storage failures: it never panics, its vote and commit point
//! never go back, its tail stays within its bounds, a refused request changes nothing, a
//! granted vote or a successful append is reflected in its state, and whatever it answers
//! is durable first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_core::voter::{
    AppendOutcome, MAX_RUNS, PassiveVoter, Persisted, Request, Response, VoterStore,
};
use wraft_fuzz::Input;
use wraft_fuzz::voter::MemStore;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let store = MemStore::default();
    let failing = store.failing.clone();
    let mut voter = PassiveVoter::new(Persisted::default(), store);
    let mut now = 0u64;
    for _ in 0..256 {
        now += u64::from(input.u16());
        failing.set(input.byte() & 0x80 != 0);
        let Ok((request, rest)) = postcard::take_from_bytes::<Request>(input.0) else {
            break;
        };
        input.0 = rest;
        let before = voter.state().clone();
        let writes = voter.store().writes();
        let response = voter.handle(now, &request);
        let after = voter.state().clone();

        assert!(after.vote >= before.vote, "vote went back: {request:?}");
        let committed = |s: &Persisted| s.committed.map(|c| c.index);
        assert!(
            committed(&after) >= committed(&before),
            "commit went back: {request:?}"
        );
        assert!(after.tail.len() <= MAX_RUNS && after.tail.iter().all(|r| r.count > 0));
        if let (Some(c), last) = (after.committed, after.last()) {
            assert!(
                last.is_some_and(|l| l.index >= c.index),
                "committed past the log"
            );
        }
        let saved = &voter.store().saved;
        assert_eq!(
            (saved.vote, saved.last()),
            (after.vote, after.last()),
            "not durable"
        );
        if failing.get() {
            assert_eq!(voter.store().writes(), writes);
        }
        match (&request, &response) {
            (_, Response::Refused(_)) | (Request::PreVote { .. } | Request::Status, _) => {
                assert_eq!(
                    after, before,
                    "{request:?} answered {response:?} changed state"
                );
            }
            (Request::Vote { vote, .. }, Response::Vote { granted: true, .. }) => {
                assert_eq!(after.vote, *vote);
            }
            (
                Request::Append {
                    vote, prev, runs, ..
                },
                Response::Append(AppendOutcome::Success),
            ) => {
                assert_eq!(after.vote, *vote);
                let appended: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
                let end = prev.map_or(0, |p| p.index + 1) + appended;
                if end > 0 {
                    assert!(
                        after.last().is_some_and(|l| l.index + 1 >= end),
                        "lost entries"
                    );
                }
            }
            _ => {}
        }
    }
});
