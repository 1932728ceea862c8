//! A linearizability checker for a key-value store of registers.
//!
//! Keys are independent, so each key's operations are checked alone (P-compositionality, as
//! Porcupine does). For one key the search is Wing & Gong's with Lowe's memoization: walk
//! the call/return events in time order, try to linearize each pending call at its place,
//! backtrack when a return is reached before its call was linearized, and never revisit a
//! (set of linearized operations, register value) pair.
//!
//! Operations that certainly failed are dropped. An operation with an unknown outcome may
//! have taken effect at any time after its invocation: its return is at infinity, so it can
//! also be linearized after everything else, which is the same as never. Reads with an
//! unknown outcome observed nothing and are dropped.
//!
//! Written values are unique (the suite's clients make them so), which allows one more
//! pruning, without which a burst of unknown writes (a leader that fails every request for a
//! second) makes the search exponential: an unknown write whose value no read returned is
//! dropped. That is exact for a register: in any legal order that includes such a write,
//! no read falls between it and the next write (none saw its value), so the order without
//! it is legal too, and "it never happened" is a possible outcome of an unknown write.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Event, Op, Outcome};

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose operations admit no legal order.
    pub key: u32,
    /// Those operations, in invocation order.
    pub events: Vec<Event>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "key {}: no order of these {} operations explains what the clients saw:",
            self.key,
            self.events.len()
        )?;
        for e in &self.events {
            let ret = if e.outcome == Outcome::Unknown {
                "?".to_string()
            } else {
                format!("{:.3} ms", e.ret as f64 / 1e6)
            };
            writeln!(
                f,
                "  client {:>3} {:?} {:?} [{:.3} ms .. {ret}]",
                e.client,
                e.op,
                e.outcome,
                e.call as f64 / 1e6
            )?;
        }
        Ok(())
    }
}

/// Checks every key; returns the first violation found (keys in ascending order).
pub fn check(events: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    for e in events {
        let keep = !matches!(
            (e.outcome, e.op),
            (Outcome::Failed, _) | (Outcome::Unknown, Op::Read(_))
        );
        if keep {
            by_key.entry(e.key).or_default().push(*e);
        }
    }
    for (key, mut ops) in by_key {
        let seen: HashSet<u64> = ops
            .iter()
            .filter_map(|e| match e.op {
                Op::Read(Some(v)) => Some(v),
                _ => None,
            })
            .collect();
        ops.retain(|e| match (e.outcome, e.op) {
            (Outcome::Unknown, Op::Write(v)) => seen.contains(&v),
            _ => true,
        });
        ops.sort_by_key(|e| e.call);
        if !linearizable(&ops) {
            return Err(Violation { key, events: ops });
        }
    }
    Ok(())
}

/// One node of the event list: a call or a return of operation `op`.
#[derive(Debug, Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// The register model: a write sets the value; a read must see it.
fn step(state: Option<u64>, op: Op) -> Option<Option<u64>> {
    match op {
        Op::Write(v) => Some(Some(v)),
        Op::Read(seen) => (seen == state).then_some(state),
    }
}

fn linearizable(ops: &[Event]) -> bool {
    // Events: (time, is_return, op). Calls sort before returns at the same instant, so
    // operations that touch are concurrent.
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, e) in ops.iter().enumerate() {
        times.push((e.call, false, i));
        let ret = if e.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            e.ret.max(e.call)
        };
        times.push((ret, true, i));
    }
    times.sort();
    // Node 0 is the list head; node k+1 is times[k].
    let mut nodes = vec![Node {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: NIL,
    }];
    let mut call_node = vec![0; ops.len()];
    let mut ret_node = vec![0; ops.len()];
    for (k, &(_, is_return, op)) in times.iter().enumerate() {
        let id = k + 1;
        nodes.push(Node {
            op,
            is_call: !is_return,
            prev: k,
            next: NIL,
        });
        nodes[k].next = id;
        if is_return {
            ret_node[op] = id;
        } else {
            call_node[op] = id;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut state: Option<u64> = None;
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut entry = nodes[HEAD].next;

    let unlink = |nodes: &mut Vec<Node>, n: usize| {
        let (p, x) = (nodes[n].prev, nodes[n].next);
        nodes[p].next = x;
        if x != NIL {
            nodes[x].prev = p;
        }
    };
    let relink = |nodes: &mut Vec<Node>, n: usize| {
        let (p, x) = (nodes[n].prev, nodes[n].next);
        nodes[p].next = n;
        if x != NIL {
            nodes[x].prev = n;
        }
    };

    while nodes[HEAD].next != NIL {
        if entry == NIL {
            // Every remaining call was tried here; only a return can end a pass, so this
            // cannot happen, but never loop on it.
            return false;
        }
        let node = nodes[entry];
        if node.is_call {
            let op = node.op;
            if let Some(next_state) = step(state, ops[op].op) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), next_state)) {
                    stack.push((op, state));
                    state = next_state;
                    linearized = with;
                    // Lift the operation out of the list (call, then return).
                    unlink(&mut nodes, call_node[op]);
                    unlink(&mut nodes, ret_node[op]);
                    entry = nodes[HEAD].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((op, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut nodes, ret_node[op]);
            relink(&mut nodes, call_node[op]);
            entry = nodes[call_node[op]].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: u32, op: Op, call: u64, ret: u64, outcome: Outcome) -> Event {
        Event {
            client,
            key: 7,
            op,
            call,
            ret,
            outcome,
        }
    }
    use Op::{Read, Write};
    use Outcome::{Failed, Ok as Done, Unknown};

    #[test]
    fn sequential_reads_see_the_last_write() {
        let h = [
            ev(1, Write(1), 0, 10, Done),
            ev(2, Read(Some(1)), 20, 30, Done),
            ev(1, Write(2), 40, 50, Done),
            ev(2, Read(Some(2)), 60, 70, Done),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [
            ev(1, Write(1), 0, 10, Done),
            ev(1, Write(2), 20, 30, Done),
            ev(2, Read(Some(1)), 40, 50, Done),
        ];
        let v = check(&h).expect_err("stale read");
        assert_eq!(v.key, 7);
        assert!(v.to_string().contains("Read(Some(1))"), "{v}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = [
            ev(1, Write(5), 0, 10, Done),
            ev(2, Read(None), 20, 30, Done),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = [
            ev(1, Write(1), 0, 100, Done),
            ev(2, Read(None), 10, 20, Done),
            ev(3, Read(Some(1)), 30, 40, Done),
            ev(4, Read(Some(1)), 110, 120, Done),
        ];
        assert_eq!(check(&h), Ok(()));
        // Once a read saw the new value, a later read may not see the old one.
        let h = [
            ev(1, Write(1), 0, 100, Done),
            ev(3, Read(Some(1)), 10, 20, Done),
            ev(2, Read(None), 30, 40, Done),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let took = [
            ev(1, Write(1), 0, 10, Unknown),
            ev(2, Read(Some(1)), 500, 510, Done),
        ];
        assert_eq!(check(&took), Ok(()));
        let never = [
            ev(1, Write(1), 0, 10, Unknown),
            ev(2, Read(None), 500, 510, Done),
        ];
        assert_eq!(check(&never), Ok(()));
        // But not before it was invoked.
        let early = [
            ev(2, Read(Some(1)), 0, 5, Done),
            ev(1, Write(1), 10, 20, Unknown),
        ];
        assert!(check(&early).is_err());
    }

    #[test]
    fn a_burst_of_unknown_writes_nobody_read_checks_quickly_and_violations_still_show() {
        // 300 overlapping writes of unknown outcome, one of which a later read saw.
        let mut h: Vec<Event> = (0..300)
            .map(|i| ev(i, Write(u64::from(i) + 1), u64::from(i), 1_000_000, Unknown))
            .collect();
        h.push(ev(400, Read(Some(7)), 2_000_000, 2_000_010, Done));
        assert_eq!(check(&h), Ok(()));
        // A value nobody wrote is still caught, and so is a read that goes back in time.
        let mut bad = h.clone();
        bad.push(ev(401, Read(Some(9_999)), 3_000_000, 3_000_010, Done));
        assert!(check(&bad).is_err());
        let mut back = h;
        back.push(ev(402, Write(5_000), 4_000_000, 4_000_010, Done));
        back.push(ev(403, Read(Some(7)), 5_000_000, 5_000_010, Done));
        assert!(check(&back).is_err());
    }

    #[test]
    fn failed_operations_are_ignored() {
        let h = [
            ev(1, Write(1), 0, 10, Failed),
            ev(2, Read(None), 20, 30, Done),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut a = ev(1, Write(1), 0, 10, Done);
        a.key = 1;
        let mut b = ev(2, Read(None), 20, 30, Done);
        b.key = 2;
        assert_eq!(check(&[a, b]), Ok(()));
    }

    #[test]
    fn a_long_concurrent_history_checks_quickly() {
        // 8 clients, 400 operations on one key, heavily overlapping; reads see the value
        // of the latest write that completed before they started, or a concurrent one.
        let mut h = Vec::new();
        let mut t = 0u64;
        let mut last = None;
        for i in 0..400u64 {
            let client = (i % 8) as u32;
            if i % 3 == 0 {
                h.push(ev(client, Write(i), t, t + 25, Done));
                last = Some(i);
            } else {
                h.push(ev(client, Read(last), t + 26, t + 40, Done));
            }
            t += 10;
        }
        assert_eq!(check(&h), Ok(()));
    }
}
