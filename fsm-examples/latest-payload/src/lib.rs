//! latest-payload: the FSM behind Optimism's op-conductor. The active sequencer commits each
//! new unsafe L2 block payload through raft before gossiping it, so that whichever node
//! leads next resumes from the latest block. Committing an older block is refused.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use serde::{Deserialize, Serialize};
use wraft_guest::{Context, Error, Fsm, Hex32, HexBytes};

/// One L2 block's execution payload, as the sequencer produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: Hex32,
    /// Parent block hash.
    pub parent_hash: Hex32,
    /// The encoded execution payload envelope.
    pub payload: HexBytes,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Commit a new latest payload. Refused if its number is below the stored one, or equal
    /// with a different hash. Re-committing the stored payload is a no-op.
    Commit(Payload),
}

/// What a commit returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The stored block number after the commit.
    pub number: u64,
    /// False if the payload was already the latest (an idempotent retry).
    pub changed: bool,
}

/// Queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The latest payload, if any.
    Latest,
}

/// The FSM.
#[derive(Debug)]
pub struct LatestPayload;

const LATEST: &[u8] = b"latest";

impl Fsm for LatestPayload {
    type Command = Command;
    type Output = Committed;
    type Query = Query;
    type QueryOutput = Option<Payload>;

    fn apply(ctx: &mut Context<'_>, command: Command) -> Result<Committed, Error> {
        let Command::Commit(new) = command;
        if let Some(old) = ctx.get_as::<Payload>(LATEST)? {
            if new.number < old.number {
                return Err(Error::new(format!(
                    "payload for block {} is older than the latest block {}",
                    new.number, old.number
                )));
            }
            if new.number == old.number {
                if new.hash != old.hash {
                    return Err(Error::new(format!(
                        "conflicting payload for block {}: hash {:?} differs from stored {:?}",
                        new.number, new.hash, old.hash
                    )));
                }
                return Ok(Committed {
                    number: old.number,
                    changed: false,
                });
            }
        }
        ctx.put_as(LATEST, &new)?;
        Ok(Committed {
            number: new.number,
            changed: true,
        })
    }

    fn query(ctx: &Context<'_>, query: Query) -> Result<Option<Payload>, Error> {
        match query {
            Query::Latest => ctx.get_as(LATEST),
        }
    }
}

wraft_guest::export_fsm!(LatestPayload);

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_guest::testing::TestFsm;

    fn payload(number: u64, tag: u8) -> Payload {
        Payload {
            number,
            hash: Hex32([tag; 32]),
            parent_hash: Hex32([tag.wrapping_sub(1); 32]),
            payload: HexBytes(vec![tag; 64]),
        }
    }

    #[test]
    fn keeps_the_latest_and_refuses_older() {
        let mut fsm = TestFsm::<LatestPayload>::new();
        assert_eq!(fsm.query(Query::Latest), Ok(None));
        assert_eq!(
            fsm.apply(Command::Commit(payload(10, 1))),
            Ok(Committed {
                number: 10,
                changed: true
            })
        );
        assert_eq!(
            fsm.apply(Command::Commit(payload(11, 2))),
            Ok(Committed {
                number: 11,
                changed: true
            })
        );
        let err = fsm
            .apply(Command::Commit(payload(9, 3)))
            .expect_err("older");
        assert!(
            err.message().contains("older than the latest block 11"),
            "{err}"
        );
        assert_eq!(fsm.query(Query::Latest), Ok(Some(payload(11, 2))));
    }

    #[test]
    fn same_block_is_idempotent_but_a_conflict_is_refused() {
        let mut fsm = TestFsm::<LatestPayload>::new();
        fsm.apply(Command::Commit(payload(5, 7))).expect("first");
        assert_eq!(
            fsm.apply(Command::Commit(payload(5, 7))),
            Ok(Committed {
                number: 5,
                changed: false
            })
        );
        assert!(fsm.apply(Command::Commit(payload(5, 8))).is_err());
        assert_eq!(fsm.query(Query::Latest), Ok(Some(payload(5, 7))));
    }
}
