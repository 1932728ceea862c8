//! `wraft bench --http`: the closed loops drive the leader's HTTP JSON API the way an HTTP
//! client does: one keep-alive HTTP/1.1 connection per loop, a bearer token, and the command
//! as a JSON body, which the FSM's own codec turns into postcard at the edge (so the leader
//! runs the module's codec on the way in and out, besides the apply).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hyper::client::conn::http1::SendRequest;

/// Largest answer a bench write reads (latest-payload answers a few dozen bytes).
const MAX_ANSWER: usize = 1 << 20;

/// Where the HTTP loops write: the leader's HTTP port and a writer's token.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub token: String,
}

/// One loop's connection.
pub struct HttpLoop {
    target: HttpTarget,
    sender: SendRequest<Body>,
}

impl HttpLoop {
    /// Opens the loop's connection.
    pub async fn connect(target: &HttpTarget) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            target: target.clone(),
            sender,
        })
    }

    /// POSTs one JSON command to `fsm`'s apply endpoint: `true` if it applied, `false` if the
    /// FSM refused it (422: still a committed, applied entry).
    pub async fn apply(&mut self, fsm: &str, json: Vec<u8>) -> anyhow::Result<bool> {
        self.sender.ready().await?;
        let request = Request::post(format!("/v1/fsms/{fsm}/apply"))
            .header(header::HOST, self.target.addr.to_string())
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.target.token),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER).await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::UNPROCESSABLE_ENTITY => Ok(false),
            s => bail!("HTTP {s}: {}", String::from_utf8_lossy(&body)),
        }
    }
}
