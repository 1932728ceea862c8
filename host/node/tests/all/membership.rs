//! Membership changes while the cluster serves: add a learner, promote it (by hand or
//! automatically once its lag stays small), remove it.

use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use wraft_api::Role;
use wraft_api::{ApiRequest, ApiResponse};
use wraft_core::FsmName;
use wraft_host::cluster::AutoPromote;
use wraft_host::raft::SnapshotPolicy;

use crate::cluster::Cluster;
use crate::common::{probe_counter, setup_probe};

const INCR: &str = r#"{"Incr":{"key":[110]}}"#;

async fn voters(c: &Cluster) -> Vec<u64> {
    let m = c.leader().await.raft.metrics().borrow_watched().clone();
    m.membership_config.membership().voter_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_removed_while_writes_continue() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let writer = c.client(Role::Writer, &[1, 2, 3]);
    let p = FsmName::new("p").expect("name");
    for _ in 0..10 {
        writer.apply_json(&p, INCR).await.expect("write");
    }
    let new = c.add_node().await;
    let addr = c.addrs[new as usize - 1].to_string();
    assert_eq!(
        admin
            .request(ApiRequest::AddLearner { id: new, addr })
            .await
            .expect("add learner"),
        ApiResponse::Done
    );
    writer
        .apply_json(&p, INCR)
        .await
        .expect("write while a learner joins");
    c.converged_hashes().await;
    assert_eq!(
        probe_counter(&c.node(new).store),
        11,
        "the learner replicated everything"
    );
    assert_eq!(voters(&c).await, vec![1, 2, 3]);
    assert_eq!(
        admin
            .request(ApiRequest::Promote { id: new })
            .await
            .expect("promote"),
        ApiResponse::Done
    );
    assert_eq!(voters(&c).await, vec![1, 2, 3, new]);
    let status = admin.status().await.expect("status");
    assert_eq!(
        status
            .nodes
            .iter()
            .filter(|n| n.membership == "voter")
            .count(),
        4
    );
    writer
        .apply_json(&p, INCR)
        .await
        .expect("write with four voters");
    assert_eq!(
        admin
            .request(ApiRequest::Remove { id: new })
            .await
            .expect("remove"),
        ApiResponse::Done
    );
    assert_eq!(voters(&c).await, vec![1, 2, 3]);
    let status = admin.status().await.expect("status");
    assert!(status.nodes.iter().all(|n| n.id != new), "{status:?}");
    writer
        .apply_json(&p, INCR)
        .await
        .expect("write after removal");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_learner_is_promoted_automatically() {
    let auto = AutoPromote {
        max_lag: 5,
        stable_window: Duration::from_millis(600),
    };
    let mut c = Cluster::start_full(
        3,
        SnapshotPolicy::default(),
        wraft_host::api::DEFAULT_QUEUE,
        Some(auto),
    )
    .await;
    setup_probe(&c.leader().await.raft).await;
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let new = c.add_node().await;
    let addr = c.addrs[new as usize - 1].to_string();
    admin
        .request(ApiRequest::AddLearner { id: new, addr })
        .await
        .expect("add learner");
    let leader = c.leader().await;
    leader
        .raft
        .wait(Some(Duration::from_secs(15)))
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == new)
            },
            "learner promoted",
        )
        .await
        .expect("the learner became a voter by itself");
    c.stop_all().await;
}
