//! Operating on data directories: the directory lock, `wraft init generate` (all nodes start
//! as equals), `info` and `verify`, hot backup and restore, and compaction.

pub mod backup;
pub mod compact;
pub mod init;
pub mod inspect;
mod lock;

use std::path::PathBuf;

pub use lock::DataDirLock;

/// Why an operation on a data directory failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The data directory's lock is held (a node runs on it), or cannot be taken.
    #[error("{0}")]
    Locked(std::io::Error),
    /// The target exists and `--force` was not given.
    #[error("{0} already exists; give --force to overwrite it")]
    Exists(PathBuf),
    /// The arguments or the inputs are not usable.
    #[error("{0}")]
    Invalid(String),
    /// The state env failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A raft env operation failed.
    #[error("raft env: {0}")]
    Raft(std::io::Error),
}

/// Whether `dir` exists and holds anything.
pub fn occupied(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Attaches `path` to an IO error.
pub(crate) fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OpsError {
    let path = path.into();
    move |error| OpsError::Io { path, error }
}
