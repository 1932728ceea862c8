//! One test per guest in fsm-examples: `foreach_guest!` makes a guest without a test here a
//! compile error.

use wraft_core::FsmLimits;

use crate::common::{Fixture, name};

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
