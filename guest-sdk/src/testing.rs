//! Run an FSM natively, against an in-memory store, with the host's semantics: a rejected
//! command leaves the state unchanged, the timestamp never decreases, each command gets the
//! next log index and the same PRNG the host would give it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ops::Bound;

use wraft_core::abi::{EntryContext, MAX_SCAN_BYTES, MAX_SCAN_ITEMS};
use wraft_core::rng::EntryRng;

use crate::{Context, Error, Fsm, Host};

/// An in-memory [`Host`]: a sorted map plus an entry context.
#[derive(Debug, Clone)]
pub struct MemHost {
    /// The FSM's keyspace.
    pub data: BTreeMap<Vec<u8>, Vec<u8>>,
    ctx: EntryContext,
    rng: EntryRng,
}

impl MemHost {
    /// An empty store at index 0.
    pub fn new() -> Self {
        Self {
            data: BTreeMap::new(),
            ctx: EntryContext::default(),
            rng: EntryRng::new(0, 0),
        }
    }

    /// Sets the context for the next call.
    pub fn set_entry(&mut self, ctx: EntryContext) {
        self.rng = EntryRng::new(ctx.index, ctx.position);
        self.ctx = ctx;
    }
}

impl Default for MemHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Host for MemHost {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.data.get(key).cloned()
    }
    fn put(&mut self, key: &[u8], value: &[u8]) {
        assert!(!self.ctx.is_query, "queries are read-only");
        self.data.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) -> bool {
        assert!(!self.ctx.is_query, "queries are read-only");
        self.data.remove(key).is_some()
    }
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in self.data.range::<[u8], _>((Bound::Included(start), upper)) {
            if out.len() as u32 >= limit.min(MAX_SCAN_ITEMS) || bytes > MAX_SCAN_BYTES {
                break;
            }
            bytes += k.len() + v.len();
            out.push((k.clone(), v.clone()));
        }
        out
    }
    fn entry(&self) -> EntryContext {
        self.ctx
    }
    fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn log(&self, _level: i32, _message: &str) {}
}

/// An FSM under test: apply commands and run queries as the host would.
#[derive(Debug)]
pub struct TestFsm<F: Fsm> {
    /// The store; inspect `host.data` to check what the FSM wrote.
    pub host: MemHost,
    index: u64,
    timestamp_ms: u64,
    _fsm: PhantomData<F>,
}

impl<F: Fsm> TestFsm<F> {
    /// A fresh instance, after `init`.
    pub fn new() -> Self {
        let mut t = Self {
            host: MemHost::new(),
            index: 0,
            timestamp_ms: 0,
            _fsm: PhantomData,
        };
        t.transact(0, |ctx| F::init(ctx)).expect("init failed");
        t
    }

    /// Sets the leader timestamp of the following entries (the FSM sees
    /// `max(timestamp, last applied timestamp)`, as on a real node).
    pub fn set_time_ms(&mut self, timestamp_ms: u64) {
        self.timestamp_ms = self.timestamp_ms.max(timestamp_ms);
    }

    /// Applies `command` as the next log entry.
    pub fn apply(&mut self, command: F::Command) -> Result<F::Output, Error> {
        self.transact(0, |ctx| F::apply(ctx, command))
    }

    /// Applies `commands` as one `Batch` entry: all apply, or none (the first error is
    /// returned with its position).
    pub fn apply_batch(
        &mut self,
        commands: Vec<F::Command>,
    ) -> Result<Vec<F::Output>, (u32, Error)> {
        self.index += 1;
        let saved = self.host.data.clone();
        let mut outputs = Vec::with_capacity(commands.len());
        for (position, command) in commands.into_iter().enumerate() {
            self.host.set_entry(self.ctx(position as u32, false));
            match F::apply(&mut Context::new(&mut self.host), command) {
                Ok(out) => outputs.push(out),
                Err(e) => {
                    self.host.data = saved;
                    return Err((position as u32, e));
                }
            }
        }
        Ok(outputs)
    }

    /// Runs `migrate(from_version)` as an upgrade entry.
    pub fn migrate(&mut self, from_version: u32) -> Result<(), Error> {
        self.transact(0, |ctx| F::migrate(ctx, from_version))
    }

    /// Answers `query` against the current state.
    pub fn query(&mut self, query: F::Query) -> Result<F::QueryOutput, Error> {
        self.host.set_entry(self.ctx(0, true));
        F::query(&Context::new(&mut self.host), query)
    }

    fn ctx(&self, position: u32, is_query: bool) -> EntryContext {
        EntryContext {
            index: self.index,
            term: 1,
            timestamp_ms: self.timestamp_ms,
            position,
            is_query,
        }
    }

    fn transact<T>(
        &mut self,
        position: u32,
        f: impl FnOnce(&mut Context<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.index += 1;
        self.host.set_entry(self.ctx(position, false));
        let saved = self.host.data.clone();
        let result = f(&mut Context::new(&mut self.host));
        if result.is_err() {
            self.host.data = saved;
        }
        result
    }
}

impl<F: Fsm> Default for TestFsm<F> {
    fn default() -> Self {
        Self::new()
    }
}
