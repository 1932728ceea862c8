//! Pipelined calls (many calls on one stream) against real `wraft serve` processes: answers
//! reach their own calls; a call the node cannot read ends its pipeline, and nothing sent
//! after it applies; a client that reads no answers is held to its calls in flight, and
//! every call the node read is answered.

use std::time::Duration;

use futures_util::future::join_all;
use wraft_api::{
    ApiCall, ApiCallRef, ApiError, ApiRequest, ApiResponse, ApiResult, Consistency, Payload,
    PipelinedReply,
};
use wraft_client::Client;
use wraft_core::frame;
use wraft_transport_quic::pipeline::{Pipeline, PipelineError};

use crate::bounds::{Trio, create_probe, put, raw_connection, writes_commit};
use crate::common::name;
use crate::processes::runtime;

/// The probe's value under `key`, read from the leader through `pipeline`.
fn get(key: &[u8]) -> ApiRequest {
    let q = probe::Query::Get { key: key.to_vec() };
    ApiRequest::Query {
        fsm: name("r"),
        query: Payload::Postcard(postcard::to_allocvec(&q).expect("query")),
        consistency: Consistency::Linearizable,
    }
}

fn value(answer: &Result<ApiResult, PipelineError>) -> probe::Output {
    match answer {
        Ok(Ok(ApiResponse::Output(Payload::Postcard(bytes)))) => {
            postcard::from_bytes(bytes).expect("output")
        }
        other => panic!("expected an output, got {other:?}"),
    }
}

#[test]
fn a_call_over_its_limit_ends_its_pipeline_and_nothing_sent_after_it_applies() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&["--max-entry-bytes", "1048576"]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        let leader = trio.leader().await;
        let conn = raw_connection(&trio, "writer", &trio.addrs[leader as usize - 1]).await;
        let pipeline = Pipeline::open(&conn).await.expect("open");

        // 64 puts in flight on one stream, then 64 gets: each answer is its own call's.
        let puts: Vec<_> = (0..64u8).map(|i| put(&[b'k', i], vec![i; 64])).collect();
        let calls = puts.iter().map(|p| pipeline.call(ApiCallRef::Direct(p)));
        for (i, answer) in join_all(calls).await.iter().enumerate() {
            assert!(matches!(answer, Ok(Ok(_))), "put {i}: {answer:?}");
        }
        let gets: Vec<_> = (0..64u8).map(|i| get(&[b'k', i])).collect();
        let calls = gets.iter().map(|g| pipeline.call(ApiCallRef::Direct(g)));
        for (i, answer) in join_all(calls).await.iter().enumerate() {
            assert_eq!(
                value(answer),
                probe::Output::Bytes(vec![i as u8; 64]),
                "get {i}"
            );
        }

        // A put, one over the writer's limit, and one after it, queued in this order.
        let before = put(b"before", vec![1; 64]);
        let over = put(b"over", vec![2; 2 << 20]);
        let after = put(b"after", vec![3; 64]);
        let (before_answer, over_answer, after_answer) = tokio::join!(
            pipeline.call(ApiCallRef::Direct(&before)),
            pipeline.call(ApiCallRef::Direct(&over)),
            pipeline.call(ApiCallRef::Direct(&after)),
        );
        assert!(matches!(before_answer, Ok(Ok(_))), "{before_answer:?}");
        match over_answer {
            Ok(Err(ApiError::BadRequest(why))) => {
                assert!(why.contains("exceeds the limit"), "{why}");
                assert!(why.contains("--max-entry-bytes"), "{why}");
            }
            other => panic!("expected the size refusal, got {other:?}"),
        }
        assert!(
            matches!(after_answer, Err(PipelineError::NotSent(_))),
            "{after_answer:?}"
        );
        assert!(
            !pipeline.is_open(),
            "the refusal, marked last, ended the pipeline"
        );

        // The node read nothing after the refusal; a new pipeline on the same connection
        // serves, and finds the call before the refusal applied and the one after it not.
        let again = Pipeline::open(&conn).await.expect("a second pipeline");
        let [before_value, after_value] = [b"before".as_slice(), b"after"].map(get);
        assert_eq!(
            value(&again.call(ApiCallRef::Direct(&before_value)).await),
            probe::Output::Bytes(vec![1; 64])
        );
        assert_eq!(
            value(&again.call(ApiCallRef::Direct(&after_value)).await),
            probe::Output::None,
            "a call sent after the refusal was applied"
        );
        writes_commit(&trio, "after-pipelines").await;
        trio.assert_all_running();
        trio.stop();
    });
}

/// A client that sends calls and reads none of their answers: the node stops reading its
/// calls once the answers it holds fill the client's window and its calls in flight
/// (`streams_per_connection`), instead of reading on and holding every answer in memory;
/// other clients are served meanwhile; once the client reads, every call is answered.
#[test]
fn a_client_that_reads_no_answers_is_held_to_its_calls_in_flight() {
    let _heavy = crate::common::heavy();
    runtime().block_on(async {
        let mut trio = Trio::start(&[]);
        let admin = trio.client("admin", &[1, 2, 3]);
        create_probe(&admin, "r").await;
        // A 4 KiB value under a 400-byte key: each call is ~430 bytes, each answer ~4 KiB.
        let key = vec![b'k'; 400];
        let stored = vec![9u8; 4096];
        trio.client("writer", &[1, 2, 3])
            .request(put(&key, stored.clone()))
            .await
            .expect("put");
        let leader = trio.leader().await;
        let conn = raw_connection(&trio, "reader", &trio.addrs[leader as usize - 1]).await;
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        // The opening, then 8000 reads, ~3.4 MB: with every call read, QUIC's stream window
        // (1.25 MB) would let them all through.
        const CALLS: usize = 8000;
        let mut bytes = Vec::new();
        frame::encode_frame(&ApiCallRef::Pipeline, &mut bytes);
        let mut ends = Vec::new();
        let mut read = get(&key);
        if let ApiRequest::Query { consistency, .. } = &mut read {
            *consistency = Consistency::Stale;
        }
        for _ in 0..CALLS {
            frame::encode_frame(&ApiCallRef::Direct(&read), &mut bytes);
            ends.push(bytes.len());
        }
        // Writes as far as the node lets: cancelling `write` loses no bytes (it wrote some
        // or none), so the rest can follow later.
        let mut written = 0;
        while written < bytes.len() {
            match tokio::time::timeout(Duration::from_secs(3), send.write(&bytes[written..])).await
            {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!("the stream broke: {e}"),
                Err(_) => break,
            }
        }
        let sent = ends.iter().filter(|end| **end <= written).count();
        eprintln!("{sent} of {CALLS} calls sent whole before the node stopped reading");
        // What gets through: the calls in flight (64), the answers that fit the client's
        // window (~300 of 4 KiB) and the calls that fit the node's (~2 900 of 430 bytes).
        assert!(
            sent < CALLS / 2,
            "the node read on for a client that reads no answers: {sent} calls"
        );
        // Others are served meanwhile.
        writes_commit(&trio, "while-held").await;

        // The client reads: every call is answered, once, with the value.
        let writing = async {
            while written < bytes.len() {
                written += send.write(&bytes[written..]).await.expect("the rest");
            }
            send.finish().expect("finish");
        };
        let reading = async {
            let accepted = wraft_transport_quic::wire::recv::<ApiResult>(&mut recv, 1 << 20).await;
            assert!(matches!(accepted, Ok(Ok(_))), "{accepted:?}");
            let mut answered = vec![false; CALLS];
            for _ in 0..CALLS {
                let reply = tokio::time::timeout(
                    Duration::from_secs(60),
                    wraft_transport_quic::wire::recv::<PipelinedReply>(&mut recv, 1 << 20),
                )
                .await
                .expect("an answer within 60 s")
                .expect("an answer");
                let call = reply.call as usize;
                assert!(!answered[call], "call {call} answered twice");
                answered[call] = true;
                assert_eq!(
                    value(&Ok(reply.result)),
                    probe::Output::Bytes(stored.clone()),
                    "call {call}"
                );
            }
        };
        tokio::join!(writing, reading);
        // Every call read is answered, and then the node finishes its side.
        let end = wraft_transport_quic::wire::recv::<PipelinedReply>(&mut recv, 1 << 20).await;
        assert!(
            matches!(
                end,
                Err(wraft_transport_quic::wire::WireError::Read(
                    quinn::ReadExactError::FinishedEarly(0)
                ))
            ),
            "{end:?}"
        );
        trio.assert_all_running();
        trio.stop();
    });
}

/// A stand-in for a node on 127.0.0.1 that reads the opening of the first stream and answers
/// it with `answer`'s bytes as a frame, then reads nothing more (as a node older than
/// pipelines does with an opening it cannot decode), or with `None` never answers (as a node
/// whose call slots are all held); its address and a client identity it accepts.
async fn stand_in_node(
    answer: Option<Vec<u8>>,
) -> (
    quinn::Endpoint,
    std::net::SocketAddr,
    wraft_transport_quic::TlsIdentity,
) {
    use wraft_api::Role;
    use wraft_transport_quic::TlsIdentity;
    use wraft_transport_quic::pki::DevCa;
    let ca = DevCa::generate("pipeline-test").expect("ca");
    let pem = |k: wraft_transport_quic::pki::CertifiedKey| {
        TlsIdentity::from_pem(&ca.cert_pem, &k.cert_pem, &k.key_pem).expect("identity")
    };
    let node = pem(ca.node(1).expect("node cert"));
    let client = pem(ca.client("test", Role::Writer).expect("client cert"));
    let server = quinn::Endpoint::server(
        wraft_transport_quic::server_config(&node).expect("server config"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let addr = server.local_addr().expect("addr");
    let accepting = server.clone();
    tokio::spawn(async move {
        let conn = accepting
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let _opening: ApiCall = wraft_transport_quic::wire::recv(&mut recv, 1 << 20)
            .await
            .expect("opening");
        if let Some(answer) = answer {
            let mut bytes = (answer.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(&answer).to_le_bytes());
            bytes.extend_from_slice(&answer);
            send.write_all(&bytes).await.expect("answer");
            let _ = send.finish();
        }
        // The stream stays open, unanswered or finished, until the client goes.
        conn.closed().await;
        drop((send, recv));
    });
    (server, addr, client)
}

/// [`stand_in_node`] answering `answer`, and a client connection to it.
async fn one_answer_node(answer: Vec<u8>) -> (quinn::Endpoint, quinn::Connection) {
    let (server, addr, client) = stand_in_node(Some(answer)).await;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    ep.set_default_client_config(
        wraft_transport_quic::client_config(&client, wraft_transport_quic::ALPN_CLIENT)
            .expect("client config"),
    );
    let conn = ep
        .connect(addr, wraft_transport_quic::pki::CLUSTER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    (server, conn)
}

/// A node that takes the connection but never accepts its pipeline is given up after the
/// attempt's limit: the request fails within the client's patience instead of waiting for
/// an acceptance that never comes (and holding the client's connection lock meanwhile).
#[test]
fn a_pipeline_the_node_never_accepts_is_given_up_after_the_attempts_limit() {
    runtime().block_on(async {
        let (_node, addr, identity) = stand_in_node(None).await;
        let client = Client::new(vec![addr.to_string()], &identity)
            .expect("client")
            .with_patience(Duration::from_secs(2))
            .with_attempt_timeout(Duration::from_millis(300));
        let answer = tokio::time::timeout(Duration::from_secs(20), client.status())
            .await
            .expect("the client gives up by itself within its patience");
        let err = answer.expect_err("nothing answered");
        assert!(
            err.to_string().contains("did not accept a pipeline within"),
            "{err}"
        );
    });
}

/// Only an old node's refusal (`BadRequest`) makes the client fall back to a stream per
/// call; an opening answer it cannot decode (a newer node's, say) is not taken for one,
/// since the calls after it might have run.
#[test]
fn only_a_refusal_of_the_opening_is_taken_for_a_node_without_pipelines() {
    runtime().block_on(async {
        let refusal: ApiResult = Err(ApiError::BadRequest("unknown variant".into()));
        let (_node, conn) = one_answer_node(postcard::to_allocvec(&refusal).expect("encode")).await;
        match Pipeline::open(&conn).await {
            Err(PipelineError::Refused(why)) => assert!(why.contains("unknown variant"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Variant 200 of `ApiResponse`: no build has it.
        let (_node, conn) = one_answer_node(vec![0, 200, 1]).await;
        match Pipeline::open(&conn).await {
            Err(PipelineError::NotSent(_)) => {}
            other => panic!("expected an undecodable answer, got {other:?}"),
        }
    });
}
