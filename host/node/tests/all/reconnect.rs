//! Connections across a node's restart. A node killed with SIGKILL and started again on the
//! same address resets the connections of its previous run (its QUIC stateless-reset key is
//! derived from its TLS key), so clients and peers dial again at their next packet instead of
//! waiting out the idle timeout on a connection nobody serves.

use std::time::{Duration, Instant};

use wraft_api::{ApiRequest, ApiResponse};
use wraft_transport_quic::api::{self};
use wraft_transport_quic::pki::CLUSTER_NAME;
use wraft_transport_quic::{ALPN_CLIENT, IDLE_TIMEOUT, TlsIdentity, client_config, dial};

use crate::cli::free_ports;
use crate::processes::{certs_for, node_processes};

/// A new connection to `addr` that answered `Status`, within 30 s.
async fn connect_when_serving(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: &str,
) -> quinn::Connection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(conn) = dial(endpoint, config, addr, CLUSTER_NAME, Duration::from_secs(2)).await
            && let Ok(Ok(Ok(ApiResponse::Status(_)))) = tokio::time::timeout(
                Duration::from_secs(2),
                api::call(&conn, &ApiRequest::Status),
            )
            .await
        {
            return conn;
        }
        assert!(Instant::now() < deadline, "node at {addr} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_the_connections_of_its_previous_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = certs_for(dir.path(), &[1]).expect("certs");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports()));
    let mut nodes = node_processes(dir.path(), &certs, &[1], &[listen], &format!("1={listen}"));
    let node = &mut nodes[0];
    node.start().expect("start");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).expect("cert file");
    let identity = TlsIdentity::from_pem(&read("ca.pem"), &read("admin.pem"), &read("admin.key"))
        .expect("identity");
    let config = client_config(&identity, ALPN_CLIENT).expect("config");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    let addr = listen.to_string();
    let old = connect_when_serving(&endpoint, &config, &addr).await;

    node.kill();
    node.start().expect("restart");
    let fresh = connect_when_serving(&endpoint, &config, &addr).await;
    assert!(fresh.close_reason().is_none());

    // The old connection's next packet (a request, or a keep-alive before it) reaches the
    // new run, which answers with a stateless reset. Without one it would time out.
    let call = tokio::time::timeout(
        IDLE_TIMEOUT + Duration::from_secs(10),
        api::call(&old, &ApiRequest::Status),
    )
    .await;
    assert!(
        matches!(call, Ok(Err(_))),
        "a request on the old connection must fail, got {call:?}"
    );
    assert_eq!(
        old.close_reason(),
        Some(quinn::ConnectionError::Reset),
        "{}",
        node.log()
    );
    assert!(node.stop(), "clean shutdown: {}", node.log());
}
