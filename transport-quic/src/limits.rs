//! What a node's endpoint admits: bytes per message by kind and role, bytes in flight,
//! streams per connection, connections per certificate and in all. A peer that asks for more
//! is refused with an error naming the bound, before the node allocates for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::pki::Role;

/// Bytes a request frame may carry beyond the largest entry it proposes (FSM name, framing).
pub const REQUEST_OVERHEAD: usize = 64 << 10;

/// The endpoint's bounds. [`ServerLimits::new`] derives them from the largest entry the
/// node admits; every field can be set on its own.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request frame from a writer, an admin or a forwarding voter: an entry's
    /// commands plus [`REQUEST_OVERHEAD`]. Modules are uploaded in chunks, not in one frame.
    pub max_request_bytes: usize,
    /// Largest request frame from a reader (queries, listings, status).
    pub max_read_request_bytes: usize,
    /// Largest raft RPC frame after a peer's introduction (a byte-bounded batch of entries,
    /// or one entry of the largest size).
    pub max_raft_frame_bytes: usize,
    /// Largest snapshot a peer may announce.
    pub max_snapshot_bytes: u64,
    /// Client request bytes held at once across every connection (frames being received
    /// and requests being served); a request that would pass it is answered `Busy`.
    pub in_flight_bytes: usize,
    /// Concurrent streams (requests) per client connection.
    pub streams_per_connection: u32,
    /// Concurrent streams per raft connection.
    pub streams_per_peer: u32,
    /// Open connections per certificate.
    pub connections_per_identity: usize,
    /// Open connections in all.
    pub connections: usize,
    /// Time a request's frame may take to arrive, beyond [`ServerLimits::bytes_per_second`].
    pub receive_grace: Duration,
    /// Slowest transfer a sender may keep up (bytes per second) before its frame is given
    /// up: the time a frame may take grows with its size.
    pub bytes_per_second: u64,
}

impl ServerLimits {
    /// Bounds for a node that admits entries of up to `max_entry_bytes`.
    pub fn new(max_entry_bytes: usize) -> Self {
        let max_request_bytes = max_entry_bytes + REQUEST_OVERHEAD;
        Self {
            max_request_bytes,
            max_read_request_bytes: 1 << 20,
            max_raft_frame_bytes: max_request_bytes.max(crate::wire::MAX_CHUNK_FRAME) + (1 << 20),
            max_snapshot_bytes: 1 << 40,
            in_flight_bytes: (256 << 20).max(2 * max_request_bytes),
            streams_per_connection: 64,
            streams_per_peer: 64,
            connections_per_identity: 64,
            connections: 4096,
            receive_grace: Duration::from_secs(10),
            bytes_per_second: 4 << 20,
        }
    }

    /// Largest request frame a caller with `role` may send (`None`: a node's certificate).
    pub fn request_bytes(&self, role: Option<Role>) -> usize {
        match role {
            Some(Role::Reader) => self.max_read_request_bytes,
            _ => self.max_request_bytes,
        }
    }

    /// How long a frame of `len` bytes may take to arrive.
    pub fn receive_deadline(&self, len: usize) -> Duration {
        // Multiplied before dividing: a per-byte time rounded to whole nanoseconds came out
        // 0.2% short (238 ns instead of 238.4 at 4 MiB/s).
        let nanos = len as u128 * 1_000_000_000 / u128::from(self.bytes_per_second.max(1));
        let transfer = Duration::from_nanos(nanos.min(u64::MAX as u128) as u64);
        self.receive_grace + transfer
    }
}

/// Client request bytes in flight, node-wide.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Takes `len` bytes of the budget until the permit is dropped, or says why not.
    pub fn take(&self, len: usize) -> Result<OwnedSemaphorePermit, String> {
        let n = u32::try_from(len.max(1)).map_err(|_| format!("{len} bytes"))?;
        self.bytes.clone().try_acquire_many_owned(n).map_err(|_| {
            format!(
                "the node holds its limit of {} bytes of requests in flight \
                 (--max-in-flight-bytes); this one needs {len}",
                self.total
            )
        })
    }
}

/// Connections open in all, and by certificate.
type OpenCounts = Arc<Mutex<(usize, HashMap<[u8; 32], usize>)>>;

/// Open connections by certificate.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    open: OpenCounts,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: OpenCounts,
    identity: [u8; 32],
}

impl Connections {
    /// Counts a connection of the certificate whose sha256 is `identity`, unless that
    /// certificate or the node is at its limit.
    pub fn admit(
        &self,
        identity: [u8; 32],
        limits: &ServerLimits,
    ) -> Result<ConnectionSlot, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_identity) = &mut *open;
        if *total >= limits.connections {
            return Err(format!(
                "the node has its limit of {} connections open (--max-connections)",
                limits.connections
            ));
        }
        let mine = by_identity.entry(identity).or_default();
        if *mine >= limits.connections_per_identity {
            return Err(format!(
                "this certificate has its limit of {} connections open to the node \
                 (--max-connections-per-identity)",
                limits.connections_per_identity
            ));
        }
        *mine += 1;
        *total += 1;
        Ok(ConnectionSlot {
            open: self.open.clone(),
            identity,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_identity) = &mut *open;
        *total -= 1;
        if let Some(n) = by_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                by_identity.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_identity_and_in_all() {
        let mut limits = ServerLimits::new(1 << 20);
        limits.connections_per_identity = 2;
        limits.connections = 3;
        let c = Connections::default();
        let a1 = c.admit([1; 32], &limits).expect("first");
        let _a2 = c.admit([1; 32], &limits).expect("second");
        let err = c
            .admit([1; 32], &limits)
            .expect_err("third of one identity");
        assert!(err.contains("--max-connections-per-identity"), "{err}");
        let _b1 = c.admit([2; 32], &limits).expect("another identity");
        let err = c.admit([3; 32], &limits).expect_err("node-wide");
        assert!(err.contains("--max-connections"), "{err}");
        drop(a1);
        c.admit([3; 32], &limits).expect("a slot was freed");
    }

    #[test]
    fn the_byte_budget_refuses_past_its_total_and_refills() {
        let budget = ByteBudget::new(100);
        let first = budget.take(60).expect("fits");
        let err = budget.take(50).expect_err("over");
        assert!(err.contains("--max-in-flight-bytes"), "{err}");
        drop(first);
        let _all = budget.take(100).expect("refilled");
    }

    #[test]
    fn a_frame_may_take_longer_the_larger_it_is() {
        let limits = ServerLimits::new(1 << 20);
        let small = limits.receive_deadline(1 << 10);
        let large = limits.receive_deadline(64 << 20);
        assert!(small < Duration::from_secs(11), "{small:?}");
        assert_eq!(large, limits.receive_grace + Duration::from_secs(16));
    }
}
