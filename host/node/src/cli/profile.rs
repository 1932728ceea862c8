//! Client profiles: named connection settings in a TOML file, so that commands against a
//! production cluster need not repeat `--nodes`, `--client-ca`, `--client-cert`,
//! `--client-key` and `--timeout` each time (`--profile prod`, or `WRAFT_PROFILE=prod`).
//!
//! The file is `$WRAFT_PROFILES`, else `$XDG_CONFIG_HOME/wraft/profiles.toml`, else
//! `~/.config/wraft/profiles.toml`; each table is a profile:
//!
//! ```toml
//! [prod]
//! nodes = ["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"]
//! ca = "prod/ca.pem"          # relative paths: from the file's directory; ~/ from HOME
//! cert = "prod/ops.pem"
//! key = "prod/ops.key"
//! timeout = "5s"
//! ```
//!
//! A flag or variable given explicitly wins over the profile, which wins over the defaults
//! (those of `wraft dev`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// One profile's settings; any may be left out.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Any nodes' addresses.
    pub nodes: Option<Vec<String>>,
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// How long a command keeps trying (`10s`, `500ms`, `2m`).
    pub timeout: Option<String>,
}

/// Where the profiles are read from.
pub fn file() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WRAFT_PROFILES") {
        return Ok(path.into());
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".config"),
            None => bail!("no profile file: set WRAFT_PROFILES, XDG_CONFIG_HOME or HOME"),
        },
    };
    Ok(config.join("wraft").join("profiles.toml"))
}

/// Profile `name` from `path`, its relative paths made relative to the file's directory.
pub fn load(path: &Path, name: &str) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "profile {name:?}: reading {} (WRAFT_PROFILES names another file)",
            path.display()
        )
    })?;
    let mut all: BTreeMap<String, Profile> = toml::from_str(&text)
        .with_context(|| format!("invalid profile file {}", path.display()))?;
    let Some(mut profile) = all.remove(name) else {
        let known: Vec<&String> = all.keys().collect();
        bail!(
            "no profile {name:?} in {} (it has {known:?})",
            path.display()
        );
    };
    if profile.nodes.as_ref().is_some_and(|n| n.is_empty()) {
        bail!("profile {name:?} in {}: `nodes` is empty", path.display());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for p in [&mut profile.ca, &mut profile.cert, &mut profile.key]
        .into_iter()
        .flatten()
    {
        *p = resolve(p, base, home.as_deref())
            .with_context(|| format!("profile {name:?} in {}", path.display()))?;
    }
    Ok(profile)
}

/// A profile's path as a shell would read it: `~/...` from the home directory, a relative
/// path from the profile file's directory `base`, an absolute one as it is.
fn resolve(p: &Path, base: &Path, home: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Ok(under_home) = p.strip_prefix("~") else {
        return Ok(if p.is_relative() {
            base.join(p)
        } else {
            p.to_path_buf()
        });
    };
    match home {
        Some(home) => Ok(home.join(under_home)),
        None => bail!("{} starts with ~ but HOME is not set", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_read_with_paths_from_the_file_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("profiles.toml");
        std::fs::write(
            &path,
            "[prod]\nnodes = [\"10.0.0.1:7001\"]\nca = \"prod/ca.pem\"\nkey = \"/abs/ops.key\"\ntimeout = \"5s\"\n\n[lab]\n",
        )
        .expect("write");
        let prod = load(&path, "prod").expect("prod");
        assert_eq!(prod.nodes, Some(vec!["10.0.0.1:7001".to_string()]));
        assert_eq!(prod.ca, Some(dir.path().join("prod/ca.pem")));
        assert_eq!(prod.key, Some(PathBuf::from("/abs/ops.key")));
        assert_eq!(prod.cert, None);
        assert_eq!(load(&path, "lab").expect("lab"), Profile::default());
        let e = load(&path, "staging")
            .expect_err("no such profile")
            .to_string();
        assert!(
            e.contains("staging") && e.contains("lab") && e.contains("prod"),
            "{e}"
        );
        std::fs::write(&path, "[prod]\nnode = [\"x\"]\n").expect("write");
        let e = format!("{:#}", load(&path, "prod").expect_err("a misspelled key"));
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn a_tilde_is_the_home_directory() {
        let (base, home) = (Path::new("/etc/wraft"), Some(Path::new("/home/ops")));
        let at = |p: &str| resolve(Path::new(p), base, home).expect("a path");
        assert_eq!(at("~/certs/ca.pem"), Path::new("/home/ops/certs/ca.pem"));
        assert_eq!(at("certs/ca.pem"), Path::new("/etc/wraft/certs/ca.pem"));
        assert_eq!(at("/abs/ca.pem"), Path::new("/abs/ca.pem"));
        // `~user` is not expanded (no shell here): it is a relative name.
        assert_eq!(at("~ops/ca.pem"), Path::new("/etc/wraft/~ops/ca.pem"));
        let e = resolve(Path::new("~/ca.pem"), base, None).expect_err("no HOME");
        assert!(e.to_string().contains("HOME"), "{e}");
    }
}
