//! Leadership hand-overs between real node processes: a transfer to a node that stopped
//! answering is refused with an error naming it, before anything changes; and `wraft serve`
//! asked to stop (SIGTERM, as systemd does) hands leadership to a voter that answers before
//! it goes, instead of leaving the cluster to an election timeout.

use std::time::Duration;

use wraft_api::ApiError;
use wraft_client::{Client, ClientError};
use wraft_host::raft::leadership::ANSWERED_WITHIN;

use crate::processes::{create_register, identity, runtime, stop_cleanly, three_nodes};

#[test]
fn a_stopping_leader_hands_over_and_a_transfer_to_a_silent_node_is_refused() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let (certs, real, mut nodes) = three_nodes(dir.path());
        for n in &mut nodes {
            n.start().expect("start");
        }
        let addrs: Vec<String> = real.iter().map(ToString::to_string).collect();
        let client = |at: Vec<String>| {
            Client::new(at, &identity(&certs, "admin"))
                .expect("client")
                .with_patience(Duration::from_secs(30))
        };
        let any = client(addrs.clone());
        create_register(&any).await.expect("the register FSM");
        let before = any.status().await.expect("status");
        let leader = before.leader.expect("a leader");
        let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
        // Talk to the leader only: a request to the paused node would wait for it.
        let at_leader = client(vec![addrs[leader as usize - 1].clone()]);

        let silent = followers[0];
        nodes[silent as usize - 1].pause();
        tokio::time::sleep(ANSWERED_WITHIN + Duration::from_millis(500)).await;
        match at_leader.transfer_leader(Some(silent)).await {
            Err(ClientError::Api(ApiError::BadRequest(why)))
                if why.contains(&format!("node {silent} has not answered the leader")) => {}
            other => panic!("a transfer to a paused node answered {other:?}"),
        }
        let after = at_leader.status().await.expect("status");
        assert_eq!(
            (after.leader, after.term),
            (Some(leader), before.term),
            "a refused transfer changed the leadership"
        );
        nodes[silent as usize - 1].resume();

        assert!(
            nodes[leader as usize - 1].stop(),
            "the leader did not stop cleanly:\n{}",
            nodes[leader as usize - 1].log()
        );
        let log = nodes[leader as usize - 1].log();
        let successor: u64 = log
            .lines()
            .find_map(|l| l.split("handed leadership to node ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("the leader stopped without handing over:\n{log}"));
        assert!(followers.contains(&successor), "{log}");
        let now = client(vec![addrs[successor as usize - 1].clone()])
            .status()
            .await
            .expect("the successor's status");
        assert_eq!(now.leader, Some(successor), "{now:?}");
        assert!(now.term > before.term, "{now:?}");
        stop_cleanly(&mut nodes);
    });
}
