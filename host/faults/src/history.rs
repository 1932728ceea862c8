//! A history of operations on a key-value store of registers: what each client invoked,
//! when, and what it saw.

use std::sync::Mutex;
use std::time::Instant;

/// An operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write this value (values are unique per history).
    Write(u64),
    /// Read; the value seen (`None`: the key was absent).
    Read(Option<u64>),
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect and the client saw its result.
    Ok,
    /// It certainly did not take effect.
    Failed,
    /// The client does not know (a timeout, a lost connection): it may have taken effect,
    /// at any time after its invocation.
    Unknown,
}

/// One operation, invoked at `call` and completed at `ret` (nanoseconds since the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The client.
    pub client: u32,
    /// The key.
    pub key: u32,
    /// What it did (for a read, what it saw).
    pub op: Op,
    /// When it was invoked.
    pub call: u64,
    /// When it completed.
    pub ret: u64,
    /// How.
    pub outcome: Outcome,
}

/// A history being recorded by many clients at once.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history; times count from now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records a completed operation.
    pub fn record(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}
