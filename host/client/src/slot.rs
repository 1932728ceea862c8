//! The client's session (`wraft_core::session`): its id, the next sequence, and the
//! sequences still in flight, from which each write's `acked` follows.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use wraft_core::session::Sequence;

/// Where a client keeps its session: none until the first write opens one, and none again
/// after the cluster says it ended.
#[derive(Debug, Default)]
pub(crate) struct SessionSlot {
    /// Held while a session is being opened, so concurrent first writes open one, not many.
    pub(crate) opening: tokio::sync::Mutex<()>,
    state: Mutex<Option<Session>>,
}

#[derive(Debug)]
struct Session {
    id: u64,
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// A sequence in flight; dropping it (the write answered, failed, or was cancelled by its
/// caller) lets later writes acknowledge it.
#[derive(Debug)]
pub(crate) struct Taken<'a> {
    slot: &'a SessionSlot,
    pub(crate) sequence: Sequence,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(s) = self
            .slot
            .lock()
            .as_mut()
            .filter(|s| s.id == self.sequence.session)
        {
            s.in_flight.remove(&self.sequence.seq);
        }
    }
}

impl SessionSlot {
    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        // Nothing here panics while holding the lock; if something did, the set is still
        // whole (each operation is one insert or remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next sequence of the open session, if one is open.
    pub(crate) fn take(&self) -> Option<Taken<'_>> {
        let mut state = self.lock();
        let s = state.as_mut()?;
        let seq = s.next;
        s.next += 1;
        s.in_flight.insert(seq);
        // Every sequence below the oldest in flight has its answer (or was given up).
        let oldest = s.in_flight.first().copied().unwrap_or(seq);
        Some(Taken {
            slot: self,
            sequence: Sequence {
                session: s.id,
                seq,
                acked: oldest - 1,
            },
        })
    }

    /// Makes `id`, just opened, the session writes go on.
    pub(crate) fn install(&self, id: u64) {
        *self.lock() = Some(Session {
            id,
            next: 1,
            in_flight: BTreeSet::new(),
        });
    }

    /// Forgets session `id` (the cluster says it ended), unless another replaced it.
    pub(crate) fn forget(&self, id: u64) {
        let mut state = self.lock();
        if state.as_ref().is_some_and(|s| s.id == id) {
            *state = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_stays_below_the_oldest_write_in_flight_even_a_cancelled_one_until_dropped() {
        let slot = SessionSlot::default();
        assert!(slot.take().is_none(), "no session yet");
        slot.install(7);
        let one = slot.take().expect("open");
        let two = slot.take().expect("open");
        assert_eq!((two.sequence.session, two.sequence.seq), (7, 2));
        assert_eq!(two.sequence.acked, 0, "1 is still in flight");
        drop(two);
        assert_eq!(slot.take().expect("open").sequence.acked, 0);
        drop(one); // answered, or its caller gave up
        let four = slot.take().expect("open");
        assert_eq!((four.sequence.seq, four.sequence.acked), (4, 3));
        slot.forget(8);
        assert!(
            slot.take().is_some(),
            "another session's end changes nothing"
        );
        slot.forget(7);
        assert!(slot.take().is_none());
        drop(four); // after its session ended: nothing to do
    }
}
