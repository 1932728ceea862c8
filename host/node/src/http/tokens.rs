//! Bearer tokens of the HTTP port: parsed from `ROLE:TOKEN` (a flag, the environment or a
//! token file), kept only as digests, and checked in constant time.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use wraft_api::Role;

use super::{HttpError, error};

/// Parses `ROLE:TOKEN` (role `admin`, `writer` or `reader`).
pub fn parse_token(s: &str) -> Result<(String, Role), String> {
    let (role, token) = s
        .split_once(':')
        .ok_or_else(|| "a token is not ROLE:TOKEN".to_string())?;
    let role = match role {
        "admin" => Role::Admin,
        "writer" => Role::Writer,
        "reader" => Role::Reader,
        // Not repeated: a line written the wrong way round (`SECRET:reader`) holds the
        // secret here.
        _ => return Err("the role before `:` must be admin, writer or reader".into()),
    };
    if token.len() < 8 {
        return Err("a token must be at least 8 characters".into());
    }
    Ok((token.to_string(), role))
}

/// Reads a token file: one `ROLE:TOKEN` a line; blank lines and lines starting with `#` are
/// skipped. On Unix the file must not be readable by its group or others (as ssh asks of a
/// key), so a token kept out of `ps` is not left readable on disk instead.
pub fn read_token_file(path: &Path) -> Result<Vec<(String, Role)>, String> {
    use std::io::Read;
    let shown = path.display();
    let failed = |e: std::io::Error| format!("reading {shown}: {e}");
    // The mode of the file that is read, not of whatever the path names a moment later.
    let mut file = std::fs::File::open(path).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(failed)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is open to its group or others (mode {:o}): `chmod 600 {shown}`",
                mode & 0o777
            ));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(failed)?;
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        // The message never repeats the line: it holds a secret.
        .map(|(i, l)| parse_token(l).map_err(|e| format!("{shown} line {}: {e}", i + 1)))
        .collect()
}

/// The tokens a port accepts, as sha256 digests with the role each grants.
pub(super) struct Tokens(Vec<([u8; 32], Role)>);

impl Tokens {
    pub(super) fn new(tokens: &[(String, Role)]) -> Self {
        Self(tokens.iter().map(|(t, r)| (digest(t), *r)).collect())
    }

    /// The role of the request's bearer token, or the 401 to answer.
    pub(super) fn role(&self, headers: &HeaderMap) -> Result<Role, HttpError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer <token>",
            ));
        };
        // The scheme's name is case-insensitive (RFC 9110 section 11.1).
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| digest(t.trim()));
        // Every token is compared, each in constant time: how long this takes says nothing
        // of how close a guess came.
        let mut granted = None;
        if let Some(presented) = presented {
            for (hash, role) in &self.0 {
                if constant_time_eq(hash, &presented) {
                    granted = Some(*role);
                }
            }
        }
        granted.ok_or_else(|| {
            crate::metrics::rejected("not_allowed");
            error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_and_its_errors_name_the_line_not_the_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tokens");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).expect("write");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
            }
        };
        write(
            "# ops tokens\nreader:reader-secret-1\n\nwriter:writer-secret-2\n",
            0o600,
        );
        let tokens = read_token_file(&path).expect("read");
        assert_eq!(
            tokens,
            vec![
                ("reader-secret-1".to_string(), Role::Reader),
                ("writer-secret-2".to_string(), Role::Writer)
            ]
        );
        // Written the wrong way round: the secret stands where the role should.
        write("reader:reader-secret-1\nhunter2-hunter2:reader\n", 0o600);
        let e = read_token_file(&path).expect_err("bad role");
        assert!(
            e.contains("line 2") && e.contains("admin, writer or reader"),
            "{e}"
        );
        assert!(
            !e.contains("hunter2"),
            "the message repeats the secret: {e}"
        );
        #[cfg(unix)]
        {
            write("reader:reader-secret-1\n", 0o644);
            let e = read_token_file(&path).expect_err("world-readable");
            assert!(e.contains("chmod 600"), "{e}");
        }
    }
}
