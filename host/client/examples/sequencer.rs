//! The op-conductor FSM (`latest-payload`) from Rust, in its own types: read the latest block,
//! commit the next one exactly once, read it back.
//!
//! Against `make dev` (defaults), or any cluster:
//! `WRAFT_NODES=host:port,... WRAFT_CLIENT_CA=ca.pem WRAFT_CLIENT_CERT=writer.pem
//! WRAFT_CLIENT_KEY=writer.key WRAFT_FSM=sequencer cargo run -p wraft-client --example sequencer`

use latest_payload::{Command, Committed, Payload, Query};
use wraft_api::Consistency;
use wraft_client::Client;
use wraft_core::FsmName;
use wraft_guest::{Hex32, HexBytes};
use wraft_transport_quic::TlsIdentity;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = setting(
        "WRAFT_NODES",
        "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
    );
    let read = |name: &str, default: &str| std::fs::read_to_string(setting(name, default));
    let identity = TlsIdentity::from_pem(
        &read("WRAFT_CLIENT_CA", "wraft-data/dev/certs/ca.pem")?,
        &read("WRAFT_CLIENT_CERT", "wraft-data/dev/certs/writer.pem")?,
        &read("WRAFT_CLIENT_KEY", "wraft-data/dev/certs/writer.key")?,
    )?;
    let client = Client::new(nodes.split(',').map(String::from).collect(), &identity)?;
    let fsm = FsmName::new(setting("WRAFT_FSM", "sequencer"))?;

    let latest: Option<Payload> = client
        .query_as(&fsm, &Query::Latest, Consistency::Linearizable)
        .await?;
    let parent = latest.map_or((0, Hex32([0; 32])), |p| (p.number, p.hash));
    let number = parent.0 + 1;
    let block = Payload {
        number,
        hash: Hex32(block_hash(number)),
        parent_hash: parent.1,
        payload: HexBytes(b"an execution payload".to_vec()),
    };
    // Exactly once: a retry after a lost answer gets this commit's answer, not a second one.
    let committed: Committed = client
        .apply_as(&fsm, &Command::Commit(block.clone()))
        .await?;
    println!(
        "committed block {} (changed: {})",
        committed.number, committed.changed
    );
    if committed.number != number || !committed.changed {
        return Err(format!("expected block {number} to be new, got {committed:?}").into());
    }

    let now: Option<Payload> = client
        .query_as(&fsm, &Query::Latest, Consistency::Linearizable)
        .await?;
    if now.as_ref() != Some(&block) {
        return Err(format!("read back {now:?}, committed {block:?}").into());
    }
    println!("latest is block {number}, read back in its own type");
    Ok(())
}

/// A stand-in block hash: the number's bytes, repeated.
fn block_hash(number: u64) -> [u8; 32] {
    let mut hash = [0u8; 32];
    for chunk in hash.chunks_mut(8) {
        chunk.copy_from_slice(&number.to_be_bytes());
    }
    hash
}
