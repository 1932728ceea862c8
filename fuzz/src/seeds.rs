//! Seed inputs for every target, built from real encodings (so the fuzzer starts from
//! messages a node really sends and mutates inward). `cargo run --example seeds` writes them
//! to `fuzz/seeds/<target>/`.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, Membership};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wraft_api::Role;
use wraft_api::{
    ApiCall, ApiError, ApiRequest, ApiResponse, ApiResult, BackupManifest, Consistency, Payload,
};
use wraft_core::entry::{Apply, Command, FsmLimits, GroupedWrite, StateDigest};
use wraft_core::link::auth::{ClusterKey, Handshake};
use wraft_core::name::ModuleId;
use wraft_core::raft::{Entry, LogId, Node, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use wraft_core::session::{Sequence, SessionWrite};
use wraft_core::voter::{
    self, AppendOutcome, FlashStore, LeaderId, Persisted, Refusal, Request, Response, Run,
    VoterStore, key_record,
};
use wraft_core::{ApplyError, EntryResponse, FsmName, LogEntry, frame, link};
use wraft_host::raft::AppliedState;
use wraft_host::state::FsmRecord;
use wraft_transport_quic::wire::{Chunk, Reply, Request as RaftRequest};

use crate::InputBuilder;
use crate::voter::Nor;

/// One seed: the target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every target's seeds.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, name.to_string(), bytes));
    };
    for (name, entry) in entries() {
        let mut framed = Vec::new();
        frame::encode_frame(&entry, &mut framed);
        add("frame", &name, framed);
        add("log_entry", &name, [&[0u8][..], &entry.to_bytes()].concat());
    }
    add("log_entry", "v1-create", [&[0u8][..], &v1_entry()].concat());
    for (name, response) in responses() {
        add(
            "log_entry",
            &format!("response-{name}"),
            tagged(1, &response),
        );
        if let EntryResponse::Failed(e) = response {
            add("log_entry", &format!("error-{name}"), tagged(2, &e));
        }
    }
    for (name, request) in raft_requests() {
        add("quic_raft", &name, tagged(0, &request));
    }
    add(
        "quic_raft",
        "hello-only",
        tagged(1, &RaftRequest::Hello { from: 7 }),
    );
    for (name, reply) in raft_replies() {
        add("quic_raft", &name, tagged(2, &reply));
    }
    add("quic_raft", "chunk", tagged(3, &Chunk(vec![0xab; 64])));
    for (name, call) in api_calls() {
        add("quic_api", &name, tagged(0, &call));
    }
    for (name, result) in api_results() {
        add("quic_api", &name, tagged(1, &result));
    }
    add("quic_api", "manifest", tagged(2, &manifest()));
    link_seeds(&mut add);
    voter_seeds(&mut add);
    flash_seeds(&mut add);
    snapshot_seeds(&mut add);
    record_seeds(&mut add);
    codec_seeds(&mut add);
    seeds
}

fn tagged<T: Serialize>(selector: u8, value: &T) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend(postcard::to_allocvec(value).expect("encodes"));
    out
}

fn name(s: &str) -> FsmName {
    FsmName::new(s).expect("a valid name")
}

fn entries() -> Vec<(String, LogEntry)> {
    let apply = |fsm: &str, payload: &[u8]| Apply {
        fsm: name(fsm),
        payload: payload.to_vec(),
    };
    let commands = [
        ("apply", Command::Apply(apply("sequencer", &[0, 1, 2, 3]))),
        (
            "batch",
            Command::Batch(vec![apply("manifest", &[1; 20]), apply("manifest", &[])]),
        ),
        (
            "deploy",
            Command::DeployModule {
                module_id: ModuleId([3; 32]),
                bytes: b"\0asm\x01\0\0\0".to_vec(),
            },
        ),
        (
            "create",
            Command::CreateFsm {
                fsm: name("airspace"),
                module_id: ModuleId([4; 32]),
                limits: FsmLimits::default(),
            },
        ),
        (
            "upgrade",
            Command::UpgradeFsm {
                fsm: name("a"),
                module_id: ModuleId([5; 32]),
            },
        ),
        ("drop-fsm", Command::DropFsm { fsm: name("a") }),
        (
            "drop-module",
            Command::DropModule {
                module_id: ModuleId([6; 32]),
            },
        ),
        (
            "checkpoint",
            Command::Checkpoint {
                leader: Some(StateDigest {
                    index: 42,
                    registry: [7; 32],
                    fsms: vec![(name("a"), [8; 32])],
                }),
            },
        ),
        (
            "set-limits",
            Command::SetLimits {
                fsm: name("a"),
                limits: FsmLimits::default(),
            },
        ),
        (
            "group",
            Command::Group(vec![
                GroupedWrite::Apply(apply("sequencer", &[1])),
                GroupedWrite::Batch(vec![apply("manifest", &[2]), apply("manifest", &[])]),
                GroupedWrite::Session {
                    sequence: Sequence {
                        session: 9,
                        seq: 2,
                        acked: 1,
                    },
                    write: SessionWrite::Apply(apply("a", &[3])),
                },
                GroupedWrite::Keyed {
                    key: "key-1".into(),
                    write: SessionWrite::Batch(vec![apply("a", &[4])]),
                },
            ]),
        ),
    ];
    commands
        .into_iter()
        .map(|(n, c)| (format!("entry-{n}"), LogEntry::new(1_700_000_000_000, c)))
        .collect()
}

/// A first-format `CreateFsm` entry (three-field limits), as the first wraft wrote it.
fn v1_entry() -> Vec<u8> {
    let mut old = vec![0u8, 0x80, 0x80, 0x80, 0x80, 0x10]; // V1, timestamp
    old.push(3); // CreateFsm
    old.extend(postcard::to_allocvec(&name("a")).expect("name"));
    old.extend([7; 32]);
    old.extend(postcard::to_allocvec(&(900u64, 16u32, 4096u32)).expect("limits"));
    old
}

fn responses() -> Vec<(&'static str, EntryResponse)> {
    vec![
        ("output", EntryResponse::Output(vec![1, 2, 3])),
        ("batch", EntryResponse::BatchOutputs(vec![vec![1], vec![]])),
        ("done", EntryResponse::Done),
        ("internal", EntryResponse::Internal),
        (
            "rejected",
            EntryResponse::Failed(ApplyError::Rejected("older block".into())),
        ),
        (
            "batch-failed",
            EntryResponse::Failed(ApplyError::BatchFailed {
                position: 2,
                error: Box::new(ApplyError::OutOfFuel { limit: 9 }),
            }),
        ),
        (
            "too-large",
            EntryResponse::Failed(ApplyError::TooLarge {
                what: "value".into(),
                len: 9,
                limit: 8,
            }),
        ),
        (
            "in-use",
            EntryResponse::Failed(ApplyError::ModuleInUse {
                module: ModuleId([1; 32]),
                fsm: "a".into(),
            }),
        ),
        (
            "quota",
            EntryResponse::Failed(ApplyError::QuotaExceeded {
                needed: 10,
                quota: 5,
            }),
        ),
    ]
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn membership() -> StoredMembership {
    let nodes: BTreeMap<u64, Node> = (1..=3)
        .map(|id| (id, Node::new(format!("127.0.0.1:700{id}"))))
        .collect();
    let voters = vec![BTreeSet::from([1, 2, 3])];
    let m = Membership::new(voters, nodes).expect("a membership");
    StoredMembership::new(Some(log_id(1, 1, 1)), m)
}

fn raft_requests() -> Vec<(String, RaftRequest)> {
    let vote = Vote::new_committed(3, 1);
    let entry = |index, payload| Entry {
        log_id: log_id(3, 1, index),
        payload,
    };
    let (_, first) = entries().swap_remove(0);
    let append = AppendEntriesRequest {
        vote,
        prev_log_id: Some(log_id(2, 2, 9)),
        entries: vec![
            entry(10, EntryPayload::Blank),
            entry(11, EntryPayload::Normal(first)),
            entry(
                12,
                EntryPayload::Membership(membership().membership().clone()),
            ),
        ],
        leader_commit: Some(log_id(2, 2, 8)),
    };
    vec![
        ("hello".into(), RaftRequest::Hello { from: 2 }),
        ("append".into(), RaftRequest::AppendEntries(append)),
        (
            "vote".into(),
            RaftRequest::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 1, 12)))),
        ),
        (
            "pre-vote".into(),
            RaftRequest::PreVote(VoteRequest::new(Vote::new(4, 2), None)),
        ),
        (
            "snapshot".into(),
            RaftRequest::Snapshot {
                vote,
                meta: snapshot_meta(),
                len: 1 << 20,
            },
        ),
        (
            "transfer".into(),
            RaftRequest::TransferLeader(TransferLeaderRequest::new(
                vote,
                2,
                Some(log_id(3, 1, 12)),
            )),
        ),
    ]
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 12)),
        last_membership: membership(),
    }
}

fn raft_replies() -> Vec<(String, Reply)> {
    vec![
        ("reply-hello".into(), Reply::Hello(Ok(()))),
        (
            "reply-refused".into(),
            Reply::Hello(Err("node 9 was removed".into())),
        ),
        (
            "reply-append".into(),
            Reply::AppendEntries(Ok(AppendEntriesResponse::Success)),
        ),
        (
            "reply-vote".into(),
            Reply::Vote(Ok(VoteResponse::new(
                Vote::new(4, 2),
                Some(log_id(3, 1, 12)),
                true,
            ))),
        ),
    ]
}

fn api_calls() -> Vec<(String, ApiCall)> {
    let json = |s: &str| Payload::Json(s.into());
    let requests = [
        (
            "apply",
            ApiRequest::Apply {
                fsm: name("sequencer"),
                command: json(r#"{"Commit":{"number":1}}"#),
                once: None,
            },
        ),
        (
            "batch",
            ApiRequest::Batch {
                commands: vec![
                    (name("manifest"), json(r#"{"DeleteFile":{"path":"a"}}"#)),
                    (name("manifest"), Payload::Postcard(vec![1, 1, 97])),
                ],
                once: None,
            },
        ),
        (
            "query",
            ApiRequest::Query {
                fsm: name("sequencer"),
                query: json(r#""Latest""#),
                consistency: Consistency::Lease,
            },
        ),
        (
            "create",
            ApiRequest::CreateFsm {
                fsm: name("f"),
                module_id: ModuleId([9; 32]),
                limits: FsmLimits::default(),
            },
        ),
        (
            "add-learner",
            ApiRequest::AddLearner {
                id: 4,
                addr: "127.0.0.1:7004".into(),
            },
        ),
        ("transfer", ApiRequest::TransferLeader { to: Some(2) }),
        ("upload", ApiRequest::Upload { len: 1 << 20 }),
        ("status", ApiRequest::Status),
        ("backup", ApiRequest::Backup),
        ("stages", ApiRequest::Stages),
        ("features", ApiRequest::Features),
    ];
    let mut calls: Vec<(String, ApiCall)> = requests
        .iter()
        .map(|(n, r)| (format!("call-{n}"), ApiCall::Direct(r.clone())))
        .collect();
    calls.push((
        "call-forwarded".into(),
        ApiCall::Forwarded {
            role: Role::Writer,
            request: requests[0].1.clone(),
        },
    ));
    calls
}

fn manifest() -> BackupManifest {
    BackupManifest {
        node: 1,
        taken_at_ms: 1_700_000_000_000,
        version: "0.1.0".into(),
        applied_index: 12,
        applied_term: 3,
        voters: vec![1, 2, 3],
        learners: vec![4],
        registry_sha256: "ab".repeat(32),
        fsms: vec![("sequencer".into(), "cd".repeat(32))],
        file_bytes: 4096,
        file_sha256: "ef".repeat(32),
    }
}

fn api_results() -> Vec<(String, ApiResult)> {
    let results = [
        (
            "output",
            Ok(ApiResponse::Output(Payload::Json("{}".into()))),
        ),
        (
            "outputs",
            Ok(ApiResponse::BatchOutputs(vec![Payload::Postcard(vec![1])])),
        ),
        ("backup", Ok(ApiResponse::Backup(manifest()))),
        ("leader", Ok(ApiResponse::Leader(2))),
        (
            "stages",
            Ok(ApiResponse::Stages(vec![wraft_api::StageLatency {
                stage: "submitted_to_persisted".into(),
                entries: 1024,
                p50_us: 180,
                p90_us: 400,
                p99_us: 2900,
            }])),
        ),
        (
            "failed",
            Err(ApiError::Failed(ApplyError::BatchFailed {
                position: 0,
                error: Box::new(ApplyError::ReadOnly),
            })),
        ),
        (
            "not-allowed",
            Err(ApiError::NotAllowed {
                needed: Role::Admin,
                have: Some(Role::Reader),
            }),
        ),
        ("busy", Err(ApiError::Busy("in flight".into()))),
    ];
    results
        .into_iter()
        .map(|(n, r)| (format!("result-{n}"), r))
        .collect()
}

fn voter_requests() -> Vec<Request> {
    let leader = LeaderId { term: 2, node: 1 };
    let vote = voter::Vote {
        leader,
        committed: true,
    };
    let id = |index| voter::LogId { leader, index };
    vec![
        Request::Vote {
            vote: voter::Vote {
                leader,
                committed: false,
            },
            last: None,
            transfer: false,
        },
        Request::Append {
            vote,
            prev: None,
            runs: vec![Run { leader, count: 3 }],
            commit: None,
            lease_ms: 1000,
        },
        Request::Append {
            vote,
            prev: Some(id(2)),
            runs: vec![Run { leader, count: 2 }],
            commit: Some(id(3)),
            lease_ms: 1000,
        },
        Request::PreVote {
            vote: voter::Vote {
                leader: LeaderId { term: 3, node: 2 },
                committed: false,
            },
            last: Some(id(4)),
        },
        Request::Snapshot {
            vote,
            last: id(9),
            lease_ms: 0,
        },
        Request::Status,
    ]
}

fn link_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let mut stream = vec![0u8];
    for request in voter_requests() {
        link::encode(&request, &mut stream);
    }
    let responses = [
        Response::Append(AppendOutcome::Success),
        Response::Refused(Refusal::TailFull),
    ];
    for response in &responses {
        link::encode(response, &mut stream);
    }
    add("link", "stream", stream);
    for (i, request) in voter_requests().iter().enumerate() {
        let body = postcard::to_allocvec(request).expect("encodes");
        let input = InputBuilder::default().byte(1).short(&[0x55, 3]).raw(&body);
        add("link", &format!("request-{i}"), input.0);
    }
}

/// Voter-link scripts: hellos, calls, replays, corruptions and clock steps.
fn voter_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let mut script = InputBuilder::default().byte(1).byte(7);
    script = script.byte(1).raw(&[9; 16]);
    for request in voter_requests() {
        let body = postcard::to_allocvec(&request).expect("encodes");
        script = script.byte(2).short(&body).byte(6).u16(300);
    }
    script = script.byte(4).byte(2).byte(5).byte(3).u16(5).byte(0x10);
    add("voter_link", "session", script.0);
    let mut hello = Vec::new();
    Handshake::new(&ClusterKey::from_bytes([7; 32]), [1; 16]).hello(&mut hello);
    let raw = InputBuilder::default()
        .byte(0)
        .byte(3)
        .byte(0)
        .short(&hello)
        .byte(3)
        .short(&[1, 5, 4]);
    add("voter_link", "raw-hello", raw.0);

    let mut requests = InputBuilder::default();
    for request in voter_requests() {
        let body = postcard::to_allocvec(&request).expect("encodes");
        requests = requests.u16(250).byte(0).raw(&body);
    }
    add("voter_state", "term", requests.0);
}

fn flash_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let key = key_record(&ClusterKey::from_bytes([7; 32]));
    add("voter_flash", "blank", InputBuilder::default().long(&key).0);
    let (mut store, _) = FlashStore::open(Nor::new(4, &[])).expect("blank flash");
    let mut state = Persisted::default();
    for request in voter_requests() {
        if let Request::Append { vote, runs, .. } = request {
            state.vote = vote;
            state.tail.extend(runs);
            store.save(&state).expect("saves");
        }
    }
    let image = store.into_inner().bytes;
    let states = [Persisted::default(), state];
    let mut input = InputBuilder::default().long(&image);
    for (i, s) in states.iter().enumerate() {
        let cut: u16 = if i == 1 { 0x8000 | 600 } else { 0 };
        input = input
            .u16(cut)
            .raw(&postcard::to_allocvec(s).expect("encodes"));
    }
    add("voter_flash", "records", input.0);
}

fn snapshot_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let content = b"an LMDB copy of the state env, in a few bytes".to_vec();
    let mut file = content.clone();
    file.extend(Sha256::digest(&content));
    file.extend((content.len() as u64).to_le_bytes());
    file.extend(b"WRAFTSN1");
    add("snapshot", "sealed", [&[0u8][..], &file].concat());
    add(
        "snapshot",
        "flipped",
        InputBuilder::default()
            .byte(1)
            .u16(7)
            .byte(1)
            .raw(&content)
            .0,
    );
    add("snapshot", "meta", tagged(2, &snapshot_meta()));
}

fn record_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let state = AppliedState {
        last: Some(log_id(3, 1, 12)),
        membership: membership(),
        removed: BTreeSet::from([4]),
    };
    add(
        "state_records",
        "applied",
        [&[0u8][..], &state.encode()].concat(),
    );
    let old = postcard::to_allocvec(&(state.last, state.membership.clone())).expect("encodes");
    add("state_records", "applied-v1", [&[0u8][..], &old].concat());
    let record = FsmRecord {
        id: 3,
        module_id: ModuleId([1; 32]),
        limits: FsmLimits::default(),
        fsm_version: 2,
        created_index: 17,
    };
    add("state_records", "fsm", tagged(1, &record));
    let old =
        postcard::to_allocvec(&(3u64, ModuleId([1; 32]), 900u64, 16u32, 4096u32, 2u32, 17u64))
            .expect("encodes");
    add("state_records", "fsm-v1", [&[1u8][..], &old].concat());
}

/// JSON bodies as docs/api.md and the README send them, by example and entry point
/// (selector `example + 3 * entry`, as `fuzz_targets/fsm_codec.rs` reads it).
fn codec_seeds(add: &mut impl FnMut(&'static str, &str, Vec<u8>)) {
    let h1 = format!("0x{}", "ab".repeat(32));
    let h0 = format!("0x{}", "00".repeat(32));
    let volume = r#"{"footprint":{"Circle":{"center":{"lat":47.0,"lng":8.0},"radius_m":500}},"altitude_lo_m":0,"altitude_hi_m":120,"start_ms":1700000000000,"end_ms":1700003600000}"#;
    let bodies: Vec<(&str, u8, String)> = vec![
        (
            "sequencer-commit",
            0,
            format!(
                r#"{{"Commit":{{"number":1,"hash":"{h1}","parent_hash":"{h0}","payload":"0x01"}}}}"#
            ),
        ),
        ("sequencer-latest", 3, r#""Latest""#.into()),
        ("sequencer-committed", 6, r#"{"number":1,"changed":true}"#.into()),
        (
            "manifest-register",
            1,
            r#"{"RegisterFile":{"path":"cpu/0001.parquet","database":"metrics","measurement":"cpu","partition_time_ms":0,"size_bytes":4096,"checksum":"c1","tier":"Hot"}}"#.into(),
        ),
        (
            "manifest-delete",
            1,
            r#"{"DeleteFile":{"path":"cpu/0000.parquet"}}"#.into(),
        ),
        ("manifest-totals", 4, r#""Totals""#.into()),
        (
            "manifest-applied",
            7,
            r#"{"registered":1,"deleted":0,"unchanged":0,"lsn":9}"#.into(),
        ),
        (
            "airspace-intent",
            2,
            format!(
                r#"{{"PutIntent":{{"id":"flight-1","owner":"uss1","volumes":[{volume}],"state":"Accepted","base_url":"https://uss1.example","key":[],"ovn":null}}}}"#
            ),
        ),
        (
            "airspace-search",
            5,
            format!(r#"{{"Search":{{"kinds":[],"area":{volume}}}}}"#),
        ),
    ];
    for (name, selector, json) in bodies {
        let mut input = vec![selector];
        // Outputs are postcard: encode the JSON with the native types, as the FSM would.
        let (_, examples) = crate::codec::examples();
        let example = &examples[usize::from(selector) % examples.len()];
        let entry = crate::codec::ENTRIES[usize::from(selector) / examples.len()];
        match example.output_from_json(entry, json.as_bytes()) {
            Some(postcard) => input.extend(postcard),
            None => input.extend(json.as_bytes()),
        }
        add("fsm_codec", name, input);
    }
}
