//! The data directory lock: one process at a time may serve or rewrite a data directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on `<data>/LOCK` (an advisory `flock`), held while a node serves the
/// directory or an offline tool rewrites it; released when dropped or when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and takes its lock, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "the data directory {} is in use by another wraft process ({}); \
                         stop it first",
                        data_dir.display(),
                        match holder.trim() {
                            "" => "pid unknown".to_string(),
                            pid => format!("pid {pid}"),
                        }
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
