//! probe: a test guest. It exercises every host import and, on command, misbehaves the ways
//! a hostile or buggy FSM would (endless loop, memory bomb, trap, panic, huge output, state
//! smuggled in a global), so the host's containment can be tested with a real SDK module.
//!
//! With the `next` feature (the `probe-next` package) it is the probe's next version: FSM
//! version 4, whose `migrate` moves every key under `v4/` (or refuses while the key
//! `refuse-upgrade` exists), so upgrades that rewrite data can be tested.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use serde::{Deserialize, Serialize};
use wraft_guest::{Context, Error, Fsm};

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store a pair.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove a key; outputs whether it existed.
    Delete { key: Vec<u8> },
    /// Add one to the u64 counter under `key`; outputs the new value.
    Incr { key: Vec<u8> },
    /// Reject with `message`.
    Fail { message: String },
    /// Store a pair, then reject: the write must not persist.
    PutThenFail { key: Vec<u8>, value: Vec<u8> },
    /// Store a pair, then panic: the write must not persist.
    PutThenPanic { key: Vec<u8>, value: Vec<u8> },
    /// Store a pair, then execute `unreachable`.
    PutThenTrap { key: Vec<u8>, value: Vec<u8> },
    /// Loop forever.
    Loop,
    /// Allocate until memory runs out.
    AllocBomb,
    /// Output `len` bytes.
    HugeOutput { len: u32 },
    /// Increment a global and output it: always 1 if instances are fresh per call.
    BumpGlobal,
    /// Output the entry context and two PRNG draws.
    Context,
    /// Do nothing.
    Nop,
    /// Store `rounds` under `key`, then mix a number `rounds` times (floating point and
    /// integer work) and output it: with a fuel limit, commands past some `rounds` run out of
    /// fuel and their write is undone, at the same command on every node.
    Spin { key: Vec<u8>, rounds: u64 },
    /// Store a value that does not encode under `key` with `put_as`: refused, nothing stored.
    PutUnencodable { key: Vec<u8> },
    /// Answer with an output that does not encode: the call aborts, it does not answer OK.
    OutputUnencodable,
}

/// A value whose encoding always fails (a `Serialize` impl may fail), to show the SDK
/// refuses it instead of storing an empty value or answering nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Nothing to report.
    None,
    /// A boolean.
    Flag(bool),
    /// A number.
    Number(u64),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Key/value pairs.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    /// A value that does not encode (`Command::OutputUnencodable`).
    Unencodable(Unencodable),
    /// What `Command::Context` saw.
    Context {
        index: u64,
        term: u64,
        timestamp_ms: u64,
        position: u32,
        random: [u64; 2],
    },
}

/// Queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The value under `key`.
    Get { key: Vec<u8> },
    /// One page of a range scan.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    /// Every pair under a prefix.
    ScanPrefix { prefix: Vec<u8> },
    /// Try to write (must fail: queries are read-only).
    TryWrite,
    /// Loop forever.
    Loop,
}

/// The FSM.
#[derive(Debug)]
pub struct Probe;

static GLOBAL: AtomicU64 = AtomicU64::new(0);

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("trap");
}

fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = core::hint::black_box(i.wrapping_add(1));
    }
}

impl Fsm for Probe {
    type Command = Command;
    type Output = Output;
    type Query = Query;
    type QueryOutput = Output;
    const VERSION: u32 = if cfg!(feature = "next") { 4 } else { 3 };

    fn apply(ctx: &mut Context<'_>, command: Command) -> Result<Output, Error> {
        Ok(match command {
            Command::Put { key, value } => {
                ctx.put(&key, &value);
                Output::None
            }
            Command::Delete { key } => Output::Flag(ctx.delete(&key)),
            Command::Incr { key } => {
                let n = ctx.get_as::<u64>(&key)?.unwrap_or(0) + 1;
                ctx.put_as(&key, &n)?;
                Output::Number(n)
            }
            Command::Fail { message } => return Err(Error::new(message)),
            Command::PutThenFail { key, value } => {
                ctx.put(&key, &value);
                return Err(Error::new("failed after writing"));
            }
            Command::PutThenPanic { key, value } => {
                ctx.put(&key, &value);
                panic!("probe panicked on purpose");
            }
            Command::PutThenTrap { key, value } => {
                ctx.put(&key, &value);
                trap()
            }
            Command::Loop => spin(),
            Command::AllocBomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            Command::HugeOutput { len } => Output::Bytes(vec![7u8; len as usize]),
            Command::BumpGlobal => Output::Number(GLOBAL.fetch_add(1, Ordering::Relaxed) + 1),
            Command::Context => {
                let e = ctx.entry();
                let random = [ctx.random_u64(), ctx.random_u64()];
                Output::Context {
                    index: e.index,
                    term: e.term,
                    timestamp_ms: e.timestamp_ms,
                    position: e.position,
                    random,
                }
            }
            Command::Nop => Output::None,
            Command::Spin { key, rounds } => {
                ctx.put_as(&key, &rounds)?;
                let mut x = 1.0f64;
                let mut n = 0u64;
                for i in 0..core::hint::black_box(rounds) {
                    x = x * 1.000_001 + 0.5 / (i as f64 + 1.0);
                    n = n
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(x.to_bits());
                }
                Output::Number(n)
            }
            Command::PutUnencodable { key } => {
                ctx.put_as(&key, &Unencodable)?;
                Output::None
            }
            Command::OutputUnencodable => Output::Unencodable(Unencodable),
        })
    }

    fn query(ctx: &Context<'_>, query: Query) -> Result<Output, Error> {
        Ok(match query {
            Query::Get { key } => match ctx.get(&key) {
                Some(v) => Output::Bytes(v),
                None => Output::None,
            },
            Query::Scan { start, end, limit } => {
                Output::Pairs(ctx.scan(&start, end.as_deref(), limit))
            }
            Query::ScanPrefix { prefix } => Output::Pairs(ctx.scan_prefix(&prefix)),
            Query::TryWrite => {
                // A query only has `&Context`; go around it the way a hostile module would.
                #[cfg(target_arch = "wasm32")]
                wraft_guest::Host::put(&mut wraft_guest::__rt::raw_host(), b"sneaky", b"write");
                Output::None
            }
            Query::Loop => spin(),
        })
    }

    fn migrate(ctx: &mut Context<'_>, from_version: u32) -> Result<(), Error> {
        if cfg!(feature = "next") {
            if ctx.get(b"refuse-upgrade").is_some() {
                return Err(Error::new("upgrade refused: the key refuse-upgrade is set"));
            }
            for (key, value) in ctx.scan_prefix(b"") {
                if !key.starts_with(b"v4/") {
                    ctx.delete(&key);
                    ctx.put(&[b"v4/", &key[..]].concat(), &value);
                }
            }
        }
        ctx.put_as(b"migrated-from", &(from_version as u64))?;
        Ok(())
    }
}

wraft_guest::export_fsm!(Probe);

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_guest::testing::TestFsm;

    #[test]
    fn failed_commands_leave_no_writes_natively_too() {
        let mut fsm = TestFsm::<Probe>::new();
        assert_eq!(
            fsm.apply(Command::Incr { key: b"n".to_vec() }),
            Ok(Output::Number(1))
        );
        assert!(
            fsm.apply(Command::PutThenFail {
                key: b"x".to_vec(),
                value: b"1".to_vec()
            })
            .is_err()
        );
        assert!(!fsm.host.data.contains_key(&b"x"[..]));
        let batch = vec![
            Command::Incr { key: b"n".to_vec() },
            Command::Fail {
                message: "no".into(),
            },
        ];
        assert_eq!(
            fsm.apply_batch(batch).map(|_| ()),
            Err((1, Error::new("no")))
        );
        assert_eq!(
            fsm.query(Query::Get { key: b"n".to_vec() }),
            Ok(Output::Bytes(vec![1]))
        );
    }
}
