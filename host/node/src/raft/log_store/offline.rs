//! The raft env without a running node: `wraft init` seeds it, `info` and `verify` read it.

use std::io;
use std::ops::Bound;
use std::path::Path;

use heed::{EnvFlags, EnvOpenOptions};
use openraft::{EntryPayload, Membership};

use super::{LogStore, Meta, decode_entry, encode_entry, log_key, meta_key};
use crate::raft::{Entry, LogId, Node, NodeId, Vote, io_err};

/// What a raft env holds, read entry by entry (every checksum checked).
#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    /// The stored vote.
    pub vote: Option<Vote>,
    /// The stored committed log id (openraft saves it lazily; it may lag).
    pub committed: Option<LogId>,
    /// Entries up to here were purged (a snapshot holds them).
    pub purged: Option<LogId>,
    /// The first and last stored entries.
    pub first: Option<LogId>,
    /// The last stored entry.
    pub last: Option<LogId>,
    /// How many entries are stored.
    pub entries: u64,
    /// The newest membership entry in the log, with its log id.
    pub membership: Option<(LogId, Membership<NodeId, Node>)>,
    /// The node this env belongs to (recorded at first start).
    pub owner: Option<NodeId>,
    /// Size of the env's data file in bytes.
    pub file_bytes: u64,
    /// Bytes a compacting copy would give back.
    pub reclaimable_bytes: u64,
    /// What is wrong, one precise sentence each; empty when the env is consistent.
    pub problems: Vec<String>,
}

impl LogStore {
    /// Opens `<data_dir>/raft` read-only; fails if it does not exist. Safe beside a running
    /// node (LMDB readers never block the writer).
    pub fn open_read_only(data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join("raft");
        if !path.join("data.mdb").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} holds no raft env (no data.mdb)", path.display()),
            ));
        }
        let len = std::fs::metadata(path.join("data.mdb"))?.len() as usize;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(crate::state::live_map_size(len)).max_dbs(4);
        // SAFETY: read-only; the lock file coordinates with a node that may have it open.
        unsafe { opts.flags(EnvFlags::READ_ONLY) };
        // SAFETY: as above; heed refuses a second open of the same env in this process.
        let env = unsafe { opts.open(&path) }.map_err(|e| {
            io::Error::other(format!(
                "cannot open the raft env at {}: {e}",
                path.display()
            ))
        })?;
        let rtxn = env.read_txn().map_err(io_err)?;
        let missing = |name: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the raft env at {} has no {name} table", path.display()),
            )
        };
        let logs = env
            .open_database(&rtxn, Some("logs"))
            .map_err(io_err)?
            .ok_or_else(|| missing("logs"))?;
        let meta = env
            .open_database(&rtxn, Some("meta"))
            .map_err(io_err)?
            .ok_or_else(|| missing("meta"))?;
        // The handles become shared with the env only when the opening txn commits.
        rtxn.commit().map_err(io_err)?;
        Ok(Self::over(env, logs, meta))
    }

    /// Writes the first state of a cluster member that starts without a bootstrap call:
    /// the membership entry at index 0 (as `Raft::initialize` would append it on the initial
    /// leader) and the initial leader's committed vote in `term`, so the initial leader
    /// campaigns at startup (in `term + 1`) and the others follow it. Refuses a non-empty env.
    pub fn seed(
        &self,
        term: u64,
        leader: NodeId,
        membership: Membership<NodeId, Node>,
    ) -> io::Result<()> {
        let inner = &self.inner;
        let mut wtxn = inner.env.write_txn().map_err(io_err)?;
        let lo = log_key(inner.group, 0);
        let hi = log_key(inner.group, u64::MAX);
        let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        let has_entries = inner
            .logs
            .range(&wtxn, &range)
            .map_err(io_err)?
            .next()
            .is_some();
        let has_vote = inner
            .meta
            .get(&wtxn, &meta_key(inner.group, Meta::Vote))
            .map_err(io_err)?
            .is_some();
        if has_entries || has_vote {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the raft env already holds a log or a vote",
            ));
        }
        let leader_id = openraft::impls::leader_id_adv::LeaderId {
            term,
            node_id: leader,
        };
        let entry = Entry {
            log_id: openraft::LogId::new(leader_id, 0),
            payload: EntryPayload::Membership(membership),
        };
        inner
            .logs
            .put(&mut wtxn, &log_key(inner.group, 0), &encode_entry(&entry)?)
            .map_err(io_err)?;
        let vote = Vote::new_committed(term, leader);
        let vote = postcard::to_allocvec(&vote).map_err(io_err)?;
        inner
            .meta
            .put(&mut wtxn, &meta_key(inner.group, Meta::Vote), &vote)
            .map_err(io_err)?;
        wtxn.commit().map_err(io_err)
    }

    /// The log id stored at `index`, if the log holds that entry.
    pub fn log_id_at(&self, index: u64) -> io::Result<Option<LogId>> {
        let found =
            self.inner
                .entries(Bound::Included(index), Bound::Included(index), usize::MAX)?;
        Ok(found.first().map(|e| e.log_id))
    }

    /// Writes a compacted copy of the env to `path` (consistent, from one read transaction).
    pub fn copy_to(&self, path: &Path) -> io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        self.inner
            .env
            .copy_to_file(&mut file, heed::CompactionOption::Enabled)
            .map_err(io_err)?;
        file.sync_all()
    }

    /// Reads every entry (checking its checksum) and the metadata, and lists what is
    /// inconsistent: a damaged entry, a gap, a log shorter than its purge point, a vote older
    /// than the log, a committed index past the log.
    pub fn summary(&self) -> io::Result<LogSummary> {
        let inner = &self.inner;
        let rtxn = inner.env.read_txn().map_err(io_err)?;
        let mut s = LogSummary {
            file_bytes: inner.env.real_disk_size().map_err(io_err)?,
            reclaimable_bytes: inner.reclaimable_bytes()?,
            ..Default::default()
        };
        let meta = |tag: Meta, what: &str| -> io::Result<Option<Vec<u8>>> {
            let v = inner
                .meta
                .get(&rtxn, &meta_key(inner.group, tag))
                .map_err(io_err)?
                .map(<[u8]>::to_vec);
            if v.is_none() {
                tracing::debug!("no {what} stored");
            }
            Ok(v)
        };
        let vote = meta(Meta::Vote, "vote")?;
        let committed = meta(Meta::Committed, "committed")?;
        let purged = meta(Meta::Purged, "purge point")?;
        let owner = meta(Meta::Owner, "owner")?;
        let mut problems = Vec::new();
        match vote.map(|b| postcard::from_bytes::<Vote>(&b)) {
            Some(Ok(v)) => s.vote = Some(v),
            Some(Err(e)) => problems.push(format!("the stored vote does not decode: {e}")),
            None => {}
        }
        match owner.map(|b| postcard::from_bytes::<NodeId>(&b)) {
            Some(Ok(o)) => s.owner = Some(o),
            Some(Err(e)) => problems.push(format!("the stored owner id does not decode: {e}")),
            None => {}
        }
        match committed.map(|b| postcard::from_bytes::<Option<LogId>>(&b)) {
            Some(Ok(c)) => s.committed = c,
            Some(Err(e)) => {
                problems.push(format!("the stored committed index does not decode: {e}"))
            }
            None => {}
        }
        match purged.map(|b| postcard::from_bytes::<LogId>(&b)) {
            Some(Ok(p)) => s.purged = Some(p),
            Some(Err(e)) => problems.push(format!("the stored purge point does not decode: {e}")),
            None => {}
        }
        let lo = log_key(inner.group, 0);
        let hi = log_key(inner.group, u64::MAX);
        let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        let mut previous: Option<u64> = None;
        for item in inner.logs.range(&rtxn, &range).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let index = u64::from_be_bytes(k[8..16].try_into().map_err(io_err)?);
            if s.purged.is_some_and(|p| index <= p.index) {
                continue; // left behind by a purge interrupted by a crash: ignored
            }
            if let Some(p) = previous
                && index != p + 1
            {
                problems.push(format!(
                    "raft log gap: entry {p} is followed by entry {index}"
                ));
            }
            previous = Some(index);
            s.entries += 1;
            match decode_entry(index, v) {
                Ok(e) => {
                    if e.log_id.index != index {
                        problems.push(format!(
                            "raft log entry {index} is stored under the wrong index (it says {})",
                            e.log_id.index
                        ));
                    }
                    s.first.get_or_insert(e.log_id);
                    if let EntryPayload::Membership(m) = e.payload {
                        s.membership = Some((e.log_id, m));
                    }
                    s.last = Some(e.log_id);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let (Some(p), Some(first)) = (s.purged, s.first)
            && first.index != p.index + 1
        {
            problems.push(format!(
                "raft log starts at entry {} but was purged only up to {}: entries {}..{} are missing",
                first.index,
                p.index,
                p.index + 1,
                first.index - 1
            ));
        }
        let last_term = s.last.or(s.purged).map(|l| l.leader_id.term);
        if let (Some(v), Some(t)) = (s.vote, last_term)
            && v.leader_id.term < t
        {
            problems.push(format!(
                "the vote (term {}) is older than the last log entry (term {t})",
                v.leader_id.term
            ));
        }
        let last_index = s.last.or(s.purged).map(|l| l.index);
        if let Some(c) = s.committed
            && last_index.is_none_or(|l| c.index > l)
        {
            problems.push(format!(
                "committed index {} is past the end of the log ({})",
                c.index,
                last_index.map_or("empty".into(), |l| l.to_string())
            ));
        }
        s.problems = problems;
        Ok(s)
    }
}
