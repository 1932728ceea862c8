//! The wall clock, read where a leader stamps an entry it proposes (FSMs see it, through the
//! entry context, as `max(stamp, last applied stamp)`: never backwards).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
