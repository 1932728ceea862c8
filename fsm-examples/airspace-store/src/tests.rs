use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;
use wraft_guest::Context;
use wraft_guest::testing::TestFsm;

use super::*;

fn square(lat: f64, lng: f64, side: f64) -> Footprint {
    Footprint::square(lat, lng, side)
}

fn vol(footprint: Footprint, alt: (f64, f64), time: (u64, u64)) -> Volume {
    Volume {
        footprint,
        altitude_lo_m: alt.0,
        altitude_hi_m: alt.1,
        start_ms: time.0,
        end_ms: time.1,
    }
}

fn area(lat: f64, lng: f64, side: f64) -> Volume {
    vol(square(lat, lng, side), (0.0, 400.0), (0, 100_000))
}

fn isa(id: &str, volume: Volume) -> Command {
    Command::PutIsa {
        id: id.into(),
        owner: "uss1".into(),
        volume,
        flights_url: "https://uss1.example/flights".into(),
        ovn: None,
    }
}

fn intent(id: &str, volumes: Vec<Volume>, key: Vec<String>, ovn: Option<String>) -> Command {
    Command::PutIntent {
        id: id.into(),
        owner: "uss1".into(),
        volumes,
        state: IntentState::Accepted,
        base_url: alloc::format!("https://uss1.example/oi/{id}"),
        key,
        ovn,
    }
}

fn stored(o: Outcome) -> (String, u64, Vec<Notification>) {
    match o {
        Outcome::Stored {
            ovn,
            version,
            notify,
            ..
        } => (ovn, version, notify),
        other => panic!("not stored: {other:?}"),
    }
}

fn ids(a: Answer) -> Vec<String> {
    match a {
        Answer::Records(r) => r.into_iter().map(|r| r.id).collect(),
        Answer::Stats(_) => panic!("not records"),
    }
}

#[test]
fn intersecting_intents_must_present_each_others_ovns() {
    let mut s = TestFsm::<AirspaceStore>::new();
    let (a_ovn, _, _) = stored(
        s.apply(intent("a", vec![area(47.0, 8.0, 0.01)], vec![], None))
            .expect("a"),
    );
    // b overlaps a and does not present a's OVN: refused, nothing written.
    let b_vols = vec![area(47.005, 8.005, 0.01)];
    let out = s
        .apply(intent("b", b_vols.clone(), vec![], None))
        .expect("b");
    let Outcome::Conflict { missing } = out else {
        panic!("expected a conflict, got {out:?}")
    };
    assert_eq!(missing.len(), 1);
    assert_eq!((missing[0].id.as_str(), &missing[0].ovn), ("a", &a_ovn));
    assert_eq!(missing[0].base_url, "https://uss1.example/oi/a");
    let none = s
        .query(Query::Get {
            kind: Kind::Intent,
            id: "b".into(),
        })
        .expect("q");
    assert!(ids(none).is_empty());
    // With a's OVN in the key it is accepted.
    let (b_ovn, v, _) = stored(
        s.apply(intent("b", b_vols.clone(), vec![a_ovn.clone()], None))
            .expect("b"),
    );
    assert_eq!(v, 1);
    // Updating a now needs b's OVN, and a's own current OVN.
    let stale = s.apply(intent(
        "a",
        vec![area(47.0, 8.0, 0.01)],
        vec![b_ovn.clone()],
        Some("0".into()),
    ));
    assert!(stale.expect_err("stale").to_string().contains("stale"));
    let (a2, v2, _) = stored(
        s.apply(intent(
            "a",
            vec![area(47.0, 8.0, 0.01)],
            vec![b_ovn],
            Some(a_ovn.clone()),
        ))
        .expect("update a"),
    );
    assert_eq!(v2, 2);
    assert_ne!(a2, a_ovn);
    // A volume above both (altitude 500+) conflicts with neither.
    let high = vol(square(47.0, 8.0, 0.02), (500.0, 600.0), (0, 100_000));
    stored(s.apply(intent("c", vec![high], vec![], None)).expect("c"));
    // Creating an id twice is refused.
    let twice = s.apply(intent("c", vec![area(48.0, 8.0, 0.01)], vec![], None));
    assert!(
        twice
            .expect_err("twice")
            .to_string()
            .contains("already exists")
    );
}

#[test]
fn subscriptions_hear_about_changes_in_their_area() {
    let mut s = TestFsm::<AirspaceStore>::new();
    let sub = |id: &str, a: Volume, isas: bool, intents: bool| Command::PutSubscription {
        id: id.into(),
        owner: "uss2".into(),
        volume: a,
        callback_url: alloc::format!("https://uss2.example/{id}"),
        notify_for_isas: isas,
        notify_for_intents: intents,
        ovn: None,
    };
    stored(
        s.apply(sub("isas", area(47.0, 8.0, 0.1), true, false))
            .expect("s1"),
    );
    stored(
        s.apply(sub("ois", area(47.0, 8.0, 0.1), false, true))
            .expect("s2"),
    );
    stored(
        s.apply(sub("far", area(40.0, 8.0, 0.1), true, true))
            .expect("s3"),
    );

    let (ovn, _, n) = stored(s.apply(isa("i1", area(47.05, 8.05, 0.01))).expect("i1"));
    assert_eq!(n.len(), 1);
    assert_eq!(
        (n[0].subscription_id.as_str(), n[0].notification_index),
        ("isas", 1)
    );
    assert_eq!(n[0].callback_url, "https://uss2.example/isas");
    let (_, _, n) = stored(s.apply(isa("i2", area(47.06, 8.06, 0.01))).expect("i2"));
    assert_eq!(n[0].notification_index, 2);
    let (_, _, n) = stored(s.apply(isa("i3", area(46.0, 8.0, 0.01))).expect("i3"));
    assert!(n.is_empty(), "outside every subscription");
    let deleted = s
        .apply(Command::Delete {
            kind: Kind::Isa,
            id: "i1".into(),
            ovn,
        })
        .expect("delete");
    let Outcome::Deleted { notify, .. } = deleted else {
        panic!("{deleted:?}")
    };
    assert_eq!(notify[0].notification_index, 3);
    let (_, _, n) = stored(
        s.apply(intent("oi", vec![area(47.01, 8.01, 0.01)], vec![], None))
            .expect("oi"),
    );
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].subscription_id, "ois");
}

#[test]
fn expired_records_vanish_and_are_removed_by_apply() {
    let mut s = TestFsm::<AirspaceStore>::new();
    s.set_time_ms(1_000);
    stored(
        s.apply(isa(
            "short",
            vol(square(47.0, 8.0, 0.01), (0.0, 100.0), (1_000, 2_000)),
        ))
        .expect("short"),
    );
    stored(s.apply(isa("long", area(47.0, 8.0, 0.01))).expect("long"));
    let search = || Query::Search {
        kinds: vec![],
        area: area(46.9, 7.9, 0.3),
    };
    assert_eq!(ids(s.query(search()).expect("q")), ["long", "short"]);
    s.set_time_ms(2_000);
    // Its end has passed: queries no longer see it, though it is still stored.
    assert_eq!(ids(s.query(search()).expect("q")), ["long"]);
    // The next apply, whatever it is, removes it.
    stored(
        s.apply(isa("elsewhere", area(10.0, 10.0, 0.01)))
            .expect("other"),
    );
    let Answer::Stats(st) = s.query(Query::Stats).expect("stats") else {
        panic!()
    };
    assert_eq!((st.records[0], st.expired), (2, 1), "removed by the apply");
    assert!(
        !s.host.data.keys().any(|k| k.ends_with(b"short")),
        "no key left behind"
    );
    // The id is free again.
    stored(
        s.apply(isa("short", area(47.0, 8.0, 0.01)))
            .expect("reuse id"),
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let mut s = TestFsm::<AirspaceStore>::new();
    let err =
        |s: &mut TestFsm<AirspaceStore>, c: Command| s.apply(c).expect_err("invalid").to_string();
    assert!(err(&mut s, isa("x", area(95.0, 8.0, 0.01))).contains("latitude 95"));
    assert!(err(&mut s, isa("x", area(47.0, 8.0, 3.0))).contains("too large"));
    assert!(err(&mut s, isa("", area(47.0, 8.0, 0.01))).contains("id must be"));
    let inverted = vol(square(47.0, 8.0, 0.01), (300.0, 100.0), (0, 1000));
    assert!(err(&mut s, isa("x", inverted)).contains("volume 0: altitude range is inverted"));
    let many = vec![area(47.0, 8.0, 0.01); MAX_VOLUMES + 1];
    assert!(err(&mut s, intent("x", many, vec![], None)).contains("1 to 16 volumes"));
    let spiky = Footprint::Polygon(vec![
        LatLng {
            lat: 47.0,
            lng: 8.0
        };
        101
    ]);
    assert!(err(&mut s, isa("x", vol(spiky, (0.0, 1.0), (0, 1000)))).contains("3 to 100 vertices"));
    let q = s.query(Query::Search {
        kinds: vec![],
        area: vol(square(47.0, 8.0, 0.01), (0.0, 1.0), (10, 5)),
    });
    assert!(
        q.expect_err("inverted time")
            .to_string()
            .contains("time range")
    );
    let Answer::Stats(st) = s.query(Query::Stats).expect("stats") else {
        panic!()
    };
    assert_eq!(st.records, [0, 0, 0], "nothing stored");
}

#[test]
fn json_shape_is_readable() {
    let c = Command::Delete {
        kind: Kind::Intent,
        id: "x".into(),
        ovn: "ab".into(),
    };
    assert_eq!(
        serde_json::to_string(&c).expect("json"),
        r#"{"Delete":{"kind":"Intent","id":"x","ovn":"ab"}}"#
    );
}

// ---- property: the index finds exactly what a full scan finds ----

fn footprint() -> impl Strategy<Value = Footprint> {
    let center = (47.0..47.6f64, 8.0..8.6f64);
    let size = prop_oneof![0.0002..0.003f64, 0.003..0.05f64, 0.05..0.45f64];
    prop_oneof![
        (center.clone(), size.clone()).prop_map(|((lat, lng), s)| Footprint::Circle {
            center: LatLng { lat, lng },
            radius_m: s * 50_000.0,
        }),
        (
            center,
            size,
            proptest::collection::vec((0.0..1.0f64, 0.2..1.0f64), 3..9)
        )
            .prop_map(|((lat, lng), s, spokes)| {
                // A star-shaped (hence simple) polygon: vertices at increasing angles.
                let n = spokes.len() as f64;
                let vertices = spokes
                    .iter()
                    .enumerate()
                    .map(|(i, (jitter, r))| {
                        let a = (i as f64 + jitter * 0.9) / n * core::f64::consts::TAU;
                        LatLng {
                            lat: lat + s * r * libm::sin(a),
                            lng: lng + s * r * libm::cos(a),
                        }
                    })
                    .collect();
                Footprint::Polygon(vertices)
            }),
    ]
}

fn volume() -> impl Strategy<Value = Volume> {
    (
        footprint(),
        0.0..300.0f64,
        0.0..300.0f64,
        0u64..5_000,
        1u64..10_000,
    )
        .prop_map(|(footprint, a, h, start, len)| Volume {
            footprint,
            altitude_lo_m: a,
            altitude_hi_m: a + h,
            start_ms: start,
            end_ms: start + len,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn index_search_equals_a_full_scan(
        records in proptest::collection::vec((volume(), any::<bool>()), 1..60),
        areas in proptest::collection::vec(volume(), 1..8),
        now in 0u64..6_000,
    ) {
        let mut s = TestFsm::<AirspaceStore>::new();
        for (i, (v, as_sub)) in records.into_iter().enumerate() {
            let id = alloc::format!("r{i:03}");
            let cmd = if as_sub {
                Command::PutSubscription {
                    id, owner: "o".into(), volume: v, callback_url: "u".into(),
                    notify_for_isas: true, notify_for_intents: true, ovn: None,
                }
            } else {
                isa(&id, v)
            };
            s.apply(cmd).expect("valid by construction");
        }
        s.set_time_ms(now);
        let ctx = Context::new(&mut s.host);
        let stats = store::stats(&ctx).expect("stats");
        for a in &areas {
            for kind in [Kind::Isa, Kind::Subscription] {
                let fast = store::search(&ctx, &stats, kind, a, now).expect("search");
                let slow = store::search_by_scan(&ctx, kind, a, now).expect("scan");
                prop_assert_eq!(
                    fast.keys().collect::<Vec<_>>(),
                    slow.keys().collect::<Vec<_>>()
                );
            }
        }
    }
}
