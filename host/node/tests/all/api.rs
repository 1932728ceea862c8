//! The client API against real 3-node clusters: writes through any node, read levels,
//! roles, leader transfer, admission control, pre-vote.

use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use wraft_api::Role;
use wraft_api::{ApiError, ApiRequest, Consistency, Payload};
use wraft_client::ClientError;
use wraft_core::FsmName;
use wraft_host::raft::SnapshotPolicy;
use wraft_transport_quic::api::{self};

use crate::cluster::Cluster;
use crate::common::{probe_counter, setup_probe};

/// The probe FSM these tests create.
pub(crate) fn p() -> FsmName {
    FsmName::new("p").expect("name")
}

/// The probe's JSON command that increments key "n", and its query of it.
pub(crate) const INCR: &str = r#"{"Incr":{"key":[110]}}"#;
pub(crate) const GET: &str = r#"{"Get":{"key":[110]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_reach_the_leader_and_reads_work_at_every_level() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    setup_probe(&c.leader().await.raft).await;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    // A client that only knows a follower: its write is forwarded and answered.
    let client = c.client(Role::Writer, &[follower]);
    for n in 1..=3 {
        assert_eq!(
            client.apply_json(&p(), INCR).await.expect("apply"),
            Payload::Json(format!("{{\"Number\":{n}}}"))
        );
    }
    assert_eq!(
        probe_counter(&c.node(leader).store),
        3,
        "the leader applied the forwarded writes"
    );
    for level in [Consistency::Linearizable, Consistency::Lease] {
        // Through the follower, forwarded to the leader: sees every acknowledged write.
        let out = client.query_json(&p(), GET, level).await.expect("query");
        assert_eq!(out, Payload::Json(r#"{"Bytes":[3]}"#.into()), "{level:?}");
    }
    c.converged_hashes().await;
    let stale = client
        .query_json(&p(), GET, Consistency::Stale)
        .await
        .expect("stale");
    assert_eq!(stale, Payload::Json(r#"{"Bytes":[3]}"#.into()));
    // A deterministic FSM error comes back as such, through the follower too.
    let err = client
        .apply_json(&p(), r#"{"Fail":{"message":"nope"}}"#)
        .await
        .expect_err("rejected");
    assert!(
        matches!(err, ClientError::Api(ApiError::Failed(wraft_core::ApplyError::Rejected(ref m))) if m == "nope"),
        "{err}"
    );
    // Bad JSON is a clear bad-request error and proposes nothing.
    let err = client
        .apply_json(&p(), r#"{"Incr":"#)
        .await
        .expect_err("bad json");
    assert!(
        matches!(err, ClientError::Api(ApiError::BadRequest(_))),
        "{err}"
    );
    assert_eq!(probe_counter(&c.node(leader).store), 3);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_directly_and_through_forwarding() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    let leader = c.leader().await.id;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    for at in [leader, follower] {
        let reader = c.client(Role::Reader, &[at]);
        assert!(
            reader
                .query_json(&p(), GET, Consistency::Linearizable)
                .await
                .is_ok()
        );
        let err = reader
            .apply_json(&p(), INCR)
            .await
            .expect_err("reader may not write");
        assert!(
            matches!(
                err,
                ClientError::Api(ApiError::NotAllowed {
                    needed: Role::Writer,
                    have: Some(Role::Reader)
                })
            ),
            "{err}"
        );
        let writer = c.client(Role::Writer, &[at]);
        let err = writer
            .deploy(wraft_fsm_artifacts::PROBE.to_vec())
            .await
            .expect_err("writer may not deploy");
        assert!(
            matches!(
                err,
                ClientError::Api(ApiError::NotAllowed {
                    needed: Role::Admin,
                    ..
                })
            ),
            "{err}"
        );
    }
    // A client cannot dress a request up as forwarded by a node to gain a role.
    let conn = reader_connection(&c, leader).await;
    let apply = ApiRequest::Apply {
        fsm: p(),
        command: Payload::Json(INCR.into()),
        once: None,
    };
    let sneaky = wraft_api::ApiCallRef::Forwarded {
        role: Role::Admin,
        request: &apply,
    };
    let (send, recv) = conn.open_bi().await.expect("stream");
    let r = api::exchange(send, recv, sneaky).await.expect("answered");
    assert!(matches!(r, Err(ApiError::NotAllowed { .. })), "{r:?}");
    assert_eq!(
        probe_counter(&c.node(leader).store),
        0,
        "nothing was applied"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_a_named_node_and_to_any_and_serves_at_once() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    let admin = c.client(Role::Admin, &[1, 2, 3]);
    let old = c.leader().await.id;
    let target = (1..=3).find(|id| *id != old).expect("other");
    let term_before = c.node(old).raft.metrics().borrow_watched().current_term;
    assert_eq!(
        admin.transfer_leader(Some(target)).await.expect("transfer"),
        target
    );
    assert_eq!(c.leader().await.id, target);
    // The new leader serves writes right away (the client retries nothing but NoLeader).
    let writer = c.client(Role::Writer, &[target]);
    writer
        .apply_json(&p(), INCR)
        .await
        .expect("write after transfer");
    // "Any": the most caught-up other voter takes over.
    let next = admin.transfer_leader(None).await.expect("transfer to any");
    assert_ne!(next, target);
    assert_eq!(c.leader().await.id, next);
    writer
        .apply_json(&p(), INCR)
        .await
        .expect("write after second transfer");
    let term_after = c.node(next).raft.metrics().borrow_watched().current_term;
    assert!(term_after > term_before);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_proposal_queue_refuses_at_once() {
    let mut c = Cluster::start_with(1, SnapshotPolicy::default(), 0).await;
    setup_probe(&c.leader().await.raft).await;
    let writer = c.client(Role::Writer, &[1]);
    let started = std::time::Instant::now();
    let err = writer.apply_json(&p(), INCR).await.expect_err("queue full");
    assert!(
        matches!(
            err,
            ClientError::Api(ApiError::QueueFull {
                node: 1,
                capacity: 0
            })
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after a wait"
    );
    // Reads are not proposals and still work.
    assert!(
        writer
            .query_json(&p(), GET, Consistency::Linearizable)
            .await
            .is_ok()
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_that_rejoins_does_not_bump_the_term_or_depose_the_leader() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    setup_probe(&c.leader().await.raft).await;
    let leader = c.leader().await.id;
    let term = c.node(leader).raft.metrics().borrow_watched().current_term;
    let lonely = (1..=3).find(|id| *id != leader).expect("follower");
    c.stop(lonely).await;
    // It comes back where nobody can reach it: it hears no heartbeats for many election
    // timeouts and keeps trying to campaign.
    c.restart_unreachable(lonely).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lonely_term = c.node(lonely).raft.metrics().borrow_watched().current_term;
    assert_eq!(
        lonely_term, term,
        "pre-vote kept the isolated node from raising its term"
    );
    // It rejoins on its real address: the leader stays, the term stays.
    c.stop(lonely).await;
    c.restart(lonely).await;
    c.converged_hashes().await;
    assert_eq!(c.leader().await.id, leader);
    assert_eq!(
        c.node(leader).raft.metrics().borrow_watched().current_term,
        term
    );
    c.stop_all().await;
}

/// What a build answers a request of a newer one it cannot decode (a variant it does not
/// know, as an old build sees `Features`): `BadRequest`, on a connection that keeps serving.
/// A leader asking an old build for its entry level reads that answer as level 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_a_newer_build_is_refused_as_bad_and_the_node_keeps_serving() {
    let mut c = Cluster::start(1, SnapshotPolicy::default()).await;
    let conn = reader_connection(&c, 1).await;
    // postcard of `ApiCall::Direct` (variant 0) of an `ApiRequest` variant 127, which no
    // build has: two bytes, framed with their checksum as any call is.
    let mut frame = Vec::new();
    wraft_core::frame::encode_frame(&(0u8, 127u8), &mut frame);
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&frame).await.expect("sent");
    send.finish().expect("finished");
    let answer: wraft_api::ApiResult = wraft_transport_quic::wire::recv(&mut recv, 1 << 20)
        .await
        .expect("answered");
    assert!(
        matches!(&answer, Err(ApiError::BadRequest(why)) if why.contains("does not decode")),
        "{answer:?}"
    );
    // The same connection still serves a request this build knows.
    let (send, recv) = conn.open_bi().await.expect("stream");
    let features = api::exchange(
        send,
        recv,
        wraft_api::ApiCallRef::Direct(&ApiRequest::Features),
    )
    .await
    .expect("answered");
    assert!(
        matches!(&features, Ok(wraft_api::ApiResponse::Features(f)) if f.entry_level == wraft_core::ENTRY_LEVEL),
        "{features:?}"
    );
    c.stop_all().await;
}

/// A raw QUIC connection to node `id`'s API with a reader's certificate, for requests no
/// client would send.
async fn reader_connection(c: &Cluster, id: u64) -> quinn::Connection {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(
        wraft_transport_quic::client_config(
            &c.client_identity(Role::Reader),
            wraft_transport_quic::ALPN_CLIENT,
        )
        .expect("config"),
    );
    ep.connect(
        c.addrs[id as usize - 1],
        wraft_transport_quic::pki::CLUSTER_NAME,
    )
    .expect("connect")
    .await
    .expect("handshake")
}
