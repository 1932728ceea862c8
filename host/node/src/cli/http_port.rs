//! The HTTP port's options of `wraft serve`: where it listens, the tokens it accepts, and
//! its TLS (on by default, with the node's own certificate unless another is given).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use wraft_host::http::HttpConfig;

/// The HTTP port (docs/api.md). Flags and variables override the config file's keys of the
/// same names (`http_listen`, `http_tokens`, `http_token_file`, `http_cert`, `http_key`,
/// `http_plaintext`).
#[derive(Debug, Default, clap::Args, Deserialize)]
pub struct HttpArgs {
    /// TCP address of the HTTP port (`/healthz`, `/readyz`, `/metrics`, the JSON API, the
    /// console at `/`). TLS unless --http-plaintext.
    #[arg(long, env = "WRAFT_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// A bearer token for the JSON API, as ROLE:TOKEN (role admin, writer or reader);
    /// repeat the flag, or separate with commas in the variable. `ps` shows flags: prefer
    /// --http-token-file in production.
    #[arg(long = "http-token", env = "WRAFT_HTTP_TOKENS", value_delimiter = ',')]
    #[serde(default)]
    pub http_tokens: Vec<String>,
    /// A file of bearer tokens, one ROLE:TOKEN a line (`#` starts a comment); it must not
    /// be readable by group or others (chmod 600). Adds to --http-token.
    #[arg(long, env = "WRAFT_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,
    /// The certificate chain (PEM) the HTTP port presents (default: the node's --cert,
    /// signed by the cluster CA).
    #[arg(long, env = "WRAFT_HTTP_CERT")]
    pub http_cert: Option<PathBuf>,
    /// The private key (PEM) of --http-cert.
    #[arg(long, env = "WRAFT_HTTP_KEY")]
    pub http_key: Option<PathBuf>,
    /// Serve plain HTTP on the HTTP port, without TLS: tokens and payloads cross the network
    /// readable. For a port bound to loopback behind a TLS-terminating proxy. The variable
    /// takes true/false, yes/no, on/off or 1/0.
    // Which combinations of the HTTP flags make sense is checked in `config`, across flags,
    // variables and the file at once, not by clap, which sees only the first two.
    #[arg(
        long,
        env = "WRAFT_HTTP_PLAINTEXT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub http_plaintext: Option<bool>,
}

impl HttpArgs {
    /// Each setting from these flags and variables (a `false` included), else from `file`.
    fn over(self, file: HttpArgs) -> HttpArgs {
        HttpArgs {
            http_listen: self.http_listen.or(file.http_listen),
            http_tokens: if self.http_tokens.is_empty() {
                file.http_tokens
            } else {
                self.http_tokens
            },
            http_token_file: self.http_token_file.or(file.http_token_file),
            http_cert: self.http_cert.or(file.http_cert),
            http_key: self.http_key.or(file.http_key),
            http_plaintext: self.http_plaintext.or(file.http_plaintext),
        }
    }

    /// The port's settings, from these flags, else the config file's keys; `None` when no
    /// address is given. `node_cert`/`node_key` are the node's own PEM files, presented
    /// when no other certificate is given.
    pub fn config(
        self,
        file: HttpArgs,
        node_cert: &Path,
        node_key: &Path,
    ) -> anyhow::Result<Option<HttpConfig>> {
        let HttpArgs {
            http_listen,
            http_tokens,
            http_token_file,
            http_cert,
            http_key,
            http_plaintext,
        } = self.over(file);
        let Some(listen) = http_listen else {
            let stray = [
                ("--http-token", !http_tokens.is_empty()),
                ("--http-token-file", http_token_file.is_some()),
                ("--http-cert", http_cert.is_some()),
                ("--http-key", http_key.is_some()),
                ("--http-plaintext", http_plaintext == Some(true)),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                bail!(
                    "{flag} is given without --http-listen (or `http_listen`): no HTTP port to apply it to"
                );
            }
            return Ok(None);
        };
        let mut tokens = http_tokens
            .iter()
            .map(|t| wraft_host::http::parse_token(t).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("an HTTP token (--http-token, WRAFT_HTTP_TOKENS or `http_tokens`)")?;
        if let Some(path) = http_token_file {
            tokens.extend(wraft_host::http::read_token_file(&path).map_err(anyhow::Error::msg)?);
        }
        for (i, (token, role)) in tokens.iter().enumerate() {
            if let Some((_, other)) = tokens[..i].iter().find(|(t, _)| t == token) {
                bail!(
                    "one HTTP token is given twice, for roles {} and {}: give each token once",
                    other.as_str(),
                    role.as_str()
                );
            }
        }
        let mut http = HttpConfig::new(listen, tokens);
        let plaintext = http_plaintext.unwrap_or(false);
        let pair = match (http_cert, http_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--http-cert and --http-key go together (or `http_cert` and `http_key`)"),
        };
        if plaintext {
            if pair.is_some() {
                bail!("--http-plaintext serves no certificate: drop it or --http-cert/--http-key");
            }
            return Ok(Some(http));
        }
        let (cert, key) = pair.unwrap_or_else(|| (node_cert.into(), node_key.into()));
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        http.tls = Some(wraft_host::http::server_config(
            &read(&cert)?,
            &read(&key)?,
        )?);
        Ok(Some(http))
    }
}
