//! The HTTP port of real nodes: every curl example of docs/api.md, metrics that move, and
//! refusals that leave the node serving.

use std::net::SocketAddr;

use wraft_api::Role;
use wraft_core::FsmLimits;

use crate::cluster::Cluster;
use crate::common::{deploy_and_create, name};

const ADMIN: &str = "admin-token-0123456789";
pub(crate) const WRITER: &str = "writer-token-0123456789";
pub(crate) const READER: &str = "reader-token-0123456789";

fn tokens() -> Vec<(String, Role)> {
    vec![
        (ADMIN.into(), Role::Admin),
        (WRITER.into(), Role::Writer),
        (READER.into(), Role::Reader),
    ]
}

/// An HTTP port as the tests reach it: plainly, or over TLS trusting one CA.
#[derive(Clone)]
pub(crate) struct Port {
    pub addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Port {
    pub(crate) fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// TLS, trusting the certificates in `ca_pem` only (none: trusting nothing).
    pub(crate) fn tls(addr: SocketAddr, ca_pem: &str) -> Self {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("a PEM certificate")).expect("a CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            addr,
            tls: Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
                config,
            ))),
        }
    }

    /// A TLS connection to the port (which must be a TLS one).
    pub(crate) async fn connect_tls(
        &self,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self.tls.as_ref().expect("a TLS port");
        tls.connect(name, stream).await.expect("TLS handshake")
    }

    /// One exchange that must be answered: (status, body).
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> (u16, String) {
        self.exchange(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One HTTP/1.1 exchange through hyper's client: (status, body), or why there was no
    /// answer (a refused TLS handshake, say). `headers` are `Name: value`.
    pub(crate) async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<(u16, String), String> {
        let (status, answer) = self.exchange_full(method, path, headers, body).await?;
        Ok((status, answer.body))
    }

    /// [`Port::exchange`], with the answer's content type.
    pub(crate) async fn exchange_full(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<(u16, Answer), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => exchange(stream, self.addr, method, path, headers, body).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(stream, self.addr, method, path, headers, body).await
            }
        }
    }
}

/// One plain HTTP/1.1 exchange: (status, body). `headers` are `Name: value`.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> (u16, String) {
    Port::plain(addr)
        .exchange(method, path, headers, body)
        .await
        .expect("an answer")
}

/// An answer's body and content type.
pub(crate) struct Answer {
    pub content_type: String,
    pub body: String,
    /// The `X-Request-Id` the node answered with.
    pub request_id: Option<String>,
}

async fn exchange<S>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> Result<(u16, Answer), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    for h in headers {
        let (name, value) = h.split_once(':').expect("a header is Name: value");
        request = request.header(name.trim(), value.trim());
    }
    let request = request
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no response: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), usize::MAX)
        .await
        .map_err(|e| format!("the body: {e}"))?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok((
        status,
        Answer {
            content_type,
            body,
            request_id,
        },
    ))
}

/// Splits a shell command line as a POSIX shell would (the `shell-words` crate), after
/// expanding `$VAR`s (the docs use them only outside single quotes).
fn shell_words(line: &str, vars: &[(&str, String)]) -> Vec<String> {
    let expanded = vars.iter().fold(line.to_string(), |acc, (k, v)| {
        acc.replace(&format!("${k}"), v)
    });
    shell_words::split(&expanded).expect("a shell command line")
}

/// Runs one `curl` command line as the test's HTTP client; returns (status, body).
async fn curl(line: &str, vars: &[(&str, String)]) -> (u16, String) {
    let words = shell_words(line, vars);
    let (mut method, mut headers, mut data, mut url, mut ca) = (None, Vec::new(), None, None, None);
    let mut it = words.into_iter().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "-s" => {}
            "-X" => method = it.next(),
            "-H" => headers.push(it.next().expect("header")),
            "-d" => data = it.next(),
            "--cacert" => {
                ca = Some(std::fs::read_to_string(it.next().expect("a file")).expect("CA"))
            }
            other if other.starts_with("https://") => url = Some(other.to_string()),
            other => panic!("the doc uses a curl option or URL the test does not know: {other}"),
        }
    }
    let url = url.expect("an https:// URL");
    let rest = url.trim_start_matches("https://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host.parse().expect("host:port");
    let method = method.unwrap_or_else(|| if data.is_some() { "POST" } else { "GET" }.into());
    // Without --cacert, curl would check the node against the system's CAs: none of them
    // signed it.
    Port::tls(addr, ca.as_deref().unwrap_or(""))
        .exchange(&method, path, &headers, data.unwrap_or_default().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

pub(crate) async fn cluster_with_sequencer() -> Cluster {
    let c = Cluster::start_http(3, tokens()).await;
    let leader = c.leader().await.id;
    let admin = c.client(Role::Admin, &[leader]);
    let latest = wraft_fsm_artifacts::LATEST_PAYLOAD;
    deploy_and_create(&admin, name("sequencer"), latest, FsmLimits::default()).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_curl_example_in_docs_api_md_runs() {
    let mut c = cluster_with_sequencer().await;
    // Through a follower, so forwarding is part of what the examples exercise.
    let leader = c.leader().await.id;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let node = c.node(follower).http_addr.expect("http port");
    let ca = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca.path(), &c.ca.cert_pem).expect("CA file");
    // The stale-read example needs the follower to have applied the FSM's creation.
    c.converged_hashes_of("sequencer").await;
    let vars = [
        ("NODE", format!("https://{node}")),
        ("CA", ca.path().display().to_string()),
        ("ADMIN", ADMIN.to_string()),
        ("WRITER", WRITER.to_string()),
        ("READER", READER.to_string()),
    ];
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
        .expect("docs/api.md");
    let lines: Vec<&str> = doc.lines().collect();
    let mut ran = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("curl ") {
            continue;
        }
        // `# -> STATUS`, or `# -> STATUS BODY` when the answer's body is part of the point.
        let (expected, expected_body): (u16, Option<&str>) = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("# -> "))
            .and_then(|s| {
                let (status, body) = s.trim().split_once(' ').unwrap_or((s.trim(), ""));
                Some((status.parse().ok()?, Some(body).filter(|b| !b.is_empty())))
            })
            .unwrap_or_else(|| panic!("docs/api.md line {}: no `# -> STATUS` after it", i + 1));
        let (status, body) = curl(line, &vars).await;
        assert_eq!(
            status,
            expected,
            "docs/api.md line {}: {line}\n{body}",
            i + 1
        );
        if let Some(expected_body) = expected_body {
            assert_eq!(body, expected_body, "docs/api.md line {}: {line}", i + 1);
        }
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
            assert!(v["error"].is_string() && v["message"].is_string(), "{body}");
        }
        ran += 1;
    }
    assert!(ran >= 15, "only {ran} examples found");
    // What the examples wrote is there, on every node.
    let hashes = c.converged_hashes_of("sequencer").await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    c.stop_all().await;
}

fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_and_move_and_refusals_leave_the_node_serving() {
    let mut c = cluster_with_sequencer().await;
    let leader = c.leader().await.id;
    let node = c.http_port(leader);
    let (_, before) = node.request("GET", "/metrics", &[], b"").await;
    let auth = |t: &str| vec![format!("Authorization: Bearer {t}")];
    for n in 1..=5u8 {
        let cmd = format!(
            r#"{{"Commit":{{"number":{n},"hash":"0x{}","parent_hash":"0x{}","payload":"0x01"}}}}"#,
            hex::encode([n; 32]),
            hex::encode([n - 1; 32])
        );
        let (status, body) = node
            .request(
                "POST",
                "/v1/fsms/sequencer/apply",
                &auth(WRITER),
                cmd.as_bytes(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, after) = node.request("GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    for name in [
        "wraft_commit_marshal_duration_seconds_count",
        "wraft_commit_raft_apply_duration_seconds_count",
        "wraft_commit_payload_size_bytes_count",
        "wraft_fsm_apply_duration_seconds_count",
        "wraft_raft_log_store_duration_seconds_count",
        "wraft_fsm_fuel_used_count",
    ] {
        assert!(
            sample(&after, name) >= sample(&before, name) + 5.0,
            "{name} did not move: before {} after {}",
            sample(&before, name),
            sample(&after, name)
        );
    }
    for gauge in [
        "wraft_raft_term{",
        "wraft_raft_committed_index{",
        "wraft_raft_applied_index{",
        "wraft_raft_leader_id{",
        "wraft_build_info{",
    ] {
        assert!(sample(&after, gauge) >= 1.0, "{gauge} missing:\n{after}");
    }
    // Nothing is in flight between the writes above and this scrape.
    assert!(
        after.contains(&format!(
            "wraft_proposal_queue_depth{{node=\"{leader}\"}} 0"
        )),
        "{after}"
    );
    // The scrape-time gauges name the node; the leader reports each follower's lag and
    // both LMDB envs' file sizes.
    assert!(
        after.contains(&format!("wraft_raft_term{{node=\"{leader}\"}}")),
        "{after}"
    );
    let followers = after
        .lines()
        .filter(|l| l.starts_with("wraft_raft_follower_lag_entries{"))
        .count();
    assert_eq!(followers, 2, "{after}");
    for env in ["raft", "state"] {
        let size = after
            .lines()
            .filter(|l| {
                l.starts_with("wraft_lmdb_file_size_bytes{")
                    && l.contains(&format!("env=\"{env}\""))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>();
        assert!(size > 0.0, "no size for the {env} env:\n{after}");
        let reclaimable = after
            .lines()
            .find(|l| {
                l.starts_with("wraft_lmdb_reclaimable_bytes{")
                    && l.contains(&format!("env=\"{env}\""))
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no reclaimable bytes for the {env} env:\n{after}"));
        assert!(reclaimable < size, "{env}: {reclaimable} of {size} bytes");
    }
    // Every family the server exposes is a declared (and so documented) one, and has the prefix.
    for line in after.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).expect("a family name");
        assert!(
            wraft_host::metrics::names::ALL.contains(&family),
            "{family} is served but not declared in metrics::names (nor documented)"
        );
    }
    // Where the leader's entries spent their time, per stage (openraft's log stages).
    let stage_p50 = |stage: &str| -> f64 {
        after
            .lines()
            .filter(|l| l.starts_with("wraft_raft_log_stage_seconds{"))
            .filter(|l| l.contains(&format!("stage=\"{stage}\"")) && l.contains("quantile=\"0.5\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    assert!(
        stage_p50("proposed_to_applied") > 0.0 && stage_p50("submitted_to_persisted") > 0.0,
        "no log stage latencies:\n{after}"
    );
    // Refusals: oversized body, unknown token, reader writing; each counted or explained.
    // The oversized body is refused before it is read, while the client is still sending
    // it: the refusal must reach the client every time (the node lingers before closing).
    let big = vec![b' '; (1 << 20) + 1];
    for _ in 0..20 {
        let (status, body) = node
            .request("POST", "/v1/fsms/sequencer/apply", &auth(WRITER), &big)
            .await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("too_large"), "{body}");
    }
    let rejected = sample(&after, "wraft_proposals_rejected_total");
    let (status, _) = node
        .request("POST", "/v1/fsms/sequencer/apply", &auth(READER), b"{}")
        .await;
    assert_eq!(status, 403);
    let (_, later) = node.request("GET", "/metrics", &[], b"").await;
    assert!(
        sample(&later, "wraft_proposals_rejected_total") > rejected,
        "{later}"
    );
    let (status, body) = node.request("GET", "/readyz", &[], b"").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    c.stop_all().await;
}

/// The HTTP port speaks TLS: a client that does not trust the cluster CA is refused in the
/// handshake, a plain-HTTP client gets no answer, and neither leaves the port unable to
/// serve a client that trusts the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_is_tls_and_refuses_clients_that_do_not_trust_the_cluster_ca() {
    let mut c = Cluster::start_http(1, tokens()).await;
    let addr = c.node(1).http_addr.expect("http port");
    let trusted = c.http_port(1);
    let auth = [format!("Authorization: Bearer {READER}")];
    let (status, body) = trusted.request("GET", "/v1/status", &auth, b"").await;
    assert_eq!(status, 200, "{body}");
    let other = wraft_transport_quic::pki::DevCa::generate("another CA").expect("CA");
    for (who, port) in [
        (
            "a client trusting another CA",
            Port::tls(addr, &other.cert_pem),
        ),
        ("a client trusting no CA", Port::tls(addr, "")),
    ] {
        let refused = port.exchange("GET", "/v1/status", &auth, b"").await;
        let e = refused.expect_err(who);
        assert!(e.starts_with("TLS handshake"), "{who}: {e}");
    }
    let plain = Port::plain(addr)
        .exchange("GET", "/healthz", &[], b"")
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let (status, _) = trusted.request("GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    c.stop_all().await;
}

/// A client that sends requests and never reads the answers cannot hold its connection (a
/// descriptor, a task, a connection slot): once a write to it has made no progress for
/// `WRITE_STALL`, the node closes it. Checked by what the client can still read: only what
/// the sockets buffered before the close, far less than the answers it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Cluster::start_http(1, tokens()).await;
    let port = c.http_port(1);
    let (_, script) = port.request("GET", "/console.js", &[], b"").await;
    let requests = 4000;
    let asked = requests * script.len();
    let stream = port.connect_tls().await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let request = b"GET /console.js HTTP/1.1\r\nhost: wraft\r\n\r\n".repeat(requests);
    let sender = tokio::spawn(async move {
        // Stops when the node closes the connection, or once everything is sent.
        let _ = writer.write_all(&request).await;
        writer
    });
    tokio::time::sleep(wraft_host::http::WRITE_STALL + std::time::Duration::from_secs(5)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the connection was still open after {got} bytes"
    );
    assert!(
        got < asked / 2,
        "read {got} of {asked} bytes asked for: the node kept writing to a client that did not read"
    );
    let _ = sender.await;
    // The node serves others all along.
    let (status, _) = port.request("GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    c.stop_all().await;
}

/// A request can be followed through a node's logs: its span (request id, kind, FSM, role)
/// is on the node's JSON log line for it, under the caller's `X-Request-Id`, which the node
/// echoes; a request without one gets an id of the node's, echoed too; a malformed one is
/// refused with the rule.
#[test]
fn a_request_is_logged_under_its_request_id_with_its_fsm_and_role() {
    use crate::processes::{create_register, runtime, stop_cleanly, three_nodes_serving_https};
    let dir = tempfile::tempdir().expect("tmp");
    let (certs, addrs, http_base, mut nodes) = three_nodes_serving_https(
        dir.path(),
        &[format!("writer:{WRITER}")],
        &["--log-format", "json"],
        Some("warn,wraft_host::api=debug"),
    );
    let ca = std::fs::read_to_string(certs.join("ca.pem")).expect("CA");
    runtime().block_on(async {
        let admin = wraft_client::Client::new(addrs, &crate::processes::identity(&certs, "admin"))
            .expect("client")
            .with_patience(std::time::Duration::from_secs(30));
        create_register(&admin).await.expect("an FSM");
        let leader = admin
            .status()
            .await
            .expect("status")
            .leader
            .expect("a leader");
        let port = Port::tls(([127, 0, 0, 1], http_base + leader as u16 - 1).into(), &ca);
        let command = serde_json::to_string(&probe::Command::Put {
            key: vec![7],
            value: vec![70],
        })
        .expect("JSON");
        let path = format!("/v1/fsms/{}/apply", crate::processes::register());
        let traced = [
            format!("Authorization: Bearer {WRITER}"),
            "X-Request-Id: trace-me.1".to_string(),
        ];
        let (status, answer) = port
            .exchange_full("POST", &path, &traced, command.as_bytes())
            .await
            .expect("an answer");
        assert_eq!(status, 200, "{}", answer.body);
        assert_eq!(answer.request_id.as_deref(), Some("trace-me.1"));
        let auth = [format!("Authorization: Bearer {WRITER}")];
        let (_, answer) = port
            .exchange_full("POST", &path, &auth, command.as_bytes())
            .await
            .expect("an answer");
        let generated = answer.request_id.expect("an id of the node's");
        assert!(generated.starts_with(&format!("n{leader}-")), "{generated}");
        let bad = [
            auth[0].clone(),
            "X-Request-Id: no spaces please".to_string(),
        ];
        let (status, answer) = port
            .exchange_full("POST", &path, &bad, command.as_bytes())
            .await
            .expect("an answer");
        assert_eq!(status, 400, "{}", answer.body);
        assert!(answer.body.contains("X-Request-Id"), "{}", answer.body);
        // The node's own form is the node's: a caller cannot pass a request off as one.
        let posing = [auth[0].clone(), format!("X-Request-Id: {generated}")];
        let (status, answer) = port
            .exchange_full("POST", &path, &posing, command.as_bytes())
            .await
            .expect("an answer");
        assert_eq!(status, 400, "{}", answer.body);
        // A refusal before the request is served (401 here) still carries its id.
        let unauthorized = ["X-Request-Id: trace-me.2".to_string()];
        let (status, answer) = port
            .exchange_full("POST", &path, &unauthorized, command.as_bytes())
            .await
            .expect("an answer");
        assert_eq!(status, 401, "{}", answer.body);
        assert_eq!(answer.request_id.as_deref(), Some("trace-me.2"));
        let node = &nodes[leader as usize - 1];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let line = loop {
            let log = node.log();
            let found = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["span"]["id"] == "trace-me.1");
            if let Some(v) = found {
                break v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line of the request:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_eq!(line["span"]["name"], "request", "{line}");
        assert_eq!(line["span"]["kind"], "apply", "{line}");
        assert_eq!(
            line["span"]["fsm"],
            crate::processes::register().as_str(),
            "{line}"
        );
        assert_eq!(line["span"]["role"], "writer", "{line}");
        assert_eq!(line["fields"]["outcome"], "ok", "{line}");
    });
    stop_cleanly(&mut nodes);
}
