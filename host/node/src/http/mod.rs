//! The HTTP port of a node: `/healthz`, `/readyz`, `/metrics` (Prometheus), and a JSON API
//! over the same requests the QUIC client API serves, authenticated by bearer tokens bound
//! to roles, and the web console at `/`. Every error is a JSON body `{"error": KIND,
//! "message": TEXT}`. docs/api.md lists the endpoints; its curl examples are run by the
//! tests. With [`HttpConfig::tls`] every connection is TLS first.

mod console;
mod tls;
mod tokens;

pub use tls::{TlsSetupError, server_config};
pub use tokens::{parse_token, read_token_file};

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::task::JoinHandle;
use wraft_api::Role;
use wraft_api::{ApiError, ApiRequest, ApiResponse, Consistency, Once, Payload};
use wraft_core::{ApplyError, FsmName};

use crate::api::NodeApi;

/// Largest request body by default: the JSON of the largest entry a node admits by default
/// (hex doubles the bytes).
pub const DEFAULT_MAX_BODY: usize = 2 * crate::limits::DEFAULT_MAX_ENTRY_BYTES + (1 << 20);
/// Connections the port holds open at once by default; more are closed as they arrive.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers (also an idle keep-alive
/// connection's wait for its next request) before the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client may make no progress (it stopped reading) before the
/// connection is closed.
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// Time a request body may take beyond its size at [`BODY_BYTES_PER_SECOND`].
pub const BODY_GRACE: Duration = Duration::from_secs(10);
/// The slowest a request body may arrive, in bytes per second.
pub const BODY_BYTES_PER_SECOND: u64 = 1 << 20;
/// `/readyz` fails when the applied index trails the committed index by more than this.
pub const READY_LAG: u64 = 1000;

/// The HTTP port's settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Bearer tokens and the role each grants.
    pub tokens: Vec<(String, Role)>,
    /// Largest request body; larger ones get 413.
    pub max_body: usize,
    /// Connections held open at once; more are closed at once.
    pub max_connections: usize,
    /// TLS on every connection ([`server_config`]); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpConfig {
    /// Settings with the default limits.
    pub fn new(listen: SocketAddr, tokens: Vec<(String, Role)>) -> Self {
        Self {
            listen,
            tokens,
            max_body: DEFAULT_MAX_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls: None,
        }
    }
}

struct Http {
    api: Arc<NodeApi>,
    tokens: tokens::Tokens,
    max_body: usize,
}

/// Binds the port and serves until the task is aborted; returns the bound address.
pub async fn serve(
    config: HttpConfig,
    api: Arc<NodeApi>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let state = Arc::new(Http {
        api,
        tokens: tokens::Tokens::new(&config.tokens),
        max_body: config.max_body,
    });
    // The JSON API authenticates a request before it reads a byte of its body.
    let api_routes = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/fsms", get(fsms))
        .route("/v1/modules", get(modules))
        .route("/v1/fsms/{fsm}/apply", post(apply))
        .route("/v1/fsms/{fsm}/query", post(query))
        .route("/v1/batch", post(batch))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticated));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(console::routes())
        .merge(api_routes)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let tls = config.tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(accept_loop(listener, app, config.max_connections, tls));
    Ok((addr, task))
}

/// Accepts connections while fewer than `max` are open (closing the rest at once), each
/// served by hyper with a deadline on its TLS handshake and on its headers, and a limit on
/// how long a write may stall, so idle, trickling or unread clients cannot hold the node's
/// file descriptors. The connections are tasks of this loop's own: when the node stops (the
/// loop is aborted) they end with it, and with them their hold on the node's stores.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    max: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // MAX_PERMITS (2^61) is past any number of descriptors a process can hold: a larger
    // `max` means the same, no limit, and would make `Semaphore::new` panic.
    let open = Arc::new(tokio::sync::Semaphore::new(
        max.min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            crate::metrics::rejected("http_connections");
            tracing::debug!(%remote, "HTTP connection refused: {max} open (--http-max-connections)");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_STALL));
        let stream = Box::pin(stream);
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, app, remote).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, app, remote).await,
                    Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake took over {HEADER_TIMEOUT:?}")
                    }
                },
            }
            drop(slot);
        });
    }
}

/// How long a closed connection still reads (and drops) what its client sends.
const LINGER: Duration = Duration::from_secs(2);
/// How much a closed connection reads (and drops) at most.
const LINGER_BYTES: usize = 8 << 20;

/// Serves one connection's requests until it closes, or idles past [`HEADER_TIMEOUT`].
async fn serve_connection<S>(mut stream: S, app: Router, remote: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(&mut stream), service)
        .await;
    match served {
        // hyper closed its side after answering: the client may still be sending a body
        // that was refused before it was read.
        Ok(()) => linger(stream).await,
        // A timeout (an idle keep-alive connection, slow headers), a stalled write, a
        // malformed request: nothing of the client's is waiting for an answer. Say so
        // (FIN, or TLS close_notify) rather than leave the client to find out.
        Err(e) => {
            tracing::debug!(%remote, "HTTP connection ended: {e}");
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
    }
}

/// After a clean close, reads and drops what the client still sends, for [`LINGER`] and
/// [`LINGER_BYTES`] at most, before the connection is dropped. A request refused before its
/// body was read (401, 413) leaves the body on its way; closing at once would answer it
/// with a TCP reset, which can destroy the refusal in the client's buffers before it reads
/// it (a lingering close, as web servers do).
async fn linger<S: tokio::io::AsyncRead + Unpin>(mut stream: S) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Names the request (`X-Request-Id`, echoed on every answer, refusals included), checks
/// the bearer token (401 before any of the body is read), then reads the body within the
/// size limit (413) and a deadline that grows with its size (408).
async fn authenticated(
    State(http): State<Arc<Http>>,
    request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    let id = match request_id(request.headers())? {
        Some(id) => id,
        None => http.api.request_id(),
    };
    let mut response = match admitted(&http, request, &id).await {
        Ok(request) => next.run(request).await,
        Err(refused) => refused.into_response(),
    };
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// The request with its role, its id and its whole body, or why it is refused.
async fn admitted(http: &Http, request: Request, id: &str) -> Result<Request, HttpError> {
    let role = http.tokens.role(request.headers())?;
    let (parts, body) = request.into_parts();
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > http.max_body as u64) {
        return Err(too_large(http.max_body));
    }
    let expected = announced.map_or(http.max_body as u64, |n| n);
    let deadline = BODY_GRACE + Duration::from_secs(expected / BODY_BYTES_PER_SECOND);
    let bytes =
        match tokio::time::timeout(deadline, axum::body::to_bytes(body, http.max_body)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => return Err(too_large(http.max_body)),
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("the request body did not arrive within {deadline:?}"),
                ));
            }
        };
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(role);
    request.extensions_mut().insert(RequestId(id.to_string()));
    Ok(request)
}

fn too_large(max: usize) -> HttpError {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body exceeds this node's limit of {max} bytes (--http-max-body)"),
    )
}

/// A refusal: rendered as `{"error": kind, "message": message}` with `status`.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.kind, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, kind: &'static str, message: impl std::fmt::Display) -> HttpError {
    HttpError {
        status,
        kind,
        message: message.to_string(),
    }
}

fn api_error(e: ApiError) -> HttpError {
    let (status, kind) = match &e {
        ApiError::Failed(ApplyError::UnknownFsm(_)) => (StatusCode::NOT_FOUND, "unknown_fsm"),
        ApiError::Failed(ApplyError::IdempotencyKeyReused { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
        }
        ApiError::Failed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "failed"),
        ApiError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        ApiError::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
        ApiError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ApiError::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        ApiError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
    };
    error(status, kind, e)
}

fn body_text(bytes: Bytes) -> Result<String, HttpError> {
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "body is not UTF-8"))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", e))?;
    Ok(text)
}

fn fsm_name(s: &str) -> Result<FsmName, HttpError> {
    FsmName::new(s).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e))
}

/// The id a request is logged under (`X-Request-Id`): the caller's, or one of the node's.
#[derive(Clone)]
struct RequestId(String);

/// Whether `id` has the form of the node's own ids, `n<node>-<count>`.
fn is_node_request_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    id.strip_prefix('n')
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(node, count)| digits(node) && digits(count))
}

/// The caller's `X-Request-Id`, if it sent a usable one.
fn request_id(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(value) = headers.get("x-request-id") else {
        return Ok(None);
    };
    match value.to_str() {
        // The node's own form, `n<node>-<count>`, is kept for the node: a log line under
        // such an id is one the node named.
        Ok(id) if is_node_request_id(id) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "X-Request-Id {id:?} has the form n<node>-<count>, which nodes give the requests that come without one"
            ),
        )),
        Ok(id)
            if (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) =>
        {
            Ok(Some(id.to_string()))
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "X-Request-Id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'",
        )),
    }
}

async fn call(
    http: &Http,
    role: Role,
    RequestId(id): RequestId,
    request: ApiRequest,
) -> Result<Response, HttpError> {
    Ok(
        match http.api.serve_traced(Some(role), request, Some(id)).await {
            Ok(ApiResponse::Output(Payload::Json(json))) => json_text(json),
            Ok(ApiResponse::BatchOutputs(outs)) => {
                let items: Vec<String> = outs
                    .into_iter()
                    .map(|p| match p {
                        Payload::Json(j) => j,
                        Payload::Postcard(_) => "null".into(),
                    })
                    .collect();
                json_text(format!("[{}]", items.join(",")))
            }
            Ok(ApiResponse::Status(s)) => axum::Json(s).into_response(),
            Ok(ApiResponse::Fsms(f)) => axum::Json(f).into_response(),
            Ok(ApiResponse::Modules(m)) => axum::Json(m).into_response(),
            Ok(other) => {
                axum::Json(serde_json::json!({ "done": format!("{other:?}") })).into_response()
            }
            Err(e) => return Err(api_error(e)),
        },
    )
}

fn json_text(json: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// The request's `Idempotency-Key`, if it has one: the write is then applied at most once
/// per key, and a retry with the key gets the first answer.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<Once>, HttpError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Idempotency-Key is not ASCII",
        )
    })?;
    wraft_core::session::check_idempotency_key(key)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e))?;
    Ok(Some(Once::Key(key.to_owned())))
}

async fn apply(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
    Path(fsm): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let fsm = fsm_name(&fsm)?;
    let once = idempotency_key(&headers)?;
    let command = Payload::Json(body_text(body)?);
    call(&http, role, id, ApiRequest::Apply { fsm, command, once }).await
}

#[derive(Deserialize)]
struct ReadLevel {
    consistency: Option<String>,
}

async fn query(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
    Path(fsm): Path<String>,
    Query(level): Query<ReadLevel>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let consistency = match level.consistency.as_deref() {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("lease") => Consistency::Lease,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("consistency {other:?}: use linearizable, lease or stale"),
            ));
        }
    };
    let request = ApiRequest::Query {
        fsm: fsm_name(&fsm)?,
        query: Payload::Json(body_text(body)?),
        consistency,
    };
    call(&http, role, id, request).await
}

async fn batch(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let once = idempotency_key(&headers)?;
    #[derive(Deserialize)]
    struct Item {
        fsm: String,
        command: serde_json::Value,
    }
    let items: Vec<Item> = serde_json::from_str(&body_text(body)?).map_err(|e| {
        let message = format!("expected [{{\"fsm\": NAME, \"command\": JSON}}, ...]: {e}");
        error(StatusCode::BAD_REQUEST, "bad_json", message)
    })?;
    let mut commands = Vec::with_capacity(items.len());
    for i in items {
        commands.push((fsm_name(&i.fsm)?, Payload::Json(i.command.to_string())));
    }
    call(&http, role, id, ApiRequest::Batch { commands, once }).await
}

async fn status(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
) -> Result<Response, HttpError> {
    call(&http, role, id, ApiRequest::Status).await
}

async fn fsms(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
) -> Result<Response, HttpError> {
    call(&http, role, id, ApiRequest::ListFsms).await
}

async fn modules(
    State(http): State<Arc<Http>>,
    Extension(role): Extension<Role>,
    Extension(id): Extension<RequestId>,
) -> Result<Response, HttpError> {
    call(&http, role, id, ApiRequest::ListModules).await
}

async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let s = http.api.status();
    let lag = s
        .committed
        .unwrap_or(0)
        .saturating_sub(s.applied.unwrap_or(0));
    let problem = match s.leader {
        None => Some("no leader".to_string()),
        Some(_) if lag > READY_LAG => Some(format!("applied trails committed by {lag}")),
        Some(_) => http.api.divergence().await,
    };
    match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(p) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", p).into_response(),
    }
}

async fn metrics(State(http): State<Arc<Http>>) -> Response {
    use crate::metrics::names;
    let s = http.api.status();
    let node = s.node.to_string();
    let gauge = |name: &'static str, v: f64| metrics::gauge!(name, "node" => node.clone()).set(v);
    metrics::gauge!(names::BUILD_INFO, "node" => node.clone(), "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    gauge(names::RAFT_TERM, s.term as f64);
    gauge(names::RAFT_LEADER_ID, s.leader.map_or(0.0, |l| l as f64));
    gauge(names::RAFT_LAST_LOG_INDEX, s.last_log.unwrap_or(0) as f64);
    gauge(names::RAFT_COMMITTED_INDEX, s.committed.unwrap_or(0) as f64);
    gauge(names::RAFT_APPLIED_INDEX, s.applied.unwrap_or(0) as f64);
    gauge(names::PROPOSAL_QUEUE_DEPTH, http.api.queue_depth() as f64);
    gauge(
        names::CLUSTER_ENTRY_LEVEL,
        f64::from(http.api.entry_level()),
    );
    // The leader knows what each follower holds; a follower reports none.
    if s.leader == Some(s.node) {
        for n in s.nodes.iter().filter(|n| n.id != s.node) {
            // Not known to hold anything: the whole log.
            let lag = s.lag(n).unwrap_or(s.last_log.unwrap_or(0));
            metrics::gauge!(names::RAFT_FOLLOWER_LAG, "node" => node.clone(), "follower" => n.id.to_string())
                .set(lag as f64);
        }
    }
    for (env, file, reclaimable) in http.api.envs().await {
        if let Ok(meta) = std::fs::metadata(&file) {
            metrics::gauge!(names::LMDB_FILE_SIZE, "node" => node.clone(), "env" => env)
                .set(meta.len() as f64);
        }
        if let Some(bytes) = reclaimable {
            metrics::gauge!(names::LMDB_RECLAIMABLE, "node" => node.clone(), "env" => env)
                .set(bytes as f64);
        }
    }
    // Where this node's recent entries spent their time (the raft core answers at once; a
    // node shutting down has none to give).
    if let Ok(stages) = http.api.stages().await {
        for st in stages {
            for (q, us) in [("0.5", st.p50_us), ("0.9", st.p90_us), ("0.99", st.p99_us)] {
                metrics::gauge!(names::RAFT_LOG_STAGE, "node" => node.clone(), "stage" => st.stage.clone(), "quantile" => q)
                    .set(us as f64 / 1e6);
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::is_node_request_id;

    #[test]
    fn the_nodes_own_request_ids_are_told_apart() {
        for own in ["n1-0", "n12-345"] {
            assert!(is_node_request_id(own), "{own}");
        }
        for callers in [
            "n-1",
            "n1-",
            "n1",
            "nx-1",
            "m1-2",
            "n1-2-3",
            "trace-me.1",
            "n1-2a",
        ] {
            assert!(!is_node_request_id(callers), "{callers}");
        }
    }
}
