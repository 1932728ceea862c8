//! One test per guest in fsm-examples: `foreach_guest!` makes a guest without a test here a
//! compile error.

use wraft_core::FsmLimits;

use crate::common::{Fixture, name};
// nan-bits's test compares backends, so it lives with the others that do.
use crate::determinism::nan_bits;

macro_rules! require_test {
    ($guest:ident) => {
        const _: fn() = $guest;
    };
}
wraft_fsm_artifacts::foreach_guest!(require_test);

#[test]
fn latest_payload() {
    let f = Fixture::new(
        wraft_fsm_artifacts::LATEST_PAYLOAD,
        "seq",
        FsmLimits::default(),
    );
    let fsm = name("seq");
    let commit = |n: u64, tag: u8| {
        let h = |b: u8| format!("0x{}", hex::encode([b; 32]));
        format!(
            r#"{{"Commit":{{"number":{n},"hash":"{}","parent_hash":"{}","payload":"0xc0ffee"}}}}"#,
            h(tag),
            h(tag.wrapping_sub(1))
        )
    };
    let out = f
        .node
        .apply_json(&fsm, &commit(100, 1))
        .expect("no fault")
        .expect("applied");
    assert_eq!(out, r#"{"number":100,"changed":true}"#);
    let err = f
        .node
        .apply_json(&fsm, &commit(99, 2))
        .expect("no fault")
        .expect_err("older");
    assert!(
        err.to_string().contains("older than the latest block 100"),
        "{err}"
    );
    let err = f
        .node
        .apply_json(&fsm, &commit(100, 3))
        .expect("no fault")
        .expect_err("conflict");
    assert!(err.to_string().contains("conflicting payload"), "{err}");
    let latest = f
        .node
        .query_json(&fsm, r#""Latest""#)
        .expect("no fault")
        .expect("query");
    let v: serde_json::Value = serde_json::from_str(&latest).expect("json");
    assert_eq!(v["number"], 100);
    assert_eq!(v["payload"], "0xc0ffee");
    let bad = f
        .node
        .apply_json(&fsm, r#"{"Commit":{"number":"x"}}"#)
        .expect("no fault");
    assert!(
        matches!(bad, Err(wraft_core::ApplyError::BadInput(_))),
        "{bad:?}"
    );
    // A real L2 block, 2 MiB of payload, goes in and comes back through the JSON codecs
    // within the default limits (the hex digits are encoded and decoded in FSM fuel).
    let payload = (0..2u32 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>();
    let block = format!(
        r#"{{"Commit":{{"number":101,"hash":"0x{}","parent_hash":"0x{}","payload":"0x{}"}}}}"#,
        hex::encode([7; 32]),
        hex::encode([1; 32]),
        hex::encode(&payload)
    );
    f.node
        .apply_json(&fsm, &block)
        .expect("no fault")
        .expect("a 2 MiB block commits through the JSON codec");
    let latest = f
        .node
        .query_json(&fsm, r#""Latest""#)
        .expect("no fault")
        .expect("a 2 MiB block comes back through the JSON codec");
    let v: serde_json::Value = serde_json::from_str(&latest).expect("json");
    assert_eq!(v["payload"].as_str().map(str::len), Some(2 + (4 << 20)));
}

#[test]
fn probe() {
    use probe::{Command as C, Output as O, Query as Q};
    let f = Fixture::probe();
    for i in 0..30u8 {
        f.apply(
            "p",
            &C::Put {
                key: vec![b'k', i],
                value: vec![i; 3],
            },
        );
    }
    f.apply(
        "p",
        &C::Put {
            key: b"other".to_vec(),
            value: b"x".to_vec(),
        },
    );
    assert_eq!(
        f.query("p", &Q::Get { key: vec![b'k', 7] }),
        Ok(O::Bytes(vec![7; 3]))
    );
    assert_eq!(
        f.query(
            "p",
            &Q::Get {
                key: b"absent".to_vec()
            }
        ),
        Ok(O::None)
    );
    let Ok(O::Pairs(page)) = f.query(
        "p",
        &Q::Scan {
            start: vec![b'k', 5],
            end: Some(vec![b'k', 9]),
            limit: 100,
        },
    ) else {
        panic!("scan failed")
    };
    assert_eq!(
        page.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    let Ok(O::Pairs(page)) = f.query(
        "p",
        &Q::Scan {
            start: vec![],
            end: None,
            limit: 2,
        },
    ) else {
        panic!()
    };
    assert_eq!(page.len(), 2);
    let Ok(O::Pairs(all)) = f.query(
        "p",
        &Q::ScanPrefix {
            prefix: b"k".to_vec(),
        },
    ) else {
        panic!()
    };
    assert_eq!(all.len(), 30);
    assert_eq!(
        output(&f.apply("p", &C::Delete { key: vec![b'k', 0] })),
        O::Flag(true)
    );
    assert_eq!(
        output(&f.apply("p", &C::Delete { key: vec![b'k', 0] })),
        O::Flag(false)
    );
    assert_eq!(
        output(&f.apply("p", &C::Incr { key: b"n".to_vec() })),
        O::Number(1)
    );
    assert_eq!(
        output(&f.apply("p", &C::Incr { key: b"n".to_vec() })),
        O::Number(2)
    );
}

use crate::common::output;

#[test]
fn entry_context_and_prng_are_per_entry() {
    use probe::{Command as C, Output as O};
    let f = Fixture::probe();
    let O::Context {
        index,
        term,
        timestamp_ms,
        position,
        random,
    } = output(&f.apply("p", &C::Context))
    else {
        panic!("not a context")
    };
    assert_eq!((index, term, position), (f.applied_index(), 1, 0));
    assert!(
        timestamp_ms > 1_600_000_000_000,
        "wall-clock ms: {timestamp_ms}"
    );
    assert_ne!(random[0], random[1]);
    let mut rng = wraft_core::rng::EntryRng::new(index, 0);
    assert_eq!(
        random,
        [rng.next_u64(), rng.next_u64()],
        "host PRNG is EntryRng(index, position)"
    );
}

#[test]
fn fsms_cannot_see_each_others_keys() {
    use probe::{Command as C, Output as O, Query as Q};
    let f = Fixture::probe();
    f.node
        .create(name("q"), f.module, FsmLimits::default())
        .expect("no fault")
        .expect("create");
    f.apply(
        "p",
        &C::Put {
            key: b"secret".to_vec(),
            value: b"p's".to_vec(),
        },
    );
    f.apply(
        "q",
        &C::Put {
            key: b"mine".to_vec(),
            value: b"q's".to_vec(),
        },
    );
    assert_eq!(
        f.query(
            "q",
            &Q::Get {
                key: b"secret".to_vec()
            }
        ),
        Ok(O::None)
    );
    let Ok(O::Pairs(all)) = f.query("q", &Q::ScanPrefix { prefix: vec![] }) else {
        panic!()
    };
    assert_eq!(all, vec![(b"mine".to_vec(), b"q's".to_vec())]);
    // Scanning from the lowest to the highest possible key stays inside q's keyspace.
    let Ok(O::Pairs(all)) = f.query(
        "q",
        &Q::Scan {
            start: vec![],
            end: Some(vec![0xff; 64]),
            limit: 1000,
        },
    ) else {
        panic!()
    };
    assert_eq!(all.len(), 1);
}

#[test]
fn file_manifest() {
    let f = Fixture::new(
        wraft_fsm_artifacts::FILE_MANIFEST,
        "manifest",
        FsmLimits::default(),
    );
    let fsm = name("manifest");
    let file = |path: &str, t: u64, tier: &str| {
        format!(
            r#"{{"path":"{path}","database":"metrics","measurement":"cpu","partition_time_ms":{t},"size_bytes":100,"checksum":"c","tier":"{tier}"}}"#
        )
    };
    let sources: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"Register":{}}}"#,
                file(&format!("s{i:02}"), i * 10, "Hot")
            )
        })
        .collect();
    let out = f
        .node
        .apply_json(
            &fsm,
            &format!(r#"{{"BatchFileOps":[{}]}}"#, sources.join(",")),
        )
        .expect("no fault")
        .expect("sources");
    assert!(out.contains(r#""registered":40"#), "{out}");
    // Compaction: the output written and the 40 sources deleted, as one command.
    let mut ops = vec![format!(
        r#"{{"Register":{}}}"#,
        file("compacted", 0, "Warm")
    )];
    ops.extend((0..40).map(|i| format!(r#"{{"Delete":{{"path":"s{i:02}"}}}}"#)));
    let out = f
        .node
        .apply_json(&fsm, &format!(r#"{{"BatchFileOps":[{}]}}"#, ops.join(",")))
        .expect("no fault")
        .expect("compaction");
    assert!(out.contains(r#""registered":1,"deleted":40"#), "{out}");
    let listed = f
        .node
        .query_json(
            &fsm,
            r#"{"ByMeasurement":{"database":"metrics","measurement":"cpu"}}"#,
        )
        .expect("no fault")
        .expect("query");
    assert!(
        listed.contains("compacted") && !listed.contains("s01"),
        "{listed}"
    );
    let totals = f
        .node
        .query_json(&fsm, r#""Totals""#)
        .expect("no fault")
        .expect("totals");
    assert!(totals.contains(r#""files":1,"bytes":100"#), "{totals}");
    // Idempotent retry of the compaction changes nothing.
    let before = f.hash("manifest");
    let out = f
        .node
        .apply_json(&fsm, &format!(r#"{{"BatchFileOps":[{}]}}"#, ops.join(",")))
        .expect("no fault")
        .expect("retry");
    assert!(
        out.contains(r#""registered":0,"deleted":0,"unchanged":41"#),
        "{out}"
    );
    assert_eq!(f.hash("manifest"), before);
}

/// A 4D volume around (lat, lng) for the next hour, as JSON.
pub fn airspace_volume(lat: f64, lng: f64, side: f64, alt: (f64, f64)) -> String {
    let now = wraft_host::clock::now_ms();
    let (a, b) = (lat + side, lng + side);
    format!(
        r#"{{"footprint":{{"Polygon":[{{"lat":{lat},"lng":{lng}}},{{"lat":{lat},"lng":{b}}},{{"lat":{a},"lng":{b}}},{{"lat":{a},"lng":{lng}}}]}},"altitude_lo_m":{},"altitude_hi_m":{},"start_ms":{},"end_ms":{}}}"#,
        alt.0,
        alt.1,
        now.saturating_sub(60_000),
        now + 3_600_000
    )
}

/// `PutIntent` as JSON.
pub fn airspace_intent(id: &str, volume: &str, key: &[&str], ovn: Option<&str>) -> String {
    let key: Vec<String> = key.iter().map(|k| format!("{k:?}")).collect();
    let ovn = ovn.map_or("null".to_string(), |o| format!("{o:?}"));
    format!(
        r#"{{"PutIntent":{{"id":"{id}","owner":"uss1","volumes":[{volume}],"state":"Accepted","base_url":"https://uss1.example","key":[{}],"ovn":{ovn}}}}}"#,
        key.join(",")
    )
}

/// The OVN of a `Stored` outcome.
pub fn stored_ovn(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    v["Stored"]["ovn"]
        .as_str()
        .unwrap_or_else(|| panic!("not stored: {json}"))
        .to_string()
}

#[test]
fn airspace_store() {
    let f = Fixture::new(
        wraft_fsm_artifacts::AIRSPACE_STORE,
        "airspace",
        FsmLimits::default(),
    );
    let fsm = name("airspace");
    let apply = |json: &str| f.node.apply_json(&fsm, json).expect("no fault");
    let sub = format!(
        r#"{{"PutSubscription":{{"id":"s1","owner":"uss2","volume":{},"callback_url":"https://uss2.example/s1","notify_for_isas":false,"notify_for_intents":true,"ovn":null}}}}"#,
        airspace_volume(47.0, 8.0, 0.2, (0.0, 1000.0))
    );
    apply(&sub).expect("subscription");
    let a = apply(&airspace_intent(
        "a",
        &airspace_volume(47.0, 8.0, 0.01, (0.0, 120.0)),
        &[],
        None,
    ))
    .expect("a");
    let a_ovn = stored_ovn(&a);
    assert!(a.contains(r#""subscription_id":"s1""#), "{a}");
    let b_volume = airspace_volume(47.005, 8.005, 0.01, (50.0, 150.0));
    let conflict = apply(&airspace_intent("b", &b_volume, &[], None)).expect("answered");
    assert!(
        conflict.contains(r#""Conflict""#) && conflict.contains(&a_ovn),
        "{conflict}"
    );
    let b = apply(&airspace_intent("b", &b_volume, &[&a_ovn], None)).expect("b");
    stored_ovn(&b);
    let found = f
        .node
        .query_json(
            &fsm,
            &format!(
                r#"{{"Search":{{"kinds":["Intent"],"area":{}}}}}"#,
                airspace_volume(47.004, 8.004, 0.002, (0.0, 500.0))
            ),
        )
        .expect("no fault")
        .expect("search");
    let v: serde_json::Value = serde_json::from_str(&found).expect("json");
    let ids: Vec<&str> = v["Records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let bad = apply(&airspace_intent(
        "c",
        &airspace_volume(95.0, 8.0, 0.01, (0.0, 1.0)),
        &[],
        None,
    ));
    assert!(
        bad.expect_err("invalid")
            .to_string()
            .contains("latitude 95"),
        "bad coordinates are explained"
    );
}

#[test]
fn probe_next() {
    use probe::{Command as C, Output as O, Query as Q};
    use wraft_core::{ApplyError, Command, EntryResponse};
    let f = Fixture::probe();
    for key in ["a", "refuse-upgrade"] {
        f.apply(
            "p",
            &C::Put {
                key: key.as_bytes().to_vec(),
                value: b"1".to_vec(),
            },
        );
    }
    let next = f
        .node
        .deploy(wraft_fsm_artifacts::PROBE_NEXT.to_vec())
        .expect("store")
        .expect("valid");
    let upgrade = || {
        f.node
            .propose(Command::UpgradeFsm {
                fsm: name("p"),
                module_id: next,
            })
            .expect("no fault")
    };
    let before = f.hash("p");
    let refused = upgrade();
    assert!(
        matches!(&refused, EntryResponse::Failed(ApplyError::Rejected(m)) if m.contains("upgrade refused")),
        "{refused:?}"
    );
    assert_eq!(f.hash("p"), before, "a refused upgrade writes nothing");
    let module_of_p = || {
        f.node
            .store()
            .fsms()
            .expect("fsms")
            .into_iter()
            .find(|(n, _)| n == "p")
            .expect("p")
            .1
            .module_id
    };
    assert_eq!(module_of_p(), f.module, "the old module keeps serving");
    f.apply(
        "p",
        &C::Delete {
            key: b"refuse-upgrade".to_vec(),
        },
    );
    assert_eq!(upgrade(), EntryResponse::Done);
    assert_eq!(module_of_p(), next);
    // migrate(3) moved the data under v4/ and recorded where it came from.
    assert_eq!(f.query("p", &Q::Get { key: b"a".to_vec() }), Ok(O::None));
    assert_eq!(
        f.query(
            "p",
            &Q::Get {
                key: b"v4/a".to_vec()
            }
        ),
        Ok(O::Bytes(b"1".to_vec()))
    );
    let Ok(O::Bytes(from)) = f.query(
        "p",
        &Q::Get {
            key: b"migrated-from".to_vec(),
        },
    ) else {
        panic!("migrated-from missing")
    };
    assert_eq!(postcard::from_bytes::<u64>(&from).expect("u64"), 3);
}
