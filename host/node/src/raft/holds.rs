//! What openraft holds of a node's stores and does not join when it shuts down: the
//! state-machine worker (with the log reader it fetches entries through) and the snapshot
//! builds it spawns. [`StoreHolds::released`] waits until none is left, so the data directory
//! can be opened again in the same process (heed refuses a second open of a live env).

use std::sync::Arc;

/// The count of holders of a node's stores (state machine, snapshot builds, log store and
/// readers).
#[derive(Debug, Clone, Default)]
pub struct StoreHolds(Arc<HoldCount>);

#[derive(Debug, Default)]
struct HoldCount {
    held: std::sync::Mutex<usize>,
    released: tokio::sync::Notify,
}

/// One holder of the store, counted until dropped.
#[derive(Debug)]
pub(crate) struct Hold(Arc<HoldCount>);

impl StoreHolds {
    pub(crate) fn hold(&self) -> Hold {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Hold(self.0.clone())
    }

    /// Returns once the state machine, every snapshot build and every log reader have let go
    /// of the stores.
    pub async fn released(&self) {
        loop {
            let notified = self.0.released.notified();
            if *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.released.notify_waiters();
    }
}
