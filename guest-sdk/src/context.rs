//! What an FSM sees during a call: its keyspace, the entry context and a deterministic PRNG.

use alloc::vec::Vec;
use serde::{Serialize, de::DeserializeOwned};
use wraft_core::abi::{EntryContext, MAX_SCAN_ITEMS};

use crate::Error;

/// The services an FSM call runs against: the host imports on wasm, an in-memory store in
/// native tests ([`crate::testing::MemHost`]).
pub trait Host {
    /// The value stored under `key`, if any.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value` under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`; true if a value was removed.
    fn delete(&mut self, key: &[u8]) -> bool;
    /// Pairs with `start <= key < end` (`end == None`: no upper bound), in key order, at most
    /// `limit`. May return fewer than `limit` even if more exist (the host caps page size);
    /// an empty page means the range is exhausted.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// The entry context.
    fn entry(&self) -> EntryContext;
    /// The next value of the entry's deterministic PRNG.
    fn random_u64(&mut self) -> u64;
    /// Writes a message to the node's log.
    fn log(&self, level: i32, message: &str);
}

/// An FSM's view of one call. `apply`, `init` and `migrate` get `&mut Context` (read and
/// write); `query` gets `&Context` (read only).
#[allow(missing_debug_implementations)]
pub struct Context<'a> {
    host: &'a mut dyn Host,
}

impl<'a> Context<'a> {
    /// A context over `host`.
    pub fn new(host: &'a mut dyn Host) -> Self {
        Self { host }
    }

    /// Log index, term, timestamp (ms since the epoch, never decreasing) of the entry being
    /// applied, and the command's position in it (a batch's or a group's commands share the
    /// index: `(index, position)` is unique per command).
    pub fn entry(&self) -> EntryContext {
        self.host.entry()
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.host.get(key)
    }

    /// The postcard-decoded value under `key`.
    pub fn get_as<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        self.host.get(key).map(|bytes| decode(&bytes)).transpose()
    }

    /// Stores `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.host.put(key, value)
    }

    /// Stores `value`, postcard-encoded, under `key`. A value that does not encode (a
    /// `Serialize` impl that fails, a sequence of unknown length) is an error, and nothing is
    /// stored: writing an empty value instead would lose the data without a word.
    pub fn put_as<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(value).map_err(|e| {
            Error::new(alloc::format!("the value for {key:?} does not encode: {e}"))
        })?;
        self.host.put(key, &bytes);
        Ok(())
    }

    /// Removes `key`; true if it was present.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.host.delete(key)
    }

    /// One page of pairs with `start <= key < end` (`end == None`: unbounded), in key order,
    /// at most `limit`.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.host.scan(start, end, limit)
    }

    /// Every pair whose key starts with `prefix`, in key order (pages through the range).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let end = prefix_end(prefix);
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut start = prefix.to_vec();
        loop {
            let page = self.host.scan(&start, end.as_deref(), MAX_SCAN_ITEMS);
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            out.extend(page);
        }
        out
    }

    /// The next value of the entry's deterministic PRNG (same on every replica).
    pub fn random_u64(&mut self) -> u64 {
        self.host.random_u64()
    }

    /// Writes an informational message to the node's log.
    pub fn log(&self, message: &str) {
        self.host.log(wraft_core::abi::log_level::INFO, message)
    }
}

/// Decodes a postcard value, as stored by [`Context::put_as`] (for values that came from
/// [`Context::scan`] or [`Context::scan_prefix`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    Ok(postcard::from_bytes(bytes)?)
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose `Serialize` fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }

    #[test]
    fn a_value_that_does_not_encode_is_an_error_and_nothing_is_stored() {
        let mut host = crate::testing::MemHost::new();
        let mut ctx = Context::new(&mut host);
        ctx.put(b"k", b"before");
        let err = ctx.put_as(b"k", &Unencodable).expect_err("refused");
        assert!(err.message().contains("does not encode"), "{err}");
        assert_eq!(
            ctx.get(b"k"),
            Some(b"before".to_vec()),
            "the old value stays"
        );
        ctx.put_as(b"n", &7u64).expect("an encodable value");
        assert_eq!(ctx.get_as::<u64>(b"n").expect("decode"), Some(7));
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
