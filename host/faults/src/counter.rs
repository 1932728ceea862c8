//! An exactly-once checker for counters: one client increments its own counter, one
//! increment at a time, and sees each increment's value (the counter after it).
//!
//! A write applied twice, or an acknowledged write applied never, shows in the values:
//! every increment the client invoked before an acknowledged one was applied at most once
//! and, if acknowledged, exactly once, so the value the k-th acknowledged increment saw lies
//! between k (all acknowledged ones before it applied, once) and k plus the increments
//! whose outcome the client never learned (each applied at most once, at any time after it
//! was invoked); the values grow strictly; and the final value lies between the number of
//! acknowledged increments and that plus every unknown one. This is Jepsen's counter check,
//! tightened by the values the client saw.

/// How one increment ended, in the order the client invoked them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Increment {
    /// Acknowledged: the counter's value right after it.
    Acked(u64),
    /// Certainly not applied (refused before it could be).
    Failed,
    /// The client does not know.
    Unknown,
}

/// How a counter's history fails the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The final value is below what the acknowledged increments imply: the final read
    /// missed acknowledged writes (lost, or the read was stale).
    Missed(String),
    /// Anything else: an increment applied twice, or values no order of the increments
    /// explains.
    Wrong(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missed(why) | Self::Wrong(why) => f.write_str(why),
        }
    }
}

/// Checks one client's increments against the counter's final value.
pub fn check(increments: &[Increment], final_value: u64) -> Result<(), Violation> {
    let (mut acked, mut unknown, mut last) = (0u64, 0u64, 0u64);
    for (i, inc) in increments.iter().enumerate() {
        match *inc {
            Increment::Acked(v) => {
                acked += 1;
                if v <= last || v < acked || v > acked + unknown {
                    return Err(Violation::Wrong(format!(
                        "increment {i} (acknowledged number {acked}) saw {v}, after {last}: \
                         with {unknown} increments of unknown outcome before it, it must see \
                         more than {last} and {acked} to {} (an increment applied twice, or an \
                         acknowledged one lost)",
                        acked + unknown
                    )));
                }
                last = v;
            }
            Increment::Unknown => unknown += 1,
            Increment::Failed => {}
        }
    }
    if final_value < acked.max(last) || final_value > acked + unknown {
        let why = format!(
            "the counter ended at {final_value} after {acked} acknowledged increments (the \
             last saw {last}) and {unknown} of unknown outcome: it must end between {} and {}",
            acked.max(last),
            acked + unknown
        );
        return Err(if final_value < acked.max(last) {
            Violation::Missed(why)
        } else {
            Violation::Wrong(why)
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Increment::{Acked, Failed, Unknown};
    use super::*;

    #[test]
    fn exactly_once_histories_pass() {
        assert!(check(&[], 0).is_ok());
        assert!(check(&[Acked(1), Acked(2), Failed, Acked(3)], 3).is_ok());
        // An unknown one applied before the next, or later, or never.
        assert!(check(&[Acked(1), Unknown, Acked(3)], 3).is_ok());
        assert!(check(&[Acked(1), Unknown, Acked(2)], 3).is_ok());
        assert!(check(&[Acked(1), Unknown, Acked(2)], 2).is_ok());
    }

    #[test]
    fn a_write_applied_twice_or_lost_is_caught() {
        // The retry of increment 2 applied again: the next one sees 4.
        let e = check(&[Acked(1), Acked(2), Acked(4)], 4).expect_err("applied twice");
        assert!(e.to_string().contains("applied twice"), "{e}");
        // ... or only the final value shows it.
        assert!(check(&[Acked(1), Acked(2)], 3).is_err());
        // An acknowledged increment that never applied, or a final read that missed it.
        assert!(matches!(
            check(&[Acked(1), Acked(2)], 1),
            Err(Violation::Missed(_))
        ));
        assert!(matches!(
            check(&[Acked(1), Unknown, Acked(3)], 2),
            Err(Violation::Missed(_))
        ));
        assert!(check(&[Acked(1), Acked(1)], 1).is_err());
        // More than the unknown ones can explain.
        assert!(check(&[Unknown, Acked(3)], 3).is_err());
        assert!(check(&[Failed, Acked(2)], 2).is_err());
    }
}
