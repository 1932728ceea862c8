//! The example FSMs deployed to a real 3-node cluster through the client API: commands
//! through a follower, and the same state hash on every node afterwards.

use wraft_api::Role;
use wraft_api::{Consistency, Payload};
use wraft_core::FsmLimits;
use wraft_host::raft::SnapshotPolicy;

use crate::cluster::Cluster;
use crate::common::name;
use crate::guests::{airspace_intent, airspace_volume, stored_ovn};

fn json(p: Payload) -> String {
    match p {
        Payload::Json(s) => s,
        other => panic!("expected JSON, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_manifest_and_airspace_store_agree_on_three_nodes() {
    let mut c = Cluster::start(3, SnapshotPolicy::default()).await;
    let leader = c.leader().await.id;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let admin = c.client(Role::Admin, &[follower]);
    for (module, fsm) in [
        (wraft_fsm_artifacts::FILE_MANIFEST, "manifest"),
        (wraft_fsm_artifacts::AIRSPACE_STORE, "airspace"),
    ] {
        let id = admin.deploy(module.to_vec()).await.expect("deploy");
        admin
            .create_fsm(name(fsm), id, FsmLimits::default())
            .await
            .expect("create");
    }
    let writer = c.client(Role::Writer, &[follower]);

    // file-manifest: 40 sources, then the compaction as one batch.
    let file = |path: &str, tier: &str| {
        format!(
            r#"{{"path":"{path}","database":"db","measurement":"m","partition_time_ms":0,"size_bytes":10,"checksum":"c","tier":"{tier}"}}"#
        )
    };
    let sources: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"Register":{}}}"#, file(&format!("s{i}"), "Hot")))
        .collect();
    let manifest = name("manifest");
    writer
        .apply_json(
            &manifest,
            &format!(r#"{{"BatchFileOps":[{}]}}"#, sources.join(",")),
        )
        .await
        .expect("sources");
    let mut compaction = vec![format!(r#"{{"Register":{}}}"#, file("out", "Warm"))];
    compaction.extend((0..40).map(|i| format!(r#"{{"Delete":{{"path":"s{i}"}}}}"#)));
    let out = json(
        writer
            .apply_json(
                &manifest,
                &format!(r#"{{"BatchFileOps":[{}]}}"#, compaction.join(",")),
            )
            .await
            .expect("compaction"),
    );
    assert!(out.contains(r#""registered":1,"deleted":40"#), "{out}");

    // airspace-store: deconfliction across two intents, then a search.
    let airspace = name("airspace");
    let a = json(
        writer
            .apply_json(
                &airspace,
                &airspace_intent(
                    "a",
                    &airspace_volume(47.0, 8.0, 0.01, (0.0, 120.0)),
                    &[],
                    None,
                ),
            )
            .await
            .expect("a"),
    );
    let a_ovn = stored_ovn(&a);
    let b_volume = airspace_volume(47.005, 8.005, 0.01, (0.0, 120.0));
    let conflict = json(
        writer
            .apply_json(&airspace, &airspace_intent("b", &b_volume, &[], None))
            .await
            .expect("answered"),
    );
    assert!(conflict.contains(&a_ovn), "{conflict}");
    writer
        .apply_json(&airspace, &airspace_intent("b", &b_volume, &[&a_ovn], None))
        .await
        .expect("b with key");
    for i in 0..20 {
        let lat = 46.0 + f64::from(i) * 0.02;
        writer
            .apply_json(
                &airspace,
                &airspace_intent(
                    &format!("far{i}"),
                    &airspace_volume(lat, 9.0, 0.01, (0.0, 50.0)),
                    &[],
                    None,
                ),
            )
            .await
            .expect("far");
    }
    let found = json(
        writer
            .query_json(
                &airspace,
                &format!(
                    r#"{{"Search":{{"kinds":[],"area":{}}}}}"#,
                    airspace_volume(46.99, 7.99, 0.05, (0.0, 500.0))
                ),
                Consistency::Linearizable,
            )
            .await
            .expect("search"),
    );
    assert!(
        found.contains(r#""id":"a""#) && found.contains(r#""id":"b""#) && !found.contains("far"),
        "{found}"
    );

    for fsm in ["manifest", "airspace"] {
        let hashes = c.converged_hashes_of(fsm).await;
        assert_eq!(hashes.len(), 3);
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "{fsm} diverged: {hashes:?}"
        );
    }
    c.stop_all().await;
}
