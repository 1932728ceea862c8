//! A power loss with the state env open. A node's state env commits without flushing, behind
//! the raft log (`wraft_host::state::unflushed`): after a power loss the node discards the env
//! and rebuilds it from its newest snapshot and its log, and ends with the same state as the
//! others.

use std::time::{Duration, Instant};

use wraft_client::Client;
use wraft_faults::unsynced::Survival;

use crate::processes::{
    caught_up, create_register, identity, put, runtime, stop_verify_and_compare, three_nodes,
};

/// Seeds of the torn subsets of unsynced writes that survive (`WRAFT_POWER_LOSS_SEED`
/// replaces them with one).
fn seeds() -> Vec<u64> {
    match std::env::var("WRAFT_POWER_LOSS_SEED") {
        Ok(s) => vec![s.parse().expect("WRAFT_POWER_LOSS_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

#[test]
#[cfg(not(any(feature = "fault-stale-reads", feature = "fault-lazy-fsync")))]
fn a_power_loss_discards_the_unflushed_state_env_and_the_node_rebuilds_it() {
    let _heavy = crate::common::heavy();
    for seed in seeds() {
        runtime().block_on(rebuilds_after_power_loss(seed));
    }
}

async fn rebuilds_after_power_loss(seed: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let (certs, listen, mut nodes) = three_nodes(dir.path());
    let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
    for n in &mut nodes {
        // A snapshot every 200 entries, so node 3 has one and applies the last ~100 writes
        // after it, into an env that has not been flushed since.
        n.tuning = [
            "--checkpoint-interval",
            "0",
            "--snapshot-entries",
            "200",
            "--snapshot-trailing-entries",
            "50",
        ]
        .map(String::from)
        .to_vec();
        n.start().expect("start");
    }
    let admin = Client::new(addrs.clone(), &identity(&certs, "admin"))
        .expect("client")
        .with_patience(Duration::from_secs(30));
    create_register(&admin).await.expect("the register FSM");
    let writer = Client::new(addrs.clone(), &identity(&certs, "writer"))
        .expect("client")
        .with_patience(Duration::from_secs(30));
    for i in 0..500u64 {
        writer
            .request(put((i % 24) as u32, i + 1))
            .await
            .expect("write");
    }
    caught_up(&addrs, &certs, &mut nodes).await;
    let built = std::fs::read_dir(dir.path().join("node-3/snapshots"))
        .expect("snapshots dir")
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "snap"));
    assert!(built, "node 3 built a snapshot");

    let lost = nodes[2]
        .lose_power(Survival::Torn(seed))
        .expect("power loss");
    assert!(
        lost.files.iter().any(|f| f.starts_with("state")),
        "the power loss undid some of the state env's writes: {lost:?}"
    );
    nodes[2].start().expect("restart after the power loss");
    let per_node: Vec<Client> = addrs
        .iter()
        .map(|a| Client::new(vec![a.clone()], &identity(&certs, "reader")).expect("client"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::time::timeout(Duration::from_secs(2), per_node[2].status())
        .await
        .ok()
        .and_then(Result::ok)
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "node 3 never came back: {}",
            nodes[2].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = nodes[2].log();
    assert!(
        log.contains("was open when the machine went down"),
        "node 3 did not discard its state env after the power loss (seed {seed}):\n{log}"
    );
    for i in 0..30u64 {
        writer
            .request(put((i % 24) as u32, 10_000 + i))
            .await
            .expect("write after");
    }
    caught_up(&addrs, &certs, &mut nodes).await;
    stop_verify_and_compare(dir.path(), &mut nodes, |_, _| {});
    for n in &nodes {
        let mark = n.spec.data_dir.join("state/unflushed");
        assert!(
            !mark.exists(),
            "node {} stopped cleanly but left its state env marked unflushed",
            n.spec.id
        );
    }
}
