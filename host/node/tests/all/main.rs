//! Integration tests of the FSM runtime and the state store: real LMDB in temp dirs, real
//! wasm modules built from fsm-examples by wraft-fsm-artifacts.

mod api;
mod bench;
mod bounds;
mod call_depth;
mod cli;
mod cluster;
mod common;
mod crash;
mod determinism;
mod differential;
mod discarded;
mod edge;
mod embedded;
mod examples;
mod faults;
mod guests;
mod hostile;
mod http;
mod leader_restart;
mod leadership;
mod lifecycle;
mod membership;
mod metering;
mod nan_model;
mod ops;
mod persistence;
mod power_loss;
mod processes;
mod raft_storage;
mod reconnect;
mod sessions;
mod snapshot_crash;
mod upgrade_crash;
mod validation;
mod voter_link;
