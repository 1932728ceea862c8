//! The HTTP port of a node: `/healthz`, `/readyz`, `/metrics` (Prometheus), and a JSON API
//! over the same requests the QUIC client API serves, authenticated by bearer tokens bound
//! to roles. Every error is a JSON body `{"error": KIND, "message": TEXT}`. docs/api.md
//! lists the endpoints; its curl examples are run by the tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::task::JoinHandle;
use wraft_core::{ApplyError, FsmName};
use wraft_transport_quic::api::{ApiError, ApiRequest, ApiResponse, Consistency, Payload};
use wraft_transport_quic::pki::Role;

use crate::api::NodeApi;

/// Largest request body by default.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
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
}

impl HttpConfig {
    /// Settings with the default body limit.
    pub fn new(listen: SocketAddr, tokens: Vec<(String, Role)>) -> Self {
        Self {
            listen,
            tokens,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Parses `ROLE:TOKEN` (role `admin`, `writer` or `reader`).
pub fn parse_token(s: &str) -> Result<(String, Role), String> {
    let (role, token) = s
        .split_once(':')
        .ok_or_else(|| format!("token {s:?} is not ROLE:TOKEN"))?;
    let role = match role {
        "admin" => Role::Admin,
        "writer" => Role::Writer,
        "reader" => Role::Reader,
        other => return Err(format!("unknown role {other:?} (admin, writer or reader)")),
    };
    if token.len() < 8 {
        return Err("a token must be at least 8 characters".into());
    }
    Ok((token.to_string(), role))
}

struct Http {
    api: Arc<NodeApi>,
    tokens: HashMap<String, Role>,
}

/// Binds the port and serves until the task is aborted; returns the bound address.
pub async fn serve(
    config: HttpConfig,
    api: Arc<NodeApi>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let state = Arc::new(Http {
        api,
        tokens: config.tokens.into_iter().collect(),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/fsms", get(fsms))
        .route("/v1/fsms/{fsm}/apply", post(apply))
        .route("/v1/fsms/{fsm}/query", post(query))
        .route("/v1/batch", post(batch))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(config.max_body))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    Ok((addr, task))
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

/// The role of the request's bearer token, or the 401 to answer.
fn role(http: &Http, headers: &HeaderMap) -> Result<Role, HttpError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <token>",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| http.tokens.get(t.trim()).copied())
        .ok_or_else(|| {
            crate::metrics::rejected("not_allowed");
            error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
        })
}

fn body_text(body: Result<Bytes, BytesRejection>) -> Result<String, HttpError> {
    let bytes = body.map_err(|r| {
        let kind = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        error(r.status(), kind, r.body_text())
    })?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "body is not UTF-8"))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", e))?;
    Ok(text)
}

fn fsm_name(s: &str) -> Result<FsmName, HttpError> {
    FsmName::new(s).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e))
}

async fn call(
    http: &Http,
    headers: &HeaderMap,
    request: ApiRequest,
) -> Result<Response, HttpError> {
    let role = role(http, headers)?;
    Ok(match http.api.serve_as(Some(role), request).await {
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
        Ok(other) => {
            axum::Json(serde_json::json!({ "done": format!("{other:?}") })).into_response()
        }
        Err(e) => return Err(api_error(e)),
    })
}

fn json_text(json: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

async fn apply(
    State(http): State<Arc<Http>>,
    Path(fsm): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let fsm = fsm_name(&fsm)?;
    let command = Payload::Json(body_text(body)?);
    call(&http, &headers, ApiRequest::Apply { fsm, command }).await
}

#[derive(Deserialize)]
struct ReadLevel {
    consistency: Option<String>,
}

async fn query(
    State(http): State<Arc<Http>>,
    Path(fsm): Path<String>,
    Query(level): Query<ReadLevel>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
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
    call(&http, &headers, request).await
}

async fn batch(
    State(http): State<Arc<Http>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
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
    call(&http, &headers, ApiRequest::Batch { commands }).await
}

async fn status(State(http): State<Arc<Http>>, headers: HeaderMap) -> Result<Response, HttpError> {
    call(&http, &headers, ApiRequest::Status).await
}

async fn fsms(State(http): State<Arc<Http>>, headers: HeaderMap) -> Result<Response, HttpError> {
    call(&http, &headers, ApiRequest::ListFsms).await
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
        Some(_) => http.api.divergence(),
    };
    match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(p) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", p).into_response(),
    }
}

async fn metrics(State(http): State<Arc<Http>>) -> Response {
    let s = http.api.status();
    metrics::gauge!("raft_term").set(s.term as f64);
    metrics::gauge!("raft_leader_id").set(s.leader.map_or(0.0, |l| l as f64));
    metrics::gauge!("raft_last_log_index").set(s.last_log.unwrap_or(0) as f64);
    metrics::gauge!("raft_committed_index").set(s.committed.unwrap_or(0) as f64);
    metrics::gauge!("raft_applied_index").set(s.applied.unwrap_or(0) as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}
