//! file-manifest: the file manifest of a time-series store's compaction (Basekick arc's
//! cluster FSM). Writers register the files they produce and delete the ones they replace;
//! compaction submits "outputs written, then sources deleted" as one batch, so the manifest
//! never shows both or neither.
//!
//! Idempotent by design (a retried command is harmless): registering a file that is already
//! registered with the same metadata, or deleting a file that is not there, changes nothing.
//! Registering a path again with different metadata replaces it. Every file records the log
//! index of the entry that registered it as its LSN; all files of one batch share it.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use wraft_guest::{Context, Error, Fsm};

/// Storage tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    /// Local fast storage.
    Hot,
    /// Cheaper storage.
    Warm,
    /// Object storage / archive.
    Cold,
}

impl Tier {
    fn byte(self) -> u8 {
        self as u8
    }
}

/// A data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Unique path (the key).
    pub path: String,
    /// Database.
    pub database: String,
    /// Measurement (table).
    pub measurement: String,
    /// Start of the partition the file covers, ms since the epoch.
    pub partition_time_ms: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Content checksum, as the writer computed it.
    pub checksum: String,
    /// Storage tier.
    pub tier: Tier,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOp {
    /// Register (or re-register) a file.
    Register(FileEntry),
    /// Delete a file by path.
    Delete {
        /// The path.
        path: String,
    },
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Register one file.
    RegisterFile(FileEntry),
    /// Delete one file.
    DeleteFile {
        /// The path.
        path: String,
    },
    /// Registers and deletes applied in order, atomically, under one LSN.
    BatchFileOps(Vec<FileOp>),
}

/// What a command changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Files registered or replaced.
    pub registered: u32,
    /// Files deleted.
    pub deleted: u32,
    /// Operations that changed nothing (idempotent repeats).
    pub unchanged: u32,
    /// The LSN (log index) of this command.
    pub lsn: u64,
}

/// Queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// One file by path.
    File {
        /// The path.
        path: String,
    },
    /// Files of a measurement, by partition time.
    ByMeasurement {
        /// Database.
        database: String,
        /// Measurement.
        measurement: String,
    },
    /// Files of a measurement whose partition starts in `[from_ms, to_ms)`.
    ByTimeRange {
        /// Database.
        database: String,
        /// Measurement.
        measurement: String,
        /// Inclusive start.
        from_ms: u64,
        /// Exclusive end.
        to_ms: u64,
    },
    /// Files on a tier.
    ByTier(Tier),
    /// Counts and bytes.
    Totals,
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// The file.
    pub file: FileEntry,
    /// The log index that registered it.
    pub lsn: u64,
}

/// Counts and bytes, overall and per tier (hot, warm, cold).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// Files per tier.
    pub files_by_tier: [u64; 3],
    /// Bytes per tier.
    pub bytes_by_tier: [u64; 3],
}

/// Query answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Files.
    Files(Vec<StoredFile>),
    /// Totals.
    Totals(Totals),
}

/// The FSM.
#[derive(Debug)]
pub struct FileManifest;

// Keys: `f\0<path>` -> StoredFile; `m\0<db>\0<measurement>\0<time BE>\0<path>` and
// `t\0<tier>\0<path>` -> empty (indexes); `totals` -> Totals.
fn file_key(path: &str) -> Vec<u8> {
    [b"f\0", path.as_bytes()].concat()
}

fn measurement_prefix(db: &str, m: &str) -> Vec<u8> {
    [b"m\0", db.as_bytes(), b"\0", m.as_bytes(), b"\0"].concat()
}

fn measurement_key(f: &FileEntry) -> Vec<u8> {
    let mut k = measurement_prefix(&f.database, &f.measurement);
    k.extend_from_slice(&f.partition_time_ms.to_be_bytes());
    k.push(0);
    k.extend_from_slice(f.path.as_bytes());
    k
}

fn tier_key(tier: Tier, path: &str) -> Vec<u8> {
    [&[b't', 0, tier.byte(), 0][..], path.as_bytes()].concat()
}

const TOTALS: &[u8] = b"totals";

fn check(f: &FileEntry) -> Result<(), Error> {
    for (what, v) in [
        ("path", &f.path),
        ("database", &f.database),
        ("measurement", &f.measurement),
    ] {
        if v.is_empty() || v.contains('\0') {
            return Err(Error::new(alloc::format!(
                "{what} must be non-empty and contain no NUL"
            )));
        }
    }
    Ok(())
}

fn adjust(t: &mut Totals, f: &FileEntry, sign: i64) {
    let (n, b) = (sign, sign * f.size_bytes as i64);
    let i = f.tier.byte() as usize;
    t.files = t.files.wrapping_add_signed(n);
    t.bytes = t.bytes.wrapping_add_signed(b);
    t.files_by_tier[i] = t.files_by_tier[i].wrapping_add_signed(n);
    t.bytes_by_tier[i] = t.bytes_by_tier[i].wrapping_add_signed(b);
}

fn apply_op(
    ctx: &mut Context<'_>,
    totals: &mut Totals,
    op: FileOp,
    out: &mut Applied,
) -> Result<(), Error> {
    match op {
        FileOp::Register(file) => {
            check(&file)?;
            let key = file_key(&file.path);
            if let Some(old) = ctx.get_as::<StoredFile>(&key)? {
                if old.file == file {
                    out.unchanged += 1;
                    return Ok(());
                }
                remove(ctx, totals, &old.file);
            }
            ctx.put(&measurement_key(&file), &[]);
            ctx.put(&tier_key(file.tier, &file.path), &[]);
            adjust(totals, &file, 1);
            ctx.put_as(&key, &StoredFile { file, lsn: out.lsn })?;
            out.registered += 1;
        }
        FileOp::Delete { path } => match ctx.get_as::<StoredFile>(&file_key(&path))? {
            Some(old) => {
                remove(ctx, totals, &old.file);
                ctx.delete(&file_key(&path));
                out.deleted += 1;
            }
            None => out.unchanged += 1,
        },
    }
    Ok(())
}

fn remove(ctx: &mut Context<'_>, totals: &mut Totals, f: &FileEntry) {
    ctx.delete(&measurement_key(f));
    ctx.delete(&tier_key(f.tier, &f.path));
    adjust(totals, f, -1);
}

fn files_under(
    ctx: &Context<'_>,
    prefix: &[u8],
    path_of: impl for<'k> Fn(&'k [u8]) -> Option<&'k [u8]>,
) -> Result<Vec<StoredFile>, Error> {
    let mut out = Vec::new();
    for (k, _) in ctx.scan_prefix(prefix) {
        let Some(path) = path_of(&k[prefix.len()..]) else {
            continue;
        };
        let key = [b"f\0", path].concat();
        if let Some(f) = ctx.get_as::<StoredFile>(&key)? {
            out.push(f);
        }
    }
    Ok(out)
}

/// In a tier index key (after the prefix): the path.
fn tier_path(rest: &[u8]) -> Option<&[u8]> {
    Some(rest)
}

/// In a measurement index key (after the prefix): 8 time bytes, NUL, path.
fn measurement_path(rest: &[u8]) -> Option<&[u8]> {
    rest.get(9..)
}

impl Fsm for FileManifest {
    type Command = Command;
    type Output = Applied;
    type Query = Query;
    type QueryOutput = Answer;

    fn apply(ctx: &mut Context<'_>, command: Command) -> Result<Applied, Error> {
        let mut out = Applied {
            registered: 0,
            deleted: 0,
            unchanged: 0,
            lsn: ctx.entry().index,
        };
        let mut totals = ctx.get_as::<Totals>(TOTALS)?.unwrap_or_default();
        let ops = match command {
            Command::RegisterFile(f) => alloc::vec![FileOp::Register(f)],
            Command::DeleteFile { path } => alloc::vec![FileOp::Delete { path }],
            Command::BatchFileOps(ops) => ops,
        };
        for op in ops {
            apply_op(ctx, &mut totals, op, &mut out)?;
        }
        ctx.put_as(TOTALS, &totals)?;
        Ok(out)
    }

    fn query(ctx: &Context<'_>, query: Query) -> Result<Answer, Error> {
        Ok(match query {
            Query::File { path } => Answer::Files(
                ctx.get_as::<StoredFile>(&file_key(&path))?
                    .into_iter()
                    .collect(),
            ),
            Query::ByMeasurement {
                database,
                measurement,
            } => Answer::Files(files_under(
                ctx,
                &measurement_prefix(&database, &measurement),
                measurement_path,
            )?),
            Query::ByTimeRange {
                database,
                measurement,
                from_ms,
                to_ms,
            } => {
                let prefix = measurement_prefix(&database, &measurement);
                let start = [&prefix[..], &from_ms.to_be_bytes()].concat();
                let end = [&prefix[..], &to_ms.to_be_bytes()].concat();
                let mut out = Vec::new();
                let mut from = start;
                loop {
                    let page = ctx.scan(&from, Some(&end), 1000);
                    let Some((last, _)) = page.last() else { break };
                    from = [&last[..], &[0]].concat();
                    for (k, _) in &page {
                        if let Some(path) = measurement_path(&k[prefix.len()..])
                            && let Some(f) = ctx.get_as::<StoredFile>(&[b"f\0", path].concat())?
                        {
                            out.push(f);
                        }
                    }
                }
                Answer::Files(out)
            }
            Query::ByTier(tier) => {
                let prefix = [b't', 0, tier.byte(), 0];
                Answer::Files(files_under(ctx, &prefix, tier_path)?)
            }
            Query::Totals => Answer::Totals(ctx.get_as::<Totals>(TOTALS)?.unwrap_or_default()),
        })
    }
}

wraft_guest::export_fsm!(FileManifest);

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_guest::testing::TestFsm;

    fn file(path: &str, t: u64, size: u64, tier: Tier) -> FileEntry {
        FileEntry {
            path: path.into(),
            database: "metrics".into(),
            measurement: "cpu".into(),
            partition_time_ms: t,
            size_bytes: size,
            checksum: alloc::format!("sha256:{path}"),
            tier,
        }
    }

    fn paths(a: Answer) -> Vec<String> {
        match a {
            Answer::Files(f) => f.into_iter().map(|f| f.file.path).collect(),
            Answer::Totals(_) => panic!("not files"),
        }
    }

    #[test]
    fn register_and_delete_are_idempotent() {
        let mut m = TestFsm::<FileManifest>::new();
        let a = m
            .apply(Command::RegisterFile(file("a", 1, 10, Tier::Hot)))
            .expect("register");
        assert_eq!((a.registered, a.unchanged), (1, 0));
        let again = m
            .apply(Command::RegisterFile(file("a", 1, 10, Tier::Hot)))
            .expect("again");
        assert_eq!((again.registered, again.unchanged), (0, 1));
        let gone = m
            .apply(Command::DeleteFile {
                path: "missing".into(),
            })
            .expect("delete missing");
        assert_eq!((gone.deleted, gone.unchanged), (0, 1));
        let Answer::Totals(t) = m.query(Query::Totals).expect("totals") else {
            panic!()
        };
        assert_eq!((t.files, t.bytes, t.files_by_tier), (1, 10, [1, 0, 0]));
    }

    #[test]
    fn compaction_is_one_batch_with_one_lsn() {
        let mut m = TestFsm::<FileManifest>::new();
        let sources: Vec<FileOp> = (0..40)
            .map(|i| {
                FileOp::Register(file(
                    &alloc::format!("src-{i:02}"),
                    i * 1000,
                    100,
                    Tier::Hot,
                ))
            })
            .collect();
        m.apply(Command::BatchFileOps(sources)).expect("sources");
        let mut ops = alloc::vec![FileOp::Register(file("compacted", 0, 3900, Tier::Warm))];
        ops.extend((0..40).map(|i| FileOp::Delete {
            path: alloc::format!("src-{i:02}"),
        }));
        let out = m.apply(Command::BatchFileOps(ops)).expect("compaction");
        assert_eq!((out.registered, out.deleted), (1, 40));
        assert_eq!(
            paths(
                m.query(Query::ByMeasurement {
                    database: "metrics".into(),
                    measurement: "cpu".into()
                })
                .expect("q")
            ),
            ["compacted"]
        );
        let Answer::Files(f) = m
            .query(Query::File {
                path: "compacted".into(),
            })
            .expect("q")
        else {
            panic!()
        };
        assert_eq!(f[0].lsn, out.lsn);
        let Answer::Totals(t) = m.query(Query::Totals).expect("totals") else {
            panic!()
        };
        assert_eq!(
            (t.files, t.bytes, t.files_by_tier, t.bytes_by_tier),
            (1, 3900, [0, 1, 0], [0, 3900, 0])
        );
    }

    #[test]
    fn a_bad_op_fails_the_whole_batch() {
        let mut m = TestFsm::<FileManifest>::new();
        m.apply(Command::RegisterFile(file("keep", 5, 1, Tier::Cold)))
            .expect("register");
        let ops = alloc::vec![
            FileOp::Delete {
                path: "keep".into()
            },
            FileOp::Register(file("", 1, 1, Tier::Hot))
        ];
        assert!(m.apply(Command::BatchFileOps(ops)).is_err());
        assert_eq!(
            paths(m.query(Query::ByTier(Tier::Cold)).expect("q")),
            ["keep"]
        );
    }

    #[test]
    fn time_range_and_tier_queries() {
        let mut m = TestFsm::<FileManifest>::new();
        for (p, t, tier) in [
            ("a", 1000, Tier::Hot),
            ("b", 2000, Tier::Warm),
            ("c", 3000, Tier::Hot),
        ] {
            m.apply(Command::RegisterFile(file(p, t, 1, tier)))
                .expect("register");
        }
        let q = |from, to| Query::ByTimeRange {
            database: "metrics".into(),
            measurement: "cpu".into(),
            from_ms: from,
            to_ms: to,
        };
        assert_eq!(paths(m.query(q(1500, 3000)).expect("q")), ["b"]);
        assert_eq!(paths(m.query(q(0, 10_000)).expect("q")), ["a", "b", "c"]);
        assert_eq!(
            paths(m.query(Query::ByTier(Tier::Hot)).expect("q")),
            ["a", "c"]
        );
        // Moving a file to another tier re-indexes it.
        m.apply(Command::RegisterFile(file("a", 1000, 1, Tier::Cold)))
            .expect("re-register");
        assert_eq!(paths(m.query(Query::ByTier(Tier::Hot)).expect("q")), ["c"]);
        assert_eq!(paths(m.query(Query::ByTier(Tier::Cold)).expect("q")), ["a"]);
    }

    #[test]
    fn json_shape_is_readable() {
        let cmd = Command::DeleteFile { path: "x".into() };
        assert_eq!(
            serde_json::to_string(&cmd).expect("json"),
            r#"{"DeleteFile":{"path":"x"}}"#
        );
    }
}
