//! The example and test FSMs of `fsm-examples/`, compiled to wasm by this crate's build
//! script: `LATEST_PAYLOAD`, `PROBE`, and [`foreach_guest!`] to visit them all.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
